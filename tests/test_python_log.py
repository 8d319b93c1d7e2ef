"""The python backend's commit log (numpack/_python/log.py) and its use by the Store: record
framing, torn tails at every cut, rule-breaking records, undo recovery, incremental reads,
generation rules of a fold, version 1 upgrades and transactions at the Store level."""

from __future__ import annotations

import fcntl
import os
import struct
import zlib

import msgpack
import numpy as np
import pytest
from helpers import assert_same_array, log_records, read_metadata

from numpack import CorruptStoreError, InvalidArgumentError, NumPack
from numpack._python import compress, journal, log
from numpack._python import format as fmt
from numpack._python import store as pystore
from numpack._python.naming import data_file

NOW = 1_700_000_000_000_000


def _entry(name="a", shape=(4, 2), dtype="<f4", file_id=0, compression=None, deleted=()):
    deleted = np.asarray(deleted, np.int64) if len(deleted) else fmt.NO_ROWS
    file = data_file(name, file_id)
    return fmt.ArrayEntry(name, file, dtype, tuple(shape), deleted, NOW, compression)


def _zstd_entry(rows=10, block_rows=4, name="z"):
    """A zstd entry of `rows` int8 rows whose blocks sit one after another from offset 0."""
    count = compress.block_count(rows, block_rows)
    records = np.zeros(count, compress.RECORD)
    records["offset"] = np.arange(count) * 10
    records["size"] = 10
    return _entry(name, (rows,), "|i1", compression=fmt.zstd_map(3, block_rows, records))


def _meta(*entries, next_file_id=5) -> fmt.Metadata:
    return fmt.Metadata(next_file_id, tuple(entries))


def _framed(doc: dict) -> bytes:
    raw = msgpack.packb(doc, use_bin_type=True)
    return struct.pack("<II", len(raw), zlib.crc32(raw)) + raw


def _apply(meta, *ops, next_file_id=None):
    return log.apply(meta, list(ops), "test", next_file_id)


# -- framing --------------------------------------------------------------------------------


def test_header_and_generation():
    h = log.header(7)
    assert h == b"NPKLOG02" + (7).to_bytes(8, "little") and len(h) == log.HEADER
    assert log.generation(h + b"junk", "t") == 7
    for bad in (h[:15], b"NPKLOG01" + h[8:]):
        with pytest.raises(CorruptStoreError, match="not a numpack log"):
            log.generation(bad, "t")


def test_commit_record_bytes_follow_the_spec():
    e = _entry()
    ops = [
        log.Put(e),
        log.Update("a", 5, rows=6, deleted=np.array([0, 5])),
        log.Update("z", 6, blocks=log.blocks(2, np.zeros(1, compress.RECORD))),
        log.Drop("b"),
    ]
    expected = {
        "t": "commit",
        "next_file_id": 9,
        "ops": [
            {"op": "put", "entry": {
                "name": "a", "file": e.file, "dtype": "<f4", "shape": [4, 2], "deleted": b"",
                "modified_us": NOW, "compression": None}},
            {"op": "update", "name": "a", "modified_us": 5, "rows": 6,
             "deleted": np.array([0, 5], "<u8").tobytes()},
            {"op": "update", "name": "z", "modified_us": 6,
             "blocks": (2).to_bytes(8, "little") + bytes(24)},
            {"op": "drop", "name": "b"},
        ],
    }  # fmt: skip
    assert log.commit_record(9, ops) == _framed(expected)


def test_undo_record_bytes_and_split(monkeypatch):
    file = data_file("a", 3)
    rows = np.array([4, 1, 9], np.int64)
    old = bytes(range(12))
    [one] = log.undo_records(file, 4, rows, old)
    assert one == _framed({"t": "undo", "file": file, "row_bytes": 4,
                           "rows": rows.astype("<u8").tobytes(), "old": old})  # fmt: skip
    monkeypatch.setattr(log, "UNDO_BYTES", 8)  # two rows a record
    parts = log.undo_records(file, 4, rows, old)
    undo = [log.decode(p, "t") for payload in parts for p, _ in log.scan(payload)]
    assert [u.rows.tolist() for u in undo] == [[4, 1], [9]]
    assert b"".join(u.old for u in undo) == old
    monkeypatch.setattr(log, "UNDO_BYTES", 1)  # a row larger than the limit: one a record
    assert len(log.undo_records(file, 4, rows, old)) == 3


