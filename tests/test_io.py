"""numpack.io conversions against the real libraries, on both backends: round trips of every
dtype a format holds, dropped rows, batching, hostile inputs, and nothing half-written.

Every test runs once per backend: stores are the `store` fixture or paths, which NumPack opens
with the test's backend (NUMPACK_BACKEND).
"""

from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import pytest
from helpers import DTYPES, assert_same_array, data_files, make_array, snapshot

import numpack.io as nio
from numpack import (
    ArrayNotFoundError,
    CorruptStoreError,
    DTypeError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPack,
    NumPackError,
    StoreIOError,
)
from numpack.io import DependencyError

SMALL = 100  # chunk_size in bytes: many batches even for the small arrays below
NO_COMPLEX = [d for d in DTYPES if d.kind != "c"]
SHAPES = [(0,), (0, 3), (1,), (37,), (23, 3), (11, 2, 3)]


@pytest.fixture(autouse=True)
def _path_backend(backend, monkeypatch):
    """Paths given to numpack.io open their stores with this test's backend."""
    monkeypatch.setenv("NUMPACK_BACKEND", backend)


def fill(store) -> dict[str, np.ndarray]:
    """Arrays of every dtype and some shapes, one compressed, two with dropped rows, saved into
    `store`; returns their live rows."""
    expected = {str(d): make_array(d, (23, 3), seed=i) for i, d in enumerate(DTYPES)}
    for i, shape in enumerate(SHAPES):
        expected[f"s{i}"] = make_array(np.float32, shape, seed=i)
    store.save(expected)
    store.save({"zipped": make_array(np.int32, (50, 4))}, compress=True, block_rows=8)
    expected["zipped"] = store.load("zipped")
    for name in ("zipped", "float64"):
        store.drop(name, [0, 5, 6, 22])
        expected[name] = np.delete(expected[name], [0, 5, 6, 22], axis=0)
    return expected


def assert_arrays(store, expected: dict[str, np.ndarray]) -> None:
    assert sorted(store.get_member_list()) == sorted(expected)
    for name, arr in expected.items():
        assert_same_array(store.load(name), arr)


# -- multi-array formats: .npz, zarr, HDF5, safetensors -------------------------------------

# format: (suffix, export(store, path), import(path, store), what it cannot hold)
MULTI = {
    "npz": (
        ".npz",
        lambda s, p: nio.to_npy(s, p, chunk_size=SMALL),
        lambda p, s: nio.from_npy(p, s, chunk_size=SMALL),
        (),
    ),
    "zarr": (
        ".zarr",
        lambda s, p: nio.to_zarr(s, p, chunk_size=SMALL),
        lambda p, s: nio.from_zarr(p, s, chunk_size=SMALL),
        (),
    ),
    "hdf5": (
        ".h5",
        lambda s, p: nio.to_hdf5(s, p, chunk_size=SMALL),
        lambda p, s: nio.from_hdf5(p, s, chunk_size=SMALL),
        (),
    ),
    "safetensors": (
        ".safetensors",
        lambda s, p: nio.to_safetensors_file(s, p, chunk_size=SMALL),
        lambda p, s: nio.from_safetensors_file(p, s, chunk_size=SMALL),
        ("complex128",),
    ),
}


@pytest.mark.parametrize("fmt", MULTI)
def test_round_trip_every_dtype(store, tmp_path, fmt):
    suffix, export, import_, missing = MULTI[fmt]
    expected = fill(store)
    store.drop(list(missing))
    for name in missing:
        del expected[name]
    export(store, tmp_path / f"out{suffix}")
    with NumPack(tmp_path / "back") as back:
        import_(tmp_path / f"out{suffix}", back)
        assert_arrays(back, expected)


@pytest.mark.parametrize("fmt", MULTI)
def test_export_then_import_by_path(tmp_path, fmt):
    suffix, export, import_, _ = MULTI[fmt]
    with NumPack(tmp_path / "src") as src:
        src.save({"a": np.arange(12.0).reshape(4, 3)})
    export(tmp_path / "src", str(tmp_path / f"out{suffix}"))
    import_(str(tmp_path / f"out{suffix}"), str(tmp_path / "dst"))
    with NumPack(tmp_path / "dst") as dst:
        assert_same_array(dst.load("a"), np.arange(12.0).reshape(4, 3))


