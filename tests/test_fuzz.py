"""Fuzzing of the store's readers with hypothesis: damaged and lying metadata, data files and
undo journals, opened and used through both backends in this process.

Every outcome must be success with the right numbers or a NumPackError (CorruptStoreError
for corrupt input): never another exception type (ValueError, MemoryError, OverflowError,
pyo3's PanicException...), never a crash. Inputs:

- metadata.npkm bytes with bit flips, byte changes, truncations, splices, zero fill;
- well-formed MessagePack of the right shape with wrong values: huge, zero and negative
  shapes, wrong types, dropped-row lists out of order or out of range, block indexes pointing
  outside the file or overlapping, lying block_rows, levels and codecs, unknown dtypes, file
  names that are not the derived ones, missing keys, duplicated or reordered entries;
- data files cut short, extended, or with flipped bytes;
- undo journals with lying row sizes and indexes.

"Right numbers": a raw array that loads must equal what its data file holds under the
metadata (an independent NumPy reading of the file); a compressed array whose entry and file
were not touched must equal the saved array; when both backends load an array they must
agree. Counts of executions and outcomes: `NUMPACK_TEST_STATS=1` prints them at exit, and
`--hypothesis-show-statistics` shows them per test. HYPOTHESIS_PROFILE=dev runs ten times
as many examples.
"""

from __future__ import annotations

import atexit
import collections
import copy
import math
import os
import shutil
import struct
import sys
import tempfile

import hypothesis.strategies as st
import msgpack
import numpy as np
import pytest
from helpers import BACKENDS, file_stem, fold, make_array, rust_import_error
from hypothesis import HealthCheck, event, given, settings

from numpack import NumPack, NumPackError
from numpack._errors import CorruptStoreError

DEV = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "dev"


def fuzz_settings(n: int):
    return settings(
        max_examples=n * 10 if DEV else n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=False,
    )


STATS: collections.Counter = collections.Counter()
if os.environ.get("NUMPACK_TEST_STATS"):
    atexit.register(
        lambda: print(
            "test_fuzz executions: "
            + ", ".join(f"{k}={v}" for k, v in sorted(STATS.items(), key=str)),
            file=sys.stderr,
        )
    )


def _available() -> list[str]:
    backends = [b for b in BACKENDS if b != "rust" or rust_import_error() is None]
    if "rust" not in backends and os.environ.get("NUMPACK_REQUIRE_RUST", "") not in (
        "", "0", "false", "no",
    ):  # fmt: skip
        pytest.fail("NUMPACK_REQUIRE_RUST=1 but numpack._core does not import", pytrace=False)
    return backends


# -- the store every example starts from -----------------------------------------------------

ARRAYS = {
    "raw": (make_array("int32", (6, 3), 1), None, [1, 4]),
    "zst": (make_array("float64", (7, 2), 2), 3, [0]),
    "cpx": (make_array("complex128", (5,), 3), 2, []),
    "ramp": (np.arange(40, dtype=np.int64).reshape(10, 4), 4, [9]),
    # One block: any block_rows >= 6 keeps its index consistent, so a lying one reaches the
    # readers and writers (and compaction, which has a dropped row to reclaim).
    "one": (make_array("float32", (6, 2), 4), 8, [2]),
    "e": (np.zeros((0, 2), np.uint8), None, []),
}
EXPECTED = {name: np.delete(arr, dropped, axis=0) for name, (arr, _, dropped) in ARRAYS.items()}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("fuzz") / "template")
    with NumPack(path, backend="python") as npk:
        for name, (arr, block_rows, dropped) in ARRAYS.items():
            if block_rows is None:
                npk.save({name: arr})
            else:
                npk.save({name: arr}, compress=True, block_rows=block_rows)
            if dropped:
                npk.drop(name, dropped)
    fold(path)  # the snapshot holds it all: the tests mutate metadata.npkm
    return path


def _meta_path(d: str) -> str:
    return os.path.join(d, "metadata.npkm")


def _read_doc(d: str):
    with open(_meta_path(d), "rb") as f:
        return msgpack.unpackb(f.read(), raw=False)


