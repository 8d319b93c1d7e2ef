"""Format version 2: the commit log read with neither backend, readers catching up, folding,
torn and pending records, transactions, batch modes, version 1 stores, read-only stores."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from helpers import (
    BACKENDS,
    assert_same_array,
    data_files,
    log_records,
    read_metadata,
    require_backend,
    run_python,
    snapshot,
)

from numpack import (
    ArrayNotFoundError,
    CorruptStoreError,
    InvalidArgumentError,
    NumPack,
    RowIndexError,
    StoreIOError,
    StoreLockedError,
)

FIXTURE = Path(__file__).parent / "fixtures" / "v1_store"


def _ops(path) -> list[list]:
    """The op kinds of each commit record, and "undo" for undo records."""
    return [
        ["undo"] if r["t"] == "undo" else [op["op"] for op in r["ops"]]
        for r, _ in log_records(path)[1]
    ]


def _frame(payload: dict) -> bytes:
    raw = msgpack.packb(payload, use_bin_type=True)
    return len(raw).to_bytes(4, "little") + zlib.crc32(raw).to_bytes(4, "little") + raw


# -- the files, read with neither backend -------------------------------------------------


def test_each_call_is_one_commit_record(store):
    path = store.path
    base = len(_ops(path))
    store.save({"a": np.arange(20.0).reshape(10, 2), "b": np.arange(3)})
    store.append({"a": np.ones((2, 2))})
    store.replace({"a": np.zeros((2, 2))}, [0, 5])
    store.drop("a", [1])
    store.save({"c": np.arange(100, dtype="i4")}, compress=True, block_rows=10)
    store.append({"c": np.arange(15, dtype="i4")})
    store.replace({"c": np.zeros(1, "i4")}, [42])
    store.compact("a")
    store.drop("b")
    assert _ops(path)[base:] == [
        ["put", "put"],
        ["update"],
        ["undo"],
        ["update"],
        ["update"],
        ["put"],
        ["update"],
        ["update"],
        ["put"],
        ["drop"],
    ]
    meta = read_metadata(path)
    assert meta["version"] == 2 and meta["generation"] == 1
    shapes = {e["name"]: e["shape"] for e in meta["arrays"]}
    assert shapes == {"a": [11, 2], "c": [115]}
    assert store.get_metadata()["format_version"] == 2


def test_updates_carry_only_the_change(store):
    store.save({"c": np.arange(10_000, dtype="i8")}, compress=True, block_rows=100)
    store.append({"c": np.arange(250, dtype="i8")})
    rec = log_records(store.path)[1][-1][0]
    [op] = rec["ops"]
    # The last partial block re-encoded and two new ones, not the index of 103 blocks.
    assert op["rows"] == 10_250 and len(op["blocks"]) == 3 * 32
    store.drop("c", [5, 7])
    [op] = log_records(store.path)[1][-1][0]["ops"]
    assert np.frombuffer(op["deleted"], "<u8").tolist() == [5, 7]


def test_reader_catches_up_from_the_log_alone(backend, store_path):
    """A reader's next call reads only the records after the ones it applied: with the
    snapshot destroyed in place (same inode), open stores still follow every change."""
    writer = NumPack(store_path, backend=backend)
    writer.save({"a": np.arange(6.0).reshape(3, 2)})
    reader = NumPack(store_path, backend=backend)
    assert reader.get_shape("a") == (3, 2)
    meta = store_path / "metadata.npkm"
    with open(meta, "r+b") as f:
        f.write(b"\xff" * len(meta.read_bytes()))
    writer.append({"a": np.ones((2, 2))})
    writer.drop("a", [0])
    assert reader.get_shape("a") == (4, 2)
    assert_same_array(reader.load("a"), np.array([[2, 3], [4, 5], [1, 1], [1, 1]], float))
    with pytest.raises(CorruptStoreError):
        NumPack(store_path, backend=backend)  # a new opener must read the snapshot
    writer.close()
    reader.close()


def test_log_folds_into_a_new_snapshot(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.zeros((10, 1024), "u1")})
    expected = np.zeros((10, 1024), "u1")
    generations = set()
    for i in range(300):  # each replace logs 4 KiB of old rows: the log passes 1 MiB
        rows = np.full((4, 1024), i % 251, "u1")
        npk.replace({"a": rows}, [0, 3, 6, 9])
        expected[[0, 3, 6, 9]] = rows
        generations.add(log_records(store_path)[0])
    assert len(generations) >= 2
    assert (store_path / "numpack.log").stat().st_size < (1 << 20) + 64 * 1024
    meta = read_metadata(store_path)
    assert meta["generation"] == max(generations)
    assert_same_array(npk.load("a"), expected)
    for other in BACKENDS:
        require_backend(other)
        with NumPack(store_path, backend=other) as again:
            assert_same_array(again.load("a"), expected)
    npk.close()


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_torn_tail_is_ignored_then_cut(backend, store_path, cut):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(4)})
    log = store_path / "numpack.log"
    good = log.stat().st_size
    torn = _frame({"t": "commit", "next_file_id": 99, "ops": [{"op": "drop", "name": "a"}]})
    with open(log, "ab") as f:
        f.write(torn[:cut])
    other = NumPack(store_path, backend=backend)
    assert other.get_member_list() == ["a"]
    other.append({"a": np.arange(2)})  # the writer cuts the torn bytes first
    _, records = log_records(store_path)
    assert records[-1][1] == log.stat().st_size > good
    assert_same_array(npk.load("a"), np.array([0, 1, 2, 3, 0, 1]))
    npk.close()
    other.close()


def test_pending_undo_records_are_put_back(backend, store_path):
    """A replace killed after logging its undo record and writing some rows: the next
    opener puts the old rows back and cuts the record."""
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(12, dtype="<i4").reshape(6, 2)})
        file = read_metadata(store_path)["arrays"][0]["file"]
    rows = np.array([4, 1], "<u8")
    old = np.arange(12, dtype="<i4").reshape(6, 2)[[4, 1]]
    with open(store_path / "numpack.log", "ab") as f:
        f.write(
            _frame(
                {
                    "t": "undo",
                    "file": file,
                    "row_bytes": 8,
                    "rows": rows.tobytes(),
                    "old": old.tobytes(),
                }
            )  # fmt: skip
        )
    with open(store_path / file, "r+b") as f:  # the interrupted call's new rows
        f.seek(8)
        f.write(np.full(2, -7, "<i4").tobytes())
        f.seek(32)
        f.write(np.full(2, -7, "<i4").tobytes())
    with NumPack(store_path, backend=backend) as npk:
        assert_same_array(npk.load("a"), np.arange(12, dtype="<i4").reshape(6, 2))
    assert _ops(store_path)[-1] == ["put"]  # the undo record is gone


def test_newer_version_is_refused(backend, store_path):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(3)})
    raw = (store_path / "metadata.npkm").read_bytes()
    meta = msgpack.unpackb(raw)
    meta["version"] = 3
    (store_path / "metadata.npkm").write_bytes(msgpack.packb(meta, use_bin_type=True))
    before = snapshot(store_path)
    with pytest.raises(CorruptStoreError, match="3"):
        NumPack(store_path, backend=backend)
    assert snapshot(store_path) == before


@pytest.mark.parametrize("writer", BACKENDS)
@pytest.mark.parametrize("folder", BACKENDS)
def test_log_of_one_backend_folded_by_the_other(writer, folder, tmp_path):
    require_backend(writer)
    require_backend(folder)
    path = tmp_path / "s"
    with NumPack(path, backend=writer) as npk:
        npk.save({"r": np.arange(20 * 512.0).reshape(20, 512)})
        npk.save({"c": np.arange(1000, dtype="i2")}, compress=True, block_rows=64)
        npk.append({"r": np.ones((3, 512)), "c": np.arange(70, dtype="i2")})
        npk.replace({"r": np.full((1, 512), 5.0), "c": np.full(1, -1, "i2")}, [2])
        npk.drop("r", [0, 22])
    expected_r = np.concatenate([np.arange(20 * 512.0).reshape(20, 512), np.ones((3, 512))])
    expected_r[2] = 5.0
    expected_r = np.delete(expected_r, [0, 22], axis=0)
    expected_c = np.concatenate([np.arange(1000, dtype="i2"), np.arange(70, dtype="i2")])
    expected_c[2] = -1
    with NumPack(path, backend=folder) as npk:
        gen = log_records(path)[0]
        for _ in range(400):  # undo records (4 KiB each) push the log past 1 MiB: a fold
            npk.replace({"r": np.zeros((1, 512))}, [1])
            if log_records(path)[0] > gen:
                break
        assert log_records(path)[0] > gen
        expected_r[1] = 0
    for reader in BACKENDS:
        with NumPack(path, backend=reader) as npk:
            assert_same_array(npk.load("r"), expected_r)
            assert_same_array(npk.load("c"), expected_c)


# -- transactions -----------------------------------------------------------------------


def test_transaction_is_one_commit_seen_all_at_once(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(10.0)})
    reader = NumPack(store_path, backend=backend)
    before = len(_ops(store_path))
    with npk.transaction():
        npk.append({"a": np.ones(2)})
        npk.replace({"a": np.full(1, -1.0)}, [0])
        npk.save({"b": np.arange(3)})
        npk.drop("a", [1])
        # Calls inside see their own writes; other readers see none of them.
        assert npk.get_shape("a") == (11,) and npk.load("b").tolist() == [0, 1, 2]
        assert reader.get_member_list() == ["a"] and reader.get_shape("a") == (10,)
    assert _ops(store_path)[before:] == [["undo"], ["update", "update", "put", "update"]]
    expected = np.concatenate([[-1.0], np.arange(2.0, 10.0), [1.0, 1.0]])
    assert_same_array(reader.load("a"), expected)
    assert reader.get_member_list() == ["a", "b"]
    npk.close()
    reader.close()


def test_exception_in_transaction_undoes_everything(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(10.0), "c": np.arange(100, dtype="i8")}, compress=False)
    npk.save({"z": np.arange(50, dtype="i8")}, compress=True, block_rows=8)
    state = {n: npk.load(n) for n in npk}
    files = data_files(store_path)
    log_size = (store_path / "numpack.log").stat().st_size
    with pytest.raises(KeyError):
        with npk.transaction():
            npk.replace({"a": np.full(3, 7.0)}, [0, 1, 2])
            npk.append({"c": np.arange(5, dtype="i8"), "z": np.arange(5, dtype="i8")})
            npk.save({"new": np.ones(4)})
            npk.save({"a2": np.ones(4)}, compress=True)
            npk.drop("c")
            npk.compact()
            raise KeyError("boom")
    for n, v in state.items():
        assert_same_array(npk.load(n), v)
    assert npk.get_member_list() == ["a", "c", "z"]
    assert data_files(store_path) == files  # created files deleted, dropped ones kept
    assert (store_path / "numpack.log").stat().st_size == log_size
    with NumPack(store_path, backend=backend) as again:
        for n, v in state.items():
            assert_same_array(again.load(n), v)
    npk.close()


def test_failed_call_inside_transaction_undoes_only_itself(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(5)})
    with npk.transaction():
        npk.replace({"a": np.full(1, 9)}, [0])
        with pytest.raises(RowIndexError):
            npk.replace({"a": np.full(2, 8)}, [1, 50])
        with pytest.raises(ArrayNotFoundError):
            npk.drop("nope")
        npk.append({"a": np.full(1, 6)})
    assert npk.load("a").tolist() == [9, 1, 2, 3, 4, 6]
    npk.close()


def test_transaction_holds_the_lock_and_nests(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(3)})
    code = (
        "import sys, numpy as np\n"
        "from numpack import NumPack, StoreLockedError\n"
        "n = NumPack(sys.argv[1], backend=sys.argv[2], lock_timeout=0.2)\n"
        "print(n.get_shape('a'))\n"
        "try:\n    n.append({'a': np.arange(1)})\nexcept StoreLockedError:\n    print('locked')\n"
    )
    with npk.transaction():
        npk.append({"a": np.arange(2)})
        with npk.transaction():  # joins the outer one
            npk.append({"a": np.arange(1)})
        out = run_python(code, store_path, backend)
        assert out.stdout.split() == ["(3,)", "locked"], out.stderr
    assert npk.get_shape("a") == (6,)
    with pytest.raises(StoreLockedError):
        with npk.transaction():
            other = NumPack(store_path, backend=backend, lock_timeout=0.1)
            other.append({"a": np.arange(1)})
    assert npk.get_shape("a") == (6,)
    npk.close()


def test_close_inside_transaction_undoes_it(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(3)})
    with pytest.raises(Exception):  # noqa: B017 - whatever the closed store raises
        with npk.transaction():
            npk.replace({"a": np.full(1, 5)}, [0])
            npk.close()
    with NumPack(store_path, backend=backend) as again:
        assert again.load("a").tolist() == [0, 1, 2]


# -- NumPack 0.7's batch modes ----------------------------------------------------------


def test_batch_mode_caches_and_writes_at_exit(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"w": np.zeros(4)})
    reader = NumPack(store_path, backend=backend)
    before = len(_ops(store_path))
    with npk.batch_mode():
        for _ in range(10):
            w = npk.load("w")
            w += 1
            npk.save({"w": w})
        assert npk.load("w") is w  # the cached array
        assert reader.load("w").tolist() == [0.0] * 4  # nothing written yet
        npk.save({"grown": np.arange(3)})
        assert npk.get_shape("grown") == (3,)  # any other call sees what was saved
    assert _ops(store_path)[before:] == [["put", "put"]]
    assert reader.load("w").tolist() == [10.0] * 4
    with pytest.raises(RuntimeError):
        with npk.batch_mode(memory_limit=1):
            npk.save({"w": np.full(4, 99.0)})
            raise RuntimeError("boom")
    assert reader.load("w").tolist() == [10.0] * 4
    npk.close()
    reader.close()


def test_writable_batch_mode_maps_raw_arrays(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    npk.save({"a": np.arange(20.0).reshape(10, 2)})
    npk.save({"z": np.arange(10.0)}, compress=True)
    npk.drop("a", [0])
    t0 = npk.get_modify_time("a")
    with npk.writable_batch_mode() as wb:
        arr = wb.load("a")
        assert isinstance(arr, np.memmap) and arr.shape == (9, 2)
        arr *= 2
        arr[0] = -1
        wb.save({"a": arr})  # no-op for the map
        with pytest.raises(InvalidArgumentError, match="compressed"):
            wb.load("z")
        with pytest.raises(KeyError):
            wb.load("missing")
    expected = np.arange(2.0, 20.0).reshape(9, 2) * 2
    expected[0] = -1
    assert_same_array(npk.load("a"), expected)
    assert npk.get_modify_time("a") > t0
    npk.close()


# -- version 1 stores ---------------------------------------------------------------------


def _fixture_expected() -> dict:
    raw = np.arange(40, dtype="<i8").reshape(10, 4)
    raw = np.concatenate([raw, np.full((2, 4), -1, "<i8")])
    raw[3] = 99
    comp = (np.arange(300, dtype="<f4").reshape(100, 3) / 7).astype("<f4")
    comp = np.concatenate([comp, np.ones((5, 3), "<f4")])
    comp[50] = 0
    return {
        "raw": np.delete(raw, [0, 5], axis=0),
        "comp": np.delete(comp, [1], axis=0),
        "names \u00e9/..": np.array([True, False, True]),
    }


def test_version_1_store_reads_then_upgrades(backend, tmp_path):
    path = tmp_path / "v1"
    shutil.copytree(FIXTURE, path)
    expected = _fixture_expected()
    before = snapshot(path)
    with NumPack(path, backend=backend) as npk:
        assert npk.get_member_list() == list(expected)
        assert npk.get_metadata()["format_version"] == 1
        for name, value in expected.items():
            assert_same_array(npk.load(name), value)
            assert_same_array(npk.load(name, lazy=True)[:], value)
    assert snapshot(path) == before  # reading changes nothing
    with NumPack(path, backend=backend) as npk:
        npk.append({"raw": np.full((1, 4), 7, "<i8")})
        assert npk.get_metadata()["format_version"] == 2
    assert read_metadata(path)["version"] == 2
    expected["raw"] = np.concatenate([expected["raw"], np.full((1, 4), 7, "<i8")])
    for reader in BACKENDS:
        require_backend(reader)
        with NumPack(path, backend=reader) as npk:
            for name, value in expected.items():
                assert_same_array(npk.load(name), value)


def test_version_1_interrupted_replace_is_undone_on_upgrade(backend, tmp_path):
    path = tmp_path / "v1"
    shutil.copytree(FIXTURE, path)
    meta = read_metadata(path)
    raw = next(e for e in meta["arrays"] if e["name"] == "raw")
    old = np.arange(4, 8, dtype="<i8")  # physical row 1 before the interrupted replace
    journal = (
        b"NPKUNDO1"
        + len(raw["file"]).to_bytes(8, "little")
        + raw["file"].encode()
        + (32).to_bytes(8, "little")
        + (1).to_bytes(8, "little")
        + (1).to_bytes(8, "little")
        + old.tobytes()
    )
    (path / "numpack.undo").write_bytes(journal)
    with open(path / raw["file"], "r+b") as f:
        f.seek(32)
        f.write(np.full(4, -5, "<i8").tobytes())
    with NumPack(path, backend=backend) as npk:
        assert_same_array(npk.load("raw"), _fixture_expected()["raw"])
    assert not (path / "numpack.undo").exists()
    assert read_metadata(path)["version"] == 2


# -- read-only stores ---------------------------------------------------------------------


@pytest.fixture
def read_only_mount(tmp_path):
    """A directory bind-mounted read-only (needs root; skipped where mounts are refused,
    a failure with NUMPACK_REQUIRE_MOUNT=1)."""
    from helpers import bind_mount_read_only

    src, dst = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    dst.mkdir()

    def mount():
        bind_mount_read_only(src, dst)

    yield src, dst, mount
    # Lazily: a store a failed test left open may still map files there.
    subprocess.run(["umount", "-l", str(dst)], capture_output=True)


def test_read_only_store_reads_and_refuses_writes(backend, read_only_mount):
    src, dst, mount = read_only_mount
    with NumPack(src / "s", backend=backend) as npk:
        npk.save({"a": np.arange(6.0).reshape(3, 2)})
        npk.save({"z": np.arange(100)}, compress=True)
        npk.drop("a", [1])
    (src / "s" / "numpack.lock").unlink()  # as a store copied without it
    mount()
    before = snapshot(dst / "s")
    npk = NumPack(dst / "s", backend=backend)
    assert_same_array(npk.load("a"), np.array([[0.0, 1.0], [4.0, 5.0]]))
    assert_same_array(npk.load("z", lazy=True)[10:13], np.arange(10, 13))
    assert npk.getitem("a", [1]).tolist() == [[4.0, 5.0]]
    with pytest.raises(StoreIOError, match="Read-only") as err:
        npk.append({"a": np.ones((1, 2))})
    assert str(dst / "s") in str(err.value)
    with pytest.raises(StoreIOError):
        with npk.transaction():
            pass
    npk.close()
    assert snapshot(dst / "s") == before


def test_path_errors_are_clear(backend, tmp_path):
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(InvalidArgumentError, match="neither a directory nor a numpack package"):
        NumPack(file, backend=backend)
    # A missing parent is created, as for a new store.
    with NumPack(tmp_path / "x" / "y" / "s", backend=backend) as npk:
        assert len(npk) == 0
    if os.geteuid() == 0:
        return  # root reads any directory: the permission case needs another user
    locked = tmp_path / "locked"
    NumPack(locked, backend=backend).close()
    locked.chmod(0)
    try:
        with pytest.raises(StoreIOError):
            NumPack(locked, backend=backend)
    finally:
        locked.chmod(0o755)


# -- a raw last block grown in place (FORMAT.md 6, `update`; section 7, `append`) ----------

_GROW_RECORD = "<QQIBBH"  # offset, size, crc32, codec, filter, zero


def _raw_tail_store(path, backend):
    """A compressed (53, 4) int64 array in blocks of 32 rows: block 1 (21 rows) stored raw
    at the end of its data file, as an append leaves it. Returns the rows, the data file and
    the index's records."""
    rows = np.arange(53 * 4, dtype="<i8").reshape(53, 4) // 3
    with NumPack(path, backend=backend) as npk:
        npk.save({"a": rows[:50]}, compress=True, block_rows=32)
        npk.append({"a": rows[50:]})
    [entry] = read_metadata(path)["arrays"]
    blob = entry["compression"]["blocks"]
    records = [struct.unpack_from(_GROW_RECORD, blob, i) for i in range(0, len(blob), 24)]
    assert records[1][3] == 0
    assert records[1][0] + records[1][1] == (path / entry["file"]).stat().st_size
    return rows, path / entry["file"], records


