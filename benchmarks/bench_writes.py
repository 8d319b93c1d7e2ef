"""The write path (format v2): what small writes cost as the store grows, transactions, batch
modes, readers catching up, and per-call overhead of small reads.

Every row is timed in this run against the baseline it names, medians of interleaved rounds.

    python benchmarks/bench_writes.py                    # small stores, a quick look
    python benchmarks/bench_writes.py --rows 1000000     # the issue's workloads
    python benchmarks/bench_writes.py --peer /tmp/peer7-venv/bin/python   # + NumPack 0.7

`--peer` runs the same small calls on the public NumPack 0.7 (built by
../shared/tools/build_peer.sh into its own virtualenv; both packages are named numpack, so it
runs in a subprocess) and reports its medians beside ours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt_time, machine, medians, print_table  # noqa: E402

from numpack import NumPack  # noqa: E402

K = 100  # rows per small call


def stores(tmp: str, backend: str, rows: int) -> dict[str, NumPack]:
    """The four stores of the issue: one array; 1,000 arrays; an array with as many dropped
    rows as it has rows; a compressed array of `rows // 10` blocks (10 rows a block)."""
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((rows, 10), dtype=np.float32)
    out = {}
    one = out["one array"] = NumPack(os.path.join(tmp, backend, "one"), backend=backend)
    one.save({"a": arr})
    many = out["1,000 arrays"] = NumPack(os.path.join(tmp, backend, "many"), backend=backend)
    with many.transaction():
        many.save({f"x{i}": arr[:10] for i in range(999)})
        many.save({"a": arr})
    dropped = out["1,000,000 dropped rows" if rows == 1_000_000 else f"{rows:,} dropped rows"] = (
        NumPack(os.path.join(tmp, backend, "dropped"), backend=backend)
    )
    dropped.save({"a": np.concatenate([arr, arr])})
    dropped.drop("a", np.arange(0, 2 * rows, 2))
    # Compressed stores pay for encoding the blocks a call touches (10 rows each here); a
    # small one of the same blocks shows what the block count itself costs.
    n_small = min(rows, 20_000)
    small = out[f"compressed, {n_small // 10:,} blocks"] = NumPack(
        os.path.join(tmp, backend, "comp-small"), backend=backend
    )
    small.save({"a": arr[:n_small]}, compress=True, block_rows=10)
    comp = out[f"compressed, {rows // 10:,} blocks"] = NumPack(
        os.path.join(tmp, backend, "comp"), backend=backend
    )
    comp.save({"a": arr}, compress=True, block_rows=10)
    return out


def scaling(rows: int, repeat: int, backends: list[str], tmp: str) -> list[dict]:
    """append / replace / drop of K rows (drawn from the first 5,000) in each store, as a ratio
    of the one-array store (the large compressed store: of the small one)."""
    rng = np.random.default_rng(1)
    new = rng.standard_normal((K, 10), dtype=np.float32)
    table = []
    for backend in backends:
        s = stores(tmp, backend, rows)
        for op in ("append", "replace", "drop"):

            def call(npk, op=op):
                if op == "append":
                    npk.append({"a": new})
                elif op == "replace":
                    npk.replace({"a": new}, rng.choice(5000, K, replace=False))
                else:
                    npk.drop("a", rng.choice(5000, K, replace=False))

            t = medians({name: (lambda n=n: call(n)) for name, n in s.items()}, 40 * repeat)
            row = {"op": f"{op} {K} rows", "backend": backend}
            small = next(n for n in t if n.startswith("compressed"))
            for name, v in t.items():
                base = small if name.startswith("compressed") else "one array"
                same = name == base
                row[name] = fmt_time(v) + ("" if same else f" ({v / t[base]:.2f}x)")
            table.append(row)
        for n in s.values():
            n.close()
    return table


def small_calls(rows: int, repeat: int, backends: list[str], tmp: str) -> list[dict]:
    """Small calls at `rows` x 10 float32 against what a NumPy user does instead."""
    rng = np.random.default_rng(2)
    arr = rng.standard_normal((rows, 10), dtype=np.float32)
    new = rng.standard_normal((K, 10), dtype=np.float32)
    npy = os.path.join(tmp, "a.npy")
    np.save(npy, arr)
    mm = np.load(npy, mmap_mode="r")
    rw = np.load(npy, mmap_mode="r+")
    npks = {}
    for b in backends:
        npks[b] = NumPack(os.path.join(tmp, "small-" + b), backend=b)
        npks[b].save({"a": arr})
    idx = {"k": rng.choice(rows, K, replace=False)}

    def draw():
        idx["k"] = rng.choice(rows, K, replace=False)

    def idle():
        time.sleep(0.005)

    def npy_append():
        np.save(npy, np.concatenate([np.load(npy), new]))

    def memmap_replace():
        m = np.load(npy, mmap_mode="r+")
        m[idx["k"]] = new
        del m

    def row(op, base_name, base, fn, reps, setup=draw):
        t = medians({"baseline": base, **{b: (lambda b=b: fn(npks[b])) for b in npks}}, reps,
                    setup)  # fmt: skip
        out = {"op": op, "baseline": base_name, "baseline median": fmt_time(t["baseline"])}
        for b in npks:
            out[b] = f"{fmt_time(t[b])} ({t['baseline'] / t[b]:.2f}x)"
        return out

    table = [
        row("append 100 rows", "np.load + concatenate + np.save", npy_append,
            lambda n: n.append({"a": new}), 10 * repeat),
        row("replace 100 rows", "np.load(mmap_mode='r+') + assign + close", memmap_replace,
            lambda n: n.replace({"a": new}, idx["k"]), 40 * repeat),
        row("getitem 100 random rows, hot", "open np.memmap[idx]", lambda: mm[idx["k"]],
            lambda n: n.getitem("a", idx["k"]), 200 * repeat),
        row("getitem 100 random rows, after 5 ms idle", "open np.memmap[idx]",
            lambda: mm[idx["k"]], lambda n: n.getitem("a", idx["k"]), 40 * repeat,
            lambda: (draw(), idle())),
        row("lazy open", "np.load(mmap_mode='r')", lambda: np.load(npy, mmap_mode="r"),
            lambda n: n.load("a", lazy=True), 200 * repeat),
    ]  # fmt: skip

    # 1,000 one-row replaces: separate calls against one transaction.
    one_rows = rng.integers(0, rows, 1000)
    one_new = rng.standard_normal((1000, 1, 10), dtype=np.float32)

    def separate(n):
        for i in range(1000):
            n.replace({"a": one_new[i]}, [int(one_rows[i])])

    def transaction(n):
        with n.transaction():
            separate(n)

    for b, n in npks.items():
        t = medians({"separate": lambda n=n: separate(n), "txn": lambda n=n: transaction(n)},
                    max(3, repeat))  # fmt: skip
        table.append({
            "op": "1,000 one-row replaces in one transaction", "backend": b,
            "baseline": "the same 1,000 calls made separately",
            "baseline median": fmt_time(t["separate"]),
            b: f"{fmt_time(t['txn'])} ({t['separate'] / t['txn']:.2f}x)",
        })  # fmt: skip

    # Row assignments through writable_batch_mode against an open np.memmap r+.
    assign_rows = rng.integers(0, rows, 10_000)
    values = rng.standard_normal((10_000, 10), dtype=np.float32)

    def assign(m):
        for i in range(len(assign_rows)):
            m[assign_rows[i]] = values[i]

    for b, n in npks.items():
        with n.writable_batch_mode() as wb:
            m = wb.load("a")
            t = medians({"memmap": lambda: assign(rw), "wb": lambda m=m: assign(m)}, repeat)
        table.append({
            "op": "10,000 row assignments, writable_batch_mode", "backend": b,
            "baseline": "the same on an open np.memmap r+",
            "baseline median": fmt_time(t["memmap"]),
            b: f"{fmt_time(t['wb'])} ({t['memmap'] / t['wb']:.2f}x)",
        })  # fmt: skip
    for n in npks.values():
        n.close()
    return table


def catch_up(repeat: int, backends: list[str], tmp: str) -> list[dict]:
    """A reader's first call after another writer appended 100 rows: a compressed array of
    100,000 blocks against one of a single block. The writer is another NumPack object (its
    own store state, as another process has), so the reader learns of it from the files."""
    table = []
    arr = np.arange(1_000_000, dtype=np.int64).reshape(-1, 10)
    new = np.arange(K * 10, dtype=np.int64).reshape(K, 10)
    for b in backends:
        pairs = {}
        for label, block_rows in (("100,000 blocks", 1), ("1 block", 100_000)):
            path = os.path.join(tmp, f"catch-{b}-{block_rows}")
            w = NumPack(path, backend=b)
            w.save({"a": arr}, compress=True, block_rows=block_rows)
            r = NumPack(path, backend=b)
            r.get_shape("a")
            pairs[label] = (w, r)
        t = medians(
            {label: (lambda r=r: r.get_shape("a")) for label, (w, r) in pairs.items()},
            20 * repeat,
            setup=lambda pairs=pairs: [w.append({"a": new}) for w, _ in pairs.values()],
        )
        table.append({
            "op": "reader's first call after a 100-row append", "backend": b,
            "1 block": fmt_time(t["1 block"]),
            "100,000 blocks": f"{fmt_time(t['100,000 blocks'])} "
                              f"({t['100,000 blocks'] / t['1 block']:.2f}x)",
        })  # fmt: skip
        for w, r in pairs.values():
            w.close()
            r.close()
    return table


PEER = r"""
import json, os, sys, time, statistics
import numpy as np
from numpack import NumPack
rows, repeat, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(2)
arr = rng.standard_normal((rows, 10), dtype=np.float32)
new = rng.standard_normal((100, 10), dtype=np.float32)
npk = NumPack(path, drop_if_exists=True)
npk.open()
npk.save({"a": arr})
def timed(fn, reps, setup=None):
    t = []
    for _ in range(reps):
        if setup: setup()
        t0 = time.perf_counter(); fn(); t.append(time.perf_counter() - t0)
    return statistics.median(t)
