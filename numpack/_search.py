"""Exact top-k similarity search, streamed over blocks of rows.

`top_k` scores every row (exhaustive, not approximate) one block at a time, so memory stays
bounded whatever the array's size: a block is a zero-copy slice of the file's mapping for a raw
LazyArray without dropped rows, and a read of those rows otherwise (compressed arrays decode
only the blocks they touch). A batch of queries is one matrix product per block (BLAS, every
core); one query, bound by memory bandwidth, is NumPy's vecdot over cache-sized chunks on a
thread per core. Each query keeps a running top k.

Ranking, for every metric: best first; equal scores go to the lower row index; NaN scores
(from NaN or infinite values in the data) rank after every number.
"""

from __future__ import annotations

import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from ._errors import DTypeError, InvalidArgumentError, InvalidTypeError, ShapeMismatchError
from ._lazy import LazyArray

METRICS = ("dot", "cosine", "l2", "l2sq", "hamming", "jaccard")
SIMILARITIES = frozenset({"dot", "cosine"})  # larger is better; the others are distances
BINARY = frozenset({"hamming", "jaccard"})  # on bit-packed uint8 rows

# Rows are scored a block at a time; a block's scores take at most SCORE_BYTES. A block that
# is read or converted into memory (compressed rows, dropped rows, float16, unpacked bits)
# takes at most BLOCK_BYTES. Any other block is a zero-copy slice of a mapping, which costs no
# memory, and fewer, larger calls are faster (each one wakes the threads).
SCORE_BYTES = 8 << 20
BLOCK_BYTES = 8 << 20

