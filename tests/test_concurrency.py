"""Concurrency: several writer processes serialising through the lock while reader processes
take lazy views and gathers; a reader's lazy view surviving appends, drops and compaction by
another process; and threads sharing one NumPack object (both backends lock internally).

Every row written here carries its writer, a sequence id and a checksum of the rest, so a
torn row (half of one version, half of another) cannot pass for a real one.

What readers are promised, and checked: rows appended, dropped, saved and compacted are never
seen torn or partly committed (the metadata rename is the switch), and neither are rows
replaced in a compressed array (new block versions go elsewhere in the file). Rows that a
`replace` overwrites in place in a raw array can be read while the write is under way, so a
reader reading exactly those rows at that moment may see a mix of old and new (as with
np.memmap); once the replace returns every reader sees the new rows whole. The readers below
therefore check checksums everywhere except in the raw array being replaced in place, and
check that one after the writers finish. Each reader also reports the lengths of the shared
log it saw: at least two strictly between empty and final shows it read while writers were
appending. No timing is assumed: writer 0 pauses twice, between its own commits, until every
reader has made two more rounds (a starved reader otherwise may read only before and after).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from concurrency_rows import COLS, check_rows, make_rows
from helpers import subprocess_env

from numpack import NumPack, StoreClosedError

TESTS = os.path.dirname(os.path.abspath(__file__))

# Subprocesses import the row helpers from this directory.
ROWS = f"""
import sys
sys.path.insert(0, {TESTS!r})
import numpy as np
from concurrency_rows import COLS, check_rows, make_rows
"""

N_WRITERS, N_READERS, OPS = 4, 2, 120
TAB_ROWS = 8  # rows of "tab"/"tab_z" per writer; writer w owns rows w, w + N_WRITERS...

# One writer process: appends to the shared logs, replaces its own rows of the shared tables
# (blocks of tab_z hold rows of every writer), and appends, replaces, drops and compacts its
# own array. It prints its final model, as the arrays it alone decides.
_WRITER = (
    ROWS
    + r"""
import json, sys, time
from numpack import NumPack
path, backend, w, n_writers, ops, tab_rows, progress, n_readers = sys.argv[1:9]
w, n_writers, ops, tab_rows = int(w), int(n_writers), int(ops), int(tab_rows)
n_readers = int(n_readers)


def rounds(r):
    try:
        with open(f"{progress}{r}") as f:
            return int(f.read())
    except FileNotFoundError:
        return 0


def wait_for_readers():  # until each reader made two more rounds: one began after this call
    target = [rounds(r) + 2 for r in range(n_readers)]
    deadline = time.monotonic() + 60
    while any(rounds(r) < t for r, t in enumerate(target)):
        assert time.monotonic() < deadline, "readers made no progress"
        time.sleep(0.01)


