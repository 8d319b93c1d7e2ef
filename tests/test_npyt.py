"""NPYT: the growing .npy file of spec/NPYT.md, its npyt-compatible API, and its processes.

NPYT is one pure-Python implementation whatever the backend, so these tests run once (no
`backend` fixture).
"""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import DTYPES, assert_same_array, make_array, subprocess_env

from numpack import (
    NPYT,
    CorruptStoreError,
    DTypeError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPackError,
    RowIndexError,
    ShapeMismatchError,
    StoreClosedError,
    StoreIOError,
    StoreLockedError,
    WriterSupersededError,
)

try:
    import fcntl
except ImportError:  # Windows: NPYT takes no lock there (spec/NPYT.md 5)
    fcntl = None

MAGIC = 20250510080000
TICK = np.dtype([("ts", "<i8"), ("price", "<f8"), ("volume", "<i4"), ("side", "i1")], align=True)

STRUCTS = {
    "packed": np.dtype([("a", "i1"), ("b", "<f8"), ("c", "<i4", (2,))]),
    "aligned": TICK,
    "aligned_no_padding": np.dtype([("a", "<i8"), ("b", "<f8")], align=True),
    "nested_aligned": np.dtype(
        [("a", "i1"), ("n", np.dtype([("x", "i1"), ("y", "<f4")], align=True), (2,))],
        align=True,
    ),
    "titles": np.dtype({"names": ["p", "q"], "formats": ["<i2", "<u8"], "titles": ["P", None]}),
}
OTHER_DTYPES = tuple(np.dtype(s) for s in ("<M8[ns]", "<m8[s]", "S5", "<U3", ">i4", ">f8", "V4"))

# Rows whose every field is derived from a sequence number, so a reader can tell a complete
# row from a torn or unwritten one. Shared with test_npy8.py and run by the subprocesses.
ROWS_CODE = """
import numpy as np
ROW = np.dtype([("seq", "<i8"), ("x", "<f8"), ("y", "<i4"), ("tag", "u1", (13,)),
                ("check", "<u8")])  # 41 bytes: rows and tail sit at odd addresses

def make_rows(first, n):
    seq = np.arange(first, first + n, dtype=np.int64)
    rows = np.zeros(n, ROW)
    rows["seq"], rows["x"], rows["y"] = seq, seq * 0.5, seq % 1000
    rows["tag"] = (seq % 251)[:, None]
    rows["check"] = seq.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)
    return rows

def check_rows(rows, first):
    if rows.dtype != ROW or rows.tobytes() != make_rows(first, len(rows)).tobytes():
        raise AssertionError(f"rows from {first}: wrong or incomplete: {rows[:3]}")
"""
_rows_ns: dict = {}
exec(ROWS_CODE, _rows_ns)  # the same definitions for this process
ROW, make_rows, check_rows = _rows_ns["ROW"], _rows_ns["make_rows"], _rows_ns["check_rows"]


@pytest.fixture
def npyt_pkg(monkeypatch):
    """The real `npyt` package from PyPI (in the `test` extra)."""
    npyt = pytest.importorskip(
        "npyt",
        reason="the npyt package is not installed (pip install npyt; it is in the test extra)",
    )
    from npyt import format as npyt_format

    # npyt replaces numpy's descr_to_dtype when imported; keep that to the tests that use it.
    for mod in (np.lib.format, getattr(np.lib, "_format_impl", np.lib.format)):
        mod.descr_to_dtype = npyt_format._origin_descr_to_dtype
        monkeypatch.setattr(mod, "descr_to_dtype", npyt_format._descr_to_dtype)
    return npyt


def tail_of(path) -> tuple:
    with open(path, "rb") as f:
        f.seek(-40, os.SEEK_END)
        return struct.unpack("<5Q", f.read())


def header_len(path) -> int:
    with open(path, "rb") as f:
        head = f.read(12)
    if head[6] == 1:
        return 10 + struct.unpack("<H", head[8:10])[0]
    return 12 + struct.unpack("<I", head[8:12])[0]


def same_rows(a, b) -> bool:
    """Equal rows, field by field and bit for bit (padding bytes of structs aside)."""
    if a.dtype.names is None:
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return a.dtype.names == b.dtype.names and all(same_rows(a[n], b[n]) for n in a.dtype.names)


def writer(path, array, capacity=0, **kw):
    return NPYT(path).save(array, capacity=capacity, skip_if_exists=False, **kw).load("r+")