# In a block after the first, only scores better than a query's current k-th best need merging;
# above this many per query and per k, selecting in the block is cheaper than merging them all.
_SPARSE_MERGE_LIMIT = 4

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def top_k(
    queries: npt.ArrayLike, data: Any, k: int, metric: str = "dot"
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows of `data` most similar to each query, exactly: `(indices, scores)`.

    `queries` is one vector (results are 1-D, length `min(k, rows)`) or a 2-D batch (results
    `(n_queries, min(k, rows))`). `data` is a 2-D LazyArray (raw or compressed; with dropped
    rows, indices are the row numbers the LazyArray shows), an ndarray, or anything NumPy
    accepts. Results are best first: largest score for "dot" and "cosine", smallest distance
    for "l2", "l2sq", "hamming" and "jaccard"; equal scores go to the lower index; NaN scores
    rank last. Indices are int64.

    Float metrics ("dot", "cosine", "l2", "l2sq") take float16, float32 or float64 data and
    compute in float32 (float64 for float64 data), which is also the scores' dtype; "cosine"
    gives 0 for a zero vector. "l2" and "l2sq" use |x|^2 - 2 q.x + |q|^2 (clamped at 0), as
    BLAS-based exact search does: distances much smaller than the vectors' norms lose digits.
    "hamming" (bits that differ) and "jaccard" (1 - |q & x| / |q | x|, 0 for two empty sets)
    take bit-packed uint8 rows (`np.packbits`) and queries of the same bytes; scores float32.

    Raises ShapeMismatchError for data that is not 2-D, queries that are not 1-D or 2-D or
    whose length differs from the rows'; InvalidArgumentError for an unknown metric, k < 1, or
    NaN or infinity in the queries; InvalidTypeError for a k that is not an int; DTypeError
    for a dtype the metric does not take.
    """
    metric = _check_metric(metric)
    k = _check_k(k)
    shape, dtype, read, zero_copy = _source(data)
    binary = metric in BINARY
    compute = _compute_dtype(dtype, metric)
    q, single = _queries(queries, shape[1], compute, binary)
    rows, n_queries = shape[0], q.shape[0]
    k = min(k, rows)
    score_dtype = np.dtype(np.float32) if binary else compute
    best = _Best(n_queries, k, score_dtype)
    if k and n_queries:
        scorer = _SCORERS[metric](q)
        views = zero_copy and dtype == compute
        step = _block_rows(metric, n_queries, shape[1], compute, score_dtype, views)
        out = np.empty(n_queries * min(step, rows), score_dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf in data rank last
            for start in range(0, rows, step):
                block = read(start, min(start + step, rows))
                if not binary and block.dtype != compute:
                    block = block.astype(compute)
                cost = scorer(block, out[: n_queries * len(block)].reshape(n_queries, -1))
                best.add(cost, start)
    idx, cost = best.index, best.cost
    if not n_queries:  # nothing was merged: give the shape a batch would have
        idx, cost = idx.reshape(0, k), cost.reshape(0, k)
    scores = -cost if metric in SIMILARITIES else cost
    return (idx[0], scores[0]) if single else (idx, scores)


def _block_rows(
    metric: str, n_queries: int, dim: int, compute: np.dtype, score: np.dtype, views: bool
) -> int:
    """How many rows a block has (see SCORE_BYTES and BLOCK_BYTES)."""
    rows = SCORE_BYTES // (n_queries * score.itemsize)
    if metric in BINARY or not views:
        row_bytes = dim * 8 * 4 if metric in BINARY else dim * compute.itemsize
        rows = min(rows, BLOCK_BYTES // max(row_bytes, 1))
    return max(rows, 1)


# -- arguments -------------------------------------------------------------------------------


def _check_metric(metric: object) -> str:
    if not isinstance(metric, str):
        raise InvalidTypeError(f"metric must be a str, got {type(metric).__name__}")
    if metric not in METRICS:
        raise InvalidArgumentError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return metric


def _check_k(k: object) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise InvalidTypeError(f"k must be an int, got {k!r}")
    if k < 1:
        raise InvalidArgumentError(f"k must be at least 1, got {k}")
    return int(k)


def _source(data: Any) -> tuple[tuple[int, int], np.dtype, Callable[[int, int], np.ndarray], bool]:
    """Shape, dtype, a reader of rows [start, stop) of 2-D data, and whether reads are views."""
    if isinstance(data, LazyArray):
        mapped = data._mapped()  # None when compressed or with dropped rows
        arr: Any = data if mapped is None else mapped
        zero_copy = mapped is not None
    else:
        zero_copy = True  # slices of an ndarray are views
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as e:
            raise InvalidArgumentError(f"data is not an array: {e}") from None
    if len(arr.shape) != 2:
        raise ShapeMismatchError(f"data must be 2-D (rows, dim), got shape {tuple(arr.shape)}")
    return (arr.shape[0], arr.shape[1]), arr.dtype, lambda a, b: arr[a:b], zero_copy


def _compute_dtype(dtype: np.dtype, metric: str) -> np.dtype:
    if metric in BINARY:
        if dtype != np.uint8:
            raise DTypeError(f"metric {metric!r} takes bit-packed uint8 rows, got {dtype}")
        return np.dtype(np.uint8)
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise DTypeError(f"metric {metric!r} takes float16, float32 or float64 data, got {dtype}")
    return np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)


def _queries(
    queries: npt.ArrayLike, dim: int, compute: np.dtype, binary: bool
) -> tuple[np.ndarray, bool]:
    """The queries as a C-contiguous 2-D array of the compute dtype, and whether one was given."""
    try:
        q = np.asarray(queries)
    except (ValueError, TypeError) as e:
        raise InvalidArgumentError(f"queries are not an array: {e}") from None
    if q.ndim not in (1, 2):
        raise ShapeMismatchError(f"queries must be 1-D or 2-D, got shape {q.shape}")
    if q.shape[-1] != dim:
        raise ShapeMismatchError(f"queries have length {q.shape[-1]}, the data's rows {dim}")
    if binary:
        if q.dtype.kind not in "iu" or (q.size and (q.min() < 0 or q.max() > 255)):
            raise DTypeError(f"binary metrics take bit-packed uint8 queries, got {q.dtype}")
    elif q.dtype.kind not in "biuf":
        raise DTypeError(f"queries must be real numbers, got {q.dtype}")
    single = q.ndim == 1
    with np.errstate(over="ignore"):  # a value too large for float32 becomes inf, refused below
        q = np.ascontiguousarray(q[None] if single else q, dtype=compute)
    if not binary and not np.isfinite(q).all():
        raise InvalidArgumentError("queries contain NaN or infinity")
    return q, single


# -- scoring: each scorer maps a block to a cost per (query, row), smaller is better ---------


def _dot(q: np.ndarray) -> Scorer:
    neg = -q  # negating the queries negates the products exactly, without a pass over them

    def cost(block: np.ndarray, out: np.ndarray) -> np.ndarray:
        _products(neg, block, out)
        return out

    return cost


def _cosine(q: np.ndarray) -> Scorer:
    norm = np.sqrt(_vecdot(q, q))[:, None]
    neg = -q / np.where(norm == 0, 1, norm)  # a zero vector has cosine 0 with everything

    def cost(block: np.ndarray, out: np.ndarray) -> np.ndarray:
        norms = np.empty(len(block), out.dtype)
        _products(neg, block, out, squared_norms=norms)
        np.sqrt(norms, out=norms)
        norms[norms == 0] = 1
        out /= norms
        return out

    return cost


def _l2sq(q: np.ndarray) -> Scorer:
    minus_2q = -2 * q
    q_sq = _vecdot(q, q)[:, None]

    def cost(block: np.ndarray, out: np.ndarray) -> np.ndarray:
        x_sq = np.empty(len(block), out.dtype)
        _products(minus_2q, block, out, squared_norms=x_sq)
        out += x_sq
        out += q_sq
        np.maximum(out, 0, out=out)  # rounding can make a tiny distance negative
        return out

    return cost


def _l2(q: np.ndarray) -> Scorer:
    squared = _l2sq(q)

    def cost(block: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.sqrt(squared(block, out), out=out)
        return out

    return cost


def _binary(q: np.ndarray, jaccard: bool) -> Scorer:
    # Set bits counted by a matrix product of unpacked bits: exact in float32 up to 2**24 bits.
    q_bits = np.unpackbits(q, axis=1).astype(np.float32)
    q_count = q_bits.sum(axis=1, keepdims=True)

    def cost(block: np.ndarray, out: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(block, axis=1).astype(np.float32)
        both = out  # |q & x|
        _products(q_bits, bits, both)
        either = bits.sum(axis=1) + q_count - both  # |q | x|
        if not jaccard:
            np.subtract(either, both, out=out)  # |q ^ x|
            return out
        np.divide(both, either, out=both, where=either > 0)
        both[either == 0] = 1  # two empty sets are identical
        np.subtract(1, both, out=both)
        return out

    return cost


_SCORERS: dict[str, Callable[[np.ndarray], Scorer]] = {
    "dot": _dot,
    "cosine": _cosine,
    "l2": _l2,
    "l2sq": _l2sq,
    "hamming": lambda q: _binary(q, jaccard=False),
    "jaccard": lambda q: _binary(q, jaccard=True),
}


def _products(
    q: np.ndarray, block: np.ndarray, out: np.ndarray, squared_norms: np.ndarray | None = None
) -> None:
    """`q @ block.T` into `out`, and each row's squared norm into `squared_norms` if given.

    One query is bound by memory bandwidth: NumPy's vecdot does it, and the norms in the same
    visit, over chunks of rows small enough for a core's L2 cache, on a thread per core
    (NumPy releases the GIL), so each row is read from memory once. A batch is bound by
    arithmetic: one BLAS matrix product (after the norms, computed the same way).
    """
    sq = squared_norms
    one = len(q) == 1
    if one or sq is not None:

        def chunk(lo: int, hi: int) -> None:
            rows = block[lo:hi]
            if sq is not None:
                _vecdot(rows, rows, out=sq[lo:hi])
            if one:
                _vecdot(rows, q[0], out=out[0, lo:hi])

        _spread(chunk, len(block), block.shape[1] * block.itemsize)
    if not one:
        np.matmul(q, block.T, out=out)


def _vecdot(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise dot products of 2-D `a` with `b` (2-D, same shape, or 1-D)."""
    if hasattr(np, "vecdot"):  # NumPy 2: faster than einsum
        return np.vecdot(a, b, out=out)
    return np.einsum("ij,ij->i" if b.ndim == 2 else "ij,j->i", a, b, out=out)


# About one core's L2 cache: smaller chunks lose more to per-call overheads than they gain.
_CHUNK_BYTES = 1 << 20
_THREADS = (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
) or 1
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _spread(fn: Callable[[int, int], None], n: int, row_bytes: int) -> None:
    """Calls `fn(lo, hi)` over chunks covering rows [0, n), a contiguous run of them a thread
    (this one included)."""
    global _pool
    step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    chunks = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    per = -(-len(chunks) // _THREADS)
    runs = [chunks[i : i + per] for i in range(0, len(chunks), per)]
    with _pool_lock:
        if _pool is None and len(runs) > 1:
            _pool = ThreadPoolExecutor(_THREADS - 1, thread_name_prefix="numpack-search")
        pool = _pool
    others = [pool.submit(_run, fn, run) for run in runs[1:]] if pool else []
    _run(fn, runs[0] if runs else [])
    for future in others:
        future.result()


def _run(fn: Callable[[int, int], None], chunks: list[tuple[int, int]]) -> None:
    for lo, hi in chunks:
        fn(lo, hi)


def _forget_pool() -> None:
    """A forked child has none of its parent's threads: it starts a pool of its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


# -- selection -----------------------------------------------------------------------------


class _Best:
    """The k best (cost, index) pairs of each query so far, sorted by cost then index.

    Blocks arrive in row order, so a later row ties with an earlier one only to lose: after the
    first full k, a block contributes only costs strictly below a query's current k-th best.
    """

    def __init__(self, n_queries: int, k: int, dtype: np.dtype) -> None:
        self.k = k
        self.cost = np.empty((n_queries, 0), dtype)
        self.index = np.empty((n_queries, 0), np.int64)

    def add(self, cost: np.ndarray, start: int) -> None:
        """Merges the costs of rows start, start + 1, ... (one column each)."""
        if self.cost.shape[1] == self.k:
            worst = self.cost[:, -1:]
            better = cost < worst  # False for NaN, and against a NaN k-th best
            unfilled = np.isnan(worst[:, 0])  # ... which any number beats
            if unfilled.any():
                better[unfilled] = ~np.isnan(cost[unfilled])
            n = np.count_nonzero(better)
            if n == 0:
                return
            if n <= _SPARSE_MERGE_LIMIT * cost.shape[0] * self.k:
                rows, cols = np.nonzero(better)
                self._merge_sparse(rows, cost[rows, cols], cols + start)
                return
        pos = _smallest(cost, min(self.k, cost.shape[1]))
        self._merge(np.take_along_axis(cost, pos, axis=1), pos + start)

    def _merge(self, cost: np.ndarray, index: np.ndarray) -> None:
        cost = np.concatenate([self.cost, cost], axis=1)
        index = np.concatenate([self.index, index], axis=1)
        order = np.lexsort((index, cost), axis=1)[:, : self.k]
        self.cost = np.take_along_axis(cost, order, axis=1)
        self.index = np.take_along_axis(index, order, axis=1)

    def _merge_sparse(self, rows: np.ndarray, cost: np.ndarray, index: np.ndarray) -> None:
        """Merges candidates given as (query row, cost, index) triples, rows ascending."""
        n_queries, k = self.cost.shape
        rows = np.concatenate([np.repeat(np.arange(n_queries), k), rows])
        cost = np.concatenate([self.cost.ravel(), cost])
        index = np.concatenate([self.index.ravel(), index])
        order = np.lexsort((index, cost, rows))
        # Each query owns a contiguous run of `order`, at least k long: keep its first k.
        counts = np.bincount(rows, minlength=n_queries)
        take = order[(np.cumsum(counts) - counts)[:, None] + np.arange(k)]
        self.cost, self.index = cost[take], index[take]


def _smallest(cost: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the k smallest costs per row, ties to the lower column, NaN last."""
    n_queries, n = cost.shape
    if k == n:
        return np.broadcast_to(np.arange(n), (n_queries, n))
    pos = np.argpartition(cost, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(cost, pos[:, k - 1 :], axis=1)
    # argpartition picks arbitrarily among costs equal to the k-th: redo the rows where more
    # than k costs are at or below it (or the k-th is NaN) with a stable sort of those costs.
    crowded = np.count_nonzero(cost <= kth, axis=1) > k
    for r in np.flatnonzero(crowded | np.isnan(kth[:, 0])):
        row = cost[r]
        cand = np.arange(n) if np.isnan(kth[r, 0]) else np.flatnonzero(row <= kth[r, 0])
        pos[r] = cand[np.argsort(row[cand], kind="stable")[:k]]
    return pos
