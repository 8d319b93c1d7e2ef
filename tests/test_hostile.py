"""Corrupt and hostile input (issue 7, item 3): damaged metadata, data files of the wrong
length, lying block indexes and shapes, lying .npy headers, odd names.

Every case ends in the documented exception class (CorruptStoreError for a damaged store) or
in success with the numbers the format says, never a crash, a panic across FFI, a
MemoryError from a lying size or wrong numbers. Cases that could crash the interpreter (a
fault on a mapping, an abort) run in a subprocess. tests/test_errors.py and
tests/test_compression.py already cover the single mutations of metadata fields, short data
files and flipped block bytes; this module adds exhaustive sweeps and the lies they miss.
"""

from __future__ import annotations

import json
import os
import struct
import unicodedata
import zlib

import msgpack
import numpy as np
import pytest
import zstandard
from helpers import (
    assert_same_array,
    fold,
    read_metadata,
    run_python,
    snapshot,
    write_metadata,
)

from numpack import NPYT, CorruptStoreError, NumPack

RAW = np.arange(12 * 3, dtype=np.int64).reshape(12, 3)
COMP = (np.arange(40 * 4, dtype=np.int32).reshape(40, 4) // 3).astype(np.int32)
VEC = np.linspace(-1, 1, 9, dtype=np.float32)
RECORD = np.dtype(
    [("offset", "<u8"), ("size", "<u8"), ("crc32", "<u4"), ("codec", "u1"), ("filter", "u1"),
     ("pad", "<u2")]
)  # fmt: skip


def _store(path, backend):
    """Three arrays: raw with a dropped row, compressed in 6 blocks, raw 1-D."""
    with NumPack(path, backend=backend) as npk:
        npk.save({"raw": RAW, "vec": VEC})
        npk.save({"comp": COMP}, compress=True, block_rows=7)
        npk.drop("raw", [4])
    return read_metadata(path)


def _entry(meta, name):
    [e] = [e for e in meta["arrays"] if e["name"] == name]
    return e


def _records(entry):
    return np.frombuffer(entry["compression"]["blocks"], RECORD).copy()


def _set_records(entry, records):
    entry["compression"]["blocks"] = records.astype(RECORD).tobytes()


def _same_store(path, before: dict) -> None:
    """The files are as in `before`, metadata.npkm compared by content (a backend may commit
    the same metadata again, encoded its own way)."""
    after = snapshot(path)
    meta_a, meta_b = after.pop("metadata.npkm"), dict(before).pop("metadata.npkm")
    assert msgpack.unpackb(meta_a, raw=False) == msgpack.unpackb(meta_b, raw=False)
    assert after == {k: v for k, v in before.items() if k != "metadata.npkm"}


def _outcome(code_result) -> str:
    res = code_result
    assert res.returncode == 0, f"crashed (rc {res.returncode}): {res.stderr[-3000:]}"
    return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""


# -- sweeps over damaged metadata (a subprocess per backend) --------------------------------

# For each candidate metadata file: put it in place, open the store, read every array every
# way, and check what comes back against what the candidate metadata says the data files hold
# (raw arrays: the file's bytes; compressed arrays: the rows they were saved with, which their
# CRCs protect). Prints one JSON summary; any other exception or a wrong number is a failure.
_SWEEP = r"""
import json, math, os, sys
import msgpack
import numpy as np
from numpack import NumPack, NumPackError, CorruptStoreError

store, backend, cands, originals = sys.argv[1:]
originals = {k: bytes.fromhex(v) for k, v in json.load(open(originals)).items()}
meta_path = os.path.join(store, "metadata.npkm")
counts = {"corrupt": 0, "ok": 0}
failures = []

def expected(e):
    dt = np.dtype(e["dtype"]).newbyteorder("<")
    shape = tuple(e["shape"])
    row = math.prod(shape[1:]) * dt.itemsize
    if e.get("compression") is None:
        with open(os.path.join(store, e["file"]), "rb") as f:
            buf = f.read(shape[0] * row)
    elif row == 0:
        buf = b""  # rows of no bytes hold no numbers, whatever the blocks hold
    else:
        buf = originals.get(e["file"], b"")
    if len(buf) != shape[0] * row:
        return None
    a = np.frombuffer(buf, dt, count=shape[0] * math.prod(shape[1:])).reshape(shape)
    deleted = np.frombuffer(e["deleted"], "<u8").astype(np.int64)
    return np.delete(a, deleted, axis=0)

for cand in sorted(os.listdir(cands)):
    data = open(os.path.join(cands, cand), "rb").read()
    tmp = meta_path + ".sweep.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, meta_path)
    try:
        with NumPack(store, backend=backend) as npk:
            got = {}
            for name in npk.get_member_list():
                a = npk.load(name)
                lazy = npk.load(name, lazy=True)
                if len(a):
                    assert np.array_equal(lazy[-1:], a[-1:], equal_nan=True), "lazy"
                    ends = npk.getitem(name, [0, -1])
                    assert np.array_equal(ends, a[[0, -1]], equal_nan=True), "getitem"
                got[name] = a
        counts["ok"] += 1
        try:
            doc = msgpack.unpackb(data, raw=False)
        except Exception as e:
            failures.append((cand, f"accepted metadata msgpack rejects: {e}"))
            continue
        for e in doc["arrays"]:
            want = expected(e)
            a = got[e["name"]]
            if want is None or a.shape != want.shape or a.tobytes() != want.tobytes():
                failures.append((cand, f"WRONG numbers for {e['name']!r}"))
    except CorruptStoreError:
        counts["corrupt"] += 1
    except NumPackError as e:
        failures.append((cand, f"{type(e).__name__}: {e}"[:300]))
    except Exception as e:
        failures.append((cand, f"OTHER {type(e).__name__}: {e}"[:300]))
print(json.dumps({"counts": counts, "failures": failures[:20], "n_failures": len(failures)}))
"""


def _sweep(tmp_path, store_path, backend, candidates: dict) -> dict:
    """Run _SWEEP over `candidates` ({label: metadata bytes}); the data files stay as saved."""
    cdir = tmp_path / "candidates"
    cdir.mkdir()
    for i, (label, data) in enumerate(candidates.items()):
        (cdir / f"{i:06d}-{label}").write_bytes(data)
    meta = read_metadata(store_path)
    originals = {_entry(meta, "comp")["file"]: COMP.tobytes().hex()}
    (tmp_path / "originals.json").write_text(json.dumps(originals))
    before = {k: v for k, v in snapshot(store_path).items() if k != "metadata.npkm"}
    res = run_python(_SWEEP, store_path, backend, cdir, tmp_path / "originals.json", timeout=600)
    summary = json.loads(_outcome(res))
    assert summary["n_failures"] == 0, summary["failures"]
    assert sum(summary["counts"].values()) == len(candidates)
    after = {k: v for k, v in snapshot(store_path).items() if k != "metadata.npkm"}
    assert after == before, "reading damaged metadata changed the data files"
    return summary["counts"]


def test_every_truncation_of_the_metadata(backend, tmp_path):
    store_path = tmp_path / "store"
    _store(store_path, backend)
    raw = (store_path / "metadata.npkm").read_bytes()
    cands = {f"cut{n}": raw[:n] for n in range(len(raw))}
    counts = _sweep(tmp_path, store_path, backend, cands)
    assert counts == {"corrupt": len(raw), "ok": 0}


def test_every_bit_flip_of_the_metadata(backend, tmp_path):
    store_path = tmp_path / "store"
    _store(store_path, backend)
    raw = (store_path / "metadata.npkm").read_bytes()
    cands = {}
    for i in range(len(raw)):
        for bit in range(8):
            b = bytearray(raw)
            b[i] ^= 1 << bit
            cands[f"flip{i}.{bit}"] = bytes(b)
    counts = _sweep(tmp_path, store_path, backend, cands)
    # Many flips land in timestamps or counters, which no reader can tell from good values;
    # every accepted one was checked to read the numbers the flipped metadata describes.
    assert counts["corrupt"] > len(raw)


def test_zeroed_and_garbage_runs_in_the_metadata(backend, tmp_path):
    store_path = tmp_path / "store"
    _store(store_path, backend)
    raw = (store_path / "metadata.npkm").read_bytes()
    rng = np.random.default_rng(7)
    cands = {}
    for width in (1, 2, 4, 8, 24, 64):
        for start in range(0, len(raw), max(1, width // 2)):
            b = bytearray(raw)
            b[start : start + width] = bytes(len(b[start : start + width]))
            cands[f"zero{width}@{start}"] = bytes(b)
            b = bytearray(raw)
            n = len(b[start : start + width])
            b[start : start + width] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            cands[f"junk{width}@{start}"] = bytes(b)
    cands["all_zero_double"] = bytes(2 * len(raw))
    cands["repeated_twice"] = raw + raw
    cands["one_byte_more"] = raw + b"\x00"
    cands["valid_map_then_junk"] = raw + b"junk" * 100
    _sweep(tmp_path, store_path, backend, cands)


# -- oversized metadata ---------------------------------------------------------------------

_OPEN = """
import sys
import numpy as np
from numpack import NumPack, CorruptStoreError, NumPackError
path, backend = sys.argv[1:3]
try:
    with NumPack(path, backend=backend) as npk:
        names = npk.get_member_list()
        total = sum(float(np.asarray(npk.load(n), dtype=np.float64).sum()) for n in names)
    print("OK", names, total)
except CorruptStoreError as e:
    print("CorruptStoreError", str(e)[:200].replace("\\n", " "))
except NumPackError as e:
    print("NumPackError", type(e).__name__, str(e)[:200])
except BaseException as e:
    print("OTHER", type(e).__name__, str(e)[:200])
"""

_MB100 = 100 << 20


def _big_metadata(raw: bytes, how: str) -> bytes:
    rng = np.random.default_rng(3)
    if how == "garbage_100mb":
        return rng.integers(0, 256, _MB100, dtype=np.uint8).tobytes()
    if how == "zeros_100mb":
        return bytes(_MB100)
    if how == "ff_100mb":
        return b"\xff" * _MB100
    if how == "valid_then_100mb":
        return raw + rng.integers(0, 256, _MB100, dtype=np.uint8).tobytes()
    if how == "array_of_2_32_entries":
        head = msgpack.packb({"format": "numpack", "version": 1, "next_file_id": 9})
        return bytes([head[0] + 1]) + head[1:] + msgpack.packb("arrays") + b"\xdd\xff\xff\xff\xff"
    if how == "bin_of_4gb_claimed":
        m = msgpack.unpackb(raw)
        m["arrays"][0]["deleted"] = b"PLACEHOLDER!"
        return msgpack.packb(m, use_bin_type=True).split(b"\xc4\x0cPLACEHOLDER!")[0] + (
            b"\xc6\xff\xff\xff\xff" + b"\x00" * 100
        )
    if how == "nested_200k_deep":
        m = msgpack.unpackb(raw)
        m["arrays"][0]["compression"] = "PLACEHOLDER"
        packed = msgpack.packb(m, use_bin_type=True)
        return packed.replace(msgpack.packb("PLACEHOLDER"), b"\x91" * 200_000 + b"\xc0")
    if how == "nested_200k_deep_unknown_key":
        packed = msgpack.packb(msgpack.unpackb(raw), use_bin_type=True)
        nest = msgpack.packb("x") + b"\x91" * 200_000 + b"\xc0"
        return bytes([packed[0] + 1]) + packed[1:] + nest
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "garbage_100mb",
        "zeros_100mb",
        "ff_100mb",
        "valid_then_100mb",
        "array_of_2_32_entries",
        "bin_of_4gb_claimed",
        "nested_200k_deep",
        "nested_200k_deep_unknown_key",
    ],
)
def test_oversized_or_hostile_metadata(backend, store_path, how):
    _store(store_path, backend)
    fold(store_path)
    meta_file = store_path / "metadata.npkm"
    meta_file.write_bytes(_big_metadata(meta_file.read_bytes(), how))
    before = snapshot(store_path)
    # The subprocess's timeout bounds a hang (it fails the test); how fast the refusal is
    # belongs to benchmarks, not to a test's pass or fail.
    out = _outcome(run_python(_OPEN, store_path, backend, timeout=120))
    assert out.startswith("CorruptStoreError"), out
    assert snapshot(store_path) == before


def test_huge_unknown_key_is_ignored(backend, store_path):
    """100 MB that a reader does not know is still valid metadata (FORMAT.md 2)."""
    meta = _store(store_path, backend)
    meta["future_statistics"] = b"\x01" * _MB100
    _entry(meta, "raw")["future_key"] = list(range(1000))
    write_metadata(store_path, meta)
    out = _outcome(run_python(_OPEN, store_path, backend, timeout=120))
    assert out.startswith("OK"), out
    with NumPack(store_path, backend=backend) as npk:
        assert_same_array(npk.load("raw"), np.delete(RAW, 4, axis=0))
        assert_same_array(npk.load("comp"), COMP)


# -- data files longer than the metadata says: the extra bytes are not part of the array ----


@pytest.mark.parametrize("extra", [1, 7, 4096, 1 << 20])
def test_longer_data_files_read_correctly(backend, tmp_path, extra):
    store_path = tmp_path / "store"
    meta = _store(store_path, backend)
    junk = np.random.default_rng(extra).integers(0, 256, extra, dtype=np.uint8).tobytes()
    for name in ("raw", "vec", "comp"):
        with open(store_path / _entry(meta, name)["file"], "ab") as f:
            f.write(junk)
    other = "python" if backend == "rust" else "rust"
    for b in (backend, other):
        with NumPack(store_path, backend=b) as npk:
            assert_same_array(npk.load("raw"), np.delete(RAW, 4, axis=0))
            assert_same_array(npk.load("vec"), VEC)
            assert_same_array(npk.load("comp"), COMP)
            assert_same_array(npk.load("comp", lazy=True)[-3:], COMP[-3:])
            assert_same_array(npk.getitem("vec", [-1]), VEC[-1:])
    with NumPack(store_path, backend=backend) as npk:
        # Appends overwrite (raw) or follow (compressed) the extra bytes.
        npk.append({"vec": VEC[:2], "raw": RAW[:1], "comp": COMP[:3]})
        npk.replace({"comp": COMP[:1] + 1}, [39])
        want_comp = np.concatenate([COMP, COMP[:3]])
        want_comp[39] = COMP[0] + 1
        for b in (backend, other):
            with NumPack(store_path, backend=b) as again:
                assert_same_array(again.load("vec"), np.concatenate([VEC, VEC[:2]]))
                want_raw = np.concatenate([np.delete(RAW, 4, 0), RAW[:1]])
                assert_same_array(again.load("raw"), want_raw)
                assert_same_array(again.load("comp"), want_comp)
        npk.compact()
        assert_same_array(npk.load("comp"), want_comp)
        assert_same_array(npk.load("raw"), np.concatenate([np.delete(RAW, 4, 0), RAW[:1]]))


# -- data files shorter than the metadata says (boundaries the other modules miss) ----------

_READ_ALL = """
import sys
import numpy as np
from numpack import NumPack, CorruptStoreError, NumPackError
path, backend, name, hows = sys.argv[1:]

def run(npk, how):
    if how == "load":
        return npk.load(name)
    if how == "lazy_last":
        return npk.load(name, lazy=True)[-1:]
    if how == "getitem_last":
        return npk.getitem(name, [-1])
    if how == "stream":
        return np.concatenate(list(npk.stream_load(name, 5)))
    if how == "append":
        npk.append({name: npk.load(name, lazy=True)[:1]})
        return npk.load(name)
    if how == "replace":
        npk.replace({name: npk.load(name, lazy=True)[:1]}, [-1])
        return npk.load(name)
    if how == "compact":
        npk.compact(name)
        return npk.load(name)
    raise AssertionError(how)

for how in hows.split(","):  # each with a fresh NumPack, one line each
    try:
        with NumPack(path, backend=backend) as npk:
            out = run(npk, how)
        print(how, "NO ERROR", np.asarray(out, dtype=np.float64).sum())
    except CorruptStoreError as e:
        print(how, "CorruptStoreError", str(e).replace("\\n", " "))
    except NumPackError as e:
        print(how, "NumPackError", type(e).__name__, e)
    except BaseException as e:
        print(how, "OTHER", type(e).__name__, e)
"""


def _outcomes(res, hows) -> dict:
    """{how: outcome line} of a script that printed one line per call."""
    assert res.returncode == 0, f"crashed (rc {res.returncode}): {res.stderr[-3000:]}"
    lines = [line.split(" ", 1) for line in res.stdout.splitlines() if line.strip()]
    out = {how: rest for how, rest in lines if how in hows}
    assert list(out) == list(hows), res.stdout + res.stderr
    return out


READS = ["load", "lazy_last", "getitem_last", "stream", "append", "replace", "compact"]


@pytest.mark.parametrize("name, cut", [("raw", 1), ("raw", 12), ("vec", 1), ("comp", 1)])
def test_data_file_a_little_short(backend, store_path, name, cut):
    """Shorter by one byte (or half a row): the last row must not be read past the end."""
    meta = _store(store_path, backend)
    path = store_path / _entry(meta, name)["file"]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - cut)
    before = snapshot(store_path)
    outs = _outcomes(run_python(_READ_ALL, store_path, backend, name, ",".join(READS)), READS)
    for how, out in outs.items():
        assert out.startswith("CorruptStoreError"), (how, out)
    _same_store(store_path, before)


