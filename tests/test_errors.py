"""Errors (DESIGN.md section 4): the right class, also the builtin, and nothing changed on disk."""

from __future__ import annotations

import os
import re

import msgpack
import numpy as np
import pytest
from helpers import (
    assert_same_array,
    data_files,
    file_stem,
    read_metadata,
    run_python,
    snapshot,
    write_metadata,
)

from numpack import (
    ArrayNotFoundError,
    CorruptStoreError,
    DTypeError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPack,
    NumPackError,
    RowIndexError,
    ShapeMismatchError,
    StoreClosedError,
    StoreIOError,
    StoreLockedError,
)

A = np.arange(20, dtype=np.int64).reshape(5, 4)
F = np.linspace(0, 1, 15).reshape(5, 3)
V = np.arange(6, dtype=np.int32)


@pytest.fixture
def filled(store):
    store.save({"a": A, "f": F, "v": V})
    return store


def assert_fails(npk, exc, call, builtin=None):
    """`call()` raises `exc` (a NumPackError, and `builtin`) and leaves the files as they were."""
    before = snapshot(npk.path)
    with pytest.raises(exc) as ei:
        call()
    assert isinstance(ei.value, NumPackError)
    if builtin is not None:
        assert isinstance(ei.value, builtin)
    assert snapshot(npk.path) == before, "a failed call changed the store's files"
    return ei.value


def assert_intact(npk):
    assert npk.get_member_list() == ["a", "f", "v"]
    assert_same_array(npk.load("a"), A)
    assert_same_array(npk.load("f"), F)
    assert_same_array(npk.load("v"), V)


# -- the hierarchy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (ArrayNotFoundError, KeyError),
        (RowIndexError, IndexError),
        (ShapeMismatchError, ValueError),
        (DTypeError, ValueError),
        (InvalidArgumentError, ValueError),
        (InvalidTypeError, TypeError),
        (StoreClosedError, ValueError),
        (CorruptStoreError, OSError),
        (StoreLockedError, OSError),
        (StoreIOError, OSError),
    ],
)
def test_hierarchy(cls, builtin):
    assert issubclass(cls, NumPackError) and issubclass(cls, builtin)
    assert issubclass(NumPackError, Exception)


def test_array_not_found_message_is_not_quoted():
    assert str(ArrayNotFoundError("no array 'x'")) == "no array 'x'"


# -- missing arrays -------------------------------------------------------------------------

MISSING_CALLS = {
    "load": lambda s: s.load("missing"),
    "load_lazy": lambda s: s.load("missing", lazy=True),
    "getitem": lambda s: s.getitem("missing", [0]),
    "getitem_op": lambda s: s["missing"],
    "replace": lambda s: s.replace({"missing": np.zeros((1, 4), np.int64)}, [0]),
    "replace_second": lambda s: s.replace(
        {"a": np.zeros((1, 4), np.int64), "missing": np.zeros((1, 4), np.int64)}, [0]
    ),
    "drop": lambda s: s.drop("missing"),
    "drop_list": lambda s: s.drop(["a", "missing"]),
    "drop_rows": lambda s: s.drop("missing", [0]),
    "compact": lambda s: s.compact("missing"),
    "compact_list": lambda s: s.compact(["a", "missing"]),
    "get_shape": lambda s: s.get_shape("missing"),
    "get_modify_time": lambda s: s.get_modify_time("missing"),
    "stream_load": lambda s: s.stream_load("missing"),
}


@pytest.mark.parametrize("call", list(MISSING_CALLS))
def test_missing_array(filled, call):
    err = assert_fails(filled, ArrayNotFoundError, lambda: MISSING_CALLS[call](filled), KeyError)
    assert "missing" in str(err)
    assert_intact(filled)
    assert not filled.has_array("missing") and "missing" not in filled


# -- row indexes out of range ---------------------------------------------------------------

BAD_ROWS = {
    "int": 5,
    "neg_int": -6,
    "np_int": np.int64(100),
    "list": [0, 5],
    "neg_list": [-6, 0],
    "array": np.array([1, 2, 7]),
    "huge_uint": np.array([2**63], dtype=np.uint64),
    "huge_int": 2**70,
    "mask_short": np.array([True, False, True]),
    "mask_long": np.ones(6, dtype=bool),
}


