"""The metadata: its classes, the snapshot `metadata.npkm` (MessagePack) and the validation
of entries, which the log's `put` shares (FORMAT.md 2, 7, 9)."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import msgpack
import numpy as np

from .._dtypes import SUPPORTED
from .._errors import CorruptStoreError
from . import compress
from .naming import is_data_file_of
from .rows import RowMap

VERSION = 2
# Sizes and offsets are signed 64-bit in the OS (off_t) and in the Rust core.
_MAX = 2**63 - 1


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


NO_ROWS = _frozen(np.zeros(0, np.int64))


@dataclass(frozen=True, eq=False)
class ArrayEntry:
    """One array. `shape` is physical; `deleted` holds the physical indexes of dropped rows
    (ascending int64, read-only). Entries are never changed, only replaced, so a View can keep
    one as its snapshot."""

    name: str
    file: str
    dtype: str
    shape: tuple
    deleted: np.ndarray
    modified_us: int
    compression: dict | None = None

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the physical rows, dropped ones included: what the data file must hold."""
        return self.shape[0] * self.row_bytes

    @property
    def rows(self) -> int:
        return self.shape[0] - len(self.deleted)

    @property
    def codec(self) -> object:
        """None for a raw array, else the compression map's codec (maybe one not known)."""
        return None if self.compression is None else self.compression.get("codec")

    @property
    def zstd(self) -> bool:
        """Whether the array is compressed with the codec this numpack reads."""
        return self.codec == compress.CODEC

    @property
    def blocks(self) -> np.ndarray:
        """The block index of a zstd array: read-only records (validated when decoded)."""
        return self.compression["blocks"]

    @functools.cached_property
    def file_bytes(self) -> int:
        """How long the data file must be: the physical rows of a raw array, the end of the
        last block of a compressed one (0 when the codec is not known)."""
        if self.compression is None:
            return self.nbytes
        if not self.zstd or not len(self.blocks):
            return 0
        # Offsets and sizes are at most _MAX (checked by decode), so the sum cannot wrap.
        return int((self.blocks["offset"] + self.blocks["size"]).max())

    @functools.cached_property
    def row_map(self) -> RowMap:
        """Logical to physical rows; built once per entry, as it costs O(dropped rows)."""
        return RowMap(self.deleted)

    @property
    def logical_shape(self) -> tuple:
        return (self.rows,) + self.shape[1:]


class Metadata:
    """The store's metadata: the snapshot with the log's commit records applied (FORMAT.md 2,
    6). Never changed in place: applying a commit makes a new one, so a reader can keep one.

    `version` is 1 for a store not yet upgraded (no log), else VERSION; `positions` maps each
    name to its index in `arrays`, so that finding an array costs no scan.
    """

    __slots__ = ("next_file_id", "arrays", "generation", "version", "positions")

    def __init__(
        self,
        next_file_id: int,
        arrays: tuple,
        generation: int = 1,
        version: int = VERSION,
        positions: dict | None = None,
    ):
        self.next_file_id = next_file_id
        self.arrays = arrays
        self.generation = generation
        self.version = version
        if positions is None:
            positions = {e.name: i for i, e in enumerate(arrays)}
        self.positions = positions

    def find(self, name: str) -> ArrayEntry | None:
        i = self.positions.get(name)
        return None if i is None else self.arrays[i]

    def derive(self, **changes) -> Metadata:
        """A copy with some fields changed; `positions` is shared unless given."""
        fields = {k: getattr(self, k) for k in self.__slots__}
        fields.update(changes)
        return Metadata(**fields)


def entry_map(e: ArrayEntry) -> dict:
    """The entry map of an array (FORMAT.md 2), as the snapshot and a log `put` hold it."""
    compression = e.compression
    if e.zstd:
        compression = dict(compression, blocks=compress.pack(compression["blocks"]))
    return {
        "name": e.name,
        "file": e.file,
        "dtype": e.dtype,
        "shape": list(e.shape),
        "deleted": e.deleted.astype("<u8").tobytes(),
        "modified_us": e.modified_us,
        "compression": compression,
    }


def encode(meta: Metadata) -> bytes:
    """The snapshot of `meta`, in this version."""
    doc = {
        "format": "numpack",
        "version": VERSION,
        "generation": meta.generation,
        "next_file_id": meta.next_file_id,
        "arrays": [entry_map(e) for e in meta.arrays],
    }
    return msgpack.packb(doc, use_bin_type=True)


