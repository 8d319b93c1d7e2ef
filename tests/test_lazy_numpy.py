"""LazyArray against NumPy: generated index expressions, the GIL during a gather, pickling
into other processes and dask, and what a LazyArray shows after each kind of write."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest
from helpers import assert_same_array, require_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numpack import NumPack

SHAPE = (7, 4, 3)


def _axis_index(draw, n: int):
    """One index for an axis of length n: int, slice with a step, list, int array or mask."""
    kind = draw(st.sampled_from(["int", "slice", "list", "array", "mask"]))
    if kind == "int":
        return draw(st.integers(-n, n - 1))
    if kind == "slice":
        bound = st.one_of(st.none(), st.integers(-n - 2, n + 2))
        step = draw(st.one_of(st.none(), st.integers(-3, 3).filter(lambda s: s != 0)))
        return slice(draw(bound), draw(bound), step)
    rows = st.lists(st.integers(-n, n - 1), min_size=0, max_size=6)
    if kind == "list":
        return draw(rows)
    if kind == "array":
        return np.array(draw(rows), dtype=np.int64)
    return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))


@st.composite
def index_expressions(draw):
    """A NumPy index expression over SHAPE, with Ellipsis and None mixed in."""
    parts = [_axis_index(draw, n) for n in SHAPE[: draw(st.integers(1, len(SHAPE)))]]
    arrays = [p for p in parts if isinstance(p, (list, np.ndarray))]
    if len(arrays) > 1:  # several index arrays must broadcast together: keep one
        parts = [
            p if not isinstance(p, (list, np.ndarray)) or p is arrays[0] else slice(None)
            for p in parts
        ]
    if draw(st.booleans()) and len(parts) < len(SHAPE):
        parts.insert(draw(st.integers(0, len(parts))), Ellipsis)
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), None)
    return tuple(parts) if len(parts) > 1 or draw(st.booleans()) else parts[0]


@pytest.mark.parametrize("dropped", [False, True], ids=["plain", "dropped"])
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(key=index_expressions())
def test_index_expressions_match_numpy(store, dropped, key):
    expected_base = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE)
    if dropped:  # the same live rows with dropped rows between them
        store.save(
            {"a": np.concatenate([expected_base[:3], -expected_base[:2], expected_base[3:]])}
        )
        store.drop("a", [3, 4])
    else:
        store.save({"a": expected_base})
    lazy = store.load("a", lazy=True)
    try:
        expected = expected_base[key]
    except IndexError:
        with pytest.raises(IndexError):
            lazy[key]
        return
    got = lazy[key]
    assert_same_array(got, expected)


def test_gather_releases_the_gil(tmp_path):
    """Another Python thread runs while the rust backend gathers rows."""
    require_backend("rust")
    npk = NumPack(tmp_path / "s", backend="rust")
    npk.save({"a": np.ones((250_000, 64), dtype=np.float32)})
    view = npk.load("a", lazy=True)._view
    rows = np.random.default_rng(0).integers(0, 250_000, size=2_000_000)
    out = np.empty((len(rows), 64), dtype=np.float32)
    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    t = threading.Thread(target=tick)
    t.start()
    time.sleep(0.05)
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        view.gather(rows, out.reshape(-1).view(np.uint8))
        rounds.append((start, time.perf_counter()))
    stop.set()
    t.join()
    during = sum(1 for x in ticks for a, b in rounds if a < x < b)
    assert during > 0, "no other thread ran during the gathers: the GIL was held"
    npk.close()


def _total(lazy) -> float:
    return float(np.asarray(lazy, dtype=np.float64).sum())


def test_lazy_in_a_process_pool(store):
    arr = np.arange(600, dtype=np.float32).reshape(200, 3)
    store.save({"a": arr})
    store.drop("a", [0])
    lazy = store.load("a", lazy=True)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        totals = pool.map(_total, [lazy, lazy])
    assert totals == [float(arr[1:].sum())] * 2


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_lazy_as_a_dask_source(store, scheduler):
    da = pytest.importorskip("dask.array")
    arr = np.random.default_rng(1).standard_normal((300, 8))
    store.save({"a": arr})
    lazy = store.load("a", lazy=True)
    x = da.from_array(lazy, chunks=(64, 8))
    got = (x * 2).sum(axis=0).compute(scheduler=scheduler)
    np.testing.assert_allclose(got, (arr * 2).sum(axis=0))


@pytest.mark.parametrize("write", ["replace", "append", "drop_rows", "save", "drop", "compact"])
def test_lazy_after_a_write(store, write):
    """The documented snapshot rule: in-place replaces show, everything else keeps the old rows."""
    arr = np.arange(40, dtype=np.int32).reshape(10, 4)
    store.save({"a": arr})
    if write == "compact":
        store.drop("a", [9])
    lazy = store.load("a", lazy=True)
    before = lazy[:]
    expected = before.copy()
    if write == "replace":
        store.replace({"a": np.full((1, 4), -1, np.int32)}, [2])
        expected[2] = -1
    elif write == "append":
        store.append({"a": np.full((3, 4), 7, np.int32)})
    elif write == "drop_rows":
        store.drop("a", [0, 1])
    elif write == "save":
        store.save({"a": np.zeros((2, 4), np.int32)})
    elif write == "drop":
        store.drop("a")
    else:
        store.compact()
    assert lazy.shape == before.shape
    assert_same_array(lazy[:], expected)
    assert_same_array(np.asarray(lazy), expected)
    assert_same_array(lazy[[0, -1]], expected[[0, -1]])
