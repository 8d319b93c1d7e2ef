"""The operations of the crash test (test_crash.py), shared by the writer process and the checker,
and the fork server that starts the processes the checker kills.

`plan(seed, i, model, prefer)` picks operation `i` from the store's state (a dict of `Arr`);
`apply` gives the state after it. Both sides compute the same plan from the same state (and the
same `prefer`, the kind of call the checker wants to kill next), so the checker knows what the
writer was doing when it was killed.

The workload: seven arrays of six dtypes (f4, i8, u1, c8, f2, f8; noise, or numbers for every
filter: decimal prices, multiples of 100), each saved raw or compressed (a
save can switch an array between the two), appended to (two arrays at once, raw and compressed
in one commit), replaced in place (raw: undo records first) or by new blocks (compressed),
rows dropped, arrays dropped, compacted, the store reset, and transactions of several of these
calls. `big` (rows of 256 bytes, always raw) takes replaces of 500 to 4,000 rows: their undo
records make the log outgrow 1 MiB every few calls, so the log is folded into a new snapshot
often.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import NamedTuple

import numpy as np

# name: (dtype, row shape, most rows a save writes, chance that a save compresses it)
SPECS = {
    "a": ("<f4", (16,), 3000, 0.3),
    "b": ("<i8", (4,), 2000, 0.4),
    "c": ("|u1", (32,), 4000, 0.8),
    "d": ("<c8", (3,), 2000, 0.5),
    "e": ("<f2", (8,), 3000, 0.4),
    "p": ("<f8", (4,), 3000, 0.6),
    "big": ("<f4", (64,), 12000, 0.0),
}
NAMES = tuple(SPECS)

# The calls a plan picks from, and how often (a transaction holds 2 to 6 of the others).
CALLS = ("save", "append", "replace", "drop_rows", "drop", "compact", "reset", "transaction")
WEIGHTS = np.array([12, 12, 24, 9, 5, 12, 1, 25], float)
TXN_CALLS = ("save", "append", "replace", "drop_rows", "drop", "compact")
TXN_WEIGHTS = np.array([12, 14, 30, 10, 4, 6], float)

# Where a kill can land, as the checker counts it.
KINDS = (
    "save",
    "append",
    "replace-raw",
    "replace-compressed",
    "drop",
    "compact",
    "transaction",
)


class Arr(NamedTuple):
    values: np.ndarray
    compressed: bool


class Op(NamedTuple):
    kind: str  # one of KINDS
    call: str  # one of CALLS
    args: tuple


def _rows(rng, name: str, n: int) -> np.ndarray:
    """`n` rows for array `name`: noise, or numbers that compress well: small multiples of
    100 (the gcd filter's kind), prices in cents (the decimal filter's), small numbers."""
    dtype, row, _, _ = SPECS[name]
    shape = (n, *row)
    dt = np.dtype(dtype)
    compressible = rng.random() < 0.5
    if dt.kind in "iu":
        if compressible:
            return (rng.integers(0, 4, shape) * (100 if dt.itemsize > 1 else 1)).astype(dt)
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    if compressible and dt == np.float64:
        return np.round(100 + 0.01 * rng.integers(-300, 300, shape), 2)
    if compressible:
        return rng.integers(-3, 4, shape).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def plan(seed: int, i: int, model: dict, prefer: str | None = None) -> Op:
    """Call `i`. With `prefer` (a kind, "fold" or "undo window": what the checker wants to
    kill next) more often a call of that kind, or one that logs many bytes of undo records."""
    rng = np.random.default_rng([seed, i])
    call = str(rng.choice(CALLS, p=WEIGHTS / WEIGHTS.sum()))
    if prefer is not None and rng.random() < 0.5:
        call = PREFER[prefer]
        if call == "drop_rows" and rng.random() < 0.3:
            call = "drop"
    if call != "transaction":
        return _simple(rng, model, call, prefer)
    ops, m = [], model
    for _ in range(int(rng.integers(2, 7))):
        op = _simple(rng, m, str(rng.choice(TXN_CALLS, p=TXN_WEIGHTS / TXN_WEIGHTS.sum())))
        ops.append(op)
        m = apply(op, m)
    return Op("transaction", "transaction", tuple(ops))


PREFER = {
    "save": "save",
    "append": "append",
    "replace-raw": "replace",
    "replace-compressed": "replace",
    "drop": "drop_rows",
    "compact": "compact",
    "transaction": "transaction",
    "fold": "replace",
    "undo window": "replace",
}


def _pick(rng, model: dict, big: float = 0.0, compressed: bool | None = None) -> str | None:
    """An existing array with rows (`big` with chance `big` when it has), or None; only
    compressed ones, or raw ones, when `compressed` says so and there are some."""
    names = [n for n in model if len(model[n].values)]
    if compressed is not None:
        names = [n for n in names if model[n].compressed == compressed] or names
    if not names:
        return None
    if "big" in names and rng.random() < big:
        return "big"
    return names[int(rng.integers(len(names)))]


def _simple(rng, model: dict, call: str, prefer: str | None = None) -> Op:
    if call == "replace":
        if prefer in ("replace-raw", "replace-compressed"):
            name = _pick(rng, model, compressed=prefer == "replace-compressed")
        else:
            name = _pick(rng, model, big=0.9 if prefer in ("fold", "undo window") else 0.35)
        if name is None:
            call = "append"
        else:
            n = len(model[name].values)
            names = [name]
            other = _pick(rng, model)
            if other is not None and other != name and rng.random() < 0.2:
                names.append(other)  # one call, maybe a raw and a compressed array at once
                n = min(n, len(model[other].values))
            most = 4000 if name == "big" else 500
            count = int(rng.integers(1, min(n, most) + 1))
            if name == "big" and n >= 500:
                count = max(count, 500)
            idx = rng.integers(0, n, count)  # repeated rows too: the last one wins
            values = {k: _rows(rng, k, count) for k in names}
            raw = any(not model[k].compressed for k in names)
            return Op("replace-raw" if raw else "replace-compressed", "replace", (values, idx))
    if call in ("drop_rows", "drop", "reset", "compact") and not model:
        call = "save"
    if call == "drop_rows":
        name = _pick(rng, model)
        if name is None:
            call = "append"
        else:
            n = len(model[name].values)
            count = n if rng.random() < 0.05 else int(rng.integers(1, max(2, n // 4)))
            idx = rng.choice(n, size=count, replace=False)
            return Op("drop", "drop_rows", (name, idx))
    if call == "drop":
        names = list(model)
        k = min(len(names), int(rng.integers(1, 3)))
        return Op("drop", "drop", (sorted(rng.choice(names, k, replace=False).tolist()),))
    if call == "reset":
        return Op("drop", "reset", ())
    if call == "compact":
        if rng.random() < 0.6:
            return Op("compact", "compact", (None,))
        return Op("compact", "compact", ([str(rng.choice(list(model)))],))
    if call == "append":
        k = int(rng.integers(1, 3))
        names = rng.choice(NAMES, k, replace=False).tolist()
        rows = {}
        for name in names:
            most = 2000 if name == "big" else SPECS[name][2] // 4
            rows[name] = _rows(rng, name, int(rng.integers(1, most)))
        return Op("append", "append", (rows,))
    # save: one to three arrays, all raw or all compressed (one call takes one setting)
    k = int(rng.integers(1, 4))
    names = rng.choice(NAMES, k, replace=False).tolist()
    compress = bool(rng.random() < SPECS[names[0]][3])
    if compress and "big" in names:
        names.remove("big")  # kept raw: compressing it in Python takes too long
    block_rows = [None, 16, 64, 256][int(rng.integers(4))] if compress else None
    arrays = {}
    for name in names:
        low = 3000 if name == "big" else 0
        arrays[name] = _rows(rng, name, int(rng.integers(low, SPECS[name][2] + 1)))
    return Op("save", "save", (arrays, compress, block_rows))


def apply(op: Op, model: dict) -> dict:
    model = dict(model)  # a name keeps its place when it is saved again, as in the store
    call, args = op.call, op.args
    if call == "save":
        arrays, compress, _ = args
        for name, values in arrays.items():
            model[name] = Arr(values.copy(), compress)
    elif call == "append":
        for name, rows in args[0].items():
            if name in model:
                old = model[name]
                model[name] = Arr(np.concatenate([old.values, rows]), old.compressed)
            else:
                model[name] = Arr(rows.copy(), False)
    elif call == "replace":
        values, idx = args
        for name, rows in values.items():
            arr = model[name].values.copy()
            arr[idx] = rows
            model[name] = Arr(arr, model[name].compressed)
    elif call == "drop_rows":
        name, idx = args
        model[name] = Arr(np.delete(model[name].values, idx, axis=0), model[name].compressed)
    elif call == "drop":
        for name in args[0]:
            del model[name]
    elif call == "reset":
        model = {}
    elif call == "transaction":
        for sub in args:
            model = apply(sub, model)
    return model


def run(npk, op: Op) -> None:
    call, args = op.call, op.args
    if call == "save":
        arrays, compress, block_rows = args
        npk.save(arrays, compress=compress, block_rows=block_rows)
    elif call == "append":
        npk.append(args[0])
    elif call == "replace":
        npk.replace(args[0], args[1])
    elif call == "drop_rows":
        npk.drop(args[0], args[1])
    elif call == "drop":
        npk.drop(args[0])
    elif call == "compact":
        npk.compact(args[0])
    elif call == "reset":
        npk.reset()
    else:
        with npk.transaction():
            for sub in args:
                run(npk, sub)


def read(npk) -> dict:
    """The store as a model: every array's values and whether it is compressed."""
    arrays = npk.get_metadata()["arrays"]
    return {
        name: Arr(npk.load(name), arrays[name]["compression"] is not None)
        for name in npk.get_member_list()
    }