def zstd_map(level: int, block_rows: int, records: np.ndarray) -> dict:
    """The `compression` value of a zstd array; its `blocks` are the records themselves, made
    read-only (packed to bytes only when written)."""
    return {
        "codec": compress.CODEC,
        "level": level,
        "block_rows": block_rows,
        "blocks": _frozen(records),
    }


def _is_int(x) -> bool:
    return type(x) is int  # not bool, which Python counts as an int


def decode(data: bytes, path: str) -> Metadata:
    """Parse and validate a snapshot (version 1 or 2); every defect raises CorruptStoreError
    naming `path` (the store). Data files are checked by the caller (`check_file`), on the
    metadata the log makes of the snapshot."""

    def bad(why: str) -> CorruptStoreError:
        return CorruptStoreError(f"{path}: metadata.npkm {why}")

    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack signals garbage with several exception types
        raise bad(f"is not valid MessagePack ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise bad(f"holds a {type(doc).__name__}, not a map")
    if doc.get("format") != "numpack":
        raise bad(f"has format {doc.get('format')!r}, not 'numpack'")
    version = doc.get("version")
    if not _is_int(version) or version < 1:
        raise bad(f"has an invalid version {version!r}")
    if version > VERSION:
        raise CorruptStoreError(
            f"{path}: the store has format version {version}, newer than version {VERSION} "
            "that this numpack supports; upgrade numpack"
        )
    # Version 1 has no log, hence no generation (FORMAT.md 9).
    generation = doc.get("generation") if version > 1 else 1
    if not _is_int(generation) or not 1 <= generation <= _MAX:
        raise bad(f"has an invalid generation {generation!r}")
    next_file_id = doc.get("next_file_id")
    if not _is_int(next_file_id) or not 0 <= next_file_id <= _MAX:
        raise bad(f"has an invalid next_file_id {next_file_id!r}")
    arrays = doc.get("arrays")
    if not isinstance(arrays, list):
        raise bad("has no list of arrays")
    entries = [parse_entry(a, f"arrays[{i}]", bad) for i, a in enumerate(arrays)]
    meta = Metadata(next_file_id, tuple(entries), generation, version)
    if len(meta.positions) != len(entries):
        seen = set()
        for e in entries:
            if e.name in seen:
                raise bad(f"lists array {e.name!r} twice")
            seen.add(e.name)
    return meta


def shape_fits(shape, dtype: str) -> bool:
    """Whether `shape` is possible (FORMAT.md 2): at least one dimension, each in
    [0, 2^63 - 1], and the bytes of its non-zero dimensions (as NumPy counts: rows must fit
    even when there are none) at most 2^63 - 1."""
    return (
        isinstance(shape, list)
        and bool(shape)
        and all(_is_int(d) and 0 <= d <= _MAX for d in shape)
        and math.prod(d for d in shape if d) * np.dtype(dtype).itemsize <= _MAX
    )


def parse_entry(a, where: str, bad) -> ArrayEntry:
    """Validate an entry map (of the snapshot, or of a log `put`); `where` says which one,
    `bad` makes the error."""
    if not isinstance(a, dict):
        raise bad(f"{where} is not a map")
    name = a.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where} has an invalid name {name!r}")
    what = f"array {name!r}"
    dtype = a.get("dtype")
    if not isinstance(dtype, str) or dtype not in SUPPORTED:
        raise bad(f"{what} has unknown dtype {dtype!r}")
    file = a.get("file")
    if not isinstance(file, str) or not is_data_file_of(name, file):
        raise bad(f"{what} names data file {file!r}, not one its name derives")
    shape = a.get("shape")
    if not shape_fits(shape, dtype):
        raise bad(f"{what} has an impossible shape {shape!r}")
    raw = a.get("deleted")
    if not isinstance(raw, bytes) or len(raw) % 8:
        raise bad(f"{what} has a torn dropped-row list")
    deleted = np.frombuffer(raw, "<u8")
    if len(deleted) and (np.any(deleted[1:] <= deleted[:-1]) or deleted[-1] >= shape[0]):
        raise bad(f"{what} has an invalid dropped-row list")
    modified_us = a.get("modified_us")
    if not _is_int(modified_us):
        raise bad(f"{what} has an invalid modified_us {modified_us!r}")
    if "compression" not in a:  # nil for raw arrays, but present (FORMAT.md 2)
        raise bad(f"{what} has no compression key")
    compression = a["compression"]
    if compression is not None and not isinstance(compression, dict):
        raise bad(f"{what} has an invalid compression {compression!r}")
    if compression is not None and compression.get("codec") == compress.CODEC:
        row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
        records = _check_compression(compression, shape[0], row_bytes, what, bad)
        compression = dict(compression, blocks=records)
    # Values below shape[0] <= _MAX, so int64 holds them and row arithmetic stays signed.
    rows = _frozen(deleted.astype(np.int64)) if len(deleted) else NO_ROWS
    return ArrayEntry(name, file, dtype, tuple(shape), rows, modified_us, compression)


