"""The Store and its Views: the backend interface of numpack._backend, on the format of
spec/FORMAT.md."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import mmap
import os
import stat
import threading
import time

import numpy as np

from .._dtypes import SUPPORTED
from .._errors import (
    ArrayNotFoundError,
    CorruptStoreError,
    DTypeError,
    InvalidArgumentError,
    RowIndexError,
    ShapeMismatchError,
    StoreClosedError,
)
from . import compress, files, journal
from . import format as fmt
from .lock import WriteLock
from .naming import data_file
from .rows import RowMap, last_occurrences, merge, runs

METADATA = "metadata.npkm"
LOCK = "numpack.lock"
# Bytes a compaction copies at a time, so its memory stays bounded whatever the array's size.
_COPY_BYTES = 64 << 20
# Rows mapped at a time when reading around dropped rows: their index costs 8 bytes a row.
_INDEX_ROWS = 1 << 20


def _synchronized(method):
    """Run `method` holding the store's thread lock, on an open store."""

    @functools.wraps(method)
    def wrapper(self, *args):
        with self._mutex:
            if self._lock is None:
                raise StoreClosedError(f"the NumPack at {self._path} is closed")
            return method(self, *args)

    return wrapper


def _stamp_of(st: os.stat_result) -> tuple:
    """What tells one version of metadata.npkm from another without reading it."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _check_rows(name: str, rows, n: int) -> np.ndarray:
    """`rows` as a 1-D int64 array of logical rows, each in [0, n)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise InvalidArgumentError(f"array {name!r}: row indexes must be one-dimensional")
    if rows.size:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= n:
            bad = hi if hi >= n else lo
            raise RowIndexError(f"array {name!r}: index {bad} is out of bounds for {n} rows")
    return rows


def _check_data(name: str, dtype: str, shape: tuple, data: np.ndarray) -> None:
    """`data` must hold exactly an array of `dtype` and `shape`."""
    if dtype not in SUPPORTED:
        raise DTypeError(f"array {name!r}: dtype {dtype!r} is not supported")
    if not len(shape) or data.nbytes != math.prod(shape) * np.dtype(dtype).itemsize:
        raise InvalidArgumentError(
            f"array {name!r}: {data.nbytes} bytes do not make an array of shape {tuple(shape)}"
        )


