"""What counts as a leftover of an interrupted run (and nothing else), and the stream bounds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from orchestrator.errors import StepFailed
from orchestrator.fsutil import atomic_write, temp_files
from orchestrator.lockfile import Lockfile
from orchestrator.steps.backup import owe, partials, watched
from orchestrator.throwaway import OWNER_LABEL, PURPOSE_LABEL, is_leftover

PLAN = "autodeploy-phase1"


def test_temp_files_are_exactly_those_atomic_write_leaves(tmp_path):
    lock = tmp_path / "phase1.lock"
    atomic_write(lock, "{}")
    fd, left = tempfile.mkstemp(prefix=".phase1.lock.", suffix=".tmp", dir=tmp_path)   # as a kill leaves it
    os.close(fd)
    for other in (".phase1.lock.tmp", ".phase1.lock.abcdefgh.tmp.bak", ".other.lock.abcdefgh.tmp", "phase1.lock.abcdefgh.tmp"):
        (tmp_path / other).write_text("not a leftover of this file")
    assert temp_files(lock) == [tmp_path / os.path.basename(left)]
    assert temp_files(tmp_path / "missing" / "x.lock") == []


def test_partial_dumps_of_this_plan_only(tmp_path):
    mine = [f".{PLAN}-20261201T101010Z.dump.partial", f".{PLAN}-20261201T101010Z-2.sql.partial"]
    others = [f"{PLAN}-20261201T101010Z.dump", f".other-20261201T101010Z.dump.partial",
              f".{PLAN}-notes.dump.partial", f".{PLAN}-extra-20261201T101010Z.dump.partial", "notes.txt"]
    for name in mine + others:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in partials(tmp_path, PLAN)) == sorted(mine)
    assert partials(tmp_path / "missing", PLAN) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_throwaway_is_a_leftover_only_when_its_owner_is_gone_and_everything_matches():
    host = socket.gethostname()
    dead = {"orchestrate.plan": PLAN, PURPOSE_LABEL: "drill", OWNER_LABEL: f"{host}:{_dead_pid()}"}
    name = f"{PLAN}-drill-0123abcd"
    assert is_leftover(name, dead, PLAN)
    assert is_leftover(name, {"orchestrate.plan": PLAN, "orchestrate.drill": "1a2b"}, PLAN), "an older drill"
    assert not is_leftover(name, {**dead, OWNER_LABEL: f"{host}:{os.getpid()}"}, PLAN), "this process"
    assert not is_leftover(name, {**dead, OWNER_LABEL: f"{host}:{os.getppid()}"}, PLAN), "a live process"
    assert not is_leftover(name, {**dead, OWNER_LABEL: f"elsewhere:{_dead_pid()}"}, PLAN), "another host"
    assert not is_leftover("other-drill-0123abcd", dead, PLAN), "another name"
    assert not is_leftover(name, {**dead, "orchestrate.plan": "other"}, PLAN), "another plan"
    no_purpose = {k: v for k, v in dead.items() if k != PURPOSE_LABEL}
    assert not is_leftover(f"{PLAN}-data", no_purpose, PLAN), "not a throwaway"
    assert not is_leftover(name, {**dead, "orchestrate.volume-created": "2026"}, PLAN), "never a data volume"


class Stalling:
    """A Docker stream that sends ``chunks`` and then nothing, until closed."""

    def __init__(self, chunks):
        self.chunks, self.closed = list(chunks), threading.Event()

    def __iter__(self):
        return self

    def __next__(self):
        if self.chunks:
            return self.chunks.pop(0)
        self.closed.wait(30)
        raise StopIteration

    def close(self):
        self.closed.set()


def test_a_silent_stream_trips_its_bound_saying_what_and_how_long():
    stream = Stalling([(b"a", None), (b"b", None)])
    got = []
    with pytest.raises(StepFailed, match=r"^pg_dump sent nothing for 0.3s; gave up waiting$"):
        for chunk in watched(stream, "pg_dump", idle=0.3):
            got.append(chunk)
    assert got == [(b"a", None), (b"b", None)] and stream.closed.is_set()


def test_a_stream_that_lasts_too_long_trips_its_total_bound():
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"restoring x did not finish within 0.5s"):
        list(watched(Stalling([]), "restoring x", total=0.5))
    assert time.monotonic() - start < 10


def test_a_stream_that_ends_passes_through():
    class Done(Stalling):
        def __next__(self):
            if self.chunks:
                return self.chunks.pop(0)
            raise StopIteration
    assert list(watched(Done([(b"x", b"y")]), "pg_dump", idle=0.3)) == [(b"x", b"y")]


def test_a_backup_stays_owed_by_every_step_that_changed(tmp_path):
    lock = Lockfile(tmp_path / "p.lock")
    owe(lock, "snapshot", "files")
    owe(lock, "snapshot", "data")
    owe(lock, "snapshot", "files")
    assert lock.step("snapshot") == {"type": "backup", "observed": {"owed": ["files", "data"]}}
