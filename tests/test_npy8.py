"""NPY8: the endless folder of NPYT files (spec/NPYT.md section 6); run once, as test_npyt.py."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_same_array, subprocess_env
from test_npyt import (
    ROW,
    ROWS_CODE,
    ask_other_process,
    check_rows,
    lock_is_held,
    make_rows,
    run_processes,
)

from numpack import NPY8, NPYT, InvalidArgumentError, StoreLockedError, WriterSupersededError


@pytest.fixture
def npyt_pkg(monkeypatch):
    npyt = pytest.importorskip("npyt", reason="the npyt package is not installed (test extra)")
    from npyt import format as npyt_format

    # npyt replaces numpy's descr_to_dtype when imported; keep that to the tests that use it.
    for mod in (np.lib.format, getattr(np.lib, "_format_impl", np.lib.format)):
        mod.descr_to_dtype = npyt_format._origin_descr_to_dtype
        monkeypatch.setattr(mod, "descr_to_dtype", npyt_format._descr_to_dtype)
    return npyt


other_process = pytest.fixture(name="other_process")(ask_other_process)


def listed(folder) -> list[int]:
    return [int(t) for t in np.fromfile(folder / ".lock", "<u8")]


def on_disk(folder, ext=".npy") -> list[int]:
    return sorted(int(p.name[: -len(ext)]) for p in folder.iterdir() if p.name.endswith(ext))


def read_all(r, n=1024) -> np.ndarray:
    out = []
    while len(rows := r.read(n)):
        out.append(rows.copy())
    return np.concatenate(out) if out else np.empty(0, ROW)


def test_append_rolls_over_and_lists_the_newest_files(tmp_path):
    folder = tmp_path / "ticks"
    w = NPY8(folder, capacity_per_file=5, query_size=3).load()
    assert w.capacity() == 15 and w.start() == 0 and w.end() == 0 and w.dtype() is None
    for i in range(0, 24, 2):
        assert w.append(make_rows(i, 2)) == 0
    files = on_disk(folder)
    assert len(files) == 6  # 2 + 2 rows fit a file of 5; a batch is never split
    assert listed(folder) == files[-3:]
    assert w.end() == 4 and w.dtype() == ROW
    for t in files[:-3]:  # dropped from the list: kept, and shrunk to their rows
        f = NPYT(folder / f"{t}.npy").load()
        assert f.capacity() == f.end() == 4
    big = make_rows(24, 12)  # more than a file holds: a file of its own
    w.append(big)
    last = NPYT(folder / f"{listed(folder)[-1]}.npy").load()
    assert last.capacity() == 12 and last.end() == 12
    assert w.append(make_rows(36, 0)) == 0
    with pytest.raises(ValueError):
        w.append(np.arange(3))  # wrong dtype
    assert NPY8(tmp_path / "q", query_size=1).load().capacity() == 2 * 1024  # at least 2


def test_read_continues_across_files(tmp_path):
    folder = tmp_path / "ticks"
    w = NPY8(folder, capacity_per_file=10, query_size=4, dtype=ROW).load()
    r = NPY8(folder).load()
    empty = r.read()
    assert len(empty) == 0
    for i in range(0, 30, 3):
        w.append(make_rows(i, 3))
    got = r.read(4)
    check_rows(got, 0)
    got = r.read(100, prefetch=2)  # one file at a time: rows 4..8 of the first, plus 2 before
    check_rows(got, 2)
    assert len(got) == 7
    rest = read_all(r, 5)
    check_rows(rest, 9)
    assert len(rest) == 21
    w.append(make_rows(30, 3))
    check_rows(r.read(), 30)
    assert len(r.read()) == 0 and r.read().dtype == ROW
    with pytest.raises(InvalidArgumentError):
        r.read(-1)


def test_a_reader_behind_the_list_reads_dropped_files_from_disk(tmp_path):
    folder = tmp_path / "ticks"
    w = NPY8(folder, capacity_per_file=4, query_size=2).load()
    r = NPY8(folder).load()
    w.append(make_rows(0, 4))
    check_rows(r.read(2), 0)
    for i in range(4, 40, 4):  # ten files; the reader's file leaves the list
        w.append(make_rows(i, 4))
    check_rows(read_all(r), 2)
    assert r.end() == 4


def test_head_tail_end(tmp_path):
    folder = tmp_path / "ticks"
    w = NPY8(folder, capacity_per_file=4, query_size=3).load()
    for i in range(0, 20, 2):  # 5 files of 4 rows; 3 listed: rows 8..19
        w.append(np.arange(i, i + 2))
    r = NPY8(folder).load()
    for x in (w, r):
        assert [a.tolist() for a in x.head(6)] == [[8, 9, 10, 11], [12, 13]]
        assert [a.tolist() for a in x.tail(6)] == [[14, 15], [16, 17, 18, 19]]
        assert [a.tolist() for a in x.tail()] == [[15], [16, 17, 18, 19]]
        assert sum(len(a) for a in x.head(100)) == 12 and x.tail(0) == []
        assert x.end() == 4
    w.append(np.arange(20, 22))
    assert [a.tolist() for a in r.tail(3)] == [[19], [20, 21]]
    assert r.end() == 2


def test_merge_combines_dropped_files(tmp_path):
    folder = tmp_path / "ticks"
    w = NPY8(folder, capacity_per_file=2, query_size=2).load()
    for i in range(0, 20, 2):
        w.append(np.arange(i, i + 2))
    before = on_disk(folder)
    assert w.merge(3) is True
    merged = on_disk(folder, ".npy_")
    # 10 files; the newest 3 are left alone; 7 older: two batches of 3, one left over.
    assert merged == [before[0], before[3]]
    assert on_disk(folder) == before[6:]
    got = [NPYT(folder / f"{t}.npy_").load().data().tolist() for t in merged]
    assert got == [list(range(0, 6)), list(range(6, 12))]
    assert listed(folder) == before[-2:]
    r = NPY8(folder).load()
    assert [a.tolist() for a in r.head(10)] == [[16, 17], [18, 19]]


def test_stale_list_is_rebuilt_on_load(tmp_path):
    folder = tmp_path / "ticks"
    w = NPY8(folder, capacity_per_file=2, query_size=3).load()
    for i in range(0, 8, 2):
        w.append(np.arange(i, i + 2))
    w.close()
    files = on_disk(folder)
    os.remove(folder / f"{listed(folder)[0]}.npy")
    r = NPY8(folder).load()
    assert listed(folder) == [*files[:1], *files[2:]]
    assert_same_array(r.read(), np.arange(0, 2))
    (folder / ".lock").unlink()
    assert listed(NPY8(folder, query_size=5).load()._path) == [*files[:1], *files[2:], 0, 0]


def test_second_appender_is_refused_across_processes(tmp_path):
    folder = tmp_path / "ticks"
    w = NPY8(folder, capacity_per_file=4).load()
    w.append(np.arange(3))
    other = NPY8(folder).load()
    assert other.read().tolist() == [0, 1, 2]  # readers are welcome
    with pytest.raises(StoreLockedError, match="writer object in this process"):
        other.remove()  # removing is not taking over
    code = (
        "import sys, numpy as np\nfrom numpack import NPY8\n"
        "try:\n    NPY8(sys.argv[1]).load().append(np.arange(2))\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                         text=True, env=subprocess_env(), timeout=60)  # fmt: skip
    assert out.stdout.strip() == "StoreLockedError", out.stderr
    assert w.append(np.arange(3, 5)) == 0
    w.remove()
    assert not folder.exists()


def newest(folder):
    return folder / f"{max(listed(folder))}.npy"


def test_a_newer_appender_in_the_process_takes_over(tmp_path, other_process):
    """A notebook cell `w = NPY8(f).load(); w.append(rows)` run again."""
    folder = tmp_path / "ticks"
    old = NPY8(folder, capacity_per_file=4, query_size=3).load()
    old.append(np.arange(3))
    first = newest(folder)
    w = NPY8(folder, capacity_per_file=4, query_size=3).load()
    assert w.append(np.arange(3, 4)) == 0  # no wait, no StoreLockedError; the same file
    assert newest(folder) == first and NPYT(first).load().data().tolist() == [0, 1, 2, 3]
    assert lock_is_held(folder / ".lock") and lock_is_held(first)
    with pytest.raises(WriterSupersededError, match="superseded") as e:
        old.append(np.arange(2))
    assert isinstance(e.value, StoreLockedError) and str(folder) in str(e.value)
    with pytest.raises(WriterSupersededError):
        old.remove()
    assert folder.exists() and NPYT(first).load().end() == 4
    # The older object still reads, following the newer writer across files.
    assert old.read().tolist() == [0, 1, 2, 3] and old.end() == 4
    for i in range(4, 12, 2):
        w.append(np.arange(i, i + 2))
    assert read_all(old).tolist() == list(range(4, 12)) and old.end() == w.end() == 4
    assert [a.tolist() for a in old.tail(5)] == [[7], [8, 9, 10, 11]]
    assert not lock_is_held(first)  # the newer writer rolled over and let the old file go
    # Closing or collecting the older object keeps the newer one's locks.
    old.close()
    del old
    gc.collect()
    assert lock_is_held(folder / ".lock") and lock_is_held(newest(folder))
    assert other_process("npy8", folder) == "StoreLockedError"
    assert w.append(np.arange(12, 14)) == 0
    # The newest object lets go when it closes, or when it is collected.
    w2 = NPY8(folder).load()
    w2.append(np.arange(14, 15))
    w2.close()
    assert not lock_is_held(folder / ".lock") and not lock_is_held(newest(folder))
    assert other_process("npy8", folder) == "ok"
    with pytest.raises(WriterSupersededError):
        w.append(np.arange(2))
    w.load()  # load() again, then append: takes the folder back
    w.append(np.arange(15, 16))
    del w
    gc.collect()
    assert not lock_is_held(folder / ".lock") and not lock_is_held(newest(folder))
    everything = read_all(NPY8(folder).load())  # from the oldest listed file on
    assert everything.tolist() == list(range(4, 16))


_WRITER = (
    """
