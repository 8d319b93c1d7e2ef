"""Apache Arrow (pyarrow): Parquet files, Feather files and in-memory tables.

Columns and arrays map one way: a 1-D array is one column (`"data"`), a 2-D array of k columns
is k columns (`"col0"` ... `"col{k-1}"`), an array of more dimensions is one column of nested
fixed-size lists; reading back gives the same array. On the way in, a single column becomes a
1-D array (a fixed-size-list column: one dimension more per list level), several columns a 2-D
array of their common NumPy dtype (`np.result_type`, as `df.to_numpy()` would).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import _progress
from .._errors import ArrayNotFoundError, DTypeError, InvalidArgumentError, InvalidTypeError
from ._common import (
    DEFAULT_CHUNK_SIZE,
    Batches,
    Source,
    StoreOrPath,
    StrPath,
    batch_rows,
    existing,
    names_arg,
    opened,
    pick_array,
    require,
    row_bytes,
    source,
    staged,
    stream,
    write_sources,
)


def _pa() -> Any:
    return require("pyarrow", "arrow")


# -- Arrow to NumPy -------------------------------------------------------------------------


def _column_type(pa: Any, typ: Any, where: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The NumPy dtype and row shape of a column of Arrow type `typ`."""
    shape: list[int] = []
    while pa.types.is_fixed_size_list(typ):
        shape.append(typ.list_size)
        typ = typ.value_type
    if pa.types.is_boolean(typ) or pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return np.dtype(typ.to_pandas_dtype()), tuple(shape)
    raise DTypeError(
        f"{where}: Arrow type {typ} has no dtype a store holds "
        "(booleans, integers, floats and fixed-size lists of them do)"
    )


