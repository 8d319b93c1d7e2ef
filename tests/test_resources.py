"""Resource hygiene: no file-descriptor or mapping leak across many open/close cycles, `close()`
and garbage collection release everything, and a full disk is a clean error that leaves the
store as it was (both backends, raw and compressed arrays).

The full disk is simulated two ways: a small tmpfs (ENOSPC; only where `mount -t tmpfs` is
allowed, as root in CI, where NUMPACK_REQUIRE_MOUNT=1 turns a refused mount from a skip into a
failure) and RLIMIT_FSIZE in a subprocess, with SIGXFSZ ignored, so
that writes past the limit fail with EFBIG (which every file system honours).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_array, mount_refused, run_python

from numpack import NumPack, NumPackError, StoreIOError

CYCLES = int(os.environ.get("NUMPACK_RESOURCE_CYCLES", "10000"))
# Descriptors and mappings a warmed-up interpreter may still open on its own (allocator
# arenas, a lazily imported module): the leak we look for would be thousands.
SLACK = 8


def _fds() -> list[str]:
    """Where each open descriptor of this process points."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used, closed by now
            pass
    return out


def _maps() -> list[str]:
    with open("/proc/self/maps") as f:
        return f.read().splitlines()


def _held(path) -> tuple[list[str], list[str]]:
    """The descriptors and mappings of this process on files inside store directory `path`."""
    prefix = os.path.realpath(path) + os.sep
    return (
        [f for f in _fds() if f.startswith(prefix)],
        [m for m in _maps() if prefix in m],
    )


def _populate(path, backend) -> dict:
    """A store with a raw, a raw-with-dropped-rows and a compressed-with-dropped-rows array."""
    arrays = {
        "raw": np.arange(4000, dtype=np.float64).reshape(-1, 4),
        "dropped": np.arange(3000, dtype=np.int32).reshape(-1, 3),
        "comp": np.arange(8000, dtype=np.int64).reshape(-1, 8),
    }
    with NumPack(path, backend=backend, drop_if_exists=True) as npk:
        npk.save({k: arrays[k] for k in ("raw", "dropped")})
        npk.save({"comp": arrays["comp"]}, compress=True, block_rows=64)
        npk.drop("dropped", [0, 7])
        npk.drop("comp", [3, 500])
    arrays["dropped"] = np.delete(arrays["dropped"], [0, 7], axis=0)
    arrays["comp"] = np.delete(arrays["comp"], [3, 500], axis=0)
    return arrays


def _cycle(path, backend, expected) -> None:
    """Open the store, read each way, close."""
    with NumPack(path, backend=backend) as npk:
        assert npk.load("raw")[5, 1] == expected["raw"][5, 1]
        lazy = npk.load("raw", lazy=True)
        assert np.asarray(lazy)[-1, 0] == expected["raw"][-1, 0]  # the zero-copy mapping
        assert lazy[10:12].sum() == expected["raw"][10:12].sum()
        assert npk.getitem("dropped", [3, 0])[0, 0] == expected["dropped"][3, 0]
        assert npk.load("dropped", lazy=True)[-1, 2] == expected["dropped"][-1, 2]
        assert npk.getitem("comp", [900, 2])[1, 0] == expected["comp"][2, 0]
        assert npk.load("comp", lazy=True)[600:601, 7] == expected["comp"][600, 7]


def test_no_leak_over_open_close_cycles(backend, tmp_path):
    path = tmp_path / "store"
    expected = _populate(path, backend)
    for _ in range(50):  # warm up: imports, caches, allocator arenas
        _cycle(path, backend, expected)
    gc.collect()
    fds, maps = len(_fds()), len(_maps())
    for _ in range(CYCLES):
        _cycle(path, backend, expected)
    gc.collect()
    assert len(_fds()) <= fds + SLACK, (fds, _fds())
    assert len(_maps()) <= maps + SLACK, (maps, len(_maps()))
    assert _held(path) == ([], [])