# -- format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES + OTHER_DTYPES, ids=str)
@pytest.mark.parametrize("row_shape", [(), (3,)], ids=["1d", "2d"])
def test_every_dtype_round_trips_and_np_load_reads_it(tmp_path, dtype, row_shape):
    if dtype.kind in "MmSUV" or not dtype.isnative:
        arr = np.frombuffer(
            make_array(np.uint8, (7 * int(np.prod(row_shape)) * dtype.itemsize,)), dtype
        )
        arr = arr.reshape((7, *row_shape))
    else:
        arr = make_array(dtype, (7, *row_shape))
    path = tmp_path / "a.npy"
    writer(path, arr, capacity=10).close()
    r = NPYT(path).load("r")
    assert_same_array(r.data(), arr)
    assert (r.capacity(), r.end(), r.start(), r.dtype()) == (10, 7, 0, dtype)
    raw = np.load(path)
    assert raw.shape == (10, *row_shape)
    assert_same_array(raw[:7], arr)
    assert_same_array(np.load(path, mmap_mode="r")[:7], arr)


@pytest.mark.parametrize("name", list(STRUCTS))
def test_structured_dtypes_keep_their_layout_and_align_flag(tmp_path, name):
    dt = STRUCTS[name]
    arr = np.frombuffer(make_array(np.uint8, (5 * dt.itemsize,)), dt).copy()
    writer(tmp_path / "s.npy", arr, capacity=8).close()
    r = NPYT(tmp_path / "s.npy").load("r")
    got = r.dtype()
    assert got == dt and got.itemsize == dt.itemsize and got.isalignedstruct == dt.isalignedstruct
    assert got.alignment == dt.alignment
    assert r.data().tobytes() == arr.tobytes()
    loaded = np.load(tmp_path / "s.npy")  # np.load still reads it (and loses align=True)
    assert loaded[:5].tobytes() == arr.tobytes() and loaded.dtype == dt


def test_header_is_padded_and_the_tail_follows_the_data(tmp_path):
    path = tmp_path / "t.npy"
    w = writer(path, np.arange(3, dtype="<f8"), capacity=5)
    offset = header_len(path)
    head = path.read_bytes()[:offset]
    assert offset % 64 == 0 and head.endswith(b"\n")
    assert b"'shape': (" + b" " * 20 + b"5,)" in head
    assert os.path.getsize(path) == offset + 5 * 8 + 40
    start, end, ts, data_offset, magic = tail_of(path)
    assert (start, end, data_offset, magic) == (0, 3, offset, MAGIC)
    assert abs(ts - time.time_ns()) < 60e9
    assert w.info() == (0, 3, ts, offset, MAGIC)
    # Capacity changes across digit counts never move the data.
    for cap in (123456789, 9, None, 10**12, 4):
        w.resize(cap)
        assert header_len(path) == offset
        assert os.path.getsize(path) == offset + w.capacity() * 8 + 40
        assert tail_of(path)[1:4:2] == (3, offset)
        assert_same_array(np.load(path, mmap_mode="r")[:3], np.arange(3, dtype="<f8"))
    assert w.capacity() == 4


def test_files_written_by_np_save_are_refused(tmp_path):
    np.save(tmp_path / "plain.npy", np.arange(5))
    with pytest.raises(CorruptStoreError, match="without the NPYT tail"):
        NPYT(tmp_path / "plain.npy").load("r")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(CorruptStoreError):
        NPYT(tmp_path / "junk.npy").load("r")
    with pytest.raises(StoreIOError) as e:
        NPYT(tmp_path / "missing.npy").load("r")
    assert isinstance(e.value, OSError) and isinstance(e.value, NumPackError)


# -- the API --------------------------------------------------------------------------------


