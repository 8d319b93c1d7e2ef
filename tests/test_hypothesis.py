"""Property tests: a store behaves like a dict of NumPy arrays, for every dtype and shape."""

from __future__ import annotations

import tempfile

import hypothesis.strategies as st
import numpy as np
from helpers import DTYPES, assert_same_array
from hypothesis import HealthCheck, given, settings
from hypothesis.extra.numpy import arrays

from numpack import NumPack

# The `backend` fixture is just a string; a fresh directory is made inside each example.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

dtypes = st.sampled_from(DTYPES)
row_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def stored_arrays(draw, dtype=None, row_shape=None, max_rows=6):
    dtype = draw(dtypes) if dtype is None else dtype
    row_shape = draw(row_shapes) if row_shape is None else row_shape
    n = draw(st.integers(0, max_rows))
    return draw(arrays(dtype, (n,) + tuple(row_shape)))


def index_for(n: int, scalar: bool = True):
    """Row selections NumPy accepts for n rows: int, list, int array, slice, boolean mask."""
    ints = st.integers(-n, n - 1) if n else st.nothing()
    options = [
        st.lists(ints, max_size=6) if n else st.just([]),
        st.lists(ints, max_size=6).map(lambda v: np.array(v, dtype=np.int64))
        if n
        else st.just(np.array([], dtype=np.int64)),
        st.builds(
            slice,
            st.none() | st.integers(-n - 2, n + 2),
            st.none() | st.integers(-n - 2, n + 2),
            st.none() | st.integers(-3, 3).filter(bool),
        ),
        arrays(np.bool_, (n,)),
    ]
    if n and scalar:
        options.append(ints)
        options.append(ints.map(np.int32))
    return st.one_of(options)


def _new_store(tmp: str, backend: str) -> NumPack:
    return NumPack(tmp + "/store", backend=backend)


@fixture_ok
@given(arr=stored_arrays())
def test_save_load(backend, arr):
    with tempfile.TemporaryDirectory() as tmp, _new_store(tmp, backend) as npk:
        npk.save({"x": arr})
        out = npk.load("x")
        assert_same_array(out, arr)
        assert out.tobytes() == arr.tobytes()
        assert npk.get_shape("x") == arr.shape
        lazy = npk.load("x", lazy=True)
        assert lazy.shape == arr.shape and lazy.dtype == arr.dtype
        assert_same_array(np.asarray(lazy), arr)
        with _new_store(tmp, backend) as again:
            assert_same_array(again.load("x"), arr)


@fixture_ok
@given(data=st.data())
def test_getitem(backend, data):
    arr = data.draw(stored_arrays(max_rows=10))
    with tempfile.TemporaryDirectory() as tmp, _new_store(tmp, backend) as npk:
        npk.save({"x": arr})
        for _ in range(3):
            idx = data.draw(index_for(len(arr)))
            assert_same_array(npk.getitem("x", idx), arr[idx])
            assert_same_array(npk.load("x", lazy=True)[idx], arr[idx])


@fixture_ok
@given(data=st.data())
def test_append(backend, data):
    first = data.draw(stored_arrays())
    with tempfile.TemporaryDirectory() as tmp, _new_store(tmp, backend) as npk:
        npk.append({"x": first})  # creates it
        expected = first
        for _ in range(data.draw(st.integers(1, 3))):
            rows = data.draw(stored_arrays(first.dtype, first.shape[1:], max_rows=4))
            npk.append({"x": rows})
            expected = np.concatenate([expected, rows])
            assert_same_array(npk.load("x"), expected)


@fixture_ok
@given(data=st.data())
def test_replace(backend, data):
    arr = data.draw(stored_arrays(max_rows=8))
    with tempfile.TemporaryDirectory() as tmp, _new_store(tmp, backend) as npk:
        npk.save({"x": arr})
        expected = arr.copy()
        idx = data.draw(index_for(len(arr)))
        target = expected[idx]
        if data.draw(st.booleans(), label="one row broadcast") and np.ndim(target) > arr.ndim - 1:
            rows = data.draw(arrays(arr.dtype, arr.shape[1:]))
        else:
            rows = data.draw(arrays(arr.dtype, np.shape(target)))
        npk.replace({"x": rows}, idx)
        expected[idx] = rows
        assert_same_array(npk.load("x"), expected)


@fixture_ok
@given(data=st.data())
def test_drop_rows(backend, data):
    arr = data.draw(stored_arrays(max_rows=8))
    with tempfile.TemporaryDirectory() as tmp, _new_store(tmp, backend) as npk:
        npk.save({"x": arr})
        live = arr
        for _ in range(data.draw(st.integers(1, 3))):
            idx = data.draw(index_for(len(live)))
            npk.drop("x", idx)
            keep = np.ones(len(live), dtype=bool)
            keep[np.arange(len(live))[idx]] = False
            live = live[keep]
            assert_same_array(npk.load("x"), live)
            assert npk.get_shape("x") == live.shape
        batches = list(npk.stream_load("x", buffer_size=data.draw(st.integers(1, 4))))
        assert_same_array(np.concatenate(batches) if batches else live[:0], live)


@fixture_ok
@given(data=st.data())
def test_against_a_numpy_model(backend, data):
    """A random sequence of calls on two arrays, checked against plain NumPy after each."""
    model = {name: data.draw(stored_arrays(), label=name) for name in ("p", "q")}
    with tempfile.TemporaryDirectory() as tmp:
        npk = _new_store(tmp, backend)
        try:
            npk.save(model)
            for _ in range(data.draw(st.integers(1, 8), label="steps")):
                name = data.draw(st.sampled_from(sorted(model)), label="array")
                cur = model[name]
                op = data.draw(st.sampled_from(
                    ["append", "replace", "drop_rows", "compact", "save", "drop", "reopen"]
                ), label="op")  # fmt: skip
                if op == "append":
                    rows = data.draw(stored_arrays(cur.dtype, cur.shape[1:], max_rows=3))
                    npk.append({name: rows})
                    model[name] = np.concatenate([cur, rows])
                elif op == "replace":
                    idx = data.draw(index_for(len(cur)), label="rows")
                    rows = data.draw(arrays(cur.dtype, np.shape(cur[idx])))
                    npk.replace({name: rows}, idx)
                    cur[idx] = rows
                elif op == "drop_rows":
                    idx = data.draw(index_for(len(cur)), label="rows")
                    npk.drop(name, idx)
                    keep = np.ones(len(cur), dtype=bool)
                    keep[np.arange(len(cur))[idx]] = False
                    model[name] = cur[keep]
                elif op == "compact":
                    npk.compact()
                elif op == "save":
                    new = data.draw(stored_arrays())
                    npk.save({name: new})
                    model[name] = new.copy()
                elif op == "drop":
                    npk.drop(name)
                    del model[name]
                    new = data.draw(stored_arrays())
                    npk.append({name: new})  # back, at the end of the member list
                    model[name] = new.copy()
                else:
                    npk.close()
                    npk = _new_store(tmp, backend)
                assert sorted(npk.get_member_list()) == sorted(model)
                for n, expected in model.items():
                    assert_same_array(npk.load(n), expected)
                    assert npk.get_shape(n) == expected.shape
                if len(model[name]):
                    idx = data.draw(index_for(len(model[name])), label="read")
                    assert_same_array(npk.getitem(name, idx), model[name][idx])
        finally:
            npk.close()
