"""The Store and its Views: the backend interface of numpack._backend, on the format of
spec/FORMAT.md: a snapshot (metadata.npkm) and a commit log (numpack.log) of what changed."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import math
import mmap
import os
import stat
import threading
import time
import zlib
from typing import NamedTuple

import numpy as np

from .. import _package
from .._dtypes import SUPPORTED
from .._errors import (
    ArrayNotFoundError,
    CorruptStoreError,
    DTypeError,
    InvalidArgumentError,
    ReadOnlyStoreError,
    RowIndexError,
    ShapeMismatchError,
    StoreClosedError,
    StoreLockedError,
)
from . import compress, files, journal, log
from . import format as fmt
from .lock import WriteLock
from .naming import data_file
from .rows import last_occurrences, runs

METADATA = "metadata.npkm"
LOCK = "numpack.lock"
# The log is folded into a new snapshot once it is longer than this and than the snapshot.
FOLD_BYTES = 1 << 20
# Bytes a compaction copies at a time, so its memory stays bounded whatever the array's size.
_COPY_BYTES = 64 << 20
# Rows mapped at a time when reading around dropped rows: their index costs 8 bytes a row.
_INDEX_ROWS = 1 << 20


def _synchronized(method):
    """Run `method` holding the store's thread lock, on an open store."""

    @functools.wraps(method)
    def wrapper(self, *args):
        with self._mutex:
            if self._closed:
                raise StoreClosedError(f"the NumPack at {self._path} is closed")
            return method(self, *args)

    return wrapper


def _stamp_of(st: os.stat_result) -> tuple:
    """What tells one version of a file from another without reading it."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _name_of(op) -> str:
    return op.entry.name if isinstance(op, log.Put) else op.name


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    """`n` bytes at `offset`, or fewer at the end of the file (reads may be short)."""
    chunks = []
    while n > 0:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _now_us() -> int:
    return time.time_ns() // 1000


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


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where the metadata in memory was read from (FORMAT.md 5): `kind` "log" (`stamp` of
    the log as read, `end` past the last commit record applied), "stale" (a log of an older
    generation, left by an interrupted fold: the snapshot holds everything) or "snapshot"
    (no log, or a version 1 store: `stamp` of metadata.npkm)."""

    kind: str
    stamp: tuple
    end: int = 0

    @property
    def probe(self) -> tuple:
        """What `Store._probe` returns while nothing changes."""
        return ("snapshot" if self.kind == "snapshot" else "log", self.stamp)


class _Savepoint(NamedTuple):
    """How far a transaction had come; a failed call goes back to where it started."""

    meta: fmt.Metadata
    ops: int
    created: int
    retired: int
    written: int
    undo: int
    log_end: int


class _Txn:
    """A transaction under way: the write lock, the log open for appending, and what its
    calls did so far."""

    def __init__(self, lock: WriteLock, fd: int, base: fmt.Metadata, log_end: int):
        self.lock, self.fd = lock, fd
        # Where it began: the metadata as committed, and the end of the last commit record.
        self.start = _Savepoint(base, 0, 0, 0, 0, 0, log_end)
        self.log_end = log_end  # then past the undo records written since
        self.ops: list = []
        self.created: list[str] = []  # data files created: deleted if it fails
        self.retired: list[str] = []  # data files no longer used: deleted after the commit
        self.written: list[str] = []  # data files written: synced first when durable
        self.undo: list[log.Undo] = []  # put back if it fails

    @property
    def base(self) -> fmt.Metadata:
        return self.start.meta

    def savepoint(self, meta: fmt.Metadata) -> _Savepoint:
        return _Savepoint(
            meta,
            len(self.ops),
            len(self.created),
            len(self.retired),
            len(self.written),
            len(self.undo),
            self.log_end,
        )

    def truncate(self, sp: _Savepoint) -> tuple[list, list]:
        """Forget what was done since `sp`; returns the undo records written and the data
        files created since."""
        undo, created = self.undo[sp.undo :], self.created[sp.created :]
        del self.ops[sp.ops :], self.created[sp.created :], self.retired[sp.retired :]
        del self.written[sp.written :], self.undo[sp.undo :]
        return undo, created