class _Change:
    """The metadata one writing call builds: its arrays and next file id, the data files it
    created (deleted if the call fails) and those it retires (deleted after the commit)."""

    def __init__(self, meta: fmt.Metadata, path: str):
        self.arrays = list(meta.arrays)
        self.next_file_id = meta.next_file_id
        self.created: list[str] = []
        self.retired: list[str] = []
        self.changed = False
        self.now = time.time_ns() // 1000
        self._path = path
        self._referenced = {e.file for e in meta.arrays}
        self._index = {e.name: i for i, e in enumerate(self.arrays)}

    def get(self, name: str) -> fmt.ArrayEntry | None:
        i = self._index.get(name)
        return None if i is None else self.arrays[i]

    def find(self, name: str) -> fmt.ArrayEntry:
        e = self.get(name)
        if e is None:
            raise ArrayNotFoundError(f"no array named {name!r} in {self._path}")
        return e

    def put(self, entry: fmt.ArrayEntry) -> None:
        """Add an array at the end, or replace one in place (retiring a file it no longer uses)."""
        i = self._index.get(entry.name)
        if i is None:
            self._index[entry.name] = len(self.arrays)
            self.arrays.append(entry)
        else:
            if self.arrays[i].file != entry.file:
                self.retired.append(self.arrays[i].file)
            self.arrays[i] = entry
        self.changed = True

    def drop(self, names: set) -> None:
        gone = [e for e in self.arrays if e.name in names]
        if gone:
            self.retired += [e.file for e in gone]
            self.arrays = [e for e in self.arrays if e.name not in names]
            self._index = {e.name: i for i, e in enumerate(self.arrays)}
            self.changed = True

    def create(self, name: str, chunks) -> str:
        """A new data file for array `name`, holding the bytes of `chunks`."""
        while True:
            if self.next_file_id >= fmt._MAX:  # readers accept up to _MAX (FORMAT.md 2)
                raise CorruptStoreError(
                    f"{self._path}: next_file_id {self.next_file_id} is exhausted"
                )
            file = data_file(name, self.next_file_id)
            self.next_file_id += 1
            # Only metadata that lied about next_file_id could name this file already; the
            # file must not be overwritten then, as the store still reads it.
            if file not in self._referenced:
                break
        files.write_new(os.path.join(self._path, file), chunks)
        self.created.append(file)
        return file

    def new_array(
        self,
        name: str,
        dtype: str,
        shape: tuple,
        data: np.ndarray,
        level: int | None = None,
        block_rows: int | None = None,
    ) -> None:
        """A new array of `data`: raw, or with `level` zstd blocks of `block_rows` rows."""
        shape = tuple(int(d) for d in shape)
        if level is None:
            file, compression = self.create(name, [data]), None
        else:
            row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
            block_rows = block_rows or compress.default_block_rows(row_bytes)
            chunks, records = compress.encode_rows(
                data, shape[0], row_bytes, compress.unit_of(dtype), level, block_rows, 0
            )
            file = self.create(name, chunks)
            compression = compress.compression_map(level, block_rows, records)
        self.put(fmt.ArrayEntry(name, file, dtype, shape, fmt.NO_ROWS, self.now, compression))

    def sweep(self) -> None:
        """Delete data files that no metadata names, and temporary files: leftovers of
        interrupted calls (the write lock is held, so no call is writing them now)."""
        keep = self._referenced | {e.file for e in self.arrays}
        with os.scandir(self._path) as it:
            for f in it:
                garbage = f.name.endswith(".tmp") or (
                    f.name.endswith(".npkd") and f.name not in keep
                )
                if garbage and f.is_file(follow_symlinks=False):
                    files.remove(f.path)

    def metadata(self) -> fmt.Metadata:
        return fmt.Metadata(self.next_file_id, tuple(self.arrays))