def test_round_trip_through_scan_and_decode():
    e = _zstd_entry()
    ops = [log.Put(e), log.Update("z", 1, rows=11, blocks=log.blocks(2, e.blocks[2:]))]
    data = log.commit_record(3, ops) + log.undo_records(data_file("a", 1), 2, [0], b"xy")[0]
    [(p1, end1), (p2, end2)] = log.scan(data)
    assert end2 == len(data)
    commit, undo = log.decode(p1, "t"), log.decode(p2, "t")
    assert commit.next_file_id == 3
    put, update = commit.ops
    assert fmt.entry_map(put.entry) == fmt.entry_map(e)
    assert update.rows == 11 and update.blocks["k"].tolist() == [2]
    assert (undo.file, undo.row_bytes, undo.rows.tolist()) == (data_file("a", 1), 2, [0])
    assert undo.old == b"xy"


def test_torn_tail_at_every_cut():
    first = log.commit_record(1, [log.Drop("a")])
    second = log.commit_record(2, [log.Put(_entry())])
    data = first + second
    for cut in range(len(first), len(data)):
        found = log.scan(data[:cut])
        assert [end for _, end in found] == [len(first)], cut
    assert len(log.scan(data)) == 2
    for i in range(len(first), len(data)):  # a flipped bit anywhere in the record: torn
        damaged = bytearray(data)
        damaged[i] ^= 0x10
        assert len(log.scan(bytes(damaged))) == 1, i


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"t": "nope"}, "unknown kind"),
        ({"t": "commit", "next_file_id": -1, "ops": []}, "next_file_id"),
        ({"t": "commit", "next_file_id": 1, "ops": {}}, "no list of ops"),
        ({"t": "commit", "next_file_id": 1, "ops": [{"op": "rename", "name": "a"}]}, "kind"),
        ({"t": "commit", "next_file_id": 1, "ops": [{"op": "drop"}]}, "without a name"),
        ({"t": "commit", "next_file_id": 1, "ops": [{"op": "put", "entry": {"name": "a"}}]},
         "dtype"),
        ({"t": "commit", "next_file_id": 1,
          "ops": [{"op": "update", "name": "a", "modified_us": 1, "blocks": b"x" * 31}]}, "torn"),
        ({"t": "commit", "next_file_id": 1,
          "ops": [{"op": "update", "name": "a", "modified_us": 1.5}]}, "modified_us"),
        ({"t": "undo", "file": "../x", "row_bytes": 1, "rows": b"", "old": b""}, "malformed"),
        ({"t": "undo", "file": data_file("a", 0), "row_bytes": 2, "rows": bytes(8),
          "old": b"x"}, "disagree"),
    ],
)  # fmt: skip
def test_whole_records_that_break_the_rules_are_corrupt(doc, match):
    [(payload, _)] = log.scan(_framed(doc))
    with pytest.raises(CorruptStoreError, match=match):
        log.decode(payload, "t")


def test_trailing_bytes_after_the_map_are_corrupt():
    raw = msgpack.packb({"t": "commit", "next_file_id": 1, "ops": []}) + b"\x00"
    with pytest.raises(CorruptStoreError, match="MessagePack"):
        log.decode(raw, "t")


def test_a_record_over_4_gib_is_refused(monkeypatch):
    monkeypatch.setattr(log, "_MAX_PAYLOAD", 10)
    with pytest.raises(InvalidArgumentError, match="4 GiB"):
        log.commit_record(1, [log.Drop("a-long-name")])


# -- applying commits -----------------------------------------------------------------------


def test_put_drop_update_apply_in_order():
    a, b = _entry("a"), _entry("b", file_id=1)
    meta = _apply(_meta(), log.Put(a), log.Put(b), next_file_id=7)
    assert [e.name for e in meta.arrays] == ["a", "b"] and meta.next_file_id == 7
    a2 = _entry("a", file_id=2)
    meta = _apply(meta, log.Drop("a"), log.Put(a2), log.Put(_entry("c", file_id=3)))
    assert [e.name for e in meta.arrays] == ["b", "a", "c"]  # a dropped then put: at the end
    assert meta.find("a") is a2 and meta.positions == {"b": 0, "a": 1, "c": 2}
    meta = _apply(meta, log.Update("b", 9, rows=7, deleted=np.array([1, 6])))
    b = meta.find("b")
    assert b.shape == (7, 2) and b.deleted.tolist() == [1, 6] and b.modified_us == 9
    meta = _apply(meta, log.Update("b", 10, deleted=np.array([0, 3])))
    assert meta.find("b").deleted.tolist() == [0, 1, 3, 6]
    put_again = _apply(meta, log.Put(_entry("b", file_id=4)))
    assert [e.name for e in put_again.arrays] == ["b", "a", "c"]  # same position


