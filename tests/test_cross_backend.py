"""One store, two backends: what one writes the other reads, and they take turns writing."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from helpers import BACKENDS, assert_same_array, make_array, read_metadata, require_backend

from numpack import NumPack


def _steps():
    """(description, call(npk), update(model)) — a sequence covering every kind of write."""
    a = make_array(np.float32, (10, 3), seed=1)
    b = make_array(np.int16, (7,), seed=2)
    c = make_array(np.complex128, (5, 2, 2), seed=3)
    e = make_array(np.bool_, (4,), seed=4)
    d = make_array(np.uint64, (3, 2), seed=5)
    a_more = make_array(np.float32, (4, 3), seed=6)
    a_rows = make_array(np.float32, (3, 3), seed=7)
    a_tail = make_array(np.float32, (2, 3), seed=8)
    e2 = make_array(np.float16, (6, 2), seed=9)
    d_max = np.full(2, 2**64 - 1, np.uint64)
    mask_holder = {}

    def upd(fn):
        return fn

    def m_save(m):
        m.update(a=a.copy(), b=b.copy(), c=c.copy(), e=e.copy())
        m["_order"] = ["a", "b", "c", "e"]

    def m_append(m):
        m["a"] = np.concatenate([m["a"], a_more])
        m["d"] = d.copy()
        m["_order"].append("d")

    def m_replace(m):
        m["a"][[0, -1, 5]] = a_rows
        m["b"][1:4] = np.int16(-7)

    def m_drop(m):
        m["b"] = np.delete(m["b"], [1, 3])
        del m["c"]
        m["_order"].remove("c")

    def m_append_b(m):
        m["b"] = np.concatenate([m["b"], np.array([100, 101], np.int16)])

    def m_replace_b(m):
        m["b"][[0, -1]] = np.array([5, 6], np.int16)

    def drop_mask(npk):
        n = npk.get_shape("a")[0]
        mask = np.arange(n) % 3 == 1
        mask_holder["mask"] = mask
        npk.drop("a", mask)

    def m_drop_mask(m):
        m["a"] = m["a"][~mask_holder["mask"]]

    def m_append_a(m):
        m["a"] = np.concatenate([m["a"], a_tail])

    def m_save_e(m):
        m["e"] = e2.copy()

    def m_d(m):
        m["d"] = np.delete(m["d"], 0, axis=0)
        m["d"][0] = d_max

    return [
        ("save", lambda s: s.save({"a": a, "b": b, "c": c, "e": e}), m_save),
        ("append", lambda s: s.append({"a": a_more, "d": d}), m_append),
        ("replace", lambda s: (s.replace({"a": a_rows}, [0, -1, 5]),
                               s.replace({"b": np.array([-7], np.int16)}, slice(1, 4))), m_replace),
        ("drop", lambda s: (s.drop("b", [1, 3]), s.drop("c")), m_drop),
        ("append_after_drop", lambda s: s.append({"b": np.array([100, 101], np.int16)}),
         m_append_b),
        ("replace_after_drop", lambda s: s.replace({"b": np.array([5, 6], np.int16)}, [0, -1]),
         m_replace_b),
        ("compact_all", lambda s: s.compact(), upd(lambda m: None)),
        ("drop_mask", drop_mask, m_drop_mask),
        ("append_a", lambda s: s.append({"a": a_tail}), m_append_a),
        ("compact_a", lambda s: s.compact("a"), upd(lambda m: None)),
        ("overwrite", lambda s: s.save({"e": e2}), m_save_e),
        ("drop_then_replace", lambda s: (s.drop("d", [0]), s.replace({"d": d_max}, 0)), m_d),
    ]  # fmt: skip


def _check(npk, model, step):
    order = model["_order"]
    assert npk.get_member_list() == order, step
    assert npk.get_shape() == {n: model[n].shape for n in order}, step
    for name in order:
        assert_same_array(npk.load(name), model[name])
        assert_same_array(np.asarray(npk.load(name, lazy=True)), model[name])
        n = len(model[name])
        if n:
            idx = [n - 1, 0, n // 2]
            assert_same_array(npk.getitem(name, idx), model[name][idx])


@pytest.mark.parametrize("writer, reader", list(itertools.product(BACKENDS, BACKENDS)))
def test_writer_then_reader(tmp_path, writer, reader):
    require_backend(writer)
    require_backend(reader)
    path = tmp_path / "store"
    model: dict = {}
    with NumPack(path, backend=writer) as w, NumPack(path, backend=reader) as r:
        for step, call, update in _steps():
            call(w)
            update(model)
            _check(r, model, step)  # the other backend sees it at its next call
    with NumPack(path, backend=reader) as fresh:
        _check(fresh, model, "reopen")


@pytest.mark.parametrize("first", BACKENDS)
def test_alternating_writers(tmp_path, first):
    for b in BACKENDS:
        require_backend(b)
    order = [first] + [b for b in BACKENDS if b != first]
    path = tmp_path / "store"
    model: dict = {}
    handles = {b: NumPack(path, backend=b) for b in order}
    try:
        for i, (step, call, update) in enumerate(_steps()):
            call(handles[order[i % 2]])
            update(model)
            for h in handles.values():
                _check(h, model, step)
    finally:
        for h in handles.values():
            h.close()


@pytest.mark.parametrize("first", BACKENDS)
def test_alternating_writers_reopening(tmp_path, first):
    """Each step by a new NumPack of the other backend (a store moved between programs)."""
    for b in BACKENDS:
        require_backend(b)
    order = [first] + [b for b in BACKENDS if b != first]
    path = tmp_path / "store"
    model: dict = {}
    for i, (step, call, update) in enumerate(_steps()):
        with NumPack(path, backend=order[i % 2]) as npk:
            call(npk)
        update(model)
        with NumPack(path, backend=order[(i + 1) % 2]) as npk:
            _check(npk, model, step)


def _comparable(path):
    """Metadata without times and file ids, and the physical bytes of each array's file."""
    meta = read_metadata(path)
    out = {k: meta[k] for k in ("format", "version")}
    arrays = []
    for e in meta["arrays"]:
        entry = {k: e[k] for k in ("name", "dtype", "shape", "deleted", "compression")}
        entry["stem"] = e["file"].rsplit(".", 2)[0]
        itemsize = np.dtype(e["dtype"]).itemsize
        nbytes = int(np.prod(e["shape"])) * itemsize
        with open(os.path.join(path, e["file"]), "rb") as f:
            entry["data"] = f.read()[:nbytes]
        arrays.append(entry)
    out["arrays"] = arrays
    return out


def test_backends_write_the_same_files(tmp_path):
    for b in BACKENDS:
        require_backend(b)
    results = {}
    for b in BACKENDS:
        path = tmp_path / b
        with NumPack(path, backend=b) as npk:
            for _, call, _ in _steps():
                call(npk)
        results[b] = _comparable(path)
    assert results["rust"] == results["python"]
