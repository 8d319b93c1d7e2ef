"""Reprs of NumPack and LazyArray: one-line text and Jupyter HTML, with escaped user input, and a
LazyArray preview that reads only the rows it shows."""

from __future__ import annotations

import html
import pickle

import numpy as np
import pytest
from helpers import make_array

import numpack._repr as _repr
from numpack import NumPack

HOSTILE = '<script>alert("x")</script>&amp;\'<b>'


class Spy:
    """Stands in for a backend view and records the rows asked of it."""

    def __init__(self, view):
        self._inner = view
        self.reads: list[tuple[int, int]] = []
        self.gathers: list[np.ndarray] = []
        self.buffers = 0

    @property
    def dtype(self):
        return self._inner.dtype

    @property
    def shape(self):
        return self._inner.shape

    @property
    def dropped(self):
        return self._inner.dropped

    def read(self, start, stop, out):
        self.reads.append((start, stop))
        return self._inner.read(start, stop, out)

    def gather(self, rows, out):
        self.gathers.append(np.array(rows))
        return self._inner.gather(rows, out)

    def buffer(self):
        self.buffers += 1
        return self._inner.buffer()

    @property
    def rows_read(self) -> int:
        return sum(b - a for a, b in self.reads) + sum(len(g) for g in self.gathers)


def spied(lazy):
    spy = Spy(lazy._view)
    lazy._view = spy
    return spy


# -- NumPack ----------------------------------------------------------------------------------


def test_store_repr_is_one_line_with_the_facts(store):
    store.save({"vec": np.zeros((3, 2), np.float32), "ids": np.arange(5)})
    store.save({"packed": np.zeros((100, 4))}, compress=True)
    r = repr(store)
    assert "\n" not in r
    assert repr(store.path) in r and repr(store.backend) in r
    assert "3 arrays" in r
    assert "'vec': (3, 2) float32" in r
    assert "'ids': (5,) int64" in r
    assert "'packed': (100, 4) float64 zstd" in r
    assert "'vec': (3, 2) float32 zstd" not in r


def test_store_repr_lists_a_few_arrays(store):
    store.save({f"a{i}": np.zeros(2) for i in range(20)})
    r = repr(store)
    assert "20 arrays" in r and "'a0'" in r and "'a19'" not in r
    assert f"+{20 - _repr.REPR_ARRAYS} more" in r


def test_store_repr_empty_and_closed(store):
    assert "0 arrays" in repr(store)
    store.close()
    assert "closed" in repr(store)
    assert "closed" in store._repr_html_()


def test_store_html_table(store):
    raw = np.arange(60, dtype=np.int32).reshape(20, 3)
    packed = np.zeros((1000, 8))
    store.save({"raw": raw})
    store.save({"packed": packed}, compress=True, compression_level=5)
    store.drop("raw", [0, 1, 2])
    out = store._repr_html_()
    meta = store.get_metadata()["arrays"]
    assert out.count("<tr>") == 3  # the header and one row an array
    for header in ("name", "shape", "dtype", "size on disk", "compression ratio", "rows dropped"):
        assert f"<th>{header}</th>" in out
    assert "(17, 3)" in out and "int32" in out and "(1000, 8)" in out and "float64" in out
    assert "&mdash;" in out  # the raw array has no ratio
    comp = meta["packed"]["compression"]
    assert f"{comp['raw_bytes'] / comp['stored_bytes']:.2f}" in out
    assert "zstd level 5" in out
    assert _repr.human_bytes(meta["raw"]["bytes_on_disk"]) in out
    assert f'title="{meta["packed"]["bytes_on_disk"]} bytes"' in out
    assert ">3</td>" in out  # rows dropped
    assert _repr.human_time(store.get_modify_time("raw")) in out
    assert store.path in out and store.backend in out


def test_store_html_many_arrays_is_cut(store):
    store.save({f"a{i}": np.zeros(1) for i in range(_repr.HTML_ARRAYS + 5)})
    out = store._repr_html_()
    assert out.count("<tr>") == _repr.HTML_ARRAYS + 1
    assert "and 5 more arrays" in out


def test_store_reprs_escape_names_and_paths(backend, tmp_path):
    path = tmp_path / "<i>dir&co"
    with NumPack(path, backend=backend) as npk:
        npk.save({HOSTILE: np.arange(3)})
        out = npk._repr_html_()
        assert HOSTILE not in out and "<script>" not in out and "<i>" not in out
        assert html.escape(HOSTILE) in out
        assert html.escape(str(path)) in out
        assert repr(HOSTILE) in repr(npk)


# -- LazyArray --------------------------------------------------------------------------------


def test_lazy_repr_is_one_line_with_the_facts(store):
    store.save({"a": np.zeros((10, 4), np.float32)})
    store.save({"c": np.zeros((1000, 4))}, compress=True, compression_level=4)
    store.drop("c", [5])
    r = repr(store.load("a", lazy=True))
    assert "\n" not in r
    assert "'a'" in r and "shape=(10, 4)" in r and "dtype=float32" in r
    assert "compression='none'" in r and "dropped" not in r
    assert repr(store.path) in r and repr(store.backend) in r
    r = repr(store.load("c", lazy=True))
    assert "shape=(999, 4)" in r and "rows_dropped=1" in r and "zstd level 4" in r


