"""Reading without loading: gathers, np.inner on a LazyArray, streaming, memory growth.

Each row times numpack (each backend) and a NumPy baseline in the same run and reports medians
and the speed-up `baseline / numpack` (above 1: numpack is faster). Files stay in the page cache.

    python benchmarks/bench_lazy.py                  # 100,000 x 128 float32, a quick look
    python benchmarks/bench_lazy.py --rows 1000000   # the issue's 512 MB workload
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import columns, compare, machine, print_table  # noqa: E402
from bench_store import BACKENDS, available_backends  # noqa: E402

from numpack import NumPack  # noqa: E402

# Run in a fresh interpreter: RssAnon growth while np.inner reads a LazyArray.
_RSS_CHILD = r"""
import json, sys, numpy as np
from numpack import NumPack
def rss_anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))
path, backend, cols = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = np.ones(cols, dtype=np.float32)
npk = NumPack(path, backend=backend)
lazy = npk.load("a", lazy=True)
before = rss_anon()
r = np.inner(q, lazy)
print(json.dumps({"growth": rss_anon() - before, "nbytes": lazy.nbytes}))
"""


def rss_growth(path: str, backend: str, cols: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, path, backend, str(cols)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def run(rows: int, cols: int, repeat: int, backends: list[str]) -> list[dict]:
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((rows, cols), dtype=np.float32)
    tmp = tempfile.mkdtemp(prefix="npk-bench-")
    npy = os.path.join(tmp, "a.npy")
    np.save(npy, arr)
    memmap = np.load(npy, mmap_mode="r")
    stores = {b: NumPack(os.path.join(tmp, b), backend=b) for b in backends}
    for npk in stores.values():
        npk.save({"a": arr})
    lazies = {b: npk.load("a", lazy=True) for b, npk in stores.items()}
    q = rng.standard_normal(cols, dtype=np.float32)
    table = []

    def add(op, base_name, base_fn, npk_fn, includes, reps, setup=None):
        fns = {b: (lambda b=b: npk_fn(b)) for b in backends}
        table.append(
            compare(op, base_name, base_fn, fns, includes, max(3, reps * repeat // 5), setup)
        )

    idx = {}
    for k in (100, 10_000, 1_000_000):
        k = min(k, rows)
        setup = lambda k=k: idx.__setitem__("i", rng.integers(0, rows, size=k))  # noqa: E731
        reps = 50 if k <= 10_000 else 5
        for base_name, base in (("in-memory arr[idx]", arr), ("open np.memmap[idx]", memmap)):
            add(
                f"getitem {k:,} random rows",
                base_name,
                lambda base=base: base[idx["i"]],
                lambda b: stores[b].getitem("a", idx["i"]),
                "unsorted, repeats allowed",
                reps,
                setup,
            )
    add(
        "np.inner(q, lazy)",
        "np.inner(q, arr in memory)",
        lambda: np.inner(q, arr),
        lambda b: np.inner(q, lazies[b]),
        "one query vector against every row",
        10,
    )
    add(
        "stream_load full pass",
        "np.load of the .npy",
        lambda: np.load(npy),
        lambda b: [x.sum() for x in stores[b].stream_load("a", buffer_size=65_536)],
        "batches of 65,536 rows, each summed",
        5,
    )
    for npk in stores.values():
        npk.close()
    for b in backends:
        g = rss_growth(os.path.join(tmp, b), b, cols)
        table.append(
            {
                "operation": f"RssAnon growth during np.inner(q, lazy), {b}",
                "baseline": "array size",
                "baseline median": f"{g['nbytes'] / 1e6:.0f} MB",
                f"{b} median": f"{g['growth'] / 1e6:.1f} MB",
                f"{b} speed-up": f"{100 * g['growth'] / g['nbytes']:.1f}% of the array",
                "includes": "fresh subprocess, anonymous memory only",
            }
        )
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--cols", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5, help="scales the number of timed runs")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None)
    args = p.parse_args(argv)
    backends = args.backends or available_backends()
    print(f"numpack lazy-read benchmark: {machine()}; numpy {np.__version__}; backends {backends}")
    table = run(args.rows, args.cols, args.repeat, backends)
    mb = args.rows * args.cols * 4 / 1e6
    print_table(f"{args.rows:,} x {args.cols} float32 ({mb:,.0f} MB)", table, columns(backends))


if __name__ == "__main__":
    main()