@pytest.mark.parametrize("idx", list(BAD_ROWS))
@pytest.mark.parametrize("op", ["getitem", "lazy", "replace", "drop_rows"])
def test_row_out_of_range(filled, op, idx):
    index = BAD_ROWS[idx]
    calls = {
        "getitem": lambda: filled.getitem("a", index),
        "lazy": lambda: filled.load("a", lazy=True)[index],
        "replace": lambda: filled.replace({"a": np.zeros(4, np.int64)}, index),
        "drop_rows": lambda: filled.drop("a", index),
    }
    assert_fails(filled, RowIndexError, calls[op], IndexError)
    assert_intact(filled)


@pytest.mark.parametrize("op", ["getitem", "replace", "drop_rows"])
def test_row_out_of_range_after_drop(filled, op):
    filled.drop("a", [1])  # 4 logical rows remain over 5 physical ones
    calls = {
        "getitem": lambda: filled.getitem("a", 4),
        "replace": lambda: filled.replace({"a": np.zeros(4, np.int64)}, [-5]),
        "drop_rows": lambda: filled.drop("a", [4]),
    }
    assert_fails(filled, RowIndexError, calls[op], IndexError)
    assert_same_array(filled.load("a"), np.delete(A, 1, axis=0))


def test_row_out_of_range_on_empty_array(store):
    store.save({"e": np.empty((0, 2))})
    assert_fails(store, RowIndexError, lambda: store.getitem("e", 0), IndexError)
    assert_fails(store, RowIndexError, lambda: store.getitem("e", -1), IndexError)
    assert_fails(store, RowIndexError, lambda: store.drop("e", [0]), IndexError)


# -- shapes and dtypes of rows --------------------------------------------------------------

SHAPE_CALLS = {
    "append_cols": lambda s: s.append({"a": np.zeros((2, 3), np.int64)}),
    "append_extra_dim": lambda s: s.append({"a": np.zeros((2, 4, 1), np.int64)}),
    "append_1d_row_short": lambda s: s.append({"a": np.zeros(3, np.int64)}),
    "append_to_1d": lambda s: s.append({"v": np.zeros((2, 2), np.int32)}),
    "append_second_bad": lambda s: s.append({"f": F, "a": np.zeros((1, 5), np.int64)}),
    "replace_cols": lambda s: s.replace({"a": np.zeros((2, 5), np.int64)}, [0, 1]),
    "replace_count": lambda s: s.replace({"a": np.zeros((2, 4), np.int64)}, [0, 1, 2]),
    "replace_count_slice": lambda s: s.replace({"a": np.zeros((3, 4), np.int64)}, slice(0, 2)),
    "replace_int_two_rows": lambda s: s.replace({"a": np.zeros((2, 4), np.int64)}, 0),
    "replace_1d": lambda s: s.replace({"v": np.zeros((2, 2), np.int32)}, [0, 1]),
}


@pytest.mark.parametrize("call", list(SHAPE_CALLS))
def test_shape_mismatch(filled, call):
    assert_fails(filled, ShapeMismatchError, lambda: SHAPE_CALLS[call](filled), ValueError)
    assert_intact(filled)


DTYPE_CALLS = {
    "append_float_into_int": lambda s: s.append({"a": np.zeros((1, 4), np.float64)}),
    "append_float32_into_int32": lambda s: s.append({"v": np.zeros(2, np.float32)}),
    "append_complex_into_float": lambda s: s.append({"f": np.zeros((1, 3), np.complex128)}),
    "append_str_into_int": lambda s: s.append({"v": np.array(["1", "2"])}),
    "append_object_into_float": lambda s: s.append({"f": np.array([[1, 2, 3]], dtype=object)}),
    "append_int_into_bool": lambda s: s.append({"b": np.array([1, 0])}),
    "replace_float_into_int": lambda s: s.replace({"a": np.ones(4)}, 0),
    "replace_complex_into_float": lambda s: s.replace({"f": np.ones(3, np.complex64)}, [1]),
    "replace_float_into_uint": lambda s: s.replace({"u": np.array([1.0])}, [0]),
}


