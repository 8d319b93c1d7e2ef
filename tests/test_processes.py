"""Several processes on one store: the write lock, visibility, and no lost updates."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_same_array, run_python, snapshot, subprocess_env

from numpack import NumPack, NumPackError, StoreLockedError

_HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))   # then exit, which releases the lock
else:
    sys.stdin.read()                 # hold the lock until the test closes our stdin
"""


class LockHolder:
    """Another process holding the store's write lock, as a writer of either backend would."""

    def __init__(self, store_path, seconds=None):
        extra = [] if seconds is None else [str(seconds)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(store_path / "numpack.lock"), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env(),
        )  # fmt: skip
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", line

    def release(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


_BARRIER = """
import sys
import numpy, numpack  # imported before the barrier, so the writes start together
print("ready", flush=True)
sys.stdin.readline()  # every process starts writing at the same moment
"""


def run_together(script: str, argvs: list) -> None:
    """Start one process per argv, release them all at once, and require that each succeeds."""
    code = _BARRIER + script
    procs = [
        subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=subprocess_env())
        for argv in argvs
    ]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


WRITES = {
    "save": lambda s: s.save({"b": np.arange(3)}),
    "save_overwrite": lambda s: s.save({"a": np.arange(3)}),
    "append": lambda s: s.append({"a": np.arange(2)}),
    "append_new": lambda s: s.append({"c": np.arange(2)}),
    "replace": lambda s: s.replace({"a": np.array([-1])}, [0]),
    "drop": lambda s: s.drop("a"),
    "drop_rows": lambda s: s.drop("a", [0]),
    "compact": lambda s: s.compact(),
    "reset": lambda s: s.reset(),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_locked_store_raises_and_stays_unchanged(backend, store_path, write):
    npk = NumPack(store_path, backend=backend, lock_timeout=0.3)
    try:
        npk.save({"a": np.arange(10)})
        npk.drop("a", [5])
        before = snapshot(store_path)
        with LockHolder(store_path):
            with pytest.raises(StoreLockedError) as ei:
                WRITES[write](npk)
            assert isinstance(ei.value, OSError) and isinstance(ei.value, NumPackError)
            assert snapshot(store_path) == before
            # readers take no lock
            assert_same_array(npk.load("a"), np.delete(np.arange(10), 5))
            assert npk.get_member_list() == ["a"]
        # once the lock is free, the same call goes through
        WRITES[write](npk)
        assert snapshot(store_path) != before
    finally:
        npk.close()


def test_reader_opens_while_locked(backend, store_path):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"a": np.arange(4)})
    with LockHolder(store_path):
        with NumPack(store_path, backend=backend, lock_timeout=0.3) as reader:
            assert_same_array(reader.load("a"), np.arange(4))
            assert_same_array(reader.getitem("a", [3, 0]), np.array([3, 0]))
            assert_same_array(np.asarray(reader.load("a", lazy=True)), np.arange(4))


def test_lock_wait_then_succeeds(backend, store_path):
    """A writer waits for the lock (default timeout) rather than failing at once."""
    npk = NumPack(store_path, backend=backend)
    try:
        npk.save({"a": np.arange(3)})
        with LockHolder(store_path, seconds=0.5):  # lets go of the lock by itself
            npk.append({"a": np.arange(3, 5)})  # waits for it (default timeout: 10 s)
        assert_same_array(npk.load("a"), np.arange(5))
    finally:
        npk.close()


_SAVE_IN_CHILD = """
import sys
import numpy as np
from numpack import NumPack
path, backend = sys.argv[1:]
with NumPack(path, backend=backend) as npk:
    npk.save({"child": np.arange(7, dtype=np.float32)})
    npk.append({"shared": np.array([42])})
    npk.drop("gone")
"""


def test_sees_other_process_changes(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    try:
        npk.save({"shared": np.arange(3), "gone": np.arange(2)})
        lazy_before = npk.load("shared", lazy=True)
        res = run_python(_SAVE_IN_CHILD, store_path, backend)
        assert res.returncode == 0, res.stderr
        assert npk.get_member_list() == ["shared", "child"]
        assert_same_array(npk.load("child"), np.arange(7, dtype=np.float32))
        assert_same_array(npk.load("shared"), np.array([0, 1, 2, 42]))
        assert npk.get_shape() == {"shared": (4,), "child": (7,)}
        assert "gone" not in npk
        assert_same_array(lazy_before[:], np.arange(3))  # the old snapshot is still whole
    finally:
        npk.close()


_APPENDER = """
import sys
import numpy as np
from numpack import NumPack
path, backend, who, n, name = sys.argv[1:]
who, n = int(who), int(n)
with NumPack(path, backend=backend, lock_timeout=60) as npk:
    for i in range(n):
        npk.append({name: np.array([[who, i]], dtype=np.int64)})
"""


@pytest.mark.parametrize("precreate", [True, False], ids=["existing", "created_by_race"])
def test_concurrent_appends_lose_nothing(backend, store_path, precreate):
    n_procs, n_rows = 4, 50
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"other": np.arange(3)})
        if precreate:
            npk.save({"log": np.empty((0, 2), dtype=np.int64)})
    run_together(_APPENDER, [(store_path, backend, w, n_rows, "log") for w in range(n_procs)])
    with NumPack(store_path, backend=backend) as npk:
        log = npk.load("log")
        assert log.shape == (n_procs * n_rows, 2)
        for w in range(n_procs):
            mine = log[log[:, 0] == w, 1]
            assert_same_array(mine, np.arange(n_rows, dtype=np.int64))  # all, in order
        assert_same_array(npk.load("other"), np.arange(3))
        assert npk.get_member_list() == ["other", "log"]


_SAVER = """
import sys
import numpy as np
from numpack import NumPack
path, backend, who = sys.argv[1:]
with NumPack(path, backend=backend, lock_timeout=60) as npk:
    for i in range(10):
        npk.save({f"p{who}": np.full(4, int(who) * 100 + i)})
        npk.append({"count": np.array([int(who)])})
        if i % 3 == 0:
            npk.drop("count", [0])
"""


def test_concurrent_savers_keep_every_array(backend, store_path):
    n_procs = 4
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"count": np.array([-1] * 20)})
    run_together(_SAVER, [(store_path, backend, w) for w in range(n_procs)])
    with NumPack(store_path, backend=backend) as npk:
        assert sorted(npk.get_member_list()) == ["count"] + [f"p{w}" for w in range(n_procs)]
        for w in range(n_procs):
            assert_same_array(npk.load(f"p{w}"), np.full(4, w * 100 + 9))
        # 20 + 40 appended rows, 16 dropped (4 per process)
        assert npk.get_shape("count") == (44,)
        count = npk.load("count")
        # each drop took the first live row, always one of the 20 initial -1s
        assert (count == -1).sum() == 4
        for w in range(n_procs):
            assert (count == w).sum() == 10