def _commit_update(path, rows: int, blocks) -> None:
    ops = [{"op": "update", "name": "a", "modified_us": 1, "rows": rows}]
    ops[0]["blocks"] = b"".join(
        k.to_bytes(8, "little") + struct.pack(_GROW_RECORD, *r) for k, r in blocks
    )
    with open(path / "numpack.log", "ab") as f:
        f.write(_frame({"t": "commit", "next_file_id": 99, "ops": ops}))


def test_a_logged_in_place_growth_is_read(backend, store_path):
    rows, data, records = _raw_tail_store(store_path, backend)
    more = np.full((2, 4), -5, "<i8")
    with open(data, "ab") as f:
        f.write(more.tobytes())
    off, size, crc, *_ = records[1]
    grown = (off, size + more.nbytes, zlib.crc32(more.tobytes(), crc), 0, 0, 0)
    _commit_update(store_path, 55, [(1, grown)])
    for b in BACKENDS:
        with NumPack(store_path, backend=b) as npk:
            assert_same_array(npk.load("a"), np.concatenate([rows, more]))


@pytest.mark.parametrize("case", ["zstd_block", "as_zstd", "other_offset", "not_first", "not_last"])
def test_a_growth_the_rules_refuse_is_corrupt(backend, store_path, case):
    """Only the raw block that ends every record may grow in place, as the first record of
    an update, into a raw record at its offset: anything else overlaps and is corrupt."""
    rows, data, records = _raw_tail_store(store_path, backend)
    if case == "not_last":  # block 0's new version now lies past block 1
        with NumPack(store_path, backend=backend) as npk:
            npk.replace({"a": rows[:1]}, [0])
    with open(data, "ab") as f:
        f.write(bytes(64))
    off, size, crc, *_ = records[1]
    grown = (off, size + 64, zlib.crc32(bytes(64), crc), 0, 0, 0)
    end = data.stat().st_size
    blocks = {
        "zstd_block": [(0, records[0][:1] + (records[0][1] + 64,) + records[0][2:])],
        "as_zstd": [(1, grown[:3] + (1, 3, 0))],
        "other_offset": [(1, (off + 8,) + grown[1:])],
        "not_first": [(0, (end, 8) + records[0][2:]), (1, grown)],
        "not_last": [(1, grown)],
    }[case]
    _commit_update(store_path, 55, blocks)
    before = snapshot(store_path)
    with pytest.raises(CorruptStoreError, match="overlap"):
        NumPack(store_path, backend=backend).load("a")
    assert snapshot(store_path) == before
