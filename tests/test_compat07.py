"""NumPack 0.7's documented Python API (BirchKwok/NumPack, docs/ and docs/api_reference/), call
by call, on both backends: code written for 0.7 runs unchanged.

Sections follow its docs: the NumPack class (numpack_class.md, 01_getting_started.md,
02_core_operations.md), batch modes (batch_modes.md, 03_batch_processing.md), LazyArray
(lazy_array.md, 04_advanced_features.md and the methods its LazyArray has) and the top-level
module (utilities.md). Where numpack differs on purpose, the test says so.
"""

from __future__ import annotations

import copy
import gc
import warnings

import numpy as np
import pytest
from helpers import assert_same_array

import numpack
from numpack import (
    BatchModeContext,
    LazyArray,
    NumPack,
    StoreClosedError,
    StrictContextError,
    WritableBatchMode,
    force_cleanup_windows_handles,
    get_backend_info,
)


@pytest.fixture
def filled(store):
    store.save(
        {
            "features": np.arange(200, dtype=np.float32).reshape(20, 10),
            "labels": np.arange(20, dtype=np.int32),
        }
    )
    return store


# -- the NumPack class: lifetime -------------------------------------------------------------


def test_manual_open_close_and_reopen(backend, store_path):
    """01_getting_started "Manual File Management", numpack_class.md open()/close()."""
    npk = NumPack(store_path, backend=backend)
    npk.open()
    npk.open()  # idempotent
    npk.save({"array": np.arange(6.0).reshape(3, 2)})
    assert_same_array(npk.load("array"), np.arange(6.0).reshape(3, 2))
    npk.close()
    npk.close()  # idempotent
    assert npk.is_closed and not npk.is_opened
    with pytest.raises(StoreClosedError):
        npk.load("array")
    npk.open()  # reopens
    assert npk.is_opened and not npk.is_closed
    assert_same_array(npk.load("array"), np.arange(6.0).reshape(3, 2))
    npk.close(force_gc=True)


def test_opened_without_open(backend, store_path):
    """0.7 waits for open() or `with`; numpack opens at once, so both styles work."""
    npk = NumPack(store_path, backend=backend)
    assert npk.is_opened and not npk.is_closed
    npk.save({"a": np.arange(3)})
    npk.close()


def test_context_manager_reopens_and_closes(backend, store_path):
    npk = NumPack(store_path, drop_if_exists=True, backend=backend)
    npk.close()
    with npk as same:  # "Auto-opens on enter, auto-closes on exit"
        assert same is npk and npk.is_opened
        npk.save({"a": np.arange(2)})
    assert npk.is_closed


def test_constructor_keywords(backend, store_path, monkeypatch):
    with NumPack(store_path, backend=backend) as npk:
        npk.save({"old": np.arange(3)})
    npk = NumPack(
        store_path,
        drop_if_exists=True,
        backend=backend,
        strict_context_mode=False,
        warn_no_context=False,
        force_gc_on_close=True,
    )
    assert npk.get_member_list() == []
    collected = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    npk.close()
    assert collected == [1]  # force_gc_on_close
    npk.close(force_gc=False)  # already closed: nothing to collect, and not asked to
    assert collected == [1]


def test_strict_context_mode(backend, store_path):
    """01_getting_started "Strict Context Mode": calls outside `with` raise RuntimeError."""
    npk = NumPack(store_path, backend=backend, strict_context_mode=True)
    for call in (
        npk.open,
        lambda: npk.save({"a": np.arange(2)}),
        lambda: npk.get_member_list(),
        lambda: len(npk),
    ):
        with pytest.raises(RuntimeError, match="strict_context_mode") as e:
            call()
        assert isinstance(e.value, StrictContextError)
        assert isinstance(e.value, numpack.NumPackError)
    assert "0 arrays" in repr(npk)  # a repr is not a use
    with npk:
        npk.save({"array": np.arange(4)})
        assert_same_array(npk.load("array"), np.arange(4))
    with npk:  # reopened by the next block
        assert npk.get_member_list() == ["array"]


