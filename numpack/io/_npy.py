""".npy and .npz files: from_npy / to_npy (NumPy is the only library they need)."""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

from numpy.lib import format as npy_format

from .. import _convert, _progress
from .._errors import InvalidArgumentError
from ._common import (
    DEFAULT_CHUNK_SIZE,
    Batches,
    Source,
    StoreOrPath,
    StrPath,
    batch_rows,
    existing,
    fspath,
    opened,
    os_errors,
    pick_arrays,
    row_bytes,
    source,
    staged,
    stream,
    write_sources,
)


def _source(s: _convert._Source) -> Source:
    def batches(rows: int) -> Batches:
        with s.reader() as read:
            for start in range(0, s.shape[0], rows):
                yield read(min(rows, s.shape[0] - start))

    return source(s.name, s.shape, s.dtype, batches, s.where)


def from_npy(
    input_path: StrPath,
    output_path: StoreOrPath,
    array_name: str | None = None,
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: bool = False,
) -> None:
    """Import a `.npy` file (as the array `array_name`, default: the file name without `.npy`)
    or every member of a `.npz` file (named as `np.load` names them; `array_name` is ignored)
    into the store at `output_path` (a path or an open NumPack).

    Rows are copied `chunk_size` bytes at a time: a `.npy` is memory-mapped, a `.npz` member
    read from the zip stream, so files larger than memory import. `drop_if_exists=True` empties
    the store first (once the input has been checked). An array of the same name is replaced.
    If the import fails, the store is left without the arrays it was writing.
    """
    file = existing(input_path, "input_path")
    if file.lower().endswith(".npz"):
        sources = _convert._npz_sources(file)
    else:
        sources = [_convert._npy_source(file, array_name)]
    write_sources(
        output_path,
        [_source(s) for s in sources],
        drop_if_exists=drop_if_exists,
        chunk_size=chunk_size,
        progress=progress,
        desc="from_npy",
    )


def to_npy(
    input_path: StoreOrPath,
    output_path: StrPath,
    array_names: list[str] | None = None,
    single_file: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    compressed: bool = False,
    progress: bool = False,
) -> None:
    """Export arrays of the store at `input_path` (a path or an open NumPack) to one `.npy` file
    (a single array) or a `.npz` file (any number; `np.load(path)[name]` reads each back).

    `array_names` picks the arrays (default: all). `single_file` forces `.npy` (True) or `.npz`
    (False); None decides by the extension of `output_path`, which is used exactly as given.
    `.npz` members are stored uncompressed like `np.savez`, or deflated like
    `np.savez_compressed` with `compressed=True`. Only live rows are exported (dropped rows are
    not). Rows are streamed `chunk_size` bytes at a time (a `.npy` in `numpack.export_npy`'s
    32 MiB batches) into a temporary file that replaces `output_path` at the end: a failed
    export leaves no partial file.
    """
    out = fspath(output_path, "output_path")
    if single_file is None:
        ext = os.path.splitext(out)[1].lower()
        if ext not in (".npy", ".npz"):
            raise InvalidArgumentError(
                f"{out!r} ends in neither .npy nor .npz: pass single_file=True or False"
            )
        single_file = ext == ".npy"
    _progress.check(progress)
    with opened(input_path, create=False) as npk:
        names = pick_arrays(npk, array_names)
        if single_file:
            if len(names) != 1:
                raise InvalidArgumentError(
                    f"a .npy file holds one array, and {len(names)} were chosen: name one in "
                    "array_names, or write a .npz"
                )
            batch_rows(1, chunk_size)  # checks the argument
            _convert.export_npy(npk, names[0], out, progress=progress)
            return
        lazies = [npk.load(name, lazy=True) for name in names]
        method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        total = sum(lazy.nbytes for lazy in lazies)
        with staged(out) as tmp, _progress.bar(progress, total, "to_npy") as bar:
            with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
                for name, lazy in zip(names, lazies):
                    rows = batch_rows(row_bytes(lazy.shape, lazy.dtype), chunk_size)
                    with zf.open(name + ".npy", "w", force_zip64=True) as f:
                        f.write(_header(lazy))
                        for batch in stream(lazy, rows):
                            with os_errors():
                                f.write(batch.data)
                            bar.update(batch.nbytes)


def _header(lazy: Any) -> bytes:
    """The .npy header of a C-order array of the LazyArray's shape and dtype."""
    header = {
        "descr": npy_format.dtype_to_descr(lazy.dtype),
        "fortran_order": False,
        "shape": lazy.shape,
    }
    buf = io.BytesIO()
    try:
        npy_format.write_array_header_1_0(buf, header)
    except ValueError:  # the header does not fit format 1.0
        buf = io.BytesIO()
        npy_format.write_array_header_2_0(buf, header)
    return buf.getvalue()