def _check_compression(c: dict, rows: int, row_bytes: int, what: str, bad) -> np.ndarray:
    """The map of a zstd array; returns its block records. A codec this numpack does not know
    is not checked: only that array fails, when it is used.

    The sizes are checked against each other before anything is read or allocated (FORMAT.md
    7): a block cannot hold more than MAX_RATIO raw bytes per stored byte, and no two
    records overlap. With the data file checked to hold every record (by the caller), the
    raw size of an array is bounded by its file's."""
    level, block_rows, blob = c.get("level"), c.get("block_rows"), c.get("blocks")
    if not _is_int(level) or not -(2**31) <= level < 2**31:
        raise bad(f"{what} has an invalid compression level {level!r}")
    if not _is_int(block_rows) or not 1 <= block_rows <= _MAX:
        raise bad(f"{what} has an invalid block_rows {block_rows!r}")
    count = compress.block_count(rows, block_rows)
    if not isinstance(blob, bytes) or len(blob) != count * compress.RECORD.itemsize:
        raise bad(f"{what} does not have a block index of {count} blocks")
    r = compress.unpack(blob)
    check_records(r, what, bad)
    check_sizes(r, np.arange(count), rows, block_rows, row_bytes, what, bad)
    # Blocks are only ever appended, so no two records share a byte: a record copied over
    # another (same rows, size and CRC) would otherwise read as that block's rows.
    used = r[r["size"] > 0]
    used = used[np.argsort(used["offset"], kind="stable")]
    if np.any(used["offset"][1:] < used["offset"][:-1] + used["size"][:-1]):
        raise bad(f"{what} has block records that overlap")
    return r


def check_records(r: np.ndarray, what: str, bad) -> None:
    """Each block record alone: offsets and sizes fit an off_t, codec and filter are known."""
    if np.any(
        (r["offset"] > _MAX)
        | (r["size"] > _MAX)
        | (r["codec"] > compress.ZSTD)
        | (r["filter"] > compress.GCD)
    ):
        raise bad(f"{what} has an invalid block record")


def check_sizes(r, ks, rows: int, block_rows: int, row_bytes: int, what: str, bad) -> None:
    """Blocks `ks` of index `r` must store enough bytes for their rows: at least one byte per
    MAX_RATIO raw bytes (FORMAT.md 7)."""
    if not len(ks):
        return
    # Block k holds block_rows rows, the last one the rest; rows * row_bytes <= _MAX (the
    # shape fits), so the products stay in int64.
    n = np.minimum(block_rows, rows - ks * block_rows) * row_bytes
    # Sizes are at most _MAX (check_records), so int64 compares them exactly.
    if np.any(r["size"][ks].astype(np.int64) < -(-n // compress.MAX_RATIO)):
        raise bad(f"{what} has a block whose stored bytes cannot hold its rows")


def check_file(e: ArrayEntry, data_dir: str, path: str) -> None:
    """A raw array's data file must hold all its physical rows (it may hold more); a
    compressed array's, every block its index names."""
    if not e.file_bytes:
        return
    try:
        size = os.stat(os.path.join(data_dir, e.file)).st_size
    except FileNotFoundError:
        raise CorruptStoreError(
            f"{path}: data file {e.file} of array {e.name!r} is missing"
        ) from None
    check_size(e, size, f"{path}: data file {e.file}")


def check_size(e: ArrayEntry, size: int, what: str) -> None:
    """`check_file` for a data file of `size` bytes, which `what` names."""
    need = e.file_bytes
    if size < need:
        raise CorruptStoreError(
            f"{what} of array {e.name!r} holds {size} bytes; "
            f"its {'block index' if e.compression is not None else 'shape'} needs {need}"
        )