@pytest.mark.parametrize("call", list(DTYPE_CALLS))
def test_uncastable_rows(filled, call):
    filled.save({"b": np.array([True, False]), "u": np.arange(3, dtype=np.uint8)})
    assert_fails(filled, DTypeError, lambda: DTYPE_CALLS[call](filled), ValueError)
    assert_same_array(filled.load("b"), np.array([True, False]))
    assert_same_array(filled.load("u"), np.arange(3, dtype=np.uint8))
    assert_same_array(filled.load("a"), A)
    assert_same_array(filled.load("f"), F)
    assert_same_array(filled.load("v"), V)


UNSUPPORTED = {
    "object": lambda: np.array([1, "x", None], dtype=object),
    "str": lambda: np.array(["ab", "c"]),
    "bytes": lambda: np.array([b"ab", b"c"]),
    "datetime64": lambda: np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]"),
    "timedelta64": lambda: np.array([1, 2], dtype="timedelta64[s]"),
    "structured": lambda: np.zeros(3, dtype=[("x", "<i4"), ("y", "<f8")]),
    "void": lambda: np.zeros(3, dtype="V8"),
    "subarray": lambda: np.zeros(3, dtype=("<i4", (2,))).view(np.dtype([("s", "<i4", (2,))])),
    "longdouble": lambda: np.zeros(3, dtype=np.longdouble),
    "clongdouble": lambda: np.zeros(3, dtype=np.clongdouble),
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
@pytest.mark.parametrize("op", ["save", "save_with_good", "append_new"])
def test_unsupported_dtype(filled, kind, op):
    arr = UNSUPPORTED[kind]()
    if kind in ("longdouble", "clongdouble") and np.dtype(np.longdouble) == np.float64:
        pytest.skip("long double is double on this platform")
    calls = {
        "save": lambda: filled.save({"bad": arr}),
        "save_with_good": lambda: filled.save({"good": np.arange(3), "bad": arr}),
        "append_new": lambda: filled.append({"good": np.arange(3), "bad": arr}),
    }
    assert_fails(filled, DTypeError, calls[op], ValueError)
    assert_intact(filled)  # neither "bad" nor "good" was stored


ZERO_D = {
    "np_scalar": lambda: np.float64(1.5),
    "0d_array": lambda: np.array(5),
    "python_int": lambda: 3,
    "python_float": lambda: 2.5,
}


@pytest.mark.parametrize("kind", list(ZERO_D))
@pytest.mark.parametrize("op", ["save", "append_new"])
def test_zero_d_arrays(filled, kind, op):
    value = ZERO_D[kind]()
    call = (
        (lambda: filled.save({"z": value}))
        if op == "save"
        else (lambda: filled.append({"z": value}))
    )
    assert_fails(filled, InvalidArgumentError, call, ValueError)
    assert_intact(filled)


# -- names and argument types ---------------------------------------------------------------

BAD_TYPE_CALLS = {
    "save_int_name": lambda s: s.save({1: np.arange(3)}),
    "save_bytes_name": lambda s: s.save({b"a": np.arange(3)}),
    "save_none_name": lambda s: s.save({None: np.arange(3)}),
    "save_not_a_dict": lambda s: s.save([("x", np.arange(3))]),
    "save_array": lambda s: s.save(np.arange(3)),
    "append_int_name": lambda s: s.append({2: np.arange(3)}),
    "append_not_a_dict": lambda s: s.append(np.arange(3)),
    "replace_int_name": lambda s: s.replace({3: np.arange(3)}, [0]),
    "load_int": lambda s: s.load(1),
    "load_none": lambda s: s.load(None),
    "load_bytes": lambda s: s.load(b"a"),
    "getitem_int_name": lambda s: s.getitem(0, [0]),
    "has_array_int": lambda s: s.has_array(1),
    "get_shape_int": lambda s: s.get_shape(1),
    "get_modify_time_int": lambda s: s.get_modify_time(1),
    "stream_load_int": lambda s: s.stream_load(1),
    "drop_list_with_int": lambda s: s.drop(["a", 1]),
    "drop_rows_list_of_names": lambda s: s.drop(["a", "f"], [0]),
    "compact_list_with_int": lambda s: s.compact(["a", 2]),
    "drop_int": lambda s: s.drop(1),
    "compact_int": lambda s: s.compact(1),
    "stream_float_batch": lambda s: s.stream_load("a", buffer_size=2.0),
    "stream_bool_batch": lambda s: s.stream_load("a", buffer_size=True),
}