class Workdir:
    """A fresh copy of the template for one backend."""

    def __init__(self, template: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="npk-fuzz-")
        self.path = os.path.join(self.tmp, "store")
        shutil.copytree(template, self.path)

    def write(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.path, name), "wb") as f:
            f.write(data)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- what a user does with a store, every outcome checked ------------------------------------


class Unexpected(AssertionError):
    pass


def _guard(results: dict, key: str, fn, counter: collections.Counter):
    """Run `fn`; a NumPackError is an allowed outcome, anything else fails the example."""
    try:
        value = fn()
    except NumPackError as e:
        counter[type(e).__name__] += 1
        results[key] = e
        return e
    except BaseException as e:  # noqa: BLE001 - PanicException derives from BaseException
        raise Unexpected(f"{key}: {type(e).__module__}.{type(e).__name__}: {e}") from e
    counter["ok"] += 1
    results[key] = value
    return value


def _reference(d: str, doc, name: str):
    """The logical rows of raw array `name` read straight from its file with NumPy, under the
    (maybe mutated) metadata `doc`; None when that cannot be told."""
    try:
        (entry,) = [a for a in doc["arrays"] if a.get("name") == name]
        if entry.get("compression") is not None:
            return None
        dt = np.dtype(entry["dtype"]).newbyteorder("<")
        shape = tuple(entry["shape"])
        deleted = np.frombuffer(entry["deleted"], "<u8")
        path = os.path.join(d, entry["file"])
        need = math.prod(shape) * dt.itemsize
    except Exception:  # noqa: BLE001 - a shape the backends refused anyway
        return None
    if need and (not os.path.exists(path) or os.path.getsize(path) < need):
        return "short"  # a backend that loads this array read past the end of its file
    count = math.prod(shape)
    data = np.fromfile(path, dtype=dt, count=count) if count else np.zeros(0, dt)
    data = data.reshape(shape)
    return np.delete(data, deleted.astype(np.int64), axis=0).astype(dt.newbyteorder("="))


def use_store(
    d: str, backend: str, counter: collections.Counter, doc=None, writes: bool = True
) -> dict:
    """Opens the store at `d` with `backend` and calls every reading API on every array, then
    (with `writes`) every writing one. Returns {call: result or NumPackError}."""
    results: dict = {}
    model: dict = {}
    npk = _guard(results, "open", lambda: NumPack(d, backend=backend), counter)
    if isinstance(npk, NumPackError):
        return results
    try:
        names = _guard(results, "names", npk.get_member_list, counter)
        _guard(results, "shapes", npk.get_shape, counter)
        _guard(results, "metadata", npk.get_metadata, counter)
        _guard(results, "repr", lambda: (repr(npk), npk._repr_html_()), counter)
        if isinstance(names, NumPackError):
            return results
        for name in names:
            shape = _guard(results, f"shape {name}", lambda n=name: npk.get_shape(n), counter)
            arr = _guard(results, f"load {name}", lambda n=name: npk.load(n), counter)
            if isinstance(arr, np.ndarray):
                if not isinstance(shape, NumPackError) and arr.shape != tuple(shape):
                    raise Unexpected(f"{name}: loaded shape {arr.shape}, get_shape {shape}")
                if doc is not None:
                    ref = _reference(d, doc, name)
                    if isinstance(ref, str):
                        raise Unexpected(f"{name}: loaded though its data file is {ref}")
                    if ref is not None:
                        np.testing.assert_array_equal(arr, ref, err_msg=f"{backend} {name}")
                        if ref.dtype != arr.dtype or ref.shape != arr.shape:
                            raise Unexpected(f"{name}: {arr.dtype}{arr.shape} != reference")

            def lazy_reads(name=name):
                lazy = npk.load(name, lazy=True)
                out = [np.asarray(lazy), lazy[::2], repr(lazy), lazy._repr_html_()]
                if len(lazy):
                    out += [lazy[-1], lazy[[0, -1, 0]], npk.getitem(name, [-1, 0])]
                    out += [lazy[np.arange(len(lazy)) % 2 == 0]]
                return out

            lazy = _guard(results, f"lazy {name}", lazy_reads, counter)
            if isinstance(arr, np.ndarray) and isinstance(lazy, list):
                np.testing.assert_array_equal(lazy[0], arr)
                np.testing.assert_array_equal(lazy[1], arr[::2])
            _guard(
                results,
                f"stream {name}",
                lambda name=name: [b.copy() for b in npk.stream_load(name, buffer_size=3)],
                counter,
            )
        if not writes:
            return results
        # What every array must hold after the writes below: a call that succeeded changed
        # it, one that failed changed nothing (FORMAT.md 6).
        for name in names:
            arr = results.get(f"load {name}")
            if not isinstance(arr, np.ndarray):
                continue
            model[name] = arr

            def write_calls(name=name, arr=arr):
                if len(arr):
                    npk.replace({name: arr[:1]}, [0])
                npk.append({name: np.zeros((2,) + arr.shape[1:], arr.dtype)})
                npk.drop(name, [-1])
                return npk.load(name)

            got = _guard(results, f"writes {name}", write_calls, counter)
            if isinstance(got, np.ndarray):
                model[name] = np.concatenate([arr, np.zeros((1,) + arr.shape[1:], arr.dtype)])
                if not _same(got, model[name]):
                    raise Unexpected(f"{name}: after replace, append, drop: {got}")
            else:
                model.pop(name)  # the calls before the failing one took effect
        _guard(results, "compact", npk.compact, counter)
        if not isinstance(
            _guard(results, "save", lambda: npk.save({"new": np.arange(3)}), counter), NumPackError
        ):
            model["new"] = np.arange(3)
        first = names[:1]
        if not isinstance(_guard(results, "drop", lambda: npk.drop(first), counter), NumPackError):
            for n in first:
                model.pop(n, None)
    finally:
        npk.close()
    # Nothing a call reported as done is lost: a new NumPack on the directory reads it back.
    if model:
        with NumPack(d, backend=backend) as again:
            for name, want in model.items():
                try:
                    got = again.load(name)
                except NumPackError as e:
                    msg = f"{name} was written, then lost: {type(e).__name__}: {e}"
                    raise Unexpected(msg) from e
                if not _same(got, want):
                    raise Unexpected(f"{name} was written as {want}, reads back as {got}")
    return results


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return True  # only arrays are compared