def test_npz_and_npy_are_numpys(store, tmp_path):
    expected = fill(store)
    nio.to_npy(store, tmp_path / "all.npz", chunk_size=SMALL)
    with np.load(tmp_path / "all.npz") as z:
        assert sorted(z.files) == sorted(expected)
        for name, arr in expected.items():
            assert_same_array(z[name], arr)
    nio.to_npy(store, tmp_path / "z.npz", ["zipped", "int8"], compressed=True)
    with np.load(tmp_path / "z.npz") as z:
        assert_same_array(z["zipped"], expected["zipped"])
    nio.to_npy(store, tmp_path / "one.npy", ["zipped"])
    assert_same_array(np.load(tmp_path / "one.npy"), expected["zipped"])
    nio.to_npy(store, tmp_path / "noext", ["int8"], single_file=True)
    assert_same_array(np.load(tmp_path / "noext"), expected["int8"])
    nio.from_npy(tmp_path / "one.npy", store, "again", chunk_size=SMALL)
    nio.from_npy(tmp_path / "one.npy", store)  # named after the file
    assert_same_array(store.load("again"), expected["zipped"])
    assert_same_array(store.load("one"), expected["zipped"])


def test_to_npy_choices(store, tmp_path):
    store.save({"a": np.arange(3), "b": np.arange(4)})
    with pytest.raises(InvalidArgumentError, match="one array"):
        nio.to_npy(store, tmp_path / "x.npy")
    with pytest.raises(InvalidArgumentError, match="single_file"):
        nio.to_npy(store, tmp_path / "x.bin")
    with pytest.raises(ArrayNotFoundError):
        nio.to_npy(store, tmp_path / "x.npz", ["a", "nope"])
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]


def test_zarr_groups_and_single_arrays(store, tmp_path):
    zarr = pytest.importorskip("zarr")
    store.save({"a": np.arange(10, dtype="u2"), "b": np.ones((3, 2), "f2")})
    nio.to_zarr(store, tmp_path / "g.zarr", ["a"], group="sub/deeper", compressor=None)
    assert zarr.open_group(tmp_path / "g.zarr", mode="r")["sub/deeper/a"].compressors == ()
    with NumPack(tmp_path / "x") as x:
        nio.from_zarr(tmp_path / "g.zarr", x, group="sub/deeper")
        assert_same_array(x.load("a"), np.arange(10, dtype="u2"))
        nio.from_zarr(tmp_path / "g.zarr", x, ["sub/deeper/a"])
        assert_same_array(x.load("sub/deeper/a"), np.arange(10, dtype="u2"))
        zarr.save_array(tmp_path / "lone.zarr", np.arange(5, dtype=">i4"), zarr_format=3)
        nio.from_zarr(tmp_path / "lone.zarr", x)
        assert_same_array(x.load("lone"), np.arange(5, dtype="i4"))


def test_hdf5_groups_and_dataset_keyword(store, tmp_path):
    h5py = pytest.importorskip("h5py")
    store.save({"a": np.arange(10, dtype="i2"), "b": np.ones((3, 2), "c8")})
    nio.to_hdf5(store, tmp_path / "f.h5", group="/g", compression=None)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert sorted(f["g"]) == ["a", "b"] and f["g/a"].compression is None
    with NumPack(tmp_path / "x") as x:
        nio.from_hdf5(tmp_path / "f.h5", x, dataset="g/b")
        assert x.get_member_list() == ["g/b"]
        nio.from_hdf5(tmp_path / "f.h5", x, group="g", drop_if_exists=True)
        assert sorted(x.get_member_list()) == ["a", "b"]
        with pytest.raises(InvalidArgumentError, match="not both"):
            nio.from_hdf5(tmp_path / "f.h5", x, ["a"], dataset="b")