def test_warn_no_context(backend, store_path):
    npk = NumPack(store_path, backend=backend, warn_no_context=True)
    with pytest.warns(UserWarning, match="outside a `with` block") as record:
        npk.save({"a": np.arange(2)})
    assert record[0].filename == __file__  # points at the caller
    npk.load("a")  # once only
    npk.close()
    with NumPack(store_path, backend=backend, warn_no_context=True) as inside:
        inside.load("a")  # no warning inside a with block (pytest turns warnings into errors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NumPack(store_path, backend=backend, warn_no_context=False).load("a")
        NumPack(store_path, backend=backend).load("a")  # None: only Windows warns


def test_properties_and_special_methods(filled):
    assert filled.backend_type == filled.backend
    assert list(filled) == ["features", "labels"]
    assert_same_array(filled["labels"], np.arange(20, dtype=np.int32))
    assert filled.path in repr(filled)


def test_bad_constructor_keywords(backend, store_path):
    with pytest.raises(TypeError):
        NumPack(store_path, backend=backend, strict_context_mode=1)
    with pytest.raises(TypeError):
        NumPack(store_path, backend=backend, warn_no_context="yes")


# -- the NumPack class: reading and writing -----------------------------------------------------


def test_save_load_replace_append_drop(store):
    """02_core_operations: save, load, replace (int, list, ndarray, slice, several arrays),
    append (several arrays), drop (array, list of arrays, rows by list, ndarray, slice)."""
    features = np.arange(1000, dtype=np.float32).reshape(100, 10)
    labels = np.arange(100, dtype=np.int32)
    store.save({"features": features, "labels": labels})
    assert isinstance(store.load("features"), np.ndarray)
    assert isinstance(store.load("features", lazy=True), LazyArray)

    store.replace({"features": np.full(10, -1, np.float32)}, 0)
    features[0] = -1
    store.replace({"features": np.full((2, 10), -2, np.float32)}, [10, 20])
    features[[10, 20]] = -2
    store.replace({"features": np.full((2, 10), -3, np.float32)}, np.array([1, 3]))
    features[[1, 3]] = -3
    store.replace({"features": np.full((5, 10), -4, np.float32)}, slice(30, 35))
    features[30:35] = -4
    store.replace({"features": np.zeros((2, 10), np.float32), "labels": np.array([7, 8])}, [0, 1])
    features[[0, 1]], labels[[0, 1]] = 0, [7, 8]
    assert_same_array(store.load("features"), features)

    more = np.ones((5, 10), np.float32)
    store.append({"features": more, "labels": np.arange(5, dtype=np.int32)})
    features = np.concatenate([features, more])
    labels = np.concatenate([labels, np.arange(5, dtype=np.int32)])
    assert store.get_shape("features") == (105, 10)

    store.drop("features", [0, 1, 2])
    store.drop("features", np.array([5, 15]))
    store.drop("features", slice(0, 10))
    features = np.delete(features, [0, 1, 2], axis=0)
    features = np.delete(features, [5, 15], axis=0)[10:]
    assert_same_array(store.load("features"), features)
    assert_same_array(store.load("labels"), labels)

    store.save({"array1": np.zeros(2), "array2": np.zeros(2), "array3": np.zeros(2)})
    store.drop("array1")
    store.drop(["array2", "array3"])
    assert store.get_member_list() == ["features", "labels"]


def test_getitem(filled):
    """getitem: an int gives one row (shape (cols,), as 0.7's docs show), lists, arrays and
    slices give rows."""
    features = np.arange(200, dtype=np.float32).reshape(20, 10)
    assert filled.getitem("features", 0).shape == (10,)
    assert_same_array(filled.getitem("features", [0, 10, 19]), features[[0, 10, 19]])
    assert_same_array(filled.getitem("features", np.array([1, 5])), features[[1, 5]])
    assert_same_array(filled.getitem("features", slice(0, 5)), features[:5])