rng = np.random.default_rng(w)
mine = np.arange(w, n_writers * tab_rows, n_writers)
own, own_name = None, f"own{w}"
tab = {}  # row -> row values, of my rows of tab and tab_z (kept equal)
appended = []
seq = 1000
print("ready", flush=True)
sys.stdin.readline()
with NumPack(path, backend=backend, lock_timeout=60) as npk:
    own = npk.load(own_name)
    for i in range(ops):
        if w == 0 and i in (ops // 3, 2 * ops // 3):
            wait_for_readers()  # "log" is past empty here and writer 0 appends again after
        kind = rng.choice(["log", "tab", "own_append", "own_replace", "own_drop", "compact"],
                          p=[0.3, 0.25, 0.15, 0.1, 0.15, 0.05])
        seq += 1
        if kind == "log":
            k = int(rng.integers(1, 6))
            rows = make_rows(w, np.arange(seq * 10, seq * 10 + k))
            npk.append({"log": rows, "log_z": rows})  # one commit: the two stay equal
            appended += rows[:, 1].tolist()
        elif kind == "tab":
            idx = rng.choice(mine, size=int(rng.integers(1, 4)), replace=False)
            rows = make_rows(w, np.arange(seq * 10, seq * 10 + len(idx)))
            npk.replace({"tab": rows, "tab_z": rows}, idx)
            tab.update({int(r): v for r, v in zip(idx, rows.tolist())})
        elif kind == "own_append" or len(own) < 3:
            rows = make_rows(w, np.arange(seq * 10, seq * 10 + int(rng.integers(1, 20))))
            npk.append({own_name: rows})
            own = np.concatenate([own, rows])
        elif kind == "own_replace":
            idx = rng.choice(len(own), size=2, replace=False)
            rows = make_rows(w, [seq * 10, seq * 10 + 1])
            npk.replace({own_name: rows}, idx)
            own[idx] = rows
        elif kind == "own_drop":
            idx = rng.choice(len(own), size=2, replace=False)
            npk.drop(own_name, idx)
            own = np.delete(own, idx, axis=0)
        elif w:
            npk.compact(own_name)
        else:
            npk.compact()  # writer 0 compacts everything
print(json.dumps({"appended": appended, "tab": {str(k): v for k, v in tab.items()},
                  "own": own.tolist()}))
"""
)

# One reader process: until the stop file appears, takes lazy views and gathers of every
# array and checks what it sees. Prints how many checks it made and the lengths of "log" it
# saw (each a committed state), so the test can tell that it read while writers wrote.
_READER = (
    ROWS
    + r"""
import json, os, sys
from numpack import NumPack
path, backend, stop, n_writers, tab_rows, me, progress = sys.argv[1:8]
n_writers, tab_rows = int(n_writers), int(tab_rows)
rng = np.random.default_rng([int(me), 7])  # the same choices every run
checks, prev, lengths, rounds = 0, {}, set(), 0
owners = np.arange(n_writers * tab_rows) % n_writers
print("ready", flush=True)
sys.stdin.readline()
npk = NumPack(path, backend=backend)
while True:
    last = os.path.exists(stop)  # one more round after the writers finished
    if rng.random() < 0.2:  # sometimes a fresh object, sometimes a long-lived one
        npk.close()
        npk = NumPack(path, backend=backend)
    for name in ("log", "log_z"):
        lazy = npk.load(name, lazy=True)
        rows = lazy[:]
        check_rows(rows, name)
        # Append-only: what was seen before is a prefix of what is seen now.
        seen = prev.get(name)
        if seen is not None:
            assert len(rows) >= len(seen), (name, len(rows), len(seen))
            assert np.array_equal(rows[: len(seen)], seen), name
        prev[name] = rows
        lengths.add(len(rows))
        if len(lazy):
            idx = rng.integers(0, len(lazy), 50)
            assert np.array_equal(npk.getitem(name, idx), rows[idx]), name
            assert np.array_equal(lazy[idx], rows[idx]), name
            check_rows(np.asarray(lazy[::7]), name)
        checks += 1
    short, long_ = sorted((prev["log"], prev["log_z"]), key=len)
    assert np.array_equal(long_[: len(short)], short)  # log and log_z grow by one commit
    tab_z = npk.load("tab_z", lazy=True)
    check_rows(tab_z[:], "tab_z")
    check_rows(npk.getitem("tab_z", rng.integers(0, len(tab_z), 10)), "tab_z gather")
    tab = npk.load("tab", lazy=True)[:]  # replaced in place: rows may be mid-write
    assert np.array_equal(tab[:, 0], owners)
    if last:
        check_rows(tab, "tab")
    for w in range(n_writers):
        name = f"own{w}"
        lazy = npk.load(name, lazy=True)
        if w % 2 == 0:  # raw: appended and dropped only... and replaced in place
            assert (np.asarray(lazy[:, 0]) == w).all()
            if last:
                check_rows(lazy[:], name)
        else:  # compressed: nothing is ever seen torn
            check_rows(lazy[:], name)
            if len(lazy):
                check_rows(lazy[rng.integers(0, len(lazy), 5)], name)  # it may shrink
        checks += 1
    rounds += 1
    with open(f"{progress}{me}.new", "w") as f:
        f.write(str(rounds))
    os.replace(f"{progress}{me}.new", f"{progress}{me}")  # never read half-written
    if last:
        break
npk.close()
print(json.dumps({"checks": checks, "lengths": sorted(lengths)}))
"""
)


def _start(code: str, *args) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(),
    )  # fmt: skip
    return p


def _wait_ready(procs) -> None:
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise AssertionError(p.communicate()[1])


def _go(procs) -> None:
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


def _finish(p, timeout=60) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return out


def test_writers_and_readers(backend, tmp_path):
    import json

    path, stop, progress = tmp_path / "store", tmp_path / "stop", tmp_path / "rounds"
    empty = np.empty((0, COLS), np.int64)
    tab = np.concatenate([make_rows(r % N_WRITERS, [r]) for r in range(N_WRITERS * TAB_ROWS)])
    with NumPack(path, backend=backend) as npk:
        npk.save({"log": empty, "tab": tab})
        npk.save({"log_z": empty, "tab_z": tab}, compress=True, block_rows=4)
        for w in range(N_WRITERS):
            rows = make_rows(w, np.arange(5))
            kw = {"compress": True, "block_rows": 3} if w % 2 else {}
            npk.save({f"own{w}": rows}, **kw)
    procs = []
    try:
        writers = [
            _start(_WRITER, path, backend, w, N_WRITERS, OPS, TAB_ROWS, progress, N_READERS)
            for w in range(N_WRITERS)
        ]
        procs += writers
        readers = [
            _start(_READER, path, backend, stop, N_WRITERS, TAB_ROWS, r, progress)
            for r in range(N_READERS)
        ]
        procs += readers
        _wait_ready(procs)
        _go(procs)
        models = [json.loads(_finish(p).strip().splitlines()[-1]) for p in writers]
        stop.touch()
        seen = [json.loads(_finish(p).strip().splitlines()[-1]) for p in readers]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert all(s["checks"] > 0 for s in seen), seen

    # No lost update: every array is exactly what the writers logged.
    with NumPack(path, backend=backend) as npk:
        log, log_z = npk.load("log"), npk.load("log_z")
        assert np.array_equal(log, log_z)
        check_rows(log, "log")
        for w, model in enumerate(models):
            mine = log[log[:, 0] == w]
            assert mine[:, 1].tolist() == model["appended"]  # all, once, in order
            assert np.array_equal(mine, make_rows_like(mine))
        assert len(log) == sum(len(m["appended"]) for m in models)
        # Readers overlapped writers: each saw "log" at two or more lengths strictly between
        # empty and final, states that exist only while writers are still appending. (Only
        # lengths of whole commits: check_rows and the prefix checks above passed on them.)
        for s in seen:
            during = [n for n in s["lengths"] if 0 < n < len(log)]
            assert len(during) >= 2, (len(log), s)
        expected_tab = tab.copy()
        for model in models:
            for r, v in model["tab"].items():
                expected_tab[int(r)] = v
        assert np.array_equal(npk.load("tab"), expected_tab)
        assert np.array_equal(npk.load("tab_z"), expected_tab)
        for w, model in enumerate(models):
            own = npk.load(f"own{w}")
            assert np.array_equal(own, np.array(model["own"], np.int64).reshape(-1, COLS))
            check_rows(own, f"own{w}")


def make_rows_like(rows):
    """The rows make_rows gives for the writer and sequence ids of `rows`, written in runs."""
    out = rows.copy()
    # Each append wrote consecutive ids from one make_rows call: regenerate run by run.
    starts = np.flatnonzero(np.diff(rows[:, 1], prepend=rows[0, 1] - 2) != 1)
    for a, b in zip(starts, [*starts[1:], len(rows)]):
        out[a:b] = make_rows(int(rows[a, 0]), rows[a:b, 1])
    return out


# -- a reader's snapshot while another process appends, drops and compacts ---------------

_SNAPSHOT_READER = (
    ROWS
    + r"""
import os, sys
from numpack import NumPack
path, backend, rounds = os.path.realpath(sys.argv[1]), sys.argv[2], int(sys.argv[3])
NAMES = ("raw", "raw_dropped", "comp", "comp_dropped")

def mapped_deleted():
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if path in line and line.rstrip().endswith("(deleted)"))