def run_everywhere(template: str, mutate, label: str, writes: bool = True) -> None:
    """Applies `mutate(workdir)` to a fresh copy of the template for each backend, uses the
    store, and checks the outcomes (see the module docstring)."""
    outcomes = {}
    for backend in _available():
        w = Workdir(template)
        try:
            touched = mutate(w)
            try:
                doc = _read_doc(w.path)
            except Exception:  # noqa: BLE001 - bytes no reference reader parses
                doc = None
            counter: collections.Counter = collections.Counter()
            results = use_store(w.path, backend, counter, doc, writes)
            STATS[label, backend, "executions"] += 1
            for k, v in counter.items():
                STATS[label, backend, k] += v
            opened = not isinstance(results.get("open"), NumPackError)
            event(f"{backend}: {'opened' if opened else 'refused to open'}")
            # Arrays whose entry and data file were left alone hold the saved numbers.
            for name, expected in EXPECTED.items():
                got = results.get(f"load {name}")
                if isinstance(got, np.ndarray) and name not in touched(doc):
                    assert _same(got, expected), (backend, name, got, expected)
            outcomes[backend] = results
        finally:
            w.close()
    if len(outcomes) == 2:
        a, b = outcomes["rust"], outcomes["python"]
        for key in a.keys() & b.keys():
            if key.startswith("load ") and not key.startswith("load new"):
                assert _same(a[key], b[key]), (key, a[key], b[key])
            if isinstance(a[key], NumPackError) != isinstance(b[key], NumPackError):
                event(f"backends disagree on {key.split(' ')[0]}")
                STATS[label, "disagreements", key.split(" ")[0]] += 1


def _untouched_entries(original_doc):
    """`touched(doc)` for mutations of the metadata only: the names whose entries differ."""

    def touched(doc):
        if doc is None:
            return set(EXPECTED)
        try:
            now = {a["name"]: a for a in doc["arrays"]}
            if doc.get("format") != "numpack" or doc.get("version") != 1:
                return set(EXPECTED)
        except Exception:  # noqa: BLE001
            return set(EXPECTED)
        before = {a["name"]: a for a in original_doc["arrays"]}
        return {
            n
            for n in EXPECTED
            if n not in now
            or {k: v for k, v in now[n].items() if k != "modified_us"}
            != {k: v for k, v in before[n].items() if k != "modified_us"}
        }

    return touched


