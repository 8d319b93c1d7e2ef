"""The commit log, numpack.log (FORMAT.md 6): its header, record framing, the records, and
applying commit records to the metadata.

The log is a 16-byte header (magic, generation) and records `length | CRC-32 | payload`, each
payload one MessagePack map: a commit (ops applied to the metadata, all or none) or an undo
record (old contents of rows a `replace` overwrites in place).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import msgpack
import numpy as np

from .._errors import CorruptStoreError, InvalidArgumentError
from . import compress
from . import format as fmt
from .naming import is_data_file
from .rows import last_occurrences

NAME = "numpack.log"
MAGIC = b"NPKLOG02"
HEADER = 16
# Before a record's payload: its length and CRC-32.
_FRAME = struct.Struct("<II")
_MAX_PAYLOAD = 2**32 - 1
# Old row bytes one undo record holds at most, so a huge replace is not one huge record.
UNDO_BYTES = 64 << 20
# An item of an update's `blocks`: block number, then its 24-byte record (FORMAT.md 7).
BLOCK = np.dtype([("k", "<u8"), ("record", compress.RECORD)])
assert BLOCK.itemsize == 32


def header(generation: int) -> bytes:
    return MAGIC + struct.pack("<Q", generation)


def generation(data: bytes, what: str) -> int:
    """The generation of a log that starts with `data`."""
    if len(data) < HEADER or data[:8] != MAGIC:
        raise CorruptStoreError(f"{what} is not a numpack log (no {MAGIC.decode()} header)")
    return struct.unpack_from("<Q", data, 8)[0]


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Put:
    """The entry replaces the array of its name (same position), or is added at the end."""

    entry: fmt.ArrayEntry


@dataclass(frozen=True, eq=False)
class Drop:
    name: str


@dataclass(frozen=True, eq=False)
class Update:
    """Changes one array: `rows` its physical row count, `blocks` (BLOCK items) records of its
    block index, `deleted` (ascending int64) rows it drops; None where nothing changes."""

    name: str
    modified_us: int
    rows: int | None = None
    blocks: np.ndarray | None = None
    deleted: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Commit:
    next_file_id: int
    ops: list


@dataclass(frozen=True, eq=False)
class Undo:
    """The old contents `old` of physical `rows` (uint64) of raw data file `file`."""

    file: str
    row_bytes: int
    rows: np.ndarray
    old: bytes


def frame(payload: bytes) -> bytes:
    if len(payload) > _MAX_PAYLOAD:
        raise InvalidArgumentError(
            f"a log record of {len(payload)} bytes is over the format's limit of 4 GiB; "
            "make the change in smaller calls"
        )
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _pack(doc: dict) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def _u64s(values: np.ndarray) -> bytes:
    return np.asarray(values).astype("<u8", copy=False).tobytes()


def commit_record(next_file_id: int, ops) -> bytes:
    """A framed commit record."""
    doc = {"t": "commit", "next_file_id": next_file_id, "ops": [_op_map(op) for op in ops]}
    return frame(_pack(doc))


def _op_map(op) -> dict:
    if isinstance(op, Put):
        return {"op": "put", "entry": fmt.entry_map(op.entry)}
    if isinstance(op, Drop):
        return {"op": "drop", "name": op.name}
    doc = {"op": "update", "name": op.name, "modified_us": op.modified_us}
    if op.rows is not None:
        doc["rows"] = op.rows
    if op.blocks is not None:
        doc["blocks"] = op.blocks.tobytes()
    if op.deleted is not None:
        doc["deleted"] = _u64s(op.deleted)
    return doc


def blocks(first: int, records: np.ndarray) -> np.ndarray:
    """An update's `blocks`: `records` numbered from block `first` on."""
    out = np.empty(len(records), BLOCK)
    out["k"] = np.arange(first, first + len(records))
    out["record"] = records
    return out


