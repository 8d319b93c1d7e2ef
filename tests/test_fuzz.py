"""Fuzzing of the store's readers with hypothesis: damaged and lying metadata, data files and
undo journals, opened and used through both backends in this process.

Every call's outcome must be success with the right numbers or exactly CorruptStoreError
(README, "Bad bytes are an error"): another NumPackError (StoreIOError, InvalidArgumentError...)
fails the example as surely as a builtin (ValueError, MemoryError, OverflowError, pyo3's
PanicException...) or a crash. The one exception: with a data file removed by hand, a call
that opens it may also report the OS's ENOENT as StoreIOError. Inputs:

- metadata.npkm bytes with bit flips, byte changes, truncations, splices, zero fill;
- well-formed MessagePack of the right shape with wrong values: huge, zero and negative
  shapes, wrong types, dropped-row lists out of order or out of range, block indexes pointing
  outside the file or overlapping, lying block_rows, levels and codecs, unknown dtypes, file
  names that are not the derived ones, missing keys, duplicated or reordered entries;
- data files cut short, extended, or with flipped bytes;
- undo journals (version 1's numpack.undo) with lying row sizes and indexes, or sound.

"Right numbers": a raw array that loads must equal what its data file holds under the
metadata (an independent NumPy reading of the file); a compressed array whose entry and file
were not touched must equal the saved array; an undo journal does exactly what
`journal_model` (spec/FORMAT.md 9 read with neither backend) says: the files' bytes after
recovery, or CorruptStoreError with the journal left in place. Both backends must give the
same outcome of every call (the same error class, or equal values): a disagreement fails the
example. `test_the_checks_fail_when_a_promise_breaks` shows each check failing.

CI runs the "ci" profile, derandomised (the same examples each run); HYPOTHESIS_PROFILE=dev
runs ten times as many examples, randomised. Counts of executions and outcomes:
`NUMPACK_TEST_STATS=1` prints them at exit, and `--hypothesis-show-statistics` shows them per
test.
"""

from __future__ import annotations

import atexit
import collections
import copy
import errno
import math
import os
import re
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
from numpack._errors import CorruptStoreError, StoreIOError

DEV = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "dev"


