"""Conversions between NumPack stores and the formats arrays are kept in, and dask.

The names and signatures are NumPack 0.7's (`from_X(input_path, output_path, ...)` into a store,
`to_X(input_path, output_path, ...)` out of one, `from_obj(obj, output_path)` and
`to_obj(input_path)` for objects in memory); every store argument also takes an open NumPack.

Every converter streams: it holds `chunk_size` bytes of rows at a time (DEFAULT_CHUNK_SIZE,
32 MiB), so arrays larger than memory convert; `progress=True` shows a tqdm bar when tqdm is
installed. dtypes are kept exactly (byte order aside: a store is little-endian). Exports hold
only live rows (dropped rows are not exported). A failed import leaves the store without the
arrays it was writing; a failed export leaves no output file (it is written under a temporary
name and renamed). Each format's library is imported when first used; a missing one raises
DependencyError (an ImportError) naming the extra that installs it: `pip install
'numpack[zarr]'` (or hdf5, arrow, pandas, safetensors, torch, dask; `all` but torch).
"""

from .._errors import DependencyError
from ._arrow import (
    from_feather,
    from_feather_file,
    from_parquet,
    from_parquet_file,
    from_parquet_table,
    from_table,
    to_feather,
    to_feather_file,
    to_parquet,
    to_parquet_file,
    to_parquet_table,
    to_table,
)
from ._common import DEFAULT_CHUNK_SIZE
from ._dask import from_dask, to_dask
from ._hdf5 import from_hdf5, to_hdf5
from ._npy import from_npy, to_npy
from ._package import get_package_info, pack, unpack
from ._pandas import from_dataframe, to_dataframe
from ._safetensors import (
    from_safetensors_file,
    from_tensor_dict,
    get_safetensors_metadata,
    iter_safetensors,
    to_safetensors_file,
    to_tensor_dict,
)
from ._torch import from_pt, from_tensor, to_pt, to_tensor
from ._zarr import from_zarr, to_zarr

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DependencyError",
    "from_dask",
    "from_dataframe",
    "from_feather",
    "from_feather_file",
    "from_hdf5",
    "from_npy",
    "from_parquet",
    "from_parquet_file",
    "from_parquet_table",
    "from_pt",
    "from_safetensors_file",
    "from_table",
    "from_tensor",
    "from_tensor_dict",
    "from_zarr",
    "get_package_info",
    "get_safetensors_metadata",
    "iter_safetensors",
    "pack",
    "to_dask",
    "to_dataframe",
    "to_feather",
    "to_feather_file",
    "to_hdf5",
    "to_npy",
    "to_parquet",
    "to_parquet_file",
    "to_parquet_table",
    "to_pt",
    "to_safetensors_file",
    "to_table",
    "to_tensor",
    "to_tensor_dict",
    "to_zarr",
    "unpack",
]