def test_save_and_load_arguments(tmp_path):
    path = tmp_path / "a.npy"
    nt = NPYT(path, dtype=TICK).save(capacity=100).load("r+")
    assert (nt.capacity(), nt.size(), nt.empty(), nt.full(), nt.dtype()) == (
        100,
        0,
        True,
        False,
        TICK,
    )
    assert nt.filename() == path
    assert "end=0, capacity=100, mode='r+'" in repr(nt) and "not loaded" in repr(NPYT(path))
    with NPYT(path).load() as r:
        assert r.capacity() == 100
    with pytest.raises(StoreClosedError):
        r.size()
    # skip_if_exists keeps the file; otherwise it is replaced.
    assert NPYT(path, dtype=TICK).save(np.zeros(3, TICK)) is not None
    assert NPYT(path).load("r").end() == 0
    nt.close()
    NPYT(path).save(np.zeros(3, TICK), capacity=10, end=1, skip_if_exists=False)
    r = NPYT(path).load("r")
    assert (r.end(), r.capacity()) == (1, 10)
    assert NPYT(tmp_path / "b.npy").save(np.arange(4), end=0).load().size() == 0
    with pytest.raises(InvalidArgumentError):
        NPYT(tmp_path / "c.npy").save()  # no array and no dtype
    with pytest.raises(InvalidArgumentError):
        NPYT(tmp_path / "c.npy").save(np.arange(3), end=4)
    with pytest.raises(InvalidArgumentError):
        NPYT(tmp_path / "c.npy").save(np.float64(3))
    with pytest.raises(InvalidTypeError):
        NPYT(tmp_path / "c.npy").save(np.arange(3), capacity=2.5)
    with pytest.raises(DTypeError):
        NPYT(tmp_path / "c.npy").save(np.array([object()]))
    with pytest.raises(InvalidArgumentError):
        r.load("w+")
    with pytest.raises(DTypeError):
        NPYT(path, dtype=np.float32).load()
    with pytest.raises(StoreClosedError):
        NPYT(path).end()
    assert NPYT(path).info() is None
    # A subarray dtype means rows of that shape.
    sub = NPYT(tmp_path / "d.npy", dtype=("<f4", (3,))).save(capacity=4).load("r+")
    assert sub.append(np.ones((2, 3), "<f4")) == 0 and sub.data().shape == (2, 3)


def test_append_all_or_nothing_and_row_checks(tmp_path):
    w = writer(tmp_path / "a.npy", np.arange(3, dtype=np.int64), capacity=5)
    assert w.append(np.array([3], np.int32)) == 0  # same_kind cast
    assert w.append(np.int64(4)) == 0  # one row on its own
    assert w.full() and w.append(np.arange(2)) == 2  # no room: nothing written
    assert w.append(np.arange(0)) == 0
    assert_same_array(w.data(), np.arange(5, dtype=np.int64))
    with pytest.raises(DTypeError):
        w.append(np.array([1.5]))
    with pytest.raises(ShapeMismatchError):
        w.append(np.zeros((1, 2), np.int64))
    rec = writer(tmp_path / "r.npy", np.zeros(1, TICK), capacity=4)
    with pytest.raises(DTypeError):  # same layout, other names: refused, not cast by position
        rec.append(np.zeros(1, [("a", "<i8"), ("b", "<f8"), ("c", "<i4"), ("d", "i1")]))
    rec.append([(1, 2.0, 3, 1)])
    assert rec.at(-1)["price"] == 2.0
    ro = NPYT(tmp_path / "a.npy").load("r")
    with pytest.raises(InvalidArgumentError, match="read-only"):
        ro.append(np.arange(1))
    with pytest.raises(InvalidArgumentError):
        ro.resize()
    with pytest.raises(InvalidArgumentError):
        ro.pop()


def test_expend_and_extend_grow_the_file(tmp_path):
    path = tmp_path / "a.npy"
    w = writer(path, np.arange(2, dtype=np.int16), capacity=2)
    reader = NPYT(path).load("r")  # mapped before the file grows
    assert w.expend(np.arange(2, 5, dtype=np.int16)) is True
    assert w.extend(np.arange(5, 40, dtype=np.int16)) is True
    assert w.capacity() >= 40 and w.end() == 40
    assert_same_array(reader.data(), np.arange(40, dtype=np.int16))
    assert_same_array(np.load(path)[:40], np.arange(40, dtype=np.int16))
    assert w.resize() and w.capacity() == 40 == reader.capacity()
    assert_same_array(reader.read(100), np.arange(40, dtype=np.int16))


def test_resize_never_loses_rows(tmp_path):
    w = writer(tmp_path / "a.npy", np.arange(6.0), capacity=10)
    assert w.resize(2) is True and w.capacity() == 6  # raised to end
    assert w.resize(1000) and w.capacity() == 1000
    assert w.resize() and w.capacity() == 6 and w.full()
    w.pop(4)
    assert w.resize() and w.capacity() == 6  # start > 0: the data stays where it is
    assert_same_array(w.data(), np.arange(4.0, 6.0))