# -- mutations of bytes ----------------------------------------------------------------------

byte_op = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 16)),
    st.tuples(st.just("zero"), st.integers(0, 2**16), st.integers(1, 64)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=32)),
)


def apply_bytes(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        n = len(b)
        kind = op[0]
        if kind == "flip" and n:
            b[op[1] % n] ^= 1 << op[2]
        elif kind == "set" and n:
            b[op[1] % n] = op[2]
        elif kind == "truncate":
            del b[op[1] % (n + 1) :]
        elif kind == "insert":
            at = op[1] % (n + 1)
            b[at:at] = op[2]
        elif kind == "delete" and n:
            at = op[1] % n
            del b[at : at + op[2]]
        elif kind == "zero" and n:
            at = op[1] % n
            b[at : at + op[2]] = bytes(len(b[at : at + op[2]]))
        elif kind == "append":
            b += op[1]
    return bytes(b)


byte_ops = st.lists(byte_op, min_size=1, max_size=5)


@fuzz_settings(120)
@given(ops=byte_ops)
def test_damaged_metadata_bytes(template, ops):
    original = _read_doc(template)

    def mutate(w):
        with open(_meta_path(w.path), "rb") as f:
            w.write("metadata.npkm", apply_bytes(f.read(), ops))
        return _untouched_entries(original)

    run_everywhere(template, mutate, "metadata bytes")


# -- well-formed MessagePack with wrong values -----------------------------------------------

EDGE = [
    0, 1, 2, 3, 7, 8, 2**20, 2**31, 2**32, 2**40, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
    -1, -2, -(2**63),
]  # fmt: skip
edge_ints = st.one_of(st.sampled_from(EDGE), st.integers(-(2**63), 2**64 - 1), st.integers(0, 64))
u64s = st.one_of(st.sampled_from([e for e in EDGE if e >= 0]), st.integers(0, 2**64 - 1))
leaf = st.one_of(
    edge_ints,
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=48),
)
evil = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _record(offset, size, crc, codec, filt) -> bytes:
    return struct.pack("<QQIBBH", offset, size, crc, codec, filt, 0)


def _words(values) -> bytes:
    return b"".join(struct.pack("<Q", v) for v in values)


ENTRY = st.sampled_from(sorted(ARRAYS))
field_lie = st.one_of(
    st.tuples(st.just("shape"), st.lists(edge_ints, max_size=4)),
    st.tuples(st.just("shape"), st.lists(st.integers(0, 12), min_size=1, max_size=3)),
    st.tuples(st.just("deleted"), st.lists(u64s, max_size=5).map(_words)),
    st.tuples(st.just("deleted"), st.lists(st.integers(0, 11), max_size=5).map(_words)),
    st.tuples(st.just("deleted"), st.binary(max_size=20)),
    st.tuples(st.just("c.block_rows"), edge_ints),
    st.tuples(st.just("c.block_rows"), st.integers(1, 12)),
    st.tuples(st.just("c.block_rows"), st.integers(6, 2**64 - 1)),
    st.tuples(
        st.just("c.blocks"),
        st.lists(
            st.builds(
                _record, u64s, u64s, st.integers(0, 2**32 - 1), st.integers(0, 2), st.integers(0, 5)
            ),
            max_size=5,
        ).map(b"".join),
    ),
    st.tuples(st.just("c.level"), edge_ints),
    st.tuples(st.just("c.codec"), st.sampled_from(["zstd", "lz4", "", 3])),
    st.tuples(st.just("compression"), evil),
    st.tuples(
        st.just("dtype"),
        st.sampled_from(["<f8", "<i4", "|u1", "<c16", "|b1", ">f8", "<f16", "O", "<U3", 5]),
    ),
    st.tuples(st.just("file"), st.sampled_from(["../x.0.npkd", "", "a-0.0.npkd", "/etc/passwd"])),
    st.tuples(st.just("name"), st.sampled_from(["", "raw", "zst", "x" * 300, "a/b", 7])),
    st.tuples(st.just("modified_us"), edge_ints),
    st.tuples(st.just("<any>"), evil),
)


