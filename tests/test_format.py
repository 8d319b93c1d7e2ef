"""The on-disk format of spec/FORMAT.md, checked byte by byte against what the spec says.

These tests read and write the store's files directly (msgpack + raw bytes), without either
backend, so a backend that drifts from the spec fails here even if it agrees with itself.
"""

from __future__ import annotations

import os
import struct
import time

import msgpack
import numpy as np
import pytest
from helpers import (
    DTYPES,
    assert_same_array,
    data_files,
    file_stem,
    make_array,
    read_metadata,
)

from numpack import NumPack

FORMAT_DTYPE = {
    "bool": "|b1", "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "uint8": "|u1",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "float16": "<f2", "float32": "<f4",
    "float64": "<f8", "complex64": "<c8", "complex128": "<c16",
}  # fmt: skip


def _deleted(entry) -> list:
    raw = entry["deleted"]
    assert isinstance(raw, bytes)
    assert len(raw) % 8 == 0
    return np.frombuffer(raw, dtype="<u8").tolist()


def _entry(meta, name):
    [e] = [e for e in meta["arrays"] if e["name"] == name]
    return e


def _file_id(entry) -> int:
    stem, fid, ext = entry["file"].rsplit(".", 2)
    assert ext == "npkd"
    assert stem == file_stem(entry["name"])
    assert fid.isdigit() and str(int(fid)) == fid
    return int(fid)


def test_metadata_layout(store):
    t0 = time.time_ns() // 1000
    arrays = {str(dt): make_array(dt, (4, 3), seed=i) for i, dt in enumerate(DTYPES)}
    store.save(arrays)
    meta = read_metadata(store.path)
    assert meta["format"] == "numpack"
    assert meta["version"] == 2 and meta["generation"] == 1
    assert [e["name"] for e in meta["arrays"]] == list(arrays)
    ids = []
    for e in meta["arrays"]:
        assert e["dtype"] == FORMAT_DTYPE[e["name"]]
        assert e["shape"] == [4, 3]
        assert _deleted(e) == []
        assert e["compression"] is None
        assert isinstance(e["modified_us"], int) and e["modified_us"] >= t0 - 60_000_000
        assert e["modified_us"] == store.get_modify_time(e["name"])
        ids.append(_file_id(e))
    assert len(set(ids)) == len(ids)
    assert isinstance(meta["next_file_id"], int) and meta["next_file_id"] > max(ids)
    lock = os.path.join(store.path, "numpack.lock")
    assert os.path.isfile(lock) and os.path.getsize(lock) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_data_file_is_raw_little_endian_c_order(store, dtype):
    arr = np.asfortranarray(make_array(dtype, (5, 2, 3), seed=3))
    store.save({"a": arr})
    e = _entry(read_metadata(store.path), "a")
    with open(os.path.join(store.path, e["file"]), "rb") as f:
        raw = f.read()
    expected = np.ascontiguousarray(arr, dtype=np.dtype(FORMAT_DTYPE[str(dtype)])).tobytes()
    assert raw[: len(expected)] == expected
    assert e["shape"] == [5, 2, 3]


def test_append_extends_the_same_file(store):
    store.save({"a": np.arange(6, dtype=np.int32).reshape(3, 2)})
    e0 = _entry(read_metadata(store.path), "a")
    store.append({"a": np.array([[6, 7], [8, 9]], np.int32)})
    e1 = _entry(read_metadata(store.path), "a")
    assert e1["file"] == e0["file"]
    assert e1["shape"] == [5, 2]
    with open(os.path.join(store.path, e1["file"]), "rb") as f:
        assert f.read()[:40] == np.arange(10, dtype="<i4").tobytes()


def test_replace_writes_in_place(store):
    store.save({"a": np.arange(5, dtype=np.uint16)})
    e0 = _entry(read_metadata(store.path), "a")
    store.replace({"a": np.array([100, 200], np.uint16)}, [1, 3])
    meta = read_metadata(store.path)
    e1 = _entry(meta, "a")
    assert e1["file"] == e0["file"] and e1["shape"] == [5]
    with open(os.path.join(store.path, e1["file"]), "rb") as f:
        assert f.read()[:10] == np.array([0, 100, 2, 200, 4], "<u2").tobytes()
    assert not os.path.exists(os.path.join(store.path, "numpack.undo"))
    assert not os.path.exists(os.path.join(store.path, "numpack.undo.tmp"))


