"""numpack.import_numpack07: stores written by the public NumPack 0.7 become numpack stores.

The stores under fixtures/numpack07/ were written by the real NumPack 0.7 (make_fixtures.py
there says how); each `<name>.npz` holds the arrays as 0.7 itself loads them. Damaged and
unsupported stores are made here, with a small writer of 0.7's metadata layout.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_array, snapshot

import numpack
from numpack import CorruptStoreError, InvalidArgumentError, NumPack, import_numpack07
from numpack._import07 import Array07

FIXTURES = Path(__file__).parent / "fixtures" / "numpack07"
STORES = ("dtypes", "edits", "segmented")


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def assert_holds(npk: NumPack, want: dict[str, np.ndarray]) -> None:
    assert sorted(npk.get_member_list()) == sorted(want)
    for n, arr in want.items():
        got = npk.load(n)
        assert got.dtype == arr.dtype, n
        assert_same_array(got, arr)
        assert_same_array(npk.load(n, lazy=True)[:], arr)


@pytest.mark.parametrize("name", STORES)
def test_fixture_imports_with_its_values(store, name):
    before = snapshot(FIXTURES / f"{name}.npk")
    names = import_numpack07(FIXTURES / f"{name}.npk", store)
    assert names == sorted(expected(name))
    assert_holds(store, expected(name))
    assert snapshot(FIXTURES / f"{name}.npk") == before  # the 0.7 store is only read


def test_what_the_fixtures_cover(store):
    import_numpack07(FIXTURES / "edits.npk", store)
    meta = store.get_metadata()["arrays"]
    assert meta["dropped"]["shape"] == (17,)  # dropped rows left out
    assert meta["drop_then_append"]["shape"] == (127, 2)  # drops in two bitmap words
    assert meta["appended"]["shape"] == (10, 3) and meta["all_dropped"]["shape"] == (0,)
    assert all(a["rows_dropped"] == 0 for a in meta.values())


def test_rows_0_7_brought_back_are_kept_with_a_warning(store):
    with pytest.warns(UserWarning, match="says 3 rows were dropped but marks 1"):
        import_numpack07(FIXTURES / "resurrected.npk", store)
    assert_holds(store, expected("resurrected"))


def test_import_into_a_path_reads_on_both_backends(tmp_path, backend):
    dst = tmp_path / "converted"
    assert import_numpack07(str(FIXTURES / "segmented.npk"), dst, progress=True) == [
        "seg",
        "seg3d",
        "small",
    ]
    with NumPack(dst, backend=backend) as npk:
        assert_holds(npk, expected("segmented"))


def test_import_streams_bounded_chunks(store, monkeypatch):
    """Every save and append of the import holds at most one chunk of rows."""
    monkeypatch.setattr(numpack._compat07, "CHUNK_BYTES", 40)
    sizes = []
    for method in ("save", "append"):
        real = getattr(NumPack, method)

        def spy(self, arrays, *a, _real=real, **k):
            sizes.extend(np.asarray(v).nbytes for v in arrays.values())
            return _real(self, arrays, *a, **k)

        monkeypatch.setattr(NumPack, method, spy)
    import_numpack07(FIXTURES / "edits.npk", store)
    assert_holds(store, expected("edits"))
    assert len(sizes) > 20 and max(sizes) <= 40


def test_existing_arrays(store):
    store.save({"dropped": np.zeros(3), "mine": np.arange(4)})
    import_numpack07(FIXTURES / "edits.npk", store)
    assert_same_array(store.load("dropped"), expected("edits")["dropped"])  # replaced
    assert_same_array(store.load("mine"), np.arange(4))  # kept


def test_a_failed_import_writes_nothing(store, tmp_path, monkeypatch):
    store.save({"mine": np.arange(4)})
    real = Array07.chunks

    def failing(self, rows):
        if self.name == "dropped":
            raise OSError(5, "simulated read error")
        return real(self, rows)

    monkeypatch.setattr(Array07, "chunks", failing)
    with pytest.raises(OSError, match="simulated"):
        import_numpack07(FIXTURES / "edits.npk", store)
    assert store.get_member_list() == ["mine"]  # "appended", "all_dropped"... undone
    with pytest.raises(OSError, match="simulated"):
        import_numpack07(FIXTURES / "edits.npk", tmp_path / "new")
    assert not (tmp_path / "new").exists()  # the directory the call created is removed


def test_dst_must_not_be_src(tmp_path):
    src = tmp_path / "old"
    shutil.copytree(FIXTURES / "edits.npk", src)
    before = snapshot(src)
    with pytest.raises(InvalidArgumentError, match="itself"):
        import_numpack07(src, src)
    assert snapshot(src) == before


def test_numpack_names_a_0_7_store_it_cannot_open(tmp_path, backend):
    src = tmp_path / "old"
    shutil.copytree(FIXTURES / "dtypes.npk", src)
    before = snapshot(src)
    with pytest.raises(CorruptStoreError, match="import_numpack07"):
        NumPack(src, backend=backend)
    assert snapshot(src) == before


def test_bad_arguments(store):
    with pytest.raises(TypeError):
        import_numpack07(3, store)
    with pytest.raises(TypeError):
        import_numpack07(FIXTURES / "edits.npk", 3)
    with pytest.raises(TypeError):
        import_numpack07(FIXTURES / "edits.npk", store, progress="yes")


# -- stores that are not 0.7 stores, damaged ones, and what numpack cannot import -------------


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def text(s: str) -> bytes:
    return u32(len(s.encode())) + s.encode()


def entry(name="a", shape=(4, 2), file=None, code=8, size=None, codec=0, blocks=False) -> bytes:
    """One array of 0.7's metadata.npkm (int64 by default)."""
    size = int(np.prod(shape)) * 8 if size is None else size
    out = text(name) + u32(len(shape)) + b"".join(u64(d) for d in shape)
    out += text(f"data_{name}.npkd" if file is None else file) + u64(0) + u64(size)
    out += bytes([code, codec]) + u32(0) + u64(0) + u64(0)
    if blocks:  # block information of one block
        return out + b"\1\1" + u64(64) + u64(1) + u32(1) + u64(0) + u64(64) + u64(32)
    return out + b"\0"


