"""NumPack 0.7's documented Python API, where it goes beyond numpack's own.

The public NumPack 0.7 (BirchKwok/NumPack, `docs/`) is what numpack's users ran before; code
written for it runs unchanged. This module holds the pieces that are not NumPack methods:
the top-level functions, the shape type of `get_metadata()`, the error of its strict context
mode, and the LazyArray methods 0.7 has and numpack did not (`LazyArray07`).
"""

from __future__ import annotations

import gc
import operator
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._errors import InvalidArgumentError, InvalidTypeError, StoreClosedError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# Rows are streamed (clone, import_numpack07) in chunks of about this many bytes.
CHUNK_BYTES = 32 << 20


def chunk_rows(row_bytes: int, multiple: int = 1) -> int:
    """Rows in a chunk of about CHUNK_BYTES (at least one), rounded up to a `multiple`."""
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    return -(-rows // multiple) * multiple


class Shape(tuple):
    """An array shape in `get_metadata()`: a tuple, as `.shape` is in NumPy and numpack, that
    also compares equal to the same list, which is what NumPack 0.7 gives there."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return tuple.__eq__(self, tuple(other) if isinstance(other, list) else other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


def user_stacklevel() -> int:
    """The `warnings.warn` stacklevel of the nearest caller outside the numpack package, so a
    warning points at the user's line."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def context_rule(strict_context_mode: bool, warn_no_context: bool | None) -> str | None:
    """What a NumPack does with a call made outside a `with` block: "strict" (raise),
    "warn" (warn once) or None. `warn_no_context=None` means True on Windows, as in 0.7."""
    if not isinstance(strict_context_mode, bool):
        raise InvalidTypeError(f"strict_context_mode must be a bool, got {strict_context_mode!r}")
    if warn_no_context is not None and not isinstance(warn_no_context, bool):
        raise InvalidTypeError(f"warn_no_context must be a bool or None, got {warn_no_context!r}")
    if strict_context_mode:
        return "strict"
    if warn_no_context is None:
        warn_no_context = platform.system() == "Windows"
    return "warn" if warn_no_context else None


def force_cleanup_windows_handles() -> bool:
    """NumPack 0.7's handle cleanup: runs a garbage-collection pass, so LazyArrays and memory
    maps nothing refers to any more release their files; returns True. numpack releases a
    store's files in `close()` (or at the end of a `with` block) on every platform."""
    gc.collect()
    return True


def get_backend_info() -> dict[str, Any]:
    """The backend `NumPack(path)` picks by default ("rust" or "python": the NUMPACK_BACKEND
    environment variable, else rust when its extension imports), the platform
    (`platform.system()`), whether it is Windows, and numpack's version."""
    from . import __version__, _backend

    system = platform.system()
    return {
        "backend_type": _backend.load(None)[0],
        "platform": system,
        "is_windows": system == "Windows",
        "version": __version__,
    }


# -- LazyArray ----------------------------------------------------------------------------------


def _index_array(indices: Any) -> np.ndarray:
    arr = np.asarray(indices)
    return (arr.astype(np.int64) if arr.size == 0 else arr).reshape(-1)


class LazyArray07:
    """The LazyArray methods of NumPack 0.7 that numpack's own LazyArray lacked.

    NumPy's operators (`+ - * / // % ** == != < <= > >= & | ^ << >>`, unary `- + ~`) read the
    array and return an ndarray, as in 0.7; an augmented assignment (`lazy += 1`) therefore
    binds the name to a new ndarray and leaves the store as it was. `copy()` reads the array
    into memory; `close()` (or the end of a `with lazy:` block) releases its mapping. The gather
    helpers are numpack's gather under 0.7's names; the tuning knobs (`intelligent_warmup`,
    `choose_optimal_algorithm`) report what numpack really does.
    """

    if TYPE_CHECKING:  # provided by LazyArray
        shape: tuple[int, ...]
        _view: Any
        _path: str
        _name: str

        def rows(self, index: Any) -> Any: ...
        def to_numpy(self) -> np.ndarray: ...

    # Kept hashable by identity, as before the operators (NumPy arrays are not hashable).
    __hash__ = object.__hash__

    def copy(self) -> np.ndarray:
        """The whole array, read into memory the result owns (as `to_numpy()`)."""
        return self.to_numpy()

    def close(self) -> None:
        """Release the file mapping; reading afterwards raises StoreClosedError (shape and
        dtype stay). Arrays read from it before are unaffected. Idempotent."""
        if not self.closed:
            self._view = _ClosedView(self._path, self._name, self._view.dropped)

    @property
    def closed(self) -> bool:
        return isinstance(self._view, _ClosedView)

    def __enter__(self) -> LazyArray07:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def vectorized_gather(self, indices: Sequence[int] | npt.NDArray[np.integer[Any]]) -> Any:
        """The rows at `indices`, stacked, in their order (numpack's gather)."""
        return self.rows(_index_array(indices))

    def mega_batch_get_rows(
        self, indices: Sequence[int] | npt.NDArray[np.integer[Any]], batch_size: int
    ) -> list[np.ndarray]:
        """The rows at `indices` as a list of 1-D arrays (each row flattened, as in 0.7),
        gathered `batch_size` rows at a time."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise InvalidTypeError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
        idx = _index_array(indices)
        width = int(np.prod(self.shape[1:], dtype=np.int64))
        out: list[np.ndarray] = []
        for start in range(0, len(idx), int(batch_size)):
            block = self.rows(idx[start : start + int(batch_size)])
            out.extend(block.reshape(len(block), width))
        return out

    def _mask(self, mask: Sequence[bool] | npt.NDArray[np.bool_]) -> np.ndarray:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise InvalidTypeError(f"array {self._name!r}: a mask holds bools, got {m.dtype}")
        if m.shape != self.shape[:1]:
            raise InvalidArgumentError(
                f"array {self._name!r}: mask of shape {m.shape} does not match {self.shape[0]} rows"
            )
        return m

    def parallel_boolean_index(self, mask: Sequence[bool] | npt.NDArray[np.bool_]) -> Any:
        """The rows where `mask` (one bool a row) is True; InvalidArgumentError (a ValueError)
        when its length is not the row count. numpack gathers them in one call, on Rust's
        threads with the rust backend."""
        return self.rows(self._mask(mask))

    boolean_index_production = parallel_boolean_index
    boolean_index_adaptive_algorithm = parallel_boolean_index
    boolean_index_smart = parallel_boolean_index
    boolean_index_adaptive = parallel_boolean_index

    def choose_optimal_algorithm(self, mask: Sequence[bool] | npt.NDArray[np.bool_]) -> str:
        """The strategy numpack uses for `lazy[mask]`: always "gather" (it has one: the live
        rows are gathered, block by block when the array is compressed)."""
        self._mask(mask)
        return "gather"

    def intelligent_warmup(self, workload_hint: str = "sequential") -> None:
        """0.7's cache warm-up hint. numpack keeps no cache of its own (the operating system's
        page cache holds what was read), so this checks the hint is a str and does nothing."""
        if not isinstance(workload_hint, str):
            raise InvalidTypeError(f"workload_hint must be a str, got {workload_hint!r}")


class _ClosedView:
    """What a closed LazyArray reads through: every read raises StoreClosedError."""

    def __init__(self, path: str, name: str, dropped: int) -> None:
        self._what = f"LazyArray {name!r} of {path}"
        self.dropped = dropped  # for the repr

    def _closed(self, *args: object) -> Any:
        raise StoreClosedError(f"the {self._what} is closed")

    read = gather = buffer = _closed


def _binary(op: Any) -> tuple[Any, Any]:
    def forward(self: LazyArray07, other: Any) -> Any:
        return op(np.asarray(self), other)

    def reflected(self: LazyArray07, other: Any) -> Any:
        return op(other, np.asarray(self))

    return forward, reflected


for _name, _op in (
    ("add", operator.add),
    ("sub", operator.sub),
    ("mul", operator.mul),
    ("truediv", operator.truediv),
    ("floordiv", operator.floordiv),
    ("mod", operator.mod),
    ("pow", operator.pow),
    ("and", operator.and_),
    ("or", operator.or_),
    ("xor", operator.xor),
    ("lshift", operator.lshift),
    ("rshift", operator.rshift),
):
    _forward, _reflected = _binary(_op)
    setattr(LazyArray07, f"__{_name}__", _forward)
    setattr(LazyArray07, f"__r{_name}__", _reflected)
for _name, _op in (
    ("eq", operator.eq),
    ("ne", operator.ne),
    ("lt", operator.lt),
    ("le", operator.le),
    ("gt", operator.gt),
    ("ge", operator.ge),
):
    setattr(LazyArray07, f"__{_name}__", _binary(_op)[0])
for _name, _unary in (("neg", operator.neg), ("pos", operator.pos), ("invert", operator.invert)):
    setattr(LazyArray07, f"__{_name}__", lambda self, _op=_unary: _op(np.asarray(self)))


__all__ = [
    "LazyArray07",
    "Shape",
    "force_cleanup_windows_handles",
    "get_backend_info",
]
