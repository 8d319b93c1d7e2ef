"""Exact top-k search (`numpack.top_k`) against what a user would run instead.

Each row times `numpack.top_k` on a LazyArray of a store and a baseline in the same run, on
the same float32 data (fixed seed), medians of interleaved rounds, and reports numpack's time
as a multiple of the baseline's ("numpack / baseline": below 1, numpack is faster) beside
issue 14's target. Baselines work on the array already in memory; numpack reads the store's
file through its mapping (in the page cache) or, compressed, decodes it block by block.

- faiss: `IndexFlatIP.search` (exact inner product) on an index holding the in-memory array,
  when faiss-cpu is installed (the `bench` extra);
- NumPack 0.7: `VectorEngine.multi_query_top_k` on the in-memory array, in its own virtualenv
  and process (both packages are named numpack): `--peer PYTHON`, by default the one
  `../shared/tools/build_peer.sh` builds, when present; timed in that process, same invocation;
- memory: the peak growth of anonymous memory (RssAnon, polled by this process from
  /proc/PID/status) while a fresh process runs one search, after a warm-up search on a small
  array (so the BLAS library's one-time buffers are not counted).

    python benchmarks/bench_search.py                   # 100,000 x 128 float32, a quick look
    python benchmarks/bench_search.py --rows 1000000    # the issue's 512 MB workload
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt_time, machine, medians, print_table  # noqa: E402
from bench_store import BACKENDS  # noqa: E402

from numpack import NumPack, top_k  # noqa: E402

try:
    import faiss
except ImportError:  # the bench extra installs it
    faiss = None

PEER_PYTHON = "/tmp/peer7-venv/bin/python"  # where ../shared/tools/build_peer.sh puts it
COLUMNS = [
    "operation",
    "baseline",
    "baseline median",
    "numpack median",
    "numpack / baseline",
    "issue 14's target",
    "includes",
]

# Runs in NumPack 0.7's virtualenv: one multi_query_top_k on the in-memory array per line read,
# so this process times it in the same interleaved rounds as the others.
_PEER_CHILD = r"""
import sys
import numpy as np
from numpack.vector_engine import VectorEngine
x, q, k, engine = np.load(sys.argv[1]), np.load(sys.argv[2]), int(sys.argv[3]), VectorEngine()
engine.multi_query_top_k(q, x, "dot", k)
print("ready", flush=True)
for _ in sys.stdin:
    engine.multi_query_top_k(q, x, "dot", k)
    print("done", flush=True)