with NumPack(path, backend=backend) as npk:
    for r in range(rounds):
        lazies = {n: npk.load(n, lazy=True) for n in NAMES}
        seen = {n: np.array(lazies[n][:]) for n in NAMES}
        zero_copy = np.asarray(lazies["raw"])  # a view of the mapping itself
        print("ready", flush=True)
        sys.stdin.readline()  # meanwhile the other process appends, drops and compacts
        rng = np.random.default_rng(r)
        for n in NAMES:
            lazy, want = lazies[n], seen[n]
            assert lazy.shape == want.shape, (n, lazy.shape, want.shape)
            assert np.array_equal(lazy[:], want), n
            assert np.array_equal(np.asarray(lazy), want), n
            idx = rng.integers(0, len(want), 200)
            assert np.array_equal(lazy[idx], want[idx]), n
            assert np.array_equal(lazy[5:-5:3, 1:4], want[5:-5:3, 1:4]), n
            assert np.array_equal(np.stack(list(lazy)), want), n
            check_rows(lazy[:], n)
        assert np.array_equal(zero_copy, seen["raw"])
        # The files this process still reads were deleted by the compaction.
        deleted = mapped_deleted()
        del lazies, zero_copy
        print(deleted, {n: npk.get_shape(n) for n in NAMES}, flush=True)