def test_safetensors_file_is_the_librarys(store, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    expected = fill(store)
    store.drop("complex128")
    del expected["complex128"]
    nio.to_safetensors_file(store, tmp_path / "m.safetensors", metadata={"k": "v"})
    loaded = st.load_file(tmp_path / "m.safetensors")
    assert sorted(loaded) == sorted(expected)
    for name, arr in expected.items():
        assert_same_array(loaded[name], arr)
    info = nio.get_safetensors_metadata(tmp_path / "m.safetensors")
    assert info["metadata"] == {"k": "v"}
    assert info["tensors"]["zipped"] == {"dtype": "I32", "shape": [46, 4]}
    assert dict(nio.iter_safetensors(tmp_path / "m.safetensors", ["int8"])).keys() == {"int8"}
    # and the library's own files come in
    st.save_file({"w": np.eye(3, dtype="f4"), "b": np.arange(3, dtype="u8")}, tmp_path / "l.st")
    with NumPack(tmp_path / "x") as x:
        nio.from_safetensors_file(tmp_path / "l.st", x, keys=["w"])
        assert x.get_member_list() == ["w"]
        assert_same_array(x.load("w"), np.eye(3, dtype="f4"))


def test_tensor_dict(store, tmp_path):
    tensors = {"w": np.eye(3, dtype="f4"), "b": np.asfortranarray(np.ones((4, 5), ">i8"))}
    nio.from_tensor_dict(tensors, store, chunk_size=SMALL)
    got = nio.to_tensor_dict(store)
    assert sorted(got) == ["b", "w"]
    assert_same_array(got["b"], np.ones((4, 5), "i8"))
    assert list(nio.to_tensor_dict(store, ["w"])) == ["w"]


# -- single-array formats: Parquet, Feather, Arrow tables, DataFrames ------------------------

SINGLE = {
    "parquet": (
        ".parquet",
        lambda s, p, **kw: nio.to_parquet(s, p, "x", chunk_size=SMALL, **kw),
        lambda p, s: nio.from_parquet(p, s, "x", chunk_size=SMALL),
    ),
    "feather": (
        ".feather",
        lambda s, p, **kw: nio.to_feather(s, p, "x", chunk_size=SMALL, **kw),
        lambda p, s: nio.from_feather(p, s, chunk_size=SMALL, array_name="x"),
    ),
}


@pytest.mark.parametrize("fmt", SINGLE)
@pytest.mark.parametrize("dtype", NO_COMPLEX, ids=str)
def test_arrow_files_round_trip_dtypes(store, tmp_path, fmt, dtype):
    suffix, export, import_ = SINGLE[fmt]
    arr = make_array(dtype, (40, 3))
    store.save({"x": arr})
    store.drop("x", [1, 39])
    export(store, tmp_path / f"f{suffix}")
    store.drop("x")
    import_(tmp_path / f"f{suffix}", store)
    assert_same_array(store.load("x"), np.delete(arr, [1, 39], axis=0))


@pytest.mark.parametrize("fmt", SINGLE)
@pytest.mark.parametrize("shape", SHAPES[2:], ids=str)
def test_arrow_files_round_trip_shapes(store, tmp_path, fmt, shape):
    suffix, export, import_ = SINGLE[fmt]
    arr = make_array(np.float32, shape)
    store.save({"x": arr}, compress=True, block_rows=4)
    export(store, tmp_path / f"f{suffix}")
    store.drop("x")
    import_(tmp_path / f"f{suffix}", store)
    assert_same_array(store.load("x"), arr)


def test_arrow_layout_and_columns(store, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    store.save({"m": np.arange(12, dtype="i4").reshape(4, 3), "v": np.arange(4.0)})
    assert nio.to_table(store, "m").column_names == ["col0", "col1", "col2"]
    assert nio.to_table(store, "v").column_names == ["data"]
    table = nio.to_table(store, "m", ["a", "b", "c"])
    assert table.column("b").to_pylist() == [1, 4, 7, 10]
    nio.to_parquet(store, tmp_path / "m.parquet", "m", column_names=["a", "b", "c"])
    assert pq.read_table(tmp_path / "m.parquet").column_names == ["a", "b", "c"]
    with pytest.raises(InvalidArgumentError, match="column names"):
        nio.to_table(store, "m", ["a"])
    with pytest.raises(InvalidArgumentError, match="2 arrays"):
        nio.to_table(store)
    # several columns stack into one array of their common dtype, as df.to_numpy() would
    mixed = pa.table({"i": pa.array([1, 2], pa.int16()), "f": pa.array([0.5, 1.5], pa.float32())})
    pq.write_table(mixed, tmp_path / "mixed.parquet")
    nio.from_parquet(tmp_path / "mixed.parquet", store)
    assert_same_array(store.load("mixed"), np.array([[1, 0.5], [2, 1.5]], "f4"))
    nio.from_parquet(tmp_path / "mixed.parquet", store, "i", columns=["i"])
    assert_same_array(store.load("i"), np.array([1, 2], "i2"))
    # fixed-size list columns (embeddings) become rows
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype="f4")), 4)
    nio.from_table(pa.table({"emb": emb, "id": [7, 8]}), store)
    assert_same_array(store.load("emb"), np.arange(8, dtype="f4").reshape(2, 4))
    assert_same_array(store.load("id"), np.array([7, 8]))
    nio.from_table(pa.chunked_array([[1.0], [2.0, 3.0]]), store)
    assert_same_array(store.load("data"), np.array([1.0, 2.0, 3.0]))
    nio.from_table(mixed.to_batches()[0], store, "rb", chunk_size=8)
    assert_same_array(store.load("rb"), np.array([[1, 0.5], [2, 1.5]], "f4"))


