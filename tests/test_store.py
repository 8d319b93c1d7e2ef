"""The NumPack API of DESIGN.md section 3 (without compression), on every backend."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from helpers import (
    DTYPES,
    assert_same_array,
    data_bytes,
    data_files,
    make_array,
)

import numpack
from numpack import (
    ArrayNotFoundError,
    LazyArray,
    NumPack,
    NumPackError,
    StoreClosedError,
    StreamLoader,
)

SHAPES = {1: (7,), 2: (7, 3), 3: (6, 3, 2), 4: (5, 2, 3, 2), 5: (4, 2, 1, 3, 2)}

# Row selections, built for an array of n rows (n >= 6). Each is something NumPy accepts.
INDEX_KINDS = {
    "int": lambda n: 2,
    "neg_int": lambda n: -1,
    "np_int": lambda n: np.int64(3),
    "np_uint": lambda n: np.uint16(1),
    "list": lambda n: [0, 4, 2],
    "neg_list": lambda n: [-1, -n, 1],
    "dup_list": lambda n: [1, 3, 1, 1],
    "empty_list": lambda n: [],
    "array_i8": lambda n: np.array([n - 1, 0, 2], dtype=np.int64),
    "array_i32": lambda n: np.array([-2, 1], dtype=np.int32),
    "array_u64": lambda n: np.array([5, 0], dtype=np.uint64),
    "array_u8": lambda n: np.array([3], dtype=np.uint8),
    "slice": lambda n: slice(1, 4),
    "slice_all": lambda n: slice(None),
    "slice_step": lambda n: slice(0, None, 2),
    "slice_neg_step": lambda n: slice(None, None, -2),
    "slice_neg_bounds": lambda n: slice(-4, -1),
    "slice_empty": lambda n: slice(4, 2),
    "slice_past_end": lambda n: slice(n - 2, n + 10),
    "mask": lambda n: np.arange(n) % 3 == 0,
    "mask_list": lambda n: [i % 2 == 1 for i in range(n)],
    "mask_none": lambda n: np.zeros(n, dtype=bool),
}
INDEX_IDS = list(INDEX_KINDS)


def _rows_for(expected_sel: np.ndarray, seed: int) -> np.ndarray:
    """Fresh values shaped like `expected_sel` (what a replace would write)."""
    return make_array(expected_sel.dtype, expected_sel.shape, seed=seed)


# -- construction ---------------------------------------------------------------------------


def test_backend_attribute(store, backend):
    assert store.backend == backend


def test_new_store_is_empty_and_creates_directory(backend, tmp_path):
    path = tmp_path / "new" / "store"
    npk = NumPack(path, backend=backend)
    assert path.is_dir()
    assert npk.get_member_list() == []
    assert npk.get_shape() == {}
    assert len(npk) == 0
    assert list(npk) == []
    assert npk.path == os.path.abspath(path)
    npk.close()


def test_path_accepts_str(backend, tmp_path):
    with NumPack(str(tmp_path / "s"), backend=backend) as npk:
        npk.save({"a": np.arange(3)})
        assert_same_array(npk.load("a"), np.arange(3))


def test_default_backend_from_env(monkeypatch, backend, tmp_path):
    monkeypatch.setenv("NUMPACK_BACKEND", backend)
    with NumPack(tmp_path / "s") as npk:
        assert npk.backend == backend


# -- save / load ----------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", sorted(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_save_load_roundtrip(store, dtype, ndim):
    arr = make_array(dtype, SHAPES[ndim], seed=ndim)
    store.save({"a": arr})
    out = store.load("a")
    assert isinstance(out, np.ndarray)
    assert_same_array(out, arr)
    assert out.tobytes() == arr.tobytes()  # bit for bit, NaN payloads included
    assert out.flags.owndata and out.flags.writeable and out.flags.c_contiguous
    assert store.get_shape("a") == arr.shape


@pytest.mark.parametrize("shape", [(0,), (0, 3), (0, 2, 4)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_row_arrays(store, dtype, shape):
    arr = np.empty(shape, dtype=dtype)
    store.save({"a": arr})
    assert_same_array(store.load("a"), arr)
    assert store.get_shape("a") == shape
    lazy = store.load("a", lazy=True)
    assert lazy.shape == shape and len(lazy) == 0
    assert_same_array(np.asarray(lazy), arr)
    assert_same_array(store.getitem("a", []), arr)
    assert_same_array(store.getitem("a", slice(None)), arr)
    assert list(store.stream_load("a", 4)) == []
    assert len(store.stream_load("a", 4)) == 0
    # and it grows from nothing
    rows = make_array(dtype, (3,) + shape[1:], seed=1)
    store.append({"a": rows})
    assert_same_array(store.load("a"), rows)


def test_zero_width_rows(store):
    arr = np.empty((4, 0), dtype=np.float32)
    store.save({"a": arr})
    assert_same_array(store.load("a"), arr)
    assert store.get_shape("a") == (4, 0)
    store.append({"a": np.empty((2, 0), dtype=np.float32)})
    assert store.get_shape("a") == (6, 0)
    assert_same_array(store.getitem("a", [0, 5]), np.empty((2, 0), dtype=np.float32))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: np.arange(60, dtype=np.int32).reshape(6, 10)[:, ::3], id="strided"),
        pytest.param(lambda: np.arange(60, dtype=np.int32).reshape(6, 10)[::-2], id="neg_rows"),
        pytest.param(lambda: np.arange(60.0).reshape(6, 10).T, id="transposed"),
        pytest.param(lambda: np.asfortranarray(np.arange(24.0).reshape(4, 6)), id="fortran"),
        pytest.param(
            lambda: np.asfortranarray(make_array(np.complex64, (3, 4, 5), 3)), id="fortran_3d"
        ),
        pytest.param(lambda: np.broadcast_to(np.arange(4), (5, 4)), id="broadcast"),
        pytest.param(lambda: np.arange(10, dtype=np.uint8)[1:], id="offset"),
        pytest.param(
            lambda: np.frombuffer(b"\0" + np.arange(5, dtype="<f8").tobytes(), "<f8", offset=1),
            id="unaligned",
        ),
        pytest.param(lambda: [[1, 2, 3], [4, 5, 6]], id="nested_list"),
        pytest.param(lambda: [True, False], id="bool_list"),
    ],
)
def test_save_any_layout(store, make):
    arr = make()
    expected = np.asarray(arr)
    store.save({"a": arr})
    out = store.load("a")
    assert_same_array(out, np.ascontiguousarray(expected))
    assert out.flags.c_contiguous
    assert_same_array(store.getitem("a", [1, 0]), expected[[1, 0]])


@pytest.mark.parametrize("dtype", [">i2", ">u4", ">i8", ">f2", ">f4", ">f8", ">c8", ">c16"])
def test_big_endian_inputs(store, dtype):
    native = np.dtype(dtype).newbyteorder("=")
    values = make_array(native, (5, 3), seed=7)
    arr = values.astype(dtype)
    assert not arr.dtype.isnative
    store.save({"a": arr})
    out = store.load("a")
    assert out.dtype.isnative
    assert_same_array(out, values)
    assert out.tobytes() == values.tobytes()
    # rows in the other byte order append and replace as values, not as bytes
    store.append({"a": arr[:2]})
    store.replace({"a": arr[4:5]}, [0])
    expected = np.concatenate([values, values[:2]])
    expected[0] = values[4]
    assert_same_array(store.load("a"), expected)
    lazy = store.load("a", lazy=True)
    assert lazy.dtype == native
    assert_same_array(lazy[:], expected)


def test_save_several_arrays_at_once(store):
    arrays = {"x": np.arange(5), "y": np.ones((2, 2), np.float32), "z": np.array([True])}
    store.save(arrays)
    assert store.get_member_list() == ["x", "y", "z"]
    for name, arr in arrays.items():
        assert_same_array(store.load(name), arr)


def test_save_empty_dict_is_noop(store):
    store.save({"a": np.arange(3)})
    store.save({})
    assert store.get_member_list() == ["a"]
    assert_same_array(store.load("a"), np.arange(3))


def test_save_overwrites(store):
    store.save({"a": np.arange(10, dtype=np.int64), "b": np.arange(3)})
    store.save({"a": np.full((2, 3), 1.5, dtype=np.float32)})
    assert_same_array(store.load("a"), np.full((2, 3), 1.5, dtype=np.float32))
    assert store.get_shape("a") == (2, 3)
    assert_same_array(store.load("b"), np.arange(3))
    assert sorted(store.get_member_list()) == ["a", "b"]
    assert len(data_files(store.path)) == 2  # the replaced data file is gone


def test_save_overwrite_clears_dropped_rows(store):
    store.save({"a": np.arange(10)})
    store.drop("a", [0, 1, 2])
    store.save({"a": np.arange(4)})
    assert_same_array(store.load("a"), np.arange(4))
    assert store.get_metadata()["arrays"]["a"]["rows_dropped"] == 0


def test_load_returns_independent_copy(store):
    store.save({"a": np.arange(6)})
    out = store.load("a")
    out[:] = -1
    assert_same_array(store.load("a"), np.arange(6))
    out2 = store["a"]
    assert not np.shares_memory(out, out2)


# -- append ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_append_existing(store, dtype):
    a = make_array(dtype, (5, 2, 3), seed=1)
    b = make_array(dtype, (4, 2, 3), seed=2)
    store.save({"a": a})
    store.append({"a": b})
    assert_same_array(store.load("a"), np.concatenate([a, b]))
    assert store.get_shape("a") == (9, 2, 3)


def test_append_creates_new_array(store):
    store.save({"a": np.arange(3)})
    rows = np.arange(12, dtype=np.uint16).reshape(4, 3)
    store.append({"b": rows})
    assert store.get_member_list() == ["a", "b"]
    assert_same_array(store.load("b"), rows)
    store.append({"b": rows})
    assert_same_array(store.load("b"), np.concatenate([rows, rows]))


def test_append_single_row(store):
    store.save({"m": np.zeros((2, 3), np.float64), "v": np.arange(3, dtype=np.int32)})
    store.append({"m": np.array([1.0, 2.0, 3.0]), "v": 7})
    assert_same_array(store.load("m"), np.array([[0, 0, 0], [0, 0, 0], [1, 2, 3]], np.float64))
    assert_same_array(store.load("v"), np.array([0, 1, 2, 7], np.int32))


def test_append_many_times(store):
    expected = np.empty((0, 4), dtype=np.int16)
    store.save({"a": expected})
    for i in range(20):
        rows = np.full((i % 3 + 1, 4), i, dtype=np.int16)
        store.append({"a": rows})
        expected = np.concatenate([expected, rows])
    assert_same_array(store.load("a"), expected)
    assert_same_array(store.getitem("a", [-1, 0]), expected[[-1, 0]])


def test_append_zero_rows(store):
    store.save({"a": np.arange(6.0).reshape(3, 2)})
    store.append({"a": np.empty((0, 2))})
    assert_same_array(store.load("a"), np.arange(6.0).reshape(3, 2))


def test_append_several_arrays_in_one_call(store):
    store.save({"a": np.arange(3), "b": np.arange(2.0)})
    store.append({"a": np.arange(3, 5), "b": np.array([9.0]), "c": np.array([1, 2], np.int8)})
    assert_same_array(store.load("a"), np.arange(5))
    assert_same_array(store.load("b"), np.array([0.0, 1.0, 9.0]))
    assert_same_array(store.load("c"), np.array([1, 2], np.int8))
    assert store.get_member_list() == ["a", "b", "c"]


@pytest.mark.parametrize(
    "target, rows, expected",
    [
        (np.int8, np.array([1, -2, 100], np.int64), np.array([1, -2, 100], np.int8)),
        (np.float32, np.array([0.5, 2.25]), np.array([0.5, 2.25], np.float32)),
        (np.float64, np.array([3, -4], np.int32), np.array([3.0, -4.0])),
        (np.int32, np.array([True, False]), np.array([1, 0], np.int32)),
        (np.complex64, np.array([1.5, 2.0]), np.array([1.5, 2.0], np.complex64)),
        (np.uint8, np.array([200, 3], np.uint32), np.array([200, 3], np.uint8)),
    ],
    ids=["i64->i8", "f64->f32", "i32->f64", "bool->i32", "f64->c64", "u32->u8"],
)
def test_append_and_replace_cast_same_kind(store, target, rows, expected):
    store.save({"a": np.zeros(2, dtype=target)})
    store.append({"a": rows})
    assert_same_array(store.load("a"), np.concatenate([np.zeros(2, dtype=target), expected]))
    store.replace({"a": rows}, [0, 1, 2][: len(rows)])
    got = store.load("a")
    assert got.dtype == np.dtype(target)
    assert_same_array(got[: len(rows)], expected)


def test_append_after_reopen(backend, store_path):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(4)})
    with NumPack(store_path, backend=backend) as npk:
        npk.append({"a": np.arange(4, 8)})
    with NumPack(store_path, backend=backend) as npk:
        assert_same_array(npk.load("a"), np.arange(8))


# -- replace --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_IDS)
def test_replace_index_kinds(store, kind):
    expected = make_array(np.float64, (9, 2, 3), seed=0)
    store.save({"a": expected})
    idx = INDEX_KINDS[kind](9)
    rows = _rows_for(expected[idx], seed=11)
    store.replace({"a": rows}, idx)
    expected[idx] = rows  # NumPy's rule, duplicates included: the last write wins
    assert_same_array(store.load("a"), expected)


@pytest.mark.parametrize("kind", ["list", "slice_step", "mask", "int", "neg_list"])
def test_replace_one_row_broadcasts(store, kind):
    expected = np.arange(27, dtype=np.int32).reshape(9, 3)
    store.save({"a": expected})
    idx = INDEX_KINDS[kind](9)
    store.replace({"a": np.array([-5, -6, -7], np.int32)}, idx)
    expected[idx] = [-5, -6, -7]
    assert_same_array(store.load("a"), expected)
    store.replace({"a": np.array([[8, 8, 8]], np.int32)}, idx)
    expected[idx] = [8, 8, 8]
    assert_same_array(store.load("a"), expected)


def test_replace_scalar_in_1d(store):
    store.save({"a": np.arange(5, dtype=np.int64)})
    store.replace({"a": 42}, 3)
    store.replace({"a": 7}, [0, 1])
    assert_same_array(store.load("a"), np.array([7, 7, 2, 42, 4]))


def test_replace_several_arrays(store):
    store.save({"a": np.zeros((4, 2)), "b": np.zeros(4, np.uint8)})
    store.replace({"a": np.ones((2, 2)), "b": np.array([5, 6], np.uint8)}, [1, 3])
    assert_same_array(store.load("a"), np.array([[0, 0], [1, 1], [0, 0], [1, 1]], np.float64))
    assert_same_array(store.load("b"), np.array([0, 5, 0, 6], np.uint8))


def test_replace_is_in_place_and_keeps_others(store):
    store.save({"a": np.arange(10), "b": np.arange(3)})
    files = data_files(store.path)
    store.replace({"a": np.array([100, 200])}, [2, 8])
    assert data_files(store.path) == files
    assert_same_array(store.load("a"), np.array([0, 1, 100, 3, 4, 5, 6, 7, 200, 9]))
    assert_same_array(store.load("b"), np.arange(3))
    assert not os.path.exists(os.path.join(store.path, "numpack.undo"))


def test_replace_after_drop_uses_logical_rows(store):
    base = np.arange(10) * 10
    store.save({"a": base})
    store.drop("a", [0, 3, 4])
    live = np.delete(base, [0, 3, 4])
    store.replace({"a": np.array([-1, -2, -3])}, [0, 2, -1])
    live[[0, 2, -1]] = [-1, -2, -3]
    assert_same_array(store.load("a"), live)


# -- drop -----------------------------------------------------------------------------------


def test_drop_array_by_name_and_list(store):
    store.save({n: np.arange(i + 1) for i, n in enumerate("abcd")})
    store.drop("b")
    assert store.get_member_list() == ["a", "c", "d"]
    store.drop(["a", "d"])
    assert store.get_member_list() == ["c"]
    assert not store.has_array("a")
    assert_same_array(store.load("c"), np.arange(3))
    assert len(data_files(store.path)) == 1
    with pytest.raises(ArrayNotFoundError):
        store.load("b")


def test_drop_then_recreate_goes_last(store):
    store.save({"a": np.arange(2), "b": np.arange(3)})
    store.drop("a")
    store.save({"a": np.arange(5, dtype=np.int8)})
    assert store.get_member_list() == ["b", "a"]
    assert_same_array(store.load("a"), np.arange(5, dtype=np.int8))


@pytest.mark.parametrize(
    "kind",
    [
        "int",
        "neg_int",
        "list",
        "dup_list",
        "neg_list",
        "slice_step",
        "mask",
        "empty_list",
        "slice_neg_step",
    ],
)
def test_drop_rows_hidden_everywhere(store, kind):
    base = make_array(np.int32, (10, 3), seed=3)
    store.save({"a": base})
    idx = INDEX_KINDS[kind](10)
    store.drop("a", idx)
    keep = np.ones(10, dtype=bool)
    keep[np.arange(10)[idx]] = False
    live = base[keep]
    n = len(live)

    assert_same_array(store.load("a"), live)
    assert store.get_shape("a") == live.shape
    assert store.get_shape() == {"a": live.shape}
    assert store.get_metadata()["arrays"]["a"]["rows_dropped"] == 10 - n
    assert_same_array(store["a"], live)
    lazy = store.load("a", lazy=True)
    assert lazy.shape == live.shape and len(lazy) == n
    assert_same_array(np.asarray(lazy), live)
    assert_same_array(lazy[:], live)
    assert_same_array(np.array(list(lazy), dtype=live.dtype).reshape(live.shape), live)
    assert_same_array(store.getitem("a", slice(None)), live)
    if n:
        assert_same_array(store.getitem("a", [n - 1, 0]), live[[n - 1, 0]])
        assert_same_array(store.getitem("a", -1), live[-1])
        assert_same_array(lazy[1::2, 1:], live[1::2, 1:])
    batches = list(store.stream_load("a", buffer_size=3))
    assert_same_array(np.concatenate(batches) if batches else base[:0], live)
    assert len(store.stream_load("a", buffer_size=3)) == -(-n // 3)


def test_drop_rows_twice_is_logical(store):
    base = np.arange(12)
    store.save({"a": base})
    store.drop("a", [0, 5])
    live = np.delete(base, [0, 5])
    store.drop("a", [0, 5, -1])  # logical rows of what is left
    live = np.delete(live, [0, 5, len(live) - 1])
    assert_same_array(store.load("a"), live)
    store.append({"a": np.array([100, 101])})
    live = np.concatenate([live, [100, 101]])
    assert_same_array(store.load("a"), live)
    store.drop("a", [len(live) - 2])
    live = np.delete(live, len(live) - 2)
    assert_same_array(store.load("a"), live)
    assert_same_array(store.getitem("a", np.arange(len(live))[::-1]), live[::-1])


def test_drop_all_rows(store):
    store.save({"a": np.arange(8.0).reshape(4, 2)})
    store.drop("a", slice(None))
    assert store.get_shape("a") == (0, 2)
    assert_same_array(store.load("a"), np.empty((0, 2)))
    assert "a" in store
    store.append({"a": np.ones((1, 2))})
    assert_same_array(store.load("a"), np.ones((1, 2)))


def test_drop_rows_survives_reopen(backend, store_path):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(6)})
        npk.drop("a", [1, 2])
    with NumPack(store_path, backend=backend) as npk:
        assert_same_array(npk.load("a"), np.array([0, 3, 4, 5]))


# -- compact --------------------------------------------------------------------------------


def test_compact_keeps_data_and_reclaims(store):
    base = make_array(np.float64, (1000, 8), seed=5)
    store.save({"a": base, "b": np.arange(100)})
    drop = np.arange(0, 1000, 2)
    store.drop("a", drop)
    live = np.delete(base, drop, axis=0)
    before = data_bytes(store.path)
    store.compact()
    after = data_bytes(store.path)
    assert after < before
    assert after <= before - 500 * 8 * 8
    assert_same_array(store.load("a"), live)
    assert_same_array(store.load("b"), np.arange(100))
    meta = store.get_metadata()["arrays"]["a"]
    assert meta["rows_dropped"] == 0 and meta["shape"] == live.shape
    assert len(data_files(store.path)) == 2
    # the compacted array still changes as usual
    store.append({"a": base[:2]})
    store.replace({"a": base[5]}, 0)
    store.drop("a", [1])
    live = np.concatenate([live, base[:2]])
    live[0] = base[5]
    live = np.delete(live, 1, axis=0)
    assert_same_array(store.load("a"), live)


@pytest.mark.parametrize("arg", ["a", ["a"]], ids=["str", "list"])
def test_compact_one_array(store, arg):
    store.save({"a": np.arange(100), "b": np.arange(100)})
    store.drop("a", slice(0, 50))
    store.drop("b", slice(0, 50))
    store.compact(arg)
    meta = store.get_metadata()["arrays"]
    assert meta["a"]["rows_dropped"] == 0
    assert meta["b"]["rows_dropped"] == 50
    assert_same_array(store.load("a"), np.arange(50, 100))
    assert_same_array(store.load("b"), np.arange(50, 100))


def test_compact_without_dropped_rows(store):
    store.save({"a": np.arange(10)})
    store.compact()
    store.compact("a")
    assert_same_array(store.load("a"), np.arange(10))


def test_compact_after_dropping_everything(store):
    store.save({"a": np.arange(20, dtype=np.int16).reshape(10, 2)})
    store.drop("a", slice(None))
    store.compact()
    assert_same_array(store.load("a"), np.empty((0, 2), np.int16))


# -- getitem --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_IDS)
def test_getitem_index_kinds(store, kind):
    base = make_array(np.complex64, (9, 2, 3), seed=2)
    store.save({"a": base})
    idx = INDEX_KINDS[kind](9)
    got = store.getitem("a", idx)
    assert_same_array(got, base[idx])
    assert got.flags.writeable


@pytest.mark.parametrize("kind", INDEX_IDS)
def test_getitem_after_drop(store, kind):
    base = np.arange(40, dtype=np.uint32).reshape(20, 2)
    store.save({"a": base})
    store.drop("a", [0, 2, 3, 10, 19, 11])
    live = np.delete(base, [0, 2, 3, 10, 19, 11], axis=0)
    idx = INDEX_KINDS[kind](len(live))
    assert_same_array(store.getitem("a", idx), live[idx])


def test_getitem_result_is_owned(store):
    store.save({"a": np.arange(12).reshape(4, 3)})
    lazy = store.load("a", lazy=True)
    for idx in (1, [0, 1], slice(0, 2), np.array([True, False, True, False])):
        got = store.getitem("a", idx)
        assert got.flags.writeable
        assert not np.shares_memory(got, np.asarray(lazy))
        got[...] = -1
    assert_same_array(store.load("a"), np.arange(12).reshape(4, 3))


def test_getitem_large_gather(store):
    base = make_array(np.float32, (5000, 16), seed=9)
    store.save({"a": base})
    idx = np.random.default_rng(0).integers(-5000, 5000, size=3000)
    assert_same_array(store.getitem("a", idx), base[idx])


# -- shapes, metadata, member list, times ---------------------------------------------------


def test_get_shape_both_forms(store):
    store.save({"a": np.zeros((3, 4)), "b": np.zeros(5, np.int8)})
    assert store.get_shape("a") == (3, 4)
    assert store.get_shape("b") == (5,)
    assert store.get_shape() == {"a": (3, 4), "b": (5,)}
    assert isinstance(store.get_shape("a"), tuple)
    store.append({"a": np.zeros((2, 4))})
    store.drop("b", [0])
    assert store.get_shape() == {"a": (5, 4), "b": (4,)}
    assert all(isinstance(v, tuple) for v in store.get_shape().values())


def test_get_metadata(store):
    store.save({"a": np.zeros((10, 3), np.float32), "b": np.zeros(4, np.complex128)})
    store.drop("a", [1, 2])
    meta = store.get_metadata()
    assert meta["path"] == store.path
    assert meta["backend"] == store.backend
    assert meta["format_version"] == 2
    assert list(meta["arrays"]) == ["a", "b"]
    a = meta["arrays"]["a"]
    assert a["dtype"] == "float32"
    assert a["shape"] == (8, 3)
    assert a["nbytes"] == 8 * 3 * 4
    assert a["rows_dropped"] == 2
    assert a["compression"] is None
    assert a["modified_us"] == store.get_modify_time("a")
    assert os.path.isfile(os.path.join(store.path, a["file"]))
    assert a["bytes_on_disk"] == os.path.getsize(os.path.join(store.path, a["file"]))
    assert a["bytes_on_disk"] >= 10 * 3 * 4
    b = meta["arrays"]["b"]
    assert (b["dtype"], b["shape"], b["nbytes"], b["rows_dropped"]) == ("complex128", (4,), 64, 0)
    assert b["file"] != a["file"]


def test_get_member_list_order(store):
    store.save({"c": np.arange(1)})
    store.save({"a": np.arange(1), "b": np.arange(1)})
    store.append({"0": np.arange(1)})
    assert store.get_member_list() == ["c", "a", "b", "0"]
    assert list(store) == ["c", "a", "b", "0"]
    store.drop("a")
    assert store.get_member_list() == ["c", "b", "0"]


def test_get_modify_time(store):
    t0 = time.time_ns() // 1000
    store.save({"a": np.arange(5), "b": np.arange(5)})
    t1 = time.time_ns() // 1000
    ta = store.get_modify_time("a")
    assert isinstance(ta, int)
    assert t0 - 60_000_000 <= ta <= t1 + 60_000_000  # microseconds, not seconds or ns
    tb = store.get_modify_time("b")

    last = ta
    for change in (
        lambda: store.append({"a": np.arange(2)}),
        lambda: store.replace({"a": np.array([9])}, [0]),
        lambda: store.drop("a", [1]),
        lambda: store.save({"a": np.arange(3)}),
    ):
        time.sleep(0.002)  # let the clock move past the previous microsecond
        change()
        now = store.get_modify_time("a")
        assert now > last
        last = now
    assert store.get_modify_time("b") == tb  # another array's changes do not touch it


def test_membership_len_iter_getitem(store):
    store.save({"x": np.arange(3), "y": np.arange(2.0)})
    assert store.has_array("x") and not store.has_array("z")
    assert "x" in store and "y" in store
    assert "z" not in store and 5 not in store and None not in store
    assert len(store) == 2
    assert list(iter(store)) == ["x", "y"]
    assert_same_array(store["y"], np.arange(2.0))
    with pytest.raises(KeyError):
        store["z"]


def test_repr(store):
    store.save({"vec": np.zeros((3, 2))})
    r = repr(store)
    assert "vec" in r and store.backend in r and "(3, 2)" in r
    store.close()
    assert "closed" in repr(store)


# -- lazy arrays ----------------------------------------------------------------------------


def test_lazy_attributes(store):
    base = make_array(np.float32, (6, 4, 2), seed=1)
    store.save({"a": base})
    lazy = store.load("a", lazy=True)
    assert isinstance(lazy, LazyArray)
    assert lazy.shape == (6, 4, 2)
    assert lazy.dtype == np.float32
    assert lazy.ndim == 3
    assert lazy.size == 48
    assert lazy.itemsize == 4
    assert lazy.nbytes == 192
    assert len(lazy) == 6
    assert "a" in repr(lazy) and "(6, 4, 2)" in repr(lazy)
    assert_same_array(lazy.to_numpy(), base)


def test_lazy_asarray_is_zero_copy_and_read_only(store):
    base = np.arange(20, dtype=np.int64).reshape(5, 4)
    store.save({"a": base})
    lazy = store.load("a", lazy=True)
    arr = np.asarray(lazy)
    assert_same_array(arr, base)
    assert not arr.flags.owndata  # a view of the mapped file, not a copy
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0] = 1
    assert_same_array(np.asarray(lazy, dtype=np.float64), base.astype(np.float64))
    copied = np.array(lazy, copy=True)
    assert copied.flags.writeable
    copied[:] = 0
    assert_same_array(store.load("a"), base)


_MASK2 = np.arange(24).reshape(6, 4) % 5 == 0
_MASK3 = make_array(np.bool_, (6, 4, 2), seed=12)

LAZY_KEYS = [
    3, -1, np.int32(2), slice(None), slice(1, None, 2), slice(None, None, -1), slice(10, 20),
    [4, 0, 4], [True, False] * 3, np.array([1, 2]), np.array([], dtype=np.int64),
    np.arange(6) > 2, np.array([[0, 1], [5, 2]]), (), (2, 1), (slice(1, 4), 0),
    ([3, 1], slice(None), 1), (np.arange(6) % 2 == 0, 1, slice(None, None, -1)), (-1, -1, -1),
    (slice(None), [0, 2]), ([0, 2], [1, 3]), ([0, 2], slice(None), [1, 0]),
    (slice(None), [0, 2], [1, 0]), (slice(1, 5), slice(None, None, 2), -1), ([[1], [3]], [0, 2]),
    (4, [1, 2], 0), Ellipsis, (Ellipsis, 0), (0, Ellipsis), (Ellipsis, 1, 0), (1, Ellipsis, 1),
    None, (None, 2), (slice(None), None, 1), (Ellipsis, None), _MASK2, _MASK3, (_MASK2, 0),
]  # fmt: skip


@pytest.mark.parametrize("dropped", [False, True], ids=["plain", "dropped"])
@pytest.mark.parametrize(
    "key", LAZY_KEYS, ids=lambda k: repr(k).replace(" ", "").replace("\n", "")[:40]
)
def test_lazy_indexing(store, key, dropped):
    base = make_array(np.int16, (6, 4, 2), seed=4)
    if dropped:  # the same live rows, with dropped rows around them
        full = np.concatenate([base[:2], base[:1], base[2:], base[:3]])
        store.save({"a": full})
        store.drop("a", [2, 7, 8, 9])
    else:
        store.save({"a": base})
    lazy = store.load("a", lazy=True)
    got = lazy[key]
    expected = base[key]
    assert_same_array(got, expected)
    if isinstance(got, np.ndarray):
        assert got.flags.writeable  # an ndarray of its own, not a view of the mapping
        if got.size:
            assert not np.shares_memory(got, np.asarray(lazy))


@pytest.mark.parametrize(
    "key", [6, -7, (0, 4), (0, 0, 2), (0, 0, 0, 0), (Ellipsis, 2), [0, 6], (slice(None), [4])],
    ids=repr,
)  # fmt: skip
def test_lazy_index_out_of_range(store, key):
    store.save({"a": np.zeros((6, 4, 2), np.int16)})
    lazy = store.load("a", lazy=True)
    with pytest.raises(numpack.RowIndexError):
        lazy[key]


def test_lazy_reshape_transpose_matmul(store):
    base = np.arange(24, dtype=np.float64).reshape(6, 4)
    store.save({"a": base})
    lazy = store.load("a", lazy=True)
    assert_same_array(lazy.reshape(4, 6), base.reshape(4, 6))
    assert_same_array(lazy.reshape(-1), base.reshape(-1))
    assert_same_array(lazy.T, base.T)
    m = np.arange(8.0).reshape(4, 2)
    assert_same_array(lazy @ m, base @ m)
    assert_same_array(m.T @ lazy.T, m.T @ base.T)
    q = np.arange(6.0)
    assert_same_array(q @ lazy, q @ base)


def test_lazy_pickles_by_path(store):
    import pickle

    base = make_array(np.complex64, (5, 2), seed=6)
    store.save({"a": base})
    store.drop("a", [0])
    lazy = store.load("a", lazy=True)
    clone = pickle.loads(pickle.dumps(lazy))
    assert isinstance(clone, LazyArray)
    assert clone.shape == (4, 2) and clone.dtype == np.complex64
    assert_same_array(clone[:], base[1:])
    assert_same_array(np.asarray(clone), base[1:])


def test_lazy_with_dropped_rows(store):
    store.save({"a": np.arange(10, dtype=np.int32)})
    store.drop("a", [0, 9])
    lazy = store.load("a", lazy=True)
    assert "dropped" in repr(lazy)
    assert_same_array(np.asarray(lazy), np.arange(1, 9, dtype=np.int32))
    with pytest.raises(ValueError):
        np.array(lazy, copy=False)  # dropped rows: no single mapping to view


def test_lazy_iteration_and_numpy_functions(store):
    base = make_array(np.float64, (2500, 3), seed=8)
    base[:3] = 1.0  # no NaN/inf, so products are comparable
    store.save({"a": base})
    lazy = store.load("a", lazy=True)
    rows = list(lazy)
    assert len(rows) == 2500
    assert_same_array(np.stack(rows), base)
    q = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(np.inner(q, lazy), np.inner(q, base))
    m = np.arange(6.0).reshape(3, 2)
    np.testing.assert_allclose(lazy @ m, base @ m)
    np.testing.assert_allclose(np.sum(np.asarray(lazy), axis=0), base.sum(axis=0))


def test_lazy_is_a_snapshot(store):
    store.save({"a": np.arange(10), "b": np.arange(4)})
    lazy = store.load("a", lazy=True)
    lazy_b = store.load("b", lazy=True)
    store.append({"a": np.arange(10, 15)})
    store.drop("a", [0, 1])
    assert lazy.shape == (10,)
    assert_same_array(lazy[:], np.arange(10))
    store.save({"b": np.full(7, -1)})  # overwrite: a new file, the old view keeps the old one
    assert lazy_b.shape == (4,)
    assert_same_array(lazy_b[:], np.arange(4))
    assert_same_array(np.asarray(lazy_b), np.arange(4))
    fresh = store.load("a", lazy=True)
    assert_same_array(fresh[:], np.arange(2, 15))


def test_lazy_sees_rows_replaced_in_place(store):
    store.save({"a": np.arange(10)})
    lazy = store.load("a", lazy=True)
    store.replace({"a": np.array([-7])}, [3])
    assert lazy[3] == -7
    assert np.asarray(lazy)[3] == -7


# -- stream_load ----------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch", [(10, 3), (9, 3), (5, 100), (1, 1), (7, 1)])
def test_stream_load(store, n, batch):
    base = make_array(np.uint16, (n, 2), seed=n)
    store.save({"a": base})
    stream = store.stream_load("a", buffer_size=batch)
    assert isinstance(stream, StreamLoader)
    assert len(stream) == -(-n // batch)
    batches = list(stream)
    assert len(batches) == len(stream)
    assert all(len(b) == batch for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= batch
    assert all(b.dtype == np.uint16 and b.shape[1:] == (2,) for b in batches)
    assert_same_array(np.concatenate(batches), base)
    assert_same_array(np.concatenate(list(stream)), base)  # iterable again


def test_stream_load_default_batch(store):
    store.save({"a": np.arange(2500, dtype=np.int32)})
    stream = store.stream_load("a")
    assert len(stream) == 3
    assert [len(b) for b in stream] == [1000, 1000, 500]


# -- reset, close, reopen, several handles --------------------------------------------------


def test_reset(store):
    store.save({"a": np.arange(3), "b": np.arange(4)})
    store.drop("a", [0])
    store.reset()
    assert store.get_member_list() == [] and len(store) == 0
    assert data_files(store.path) == []
    with pytest.raises(ArrayNotFoundError):
        store.load("a")
    store.save({"a": np.arange(2, dtype=np.int8)})
    assert_same_array(store.load("a"), np.arange(2, dtype=np.int8))


def test_drop_if_exists(backend, store_path):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(3)})
    with NumPack(store_path, backend=backend) as npk:
        assert npk.get_member_list() == ["a"]
    with NumPack(store_path, drop_if_exists=True, backend=backend) as npk:
        assert npk.get_member_list() == []
        npk.save({"b": np.arange(2)})
    with NumPack(store_path, backend=backend) as npk:
        assert npk.get_member_list() == ["b"]
    with NumPack(store_path.parent / "fresh", drop_if_exists=True, backend=backend) as npk:
        assert npk.get_member_list() == []


CALLS_AFTER_CLOSE = {
    "save": lambda s: s.save({"b": np.arange(2)}),
    "load": lambda s: s.load("a"),
    "load_lazy": lambda s: s.load("a", lazy=True),
    "append": lambda s: s.append({"a": np.arange(2)}),
    "replace": lambda s: s.replace({"a": np.arange(1)}, [0]),
    "drop": lambda s: s.drop("a"),
    "drop_rows": lambda s: s.drop("a", [0]),
    "compact": lambda s: s.compact(),
    "getitem": lambda s: s.getitem("a", [0]),
    "get_shape": lambda s: s.get_shape(),
    "get_shape_name": lambda s: s.get_shape("a"),
    "get_metadata": lambda s: s.get_metadata(),
    "get_member_list": lambda s: s.get_member_list(),
    "get_modify_time": lambda s: s.get_modify_time("a"),
    "has_array": lambda s: s.has_array("a"),
    "contains": lambda s: "a" in s,
    "len": lambda s: len(s),
    "iter": lambda s: list(s),
    "getitem_op": lambda s: s["a"],
    "stream_load": lambda s: s.stream_load("a"),
    "reset": lambda s: s.reset(),
}


@pytest.mark.parametrize("call", list(CALLS_AFTER_CLOSE))
def test_closed_store_raises(backend, store_path, call):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(3)})
    npk.close()
    npk.close()  # idempotent
    with pytest.raises(StoreClosedError) as ei:
        CALLS_AFTER_CLOSE[call](npk)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, NumPackError)
    with NumPack(store_path, backend=backend) as again:  # the data is untouched
        assert_same_array(again.load("a"), np.arange(3))


def test_context_manager(backend, store_path):
    with NumPack(store_path, backend=backend) as npk:
        assert isinstance(npk, NumPack)
        npk.save({"a": np.arange(4)})
    with pytest.raises(StoreClosedError):
        npk.load("a")
    with NumPack(store_path, backend=backend) as npk:
        assert_same_array(npk.load("a"), np.arange(4))


def test_without_close(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(4)})
    del npk
    other = NumPack(store_path, backend=backend)
    assert_same_array(other.load("a"), np.arange(4))
    other.close()


def test_reopen_sees_everything(backend, store_path):
    a = make_array(np.float16, (6, 2), seed=1)
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": a, "b": np.arange(3, dtype=np.uint64), "c": np.arange(2)})
        npk.append({"a": a[:2], "d": np.array([True])})
        npk.replace({"b": np.array([9], np.uint64)}, [1])
        npk.drop("a", [0])
        npk.drop("c")
        t = npk.get_modify_time("b")
    expected_a = np.concatenate([a, a[:2]])[1:]
    with NumPack(store_path, backend=backend) as npk:
        assert npk.get_member_list() == ["a", "b", "d"]
        assert_same_array(npk.load("a"), expected_a)
        assert_same_array(npk.load("b"), np.array([0, 9, 2], np.uint64))
        assert_same_array(npk.load("d"), np.array([True]))
        assert npk.get_shape() == {"a": (7, 2), "b": (3,), "d": (1,)}
        assert npk.get_modify_time("b") == t


def test_two_handles_see_each_other(backend, store_path):
    one = NumPack(store_path, backend=backend)
    two = NumPack(store_path, backend=backend)
    try:
        assert two.get_member_list() == []
        one.save({"a": np.arange(5)})
        assert two.get_member_list() == ["a"]
        assert_same_array(two.load("a"), np.arange(5))
        two.append({"a": np.arange(5, 8)})
        assert one.get_shape("a") == (8,)
        assert_same_array(one.load("a"), np.arange(8))
        one.replace({"a": np.array([-1])}, [0])
        assert two.getitem("a", 0) == -1
        two.drop("a", [1])
        assert_same_array(one.load("a"), np.array([-1, 2, 3, 4, 5, 6, 7]))
        one.save({"b": np.arange(2)})
        two.save({"c": np.arange(3)})  # neither loses the other's array
        assert one.get_member_list() == ["a", "b", "c"]
        assert two.get_member_list() == ["a", "b", "c"]
        one.drop("a")
        assert "a" not in two
        with pytest.raises(ArrayNotFoundError):
            two.load("a")
        two.compact()
        assert_same_array(one.load("c"), np.arange(3))
        one.reset()
        assert len(two) == 0
    finally:
        one.close()
        two.close()


def test_public_names():
    for name in numpack.__all__:
        assert hasattr(numpack, name)