def _column(pa: Any, col: Any, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    """An Arrow Array or ChunkedArray as a NumPy array of `dtype`, rows of `shape`."""
    parts = []
    for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
        values = chunk
        for _ in range(len(shape) + 1):
            if values.null_count:
                raise InvalidArgumentError(f"{where}: nulls, which a store cannot hold")
            if pa.types.is_fixed_size_list(values.type):
                values = values.flatten()
        parts.append(values.to_numpy(zero_copy_only=False).reshape((len(chunk),) + shape))
    if not parts:
        return np.empty((0,) + shape, dtype)
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out.astype(dtype, copy=False)


class _Columns:
    """How the columns `names` of a schema become one array: its dtype, shape and rows."""

    def __init__(self, pa: Any, schema: Any, names: list[str], where: str) -> None:
        self.pa, self.names, self.where = pa, names, where
        if not names:
            raise InvalidArgumentError(f"{where}: no columns to import")
        fields = {f.name: f for f in schema}
        self.types = []
        for name in names:
            if name not in fields:
                raise ArrayNotFoundError(f"{where}: no column {name!r} (it has {schema.names})")
            self.types.append(_column_type(pa, fields[name].type, f"{where}, column {name!r}"))
        if len(names) > 1 and any(shape for _, shape in self.types):
            raise InvalidArgumentError(
                f"{where}: list columns import one at a time (columns=[name])"
            )
        self.dtype = np.result_type(*(dtype for dtype, _ in self.types))
        self.row_shape = self.types[0][1] if len(names) == 1 else (len(names),)

    def rows(self, table: Any) -> np.ndarray:
        """The rows of a Table or RecordBatch holding (at least) these columns."""
        cols = [
            _column(self.pa, table.column(n), self.dtype, shape, f"{self.where}, column {n!r}")
            for n, (_, shape) in zip(self.names, self.types)
        ]
        if len(cols) == 1:
            return cols[0]
        out = np.empty((table.num_rows, len(cols)), self.dtype)
        for j, col in enumerate(cols):
            out[:, j] = col
        return out

    def source(self, name: Any, n: int, batches: Any) -> Source:
        return source(name, (n,) + self.row_shape, self.dtype, batches, self.where)


def _table_source(cols: _Columns, name: Any, table: Any) -> Source:
    def batches(rows: int) -> Batches:
        for start in range(0, table.num_rows, rows):
            yield cols.rows(table.slice(start, rows))

    return cols.source(name, table.num_rows, batches)


def _columns_arg(columns: Any, schema: Any) -> list[str]:
    names = names_arg(columns, "columns")
    return list(schema.names) if names is None else names


def from_parquet(
    input_path: StrPath,
    output_path: StoreOrPath,
    array_name: str | None = None,
    columns: list[str] | None = None,
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Import a Parquet file into the store at `output_path` (a path or an open NumPack) as one
    array, `array_name` (default: the file name without its extension), from the columns
    `columns` (default: all), as the module docstring says.

    Rows are read a row group at a time and converted `chunk_size` bytes at a time, so memory
    holds one row group (pyarrow writes up to 1Mi rows a group by default). Errors:
    ArrayNotFoundError for a missing column, DTypeError for a column a store cannot hold
    (strings, dates, decimals, variable lists), InvalidArgumentError for nulls or a file that
    is not Parquet. If the import fails, the store is left without the array.
    """
    pa = _pa()
    pq = require("pyarrow.parquet", "arrow")
    path = existing(input_path, "input_path")
    name = os.path.splitext(os.path.basename(path))[0] if array_name is None else array_name
    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise InvalidArgumentError(f"{path!r} is not a Parquet file ({e})") from e
    with pf:
        cols = _Columns(pa, pf.schema_arrow, _columns_arg(columns, pf.schema_arrow), path)

        def batches(rows: int) -> Batches:
            # One row group at a time: pf.iter_batches holds on to what it read until the end.
            for group in range(pf.num_row_groups):
                table = pf.read_row_group(group, columns=cols.names)
                for start in range(0, table.num_rows, rows):
                    yield cols.rows(table.slice(start, rows))

        write_sources(
            output_path,
            [cols.source(name, pf.metadata.num_rows, batches)],
            drop_if_exists=drop_if_exists,
            chunk_size=chunk_size,
            progress=progress,
            desc="from_parquet",
        )


def from_feather(
    input_path: StrPath,
    output_path: StoreOrPath,
    columns: list[str] | None = None,
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    array_name: str | None = None,
    progress: bool = False,
) -> None:
    """Import a Feather (v2, the Arrow IPC file format) file into the store at `output_path` (a
    path or an open NumPack) as one array, `array_name` (default: the file name without its
    extension), from the columns `columns` (default: all), as the module docstring says.

    The file is memory-mapped and read one record batch at a time (`chunk_size` bytes of rows
    a batch), so files larger than memory import. Errors as for `from_parquet`. If the import
    fails, the store is left without the array.
    """
    pa = _pa()
    ipc = require("pyarrow.ipc", "arrow")
    path = existing(input_path, "input_path")
    name = os.path.splitext(os.path.basename(path))[0] if array_name is None else array_name
    with pa.memory_map(path) as mm:
        try:
            reader = ipc.open_file(mm)
        except pa.ArrowException as e:
            raise InvalidArgumentError(f"{path!r} is not a Feather v2 file ({e})") from e
        cols = _Columns(pa, reader.schema, _columns_arg(columns, reader.schema), path)

        def batches(rows: int) -> Batches:
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                for start in range(0, batch.num_rows, rows):
                    yield cols.rows(batch.slice(start, rows))

        write_sources(
            output_path,
            [cols.source(name, reader.count_rows(), batches)],
            drop_if_exists=drop_if_exists,
            chunk_size=chunk_size,
            progress=progress,
            desc="from_feather",
        )


def from_table(
    table_or_array: Any,
    output_path: StoreOrPath,
    array_name: str | None = None,
    drop_if_exists: bool = False,
    *,
    columns: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> None:
    """Save a pyarrow Table, RecordBatch, Array or ChunkedArray into the store at `output_path`
    (a path or an open NumPack).

    An Array becomes the array `array_name` (default `"data"`). A Table with `array_name=None`
    becomes one array per column, named by the column; with `array_name`, its columns
    (`columns`, default all) become that one array, as the module docstring says. Rows are
    converted `chunk_size` bytes at a time. If the save fails, the store is left without the
    arrays it was writing.
    """
    pa = _pa()
    if isinstance(table_or_array, (pa.Array, pa.ChunkedArray)):
        table_or_array = pa.table({"data": table_or_array})
        array_name = "data" if array_name is None else array_name
    elif isinstance(table_or_array, pa.RecordBatch):
        table_or_array = pa.Table.from_batches([table_or_array])
    elif not isinstance(table_or_array, pa.Table):
        raise InvalidTypeError(
            f"from_table takes a pyarrow Table, RecordBatch or Array, "
            f"got {type(table_or_array).__name__}"
        )
    table = table_or_array
    names = _columns_arg(columns, table.schema)
    if array_name is None:
        sources = [
            _table_source(_Columns(pa, table.schema, [n], "the table"), n, table) for n in names
        ]
    else:
        sources = [_table_source(_Columns(pa, table.schema, names, "the table"), array_name, table)]
    write_sources(
        output_path,
        sources,
        drop_if_exists=drop_if_exists,
        chunk_size=chunk_size,
        progress=progress,
        desc="from_table",
    )


# -- NumPy to Arrow -------------------------------------------------------------------------


class _Layout:
    """The Arrow schema of one array, and its rows as record batches."""

    def __init__(self, pa: Any, name: str, lazy: Any, column_names: Any) -> None:
        self.pa = pa
        self.shape = tuple(lazy.shape)
        where = f"array {name!r}"
        if lazy.dtype.kind == "c":
            raise DTypeError(f"{where}: Arrow has no complex type")
        if int(np.prod(self.shape[1:], dtype=np.int64)) == 0:
            raise InvalidArgumentError(f"{where}: rows of no elements make no Arrow column")
        typ = pa.from_numpy_dtype(lazy.dtype)
        if len(self.shape) == 2:
            default = [f"col{i}" for i in range(self.shape[1])]
        else:
            default = ["data"]
            for size in reversed(self.shape[1:]):
                typ = pa.list_(typ, size)
        names = default if column_names is None else names_arg(column_names, "column_names")
        if not isinstance(names, list) or len(names) != len(default):
            raise InvalidArgumentError(
                f"{where}: {len(default)} column names needed, got {column_names!r}"
            )
        self.schema = pa.schema([(n, typ) for n in names])

    def batch(self, rows: np.ndarray) -> Any:
        pa = self.pa
        if len(self.shape) == 2:
            cols = np.ascontiguousarray(rows.T)
            arrays = [pa.array(c) for c in cols]
        else:
            values = pa.array(rows.reshape(-1))
            for size in reversed(self.shape[1:]):
                values = pa.FixedSizeListArray.from_arrays(values, size)
            arrays = [values]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


@contextlib.contextmanager
def _export(
    input_path: Any, array_name: Any, column_names: Any, chunk_size: Any, progress: bool, desc: str
) -> Iterator[tuple[_Layout, Iterator[Any]]]:
    """The array's Arrow layout and an iterator of its record batches, while the store is open."""
    pa = _pa()
    _progress.check(progress)
    with opened(input_path, create=False) as npk:
        name = pick_array(npk, array_name)
        lazy = npk.load(name, lazy=True)
        layout = _Layout(pa, name, lazy, column_names)
        rows = batch_rows(row_bytes(lazy.shape, lazy.dtype), chunk_size)
        with _progress.bar(progress, lazy.nbytes, desc) as bar:

            def batches() -> Iterator[Any]:
                for chunk in stream(lazy, rows):
                    yield layout.batch(chunk)
                    bar.update(chunk.nbytes)

            yield layout, batches()


def to_table(
    input_path: StoreOrPath,
    array_name: str | None = None,
    column_names: Sequence[str] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> Any:
    """The array `array_name` (default: the store's only array) of the store at `input_path`
    (a path or an open NumPack) as a pyarrow Table, laid out as the module docstring says;
    `column_names` renames the columns. Only live rows; read `chunk_size` bytes at a time."""
    pa = _pa()
    with _export(input_path, array_name, column_names, chunk_size, progress, "to_table") as (
        layout,
        batches,
    ):
        return pa.Table.from_batches(list(batches), schema=layout.schema)


def to_parquet(
    input_path: StoreOrPath,
    output_path: StrPath,
    array_name: str | None = None,
    compression: str | None = "snappy",
    row_group_size: int = 100_000,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    column_names: Sequence[str] | None = None,
    progress: bool = False,
) -> None:
    """Export the array `array_name` (default: the store's only array) of the store at
    `input_path` (a path or an open NumPack) to a Parquet file, laid out as the module
    docstring says, with `compression` ("snappy", "zstd", "gzip", ..., None) and row groups of
    at most `row_group_size` rows. Only live rows. Rows are streamed `chunk_size` bytes at a
    time into a temporary file that replaces `output_path` at the end: a failed export leaves
    no partial file."""
    pa = _pa()
    pq = require("pyarrow.parquet", "arrow")
    export = _export(input_path, array_name, column_names, chunk_size, progress, "to_parquet")
    with export as (layout, batches), staged(output_path) as tmp:
        try:
            writer = pq.ParquetWriter(tmp, layout.schema, compression=compression or "none")
        except (pa.ArrowException, ValueError) as e:
            raise InvalidArgumentError(f"to_parquet: {e}") from e
        with writer:
            for batch in batches:
                writer.write_batch(batch, row_group_size=row_group_size)


def to_feather(
    input_path: StoreOrPath,
    output_path: StrPath,
    array_name: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    compression: str | None = "zstd",
    column_names: Sequence[str] | None = None,
    progress: bool = False,
) -> None:
    """Export the array `array_name` (default: the store's only array) of the store at
    `input_path` (a path or an open NumPack) to a Feather v2 file (Arrow IPC), laid out as the
    module docstring says, one record batch per `chunk_size` bytes of rows, compressed with
    `compression` ("zstd", "lz4", or None). Only live rows. Written to a temporary file that
    replaces `output_path` at the end: a failed export leaves no partial file."""
    pa = _pa()
    ipc = require("pyarrow.ipc", "arrow")
    codec = None if compression in (None, "uncompressed") else compression
    try:
        options = ipc.IpcWriteOptions(compression=codec)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise InvalidArgumentError(f"to_feather: compression {compression!r}: {e}") from e
    export = _export(input_path, array_name, column_names, chunk_size, progress, "to_feather")
    with export as (layout, batches), staged(output_path) as tmp:
        with ipc.new_file(tmp, layout.schema, options=options) as writer:
            for batch in batches:
                writer.write_batch(batch)


# NumPack 0.7's other names for these.
from_feather_file = from_feather
to_feather_file = to_feather
from_parquet_file = from_parquet
to_parquet_file = to_parquet
from_parquet_table = from_table
to_parquet_table = to_table
