"""durable=True (spec/FORMAT.md 6 "Durability", 8.2), proven from the system calls: strace -y
shows the file behind every descriptor, and the traced process writes a marker to stderr before
and after each call, so the trace splits into one segment per call. For each kind of call
(creating a store, save raw and compressed, append raw, compressed and new, replace raw and
compressed, drop rows, drop arrays, compact, a transaction of several calls, the first call
after an interrupted replace, a call that folds the log, reset, and the first write to a
version 1 store) on each backend, the segment shows:

- which files were synced: exactly the data files the call wrote, the directory when it
  created files, the log, and a fold's (or a new store's) snapshot and log;
- in the spec's order: every data file synced after its last write and before the commit
  record is written to numpack.log; the directory synced after the last data file was created
  and before the commit record; a raw replace's undo records synced before the first row is
  written in place; the commit record synced after it is written (and before a fold); a fold
  (and creating or upgrading a store) syncs the new snapshot, renames it, syncs the directory,
  syncs the new log, renames it, syncs the directory; files retired only after the commit;
  rows put back from pending undo records synced before the log is cut after the last commit;
- that after each call both backends read back the values it wrote.

Without durable=True nothing is synced at all. And a call that fails inside a durable
transaction undoes only itself: the transaction still commits.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    BACKENDS,
    assert_same_array,
    file_stem,
    read_metadata,
    rust_import_error,
    subprocess_env,
)

from numpack import NumPack, StoreIOError

FIXTURE = Path(__file__).parent / "fixtures" / "v1_store"

CALLS = r"""
import contextlib, os, sys
import numpy as np
from numpack import NumPack

path, backend, durable, v1 = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
try:
    import numpack._core  # noqa: F401
    readers = ("rust", "python")
except ImportError:
    readers = ("python",)


def check(where, store, expected):
    # Both backends, in new objects, read back what the call wrote.
    for b in readers:
        with NumPack(store, backend=b) as r:
            assert r.get_member_list() == list(expected), (where, b, r.get_member_list())
            for k, v in expected.items():
                got = r.load(k)
                assert got.dtype == v.dtype and got.shape == v.shape, (where, b, k, got.shape)
                assert np.array_equal(got, v), (where, b, k)


@contextlib.contextmanager
def call(label, store=path):
    os.write(2, b"@@begin " + label.encode() + b"\n")
    yield
    os.write(2, b"@@end " + label.encode() + b"\n")
    check(label, store, v1_exp if store == v1 else exp)


rng = np.random.default_rng(0)
exp = {}
a = rng.standard_normal((2000, 8))
c = (np.arange(3000 * 4, dtype="<i4") % 7).reshape(3000, 4)
f = rng.standard_normal((5000, 64)).astype("<f4")  # 1.28 MB: replacing it all folds the log

with call("create"):
    npk = NumPack(path, backend=backend, durable=durable)
with call("save"):
    npk.save({"a": a})
    exp["a"] = a
with call("save compressed"):
    npk.save({"c": c}, compress=True, block_rows=64)
    exp["c"] = c
with call("save big"):
    npk.save({"f": f})
    exp["f"] = f
with call("append raw"):
    rows = rng.standard_normal((10, 8))
    npk.append({"a": rows})
    exp["a"] = np.concatenate([exp["a"], rows])
with call("append compressed"):
    rows = np.full((100, 4), 3, "<i4")
    npk.append({"c": rows})
    exp["c"] = np.concatenate([exp["c"], rows])
with call("append new"):
    npk.append({"n": np.arange(50, dtype="<u2")})
    exp["n"] = np.arange(50, dtype="<u2")
with call("replace raw"):
    idx, rows = [5, 17, 2009, 17], rng.standard_normal((4, 8))
    npk.replace({"a": rows}, idx)
    exp["a"] = exp["a"].copy()
    exp["a"][idx] = rows
with call("replace compressed"):
    idx, rows = [0, 1000, 3099], np.full((3, 4), -1, "<i4")
    npk.replace({"c": rows}, idx)
    exp["c"] = exp["c"].copy()
    exp["c"][idx] = rows
with call("drop rows"):
    npk.drop("a", [1, 2, 3])
    exp["a"] = np.delete(exp["a"], [1, 2, 3], axis=0)
with call("compact"):
    npk.compact()  # a has dropped rows, c superseded blocks: both are rewritten
