"""Stateful testing: random interleavings of every API call against an in-memory model.

A hypothesis `RuleBasedStateMachine` drives a NumPack store and a plain dict of NumPy arrays
side by side; after every step the member list (in order), every shape and every array's
contents must equal the model's. Rules: save (raw and compressed in small blocks, several
dtypes and row shapes), append, replace (duplicates and negative indexes included), drop of
rows and of arrays, compact, reset, reopen (sometimes with the other backend), writes through
a second NumPack on the same directory, getitem, lazy indexing, stream_load, and reads of
stale lazy views taken before later calls.

Stale views are checked value for value against README's "What a LazyArray shows after a
write": a view is a snapshot of its array's rows when it was made; rows `replace`d later in a
raw array show their new values (written in place in the file the view maps); appends, drops
of rows, a save over the array, a drop of it, a reset, and every write to a compressed array
leave it as it was. The model follows each raw array's physical rows and data file (the
`file` of `get_metadata()`) to know which later replaces a view must show. No exception is
accepted from a stale view.

One TestCase per backend (`TestRustStore`, `TestPythonStore`); the rust one is skipped when
the extension does not import, unless NUMPACK_REQUIRE_RUST=1. Bounded by the "ci" profile
(25 programs of up to 30 steps a backend); HYPOTHESIS_PROFILE=dev runs 200 of up to 60.
"""

from __future__ import annotations

import atexit
import collections
import os
import shutil
import sys
import tempfile
import unittest

import hypothesis.strategies as st
import numpy as np
from helpers import BACKENDS, assert_same_array, make_array, require_backend, rust_import_error
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from numpack import NumPack