def test_views_head_tail_at(tmp_path):
    arr = np.arange(20).reshape(10, 2)
    w = writer(tmp_path / "a.npy", arr, capacity=12)
    r = NPYT(tmp_path / "a.npy").load("r")
    for nt in (w, r):
        assert_same_array(nt.head(), arr[:5])
        assert_same_array(nt.head(30), arr)
        assert_same_array(nt.tail(3), arr[7:])
        assert_same_array(nt.tail(0), arr[:0])
        assert_same_array(nt.at(0), arr[0])
        assert_same_array(nt.at(-1), arr[9])
        with pytest.raises(RowIndexError):
            nt.at(10)
        with pytest.raises(InvalidTypeError):
            nt.at(1.0)
        with pytest.raises(InvalidArgumentError):
            nt.head(-1)
    assert not r.data().flags.writeable  # readers cannot scribble on the file
    w.data()[0] = [100, 101]  # the writer can, as in npyt
    assert r.at(0).tolist() == [100, 101]


def test_tell_seek_rewind_read(tmp_path):
    w = writer(tmp_path / "a.npy", np.arange(10), capacity=20)
    r = NPYT(tmp_path / "a.npy").load("r")
    assert r.tell() == 0
    assert_same_array(r.read(4), np.arange(4))
    assert_same_array(r.read(4, prefetch=2), np.arange(2, 8))
    assert r.tell() == 8
    assert_same_array(r.read(), np.arange(8, 10))
    assert len(r.read()) == 0
    assert_same_array(r.read(5, prefetch=3), np.arange(7, 10))  # nothing new: only prefetch
    w.append(np.arange(10, 13))
    assert_same_array(r.read(), np.arange(10, 13))
    assert r.seek(-5, os.SEEK_END).tell() == 8
    assert r.seek(2, os.SEEK_CUR).tell() == 10
    assert r.seek(100).tell() == 13 and r.seek(-100, os.SEEK_CUR).tell() == 0
    assert r.seek(3).rewind().tell() == 0
    with pytest.raises(InvalidArgumentError):
        r.seek(0, 7)
    with pytest.raises(InvalidArgumentError):
        r.read(-1)


def test_pop_clear_and_the_numbers(tmp_path):
    w = writer(tmp_path / "a.npy", np.arange(10), capacity=10)
    r = NPYT(tmp_path / "a.npy").load("r")
    ts = r.timestamp()
    popped = w.pop(3)
    assert_same_array(popped, np.arange(3))
    assert popped.flags.owndata
    assert (r.start(), r.end(), r.size(), r.capacity()) == (3, 10, 7, 10)
    assert r.timestamp() >= ts and r.info()[:2] == (3, 10)
    assert_same_array(r.data(), np.arange(3, 10))
    assert_same_array(r.at(0), np.int64(3))
    assert r.read(2).tolist() == [3, 4]  # reading starts at start
    assert r.rewind().tell() == 3
    assert_same_array(w.pop(), np.arange(3, 10))
    assert r.empty() and w.pop().size == 0
    assert w.clear() is w and (r.start(), r.end(), r.tell()) == (0, 0, 3)
    assert len(r.read()) == 0 and r.tell() == 0
    w.append(np.arange(4))
    assert r.read().tolist() == [0, 1, 2, 3]


def test_backup_rename_remove_merge(tmp_path):
    w = writer(tmp_path / "a.npy", np.arange(8), capacity=16)
    w.pop(2)
    full = w.backup(tmp_path / "bk")
    assert full == tmp_path / "bk" / "a.npy"
    b = NPYT(full).load()
    assert (b.start(), b.end(), b.capacity()) == (2, 8, 16)
    small = NPYT(w.backup(tmp_path / "small.npy", resize=True)).load()
    assert (small.start(), small.end(), small.capacity()) == (0, 6, 6)
    assert_same_array(small.data(), np.arange(2, 8))
    with pytest.raises(InvalidArgumentError):
        w.backup(tmp_path / "a.npy")

    assert w.rename(tmp_path / "b.npy") is True
    assert w.filename() == tmp_path / "b.npy" and not (tmp_path / "a.npy").exists()
    w.append(np.array([8]))  # still the writer, still mapped
    assert NPYT(tmp_path / "b.npy").load().data().tolist() == list(range(2, 9))
    assert lock_is_held(tmp_path / "b.npy")  # the lock moved with the file
    with pytest.raises(StoreLockedError):
        NPYT(tmp_path / "b.npy").remove()

    other = writer(tmp_path / "o.npy", np.arange(100, 103), capacity=3)
    other.close()
    assert w.merge(NPYT(tmp_path / "o.npy")) is True
    assert not (tmp_path / "o.npy").exists()
    assert w.data().tolist() == [*range(2, 9), 100, 101, 102]
    with pytest.raises(InvalidArgumentError):
        w.merge(tmp_path / "b.npy")

    assert w.remove() is True and not (tmp_path / "b.npy").exists()
    with pytest.raises(StoreClosedError):
        w.end()


