"""Stores written by the public NumPack 0.7 (BirchKwok/NumPack): reading its format, and
`import_numpack07`, which converts one into a numpack store.

A 0.7 store is a directory. The layout below is its `NumPack_File_Format_Specification.spec`,
completed from its Rust sources (src/storage/binary_metadata.rs, deletion_bitmap.rs and
src/io/parallel_io.rs) where the spec is silent; every integer is little-endian.

- `metadata.npkm`: the magic b"NPKB", version u32 (1), total size u64, array count u32, then
  per array: name (u32 length, UTF-8), shape (u32 ndim, u64 each; dropped rows included),
  data file (u32 length, UTF-8, relative to the store), last modified u64 (microseconds),
  size in bytes u64, dtype code u8 (`DTYPES`), compression code u8 (0: none), level u32,
  original and compressed sizes u64, and a u8 flag followed, when set, by block information:
  enabled u8, block size u64, block count u64, then u32 blocks of three u64.
- the rows, raw in C order, in the data file; or, for an array larger than 0.7's segment size
  (256 MiB unless NUMPACK_SEGMENT_TARGET_BYTES says otherwise), the data file is a JSON
  manifest `data_<name>.npkseg`, {"version": 1, "segments": [{"file", "rows", "bytes"}, ...]},
  of files holding consecutive rows.
- `deleted_<name>.npkb`, for arrays with dropped rows: a header of two u64 (rows, rows
  dropped; files of older 0.7 versions have none) and a bitmap of the rows in u64 words, bit
  `r % 64` of word `r // 64` set when row `r` is live. That is, byte `r // 8` bit `r % 8`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from . import _progress
from ._compat07 import chunk_rows, user_stacklevel
from ._errors import CorruptStoreError, InvalidArgumentError, InvalidTypeError, os_errors
from ._lazy import as_bytes

if TYPE_CHECKING:
    from ._store import NumPack

StrPath = Union[str, "os.PathLike[str]"]

MAGIC = b"NPKB"
METADATA = "metadata.npkm"
# The dtypes of 0.7's dtype codes 0..13 (its DataType enum), as numpack stores them.
DTYPES = (
    "|b1", "|u1", "<u2", "<u4", "<u8", "|i1", "<i2", "<i4", "<i8",
    "<f2", "<f4", "<f8", "<c8", "<c16",
)  # fmt: skip
# Bitmap bytes read at a time when counting live rows (8 Mi rows).
_BITMAP_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """A file holding `rows` consecutive rows of an array, from its start."""

    path: str
    rows: int


@dataclass(frozen=True)
class Bitmap:
    """The deletion bitmap of an array: which of its rows are live."""

    path: str
    offset: int  # where the words start: after the header, or 0 in headerless files

    def mask(self, f: io.BufferedIOBase, start: int, stop: int) -> np.ndarray:
        """Whether each of rows [start, stop) is live, read from the open bitmap file `f`."""
        lo, hi = start // 8, -(-stop // 8)
        f.seek(self.offset + lo)
        data = f.read(hi - lo)
        if len(data) != hi - lo:
            raise CorruptStoreError(f"{self.path}: the bitmap ends early (changed meanwhile?)")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[start - 8 * lo : stop - 8 * lo].astype(bool)


@dataclass(frozen=True)
class Array07:
    """One array of a 0.7 store, checked against its files."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # dropped rows included
    parts: tuple[Part, ...]
    bitmap: Bitmap | None

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    def chunks(self, rows: int) -> Iterator[tuple[np.ndarray, int]]:
        """(live rows, rows read) of up to `rows` stored rows at a time, in order: memory holds
        one chunk, whatever the array's size."""
        with contextlib.ExitStack() as stack:
            bits = stack.enter_context(open(self.bitmap.path, "rb")) if self.bitmap else None
            start = 0
            for part in self.parts:
                with open(part.path, "rb") as f:
                    for at in range(0, part.rows, rows):
                        n = min(rows, part.rows - at)
                        out = np.empty((n, *self.shape[1:]), self.dtype)
                        _read_into(f, out, part.path)
                        if bits is not None and self.bitmap is not None:
                            out = out[self.bitmap.mask(bits, start, start + n)]
                        start += n
                        yield out, n