def test_dropped_rows_are_logical(store):
    store.save({"a": np.arange(10, dtype=np.int64)})
    e0 = _entry(read_metadata(store.path), "a")
    store.drop("a", [3, 1])
    e = _entry(read_metadata(store.path), "a")
    assert e["shape"] == [10] and e["file"] == e0["file"]
    assert _deleted(e) == [1, 3]
    store.drop("a", [1])  # logical 1 is physical 2
    assert _deleted(_entry(read_metadata(store.path), "a")) == [1, 2, 3]
    store.drop("a", [0, -1])  # physical 0 and 9
    assert _deleted(_entry(read_metadata(store.path), "a")) == [0, 1, 2, 3, 9]
    store.drop("a", [1])  # live rows are 4..8: logical 1 is physical 5
    assert _deleted(_entry(read_metadata(store.path), "a")) == [0, 1, 2, 3, 5, 9]
    assert_same_array(store.load("a"), np.array([4, 6, 7, 8]))


def test_compaction_writes_a_new_file(store):
    store.save({"a": np.arange(10, dtype=np.int64)})
    store.drop("a", [0, 5])
    before = read_metadata(store.path)
    old = _entry(before, "a")
    store.compact("a")
    after = read_metadata(store.path)
    new = _entry(after, "a")
    assert new["file"] != old["file"]
    assert _file_id(new) >= before["next_file_id"]
    assert after["next_file_id"] > _file_id(new)
    assert new["shape"] == [8] and _deleted(new) == []
    assert not os.path.exists(os.path.join(store.path, old["file"]))
    with open(os.path.join(store.path, new["file"]), "rb") as f:
        assert f.read() == np.delete(np.arange(10), [0, 5]).astype("<i8").tobytes()


def test_file_ids_never_reused(store):
    seen = set()
    last_next = 0
    for i in range(4):
        store.save({"a": np.arange(i + 1), "b": np.arange(2)})
        store.drop("b")
        store.append({"c": np.arange(1)})
        store.drop("c")
        meta = read_metadata(store.path)
        assert meta["next_file_id"] >= last_next
        last_next = meta["next_file_id"]
        e = _entry(meta, "a")
        assert e["file"] not in seen
        seen.add(e["file"])
    assert data_files(store.path) == [e["file"]]


def _write_store(path, arrays, next_file_id=100):
    """A store written by hand from the spec: {name: (array, deleted, extra_bytes)}."""
    os.makedirs(path, exist_ok=True)
    entries = []
    for i, (name, (arr, deleted, extra)) in enumerate(arrays.items()):
        dt = np.dtype(FORMAT_DTYPE[str(arr.dtype)])
        fname = f"{file_stem(name)}.{i + 7}.npkd"
        with open(os.path.join(path, fname), "wb") as f:
            f.write(np.ascontiguousarray(arr, dtype=dt).tobytes() + extra)
        entries.append({
            "name": name, "file": fname, "dtype": dt.str, "shape": list(arr.shape),
            "deleted": np.asarray(deleted, dtype="<u8").tobytes(),
            "modified_us": 1_700_000_000_000_000 + i, "compression": None,
        })  # fmt: skip
    meta = {"format": "numpack", "version": 1, "next_file_id": next_file_id, "arrays": entries}
    with open(os.path.join(path, "metadata.npkm"), "wb") as f:
        f.write(msgpack.packb(meta, use_bin_type=True))


def test_reads_a_store_written_from_the_spec(backend, store_path):
    a = make_array(np.float32, (6, 2), seed=1)
    b = make_array(np.int16, (5,), seed=2)
    c = make_array(np.complex128, (3, 2, 2), seed=3)
    _write_store(store_path, {
        "alpha": (a, [], b""),
        "Beta β": (b, [0, 3], b""),
        "c": (c, [], b"\x01" * 13),  # a longer file: the tail is not part of the array
    })  # fmt: skip
    with NumPack(store_path, backend=backend) as npk:
        assert npk.get_member_list() == ["alpha", "Beta β", "c"]
        assert_same_array(npk.load("alpha"), a)
        assert_same_array(npk.load("Beta β"), b[[1, 2, 4]])
        assert_same_array(npk.getitem("Beta β", [-1, 0]), b[[4, 1]])
        assert npk.get_shape("Beta β") == (3,)
        assert_same_array(npk.load("c"), c)
        assert npk.get_modify_time("alpha") == 1_700_000_000_000_000
        # and writes into it as the spec says
        npk.append({"c": c[:1]})
        assert_same_array(npk.load("c"), np.concatenate([c, c[:1]]))
        npk.save({"d": np.arange(3)})
    meta = read_metadata(store_path)
    assert meta["next_file_id"] > 100
    assert _file_id(_entry(meta, "d")) >= 100
    assert _entry(meta, "c")["shape"] == [4, 2, 2]
    with open(store_path / _entry(meta, "c")["file"], "rb") as f:
        assert f.read()[: 4 * 4 * 16] == np.concatenate([c, c[:1]]).astype("<c16").tobytes()