k = {}
draw = lambda: k.__setitem__("k", rng.choice(rows // 2, 100, replace=False))
out = {
    "append 100 rows": timed(lambda: npk.append({"a": new}), 40 * repeat),
    "replace 100 rows": timed(lambda: npk.replace({"a": new}, k["k"]), 40 * repeat, draw),
    "drop 100 rows": timed(lambda: npk.drop("a", k["k"]), 40 * repeat, draw),
    "getitem 100 random rows, hot": timed(lambda: npk.getitem("a", k["k"]), 200 * repeat, draw),
    "getitem 100 random rows, after 5 ms idle": timed(lambda: npk.getitem("a", k["k"]),
        40 * repeat, lambda: (draw(), time.sleep(0.005))),
    "lazy open": timed(lambda: npk.load("a", lazy=True), 200 * repeat),
}
npk.close()
print(json.dumps(out))
"""


def _peer_ops(n: NumPack, new: np.ndarray, k: dict, draw, repeat: int) -> dict[str, float]:
    """The calls of PEER on one of our stores: their medians."""

    def idle_draw():
        draw()
        time.sleep(0.005)

    calls = {
        "append 100 rows": (lambda: n.append({"a": new}), 40, None),
        "replace 100 rows": (lambda: n.replace({"a": new}, k["k"]), 40, draw),
        "drop 100 rows": (lambda: n.drop("a", k["k"]), 40, draw),
        "getitem 100 random rows, hot": (lambda: n.getitem("a", k["k"]), 200, draw),
        "getitem 100 random rows, after 5 ms idle": (lambda: n.getitem("a", k["k"]), 40,
                                                     idle_draw),
        "lazy open": (lambda: n.load("a", lazy=True), 200, None),
    }  # fmt: skip
    return {
        op: medians({"x": fn}, reps * repeat, setup)["x"] for op, (fn, reps, setup) in calls.items()
    }


def peer(python: str, rows: int, repeat: int, backends: list[str], tmp: str) -> list[dict]:
    """The same small calls on NumPack 0.7 (a subprocess) and on numpack (this process)."""
    # From another directory: `-c` puts the working directory, maybe this repository's
    # numpack, first on the path.
    res = subprocess.run([python, "-c", PEER, str(rows), str(repeat), os.path.join(tmp, "peer")],
                         capture_output=True, text=True, check=True, cwd=tmp)  # fmt: skip
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(2)
    arr = rng.standard_normal((rows, 10), dtype=np.float32)
    new = rng.standard_normal((K, 10), dtype=np.float32)
    k = {}

    def draw():
        k["k"] = rng.choice(rows // 2, K, replace=False)

    table = []
    for b in backends:
        n = NumPack(os.path.join(tmp, "mine-" + b), backend=b)
        n.save({"a": arr})
        ours = _peer_ops(n, new, k, draw, repeat)
        n.close()
        for op, t in ours.items():
            table.append({
                "op": op, "backend": b, "NumPack 0.7": fmt_time(theirs[op]),
                "numpack": f"{fmt_time(t)} ({theirs[op] / t:.2f}x)",
            })  # fmt: skip
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=1, help="scales the number of timed runs")
    p.add_argument("--backends", nargs="+", choices=("rust", "python"), default=["rust", "python"])
    p.add_argument("--peer", help="python of a virtualenv with NumPack 0.7 (build_peer.sh)")
    args = p.parse_args(argv)
    print(f"numpack write-path benchmark: {machine()}; numpy {np.__version__}")
    tmp = tempfile.mkdtemp(prefix="npk-writes-")
    try:
        bs, r, rep = args.backends, args.rows, args.repeat
        table = scaling(r, rep, bs, tmp)
        title = (f"Small writes as the store grows ({K} random rows; ratio to the one-array "
                 "store, compressed ones to the small compressed one)")  # fmt: skip
        print_table(title, table, list(table[0]))
        table = small_calls(r, rep, bs, tmp)
        cols = ["op", "baseline", "baseline median", *bs]
        print_table(f"Small calls at {r:,} x 10 float32 (speed-up over the baseline)", table, cols)
        table = catch_up(rep, bs, tmp)
        print_table("Readers catching up (ratio to the one-block array)", table, list(table[0]))
        if args.peer:
            table = peer(args.peer, r, rep, bs, tmp)
            print_table(f"NumPack 0.7 side by side at {r:,} x 10 float32 (speed-up over 0.7)",
                        table, list(table[0]))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