def write07(path: Path, *entries: bytes, version: int = 1, data: bool = True) -> Path:
    """A 0.7 store of `entries`, with an int64 data file of 8 rows x 2 for array "a"."""
    path.mkdir(parents=True, exist_ok=True)
    meta = b"NPKB" + u32(version) + u64(0) + u32(len(entries)) + b"".join(entries)
    (path / "metadata.npkm").write_bytes(meta)
    if data:
        (path / "data_a.npkd").write_bytes(np.arange(16, dtype="<i8").tobytes())
    return path


def bitmap(rows: int, live: list[int], dropped: int | None = None, header=True) -> bytes:
    bits = np.zeros(-(-rows // 64) * 64, np.uint8)
    bits[live] = 1
    words = np.packbits(bits, bitorder="little").tobytes()
    head = u64(rows) + u64(rows - len(live) if dropped is None else dropped)
    return (head if header else b"") + words


def test_crafted_store_with_bitmaps(store, tmp_path):
    """Both bitmap layouts 0.7 reads: with a header, and the headerless one of older 0.7s."""
    src = write07(tmp_path / "old", entry("a", (8, 2)), entry("b", (8, 2), file="data_a.npkd"))
    (src / "deleted_a.npkb").write_bytes(bitmap(8, [0, 2, 7]))
    (src / "deleted_b.npkb").write_bytes(bitmap(8, [1, 3], header=False) + bytes(8))
    import_numpack07(src, store)
    rows = np.arange(16).reshape(8, 2)
    assert_same_array(store.load("a"), rows[[0, 2, 7]])
    assert_same_array(store.load("b"), rows[[1, 3]])


NOT_STORES = {
    "missing": lambda t: t / "missing",
    "empty_dir": lambda t: (t / "e").mkdir() or t / "e",
    "a_file": lambda t: _file(t, "f", b"NPKB") / "f",
    "garbage": lambda t: _file(write07(t / "g"), "metadata.npkm", b"x" * 40),
    "numpack_store": lambda t: NumPack(t / "ours").close() or t / "ours",
}

DAMAGED = {
    "truncated": lambda t: _cut(write07(t / "s", entry()), 30),
    "trailing_bytes": lambda t: _append(write07(t / "s", entry()), b"\0"),
    "unknown_dtype": lambda t: write07(t / "s", entry(code=14)),
    "size_mismatch": lambda t: write07(t / "s", entry(size=3)),
    "duplicate": lambda t: write07(t / "s", entry(), entry()),
    "bad_utf8_name": lambda t: write07(t / "s", entry()[:4] + b"\xff" + entry()[5:]),
    "missing_data": lambda t: write07(t / "s", entry(), data=False),
    "short_data": lambda t: write07(t / "s", entry(shape=(9, 2))),
    "escaping_file": lambda t: write07(t / "s", entry(file="../data_a.npkd")),
    "absolute_file": lambda t: write07(t / "s", entry(file=str(t / "s" / "data_a.npkd"))),
    "huge_shape": lambda t: write07(t / "s", entry(shape=(2**63, 2), size=0)),
    "bitmap_rows": lambda t: _file(write07(t / "s", entry()), "deleted_a.npkb", bitmap(9, [0])),
    "bitmap_short": lambda t: _file(write07(t / "s", entry()), "deleted_a.npkb", b"\0" * 8),
    "bitmap_size": lambda t: _file(write07(t / "s", entry()), "deleted_a.npkb", b"\0" * 20),
    "segments_json": lambda t: _segmented(t, b"{not json"),
    "segments_shape": lambda t: _segmented(t, json.dumps({"version": 1}).encode()),
    "segment_bytes": lambda t: _segmented(t, _manifest([(2, 8)])),
    "segment_missing": lambda t: _segmented(t, _manifest([(4, 64)], file="nope.npkd")),
    "segment_rows": lambda t: _segmented(t, _manifest([(2, 32)])),
    "segment_escapes": lambda t: _segmented(t, _manifest([(4, 64)], file="../x.npkd")),
}

UNSUPPORTED = {
    "compressed": lambda t: write07(t / "s", entry(codec=1, blocks=True)),
    "zero_d": lambda t: write07(t / "s", entry(shape=(), size=8)),
    "empty_name": lambda t: write07(t / "s", entry(name="", file="data_a.npkd")),
    "version_2": lambda t: write07(t / "s", entry(), version=2),
    "segments_v2": lambda t: _segmented(t, json.dumps({"version": 2, "segments": []}).encode()),
}


def _cut(src: Path, n: int) -> Path:
    meta = src / "metadata.npkm"
    meta.write_bytes(meta.read_bytes()[:n])
    return src


def _append(src: Path, extra: bytes) -> Path:
    meta = src / "metadata.npkm"
    meta.write_bytes(meta.read_bytes() + extra)
    return src


def _file(src: Path, name: str, data: bytes) -> Path:
    (src / name).write_bytes(data)
    return src


def _manifest(segments: list[tuple[int, int]], file: str = "data_a.npkd") -> bytes:
    entries = [{"file": file, "rows": r, "bytes": b} for r, b in segments]
    return json.dumps({"version": 1, "segments": entries}).encode()


def _segmented(tmp: Path, manifest: bytes) -> Path:
    src = write07(tmp / "s", entry(file="data_a.npkseg"))
    return _file(src, "data_a.npkseg", manifest)


@pytest.mark.parametrize(
    ("case", "error"),
    [(c, CorruptStoreError) for c in {**NOT_STORES, **DAMAGED}]
    + [(c, InvalidArgumentError) for c in UNSUPPORTED],
)
def test_refused_before_anything_is_written(tmp_path, backend, case, error):
    src = {**NOT_STORES, **DAMAGED, **UNSUPPORTED}[case](tmp_path)
    with NumPack(tmp_path / "dst", backend=backend) as npk:
        npk.save({"mine": np.arange(3)})
    before = snapshot(tmp_path / "dst")
    with NumPack(tmp_path / "dst", backend=backend) as npk:
        with pytest.raises(error) as e:
            import_numpack07(src, npk)
        assert isinstance(e.value, numpack.NumPackError)
    assert snapshot(tmp_path / "dst") == before
    with pytest.raises(error):
        import_numpack07(src, tmp_path / "fresh")
    assert not os.path.exists(tmp_path / "fresh")


# -- packages written by 0.7's pack ----------------------------------------------------------

PACKAGES = ("edits", "dtypes")  # edits zstd-compressed (0.7's default), dtypes stored as is


@pytest.mark.parametrize("name", PACKAGES)
def test_unpack_converts_a_0_7_package(tmp_path, backend, name):
    """numpack.unpack takes 0.7's .npkg: a numpack store with what 0.7 loads from it."""
    src = FIXTURES / f"{name}.npkg"
    out = numpack.unpack(src, tmp_path / "sub" / "out")
    assert out == tmp_path / "sub" / "out"
    assert sorted(os.listdir(tmp_path / "sub")) == ["out"]  # no staging left beside it
    with NumPack(out, backend=backend) as npk:
        assert_holds(npk, expected(name))
        first = sorted(expected(name))[-1]  # an array with rows in both stores
        npk.append({first: npk.load(first)[:1]})  # an unpacked store can be changed
        assert len(npk.load(first)) == len(expected(name)[first]) + 1


def _damaged(tmp_path: Path, at: int | None = None, cut: int | None = None) -> Path:
    data = bytearray((FIXTURES / "edits.npkg").read_bytes())
    if at is not None:
        data[at] ^= 0xFF
    if cut is not None:
        data = data[:cut]
    path = tmp_path / "bad.npkg"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("cut", [4, 12, 40, -5, -1])
def test_a_truncated_0_7_package_is_corrupt_and_leaves_nothing(tmp_path, cut):
    src = _damaged(tmp_path, cut=cut)
    with pytest.raises(CorruptStoreError, match="NumPack 0.7 package"):
        numpack.unpack(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["bad.npkg"]


def test_a_0_7_package_crc_is_checked_when_verify(tmp_path):
    """The footer CRC covers each file's CRC: a flipped byte in it fails verify=True only."""
    src = _damaged(tmp_path, at=-2)
    with pytest.raises(CorruptStoreError, match="CRC"):
        numpack.unpack(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["bad.npkg"]
    with NumPack(numpack.unpack(src, tmp_path / "out", verify=False)) as npk:
        assert_holds(npk, expected("edits"))


def test_a_0_7_package_naming_a_file_outside_is_refused(tmp_path):
    """A file name that would leave the target directory is damage, not a path to write."""
    import struct

    body = b"../evil"
    pkg = b"NPKG" + struct.pack("<IBI", 2, 0, 1)
    pkg += struct.pack("<I", len(body)) + body + struct.pack("<QQ", 1, 0) + b"x" + b"\0" * 4
    src = tmp_path / "evil.npkg"
    src.write_bytes(pkg)
    with pytest.raises(CorruptStoreError, match="file name"):
        numpack.unpack(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["evil.npkg"]


def test_numpack_and_info_name_a_0_7_package(backend):
    """Opened in place or asked about, a 0.7 package says how to convert it."""
    with pytest.raises(InvalidArgumentError, match=r"NumPack 0.7.*numpack.unpack"):
        NumPack(FIXTURES / "edits.npkg", backend=backend)
    with pytest.raises(InvalidArgumentError, match=r"NumPack 0.7.*numpack.unpack"):
        numpack.get_package_info(FIXTURES / "edits.npkg")