def test_metadata_calls(filled):
    assert filled.get_shape("features") == (20, 10)
    rows, cols = filled.get_shape("features")
    assert filled.get_member_list() == ["features", "labels"]
    assert filled.has_array("features") and not filled.has_array("missing")
    assert isinstance(filled.get_modify_time("features"), int)  # microseconds, as 0.7 gives
    meta = filled.get_metadata()
    arrays = meta["arrays"]
    assert set(arrays) == {"features", "labels"}
    assert arrays["features"]["shape"] == [20, 10]  # 0.7 gives a list
    assert arrays["features"]["shape"] == (20, 10)  # numpack a tuple: both compare equal
    assert [20, 10] == arrays["features"]["shape"]
    assert arrays["features"]["shape"] != [20, 11]
    assert arrays["labels"]["data_file"] == arrays["labels"]["file"]
    assert arrays["labels"]["size_bytes"] == 80
    assert arrays["labels"]["last_modified"] == filled.get_modify_time("labels")
    assert meta["total_arrays"] == 2 and meta["base_dir"] == filled.path


def test_clone(filled):
    """clone(source, target): an independent copy; KeyError for a missing source,
    ValueError for an existing target."""
    filled.drop("features", [0])
    filled.clone("features", "backup")
    backup = filled.load("backup")
    assert_same_array(backup, filled.load("features"))
    filled.save({"backup": backup * 2})
    assert_same_array(filled.load("features"), backup)  # the original is unchanged
    with pytest.raises(KeyError):
        filled.clone("missing", "x")
    with pytest.raises(ValueError, match="already exists"):
        filled.clone("features", "labels")
    assert "x" not in filled


def test_clone_streams_compressed_and_empty(store, monkeypatch):
    monkeypatch.setattr(numpack._compat07, "CHUNK_BYTES", 64)  # many chunks
    data = np.arange(3000, dtype=np.int64).reshape(1000, 3)
    store.save({"c": data}, compress=True, block_rows=16)
    store.save({"empty": np.zeros((0, 4), np.float32)})
    store.clone("c", "c2")
    store.clone("empty", "empty2")
    assert_same_array(store.load("c2"), data)
    assert store.get_metadata()["arrays"]["c2"]["compression"]["block_rows"] == 16
    assert store.load("empty2").shape == (0, 4)


def test_reset_update_get_io_stats(filled):
    filled.drop("features", [0, 1, 2, 10])
    before = filled.get_io_stats()
    assert before["backend_type"] == filled.backend  # the key 0.7's docs show
    assert before["stats_available"] is False and before["rows_dropped"] == 4
    assert before["arrays"] == 2 and before["nbytes"] == 16 * 10 * 4 + 20 * 4
    filled.update("features")  # physical compaction
    assert filled.get_metadata()["arrays"]["features"]["rows_dropped"] == 0
    assert filled.get_io_stats()["bytes_on_disk"] < before["bytes_on_disk"]
    assert filled.get_shape("features") == (16, 10)
    filled.update("features")  # nothing dropped: a no-op
    filled.reset()
    assert filled.get_member_list() == []


def test_stream_load(filled):
    """stream_load(name, buffer_size=None) yields one row at a time (batches of one row, as
    0.7 does); a buffer_size of at most 0 is a ValueError."""
    rows = list(filled.stream_load("features", buffer_size=None))
    assert len(rows) == 20 and all(r.shape == (1, 10) for r in rows)
    assert_same_array(np.concatenate(rows), filled.load("features"))
    batches = list(filled.stream_load("features", buffer_size=8))
    assert [len(b) for b in batches] == [8, 8, 4]
    features_stream = filled.stream_load("features", buffer_size=5)
    labels_stream = filled.stream_load("labels", buffer_size=5)
    assert len(list(zip(features_stream, labels_stream))) == 4
    for bad in (0, -1):
        with pytest.raises(ValueError):
            filled.stream_load("features", buffer_size=bad)


# -- batch modes ---------------------------------------------------------------------------------


