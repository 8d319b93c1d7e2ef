"""Crash safety: a writer process is killed with SIGKILL at random moments while it saves,
appends, replaces, drops and compacts (raw and compressed arrays). After every kill the store
opens and every array equals its state before the interrupted call or after it.

NUMPACK_CRASH_KILLS sets the kills per backend (CI's default is small; raise it for a long run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from crash_ops import apply, plan, read

from numpack import NumPack

KILLS = int(os.environ.get("NUMPACK_CRASH_KILLS", "120"))
TESTS = os.path.dirname(os.path.abspath(__file__))

WRITER = r"""
import os, sys
sys.path.insert(0, sys.argv[5])
from crash_ops import apply, plan, read, run
from numpack import NumPack
path, backend, seed, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
npk = NumPack(path, backend=backend)
model = read(npk)
log = os.open(os.path.join(os.path.dirname(path), "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(log, b"ready\n")
i = start
while True:
    op = plan(seed, i, model)
    os.write(log, b"start %d\n" % i)
    run(npk, op)
    model = apply(op, model)
    os.write(log, b"done %d\n" % i)
    i += 1
"""


def _same(store: dict, model: dict) -> bool:
    return store.keys() == model.keys() and all(
        store[k].shape == model[k].shape and np.array_equal(store[k], model[k]) for k in store
    )


def test_killed_writer_leaves_before_or_after(backend, tmp_path):
    path = str(tmp_path / "store")
    NumPack(path, backend=backend).close()
    log_path = tmp_path / "log"
    rng = np.random.default_rng(7)
    seed, model, start = 1234, {}, 0
    interrupted = 0  # kills that landed inside a call
    for kill in range(KILLS):
        log_path.write_text("")
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, path, backend, str(seed), str(start), TESTS]
        )
        deadline = time.monotonic() + 30
        while "ready" not in log_path.read_text():  # killed once it is working
            assert writer.poll() is None, "the writer died on its own"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.25)))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        done = [int(x.split()[1]) for x in log_path.read_text().split("\n") if x.startswith("done")]
        started = [
            int(x.split()[1]) for x in log_path.read_text().split("\n") if x.startswith("start")
        ]
        for i in done:
            model = apply(plan(seed, i, model), model)
        with NumPack(path, backend=backend) as npk:
            state = read(npk)
        if started and (not done or started[-1] > done[-1]):  # killed inside call started[-1]
            interrupted += 1
            after = apply(plan(seed, started[-1], model), model)
            if _same(state, after):
                model, start = after, started[-1] + 1
            else:
                assert _same(state, model), (
                    f"kill {kill}: neither before nor after op {started[-1]}"
                )
                start = started[-1]
        else:
            assert _same(state, model), f"kill {kill}: the store lost completed calls"
            start = (done[-1] + 1) if done else start
    assert start > 0, "the writer never completed a call"
    assert interrupted > KILLS // 2, "too few kills landed inside a call to test anything"


NPYT_WRITER = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
from test_npyt import make_rows
from numpack import NPYT
path = sys.argv[1]
w = NPYT(path).load("r+")
first = w.end()
os.write(1, b"ready\n")
while True:
    n = 1 + first % 97
    w.expend(make_rows(first, n))  # rows first, then `end`; grows the file when full
    first += n
"""


def test_killed_npyt_writer_leaves_only_whole_rows(backend, tmp_path, monkeypatch):
    """SIGKILL an NPYT writer mid-append: np.load and NPYT both see whole rows 0..end, and a
    new writer carries on from there."""
    from test_npyt import ROW, check_rows

    from numpack import NPYT

    monkeypatch.setenv("NUMPACK_BACKEND", backend)
    path = str(tmp_path / "ticks.npy")
    NPYT(path, dtype=ROW).save(capacity=64, skip_if_exists=False)
    rng = np.random.default_rng(3)
    ends = []
    for _ in range(max(5, KILLS // 4)):
        w = subprocess.Popen([sys.executable, "-c", NPYT_WRITER, path, TESTS],
                             stdout=subprocess.PIPE)  # fmt: skip
        assert w.stdout.readline() == b"ready\n"
        time.sleep(float(rng.uniform(0.0, 0.1)))
        w.send_signal(signal.SIGKILL)
        w.wait()
        w.stdout.close()
        r = NPYT(path).load("r")
        check_rows(r.data(), 0)
        check_rows(np.load(path)[: r.end()], 0)  # a plain .npy reader: capacity rows
        assert r.end() >= (ends[-1] if ends else 0)
        ends.append(r.end())
    assert ends[-1] > ends[0], "the writers never appended"