import os, sys, time
import numpy as np
from numpack import NPY8
"""
    + ROWS_CODE
    + """
folder, seconds = sys.argv[1], float(sys.argv[2])
w = NPY8(folder, capacity_per_file=2000, query_size=3, dtype=ROW).load()
print("ready", flush=True); sys.stdin.readline()
rng, seq = np.random.default_rng(2), 0
stop = time.monotonic() + seconds
while time.monotonic() < stop and seq < 400_000:  # ~200 files, a bounded test
    n = int(rng.integers(1, 60))
    w.append(make_rows(seq, n))
    seq += n
    time.sleep(0.0002)  # a steady stream: files roll over all the while readers read
with open(folder + "/done.tmp", "w") as f:
    f.write(str(seq))
os.replace(folder + "/done.tmp", folder + "/done")
print(seq)
"""
)

_READER = (
    """
import os, sys, time
import numpy as np
from numpack import NPY8
"""
    + ROWS_CODE
    + """
folder, slow = sys.argv[1], sys.argv[2] == "slow"
r = NPY8(folder).load()
print("ready", flush=True); sys.stdin.readline()
rng, seen, total, files = np.random.default_rng(3), 0, None, set()
deadline = time.monotonic() + 60
while total is None or seen < total:
    assert time.monotonic() < deadline, f"stuck at {seen} of {total}"
    rows = r.read(int(rng.integers(1, 200)))
    if len(rows):
        check_rows(rows, seen)
        seen += len(rows)
        files.add(r._reader_ts)
        if slow:
            time.sleep(0.2)   # falls behind the list: dropped files are read from disk
            slow = False
    elif total is None and os.path.exists(folder + "/done"):
        total = int(open(folder + "/done").read())
