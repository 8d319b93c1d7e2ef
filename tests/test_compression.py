"""Compressed arrays (issue 4, FORMAT.md section 7) on every backend.

A compressed array must behave exactly like the same array stored raw: every read and every
write is checked against a NumPy model (and, in the parity tests, against a raw twin in the same
store). The block log is also decoded by hand from the spec (zstandard + zlib.crc32), so a
backend that drifts from the format fails here even when it agrees with itself.
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import zstandard
from helpers import (
    BACKENDS,
    DTYPES,
    assert_same_array,
    data_bytes,
    data_files,
    file_stem,
    make_array,
    read_metadata,
    require_backend,
    run_python,
    snapshot,
    write_metadata,
)
from hypothesis import HealthCheck, given, settings
from hypothesis.extra.numpy import arrays

from numpack import (
    CorruptStoreError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPack,
    NumPackError,
)

DEFAULT_BLOCK_BYTES = 1 << 16  # FORMAT.md 7
RECORD = struct.Struct("<QQIBBH")  # offset, size, crc32, codec, filter, zero
FILTER_NAMES = {
    0: "none", 1: "shuffle", 2: "delta+shuffle", 3: "bitshuffle", 4: "delta+bitshuffle",
    5: "decimal", 6: "gcd",
}  # fmt: skip
DELTAS, BITS = (2, 4), (3, 4)

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- helpers --------------------------------------------------------------------------------


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _row_bytes(dtype, row_shape) -> int:
    return int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _default_block_rows(dtype, row_shape) -> int:
    return max(1, DEFAULT_BLOCK_BYTES // _row_bytes(dtype, row_shape))


def _smooth(dtype, shape, seed: int = 0) -> np.ndarray:
    """Compressible values (a slow ramp with a little noise), so zstd and the filters work."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    ramp = np.arange(n, dtype=np.int64) // 4 + rng.integers(0, 3, size=n)
    if dtype.kind == "b":
        out = (ramp // 2) % 2 == 1
    elif dtype.kind in "iu":
        out = ramp % 100
    elif dtype.kind == "f":
        out = ramp * 0.25
    else:
        out = ramp * 0.25 + 1j * ramp
    return out.astype(dtype).reshape(shape)


def _mixed(dtype, shape, seed: int = 0) -> np.ndarray:
    """First half compressible, second half random: blocks of both kinds in one array."""
    a = make_array(dtype, shape, seed=seed)
    half = shape[0] // 2
    a[:half] = _smooth(dtype, shape, seed=seed)[:half]
    return a


def _timestamps(n: int, seed: int = 0) -> np.ndarray:
    """Increasing int64 nanosecond timestamps with small random gaps."""
    gaps = np.random.default_rng(seed).integers(1, 4096, size=n)
    return 1_700_000_000_000_000_000 + np.cumsum(gaps, dtype=np.int64)


def _incompressible_f32(shape, seed: int = 0) -> np.ndarray:
    bits = np.random.default_rng(seed).integers(0, 2**32, size=shape, dtype=np.uint32)
    return bits.view(np.float32)


def _comp(npk, name) -> dict:
    return npk.get_metadata()["arrays"][name]["compression"]


def _entry(path, name) -> dict:
    [e] = [e for e in read_metadata(path)["arrays"] if e["name"] == name]
    return e


def _records(entry) -> list:
    blob = entry["compression"]["blocks"]
    assert isinstance(blob, bytes) and len(blob) % RECORD.size == 0
    return [RECORD.unpack_from(blob, i) for i in range(0, len(blob), RECORD.size)]


def _pack_records(records) -> bytes:
    return b"".join(RECORD.pack(*r) for r in records)


def _unit(dtype) -> int:
    dtype = np.dtype(dtype)
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


def _filter(raw: bytes, filt: int, rows: int, u: int) -> bytes:
    """FORMAT.md section 7's filters, forwards, written from the spec's words."""
    if filt == 6:  # gcd: the units' divisor g (one unit), then their quotients' bitshuffle
        units = [
            int.from_bytes(raw[i : i + u], "little", signed=True) for i in range(0, len(raw), u)
        ]
        g = math.gcd(*units)
        assert 1 < g < 2 ** (8 * u - 1)
        quotients = b"".join((x // g).to_bytes(u, "little", signed=True) for x in units)
        return g.to_bytes(u, "little") + _filter(quotients, 3, rows, u)
    if filt in DELTAS and raw:
        units = np.frombuffer(raw, dtype=f"<u{u}").reshape(rows, -1)
        out = units.copy()
        out[1:] = units[1:] - units[:-1]  # wraps modulo 2**(8u)
        raw = out.tobytes()
    if filt in (1, 2) and raw:
        raw = np.frombuffer(raw, dtype=np.uint8).reshape(-1, u).T.tobytes()
    if filt in BITS:
        n = len(raw) // u
        planes = np.zeros((8 * u, _ceil_div(n, 8)), dtype=np.uint8)
        units = np.frombuffer(raw, dtype=np.uint8).reshape(n, u)
        for j in range(u):
            for b in range(8):
                for i in np.flatnonzero((units[:, j] >> b) & 1):
                    planes[8 * j + b, i // 8] |= 1 << (i % 8)
        raw = planes.tobytes()
    return raw


def _filtered_size(raw_size: int, filt: int, u: int) -> int:
    planes = 8 * u * _ceil_div(raw_size // u, 8)
    if filt in BITS:
        return planes
    return {5: 1 + planes, 6: u + planes}.get(filt, raw_size)  # d, or g, first


def _unfilter(data: bytes, filt: int, rows: int, u: int, raw_size: int) -> bytes:
    if filt == 6:  # gcd: g, then the quotients' bitshuffle; each value is q * g
        g = int.from_bytes(data[:u], "little")
        assert 1 < g < 2 ** (8 * u - 1)
        quotients = _unfilter(data[u:], 3, rows, u, raw_size)
        units = (
            int.from_bytes(quotients[i : i + u], "little", signed=True)
            for i in range(0, raw_size, u)
        )
        return b"".join((q * g).to_bytes(u, "little", signed=True) for q in units)
    if filt == 5:  # decimal: d, then the integers' delta+bitshuffle; each value is v / 10**d
        assert u == 8 and data[0] <= 9
        ints = np.frombuffer(_unfilter(data[1:], 4, rows, 8, raw_size), "<i8")
        return (ints.astype("<f8") / 10.0 ** data[0]).tobytes()
    if filt in BITS:
        n = raw_size // u
        planes = np.frombuffer(data, dtype=np.uint8).reshape(8 * u, -1)
        units = np.zeros((n, u), dtype=np.uint8)
        for j in range(u):
            for b in range(8):
                bits = (planes[8 * j + b, np.arange(n) // 8] >> (np.arange(n) % 8)) & 1
                units[:, j] |= (bits << b).astype(np.uint8)
        data = units.tobytes()
    if filt in (1, 2) and data:
        data = np.frombuffer(data, dtype=np.uint8).reshape(u, -1).T.tobytes()
    if filt in DELTAS and data:
        units = np.frombuffer(data, dtype=f"<u{u}").reshape(rows, -1)
        data = np.cumsum(units, axis=0, dtype=units.dtype).tobytes()
    return data


def _compress(filtered: bytes, filt: int, u: int, level: int) -> bytes:
    """FORMAT.md section 7's writer: one zstd frame declaring its size; after shuffle (delta or
    not) and gcd, a flush ends a zstd block after each byte position's bytes (gcd's divisor
    goes with the first), at two levels below the array's (at least 1; levels of 1 and below
    as they are) and with zstd's minimum match at 7 (its other parameters that level's)."""
    prefix = u if filt == 6 else 0
    if filt not in (1, 2, 6) or u == 1:
        return zstandard.ZstdCompressor(level=level).compress(filtered)
    part = (len(filtered) - prefix) // u
    cuts = [0] + [prefix + k * part for k in range(1, u)] + [len(filtered)]
    runs = max(min(level, zstandard.MAX_COMPRESSION_LEVEL) - 2, 1) if level > 1 else level
    params = zstandard.ZstdCompressionParameters(compression_level=runs, min_match=7)
    o = zstandard.ZstdCompressor(compression_params=params).compressobj(size=len(filtered))
    out = b""
    for k in range(u):
        out += o.compress(filtered[cuts[k] : cuts[k + 1]])
        last = k == u - 1
        out += o.flush(
            zstandard.COMPRESSOBJ_FLUSH_FINISH if last else zstandard.COMPRESSOBJ_FLUSH_BLOCK
        )
    return out


def _decode_physical(path, entry, writer_rule: bool = True) -> tuple[np.ndarray, dict]:
    """Every physical row of a compressed array, decoded by hand as FORMAT.md section 7 says;
    and the filter counts. `writer_rule`: a zstd block must be smaller than its raw bytes and
    compressed as the writer compresses (section 7)."""
    comp = entry["compression"]
    assert comp["codec"] == "zstd"
    block_rows = comp["block_rows"]
    assert isinstance(block_rows, int) and block_rows >= 1
    dtype = np.dtype(entry["dtype"])
    shape = tuple(entry["shape"])
    n, row = shape[0], _row_bytes(dtype, shape[1:])
    records = _records(entry)
    assert len(records) == _ceil_div(n, block_rows)
    with open(os.path.join(path, entry["file"]), "rb") as f:
        data = f.read()
    out, counts = [], collections.Counter()
    for k, (offset, size, crc, codec, filt, zero) in enumerate(records):
        rows = min(block_rows, n - k * block_rows)
        raw_size = rows * row
        assert zero == 0
        assert offset + size <= len(data), f"block {k} lies outside the data file"
        stored = data[offset : offset + size]
        if codec == 0:
            assert filt == 0 and size == raw_size, (k, filt, size, raw_size)
            raw = stored
            counts["raw"] += 1
        else:
            assert codec == 1 and filt in FILTER_NAMES, (k, codec, filt)
            if writer_rule:
                assert size < raw_size, f"block {k} did not shrink but is not stored raw"
            want = _filtered_size(raw_size, filt, _unit(dtype))
            frame = zstandard.ZstdDecompressor().decompress(stored, max_output_size=want)
            assert len(frame) == want
            if writer_rule:
                again = _compress(frame, filt, _unit(dtype), comp["level"])
                assert again == stored, f"block {k} is not compressed as FORMAT.md 7 says"
            raw = _unfilter(frame, filt, rows, _unit(dtype), raw_size)
            counts[FILTER_NAMES[filt]] += 1
        assert zlib.crc32(raw) == crc, f"block {k}: CRC-32 mismatch"
        out.append(raw)
    arr = np.frombuffer(b"".join(out), dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False), dict(counts)


def check_on_disk(npk, name, expected, writer_rule: bool = True) -> None:
    """The block index on disk follows the spec, holds `expected` (logical rows), and agrees
    with what get_metadata() reports."""
    entry = _entry(npk.path, name)
    physical, counts = _decode_physical(npk.path, entry, writer_rule)
    deleted = np.frombuffer(entry["deleted"], dtype="<u8").astype(np.intp)
    assert_same_array(np.delete(physical, deleted, axis=0), expected)
    records = _records(entry)
    meta = npk.get_metadata()["arrays"][name]
    comp = meta["compression"]
    assert comp is not None
    assert comp["codec"] == "zstd"
    assert comp["level"] == entry["compression"]["level"]
    assert comp["block_rows"] == entry["compression"]["block_rows"]
    assert comp["blocks"] == len(records)
    assert {k: v for k, v in comp["filters"].items() if v} == counts
    assert sum(comp["filters"].values()) == comp["blocks"]
    assert comp["raw_bytes"] == physical.nbytes
    assert comp["stored_bytes"] == sum(r[1] for r in records)
    assert meta["bytes_on_disk"] == comp["stored_bytes"]
    assert os.path.getsize(os.path.join(npk.path, entry["file"])) >= comp["stored_bytes"]


def check_reads(npk, name, expected) -> None:
    """Every kind of read of `name` equals the same read of `expected`."""
    n = len(expected)
    assert npk.get_shape(name) == expected.shape
    out = npk.load(name)
    assert_same_array(out, expected)
    assert out.tobytes() == expected.tobytes()
    lazy = npk.load(name, lazy=True)
    assert lazy.shape == expected.shape and lazy.dtype == expected.dtype
    assert_same_array(np.asarray(lazy), expected)
    slices = [
        slice(None),
        slice(1, None, 3),
        slice(None, None, -1),
        slice(-2, 0, -4),
        slice(5, n - 3, 7),
        slice(n // 2, n // 2 + 1),
        slice(n - 1, n + 5),
        slice(4, 2),
    ]
    for s in slices:
        assert_same_array(lazy[s], expected[s])
        assert_same_array(npk.getitem(name, s), expected[s])
    rng = np.random.default_rng(n)
    mask = rng.random(n) < 0.3
    assert_same_array(lazy[mask], expected[mask])
    assert_same_array(npk.getitem(name, mask), expected[mask])
    assert_same_array(npk.getitem(name, []), expected[[]])
    if n:
        for i in (0, n - 1, -1, n // 2):
            assert_same_array(lazy[i], expected[i])
            assert_same_array(npk.getitem(name, i), expected[i])
        idx = rng.integers(-n, n, size=min(3 * n, 50))
        assert_same_array(npk.getitem(name, idx), expected[idx])
        assert_same_array(lazy[idx], expected[idx])
        dup = [n - 1, 0, n - 1, n // 3, -1]
        assert_same_array(npk.getitem(name, dup), expected[dup])
        if expected.ndim > 1:
            assert_same_array(lazy[:, 0], expected[:, 0])
            assert_same_array(lazy[1::2, ..., -1], expected[1::2, ..., -1])
    for batch in (1, 5, 13) if n <= 300 else (n // 7 + 3, 1000):
        got = list(npk.stream_load(name, batch))
        assert [len(b) for b in got] == [len(expected[i : i + batch]) for i in range(0, n, batch)]
        assert_same_array(np.concatenate(got) if got else expected[:0], expected)


def assign(model: np.ndarray, idx, rows) -> None:
    """model[idx] = rows, one row after the other (a repeated index: the last row wins)."""
    sel = np.atleast_1d(np.arange(len(model))[idx])
    rows = np.broadcast_to(np.asarray(rows), (len(sel),) + model.shape[1:])
    for i, r in zip(sel, rows):
        model[i] = r


def without(model: np.ndarray, idx) -> np.ndarray:
    keep = np.ones(len(model), dtype=bool)
    keep[np.arange(len(model))[idx]] = False
    return model[keep]


def save_pair(npk, base, block_rows=None, level=None) -> np.ndarray:
    """`raw`: uncompressed; `z`: the same, compressed. Returns the model."""
    npk.save({"raw": base})
    npk.save({"z": base}, compress=True, block_rows=block_rows, compression_level=level)
    assert _comp(npk, "raw") is None
    assert _comp(npk, "z") is not None
    return base.copy()


def check_pair(npk, model) -> None:
    check_reads(npk, "raw", model)
    check_reads(npk, "z", model)
    check_on_disk(npk, "z", model)


# -- round trips ----------------------------------------------------------------------------

RT_SHAPES = {1: (40,), 2: (40, 3), 3: (20, 3, 2), 4: (10, 2, 3, 2)}


@pytest.mark.parametrize("ndim", sorted(RT_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roundtrip_every_dtype(store, dtype, ndim):
    shape = RT_SHAPES[ndim]
    data = {"random": make_array(dtype, shape, seed=ndim), "smooth": _smooth(dtype, shape, ndim)}
    for block_rows, level in itertools.product((1, 3, None), (1, 3, 19)):
        store.save(data, compress=True, compression_level=level, block_rows=block_rows)
        expected_rows = block_rows or _default_block_rows(dtype, shape[1:])
        for name, arr in data.items():
            out = store.load(name)
            assert_same_array(out, arr)
            assert out.tobytes() == arr.tobytes()  # bit for bit, NaN payloads included
            assert out.flags.owndata and out.flags.writeable and out.flags.c_contiguous
            comp = _comp(store, name)
            assert comp["codec"] == "zstd"
            assert comp["level"] == level
            assert comp["block_rows"] == expected_rows
            assert comp["blocks"] == _ceil_div(shape[0], expected_rows)
            check_on_disk(store, name, arr)
        lazy = store.load("smooth", lazy=True)
        arr = data["smooth"]
        assert_same_array(lazy[1::3], arr[1::3])
        assert_same_array(lazy[-1], arr[-1])
        assert_same_array(store.getitem("random", [-1, 0, 7, 7]), data["random"][[-1, 0, 7, 7]])


def test_roundtrip_after_reopen(backend, store_path):
    arr = _mixed(np.float64, (100, 3), seed=4)
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": arr}, compress=True, block_rows=9, compression_level=5)
    with NumPack(store_path, backend=backend) as npk:
        check_reads(npk, "a", arr)
        comp = _comp(npk, "a")
        assert (comp["level"], comp["block_rows"], comp["blocks"]) == (5, 9, 12)


def test_default_level_is_3(store):
    store.save({"a": np.arange(100)}, compress=True)
    assert _comp(store, "a")["level"] == 3
    assert _entry(store.path, "a")["compression"]["level"] == 3


@pytest.mark.parametrize(
    "dtype, shape",
    [
        (np.int8, (10,)),
        (np.float64, (10, 3)),
        (np.complex128, (5, 7, 3)),
        (np.float32, (3, 300_000)),
    ],
    ids=["R1", "R24", "R336", "R1.2MB"],
)
def test_default_block_rows(store, dtype, shape):
    arr = np.zeros(shape, dtype)
    store.save({"a": arr}, compress=True)
    comp = _comp(store, "a")
    assert comp["block_rows"] == _default_block_rows(dtype, shape[1:])
    assert comp["blocks"] == _ceil_div(shape[0], comp["block_rows"])
    assert_same_array(store.load("a"), arr)
    check_on_disk(store, "a", arr)


@pytest.mark.parametrize("block_rows", [1, 4, None])
@pytest.mark.parametrize("shape", [(0,), (0, 3), (0, 2, 4)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_rows(store, dtype, shape, block_rows):
    arr = np.empty(shape, dtype=dtype)
    store.save({"a": arr}, compress=True, block_rows=block_rows)
    comp = _comp(store, "a")
    assert (comp["blocks"], comp["raw_bytes"], comp["stored_bytes"]) == (0, 0, 0)
    assert sum(comp["filters"].values()) == 0
    assert_same_array(store.load("a"), arr)
    lazy = store.load("a", lazy=True)
    assert lazy.shape == shape and len(lazy) == 0
    assert_same_array(np.asarray(lazy), arr)
    assert_same_array(store.getitem("a", []), arr)
    assert_same_array(store.getitem("a", slice(None)), arr)
    assert list(store.stream_load("a", 4)) == []
    # it grows from nothing, still compressed
    rows = _smooth(dtype, (6,) + shape[1:], seed=1)
    store.append({"a": rows})
    comp = _comp(store, "a")
    expected_rows = block_rows or _default_block_rows(dtype, shape[1:])
    assert comp["block_rows"] == expected_rows
    assert comp["blocks"] == _ceil_div(6, expected_rows)
    check_reads(store, "a", rows)
    check_on_disk(store, "a", rows)


@pytest.mark.parametrize("block_rows", [1, 3, None])
@pytest.mark.parametrize("shape", [(4, 0), (5, 3, 0), (0, 0)], ids=str)
def test_zero_width_rows(store, shape, block_rows):
    arr = np.empty(shape, dtype=np.float32)
    store.save({"a": arr}, compress=True, block_rows=block_rows)
    assert_same_array(store.load("a"), arr)
    assert store.get_shape("a") == shape
    comp = _comp(store, "a")
    assert (comp["raw_bytes"], comp["stored_bytes"]) == (0, 0)
    if block_rows is not None:
        assert comp["blocks"] == _ceil_div(shape[0], block_rows)
    more = np.empty((2,) + shape[1:], dtype=np.float32)
    store.append({"a": more})
    assert store.get_shape("a") == (shape[0] + 2,) + shape[1:]
    assert_same_array(store.getitem("a", [0, -1]), np.empty((2,) + shape[1:], np.float32))
    expected = np.empty((shape[0] + 2,) + shape[1:], np.float32)
    assert_same_array(store.load("a", lazy=True)[::2], expected[::2])
    store.drop("a", [0])
    assert store.get_shape("a") == (shape[0] + 1,) + shape[1:]
    assert _comp(store, "a") is not None


# -- reads and writes equal those of a raw copy ---------------------------------------------

CASES = {
    "int64-br7": (np.int64, (61, 3), 7),
    "float32-br1": (np.float32, (23, 4), 1),
    "complex64-br16": (np.complex64, (70, 2, 2), 16),
    "uint8-br5": (np.uint8, (47,), 5),
    "bool-br3": (np.bool_, (31, 2), 3),
    "float16-default": (np.float16, (40, 5), None),
}
CASE_IDS = list(CASES)


def _case(store, case, seed: int = 0):
    dtype, shape, block_rows = CASES[case]
    model = save_pair(store, _mixed(dtype, shape, seed), block_rows)
    return model, block_rows or _default_block_rows(dtype, shape[1:])


@pytest.mark.parametrize("case", CASE_IDS)
def test_reads_match_raw(store, case):
    model, _ = _case(store, case)
    check_pair(store, model)


@pytest.mark.parametrize("level", [-1, 1, 3, 19])
def test_levels_give_the_same_values(store, level):
    model = save_pair(store, _timestamps(3000).reshape(1000, 3), block_rows=100, level=level)
    assert _comp(store, "z")["level"] == level
    check_pair(store, model)


def test_append_fills_the_last_block_then_adds_blocks(store):
    base = _mixed(np.int32, (10, 3), seed=1)
    model = save_pair(store, base, block_rows=4)
    entry0 = _entry(store.path, "z")
    rec0 = _records(entry0)
    assert len(rec0) == 3  # 4 + 4 + 2 rows
    assert rec0[2][3] == 0  # 24 random bytes do not shrink: stored raw, at the file's end
    file0 = (Path(store.path) / entry0["file"]).read_bytes()
    assert rec0[2][0] + rec0[2][1] == len(file0)

    rows = _smooth(np.int32, (1, 3), seed=2)  # the last block: 2 -> 3 rows
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    check_pair(store, model)
    entry1 = _entry(store.path, "z")
    rec1 = _records(entry1)
    assert entry1["file"] == entry0["file"]
    assert len(rec1) == 3
    assert rec1[:2] == rec0[:2]  # full blocks are not touched
    # The raw last block grew in place: the file gained the new rows and nothing else.
    assert rec1[2][:2] == (rec0[2][0], rec0[2][1] + rows.nbytes) and rec1[2][3] == 0
    file1 = (Path(store.path) / entry1["file"]).read_bytes()
    assert file1 == file0 + rows.tobytes()

    rows = _smooth(np.int32, (9, 3), seed=3)  # fills block 2, adds blocks 3 and 4
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    check_pair(store, model)
    rec2 = _records(_entry(store.path, "z"))
    assert len(rec2) == 5 == _comp(store, "z")["blocks"]
    assert rec2[:2] == rec0[:2]
    assert all(r[0] >= len(file1) for r in rec2[2:])  # block 2's new version is appended
    assert (Path(store.path) / entry1["file"]).read_bytes()[: len(file1)] == file1

    rows = _smooth(np.int32, (4, 3), seed=4)  # the last block is full: only new blocks
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    check_pair(store, model)
    rec3 = _records(_entry(store.path, "z"))
    assert len(rec3) == 6 and rec3[:5] == rec2


def test_appends_grow_a_raw_last_block_until_it_is_full(store):
    """FORMAT.md 7: an append leaves its partial last block raw; the next appends only write
    their rows after it; the append that fills it encodes it as any block."""
    model = save_pair(store, _smooth(np.float64, (100, 8)), block_rows=64)
    path = Path(store.path) / _entry(store.path, "z")["file"]
    saved = _records(_entry(store.path, "z"))
    assert [r[3] for r in saved] == [1, 1]  # a save compresses its partial last block

    rows = _smooth(np.float64, (5, 8), seed=1)
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    rec = _records(_entry(store.path, "z"))
    assert rec[0] == saved[0]
    assert rec[1][0] >= saved[1][0] + saved[1][1] and rec[1][1] == 41 * 64 and rec[1][3] == 0
    check_pair(store, model)

    lazy = store.load("z", lazy=True)  # a snapshot of 105 rows
    before = path.stat().st_size
    for i in range(3):
        rows = _smooth(np.float64, (7, 8), seed=2 + i)
        store.append({"raw": rows, "z": rows})
        model = np.concatenate([model, rows])
        grown = _records(_entry(store.path, "z"))[1]
        assert grown[0] == rec[1][0] and grown[1] == (41 + 7 * (i + 1)) * 64 and grown[3] == 0
        assert path.stat().st_size == before + 7 * (i + 1) * 64  # the rows, nothing else
    check_pair(store, model)
    assert_same_array(np.asarray(lazy), model[:105])

    rows = _smooth(np.float64, (20, 8), seed=9)  # 62 + 20: fills block 1, starts block 2
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    rec = _records(_entry(store.path, "z"))
    assert [r[3] for r in rec] == [1, 1, 0] and rec[1][0] >= before + 21 * 64
    check_pair(store, model)
    assert_same_array(np.asarray(lazy), model[:105])


def test_a_raw_block_an_append_fills_takes_its_groups_filter(store):
    """FORMAT.md 7: the block before it is in its filter group and compressed, so the filled
    block takes that block's filter instead of a new pick (which would give zeros none)."""
    save_pair(store, _smooth(np.float64, (64, 8)), block_rows=64)
    zeros = np.zeros((10, 8))
    store.append({"raw": zeros, "z": zeros})
    rec = _records(_entry(store.path, "z"))
    assert rec[1][3] == 0 and rec[0][4] == DELTAS[1]  # raw; delta+bitshuffle
    zeros = np.zeros((54, 8))
    store.append({"raw": zeros, "z": zeros})
    rec = _records(_entry(store.path, "z"))
    assert rec[1][3:5] == (1, rec[0][4])
    check_pair(store, np.concatenate([_smooth(np.float64, (64, 8)), np.zeros((64, 8))]))
    store.save({"alone": np.zeros((64, 8))}, compress=True, block_rows=64)
    assert _records(_entry(store.path, "alone"))[0][4] != rec[0][4]  # a pick differs


def test_append_after_an_interrupted_one_writes_the_raw_block_again(store):
    """Bytes past the raw last block (an interrupted call's) are dead: the block is not grown
    over them but written again at the file's end, with the new rows."""
    model = save_pair(store, _smooth(np.int64, (50, 4)), block_rows=32)
    rows = _smooth(np.int64, (3, 4), seed=1)
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    path = Path(store.path) / _entry(store.path, "z")["file"]
    with open(path, "ab") as f:
        f.write(b"\xee" * 40)
    end = path.stat().st_size
    rows = _smooth(np.int64, (2, 4), seed=2)
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    last = _records(_entry(store.path, "z"))[-1]
    assert last[3] == 0 and last[0] == end and last[1] == 23 * 32
    check_pair(store, model)


def test_append_zero_rows(store):
    model = save_pair(store, _mixed(np.float64, (9, 2)), block_rows=4)
    store.append({"raw": model[:0], "z": model[:0]})
    check_pair(store, model)
    assert _comp(store, "z")["blocks"] == 3


def test_many_small_appends(store):
    rng = np.random.default_rng(7)
    model = save_pair(store, _mixed(np.uint16, (3, 2), seed=7), block_rows=5)
    for i in range(40):
        rows = _mixed(np.uint16, (int(rng.integers(1, 4)), 2), seed=100 + i)
        store.append({"raw": rows, "z": rows})
        model = np.concatenate([model, rows])
        if i % 10 == 9:
            check_pair(store, model)
    comp = _comp(store, "z")
    assert comp["blocks"] == _ceil_div(len(model), 5)
    assert comp["block_rows"] == 5
    check_pair(store, model)


def test_append_creates_a_raw_array(store):
    store.save({"z": np.arange(10)}, compress=True, block_rows=3)
    store.append({"new": np.arange(4)})
    assert _comp(store, "new") is None
    assert_same_array(store.load("new"), np.arange(4))


def test_append_casts_like_raw(store):
    model = save_pair(store, np.arange(12, dtype=np.int64).reshape(6, 2), block_rows=4)
    rows = np.array([[7, 8]], dtype=np.int16)
    store.append({"raw": rows, "z": rows})
    check_pair(store, np.concatenate([model, rows.astype(np.int64)]))


@pytest.mark.parametrize("case", CASE_IDS)
def test_replace_rows_in_one_block(store, case):
    model, block_rows = _case(store, case)
    n = len(model)
    block = min(1, (n - 1) // block_rows)
    lo = block * block_rows
    idx = sorted({lo, min(lo + 2, n - 1, lo + block_rows - 1)})
    rec0 = _records(_entry(store.path, "z"))
    size0 = os.path.getsize(Path(store.path) / _entry(store.path, "z")["file"])
    rows = make_array(model.dtype, (len(idx),) + model.shape[1:], seed=11)
    store.replace({"raw": rows, "z": rows}, idx)
    assign(model, idx, rows)
    check_pair(store, model)
    rec1 = _records(_entry(store.path, "z"))
    assert len(rec1) == len(rec0)
    for k, (before, after) in enumerate(zip(rec0, rec1)):
        if k == block:
            assert after[0] >= size0  # written at the end of the log
        else:
            assert after == before  # untouched blocks are not recompressed


@pytest.mark.parametrize("case", CASE_IDS)
def test_replace_across_blocks(store, case):
    model, _ = _case(store, case)
    n = len(model)
    for k, idx in enumerate([slice(2, n - 3), [n - 1, 0, n // 2], np.arange(n) % 4 == 1]):
        count = len(np.arange(n)[idx])
        rows = make_array(model.dtype, (count,) + model.shape[1:], seed=20 + k)
        store.replace({"raw": rows, "z": rows}, idx)
        assign(model, idx, rows)
        check_pair(store, model)


def test_replace_duplicates_last_wins(store):
    model, block_rows = _case(store, "int64-br7")
    idx = [3, 20, 3, 3, 20, 60]
    rows = np.arange(len(idx) * 3, dtype=np.int64).reshape(len(idx), 3) * -1 - 1
    store.replace({"raw": rows, "z": rows}, idx)
    assign(model, idx, rows)
    assert_same_array(model[3], rows[3])
    assert_same_array(model[20], rows[4])
    check_pair(store, model)


@pytest.mark.parametrize("idx", [[1, 17, 30], slice(5, 40), -1, 0], ids=str)
def test_replace_broadcasts_one_row(store, idx):
    model, _ = _case(store, "complex64-br16")
    row = make_array(np.complex64, (2, 2), seed=9)
    store.replace({"raw": row, "z": row}, idx)
    assign(model, idx, row)
    check_pair(store, model)
    one = row[None]
    store.replace({"raw": one, "z": one}, [2, 69])
    assign(model, [2, 69], one)
    check_pair(store, model)


def test_replace_many_times_same_block(store):
    model = save_pair(store, _smooth(np.float64, (30, 2)), block_rows=10)
    for i in range(20):
        row = np.full((1, 2), float(i))
        store.replace({"raw": row, "z": row}, [i % 10])
        assign(model, [i % 10], row)
    check_pair(store, model)


@pytest.mark.parametrize("case", CASE_IDS)
def test_drop_rows_then_every_read(store, case):
    model, block_rows = _case(store, case)
    n = len(model)
    physical = n
    for make in (
        lambda m: [0, m // 2, -1],
        lambda m: np.arange(m) % 5 == 2,
        lambda m: slice(1, 4),
        lambda m: slice(None, None, 6),
    ):
        idx = make(len(model))
        store.drop("raw", idx)
        store.drop("z", idx)
        model = without(model, idx)
        check_pair(store, model)
        meta = store.get_metadata()["arrays"]["z"]
        assert meta["rows_dropped"] == physical - len(model)
        assert meta["compression"]["blocks"] == _ceil_div(physical, block_rows)
    # writes after drops use logical rows
    rows = make_array(model.dtype, (2,) + model.shape[1:], seed=3)
    store.replace({"raw": rows, "z": rows}, [0, -1])
    assign(model, [0, -1], rows)
    store.append({"raw": rows, "z": rows})
    model = np.concatenate([model, rows])
    check_pair(store, model)
    assert _comp(store, "z")["blocks"] == _ceil_div(physical + 2, block_rows)


def test_drop_every_row(store):
    model = save_pair(store, _mixed(np.int16, (12, 2)), block_rows=5)
    store.drop("raw", slice(None))
    store.drop("z", slice(None))
    check_pair(store, model[:0])
    store.compact()
    check_pair(store, model[:0])
    assert _comp(store, "z")["blocks"] == 0
    store.append({"raw": model[:3], "z": model[:3]})
    check_pair(store, model[:3])


@pytest.mark.parametrize("how", ["all", "one", "list"])
def test_compact_after_drops(store, how):
    base = make_array(np.float64, (400, 4), seed=3)
    model = save_pair(store, base, block_rows=16, level=1)
    store.drop("raw", slice(0, 300))
    store.drop("z", slice(0, 300))
    model = model[300:]
    before = store.get_metadata()["arrays"]["z"]
    old_file = before["file"]
    files = data_files(store.path)
    store.compact({"all": None, "one": "z", "list": ["z", "raw"]}[how])
    after = store.get_metadata()["arrays"]["z"]
    assert after["rows_dropped"] == 0
    assert after["bytes_on_disk"] < before["bytes_on_disk"]
    assert after["compression"]["raw_bytes"] == 100 * 4 * 8
    assert after["compression"]["blocks"] == _ceil_div(100, 16)
    assert (after["compression"]["level"], after["compression"]["block_rows"]) == (1, 16)
    assert after["file"] != old_file
    assert not os.path.exists(Path(store.path) / old_file)
    assert len(data_files(store.path)) == len(files)
    # a new file of fresh blocks only: no dead bytes
    assert os.path.getsize(Path(store.path) / after["file"]) == after["compression"]["stored_bytes"]
    assert _entry(store.path, "z")["deleted"] == b""
    check_pair(store, model)
    # and it keeps working
    rows = make_array(np.float64, (3, 4), seed=5)
    store.append({"raw": rows, "z": rows})
    store.replace({"raw": rows[0], "z": rows[0]}, [1, 50])
    store.drop("raw", [0])
    store.drop("z", [0])
    model = np.concatenate([model, rows])
    assign(model, [1, 50], rows[0])
    model = model[1:]
    check_pair(store, model)


@pytest.mark.parametrize("how", ["all", "one"])
def test_compact_drops_superseded_blocks(store, how):
    model = save_pair(store, _mixed(np.int64, (200, 2), seed=2), block_rows=10)
    for i in range(10):
        rows = make_array(np.int64, (3, 2), seed=i)
        idx = [i * 20, i * 20 + 1, 199 - i]
        store.replace({"raw": rows, "z": rows}, idx)
        assign(model, idx, rows)
    name = _entry(store.path, "z")["file"]
    size_before = os.path.getsize(Path(store.path) / name)
    total_before = data_bytes(store.path)
    files = data_files(store.path)
    assert size_before > _comp(store, "z")["stored_bytes"]  # superseded blocks are dead bytes
    store.compact(None if how == "all" else "z")
    entry = _entry(store.path, "z")
    size_after = os.path.getsize(Path(store.path) / entry["file"])
    assert size_after < size_before
    assert data_bytes(store.path) < total_before
    assert size_after == _comp(store, "z")["stored_bytes"]
    assert len(data_files(store.path)) == len(files)
    check_pair(store, model)


def test_drop_arrays_and_reset(store):
    model = save_pair(store, _mixed(np.float32, (30, 2)), block_rows=4)
    store.save({"z2": model}, compress=True, block_rows=7)
    z_file = _entry(store.path, "z")["file"]
    store.drop("z")
    assert not os.path.exists(Path(store.path) / z_file)
    assert store.get_member_list() == ["raw", "z2"]
    check_reads(store, "z2", model)
    store.drop(["z2"])
    assert data_files(store.path) == [_entry(store.path, "raw")["file"]]
    store.save({"z": model}, compress=True, block_rows=3)
    store.reset()
    assert store.get_member_list() == [] and data_files(store.path) == []
    store.save({"z": model[:5]}, compress=True, block_rows=2)
    check_reads(store, "z", model[:5])
    check_on_disk(store, "z", model[:5])


def test_save_raw_over_compressed_and_back(store):
    a = _mixed(np.int32, (25, 3), seed=1)
    b = _mixed(np.int32, (14, 3), seed=2)
    store.save({"x": a}, compress=True, block_rows=4)
    store.drop("x", [0, 1])
    old = _entry(store.path, "x")["file"]
    store.save({"x": b})
    assert _comp(store, "x") is None
    assert store.get_metadata()["arrays"]["x"]["rows_dropped"] == 0
    assert not os.path.exists(Path(store.path) / old)
    check_reads(store, "x", b)
    store.replace({"x": a[:1]}, [3])
    b[3] = a[0]
    store.save({"x": b}, compress=True, compression_level=7, block_rows=6)
    comp = _comp(store, "x")
    assert (comp["level"], comp["block_rows"], comp["blocks"]) == (7, 6, 3)
    check_reads(store, "x", b)
    check_on_disk(store, "x", b)
    store.save({"x": a}, compress=True, block_rows=5)  # compressed over compressed
    assert _comp(store, "x")["block_rows"] == 5
    check_reads(store, "x", a)
    assert len(data_files(store.path)) == 1


def test_one_save_several_compressed_arrays(store):
    arrays = {
        "t": _timestamps(500),
        "f": _incompressible_f32((50, 3)),
        "c": _smooth(np.complex128, (9, 2, 2)),
        "e": np.empty((0, 4), np.uint32),
    }
    store.save(arrays, compress=True, block_rows=8)
    for name, arr in arrays.items():
        check_reads(store, name, arr)
        check_on_disk(store, name, arr)
    assert store.get_member_list() == list(arrays)


# -- get_metadata ---------------------------------------------------------------------------


def test_metadata_report(store):
    arr = _mixed(np.float64, (1000, 3), seed=5)
    store.save({"raw": arr})
    store.save({"z": arr}, compress=True, block_rows=64, compression_level=9)
    meta = store.get_metadata()["arrays"]
    assert meta["raw"]["compression"] is None
    z = meta["z"]
    comp = z["compression"]
    assert set(comp) >= {
        "codec", "level", "block_rows", "blocks", "filters", "raw_bytes", "stored_bytes"
    }  # fmt: skip
    assert comp["codec"] == "zstd"
    assert comp["level"] == 9
    assert comp["block_rows"] == 64
    assert comp["blocks"] == 16
    assert set(comp["filters"]) <= {"raw", *FILTER_NAMES.values()}
    assert sum(comp["filters"].values()) == 16
    assert comp["raw_bytes"] == arr.nbytes
    assert 0 < comp["stored_bytes"] < comp["raw_bytes"]  # half of it is a constant-ish ramp
    assert z["bytes_on_disk"] == comp["stored_bytes"]
    assert (z["dtype"], z["shape"], z["nbytes"]) == ("float64", (1000, 3), arr.nbytes)
    check_on_disk(store, "z", arr)


def test_timestamps_compress_well_with_delta(store):
    ts = _timestamps(100_000)
    store.save({"ts": ts}, compress=True, block_rows=4096)
    comp = _comp(store, "ts")
    assert comp["blocks"] == 25
    assert comp["stored_bytes"] * 4 < comp["raw_bytes"] == ts.nbytes
    delta = comp["filters"].get("delta+shuffle", 0) + comp["filters"].get("delta+bitshuffle", 0)
    assert delta > comp["blocks"] // 2
    check_reads(store, "ts", ts)
    check_on_disk(store, "ts", ts)
    # the default block size (13 blocks of 8,192 rows, one filter group) compresses too
    store.save({"ts": ts}, compress=True)
    comp = _comp(store, "ts")
    assert comp["blocks"] == 13
    assert (
        comp["filters"].get("delta+shuffle", 0) + comp["filters"].get("delta+bitshuffle", 0) == 13
    )
    assert comp["stored_bytes"] * 4 < ts.nbytes


def test_filter_groups_share_one_pick_alike_on_both_backends(tmp_path):
    """Blocks of one filter group (FORMAT.md 7; here 4 blocks of 256 KiB) take the filter picked
    on the first block a call encodes: a save picks per group, an append that refills a partial
    block keeps its filter for the rest of its group, a replace keeps each block's filter.
    Both backends pick alike: their files and block records are the same bytes."""
    for b in ("rust", "python"):
        require_backend(b)
    br = 1 << 15  # int64 rows: 256 KiB blocks, 4 to a group
    ts = _timestamps(12 * br)
    noise = np.random.default_rng(5).integers(0, 2**64, 12 * br, np.uint64).view(np.int64)
    # Group 0 steady timestamps; group 1 timestamps but noise in its first block; group 2 noise.
    arr = np.concatenate([ts[: 4 * br], noise[:br], ts[5 * br : 8 * br], noise[8 * br :]])
    files = {}
    for b in ("rust", "python"):
        path = tmp_path / b
        with NumPack(path, backend=b) as npk:
            npk.save({"a": arr[: 6 * br + 100]}, compress=True, block_rows=br)
            first = [r[4] for r in _records(_entry(path, "a"))]
            npk.append({"a": arr[6 * br + 100 :]})  # refills block 6, then blocks 7-11
            npk.replace({"a": noise[:3]}, [0, 1, br * 5])
            e = _entry(path, "a")
            with open(path / e["file"], "rb") as f:
                files[b] = (e["compression"], f.read())
        codecs = [r[3] for r in _records(e)]
        filters = [r[4] for r in _records(e)]
        assert first[:4] == [first[0]] * 4 and first[0] in DELTAS  # group 0: delta, once
        assert first[4:7] == [first[4]] * 3 and first[4] not in DELTAS  # picked on noise
        # the append refills block 6, which keeps its filter, as does block 7 (its group),
        # though they hold timestamps; group 2 (blocks 8-11) is noise, stored raw
        assert filters[6] == filters[7] == first[6] and codecs[6] == 1
        assert codecs[8:] == [0] * 4
        assert filters[:6] == first[:6]  # the replace kept blocks 0 and 5's filters
    assert files["rust"] == files["python"]


def _prices(n: int, seed: int = 0, cols: int = 1) -> np.ndarray:
    """float64 prices: a random walk of cents, rounded to two decimals as a feed gives them."""
    steps = np.random.default_rng(seed).integers(-1, 2, size=(n, cols))
    return np.round((10_000 + np.cumsum(steps, axis=0)) * 0.01, 2).squeeze()


def test_decimal_prices_compress_far_better(store):
    """float64 decimals (prices with two places, OHLC rows) take the decimal filter
    (FORMAT.md 7): integers, delta, bitshuffle; every read gives back the exact bits."""
    for name, arr in (("ticks", _prices(200_000)), ("bars", _prices(50_000, 1, 4))):
        store.save({name: arr}, compress=True)
        comp = _comp(store, name)
        assert comp["filters"] == {"decimal": comp["blocks"]}, comp["filters"]
        assert comp["raw_bytes"] > 25 * comp["stored_bytes"]
        check_reads(store, name, arr)
        check_on_disk(store, name, arr)
        store.append({name: arr[:1000]})
        store.replace({name: arr[5:8] + 0.01}, [0, 1, len(arr) + 999])
        want = np.concatenate([arr, arr[:1000]])
        want[[0, 1, -1]] = arr[5:8] + 0.01
        check_reads(store, name, want)
        check_on_disk(store, name, want)


def test_values_that_are_not_decimals_round_trip_exactly(store):
    """-0.0, NaN, the infinities, 0.1 + 0.2, huge and subnormal values are not decimals: a
    block with one takes another filter (delta+bitshuffle when its group picked decimal), and
    reads give back every bit."""
    arr = _prices(40_000)
    for i, odd in enumerate([-0.0, np.nan, np.inf, -np.inf, 0.1 + 0.2, 2.0**60, 5e-324]):
        arr[9_000 + 8192 * (i % 4) + i] = odd  # in blocks 1-4 of the first filter group
    store.save({"a": arr}, compress=True, block_rows=8192)
    comp = _comp(store, "a")
    assert comp["filters"]["decimal"] >= 1 and comp["filters"]["delta+bitshuffle"] >= 1
    check_reads(store, "a", arr)
    check_on_disk(store, "a", arr)


def _reads_fail_with_filtered_head(backend, store_path, arr, filt, head, match):
    """Saves `arr` (one compressed block of filter `filt`), then writes that block again with
    its filtered bytes starting with `head` instead (CRC and record otherwise kept): every
    read must be CorruptStoreError matching `match`."""
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": arr}, compress=True)
    meta = read_metadata(store_path)
    [entry] = [e for e in meta["arrays"] if e["name"] == "a"]
    [(offset, size, crc, codec, f, _)] = _records(entry)
    assert f == filt
    path = store_path / entry["file"]
    stored = path.read_bytes()[offset : offset + size]
    frame = zstandard.ZstdDecompressor().decompress(stored)
    bad = zstandard.ZstdCompressor(level=3).compress(head + frame[len(head) :])
    end = os.path.getsize(path)
    with open(path, "ab") as fh:
        fh.write(bad)
    entry["compression"]["blocks"] = _pack_records([(end, len(bad), crc, codec, filt, 0)])
    write_metadata(store_path, meta)
    with NumPack(store_path, backend=backend) as npk:
        for call in (lambda: npk.load("a"), lambda: npk.getitem("a", [3])):
            with pytest.raises(CorruptStoreError, match=match):
                call()


def test_decimal_places_above_9_are_corrupt(backend, store_path):
    """A decimal block whose first byte claims more than 9 places is CorruptStoreError, on
    every read."""
    _reads_fail_with_filtered_head(backend, store_path, _prices(1000), 5, b"\x0a", "decimal places")


def test_integers_sharing_a_divisor_take_the_gcd_filter(store):
    """Volumes in lots of 100 take the gcd filter (FORMAT.md 7): quotients, bitshuffle; they
    compress better than npz's deflate; appends and replaces keep it; reads are exact."""
    vol = np.random.default_rng(0).poisson(3.0, 300_000).astype(np.int32) * 100
    store.save({"vol": vol}, compress=True)
    comp = _comp(store, "vol")
    assert comp["filters"] == {"gcd": comp["blocks"]}, comp["filters"]
    buf = io.BytesIO()
    np.savez_compressed(buf, vol=vol)
    assert comp["stored_bytes"] < len(buf.getvalue())
    store.append({"vol": vol[:1000]})
    store.replace({"vol": np.array([700, -300, 2**31 - 101], np.int32)}, [0, 1, len(vol) + 999])
    want = np.concatenate([vol, vol[:1000]])
    want[[0, 1, -1]] = [700, -300, 2**31 - 101]
    check_reads(store, "vol", want)
    check_on_disk(store, "vol", want)


@pytest.mark.parametrize("dtype", ["i2", "i4", "i8", "u2", "u4", "u8"])
def test_gcd_blocks_round_trip_every_integer_exactly(store, dtype):
    """Negative multiples, the largest ones, unsigned values above the signed range, and
    blocks of a gcd group that share no divisor (they take bitshuffle): every bit back.
    (Single bytes are left out: zstd packs such small values best as they are.)"""
    info = np.iinfo(dtype)
    g = 100
    q = np.random.default_rng(3).integers(-9, 10, 4 * 8192)
    arr = (q * g).astype(np.int64).astype(dtype)  # unsigned: wraps, as the bits do
    top = (2 ** (info.bits - 1) - 1) // g * g  # the largest multiple of g a signed unit holds
    arr[5], arr[6] = top, -top if info.min else 2**info.bits - top  # -top as signed
    arr[8192 + 7] = 1  # block 1 shares no divisor
    store.save({"a": arr}, compress=True, block_rows=8192)
    comp = _comp(store, "a")
    assert comp["filters"].get("gcd", 0) >= 2 and comp["filters"].get("bitshuffle", 0) >= 1, comp
    check_reads(store, "a", arr)
    check_on_disk(store, "a", arr)


@pytest.mark.parametrize("divisor", [0, 1, 2**31])
def test_gcd_divisors_that_cannot_be_written_are_corrupt(backend, store_path, divisor):
    """A gcd block whose divisor is below 2, or too large for a positive unit, is
    CorruptStoreError on every read."""
    arr = np.random.default_rng(0).poisson(3.0, 1000).astype(np.int32) * 100
    head = divisor.to_bytes(4, "little")
    _reads_fail_with_filtered_head(backend, store_path, arr, 6, head, "divisor")


def test_incompressible_data_is_stored_raw(store):
    arr = _incompressible_f32((20_000, 16))
    store.save({"f": arr}, compress=True, block_rows=1000)
    comp = _comp(store, "f")
    assert comp["blocks"] == 20
    assert comp["stored_bytes"] <= comp["raw_bytes"] == arr.nbytes
    assert comp["filters"].get("raw", 0) == 20  # no block shrinks, so every one is raw
    assert comp["stored_bytes"] == comp["raw_bytes"]
    check_reads(store, "f", arr)
    check_on_disk(store, "f", arr)


def test_compressible_blocks_use_zstd(store):
    arr = np.zeros((5000, 8), np.float32)
    store.save({"a": arr}, compress=True, block_rows=500)
    comp = _comp(store, "a")
    assert comp["filters"].get("raw", 0) == 0
    assert comp["stored_bytes"] * 50 < comp["raw_bytes"]
    assert all(r[3] == 1 for r in _records(_entry(store.path, "a")))


# -- argument errors ------------------------------------------------------------------------

BAD_ARGS = {
    "level_without_compress": ({"compression_level": 3}, InvalidArgumentError),
    "level_with_compress_false": (
        {"compress": False, "compression_level": 1},
        InvalidArgumentError,
    ),
    "block_rows_without_compress": ({"block_rows": 4}, InvalidArgumentError),
    "both_without_compress": ({"block_rows": 4, "compression_level": 3}, InvalidArgumentError),
    "block_rows_0": ({"compress": True, "block_rows": 0}, InvalidArgumentError),
    "block_rows_negative": ({"compress": True, "block_rows": -3}, InvalidArgumentError),
    "level_too_high": ({"compress": True, "compression_level": 23}, InvalidArgumentError),
    "level_float": ({"compress": True, "compression_level": 1.5}, InvalidTypeError),
    "level_whole_float": ({"compress": True, "compression_level": 3.0}, InvalidTypeError),
    "level_str": ({"compress": True, "compression_level": "3"}, InvalidTypeError),
    "level_bool": ({"compress": True, "compression_level": True}, InvalidTypeError),
    "block_rows_float": ({"compress": True, "block_rows": 2.0}, InvalidTypeError),
    "block_rows_str": ({"compress": True, "block_rows": "4"}, InvalidTypeError),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_compression_arguments(store, case):
    kwargs, exc = BAD_ARGS[case]
    store.save({"z": np.arange(20)}, compress=True, block_rows=6)
    before = snapshot(store.path)
    with pytest.raises(exc) as ei:
        store.save({"z": np.arange(5), "new": np.arange(3)}, **kwargs)
    assert isinstance(ei.value, NumPackError)
    assert snapshot(store.path) == before, "a failed call changed the store's files"
    assert store.get_member_list() == ["z"]
    assert_same_array(store.load("z"), np.arange(20))
    assert _comp(store, "z")["block_rows"] == 6


def test_compress_false_is_raw(store):
    store.save({"a": np.arange(5)}, compress=False)
    assert _comp(store, "a") is None


# -- corruption -----------------------------------------------------------------------------


def _corruptible(store_path, backend, kind):
    """A 50-row array in 5 blocks of 10 rows, all zstd ("zstd") or all stored raw ("raw")."""
    if kind == "zstd":
        arr = np.arange(50 * 16, dtype=np.int64).reshape(50, 16)
    else:
        arr = np.random.default_rng(0).integers(0, 2**63, size=(50, 16), dtype=np.int64)
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": arr, "b": arr[:5]}, compress=True, block_rows=10)
    entry = _entry(store_path, "a")
    assert {r[3] for r in _records(entry)} == {1 if kind == "zstd" else 0}
    return arr, entry


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _assert_corrupt_block_2(npk, arr) -> None:
    """Block 2 (rows 20..29) is corrupt: every read touching it raises, the others read fine."""
    for call in (
        lambda: npk.load("a"),
        lambda: npk.getitem("a", [25]),
        lambda: npk.getitem("a", [0, 29, 49]),
        lambda: npk.getitem("a", 20),
        lambda: npk.getitem("a", slice(15, 35)),
        lambda: npk.load("a", lazy=True)[18:22],
        lambda: npk.load("a", lazy=True)[::7],
        lambda: np.asarray(npk.load("a", lazy=True)),
        lambda: list(npk.stream_load("a", 7)),
    ):
        with pytest.raises(CorruptStoreError):
            call()
    assert_same_array(npk.getitem("a", [0, 19, 30, 49]), arr[[0, 19, 30, 49]])
    assert_same_array(npk.load("a", lazy=True)[:20], arr[:20])
    assert_same_array(npk.load("a", lazy=True)[30:], arr[30:])
    assert_same_array(npk.getitem("a", slice(30, 50, 3)), arr[30:50:3])
    assert_same_array(npk.load("b"), arr[:5])  # other arrays stay usable


@pytest.mark.parametrize("where", [0.5, 0.25, 0.9])
@pytest.mark.parametrize("kind", ["zstd", "raw"])
def test_flipped_byte_in_a_block(backend, store_path, kind, where):
    arr, entry = _corruptible(store_path, backend, kind)
    offset, size = _records(entry)[2][:2]
    _flip(store_path / entry["file"], offset + int(size * where))
    with NumPack(store_path, backend=backend) as npk:
        _assert_corrupt_block_2(npk, arr)
        # a write that must decode the block does not turn it into wrong numbers either
        with pytest.raises(CorruptStoreError):
            npk.replace({"a": arr[:1]}, [21])
        with pytest.raises(CorruptStoreError):
            npk.load("a")
        assert_same_array(npk.getitem("a", [49]), arr[[49]])


def test_corruption_seen_by_an_open_store(backend, store_path):
    arr, entry = _corruptible(store_path, backend, "zstd")
    with NumPack(store_path, backend=backend) as npk:
        assert_same_array(npk.load("a"), arr)
        offset, size = _records(entry)[2][:2]
        _flip(store_path / entry["file"], offset + size // 2)
        with NumPack(store_path, backend=backend) as fresh:
            _assert_corrupt_block_2(fresh, arr)


def test_corrupt_last_block_fails_append(backend, store_path):
    arr = np.arange(45 * 4, dtype=np.int64).reshape(45, 4)  # last block: 5 of 10 rows
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": arr}, compress=True, block_rows=10)
    entry = _entry(store_path, "a")
    offset, size = _records(entry)[-1][:2]
    _flip(store_path / entry["file"], offset + size // 2)
    with NumPack(store_path, backend=backend) as npk:
        with pytest.raises(CorruptStoreError):
            npk.append({"a": arr[:2]})
        with pytest.raises(CorruptStoreError):
            npk.getitem("a", [44])
        assert_same_array(npk.getitem("a", slice(0, 40)), arr[:40])


@pytest.mark.parametrize("kind", ["zstd", "raw"])
def test_wrong_crc_in_the_index(backend, store_path, kind):
    arr, _ = _corruptible(store_path, backend, kind)
    meta = read_metadata(store_path)
    [entry] = [e for e in meta["arrays"] if e["name"] == "a"]
    records = _records(entry)
    off, size, crc, codec, filt, zero = records[2]
    records[2] = (off, size, crc ^ 0x1, codec, filt, zero)
    entry["compression"]["blocks"] = _pack_records(records)
    write_metadata(store_path, meta)
    with NumPack(store_path, backend=backend) as npk:
        _assert_corrupt_block_2(npk, arr)


@pytest.mark.parametrize("how", ["longer", "shorter", "garbage"])
def test_frame_of_the_wrong_size(backend, store_path, how):
    arr, _ = _corruptible(store_path, backend, "zstd")
    meta = read_metadata(store_path)
    [entry] = [e for e in meta["arrays"] if e["name"] == "a"]
    raw = arr[20:30].tobytes()
    body = {"longer": raw + raw[:8], "shorter": raw[:-8], "garbage": None}[how]
    if body is None:
        frame = b"\x28\xb5\x2f\xfd" + bytes(range(40))  # zstd magic, then nonsense
    else:
        frame = zstandard.ZstdCompressor(level=3).compress(body)
    path = store_path / entry["file"]
    offset = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(frame)
    records = _records(entry)
    records[2] = (offset, len(frame), zlib.crc32(raw), 1, 0, 0)
    entry["compression"]["blocks"] = _pack_records(records)
    write_metadata(store_path, meta)
    with NumPack(store_path, backend=backend) as npk:
        # Frame headers are checked before an array is read (FORMAT.md 7), so that no read
        # allocates for rows its frames do not hold: the whole array fails, not one block.
        for call in (
            lambda: npk.load("a"),
            lambda: npk.getitem("a", [0]),
            lambda: npk.load("a", lazy=True)[40:],
        ):
            with pytest.raises(CorruptStoreError, match="declar"):
                call()
        assert_same_array(npk.load("b"), arr[:5])


_READ_CORRUPT = """
import sys
import numpy as np
from numpack import NumPack, CorruptStoreError, NumPackError
path, backend, how = sys.argv[1:]
try:
    npk = NumPack(path, backend=backend)
    if how == "load":
        out = npk.load("a")
    elif how == "getitem":
        out = npk.getitem("a", [-1, 0])
    elif how == "lazy":
        out = npk.load("a", lazy=True)[-3:]
    elif how == "stream":
        out = np.concatenate(list(npk.stream_load("a", 7)))
    elif how == "append":
        npk.append({"a": np.zeros((1, 16), np.int64)})
        out = npk.load("a")
    print("NO ERROR", out.sum())
except CorruptStoreError as e:
    print("CorruptStoreError", e)
except NumPackError as e:
    print("NumPackError", type(e).__name__, e)
except Exception as e:
    print("OTHER", type(e).__name__, e)
"""


@pytest.mark.parametrize("how", ["load", "getitem", "lazy", "stream", "append"])
@pytest.mark.parametrize("size", ["half", "last_byte", "zero"])
def test_truncated_data_file(backend, store_path, how, size):
    _, entry = _corruptible(store_path, backend, "zstd")
    path = store_path / entry["file"]
    full = os.path.getsize(path)
    end = max(r[0] + r[1] for r in _records(entry))
    assert end <= full
    with open(path, "r+b") as f:
        f.truncate({"half": full // 2, "last_byte": end - 1, "zero": 0}[size])
    before = snapshot(store_path)
    res = run_python(_READ_CORRUPT, store_path, backend, how)
    assert res.returncode == 0, f"crashed (rc {res.returncode}): {res.stderr[-2000:]}"
    assert res.stdout.startswith("CorruptStoreError"), res.stdout + res.stderr
    assert snapshot(store_path) == before


@pytest.mark.parametrize("how", ["load", "getitem", "lazy"])
def test_record_outside_the_file(backend, store_path, how):
    _, entry = _corruptible(store_path, backend, "zstd")
    meta = read_metadata(store_path)
    [e] = [x for x in meta["arrays"] if x["name"] == "a"]
    records = _records(e)
    off, size, crc, codec, filt, zero = records[-1]
    full = os.path.getsize(store_path / e["file"])
    records[-1] = (full - size // 2, size, crc, codec, filt, zero)
    e["compression"]["blocks"] = _pack_records(records)
    write_metadata(store_path, meta)
    before = snapshot(store_path)
    res = run_python(_READ_CORRUPT, store_path, backend, how)
    assert res.returncode == 0, f"crashed (rc {res.returncode}): {res.stderr[-2000:]}"
    assert res.stdout.startswith("CorruptStoreError"), res.stdout + res.stderr
    assert snapshot(store_path) == before


def test_unknown_codec_only_breaks_that_array(backend, store_path):
    arr, _ = _corruptible(store_path, backend, "zstd")
    meta = read_metadata(store_path)
    [e] = [x for x in meta["arrays"] if x["name"] == "a"]
    e["compression"]["codec"] = "lz77-from-the-future"
    write_metadata(store_path, meta)
    with NumPack(store_path, backend=backend) as npk:
        for call in (
            lambda: npk.load("a"),
            lambda: npk.getitem("a", [0]),
            lambda: npk.append({"a": arr[:1]}),
            lambda: npk.replace({"a": arr[:1]}, [0]),
        ):
            with pytest.raises(CorruptStoreError):
                call()
        assert_same_array(npk.load("b"), arr[:5])
        npk.append({"b": arr[:2]})
        assert_same_array(npk.load("b"), np.concatenate([arr[:5], arr[:2]]))


# -- snapshots (FORMAT.md section 7) --------------------------------------------------------


def test_lazy_made_before_replace_keeps_old_values(store):
    base = _mixed(np.int64, (40, 2), seed=1)
    save_pair(store, base, block_rows=6)
    lz = store.load("z", lazy=True)
    lr = store.load("raw", lazy=True)
    rows = -np.arange(6, dtype=np.int64).reshape(3, 2) - 1
    store.replace({"z": rows, "raw": rows}, [0, 13, 39])
    assert_same_array(lz[:], base)  # compressed: the old blocks are still in the log
    assert_same_array(np.asarray(lz), base)
    assert_same_array(lz[[13, 0, 39]], base[[13, 0, 39]])
    assert_same_array(lz[13], base[13])
    assert_same_array(lr[[13]], rows[1:2])  # raw: replaced in place
    new = base.copy()
    assign(new, [0, 13, 39], rows)
    assert_same_array(store.load("z", lazy=True)[:], new)
    assert_same_array(store.load("z"), new)


def test_lazy_made_before_append_keeps_old_shape(store):
    base = _mixed(np.float32, (10, 3), seed=2)
    store.save({"z": base}, compress=True, block_rows=4)
    lz = store.load("z", lazy=True)
    more = _mixed(np.float32, (7, 3), seed=3)
    store.append({"z": more})
    assert lz.shape == (10, 3) and len(lz) == 10
    assert_same_array(lz[:], base)
    assert_same_array(lz[-1], base[-1])
    assert_same_array(lz[[9, 8]], base[[9, 8]])
    assert_same_array(store.load("z"), np.concatenate([base, more]))


def test_lazy_snapshot_survives_drop_and_compact(store):
    base = _mixed(np.uint32, (30, 2), seed=4)
    store.save({"z": base}, compress=True, block_rows=4)
    lz = store.load("z", lazy=True)
    store.drop("z", slice(0, 20))
    store.replace({"z": np.zeros((1, 2), np.uint32)}, [0])
    store.compact()
    assert lz.shape == (30, 2)
    assert_same_array(lz[:], base)
    assert_same_array(lz[[29, 0]], base[[29, 0]])
    expected = base[20:].copy()
    expected[0] = 0
    assert_same_array(store.load("z"), expected)


# -- cross-backend --------------------------------------------------------------------------


def _xsteps():
    """(call(npk), update(model)); model: {name: (array, compressed)}."""
    a = _mixed(np.int64, (30, 3), seed=1)
    b = _incompressible_f32((17,), seed=2)
    c = _smooth(np.complex128, (12, 2), seed=3)
    d = _smooth(np.float16, (9, 4), seed=4)
    a_rows = make_array(np.int64, (4, 3), seed=5)
    mask_holder = {}

    def save(s):
        s.save({"a": a, "b": b}, compress=True, block_rows=4)
        s.save({"c": c, "d": d}, compress=True, compression_level=1, block_rows=5)

    def m_save(m):
        m.update(a=(a.copy(), True), b=(b.copy(), True), c=(c.copy(), True), d=(d.copy(), True))

    def append(s):
        s.append({"a": a[:3], "c": c[:7], "d": d[:1]})

    def m_append(m):
        for name, k in (("a", 3), ("c", 7), ("d", 1)):
            arr = m[name][0]
            m[name] = (np.concatenate([arr, {"a": a, "c": c, "d": d}[name][:k]]), True)

    idx = [0, 9, 32, 9]

    def replace(s):
        s.replace({"a": a_rows}, idx)
        s.replace({"b": b[:1]}, slice(3, 11))
        s.replace({"d": d[2:4]}, [-1, 0])

    def m_replace(m):
        assign(m["a"][0], idx, a_rows)
        assign(m["b"][0], slice(3, 11), b[:1])
        assign(m["d"][0], [-1, 0], d[2:4])

    def drop_rows(s):
        mask = np.arange(s.get_shape("c")[0]) % 3 == 1
        mask_holder["c"] = mask
        s.drop("a", [1, 2, 32])
        s.drop("c", mask)

    def m_drop_rows(m):
        m["a"] = (without(m["a"][0], [1, 2, 32]), True)
        m["c"] = (m["c"][0][~mask_holder["c"]], True)

    def append_after_drop(s):
        s.append({"a": a[5:6], "c": c[:1]})

    def m_append_after_drop(m):
        m["a"] = (np.concatenate([m["a"][0], a[5:6]]), True)
        m["c"] = (np.concatenate([m["c"][0], c[:1]]), True)

    def replace_after_drop(s):
        s.replace({"c": c[:2]}, [0, -1])
        s.replace({"a": a[7]}, slice(None, None, 5))

    def m_replace_after_drop(m):
        assign(m["c"][0], [0, -1], c[:2])
        assign(m["a"][0], slice(None, None, 5), a[7])

    def drop_array(s):
        s.drop("b")

    def m_drop_array(m):
        del m["b"]

    def raw_over(s):
        s.save({"d": d})

    def m_raw_over(m):
        m["d"] = (d.copy(), False)

    def compressed_again(s):
        s.save({"d": d[:5]}, compress=True, block_rows=2)

    def m_compressed_again(m):
        m["d"] = (d[:5].copy(), True)

    def none(m):
        return None

    return [
        ("save", save, m_save),
        ("append", append, m_append),
        ("replace", replace, m_replace),
        ("drop_rows", drop_rows, m_drop_rows),
        ("append_after_drop", append_after_drop, m_append_after_drop),
        ("replace_after_drop", replace_after_drop, m_replace_after_drop),
        ("compact_a", lambda s: s.compact("a"), none),
        ("compact_all", lambda s: s.compact(), none),
        ("drop_array", drop_array, m_drop_array),
        ("raw_over", raw_over, m_raw_over),
        ("compressed_again", compressed_again, m_compressed_again),
        ("append_again", lambda s: s.append({"d": d[:3]}),
         lambda m: m.update(d=(np.concatenate([m["d"][0], d[:3]]), True))),
    ]  # fmt: skip


def _xcheck(npk, model, step):
    assert sorted(npk.get_member_list()) == sorted(model), step
    for name, (arr, compressed) in model.items():
        assert (_comp(npk, name) is not None) == compressed, (step, name)
        check_reads(npk, name, arr)
        if compressed:
            check_on_disk(npk, name, arr)


@pytest.mark.parametrize("reopen", [False, True], ids=["handles", "reopen"])
@pytest.mark.parametrize("first", BACKENDS)
def test_backends_take_turns_on_compressed_arrays(tmp_path, first, reopen):
    for b in BACKENDS:
        require_backend(b)
    order = [first] + [b for b in BACKENDS if b != first]
    path = tmp_path / "store"
    model: dict = {}
    handles = {} if reopen else {b: NumPack(path, backend=b) for b in order}
    try:
        for i, (step, call, update) in enumerate(_xsteps()):
            writer = order[i % 2]
            if reopen:
                with NumPack(path, backend=writer) as npk:
                    call(npk)
            else:
                call(handles[writer])
            update(model)
            for b in order:
                if reopen:
                    with NumPack(path, backend=b) as npk:
                        _xcheck(npk, model, step)
                else:
                    _xcheck(handles[b], model, step)
    finally:
        for h in handles.values():
            h.close()


@pytest.mark.parametrize("writer, reader", list(itertools.permutations(BACKENDS)))
def test_written_by_one_modified_by_the_other(tmp_path, writer, reader):
    require_backend(writer)
    require_backend(reader)
    path = tmp_path / "store"
    ts = _timestamps(2000).reshape(1000, 2)
    f = _mixed(np.float32, (333, 5), seed=3)
    with NumPack(path, backend=writer) as w:
        w.save({"ts": ts, "f": f}, compress=True, block_rows=64)
        files = data_files(path)
    with NumPack(path, backend=reader) as r:
        check_reads(r, "ts", ts)
        check_reads(r, "f", f)
        r.append({"ts": ts[-10:], "f": f[:40]})
        r.replace({"ts": ts[:3]}, [0, 500, 1009])
        r.drop("f", slice(0, 300, 2))
        r.compact("f")
        ts2 = np.concatenate([ts, ts[-10:]])
        assign(ts2, [0, 500, 1009], ts[:3])
        f2 = without(np.concatenate([f, f[:40]]), slice(0, 300, 2))
    with NumPack(path, backend=writer) as w:
        check_reads(w, "ts", ts2)
        check_reads(w, "f", f2)
        check_on_disk(w, "ts", ts2)
        check_on_disk(w, "f", f2)
        assert len(data_files(path)) == len(files)
        w.replace({"f": f[:1]}, [-1])
        f2[-1] = f[0]
    with NumPack(path, backend=reader) as r:
        check_reads(r, "f", f2)


# -- a store written from the spec ----------------------------------------------------------


def _write_compressed_store(path):
    """A store written by hand from FORMAT.md section 7: every filter and both codecs, blocks
    in the file out of order with dead bytes between them."""
    os.makedirs(path, exist_ok=True)
    arrays = {
        # name: (array, block_rows, level, [(codec, filter) per block])
        "ts": (_timestamps(20).reshape(10, 2), 4, 5, [(1, 2), (1, 1), (0, 0)]),
        "cx": (make_array(np.complex64, (7, 2), seed=1), 3, 3, [(1, 2), (1, 0), (1, 2)]),
        "half": (_smooth(np.float16, (5,), seed=2), 2, 1, [(1, 4), (1, 3), (0, 0)]),
        "lots": (
            np.array([[300, -200], [0, 100], [-700, 32700]], np.int16),
            2,
            3,
            [(1, 6), (1, 6)],
        ),
        "flags": (_smooth(np.bool_, (6, 3), seed=3), 6, 19, [(1, 3)]),
        "empty": (np.empty((0, 2), np.uint16), 3, 3, []),
    }
    entries = []
    for i, (name, (arr, block_rows, level, kinds)) in enumerate(arrays.items()):
        fname = f"{file_stem(name)}.{i + 3}.npkd"
        u = _unit(arr.dtype)
        blob = bytearray(b"dead" * 3)
        records = [None] * len(kinds)
        for k in reversed(range(len(kinds))):  # last block first in the file
            codec, filt = kinds[k]
            rows = arr[k * block_rows : (k + 1) * block_rows]
            raw = rows.tobytes()
            stored = raw
            if codec == 1:
                stored = zstandard.ZstdCompressor(level=level).compress(
                    _filter(raw, filt, len(rows), u)
                )
            records[k] = (len(blob), len(stored), zlib.crc32(raw), codec, filt, 0)
            blob += stored + b"\x00junk\xff"
        (path / fname).write_bytes(bytes(blob))
        entries.append({
            "name": name, "file": fname, "dtype": arr.dtype.str, "shape": list(arr.shape),
            "deleted": b"", "modified_us": 1_700_000_000_000_000 + i,
            "compression": {"codec": "zstd", "level": level, "block_rows": block_rows,
                            "blocks": _pack_records(records)},
        })  # fmt: skip
    meta = {"format": "numpack", "version": 1, "next_file_id": 50, "arrays": entries}
    write_metadata(path, meta)
    return {name: v[0] for name, v in arrays.items()}


def test_reads_and_writes_a_store_written_from_the_spec(backend, store_path):
    model = _write_compressed_store(store_path)
    with NumPack(store_path, backend=backend) as npk:
        assert npk.get_member_list() == list(model)
        for name, arr in model.items():
            check_reads(npk, name, arr)
            check_on_disk(npk, name, arr, writer_rule=False)
        comp = _comp(npk, "ts")
        assert (comp["level"], comp["block_rows"], comp["blocks"]) == (5, 4, 3)
        assert {k: v for k, v in comp["filters"].items() if v} == {
            "delta+shuffle": 1, "shuffle": 1, "raw": 1
        }  # fmt: skip
        assert {k: v for k, v in _comp(npk, "cx")["filters"].items() if v} == {
            "delta+shuffle": 2, "none": 1
        }  # fmt: skip
        # and writes into it as the spec says
        ts = model["ts"]
        npk.append({"ts": ts[:3]})  # fills the 2-row block, adds one
        ts = np.concatenate([ts, ts[:3]])
        npk.replace({"ts": ts[-1:]}, [5])
        ts[5] = ts[-1]
        npk.drop("ts", [0])
        ts = ts[1:]
        check_reads(npk, "ts", ts)
        check_on_disk(npk, "ts", ts, writer_rule=False)
        npk.append({"empty": np.arange(8, dtype=np.uint16).reshape(4, 2)})
        check_reads(npk, "empty", np.arange(8, dtype=np.uint16).reshape(4, 2))
        npk.compact()
        check_reads(npk, "ts", ts)
        for name in ("ts", "cx", "half", "flags"):
            check_on_disk(npk, name, model[name] if name != "ts" else ts, writer_rule=False)
        assert_same_array(npk.load("cx"), model["cx"])
    assert read_metadata(store_path)["next_file_id"] > 50


# -- property test against a NumPy model ----------------------------------------------------

HYP_DTYPES = [np.int64, np.int16, np.uint8, np.float32, np.float16, np.complex64, np.bool_]


def _index(n: int):
    ints = st.integers(-n, n - 1)
    return st.one_of(
        st.lists(ints, min_size=1, max_size=6),
        st.builds(
            slice,
            st.none() | st.integers(-n - 2, n + 2),
            st.none() | st.integers(-n - 2, n + 2),
            st.none() | st.integers(-3, 3).filter(bool),
        ),
        arrays(np.bool_, (n,)),
        ints,
    )


@fixture_ok
@given(data=st.data())
def test_compressed_against_a_numpy_model(backend, data):
    dtype = np.dtype(data.draw(st.sampled_from(HYP_DTYPES), label="dtype"))
    row_shape = data.draw(st.lists(st.integers(1, 3), max_size=2).map(tuple), label="row")
    n = data.draw(st.integers(0, 20), label="n")
    model = data.draw(arrays(dtype, (n,) + row_shape), label="array")
    block_rows = data.draw(st.integers(1, 6), label="block_rows")
    level = data.draw(st.sampled_from([1, 3, 19]), label="level")
    physical = n
    with tempfile.TemporaryDirectory() as tmp:
        npk = NumPack(tmp + "/store", backend=backend)
        try:
            npk.save({"x": model}, compress=True, compression_level=level, block_rows=block_rows)
            for _ in range(data.draw(st.integers(1, 8), label="steps")):
                ops = ["append", "compact", "reopen"] + (["replace", "drop"] if len(model) else [])
                op = data.draw(st.sampled_from(ops), label="op")
                if op == "append":
                    k = data.draw(st.integers(0, 2 * block_rows + 1), label="rows")
                    rows = data.draw(arrays(dtype, (k,) + row_shape), label="new rows")
                    npk.append({"x": rows})
                    model = np.concatenate([model, rows])
                    physical += k
                elif op == "replace":
                    idx = data.draw(_index(len(model)), label="index")
                    count = np.atleast_1d(np.arange(len(model))[idx]).size
                    one = data.draw(st.booleans(), label="one row")
                    shape = row_shape if one else (count,) + row_shape
                    rows = data.draw(arrays(dtype, shape), label="rows")
                    npk.replace({"x": rows}, idx)
                    model = model.copy()
                    assign(model, idx, rows)
                elif op == "drop":
                    idx = data.draw(_index(len(model)), label="index")
                    npk.drop("x", idx)
                    model = without(model, idx)
                elif op == "compact":
                    npk.compact(data.draw(st.sampled_from([None, "x"]), label="which"))
                    physical = len(model)
                else:
                    npk.close()
                    npk = NumPack(tmp + "/store", backend=backend)
                out = npk.load("x")
                assert_same_array(out, model)
                assert out.tobytes() == model.tobytes()
                comp = _comp(npk, "x")
                assert (comp["level"], comp["block_rows"]) == (level, block_rows)
                assert comp["blocks"] == _ceil_div(physical, block_rows)
                if len(model):
                    idx = data.draw(_index(len(model)), label="read")
                    assert_same_array(npk.getitem("x", idx), model[idx])
                    assert_same_array(npk.load("x", lazy=True)[idx], model[idx])
            check_on_disk(npk, "x", model)
        finally:
            npk.close()
