"""Compressed arrays (FORMAT.md 7): the block index, the filters, and the encoding and
decoding of one block."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import zstandard

from .._errors import CorruptStoreError

CODEC = "zstd"
DEFAULT_LEVEL = 3
# Raw bytes a default block holds, about (a read decodes whole blocks, so a gather of a few
# rows costs a block each); those of the sample each filter is tried on; and those of the
# blocks that share the filter picked on the first one's sample (trying every candidate on
# each small block would cost more than compressing it).
DEFAULT_BLOCK_BYTES = 1 << 16
SAMPLE_BYTES = 1 << 14
FILTER_GROUP_BYTES = 1 << 20

# Raw bytes a zstd frame can decode to per stored byte, at most: every block of a frame
# decodes to at most 128 KiB (RFC 8878, Block_Maximum_Size) and takes at least 4 bytes (an
# RLE block: a 3-byte header and the byte to repeat). Metadata claiming more is corrupt.
MAX_RATIO = 32768

STORED_RAW, ZSTD = 0, 1
NONE, SHUFFLE, DELTA_SHUFFLE, BITSHUFFLE, DELTA_BITSHUFFLE, DECIMAL, GCD = range(7)
KEEP_RAW = -1  # not a filter: `encode_block` stores the block raw without trying one
FILTER_NAMES = (
    "none", "shuffle", "delta+shuffle", "bitshuffle", "delta+bitshuffle", "decimal", "gcd",
)  # fmt: skip
# The decimal filter's most decimal places, and its scales (exact in float64).
MAX_DECIMALS = 9
_POW10 = [10.0**d for d in range(MAX_DECIMALS + 1)]
_DELTAS = (DELTA_SHUFFLE, DELTA_BITSHUFFLE)
_BITS = (BITSHUFFLE, DELTA_BITSHUFFLE)

RECORD = np.dtype(
    [
        ("offset", "<u8"),
        ("size", "<u8"),
        ("crc32", "<u4"),
        ("codec", "u1"),
        ("filter", "u1"),
        ("pad", "<u2"),
    ]
)
assert RECORD.itemsize == 24

# zstandard's (de)compressor objects are not safe to share between threads; views are read
# from any thread without the store's lock, so each thread keeps its own.
_local = threading.local()


# zstd's shortest match in the byte-position runs. Matches shorter than this between bytes of
# one position are mostly chance (a mantissa byte's noise): they cost more than the literals
# they replace, and looking for them is most of the work (FORMAT.md 7).
RUN_MIN_MATCH = 7


def run_level(level: int) -> int:
    """The zstd level of the byte-position runs: two below the array's, at least 1; levels of
    1 and below as they are. At the default 3 they are compressed at 1: zstd's fast strategy
    finds the same few long matches at a fraction of the search (FORMAT.md 7)."""
    return max(level - 2, 1) if level > 1 else level


def _compressor(level: int, runs: bool = False) -> zstandard.ZstdCompressor:
    # libzstd clamps a level out of its range, but zstandard rejects one above its maximum: a
    # store another program wrote at such a level is written at the maximum, as libzstd would.
    level = min(level, zstandard.MAX_COMPRESSION_LEVEL)
    if runs:
        level = run_level(level)
    cache = _local.__dict__.setdefault("compressors", {})
    c = cache.get((level, runs))
    if c is None:
        # Only the level and the minimum match are set: zstd derives the rest from the level
        # and the frame's size, as it does for the level alone.
        params = zstandard.ZstdCompressionParameters(
            compression_level=level, min_match=RUN_MIN_MATCH if runs else 0
        )
        c = cache[(level, runs)] = zstandard.ZstdCompressor(compression_params=params)
    return c


def _compress(filtered, level: int, unit: int, f: int) -> bytes:
    """One zstd frame of a block's filtered bytes, declaring its size (FORMAT.md 7). After a
    byte shuffle or the gcd filter, the bytes of each of the `unit` byte positions follow one
    another (after gcd's divisor), and each gets a zstd block of its own (a flush ends one),
    so each has its own entropy tables: an exponent byte and a random mantissa byte share
    none."""
    data = memoryview(filtered).cast("B")
    parts, prefix = {SHUFFLE: (unit, 0), DELTA_SHUFFLE: (unit, 0), GCD: (unit, unit)}.get(f, (1, 0))
    part = (len(data) - prefix) // parts
    if parts < 2 or part == 0:
        return _compressor(level).compress(data)
    o = _compressor(level, runs=True).compressobj(size=len(data))
    out = []
    for k in range(parts):
        start = 0 if k == 0 else prefix + k * part
        out.append(o.compress(data[start : prefix + (k + 1) * part if k + 1 < parts else None]))
        out.append(
            o.flush(
                zstandard.COMPRESSOBJ_FLUSH_BLOCK
                if k + 1 < parts
                else zstandard.COMPRESSOBJ_FLUSH_FINISH
            )
        )
    return b"".join(out)


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def unit_of(dtype: str) -> int:
    """Bytes a filter unit spans: the itemsize, or half of it for complex dtypes, whose two
    parts are floats."""
    dt = np.dtype(dtype)
    return dt.itemsize // 2 if dt.kind == "c" else dt.itemsize


def default_block_rows(row_bytes: int) -> int:
    return max(1, DEFAULT_BLOCK_BYTES // row_bytes) if row_bytes else DEFAULT_BLOCK_BYTES


def filter_group(block_bytes: int) -> int:
    """How many consecutive blocks of `block_bytes` bytes make one filter group."""
    return max(1, FILTER_GROUP_BYTES // max(1, block_bytes))


def block_count(rows: int, block_rows: int) -> int:
    return -(-rows // block_rows)


def pack(records: np.ndarray) -> bytes:
    return np.ascontiguousarray(records, RECORD).tobytes()


def unpack(blob: bytes) -> np.ndarray:
    """The records of a block index (read-only); its length is checked by the caller."""
    return np.frombuffer(blob, RECORD)


# -- filters --------------------------------------------------------------------------------


def _shuffle(b: np.ndarray, unit: int) -> np.ndarray:
    # All first bytes of the units, then all second bytes...
    return b if unit == 1 else b.reshape(-1, unit).T.ravel()


def _unshuffle(b: np.ndarray, unit: int) -> np.ndarray:
    return b if unit == 1 else b.reshape(unit, -1).T.ravel()


def _bitshuffle(b: np.ndarray, unit: int) -> np.ndarray:
    # Plane k holds bit k%8 of byte k//8 of every unit, packed eight units to a byte.
    bits = np.unpackbits(b.reshape(-1, unit), axis=1, bitorder="little")
    return np.packbits(bits.T, axis=1, bitorder="little").ravel()


def _unbitshuffle(b: np.ndarray, n: int, unit: int) -> np.ndarray:
    bits = np.unpackbits(b.reshape(8 * unit, -1), axis=1, count=n, bitorder="little")
    return np.packbits(bits.T, axis=1, bitorder="little").ravel()


def filtered_size(size: int, unit: int, f: int) -> int:
    """Bytes a filter turns `size` raw bytes into: bit planes round up to whole bytes, the
    decimal filter puts its decimal places first and the gcd filter its divisor (a unit)."""
    planes = 8 * unit * -(-(size // unit) // 8)
    if f in _BITS:
        return planes
    return {DECIMAL: 1 + planes, GCD: unit + planes}.get(f, size)


def _delta(b: np.ndarray, rows: int, unit: int) -> np.ndarray:
    x = b.view(f"<u{unit}").reshape(rows, -1)
    d = x.copy()
    np.subtract(x[1:], x[:-1], out=d[1:])  # unsigned: wraps modulo 2^(8u)
    return d.reshape(-1).view(np.uint8)


def _undelta(b: np.ndarray, rows: int, unit: int) -> np.ndarray:
    x = b.view(f"<u{unit}").reshape(rows, -1)
    return np.cumsum(x, axis=0, dtype=x.dtype).reshape(-1).view(np.uint8)


def _apply(raw: np.ndarray, rows: int, unit: int, f: int) -> np.ndarray:
    if f in _DELTAS:
        raw = _delta(raw, rows, unit)
    if f in _BITS:
        return _bitshuffle(raw, unit)
    return raw if f == NONE else _shuffle(raw, unit)


def _decimal(raw: np.ndarray, rows: int, unit: int) -> np.ndarray | None:
    """The decimal filter (FORMAT.md 7): float64 units `x` that all give back their bits as
    `v / 10^d`, where `v` is the integer `x * 10^d` (at most 2^53 in size), for the smallest
    such d up to 9, become those integers (int64), then delta+bitshuffle; the output starts
    with d. None when the units are not such decimals (or not 8 bytes)."""
    if unit != 8:
        return None
    x = raw.view("<f8")
    with np.errstate(all="ignore"):  # NaN and the infinities fail, quietly
        for d, s in enumerate(_POW10):
            p = x * s
            ok = (np.abs(p) <= 2.0**53) & (p == np.trunc(p))
            if not ok.all():
                continue
            v = p.astype("<i8")
            # -0.0 fails here: its integer is 0.
            if np.array_equal((v.astype("<f8") / s).view("<u8"), x.view("<u8")):
                planes = _bitshuffle(_delta(v.view(np.uint8), rows, 8), 8)
                return np.concatenate((np.array([d], np.uint8), planes))
    return None


def _gcd(raw: np.ndarray, unit: int) -> np.ndarray | None:
    """The gcd filter (FORMAT.md 7): units read as signed integers whose magnitudes share a
    divisor `g` of at least 2 (the greatest) become their quotients, bit-shuffled, after `g`
    as one unit. None when they share none (or only one too large for a positive unit)."""
    v = raw.view(f"<i{unit}")
    mag = v.view(f"<u{unit}").copy()
    np.negative(mag, out=mag, where=v < 0)  # wraps: the most negative unit's is 2^(8u-1)
    g = int(np.gcd.reduce(mag)) if len(mag) else 0
    if not 1 < g < 1 << (8 * unit - 1):
        return None
    q = (v // v.dtype.type(g)).astype(f"<i{unit}")  # exact, so floor division truncates
    head = np.frombuffer(g.to_bytes(unit, "little"), np.uint8)
    return np.concatenate((head, _bitshuffle(q.view(np.uint8), unit)))


def _gcd_of(b: np.ndarray, unit: int) -> int | None:
    """The divisor a gcd block starts with, when it is one the filter can have written."""
    g = int.from_bytes(b[:unit].tobytes(), "little")
    return g if 1 < g < 1 << (8 * unit - 1) else None


def _undo(b: np.ndarray, rows: int, unit: int, f: int, size: int) -> np.ndarray:
    if f == GCD:  # decode_block checked the divisor
        q = _unbitshuffle(b[unit:], size // unit, unit).view(f"<i{unit}")
        return (q * q.dtype.type(_gcd_of(b, unit))).view(np.uint8)  # wraps modulo 2^(8u)
    if f == DECIMAL:  # decode_block checked the unit (8) and the places (at most 9)
        v = _undelta(_unbitshuffle(b[1:], size // 8, 8), rows, 8).view("<i8")
        return (v.astype("<f8") / _POW10[b[0]]).view(np.uint8)
    if f in _BITS:
        b = _unbitshuffle(b, size // unit, unit)
    elif f != NONE:
        b = _unshuffle(b, unit)
    return _undelta(b, rows, unit) if f in _DELTAS else b


def choose_filter(raw: np.ndarray, rows: int, row_bytes: int, unit: int, level: int) -> int:
    """The filter whose output of a sample (the block's first rows, about SAMPLE_BYTES)
    compresses smallest at `level`; a tie goes to the lower number."""
    n = min(rows, max(1, SAMPLE_BYTES // row_bytes))
    candidates = [NONE, BITSHUFFLE]
    if unit > 1:
        candidates.append(SHUFFLE)
    if n >= 2:  # delta of a single row changes nothing
        candidates += [DELTA_SHUFFLE, DELTA_BITSHUFFLE]
    sample = raw[: n * row_bytes]
    size, best = min(
        (len(_compress(_apply(sample, n, unit, f), level, unit, f)), f) for f in candidates
    )
    # Decimals are floats: a divisor of their bit patterns is only a shift, which the bit
    # planes of their integers already make free.
    decimal = _decimal(sample, n, unit)
    gcd = _gcd(sample, unit) if decimal is None else None
    for f, filtered in ((DECIMAL, decimal), (GCD, gcd)):
        stored = len(_compress(filtered, level, unit, f)) if filtered is not None else size
        if stored < size:
            size, best = stored, f
    return best


# -- blocks ---------------------------------------------------------------------------------


def as_bytes(raw) -> np.ndarray:
    return np.frombuffer(raw, np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1)


def encode_block(raw, rows: int, row_bytes: int, unit: int, level: int, f=None) -> tuple:
    """`(stored bytes, codec, filter, crc32)` of a block of `rows` rows with filter `f` (None:
    the one `choose_filter` picks, KEEP_RAW: none tried); stored raw when compression does not
    make it smaller."""
    raw = as_bytes(raw)
    crc = zlib.crc32(raw)
    if not raw.nbytes or f == KEEP_RAW:
        return raw, STORED_RAW, NONE, crc
    if f is None:
        f = choose_filter(raw, rows, row_bytes, unit, level)
    filtered = _decimal(raw, rows, unit) if f == DECIMAL else _gcd(raw, unit) if f == GCD else None
    if filtered is None:
        # A group's decimal (gcd) filter does not fit a block whose values are not such
        # decimals (share no divisor): it takes delta+bitshuffle (bitshuffle) instead
        # (FORMAT.md 7).
        f = {DECIMAL: DELTA_BITSHUFFLE, GCD: BITSHUFFLE}.get(f, f)
        filtered = _apply(raw, rows, unit, f)
    stored = _compress(filtered, level, unit, f)
    if len(stored) >= raw.nbytes:
        return raw, STORED_RAW, NONE, crc
    return stored, ZSTD, f, crc


def decode_block(
    stored, record, rows: int, row_bytes: int, unit: int, what: str = "a block"
) -> np.ndarray:
    """The raw bytes (uint8, maybe read-only) of a block of `rows` rows from its stored bytes;
    any damage raises CorruptStoreError."""
    size = rows * row_bytes
    if record["codec"] == STORED_RAW:
        # The record's filter is not applied: a block stored raw holds its raw bytes.
        if len(stored) != size:
            raise CorruptStoreError(f"{what} is stored raw in {len(stored)} bytes, not {size}")
        raw = np.frombuffer(stored, np.uint8)
    elif record["codec"] == ZSTD:
        try:
            # A damaged header could claim any size: check it before anything is allocated.
            f = int(record["filter"])
            want = filtered_size(size, unit, f)
            # The frame must declare its size (FORMAT.md 7): one that does not would need a
            # buffer as large as the metadata claims before a byte is decoded.
            claimed = zstandard.get_frame_parameters(stored).content_size
            if claimed == zstandard.CONTENTSIZE_UNKNOWN:
                raise CorruptStoreError(f"{what} is a zstd frame that does not declare its size")
            if claimed != want:
                raise CorruptStoreError(f"{what} claims {claimed} bytes, not {want}")
            if f == DECIMAL and unit != 8:
                raise CorruptStoreError(
                    f"{what} has the decimal filter but units of {unit} bytes, not 8"
                )
            out = _decompressor().decompress(stored, max_output_size=want)
        except zstandard.ZstdError as e:
            raise CorruptStoreError(f"{what} does not decompress ({e})") from None
        if len(out) != want:
            raise CorruptStoreError(f"{what} decompresses to {len(out)} bytes, not {want}")
        if f == DECIMAL and out[0] > MAX_DECIMALS:
            raise CorruptStoreError(f"{what} claims {out[0]} decimal places, more than 9")
        if f == GCD and _gcd_of(np.frombuffer(out, np.uint8), unit) is None:
            raise CorruptStoreError(f"{what}'s gcd divisor is below 2 or too large")
        raw = _undo(np.frombuffer(out, np.uint8), rows, unit, f, size)
    else:
        raise CorruptStoreError(f"{what} has an unknown codec {int(record['codec'])}")
    if zlib.crc32(raw) != int(record["crc32"]):
        raise CorruptStoreError(f"{what} fails its CRC-32 check")
    return raw


_DICT_ID_BYTES = np.array([0, 1, 2, 4])
_FCS_BYTES = np.array([0, 2, 4, 8])


def check_frames(buf, blocks: np.ndarray, rows: int, block_rows: int, row_bytes: int,
                 unit: int, what: str) -> None:  # fmt: skip
    """Every zstd frame of an index must declare exactly the size its block decodes to
    (FORMAT.md 7), so that no read allocates for rows its frames do not hold. `buf` holds
    every record. The frame headers (RFC 8878, 3.1.1.1) are parsed for all blocks at once."""
    z = np.flatnonzero(blocks["codec"] == ZSTD)
    if not len(z):
        return
    rec = blocks[z]
    raw = np.minimum(block_rows, rows - z * block_rows) * row_bytes
    if unit:  # filtered_size, for every block at once
        planes = 8 * unit * -(-(raw // unit) // 8)
        raw = np.where(np.isin(rec["filter"], _BITS), planes, raw)
        raw = np.where(rec["filter"] == DECIMAL, 1 + planes, raw)
        raw = np.where(rec["filter"] == GCD, unit + planes, raw)
    mv = np.frombuffer(buf, np.uint8)
    off, size = rec["offset"].astype(np.int64), rec["size"].astype(np.int64)
    head = mv[np.minimum(off[:, None] + np.arange(18), len(mv) - 1)].astype(np.uint64)
    fhd = head[:, 4].astype(np.int64)
    single = (fhd >> 5) & 1
    fcs_at = 5 + (1 - single) + _DICT_ID_BYTES[fhd & 3]
    fcs_len = np.where(fhd >> 6 == 0, single, _FCS_BYTES[fhd >> 6])
    declared = np.zeros(len(z), np.uint64)
    for b in range(8):
        byte = head[np.arange(len(z)), np.minimum(fcs_at + b, 17)]
        declared |= np.where(b < fcs_len, byte, 0).astype(np.uint64) << np.uint64(8 * b)
    declared = np.where(fcs_len == 2, declared + np.uint64(256), declared)
    ok = (
        (head[:, :4] == np.array([0x28, 0xB5, 0x2F, 0xFD], np.uint64)).all(axis=1)
        & (fhd & 8 == 0)  # the reserved bit
        & (fcs_len > 0)
        & (size >= fcs_at + fcs_len)
        & (declared == raw.astype(np.uint64))
    )
    if not ok.all():
        k = int(z[np.argmin(ok)])
        raise CorruptStoreError(f"block {k} of {what} is not a zstd frame declaring its size")


def group_filters(blocks, row_bytes: int, unit: int, level: int, block_rows: int, keep=None):
    """`(k, raw, filter)` for each `(k, raw bytes of block k)` of `blocks` (k ascending): the
    blocks of one filter group (FORMAT.md 7) take the filter picked on the first of them
    given, or, for the group of the first block, `keep` when given."""
    per_group, f = filter_group(block_rows * row_bytes), keep
    for i, (k, raw) in enumerate(blocks):
        raw = as_bytes(raw)
        if raw.nbytes and ((i == 0 and keep is None) or (i and k % per_group == 0)):
            f = choose_filter(raw, raw.nbytes // row_bytes, row_bytes, unit, level)
        yield k, raw, f


def encode_rows(
    data,
    rows: int,
    row_bytes: int,
    unit: int,
    level: int,
    block_rows: int,
    offset: int,
    first: int = 0,
) -> tuple[list, np.ndarray]:
    """`rows` rows of `data` encoded in blocks of `block_rows` rows, the first being block
    `first` of its array: the blocks' stored bytes, and their records placing them one after
    another from `offset`."""
    data = as_bytes(data)
    records = np.zeros(block_count(rows, block_rows), RECORD)
    chunks = []
    size = block_rows * row_bytes
    raws = ((first + k, data[k * size : (k + 1) * size]) for k in range(len(records)))
    for k, raw, f in group_filters(raws, row_bytes, unit, level, block_rows):
        k -= first
        n = min(block_rows, rows - k * block_rows)
        stored, codec, f, crc = encode_block(raw, n, row_bytes, unit, level, f)
        records[k] = (offset, len(stored), crc, codec, f, 0)
        offset += len(stored)
        chunks.append(stored)
    return chunks, records