@pytest.mark.parametrize(
    "op, match",
    [
        (log.Update("missing", 1), "does not exist"),
        (log.Drop("missing"), "does not exist"),
        (log.Update("a", 1, rows=3), "shrinks"),
        (log.Update("a", 1, rows=2**62), "impossible shape"),
        (log.Update("a", 1, deleted=np.array([2, 1], np.uint64)), "invalid list"),
        (log.Update("a", 1, deleted=np.array([4], np.uint64)), "invalid list"),
        (log.Update("a", 1, deleted=np.array([0, 1], np.uint64)), "already dropped"),
        (log.Update("a", 1, blocks=log.blocks(0, np.zeros(1, compress.RECORD))), "not zstd"),
    ],
)
def test_updates_that_break_the_rules_are_corrupt(op, match):
    meta = _meta(_entry("a", deleted=[1]))
    with pytest.raises(CorruptStoreError, match=match):
        _apply(meta, op)


def test_next_file_id_never_decreases():
    with pytest.raises(CorruptStoreError, match="decreases"):
        _apply(_meta(next_file_id=5), next_file_id=4)


def _rec(offset, size):
    r = np.zeros(1, compress.RECORD)
    r["offset"], r["size"] = offset, size
    return r


def test_block_updates_set_and_append():
    e = _zstd_entry(rows=10, block_rows=4)  # 3 blocks, the last of 2 rows, ending at 30
    meta = _meta(e)
    recs = np.concatenate([_rec(30, 10), _rec(40, 10)])
    after = _apply(meta, log.Update("z", 1, rows=14, blocks=log.blocks(2, recs))).find("z")
    assert after.blocks["offset"].tolist() == [0, 10, 30, 40]
    assert after.file_bytes == 50 and after.shape == (14,)
    assert not after.blocks.flags.writeable and e.blocks["offset"].tolist() == [0, 10, 20]
    # Replacing a block: the new version lies past every record; the index keeps its length.
    after = _apply(meta, log.Update("z", 1, blocks=log.blocks(0, _rec(35, 5)))).find("z")
    assert after.blocks["offset"].tolist() == [35, 10, 20] and after.file_bytes == 40


@pytest.mark.parametrize(
    "rows, first, recs, match",
    [
        (10, 4, _rec(30, 10), "gap"),  # block 4 of 3
        (14, 2, _rec(30, 10), "blocks where"),  # 14 rows need 4 blocks
        (10, 0, _rec(25, 10), "overlaps"),  # inside the old blocks' span
        (14, 2, np.concatenate([_rec(40, 10), _rec(45, 10)]), "overlaps"),  # new on new
        (10, 0, _rec(2**63, 1), "invalid block record"),
        (10, 2, _rec(30, 0), "cannot hold"),  # 2 rows need at least 1 stored byte
    ],
)
def test_block_updates_that_break_the_rules_are_corrupt(rows, first, recs, match):
    meta = _meta(_zstd_entry(rows=10, block_rows=4))
    with pytest.raises(CorruptStoreError, match=match):
        _apply(meta, log.Update("z", 1, rows=rows, blocks=log.blocks(first, recs)))


def test_rows_without_blocks_must_keep_the_block_count():
    meta = _meta(_zstd_entry(rows=10, block_rows=4))
    assert _apply(meta, log.Update("z", 1, rows=12)).find("z").shape == (12,)
    with pytest.raises(CorruptStoreError, match="blocks where"):
        _apply(meta, log.Update("z", 1, rows=13))


# -- undo recovery --------------------------------------------------------------------------