def test_close_releases_everything(backend, tmp_path):
    path = tmp_path / "store"
    expected = _populate(path, backend)
    npk = NumPack(path, backend=backend)
    lazies = {name: npk.load(name, lazy=True) for name in expected}
    mapped = np.asarray(lazies["raw"])  # a NumPy array over the mapping itself
    npk.getitem("comp", [1, 2])
    fds, maps = _held(path)
    assert not any(f.endswith("numpack.lock") for f in fds)  # readers open no lock file
    assert maps  # the data files are mapped
    npk.close()
    npk.close()  # idempotent
    fds, _ = _held(path)
    assert not any(f.endswith("numpack.lock") for f in fds)
    # LazyArrays made before close() keep their snapshots, and still read.
    for name, arr in expected.items():
        assert_same_array(lazies[name][:], arr)
        assert_same_array(lazies[name][[-1, 0]], arr[[-1, 0]])
    assert_same_array(mapped, expected["raw"])
    # Dropping them (after close) releases the rest: nothing of the store stays open or mapped.
    del lazies, mapped
    gc.collect()
    assert _held(path) == ([], [])


def test_garbage_collection_releases_everything(backend, tmp_path):
    path = tmp_path / "store"
    expected = _populate(path, backend)
    npk = NumPack(path, backend=backend)  # never closed
    lazy = npk.load("comp", lazy=True)
    assert_same_array(npk.load("raw"), expected["raw"])
    npk.self_ref = npk  # a reference cycle: only the cyclic collector frees it
    assert _held(path) != ([], [])
    del npk
    gc.collect()
    fds, _ = _held(path)
    assert fds == [] or not any(f.endswith("numpack.lock") for f in fds)
    assert_same_array(lazy[:], expected["comp"])  # the lazy array outlives its store
    del lazy
    gc.collect()
    assert _held(path) == ([], [])
    # Many stores dropped without close(): no descriptor builds up.
    before = len(_fds())
    for _ in range(500):
        n = NumPack(path, backend=backend)
        n.getitem("dropped", [1])
        n.load("raw", lazy=True)
    del n
    gc.collect()
    assert len(_fds()) <= before + SLACK


# -- a full disk ---------------------------------------------------------------------------

# The calls tried on a full disk: each either fails with StoreIOError and changes nothing, or
# succeeds (the disk had room for it). "big" rows are random, so they do not compress.
_FULL_DISK_OPS = r"""
import numpy as np

def rows(rng, n, cols=16):
    return rng.standard_normal((n, cols))

def ops(rng, big):
    return [
        ("save_new", lambda s: s.save({"new": rows(rng, big)})),
        ("save_over", lambda s: s.save({"raw": rows(rng, big)})),
        ("save_compressed", lambda s: s.save({"comp": rows(rng, big)}, compress=True)),
        ("append_raw", lambda s: s.append({"raw": rows(rng, big)})),
        ("append_compressed", lambda s: s.append({"comp": rows(rng, big)})),
        ("append_both", lambda s: s.append({"raw": rows(rng, 10), "comp": rows(rng, big)})),
        ("replace_raw_all", lambda s: s.replace({"raw": rows(rng, 1)}, slice(None))),
        ("replace_raw_tail", lambda s: s.replace({"raw": rows(rng, 3)}, [-1, -2, -50])),
        ("replace_compressed", lambda s: s.replace({"comp": rows(rng, 1)}, slice(None))),
        ("replace_both", lambda s: s.replace({"raw": rows(rng, 2), "comp": rows(rng, 2)}, [0, -1])),
        ("drop_rows", lambda s: s.drop("raw", [1, 2])),
        ("drop_rows_compressed", lambda s: s.drop("comp", [0])),
        ("compact", lambda s: s.compact()),
        ("drop_array", lambda s: s.drop("small")),
    ]

def state(path, backend):
    from numpack import NumPack
    with NumPack(path, backend=backend) as npk:
        return {name: npk.load(name) for name in npk.get_member_list()}

def same(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a
    )
"""


def _full_disk_store(path, backend, rows: int) -> None:
    rng = np.random.default_rng(0)
    with NumPack(path, backend=backend, drop_if_exists=True) as npk:
        npk.save({"raw": rng.standard_normal((rows, 16)), "small": np.arange(10)})
        npk.save({"comp": rng.standard_normal((rows, 16))}, compress=True, block_rows=256)
        npk.drop("raw", [5])
        npk.drop("comp", [7])


def _names(path) -> set:
    return set(os.listdir(path))