ENTRY_KEYS = ("name", "file", "dtype", "shape", "deleted", "modified_us", "compression")
TOP_KEYS = ("format", "version", "next_file_id", "arrays")


@st.composite
def block_lie(draw):
    """A record of the block index of a compressed array changed in one field."""
    name = draw(st.sampled_from([n for n, v in ARRAYS.items() if v[1] is not None]))
    field = draw(st.sampled_from(["offset", "size", "crc", "codec", "filter", "swap"]))
    return ("block", name, draw(st.integers(0, 10)), field, draw(u64s))


meta_op = st.one_of(
    st.tuples(st.just("field"), ENTRY, field_lie),
    block_lie(),
    st.tuples(st.just("del key"), ENTRY, st.sampled_from(sorted(ENTRY_KEYS))),
    st.tuples(st.just("top"), st.sampled_from(TOP_KEYS), evil),
    st.tuples(st.just("top"), st.just("version"), st.sampled_from([0, 1, 2, -1, 2**64 - 1])),
    st.tuples(st.just("del top"), st.sampled_from(TOP_KEYS)),
    st.tuples(st.just("swap entries"), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.just("dup entry"), st.integers(0, 4)),
    st.tuples(st.just("drop entry"), st.integers(0, 4)),
    st.tuples(st.just("swap deleted"), ENTRY),
    st.tuples(st.just("root"), evil),
)


# Field of a block record: its position in the struct and its mask.
RECORD_FIELDS = {
    "offset": (0, 2**64 - 1),
    "size": (1, 2**64 - 1),
    "crc": (2, 2**32 - 1),
    "codec": (3, 255),
    "filter": (4, 255),
}


def apply_meta(doc, op):
    doc = copy.deepcopy(doc)
    arrays = doc["arrays"]
    by_name = {a["name"]: a for a in arrays}
    kind = op[0]
    if kind == "field":
        _, name, (key, value) = op
        entry = by_name[name]
        if key == "<any>":
            key = sorted(entry)[len(str(value)) % len(entry)]
        if key.startswith("c."):
            if isinstance(entry.get("compression"), dict):
                entry["compression"][key[2:]] = value
        else:
            entry[key] = value
    elif kind == "block":
        _, name, k, field, value = op
        blob = bytearray(by_name[name]["compression"]["blocks"])
        n = len(blob) // 24
        k %= n
        rec = list(struct.unpack_from("<QQIBBH", blob, 24 * k))
        if field == "swap":
            j = value % n
            a, b = bytes(blob[24 * k : 24 * k + 24]), bytes(blob[24 * j : 24 * j + 24])
            blob[24 * k : 24 * k + 24], blob[24 * j : 24 * j + 24] = b, a
        else:
            i, mask = RECORD_FIELDS[field]
            rec[i] = value & mask if value > 8 else (rec[i] + value) & mask
            struct.pack_into("<QQIBBH", blob, 24 * k, *rec)
        by_name[name]["compression"]["blocks"] = bytes(blob)
    elif kind == "del key":
        by_name[op[1]].pop(op[2], None)
    elif kind == "top":
        doc[op[1]] = op[2]
    elif kind == "del top":
        doc.pop(op[1], None)
    elif kind == "swap entries":
        i, j = op[1] % len(arrays), op[2] % len(arrays)
        arrays[i], arrays[j] = arrays[j], arrays[i]
    elif kind == "dup entry":
        arrays.append(copy.deepcopy(arrays[op[1] % len(arrays)]))
    elif kind == "drop entry":
        arrays.pop(op[1] % len(arrays))
    elif kind == "swap deleted":
        raw = by_name[op[1]]["deleted"]
        words = [raw[i : i + 8] for i in range(0, len(raw), 8)]
        by_name[op[1]]["deleted"] = b"".join(reversed(words)) + (words[0] if words else b"")
    elif kind == "root":
        return op[1]
    return doc