def test_restore_puts_back_the_oldest_contents(tmp_path):
    file = data_file("a", 0)
    (tmp_path / file).write_bytes(bytes(range(10)))
    # Row 3 listed twice: the first (oldest) contents win; others a run at a time.
    journal.restore(str(tmp_path), file, 2, [3, 1, 2, 3], b"AAbbccDD", "t", False)
    assert (tmp_path / file).read_bytes() == bytes(range(2)) + b"bbccAA" + bytes(range(8, 10))
    journal.restore(str(tmp_path), file, 2, [0, 1, 2], b"xxyyzz", "t", True)
    assert (tmp_path / file).read_bytes()[:6] == b"xxyyzz"
    journal.restore(str(tmp_path), data_file("gone", 0), 2, [0], b"qq", "t", False)  # skipped
    with pytest.raises(CorruptStoreError, match="past the end"):
        journal.restore(str(tmp_path), file, 2, [5], b"qq", "t", False)


def _raw_store(path):
    npk = NumPack(path, backend="python")
    npk.save({"a": np.arange(12, dtype="<i4").reshape(6, 2)})
    return npk, read_metadata(path)["arrays"][0]["file"]


def _interrupted_replace(path, file, rows, values):
    """What a replace killed after logging its undo record and writing its rows leaves."""
    current = np.fromfile(path / file, "<i4").reshape(-1, 2)
    [record] = log.undo_records(file, 8, np.array(rows), current[rows].tobytes())
    with open(path / "numpack.log", "ab") as f:
        f.write(record)
    current[rows] = values
    current.tofile(path / file)


def test_pending_undo_is_left_while_the_lock_is_held(tmp_path):
    path = tmp_path / "s"
    npk, file = _raw_store(path)
    npk.close()
    _interrupted_replace(path, file, [1, 4], -7)
    size = (path / "numpack.log").stat().st_size
    fd = os.open(path / "numpack.lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer in the middle of that call
    try:
        with NumPack(path, backend="python") as reader:
            assert reader.load("a")[1].tolist() == [-7, -7]  # read as it is
        assert (path / "numpack.log").stat().st_size == size
    finally:
        os.close(fd)
    with NumPack(path, backend="python") as npk:  # the lock is free: put back at open
        assert_same_array(npk.load("a"), np.arange(12, dtype="<i4").reshape(6, 2))
    assert log_records(path)[1][-1][1] == (path / "numpack.log").stat().st_size


def test_writer_recovers_undo_and_a_torn_record_before_its_commit(tmp_path):
    path = tmp_path / "s"
    npk, file = _raw_store(path)
    reader = NumPack(path, backend="python")
    _interrupted_replace(path, file, [0], 99)
    with open(path / "numpack.log", "ab") as f:
        f.write(log.commit_record(50, [log.Drop("a")])[:-3])  # torn
    assert reader.get_shape("a") == (6, 2)
    npk.append({"a": np.full((1, 2), 5, "<i4")})
    expected = np.concatenate([np.arange(12, dtype="<i4").reshape(6, 2), np.full((1, 2), 5, "<i4")])
    assert_same_array(reader.load("a"), expected)
    kinds = [r["t"] for r, _ in log_records(path)[1]]
    assert kinds == ["commit", "commit"]  # the undo and torn records are cut
    npk.close()
    reader.close()


def test_failed_raw_replace_puts_rows_back_and_cuts_the_log(tmp_path, monkeypatch):
    path = tmp_path / "s"
    npk, _ = _raw_store(path)
    size = (path / "numpack.log").stat().st_size

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pystore.Store, "_write_commit", fail)
    with pytest.raises(OSError):
        npk.replace({"a": np.full((2, 2), -1, "<i4")}, [0, 5])
    assert_same_array(npk.load("a"), np.arange(12, dtype="<i4").reshape(6, 2))
    assert (path / "numpack.log").stat().st_size == size
    npk.close()


# -- readers: incremental catch-up and the generation rules --------------------------------------


def test_reader_reads_only_the_new_records(tmp_path, monkeypatch):
    path = tmp_path / "s"
    writer = NumPack(path, backend="python")
    writer.save({"a": np.arange(4)})
    reader = NumPack(path, backend="python")
    decoded = []
    monkeypatch.setattr(fmt, "decode", lambda *a: decoded.append(a) or pytest.fail("reread"))
    seen = []
    real_scan = log.scan
    monkeypatch.setattr(log, "scan", lambda data: seen.append(len(data)) or real_scan(data))
    writer.append({"a": np.arange(2)})
    end = reader._store._source.end
    assert reader.get_shape("a") == (6,)
    assert seen[-1] == (path / "numpack.log").stat().st_size - end  # just the new record
    n = len(seen)
    assert reader.get_shape("a") == (6,)
    assert len(seen) == n  # nothing changed: one stat, nothing read
    writer.close()
    reader.close()