def _read_into(f: io.BufferedIOBase, out: np.ndarray, path: str) -> None:
    buf, got = as_bytes(out).data, 0
    while got < len(buf):
        k = f.readinto(buf[got:])
        if not k:
            raise CorruptStoreError(f"{path}: the data ends early (changed meanwhile?)")
        got += k


def is_store07(path: StrPath) -> bool:
    """Whether `path` looks like a store written by NumPack 0.7 (its metadata's magic)."""
    try:
        with open(os.path.join(path, METADATA), "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


class _Cursor:
    """Reads the fields of `metadata.npkm` in order; CorruptStoreError past its end."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where = data, 0, where

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise CorruptStoreError(f"{self.where}: ends early (truncated at byte {self.pos})")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def text(self, what: str) -> str:
        raw = self.take(self.uint(4))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptStoreError(f"{self.where}: {what} {raw!r} is not UTF-8") from None


def read_store(src: str) -> list[Array07]:
    """Every array of the 0.7 store in the directory `src`, by name, checked against its
    files: CorruptStoreError for a directory that is not such a store or is damaged,
    InvalidArgumentError for an array numpack cannot import."""
    where = os.path.join(src, METADATA)
    if not os.path.isdir(src):
        why = "not a directory" if os.path.exists(src) else "it does not exist"
        raise CorruptStoreError(f"{src} is not a NumPack 0.7 store: {why}")
    try:
        with open(where, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CorruptStoreError(f"{src} is not a NumPack 0.7 store: it has no {METADATA}") from None
    c = _Cursor(data, where)
    if data[:4] != MAGIC:
        raise CorruptStoreError(
            f"{src} is not a NumPack 0.7 store: {METADATA} does not start with {MAGIC!r}"
        )
    c.take(4)
    version = c.uint(4)
    if version != 1:
        raise InvalidArgumentError(f"{where}: metadata version {version}; numpack imports 1")
    c.take(8)  # total size of the arrays
    arrays: dict[str, Array07] = {}
    for _ in range(c.uint(4)):
        name = c.text("array name")
        shape = tuple(c.uint(8) for _ in range(c.uint(4)))
        data_file = c.text("data file name")
        c.take(8)  # last modified
        size, code, codec = c.uint(8), c.uint(1), c.uint(1)
        c.take(4 + 8 + 8)  # compression level, original and compressed sizes
        if c.uint(1):  # block compression: enabled, block size, block count, the blocks
            c.take(1 + 8 + 8)
            c.take(24 * c.uint(4))
        if name in arrays:
            raise CorruptStoreError(f"{where}: the array {name!r} is listed twice")
        arrays[name] = _array(src, name, shape, data_file, size, code, codec)
    if c.pos != len(data):
        raise CorruptStoreError(f"{where}: {len(data) - c.pos} bytes after the last array")
    return [arrays[n] for n in sorted(arrays)]


def _array(
    src: str, name: str, shape: tuple[int, ...], data_file: str, size: int, code: int, codec: int
) -> Array07:
    where = f"{src}: array {name!r}"
    if not name:
        raise InvalidArgumentError(f"{src}: an array has an empty name, which numpack refuses")
    if code >= len(DTYPES):
        raise CorruptStoreError(f"{where}: unknown dtype code {code}")
    if codec != 0:
        raise InvalidArgumentError(
            f"{where} is compressed (compression code {codec}), which NumPack 0.7's API never "
            "writes or reads; numpack cannot import it"
        )
    if not shape:
        raise InvalidArgumentError(
            f"{where} is 0-d, which NumPack 0.7 saves but cannot load; numpack stores rows"
        )
    if any(d >= 2**63 for d in shape):
        raise CorruptStoreError(f"{where}: impossible shape {shape}")
    dtype = np.dtype(DTYPES[code])
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=object))
    if row_bytes * shape[0] != size:
        raise CorruptStoreError(f"{where}: {size} bytes do not make shape {shape} of {dtype}")
    path = _inside(src, data_file, where)
    if data_file.endswith(".npkseg"):
        parts = _segments(src, path, shape[0], row_bytes, where)
    else:
        parts = (_part(path, shape[0], row_bytes, where),)
    return Array07(name, dtype, shape, parts, _bitmap(src, name, shape[0], where))


def _inside(src: str, rel: Any, where: str) -> str:
    """The path of the file `rel` names, refused unless it is inside the store."""
    if (
        not isinstance(rel, str)
        or not rel
        or os.path.isabs(rel)
        or "\0" in rel
        or ".." in rel.replace("\\", "/").split("/")
    ):
        raise CorruptStoreError(f"{where}: {rel!r} is not a file inside the store")
    return os.path.join(src, rel)


def _part(path: str, rows: int, row_bytes: int, where: str) -> Part:
    try:
        size = os.path.getsize(path)
    except OSError:
        raise CorruptStoreError(f"{where}: its data file {path} is missing") from None
    if size < rows * row_bytes:
        raise CorruptStoreError(
            f"{where}: {path} holds {size} bytes; its {rows} rows need {rows * row_bytes}"
        )
    return Part(path, rows)


def _segments(src: str, path: str, rows: int, row_bytes: int, where: str) -> tuple[Part, ...]:
    """The segment files of a segmented array, up to its `rows` rows."""
    try:
        with open(path, "rb") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CorruptStoreError(f"{where}: its segment list {path} is missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptStoreError(f"{where}: {path} is not a JSON segment list ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("segments"), list):
        raise CorruptStoreError(f"{where}: {path} is not a segment list")
    if manifest.get("version") != 1:
        raise InvalidArgumentError(
            f"{where}: segment list version {manifest.get('version')!r}; numpack imports 1"
        )
    parts, left = [], rows
    for seg in manifest["segments"]:
        ok = isinstance(seg, dict) and all(
            isinstance(seg.get(k), int) and seg[k] >= 0 for k in ("rows", "bytes")
        )
        if not ok or seg["bytes"] != seg["rows"] * row_bytes:
            raise CorruptStoreError(f"{where}: {path} has a bad segment {seg!r}")
        take = min(left, seg["rows"])
        if take:
            parts.append(_part(_inside(src, seg.get("file"), where), take, row_bytes, where))
            left -= take
    if left:
        raise CorruptStoreError(f"{where}: the segments of {path} hold fewer than {rows} rows")
    return tuple(parts)


def _bitmap(src: str, name: str, rows: int, where: str) -> Bitmap | None:
    """The deletion bitmap of the array `name`, or None when it has none (0.7 makes one at
    the first drop of rows). Files are told apart as 0.7 does: a header when the size fits
    the rows it gives."""
    path = os.path.join(src, f"deleted_{name}.npkb")
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(src):
        raise CorruptStoreError(f"{where}: the name would put its bitmap outside the store")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        if len(head) < 16:
            raise CorruptStoreError(f"{where}: its deletion bitmap {path} is too short")
        total, dropped = int.from_bytes(head[:8], "little"), int.from_bytes(head[8:], "little")
        if size == 16 + -(-total // 64) * 8:
            offset = 16
        else:  # no header: the words alone, for the array's rows
            offset, total, dropped = 0, rows, -1
            if size % 8 or size < -(-rows // 64) * 8:
                raise CorruptStoreError(f"{where}: its deletion bitmap {path} has a bad size")
        if total != rows:
            raise CorruptStoreError(
                f"{where}: its deletion bitmap {path} covers {total} rows, the array has {rows}"
            )
        live = _count_live(f, offset, rows, path)
    if dropped >= 0 and dropped != rows - live:
        warnings.warn(
            f"{where}: its deletion bitmap says {dropped} rows were dropped but marks "
            f"{rows - live}; NumPack 0.7 reads the marks (its appends can bring back dropped "
            "rows), so the import keeps the rows 0.7 shows",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return Bitmap(path, offset)


def _count_live(f: io.BufferedIOBase, offset: int, rows: int, path: str) -> int:
    f.seek(offset)
    live, left = 0, rows
    while left:
        data = f.read(min(_BITMAP_CHUNK, -(-left // 8)))
        if not data:
            raise CorruptStoreError(f"{path}: the bitmap ends early")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:left]
        live += int(np.count_nonzero(bits))
        left -= len(bits)
    return live


def _path(value: Any, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidTypeError(f"{what} must be a path, got {type(value).__name__}")
    return os.path.abspath(os.fspath(value))


def _copy(arrays: list[Array07], npk: NumPack, progress: bool) -> None:
    total = sum(a.row_bytes * a.shape[0] for a in arrays)
    with _progress.bar(progress, total, "numpack import 0.7") as bar, npk.transaction():
        for a in arrays:
            saved = False
            for rows, read in a.chunks(chunk_rows(a.row_bytes)):
                if not saved:
                    npk.save({a.name: rows})
                    saved = True
                elif len(rows):
                    npk.append({a.name: rows})
                bar.update(read * a.row_bytes)
            if not saved:  # no rows at all
                npk.save({a.name: np.empty((0, *a.shape[1:]), a.dtype)})


@os_errors
def import_numpack07(src: StrPath, dst: NumPack | StrPath, *, progress: bool = False) -> list[str]:
    """Convert the store that NumPack 0.7 wrote in the directory `src` into the numpack store
    `dst` (a path, or an open NumPack); returns the names of the arrays, sorted.

    Every array comes over with its dtype, its shape and the rows NumPack 0.7 shows: dropped
    rows are left out, appended and replaced rows are in, as are arrays 0.7 split into
    segment files. The copy streams, a chunk of about 32 MiB of rows at a time, whatever the
    arrays' sizes, and is one transaction: `dst` gets all the arrays or, when it fails, none
    (and a `dst` directory the call created is removed). An array of the same name in `dst` is
    replaced. `src` is only read. `progress=True` shows a tqdm bar of the bytes read (when
    tqdm is installed).

    The whole store is checked before anything is written: CorruptStoreError (an OSError)
    for a directory that is not a 0.7 store or whose files are damaged or disagree with its
    metadata, InvalidArgumentError (a ValueError) for what numpack cannot import (arrays 0.7
    marks compressed, 0-d arrays, an empty name, a metadata version other than 1);
    StoreIOError (an OSError) when a file cannot be read or written. A UserWarning tells of an
    array whose bitmap of dropped rows contradicts its own count (NumPack 0.7's appends can
    bring back dropped rows; the import keeps the rows 0.7 shows).
    """
    from ._store import NumPack

    progress = _progress.check(progress)
    src_dir = _path(src, "src")
    arrays = read_store(src_dir)
    target = dst.path if isinstance(dst, NumPack) else _path(dst, "dst")
    if os.path.realpath(target) == os.path.realpath(src_dir):
        raise InvalidArgumentError(
            f"dst is the NumPack 0.7 store {src_dir} itself: import into another directory"
        )
    if isinstance(dst, NumPack):
        _copy(arrays, dst, progress)
        return [a.name for a in arrays]
    created = not os.path.exists(target)
    try:
        with NumPack(target) as npk:
            _copy(arrays, npk, progress)
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return [a.name for a in arrays]


__all__ = ["Array07", "import_numpack07", "is_store07", "read_store"]