DEV = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "dev"
SETTINGS = settings(
    max_examples=200 if DEV else 25,
    stateful_step_count=60 if DEV else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

NAMES = ("a", "b", "c", "d")
# A spread of item sizes (1, 2, 4, 8, 16 bytes) and kinds; all 14 are covered elsewhere.
STATE_DTYPES = tuple(
    np.dtype(s) for s in ("bool", "int8", "uint16", "int32", "float32", "int64", "complex128")
)
ROW_SHAPES = ((), (1,), (3,), (2, 2))

# Steps run, by rule and backend; NUMPACK_TEST_STATS=1 prints them at exit.
STATS: collections.Counter = collections.Counter()
if os.environ.get("NUMPACK_TEST_STATS"):
    atexit.register(lambda: print(f"test_stateful steps: {dict(STATS)}", file=sys.stderr))


def _available() -> list[str]:
    return [b for b in BACKENDS if b != "rust" or rust_import_error() is None]


def _index_strategy(n: int, *, allow_scalar: bool = True):
    """A row selection of an array of n rows: int (negative too), list (duplicates), int
    array, slice with a step, or a boolean mask."""
    ints = st.integers(-n, n - 1)
    options = [
        st.lists(ints, max_size=6),
        st.lists(ints, max_size=6).map(lambda v: np.array(v, dtype=np.int64)),
        st.builds(
            slice,
            st.none() | st.integers(-n - 2, n + 2),
            st.none() | st.integers(-n - 2, n + 2),
            st.none() | st.sampled_from([-3, -2, -1, 1, 2, 3]),
        ),
        st.lists(st.booleans(), min_size=n, max_size=n).map(lambda v: np.array(v, dtype=bool)),
    ]
    if allow_scalar:
        options.append(ints)
    return st.one_of(options)


class StoreMachine(RuleBasedStateMachine):
    """The store against a dict {name: ndarray} and the creation order of the names."""

    BACKEND = "python"  # set by the per-backend subclasses below

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="npk-state-")
        self.path = os.path.join(self.tmp, "store")
        self.backends = _available()
        self.npk = NumPack(self.path, backend=self.BACKEND)
        self.model: dict[str, np.ndarray] = {}
        self.order: list[str] = []
        self.compressed: set[str] = set()
        # Each array's data file, and the physical row of each of its logical rows.
        self.files: dict[str, str] = {}
        self.phys: dict[str, np.ndarray] = {}
        self.nphys: dict[str, int] = {}
        self.views: list[dict] = []  # lazy views kept for the stale-read rule

    def teardown(self) -> None:
        self.views.clear()
        try:
            self.npk.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------

    def _set(self, name: str, arr: np.ndarray) -> None:
        if name not in self.model:
            self.order.append(name)
        self.model[name] = arr

    def _forget(self, name: str) -> None:
        del self.model[name]
        self.order.remove(name)
        self.compressed.discard(name)
        del self.files[name], self.phys[name], self.nphys[name]

    def _sync_files(self) -> None:
        """After a write: an array whose data file changed (saved, made, compacted) holds its
        live rows in order in the new file."""
        arrays = self.npk.get_metadata()["arrays"]
        assert set(arrays) == set(self.model), (set(arrays), set(self.model))
        for name, cur in self.model.items():
            if arrays[name]["file"] != self.files.get(name):
                self.files[name] = arrays[name]["file"]
                self.phys[name] = np.arange(len(cur))
                self.nphys[name] = len(cur)
            assert len(self.phys[name]) == len(cur), name

    def _appended(self, name: str, n: int) -> None:
        """`n` rows appended to existing array `name` went after its last physical row."""
        self.phys[name] = np.concatenate([self.phys[name], self.nphys[name] + np.arange(n)])
        self.nphys[name] += n

    def _replaced(self, name: str, idx) -> None:
        """Rows `idx` of raw array `name` were replaced in place: views mapping its file show
        the new values (model already updated) in the rows they share."""
        if name in self.compressed:
            return  # new block versions elsewhere in the file: no view sees them
        cur, phys = self.model[name], self.phys[name]
        touched = set(np.atleast_1d(phys[np.arange(len(cur))[idx]]).tolist())
        logical = {int(p): i for i, p in enumerate(phys)}
        for v in self.views:
            if v["name"] == name and v["file"] == self.files[name] and not v["compressed"]:
                for j, p in enumerate(v["phys"].tolist()):
                    if p in touched:
                        v["expected"][j] = cur[logical[p]]
                        STATS[self.BACKEND, "stale view rows replaced in place"] += 1

    def _rows_like(self, data, name: str, n: int, label: str) -> np.ndarray:
        cur = self.model[name]
        seed = data.draw(st.integers(0, 2**32 - 1), label=f"{label} seed")
        return make_array(cur.dtype, (n,) + cur.shape[1:], seed)

    # -- writes ----------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        assert self.npk.get_member_list() == []

    @rule(
        name=st.sampled_from(NAMES),
        dtype=st.sampled_from(STATE_DTYPES),
        row_shape=st.sampled_from(ROW_SHAPES),
        n=st.integers(0, 12),
        seed=st.integers(0, 2**32 - 1),
        compress=st.booleans(),
        block_rows=st.none() | st.integers(1, 5),
        level=st.sampled_from([None, 1, 3, -1]),
    )
    def save(self, name, dtype, row_shape, n, seed, compress, block_rows, level):
        STATS[self.BACKEND, "save"] += 1
        arr = make_array(dtype, (n,) + row_shape, seed)
        if compress:
            self.npk.save(
                {name: arr}, compress=True, block_rows=block_rows, compression_level=level
            )
            self.compressed.add(name)
        else:
            self.npk.save({name: arr})
            self.compressed.discard(name)
        self._set(name, arr.copy())
        self._sync_files()

    @rule(data=st.data(), n=st.integers(0, 7))
    def append(self, data, n):
        STATS[self.BACKEND, "append"] += 1
        name = data.draw(st.sampled_from(NAMES), label="name")
        if name in self.model:
            rows = self._rows_like(data, name, n, "append")
            self.npk.append({name: rows})
            self.model[name] = np.concatenate([self.model[name], rows])
            self._appended(name, n)
        else:
            dtype = data.draw(st.sampled_from(STATE_DTYPES), label="dtype")
            row_shape = data.draw(st.sampled_from(ROW_SHAPES), label="row shape")
            rows = make_array(dtype, (n,) + row_shape, data.draw(st.integers(0, 2**16)))
            self.npk.append({name: rows})  # a new array: raw, at the end of the member list
            self._set(name, rows.copy())
        self._sync_files()

    @precondition(lambda self: any(len(a) for a in self.model.values()))
    @rule(data=st.data())
    def replace(self, data):
        STATS[self.BACKEND, "replace"] += 1
        name = data.draw(st.sampled_from([n for n in self.order if len(self.model[n])]))
        cur = self.model[name]
        idx = data.draw(_index_strategy(len(cur)), label="rows")
        want = cur[idx]
        count = 1 if np.ndim(want) < cur.ndim else len(want)
        broadcast = count > 1 and data.draw(st.booleans(), label="one row for all")
        rows = self._rows_like(data, name, 1 if broadcast else count, "replace")
        if np.ndim(want) < cur.ndim:
            rows = rows[0]
        self.npk.replace({name: rows}, idx)
        # NumPy's rule for a repeated index is also numpack's: the last value wins.
        cur[idx] = rows if not broadcast else rows[0]
        self._replaced(name, idx)
        self._sync_files()

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def drop_rows(self, data):
        STATS[self.BACKEND, "drop_rows"] += 1
        name = data.draw(st.sampled_from(self.order), label="name")
        cur = self.model[name]
        if not len(cur):
            idx = data.draw(st.sampled_from([[], np.zeros(0, np.int64), slice(None)]))
        else:
            idx = data.draw(_index_strategy(len(cur)), label="rows")
        self.npk.drop(name, idx)
        keep = np.ones(len(cur), dtype=bool)
        keep[np.arange(len(cur))[idx]] = False
        self.model[name] = cur[keep]
        self.phys[name] = self.phys[name][keep]
        self._sync_files()

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def drop_arrays(self, data):
        STATS[self.BACKEND, "drop_arrays"] += 1
        names = data.draw(
            st.lists(st.sampled_from(self.order), min_size=1, max_size=3, unique=True)
        )
        self.npk.drop(names if len(names) > 1 or data.draw(st.booleans()) else names[0])
        for n in names:
            self._forget(n)
        self._sync_files()

    @rule(data=st.data())
    def compact(self, data):
        STATS[self.BACKEND, "compact"] += 1
        if self.model and data.draw(st.booleans(), label="one array"):
            self.npk.compact(data.draw(st.sampled_from(self.order), label="name"))
        else:
            self.npk.compact()
        self._sync_files()

    @rule(now=st.sampled_from([False, False, False, True]))
    def reset(self, now):
        """Remove every array (one time in four the rule is drawn: it empties the model)."""
        if not now:
            return
        STATS[self.BACKEND, "reset"] += 1
        self.npk.reset()
        for n in list(self.order):
            self._forget(n)
        self._sync_files()

    @rule(data=st.data())
    def reopen(self, data):
        """Close and open a new NumPack on the directory, maybe with the other backend."""
        STATS[self.BACKEND, "reopen"] += 1
        backend = data.draw(st.sampled_from(self.backends), label="backend")
        self.npk.close()
        self.npk = NumPack(self.path, backend=backend)

    @rule(data=st.data(), n=st.integers(1, 4))
    def write_through_another_handle(self, data, n):
        """A second NumPack (either backend) on the same directory appends or drops; the
        first one sees it at its next call."""
        STATS[self.BACKEND, "write_through_another_handle"] += 1
        backend = data.draw(st.sampled_from(self.backends), label="other backend")
        with NumPack(self.path, backend=backend) as other:
            name = data.draw(st.sampled_from(NAMES), label="name")
            if name in self.model and data.draw(st.booleans(), label="drop it"):
                other.drop(name)
                self._forget(name)
            elif name in self.model:
                rows = self._rows_like(data, name, n, "other append")
                other.append({name: rows})
                self.model[name] = np.concatenate([self.model[name], rows])
                self._appended(name, n)
            else:
                rows = make_array(np.float64, (n, 2), data.draw(st.integers(0, 2**16)))
                other.append({name: rows})
                self._set(name, rows.copy())
        self._sync_files()

    # -- reads -----------------------------------------------------------------------------

    @precondition(lambda self: any(len(a) for a in self.model.values()))
    @rule(data=st.data())
    def getitem(self, data):
        STATS[self.BACKEND, "getitem"] += 1
        name = data.draw(st.sampled_from([n for n in self.order if len(self.model[n])]))
        cur = self.model[name]
        idx = data.draw(_index_strategy(len(cur)), label="rows")
        assert_same_array(self.npk.getitem(name, idx), cur[idx])

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def lazy(self, data):
        STATS[self.BACKEND, "lazy"] += 1
        name = data.draw(st.sampled_from(self.order), label="name")
        cur = self.model[name]
        lazy = self.npk.load(name, lazy=True)
        assert lazy.shape == cur.shape and lazy.dtype == cur.dtype and len(lazy) == len(cur)
        assert_same_array(np.asarray(lazy), cur)
        if len(cur):
            idx = data.draw(_index_strategy(len(cur)), label="rows")
            assert_same_array(lazy[idx], cur[idx])
            if cur.ndim > 1:
                col = data.draw(st.integers(-cur.shape[1], cur.shape[1] - 1), label="column")
                assert_same_array(lazy[idx, col], cur[idx, col])
        if len(self.views) < 4:
            self.views.append(
                {
                    "lazy": lazy,
                    "expected": cur.copy(),
                    "name": name,
                    "file": self.files[name],
                    "phys": self.phys[name].copy(),
                    "compressed": name in self.compressed,
                }
            )

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), size=st.integers(1, 5))
    def stream(self, data, size):
        STATS[self.BACKEND, "stream"] += 1
        name = data.draw(st.sampled_from(self.order), label="name")
        cur = self.model[name]
        loader = self.npk.stream_load(name, buffer_size=size)
        batches = list(loader)
        assert len(loader) == len(batches) == -(-len(cur) // size)
        assert all(len(b) <= size for b in batches)
        assert_same_array(np.concatenate(batches) if batches else cur[:0], cur)

    @precondition(lambda self: bool(self.views))
    @rule()
    def read_stale_views(self):
        """Lazy views taken before later calls show their snapshot (module docstring): the
        rows they had, with the in-place replaces of their raw file, whatever else changed."""
        STATS[self.BACKEND, "read_stale_views"] += 1
        for v in self.views:
            lazy, expected = v["lazy"], v["expected"]
            assert lazy.shape == expected.shape and lazy.dtype == expected.dtype, v["name"]
            assert_same_array(lazy[:], expected)
            assert_same_array(np.asarray(lazy), expected)
            if len(expected):
                assert_same_array(lazy[[-1, 0]], expected[[-1, 0]])

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def matches_model(self):
        STATS[self.BACKEND, "invariant checks"] += 1
        assert self.npk.get_member_list() == self.order
        assert len(self.npk) == len(self.order)
        shapes = self.npk.get_shape()
        assert list(shapes) == self.order
        for name in self.order:
            expected = self.model[name]
            assert shapes[name] == expected.shape
            assert_same_array(self.npk.load(name), expected)
        meta = self.npk.get_metadata()["arrays"]
        for name in self.order:
            assert (meta[name]["compression"] is not None) == (name in self.compressed), name


def _machine_for(backend: str) -> type[unittest.TestCase]:
    machine = type(f"{backend.title()}StoreMachine", (StoreMachine,), {"BACKEND": backend})
    case = machine.TestCase
    case.settings = SETTINGS

    parent_setup = getattr(case, "setUp", None)

    def setUp(self):
        if backend == "rust":
            require_backend("rust")  # skips, or fails under NUMPACK_REQUIRE_RUST=1
        if parent_setup is not None:
            parent_setup(self)

    case.setUp = setUp
    return case


TestRustStore = _machine_for("rust")
TestPythonStore = _machine_for("python")


def test_a_stale_view_shows_its_snapshot(backend, tmp_path):
    """README's promise, call by call (the machine above draws these only now and then)."""
    npk = NumPack(tmp_path / "s", backend=backend)
    base = np.arange(40, dtype=np.int64).reshape(10, 4)
    npk.save({"raw": base, "gone": base})
    npk.save({"z": base}, compress=True, block_rows=3)
    npk.drop("raw", [0])  # the view's rows are physical rows 1..9
    raw, z, gone = (npk.load(n, lazy=True) for n in ("raw", "z", "gone"))
    want_raw, want_z = base[1:].copy(), base.copy()
    npk.replace({"raw": np.full((2, 4), -1)}, [0, 8])  # in place: the view shows them
    want_raw[[0, 8]] = -1
    npk.replace({"z": np.full((1, 4), -1)}, [5])  # a new block version: it does not
    npk.append({"raw": np.full((3, 4), 7), "z": np.full((3, 4), 7)})
    npk.drop("raw", [1, 2])
    npk.drop("z", [0])
    npk.replace({"raw": np.full((1, 4), -2)}, [-1])  # an appended row: not in the view
    npk.replace({"raw": np.full((1, 4), -3)}, [1])  # physical row 4: in the view
    want_raw[3] = -3
    npk.drop("gone")
    for view, want in ((raw, want_raw), (z, want_z), (gone, base)):
        assert_same_array(view[:], want)
        assert_same_array(np.asarray(view), want)
    npk.save({"raw": np.zeros((2, 4), np.int64)})  # a save over it: the view keeps its file
    npk.compact()
    assert_same_array(raw[:], want_raw)
    npk.close()