def test_reader_ignores_trailing_undo_records_until_the_commit(tmp_path):
    path = tmp_path / "s"
    writer, file = _raw_store(path)
    reader = NumPack(path, backend="python")
    writer._store.begin()
    writer.replace({"a": np.full((1, 2), 8, "<i4")}, [2])
    before = reader._store._source.end
    assert reader.get_shape("a") == (6, 2)
    assert reader._store._source.end == before  # the undo record is not consumed
    writer._store.commit()
    assert reader.load("a")[2].tolist() == [8, 8]
    writer.close()
    reader.close()


def _fold_by_hand(path, generation_of_log):
    """The snapshot of generation 2 holding everything, beside a log of `generation_of_log`."""
    meta = read_metadata(path)
    meta["generation"] = 2
    (path / "metadata.npkm").write_bytes(msgpack.packb(meta, use_bin_type=True))
    (path / "numpack.log").write_bytes(log.header(generation_of_log))


def test_a_stale_log_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "s"
    with NumPack(path, backend="python") as npk:
        npk.save({"a": np.arange(3)})
        npk.append({"a": np.arange(2)})
    _fold_by_hand(path, 1)
    # The stale log holds a commit a reader must not apply again.
    with open(path / "numpack.log", "ab") as f:
        f.write(log.commit_record(9, [log.Drop("a")]))
    with NumPack(path, backend="python") as npk:
        assert npk.get_shape("a") == (5,)
        assert npk._store._source.kind == "stale"
        npk.append({"a": np.arange(1)})  # the writer writes a log of generation 2 first
    generation, records = log_records(path)
    assert generation == 2 and len(records) == 1
    with NumPack(path, backend="python") as npk:
        assert npk.get_shape("a") == (6,)


def test_a_log_newer_than_the_snapshot_is_corrupt(tmp_path):
    path = tmp_path / "s"
    NumPack(path, backend="python").close()
    (path / "numpack.log").write_bytes(log.header(5))
    with pytest.raises(CorruptStoreError, match="ahead"):
        NumPack(path, backend="python")


def test_no_log_reads_the_snapshot_alone_and_the_writer_makes_one(tmp_path):
    path = tmp_path / "s"
    with NumPack(path, backend="python") as npk:
        npk.save({"a": np.arange(3)})
    _fold_by_hand(path, 2)
    (path / "numpack.log").unlink()
    with NumPack(path, backend="python") as npk:
        assert npk.get_shape("a") == (3,) and npk._store._source.kind == "snapshot"
        npk.drop("a", [0])
        assert log_records(path)[0] == 2
    with NumPack(path, backend="python") as npk:
        assert npk.load("a").tolist() == [1, 2]


def test_fold_writes_generation_plus_one(tmp_path, monkeypatch):
    monkeypatch.setattr(pystore, "FOLD_BYTES", 0)  # fold after every commit
    path = tmp_path / "s"
    reader = NumPack(path, backend="python")
    with NumPack(path, backend="python") as npk:
        npk.save({"a": np.arange(3)})
        assert read_metadata(path)["generation"] == log_records(path)[0] == 2
        assert log_records(path)[1] == []  # the log starts empty after a fold
        assert reader.load("a").tolist() == [0, 1, 2]
        # Not past the snapshot's size: no fold.
        npk.append({"a": np.arange(3)})
        assert log_records(path)[0] == 2 and len(log_records(path)[1]) == 1
        npk.save({"b": np.arange(3)})  # now the log outgrows the snapshot
        assert read_metadata(path)["generation"] == log_records(path)[0] == 3
    assert reader.load("a").tolist() == [0, 1, 2, 0, 1, 2]
    assert reader.get_member_list() == ["a", "b"]
    reader.close()


# -- version 1 stores ---------------------------------------------------------------------


def _v1_store(path):
    path.mkdir()
    arr = np.arange(6, dtype="<i8")
    file = data_file("a", 0)
    (path / file).write_bytes(arr.tobytes())
    doc = {"format": "numpack", "version": 1, "next_file_id": 1, "arrays": [{
        "name": "a", "file": file, "dtype": "<i8", "shape": [6], "deleted": b"",
        "modified_us": NOW, "compression": None}]}  # fmt: skip
    (path / "metadata.npkm").write_bytes(msgpack.packb(doc, use_bin_type=True))
    return arr