@fuzz_settings(250)
@given(ops=st.lists(meta_op, min_size=1, max_size=3))
def test_lying_metadata_values(template, ops):
    original = _read_doc(template)

    def mutate(w):
        doc = original
        for op in ops:
            if not isinstance(doc, dict) or not isinstance(doc.get("arrays"), list):
                break
            try:
                doc = apply_meta(doc, op)
            except (KeyError, TypeError, ZeroDivisionError, AttributeError):
                continue  # an earlier op removed what this one changes
        w.write("metadata.npkm", msgpack.packb(doc, use_bin_type=True))
        return _untouched_entries(original)

    run_everywhere(template, mutate, "metadata values")


# -- data files ------------------------------------------------------------------------------

data_op = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("bytes"), byte_ops),
    st.tuples(st.just("remove")),
)


@fuzz_settings(100)
@given(name=ENTRY, op=data_op)
def test_damaged_data_files(template, name, op):
    def mutate(w):
        (entry,) = [a for a in _read_doc(w.path)["arrays"] if a["name"] == name]
        path = os.path.join(w.path, entry["file"])
        with open(path, "rb") as f:
            data = f.read()
        if op[0] == "truncate":
            data = data[: op[1] % (len(data) + 1)]
        elif op[0] == "extend":
            data = data + op[1]
        elif op[0] == "bytes":
            data = apply_bytes(data, op[1])
        else:
            os.unlink(path)
            return lambda doc: {name}
        with open(path, "wb") as f:
            f.write(data)
        # A raw array reads what its file holds (checked against the reference reader); a
        # compressed one either fails its checks or holds the saved numbers, whatever
        # bytes past its blocks changed.
        return lambda doc: {name} if entry["compression"] is None else set()

    run_everywhere(template, mutate, "data files")


# -- undo journals ---------------------------------------------------------------------------


def _journal(file: str, row_bytes: int, rows, old: bytes) -> bytes:
    return (
        b"NPKUNDO1"
        + struct.pack("<Q", len(file.encode()))
        + file.encode()
        + struct.pack("<QQ", row_bytes % 2**64, len(rows))
        + _words(r % 2**64 for r in rows)
        + old
    )


@fuzz_settings(100)
@given(
    row_bytes=st.one_of(st.sampled_from([0, 12, 24]), u64s),
    rows=st.lists(st.one_of(st.integers(0, 8), u64s), max_size=4),
    old=st.binary(max_size=80),
    ops=st.none() | byte_ops,
)
def test_lying_undo_journal(template, row_bytes, rows, old, ops):
    file = [a for a in _read_doc(template)["arrays"] if a["name"] == "raw"][0]["file"]
    assert file.startswith(file_stem("raw"))
    journal = _journal(file, row_bytes, rows, old)
    if ops is not None:
        journal = apply_bytes(journal, ops)

    def mutate(w):
        w.write("numpack.undo", journal)
        # A journal that is undone writes its (here: made up) old rows into the raw array.
        return lambda doc: {"raw"}

    run_everywhere(template, mutate, "undo journal", writes=False)


def test_corrupt_input_is_corrupt_store_error(template):
    """The class matters, not only the base: truncated metadata is CorruptStoreError."""
    for backend in _available():
        w = Workdir(template)
        try:
            with open(_meta_path(w.path), "rb") as f:
                w.write("metadata.npkm", f.read()[:10])
            with pytest.raises(CorruptStoreError):
                NumPack(w.path, backend=backend).get_member_list()
        finally:
            w.close()


# -- the bugs the fuzzing found, kept as plain tests -----------------------------------------


@pytest.mark.parametrize("shape", [[0, 2**40, 2**40], [2**40, 0, 2**40]])
def test_an_empty_shape_with_overflowing_rows_is_corrupt(template, shape):
    """shape[0] = 0 made the product 0, so a shape whose rows NumPy cannot hold was accepted
    and `load` raised a plain ValueError ("array is too big"); the Rust core's row size
    overflowed (a panic in debug builds)."""
    for backend in _available():
        w = Workdir(template)
        try:
            doc = _read_doc(w.path)
            (entry,) = [a for a in doc["arrays"] if a["name"] == "e"]
            entry["shape"] = shape
            w.write("metadata.npkm", msgpack.packb(doc, use_bin_type=True))
            with pytest.raises(CorruptStoreError):
                with NumPack(w.path, backend=backend) as npk:
                    npk.load("e")
        finally:
            w.close()


