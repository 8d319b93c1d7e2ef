"""safetensors files: from_safetensors_file / to_safetensors_file, and NumPack 0.7's helpers
around them (from_tensor_dict, to_tensor_dict, get_safetensors_metadata, iter_safetensors).

Reading uses the safetensors library (memory-mapped, a slice of rows at a time); writing
follows the format directly (an 8-byte header length, a JSON header, then the tensors' bytes
back to back), so a store exports a row batch at a time without the library."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from .. import _progress
from .._errors import ArrayNotFoundError, DTypeError, InvalidArgumentError, InvalidTypeError
from ._common import (
    DEFAULT_CHUNK_SIZE,
    StoreOrPath,
    StrPath,
    batch_rows,
    existing,
    names_arg,
    opened,
    os_errors,
    pick_arrays,
    require,
    row_bytes,
    sliced,
    source,
    staged,
    stream,
    write_sources,
)

# safetensors' dtype names and the NumPy dtypes they mean (little-endian).
DTYPES = {
    "BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
    "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8",
    "C64": "<c8",
}  # fmt: skip
_NAMES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}


def _open(path: str) -> Any:
    safetensors = require("safetensors", "safetensors")
    try:
        return safetensors.safe_open(path, framework="numpy")
    except safetensors.SafetensorError as e:
        raise InvalidArgumentError(f"{path!r} is not a safetensors file ({e})") from e


def _dtype(st_dtype: str, where: str) -> np.dtype:
    if st_dtype not in DTYPES:
        raise DTypeError(f"{where}: safetensors dtype {st_dtype} has no NumPy dtype a store holds")
    return np.dtype(DTYPES[st_dtype])


def _rows(sl: Any) -> Callable[[int, int], np.ndarray]:
    """`read(start, stop)` of a safetensors slice."""
    return lambda start, stop: sl[start:stop]


def _keys(f: Any, keys: Any, path: str) -> list[str]:
    present = list(f.keys())
    wanted = names_arg(keys, "keys")
    if wanted is None:
        return present
    for key in wanted:
        if key not in present:
            raise ArrayNotFoundError(f"no tensor {key!r} in {path}")
    return wanted


def from_safetensors_file(
    input_path: StrPath,
    output_path: StoreOrPath,
    keys: list[str] | None = None,
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Import the tensors `keys` (default: all) of a safetensors file into the store at
    `output_path` (a path or an open NumPack), each as an array of its name.

    The file is memory-mapped and copied `chunk_size` bytes of rows at a time. Errors:
    ArrayNotFoundError for a missing key; DTypeError for a dtype NumPy lacks (BF16, F8_*);
    InvalidArgumentError for a 0-d tensor (a store holds rows: pick the others with `keys`)
    or a file that is not safetensors; all checked before anything is written. If the import
    fails, the store is left without the arrays it was writing. The file's `__metadata__` is
    not kept (a store has no place for it).
    """
    path = existing(input_path, "input_path")
    with _open(path) as f:
        sources = []
        for key in _keys(f, keys, path):
            sl = f.get_slice(key)
            where = f"{path}[{key}]"
            shape = tuple(sl.get_shape())
            n = shape[0] if shape else 0
            read = sliced(_rows(sl), n)
            sources.append(source(key, shape, _dtype(sl.get_dtype(), where), read, where))
        write_sources(
            output_path,
            sources,
            drop_if_exists=drop_if_exists,
            chunk_size=chunk_size,
            progress=progress,
            desc="from_safetensors_file",
        )


def to_safetensors_file(
    input_path: StoreOrPath,
    output_path: StrPath,
    array_names: list[str] | None = None,
    metadata: dict[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Export arrays (`array_names`, default all) of the store at `input_path` (a path or an
    open NumPack) to a safetensors file, with `metadata` (str to str) as its `__metadata__`.

    Only live rows. Rows are streamed `chunk_size` bytes at a time into a temporary file that
    replaces `output_path` at the end: a failed export leaves no partial file. DTypeError for
    complex128, which safetensors has no name for.
    """
    if metadata is not None and (
        not isinstance(metadata, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise InvalidTypeError("metadata must be a dict of str to str")
    _progress.check(progress)
    with opened(input_path, create=False) as npk:
        names = pick_arrays(npk, array_names)
        lazies = [npk.load(name, lazy=True) for name in names]
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, lazy in zip(names, lazies):
            if name == "__metadata__":
                raise InvalidArgumentError("safetensors reserves the name '__metadata__'")
            if lazy.dtype not in _NAMES:
                raise DTypeError(f"array {name!r}: safetensors has no dtype {lazy.dtype}")
            shape = [int(d) for d in lazy.shape]
            header[name] = {
                "dtype": _NAMES[lazy.dtype],
                "shape": shape,
                "data_offsets": [offset, offset + lazy.nbytes],
            }
            offset += lazy.nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors does
        with staged(output_path) as tmp, _progress.bar(progress, offset, "to_safetensors") as bar:
            with open(tmp, "wb") as f:
                f.write(struct.pack("<Q", len(text)) + text)
                for lazy in lazies:
                    rows = batch_rows(row_bytes(lazy.shape, lazy.dtype), chunk_size)
                    for batch in stream(lazy, rows):
                        f.write(batch.astype(batch.dtype.newbyteorder("<"), copy=False).data)
                        bar.update(batch.nbytes)


def from_tensor_dict(
    tensors: Mapping[str, Any],
    output_path: StoreOrPath,
    drop_if_exists: bool = False,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> None:
    """Save a dict of arrays (NumPy arrays, or torch tensors when torch is installed) into the
    store at `output_path` (a path or an open NumPack), a batch of rows at a time; what
    `safetensors.numpy.load_file` returns, for example."""
    if not isinstance(tensors, Mapping):
        raise InvalidTypeError(f"from_tensor_dict takes a dict, got {type(tensors).__name__}")
    from ._torch import tensor_or_array_source

    sources = [tensor_or_array_source(k, v, f"tensor {k!r}") for k, v in tensors.items()]
    write_sources(
        output_path,
        sources,
        drop_if_exists=drop_if_exists,
        chunk_size=chunk_size,
        progress=progress,
        desc="from_tensor_dict",
    )


def to_tensor_dict(
    input_path: StoreOrPath, array_names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """{name: array} of the arrays `array_names` (default: all) of the store at `input_path`,
    loaded into memory (only live rows); `safetensors.numpy.save_file` takes it as it is."""
    with opened(input_path, create=False) as npk:
        with os_errors():
            return {name: npk.load(name) for name in pick_arrays(npk, array_names)}


def get_safetensors_metadata(path: StrPath) -> dict[str, Any]:
    """What a safetensors file holds, without reading its tensors:
    `{"tensors": {name: {"dtype": "F32", "shape": [...]}}, "metadata": {...}}`."""
    file = existing(path, "path")
    with _open(file) as f:
        tensors = {}
        for key in f.keys():
            sl = f.get_slice(key)
            tensors[key] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape())}
        return {"tensors": tensors, "metadata": dict(f.metadata() or {})}


def iter_safetensors(
    path: StrPath, keys: list[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for the tensors `keys` (default: all) of a safetensors file, one at a
    time (each array maps the file; none is read before it is yielded)."""
    file = existing(path, "path")
    with _open(file) as f:
        for key in _keys(f, keys, file):
            sl = f.get_slice(key)
            _dtype(sl.get_dtype(), f"{file}[{key}]")
            yield key, f.get_tensor(key)
