"""Crash safety (spec/FORMAT.md 6, 8.1): a writer process is killed at random moments while
it runs the workload of crash_ops.py (save, append, replace, drop rows, drop arrays, reset,
compact and transactions of several calls, on raw and compressed arrays of five dtypes, with
folds of the log). After every kill the store opens on both backends and every array equals
its state before the interrupted call (or transaction) or after it.

Kills are aimed: each one picks the target with the fewest kills so far (a kind of call:
save, append, replace-raw, replace-compressed, drop, compact, transaction; or "fold"; or "undo
window") and the writer is told to favour calls of that kind. For a kind of call, the writer
runs each call of that kind under a timer (SIGALRM at its default action: a kill) set to a
random moment inside a duration seen for that kind. For a fold or an undo window, this process
watches the directory (inotify) for a fold creating its new snapshot, or for a big raw
replace's first write to the log, and sends SIGKILL a random moment after it, inside a
duration seen for that step.

Where each kill landed is counted from the writer's lines and the files it left: the kind of
the call it interrupted; "fold" when a fold was under way (a new snapshot or log not yet
renamed, or a log older than the snapshot); "undo window" when undo records follow the last
commit; plus torn records, kills between calls, and kills during recovery. `pytest -s`
prints the counts; at the default NUMPACK_CRASH_KILLS each target must have had at least 10
kills, and recovery at least 5.

After each kill, in this order:
1. with neither backend: the log's header and whole records parse, and the committed metadata
   (snapshot + commit records) is the state before or after the interrupted call;
2. holding the write lock (so nothing recovers), the backend that did not write reads the
   store: every array equals that state, but for raw arrays whose undo records are pending,
   which a `replace` may have been writing: each of their values old or new, as with
   np.memmap (FORMAT.md 8.4);
3. if undo records are pending, a process opening the store (which puts their rows back) is
   killed too (alternately each backend), a random moment after its first write to a data
   file the records name (inotify): a kill during recovery, counted when the records are
   still there after it;
4. the store is opened by each backend, first alternately the writer's and the other, and
   every array equals the state before or after, the same for both;
5. a writer that changes nothing (an empty transaction, alternately each backend) leaves a log
   of whole records with no undo record after the last commit, of the snapshot's generation.
   Every other time it runs before step 4, so that a writer, not a reader, recovers;
6. `compact()` (alternately each backend) leaves no temporary file and no data file that the
   metadata does not name, and changes no values.

NUMPACK_CRASH_KILLS sets the kills per backend (default 200: 10-45 s per backend on a 2-core
machine); raise it for a longer run. NUMPACK_CRASH_SEED changes the workload.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
from crash_ops import KINDS, apply, plan, read, same
from helpers import log_records, read_metadata, subprocess_env

from numpack import NumPack

DEFAULT_KILLS = 200
KILLS = int(os.environ.get("NUMPACK_CRASH_KILLS", str(DEFAULT_KILLS)))
SEED = int(os.environ.get("NUMPACK_CRASH_SEED", "1234"))
# Kills each kind must have had: 10 at the default, proportionally fewer for a shorter run.
QUOTA = max(1, 10 * min(KILLS, DEFAULT_KILLS) // DEFAULT_KILLS)
TARGETS = (*KINDS, "fold", "undo window")
# A kill aimed at a raw replace's undo window waits for one logging this many bytes of old rows.
UNDO_AIM = 64 << 10
TESTS = os.path.dirname(os.path.abspath(__file__))


# -- plumbing: the fork server, its output, and inotify ---------------------------------------


class Lines:
    """Lines read from a pipe without blocking past a timeout."""

    def __init__(self, fd: int):
        self.fd, self._buf = fd, b""
        os.set_blocking(fd, False)

    def ready(self) -> list[str]:
        """The whole lines that have arrived (none if none)."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [line.decode() for line in lines]

    def wait(self, timeout: float) -> list[str]:
        """The lines that have arrived, waiting up to `timeout` for one."""
        lines = self.ready()
        if not lines and select.select([self.fd], [], [], timeout)[0]:
            lines = self.ready()
        return lines


