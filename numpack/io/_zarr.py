"""Zarr stores (zarr-python 3): from_zarr / to_zarr."""

from __future__ import annotations

import os
from typing import Any

from .. import _progress
from .._errors import ArrayNotFoundError, InvalidArgumentError, InvalidTypeError
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
    pick_arrays,
    require,
    row_bytes,
    sliced,
    source,
    staged,
    stream,
    write_sources,
)

# Rows of about this many bytes make one zarr chunk of an exported array.
CHUNK_BYTES = 1 << 20


def _zarr() -> Any:
    return require("zarr", "zarr")


def from_zarr(
    input_path: StrPath,
    output_path: StoreOrPath,
    array_names: list[str] | None = None,
    group: str = "/",
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Import the arrays of the zarr group `group` (default: the root) at `input_path` into the
    store at `output_path` (a path or an open NumPack), each under its zarr name.

    `array_names` picks arrays (default: every array directly in the group; a name may be a
    path into subgroups, `"sub/x"`). When `input_path` is a single zarr array rather than a
    group, it is imported under its directory name without the `.zarr` suffix. Rows are read
    `chunk_size` bytes at a time (rounded to whole zarr chunks), so arrays larger than memory
    import; dtypes are kept. Errors: ArrayNotFoundError for a missing array, DTypeError for a
    dtype a store does not hold (strings, objects, datetimes), checked before anything is
    written. If the import fails, the store is left without the arrays it was writing.
    """
    zarr = _zarr()
    path = existing(input_path, "input_path")
    if not isinstance(group, str):
        raise InvalidTypeError(f"group must be a str, got {type(group).__name__}")
    wanted = names_arg(array_names, "array_names")
    try:
        node = zarr.open(path, mode="r")
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise InvalidArgumentError(f"{path!r} is not a zarr array or group ({e})") from e
    if isinstance(node, zarr.Array):
        stem = os.path.basename(os.path.normpath(path))
        arrays = {stem[: -len(".zarr")] if stem.endswith(".zarr") else stem: node}
    else:
        if group.strip("/"):
            node = _member(node, group.strip("/"), path, zarr.Group)
        names = wanted if wanted is not None else sorted(node.array_keys())
        arrays = {name: _member(node, name, path, zarr.Array) for name in names}
    sources = [_source(name, arr, path) for name, arr in arrays.items()]
    write_sources(
        output_path,
        sources,
        drop_if_exists=drop_if_exists,
        chunk_size=chunk_size,
        progress=progress,
        desc="from_zarr",
    )


def _member(group: Any, name: str, path: str, kind: type) -> Any:
    try:
        node = group[name]
    except KeyError:
        raise ArrayNotFoundError(f"no zarr {kind.__name__.lower()} {name!r} in {path}") from None
    if not isinstance(node, kind):
        raise InvalidArgumentError(f"{name!r} in {path} is not a zarr {kind.__name__.lower()}")
    return node


def _source(name: str, arr: Any, path: str) -> Source:
    read = sliced(lambda a, b: arr[a:b], arr.shape[0] if arr.shape else 0)

    def batches(rows: int) -> Batches:
        # Whole zarr chunks: a batch that cut one would decode it twice.
        chunk = arr.chunks[0]
        return read(max(chunk, rows - rows % chunk))

    return source(name, arr.shape, arr.dtype, batches, f"{path}[{name}]")


def to_zarr(
    input_path: StoreOrPath,
    output_path: StrPath,
    array_names: list[str] | None = None,
    group: str = "/",
    compressor: Any = "default",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Export arrays of the store at `input_path` (a path or an open NumPack) to a new zarr v3
    group at `output_path` (replaced if it exists), one zarr array per store array, under the
    subgroup `group` (default: the root).

    `array_names` picks arrays (default: all). Zarr chunks hold whole rows, about 1 MiB each;
    `compressor` is "default" (zarr's default, zstd), None (uncompressed), or a zarr codec or
    list of codecs (as zarr's `compressors=`). Only live rows are exported. Rows are streamed
    `chunk_size` bytes at a time into a temporary directory that replaces `output_path` at the
    end: a failed export leaves nothing at `output_path`.
    """
    zarr = _zarr()
    if not isinstance(group, str):
        raise InvalidTypeError(f"group must be a str, got {type(group).__name__}")
    compressors = "auto" if isinstance(compressor, str) and compressor == "default" else compressor
    _progress.check(progress)
    with opened(input_path, create=False) as npk:
        names = pick_arrays(npk, array_names)
        lazies = [npk.load(name, lazy=True) for name in names]
        total = sum(lazy.nbytes for lazy in lazies)
        with staged(output_path) as tmp, _progress.bar(progress, total, "to_zarr") as bar:
            root = zarr.open_group(tmp, mode="w", zarr_format=3)
            dest = root.require_group(group.strip("/")) if group.strip("/") else root
            for name, lazy in zip(names, lazies):
                rb = row_bytes(lazy.shape, lazy.dtype)
                zchunk = min(max(1, len(lazy)), batch_rows(rb, CHUNK_BYTES))
                rows = batch_rows(rb, chunk_size, zchunk)
                try:
                    out = dest.create_array(
                        name,
                        shape=lazy.shape,
                        dtype=lazy.dtype,
                        chunks=(zchunk,) + lazy.shape[1:],
                        compressors=compressors,
                    )
                except (TypeError, ValueError) as e:
                    raise InvalidArgumentError(f"to_zarr: array {name!r}: {e}") from e
                pos = 0
                for batch in stream(lazy, rows):
                    out[pos : pos + len(batch)] = batch
                    pos += len(batch)
                    bar.update(batch.nbytes)
