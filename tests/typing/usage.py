"""A typed use of numpack's public API, checked by `mypy --strict` in stubs/check.sh.

Each `assert_type` states the type a user's editor and type checker must see; the file also
runs (stubs/check.sh runs it), so the annotations cannot drift from what the calls return.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import numpack
from numpack import NPYT, LazyArray, NumPack, NumPackError, StreamLoader


def use_numpack(folder: Path) -> None:
    with NumPack(folder / "store", drop_if_exists=True) as pack:
        assert_type(pack, NumPack)
        emb = np.random.default_rng(0).random((100, 8), dtype=np.float32)
        pack.save({"emb": emb, "ids": np.arange(100)})
        pack.save({"small": emb[:10]}, compress=True, compression_level=3, block_rows=4)
        pack.append({"ids": np.arange(100, 110), "new": [1, 2, 3]})
        pack.replace({"emb": emb[:2]}, [0, 1])
        pack.replace({"emb": emb[5]}, 5)
        pack.drop("ids", np.array([0, 1]))
        pack.drop(["new"])
        pack.compact(progress=False)

        whole = pack.load("emb")
        assert_type(whole, npt.NDArray[Any])
        assert_type(pack.load("emb", lazy=False), npt.NDArray[Any])
        assert_type(pack["emb"], npt.NDArray[Any])

        lazy = pack.load("emb", lazy=True)
        assert_type(lazy, LazyArray)
        assert isinstance(lazy, LazyArray)

        flag = len(sys.argv) > 5
        either = pack.load("emb", lazy=flag)
        assert_type(either, "npt.NDArray[Any] | LazyArray")

        assert_type(pack.getitem("emb", [3, 1]), npt.NDArray[Any])
        assert_type(pack.getitem("emb", slice(0, 4)), npt.NDArray[Any])

        shape: tuple[int, ...] = pack.get_shape("emb")
        assert_type(pack.get_shape(), dict[str, tuple[int, ...]])
        assert shape == (100, 8)
        assert_type(pack.get_member_list(), list[str])
        assert_type(pack.get_modify_time("emb"), int)
        assert_type(pack.get_metadata(), dict[str, Any])
        assert_type(pack.has_array("emb"), bool)
        assert_type("emb" in pack, bool)
        assert_type(len(pack), int)
        names: list[str] = list(pack)
        assert names == pack.get_member_list()
        assert_type(pack.path, str)

        loader = pack.stream_load("emb", buffer_size=32)
        assert_type(loader, StreamLoader)
        assert_type(len(loader), int)
        for batch in loader:
            assert_type(batch, npt.NDArray[Any])
            assert batch.shape[1:] == (8,)

        use_lazy(lazy)
        assert_type(repr(pack), str)
    try:
        pack.load("emb")
    except NumPackError as e:
        assert_type(e, NumPackError)
        assert isinstance(e, numpack.StoreClosedError)


def use_lazy(lazy: LazyArray) -> None:
    assert_type(lazy.shape, tuple[int, ...])
    assert_type(lazy.dtype, np.dtype[Any])
    assert_type(lazy.ndim, int)
    assert_type(lazy.size, int)
    assert_type(lazy.nbytes, int)
    assert_type(len(lazy), int)

    mask = np.zeros(len(lazy), dtype=np.bool_)
    mask[::3] = True
    assert_type(lazy[2:5], npt.NDArray[Any])
    assert_type(lazy[[0, 3]], npt.NDArray[Any])
    assert_type(lazy[np.array([0, 3], dtype=np.int64)], npt.NDArray[Any])
    assert_type(lazy[mask], npt.NDArray[Any])
    assert_type(lazy.rows(slice(0, 3)), npt.NDArray[Any])
    assert_type(lazy.rows(np.arange(3)), npt.NDArray[Any])
    sub: npt.NDArray[Any] = lazy[:, 1:3]  # a tuple key: Any, as in NumPy
    assert sub.shape == (len(lazy), 2)
    row: npt.NDArray[np.float32] = lazy[0]  # an int index: one row (Any, as in NumPy)
    cell: float = lazy[0, 1]
    assert row.shape == (8,) and isinstance(cell, np.floating)

    assert_type(lazy.to_numpy(), npt.NDArray[Any])
    assert_type(np.asarray(lazy), npt.NDArray[Any])
    assert_type(lazy.reshape(-1), npt.NDArray[Any])
    assert_type(lazy.T, npt.NDArray[Any])
    rows: Iterator[Any] = iter(lazy)
    assert next(rows).shape == (8,)

    query = np.ones(8, dtype=np.float32)
    scores = np.inner(query, lazy)
    top: npt.NDArray[np.intp] = np.argsort(scores)[-3:]
    assert top.shape == (3,)
    product = lazy @ query
    assert np.allclose(product, scores)


def use_npyt(folder: Path) -> None:
    tick = np.dtype([("t", "<i8"), ("price", "<f8")])
    path = folder / "ticks.npy"
    writer = NPYT(path, dtype=tick).save(capacity=16).load("r+")
    assert_type(writer, NPYT)
    rows = np.zeros(4, dtype=tick)
    assert_type(writer.append(rows), int)
    assert_type(writer.expend(np.zeros(20, dtype=tick)), bool)

    with NPYT(os.fspath(path)).load("r") as reader:
        assert_type(reader, NPYT)
        assert_type(reader.read(8), npt.NDArray[Any])
        assert_type(reader.read(8, prefetch=2), npt.NDArray[Any])
        assert_type(reader.data(), npt.NDArray[Any])
        assert_type(reader.head(2), npt.NDArray[Any])
        assert_type(reader.tail(2), npt.NDArray[Any])
        assert_type(reader.size(), int)
        assert_type(reader.capacity(), int)
        assert_type(reader.end(), int)
        assert_type(reader.dtype(), "np.dtype[Any] | None")
        assert_type(reader.filename(), Path)
        assert_type(reader.info(), "tuple[int, int, int, int, int] | None")
        assert reader.size() == 24
    assert_type(writer.pop(2), npt.NDArray[Any])
    writer.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        use_numpack(Path(tmp))
        use_npyt(Path(tmp))
    print("tests/typing/usage.py: ran")


if __name__ == "__main__":
    main()