def same(state: dict, model: dict) -> bool:
    """Equal names in the same order, values, dtypes, shapes and compression."""
    return list(state) == list(model) and all(
        state[k].compressed == model[k].compressed and _equal(state[k].values, model[k].values)
        for k in state
    )


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def undo_bytes(op: Op, model: dict) -> int:
    """Bytes of old rows a `replace` logs in undo records before writing raw rows in place."""
    if op.call != "replace":
        return 0
    values, idx = op.args
    return sum(len(idx) * v[0].nbytes for k, v in values.items() if not model[k].compressed)


def generation(path: str) -> int:
    """The generation in numpack.log's header (-1 when there is none)."""
    try:
        with open(os.path.join(path, "numpack.log"), "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return -1
    return int.from_bytes(head[8:16], "little") if len(head) == 16 else -1


# -- the processes the checker kills ---------------------------------------------------------
# They are forked from a server that imported numpy and numpack once (`serve`), so a process is
# ready in milliseconds, not the quarter of a second an interpreter takes to start. Each writes
# its progress as lines on stdout (one `write` each, so lines never mix).


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def writer(
    path: str,
    backend: str,
    seed: int,
    start: int,
    prefer: str | None,
    durations: list | None = None,
    timer_seed: int = 0,
) -> None:
    """Run the planned calls from `start` on, for ever: `start i kind generation undo-bytes`
    before call `i`, `done i seconds` after it.

    With `durations` (of earlier calls of kind `prefer`; of raw replaces for a fold or an
    undo window, when the checker cannot watch files), each call of that kind runs under a
    timer that kills this process a random moment into it, inside one of those durations
    picked at random. SIGALRM, left at its default action, ends the process at once wherever
    it is (the kernel makes a fatal signal a kill of the whole process, as SIGKILL), with no
    delay for another process to wake up and send it."""
    from numpack import NumPack

    rng = np.random.default_rng(timer_seed)
    npk = NumPack(path, backend=backend)
    model = read(npk)
    _say("ready")
    i = start
    while True:
        op = plan(seed, i, model, prefer)
        _say(f"start {i} {op.kind} {generation(path)} {undo_bytes(op, model)}")
        timed = bool(durations) and (
            op.kind == prefer or (prefer in ("fold", "undo window") and op.kind == "replace-raw")
        )
        if timed:
            delay = rng.uniform(0, durations[int(rng.integers(len(durations)))])
            signal.setitimer(signal.ITIMER_REAL, max(float(delay), 1e-6))
        t = time.perf_counter()
        run(npk, op)
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)  # it ended first: aim at the next one
        _say(f"done {i} {time.perf_counter() - t:.6f}")
        model = apply(op, model)
        i += 1


def opener(path: str, backend: str) -> None:
    """Open the store, which puts back the rows of an interrupted call's undo records."""
    from numpack import NumPack

    _say("ready")
    t = time.perf_counter()
    NumPack(path, backend=backend).close()
    _say(f"opened {time.perf_counter() - t:.6f}")


def npyt_writer(path: str) -> None:
    """Append numbered rows to an NPYT file for ever."""
    from test_npyt import make_rows

    from numpack import NPYT

    w = NPYT(path).load("r+")
    first = w.end()
    _say("ready")
    while True:
        n = 1 + first % 97
        w.expend(make_rows(first, n))  # rows first, then `end`; grows the file when full
        first += n


JOBS = {"writer": writer, "opener": opener, "npyt_writer": npyt_writer}


def serve() -> None:
    """The fork server: for each JSON line `{"job": name, "args": {...}}` on stdin, fork a
    process running that job; say `pid N`, then `exit N code` when it has ended."""
    import test_npyt  # noqa: F401

    import numpack  # noqa: F401  (imported once, here)

    while True:
        line = sys.stdin.readline()
        if not line:
            return
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                JOBS[cmd["job"]](**cmd["args"])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        _say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    serve()
