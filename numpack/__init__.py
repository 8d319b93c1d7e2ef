"""numpack: keep many large NumPy arrays on disk and change them in place."""

from ._batch import BatchModeContext, WritableBatchMode
from ._compat07 import force_cleanup_windows_handles, get_backend_info
from ._convert import export_npy, import_folder, import_npy, import_npz
from ._errors import (
    ArrayNotFoundError,
    CorruptStoreError,
    DTypeError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPackError,
    ReadOnlyStoreError,
    RowIndexError,
    ShapeMismatchError,
    StoreClosedError,
    StoreIOError,
    StoreLockedError,
    StrictContextError,
    WriterSupersededError,
)
from ._import07 import import_numpack07
from ._lazy import LazyArray
from ._npy8 import NPY8
from ._npyt import NPYT
from ._search import top_k
from ._store import NumPack, StreamLoader
from .io._package import get_package_info, pack, unpack

__version__ = "0.1.0"

__all__ = [
    "ArrayNotFoundError",
    "BatchModeContext",
    "CorruptStoreError",
    "DTypeError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LazyArray",
    "NPY8",
    "NPYT",
    "NumPack",
    "NumPackError",
    "ReadOnlyStoreError",
    "RowIndexError",
    "ShapeMismatchError",
    "StoreClosedError",
    "StoreIOError",
    "StoreLockedError",
    "StreamLoader",
    "StrictContextError",
    "WritableBatchMode",
    "WriterSupersededError",
    "export_npy",
    "force_cleanup_windows_handles",
    "get_backend_info",
    "get_package_info",
    "import_folder",
    "import_npy",
    "import_npz",
    "import_numpack07",
    "pack",
    "top_k",
    "unpack",
]