# -- locks and processes ----------------------------------------------------------------------


def lock_is_held(path) -> bool:
    """Whether some descriptor, in this process or another, holds the flock on `path`: flock
    belongs to an open file description, so a new one here is refused as one elsewhere."""
    if fcntl is None:
        pytest.skip("no flock on this system")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also unlocks
    return False


# A second process that asks for the write lock through the API, once per line on stdin:
# "npyt PATH" loads a writer of PATH, "npy8 FOLDER" appends no rows to FOLDER (which takes
# its lock); it answers "ok" (and lets go at once) or the exception's class name.
_PROBE = """
import sys
import numpy as np
from numpack import NPY8, NPYT
for line in sys.stdin:
    what, path = line.rstrip("\\n").split(" ", 1)
    try:
        if what == "npyt":
            NPYT(path).load("r+").close()
        else:
            w = NPY8(path).load()
            w.append(np.zeros(0, w.dtype() or np.int64))
            w.close()
        print("ok", flush=True)
    except Exception as e:
        print(type(e).__name__, flush=True)
"""


def ask_other_process():
    """Fixture `other_process` (here and in test_npy8.py): ask a second process to take a write
    lock, other_process("npyt", path) -> "ok" or the error's name."""
    p = subprocess.Popen([sys.executable, "-c", _PROBE], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=subprocess_env())  # fmt: skip

    def ask(what: str, path) -> str:
        p.stdin.write(f"{what} {path}\n")
        p.stdin.flush()
        return p.stdout.readline().strip()

    yield ask
    p.stdin.close()
    p.wait(timeout=60)
    p.stdout.close()


other_process = pytest.fixture(name="other_process")(ask_other_process)


def test_same_object_loads_again_and_other_writes_are_refused(tmp_path):
    path = tmp_path / "a.npy"
    w = writer(path, np.arange(3), capacity=5)
    with pytest.raises(StoreLockedError, match="writer object in this process"):
        NPYT(path).save(np.arange(2), skip_if_exists=False)  # replacing is not taking over
    with pytest.raises(StoreLockedError, match="writer object in this process"):
        NPYT(path).remove()
    assert NPYT(path).load("r").end() == 3  # readers are never refused
    w.load("r+")  # a writer may load again
    assert w.append(np.array([3])) == 0
    view = w.data()
    w.close()  # views outlive the object; the lock does not
    assert not lock_is_held(path)
    NPYT(path).load("r+").append(np.array([4]))
    assert view.tolist() == [0, 1, 2, 3]


def test_a_newer_writer_in_the_process_takes_over(tmp_path):
    """A notebook cell `w = NPYT(f).load("r+")` run again: no wait, no StoreLockedError."""
    path = tmp_path / "a.npy"
    NPYT(path).save(np.arange(3), capacity=5)
    old = NPYT(path).load("r+")
    old_view = old.data()
    w = NPYT(path).load("r+")  # the cell again, while `old` is alive
    assert w.append(np.array([3])) == 0 and w.data().tolist() == [0, 1, 2, 3]
    assert lock_is_held(path)
    # Every write of the older object raises, naming the file; the file is untouched.
    writes = {
        "append": lambda: old.append(np.array([9])),
        "expend": lambda: old.expend(np.array([9])),
        "extend": lambda: old.extend(np.arange(9)),
        "resize": lambda: old.resize(50),
        "shrink": lambda: old.resize(),
        "pop": lambda: old.pop(1),
        "clear": lambda: old.clear(),
        "merge": lambda: old.merge(tmp_path / "other.npy"),
        "rename": lambda: old.rename(tmp_path / "moved.npy"),
        "remove": lambda: old.remove(),
        "save": lambda: old.save(np.arange(2), skip_if_exists=False),
    }
    writer(tmp_path / "other.npy", np.arange(2), capacity=2).close()
    before = path.read_bytes()
    for name, write in writes.items():
        with pytest.raises(WriterSupersededError, match="superseded") as e:
            write()
        assert isinstance(e.value, StoreLockedError) and isinstance(e.value, NumPackError)
        assert str(path) in str(e.value), name
    assert path.read_bytes() == before and (tmp_path / "other.npy").exists()
    # Its reads go on, as a reader's: they follow the newer writer, through read-only views.
    assert old.data().tolist() == [0, 1, 2, 3] and not old.data().flags.writeable
    w.append(np.array([4]))
    assert (old.end(), old.tail(2).tolist(), old.read().tolist()) == (5, [3, 4], [0, 1, 2, 3, 4])
    assert "mode='r'" in repr(old)
    assert old_view.tolist() == [0, 1, 2]  # arrays returned earlier stay valid
    # The newer object writes on; the older one can take the file back with load("r+").
    assert w.expend(np.arange(5, 9)) and w.end() == 9
    old.load("r+")
    assert old.append(np.array([9])) == 0
    with pytest.raises(WriterSupersededError):
        w.append(np.array([10]))
    assert w.end() == 10 and NPYT(path).load().data().tolist() == list(range(10))


