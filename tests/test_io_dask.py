"""numpack.io.to_dask / from_dask and LazyArray.to_dask on a real dask.distributed LocalCluster
of two worker processes (one cluster for the module), on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_same_array, run_python, snapshot

import numpack.io as nio
from numpack import DTypeError, InvalidArgumentError, InvalidTypeError, NumPack

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _expected(store) -> dict[str, np.ndarray]:
    """A raw and a compressed array, both with dropped rows; returns their live rows."""
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((2000, 8))
    packed = rng.integers(-100, 100, size=(3000, 4), dtype=np.int32)
    store.save({"raw": raw})
    store.save({"packed": packed}, compress=True, block_rows=64)
    store.drop("raw", [0, 999, 1999])
    store.drop("packed", np.arange(100, 400))
    return {
        "raw": np.delete(raw, [0, 999, 1999], axis=0),
        "packed": np.delete(packed, np.arange(100, 400), axis=0),
    }


def test_reductions_on_the_cluster(client, store, backend):
    expected = _expected(store)
    for name, arr in expected.items():
        darr = nio.to_dask(store.path, name, chunks=(500, -1), backend=backend)
        assert darr.shape == arr.shape and darr.dtype == arr.dtype and darr.numblocks[0] > 1
        total, col_max, picked = client.compute([darr.sum(), darr.max(axis=0), darr[::7, 1:3]])
        np.testing.assert_allclose(total.result(), arr.sum())
        assert_same_array(col_max.result(), arr.max(axis=0))
        assert_same_array(picked.result(), arr[::7, 1:3])
        lazy = store.load(name, lazy=True)
        assert_same_array(client.compute(lazy.to_dask(chunks=333)).result(), arr)


def test_default_chunks_follow_compressed_blocks(store):
    import dask

    _expected(store)
    with dask.config.set({"array.chunk-size": "10KiB"}):
        packed = nio.to_dask(store, "packed")
        raw = store.load("raw", lazy=True).to_dask()
    assert {c % 64 for c in packed.chunks[0][:-1]} == {0}  # whole blocks of 64 rows
    assert packed.chunks[0][0] == 640 and packed.chunks[1] == (4,)  # 10 KiB of 16-byte rows
    assert raw.chunks[0][0] == 160 and raw.chunks[1] == (8,)  # 10 KiB of 64-byte rows
    assert nio.to_dask(store, "packed").chunks[0] == (2700,)  # default 128 MiB: one chunk


def test_a_changed_array_is_not_read_as_the_old_one(client, store, backend):
    store.save({"a": np.arange(100.0)})
    darr = store.load("a", lazy=True).to_dask(chunks=10)
    store.append({"a": np.ones(5)})
    with pytest.raises(InvalidArgumentError, match="changed shape"):
        client.compute(darr.sum()).result()


def test_from_dask_then_read_in_another_process(client, tmp_path, backend):
    darr = da.arange(60_000, dtype="f4", chunks=7_000).reshape(2_000, 30).rechunk((300, 7))
    path = tmp_path / "out"
    nio.from_dask(darr, path, "x", backend=backend)
    nio.from_dask(darr.astype(">i8")[::-1], path, "y", compress=True, backend=backend)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging file left
    expected = np.arange(60_000, dtype="f4").reshape(2_000, 30)
    with NumPack(path, backend=backend) as npk:
        assert_same_array(npk.load("x"), expected)
        assert_same_array(npk.load("y"), expected.astype("i8")[::-1])
        assert npk.get_metadata()["arrays"]["y"]["compression"] is not None
    code = (
        "import sys, numpy as np; from numpack import NumPack;"
        "a = NumPack(sys.argv[1], backend=sys.argv[2]).load('x');"
        "print(a.shape, a.dtype, float(a.sum()))"
    )
    result = run_python(code, path, backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(2000,", "30)", "float32", str(float(expected.sum()))]


def test_from_dask_empty_and_one_dimensional(client, store, backend):
    nio.from_dask(da.zeros((0, 3), chunks=1), store, "empty", backend=backend)
    nio.from_dask(da.ones(10, dtype=bool, chunks=3), store, "flags", backend=backend)
    assert store.get_shape("empty") == (0, 3)
    assert_same_array(store.load("flags"), np.ones(10, dtype=bool))


def test_failed_from_dask_leaves_the_store_as_it_was(client, store, tmp_path):
    store.save({"x": np.arange(3.0)})
    before = snapshot(store.path)

    def fail_on_block_3(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 3:
            raise RuntimeError("worker failed")
        return block

    darr = da.ones((100, 2), chunks=(10, 2)).map_blocks(fail_on_block_3, dtype="f8")
    with pytest.raises(RuntimeError, match="worker failed"):
        nio.from_dask(darr, store, "x")
    assert snapshot(store.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_from_dask_bad_inputs(store):
    cases = [
        (InvalidTypeError, lambda: nio.from_dask(np.ones(3), store, "x")),
        (InvalidTypeError, lambda: nio.from_dask(da.ones(3), store, 3)),
        (InvalidArgumentError, lambda: nio.from_dask(da.ones(()), store, "x")),
        (DTypeError, lambda: nio.from_dask(da.from_array(np.array(["a", "b"])), store, "x")),
    ]
    darr = da.arange(10, chunks=3)
    cases.append((InvalidArgumentError, lambda: nio.from_dask(darr[darr > 4], store, "x")))
    for error, call in cases:
        with pytest.raises(error):
            call()
    assert store.get_member_list() == []
