"""Conversion helpers (import_npy, import_npz, import_folder, export_npy) and progress=True on
save, compact and the helpers, with tqdm present and absent."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
from helpers import DTYPES, assert_same_array, data_bytes, make_array, snapshot

import numpack
import numpack._convert as _convert
from numpack import (
    ArrayNotFoundError,
    DTypeError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPack,
    NumPackError,
    StoreIOError,
)

SHAPES = [(0,), (0, 3), (1,), (37,), (23, 3), (11, 2, 3)]


def _npy(tmp_path, arr, name="a.npy"):
    path = tmp_path / name
    np.save(path, arr)
    return path


class Appends:
    """Records the row counts of save/append calls a conversion makes."""

    def __init__(self, monkeypatch):
        self.saves: list[int] = []
        self.appends: list[int] = []
        save, append = NumPack.save, NumPack.append

        def spy_save(npk, arrays, *args, **kwargs):
            self.saves += [len(a) for a in arrays.values()]
            return save(npk, arrays, *args, **kwargs)

        def spy_append(npk, arrays):
            self.appends += [len(a) for a in arrays.values()]
            return append(npk, arrays)

        monkeypatch.setattr(NumPack, "save", spy_save)
        monkeypatch.setattr(NumPack, "append", spy_append)


# -- import_npy -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_import_npy_every_dtype(store, tmp_path, dtype):
    base = make_array(dtype, (29, 3), seed=1)
    path = _npy(tmp_path, base)
    assert numpack.import_npy(store, path, chunk_rows=4) == "a"
    assert_same_array(store.load("a"), base)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("compress", [False, True])
def test_import_npy_shapes(store, tmp_path, shape, compress):
    base = make_array(np.float32, shape, seed=2)
    path = _npy(tmp_path, base)
    numpack.import_npy(store, path, "x", compress=compress, chunk_rows=5)
    assert_same_array(store.load("x"), base)
    comp = store.get_metadata()["arrays"]["x"]["compression"]
    assert (comp is not None) == compress


def test_import_npy_chunks(store, tmp_path, monkeypatch):
    base = make_array(np.int64, (103, 2))
    calls = Appends(monkeypatch)
    numpack.import_npy(store, _npy(tmp_path, base), chunk_rows=10)
    assert calls.saves == [10] and calls.appends == [10] * 9 + [3]
    assert_same_array(store.load("a"), base)


def test_import_npy_default_chunk_is_bounded(store, tmp_path, monkeypatch):
    monkeypatch.setattr(_convert, "CHUNK_BYTES", 800)  # 100 rows of 8 bytes
    calls = Appends(monkeypatch)
    base = np.arange(1000, dtype=np.float64)
    numpack.import_npy(store, _npy(tmp_path, base))
    assert calls.saves == [100] and calls.appends == [100] * 9
    assert_same_array(store.load("a"), base)


def test_import_npy_compressed_chunks_end_on_blocks(store, tmp_path, monkeypatch):
    base = make_array(np.float64, (1000, 4), seed=3)
    calls = Appends(monkeypatch)
    numpack.import_npy(store, _npy(tmp_path, base), compress=True, block_rows=30, chunk_rows=50)
    # 50 rows round up to 60, two blocks of 30; every chunk but the last ends on a block
    assert calls.saves == [60] and calls.appends == [60] * 15 + [40]
    comp = store.get_metadata()["arrays"]["a"]["compression"]
    assert comp["block_rows"] == 30 and comp["blocks"] == 34
    assert_same_array(store.load("a"), base)


def test_import_npy_compressed_default_blocks(store, tmp_path, monkeypatch):
    base = np.arange(300_000, dtype=np.float64)  # 2.4 MB: several default blocks
    calls = Appends(monkeypatch)
    numpack.import_npy(store, _npy(tmp_path, base), compress=True, chunk_rows=1000)
    comp = store.get_metadata()["arrays"]["a"]["compression"]
    block = comp["block_rows"]
    assert block > 1000 and calls.saves == [1000]
    # after the first chunk, every chunk ends on a block boundary
    ends = np.cumsum(calls.saves + calls.appends)
    assert all(end % block == 0 for end in ends[1:-1])
    assert_same_array(store.load("a"), base)


def test_import_npy_compression_level(store, tmp_path):
    numpack.import_npy(store, _npy(tmp_path, np.zeros(100)), compress=True, compression_level=9)
    assert store.get_metadata()["arrays"]["a"]["compression"]["level"] == 9


def test_import_npy_big_endian_and_fortran(store, tmp_path):
    base = make_array(np.float64, (40, 7), seed=4)
    for i, arr in enumerate(
        [
            base.astype(">f8"),
            np.asfortranarray(base),
            np.asfortranarray(base.astype(">f8")),
            np.asfortranarray(make_array(np.int16, (9, 4, 5))).astype(">i2", order="F"),
        ]
    ):
        path = _npy(tmp_path, arr, f"f{i}.npy")
        name = numpack.import_npy(store, path, chunk_rows=3)
        assert name == f"f{i}"
        got = store.load(name)
        assert got.flags.c_contiguous and got.dtype.isnative
        np.testing.assert_array_equal(got, arr)
        assert got.dtype == arr.dtype.newbyteorder("=")


def test_import_npy_replaces_an_array(store, tmp_path):
    store.save({"a": np.arange(5)})
    numpack.import_npy(store, _npy(tmp_path, np.ones((3, 2))), chunk_rows=1)
    assert_same_array(store.load("a"), np.ones((3, 2)))


def test_import_npy_into_a_path(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPACK_BACKEND", backend)
    base = np.arange(10, dtype=np.uint16)
    numpack.import_npy(tmp_path / "store", _npy(tmp_path, base), name="v")
    with NumPack(tmp_path / "store", backend=backend) as npk:
        assert_same_array(npk.load("v"), base)


def test_import_npy_errors(store, tmp_path):
    before = snapshot(store.path)
    with pytest.raises(StoreIOError) as e:
        numpack.import_npy(store, tmp_path / "missing.npy")
    assert isinstance(e.value, OSError)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an npy file at all")
    with pytest.raises(InvalidArgumentError):
        numpack.import_npy(store, bad)
    truncated = tmp_path / "t.npy"
    truncated.write_bytes(_npy(tmp_path, np.arange(100)).read_bytes()[:-8])
    with pytest.raises(InvalidArgumentError):
        numpack.import_npy(store, truncated)
    objects = tmp_path / "o.npy"
    np.save(objects, np.array([{}, []], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidArgumentError, match="pickled"):
        numpack.import_npy(store, objects)
    with pytest.raises(InvalidArgumentError, match="0-d"):
        numpack.import_npy(store, _npy(tmp_path, np.array(3.0), "s.npy"))
    with pytest.raises(DTypeError):
        numpack.import_npy(store, _npy(tmp_path, np.array(["ab", "c"]), "u.npy"))
    with pytest.raises(InvalidArgumentError):
        numpack.import_npy(store, _npy(tmp_path, np.arange(3), "e.npy"), name="")
    with pytest.raises(InvalidArgumentError):
        numpack.import_npy(store, _npy(tmp_path, np.arange(3), "c.npy"), chunk_rows=0)
    with pytest.raises(InvalidTypeError):
        numpack.import_npy(store, _npy(tmp_path, np.arange(3), "c.npy"), chunk_rows=1.5)
    with pytest.raises(InvalidTypeError):
        numpack.import_npy(42, _npy(tmp_path, np.arange(3), "c.npy"))
    assert snapshot(store.path) == before


# -- import_npz -------------------------------------------------------------------------------


@pytest.mark.parametrize("savez", [np.savez, np.savez_compressed], ids=["savez", "compressed"])
@pytest.mark.parametrize("compress", [False, True])
def test_import_npz_members(store, tmp_path, savez, compress):
    members = {
        "ints": make_array(np.int32, (57, 3), seed=5),
        "floats_be": make_array(np.float64, (20,), seed=6).astype(">f8"),
        "fortran": np.asfortranarray(make_array(np.complex64, (13, 4), seed=7)),
        "empty": np.zeros((0, 5), np.uint8),
        "flags": make_array(np.bool_, (9, 2, 2), seed=8),
    }
    path = tmp_path / "m.npz"
    savez(path, *[np.arange(4)], **members)
    names = numpack.import_npz(store, path, compress=compress, chunk_rows=4)
    with np.load(path) as npz:
        assert names == npz.files  # in the file's order
    assert sorted(names) == sorted(["arr_0", *members])
    assert_same_array(store.load("arr_0"), np.arange(4))
    for name, arr in members.items():
        got = store.load(name)
        np.testing.assert_array_equal(got, arr)
        assert got.dtype == arr.dtype.newbyteorder("=") and got.flags.c_contiguous


def test_import_npz_streams_c_order_members(store, tmp_path, monkeypatch):
    base = np.arange(1000, dtype=np.int64)
    np.savez_compressed(tmp_path / "z.npz", big=base)
    calls = Appends(monkeypatch)
    numpack.import_npz(store, tmp_path / "z.npz", chunk_rows=100)
    assert calls.saves == [100] and calls.appends == [100] * 9
    assert_same_array(store.load("big"), base)


def test_import_npz_errors(store, tmp_path):
    before = snapshot(store.path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK no zip")
    with pytest.raises(InvalidArgumentError):
        numpack.import_npz(store, bad)
    odd = tmp_path / "odd.npz"
    with zipfile.ZipFile(odd, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(InvalidArgumentError, match="readme"):
        numpack.import_npz(store, odd)
    mixed = tmp_path / "mixed.npz"  # a bad member after a good one: nothing is copied
    np.savez(mixed, good=np.arange(3), bad=np.array(["x"]))
    with pytest.raises(DTypeError):
        numpack.import_npz(store, mixed)
    cut = tmp_path / "cut.npz"  # a member whose data ends early
    np.savez(cut, a=np.arange(100))
    with zipfile.ZipFile(cut) as zf:
        raw = zf.read("a.npy")
    with zipfile.ZipFile(cut, "w") as zf:
        zf.writestr("a.npy", raw[:-16])
    with pytest.raises(InvalidArgumentError, match="truncated"):
        numpack.import_npz(store, cut)
    with pytest.raises(StoreIOError):
        numpack.import_npz(store, tmp_path / "missing.npz")
    # every header is checked before copying, and a short member fails on its first chunk
    assert snapshot(store.path) == before


# -- import_folder ----------------------------------------------------------------------------


def test_import_folder(store, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    a = make_array(np.float32, (10, 2))
    b = np.asfortranarray(make_array(np.int8, (5, 3))).astype(">i8")
    np.save(folder / "a.npy", a)
    np.savez(folder / "pair.npz", x=np.arange(3), y=np.ones((2, 2)))
    np.save(folder / "sub" / "b.npy", b)
    (folder / "notes.txt").write_text("not an array")
    names = numpack.import_folder(store, folder, chunk_rows=3)
    assert names == ["a", "pair/x", "pair/y"]
    assert_same_array(store.load("a"), a)
    assert_same_array(store.load("pair/y"), np.ones((2, 2)))
    names = numpack.import_folder(store, folder, pattern="**/*.npy", compress=True)
    assert names == ["a", "sub/b"]
    np.testing.assert_array_equal(store.load("sub/b"), b)
    assert store.get_metadata()["arrays"]["sub/b"]["compression"] is not None


def test_import_folder_errors(store, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a.npy", np.arange(3))
    (folder / "z.npy").write_bytes(b"garbage")
    before = snapshot(store.path)
    with pytest.raises(InvalidArgumentError):  # z.npy is bad: nothing is copied, not even a
        numpack.import_folder(store, folder)
    with pytest.raises(InvalidArgumentError, match="matches"):
        numpack.import_folder(store, folder, pattern="*.csv")
    (folder / "t.txt").write_text("x")
    with pytest.raises(InvalidArgumentError, match="neither"):
        numpack.import_folder(store, folder, pattern="*.txt")
    with pytest.raises(InvalidArgumentError, match="folder"):
        numpack.import_folder(store, folder / "a.npy")
    with pytest.raises(InvalidArgumentError):
        numpack.import_folder(store, tmp_path / "nowhere")
    with pytest.raises(InvalidTypeError):
        numpack.import_folder(store, folder, pattern=3)
    np.save(folder / "b.npy", np.arange(2))
    (folder / "b.NPY").write_bytes((folder / "b.npy").read_bytes())
    with pytest.raises(InvalidArgumentError, match="both"):
        numpack.import_folder(store, folder, pattern="b.*")
    assert snapshot(store.path) == before


# -- export_npy -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_export_npy_every_dtype(store, tmp_path, dtype):
    base = make_array(dtype, (17, 3), seed=9)
    store.save({"a": base})
    out = numpack.export_npy(store, "a", tmp_path / "a.npy")
    assert out == str(tmp_path / "a.npy")
    assert_same_array(np.load(out), base)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("compress", [False, True])
def test_export_npy_shapes_in_chunks(store, tmp_path, monkeypatch, shape, compress):
    monkeypatch.setattr(_convert, "CHUNK_BYTES", 50)
    base = make_array(np.float64, shape, seed=10)
    store.save({"a": base}, compress=compress)
    loaded = np.load(numpack.export_npy(store, "a", tmp_path / "a.npy"))
    assert_same_array(loaded, base)
    assert loaded.flags.c_contiguous


def test_export_npy_hides_dropped_rows_and_round_trips(store, tmp_path):
    base = make_array(np.int32, (50, 2), seed=11)
    store.save({"a": base}, compress=True, block_rows=8)
    store.drop("a", [0, 10, 49])
    expected = np.delete(base, [0, 10, 49], axis=0)
    path = numpack.export_npy(store, "a", tmp_path / "out.npy")
    assert_same_array(np.load(path), expected)
    assert_same_array(np.load(path, mmap_mode="r"), expected)
    numpack.import_npy(store, path, "back")
    assert_same_array(store.load("back"), expected)


def test_export_npy_from_a_path(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPACK_BACKEND", backend)
    with NumPack(tmp_path / "s", backend=backend) as npk:
        npk.save({"v": np.arange(7.0)})
    path = numpack.export_npy(tmp_path / "s", "v", tmp_path / "v.npy")
    assert_same_array(np.load(path), np.arange(7.0))


def test_export_npy_errors_leave_no_file(store, tmp_path):
    store.save({"a": np.arange(4)})
    with pytest.raises(ArrayNotFoundError):
        numpack.export_npy(store, "missing", tmp_path / "x.npy")
    with pytest.raises(KeyError):
        numpack.export_npy(store, "missing", tmp_path / "x.npy")
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreIOError):
        numpack.export_npy(store, "a", tmp_path / "dir")
    with pytest.raises(StoreIOError):
        numpack.export_npy(store, "a", tmp_path / "no" / "such" / "dir.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "store"]
    assert list((tmp_path / "dir").iterdir()) == []


# -- progress ---------------------------------------------------------------------------------


@pytest.fixture
def no_tqdm(monkeypatch):
    """tqdm as if it were not installed."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


