"""A seeded ``kill -9`` campaign: the real CLI, killed at seeded moments in every backup path
(the backup step of an apply, ``orchestrate backup``, the backup before ``restore`` and the
restore itself, both halves of ``backup --drill``, the backup of ``destroy --volumes``) and during
the atomic writes of the lockfile and of a rendered file. After each kill the next command of the
plan removes what was left, says so, and leaves nothing behind (no partial dump, no temp file, no
throwaway container or volume, no copy inside the database container); the next apply exits 0,
takes any backup the killed apply owed, and verify passes.

One converged deployment serves every kill point; the seeds make each moment reproducible.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import pytest

from tests.conftest import ROOT, SESSION, TEST_LABEL

pytestmark = pytest.mark.integration

PLAN = f"kill-campaign-{SESSION}"   # its own plan name: no other test's run cleans up after it
RESTORE_DIR = "/tmp/orchestrate-restore"
# the real CLI, with every fsync of an atomic write's temp file slowed, so that a kill can land
# inside a lockfile or rendered-file write
SLOW_WRITES = """
import os, sys, time
real = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
        time.sleep(1.5)
    real(fd)
os.fsync = fsync
from orchestrator.cli import entry
sys.argv[0] = "orchestrate"
entry()
"""


@dataclass
class KillPoint:
    seed: int
    command: list[str]            # the orchestrate command killed
    moment: str                   # what is polled for before the seeded delay
    delay: tuple[float, float]    # the seeded delay after the moment, in seconds
    slow_writes: bool = False


KILL_POINTS = [
    KillPoint(11, ["apply"], "partial dump", (0.0, 0.03)),
    KillPoint(12, ["apply"], "partial dump", (0.0, 0.03)),
    KillPoint(21, ["backup"], "partial dump", (0.0, 0.03)),
    KillPoint(22, ["backup"], "partial dump", (0.0, 0.03)),
    KillPoint(31, ["restore", "--from", "latest", "--yes"], "partial dump", (0.0, 0.03)),
    KillPoint(32, ["restore", "--from", "latest", "--yes"], "restore copy", (0.0, 0.4)),
    KillPoint(41, ["backup", "--drill"], "throwaway created", (0.0, 1.0)),
    KillPoint(42, ["backup", "--drill"], "throwaway healthy", (0.0, 0.4)),
    KillPoint(51, ["destroy", "--volumes", "--yes"], "partial dump", (0.0, 0.03)),
    KillPoint(61, ["apply"], "lockfile temp file", (0.0, 1.0), slow_writes=True),
    KillPoint(62, ["apply"], "rendered file temp file", (0.0, 1.0), slow_writes=True),
]


class Deployment:
    def __init__(self, repo_copy, docker_client):
        self.repo, self.docker = repo_copy, docker_client
        self.backups = repo_copy.root / "backups"
        self.volume = repo_copy.container.removesuffix("-pg") + "-data"

    # what is there -----------------------------------------------------------------------------

    def lock(self) -> dict:
        return json.loads(self.repo.plan.with_suffix(".lock").read_text())

    def owed(self) -> list[str]:
        return self.lock()["steps"]["snapshot"]["observed"].get("owed", [])

    def containers(self, *labels) -> dict[str, str]:
        """Name -> status of this test's containers of the plan (summaries: no inspect race)."""
        flt = {"label": [f"{TEST_LABEL[0]}={TEST_LABEL[1]}", f"orchestrate.plan={PLAN}", *labels]}
        return {c["Names"][0].lstrip("/"): c["Status"] for c in self.docker.api.containers(all=True, filters=flt)}

    def volumes(self) -> list[str]:
        flt = {"label": [f"{TEST_LABEL[0]}={TEST_LABEL[1]}", f"orchestrate.plan={PLAN}"]}
        return [v["Name"] for v in self.docker.api.volumes(filters=flt).get("Volumes") or []]

    def throwaways(self) -> dict[str, str]:
        return self.containers("orchestrate.throwaway")

    def left(self) -> list[str]:
        """Everything an interrupted run may leave: files, Docker objects, the restore's copy."""
        found = [f"backups/{p.name}" for p in (self.backups.iterdir() if self.backups.is_dir() else [])
                 if p.name.startswith(".")]
        for folder in (self.repo.root, self.repo.plan.parent):
            found += [str(p.relative_to(self.repo.root)) for p in folder.iterdir() if p.name.endswith(".tmp")]
        containers = self.containers()
        found += [f"container {name}" for name in containers if name != self.repo.container]
        found += [f"volume {name}" for name in self.volumes() if name != self.volume]
        if containers.get(self.repo.container, "").startswith("Up"):
            if self.docker.containers.get(self.repo.container).exec_run(["test", "-e", RESTORE_DIR]).exit_code == 0:
                found.append(f"{RESTORE_DIR} in {self.repo.container}")
        return found

    # the moments -------------------------------------------------------------------------------

    def moment(self, name: str) -> Callable[[], bool]:
        tmp = lambda folder, prefix: lambda: any(p.name.startswith(prefix) and p.name.endswith(".tmp")  # noqa: E731
                                                 for p in folder.iterdir())
        return {
            "partial dump": lambda: self.backups.is_dir() and any(p.name.endswith(".partial")
                                                                 for p in self.backups.iterdir()),
            "restore copy": lambda: "loading" in self.lock()["steps"]["snapshot"]["observed"],
            "throwaway created": lambda: bool(self.throwaways()),
            "throwaway healthy": lambda: any("(healthy)" in status for status in self.throwaways().values()),
            "lockfile temp file": tmp(self.repo.plan.parent, ".phase1.lock."),
            "rendered file temp file": tmp(self.repo.root, "..env."),
        }[name]

    # running -----------------------------------------------------------------------------------

    def kill_at(self, point: KillPoint, log) -> None:
        rng = random.Random(point.seed)
        delay = rng.uniform(*point.delay)
        runner = ["-c", SLOW_WRITES] if point.slow_writes else ["-m", "orchestrator"]
        argv = [sys.executable, *runner, point.command[0], str(self.repo.plan), *self.repo.extra, *point.command[1:]]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=os.environ, stdout=out, stderr=subprocess.STDOUT)
        moment = self.moment(point.moment)
        deadline = time.monotonic() + 120
        while not moment():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"seed {point.seed}: never saw the {point.moment} of {point.command} "
                            f"(exit {proc.returncode}): {log.read_text()}")
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"seed {point.seed}: finished before the kill: {log.read_text()}"

    def prepare(self, point: KillPoint) -> None:
        """Make the killed command have work at its moment."""
        if point.command[0] == "apply":
            (self.repo.root / ".env").unlink()      # the files step changes: the apply owes a backup


