"""numpack.top_k against brute-force NumPy: every metric, dtype and k, stores on both backends
(raw, compressed, dropped rows, empty), ties, NaN, bad input, and NumPack 0.7's wrappers."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import numpack
from numpack import (
    DTypeError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPack,
    ShapeMismatchError,
    _search,
)
from numpack.vector_engine import StreamingVectorEngine, VectorEngine

FLOAT_METRICS = ("dot", "cosine", "l2", "l2sq")
BINARY_METRICS = ("hamming", "jaccard")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
ROWS, DIM = 60, 8


def brute_force(queries, data, metric: str) -> np.ndarray:
    """Scores of every (query, row) by the metric's definition, in float64."""
    q, x = np.atleast_2d(queries), np.asarray(data)
    if metric in BINARY_METRICS:
        qb = np.unpackbits(q.astype(np.uint8), axis=1).astype(bool)[:, None]
        xb = np.unpackbits(x, axis=1).astype(bool)[None]
        if metric == "hamming":
            return (qb ^ xb).sum(-1).astype(np.float64)
        both, either = (qb & xb).sum(-1), (qb | xb).sum(-1)
        return 1 - np.divide(both, either, out=np.ones(both.shape), where=either > 0)
    q, x = q.astype(np.float64), x.astype(np.float64)
    if metric == "dot":
        return q @ x.T
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        xn = np.linalg.norm(x, axis=1)
        return (q @ x.T) / np.where(qn == 0, 1, qn) / np.where(xn == 0, 1, xn)
    sq = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    return np.sqrt(sq) if metric == "l2" else sq