def test_batch_modes_as_documented(filled):
    with filled.batch_mode(memory_limit=1024) as batch:
        assert isinstance(batch, BatchModeContext)
        for _ in range(3):
            arr = filled.load("features")
            arr *= 2
            filled.save({"features": arr})
    assert_same_array(filled.load("features"), np.arange(200, dtype=np.float32).reshape(20, 10) * 8)
    with filled.writable_batch_mode() as wb:
        assert isinstance(wb, WritableBatchMode)
        arr = wb.load("labels")
        assert not arr.flags["OWNDATA"] and arr.flags["WRITEABLE"]
        arr *= 2
        wb.save({"labels": arr})  # a no-op for the map
    assert_same_array(filled.load("labels"), np.arange(20, dtype=np.int32) * 2)


# -- LazyArray -----------------------------------------------------------------------------------


@pytest.fixture
def lazy(filled):
    return filled.load("features", lazy=True)


FEATURES = np.arange(200, dtype=np.float32).reshape(20, 10)


def test_lazy_properties_and_indexing(lazy):
    """lazy_array.md and 04_advanced_features "LazyArray API"."""
    assert (lazy.shape, lazy.dtype, lazy.ndim, lazy.size) == ((20, 10), np.float32, 2, 200)
    assert (lazy.nbytes, lazy.itemsize, len(lazy)) == (800, 4, 20)
    assert_same_array(lazy[0], FEATURES[0])
    assert_same_array(lazy[5:10], FEATURES[5:10])
    assert_same_array(lazy[::3], FEATURES[::3])
    assert_same_array(lazy[[0, 10, 19]], FEATURES[[0, 10, 19]])
    assert_same_array(lazy[np.array([1, 5])], FEATURES[[1, 5]])
    mask = np.arange(20) % 3 == 0
    assert_same_array(lazy[mask], FEATURES[mask])
    assert_same_array(lazy[5:10, 2:6], FEATURES[5:10, 2:6])
    assert_same_array(lazy[:, [0, 5]], FEATURES[:, [0, 5]])
    assert_same_array(lazy[::10, :], FEATURES[::10, :])
    assert lazy[0:2].tolist() == FEATURES[0:2].tolist()
    assert [r.tolist() for r in lazy] == FEATURES.tolist()
    assert_same_array(np.asarray(lazy), FEATURES)
    assert np.sum(lazy) == FEATURES.sum()
    assert_same_array(lazy.reshape((40, 5)), FEATURES.reshape(40, 5))
    assert_same_array(lazy.T, FEATURES.T)