"""
)


def test_lazy_view_survives_other_process_compaction(backend, tmp_path):
    path, rounds = tmp_path / "store", 3
    names = ("raw", "raw_dropped", "comp", "comp_dropped")
    model = {n: make_rows(i, np.arange(3000)) for i, n in enumerate(names)}
    with NumPack(path, backend=backend) as npk:
        npk.save({n: model[n] for n in names[:2]})
        npk.save({n: model[n] for n in names[2:]}, compress=True, block_rows=128)
        for n in ("raw_dropped", "comp_dropped"):
            npk.drop(n, np.arange(0, 3000, 10))
            model[n] = np.delete(model[n], np.arange(0, 3000, 10), axis=0)
    reader = _start(_SNAPSHOT_READER, path, backend, rounds)
    try:
        with NumPack(path, backend=backend) as npk:
            for r in range(rounds):
                _wait_ready([reader])
                for i, n in enumerate(names):
                    rows = make_rows(i, np.arange(10_000 * (r + 1), 10_000 * (r + 1) + 500))
                    npk.append({n: rows})
                    drop = np.arange(r, len(model[n]) + 500, 7)
                    npk.drop(n, drop)
                    model[n] = np.delete(np.concatenate([model[n], rows]), drop, axis=0)
                    if n.startswith("comp"):  # new block versions; the reader keeps the old
                        new = make_rows(i, [50_000 + r])
                        npk.replace({n: new}, [0])
                        model[n][0] = new
                npk.compact(["raw", "comp"])  # rewrites both into new files; old ones deleted
                npk.compact()  # and the rest, sweeping every unreferenced file
                for n in names:
                    assert np.array_equal(npk.load(n), model[n]), n
                reader.stdin.write("go\n")
                reader.stdin.flush()
                line = reader.stdout.readline().split(" ", 1)
                assert line[0].isdigit(), reader.communicate()[1]
                deleted, shapes = int(line[0]), eval(line[1])
                assert deleted >= 2  # raw's mapping at least, on a deleted file, still read
                assert shapes == {n: model[n].shape for n in names}
        _finish(reader)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()


# -- threads sharing one NumPack --------------------------------------------------------------

N_THREADS, THREAD_OPS = 4, 150


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_threads_share_one_store(backend, tmp_path, compressed):
    """Threads may share one NumPack: each backend serialises calls on a store object with a
    mutex (the rust one releases the GIL meanwhile), so no call sees another half-done."""
    kw = {"compress": True, "block_rows": 4} if compressed else {}
    npk = NumPack(tmp_path / "store", backend=backend)
    tab = np.concatenate([make_rows(r % N_THREADS, [r]) for r in range(N_THREADS * 8)])
    npk.save({"log": np.empty((0, COLS), np.int64), "tab": tab}, **kw)
    for t in range(N_THREADS):
        npk.save({f"own{t}": make_rows(t, np.arange(4))}, **kw)
    models, errors = [None] * N_THREADS, []
    barrier = threading.Barrier(N_THREADS)

    def work(t: int) -> None:
        try:
            rng = np.random.default_rng(t)
            mine = np.arange(t, N_THREADS * 8, N_THREADS)
            appended, tab_rows, own, name = [], {}, npk.load(f"own{t}"), f"own{t}"
            barrier.wait()
            for i in range(THREAD_OPS):
                seq = 1000 + i
                op = i % 6
                if op == 0:
                    rows = make_rows(t, np.arange(seq * 10, seq * 10 + int(rng.integers(1, 4))))
                    npk.append({"log": rows})
                    appended += rows[:, 1].tolist()
                elif op == 1:
                    idx = rng.choice(mine, 2, replace=False)
                    rows = make_rows(t, [seq * 10, seq * 10 + 1])
                    npk.replace({"tab": rows}, idx)
                    tab_rows.update(zip(idx.tolist(), rows))
                elif op == 2:
                    rows = make_rows(t, [seq * 10])
                    npk.append({name: rows})
                    own = np.concatenate([own, rows])
                    if len(own) > 6:
                        npk.drop(name, [1])
                        own = np.delete(own, 1, axis=0)
                elif op == 3:
                    idx = rng.integers(0, len(own), 2)
                    rows = make_rows(t, [seq * 10, seq * 10 + 1])
                    npk.replace({name: rows}, idx)
                    own[idx[1]] = rows[1]  # a repeated index keeps the last value
                    own[idx[0]] = rows[0] if idx[0] != idx[1] else rows[1]
                elif op == 4:
                    log = npk.load("log", lazy=True)
                    if len(log):
                        check_rows(npk.getitem("log", rng.integers(0, len(log), 20)), "log")
                        check_rows(log[:], "log")
                    assert np.array_equal(npk.load(name), own)
                    if i % 30 == 4:
                        npk.compact(name)
                else:
                    got = npk.getitem("tab", mine)
                    for r, row in zip(mine.tolist(), got):
                        if r in tab_rows:
                            assert np.array_equal(row, tab_rows[r])
                    assert np.array_equal(npk.load(name, lazy=True)[:], own)
                    assert name in npk.get_member_list()
            models[t] = (appended, tab_rows, own)
        except BaseException as e:  # reported by the main thread
            errors.append((t, e))
            barrier.abort()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    if errors:
        raise errors[0][1]
    # Final consistency: nothing lost, nothing torn, from this object and from a fresh one.
    for store in (npk, NumPack(tmp_path / "store", backend=backend)):
        log = store.load("log")
        check_rows(log, "log")
        assert len(log) == sum(len(m[0]) for m in models)
        expected_tab = tab.copy()
        for t, (appended, tab_rows, own) in enumerate(models):
            assert log[log[:, 0] == t, 1].tolist() == appended
            for r, row in tab_rows.items():
                expected_tab[r] = row
            assert np.array_equal(store.load(f"own{t}"), own)
        assert np.array_equal(store.load("tab"), expected_tab)
        store.close()


def test_close_while_threads_read(backend, tmp_path):
    """close() from one thread while others call the store: they get StoreClosedError, never
    a crash, and LazyArrays they already hold keep reading."""
    npk = NumPack(tmp_path / "store", backend=backend)
    data = make_rows(0, np.arange(2000))
    npk.save({"a": data})
    npk.save({"z": data}, compress=True, block_rows=64)
    outcomes, started = [], threading.Barrier(5)

    def reader(t: int) -> None:
        lazy = npk.load("z" if t % 2 else "a", lazy=True)
        started.wait()
        try:
            while True:
                npk.getitem("a", [t, 1999 - t])
                check_rows(npk.load("z", lazy=True)[t * 10 : t * 10 + 100], "z")
                if t == 0:
                    npk.append({"a": make_rows(0, [5000])})
        except StoreClosedError:
            outcomes.append("closed")
        except BaseException as e:
            outcomes.append(e)
        check_rows(lazy[:], "held")

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    started.wait()
    time.sleep(0.2)
    npk.close()
    for th in threads:
        th.join(timeout=30)
    assert outcomes == ["closed"] * 4, outcomes
    with NumPack(tmp_path / "store", backend=backend) as again:
        check_rows(again.load("a"), "a")
        assert np.array_equal(again.load("z"), data)
