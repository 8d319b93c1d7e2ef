"""PyTorch (when installed): .pt files (from_pt / to_pt) and tensors (from_tensor / to_tensor)."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _progress
from .._errors import ArrayNotFoundError, DTypeError, InvalidArgumentError, InvalidTypeError
from ._common import (
    DEFAULT_CHUNK_SIZE,
    Source,
    StoreOrPath,
    StrPath,
    array_source,
    batch_rows,
    existing,
    opened,
    pick_array,
    pick_arrays,
    require,
    row_bytes,
    sliced,
    source,
    staged,
    stream,
    write_sources,
)


def _torch() -> Any:
    return require("torch", "torch")


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and _torch().is_tensor(value)


def _dtype(torch: Any, tensor: Any, where: str) -> np.dtype:
    try:
        return torch.empty(0, dtype=tensor.dtype).numpy().dtype
    except TypeError as e:  # bfloat16, float8, quantized: NumPy has no such dtype
        raise DTypeError(f"{where}: torch dtype {tensor.dtype} has no NumPy dtype") from e


def _rows(tensor: Any) -> np.ndarray:
    """A CPU NumPy view (or copy) of a tensor of rows."""
    return tensor.detach().cpu().resolve_conj().resolve_neg().numpy()


def _tensor_source(name: Any, tensor: Any, where: str) -> Source:
    """A Source reading a tensor's rows a batch at a time (copied to the CPU batch by batch)."""
    shape = tuple(tensor.shape)
    read = sliced(lambda a, b: _rows(tensor[a:b]), shape[0] if shape else 0)
    return source(name, shape, _dtype(_torch(), tensor, where), read, where)


def tensor_or_array_source(name: Any, value: Any, where: str) -> Source:
    """A Source of a torch tensor, or of anything `np.asarray` takes."""
    if _is_tensor(value):
        return _tensor_source(name, value, where)
    return array_source(name, value, where)


def from_pt(
    input_path: StrPath,
    output_path: StoreOrPath,
    key: str | None = None,
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Import a file written by `torch.save` into the store at `output_path` (a path or an open
    NumPack): a tensor becomes the array named after the file (without its extension); a dict
    (a state dict) gives one array per tensor value, named by its key (values that are not
    tensors are skipped); `key` imports only that entry.

    The file is loaded with `weights_only=True` (no arbitrary pickled code) and memory-mapped
    (`mmap=True`, files in torch's zip format), then copied `chunk_size` bytes of rows at a
    time. Errors: ArrayNotFoundError for a missing key, DTypeError for bfloat16 and other dtypes
    NumPy lacks, InvalidArgumentError for a file torch cannot load this way. If the import
    fails, the store is left without the arrays it was writing.
    """
    torch = _torch()
    path = existing(input_path, "input_path")
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (not zip) format cannot be mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise InvalidArgumentError(f"torch cannot load {path!r} with weights_only ({e})") from e
    if _is_tensor(data):
        if key is not None:
            raise InvalidArgumentError(f"{path!r} holds one tensor, not a dict: pass no key")
        tensors = {os.path.splitext(os.path.basename(path))[0]: data}
    elif isinstance(data, Mapping):
        if key is not None:
            if key not in data:
                raise ArrayNotFoundError(f"no key {key!r} in {path}")
            if not _is_tensor(data[key]):
                raise InvalidArgumentError(f"{path}[{key!r}] is not a tensor")
            tensors = {key: data[key]}
        else:
            tensors = {k: v for k, v in data.items() if _is_tensor(v)}
    else:
        raise InvalidArgumentError(
            f"{path!r} holds a {type(data).__name__}; from_pt reads a tensor or a dict of them"
        )
    sources = [_tensor_source(k, t, f"{path}[{k!r}]") for k, t in tensors.items()]
    write_sources(
        output_path,
        sources,
        drop_if_exists=drop_if_exists,
        chunk_size=chunk_size,
        progress=progress,
        desc="from_pt",
    )


def to_pt(
    input_path: StoreOrPath,
    output_path: StrPath,
    array_names: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Export arrays (`array_names`, default all) of the store at `input_path` (a path or an
    open NumPack) to a `.pt` file holding `{name: tensor}`, which `torch.load` reads.

    Only live rows. Each array's rows are first streamed `chunk_size` bytes at a time into a
    temporary memory-mapped file, which `torch.save` then writes from, so memory stays bounded;
    the output is written to a temporary file that replaces `output_path` at the end: a failed
    export leaves no partial file.
    """
    torch = _torch()
    _progress.check(progress)
    with opened(input_path, create=False) as npk:
        names = pick_arrays(npk, array_names)
        lazies = [npk.load(name, lazy=True) for name in names]
        total = sum(lazy.nbytes for lazy in lazies)
        with staged(output_path) as tmp, _progress.bar(progress, total, "to_pt") as bar:
            scratch = tempfile.mkdtemp(prefix=".numpack-pt-", dir=os.path.dirname(tmp))
            try:
                tensors = {
                    name: torch.from_numpy(_staged_rows(lazy, scratch, i, chunk_size, bar))
                    for i, (name, lazy) in enumerate(zip(names, lazies))
                }
                torch.save(tensors, tmp)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)


def _staged_rows(lazy: Any, scratch: str, i: int, chunk_size: Any, bar: Any) -> np.ndarray:
    """The live rows of a LazyArray in a writable memory-mapped file (an empty array when there
    are none: a file of 0 bytes cannot be mapped)."""
    if lazy.nbytes == 0:
        return np.empty(lazy.shape, lazy.dtype)
    out = np.lib.format.open_memmap(
        os.path.join(scratch, f"{i}.npy"), mode="w+", dtype=lazy.dtype, shape=lazy.shape
    )
    pos = 0
    for batch in stream(lazy, batch_rows(row_bytes(lazy.shape, lazy.dtype), chunk_size)):
        out[pos : pos + len(batch)] = batch
        pos += len(batch)
        bar.update(batch.nbytes)
    return out


def from_tensor(
    tensor: Any,
    output_path: StoreOrPath,
    array_name: str | None = None,
    drop_if_exists: bool = False,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> None:
    """Save a tensor (on any device) into the store at `output_path` (a path or an open
    NumPack) as the array `array_name` (default `"data"`), `chunk_size` bytes of rows at a
    time (a GPU tensor is copied to the CPU a batch at a time)."""
    if not _is_tensor(tensor):
        raise InvalidTypeError(f"from_tensor takes a torch.Tensor, got {type(tensor).__name__}")
    name = "data" if array_name is None else array_name
    write_sources(
        output_path,
        [_tensor_source(name, tensor, f"tensor {name!r}")],
        drop_if_exists=drop_if_exists,
        chunk_size=chunk_size,
        progress=progress,
        desc="from_tensor",
    )


def to_tensor(
    input_path: StoreOrPath,
    array_name: str | None = None,
    device: Any = None,
    dtype: Any = None,
) -> Any:
    """The array `array_name` (default: the store's only array) of the store at `input_path`
    (a path or an open NumPack) as a torch tensor (only live rows), moved to `device` and cast
    to the torch `dtype` when given."""
    torch = _torch()
    with opened(input_path, create=False) as npk:
        tensor = torch.from_numpy(npk.load(pick_array(npk, array_name)))
    return tensor if device is None and dtype is None else tensor.to(device=device, dtype=dtype)