class _Change:
    """One writing call: the ops it pushes apply to the store's metadata at once (so later
    reads on this Store see them) and join the transaction's commit."""

    def __init__(self, store: Store):
        self.store, self.txn = store, store._txn
        self.now = _now_us()

    @property
    def meta(self) -> fmt.Metadata:
        return self.store._meta

    def get(self, name: str) -> fmt.ArrayEntry | None:
        return self.meta.find(name)

    def find(self, name: str) -> fmt.ArrayEntry:
        return self.store._find(self.meta, name)

    def push(self, *ops) -> None:
        """Apply `ops` and add them to the commit; the data files they stop using retire."""
        meta = self.meta
        for op in ops:
            if isinstance(op, log.Update):
                continue
            old = meta.find(_name_of(op))
            if old is not None and (isinstance(op, log.Drop) or old.file != op.entry.file):
                self.txn.retired.append(old.file)
        self.store._meta = log.apply(meta, ops, self.store._log_what)
        self.txn.ops += ops

    def create(self, name: str, chunks) -> str:
        """A new data file for array `name`, holding the bytes of `chunks`."""
        used = {e.file for e in (self.txn.base.find(name), self.get(name)) if e is not None}
        next_id = self.meta.next_file_id
        while True:
            if next_id >= fmt._MAX:  # readers accept up to _MAX (FORMAT.md 2)
                raise CorruptStoreError(f"{self.store._path}: next_file_id {next_id} is exhausted")
            file = data_file(name, next_id)
            next_id += 1
            # Only metadata that lied about next_file_id could name this file already (names
            # derive files, so only an entry of this name could); the file must not be
            # overwritten then, as the store (or an abort) still reads it.
            if file not in used:
                break
        self.store._meta = self.meta.derive(next_file_id=next_id)
        self.txn.created.append(file)
        files.write_new(self.store._join(file), chunks, durable=self.store._durable)
        return file

    def new_array(
        self,
        name: str,
        dtype: str,
        shape: tuple,
        data: np.ndarray,
        level: int | None = None,
        block_rows: int | None = None,
    ) -> fmt.ArrayEntry:
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
            compression = fmt.zstd_map(level, block_rows, records)
        return fmt.ArrayEntry(name, file, dtype, shape, fmt.NO_ROWS, self.now, compression)

    def sweep(self) -> None:
        """Delete data files that no metadata names, and temporary files: leftovers of
        interrupted calls (the write lock is held, so no call is writing them now)."""
        keep = {e.file for e in self.txn.base.arrays} | {e.file for e in self.meta.arrays}
        with os.scandir(self.store._path) as it:
            for f in it:
                garbage = f.name.endswith(".tmp") or (
                    f.name.endswith(".npkd") and f.name not in keep
                )
                if garbage and f.is_file(follow_symlinks=False):
                    files.remove(f.path)


