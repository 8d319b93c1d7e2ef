"""The store's basic operations against the NumPy way of doing the same thing.

Every row times numpack (each backend) and a NumPy baseline in the same run, on the same data,
and reports medians and the speed-up `baseline / numpack` (above 1: numpack is faster).
No call fsyncs, numpack or NumPy. Data stays in the page cache (the machine has the memory).

    python benchmarks/bench_store.py                 # 100,000 rows, a quick look
    python benchmarks/bench_store.py --rows 1000000  # the issue's workloads
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import columns, compare, machine, print_table  # noqa: E402

from numpack import NumPack  # noqa: E402

BACKENDS = ("rust", "python")


def available_backends() -> list[str]:
    try:
        from numpack import _core  # noqa: F401
    except ImportError:
        return ["python"]
    return list(BACKENDS)


def workload(rows: int, cols: int, repeat: int, backends: list[str]) -> list[dict]:
    """One table: each op's NumPy baseline and each backend, timed in this run."""
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((rows, cols), dtype=np.float32)
    k_small = min(100, rows)
    k_gather = min(10_000, rows)
    tmp = tempfile.mkdtemp(prefix="npk-bench-")
    npy = os.path.join(tmp, "a.npy")
    np.save(npy, arr)
    stores = {b: NumPack(os.path.join(tmp, b), backend=b) for b in backends}
    durable = {b: NumPack(os.path.join(tmp, b + "-durable"), backend=b, durable=True)
               for b in backends}  # fmt: skip
    for npk in [*stores.values(), *durable.values()]:
        npk.save({"a": arr})
    new_rows = rng.standard_normal((k_small, cols), dtype=np.float32)
    cur = {}  # the random rows of the current call, drawn untimed by `draw`

    def draw():
        cur[k_small] = rng.choice(rows, size=k_small, replace=False)
        cur[k_gather] = rng.integers(0, rows, size=k_gather)
        # Drops shrink the array as the op repeats: draw them from rows that stay in range.
        cur["drop"] = rng.choice(rows // 2, size=min(k_small, rows // 2), replace=False)

    idx = cur.__getitem__

    def npy_replace():
        a = np.load(npy)
        a[idx(k_small)] = new_rows
        np.save(npy, a)

    def memmap_replace():
        m = np.load(npy, mmap_mode="r+")
        m[idx(k_small)] = new_rows
        del m  # unmaps without msync, like numpack's replace without fsync

    def npy_save_fsync():
        with open(npy, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)

    def memmap_replace_msync():
        m = np.load(npy, mmap_mode="r+")
        m[idx(k_small)] = new_rows
        m.flush()  # msync: the rows reach the disk
        del m

    def npy_append():
        np.save(npy, np.concatenate([np.load(npy), new_rows]))

    def npy_drop():
        np.save(npy, np.delete(np.load(npy), idx("drop"), axis=0))

    memmap = np.load(npy, mmap_mode="r")
    ops = [
        (
            "save, durable=True",
            "np.save + fsync of the file and directory",
            npy_save_fsync,
            lambda n: durable[n.backend].save({"a": arr}),
            "whole array, fsync of data, directory and commit record",
            5,
        ),
        (
            "replace 100 rows, durable=True",
            "np.load(mmap_mode='r+') + assign + flush (msync)",
            memmap_replace_msync,
            lambda n: durable[n.backend].replace({"a": new_rows}, idx(k_small)),
            "in place; fsync of undo record, data and commit record",
            10,
        ),
        (
            "save",
            "np.save",
            lambda: np.save(npy, arr),
            lambda n: n.save({"a": arr}),
            "whole array, file created, no fsync",
            5,
        ),
        (
            "load",
            "np.load",
            lambda: np.load(npy),
            lambda n: n.load("a"),
            "into new memory the caller owns",
            5,
        ),
        (
            "lazy open",
            "np.load(mmap_mode='r')",
            lambda: np.load(npy, mmap_mode="r"),
            lambda n: n.load("a", lazy=True),
            "map only, nothing read; store already open",
            50,
        ),
        (
            "replace 100 rows",
            "np.load + assign + np.save",
            npy_replace,
            lambda n: n.replace({"a": new_rows}, idx(k_small)),
            "random rows, in place",
            5,
        ),
        (
            "replace 100 rows",
            "np.load(mmap_mode='r+') + assign + close",
            memmap_replace,
            lambda n: n.replace({"a": new_rows}, idx(k_small)),
            "open, write, close; no msync",
            50,
        ),
        (
            "append 100 rows",
            "np.load + concatenate + np.save",
            npy_append,
            lambda n: n.append({"a": new_rows}),
            "rows added at the end",
            5,
        ),
        (
            "drop 100 rows",
            "np.load + np.delete + np.save",
            npy_drop,
            lambda n: n.drop("a", idx("drop")),
            "random rows",
            5,
        ),
        (
            "getitem 10,000 rows",
            "memmap[idx] (memmap already open)",
            lambda: memmap[idx(k_gather)],
            lambda n: n.getitem("a", idx(k_gather)),
            "random unsorted rows into a new array",
            30,
        ),
    ]
    table = []
    for op, base_name, base_fn, npk_fn, includes, reps in ops:
        fns = {b: (lambda npk=npk, f=npk_fn: f(npk)) for b, npk in stores.items()}
        table.append(
            compare(
                op, base_name, base_fn, fns, includes, max(3, reps * repeat // 5), draw, os.sync
            )
        )
        # The baseline's file and the stores grow or shrink; start each op from the same array.
        np.save(npy, arr)
        memmap = np.load(npy, mmap_mode="r")
        for npk in [*stores.values(), *durable.values()]:
            npk.save({"a": arr})
    for npk in [*stores.values(), *durable.values()]:
        npk.close()
    shutil.rmtree(tmp)
    return table


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--cols", type=int, nargs="+", default=[10, 128])
    p.add_argument("--repeat", type=int, default=5, help="scales the number of timed runs")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None)
    args = p.parse_args(argv)
    backends = args.backends or available_backends()
    print(f"numpack store benchmark: {machine()}; numpy {np.__version__}; backends {backends}")
    for c in args.cols:
        table = workload(args.rows, c, args.repeat, backends)
        mb = args.rows * c * 4 / 1e6
        print_table(f"{args.rows:,} x {c} float32 ({mb:,.0f} MB)", table, columns(backends))


if __name__ == "__main__":
    main()