def _journal(sections) -> bytes:
    out = b"NPKUNDO1"
    for file, row_bytes, rows, old in sections:
        fb = file.encode()
        out += struct.pack("<Q", len(fb)) + fb + struct.pack("<QQ", row_bytes, len(rows))
        out += np.asarray(rows, dtype="<u8").tobytes() + old
    return out


@pytest.mark.parametrize("how", ["open", "write"])
def test_undo_journal_is_rolled_back(backend, store_path, how):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(6, dtype=np.int64), "b": np.arange(4, dtype=np.int16)})
    meta = read_metadata(store_path)
    fa, fb = _entry(meta, "a")["file"], _entry(meta, "b")["file"]
    # an interrupted replace: a[3] was written twice, b[0] once, then the process died
    journal = _journal([
        (fa, 8, [3, 1, 3], np.array([3, 1, 777], "<i8").tobytes()),
        (fb, 2, [0], np.array([0], "<i2").tobytes()),
    ])  # fmt: skip
    (store_path / "numpack.undo").write_bytes(journal)
    with open(store_path / fa, "r+b") as f:
        f.seek(8)
        f.write(np.array([-1], "<i8").tobytes())
        f.seek(24)
        f.write(np.array([-3], "<i8").tobytes())
    with open(store_path / fb, "r+b") as f:
        f.write(np.array([-9], "<i2").tobytes())
    with NumPack(store_path, backend=backend) as npk:
        if how == "write":
            npk.save({"c": np.arange(1)})
        assert_same_array(npk.load("a"), np.arange(6, dtype=np.int64))  # oldest contents win
        assert_same_array(npk.load("b"), np.arange(4, dtype=np.int16))
    assert not (store_path / "numpack.undo").exists()


def test_undo_journal_for_a_missing_file(backend, store_path):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(3, dtype=np.int64)})
    journal = _journal([("gone-0123456789abcdef.1.npkd", 8, [0], np.array([5], "<i8").tobytes())])
    (store_path / "numpack.undo").write_bytes(journal)
    with NumPack(store_path, backend=backend) as npk:
        npk.append({"a": np.array([3])})
        assert_same_array(npk.load("a"), np.arange(4, dtype=np.int64))
    assert not (store_path / "numpack.undo").exists()
    assert not (store_path / "gone-0123456789abcdef.1.npkd").exists()


def test_compact_sweeps_garbage(store):
    store.save({"a": np.arange(4)})
    keep = data_files(store.path)
    stray = os.path.join(store.path, "zz-0123456789abcdef.99.npkd")
    tmp = os.path.join(store.path, "metadata.npkm.12345.tmp")
    for p in (stray, tmp):
        with open(p, "wb") as f:
            f.write(b"junk")
    assert_same_array(store.load("a"), np.arange(4))  # garbage does not disturb readers
    store.compact()
    assert not os.path.exists(stray) and not os.path.exists(tmp)
    assert data_files(store.path) == keep
    assert_same_array(store.load("a"), np.arange(4))


def test_reset_and_drop_delete_files(store):
    store.save({"a": np.arange(4), "b": np.arange(4), "c": np.arange(2)})
    files = {e["name"]: e["file"] for e in read_metadata(store.path)["arrays"]}
    store.drop("b")
    assert not os.path.exists(os.path.join(store.path, files["b"]))
    store.reset()
    meta = read_metadata(store.path)
    assert meta["arrays"] == [] and meta["format"] == "numpack"
    assert data_files(store.path) == []
    assert meta["next_file_id"] > max(_file_id({"name": n, "file": f}) for n, f in files.items())