with call("drop arrays"):
    npk.drop("n")
    del exp["n"]
with call("transaction"):
    with npk.transaction():
        b = rng.integers(0, 9, (30, 2)).astype("<i8")
        npk.save({"b": b})
        rows, new = rng.standard_normal((3, 8)), rng.standard_normal((2, 8))
        npk.append({"a": rows})
        npk.replace({"a": new}, [0, 10])
        npk.replace({"c": np.zeros((1, 4), "<i4")}, [3])
        npk.drop("c", [0])
    exp["b"] = b
    exp["a"] = np.concatenate([exp["a"], rows])
    exp["a"][[0, 10]] = new
    exp["c"] = exp["c"].copy()
    exp["c"][3] = 0
    exp["c"] = np.delete(exp["c"], [0], axis=0)
# A replace killed after its undo record and one row: the next call puts the row back first.
import msgpack
import zlib
e = npk.get_metadata()["arrays"]["a"]
undo = msgpack.packb({"t": "undo", "file": e["file"], "row_bytes": 64, "rows": bytes(8),
                      "old": exp["a"][0].tobytes()}, use_bin_type=True)
with open(os.path.join(path, "numpack.log"), "ab") as log:
    log.write(len(undo).to_bytes(4, "little") + zlib.crc32(undo).to_bytes(4, "little") + undo)
with open(os.path.join(path, e["file"]), "r+b") as data:
    data.write(np.full(8, 7.0).tobytes())
with call("recover"):
    npk.drop("a", [len(exp["a"]) - 1])
    exp["a"] = exp["a"][:-1]
with call("fold"):
    g = rng.standard_normal(f.shape).astype("<f4")
    npk.replace({"f": g}, np.arange(len(f)))  # 1.28 MB of undo records: the log passes 1 MiB
    exp["f"] = g
with call("reset"):
    npk.reset()
    exp.clear()

with NumPack(v1, backend=backend) as r:  # reading a version 1 store writes nothing
    v1_exp = {k: r.load(k) for k in r.get_member_list()}
v = NumPack(v1, backend=backend, durable=durable)
with call("upgrade", v1):
    rows = np.arange(8, dtype="<i8").reshape(2, 4)
    v.append({"raw": rows})
    v1_exp["raw"] = np.concatenate([v1_exp["raw"], rows])