@pytest.mark.parametrize("what", ["fifo", "directory", "dev_zero"])
@pytest.mark.parametrize("name", ["raw", "comp"])
def test_data_file_that_is_not_a_file(backend, store_path, what, name):
    """A FIFO must not block the reader forever; a directory or a device is no data file."""
    meta = _store(store_path, backend)
    path = store_path / _entry(meta, name)["file"]
    os.remove(path)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "directory":
        os.mkdir(path)
    else:
        os.symlink("/dev/zero", path)
    before = snapshot(store_path)
    outs = _outcomes(
        run_python(_READ_ALL, store_path, backend, name, ",".join(READS), timeout=60), READS
    )
    for how, out in outs.items():
        assert out.startswith("CorruptStoreError"), (how, out)
    assert snapshot(store_path) == before


# -- block indexes pointing where they must not ---------------------------------------------


def _lie_index(meta, how: str, store_path) -> None:
    e = _entry(meta, "comp")
    r = _records(e)
    size = os.path.getsize(store_path / e["file"])
    # The last block: every read below touches it (an append re-encodes it, as it is partial).
    k = len(r) - 1
    if how == "offset_max":
        r[k]["offset"] = 2**63 - 1
    elif how == "offset_past_end":
        r[k]["offset"] = size
    elif how == "offset_plus_size_wraps":
        r[k]["offset"], r[k]["size"] = 2**63 - 1, 2**63 - 1
    elif how == "size_max":
        r[k]["size"] = 2**64 - 1
    elif how == "size_zero":
        r[k]["size"] = 0
    elif how == "size_one":
        r[k]["size"] = 1
    elif how == "same_bytes_twice":
        r[k] = r[k - 1]
    elif how == "duplicate_record_middle":
        r[3] = r[2]  # same rows, size and CRC: only the overlap tells
    elif how == "all_blocks_one_record":
        r[:] = r[0]
    elif how == "into_another_block":
        r[k]["offset"] = r[k - 1]["offset"]
    elif how == "shifted_by_one":
        r[k]["offset"] += 1
    elif how == "codec_raw_for_zstd":
        r[k]["codec"] = 0
    elif how == "codec_unknown":
        r[k]["codec"] = 7
    elif how == "filter_unknown":
        r[k]["filter"] = 9
    elif how == "filter_changed":
        r[k]["filter"] = (int(r[k]["filter"]) + 1) % 7
    elif how == "index_short":
        r = r[:-1]
    elif how == "index_long":
        r = np.concatenate([r, r[-1:]])
    elif how == "index_torn":
        e["compression"]["blocks"] = r.tobytes()[:-5]
        return
    elif how == "index_not_bytes":
        e["compression"]["blocks"] = [1, 2, 3]
        return
    elif how == "block_rows_zero":
        e["compression"]["block_rows"] = 0
        return
    elif how == "block_rows_negative":
        e["compression"]["block_rows"] = -7
        return
    elif how == "block_rows_huge":
        e["compression"]["block_rows"] = 2**64 - 1
        r = r[:1]
    elif how == "block_rows_other":
        e["compression"]["block_rows"] = 8  # 5 blocks of 8 rows, over blocks of 7
        r = r[:5]
    elif how == "level_huge":
        e["compression"]["level"] = 2**40
        return
    else:
        raise AssertionError(how)
    _set_records(e, r)