# Run in a subprocess under RLIMIT_FSIZE: every call must fail cleanly or succeed; the parent
# then checks the store from outside the limit.
_FSIZE_CHILD = (
    _FULL_DISK_OPS
    + r"""
import errno, json, resource, signal, sys
from numpack import NumPack, NumPackError, StoreIOError
path, backend, limit, big = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(limit)
report = []
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
for name, op in ops(rng, big):
    before = state(path, backend)
    files = sorted(os.listdir(path))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        with NumPack(path, backend=backend) as npk:
            op(npk)
        outcome = "ok"
    except NumPackError as e:
        assert isinstance(e, StoreIOError), (name, repr(e))
        assert e.errno in (errno.EFBIG, errno.ENOSPC), (name, repr(e))
        outcome = "failed"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    after = state(path, backend)
    if outcome == "failed":
        assert same(after, before), name
        left = sorted(os.listdir(path))
        assert left == files, (name, files, left)
    report.append((name, outcome))
print(json.dumps(report))
"""
)


@pytest.mark.parametrize("limit", [200, 300_000, 2_000_000])
def test_file_size_limit_is_a_clean_error(backend, tmp_path, limit):
    """Writes past RLIMIT_FSIZE fail with EFBIG: each call fails as StoreIOError and leaves
    every array as it was (or, when it fits under the limit, succeeds)."""
    path = tmp_path / "store"
    # The arrays (about 1 MB each) straddle the 300 KB limit, so writes in place below it
    # succeed and writes past it fail; at 200 bytes not even the metadata can be written.
    _full_disk_store(path, backend, rows=8000)
    res = run_python("import os\n" + _FSIZE_CHILD, path, backend, limit, 20_000, timeout=120)
    assert res.returncode == 0, res.stderr
    report = dict(json.loads(res.stdout.strip().splitlines()[-1]))
    failed = [k for k, v in report.items() if v == "failed"]
    if limit == 200:  # nothing can be committed
        assert len(failed) == len(report), report
    else:
        assert "save_new" in failed and "append_raw" in failed, report
    # The store is whole afterwards, for the other backend too.
    for b in {backend, "python"}:
        with NumPack(path, backend=b) as npk:
            for name in npk.get_member_list():
                npk.load(name)
            npk.append({"small": np.arange(3)})


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `where`; None, or why it could not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "mount is not installed"
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    return None if res.returncode == 0 else f"mount -t tmpfs was refused: {res.stderr.strip()}"


def _fill(disk: Path, leave: int) -> None:
    """Fill the file system at `disk` so that about `leave` bytes stay free."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    chunk = b"\1" * (1 << 16)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    size = filler.stat().st_size
    os.truncate(filler, max(0, size + free - leave))


@pytest.fixture
def tmpfs(tmp_path):
    disk = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    why = _mount_tmpfs(disk, "8m")
    if why is not None:  # RLIMIT_FSIZE still covers a full disk
        mount_refused(why)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("leave", [0, 4096, 40_000, 400_000, 1_500_000])
def test_full_tmpfs_is_a_clean_error(backend, tmpfs, leave):
    """ENOSPC on a small tmpfs: each call fails as StoreIOError and leaves every array and
    the directory's files as they were (or succeeds when there was room)."""
    ns: dict = {}
    exec(_FULL_DISK_OPS, ns)
    path = tmpfs / "store"
    _full_disk_store(path, backend, rows=4000)  # about 500 KB an array
    rng = np.random.default_rng(leave)
    npk = NumPack(path, backend=backend)  # one object through every failure
    outcomes = {}
    for name, op in ns["ops"](rng, 12_000):  # 1.5 MB of rows
        before, files = ns["state"](path, backend), _names(path)
        _fill(tmpfs, leave)
        try:
            op(npk)
            outcomes[name] = "ok"
        except NumPackError as e:
            assert isinstance(e, StoreIOError), (name, repr(e))
            assert e.errno == errno.ENOSPC, (name, repr(e))
            outcomes[name] = "failed"
        finally:
            os.unlink(tmpfs / "filler")
        if outcomes[name] == "failed":
            assert ns["same"](ns["state"](path, backend), before), name
            assert _names(path) == files, (name, files ^ _names(path))
    if leave < 400_000:
        assert "save_new" in [k for k, v in outcomes.items() if v == "failed"], outcomes
    # The object that saw the failures still works once there is room.
    npk.save({"after": np.arange(5)})
    assert_same_array(npk.load("after"), np.arange(5))
    npk.close()
    for b in {backend, "python"}:
        with NumPack(path, backend=b) as other:
            for name in other.get_member_list():
                other.load(name)