def test_a_superseded_writer_whose_file_moved_reads_no_more(tmp_path):
    path = tmp_path / "a.npy"
    NPYT(path).save(np.arange(3), capacity=5)
    old = NPYT(path).load("r+")
    w = NPYT(path).load("r+")
    assert w.rename(tmp_path / "b.npy")
    with pytest.raises(WriterSupersededError, match="superseded"):
        old.end()  # no file at its path to follow: a clear error, not another file's rows
    with pytest.raises(WriterSupersededError):
        old.data()
    assert "superseded by a newer writer" in repr(old)
    old.close()
    assert lock_is_held(tmp_path / "b.npy") and w.append(np.array([3])) == 0
    assert NPYT(tmp_path / "b.npy").load().data().tolist() == [0, 1, 2, 3]


def resize_then_load(cls, path) -> None:
    """npyt's documented `t.resize(n); t = NPYT(f).load(mmap_mode="r+")`: the old object is
    still alive while the new one loads."""
    t = cls(path, dtype=TICK).save(capacity=4, skip_if_exists=False).load(mmap_mode="r+")
    t.append(np.zeros(3, TICK))
    t.resize(100)
    t = cls(path).load(mmap_mode="r+")
    assert (t.capacity(), t.end()) == (100, 3)
    t.append(np.ones(2, TICK))
    assert t.end() == 5 and t.dtype() == TICK
    t.resize(10)
    t = cls(path).load(mmap_mode="r+")
    assert t.expend(np.zeros(20, TICK)) and (t.end(), t.capacity()) == (25, 25)


def test_npyt_resize_then_load_pattern(tmp_path):
    resize_then_load(NPYT, tmp_path / "t.npy")


def test_npyt_resize_then_load_pattern_as_in_npyt(tmp_path, npyt_pkg):
    resize_then_load(npyt_pkg.NPYT, tmp_path / "theirs.npy")  # the very lines npyt documents
    t = NPYT(tmp_path / "theirs.npy").load(mmap_mode="r+")  # ours, on npyt's file
    t.resize(30)
    t = NPYT(tmp_path / "theirs.npy").load(mmap_mode="r+")
    assert (t.capacity(), t.end()) == (30, 25)


def test_closing_or_collecting_a_superseded_writer_keeps_the_lock(tmp_path, other_process):
    path = tmp_path / "a.npy"
    NPYT(path).save(np.arange(3), capacity=5)
    old = NPYT(path).load("r+")
    w = NPYT(path).load("r+")
    old.close()
    assert lock_is_held(path) and other_process("npyt", path) == "StoreLockedError"
    assert w.append(np.array([3])) == 0
    old, w = w, NPYT(path).load("r+")
    del old
    gc.collect()
    assert lock_is_held(path) and other_process("npyt", path) == "StoreLockedError"
    assert w.append(np.array([4])) == 0
    # The lock follows the newest object: closing it lets go, although older ones are alive.
    older = w
    w = NPYT(path).load("r+")
    w.close()
    assert not lock_is_held(path) and other_process("npyt", path) == "ok"
    with pytest.raises(WriterSupersededError):
        older.append(np.array([5]))
    # Collecting the newest object lets go too.
    w = NPYT(path).load("r+")
    del w
    gc.collect()
    assert not lock_is_held(path) and other_process("npyt", path) == "ok"
    assert NPYT(path).load().data().tolist() == [0, 1, 2, 3, 4]