def fuzz_settings(n: int):
    return settings(
        max_examples=n * 10 if DEV else n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=not DEV,  # CI: the same examples each run; dev: the long randomised run
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


def corrupt_only(e: NumPackError) -> bool:
    """What damaged input is promised to raise (README, "Bad bytes are an error"): exactly
    CorruptStoreError, not merely some NumPackError."""
    return isinstance(e, CorruptStoreError)


def corrupt_or_missing_file(e: NumPackError) -> bool:
    """With a data file removed by hand, also the OS's "no such file" for a call that opens it
    (a zero-row array's file holds no bytes a reader needs, so a missing one is not short)."""
    return corrupt_only(e) or (isinstance(e, StoreIOError) and e.errno == errno.ENOENT)


def _guard(results: dict, key: str, fn, counter: collections.Counter, allowed=corrupt_only):
    """Run `fn`; its value, or an error that `allowed(error)` accepts, is the outcome
    recorded; any other error (another NumPackError, a builtin, a panic) fails the example."""
    try:
        value = fn()
    except NumPackError as e:
        if not allowed(e):
            msg = f"{key}: {type(e).__name__} where {allowed.__name__} is promised: {e}"
            raise Unexpected(msg) from e
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
    d: str,
    backend: str,
    counter: collections.Counter,
    doc=None,
    writes: bool = True,
    allowed=corrupt_only,
) -> dict:
    """Opens the store at `d` with `backend` and calls every reading API on every array, then
    (with `writes`) every writing one. Returns {call: result or the error `allowed` let
    through}."""
    results: dict = {}
    model: dict = {}
    npk = _guard(results, "open", lambda: NumPack(d, backend=backend), counter, allowed)
    if isinstance(npk, NumPackError):
        return results
    try:
        names = _guard(results, "names", npk.get_member_list, counter, allowed)
        _guard(results, "shapes", npk.get_shape, counter, allowed)
        _guard(results, "metadata", npk.get_metadata, counter, allowed)
        _guard(results, "repr", lambda: (repr(npk), npk._repr_html_()), counter, allowed)
        if isinstance(names, NumPackError):
            return results
        for name in names:
            shape = _guard(
                results, f"shape {name}", lambda n=name: npk.get_shape(n), counter, allowed
            )
            arr = _guard(results, f"load {name}", lambda n=name: npk.load(n), counter, allowed)
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

            lazy = _guard(results, f"lazy {name}", lazy_reads, counter, allowed)
            if isinstance(arr, np.ndarray) and isinstance(lazy, list):
                np.testing.assert_array_equal(lazy[0], arr)
                np.testing.assert_array_equal(lazy[1], arr[::2])
            _guard(
                results,
                f"stream {name}",
                lambda name=name: [b.copy() for b in npk.stream_load(name, buffer_size=3)],
                counter,
                allowed,
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

            got = _guard(results, f"writes {name}", write_calls, counter, allowed)
            if isinstance(got, np.ndarray):
                model[name] = np.concatenate([arr, np.zeros((1,) + arr.shape[1:], arr.dtype)])
                if not _same(got, model[name]):
                    raise Unexpected(f"{name}: after replace, append, drop: {got}")
            else:
                model.pop(name)  # the calls before the failing one took effect
        _guard(results, "compact", npk.compact, counter, allowed)
        if not isinstance(
            _guard(results, "save", lambda: npk.save({"new": np.arange(3)}), counter, allowed),
            NumPackError,
        ):
            model["new"] = np.arange(3)
        first = names[:1]
        if not isinstance(
            _guard(results, "drop", lambda: npk.drop(first), counter, allowed), NumPackError
        ):
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
    """Two ndarrays of one dtype and shape with equal values (NaN equal to NaN). Anything
    else is not the same: a caller comparing an error or None with an array must fail."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def _disagreement(key: str, a, b) -> str | None:
    """Why outcomes `a` (rust) and `b` (python) of call `key` differ, or None: the same error
    class, or values that compare equal (arrays by `_same`; objects that hold a path or the
    backend's name, such as the NumPack, its repr and metadata, by success alone)."""
    a_err, b_err = isinstance(a, BaseException), isinstance(b, BaseException)
    if a_err or b_err:
        if type(a) is type(b):
            return None
        what = [
            f"{type(v).__name__}: {v}" if isinstance(v, BaseException) else "ok" for v in (a, b)
        ]
        return f"rust {what[0]}; python {what[1]}"
    kind = key.split(" ")[0]
    if kind in ("load", "writes"):
        return None if _same(a, b) else f"rust {a!r}; python {b!r}"
    if kind in ("lazy", "stream"):
        arrays = [[v for v in out if isinstance(v, np.ndarray)] for out in (a, b)]
        if len(a) != len(b) or len(arrays[0]) != len(arrays[1]):
            return f"rust {len(a)} results; python {len(b)}"
        for i, (x, y) in enumerate(zip(*arrays)):
            if not _same(x, y):
                return f"result {i}: rust {x!r}; python {y!r}"
        return None
    if kind in ("names", "shapes", "shape"):
        return None if a == b else f"rust {a!r}; python {b!r}"
    return None  # open, metadata, repr, compact, save, drop: both succeeded


def run_everywhere(
    template: str, mutate, label: str, writes: bool = True, allowed=corrupt_only, check=None
) -> None:
    """Applies `mutate(workdir)` to a fresh copy of the template for each backend, uses the
    store, and checks the outcomes (see the module docstring); `check(path, results)` adds
    the checks of one kind of damage. Both backends must give the same outcome of every call:
    a disagreement fails the example."""
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
            results = use_store(w.path, backend, counter, doc, writes, allowed)
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
            if check is not None:
                check(w.path, results)
            outcomes[backend] = results
        finally:
            w.close()
    if len(outcomes) == 2:
        a, b = outcomes["rust"], outcomes["python"]
        refused = [isinstance(o.get("open"), CorruptStoreError) for o in (a, b)]
        if refused[0] != refused[1]:
            # When damage is found is the backend's choice (FORMAT.md 2): python checks every
            # entry and data file as it reads the metadata, rust each array as it is used.
            # The backend that opened must still refuse the damage when it reaches it.
            opened = b if refused[0] else a
            if not any(isinstance(v, CorruptStoreError) for v in opened.values()):
                raise Unexpected("one backend refused to open; the other never saw the damage")
            return
        for key in [*a, *(k for k in b if k not in a)]:  # in call order: "open" first
            if key not in a or key not in b:
                where = "rust" if key in a else "python"
                raise Unexpected(f"backends disagree: only {where} got as far as {key!r}")
            why = _disagreement(key, a[key], b[key])
            if why is not None:
                raise Unexpected(f"backends disagree on {key!r}: {why}")


def _untouched_entries(original_doc):
    """`touched(doc)` for mutations of the metadata only: the names whose entries differ."""

    def top(doc) -> dict:
        return {k: v for k, v in doc.items() if k != "arrays"}

    def touched(doc):
        if doc is None:
            return set(EXPECTED)
        try:
            now = {a["name"]: a for a in doc["arrays"]}
            if top(doc) != top(original_doc):  # format, version, generation, next_file_id
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

    allowed = corrupt_or_missing_file if op[0] == "remove" else corrupt_only
    run_everywhere(template, mutate, "data files", allowed=allowed)


# -- undo journals ---------------------------------------------------------------------------


def _journal(sections) -> bytes:
    """A version 1 undo journal (spec/FORMAT.md 9) of `(file, row_bytes, rows, old)`s."""
    out = b"NPKUNDO1"
    for file, row_bytes, rows, old in sections:
        out += struct.pack("<Q", len(file.encode())) + file.encode()
        out += struct.pack("<QQ", row_bytes % 2**64, len(rows))
        out += _words(r % 2**64 for r in rows) + old
    return out


# A data file name (spec/FORMAT.md 3): a stem, then `file_id` in decimal.
DATA_FILE = re.compile(r"[a-z0-9_]{0,32}-[0-9a-f]{16}\.(0|[1-9][0-9]*)\.npkd")


def journal_model(journal: bytes, files: dict) -> dict | None:
    """What recovering `journal` does, read as spec/FORMAT.md 9 says with neither backend:
    {data file: its bytes after} for the files `files` ({name: bytes before}), or None when
    the journal is damaged (the store then refuses to open with CorruptStoreError): a wrong
    magic, a section cut short, a name that is not a data file's, or, in a file that exists,
    a row past its end. A section whose file does not exist is skipped; within a section the
    rows are put back last first, so that for a row listed twice the oldest contents win."""
    if journal[:8] != b"NPKUNDO1":
        return None
    at, sections = 8, []

    def take(n: int) -> bytes | None:
        nonlocal at
        if n > len(journal) - at:
            return None
        at += n
        return journal[at - n : at]

    def u64() -> int | None:
        b = take(8)
        return None if b is None else int.from_bytes(b, "little")

    while at < len(journal):
        n = u64()
        raw = None if n is None else take(n)
        try:
            file = None if raw is None else raw.decode("utf-8")
        except UnicodeDecodeError:
            file = None
        if file is None or not DATA_FILE.fullmatch(file):
            return None
        row_bytes, count = u64(), u64()
        if row_bytes is None or count is None:
            return None
        rows, old = take(8 * count), None
        if rows is not None:
            old = take(count * row_bytes)
        if old is None:
            return None
        sections.append((file, row_bytes, np.frombuffer(rows, "<u8").tolist(), old))
    out = {name: bytearray(data) for name, data in files.items()}
    for file, row_bytes, rows, old in sections:
        if file not in out or not rows or not row_bytes:
            continue
        buf = out[file]
        if (max(rows) + 1) * row_bytes > len(buf):
            return None
        for k in reversed(range(len(rows))):
            buf[rows[k] * row_bytes : (rows[k] + 1) * row_bytes] = old[
                k * row_bytes : (k + 1) * row_bytes
            ]
    return {name: bytes(data) for name, data in out.items()}


@st.composite
def journals(draw):
    """An undo journal for the raw array (72 bytes: 6 physical rows of 12), half of them
    sound (rows inside the file, old bytes of the right size, any row width), half lying
    about sizes and rows; sometimes with a section for a data file that does not exist;
    then maybe damaged."""
    if draw(st.booleans(), label="sound"):
        row_bytes = draw(st.sampled_from([12, 24, 8, 36, 72]), label="row_bytes")
        row = st.integers(0, 72 // row_bytes - 1)
        rows = draw(st.lists(row, min_size=1, max_size=4), label="rows")
        need = row_bytes * len(rows)
        old = draw(st.binary(min_size=need, max_size=need), label="old")
    else:
        row_bytes = draw(st.sampled_from([12, 0, 24]) | u64s, label="row_bytes")
        row = st.integers(0, 8) | u64s  # 6 and up are past the end for 12-byte rows
        rows = draw(st.lists(row, max_size=4), label="rows")
        old = draw(st.binary(max_size=80), label="old")
    sections = [("RAW", row_bytes, rows, old)]
    if draw(st.booleans(), label="a section for a missing file"):
        missing = ("gone-0123456789abcdef.7.npkd", 12, [0], b"x" * 12)
        sections.insert(draw(st.integers(0, 1)), missing)
    return sections, draw(st.none() | byte_ops, label="damage")


@fuzz_settings(100)
@given(case=journals())
def test_lying_undo_journal(template, case):
    """An undo journal beside the store (spec/FORMAT.md 9) is recovered by the first opening
    that can take the lock: exactly as `journal_model` says. A damaged one is CorruptStoreError
    at open and stays for a person to look at; a sound one writes its rows back and is
    deleted, and every array then reads what its file holds."""
    sections, ops = case
    doc = _read_doc(template)
    raw_file = [a for a in doc["arrays"] if a["name"] == "raw"][0]["file"]
    assert raw_file.startswith(file_stem("raw"))
    journal = _journal([(raw_file if f == "RAW" else f, *rest) for f, *rest in sections])
    if ops is not None:
        journal = apply_bytes(journal, ops)
    files = {}
    for a in doc["arrays"]:
        with open(os.path.join(template, a["file"]), "rb") as f:
            files[a["file"]] = f.read()
    after = journal_model(journal, files)
    by_file = {a["file"]: a for a in doc["arrays"]}
    event("sound journal" if after is not None else "damaged journal")
    if after is not None:
        changed = sorted(by_file[f]["name"] for f in files if after[f] != files[f])
        event(f"rows put back into: {changed}")

    def mutate(w):
        w.write("numpack.undo", journal)
        changed = {by_file[f]["name"] for f in files if after is None or after[f] != files[f]}
        return lambda doc: changed

    def check(path, results):
        opened = results["open"]
        undo = os.path.join(path, "numpack.undo")
        if after is None:
            assert isinstance(opened, CorruptStoreError), opened
            assert os.path.exists(undo)  # left for a person to look at
            return
        assert not isinstance(opened, BaseException), opened
        assert not os.path.exists(undo)
        for f, data in after.items():
            with open(os.path.join(path, f), "rb") as fh:
                assert fh.read() == data, f
        arr = np.frombuffer(after[raw_file], "<i4")[:18].reshape(6, 3)
        want = np.delete(arr, ARRAYS["raw"][2], axis=0)
        assert _same(results["load raw"], want), (results["load raw"], want)

    run_everywhere(template, mutate, "undo journal", writes=False, check=check)


def test_the_checks_fail_when_a_promise_breaks():
    """The fuzz tests' own checks, on outcomes made up to break each promise: an error other
    than the one promised, a non-array taken for an array, and any disagreement between the
    backends each fail (no outcome is accepted by default)."""
    counter: collections.Counter = collections.Counter()
    results: dict = {}

    def raises(e):
        def fn():
            raise e

        return fn

    corrupt = CorruptStoreError("bad bytes")
    assert _guard(results, "ok", lambda: 7, counter) == 7
    assert _guard(results, "corrupt", raises(corrupt), counter) is corrupt
    missing = StoreIOError(errno.ENOENT, "No such file or directory", "x.npkd")
    for e, allowed in [
        (StoreIOError(errno.EIO, "I/O error", "x"), corrupt_only),
        (missing, corrupt_only),  # only where a data file was removed by hand
        (StoreIOError(errno.EACCES, "Permission denied", "x"), corrupt_or_missing_file),
        (NumPackError("some error"), corrupt_only),
        (ValueError("not a NumPackError"), corrupt_only),
        (OverflowError(), corrupt_only),
        (MemoryError(), corrupt_only),
    ]:
        with pytest.raises(Unexpected):
            _guard(results, "call", raises(e), counter, allowed)
    assert _guard(results, "call", raises(missing), counter, corrupt_or_missing_file) is missing
    assert counter == {"ok": 1, "CorruptStoreError": 1, "StoreIOError": 1}

    a = np.array([1.0, np.nan])
    assert _same(a, a.copy())
    for other in (None, corrupt, [1.0, np.nan], a.astype(np.float32), a[:1], a[::-1], 3):
        assert not _same(a, other) and not _same(other, a), other

    assert _disagreement("load x", a, a.copy()) is None
    assert _disagreement("open", corrupt, CorruptStoreError("other words")) is None
    for key, x, y in [
        ("open", object(), corrupt),  # one backend opens, the other refuses
        ("open", corrupt, object()),
        ("load x", corrupt, StoreIOError(errno.EIO, "I/O error")),  # different classes
        ("load x", a, a[:1]),
        ("writes x", a, None),
        ("lazy x", [a, a, "repr"], [a, a[::-1], "repr"]),
        ("lazy x", [a, "repr"], [a, a, "repr"]),
        ("stream x", [a], [a, a]),
        ("names", ["a", "b"], ["b", "a"]),
        ("shape x", (2,), (3,)),
    ]:
        assert _disagreement(key, x, y) is not None, (key, x, y)


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