def test_lazy_compression_facts(store):
    store.save({"raw": np.arange(10)})
    store.save({"c": np.zeros((1000, 2))}, compress=True, block_rows=100)
    store.save({"empty": np.zeros((0, 2))})
    store.drop("raw", [0])
    assert store.load("raw", lazy=True)._compression is None
    assert store.load("empty", lazy=True)._compression is None
    comp = store.load("c", lazy=True)._compression
    assert comp == store.get_metadata()["arrays"]["c"]["compression"]
    assert comp["block_rows"] == 100
    # pickling reopens by path, and finds the facts again
    clone = pickle.loads(pickle.dumps(store.load("c", lazy=True)))
    assert clone._compression == comp


@pytest.mark.parametrize("compress", [False, True])
def test_lazy_html_facts_and_preview(store, compress):
    base = np.arange(40, dtype=np.int64).reshape(20, 2) * 1000
    store.save({"m": base}, compress=compress)
    lazy = store.load("m", lazy=True)
    out = lazy._repr_html_()
    assert "(20, 2)" in out and "int64" in out
    assert html.escape(store.path) in out and store.backend in out and "<code>m</code>" in out
    assert ("zstd level 3" in out) == compress
    for row in (0, 1, 2, 17, 18, 19):
        assert f">{base[row, 1]}</td>" in out
    for row in (3, 10, 16):
        assert f">{base[row, 1]}</td>" not in out
    assert "&vellip;" in out and "first and last 3 of 20 rows" in out


def test_lazy_html_escapes(store):
    store.save({HOSTILE: np.arange(3)})
    out = store.load(HOSTILE, lazy=True)._repr_html_()
    assert HOSTILE not in out and "<script>" not in out
    assert html.escape(HOSTILE) in out
    assert repr(HOSTILE) in repr(store.load(HOSTILE, lazy=True))


@pytest.mark.parametrize("compress", [False, True])
def test_lazy_html_reads_only_the_preview_rows(store, compress):
    store.save({"big": np.zeros((200_000, 4), np.float32)}, compress=compress)
    lazy = store.load("big", lazy=True)
    spy = spied(lazy)
    out = lazy._repr_html_()
    assert spy.rows_read == 6
    assert sorted(spy.reads) == [(0, 3), (199_997, 200_000)]
    assert "199999" in out


def test_lazy_html_with_dropped_rows_shows_logical_rows(store):
    store.save({"a": np.arange(100, dtype=np.int16) * 3})
    store.drop("a", [0, 99])
    lazy = store.load("a", lazy=True)
    spy = spied(lazy)
    out = lazy._repr_html_()
    assert spy.rows_read == 6
    assert ">3</td>" in out and ">294</td>" in out and ">0</td>" not in out
    assert "<th>rows dropped" not in out and ">2</td></tr>" in out  # the facts table


def test_lazy_html_small_and_empty(store):
    store.save({"one": np.array([1.5]), "none": np.zeros((0, 3)), "b": np.array([True, False])})
    out = store.load("one", lazy=True)._repr_html_()
    assert ">1.5</td>" in out and "&vellip;" not in out and "all of 1 rows" in out
    assert "(no rows)" in store.load("none", lazy=True)._repr_html_()
    out = store.load("b", lazy=True)._repr_html_()
    assert ">True</td>" in out and ">False</td>" in out


def test_lazy_html_truncates_columns(store):
    base = np.arange(200, dtype=np.int32).reshape(10, 20)
    store.save({"w": base})
    out = store.load("w", lazy=True)._repr_html_()
    for col in (0, 1, 2, 17, 18, 19):
        assert f">{col}</th>" in out and f">{base[9, col]}</td>" in out
    for col in (3, 10, 16):
        assert f">{col}</th>" not in out and f">{base[9, col]}</td>" not in out
    assert "&hellip;" in out


def test_lazy_html_nd_cells(store):
    base = make_array(np.float32, (7, 2, 3), seed=3)
    store.save({"t": base})
    out = store.load("t", lazy=True)._repr_html_()
    assert out.count("<td") >= 6 * 2 and "[" in out


@pytest.mark.parametrize("compress", [False, True])
def test_lazy_html_wide_rows(store, monkeypatch, compress):
    base = np.arange(10 * 1000, dtype=np.float64).reshape(10, 1000)
    store.save({"w": base}, compress=compress)
    monkeypatch.setattr(_repr, "PREVIEW_BYTES", 1000)  # 6 rows of 8000 bytes are "too wide"
    lazy = store.load("w", lazy=True)
    spy = spied(lazy)
    out = lazy._repr_html_()
    if compress:  # no mapping: one row in memory at a time
        assert sorted(spy.reads) == [(i, i + 1) for i in (0, 1, 2, 7, 8, 9)]
    else:  # sliced from the mapping, only the cells shown
        assert spy.rows_read == 0 and spy.buffers == 1
    assert ">9999.0</td>" in out and ">9000.0</td>" in out and ">999</th>" in out
    monkeypatch.setattr(_repr, "ROW_LIMIT", 1000)
    lazy = store.load("w", lazy=True)
    spy = spied(lazy)
    out = lazy._repr_html_()
    if compress:
        assert "no preview" in out and spy.rows_read == 0
    else:
        assert ">9999.0</td>" in out


def test_reprs_of_a_closed_store_view(backend, tmp_path):
    npk = NumPack(tmp_path / "s", backend=backend)
    npk.save({"a": np.arange(10)})
    lazy = npk.load("a", lazy=True)
    npk.close()
    assert "'a'" in repr(lazy) and ">9</td>" in lazy._repr_html_()