LIES = [
    "offset_max", "offset_past_end", "offset_plus_size_wraps", "size_max", "size_zero",
    "size_one", "same_bytes_twice", "duplicate_record_middle", "all_blocks_one_record",
    "into_another_block", "shifted_by_one", "codec_raw_for_zstd", "codec_unknown",
    "filter_unknown", "filter_changed", "index_short", "index_long", "index_torn",
    "index_not_bytes", "block_rows_zero", "block_rows_negative", "block_rows_huge",
    "block_rows_other", "level_huge",
]  # fmt: skip


@pytest.mark.parametrize("lie", LIES)
def test_lying_block_index(backend, store_path, lie):
    meta = _store(store_path, backend)
    _lie_index(meta, lie, store_path)
    write_metadata(store_path, meta)
    before = snapshot(store_path)
    outs = _outcomes(run_python(_READ_ALL, store_path, backend, "comp", ",".join(READS)), READS)
    for how, out in outs.items():
        assert out.startswith("CorruptStoreError"), (how, out)
    _same_store(store_path, before)


# -- huge declared shapes: refused before anything that size is allocated -------------------

# The subprocess caps its address space a few GiB above what it already uses, so any attempt
# to allocate a lying size (here 64 GiB and more) fails loudly instead of being overcommitted.
_CAPPED = """
import resource, sys
import numpy as np
from numpack import NumPack, CorruptStoreError, NumPackError
path, backend, hows = sys.argv[1:]
import tempfile
with NumPack(tempfile.mkdtemp(), backend=backend) as npk:  # warm up: thread pools, caches
    npk.save({"w": np.arange(100_000)}, compress=True)
    npk.load("w")
def vm():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
cap = vm() + (4 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
def run(npk, how):
    if how == "shape":
        return npk.get_shape("big")
    if how == "load":
        return npk.load("big")
    if how == "lazy":
        return npk.load("big", lazy=True)[:2]
    if how == "asarray":
        return np.asarray(npk.load("big", lazy=True))
    if how == "getitem":
        return npk.getitem("big", [0, -1])
    if how == "stream":
        return next(iter(npk.stream_load("big", 1 << 20)))
    if how in ("append", "replace"):
        shape = npk.get_shape("big")
        # A row of the declared width, unless that width is itself the lie (then the first
        # row read back must fail first).
        row = np.zeros((1,) + shape[1:], np.int64) if np.prod(shape[1:]) < 10**6 else (
            npk.load("big", lazy=True)[:1])
        if how == "append":
            npk.append({"big": row})
            return npk.load("big", lazy=True)[-1:]
        npk.replace({"big": row}, [0])
        return "replaced"
    if how == "drop_rows":
        npk.drop("big", [0])
        return npk.load("big", lazy=True)[:1]
    if how == "compact":
        npk.compact()
        return npk.load("big", lazy=True)[:1]
    if how == "metadata":
        return npk.get_metadata()
    raise AssertionError(how)

for how in hows.split(","):  # each with a fresh NumPack, one line each
    try:
        with NumPack(path, backend=backend) as npk:
            out = run(npk, how)
        print(how, "NO ERROR", str(out)[:100].replace("\\n", " "))
    except CorruptStoreError as e:
        print(how, "CorruptStoreError", str(e).replace("\\n", " "))
    except NumPackError as e:
        print(how, "NumPackError", type(e).__name__, e)
    except BaseException as e:
        print(how, "OTHER", type(e).__name__, e)
"""