@pytest.mark.parametrize("call", list(BAD_TYPE_CALLS))
def test_invalid_types(filled, call):
    assert_fails(filled, InvalidTypeError, lambda: BAD_TYPE_CALLS[call](filled), TypeError)
    assert_intact(filled)


BAD_VALUE_CALLS = {
    "save_empty_name": lambda s: s.save({"": np.arange(3)}),
    "save_empty_among_good": lambda s: s.save({"ok": np.arange(3), "": np.arange(3)}),
    "append_empty_name": lambda s: s.append({"": np.arange(3)}),
    "replace_empty_name": lambda s: s.replace({"": np.arange(3)}, [0]),
    "load_empty": lambda s: s.load(""),
    "getitem_empty": lambda s: s.getitem("", [0]),
    "drop_empty": lambda s: s.drop(""),
    "drop_list_with_empty": lambda s: s.drop(["a", ""]),
    "has_array_empty": lambda s: s.has_array(""),
    "save_surrogate_name": lambda s: s.save({"\ud800": np.arange(3)}),
    "stream_zero_batch": lambda s: s.stream_load("a", buffer_size=0),
    "stream_negative_batch": lambda s: s.stream_load("a", buffer_size=-3),
}


@pytest.mark.parametrize("call", list(BAD_VALUE_CALLS))
def test_invalid_values(filled, call):
    assert_fails(filled, InvalidArgumentError, lambda: BAD_VALUE_CALLS[call](filled), ValueError)
    assert_intact(filled)


def test_unknown_backend(tmp_path):
    with pytest.raises(InvalidArgumentError):
        NumPack(tmp_path / "s", backend="fortran")
    assert not (tmp_path / "s").exists()


BAD_INDEXES = {
    "float": 1.0,
    "np_float": np.float32(2.0),
    "float_list": [1.0, 2.0],
    "float_array": np.array([0.5]),
    "bool": True,
    "np_bool": np.bool_(False),
    "str": "1",
    "str_list": ["a", "b"],
    "none": None,
    "2d_array": np.array([[0, 1], [1, 0]]),
    "complex": 1j,
}


@pytest.mark.parametrize(
    "op, idx",
    [
        (op, idx)
        for op in ("getitem", "lazy", "replace", "drop_rows")
        for idx in BAD_INDEXES
        # drop(name, None) drops the whole array; a LazyArray indexes as NumPy does, where
        # None is a new axis, a 2-D integer array is fancy indexing and a bool is a 0-d mask
        if not (op == "drop_rows" and idx == "none")
        and not (op == "lazy" and idx in ("none", "2d_array", "bool", "np_bool"))
    ],
)
def test_bad_index_types(filled, op, idx):
    index = BAD_INDEXES[idx]
    calls = {
        "getitem": lambda: filled.getitem("a", index),
        "lazy": lambda: filled.load("a", lazy=True)[index],
        "replace": lambda: filled.replace({"a": np.zeros(4, np.int64)}, index),
        "drop_rows": lambda: filled.drop("a", index),
    }
    assert_fails(filled, InvalidTypeError, calls[op], TypeError)
    assert_intact(filled)


# -- corrupt metadata -----------------------------------------------------------------------


def _valid_store(path, backend):
    with NumPack(path, backend=backend) as npk:
        npk.save({"a": A, "f": F})
        npk.drop("a", [1])
    return read_metadata(path)


def _open_and_use(path, backend):
    """Everything a reader does; one of these must notice the corruption."""
    npk = NumPack(path, backend=backend)
    try:
        npk.get_member_list()
        npk.get_shape()
        for name in ("a", "f"):
            npk.load(name)
            npk.getitem(name, [0])
        npk.save({"new": np.arange(3)})
    finally:
        npk.close()