"""

# Runs in a fresh interpreter: one search, started when this process says so.
_MEMORY_CHILD = r"""
import sys, numpy as np
from numpack import NumPack, top_k
path, backend, name, n_queries = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lazy = NumPack(path, backend=backend).load(name, lazy=True)
q = np.ones((n_queries, lazy.shape[1]), dtype=np.float32)
top_k(q, np.ones((1000, lazy.shape[1]), dtype=np.float32), 10)  # BLAS allocates its buffers
print("ready", flush=True)
sys.stdin.readline()
top_k(q, lazy, 10)
"""


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def memory_growth(path: str, backend: str, name: str, n_queries: int) -> int:
    """Peak RssAnon growth, in bytes, of a fresh process during one search."""
    child = subprocess.Popen(
        [sys.executable, "-c", _MEMORY_CHILD, path, backend, name, str(n_queries)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    before = peak = rss_anon(child.pid)
    child.stdin.write("go\n")
    child.stdin.flush()
    while child.poll() is None:
        try:
            peak = max(peak, rss_anon(child.pid))
        except (OSError, StopIteration):  # exiting: the search is over
            break
        time.sleep(0.0002)
    if child.wait() != 0:
        raise RuntimeError("the memory-measuring process failed")
    return peak - before


class Peer:
    """NumPack 0.7's multi_query_top_k in its own process; calling it runs one search there."""

    def __init__(self, python: str, x_path: str, q_path: str, k: int) -> None:
        self.proc = subprocess.Popen(
            [python, "-c", _PEER_CHILD, x_path, q_path, str(k)],
            cwd=os.path.dirname(x_path),  # not this repository, whose numpack would shadow 0.7's
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("NumPack 0.7's process failed to start")

    def __call__(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def verdict(value: float, target: float | None, fmt: str = "{}x") -> str:
    if target is None:
        return ""
    return f"at most {fmt.format(target)}: " + ("met" if value <= target else "MISSED")


def row(op: str, base_name: str, base_t: float, t: float, target, includes: str) -> dict:
    """A table row: numpack's median as a multiple of the baseline's, against the target."""
    return {
        "operation": op,
        "baseline": base_name,
        "baseline median": fmt_time(base_t),
        "numpack median": fmt_time(t),
        "numpack / baseline": f"{t / base_t:.2f}x",
        "issue 14's target": verdict(t / base_t, target),
        "includes": includes,
    }


def run(rows: int, cols: int, n_queries: int, k: int, repeat: int, backend: str, peer: str):
    """The table of one backend: timed rows, then memory rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    q1 = rng.standard_normal(cols, dtype=np.float32)
    qs = rng.standard_normal((n_queries, cols), dtype=np.float32)
    tmp = tempfile.mkdtemp(prefix="npk-bench-search-")
    path = os.path.join(tmp, "store")
    with NumPack(path, backend=backend) as npk:
        npk.save({"x": x})
        npk.save({"z": x}, compress=True)
        lazy, packed = npk.load("x", lazy=True), npk.load("z", lazy=True)
        table = timed_rows(x, lazy, packed, q1, qs, k, repeat, backend, peer, tmp)
    table += memory_rows(path, backend, n_queries, x.nbytes)
    shutil.rmtree(tmp)
    return table


def timed_rows(x, lazy, packed, q1, qs, k, repeat, b, peer_python, tmp) -> list[dict]:
    fast, slow = max(5, 3 * repeat), max(3, repeat)
    one, batch = f"top_k, 1 query, k={k} ({b})", f"top_k, {len(qs)} queries, k={k} ({b})"
    sorted_note = "numpack: sorted top k; baseline: unsorted top k"
    table = []

    def pair(op, base_name, base_fn, fn, reps, target, includes, extra=None):
        t = medians({"baseline": base_fn, "numpack": fn, **(extra or {})}, reps)
        table.append(row(op, base_name, t["baseline"], t["numpack"], target, includes))
        return t

    pair(
        one,
        f"np.argpartition(-np.inner(q, x), {k}), x in memory",
        lambda: np.argpartition(-np.inner(q1, x), k),
        lambda: top_k(q1, lazy, k),
        fast,
        1.2,
        sorted_note,
    )
    extra = {}
    if faiss is not None:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        extra["faiss"] = lambda: index.search(qs, k)
    peer = None
    if os.path.exists(peer_python):
        x_path, q_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "q.npy")
        np.save(x_path, x)
        np.save(q_path, qs)
        peer = extra["peer"] = Peer(peer_python, x_path, q_path, k)
    t = pair(
        batch,
        f"np.argpartition(-(Q @ x.T), {k}, axis=1), x in memory",
        lambda: np.argpartition(-(qs @ x.T), k, axis=1),
        lambda: top_k(qs, lazy, k),
        slow,
        1.2,
        sorted_note,
        extra,
    )
    if faiss is not None:
        threads = f"faiss: index built untimed, {faiss.omp_get_max_threads()} OpenMP threads"
        table.append(row(batch, "faiss IndexFlatIP.search", t["faiss"], t["numpack"], 1.0, threads))
    if peer is not None:
        peer.close()
        peer_name = "NumPack 0.7 VectorEngine.multi_query_top_k, x in memory"
        includes = "0.7 in a process of its own, called through a pipe in the same rounds"
        table.append(row(batch, peer_name, t["peer"], t["numpack"], 1.0, includes))
    for queries, op, reps in ((q1, one, fast), (qs, batch, slow)):
        pair(
            op.replace("top_k", "top_k cosine"),
            "top_k dot, same array",
            lambda queries=queries: top_k(queries, lazy, k),
            lambda queries=queries: top_k(queries, lazy, k, "cosine"),
            reps,
            1.3,
            "rows not normalised: cosine also computes each row's norm",
        )
    pair(
        one.replace("top_k", "top_k compressed"),
        "lazy[:] of the compressed array (one full decode)",
        lambda: packed[:],
        lambda: top_k(q1, packed, k),
        slow,
        1.2,
        "zstd level 3, default blocks; both decode every block",
    )
    return table


def memory_rows(path: str, b: str, n_queries: int, nbytes: int) -> list[dict]:
    table = []
    for name, kind, n_q, target in [
        ("x", "raw", 1, 0.05),
        ("z", "compressed", 1, None),
        ("x", "raw", n_queries, None),
    ]:
        grew = memory_growth(path, b, name, n_q)
        queries = "1 query" if n_q == 1 else f"{n_q} queries"
        table.append(
            {
                "operation": f"anonymous memory growth, {kind}, {queries} ({b})",
                "baseline": "array size",
                "baseline median": f"{nbytes / 1e6:.0f} MB",
                "numpack median": f"{grew / 1e6:.1f} MB",
                "numpack / baseline": f"{100 * grew / nbytes:.1f}%",
                "issue 14's target": verdict(grew / nbytes, target, "{:.0%}"),
                "includes": "peak RssAnon of a fresh process during the search, polled",
            }
        )
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--cols", type=int, default=128)
    p.add_argument("--queries", type=int, default=64, help="the batch's size")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5, help="scales the number of timed rounds")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=["rust"])
    p.add_argument("--peer", default=PEER_PYTHON, help="NumPack 0.7's python (skipped if absent)")
    args = p.parse_args(argv)
    faiss_version = getattr(faiss, "__version__", "not installed")
    print(f"numpack search benchmark: {machine()}; numpy {np.__version__}; faiss {faiss_version}")
    for b in args.backends:
        table = run(args.rows, args.cols, args.queries, args.k, args.repeat, b, args.peer)
        mb = args.rows * args.cols * 4 / 1e6
        print_table(f"{args.rows:,} x {args.cols} float32 ({mb:,.0f} MB), {b}", table, COLUMNS)


if __name__ == "__main__":
    main()