def test_dataframes(store):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"i": np.arange(5, dtype="i4"), "f": np.linspace(0, 1, 5, dtype="f4")})
    nio.from_dataframe(df, store, chunk_size=SMALL)
    assert_same_array(store.load("data"), df.to_numpy())
    nio.from_dataframe(df[["i"]].astype("Int64"), store, "nullable")
    assert_same_array(store.load("nullable"), np.arange(5, dtype="i8")[:, None])
    nio.from_dataframe(df["f"], store, "series")
    assert_same_array(store.load("series"), df["f"].to_numpy())
    store.drop("data", [0])
    out = nio.to_dataframe(store, "data", columns=["i", "f"])
    assert list(out.columns) == ["i", "f"] and len(out) == 4
    np.testing.assert_array_equal(out.to_numpy(), df.to_numpy()[1:])
    assert list(nio.to_dataframe(store, "series").columns) == ["data"]
    assert list(nio.to_dataframe(store, "nullable").columns) == ["col0"]
    store.save({"cube": np.zeros((2, 2, 2))})
    with pytest.raises(InvalidArgumentError, match="dimensions"):
        nio.to_dataframe(store, "cube")


# -- torch (when installed) ------------------------------------------------------------------


def test_torch(store, tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.arange(24, dtype=torch.float16).reshape(8, 3)
    nio.from_tensor(t, store, "t", chunk_size=SMALL)
    assert_same_array(store.load("t"), t.numpy())
    store.drop("t", [0])
    back = nio.to_tensor(store, "t", dtype=torch.float32)
    assert back.dtype == torch.float32 and back.shape == (7, 3)
    torch.save({"w": torch.ones(4, 2, dtype=torch.int16), "epoch": 3}, tmp_path / "ck.pt")
    nio.from_pt(tmp_path / "ck.pt", store, chunk_size=SMALL)
    assert_same_array(store.load("w"), np.ones((4, 2), "i2"))
    nio.to_pt(store, tmp_path / "out.pt", ["t", "w"], chunk_size=SMALL)
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert loaded["t"].shape == (7, 3)
    torch.save(torch.zeros(3, dtype=torch.bfloat16), tmp_path / "bf.pt")
    with pytest.raises(DTypeError, match="bfloat16"):
        nio.from_pt(tmp_path / "bf.pt", store)
    with pytest.raises(ArrayNotFoundError):
        nio.from_pt(tmp_path / "ck.pt", store, key="nope")
    nio.from_tensor_dict({"g": torch.ones(3, requires_grad=True), "n": np.zeros(2)}, store)
    assert_same_array(store.load("g"), np.ones(3, "f4"))
    with pytest.raises(DTypeError):
        nio.from_tensor_dict({"bf": torch.ones(3, dtype=torch.bfloat16)}, store)


# -- batching, progress, drop_if_exists ------------------------------------------------------


def test_imports_hold_one_batch(store, tmp_path, monkeypatch):
    """Each batch is at most chunk_size bytes (whole rows); the first is saved, the rest are
    appended, so memory holds one batch."""
    calls: list[tuple[str, int]] = []
    save, append = NumPack.save, NumPack.append

    def spy_save(npk, arrays, *args, **kwargs):
        calls.extend(("save", len(a)) for a in arrays.values())
        return save(npk, arrays, *args, **kwargs)

    def spy_append(npk, arrays):
        calls.extend(("append", len(a)) for a in arrays.values())
        return append(npk, arrays)

    monkeypatch.setattr(NumPack, "save", spy_save)
    monkeypatch.setattr(NumPack, "append", spy_append)
    np.save(tmp_path / "a.npy", np.zeros((1000, 10)))
    nio.from_npy(tmp_path / "a.npy", store, chunk_size=8000)  # 100 rows of 80 bytes
    assert calls == [("save", 100)] + [("append", 100)] * 9


def test_drop_if_exists_and_replace(store, tmp_path):
    store.save({"keep": np.arange(3), "a": np.arange(5)})
    np.save(tmp_path / "a.npy", np.ones(2))
    nio.from_npy(tmp_path / "a.npy", store)
    assert sorted(store.get_member_list()) == ["a", "keep"]
    assert_same_array(store.load("a"), np.ones(2))
    nio.from_npy(tmp_path / "a.npy", store, drop_if_exists=True)
    assert store.get_member_list() == ["a"]


def test_progress(store, tmp_path, capsys):
    pytest.importorskip("tqdm")
    store.save({"a": np.arange(100.0)})
    nio.to_zarr(store, tmp_path / "a.zarr", progress=True)
    nio.from_zarr(tmp_path / "a.zarr", store, progress=True)
    nio.to_parquet(store, tmp_path / "a.parquet", "a", progress=True)
    assert "to_zarr" in capsys.readouterr().err
    with pytest.raises(InvalidTypeError, match="progress"):
        nio.to_hdf5(store, tmp_path / "a.h5", progress="yes")


# -- hostile inputs: clear errors, nothing half-written --------------------------------------


def _files(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_missing_inputs(store, tmp_path):
    store.save({"a": np.arange(3)})
    before = snapshot(store.path)
    for fn in (nio.from_npy, nio.from_zarr, nio.from_hdf5, nio.from_parquet, nio.from_feather,
               nio.from_safetensors_file):  # fmt: skip
        with pytest.raises(StoreIOError) as e:
            fn(tmp_path / "nope", store)
        assert isinstance(e.value, OSError) and e.value.errno == 2
    with pytest.raises(StoreIOError):
        nio.to_zarr(tmp_path / "no-store", tmp_path / "out.zarr")
    assert not (tmp_path / "no-store").exists()  # not created by the attempt
    assert snapshot(store.path) == before


def test_missing_members(store, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    store.save({"a": np.arange(6.0).reshape(3, 2)})
    nio.to_zarr(store, tmp_path / "a.zarr")
    nio.to_hdf5(store, tmp_path / "a.h5")
    nio.to_safetensors_file(store, tmp_path / "a.st")
    pq.write_table(pa.table({"c": [1.0]}), tmp_path / "a.parquet")
    before = snapshot(store.path)
    calls = [
        lambda: nio.from_zarr(tmp_path / "a.zarr", store, ["a", "nope"]),
        lambda: nio.from_hdf5(tmp_path / "a.h5", store, ["a", "nope"]),
        lambda: nio.from_hdf5(tmp_path / "a.h5", store, group="nope"),
        lambda: nio.from_safetensors_file(tmp_path / "a.st", store, keys=["a", "nope"]),
        lambda: nio.from_parquet(tmp_path / "a.parquet", store, columns=["nope"]),
        lambda: nio.to_hdf5(store, tmp_path / "o.h5", ["nope"]),
        lambda: nio.to_table(store, "nope"),
    ]
    for call in calls:
        with pytest.raises(ArrayNotFoundError, match="nope") as e:
            call()
        assert isinstance(e.value, KeyError)
    assert snapshot(store.path) == before
    assert "o.h5" not in _files(tmp_path)


def test_unsupported_dtypes(store, tmp_path):
    zarr = pytest.importorskip("zarr")
    h5py = pytest.importorskip("h5py")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pd = pytest.importorskip("pandas")
    store.save({"keep": np.arange(3)})
    g = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    g.create_array("ok", shape=(2,), dtype="f4")[:] = 1
    g.create_array("s", shape=(2,), dtype=str)[:] = np.array(["a", "b"])
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["ok"] = np.ones(3)
        f.create_dataset("s", data=["x", "y"], dtype=h5py.string_dtype())
    pq.write_table(pa.table({"ok": [1.0, 2.0], "s": ["x", "y"]}), tmp_path / "s.parquet")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "bf.st").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    before = snapshot(store.path)
    calls = [
        lambda: nio.from_zarr(tmp_path / "s.zarr", store),
        lambda: nio.from_hdf5(tmp_path / "s.h5", store),
        lambda: nio.from_parquet(tmp_path / "s.parquet", store),
        lambda: nio.from_table(pa.table({"d": pa.array([1], pa.date32())}), store),
        lambda: nio.from_dataframe(pd.DataFrame({"ok": [1], "s": ["x"]}), store),
        lambda: nio.from_dataframe(pd.DataFrame({"t": pd.date_range("2020", periods=2)}), store),
        lambda: nio.from_dataframe(pd.DataFrame({"c": pd.Categorical([1, 2])}), store),
        lambda: nio.from_safetensors_file(tmp_path / "bf.st", store),
        lambda: nio.from_tensor_dict({"o": np.array([object()])}, store),
    ]
    for call in calls:
        with pytest.raises(DTypeError) as e:
            call()
        assert isinstance(e.value, ValueError)
    assert snapshot(store.path) == before
    # formats without a type for a dtype the store holds
    store.save({"c": np.ones(3, "c16"), "c8": np.ones(3, "c8")})
    for call in (
        lambda: nio.to_parquet(store, tmp_path / "o.parquet", "c8"),
        lambda: nio.to_table(store, "c"),
        lambda: nio.to_safetensors_file(store, tmp_path / "o.st", ["c"]),
    ):
        with pytest.raises(DTypeError):
            call()
    assert "o.parquet" not in _files(tmp_path) and "o.st" not in _files(tmp_path)


def test_bad_values(store, tmp_path):
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    store.save({"keep": np.arange(3)})
    (tmp_path / "junk.h5").write_bytes(b"not hdf5" * 8)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet" * 8)
    (tmp_path / "junk.feather").write_bytes(b"not arrow" * 8)
    (tmp_path / "junk.st").write_bytes(b"\xff" * 16)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    np.save(tmp_path / "scalar.npy", np.float64(3))
    np.save(tmp_path / "ok.npy", np.arange(3))
    before = snapshot(store.path)
    calls = [
        lambda: nio.from_hdf5(tmp_path / "junk.h5", store),
        lambda: nio.from_parquet(tmp_path / "junk.parquet", store),
        lambda: nio.from_feather(tmp_path / "junk.feather", store),
        lambda: nio.from_safetensors_file(tmp_path / "junk.st", store),
        lambda: nio.from_npy(tmp_path / "junk.npy", store),
        lambda: nio.from_npy(tmp_path / "scalar.npy", store),
        lambda: nio.from_zarr(tmp_path, store),  # a folder that is no zarr group
        lambda: nio.from_dataframe(pd.DataFrame({"n": pd.array([1, None], "Int64")}), store),
        lambda: nio.from_table(pa.table({"n": [1.0, None]}), store),
        lambda: nio.from_tensor_dict({"scalar": np.float32(1)}, store),
        lambda: nio.from_npy(tmp_path / "ok.npy", store, chunk_size=0),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as e:
            call()
        assert isinstance(e.value, ValueError)
    assert snapshot(store.path) == before


def test_wrong_types(store, tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    for call in (
        lambda: nio.from_npy(3, store),
        lambda: nio.from_npy(tmp_path / "a.npy", 3.5),
        lambda: nio.from_npy(tmp_path / "a.npy", store, chunk_size="big"),
        lambda: nio.from_npy(tmp_path / "a.npy", store, ["x"]),
        lambda: nio.from_dataframe([[1, 2]], store),
        lambda: nio.from_table({"a": [1]}, store),
        lambda: nio.from_tensor_dict([np.ones(2)], store),
        lambda: nio.from_hdf5(tmp_path / "a.npy", store, group=1),
        lambda: nio.to_safetensors_file(store, tmp_path / "o.st", metadata={"k": 1}),
        lambda: nio.to_npy(store, 7),
    ):
        with pytest.raises(InvalidTypeError) as e:
            call()
        assert isinstance(e.value, TypeError)
    assert store.get_member_list() == []


def test_missing_library(store, tmp_path, monkeypatch):
    for module in ("zarr", "h5py", "pyarrow", "pyarrow.parquet", "pandas", "safetensors", "torch"):
        monkeypatch.setitem(sys.modules, module, None)  # an import of it raises ImportError
    np.save(tmp_path / "a.npy", np.arange(3))
    for call, extra in (
        (lambda: nio.from_zarr(tmp_path / "a.npy", store), "zarr"),
        (lambda: nio.to_hdf5(store, tmp_path / "o.h5"), "hdf5"),
        (lambda: nio.from_parquet(tmp_path / "a.npy", store), "arrow"),
        (lambda: nio.to_dataframe(store), "pandas"),
        (lambda: nio.from_safetensors_file(tmp_path / "a.npy", store), "safetensors"),
        (lambda: nio.to_tensor(store), "torch"),
    ):
        with pytest.raises(DependencyError, match=rf"pip install 'numpack\[{extra}\]'") as e:
            call()
        assert isinstance(e.value, ImportError) and isinstance(e.value, NumPackError)
    nio.from_npy(tmp_path / "a.npy", store)  # NumPy needs nothing more
    assert store.get_member_list() == ["a"]


def test_failed_import_leaves_no_array(store, tmp_path):
    """A zarr chunk that fails to decode half-way: the import is one transaction, so the store
    is left as it was, the array it was replacing included."""
    zarr = pytest.importorskip("zarr")
    store.save({"keep": np.arange(3), "a": np.arange(2)})
    z = zarr.open_group(tmp_path / "bad.zarr", mode="w", zarr_format=3)
    z.create_array("b", shape=(40, 2), dtype="f8", chunks=(5, 2))[:] = np.ones((40, 2))
    z.create_array("a", shape=(40, 2), dtype="f8", chunks=(5, 2))[:] = np.ones((40, 2))
    (tmp_path / "bad.zarr" / "a" / "c" / "6" / "0").write_bytes(b"garbage")
    with pytest.raises(InvalidArgumentError, match="bad.zarr"):
        nio.from_zarr(tmp_path / "bad.zarr", store, chunk_size=80)
    assert store.get_member_list() == ["keep", "a"]
    assert_same_array(store.load("keep"), np.arange(3))
    assert_same_array(store.load("a"), np.arange(2))
    with pytest.raises(InvalidArgumentError):  # a store the import would create is not left
        nio.from_zarr(tmp_path / "bad.zarr", tmp_path / "new", chunk_size=80)
    assert not (tmp_path / "new").exists()


EXPORTS = {
    "npz": lambda s, p: nio.to_npy(s, p, single_file=False, chunk_size=SMALL),
    "npy": lambda s, p: nio.to_npy(s, p, single_file=True),
    "zarr": lambda s, p: nio.to_zarr(s, p, chunk_size=SMALL),
    "hdf5": lambda s, p: nio.to_hdf5(s, p, chunk_size=SMALL),
    "parquet": lambda s, p: nio.to_parquet(s, p, chunk_size=SMALL),
    "feather": lambda s, p: nio.to_feather(s, p, chunk_size=SMALL),
    "safetensors": lambda s, p: nio.to_safetensors_file(s, p, chunk_size=SMALL),
}


@pytest.mark.parametrize("fmt", EXPORTS)
def test_failed_export_leaves_no_output(store, tmp_path, fmt):
    """A compressed block damaged past the first batches fails the export half-way: no output
    file appears, an existing one is left as it was, and no temporary file stays behind."""
    store.save({"a": np.arange(4000, dtype="f8").reshape(2000, 2)}, compress=True, block_rows=10)
    (data,) = data_files(store.path)
    with open(os.path.join(store.path, data), "r+b") as f:
        size = f.seek(0, 2)
        f.seek(size * 3 // 4)
        f.write(b"\xa5" * 64)
    out = tmp_path / "out"
    with pytest.raises(CorruptStoreError):
        EXPORTS[fmt](store, out)
    assert _files(tmp_path) == ["store"]
    out.write_bytes(b"old")
    with pytest.raises(CorruptStoreError):
        EXPORTS[fmt](store, out)
    assert _files(tmp_path) == ["out", "store"] and out.read_bytes() == b"old"