def expected(queries, data, k: int, metric: str):
    """Brute-force top k: stable sort (ties to the lower index), NaN last."""
    scores = brute_force(queries, data, metric)
    cost = -scores if metric in ("dot", "cosine") else scores
    idx = np.argsort(cost, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(scores, idx, axis=1)


def check(got, queries, data, k: int, metric: str, exact: bool, rtol: float = 1e-5) -> None:
    """`got` is the brute-force answer: the same indices when `exact`, else the same score
    sequence and each index's true score (near-equal scores may swap under rounding)."""
    idx, scores = got
    single = np.ndim(queries) == 1
    e_idx, e_scores = expected(queries, data, k, metric)
    k_eff = min(k, len(data))
    assert idx.shape == scores.shape == ((k_eff,) if single else (len(e_idx), k_eff))
    assert idx.dtype == np.int64
    idx, scores = np.atleast_2d(idx), np.atleast_2d(scores)
    atol = rtol * max(1.0, float(np.nanmax(np.abs(e_scores), initial=0)))
    np.testing.assert_allclose(scores, e_scores, rtol=rtol, atol=atol)
    if exact:
        np.testing.assert_array_equal(idx, e_idx)
    else:
        true = np.take_along_axis(brute_force(queries, data, metric), idx, axis=1)
        np.testing.assert_allclose(scores, true, rtol=rtol, atol=atol)
        assert all(len(set(row)) == len(row) for row in idx.tolist())


@pytest.fixture(params=[False, True], ids=["one-block", "many-blocks"])
def blocks(request, monkeypatch):
    """The default block sizes, and blocks of a few rows, so the running merge is exercised."""
    if request.param:
        monkeypatch.setattr(_search, "BLOCK_BYTES", 5 * DIM * 8)
        monkeypatch.setattr(_search, "SCORE_BYTES", 3 * 4 * 8)
        monkeypatch.setattr(_search, "_CHUNK_BYTES", 2 * DIM * 8)  # one query: threads


def integer_data(rng, rows=ROWS, dim=DIM, dtype=np.float32):
    """Small integers: every product and sum is exact, so ties are exact too."""
    return rng.integers(-3, 4, size=(rows, dim)).astype(dtype)


# -- equal to brute force --------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, ROWS, ROWS + 7])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("metric", FLOAT_METRICS)
def test_float_metrics_match_brute_force(blocks, metric, dtype, k):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((ROWS, DIM)).astype(dtype)
    queries = rng.standard_normal((3, DIM)).astype(dtype)
    rtol = 2e-3 if dtype == np.float16 else 1e-5  # float16 data: queries rounded the same way
    got = numpack.top_k(queries, data, k, metric)
    check(got, queries, data, k, metric, exact=False, rtol=rtol)
    single = numpack.top_k(queries[1], data, k, metric)
    np.testing.assert_array_equal(single[0], got[0][1])
    assert single[1].dtype == (np.float64 if dtype == np.float64 else np.float32)


@pytest.mark.parametrize("k", [1, 4, ROWS, ROWS + 1])
@pytest.mark.parametrize("metric", ["dot", "l2sq"])
def test_exact_metrics_rank_exactly_with_ties_to_the_lower_index(blocks, metric, k):
    rng = np.random.default_rng(1)
    data = integer_data(rng, dim=2)  # many duplicate rows and equal scores
    queries = integer_data(rng, rows=4, dim=2)
    check(numpack.top_k(queries, data, k, metric), queries, data, k, metric, exact=True)


@pytest.mark.parametrize("k", [1, 6, ROWS, ROWS + 2])
@pytest.mark.parametrize("metric", BINARY_METRICS)
def test_binary_metrics_match_brute_force(blocks, metric, k):
    rng = np.random.default_rng(2)
    data = np.packbits(rng.random((ROWS, 12)) < 0.3, axis=1)  # 2 bytes a row, ties galore
    data[5] = 0  # an empty set: jaccard 0 against the empty query
    queries = np.vstack(
        [np.packbits(rng.random((2, 12)) < 0.3, axis=1), np.zeros((1, 2), np.uint8)]
    )
    check(numpack.top_k(queries, data, k, metric), queries, data, k, metric, exact=True)
    check(numpack.top_k(list(data[0]), data, k, metric), data[0], data, k, metric, exact=True)


def test_zero_vectors_have_cosine_zero():
    data = np.array([[0, 0], [1, 0], [0, 0], [-1, 0]], dtype=np.float32)
    idx, scores = numpack.top_k([1, 0], data, 4, "cosine")
    np.testing.assert_array_equal(idx, [1, 0, 2, 3])
    np.testing.assert_array_equal(scores, [1, 0, 0, -1])
    idx, scores = numpack.top_k([0, 0], data, 4, "cosine")  # a zero query ties everything
    np.testing.assert_array_equal(idx, [0, 1, 2, 3])
    np.testing.assert_array_equal(scores, 0)


@pytest.mark.parametrize("metric", FLOAT_METRICS)
def test_nan_in_data_ranks_last(blocks, metric):
    rng = np.random.default_rng(3)
    data = integer_data(rng)
    data[[3, 17, 40]] = np.nan
    data[25, 0] = np.inf  # inf - inf and 0 * inf are NaN as well in some metrics
    idx, scores = numpack.top_k(integer_data(rng, rows=2), data, ROWS, metric)
    finite = np.isfinite(scores)
    assert finite[:, :-4].all() and np.isnan(scores[:, -3:]).all(), scores
    for row_idx, row_scores in zip(idx, scores):
        nan = np.flatnonzero(np.isnan(row_scores))
        np.testing.assert_array_equal(row_idx[nan], np.sort(row_idx[nan]))  # in index order
        assert {3, 17, 40} <= set(row_idx[nan].tolist())


def test_nan_in_data_stays_out_while_numbers_remain(monkeypatch):
    monkeypatch.setattr(_search, "SCORE_BYTES", 10 * 4)  # blocks of 10 rows
    data = np.ones((50, 2), dtype=np.float32)
    data[:45] = np.nan  # the first blocks fill the top k with NaN, later ones replace them
    idx, scores = numpack.top_k([1, 1], data, 5, "dot")
    np.testing.assert_array_equal(idx, [45, 46, 47, 48, 49])
    np.testing.assert_array_equal(scores, 2)


def test_later_better_blocks_and_wide_batches(monkeypatch):
    """Rows that improve down the array: every block beats the top k so far."""
    monkeypatch.setattr(_search, "SCORE_BYTES", 33 * 10 * 4)  # blocks of 10 rows
    data = np.repeat(np.arange(200, dtype=np.float32)[:, None], 4, axis=1)
    queries = np.ones((33, 4), dtype=np.float32)
    idx, _ = numpack.top_k(queries, data, 12, "dot")
    np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(199, 187, -1), (33, 12)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_searches_with_threads_of_its_own(monkeypatch):
    monkeypatch.setattr(_search, "_CHUNK_BYTES", 64)  # many chunks: the thread pool runs
    data = integer_data(np.random.default_rng(9))
    want = numpack.top_k(data[0], data, 5)  # the parent's pool has threads now
    pid = os.fork()
    if pid == 0:  # the child: its pool's threads did not come along
        signal.alarm(20)  # a hang kills the child instead of the test run
        got = numpack.top_k(data[0], data, 5)
        os._exit(0 if np.array_equal(got[0], want[0]) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_array_likes_and_odd_layouts():
    rng = np.random.default_rng(4)
    base = integer_data(rng, dim=2 * DIM)
    data = base[::-1, ::2]  # neither C- nor F-contiguous
    q = integer_data(rng, rows=1)[0]
    want = numpack.top_k(q, np.ascontiguousarray(data), 7)
    for src in (data, data.tolist(), data.astype(">f4")):
        got = numpack.top_k(q.tolist(), src, 7)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_empty_data_and_no_queries():
    data = np.empty((0, 3), dtype=np.float32)
    idx, scores = numpack.top_k([1, 2, 3], data, 5)
    assert idx.shape == scores.shape == (0,) and idx.dtype == np.int64
    idx, scores = numpack.top_k(np.ones((4, 3)), data, 5, "l2")
    assert idx.shape == scores.shape == (4, 0)
    idx, scores = numpack.top_k(np.empty((0, 3)), np.ones((5, 3)), 2)
    assert idx.shape == scores.shape == (0, 2)


# -- stores, both backends -------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["dot", "cosine", "l2", "l2sq", "hamming"])
@pytest.mark.parametrize("kind", ["raw", "compressed", "dropped", "compressed-dropped"])
def test_lazy_arrays_match_brute_force(store, blocks, kind, metric):
    rng = np.random.default_rng(5)
    if metric == "hamming":
        arr = np.packbits(rng.random((ROWS, 16)) < 0.5, axis=1)
        queries = np.packbits(rng.random((3, 16)) < 0.5, axis=1)
    else:
        arr = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        queries = rng.standard_normal((3, DIM)).astype(np.float32)
    if "compressed" in kind:
        store.save({"a": arr}, compress=True, block_rows=7)
    else:
        store.save({"a": arr})
    live = arr
    if "dropped" in kind:
        gone = [0, 9, 10, 33, ROWS - 1]
        store.drop("a", gone)
        live = np.delete(arr, gone, axis=0)
    lazy = store.load("a", lazy=True)
    for k in (1, 8, len(live), len(live) + 5):
        got = numpack.top_k(queries, lazy, k, metric)
        check(got, queries, live, k, metric, exact=metric == "hamming")
        # One query is a matrix-vector product, a batch a matrix product: BLAS may round the
        # two differently in the last place.
        short = lazy.top_k(queries[0], k, metric)
        np.testing.assert_array_equal(short[0], got[0][0])
        np.testing.assert_allclose(short[1], got[1][0], rtol=1e-6, atol=1e-6)


def test_empty_and_emptied_lazy_arrays(store):
    store.save({"e": np.empty((0, 4), dtype=np.float32), "d": np.ones((3, 4), np.float32)})
    store.drop("d", [0, 1, 2])
    for name in ("e", "d"):
        idx, scores = store.load(name, lazy=True).top_k(np.ones(4), 3)
        assert idx.shape == scores.shape == (0,)


def test_float16_store(store, blocks):
    rng = np.random.default_rng(6)
    arr = integer_data(rng, dtype=np.float16)
    store.save({"h": arr}, compress=True)
    q = integer_data(rng, rows=2)
    got = store.load("h", lazy=True).top_k(q, 9, "l2sq")
    check(got, q, arr, 9, "l2sq", exact=True)
    assert got[1].dtype == np.float32


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queries", "data", "k", "metric", "error"),
    [
        (np.ones(3), np.ones(3), 1, "dot", ShapeMismatchError),  # 1-D data
        (np.ones(3), np.ones((2, 2, 3)), 1, "dot", ShapeMismatchError),
        (1.0, np.ones((2, 3)), 1, "dot", ShapeMismatchError),  # 0-D query
        (np.ones((1, 1, 3)), np.ones((2, 3)), 1, "dot", ShapeMismatchError),
        (np.ones(4), np.ones((2, 3)), 1, "dot", ShapeMismatchError),  # length mismatch
        (np.ones(4), np.empty((0, 3)), 1, "dot", ShapeMismatchError),
        (np.ones(3), np.ones((2, 3)), 1, "manhattan", InvalidArgumentError),
        (np.ones(3), np.ones((2, 3)), 1, "kl", InvalidArgumentError),
        (np.ones(3), np.ones((2, 3)), 1, None, InvalidTypeError),
        (np.ones(3), np.ones((2, 3)), 0, "dot", InvalidArgumentError),
        (np.ones(3), np.ones((2, 3)), -2, "dot", InvalidArgumentError),
        (np.ones(3), np.ones((2, 3)), 1.5, "dot", InvalidTypeError),
        (np.ones(3), np.ones((2, 3)), True, "dot", InvalidTypeError),
        (np.ones(3), np.ones((2, 3)), "3", "dot", InvalidTypeError),
        ([1, np.nan, 0], np.ones((2, 3)), 1, "dot", InvalidArgumentError),
        ([1, np.inf, 0], np.ones((2, 3)), 1, "cosine", InvalidArgumentError),
        ([1e39, 0, 0], np.ones((2, 3), np.float32), 1, "dot", InvalidArgumentError),
        (np.ones(3), np.ones((2, 3), dtype=np.int64), 1, "dot", DTypeError),
        (np.ones(3), np.ones((2, 3), dtype=np.complex64), 1, "dot", DTypeError),
        (np.ones(3, dtype=complex), np.ones((2, 3)), 1, "dot", DTypeError),
        (["a", "b", "c"], np.ones((2, 3)), 1, "dot", DTypeError),
        (np.ones(3), np.ones((2, 3)), 1, "hamming", DTypeError),  # float rows
        (np.ones(2, np.float32), np.ones((2, 2), np.uint8), 1, "jaccard", DTypeError),
        ([256, 0], np.ones((2, 2), np.uint8), 1, "hamming", DTypeError),
        ([[1, 2], [3]], np.ones((2, 2)), 1, "dot", InvalidArgumentError),  # ragged
        (np.ones(2), [[1, 2], [3]], 1, "dot", InvalidArgumentError),
    ],
)
def test_bad_input_raises_the_documented_class(queries, data, k, metric, error):
    with pytest.raises(error):
        numpack.top_k(queries, data, k, metric)


def test_errors_are_numpack_errors_and_builtins(store):
    store.save({"a": np.ones((4, 3), dtype=np.int32)})
    lazy = store.load("a", lazy=True)
    with pytest.raises(numpack.NumPackError):
        lazy.top_k(np.ones(3), 2)
    with pytest.raises(ValueError):
        numpack.top_k([np.nan] * 3, np.ones((4, 3)), 2)
    with pytest.raises(TypeError):
        numpack.top_k(np.ones(3), np.ones((4, 3)), 2.0)


# -- NumPack 0.7's names ---------------------------------------------------------------------


def test_vector_engine_returns_0_7_conventions():
    rng = np.random.default_rng(7)
    data = rng.standard_normal((40, DIM)).astype(np.float32)
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    engine = VectorEngine()
    idx, scores = engine.top_k_search(queries[0], data, "cosine", k=5)
    assert idx.dtype == np.uint64 and scores.dtype == np.float64 and idx.shape == (5,)
    want = numpack.top_k(queries[0], data, 5, "cosine")
    np.testing.assert_array_equal(idx, want[0])
    flat_idx, flat_scores = engine.multi_query_top_k(queries, data, "L2", 4)
    assert flat_idx.shape == flat_scores.shape == (12,)
    np.testing.assert_array_equal(flat_idx.reshape(3, 4), numpack.top_k(queries, data, 4, "l2")[0])
    for alias in ("inner_product", "dot_product", "DotProduct", "inner"):
        np.testing.assert_array_equal(engine.top_k_search(queries[1], data, alias, 3)[0],
                                      numpack.top_k(queries[1], data, 3)[0])  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="kl"):
        engine.top_k_search(queries[0], data, "kl", 3)


def test_streaming_vector_engine_reads_a_store(store_path, backend, monkeypatch):
    monkeypatch.setenv("NUMPACK_BACKEND", backend)
    rng = np.random.default_rng(8)
    data = rng.standard_normal((50, DIM)).astype(np.float32)
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"emb": data})
    q = rng.standard_normal(DIM).astype(np.float32)
    idx, scores = StreamingVectorEngine().streaming_top_k_from_file(
        q, str(store_path), "emb", "euclidean", k=6, batch_size=7
    )
    assert idx.dtype == np.uint64 and scores.dtype == np.float64
    np.testing.assert_array_equal(idx, numpack.top_k(q, data, 6, "l2")[0])
    with pytest.raises(numpack.ArrayNotFoundError):
        StreamingVectorEngine().streaming_top_k_from_file(q, str(store_path), "nope", "dot", 3)
    with pytest.raises(numpack.StoreIOError):
        StreamingVectorEngine().streaming_top_k_from_file(
            q, str(store_path / "missing"), "emb", "dot", 3
        )