def _everything_with_progress(npk, tmp_path):
    base = make_array(np.float32, (300, 4), seed=12)
    npk.save({"a": base, "b": np.arange(10)}, progress=True)
    npk.save({"c": base}, compress=True, block_rows=16, progress=True)
    npk.drop("a", list(range(0, 300, 2)))
    npk.drop("c", [1, 2, 3])
    size = data_bytes(npk.path)
    npk.compact(progress=True)
    assert data_bytes(npk.path) < size
    assert_same_array(npk.load("a"), base[1::2])
    assert_same_array(npk.load("c"), np.delete(base, [1, 2, 3], axis=0))
    npk.drop("b", [0])
    npk.compact(["b"], progress=True)
    assert npk.get_metadata()["arrays"]["b"]["rows_dropped"] == 0
    np.save(tmp_path / "in.npy", base)
    numpack.import_npy(npk, tmp_path / "in.npy", chunk_rows=7, progress=True)
    np.savez(tmp_path / "in.npz", p=base, q=np.arange(3))
    numpack.import_npz(npk, tmp_path / "in.npz", chunk_rows=7, progress=True)
    numpack.import_folder(npk, tmp_path, pattern="in.np?", progress=True)
    out = numpack.export_npy(npk, "in", tmp_path / "out.npy", progress=True)
    assert_same_array(np.load(out), base)
    assert_same_array(npk.load("in/q"), np.arange(3))


