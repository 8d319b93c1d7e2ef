"""The dtypes numpack stores and how arrays are brought to the on-disk form."""

from __future__ import annotations

import numpy as np

from ._errors import DTypeError, InvalidArgumentError, ShapeMismatchError

# dtype.str of every supported dtype, little-endian: exactly the `dtype` values of the format.
SUPPORTED = (
    "|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8",
    "<f2", "<f4", "<f8", "<c8", "<c16",
)  # fmt: skip


def disk_dtype(dtype: np.dtype, name: str) -> np.dtype:
    """The little-endian dtype an array of `dtype` is stored as, or DTypeError."""
    le = dtype.newbyteorder("<") if dtype.byteorder not in ("|", "<") else dtype
    if le.str not in SUPPORTED:
        raise DTypeError(
            f"array {name!r}: dtype {dtype} is not supported "
            "(bool, int8-64, uint8-64, float16/32/64, complex64/128 are)"
        )
    return le


def to_disk(arr, name: str) -> np.ndarray:
    """`arr` as a C-contiguous little-endian ndarray with at least one dimension."""
    arr = np.asarray(arr)
    if arr.ndim == 0:
        raise InvalidArgumentError(
            f"array {name!r}: 0-d arrays cannot be stored; a store holds rows (use arr.reshape(1))"
        )
    return np.ascontiguousarray(arr, dtype=disk_dtype(arr.dtype, name))


def cast_rows(arr, dtype: np.dtype, row_shape: tuple, name: str) -> np.ndarray:
    """Rows to write into an array of `dtype` and `row_shape`, cast as NumPy's 'same_kind'."""
    arr = np.asarray(arr)
    if arr.ndim == len(row_shape):  # a single row
        arr = arr[np.newaxis]
    if tuple(arr.shape[1:]) != tuple(row_shape):
        raise ShapeMismatchError(
            f"array {name!r}: rows of shape {tuple(arr.shape[1:])} do not fit rows of shape "
            f"{tuple(row_shape)}"
        )
    if arr.dtype != dtype and not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise DTypeError(f"array {name!r}: cannot cast {arr.dtype} to the array's dtype {dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def native(dtype_str: str) -> np.dtype:
    """The native-endian dtype for a dtype string of the format."""
    return np.dtype(dtype_str).newbyteorder("=")