def test_version_1_is_read_without_writing_then_upgraded(tmp_path):
    path = tmp_path / "v1"
    arr = _v1_store(path)
    with NumPack(path, backend="python") as npk:
        assert npk._store.format_version() == 1
        assert_same_array(npk.load("a"), arr)
    assert sorted(os.listdir(path)) == [data_file("a", 0), "metadata.npkm"]  # nothing written
    with NumPack(path, backend="python") as npk:
        npk.drop("a", [0])
        assert npk._store.format_version() == 2
    meta = read_metadata(path)
    assert (meta["version"], meta["generation"], meta["next_file_id"]) == (2, 1, 1)
    snap = msgpack.unpackb((path / "metadata.npkm").read_bytes())
    assert list(snap) == ["format", "version", "generation", "next_file_id", "arrays"]
    assert [r["ops"][0]["op"] for r, _ in log_records(path)[1]] == ["update"]


def test_a_reader_of_version_1_follows_the_upgrade(tmp_path):
    path = tmp_path / "v1"
    _v1_store(path)
    reader = NumPack(path, backend="python")
    assert reader.get_shape("a") == (6,)
    with NumPack(path, backend="python") as npk:
        npk.append({"a": np.arange(2)})
    assert reader.get_shape("a") == (8,) and reader._store.format_version() == 2
    reader.close()


# -- transactions at the Store level ----------------------------------------------------------


def test_store_transactions(tmp_path):
    path = tmp_path / "s"
    npk = NumPack(path, backend="python")
    s = npk._store
    npk.save({"a": np.arange(4)})
    size = (path / "numpack.log").stat().st_size
    s.begin()
    with pytest.raises(InvalidArgumentError, match="already open"):
        s.begin()
    npk.replace({"a": np.full(1, 9)}, [0])
    npk.save({"b": np.arange(2)})
    assert npk.get_member_list() == ["a", "b"]  # its own pending writes
    s.abort()
    assert npk.load("a").tolist() == [0, 1, 2, 3] and npk.get_member_list() == ["a"]
    assert (path / "numpack.log").stat().st_size == size
    s.begin()
    s.commit()  # no ops: no record
    assert (path / "numpack.log").stat().st_size == size
    with pytest.raises(InvalidArgumentError, match="no transaction"):
        s.commit()
    s.abort()  # nothing open: nothing to do
    npk.close()


def test_incremental_reader_matches_a_fresh_open(tmp_path, monkeypatch):
    """After any mix of calls (folds among them), what a reader built record by record is
    what a new opener reads from the snapshot and the log."""
    monkeypatch.setattr(pystore, "FOLD_BYTES", 2048)
    path = tmp_path / "s"
    rng = np.random.default_rng(7)
    writer = NumPack(path, backend="python")
    reader = NumPack(path, backend="python")
    folds = set()
    for step in range(120):
        name = f"x{rng.integers(4)}"
        have = name in writer
        kind = rng.integers(7)
        if not have or kind == 0:
            writer.save({name: rng.random((rng.integers(1, 30), 3))}, compress=bool(kind % 2))
        elif kind == 1:
            writer.append({name: rng.random((rng.integers(0, 9), 3))})
        elif kind == 2 and writer.get_shape(name)[0]:
            n = writer.get_shape(name)[0]
            writer.replace({name: rng.random((2, 3))}, rng.integers(0, n, 2))
        elif kind == 3 and writer.get_shape(name)[0] > 1:
            writer.drop(name, [int(rng.integers(writer.get_shape(name)[0]))])
        elif kind == 4:
            writer.compact(name)
        elif kind == 5:
            writer.drop(name)
        else:
            with writer.transaction():
                writer.append({name: rng.random((1, 3))})
                writer.drop(name, [0])
        folds.add(log_records(path)[0])
        ours = [fmt.entry_map(e) for e in reader._store._refresh().arrays]
        with NumPack(path, backend="python") as fresh:
            theirs = [fmt.entry_map(e) for e in fresh._store._refresh().arrays]
            assert ours == theirs, step
            for e in theirs:
                assert_same_array(reader.load(e["name"]), fresh.load(e["name"]))
    assert len(folds) > 3
    writer.close()
    reader.close()