class Store:
    """A store directory: reads take no lock and write nothing; each writing call holds the
    write lock and appends one commit record to the log, or joins the open transaction. A
    mutex serialises the calls on one Store, so threads may share it."""

    def __init__(self, path: str, lock_timeout: float, durable: bool = False):
        self._path = path
        self._timeout = lock_timeout
        # fsync data, undo and commit records, snapshots and the directory (FORMAT.md 6).
        self._durable = durable
        # A package (FORMAT.md 10): the store in one file, read-only.
        self._package: _package.Package | None = None
        if os.path.exists(path) and not os.path.isdir(path):
            if not _package.is_package(path):
                raise InvalidArgumentError(f"{path} is neither a directory nor a numpack package")
            self._package = _package.Package(path)
        self._meta_path = os.path.join(path, METADATA)
        self._log_path = os.path.join(path, log.NAME)
        self._log_what = f"{path}: {log.NAME}"
        self._mutex = threading.RLock()
        self._closed = False
        self._meta = fmt.Metadata(0, ())
        self._source: _Source | None = None
        self._snapshot_len = 0
        self._views: dict[str, View] = {}  # by data file: the newest view, and its mapping
        self._lock: WriteLock | None = None  # opened by the first call that writes
        self._txn: _Txn | None = None
        try:
            if self._package is not None:
                pkg = self._package
                meta = fmt.decode(pkg.read(METADATA), pkg.what(METADATA))
                return self._install(meta, _Source("snapshot", _stamp_of(os.stat(path))), None)
            if not os.path.exists(self._meta_path):
                os.makedirs(path, exist_ok=True)
                self._begin()  # creates the store
                self._finish()
                return
            self._refresh()
            if self._pending():
                self._try_recover()
        except BaseException:
            self.close()
            raise

    def _join(self, file: str) -> str:
        return os.path.join(self._path, file)

    def _find(self, meta: fmt.Metadata, name: str) -> fmt.ArrayEntry:
        e = meta.find(name)
        if e is None:
            raise ArrayNotFoundError(f"no array named {name!r} in {self._path}")
        return e

    # -- reading the metadata (FORMAT.md 5) ---------------------------------------------------

    def _missing(self) -> CorruptStoreError:
        return CorruptStoreError(f"{self._path}: {METADATA} is missing")

    def _probe(self) -> tuple:
        """One stat: of the log, or of the snapshot when there is no log or the store is
        version 1 (which has none; an upgrade replaces its snapshot)."""
        if self._meta.version > 1 or self._source is None:
            try:
                return "log", _stamp_of(os.stat(self._log_path))
            except FileNotFoundError:
                pass
        try:
            return "snapshot", _stamp_of(os.stat(self._meta_path))
        except FileNotFoundError:
            raise self._missing() from None

    def _refresh(self) -> fmt.Metadata:
        """The newest committed metadata: one stat when nothing changed, the new records when
        only the log grew, else the snapshot and the log read afresh."""
        if self._txn is not None or self._package is not None:
            # The lock is ours, or a package, which never changes: nothing else changes it.
            return self._meta
        while True:
            probe = self._probe()
            src = self._source
            if src is not None and probe == src.probe:
                return self._meta
            try:
                if src is not None and src.kind == "log" and probe[0] == "log":
                    self._catch_up(src)
                else:
                    self._load()
                return self._meta
            except CorruptStoreError:
                # A writer may have committed since we read, and deleted a data file this
                # version names: try the newer version.
                if self._probe() == probe:
                    raise

    def _catch_up(self, src: _Source) -> None:
        """Apply the records appended to the log after the last commit record applied."""
        try:
            fd = os.open(self._log_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return self._load()
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != src.stamp[:2] or st.st_size < src.end:
                return self._load()  # folded since, or rewritten
            data = _pread_all(fd, st.st_size - src.end, src.end)
        finally:
            os.close(fd)
        self._apply_log(self._meta, data, src.end, _stamp_of(st))

    def _load(self) -> None:
        """Read the snapshot, then the log, afresh."""
        # A fold between reading the snapshot and the log makes the log look newer: read
        # again. A log that stays newer is damaged.
        for _ in range(100):
            try:
                with open(self._meta_path, "rb") as f:
                    snap_stamp, raw = _stamp_of(os.fstat(f.fileno())), f.read()
            except FileNotFoundError:
                raise self._missing() from None
            snap = fmt.decode(raw, self._path)
            self._snapshot_len = len(raw)
            fd = None
            if snap.version > 1:  # version 1 has no log: one left beside it is not its own
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(self._log_path, os.O_RDONLY | os.O_CLOEXEC)
            if fd is None:
                return self._install(snap, _Source("snapshot", snap_stamp), None)
            try:
                st = os.fstat(fd)
                data = _pread_all(fd, st.st_size, 0)
            finally:
                os.close(fd)
            gen = log.generation(data, self._log_what)
            if gen < snap.generation:
                return self._install(snap, _Source("stale", _stamp_of(st)), None)
            if gen == snap.generation:
                stamp = _stamp_of(st)
                return self._apply_log(
                    snap, memoryview(data)[log.HEADER :], log.HEADER, stamp, True
                )
        raise CorruptStoreError(f"{self._path}: the log's generation stays ahead of the snapshot's")

    def _apply_log(self, meta: fmt.Metadata, data, base: int, stamp: tuple, whole=False):
        """Make current `meta` with the commit records at the start of `data`, the log's
        bytes from offset `base`, applied; `whole`: `meta` is the snapshot, all of whose
        data files are to be checked. Undo records are skipped; trailing ones, and a torn
        record, are left for later."""
        end, names = base, set()
        for payload, at in log.scan(data):
            record = log.decode(payload, self._log_what)
            if isinstance(record, log.Commit):
                meta = log.apply(meta, record.ops, self._log_what, record.next_file_id)
                names.update(map(_name_of, record.ops))
                end = base + at
        self._install(meta, _Source("log", stamp, end), None if whole else names)

    def _install(self, meta: fmt.Metadata, source: _Source, names: set | None) -> None:
        """Make `meta` current once its data files hold what it says: those of the arrays
        `names` (the rest were checked before), or of every array."""
        touched = meta.arrays if names is None else filter(None, map(meta.find, names))
        for e in touched:
            if self._package is None:
                fmt.check_file(e, self._path, self._path)
            elif e.file_bytes:
                pkg = self._package
                fmt.check_size(e, pkg.length(e.file, e.name), pkg.what(e.file))
        old = self._meta
        self._meta, self._source = meta, source
        if names is None:
            live = {e.file for e in meta.arrays}
            self._views = {f: v for f, v in self._views.items() if f in live}
            return
        for name in names:
            before, after = old.find(name), meta.find(name)
            if before is not None and (after is None or after.file != before.file):
                self._views.pop(before.file, None)

    def _pending(self) -> bool:
        """Whether an interrupted call left something to undo: bytes after the last commit
        record, or an undo journal."""
        return self._log_tail() or os.path.exists(self._join(journal.NAME))

    def _log_tail(self) -> bool:
        """Whether the log holds bytes after the last commit record: undo records of a call
        that did not commit (or is under way), or a torn record."""
        src = self._source
        return src is not None and src.kind == "log" and src.stamp[2] > src.end

    def _try_recover(self) -> None:
        """Undo an interrupted call now (upgrading a version 1 store) if no one holds the
        lock (whoever does is in the middle of that call) and the file system lets us;
        otherwise just read."""
        if not os.access(self._path, os.W_OK):
            return
        try:
            lock = WriteLock(self._join(LOCK), self._path, 0.0)
        except OSError:
            return
        try:
            with lock:
                self._prepare(opening=True)
        except StoreLockedError:
            pass
        finally:
            lock.close()

    # -- transactions (FORMAT.md 6) ---------------------------------------------------------

    def _sync(self) -> None:
        """Holding the lock, read what was committed: a stamp can repeat (an inode reused
        within one tick of the file system's clock), so the log is read past the last commit
        applied even when it looks unchanged; a writer must not build on a stale version."""
        src = self._source
        if src is not None and src.kind == "log":
            self._catch_up(src)
        else:
            self._load()

    def _begin(self) -> None:
        """Take the write lock (waiting up to the timeout), bring the store to a state a
        commit can follow, and open a transaction."""
        if self._package is not None:
            raise ReadOnlyStoreError(
                errno.EROFS,
                f"{self._path} is a package, which is read-only: numpack.io.unpack() makes a "
                "store directory of it that can be changed",
            )
        if self._txn is not None:
            raise InvalidArgumentError(f"{self._path}: a transaction is already open")
        if self._lock is None:
            self._lock = WriteLock(self._join(LOCK), self._path, self._timeout)
        lock = self._lock.__enter__()
        try:
            self._prepare()
            fd = os.open(self._log_path, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        self._txn = _Txn(lock, fd, self._meta, self._source.end)

    def _prepare(self, opening: bool = False) -> None:
        """Holding the lock: a new store created, or a version 1 store upgraded, or a missing
        or stale log replaced, or an interrupted call undone (FORMAT.md 6). `opening`: also
        look for an undo journal in a version 2 store (one only a hand can leave there)."""
        # Known to exist once read: no stat on each call.
        if self._source is None and not os.path.exists(self._meta_path):
            return self._create()
        self._sync()
        if opening or self._meta.version == 1:
            journal.recover(self._path, self._path, self._durable)
        if self._meta.version == 1:
            self._meta = self._meta.derive(version=fmt.VERSION, generation=1)
            self._write_snapshot()
            return self._write_log()
        if self._source.kind != "log":
            return self._write_log()  # no log, or one an interrupted fold left
        if self._log_tail():
            self._recover_tail()

    def _create(self) -> None:
        """A new store: the snapshot, then the log. A log without a snapshot is not a store
        being created (its snapshot comes first): it is damage, and is not overwritten."""
        if os.path.exists(self._log_path):
            raise self._missing()
        self._meta = fmt.Metadata(0, ())
        self._write_snapshot()
        self._write_log()

    def _recover_tail(self) -> None:
        """Put back the rows of the undo records after the last commit record (a call that
        never committed), and cut the log there."""
        end = self._source.end
        fd = os.open(self._log_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            data = _pread_all(fd, st.st_size - end, end)
            # Only undo records follow the last commit record, which `_sync` just applied.
            records = [log.decode(payload, self._log_what) for payload, _ in log.scan(data)]
            self._restore([r for r in records if isinstance(r, log.Undo)])
            os.ftruncate(fd, end)
            self._source = _Source("log", _stamp_of(os.fstat(fd)), end)
        finally:
            os.close(fd)

    def _restore(self, undo: list) -> None:
        """Write the old rows of undo records back, the last record first."""
        what = f"{self._log_what}: an undo record"
        for u in reversed(undo):
            journal.restore(self._path, u.file, u.row_bytes, u.rows, u.old, what, self._durable)

    def _write_snapshot(self) -> None:
        raw = fmt.encode(self._meta)
        files.replace(self._path, METADATA, raw, self._durable)
        self._snapshot_len = len(raw)
        self._source = None  # until the log for it is written

    def _write_log(self) -> None:
        header = log.header(self._meta.generation)
        st = files.replace(self._path, log.NAME, header, self._durable)
        self._source = _Source("log", _stamp_of(st), log.HEADER)

    @contextlib.contextmanager
    def _write(self):
        """One writing call: inside the open transaction as a part of it, else as a
        transaction of its own. A call that fails undoes itself; the transaction goes on."""
        own = self._txn is None
        if own:
            self._begin()
        sp = self._txn.savepoint(self._meta)
        try:
            yield _Change(self)
        except BaseException:
            try:
                self._rollback(sp)
            finally:
                if own:
                    self._end()
            raise
        if own:
            self.commit()

    def _rollback(self, sp: _Savepoint) -> None:
        """Undo what the transaction did since `sp`: the metadata as it was, rows put back,
        the log cut, the files created deleted.

        If rows cannot be put back or the log cut (an I/O error), the transaction ends: its
        undo records stay in the log, for the next writer to put back."""
        t = self._txn
        self._meta = sp.meta
        undo, created = t.truncate(sp)
        try:
            self._restore(undo)
            os.ftruncate(t.fd, sp.log_end)
            t.log_end = sp.log_end
        except BaseException:
            self._source = None  # read everything again next time
            self._end()
            raise
        finally:
            for file in created:
                self._views.pop(file, None)
                with contextlib.suppress(OSError):
                    files.remove(self._join(file))

    def _end(self) -> None:
        """Close the transaction, if one is open, and release the lock."""
        t, self._txn = self._txn, None
        if t is not None:
            os.close(t.fd)
            t.lock.__exit__(None, None, None)

    @_synchronized
    def begin(self) -> None:
        """Start a transaction: the calls until `commit` make one commit record."""
        self._begin()

    @_synchronized
    def commit(self) -> None:
        """End the transaction: one commit record of all its calls (none if they changed
        nothing), a fold if the log has grown enough, then the files it retired deleted."""
        t = self._txn
        if t is None:
            raise InvalidArgumentError(f"{self._path}: no transaction is open")
        try:
            if t.ops:
                self._write_commit()
        except BaseException:
            try:
                self._rollback(t.start)
            finally:
                self._end()
            raise
        self._finish()

    def _finish(self) -> None:
        """After the commit: fold, release the lock, delete the retired files."""
        t = self._txn
        try:
            if t.ops:
                self._fold()
        except OSError:
            self._source = None  # the commit stands; the next writer folds
        finally:
            self._end()
        for file in t.retired:
            self._views.pop(file, None)
            # The store is already consistent: a file that fails to go is only garbage.
            with contextlib.suppress(OSError):
                files.remove(self._join(file))

    @_synchronized
    def abort(self) -> None:
        """End the transaction, undoing everything it did."""
        self._abort()

    def _abort(self) -> None:
        t = self._txn
        if t is None:
            return
        try:
            self._rollback(t.start)
        finally:
            self._end()

    def _write_commit(self) -> None:
        """Append the transaction's commit record: its commit point."""
        t = self._txn
        if self._durable:
            # Every data file written or created reaches the disk before the record naming it.
            for file in dict.fromkeys(t.written):
                files.sync(self._join(file))
            if t.created:
                files.sync(self._path)
        record = log.commit_record(self._meta.next_file_id, t.ops)
        files.write_all(t.fd, record, t.log_end)
        if self._durable:
            os.fsync(t.fd)
        t.log_end += len(record)
        # Our own record is applied already: the next call must not read it again.
        self._source = _Source("log", _stamp_of(os.fstat(t.fd)), t.log_end)

    def _fold(self) -> None:
        """Write the metadata as a new snapshot and start an empty log once the log outgrows
        both FOLD_BYTES and the snapshot (so folding costs O(1) amortised per byte logged)."""
        if self._source.end <= max(FOLD_BYTES, self._snapshot_len):
            return
        meta = self._meta
        self._meta = meta.derive(generation=meta.generation + 1)
        try:
            self._write_snapshot()
        except BaseException:
            self._meta = meta
            raise
        self._write_log()

    @_synchronized
    def format_version(self) -> int:
        """1 for a version 1 store not yet upgraded (by its first write), else 2."""
        return self._refresh().version

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
            if self._package is not None:
                mapping = self._package.map(e.file, need)
            else:
                fd = self._open(e, os.O_RDONLY)
                try:
                    mapping = mmap.mmap(fd, need, access=mmap.ACCESS_READ)
                finally:
                    os.close(fd)
        if e.compression is None:
            view = View(e, mapping)
        else:
            view = BlockView(e, mapping, cached if isinstance(cached, BlockView) else None)
        self._views[e.file] = view
        return view

    # -- reads ------------------------------------------------------------------------------

    @_synchronized
    def snapshot(self) -> bytes:
        """The metadata as one snapshot, the log folded in (what a package holds)."""
        return fmt.encode(self._refresh())

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
            probe = self._source.probe if self._source is not None else None
            try:
                return self._view(e)
            except FileNotFoundError:
                # Unless a writer committed and deleted it meanwhile, the file is just missing.
                if self._txn is not None or self._probe() == probe:
                    raise CorruptStoreError(
                        f"{self._path}: data file {e.file} of array {name!r} is missing"
                    ) from None

    # -- writes -----------------------------------------------------------------------------

    @_synchronized
    def save(self, items, level=None, block_rows=None) -> None:
        with self._write() as change:
            for name, dtype, shape, data in items:
                _check_data(name, dtype, shape, data)
            puts = [change.new_array(*item, level, block_rows) for item in items]
            change.push(*map(log.Put, puts))

    @_synchronized
    def append(self, items) -> None:
        with self._write() as change:
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
                    change.push(log.Put(change.new_array(name, dtype, shape, data)))
                    continue
                n = int(shape[0])
                if not n:
                    # The row count is logged even when it stays, as for any append.
                    change.push(log.Update(name, change.now, e.shape[0]))
                elif e.compression is not None:
                    blocks = self._append_blocks(e, n, data)
                    change.push(log.Update(name, change.now, e.shape[0] + n, blocks))
                else:
                    # Bytes past the array's end (an interrupted append) are overwritten.
                    fd = self._open(e, os.O_WRONLY)
                    try:
                        files.write_all(fd, data, e.nbytes)
                    finally:
                        os.close(fd)
                    change.txn.written.append(e.file)
                    change.push(log.Update(name, change.now, e.shape[0] + n))

    def _append_blocks(self, e: fmt.ArrayEntry, n: int, data: np.ndarray) -> np.ndarray:
        """Append `n` rows to compressed array `e`; returns the update's blocks. The partial
        last block an append leaves is stored raw, so that the next append only writes its
        rows: a raw last block that ends the file grows in place until full, then it is
        encoded as any block (FORMAT.md 7)."""
        br, r, unit = e.compression["block_rows"], e.row_bytes, compress.unit_of(e.dtype)
        k, head = divmod(e.shape[0], br)  # head: rows in a partial last block
        data, keep = compress.as_bytes(data), None
        if head:
            old = e.compression["blocks"][k]
            offset, size = int(old["offset"]), int(old["size"])
            fd = self._open(e, os.O_RDWR)
            try:
                if old["codec"] == compress.STORED_RAW and head + n < br:
                    # A size that is not the rows' is damage, which decode_block reports.
                    if size == head * r and offset + size == os.fstat(fd).st_size:
                        # Past the block's end only: a reader of the shorter record reads
                        # what it did.
                        files.write_all(fd, data, offset + size)
                        self._txn.written.append(e.file)
                        grown = old.copy()
                        grown["size"] += data.nbytes
                        grown["crc32"] = zlib.crc32(data, int(old["crc32"]))
                        return _update_blocks([k], [grown])
                stored = os.pread(fd, size, offset)
            finally:
                os.close(fd)
            what = f"block {k} of array {e.name!r} in {e.file}"
            raw = compress.decode_block(stored, old, head, r, unit, what)
            data = np.concatenate((raw.reshape(-1), data))
            # The refilled block keeps its filter, as a replaced one does; one that was stored
            # raw takes its group's, from the block before it (FORMAT.md 7).
            keep = _kept_filter(e, k)
            if keep is None and k % compress.filter_group(br * r):
                keep = _kept_filter(e, k - 1)
        tail = head + n
        whole = tail // br * br
        size = br * r
        full = ((k + i, data[i * size : (i + 1) * size]) for i in range(whole // br))
        level = e.compression["level"]
        blocks = list(compress.group_filters(full, r, unit, level, br, keep))
        if tail > whole:
            blocks.append((k + whole // br, data[whole * r :], compress.KEEP_RAW))
        return self._write_blocks(e, e.shape[0] + n, blocks)

    def _write_blocks(self, e: fmt.ArrayEntry, rows: int, blocks) -> np.ndarray:
        """Encode each `(k, raw bytes of block k, filter or None to pick one)` of `blocks` and
        append it to compressed array `e`'s data file, which will hold `rows` physical rows;
        returns the new records as an update's blocks (FORMAT.md 6)."""
        c, r = e.compression, e.row_bytes
        br, level, unit = c["block_rows"], c["level"], compress.unit_of(e.dtype)
        ks, records = [], []
        fd = self._open(e, os.O_WRONLY)
        try:
            # Past the end of the file, not of the last block: bytes of an interrupted call
            # are dead, and a block a view may still read is never overwritten.
            offset = os.fstat(fd).st_size
            for k, raw, f in blocks:
                n = min(br, rows - k * br)
                stored, codec, f, crc = compress.encode_block(raw, n, r, unit, level, f)
                files.write_all(fd, stored, offset)
                ks.append(k)
                records.append((offset, len(stored), crc, codec, f, 0))
                offset += len(stored)
        finally:
            os.close(fd)
        self._txn.written.append(e.file)
        return _update_blocks(ks, np.array(records, compress.RECORD))

    @_synchronized
    def replace(self, items) -> None:
        with self._write() as change:
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
            ops, writes = [], []
            for e, rows, data in plans:
                if not data.nbytes:
                    ops.append(log.Update(e.name, change.now))
                    continue
                logical, src = last_occurrences(rows)
                physical = e.row_map.physical(logical)
                if e.compression is not None:
                    # New versions of the touched blocks go to the end of the file: no undo.
                    blocks = self._replace_blocks(e, physical, src, data)
                    ops.append(log.Update(e.name, change.now, blocks=blocks))
                    continue
                old = np.empty(len(logical) * e.row_bytes, np.uint8)
                self._view(e).gather(logical, old)
                change.txn.undo.append(log.Undo(e.file, e.row_bytes, physical, old))
                writes.append((e, physical, src, data))
                ops.append(log.Update(e.name, change.now))
            self._log_undo(change.txn, len(writes))
            for e, physical, src, data in writes:
                self._write_rows(e, physical, src, data)
                change.txn.written.append(e.file)
            change.push(*ops)

    def _log_undo(self, txn: _Txn, count: int) -> None:
        """Append the last `count` undo records of the transaction to the log, before the rows
        they save are overwritten (on disk first, when durable)."""
        if not count:
            return
        for u in txn.undo[-count:]:
            for record in log.undo_records(u.file, u.row_bytes, u.rows, u.old):
                files.write_all(txn.fd, record, txn.log_end)
                txn.log_end += len(record)
        if self._durable:
            os.fsync(txn.fd)

    def _replace_blocks(self, e: fmt.ArrayEntry, physical, src, data: np.ndarray) -> np.ndarray:
        """Write row `src[k]` of `data` over physical row `physical[k]` (ascending, unique)
        of compressed array `e`, a block at a time; returns the update's blocks."""
        br, view = e.compression["block_rows"], self._view(e)
        new = data.reshape(-1, e.row_bytes)
        block = physical // br
        cuts = np.flatnonzero(np.diff(block)) + 1

        def touched():
            for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(block)]):
                k = int(block[lo])
                rows = view.block(k).copy()
                rows[physical[lo:hi] - k * br] = new[src[lo:hi]]
                yield k, rows, _kept_filter(e, k)

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
        with self._write() as change:
            for name in names:
                change.find(name)
            # In the store's (creation) order.
            order = sorted(set(names), key=change.meta.positions.__getitem__)
            change.push(*map(log.Drop, order))

    @_synchronized
    def drop_rows(self, name: str, rows) -> None:
        with self._write() as change:
            e = self._usable(change.find(name))
            rows = np.unique(_check_rows(name, rows, e.rows))
            if len(rows):
                physical = e.row_map.physical(rows)  # ascending, as `rows`
                change.push(log.Update(name, change.now, deleted=physical))

    @_synchronized
    def compact(self, names) -> None:
        with self._write() as change:
            if names is None:
                todo = [e.name for e in change.meta.arrays]
            else:
                todo = [change.find(name).name for name in names]
            for name in dict.fromkeys(todo):
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
                    compression = fmt.zstd_map(c["level"], c["block_rows"], np.concatenate(records))
                # The values do not change, so neither does modified_us.
                fresh = dataclasses.replace(
                    e,
                    file=file,
                    shape=e.logical_shape,
                    deleted=fmt.NO_ROWS,
                    compression=compression,
                )
                change.push(log.Put(fresh))
            if names is None:
                change.sweep()

    @_synchronized
    def reset(self) -> None:
        with self._write() as change:
            change.push(*(log.Drop(e.name) for e in change.meta.arrays))

    def close(self) -> None:
        """Abort an open transaction and release the lock file; views already made keep
        their own mappings."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                self._abort()
            finally:
                if self._lock is not None:
                    self._lock.close()
                if self._package is not None:
                    self._package.close()
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


def _update_blocks(ks, records) -> np.ndarray:
    """An update's blocks: block numbers `ks` and their new records."""
    out = np.empty(len(ks), log.BLOCK)
    out["k"] = ks
    out["record"] = records
    return out


def _kept_filter(e: fmt.ArrayEntry, k: int) -> int | None:
    """The filter block `k` of `e` keeps when it is encoded again: its own, unless it was
    stored raw (None: pick one) (FORMAT.md 7)."""
    old = e.compression["blocks"][k]
    return int(old["filter"]) if old["codec"] == compress.ZSTD else None


def _live_blocks(view: BlockView, level: int, block_rows: int, records: list):
    """The live rows of compressed `view` encoded afresh in blocks of `block_rows` rows: yields
    their stored bytes, whole blocks of about _COPY_BYTES at a time, and appends their records
    (placed one after another from offset 0) to `records`."""
    r, n, offset = view.row_bytes, view.shape[0], 0
    # Whole filter groups at a time, so the chunks do not change which filter a block gets.
    group = compress.filter_group(r * block_rows)
    step = block_rows * group * max(1, _COPY_BYTES // max(1, r * block_rows * group))
    unit = compress.unit_of(view.dtype)
    records.append(np.zeros(0, compress.RECORD))
    for start in range(0, n, step):
        stop = min(n, start + step)
        buf = np.empty((stop - start) * r, np.uint8)
        view.read(start, stop, buf)
        chunks, recs = compress.encode_rows(
            buf, stop - start, r, unit, level, block_rows, offset, start // block_rows
        )
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
        self._rows = entry.row_map
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

    def __init__(self, entry: fmt.ArrayEntry, mapping: mmap.mmap | None, known=None):
        """`known`: a BlockView of the same file made before, whose frames were checked."""
        super().__init__(entry, mapping)
        self._blocks = entry.blocks
        self._block_rows = entry.compression["block_rows"]
        self._unit = compress.unit_of(entry.dtype)
        # The last block decoded, as (k, rows): reads in small steps (stream_load's batches of
        # 1000 rows, sequential slices) fall in the same block again and again, and decoding
        # it each time made stream_load about 50x slower. Blocks never change, so it stays valid.
        self._last: tuple | None = None
        if self._buf is not None:
            self._check_frames(known)

    def _check_frames(self, known: BlockView | None) -> None:
        """Check the frame headers of the blocks `known` did not check (FORMAT.md 7): those
        after the first record that differs, or after its last block (whose rows changed)."""
        e, blocks, br = self.entry, self._blocks, self._block_rows
        start = 0
        if known is not None and len(known._blocks):
            old, m = known._blocks, min(len(known._blocks), len(blocks))
            # Compared as 8-byte words, 3 a record: much faster than field by field.
            differ = np.flatnonzero(old[:m].view("<u8") != blocks[:m].view("<u8"))
            start = min(len(old) - 1, int(differ[0]) // 3 if len(differ) else m)
        what = f"array {e.name!r} in {e.file}"
        try:
            compress.check_frames(self._buf, blocks[start:], e.shape[0] - start * br, br,
                                  self.row_bytes, self._unit, what)  # fmt: skip
        except CorruptStoreError:
            if start:  # checked again whole, so that the error names the right block
                compress.check_frames(self._buf, blocks, e.shape[0], br, self.row_bytes,
                                      self._unit, what)  # fmt: skip
            raise

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
