"""pandas DataFrames: from_dataframe / to_dataframe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _progress
from .._errors import DTypeError, InvalidArgumentError, InvalidTypeError
from ._common import (
    DEFAULT_CHUNK_SIZE,
    StoreOrPath,
    batch_rows,
    names_arg,
    opened,
    pick_array,
    require,
    row_bytes,
    sliced,
    source,
    stream,
    write_sources,
)


def _pd() -> Any:
    return require("pandas", "pandas")


def _numpy_dtype(pd: Any, column: Any, dtype: Any) -> np.dtype:
    """The NumPy dtype of a numeric or boolean column (nullable ones included), else DTypeError."""
    np_dtype = dtype if isinstance(dtype, np.dtype) else getattr(dtype, "numpy_dtype", None)
    if (
        np_dtype is None
        or isinstance(dtype, pd.CategoricalDtype)
        or np.dtype(np_dtype).kind not in "biufc"
    ):
        raise DTypeError(
            f"column {column!r} has dtype {dtype}, which a store does not hold "
            "(numbers and booleans it does)"
        )
    return np.dtype(np_dtype)


def from_dataframe(
    df: Any,
    output_path: StoreOrPath,
    array_name: str = "data",
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Save a DataFrame (or a Series) into the store at `output_path` (a path or an open
    NumPack) as the 2-D (1-D) array `array_name`: its values as `df.to_numpy()` gives them,
    in the columns' common NumPy dtype (`np.result_type`; nullable dtypes such as Int64 count as
    their NumPy dtype). The index and the column names are not stored.

    Rows are converted `chunk_size` bytes at a time, so the copy is bounded by a batch.
    Errors: DTypeError for a column that is not numeric or boolean (strings, dates,
    categoricals, objects); InvalidArgumentError for missing values (pd.NA) in a nullable
    column, which a NumPy dtype cannot hold. If the save fails, the store is left without
    the array.
    """
    pd = _pd()
    if isinstance(df, pd.Series):
        df = df.to_frame()
        one_d = True
    elif isinstance(df, pd.DataFrame):
        one_d = False
    else:
        raise InvalidTypeError(f"from_dataframe takes a DataFrame, got {type(df).__name__}")
    dtypes = [_numpy_dtype(pd, c, d) for c, d in df.dtypes.items()]
    for (column, dtype), np_dtype in zip(df.dtypes.items(), dtypes):
        if not isinstance(dtype, np.dtype) and df[column].isna().any():
            raise InvalidArgumentError(
                f"column {column!r} has missing values, which dtype {np_dtype} cannot hold"
            )
    dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)

    def read(start: int, stop: int) -> np.ndarray:
        rows = df.iloc[start:stop].to_numpy(dtype=dtype)
        return rows[:, 0] if one_d else rows

    shape = (len(df),) if one_d else df.shape
    write_sources(
        output_path,
        [source(array_name, shape, dtype, sliced(read, len(df)), "the DataFrame")],
        drop_if_exists=drop_if_exists,
        chunk_size=chunk_size,
        progress=progress,
        desc="from_dataframe",
    )


def to_dataframe(
    input_path: StoreOrPath,
    array_name: str | None = None,
    columns: Sequence[str] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> Any:
    """The array `array_name` (default: the store's only array) of the store at `input_path`
    (a path or an open NumPack) as a DataFrame with a RangeIndex over its live rows.

    A 2-D array's columns are named by `columns` (default `"col0"`, `"col1"`, ...); a 1-D array
    is one column, `columns[0]` or `"data"`. Arrays of more dimensions raise
    InvalidArgumentError (a DataFrame is 2-D). Read `chunk_size` bytes at a time into the
    DataFrame's one block of memory, which it then owns without a copy.
    """
    pd = _pd()
    _progress.check(progress)
    with opened(input_path, create=False) as npk:
        name = pick_array(npk, array_name)
        lazy = npk.load(name, lazy=True)
        if lazy.ndim > 2:
            raise InvalidArgumentError(
                f"array {name!r} has {lazy.ndim} dimensions; a DataFrame holds 1 or 2"
            )
        width = lazy.shape[1] if lazy.ndim == 2 else 1
        default = [f"col{i}" for i in range(width)] if lazy.ndim == 2 else ["data"]
        names = default if columns is None else names_arg(columns, "columns")
        if names is None or len(names) != width:
            raise InvalidArgumentError(f"array {name!r}: {width} column names needed")
        out = np.empty((len(lazy), width), lazy.dtype)
        rows = batch_rows(row_bytes(lazy.shape, lazy.dtype), chunk_size)
        with _progress.bar(progress, lazy.nbytes, "to_dataframe") as bar:
            pos = 0
            for batch in stream(lazy, rows):
                out[pos : pos + len(batch)] = batch.reshape(len(batch), width)
                pos += len(batch)
                bar.update(batch.nbytes)
    return pd.DataFrame(out, columns=names, copy=False)