def _frame_claiming(content_size: int, body: bytes = b"\x00" * 64) -> bytes:
    """A zstd frame whose header declares `content_size` (8-byte field), then one raw block."""
    fhd = 0b1110_0000  # 8-byte content size, single segment, no checksum, no dictionary
    block = (1 | (0 << 1) | (len(body) << 3)).to_bytes(3, "little")  # last block, raw
    return b"\x28\xb5\x2f\xfd" + bytes([fhd]) + content_size.to_bytes(8, "little") + block + body


def _append_frame(store_path, entry, frame: bytes) -> int:
    path = store_path / entry["file"]
    offset = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(frame)
    return offset


HUGE = [
    "raw_2d", "raw_1d", "raw_rows_2_40_cols", "zstd_one_block", "zstd_two_blocks",
    "stored_raw_block", "unknown_size_frame", "frame_claims_huge", "frame_claims_more",
    "zero_size_block",
]  # fmt: skip


def _make_huge(store_path, backend, kind: str) -> None:
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"vec": VEC})
        if kind.startswith("raw"):
            npk.save({"big": RAW})
        else:
            npk.save({"big": RAW}, compress=True, block_rows=4)
    meta = read_metadata(store_path)
    e = _entry(meta, "big")
    if kind == "raw_2d":
        e["shape"] = [2**40, 3]
    elif kind == "raw_1d":
        e["shape"] = [2**40]
    elif kind == "raw_rows_2_40_cols":
        e["shape"] = [3, 2**40]
    else:
        r = _records(e)
        e["shape"] = [2**40, 3]
        e["compression"]["block_rows"] = 2**40
        if kind == "zstd_two_blocks":
            e["shape"] = [2**36 + 1, 3]
            e["compression"]["block_rows"] = 2**36
            r = r[:2]
        elif kind == "stored_raw_block":
            r = r[:1]
            r[0]["codec"], r[0]["filter"] = 0, 0
        elif kind in ("unknown_size_frame", "frame_claims_huge", "frame_claims_more"):
            # Metadata whose sizes agree with the bound (2**36 raw bytes from 2**21 stored),
            # in front of a frame that does not hold them.
            e["shape"] = [2**36 // 24, 3]
            e["compression"]["block_rows"] = 2**36 // 24
            body = b"\x00" * (1 << 21)
            if kind == "unknown_size_frame":
                frame = zstandard.ZstdCompressor(write_content_size=False).compress(body)
                frame += b"\x00" * ((1 << 21) - len(frame))  # stored size agrees with the bound
            elif kind == "frame_claims_huge":
                frame = _frame_claiming(2**62, body[:1000]) + body[: (1 << 21) - 1013]
            else:
                frame = _frame_claiming(2**36 // 24 * 24 + 8, body[: (1 << 17) - 1]) + body
            r = r[:1]
            r[0]["offset"] = _append_frame(store_path, e, frame)
            r[0]["size"], r[0]["codec"], r[0]["filter"] = len(frame), 1, 0
        elif kind == "zero_size_block":
            r = r[:1]
            r[0]["size"] = 0
        else:
            r = r[:1]
        _set_records(e, r)
    write_metadata(store_path, meta)


HUGE_READS = ["shape", "metadata", "load", "lazy", "asarray", "getitem", "stream"]
# Writes last: an append that need not decode a block succeeds (see below).
HUGE_WRITES = ["replace", "drop_rows", "compact", "append"]


@pytest.mark.parametrize("kind", HUGE)
def test_huge_declared_shape(backend, store_path, kind):
    _make_huge(store_path, backend, kind)
    before = snapshot(store_path)
    reads = _outcomes(
        run_python(_CAPPED, store_path, backend, ",".join(HUGE_READS), timeout=300), HUGE_READS
    )
    assert snapshot(store_path) == before
    writes = _outcomes(
        run_python(_CAPPED, store_path, backend, ",".join(HUGE_WRITES), timeout=300),
        HUGE_WRITES,
    )
    for how, out in {**reads, **writes}.items():
        # Reporting shapes reads no data (the python backend checks sizes against the files
        # when it opens the store, the rust one when an array is read); an append that need
        # not decode a block (the last one is full) writes good new blocks and reads them
        # back. Every other call must refuse, before allocating: the subprocess's address
        # space is capped, so an attempt would show as a MemoryError.
        if not (how in ("shape", "metadata", "append") and out.startswith("NO ERROR")):
            assert out.startswith("CorruptStoreError"), (how, out)
        assert "MemoryError" not in out and "too big" not in out, (how, out)


def test_lying_frame_of_honest_size_is_refused_without_allocating(backend, store_path):
    """Metadata and frame agree on 64 MiB for a block that stores 4 KiB of garbage: the
    allocation is bounded by what 4 KiB can honestly hold, and decoding fails cleanly."""
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"vec": VEC, "big": RAW}, compress=True, block_rows=4)
    meta = read_metadata(store_path)
    e = _entry(meta, "big")
    raw_size = 4096 * 32768 // 2  # 64 MiB, within the bound of a 4 KiB frame
    e["shape"] = [raw_size // 24, 3]
    e["compression"]["block_rows"] = raw_size // 24
    frame = _frame_claiming(raw_size // 24 * 24, b"\x07" * 4000)
    r = _records(e)[:1]
    r[0]["offset"] = _append_frame(store_path, e, frame)
    r[0]["size"], r[0]["codec"], r[0]["filter"], r[0]["crc32"] = len(frame), 1, 0, 0
    _set_records(e, r)
    write_metadata(store_path, meta)
    hows = ["load", "lazy", "getitem", "asarray"]
    outs = _outcomes(run_python(_CAPPED, store_path, backend, ",".join(hows), timeout=300), hows)
    for how, out in outs.items():
        assert out.startswith("CorruptStoreError"), (how, out)


# -- .npy headers and NPYT tails that lie ---------------------------------------------------


@pytest.fixture
def env_backend(backend, monkeypatch):
    monkeypatch.setenv("NUMPACK_BACKEND", backend)
    return backend


def _npyt_file(path) -> tuple[bytearray, int, str]:
    NPYT(path).save(np.arange(10, dtype="<i8"), capacity=16, skip_if_exists=False)
    raw = bytearray(path.read_bytes())
    hl = 10 + struct.unpack("<H", raw[8:10])[0]
    return raw, hl, raw[10:hl].decode("latin1")


def _with_shape(raw: bytearray, hl: int, header: str, shape: str) -> bytearray:
    i = header.index("'shape': (") + len("'shape': (")
    j = header.index(")", i)
    text = (header[:i] + shape + header[j:]).rstrip()
    assert len(text) <= hl - 11, "the lie must fit the header's room"
    out = bytearray(raw)
    out[10:hl] = (text.ljust(hl - 11) + "\n").encode("latin1")
    return out


def _with_tail(raw: bytearray, **words) -> bytearray:
    out = bytearray(raw)
    t = list(struct.unpack("<5Q", out[-40:]))
    for k, v in words.items():
        t[("start", "end", "ts", "offset", "magic").index(k)] = v
    out[-40:] = struct.pack("<5Q", *t)
    return out


def _npyt_lie(path, lie: str) -> bytes:
    raw, hl, header = _npyt_file(path)
    shape = {
        "capacity_more_than_file": f"{100:>21},",
        "capacity_less_than_file": f"{5:>21},",
        "capacity_2_40": f"{2**40:>21},",
        "capacity_2_64": f"{2**64:>21},",
        "capacity_2_70": f"{2**70:>21},",
        "row_dims_overflow_int64": f"{16:>21}, 4611686018427387904",
        "row_dims_wrap_to_zero": f"{16:>21}, 4294967296, 4294967296",
        "row_dims_wrap_negative": f"{16:>21}, 3074457345618258603, 3",
        "row_dims_zero": f"{16:>21}, 0",
        "negative_capacity": f"{-16:>21},",
    }.get(lie)
    if shape is not None:
        return bytes(_with_shape(raw, hl, header, shape))
    if lie == "end_past_capacity":
        return bytes(_with_tail(raw, end=17))
    if lie == "end_2_63":
        return bytes(_with_tail(raw, end=2**63))
    if lie == "start_after_end":
        return bytes(_with_tail(raw, start=11))
    if lie == "offset_wrong":
        return bytes(_with_tail(raw, offset=12345))
    if lie == "offset_huge":
        return bytes(_with_tail(raw, offset=2**64 - 1))
    if lie == "no_magic":
        return bytes(_with_tail(raw, magic=0))
    if lie == "tail_torn":
        return bytes(raw[:-20])
    if lie == "rows_missing":
        return bytes(raw[: hl + 40] + raw[-40:])
    if lie == "header_length_huge_v1":
        return bytes(raw[:8] + struct.pack("<H", 65535) + raw[10:])
    if lie == "header_length_huge_v2":
        return bytes(raw[:6] + b"\x02\x00" + struct.pack("<I", 2**32 - 1) + raw[10:])
    if lie == "header_garbage":
        return bytes(raw[:12] + b"\xff" * 40 + raw[52:])
    if lie == "header_not_a_dict":
        return bytes(raw).replace(b"{", b"[", 1)
    if lie == "descr_object":
        return bytes(raw).replace(b"'<i8'", b"'|O' ", 1)
    if lie == "fortran_2d":
        r = _with_shape(raw, hl, header, f"{8:>21}, 2")
        return bytes(r).replace(b"False", b"True ", 1)
    if lie == "zeros":
        return bytes(len(raw))
    if lie == "magic_only":
        return b"\x93NUMPY"
    raise AssertionError(lie)


NPY_LIES = [
    "capacity_more_than_file", "capacity_less_than_file", "capacity_2_40", "capacity_2_64",
    "capacity_2_70", "row_dims_overflow_int64", "row_dims_wrap_to_zero",
    "row_dims_wrap_negative", "row_dims_zero", "negative_capacity", "end_past_capacity",
    "end_2_63", "start_after_end", "offset_wrong", "offset_huge", "no_magic", "tail_torn",
    "rows_missing", "header_length_huge_v1", "header_length_huge_v2", "header_garbage",
    "header_not_a_dict", "descr_object", "fortran_2d", "zeros", "magic_only",
]  # fmt: skip

_NPYT_OPEN = """
import sys
from numpack import NPYT, CorruptStoreError, NumPackError
path, mode = sys.argv[1:]
try:
    t = NPYT(path).load(mode)
    print("NO ERROR", t.size(), t.capacity(), t.data().sum(), t.read(100).sum())
except CorruptStoreError as e:
    print("CorruptStoreError", e)
except NumPackError as e:
    print("NumPackError", type(e).__name__, e)
except BaseException as e:
    print("OTHER", type(e).__name__, e)
"""


# Readers wait up to 2 s for a resize in progress (NPYT.md 5) before they give up on a tail
# that does not fit; the writer, holding the lock, refuses at once. Both are checked for the
# header lies; the reader only for a sample of the tail lies, to keep the run short.
_READER_TOO = {"capacity_2_70", "row_dims_wrap_negative", "end_past_capacity", "offset_huge",
               "rows_missing", "header_garbage", "descr_object"}  # fmt: skip


@pytest.mark.parametrize("lie", NPY_LIES)
def test_lying_npy_header_or_tail(env_backend, tmp_path, lie):
    path = tmp_path / "t.npy"
    bad = _npyt_lie(path, lie)
    path.write_bytes(bad)
    for mode in ("r+", "r") if lie in _READER_TOO else ("r+",):
        out = _outcome(run_python(_NPYT_OPEN, path, mode, timeout=60))
        assert out.startswith("CorruptStoreError"), (mode, out)
        assert path.read_bytes() == bad, "a refused file was changed"


def test_npyt_longer_than_its_tail_reads_correctly(env_backend, tmp_path):
    """Bytes after the tail (a writer killed while growing the file): readers ignore them,
    the next writer truncates them (NPYT.md 5)."""
    path = tmp_path / "t.npy"
    raw, _, _ = _npyt_file(path)
    path.write_bytes(bytes(raw) + b"\xab" * 1000)
    r = NPYT(path).load("r")
    assert_same_array(r.data(), np.arange(10, dtype="<i8"))
    r.close()
    w = NPYT(path).load("r+")
    assert os.path.getsize(path) == len(raw)
    w.append(np.array([10, 11], "<i8"))
    assert_same_array(w.data(), np.arange(12, dtype="<i8"))
    w.close()
    assert_same_array(np.load(path)[:12], np.arange(12, dtype="<i8"))


# -- names ----------------------------------------------------------------------------------

# test_errors.py stores ../, /, \, NUL, 10,000 characters, Unicode and case variants; these are
# the ones it misses: normalisation forms, long non-ASCII names, names that look like another
# name's data file, and 32-character prefixes that only the hash tells apart.
NAMES = [
    unicodedata.normalize("NFC", "café"),
    unicodedata.normalize("NFD", "café"),
    "\U0001f389" * 10_000,  # 40,000 bytes of UTF-8
    "a" * 32 + "x",
    "a" * 32 + "y",
    "A" * 32 + "x",
    "raw-" + "0" * 16,
    "raw-0000000000000000.0.npkd",
    "x\u202eevil",  # right-to-left override
    "\ufeffbom",
    "tab\tnew\nline\rcr",
    "%2e%2e%2f",
    "~",
    "$HOME",
    "*",
    "?",
    '<>:"|',
    "\x7f\x01\x1b[31m",
    "name.",
    "name ",
]


def test_more_odd_names_round_trip_on_both_backends(backend, tmp_path):
    path = tmp_path / "store"
    arrays = {n: np.full(2, i, np.int16) for i, n in enumerate(NAMES)}
    assert len(arrays) == len(NAMES)
    with NumPack(path, backend=backend) as npk:
        npk.save(arrays)
        npk.save({NAMES[0]: arrays[NAMES[0]]}, compress=True)
    other = "python" if backend == "rust" else "rust"
    for b in (backend, other):
        with NumPack(path, backend=b) as npk:
            assert npk.get_member_list() == NAMES
            for n, a in arrays.items():
                assert_same_array(npk.load(n), a)
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    files = [p.name for p in path.iterdir() if p.name.endswith(".npkd")]
    assert len(files) == len(NAMES)
    assert len({f.lower() for f in files}) == len(files)
    assert all(len(f) < 100 and f.isascii() and "/" not in f for f in files)


def test_hostile_name_in_metadata_stays_inside(backend, store_path):
    """A name from metadata (not from the API) never reaches a path: only `file` does, and it
    must be exactly what the name derives."""
    meta = _store(store_path, backend)
    e = _entry(meta, "vec")
    e["name"] = "../../../../tmp/evil\x00"
    write_metadata(store_path, meta)
    with pytest.raises(CorruptStoreError):
        with NumPack(store_path, backend=backend) as npk:
            npk.load("../../../../tmp/evil\x00")
            npk.append({"../../../../tmp/evil\x00": VEC})
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["store"]


# -- a compressed block whose CRC was fixed up to match wrong contents ----------------------


def test_block_with_matching_crc_but_wrong_length_contents(backend, store_path):
    """A block rewritten, stored raw, with one row too few and a CRC of those rows: the size
    check catches it, and only reads of that block fail."""
    meta = _store(store_path, backend)
    e = _entry(meta, "comp")
    r = _records(e)
    short = COMP[14:20].tobytes()  # block 2 should hold rows 14..20 (7 rows); give it 6
    r[2]["offset"] = _append_frame(store_path, e, short)
    r[2]["size"], r[2]["codec"], r[2]["filter"] = len(short), 0, 0
    r[2]["crc32"] = zlib.crc32(short)
    _set_records(e, r)
    write_metadata(store_path, meta)
    with NumPack(store_path, backend=backend) as npk:
        with pytest.raises(CorruptStoreError):
            npk.getitem("comp", [15])
        with pytest.raises(CorruptStoreError):
            npk.load("comp")
        assert_same_array(npk.getitem("comp", [0, 39]), COMP[[0, 39]])
        assert_same_array(npk.load("comp", lazy=True)[21:], COMP[21:])
