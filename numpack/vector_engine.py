"""NumPack 0.7's vector-search names, as thin wrappers of `numpack.top_k`.

Code written against 0.7's documented `numpack.vector_engine` runs unchanged for what both
offer: `VectorEngine.top_k_search`, `VectorEngine.multi_query_top_k` and
`StreamingVectorEngine.streaming_top_k_from_file`, with 0.7's signatures, metric names
(case-insensitive, with its aliases) and return conventions: `(indices, scores)`, best first,
indices uint64 and scores float64, and `multi_query_top_k` flattened to `n_queries * k`.

Where numpack differs from 0.7:
- the metrics "kl" and "js" are not offered (InvalidArgumentError);
- float metrics take float16/32/64 rows only (0.7 also takes int8), and compute in float32
  for float16/float32 rows (0.7 converts mixed dtypes to float64);
- `batch_size` of `streaming_top_k_from_file` is accepted and ignored: numpack sizes its
  blocks in bytes;
- ties go to the lower index and NaN scores rank last (0.7 does not say).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from ._errors import InvalidArgumentError, InvalidTypeError, StoreIOError
from ._search import top_k
from ._store import NumPack

# 0.7's metric names and aliases (its MetricType.from_str), mapped onto numpack's.
_ALIASES = {
    **dict.fromkeys(("dot", "dot_product", "dotproduct", "inner", "inner_product"), "dot"),
    **dict.fromkeys(("cos", "cosine", "cosine_similarity"), "cosine"),
    **dict.fromkeys(("l2", "euclidean", "l2_distance"), "l2"),
    **dict.fromkeys(("l2sq", "l2_squared", "squared_euclidean"), "l2sq"),
    "hamming": "hamming",
    "jaccard": "jaccard",
}


def _metric(metric: object) -> str:
    if not isinstance(metric, str):
        raise InvalidTypeError(f"metric must be a str, got {type(metric).__name__}")
    name = _ALIASES.get(metric.lower())
    if name is None:
        raise InvalidArgumentError(
            f"unknown metric {metric!r}; numpack offers {', '.join(sorted(_ALIASES))}"
            " (0.7's kl and js are not offered)"
        )
    return name


def _as_07(result: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    idx, scores = result
    return idx.astype(np.uint64), scores.astype(np.float64)


class VectorEngine:
    """In-memory top-k search under NumPack 0.7's names (any 2-D array, LazyArrays too)."""

    def top_k_search(
        self, query: npt.ArrayLike, candidates: Any, metric: str, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top `k` candidates for one query: `(indices, scores)`, shapes `(k,)`."""
        return _as_07(top_k(query, candidates, k, _metric(metric)))

    def multi_query_top_k(
        self, queries: npt.ArrayLike, candidates: Any, metric: str, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top `k` for each of several queries, flattened: shapes `(n_queries * k,)`."""
        idx, scores = _as_07(top_k(queries, candidates, k, _metric(metric)))
        return idx.ravel(), scores.ravel()


class StreamingVectorEngine:
    """Top-k search of an array in a NumPack store, streamed, under NumPack 0.7's names."""

    def streaming_top_k_from_file(
        self,
        query: npt.ArrayLike,
        npk_dir: str | os.PathLike[str],
        array_name: str,
        metric: str,
        k: int,
        batch_size: int = 10000,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top `k` rows of array `array_name` of the store at `npk_dir` for `query`.

        `batch_size` is accepted for 0.7's signature and ignored. Raises StoreIOError when
        `npk_dir` is not a directory (rather than creating a store there).
        """
        if not os.path.isdir(npk_dir):
            raise StoreIOError(errno.ENOENT, "no NumPack store here", os.fspath(npk_dir))
        with NumPack(npk_dir) as npk:
            lazy = npk.load(array_name, lazy=True)
            return _as_07(top_k(query, lazy, k, _metric(metric)))