def _corrupt_bytes(raw: bytes, how: str) -> bytes:
    if how == "truncated_1":
        return raw[:1]
    if how == "truncated_half":
        return raw[: len(raw) // 2]
    if how == "truncated_last":
        return raw[:-1]
    if how == "empty":
        return b""
    if how == "garbage":
        return np.random.default_rng(1).integers(0, 256, size=len(raw), dtype=np.uint8).tobytes()
    if how == "text":
        return b"this is not msgpack at all\n"
    if how == "zeros":
        return bytes(len(raw))
    if how == "ones":
        return b"\xff" * len(raw)
    if how == "not_a_map":
        return msgpack.packb([1, 2, 3])
    if how == "json":
        return b'{"format": "numpack", "version": 1}'
    raise AssertionError(how)


CORRUPT_BYTES = [
    "truncated_1",
    "truncated_half",
    "truncated_last",
    "empty",
    "garbage",
    "text",
    "zeros",
    "ones",
    "not_a_map",
    "json",
]


@pytest.mark.parametrize("how", CORRUPT_BYTES)
def test_corrupt_metadata_bytes_on_open(backend, store_path, how):
    _valid_store(store_path, backend)
    meta_file = store_path / "metadata.npkm"
    meta_file.write_bytes(_corrupt_bytes(meta_file.read_bytes(), how))
    before = snapshot(store_path)
    with pytest.raises(CorruptStoreError) as ei:
        _open_and_use(store_path, backend)
    assert isinstance(ei.value, OSError)
    assert snapshot(store_path) == before  # nothing written into a store it cannot read


@pytest.mark.parametrize("how", ["truncated_half", "truncated_1", "text", "not_a_map"])
def test_corrupt_metadata_seen_by_open_store(backend, store_path, how):
    _valid_store(store_path, backend)
    npk = NumPack(store_path, backend=backend)
    try:
        assert npk.get_member_list() == ["a", "f"]
        meta_file = store_path / "metadata.npkm"
        raw = meta_file.read_bytes()
        bad = _corrupt_bytes(raw, how)
        assert len(bad) != len(raw)  # a change a stat() notices
        tmp = store_path / "corrupt.tmp"
        tmp.write_bytes(bad)
        os.replace(tmp, meta_file)  # a new inode as well
        # ...as a fold would leave it: a new log (new inode) of the same generation.
        log = store_path / "numpack.log"
        tmp.write_bytes(log.read_bytes())
        os.replace(tmp, log)
        before = snapshot(store_path)
        with pytest.raises(CorruptStoreError):
            npk.get_member_list()
            npk.load("a")
        with pytest.raises(CorruptStoreError):
            npk.save({"new": np.arange(3)})
        assert snapshot(store_path) == before
    finally:
        npk.close()


def _mutations():
    def fmt(m):
        m["format"] = "numpy"

    def no_format(m):
        del m["format"]

    def no_arrays(m):
        del m["arrays"]

    def arrays_not_list(m):
        m["arrays"] = {"a": 1}

    def dup(m):
        m["arrays"].append(dict(m["arrays"][0]))

    def dtype(m):
        m["arrays"][1]["dtype"] = "<M8[D]"

    def dtype_big_endian(m):
        m["arrays"][1]["dtype"] = ">f8"

    def dtype_garbage(m):
        m["arrays"][1]["dtype"] = "float64!"

    def file_escape(m):
        m["arrays"][1]["file"] = "../" + m["arrays"][1]["file"]

    def file_abs(m):
        m["arrays"][1]["file"] = "/etc/passwd"

    def file_other(m):
        m["arrays"][1]["file"] = m["arrays"][0]["file"]

    def file_wrong_stem(m):
        m["arrays"][1]["file"] = m["arrays"][1]["file"].replace("f-", "g-", 1)

    def negative_shape(m):
        m["arrays"][1]["shape"] = [-5, 3]

    def overflow_shape(m):
        m["arrays"][1]["shape"] = [2**62, 2**62]

    def empty_shape(m):
        m["arrays"][1]["shape"] = []

    def deleted_not_ascending(m):
        m["arrays"][1]["deleted"] = np.array([3, 1], "<u8").tobytes()

    def deleted_duplicate(m):
        m["arrays"][1]["deleted"] = np.array([1, 1], "<u8").tobytes()

    def deleted_out_of_range(m):
        m["arrays"][1]["deleted"] = np.array([1, 5], "<u8").tobytes()

    def deleted_bad_length(m):
        m["arrays"][1]["deleted"] = b"\x01\x00\x00"

    def empty_name(m):
        m["arrays"][1]["name"] = ""

    return {f.__name__: f for f in (
        fmt, no_format, no_arrays, arrays_not_list, dup, dtype, dtype_big_endian, dtype_garbage,
        file_escape, file_abs, file_other, file_wrong_stem, negative_shape, overflow_shape,
        empty_shape, deleted_not_ascending, deleted_duplicate,
        deleted_out_of_range, deleted_bad_length, empty_name,
    )}  # fmt: skip


MUTATIONS = _mutations()


@pytest.mark.parametrize("how", list(MUTATIONS))
def test_invalid_metadata_rejected(backend, store_path, how):
    meta = _valid_store(store_path, backend)
    MUTATIONS[how](meta)
    write_metadata(store_path, meta)
    before = snapshot(store_path)
    with pytest.raises(CorruptStoreError):
        _open_and_use(store_path, backend)
    assert snapshot(store_path) == before


def test_newer_version_rejected(backend, store_path):
    meta = _valid_store(store_path, backend)
    meta["version"] = 99
    write_metadata(store_path, meta)
    before = snapshot(store_path)
    with pytest.raises(CorruptStoreError) as ei:
        _open_and_use(store_path, backend)
    assert "99" in str(ei.value)
    assert snapshot(store_path) == before


def test_unknown_keys_ignored(backend, store_path):
    meta = _valid_store(store_path, backend)
    meta["future_statistics"] = {"x": 1}
    meta["arrays"][1]["future_key"] = [1, 2, 3]
    write_metadata(store_path, meta)
    with NumPack(store_path, backend=backend) as npk:
        assert_same_array(npk.load("f"), F)
        assert_same_array(npk.load("a"), np.delete(A, 1, axis=0))


def test_unknown_compression_rejected_for_that_array(backend, store_path):
    meta = _valid_store(store_path, backend)
    meta["arrays"][1]["compression"] = {"codec": "from-the-future", "blocks": []}
    write_metadata(store_path, meta)
    with pytest.raises(CorruptStoreError):
        with NumPack(store_path, backend=backend) as npk:
            npk.load("f")


# -- corrupt data files (in a subprocess: a bad mmap must not take the test run down) -------

_READ_SHORT = """
import sys
import numpy as np
from numpack import NumPack, CorruptStoreError, NumPackError
path, backend, how = sys.argv[1:]
try:
    npk = NumPack(path, backend=backend)
    if how == "load":
        npk.load("f")
    elif how == "getitem":
        npk.getitem("f", [-1])
    elif how == "lazy":
        npk.load("f", lazy=True)[-1]
    elif how == "asarray":
        float(np.asarray(npk.load("f", lazy=True)).sum())
    elif how == "stream":
        [b.sum() for b in npk.stream_load("f", 2)]
except CorruptStoreError as e:
    print("CorruptStoreError", e)
except NumPackError as e:
    print("NumPackError", type(e).__name__, e)
except Exception as e:
    print("OTHER", type(e).__name__, e)
else:
    print("NO ERROR")
"""


@pytest.mark.parametrize("how", ["load", "getitem", "lazy", "asarray", "stream"])
@pytest.mark.parametrize("size", [0, 100])
def test_short_data_file(backend, store_path, how, size):
    _valid_store(store_path, backend)
    meta = read_metadata(store_path)
    f_file = store_path / meta["arrays"][1]["file"]
    assert f_file.stat().st_size >= F.nbytes
    with open(f_file, "r+b") as fh:
        fh.truncate(size)
    before = snapshot(store_path)
    res = run_python(_READ_SHORT, store_path, backend, how)
    assert res.returncode == 0, f"crashed (rc {res.returncode}): {res.stderr[-2000:]}"
    assert res.stdout.startswith("CorruptStoreError"), res.stdout + res.stderr
    assert snapshot(store_path) == before


def test_missing_data_file(backend, store_path):
    _valid_store(store_path, backend)
    meta = read_metadata(store_path)
    os.remove(store_path / meta["arrays"][1]["file"])
    res = run_python(_READ_SHORT, store_path, backend, "load")
    assert res.returncode == 0, f"crashed (rc {res.returncode}): {res.stderr[-2000:]}"
    # a missing file is corruption; an OS error naming it is acceptable too
    assert res.stdout.startswith(("CorruptStoreError", "NumPackError StoreIOError")), res.stdout


# -- names are stored safely ----------------------------------------------------------------

ODD_NAMES = [
    "../x", "../../etc/passwd", "a/b", "/abs", "a\\b", "..\\x", "x\x00y", "\x00", "y" * 10_000,
    "日本語", "émoji 🎉", "A", "a", "aB", "Ab", ".", "..", " ", "\n\t", "metadata.npkm",
    "numpack.lock", "numpack.undo", "a.1.npkd", "a-0123456789abcdef", "CON", "nul", "x.tmp",
    "name with spaces", "ǅ", "İ", "ß", "SS", "\u212a", "K", "k",
]  # fmt: skip


def test_odd_names_stay_inside_and_distinct(backend, tmp_path):
    path = tmp_path / "store"
    arrays = {name: np.full(3, i, dtype=np.int32) for i, name in enumerate(ODD_NAMES)}
    assert len(arrays) == len(ODD_NAMES)
    with NumPack(path, backend=backend) as npk:
        for i, name in enumerate(ODD_NAMES):
            if i % 2:
                npk.save({name: arrays[name]})
            else:
                npk.append({name: arrays[name]})
        assert npk.get_member_list() == ODD_NAMES
        for name, arr in arrays.items():
            assert_same_array(npk.load(name), arr)
            assert name in npk
    # nothing outside the store, nothing in subdirectories of it
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    entries = list(path.iterdir())
    assert all(p.is_file() for p in entries), [p.name for p in entries if not p.is_file()]
    files = data_files(path)
    assert len(files) == len(ODD_NAMES)
    assert len({f.lower() for f in files}) == len(files)  # distinct on case-insensitive systems
    for f in files:
        assert re.fullmatch(r"[a-z0-9_]{0,32}-[0-9a-f]{16}\.[0-9]+\.npkd", f), f
        assert len(f) < 100
    with NumPack(path, backend=backend) as npk:  # and after reopening
        assert npk.get_member_list() == ODD_NAMES
        for name, arr in arrays.items():
            assert_same_array(npk.load(name), arr)
        meta = npk.get_metadata()["arrays"]
        for name in ODD_NAMES:
            assert meta[name]["file"].startswith(file_stem(name) + ".")
        npk.drop(ODD_NAMES[::2])
        assert npk.get_member_list() == ODD_NAMES[1::2]
        for name in ODD_NAMES[1::2]:
            assert_same_array(npk.load(name), arrays[name])
    assert len(data_files(path)) == len(ODD_NAMES[1::2])
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_names_are_case_sensitive(store):
    store.save({"A": np.arange(2), "a": np.arange(3)})
    store.drop("A")
    assert store.get_member_list() == ["a"]
    assert_same_array(store.load("a"), np.arange(3))
    with pytest.raises(ArrayNotFoundError):
        store.load("A")


# -- a failed call among good ones ----------------------------------------------------------


def test_failed_save_is_all_or_nothing(filled):
    # a 0-d array, discovered after a good one
    assert_fails(
        filled,
        InvalidArgumentError,
        lambda: filled.save({"a": np.zeros((2, 2)), "z": np.float64(3)}),
    )
    assert_intact(filled)


def test_failed_append_is_all_or_nothing(filled):
    assert_fails(
        filled,
        ShapeMismatchError,
        lambda: filled.append({"v": np.arange(2, dtype=np.int32), "a": np.zeros(3)}),
    )
    assert_fails(
        filled, DTypeError, lambda: filled.append({"new": np.arange(2), "a": np.zeros((1, 4))})
    )
    assert_intact(filled)


def test_failed_replace_is_all_or_nothing(filled):
    assert_fails(
        filled,
        DTypeError,
        lambda: filled.replace({"v": np.array([9], np.int32), "a": np.ones(4)}, [0]),
    )
    assert_fails(
        filled,
        RowIndexError,
        lambda: filled.replace({"a": np.zeros(4, np.int64), "v": np.array([1])}, 5),
    )
    assert_intact(filled)


def test_error_leaves_store_usable(filled):
    with pytest.raises(RowIndexError):
        filled.getitem("a", 99)
    with pytest.raises(DTypeError):
        filled.save({"o": np.array([object()])})
    filled.append({"v": np.array([6], np.int32)})
    assert_same_array(filled.load("v"), np.arange(7, dtype=np.int32))
    assert len(data_files(filled.path)) == 3