def test_progress_without_tqdm(store, tmp_path, no_tqdm, capsys):
    with pytest.raises(ImportError):
        import tqdm.auto  # noqa: F401
    _everything_with_progress(store, tmp_path)
    assert capsys.readouterr().err == ""


def test_progress_with_tqdm(store, tmp_path, capsys):
    pytest.importorskip("tqdm")
    _everything_with_progress(store, tmp_path)
    err = capsys.readouterr().err
    for desc in ("numpack save", "numpack compact", "numpack import", "numpack export"):
        assert desc in err
    assert "100%" in err


def test_progress_off_shows_nothing(store, tmp_path, capsys):
    pytest.importorskip("tqdm")
    store.save({"a": np.arange(5)})
    store.compact()
    np.save(tmp_path / "x.npy", np.arange(5))
    numpack.import_npy(store, tmp_path / "x.npy")
    numpack.export_npy(store, "x", tmp_path / "y.npy")
    assert capsys.readouterr().err == ""


def test_compact_with_progress_checks_names_first(store):
    store.save({"a": np.arange(10), "b": np.arange(10)})
    store.drop("a", [0])
    before = snapshot(store.path)
    with pytest.raises(ArrayNotFoundError):
        store.compact(["a", "missing"], progress=True)
    assert snapshot(store.path) == before


def test_progress_must_be_a_bool(store, tmp_path):
    with pytest.raises(InvalidTypeError):
        store.save({"a": np.arange(3)}, progress="yes")
    with pytest.raises(InvalidTypeError):
        store.compact(progress=1)
    np.save(tmp_path / "x.npy", np.arange(3))
    with pytest.raises(InvalidTypeError):
        numpack.import_npy(store, tmp_path / "x.npy", progress=None)
    assert "a" not in store


def test_errors_are_numpack_errors(store, tmp_path):
    with pytest.raises(NumPackError):
        numpack.import_npy(store, tmp_path / "none.npy")
    with pytest.raises(NumPackError):
        numpack.export_npy(store, "none", tmp_path / "none.npy")
