"""HDF5 files (h5py): from_hdf5 / to_hdf5."""

from __future__ import annotations

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

# Rows of about this many bytes make one HDF5 chunk of an exported array.
CHUNK_BYTES = 1 << 20


def _h5py() -> Any:
    return require("h5py", "hdf5")


def from_hdf5(
    input_path: StrPath,
    output_path: StoreOrPath,
    dataset_names: list[str] | None = None,
    group: str = "/",
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    dataset: str | None = None,
    progress: bool = False,
) -> None:
    """Import datasets of the HDF5 group `group` (default: the root) of the file `input_path`
    into the store at `output_path` (a path or an open NumPack), each under its dataset name.

    `dataset_names` picks datasets (default: every dataset directly in the group; a name may be
    a path, `"sub/x"`); `dataset="x"` is the same as `dataset_names=["x"]`. Rows are read
    `chunk_size` bytes at a time (rounded to whole HDF5 chunks), so datasets larger than memory
    import; dtypes are kept. Errors: ArrayNotFoundError for a missing dataset,
    InvalidArgumentError for a group where a dataset was named or a file that is not HDF5,
    DTypeError for a dtype a store does not hold (strings, compounds), checked before anything
    is written. If the import fails, the store is left without the arrays it was writing.
    """
    h5py = _h5py()
    path = existing(input_path, "input_path")
    if not isinstance(group, str):
        raise InvalidTypeError(f"group must be a str, got {type(group).__name__}")
    wanted = names_arg(dataset_names, "dataset_names")
    if dataset is not None:
        if wanted is not None:
            raise InvalidArgumentError("pass dataset or dataset_names, not both")
        wanted = names_arg(dataset, "dataset")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InvalidArgumentError(f"{path!r} is not a readable HDF5 file ({e})") from e
    with f:
        node = _member(f, group, path, h5py.Group)
        if wanted is None:
            wanted = sorted(k for k in node if isinstance(node[k], h5py.Dataset))
        sources = [_source(name, _member(node, name, path, h5py.Dataset), path) for name in wanted]
        write_sources(
            output_path,
            sources,
            drop_if_exists=drop_if_exists,
            chunk_size=chunk_size,
            progress=progress,
            desc="from_hdf5",
        )


def _member(group: Any, name: str, path: str, kind: type) -> Any:
    what = "dataset" if kind.__name__ == "Dataset" else "group"
    try:
        node = group[name]
    except KeyError:
        raise ArrayNotFoundError(f"no HDF5 {what} {name!r} in {path}") from None
    if not isinstance(node, kind):
        raise InvalidArgumentError(f"{name!r} in {path} is not an HDF5 {what}")
    return node


def _source(name: str, ds: Any, path: str) -> Source:
    read = sliced(lambda a, b: ds[a:b], ds.shape[0] if ds.shape else 0)

    def batches(rows: int) -> Batches:
        # Whole HDF5 chunks: a batch that cut one would decompress it twice.
        chunk = ds.chunks[0] if ds.chunks else 1
        return read(max(chunk, rows - rows % chunk))

    return source(name, ds.shape or (), ds.dtype, batches, f"{path}[{name}]")


def to_hdf5(
    input_path: StoreOrPath,
    output_path: StrPath,
    array_names: list[str] | None = None,
    group: str = "/",
    compression: str | None = "gzip",
    compression_opts: Any = 4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Export arrays of the store at `input_path` (a path or an open NumPack) to a new HDF5
    file at `output_path` (replaced if it exists), one dataset per array, in the group `group`.

    `array_names` picks arrays (default: all). Datasets are chunked by whole rows (about 1 MiB
    a chunk) and compressed with h5py's `compression` ("gzip" at level `compression_opts` by
    default; "lzf", or None for none). Only live rows are exported. Rows are streamed
    `chunk_size` bytes at a time into a temporary file that replaces `output_path` at the end:
    a failed export leaves no partial file.
    """
    h5py = _h5py()
    if not isinstance(group, str):
        raise InvalidTypeError(f"group must be a str, got {type(group).__name__}")
    _progress.check(progress)
    with opened(input_path, create=False) as npk:
        names = pick_arrays(npk, array_names)
        lazies = [npk.load(name, lazy=True) for name in names]
        total = sum(lazy.nbytes for lazy in lazies)
        with staged(output_path) as tmp, _progress.bar(progress, total, "to_hdf5") as bar:
            with h5py.File(tmp, "w") as f:
                dest = f.require_group(group) if group.strip("/") else f
                for name, lazy in zip(names, lazies):
                    rb = row_bytes(lazy.shape, lazy.dtype)
                    hchunk = min(max(1, len(lazy)), batch_rows(rb, CHUNK_BYTES))
                    try:
                        ds = dest.create_dataset(
                            name,
                            shape=lazy.shape,
                            dtype=lazy.dtype,
                            chunks=(hchunk,) + lazy.shape[1:] if lazy.size else None,
                            compression=compression if lazy.size else None,
                            compression_opts=compression_opts
                            if compression and lazy.size
                            else None,
                        )
                    except (TypeError, ValueError) as e:
                        raise InvalidArgumentError(f"to_hdf5: array {name!r}: {e}") from e
                    pos = 0
                    for batch in stream(lazy, batch_rows(rb, chunk_size, hchunk)):
                        ds[pos : pos + len(batch)] = batch
                        pos += len(batch)
                        bar.update(batch.nbytes)