class Store:
    """A store directory: reads take no lock; each writing call holds the write lock and
    commits once. A mutex serialises the calls on one Store, so threads may share it."""

    def __init__(self, path: str, lock_timeout: float, durable: bool = False):
        self._path = path
        # fsync data, journal, metadata and directory at each commit (power-loss durability).
        self._durable = durable
        if os.path.exists(path) and not os.path.isdir(path):
            raise InvalidArgumentError(f"{path} is not a directory")
        os.makedirs(path, exist_ok=True)
        self._meta_path = os.path.join(path, METADATA)
        self._mutex = threading.RLock()
        self._meta: fmt.Metadata | None = None
        self._raw: bytes | None = None  # the bytes self._meta was decoded from
        self._stamp: tuple | None = None
        self._views: dict[str, View] = {}  # by data file: the newest view, and its mapping
        self._lock = WriteLock(os.path.join(path, LOCK), path, lock_timeout)
        try:
            if os.path.exists(self._meta_path) and not os.path.exists(self._join(journal.NAME)):
                self._refresh()
            else:
                # A new store, or an interrupted replace to undo: both need the lock.
                with self._lock:
                    if os.path.exists(self._meta_path):
                        self._refresh(locked=True)  # before any write: it may be unreadable
                    journal.recover(path, path)
                    if self._meta is None:
                        self._commit(fmt.Metadata(0, ()))
        except BaseException:
            self._lock.close()
            raise

    def _join(self, file: str) -> str:
        return os.path.join(self._path, file)

    # -- metadata ---------------------------------------------------------------------------

    def _missing(self) -> CorruptStoreError:
        return CorruptStoreError(f"{self._path}: {METADATA} is missing")

    def _stat(self) -> tuple:
        try:
            return _stamp_of(os.stat(self._meta_path))
        except FileNotFoundError:
            raise self._missing() from None

    def _read(self) -> tuple[tuple, bytes]:
        try:
            with open(self._meta_path, "rb") as f:
                return _stamp_of(os.fstat(f.fileno())), f.read()
        except FileNotFoundError:
            raise self._missing() from None

    def _refresh(self, locked: bool = False) -> fmt.Metadata:
        """The newest committed metadata.

        A reader pays one stat when it has not changed. Under the lock it is read again: a
        stamp can repeat (an inode reused within one tick of the file system's clock), and a
        writer must not build on a stale version.
        """
        if not locked and self._stat() == self._stamp:
            return self._meta
        while True:
            stamp, raw = self._read()
            if raw == self._raw:
                meta = self._meta
            else:
                try:
                    meta = fmt.decode(raw, self._path, self._path)
                except CorruptStoreError:
                    # A writer may have committed since we read, and deleted a data file this
                    # version names: try the newer version.
                    if locked or self._stat() == stamp:
                        raise
                    continue
            self._remember(meta, raw, stamp)
            return meta

    def _remember(self, meta: fmt.Metadata, raw: bytes, stamp: tuple | None) -> None:
        self._meta, self._raw, self._stamp = meta, raw, stamp
        live = {e.file for e in meta.arrays}
        self._views = {f: v for f, v in self._views.items() if f in live}

    def _commit(self, meta: fmt.Metadata) -> None:
        """Write the metadata beside metadata.npkm and rename it over: the commit point."""
        raw = fmt.encode(meta)
        if self._durable:
            # Every data file this call wrote reaches the disk before the metadata naming it.
            arrays = self._meta.arrays if self._meta is not None else []
            old = {e.name: (e.file, e.modified_us, e.shape) for e in arrays}
            for e in meta.arrays:
                if old.get(e.name) != (e.file, e.modified_us, e.shape):
                    files.sync(self._join(e.file))
        tmp = self._join(f"{METADATA}.{os.getpid()}.tmp")
        files.write_new(tmp, [raw], durable=self._durable)
        os.replace(tmp, self._meta_path)
        if self._durable:
            files.sync(self._path)
        # No stat, which could fail after the commit; the next call reads the file once.
        self._remember(meta, raw, None)

    @contextlib.contextmanager
    def _change(self):
        """Hold the write lock around one writing call: fresh metadata, any interrupted
        replace undone, one commit at the end, then the retired files deleted."""
        with self._lock:
            change = _Change(self._refresh(locked=True), self._path)
            journal.recover(self._path, self._path)
            try:
                yield change
                if change.changed:
                    self._commit(change.metadata())
            except BaseException:
                for file in change.created:
                    files.remove(self._join(file))
                # A replace that fails after writing rows puts the old ones back now.
                journal.recover(self._path, self._path)
                raise
            for file in change.retired:
                files.remove(self._join(file))

    def _find(self, meta: fmt.Metadata, name: str) -> fmt.ArrayEntry:
        e = meta.find(name)
        if e is None:
            raise ArrayNotFoundError(f"no array named {name!r} in {self._path}")
        return e

    # -- data files -------------------------------------------------------------------------

    def _usable(self, e: fmt.ArrayEntry) -> fmt.ArrayEntry:
        """`e`, unless it is compressed with a codec this numpack does not know."""
        if e.compression is not None and not e.zstd:
            raise CorruptStoreError(
                f"{self._path}: array {e.name!r} is compressed with codec {e.codec!r}, which "
                "this numpack cannot read"
            )
        return e

    def _open(self, e: fmt.ArrayEntry, flags: int) -> int:
        """A descriptor on `e`'s data file, which must hold all the array's physical rows
        (raw) or every block of its index (compressed)."""
        # O_NONBLOCK: a FIFO put in a data file's place must not block the open (it is then
        # refused as not a regular file); it changes nothing for regular files.
        fd = os.open(self._join(e.file), flags | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptStoreError(
                    f"{self._path}: data file {e.file} of array {e.name!r} is not a regular file"
                )
            size = st.st_size
            if size < e.file_bytes:
                what = "block index" if e.compression is not None else "shape"
                raise CorruptStoreError(
                    f"{self._path}: data file {e.file} of array {e.name!r} holds {size} bytes; "
                    f"its {what} needs {e.file_bytes}"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _view(self, e: fmt.ArrayEntry) -> View:
        """A View of entry `e`. Views of one file share a mapping when it is long enough:
        a referenced file is never truncated, and blocks are never rewritten in place, so a
        mapping stays valid."""
        self._usable(e)
        cached = self._views.get(e.file)
        if cached is not None and cached.entry is e:
            return cached
        mapping = cached.mapping if cached is not None else None
        need = e.file_bytes
        if need and (mapping is None or len(mapping) < need):
            fd = self._open(e, os.O_RDONLY)
            try:
                mapping = mmap.mmap(fd, need, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
        cls = BlockView if e.compression is not None else View
        view = self._views[e.file] = cls(e, mapping)
        return view

    # -- reads ------------------------------------------------------------------------------

    @_synchronized
    def names(self) -> list:
        return [e.name for e in self._refresh().arrays]

    @_synchronized
    def info(self, name: str) -> tuple:
        e = self._find(self._refresh(), name)
        return e.dtype, e.logical_shape, e.modified_us

    @_synchronized
    def entries(self) -> list:
        return [
            (e.name, e.dtype, e.logical_shape, len(e.deleted), e.modified_us, e.file) + _describe(e)
            for e in self._refresh().arrays
        ]

    @_synchronized
    def view(self, name: str) -> View:
        while True:
            e = self._find(self._refresh(), name)
            try:
                return self._view(e)
            except FileNotFoundError:
                # Unless a writer committed and deleted it meanwhile, the file is just missing.
                if self._stat() == self._stamp:
                    raise CorruptStoreError(
                        f"{self._path}: data file {e.file} of array {name!r} is missing"
                    ) from None

    # -- writes -----------------------------------------------------------------------------

    @_synchronized
    def save(self, items, level=None, block_rows=None) -> None:
        with self._change() as change:
            for name, dtype, shape, data in items:
                _check_data(name, dtype, shape, data)
            for name, dtype, shape, data in items:
                change.new_array(name, dtype, shape, data, level, block_rows)

    @_synchronized
    def append(self, items) -> None:
        with self._change() as change:
            for name, dtype, shape, data in items:
                e = change.get(name)
                if e is not None:
                    self._usable(e)
                    if dtype != e.dtype:
                        raise DTypeError(
                            f"array {name!r}: cannot append {np.dtype(dtype).name} rows to an "
                            f"array of dtype {np.dtype(e.dtype).name}"
                        )
                    if tuple(shape[1:]) != e.shape[1:]:
                        raise ShapeMismatchError(
                            f"array {name!r}: rows of shape {tuple(shape[1:])} do not fit rows "
                            f"of shape {e.shape[1:]}"
                        )
                _check_data(name, dtype, shape, data)
            for name, dtype, shape, data in items:
                e = change.get(name)
                if e is None:
                    change.new_array(name, dtype, shape, data)
                    continue
                n = int(shape[0])
                shape = (e.shape[0] + n,) + e.shape[1:]
                compression = e.compression
                if e.compression is not None:
                    if n:
                        compression = self._append_blocks(e, n, data)
                else:
                    # Bytes past the array's end (an interrupted append) are overwritten.
                    fd = self._open(e, os.O_WRONLY)
                    try:
                        files.write_all(fd, data, e.nbytes)
                    finally:
                        os.close(fd)
                change.put(
                    dataclasses.replace(
                        e, shape=shape, modified_us=change.now, compression=compression
                    )
                )

    def _append_blocks(self, e: fmt.ArrayEntry, n: int, data: np.ndarray) -> dict:
        """Append `n` rows to compressed array `e`: its last block, if not full, is encoded
        again holding the first new rows, then come new blocks. Returns the new map."""
        br, r = e.compression["block_rows"], e.row_bytes
        k, head = divmod(e.shape[0], br)  # head: rows in a partial last block
        fill = min(n, br - head) if head else 0

        def blocks():
            if head:
                yield k, np.concatenate((self._view(e).block(k).reshape(-1), data[: fill * r]))
            for i, start in enumerate(range(fill, n, br), start=k + bool(head)):
                yield i, data[start * r : min(n, start + br) * r]

        return self._write_blocks(e, e.shape[0] + n, blocks())

    def _write_blocks(self, e: fmt.ArrayEntry, rows: int, blocks) -> dict:
        """Encode each `(k, raw bytes of block k)` of `blocks` and append it to compressed
        array `e`'s data file; returns the compression map of `e`, grown to `rows` physical
        rows, with those blocks' records pointing at their new versions."""
        c, r = e.compression, e.row_bytes
        br, level, unit = c["block_rows"], c["level"], compress.unit_of(e.dtype)
        records = np.zeros(compress.block_count(rows, br), compress.RECORD)
        records[: len(e.blocks)] = e.blocks
        fd = self._open(e, os.O_WRONLY)
        try:
            # Past the end of the file, not of the last block: bytes of an interrupted call
            # are dead, and a block a view may still read is never overwritten.
            offset = os.fstat(fd).st_size
            for k, raw in blocks:
                n = min(br, rows - k * br)
                stored, codec, f, crc = compress.encode_block(raw, n, r, unit, level)
                files.write_all(fd, stored, offset)
                records[k] = (offset, len(stored), crc, codec, f, 0)
                offset += len(stored)
        finally:
            os.close(fd)
        return compress.compression_map(level, br, records)

    @_synchronized
    def replace(self, items) -> None:
        with self._change() as change:
            plans = []
            for name, rows, data in items:
                e = self._usable(change.find(name))
                rows = _check_rows(name, rows, e.rows)
                if data.nbytes != len(rows) * e.row_bytes:
                    raise ShapeMismatchError(
                        f"array {name!r}: {data.nbytes} bytes given for {len(rows)} rows of "
                        f"{e.row_bytes} bytes"
                    )
                plans.append((e, rows, data))
            sections, writes = [], []
            for e, rows, data in plans:
                change.put(dataclasses.replace(e, modified_us=change.now))
                if not data.nbytes:
                    continue
                logical, src = last_occurrences(rows)
                physical = RowMap(e.deleted).physical(logical)
                if e.compression is not None:
                    # New versions of the touched blocks go to the end of the file: no journal.
                    compression = self._replace_blocks(e, physical, src, data)
                    change.put(
                        dataclasses.replace(e, modified_us=change.now, compression=compression)
                    )
                    continue
                old = np.empty(len(logical) * e.row_bytes, np.uint8)
                self._view(e).gather(logical, old)
                sections.append((e.file, e.row_bytes, physical, old))
                writes.append((e, physical, src, data))
            if not writes:
                return
            journal.write(self._path, sections, self._durable)
            for e, physical, src, data in writes:
                self._write_rows(e, physical, src, data)
            change.retired.append(journal.NAME)  # deleted after the commit, under the lock

    def _replace_blocks(self, e: fmt.ArrayEntry, physical, src, data: np.ndarray) -> dict:
        """Write row `src[k]` of `data` over physical row `physical[k]` (ascending, unique)
        of compressed array `e`, a block at a time; returns the new compression map."""
        br, view = e.compression["block_rows"], self._view(e)
        new = data.reshape(-1, e.row_bytes)
        block = physical // br
        cuts = np.flatnonzero(np.diff(block)) + 1

        def touched():
            for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(block)]):
                k = int(block[lo])
                rows = view.block(k).copy()
                rows[physical[lo:hi] - k * br] = new[src[lo:hi]]
                yield k, rows

        return self._write_blocks(e, e.shape[0], touched())

    def _write_rows(self, e: fmt.ArrayEntry, physical, src, data: np.ndarray) -> None:
        """Write row `src[k]` of `data` over physical row `physical[k]`, a run at a time."""
        r = e.row_bytes
        rows = memoryview(data).cast("B")
        fd = self._open(e, os.O_WRONLY)
        try:
            for p, s, n in runs(physical, src):
                files.write_all(fd, rows[s * r : (s + n) * r], p * r)
        finally:
            os.close(fd)

    @_synchronized
    def drop_arrays(self, names) -> None:
        with self._change() as change:
            for name in names:
                change.find(name)
            change.drop(set(names))

    @_synchronized
    def drop_rows(self, name: str, rows) -> None:
        with self._change() as change:
            e = self._usable(change.find(name))
            rows = _check_rows(name, rows, e.rows)
            if len(rows):
                deleted = merge(e.deleted, RowMap(e.deleted).physical(rows))
                change.put(dataclasses.replace(e, deleted=deleted, modified_us=change.now))

    @_synchronized
    def compact(self, names) -> None:
        with self._change() as change:
            if names is None:
                todo = [e.name for e in change.arrays]
            else:
                todo = [change.find(name).name for name in names]
            for name in todo:
                e = change.get(name)
                if e.compression is None:
                    if not len(e.deleted):
                        continue
                    file, compression = change.create(name, _live_rows(self._view(e))), None
                else:
                    if not e.zstd and names is None:
                        continue  # what cannot be read cannot be rewritten; it stays as it is
                    self._usable(e)
                    size = os.stat(self._join(e.file)).st_size
                    if not len(e.deleted) and size <= int(e.blocks["size"].sum()):
                        continue  # no dropped rows, no dead bytes
                    c, records = e.compression, []
                    blocks = _live_blocks(self._view(e), c["level"], c["block_rows"], records)
                    file = change.create(name, blocks)
                    compression = compress.compression_map(
                        c["level"], c["block_rows"], np.concatenate(records)
                    )
                # The values do not change, so neither does modified_us.
                change.put(
                    dataclasses.replace(
                        e,
                        file=file,
                        shape=e.logical_shape,
                        deleted=fmt.NO_ROWS,
                        compression=compression,
                    )
                )
            if names is None:
                change.sweep()

    @_synchronized
    def reset(self) -> None:
        with self._change() as change:
            change.drop({e.name for e in change.arrays})

    def close(self) -> None:
        """Release the lock file; views already made keep their own mappings."""
        with self._mutex:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
                self._views = {}


def _live_rows(view: View):
    """The live rows of `view`, in order, as chunks of at most _COPY_BYTES."""
    r, n = view.row_bytes, view.shape[0]
    if not r:
        return
    step = max(1, _COPY_BYTES // r)
    buf = np.empty(min(n, step) * r, np.uint8)
    for start in range(0, n, step):
        stop = min(n, start + step)
        out = buf[: (stop - start) * r]
        view.read(start, stop, out)
        yield out


def _live_blocks(view: BlockView, level: int, block_rows: int, records: list):
    """The live rows of compressed `view` encoded afresh in blocks of `block_rows` rows: yields
    their stored bytes, whole blocks of about _COPY_BYTES at a time, and appends their records
    (placed one after another from offset 0) to `records`."""
    r, n, offset = view.row_bytes, view.shape[0], 0
    step = block_rows * max(1, _COPY_BYTES // max(1, r * block_rows))
    unit = compress.unit_of(view.dtype)
    records.append(np.zeros(0, compress.RECORD))
    for start in range(0, n, step):
        stop = min(n, start + step)
        buf = np.empty((stop - start) * r, np.uint8)
        view.read(start, stop, buf)
        chunks, recs = compress.encode_rows(buf, stop - start, r, unit, level, block_rows, offset)
        records.append(recs)
        offset += sum(len(c) for c in chunks)
        yield from chunks


def _describe(e: fmt.ArrayEntry) -> tuple:
    """`(bytes_on_disk, compression)` of an array, as entries() reports them."""
    if e.compression is None:
        return e.nbytes, None
    if not e.zstd:
        # Of a codec this numpack does not know, only the name is reported.
        keys = ("level", "block_rows", "blocks", "filters", "stored_bytes")
        return 0, {"codec": e.codec, **dict.fromkeys(keys), "raw_bytes": e.nbytes}
    b = e.blocks
    # Blocks stored raw count as "raw" whatever their filter byte says.
    kind = np.where(b["codec"] == compress.STORED_RAW, 0, 1 + b["filter"].astype(np.int64))
    counts = np.bincount(kind, minlength=4).tolist()
    stored = int(b["size"].sum())
    return stored, {
        "codec": compress.CODEC,
        "level": e.compression["level"],
        "block_rows": e.compression["block_rows"],
        "blocks": len(b),
        "filters": {f: c for f, c in zip(("raw", *compress.FILTER_NAMES), counts) if c},
        "raw_bytes": e.nbytes,
        "stored_bytes": stored,
    }


class View:
    """A snapshot of one array: its rows and dropped rows when the view was made.

    It reads through a read-only mapping of the data file that it keeps, so it keeps working
    after the store changes or closes. The mapping shares the file's pages: rows replaced in
    place show through, as the interface promises.
    """

    def __init__(self, entry: fmt.ArrayEntry, mapping: mmap.mmap | None):
        self.entry, self.mapping = entry, mapping
        self.dtype = entry.dtype
        self.shape = entry.logical_shape
        self.dropped = len(entry.deleted)
        self.row_bytes = entry.row_bytes
        self._rows = RowMap(entry.deleted)
        # The mapping may be longer than this snapshot (a later view grew it): cut it.
        need = entry.file_bytes
        self._buf = memoryview(mapping)[:need] if need else None
        self._data = None
        if self._buf is not None and entry.compression is None:
            self._data = np.frombuffer(self._buf, np.uint8).reshape(-1, self.row_bytes)

    def _check_out(self, out, count: int) -> None:
        name = self.entry.name
        if not (
            isinstance(out, np.ndarray)
            and out.dtype == np.uint8
            and out.ndim == 1
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            raise InvalidArgumentError(
                f"array {name!r}: out must be a writable C-contiguous 1-D uint8 array"
            )
        if out.nbytes != count * self.row_bytes:
            raise InvalidArgumentError(
                f"array {name!r}: an output of {out.nbytes} bytes cannot hold {count} rows of "
                f"{self.row_bytes} bytes"
            )

    def _check_range(self, start: int, stop: int, out) -> None:
        n = self.shape[0]
        if not 0 <= start <= stop <= n:
            raise RowIndexError(
                f"array {self.entry.name!r}: rows [{start}, {stop}) are out of bounds for {n} rows"
            )
        self._check_out(out, stop - start)

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Logical rows [start, stop) into `out`."""
        self._check_range(start, stop, out)
        if not out.nbytes:
            return
        if not self.dropped:
            np.copyto(out, self._data[start:stop].reshape(-1))
            return
        dst = out.reshape(-1, self.row_bytes)
        for lo in range(start, stop, _INDEX_ROWS):
            hi = min(stop, lo + _INDEX_ROWS)
            physical = self._rows.physical(np.arange(lo, hi, dtype=np.int64))
            # mode="clip" skips a bounds check (rows are checked) and, with it, a buffered copy.
            np.take(self._data, physical, axis=0, out=dst[lo - start : hi - start], mode="clip")

    def gather(self, rows, out: np.ndarray) -> None:
        """Logical `rows`, in the order given, into `out`."""
        rows = _check_rows(self.entry.name, rows, self.shape[0])
        self._check_out(out, len(rows))
        if out.nbytes:
            dst = out.reshape(-1, self.row_bytes)
            np.take(self._data, self._rows.physical(rows), axis=0, out=dst, mode="clip")

    def buffer(self):
        """The rows, zero-copy and read-only; None with dropped rows or no bytes."""
        return None if self.dropped or self._buf is None else self._buf


class BlockView(View):
    """A snapshot of a compressed array: its block index when the view was made.

    Reads decode the blocks their rows fall in, each once per call (and keep the last one).
    A replaced block is written elsewhere in the file, so a view keeps showing the values of
    its snapshot.
    """

    def __init__(self, entry: fmt.ArrayEntry, mapping: mmap.mmap | None):
        super().__init__(entry, mapping)
        self._blocks = entry.blocks
        self._block_rows = entry.compression["block_rows"]
        self._unit = compress.unit_of(entry.dtype)
        # The last block decoded, as (k, rows): reads in small steps (stream_load's batches of
        # 1000 rows, sequential slices) fall in the same block again and again, and decoding
        # it each time made stream_load about 50x slower. Blocks never change, so it stays valid.
        self._last: tuple | None = None
        if self._buf is not None:
            compress.check_frames(
                self._buf, self._blocks, entry.shape[0], self._block_rows, self.row_bytes,
                self._unit, f"array {entry.name!r} in {entry.file}",
            )  # fmt: skip

    def block(self, k: int) -> np.ndarray:
        """The physical rows of block `k`, decoded and checked, as a read-only (rows, R)
        uint8 array."""
        last = self._last
        if last is not None and last[0] == k:
            return last[1]
        rec, br = self._blocks[k], self._block_rows
        n = min(br, self.entry.shape[0] - k * br)
        offset, size = int(rec["offset"]), int(rec["size"])
        # The view's file was checked to hold every block of its index before it was mapped.
        stored = self._buf[offset : offset + size] if size else b""
        what = f"block {k} of array {self.entry.name!r} in {self.entry.file}"
        rows = compress.decode_block(stored, rec, n, self.row_bytes, self._unit, what)
        rows = rows.reshape(n, self.row_bytes)
        rows.flags.writeable = False
        self._last = (k, rows)
        return rows

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Logical rows [start, stop) into `out`."""
        self._check_range(start, stop, out)
        if not out.nbytes:
            return
        dst = out.reshape(-1, self.row_bytes)
        # The live rows between the physical rows of `start` and `stop - 1` are the ones asked.
        first, last = self._rows.physical(np.array([start, stop - 1], np.int64)).tolist()
        br, deleted, pos = self._block_rows, self.entry.deleted, 0
        for k in range(first // br, last // br + 1):
            lo, hi = max(first, k * br), min(last + 1, (k + 1) * br)
            rows = self.block(k)[lo - k * br : hi - k * br]
            gone = deleted[np.searchsorted(deleted, lo) : np.searchsorted(deleted, hi)]
            if len(gone):
                keep = np.ones(hi - lo, bool)
                keep[gone - lo] = False
                rows = rows[keep]
            dst[pos : pos + len(rows)] = rows
            pos += len(rows)

    def gather(self, rows, out: np.ndarray) -> None:
        """Logical `rows`, in the order given, into `out`."""
        rows = _check_rows(self.entry.name, rows, self.shape[0])
        self._check_out(out, len(rows))
        if not out.nbytes:
            return
        dst = out.reshape(-1, self.row_bytes)
        physical = self._rows.physical(rows)
        block = physical // self._block_rows
        # Rows grouped by block, so that each block is decoded once.
        order = np.argsort(block, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(block[order])) + 1):
            k = int(block[group[0]])
            dst[group] = self.block(k)[physical[group] - k * self._block_rows]

    def buffer(self):
        return None
