"""What the phase-1 benchmarks share: a copy of the repository (plans, templates, migrations,
the example application) with its own SQLite source, container, volume and port, driven through
the `orchestrate` command as a user runs it, and removed by label at the end."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPO_PARTS = ("plans", "templates", "alembic", "alembic.ini", "examples")
LABEL = "orchestrate.bench=phase1"


def copy_repo(root: Path, parts: tuple[str, ...] = REPO_PARTS) -> Path:
    """The repository's ``parts`` copied to ``root`` (no lockfile, secrets file or caches)."""
    root.mkdir()
    for part in parts:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.lock", "*.secrets",
                                                                            ".*.lck"))
        elif src.exists():
            shutil.copy(src, root / part)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Phase1Copy:
    """The phase-1 plan in a copy of the repository, with names and a port of its own."""

    def __init__(self, base: Path, name: str, rows: int, image: str, tag: str, env: dict):
        self.root = base / name
        self.rows = rows
        self.env = env
        self.container = f"bench-{tag}-{name}-pg"
        self.volume = f"bench-{tag}-{name}-data"
        self.port = free_port()
        self.plan = self.root / "plans" / "phase1.yaml"
        self.lock = self.plan.with_suffix(".lock")
        self.extra = ["-e", f"pg_image={image}", "-e", f"db_port={self.port}",
                      "-e", f"container_name={self.container}", "-e", f"volume_name={self.volume}"]
        self.applied = False

    def prepare(self) -> dict[str, int]:
        """Copy the repository and write the SQLite source at the requested size."""
        from examples.autodeploy import make_sqlite
        self.root.parent.mkdir(parents=True, exist_ok=True)
        copy_repo(self.root)
        for leftover in ("deployment_platform.db", ".env", "docker-compose.yml"):
            (self.root / leftover).unlink(missing_ok=True)
        return make_sqlite.write(self.root / "deployment_platform.db", self.rows)

    def orchestrate(self, command: str, *argv: str) -> tuple[float, str]:
        """Run an orchestrate command as a whole process; returns (wall seconds, stdout+stderr)."""
        start = time.perf_counter()
        proc = subprocess.run(["orchestrate", command, str(self.plan), *self.extra, *argv], cwd=self.root,
                              env=self.env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"orchestrate {command} {' '.join(argv)} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return elapsed, proc.stdout + proc.stderr

    def apply(self) -> tuple[float, str]:
        self.applied = True
        return self.orchestrate("apply")

    def connect(self, autocommit: bool = False):
        import psycopg
        import yaml
        password = yaml.safe_load(self.plan.with_suffix(".secrets").read_text())["db_password"]
        return psycopg.connect(host="127.0.0.1", port=self.port, user="dbadmin", password=password,
                               dbname="autodeploy", connect_timeout=5, autocommit=autocommit)

    def step_record(self, step: str) -> dict:
        return json.loads(self.lock.read_text())["steps"][step]["observed"]

    def destroy(self) -> None:
        if self.applied:
            subprocess.run(["orchestrate", "destroy", str(self.plan), *self.extra, "--volumes", "--yes",
                            "--no-backup"], cwd=self.root, env=self.env, capture_output=True)


def cleanup_by_label(tag: str) -> None:
    """Remove what a run left (its own tag only: other runs may be going on)."""
    flt = ["--filter", f"label={LABEL}", "--filter", f"label=orchestrate.bench.run={tag}"]
    ids = subprocess.run(["docker", "ps", "-aq", *flt], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)
    vols = subprocess.run(["docker", "volume", "ls", "-q", *flt], capture_output=True, text=True).stdout.split()
    if vols:
        subprocess.run(["docker", "volume", "rm", "-f", *vols], capture_output=True)