def test_kill_9_campaign_leaves_nothing_behind(repo_copy, docker_client, tmp_path):
    repo_copy.plan.write_text(repo_copy.plan.read_text().replace("name: autodeploy-phase1\n", f"name: {PLAN}\n"))
    code, out = repo_copy.run("apply")
    assert code == 0, out
    dep = Deployment(repo_copy, docker_client)
    for point in KILL_POINTS:
        where = f"seed {point.seed}, {' '.join(point.command)} at its {point.moment}"
        dep.prepare(point)
        dep.kill_at(point, tmp_path / f"killed-{point.seed}.log")
        left, owed = dep.left(), dep.owed()
        print(f"{where}: left {left or 'nothing'}; backup owed for {owed or 'nothing'}")
        # the next command of the plan: apply, or (seeded) a backup first
        next_is_backup = random.Random(point.seed).random() < 0.3
        code, out = repo_copy.run("backup" if next_is_backup else "apply")
        assert code == 0, f"{where}: {out}"
        said = [line.split(": ", 1)[1].replace(" in container ", " in ").split(", ")
                for line in out.splitlines() if line.startswith("removed what an interrupted run left: ")]
        assert said == ([sorted(left)] if left else []) or sorted(said[0]) == sorted(left), \
            f"{where}: {left} left, and the next command said: {out}"
        assert dep.left() == [], f"{where}: still there after the next command"
        if owed and not next_is_backup:
            assert "changed: snapshot (backup): wrote" in out, f"{where}: the owed backup is taken: {out}"
        assert dep.owed() == [], f"{where}: taken, no longer owed"
        if next_is_backup:
            code, out = repo_copy.run("apply")
            assert code == 0 and "removed what an interrupted run left" not in out, f"{where}: {out}"
        code, out = repo_copy.run("verify")
        assert code == 0, f"{where}: {out}"