def undo_records(file: str, row_bytes: int, rows: np.ndarray, old) -> list[bytes]:
    """Framed undo records of the `old` contents of physical `rows` of `file`, at most
    UNDO_BYTES of rows each (at least one row)."""
    old = memoryview(old).cast("B")
    per = max(1, UNDO_BYTES // max(1, row_bytes))
    out = []
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        doc = {
            "t": "undo",
            "file": file,
            "row_bytes": row_bytes,
            "rows": _u64s(chunk),
            "old": old[start * row_bytes : (start + len(chunk)) * row_bytes],
        }
        out.append(frame(_pack(doc)))
    return out


def scan(data) -> list[tuple[memoryview, int]]:
    """The whole records at the start of `data` (log bytes after the header, or after a
    record), each as its payload and the offset just past it. Stops at the first torn one:
    a record that runs past the end, whose CRC does not match, or of length 0 (zeros a lost
    write left behind: no record is empty)."""
    view = memoryview(data).cast("B")
    out, at = [], 0
    while at + _FRAME.size <= len(view):
        length, crc = _FRAME.unpack_from(view, at)
        end = at + _FRAME.size + length
        if not length or end > len(view):
            break
        payload = view[at + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            break
        out.append((payload, end))
        at = end
    return out


def _is_int(x) -> bool:
    return type(x) is int  # not bool, which Python counts as an int


def decode(payload, what: str) -> Commit | Undo:
    """The record of a whole payload; one that breaks the format is CorruptStoreError.
    `what` names the log."""

    def bad(why: str) -> CorruptStoreError:
        return CorruptStoreError(f"{what}: a record {why}")

    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack signals garbage with several exception types
        raise bad(f"is not one MessagePack map ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise bad("is not a map")
    kind = doc.get("t")
    if kind == "commit":
        next_file_id = doc.get("next_file_id")
        if not _is_int(next_file_id) or not 0 <= next_file_id <= fmt._MAX:
            raise bad(f"has an invalid next_file_id {next_file_id!r}")
        ops = doc.get("ops")
        if not isinstance(ops, list):
            raise bad("has no list of ops")
        return Commit(next_file_id, [_decode_op(op, i, bad) for i, op in enumerate(ops)])
    if kind == "undo":
        return _decode_undo(doc, bad)
    raise bad(f"has an unknown kind {kind!r}")


def _decode_undo(doc: dict, bad) -> Undo:
    file, row_bytes = doc.get("file"), doc.get("row_bytes")
    rows, old = doc.get("rows"), doc.get("old")
    if (
        not isinstance(file, str)
        or not is_data_file(file)
        or not _is_int(row_bytes)
        or not 0 <= row_bytes <= fmt._MAX
        or not isinstance(rows, bytes)
        or len(rows) % 8
        or not isinstance(old, bytes)
    ):
        raise bad("is a malformed undo record")
    if len(old) != len(rows) // 8 * row_bytes:
        raise bad("is an undo record whose rows and bytes disagree")
    return Undo(file, row_bytes, np.frombuffer(rows, "<u8"), old)


def _decode_op(op, i: int, bad):
    if not isinstance(op, dict):
        raise bad(f"has op {i} that is not a map")
    kind = op.get("op")
    if kind == "put":
        return Put(fmt.parse_entry(op.get("entry"), f"has op {i} whose entry", bad))
    name = op.get("name")
    if not isinstance(name, str):
        raise bad(f"has op {i} without a name")
    if kind == "drop":
        return Drop(name)
    if kind != "update":
        raise bad(f"has op {i} of unknown kind {kind!r}")
    modified_us, rows = op.get("modified_us"), op.get("rows")
    if not _is_int(modified_us):
        raise bad(f"updates array {name!r} with an invalid modified_us {modified_us!r}")
    if rows is not None and not _is_int(rows):
        raise bad(f"updates array {name!r} with invalid rows {rows!r}")
    return Update(
        name,
        modified_us,
        rows,
        _bin(op, "blocks", BLOCK, name, bad),
        _bin(op, "deleted", "<u8", name, bad),
    )


def _bin(op: dict, key: str, dtype, name: str, bad) -> np.ndarray | None:
    """An update's optional bin of items of `dtype`."""
    raw = op.get(key)
    if raw is None:
        return None
    size = np.dtype(dtype).itemsize
    if not isinstance(raw, bytes) or len(raw) % size:
        raise bad(f"updates array {name!r} with a torn {key}")
    return np.frombuffer(raw, dtype)


# -- applying commits -----------------------------------------------------------------------


def apply(meta: fmt.Metadata, ops, what: str, next_file_id: int | None = None) -> fmt.Metadata:
    """The metadata after `ops` (and with the commit's `next_file_id`, which must not
    decrease). An op that breaks the format's rules is CorruptStoreError; `what` names the
    log. Costs what the ops change, not what the store holds, unless arrays are dropped."""

    def bad(why: str) -> CorruptStoreError:
        return CorruptStoreError(f"{what}: a commit record {why}")

    if next_file_id is None:
        next_file_id = meta.next_file_id
    elif next_file_id < meta.next_file_id:
        raise bad(f"decreases next_file_id to {next_file_id}")
    arrays, positions, shared = list(meta.arrays), meta.positions, True
    dropped = False
    for op in ops:
        name = op.entry.name if isinstance(op, Put) else op.name
        i = positions.get(name)
        if isinstance(op, Put) and i is not None:
            arrays[i] = op.entry
            continue
        if isinstance(op, Update):
            if i is None:
                raise bad(f"updates array {name!r}, which does not exist")
            arrays[i] = _update(arrays[i], op, bad)
            continue
        if shared:
            positions, shared = dict(positions), False
        if isinstance(op, Put):
            positions[name] = len(arrays)
            arrays.append(op.entry)
        elif i is None:
            raise bad(f"drops array {name!r}, which does not exist")
        else:
            # A hole, closed after the last op: positions of the others stay valid meanwhile.
            del positions[name]
            arrays[i] = None
            dropped = True
    if dropped:
        arrays = [e for e in arrays if e is not None]
        positions = None
    return meta.derive(arrays=tuple(arrays), positions=positions, next_file_id=next_file_id)


def _update(e: fmt.ArrayEntry, u: Update, bad) -> fmt.ArrayEntry:
    """`e` after update `u` (FORMAT.md 6)."""

    def broken(why: str) -> CorruptStoreError:
        return bad(f"updates array {e.name!r}: {why}")

    shape = e.shape
    if u.rows is not None:
        if u.rows < shape[0]:
            raise broken(f"it shrinks to {u.rows} rows")
        if not fmt.shape_fits([u.rows, *shape[1:]], e.dtype):
            raise broken(f"it gets an impossible shape {[u.rows, *shape[1:]]}")
        shape = (u.rows, *shape[1:])
    compression, end = e.compression, None
    if e.zstd:
        compression, end = _update_index(e, shape[0], u.blocks, broken)
    elif u.blocks is not None:
        raise broken("it sets blocks of an array that is not zstd-compressed")
    deleted = e.deleted
    if u.deleted is not None and len(u.deleted):
        deleted = _drop(e.deleted, u.deleted, shape[0], broken)
    out = fmt.ArrayEntry(e.name, e.file, e.dtype, shape, deleted, u.modified_us, compression)
    if end is not None:
        # Blocks are only appended, so the file must reach past every record it ever had:
        # known without a pass over the whole index.
        out.__dict__["file_bytes"] = end
    return out


def _drop(deleted: np.ndarray, new: np.ndarray, rows: int, broken) -> np.ndarray:
    """`deleted` with the physical rows `new` (ascending, each below `rows`, none dropped)."""
    if np.any(new[1:] <= new[:-1]) or int(new[-1]) >= rows:
        raise broken("it drops an invalid list of rows")
    new = new.astype(np.int64)  # below rows <= 2^63 - 1
    at = np.searchsorted(deleted, new)
    if len(deleted) and np.any(deleted[np.minimum(at, len(deleted) - 1)] == new):
        raise broken("it drops rows that are already dropped")
    out = np.insert(deleted, at, new)
    out.flags.writeable = False
    return out


def _update_index(e: fmt.ArrayEntry, rows: int, items: np.ndarray | None, broken):
    """The compression map of zstd array `e` grown to `rows` physical rows, with the block
    records of `items` set or appended, and the end of its last stored byte."""
    c, old = e.compression, e.blocks
    block_rows, end = c["block_rows"], e.file_bytes
    count = compress.block_count(rows, block_rows)
    if items is None or not len(items):
        if count != len(old):
            raise broken(f"it leaves {len(old)} blocks where {count} are needed")
        records, ks = old, np.zeros(0, np.int64)
    else:
        ks, new = items["k"], items["record"]
        fmt.check_records(new, f"array {e.name!r}", broken)
        # Item by item, k sets a block below the index's length or appends one at it.
        before = np.maximum(len(old), np.maximum.accumulate(ks) + 1)
        if int(ks[0]) > len(old) or np.any(ks[1:] > before[:-1]):
            raise broken("it leaves a gap in the block index")
        if int(before[-1]) != count:
            raise broken(f"it leaves {int(before[-1])} blocks where {count} are needed")
        first = old[int(ks[0])] if int(ks[0]) < len(old) else None
        if first is not None and _grows_in_place(first, new[0], end):
            end = int(first["offset"])
        end = _new_end(new, end, broken)
        ks = ks.astype(np.int64)  # below count
        # Copied as bytes: a copy field by field costs about 10x more.
        records = np.empty(count, compress.RECORD)
        records.view(np.uint8)[: old.nbytes] = old.view(np.uint8)
        last, at = last_occurrences(ks)
        records[last] = new[at]
    # The blocks set, and the old and new last ones (their rows changed), must hold theirs.
    check = np.unique(np.concatenate((ks, [len(old) - 1, count - 1])))
    check = check[(check >= 0) & (check < count)]
    fmt.check_sizes(records, check, rows, block_rows, e.row_bytes, f"array {e.name!r}", broken)
    if records is not old:
        records.flags.writeable = False
        c = dict(c, blocks=records)  # keys this numpack does not know stay as they were
    return c, end


def _grows_in_place(old, new, end: int) -> bool:
    """Whether record `new` is `old` grown in place: both stored raw at one offset, `new` no
    shorter, and `old` ending where every record of the index ends (FORMAT.md 6, `update`)."""
    return bool(
        old["codec"] == compress.STORED_RAW
        and new["codec"] == compress.STORED_RAW
        and new["offset"] == old["offset"]
        and new["size"] >= old["size"]
        and int(old["offset"]) + int(old["size"]) == end
    )


def _new_end(new: np.ndarray, end: int, broken) -> int:
    """Blocks are only ever appended (FORMAT.md 7): each new record must lie past every record
    before the update and past the new ones before it. Returns the end of the last byte."""
    offset, size = new["offset"], new["size"]
    ends = offset + size  # each at most 2^63 - 1 (check_records): no wrap in uint64
    reach = np.maximum(np.uint64(end), np.maximum.accumulate(ends))
    prior = np.concatenate(([np.uint64(end)], reach[:-1]))
    if np.any((size > 0) & (offset < prior)):
        raise broken("it has a block record that overlaps blocks written before it")
    return int(reach[-1])
