"""Paths no other test takes: bad constructor arguments, `LazyArray.rows()`, NumPy's `copy=`
on a LazyArray, calls with nothing to do, and NPY8's damaged list and read-only folders.

Store tests run once per backend (the `backend`/`store` fixtures); the NPY8 ones run once, as
NPY8 is one pure-Python implementation whatever the backend (README, "Guarantees").
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_array, bind_mount_read_only, snapshot

from numpack import NPY8, NumPack
from numpack._errors import (
    CorruptStoreError,
    InvalidArgumentError,
    InvalidTypeError,
    RowIndexError,
    StoreIOError,
)

# -- constructor arguments -------------------------------------------------------------------


@pytest.mark.parametrize("durable", [1, 0, "yes", "", None, 1.0, np.bool_(True), [True]])
def test_durable_must_be_a_bool(backend, store_path, durable):
    """`durable` is a switch with a cost (an fsync per call): anything but True or False is
    a mistake, not a truth value to guess at. Nothing is created."""
    with pytest.raises(InvalidTypeError, match="durable must be a bool"):
        NumPack(store_path, backend=backend, durable=durable)
    assert not store_path.exists()


@pytest.mark.parametrize(
    "timeout", [-1, -0.001, math.nan, -math.inf, math.inf, 2**63, 1e300, np.float64(math.nan)]
)
def test_a_lock_timeout_out_of_range_is_invalid(backend, store_path, timeout):
    """Seconds to wait: 0 or more, finite (NaN or a negative wait has no meaning; Rust's
    Duration holds less than 2**64 s, so both backends stop below 2**63)."""
    with pytest.raises(InvalidArgumentError, match="lock_timeout"):
        NumPack(store_path, backend=backend, lock_timeout=timeout)
    assert not store_path.exists()


@pytest.mark.parametrize("timeout", ["3", b"3", None, True, False, np.bool_(False), [1], 1j])
def test_a_lock_timeout_that_is_not_a_number_is_a_type_error(backend, store_path, timeout):
    """A string is not parsed ("3" is a bug in the caller), a bool is not seconds."""
    with pytest.raises(InvalidTypeError, match="lock_timeout"):
        NumPack(store_path, backend=backend, lock_timeout=timeout)
    assert not store_path.exists()


@pytest.mark.parametrize("timeout", [0, 0.0, 0.25, 3, np.float32(1.5), np.int64(2), 2**62])
def test_lock_timeouts_in_range_are_taken(backend, store_path, timeout):
    with NumPack(store_path, backend=backend, lock_timeout=timeout) as npk:
        npk.save({"a": np.arange(3)})
        assert_same_array(npk.load("a"), np.arange(3))


# -- LazyArray.rows() ------------------------------------------------------------------------

BASE = np.arange(60, dtype=np.int32).reshape(10, 3, 2)


@pytest.fixture(params=["raw", "dropped", "compressed"])
def lazy_case(request, store):
    """A LazyArray of each kind and the rows it must show."""
    kind = request.param
    if kind == "compressed":
        store.save({"a": BASE}, compress=True, block_rows=3)
    else:
        store.save({"a": BASE})
    want = BASE
    if kind == "dropped":
        store.drop("a", [0, 4])
        want = np.delete(BASE, [0, 4], axis=0)
    return store.load("a", lazy=True), want


@pytest.mark.parametrize(
    "index",
    [
        0, -1, 3, np.int64(2), slice(None), slice(2, 5), slice(None, None, -2), slice(7, 1, -3),
        slice(50, 60), [], [1, 1, 0], [-1, 0], np.array([5, 2, 5]), np.zeros(0, np.int64),
        "mask",
    ],
    ids=repr,
)  # fmt: skip
def test_rows_reads_what_numpy_indexing_gives(lazy_case, index):
    lazy, want = lazy_case
    if isinstance(index, str):
        index = np.arange(len(want)) % 3 == 1
    got = lazy.rows(index)
    assert_same_array(got, want[index])
    if isinstance(got, np.ndarray):
        assert got.flags.writeable and got.flags.c_contiguous  # memory the caller owns
        got[...] = 0
        assert_same_array(lazy.rows(index), want[index])  # and changing it changes nothing


@pytest.mark.parametrize(
    ("index", "error"),
    [
        (8, RowIndexError),
        (-9, RowIndexError),
        ([0, 8], RowIndexError),
        (np.ones(7, bool), RowIndexError),  # a mask of the wrong length
        (True, InvalidTypeError),
        (1.0, InvalidTypeError),
        ([0.5], InvalidTypeError),
        ("0", InvalidTypeError),
    ],
    ids=repr,
)
def test_rows_refuses_bad_indexes(store, index, error):
    store.save({"a": BASE})
    store.drop("a", [0, 1])  # 8 rows left
    with pytest.raises(error):
        store.load("a", lazy=True).rows(index)


# -- NumPy's copy= on a LazyArray (LazyArray.__array__) ---------------------------------------


def test_copy_false_without_a_change_is_the_mapping(store):
    """No dropped rows, same dtype: copy=False gives the read-only mapping itself."""
    store.save({"a": BASE})
    lazy = store.load("a", lazy=True)
    for arr in (np.array(lazy, copy=False), np.asarray(lazy, dtype=BASE.dtype, copy=False)):
        assert_same_array(arr, BASE)
        assert not arr.flags.writeable and not arr.flags.owndata
    assert np.shares_memory(np.array(lazy, copy=False), np.asarray(lazy))


@pytest.mark.parametrize("kind", ["raw", "dropped", "compressed"])
def test_copy_false_with_a_dtype_change_raises_value_error(store, kind):
    """NumPy's rule (2.x): copy=False must raise ValueError when a copy is needed, here for a
    dtype change, and for rows that no single mapping holds (dropped rows, compression)."""
    kw = {"compress": True, "block_rows": 4} if kind == "compressed" else {}
    store.save({"a": BASE}, **kw)
    want = BASE
    if kind == "dropped":
        store.drop("a", [3])
        want = np.delete(BASE, 3, axis=0)
    lazy = store.load("a", lazy=True)
    with pytest.raises(ValueError):
        np.asarray(lazy, dtype=np.float64, copy=False)
    with pytest.raises(ValueError):
        np.array(lazy, dtype=np.int64, copy=False)
    with pytest.raises(ValueError):
        lazy.__array__(np.float32, copy=False)  # what NumPy calls when it cannot map
    if kind != "raw":
        with pytest.raises(ValueError):
            np.array(lazy, copy=False)
    # A copy is made when allowed: the values converted, in memory the caller owns.
    for copy in (None, True):
        arr = np.asarray(lazy, dtype=np.float64, copy=copy)
        assert_same_array(arr, want.astype(np.float64))
        assert arr.flags.writeable
    arr = np.array(lazy, copy=True)
    assert_same_array(arr, want)
    arr[...] = -1  # a copy: the store is unchanged
    assert_same_array(np.asarray(store.load("a", lazy=True)), want)


# -- calls with nothing to do ----------------------------------------------------------------

NOTHING = {
    "append({})": lambda npk: npk.append({}),
    "replace({}, [0])": lambda npk: npk.replace({}, [0]),
    "replace({}, [])": lambda npk: npk.replace({}, []),
    "replace({}, slice)": lambda npk: npk.replace({}, slice(None)),
    "drop([])": lambda npk: npk.drop([]),
    "drop(())": lambda npk: npk.drop(()),
    "compact([])": lambda npk: npk.compact([]),
    "save({})": lambda npk: npk.save({}),
}


@pytest.mark.parametrize("call", list(NOTHING))
def test_a_call_with_nothing_to_do_writes_nothing(store, call):
    """An empty mapping or list of names is no error and changes nothing on disk: no commit
    record, no modification time, no lock file taken anew. (`replace({}, rows)` does not
    look at `rows`: with no array there is nothing to check them against.)"""
    store.save({"a": BASE})
    store.save({"z": BASE}, compress=True, block_rows=4)
    store.drop("a", [1])  # a dropped row that compact([]) must not reclaim
    times = {n: store.get_modify_time(n) for n in ("a", "z")}
    before = snapshot(store.path)
    assert NOTHING[call](store) is None
    assert snapshot(store.path) == before
    assert {n: store.get_modify_time(n) for n in ("a", "z")} == times
    assert_same_array(store.load("a"), np.delete(BASE, 1, axis=0))
    assert_same_array(store.load("z"), BASE)


# -- NPY8: a damaged list, a read-only folder ------------------------------------------------

ROWS = np.arange(56, dtype="<i8").reshape(28, 2)


def _folder(path: Path) -> np.ndarray:
    """An NPY8 folder of 7 files of 4 rows, the newest 3 listed; returns the listed rows."""
    w = NPY8(path, capacity_per_file=4, query_size=3).load()
    for i in range(0, len(ROWS), 2):
        w.append(ROWS[i : i + 2])
    w.close()
    return ROWS[-12:]


def _read_all(r: NPY8) -> np.ndarray:
    out = []
    while len(rows := r.read(5)):
        out.append(rows.copy())
    return np.concatenate(out) if out else np.empty((0, 2), "<i8")


@pytest.mark.parametrize("size", [1, 7, 13, 8 * 3 + 1])
def test_npy8_list_of_a_size_no_list_has_is_corrupt(tmp_path, size):
    """`.lock` must hold whole uint64 slots: other sizes are CorruptStoreError (reader and
    writer alike), and the folder is left as it was."""
    folder = tmp_path / "f"
    _folder(folder)
    (folder / ".lock").write_bytes(b"\x07" * size)
    before = snapshot(folder)
    with pytest.raises(CorruptStoreError, match="not a list of uint64"):
        NPY8(folder).load()
    with pytest.raises(CorruptStoreError, match="not a list of uint64"):
        NPY8(folder).append(ROWS[:1])
    assert snapshot(folder) == before


def test_npy8_list_naming_no_file_is_rebuilt_from_the_folder(tmp_path):
    """A list whose first slot names no file (hand-edited, or files removed) is stale: with no
    writer, load() lists the newest files on disk again, as npyt does."""
    folder = tmp_path / "f"
    want = _folder(folder)
    (folder / ".lock").write_bytes(np.array([12345, 2**64 - 1, 0], "<u8").tobytes())
    r = NPY8(folder).load()
    assert_same_array(_read_all(r), want)
    r.close()
    files = sorted(int(p.stem) for p in folder.glob("*.npy"))
    assert np.fromfile(folder / ".lock", "<u8").tolist() == files[-3:]


@pytest.fixture
def read_only(tmp_path):
    """`read_only(src)`: a read-only view of directory `src`, as a read-only bind mount (root;
    where mounts are refused: a skip, or a failure with NUMPACK_REQUIRE_MOUNT=1), or, for
    another user, by permissions (EACCES instead of EROFS: the same fallback)."""
    mounted, chmodded = [], []

    def make(src: Path) -> Path:
        if os.geteuid() != 0:
            for p in [src, *src.iterdir()]:
                p.chmod(0o555 if p.is_dir() else 0o444)
            chmodded.append(src)
            return src
        dst = tmp_path / "ro"
        dst.mkdir()
        bind_mount_read_only(src, dst)
        mounted.append(dst)
        return dst

    yield make
    for dst in mounted:
        subprocess.run(["umount", "-l", str(dst)], capture_output=True)
    for src in chmodded:
        for p in [src, *src.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize("stale", [False, True], ids=["list", "stale list"])
def test_npy8_read_only_folder_reads_and_refuses_appends(tmp_path, read_only, stale):
    """A reader needs no write access: `.lock` opened read-only when it cannot be opened for
    writing, every read as in a writable folder, a stale list read as it is (a writable
    folder's reader would list the newest files again). An append is a StoreIOError naming
    the folder's list, and nothing changes."""
    src = tmp_path / "f"
    want = _folder(src)
    r = NPY8(src).load()  # what a writable folder gives
    expected = [h.copy() for h in r.head(3)], [t.copy() for t in r.tail(3)]
    r.close()
    if stale:  # the oldest listed file removed by hand: its rows are gone, the rest is read
        first = int(np.fromfile(src / ".lock", "<u8")[0])
        (src / f"{first}.npy").unlink()
        want = want[4:]
    folder = read_only(src)
    before = snapshot(folder)
    r = NPY8(folder).load()
    assert_same_array(_read_all(r), want)
    if not stale:
        for got, exp in zip((r.head(3), r.tail(3)), expected):
            assert len(got) == len(exp)
            for g, e in zip(got, exp):
                assert_same_array(g, e)
    with pytest.raises(StoreIOError) as err:
        r.append(ROWS[:2])
    assert ".lock" in str(err.value)
    r.close()
    assert snapshot(folder) == before