@pytest.mark.parametrize("block_rows", [2**58, 2**60, 2**62, 2**63 - 1])
def test_a_huge_block_rows_is_read_and_written(template, block_rows):
    """block_rows * row_bytes wrapped to 0 in the Rust core: append, replace and compact
    raised pyo3's PanicException ("chunk_size must not be zero"), and compact with
    block_rows = 2**58 (x 64 wraps to 0) looped forever."""
    for backend in _available():
        w = Workdir(template)
        try:
            doc = _read_doc(w.path)
            (entry,) = [a for a in doc["arrays"] if a["name"] == "one"]
            entry["compression"]["block_rows"] = block_rows
            w.write("metadata.npkm", msgpack.packb(doc, use_bin_type=True))
            want = EXPECTED["one"].copy()
            with NumPack(w.path, backend=backend) as npk:
                npk.replace({"one": want[:1] + 1}, [0])
                want[0] += 1
                npk.append({"one": want[:2]})
                want = np.concatenate([want, want[:2]])
                npk.compact()
                np.testing.assert_array_equal(npk.load("one"), want)
        finally:
            w.close()


@pytest.mark.parametrize("block_rows", [0, -1, 2**63, 2**64, 2**70])
def test_save_refuses_a_block_rows_readers_would_refuse(backend, tmp_path, block_rows):
    """block_rows >= 2**64 raised OverflowError from deep inside either backend; 2**63 to
    2**64 - 1 made a store its own readers then refused."""
    from numpack._errors import InvalidArgumentError

    with NumPack(tmp_path / "s", backend=backend) as npk:
        with pytest.raises(InvalidArgumentError):
            npk.save({"a": np.arange(4)}, compress=True, block_rows=block_rows)
        assert npk.get_member_list() == []


def test_a_lying_next_file_id_loses_nothing(template):
    """With next_file_id below the ids the entries use, the Rust core created a data file
    under a live one's name: it deleted the live file, wrote the new one, then deleted that
    too when it retired the old entry; both arrays were lost."""
    for backend in _available():
        for next_id in (0, 1, 2):
            w = Workdir(template)
            try:
                doc = _read_doc(w.path)
                doc["next_file_id"] = next_id
                w.write("metadata.npkm", msgpack.packb(doc, use_bin_type=True))
                with NumPack(w.path, backend=backend) as npk:
                    npk.compact()
                    npk.save({"cpx": EXPECTED["cpx"][::-1].copy(), "x": np.arange(3)})
                with NumPack(w.path, backend=backend) as npk:
                    for name, want in EXPECTED.items():
                        if name == "cpx":
                            want = want[::-1]
                        np.testing.assert_array_equal(npk.load(name), want)
                    np.testing.assert_array_equal(npk.load("x"), np.arange(3))
            finally:
                w.close()


@pytest.mark.parametrize("next_id", [2**63, 2**64 - 1])
def test_an_overflowing_next_file_id_is_corrupt(template, next_id):
    for backend in _available():
        w = Workdir(template)
        try:
            doc = _read_doc(w.path)
            doc["next_file_id"] = next_id
            w.write("metadata.npkm", msgpack.packb(doc, use_bin_type=True))
            with pytest.raises(CorruptStoreError):
                NumPack(w.path, backend=backend).get_member_list()
        finally:
            w.close()


def test_the_last_file_id_is_refused_not_overflowed(template):
    """next_file_id = 2**63 - 1 is valid, but using it would commit 2**63, which readers
    refuse: the writer raises CorruptStoreError and changes nothing."""
    for backend in _available():
        w = Workdir(template)
        try:
            doc = _read_doc(w.path)
            doc["next_file_id"] = 2**63 - 1
            w.write("metadata.npkm", msgpack.packb(doc, use_bin_type=True))
            with NumPack(w.path, backend=backend) as npk:
                with pytest.raises(CorruptStoreError):
                    npk.save({"x": np.arange(3)})
                np.testing.assert_array_equal(npk.load("raw"), EXPECTED["raw"])
        finally:
            w.close()
