"""The exception hierarchy shared by both backends (the Rust core imports these classes)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

_F = TypeVar("_F", bound=Callable[..., Any])


class NumPackError(Exception):
    """Base class of every exception numpack raises."""


class ArrayNotFoundError(NumPackError, KeyError):
    """No array of that name in the store."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class RowIndexError(NumPackError, IndexError):
    """A row index is out of range."""


class ShapeMismatchError(NumPackError, ValueError):
    """Rows whose shape does not fit the array."""


class DTypeError(NumPackError, ValueError):
    """A dtype numpack does not store, or that cannot be cast to the array's dtype."""


class InvalidArgumentError(NumPackError, ValueError):
    """An argument with a bad value (empty name, 0-d array, bad batch size...)."""


class InvalidTypeError(NumPackError, TypeError):
    """An argument of the wrong type (a float index, a name that is not a str...)."""


class StoreClosedError(NumPackError, ValueError):
    """The NumPack object was closed."""


class CorruptStoreError(NumPackError, OSError):
    """Metadata or data that fails validation."""


class StoreLockedError(NumPackError, OSError):
    """Another process held the store's write lock past the timeout."""


class WriterSupersededError(StoreLockedError):
    """A newer writer object of the same NPYT file or NPY8 folder in this process took over its
    write lock (a re-run `NPYT(f).load("r+")`); the older object may no longer write."""


class StrictContextError(NumPackError, RuntimeError):
    """A NumPack made with `strict_context_mode=True` was used outside a `with` block (NumPack
    0.7 raises RuntimeError there, so this is one)."""


class StoreIOError(NumPackError, OSError):
    """An operating-system error while reading or writing the store (disk full, permissions)."""


class ReadOnlyStoreError(StoreIOError):
    """A call that writes, on a store that cannot be written: a package (spec/FORMAT.md 10),
    which `numpack.io.unpack` turns into a store directory. Its errno is EROFS."""


class DependencyError(NumPackError, ImportError):
    """An optional library a conversion needs is not installed (the message names the extra)."""


def os_errors(method: _F) -> _F:
    """Report operating-system errors as StoreIOError, so every error is a NumPackError."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except NumPackError:
            raise
        except OSError as e:
            # Name the file, or else the store (or file) of the object the method belongs to.
            where = e.filename
            if where is None and args:
                where = getattr(args[0], "path", None)
            raise StoreIOError(e.errno, e.strerror or str(e), where) from e

    return cast(_F, wrapper)