def test_a_failed_load_leaves_the_writer_in_place(tmp_path):
    path = tmp_path / "a.npy"
    w = writer(path, np.arange(3, dtype=np.int64), capacity=5)
    with pytest.raises(DTypeError):
        NPYT(path, dtype=np.float32).load("r+")
    with pytest.raises(ShapeMismatchError):
        NPYT(path, dtype=("<i8", (2,))).load("r+")
    assert w.append(np.array([3])) == 0 and lock_is_held(path)
    gc.collect()
    assert w.append(np.array([4])) == 0 and lock_is_held(path)
    w.close()
    assert not lock_is_held(path)
    with pytest.raises(DTypeError):  # with no writer before it, a failed load keeps no lock
        NPYT(path, dtype=np.float32).load("r+")
    assert not lock_is_held(path)


def test_merge_does_not_take_a_file_over(tmp_path):
    w = writer(tmp_path / "a.npy", np.arange(3), capacity=3)
    other = writer(tmp_path / "o.npy", np.arange(10, 12), capacity=2)
    with pytest.raises(StoreLockedError) as e:
        w.merge(tmp_path / "o.npy")  # another object writes it: refused, both files kept
    assert not isinstance(e.value, WriterSupersededError)
    assert (tmp_path / "o.npy").exists() and w.end() == 3
    assert other.expend(np.array([12])) and other.end() == 3
    other.close()
    assert w.merge(tmp_path / "o.npy") and w.data().tolist() == [0, 1, 2, 10, 11, 12]