class Server:
    """crash_ops.serve() in a subprocess: forks the processes this test kills."""

    def __init__(self, tmp_path: Path):
        self.errors = tmp_path / "server.stderr"
        env = subprocess_env()
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")  # one thread: safe to fork
        with open(self.errors, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.join(TESTS, "crash_ops.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        self.lines = Lines(self.proc.stdout.fileno())
        self.pending: list[str] = []
        self.child = None  # the last process forked

    def stderr(self) -> str:
        return self.errors.read_text()[-4000:]

    def spawn(self, job: str, **args) -> int:
        self.proc.stdin.write((json.dumps({"job": job, "args": args}) + "\n").encode())
        self.proc.stdin.flush()
        early = []  # the new process may speak before the server says its pid
        while not (line := self.next(60)).startswith("pid "):
            early.append(line)
        self.pending[:0] = early
        self.child = int(line.split()[1])
        return self.child

    def next(self, timeout: float) -> str:
        """The next line; fails after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, f"server silent\n{self.stderr()}"
            self.pending = self.lines.wait(left)
        return self.pending.pop(0)

    def poll(self) -> list[str]:
        out, self.pending = self.pending + self.lines.ready(), []
        return out

    def until_exit(self, pid: int) -> tuple[list[str], int]:
        """The process's remaining lines and its exit code once it has ended."""
        lines = []
        while True:
            line = self.next(60)
            if line.startswith(f"exit {pid} "):
                self.child = None
                return lines, int(line.split()[2])
            lines.append(line)

    def close(self) -> None:
        if self.child is not None:  # a test that failed left it running
            _kill(self.child)
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()


class DirWatch:
    """inotify on the store directory: when a fold creates its new snapshot, and when its new
    log is renamed into place. None where inotify is not available."""

    IN_MODIFY, IN_MOVED_TO, IN_CREATE = 0x2, 0x80, 0x100

    def __init__(self, path: str):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self.IN_CREATE | self.IN_MOVED_TO | self.IN_MODIFY
        if libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    @classmethod
    def open(cls, path: str) -> DirWatch | None:
        try:
            return cls(path)
        except (OSError, AttributeError):
            return None

    def events(self) -> list[tuple[int, str]]:
        out = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            at = 0
            while at < len(data):
                _, mask, _, n = struct.unpack_from("iIII", data, at)
                out.append((mask, data[at + 16 : at + 16 + n].rstrip(b"\0").decode()))
                at += 16 + n

    def close(self) -> None:
        os.close(self.fd)


def _pause(seconds: float) -> None:
    """Wait `seconds` precisely (sleep, then spin for the last millisecond)."""
    end = time.perf_counter() + seconds
    if seconds > 0.002:
        time.sleep(seconds - 0.001)
    while time.perf_counter() < end:
        pass


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _write_lock(path: str):
    """Hold the store's write lock: opening the store then recovers nothing."""
    fd = os.open(os.path.join(path, "numpack.lock"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


# -- the store's files, read with neither backend ---------------------------------------------


class Disk:
    """What a kill left on disk, before any backend opened the store."""

    def __init__(self, path: str):
        with open(os.path.join(path, "metadata.npkm"), "rb") as f:
            self.snapshot_generation = msgpack.unpackb(f.read(), raw=False)["generation"]
        self.log_generation, records = log_records(path)
        self.size = os.path.getsize(os.path.join(path, "numpack.log"))
        self.end = records[-1][1] if records else 16
        last = max((k for k, (r, _) in enumerate(records) if r["t"] == "commit"), default=-1)
        self.pending = [r for r, _ in records[last + 1 :]]  # undo records of an unfinished call
        assert all(r["t"] == "undo" for r in self.pending), self.pending
        self.torn = self.size > self.end  # a record cut short by the kill
        self.tmps = sorted(p for p in os.listdir(path) if p.endswith(".tmp"))
        self.meta = read_metadata(path)

    def folding(self) -> bool:
        """A fold is under way: its new snapshot or log is written but not renamed, or the
        snapshot was renamed and the log not yet."""
        return self.log_generation < self.snapshot_generation or any(
            t.startswith(("metadata.npkm.", "numpack.log.")) for t in self.tmps
        )


def _entry_view(meta: dict) -> list:
    out = []
    for e in meta["arrays"]:
        dropped = len(e["deleted"]) // 8
        shape = (e["shape"][0] - dropped, *e["shape"][1:])
        out.append((e["name"], e["dtype"], shape, e["compression"] is not None))
    return out


def _model_view(model: dict) -> list:
    return [(k, a.values.dtype.str, a.values.shape, a.compressed) for k, a in model.items()]


def _check_files(path: str) -> None:
    """No temporary file, no v1 journal, and every data file is one the metadata names."""
    names = set(os.listdir(path))
    meta = read_metadata(path)
    named = {e["file"] for e in meta["arrays"]}
    assert not [n for n in names if n.endswith(".tmp")], sorted(names)
    assert "numpack.undo" not in names
    assert {n for n in names if n.endswith(".npkd")} == named, (sorted(names), sorted(named))


def _check_log(path: str) -> None:
    """A well-formed log: whole records to its end, none of them an undo record after the last
    commit, and the snapshot's generation."""
    disk = Disk(path)
    assert not disk.torn and not disk.pending, (disk.size, disk.end, disk.pending)
    assert disk.log_generation == disk.snapshot_generation
    assert disk.meta.get("version") == 2


# -- the harness ------------------------------------------------------------------------------


class Harness:
    def __init__(self, path: str, backend: str, server: Server, watch: DirWatch | None):
        self.path, self.backend, self.server, self.watch = path, backend, server, watch
        self.other = "python" if backend == "rust" else "rust"
        self.rng = np.random.default_rng(7)
        self.model: dict = {}
        self.start = 0  # the next call the writer runs
        self.counts: collections.Counter = collections.Counter()
        self.aims: collections.Counter = collections.Counter()
        # Recent durations of each kind of call, of a fold (inotify), of a recovery; a guess
        # to begin with.
        self.durations = {k: collections.deque([0.005], maxlen=25) for k in KINDS}
        self.durations["fold"] = collections.deque([0.0005], maxlen=25)
        self.durations["undo window"] = collections.deque([0.0005], maxlen=25)
        # How long after its first write a recovering opener is killed: adjusted as it goes.
        self.durations["recovery"] = collections.deque([0.002], maxlen=25)
        self.kill_no = 0
        self.openers = 0  # processes killed while they recover

    def report(self) -> str:
        counts = {k: self.counts[k] for k in TARGETS}
        extra = {k: v for k, v in sorted(self.counts.items()) if k not in counts}
        aims = {k: self.aims[k] for k in TARGETS}
        return f"kills by kind: {counts}; also: {extra}; kills aimed at each: {aims}"

    def target(self) -> str:
        """The kind of call with the fewest kills so far (at random once each has its quota)."""
        low = min(self.counts[k] for k in TARGETS)
        if low >= QUOTA:
            return str(self.rng.choice(TARGETS))
        return str(self.rng.choice([k for k in TARGETS if self.counts[k] == low]))

    def delay(self, kind: str) -> float:
        """A random moment inside a call of `kind`: inside one of the durations seen, picked
        at random (durations vary a hundredfold; a short call gets a short delay as often as
        short calls come)."""
        seen = self.durations[kind]
        return float(self.rng.uniform(0, seen[int(self.rng.integers(len(seen)))]))

    def run_and_kill(self, target: str) -> tuple[dict, dict]:
        """Start a writer and have it killed inside a call of kind `target` (by its own timer),
        in a fold, or in a raw replace's undo window (by this process, through inotify);
        returns the `start` lines {i: (kind, generation)} and the `done` lines {i: seconds}."""
        if self.watch:
            self.watch.events()  # forget the events of the checks
        timed = target in KINDS or self.watch is None
        pid = self.server.spawn(
            "writer",
            path=self.path,
            backend=self.backend,
            seed=SEED,
            start=self.start,
            prefer=target,
            durations=list(self.durations[target if target in KINDS else "replace-raw"])
            if timed
            else None,
            timer_seed=int(self.rng.integers(1 << 31)),
        )
        line = self.server.next(60)
        assert line == "ready", f"the writer did not start: {line}\n{self.server.stderr()}"
        starts, dones = {}, {}
        call = None  # the call under way: [i, kind, undo bytes, when its undo was logged]
        fold_began, code = None, None
        fds = [self.server.lines.fd] + ([self.watch.fd] if self.watch else [])
        deadline = time.monotonic() + 2.0  # then kill wherever the writer is

        def note(line: str) -> None:
            nonlocal call
            word, i, *rest = line.split()
            i = int(i)
            if word == "start":
                starts[i] = (rest[0], int(rest[1]))
                call = [i, rest[0], int(rest[2]), None]
            elif word == "done":
                dones[i] = float(rest[0])
                self.durations[starts[i][0]].append(dones[i])
                if call and call[3] is not None:
                    self.durations["undo window"].append(time.perf_counter() - call[3])
                call = None

        while code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.counts["aim missed: killed after 2 s"] += 1
                break
            readable = select.select(fds, [], [], left)[0]
            for line in self.server.poll() if self.server.lines.fd in readable else []:
                if line.startswith(f"exit {pid} "):  # its timer went off
                    code = int(line.split()[2])
                    break
                note(line)
            if timed or code is not None:
                continue
            # Aimed from here, after a file event.
            aim = None
            events = self.watch.events() if self.watch.fd in readable else []
            for mask, name in events:
                now = time.perf_counter()
                if name.startswith("metadata.npkm.") and mask & DirWatch.IN_CREATE:
                    fold_began = now
                    aim = "fold" if target == "fold" else aim
                elif name == "numpack.log" and mask & DirWatch.IN_MOVED_TO and fold_began:
                    self.durations["fold"].append(now - fold_began)
                    fold_began = None
                elif name == "numpack.log" and mask & DirWatch.IN_MODIFY and call:
                    if call[1] == "replace-raw" and call[2] >= UNDO_AIM and call[3] is None:
                        call[3] = now  # the undo records are written; the rows are next
                        aim = "undo window" if target == "undo window" else aim
            if aim:
                _pause(self.delay(aim))
                break
        if code is None:
            _kill(pid)
            lines, code = self.server.until_exit(pid)
            for line in lines:
                note(line)
        assert code in (-signal.SIGKILL, -signal.SIGALRM), (code, self.server.stderr())
        return starts, dones

    def kill_opener(self, backend: str, pending: list) -> None:
        """Kill a process while opening the store puts back the rows of pending undo records:
        after its first write to a data file they name (inotify), or at a random moment."""
        files = {u["file"] for u in pending}
        old = {f: Path(self.path, f).read_bytes() for f in files if Path(self.path, f).exists()}
        if self.watch:
            self.watch.events()
        pid = self.server.spawn("opener", path=self.path, backend=backend)
        assert self.server.next(60) == "ready"
        if self.watch is None:
            _pause(self.delay("recovery"))
        else:
            deadline, restoring = time.monotonic() + 2.0, False
            fds = [self.server.lines.fd, self.watch.fd]
            while not restoring and time.monotonic() < deadline:
                readable = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))[0]
                if self.server.lines.fd in readable:
                    self.server.pending += self.server.poll()  # "opened": it has finished
                    if self.server.pending:
                        break
                for mask, name in self.watch.events():
                    restoring |= bool(mask & DirWatch.IN_MODIFY) and name in files
            if restoring:
                _pause(self.delay("recovery"))
        _kill(pid)
        lines, code = self.server.until_exit(pid)
        seen = self.durations["recovery"]
        if [x for x in lines if x.startswith("opened")]:
            self.counts["opener finished"] += 1
            seen.append(seen[-1] * 0.7)  # aim earlier
            return
        assert code == -signal.SIGKILL, (code, self.server.stderr())
        seen.append(min(seen[-1] * 1.1, 0.05))
        if Disk(self.path).pending:
            self.counts["recovery (opener killed, undo records left)"] += 1
            if any(Path(self.path, f).read_bytes() != b for f, b in old.items()):
                self.counts["recovery (... and rows put back in part)"] += 1

    def cycle(self) -> None:
        k, self.kill_no = self.kill_no, self.kill_no + 1
        target = self.target()
        self.aims[target] += 1
        starts, dones = self.run_and_kill(target)
        for i in sorted(dones):  # the calls that finished
            assert i == self.start, (i, self.start)
            op = plan(SEED, i, self.model, target)
            assert op.kind == starts[i][0], (i, op.kind, starts[i])
            self.model = apply(op, self.model)
            self.start += 1
        before = self.model
        inside = self.start in starts  # killed inside call `self.start`
        if inside:
            op = plan(SEED, self.start, before, target)
            assert op.kind == starts[self.start][0]
            candidates = [before, apply(op, before)]
        else:
            candidates = [before]
        where = f"kill {k} (aimed at {target}), call {self.start}" + (
            f" ({op.kind}: {op.call})" if inside else " (between calls)"
        )

        # 1. The files, with neither backend.
        disk = Disk(self.path)
        views = [_model_view(m) for m in candidates]
        assert _entry_view(disk.meta) in views, f"{where}: the metadata is neither before nor after"
        if inside:
            self.counts[op.kind] += 1
            if disk.folding():
                self.counts["fold"] += 1
            elif disk.snapshot_generation > starts[self.start][1]:
                self.counts["fold finished, the call had not returned"] += 1
            if disk.pending:
                self.counts["undo window"] += 1
            if disk.torn:
                self.counts["torn record"] += 1
        else:
            self.counts["between calls"] += 1

        # 2. Read under the write lock by the other backend: nothing is recovered.
        mid_write = {u["file"] for u in disk.pending}
        files = {e["name"]: e["file"] for e in disk.meta["arrays"]}
        with _write_lock(self.path), NumPack(self.path, backend=self.other) as npk:
            state = read(npk)

        def seen(n: str, m: dict) -> bool:
            got, want = state[n].values, m[n].values
            if got.shape != want.shape or state[n].compressed != m[n].compressed:
                return False
            if files[n] not in mid_write:
                return np.array_equal(got, want)
            if op.call != "replace":
                return True  # rows of a transaction's several calls: checked once recovered
            # A replace writing in place: each value old or one the call writes to its row
            # (a row listed twice takes each of its values in turn), as with np.memmap.
            values, idx = op.args
            ok = got == before[n].values
            for k, row in enumerate(idx):
                ok[row] |= got[row] == values[n][k]
            return bool(ok.all())

        assert any(list(state) == list(m) and all(seen(n, m) for n in m) for m in candidates), (
            f"{where}: a reader holding the lock sees neither before nor after"
        )

        # 3. A kill while the rows of pending undo records are put back.
        if disk.pending:
            self.openers += 1
            self.kill_opener([self.other, self.backend][self.openers % 2], disk.pending)

        # 4. Both backends read it, one after the other; 5. an empty transaction.
        readers = [self.other, self.backend] if k % 2 == 0 else [self.backend, self.other]
        if k % 4 >= 2:
            with NumPack(self.path, backend=readers[1]) as npk, npk.transaction():
                pass  # the writer, not a reader, puts back the rows of pending undo records
            _check_log(self.path)
        states = []
        for b in readers:
            with NumPack(self.path, backend=b) as npk:
                states.append(read(npk))
        if same(states[0], candidates[-1]):
            self.model, self.start = candidates[-1], self.start + inside
        else:
            assert same(states[0], before), f"{where}: {readers[0]} reads neither before nor after"
        assert same(states[1], self.model), f"{where}: the backends disagree"
        if k % 4 < 2:
            with NumPack(self.path, backend=readers[1]) as npk, npk.transaction():
                pass
            _check_log(self.path)

        # 6. compact() sweeps what the killed call left.
        with NumPack(self.path, backend=readers[k // 2 % 2]) as npk:
            npk.compact()
            assert same(read(npk), self.model), f"{where}: compact() changed values"
        _check_files(self.path)
        _check_log(self.path)


def test_killed_writer_leaves_before_or_after(backend, tmp_path):
    path = str(tmp_path / "store")
    NumPack(path, backend=backend).close()
    server, watch = Server(tmp_path), DirWatch.open(path)
    h = Harness(path, backend, server, watch)
    t0 = time.monotonic()
    try:
        for _ in range(KILLS):
            h.cycle()
    finally:
        server.close()
        if watch:
            watch.close()
    seconds = time.monotonic() - t0
    print(f"\n[{backend}] {KILLS} kills in {seconds:.1f} s; {h.report()}")
    assert h.start > 0, "the writer never completed a call"
    for kind in TARGETS:
        assert h.counts[kind] >= QUOTA, f"too few kills inside {kind}: {h.report()}"
    recovery = h.counts["recovery (opener killed, undo records left)"]
    assert recovery >= QUOTA // 2, f"too few kills during recovery: {h.report()}"


def test_killed_npyt_writer_leaves_only_whole_rows(tmp_path):
    """SIGKILL an NPYT writer mid-append: np.load and NPYT both see whole rows 0..end, and a
    new writer carries on from there. (NPYT is one implementation whatever the backend.)"""
    from test_npyt import ROW, check_rows

    from numpack import NPYT

    path = str(tmp_path / "ticks.npy")
    NPYT(path, dtype=ROW).save(capacity=64, skip_if_exists=False)
    rng = np.random.default_rng(3)
    ends = []
    server = Server(tmp_path)
    try:
        for _ in range(max(5, KILLS // 8)):
            pid = server.spawn("npyt_writer", path=path)
            assert server.next(60) == "ready", server.stderr()
            _pause(float(rng.uniform(0.0, 0.01)))  # the file grows by ~100 MB/s
            _kill(pid)
            _, code = server.until_exit(pid)
            assert code == -signal.SIGKILL, (code, server.stderr())
            r = NPYT(path).load("r")
            check_rows(r.data(), 0)
            check_rows(np.load(path)[: r.end()], 0)  # a plain .npy reader: capacity rows
            assert r.end() >= (ends[-1] if ends else 0)
            ends.append(r.end())
    finally:
        server.close()
    assert ends[-1] > ends[0], "the writers never appended"