"""

# What each call syncs: arrays by name (their data files), "dir", "log" (numpack.log), and a
# fold's or a new store's "snapshot tmp" and "log tmp"; what it creates; whether it logs undo
# records; whether it folds (or creates the snapshot and log); which arrays' files it retires.
EXPECT = {
    "create": dict(synced={"dir", "snapshot tmp", "log tmp"}, renames=True, commit=False),
    "save": dict(synced={"a", "dir", "log"}, created={"a"}),
    "save compressed": dict(synced={"c", "dir", "log"}, created={"c"}),
    "save big": dict(synced={"f", "dir", "log"}, created={"f"}),
    "append raw": dict(synced={"a", "log"}),
    "append compressed": dict(synced={"c", "log"}),
    "append new": dict(synced={"n", "dir", "log"}, created={"n"}),
    "replace raw": dict(synced={"a", "log"}, undo=True),
    "replace compressed": dict(synced={"c", "log"}),
    "drop rows": dict(synced={"log"}),
    "compact": dict(synced={"a", "c", "dir", "log"}, created={"a", "c"}, retired={"a", "c"}),
    "drop arrays": dict(synced={"log"}, retired={"n"}),
    "transaction": dict(synced={"a", "b", "c", "dir", "log"}, created={"b"}, undo=True),
    "recover": dict(synced={"a", "log"}, recover=True),
    "fold": dict(synced={"f", "log", "dir", "snapshot tmp", "log tmp"}, undo=True, fold=True),
    "reset": dict(synced={"log"}, retired={"a", "c", "f", "b"}),
    "upgrade": dict(synced={"raw", "dir", "log", "snapshot tmp", "log tmp"}, renames=True),
}
NAMES = ("a", "b", "c", "f", "n", "raw", "comp", "names é/..")
SYNCS = ("fsync", "fdatasync", "msync", "sync_file_range", "syncfs", "sync")
TRACED = SYNCS + ("openat", "write", "pwrite64", "writev", "pwritev", "pwritev2", "rename",
                  "renameat", "renameat2", "unlink", "unlinkat", "ftruncate")  # fmt: skip


def _trace(tmp_path, backend: str, durable: bool) -> list[str]:
    """Run CALLS under strace; the trace's lines, unfinished calls joined to their ends."""
    if shutil.which("strace") is None:
        if os.environ.get("NUMPACK_REQUIRE_STRACE") == "1":
            pytest.fail("strace is not installed")
        pytest.skip("strace is not installed")
    out = tmp_path / "trace"
    v1 = tmp_path / "v1"
    shutil.copytree(FIXTURE, v1)
    run = subprocess.run(
        ["strace", "-f", "-qq", "-y", "-s", "48", "-e", "trace=" + ",".join(TRACED),
         "-o", str(out), sys.executable, "-c", CALLS, str(tmp_path / "s"), backend,
         "1" if durable else "0", str(v1)],
        env=subprocess_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines, unfinished = [], {}
    for line in out.read_text().splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.lstrip()
        if rest.endswith("<unfinished ...>"):
            unfinished[pid] = rest[: -len("<unfinished ...>")]
        elif rest.startswith("<..."):
            lines.append(unfinished.pop(pid, "") + rest.split("resumed>", 1)[1])
        else:
            lines.append(rest)
    return lines


FD_CALL = re.compile(r"(\w+)\(\d+<([^>]*)>(.*)\)\s+= (-?\d+)")
OPENAT = re.compile(
    r'openat\((?:AT_FDCWD|\d+)(?:<[^>]*>)?, "([^"]*)", ([A-Z0-9_|]+).*\)\s+= (-?\d+)'
)
RENAME = re.compile(r'rename\("([^"]*)", "([^"]*)"\)\s+= (-?\d+)')
RENAMEAT = re.compile(
    r'renameat2?\((?:AT_FDCWD|\d+)(?:<([^>]*)>)?, "([^"]*)", (?:AT_FDCWD|\d+)(?:<([^>]*)>)?, '
    r'"([^"]*)".*\)\s+= (-?\d+)'
)
UNLINK = re.compile(
    r'unlink(?:at)?\((?:(?:AT_FDCWD|\d+)(?:<([^>]*)>)?, )?"([^"]*)".*\)\s+= (-?\d+)'
)
MARKER = re.compile(r'write\(2<[^>]*>, "@@(begin|end) ([^"]*)\\n"')


def _segments(lines: list[str], stores: list[str]) -> dict[str, list[tuple]]:
    """{call label: its events}, an event being (what, file, detail): what is "create",
    "write", "sync", "rename" (detail: the new name) or "unlink"; file is a name inside one of
    the `stores`, "." for the directory itself. Events outside the stores are left out."""

    def local(p: str, base: str | None = None) -> str | None:
        p = os.path.normpath(os.path.join(base or "/", p))
        for s in stores:
            if p == s:
                return "."
            if os.path.dirname(p) == s:
                return os.path.basename(p)
        return None

    segments, label = {}, None
    for line in lines:
        m = MARKER.match(line)
        if m:
            label = m.group(2) if m.group(1) == "begin" else None
            if label is not None:
                segments[label] = []
            continue
        ev = _event(line, local)
        if ev is not None and label is not None:
            segments[label].append(ev)
    return segments


def _event(line: str, local) -> tuple | None:
    if m := FD_CALL.match(line):
        call, name, rest, ret = m.group(1), local(m.group(2)), m.group(3), int(m.group(4))
        if name is None or ret < 0:
            return None
        if call in SYNCS:
            return ("sync", name, call)
        if call == "ftruncate":
            return ("truncate", name, "")
        if call.startswith(("write", "pwrite")):
            kind = "commit" if "commit" in rest else "undo" if "undo" in rest else ""
            return ("write", name, kind)
        return None
    if m := OPENAT.match(line):
        name = local(m.group(1))
        if name is not None and "O_CREAT" in m.group(2) and int(m.group(3)) >= 0:
            return ("create", name, "")
        return None
    if m := RENAME.match(line):
        old, new, ret = local(m.group(1)), local(m.group(2)), int(m.group(3))
        return ("rename", old, new) if old and ret == 0 else None
    if m := RENAMEAT.match(line):
        old, new = local(m.group(2), m.group(1)), local(m.group(4), m.group(3))
        return ("rename", old, new) if old and int(m.group(5)) == 0 else None
    if m := UNLINK.match(line):
        name = local(m.group(2), m.group(1))
        return ("unlink", name, "") if name and int(m.group(3)) == 0 else None
    return None


def _role(file: str) -> str:
    """What a synced file is, in EXPECT's words."""
    if file == ".":
        return "dir"
    if file == "numpack.log":
        return "log"
    if file.startswith("metadata.npkm.") and file.endswith(".tmp"):
        return "snapshot tmp"
    if file.startswith("numpack.log.") and file.endswith(".tmp"):
        return "log tmp"
    for name in NAMES:
        if file.endswith(".npkd") and file.startswith(file_stem(name) + "."):
            return name
    return file


def _after(ev, start: int, what: str, pred) -> int:
    """The first event from `start` on that is `what` and satisfies `pred`; -1 if none."""
    for i in range(start, len(ev)):
        if ev[i][0] == what and pred(ev[i][1]):
            return i
    return -1


def _renames(ev, start: int, label: str) -> int:
    """Checks, from event `start` on, a fold's order: the new snapshot written and synced,
    renamed into place, the directory synced, then the same for the new log. Returns the index
    of the last directory sync."""
    at = start
    for tmp, final in (("metadata.npkm.", "metadata.npkm"), ("numpack.log.", "numpack.log")):
        made = _after(ev, at, "create", lambda f, t=tmp: f.startswith(t) and f.endswith(".tmp"))
        assert made >= 0, f"{label}: no new {final} written: {ev[at:]}"
        file = ev[made][1]
        moved = _after(ev, made, "rename", lambda f, t=file: f == t)
        assert moved >= 0 and ev[moved][2] == final, f"{label}: {file} not renamed: {ev[made:]}"
        writes = [i for i in range(made, moved) if ev[i][:2] == ("write", file)]
        assert writes, f"{label}: {file} was not written"
        synced = _after(ev, writes[-1], "sync", lambda f, t=file: f == t)
        assert 0 <= synced < moved, f"{label}: {file} not synced before its rename: {ev[made:]}"
        at = _after(ev, moved, "sync", lambda f: f == ".")
        assert at >= 0, f"{label}: the directory was not synced after the rename to {final}"
        assert not [e for e in ev[moved:at] if e[0] == "create"], ev[moved:at]
    return at


def _check_call(label: str, ev: list, expect: dict) -> None:
    roles = {_role(f) for what, f, _ in ev if what == "sync"}
    assert roles == expect["synced"], f"{label}: synced {roles}, not {expect['synced']}: {ev}"
    commits = [i for i, e in enumerate(ev) if e == ("write", "numpack.log", "commit")]
    if not expect.get("commit", True):
        assert not commits, f"{label}: {ev}"
        _renames(ev, 0, label)
        return
    assert len(commits) == 1, f"{label}: one commit record per call: {ev}"
    c = commits[0]
    before, after = ev[:c], ev[c + 1 :]

    # 1. Data files (and the directory for new ones) synced before the commit record.
    data = {f for what, f, _ in before if what in ("create", "write") and f.endswith(".npkd")}
    assert {_role(f) for f in data} == expect["synced"] - {"dir", "log", "snapshot tmp", "log tmp"}
    for f in data:
        last = max(i for i, e in enumerate(before) if e[0] in ("create", "write") and e[1] == f)
        assert _after(before, last, "sync", lambda x, f=f: x == f) > last, (
            f"{label}: {f} is not synced between its last write and the commit record: {ev}"
        )
    assert not [e for e in after if e[0] in ("create", "write") and e[1].endswith(".npkd")], (
        f"{label}: a data file written after the commit record: {after}"
    )
    made = [i for i, e in enumerate(before) if e[0] == "create" and e[1].endswith(".npkd")]
    assert {_role(before[i][1]) for i in made} == expect.get("created", set()), (label, before)
    if made:
        assert _after(before, made[-1], "sync", lambda x: x == ".") > made[-1], (
            f"{label}: the directory is not synced between the last new file and the commit: {ev}"
        )

    # 2. Undo records synced before a row is written in place.
    undo = [i for i, e in enumerate(before) if e == ("write", "numpack.log", "undo")]
    assert bool(undo) == expect.get("undo", False), f"{label}: undo records {undo}: {ev}"
    for u in undo:
        rows = _after(before, u, "write", lambda x: x.endswith(".npkd"))
        rows = c if rows < 0 else rows
        assert 0 <= _after(before, u, "sync", lambda x: x == "numpack.log") < rows, (
            f"{label}: rows written before their undo record was synced: {ev}"
        )
    assert not [e for e in before if e[0] == "write" and e[1] == "numpack.log" and not e[2]], ev

    # 3. Rows of pending undo records put back and synced before the log is cut there; a new
    # (or version 1) store's snapshot and log first.
    cuts = [i for i, e in enumerate(before) if e[:2] == ("truncate", "numpack.log")]
    if expect.get("recover"):
        assert len(cuts) == 1, f"{label}: the log is not cut after the last commit: {ev}"
        restored = [i for i, e in enumerate(before[: cuts[0]]) if e[0] == "write"]
        assert restored and before[restored[-1]][1].endswith(".npkd"), (label, before)
        synced = _after(before, restored[-1], "sync", lambda x: x == before[restored[-1]][1])
        assert 0 <= synced < cuts[0], f"{label}: the log is cut before the rows are synced: {ev}"
    else:
        assert not cuts, f"{label}: {ev}"
    if expect.get("renames"):
        assert _renames(before, 0, label) < c

    # 4. The commit record synced, then a fold, then retired files deleted.
    synced = _after(after, 0, "sync", lambda x: x == "numpack.log")
    assert synced >= 0, f"{label}: the commit record is not synced: {after}"
    moves = [i for i, e in enumerate(after) if e[0] == "rename"]
    if expect.get("fold"):
        assert moves and synced < moves[0], f"{label}: fold before the commit was synced: {after}"
        _renames(after, synced, label)
    else:
        assert not moves, f"{label}: unexpected renames: {after}"
        assert not [e for e in before if e[0] == "rename"] or expect.get("renames"), before
    retired = {_role(f) for what, f, _ in ev if what == "unlink" and f.endswith(".npkd")}
    assert retired == expect.get("retired", set()), f"{label}: deleted {retired}: {ev}"
    assert not [e for e in before if e[0] == "unlink" and e[1].endswith(".npkd")], (
        f"{label}: a data file deleted before the commit: {before}"
    )
    for i, e in enumerate(after):
        if e[0] == "unlink":
            assert i > synced, f"{label}: {e[1]} deleted before the commit was synced: {after}"


def test_not_durable_never_syncs(backend, tmp_path):
    lines = _trace(tmp_path, backend, durable=False)
    calls = [line for line in lines if line.split("(")[0] in SYNCS]
    assert not calls, calls[:10]
    stores = [str(tmp_path / "s"), str(tmp_path / "v1")]
    assert set(_segments(lines, stores)) == set(EXPECT)  # every call ran (and read back)


def test_durable_syncs_in_the_spec_order(backend, tmp_path):
    lines = _trace(tmp_path, backend, durable=True)
    segments = _segments(lines, [str(tmp_path / "s"), str(tmp_path / "v1")])
    assert set(segments) == set(EXPECT)
    failures = []
    for label, expect in EXPECT.items():
        try:
            _check_call(label, segments[label], expect)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n\n".join(failures)


def test_a_failed_call_inside_a_durable_transaction_undoes_only_itself(backend, tmp_path):
    """The files a failed call created are deleted, and the transaction goes on: its commit
    syncs what the other calls wrote (not the deleted files) and keeps their changes."""
    path = tmp_path / "s"
    npk = NumPack(path, backend=backend, durable=True)
    next_id = read_metadata(path)["next_file_id"]
    (path / f"{file_stem('y')}.{next_id + 1}.npkd").mkdir()  # y's data file cannot be made
    with npk.transaction():
        with pytest.raises(StoreIOError):
            npk.save({"x": np.arange(3.0), "y": np.arange(4.0)})  # x's file made, then deleted
        npk.save({"z": np.arange(5.0)})
    npk.close()
    assert not (path / f"{file_stem('x')}.{next_id}.npkd").exists()
    for b in [b for b in BACKENDS if b == "python" or rust_import_error() is None]:
        with NumPack(path, backend=b) as r:
            assert r.get_member_list() == ["z"]
            assert_same_array(r.load("z"), np.arange(5.0))