def test_lazy_operators(lazy):
    """NumPy's operators read the array and return an ndarray, as in 0.7."""
    f = FEATURES
    for got, want in (
        (lazy + 2, f + 2),
        (2 + lazy, 2 + f),
        (lazy - 1, f - 1),
        (1 - lazy, 1 - f),
        (lazy * 2.5, f * 2.5),
        (lazy / 2, f / 2),
        (1 / (lazy + 1), 1 / (f + 1)),
        (lazy // 3, f // 3),
        (lazy % 3, f % 3),
        (lazy**2, f**2),
        (1.01**lazy, 1.01**f),
        (-lazy, -f),
        (+lazy, +f),
        (lazy > 5, f > 5),
        (lazy >= 5, f >= 5),
        (lazy < 5, f < 5),
        (lazy <= 5, f <= 5),
        (lazy == 5, f == 5),
        (lazy != 5, f != 5),
        (lazy + lazy, f + f),
        (np.arange(10) + lazy, np.arange(10) + f),
        (np.sqrt(lazy**2 + 1), np.sqrt(f**2 + 1)),
    ):
        assert type(got) is np.ndarray
        assert_same_array(got, want)


def test_lazy_integer_operators(store):
    store.save({"i": np.arange(12, dtype=np.int32).reshape(6, 2)})
    lazy, i = store.load("i", lazy=True), np.arange(12, dtype=np.int32).reshape(6, 2)
    for got, want in (
        (lazy & 6, i & 6),
        (6 & lazy, 6 & i),
        (lazy | 1, i | 1),
        (1 | lazy, 1 | i),
        (lazy ^ 3, i ^ 3),
        (3 ^ lazy, 3 ^ i),
        (lazy << 1, i << 1),
        (1 << lazy, 1 << i),
        (lazy >> 1, i >> 1),
        (64 >> lazy, 64 >> i),
        (~lazy, ~i),
    ):
        assert_same_array(got, want)


def test_lazy_augmented_assignment_leaves_the_store(filled):
    lazy = filled.load("features", lazy=True)
    lazy += 1  # binds `lazy` to a new ndarray, as in 0.7
    assert type(lazy) is np.ndarray
    assert_same_array(lazy, FEATURES + 1)
    assert_same_array(filled.load("features"), FEATURES)


def test_lazy_copy_close_and_context(lazy, filled):
    out = lazy.copy()
    assert type(out) is np.ndarray and out.flags["OWNDATA"]
    assert_same_array(out, FEATURES)
    assert hash(lazy) == hash(lazy)  # still hashable
    assert_same_array(copy.deepcopy(lazy)[:], FEATURES)
    with filled.load("labels", lazy=True) as labels:
        first = labels[:3]
    with pytest.raises(StoreClosedError):
        labels[0]
    assert labels.shape == (20,)
    assert_same_array(first, np.arange(3, dtype=np.int32))
    assert not lazy.closed
    lazy.close()
    lazy.close()  # idempotent
    assert lazy.closed
    with pytest.raises(StoreClosedError):
        np.asarray(lazy)
    assert "features" in repr(lazy) and "(closed)" in lazy._repr_html_()


def test_lazy_gather_helpers(lazy, store):
    assert_same_array(lazy.vectorized_gather([3, 0, 3]), FEATURES[[3, 0, 3]])
    assert lazy.vectorized_gather([]).shape == (0, 10)
    rows = lazy.mega_batch_get_rows([5, 1, 2], 2)
    assert len(rows) == 3 and all(r.shape == (10,) for r in rows)
    assert_same_array(np.stack(rows), FEATURES[[5, 1, 2]])
    mask = np.arange(20) % 2 == 1
    for method in (
        lazy.parallel_boolean_index,
        lazy.boolean_index_production,
        lazy.boolean_index_adaptive_algorithm,
        lazy.boolean_index_smart,
        lazy.boolean_index_adaptive,
    ):
        assert_same_array(method(mask), FEATURES[mask])
        assert_same_array(method(list(mask)), FEATURES[mask])
    with pytest.raises(ValueError, match="does not match"):
        lazy.parallel_boolean_index([True, False])
    with pytest.raises(TypeError):
        lazy.parallel_boolean_index([1, 0] * 10)
    with pytest.raises(IndexError):
        lazy.vectorized_gather([20])
    with pytest.raises(ValueError):
        lazy.mega_batch_get_rows([0], 0)
    store.save({"v": np.arange(4)})
    one_d = store.load("v", lazy=True).mega_batch_get_rows([0, 3], 10)
    assert [r.tolist() for r in one_d] == [[0], [3]]  # 1-D rows as arrays of one, as 0.7


def test_lazy_tuning_knobs(lazy):
    """0.7's tuning knobs report what numpack does: one gather strategy, no cache to warm."""
    assert lazy.choose_optimal_algorithm([True] * 20) == "gather"
    assert lazy.intelligent_warmup("sequential") is None
    assert lazy.intelligent_warmup() is None
    with pytest.raises(TypeError):
        lazy.intelligent_warmup(3)
    with pytest.raises(ValueError):
        lazy.choose_optimal_algorithm([True])


# -- the top-level module ------------------------------------------------------------------------


def test_top_level_functions():
    """utilities.md: get_backend_info() and force_cleanup_windows_handles()."""
    info = get_backend_info()
    assert set(info) == {"backend_type", "platform", "is_windows", "version"}
    assert info["backend_type"] in ("rust", "python")
    assert info["version"] == numpack.__version__
    assert info["is_windows"] == (info["platform"] == "Windows")
    assert force_cleanup_windows_handles() is True