print(seen, len(files))
"""
)


def test_roll_over_while_reader_processes_read(tmp_path):
    folder = tmp_path / "ticks"
    folder.mkdir()
    NPY8(folder, capacity_per_file=2000, query_size=3, dtype=ROW).load().close()
    outs = run_processes([(_WRITER, folder, 1.5), (_READER, folder, "fast"),
                          (_READER, folder, "slow")])  # fmt: skip
    total = int(outs[0])
    files = on_disk(folder)
    assert total > 0 and len(listed(folder)) == 3
    for out in outs[1:]:
        seen, nfiles = map(int, out.split())
        assert seen == total and nfiles == len(files)


# -- the npyt package ------------------------------------------------------------------------


def test_npyt_folders_and_ours_are_interchangeable(tmp_path, npyt_pkg):
    folder = tmp_path / "ticks"
    theirs = npyt_pkg.NPY8(folder, capacity_per_file=4, query_size=3, dtype=np.int64).load()
    for i in range(0, 12, 2):
        theirs.append(np.arange(i, i + 2))
    ours = NPY8(folder, capacity_per_file=4, query_size=3).load()
    assert [a.tolist() for a in ours.tail(5)] == [[7], [8, 9, 10, 11]]
    assert read_all(ours).tolist() == list(range(12))
    del theirs
    for i in range(12, 24, 2):  # we take over as the writer
        ours.append(np.arange(i, i + 2))
    assert listed(folder) == on_disk(folder)[-3:]
    again = npyt_pkg.NPY8(folder, capacity_per_file=4, query_size=3).load()
    got = []
    for _ in range(20):
        got += again.read(100).tolist()
    assert got == list(range(12, 24))
    assert [a.tolist() for a in again.tail(5)] == [[19], [20, 21, 22, 23]]
    assert ours.end() == again.end() == 4