def test_threads_loading_writers_at_once_leave_one_writer(tmp_path):
    path = tmp_path / "a.npy"
    NPYT(path).save(np.arange(1), capacity=1)
    n = 8
    barrier = threading.Barrier(n)

    def load(_):
        barrier.wait()
        return NPYT(path).load("r+")

    with ThreadPoolExecutor(n) as pool:
        writers = list(pool.map(load, range(n)))  # none waits out a lock or fails
    done = []
    for i, t in enumerate(writers):
        try:
            t.expend(np.array([i]))
            done.append(i)
        except WriterSupersededError:
            pass
    assert len(done) == 1 and NPYT(path).load().data().tolist() == [0, *done]
    for t in writers[::2]:
        t.close()
    del t
    assert lock_is_held(path) == (done[0] % 2 == 1)
    writers.clear()
    gc.collect()
    assert not lock_is_held(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_cannot_take_its_parents_writer_over(tmp_path):
    path = tmp_path / "a.npy"
    w = writer(path, np.arange(3), capacity=5)
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() if threads are running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report by exit status only, and skip every exit handler
        code = 3
        try:
            NPYT(path).load("r+")
            code = 1
        except StoreLockedError as e:
            code = 2 if isinstance(e, WriterSupersededError) else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # refused: another process's writer
    assert w.append(np.array([3])) == 0 and lock_is_held(path)


_HOLD = """
import sys
from numpack import NPYT
w = NPYT(sys.argv[1]).load("r+")
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_writer_is_refused_across_processes(tmp_path):
    path = tmp_path / "a.npy"
    writer(path, np.arange(3), capacity=5).close()
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=subprocess_env())  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match="another process") as e:
            NPYT(path).load("r+")
        assert not isinstance(e.value, WriterSupersededError)
        assert NPYT(path).load("r").size() == 3
        w = NPYT(path).load("r")  # not a writer: nothing to take over
        with pytest.raises(StoreLockedError):
            NPYT(path).load("r+")
        assert w.size() == 3
    finally:
        p.stdin.close()
        p.wait(timeout=10)
        p.stdout.close()
    NPYT(path).load("r+").append(np.array([9]))  # released when the process exits


_PROCESS = (
    """
import os, sys, time
import numpy as np
from numpack import NPYT
"""
    + ROWS_CODE
)

_WRITER = (
    _PROCESS
    + """
path, seconds = sys.argv[1], float(sys.argv[2])
w = NPYT(path).load("r+")
print("ready", flush=True); sys.stdin.readline()
rng, seq = np.random.default_rng(1), 0
stop = time.monotonic() + seconds
while time.monotonic() < stop:
    n = int(rng.integers(1, 40))
    rows = make_rows(seq, n)
    if rng.random() < 0.5:
        w.expend(rows)                   # grows by doubling
    elif w.append(rows):
        w.resize(w.capacity() + int(rng.integers(n, 300)))   # grows a little, often
        assert w.append(rows) == 0
    seq += n
with open(path + ".tmp", "w") as f:
    f.write(str(seq))
os.replace(path + ".tmp", path + ".done")
print(seq)
"""
)

_READER = (
    _PROCESS
    + """
path, seed = sys.argv[1], int(sys.argv[2])
r = NPYT(path).load("r")
print("ready", flush=True); sys.stdin.readline()
rng, seen, total, reads = np.random.default_rng(seed), 0, None, 0
deadline = time.monotonic() + 60
while total is None or seen < total:
    assert time.monotonic() < deadline, f"stuck at {seen} of {total}"
    before = r.tell()
    rows = r.read(int(rng.integers(1, 300)), prefetch=int(rng.integers(0, 5)))
    new, reads = r.tell() - before, reads + 1
    assert before == seen and new <= len(rows)
    if len(rows):
        check_rows(rows, r.tell() - len(rows))   # prefetched rows included
        seen += new
        if reads % 50 == 0:
            last = r.tail(3)
            check_rows(last, int(last["seq"][0]))
    elif total is None and os.path.exists(path + ".done"):
        total = int(open(path + ".done").read())
print(seen, reads)
"""
)


def run_processes(scripts: list) -> list[str]:
    """Start one interpreter per (code, *argv), let them all go at once, return their stdout."""
    procs = [subprocess.Popen([sys.executable, "-c", code, *map(str, argv)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env())
             for code, *argv in scripts]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            outs.append(out.strip())
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_one_writer_many_readers_see_only_complete_rows(tmp_path):
    path = tmp_path / "ticks.npy"
    NPYT(path, dtype=ROW).save(capacity=16)
    outs = run_processes([(_WRITER, path, 2.0)] + [(_READER, path, seed) for seed in range(3)])
    total = int(outs[0])
    assert total > 0
    for out in outs[1:]:
        assert int(out.split()[0]) == total
    r = NPYT(path).load("r")
    check_rows(r.data(), 0)
    assert r.end() == total


# -- the npyt package ------------------------------------------------------------------------


# npyt 0.4.3 itself fails on struct dtypes with subarray fields and turns the padding of
# nested aligned structs into fields named 'f1' (its dtype_with_align); so flat structs only.
NPYT_STRUCTS = {
    "packed": np.dtype([("a", "i1"), ("b", "<f8"), ("c", "<i4")]),
    "aligned": TICK,
}


@pytest.mark.parametrize("name", ["int64_2d", *NPYT_STRUCTS])
def test_npyt_reads_and_appends_to_our_files(tmp_path, npyt_pkg, name):
    if name == "int64_2d":
        arr = np.arange(15, dtype=np.int64).reshape(5, 3)
    else:
        dt = NPYT_STRUCTS[name]
        arr = np.frombuffer(make_array(np.uint8, (5 * dt.itemsize,)), dt).copy()
    path = tmp_path / "ours.npy"
    writer(path, arr[:3], capacity=4).close()
    theirs = npyt_pkg.NPYT(path).load(mmap_mode="r")
    assert theirs.info()[:2] == (0, 3) and theirs.info()[3:] == (header_len(path), MAGIC)
    assert same_rows(theirs.data(), arr[:3])
    assert theirs.dtype().isalignedstruct == arr.dtype.isalignedstruct
    # npyt grows our file in place (its expend rewrites header and tail), and we follow.
    ours = NPYT(path).load("r")
    t = npyt_pkg.NPYT(path).load(mmap_mode="r+")
    assert t.expend(arr[3:]) is True
    assert same_rows(ours.data(), arr)
    assert ours.dtype() == arr.dtype


@pytest.mark.parametrize("dtype", [np.dtype("<f4"), TICK], ids=["float32", "tick"])
def test_we_read_and_append_to_npyt_files(tmp_path, npyt_pkg, dtype):
    arr = np.frombuffer(make_array(np.uint8, (9 * dtype.itemsize,)), dtype).copy()
    path = tmp_path / "theirs.npy"
    t = npyt_pkg.NPYT(path, dtype=dtype).save(arr[:2], capacity=5, end=0).load(mmap_mode="r+")
    t.append(arr[:2])
    ours = NPYT(path).load("r+")
    assert ours.dtype() == dtype and ours.dtype().isalignedstruct == dtype.isalignedstruct
    assert (ours.start(), ours.end(), ours.capacity()) == (0, 2, 5)
    assert ours.append(arr[2:4]) == 0
    assert ours.expend(arr[4:]) is True  # grows the npyt file
    ours.resize()
    back = npyt_pkg.NPYT(path).load(mmap_mode="r")
    assert same_rows(back.data(), arr) and back.capacity() == 9
    assert same_rows(np.load(path), arr)
