#!/usr/bin/env python3
"""Phase 2's no-op costs, measured in one run: (a) a converged `orchestrate apply plans/phase2.yaml`
next to `docker-compose up -d` on the compose file that plan renders (docker-compose.phase2.yml),
and (b) the image step's context digest when nothing changed, on a generated 10,000-file context.
Targets: (a) orchestrate faster than Compose, and under 1 s; (b) under 0.3 s.

    python3 benchmarks/phase2.py [--runs 7] [--files 10000] [--digest-runs 7]
                                 [--pg-image IMAGE] [--python-image IMAGE]

Setup (not timed), with no registry: two copies of the repository's plans, templates, migrations
and example application in a temp directory (as tests/conftest.py's repo_copy does), the
application's wheels downloaded on the host into examples/autodeploy/wheels of each (as the
integration tests do), and two twin stacks of the same plan, each with its own names and ports
(-e container_name, app_container, network, volume_name, db_port, app_port); both use one image
tag (-e app_tag), built once:

  orchestrate  the phase-2 plan applied in the first copy (network, PostgreSQL, the application's
               image, migrations, the copy, the application, the rendered files, verify, backup)
  compose      the phase-2 plan applied in the second copy, then its containers removed with
               `orchestrate destroy` (volume, image and rendered files kept) and the same stack
               brought up by `docker-compose -f docker-compose.phase2.yml up -d` from the file and
               .env the plan rendered there: the same images, settings and data, owned by Compose
               (Compose cannot adopt containers it did not create: their names would clash)

Each side is then brought to a no-op (run until a run changes nothing), and timed --runs times,
interleaved, as whole commands (process start included), as a user or a pipeline runs them (by
default with Python's compiled bytecode cached, as after an ordinary install: see --bytecode); every
orchestrate run must report nothing changed, and every Compose run must leave the container ids as
they were. Medians and minimums side by side (the minimum shows the work itself on a busy machine).
Then (b): benchmarks/context_digest.py's measurement, imported and called.

Everything created carries the labels orchestrate.bench=phase2 and orchestrate.bench.run=<tag>
(Compose's containers: the names of this run) and is removed at the end whatever happens:
`orchestrate destroy --volumes --images`, `docker-compose down -v`, then by label and by name, the
image tag last. Left-overs of a killed run: docker rm -f -v $(docker ps -aq --filter
label=orchestrate.bench=phase2) and the containers, network and volume named bench-<tag>-*.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import context_digest  # noqa: E402

LABEL = "orchestrate.bench=phase2"
REPO_PARTS = ("plans", "templates", "alembic", "alembic.ini", "examples", "schema", ".dockerignore")
COMPOSE = ["/usr/bin/docker-compose"] if os.path.exists("/usr/bin/docker-compose") else ["docker-compose"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orchestrate_cmd() -> list[str]:
    """The console script next to this Python (not a pyenv shim, whose own start-up would be
    timed too), else ``python -m orchestrator``."""
    script = Path(sys.executable).parent / "orchestrate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def run(cmd: list[str], cwd: Path, env: dict, what: str | None = None) -> tuple[float, str]:
    """Runs a whole command; returns (wall seconds, stdout+stderr); fails naming it."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what or ' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return elapsed, proc.stdout + proc.stderr


def download_wheels(image: str, dest: Path) -> None:
    """The application's pinned requirements as wheels for the image's Python, downloaded on the
    host (as tests/integration/test_reference_app_image.py's download_wheels does)."""
    env = json.loads(subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Env}}", image],
                                    capture_output=True, text=True, check=True).stdout)
    version = next(e.split("=", 1)[1] for e in env if e.startswith("PYTHON_VERSION="))
    arch = platform.machine()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(dest),
                    "-r", str(REPO / "examples/autodeploy/requirements.txt"), "--only-binary=:all:",
                    "--python-version", ".".join(version.split(".")[:2]), "--platform", f"manylinux_2_28_{arch}",
                    "--platform", f"manylinux2014_{arch}"], check=True)


class Stack:
    """The phase-2 plan in a copy of the repository, with names and ports of its own."""

    def __init__(self, base: Path, side: str, tag: str, args, app_tag: str, env: dict):
        self.root = base / side
        self.name = f"bench-{tag}-{side}"
        self.env = env
        self.plan = self.root / "plans" / "phase2.yaml"
        self.db, self.app = f"{self.name}-pg", f"{self.name}-app"
        self.network, self.volume = f"{self.name}-net", f"{self.name}-data"
        self.project = f"bench{tag}{side}"
        self.extra = ["-e", f"pg_image={args.pg_image}", "-e", f"app_base_image={args.python_image}",
                      "-e", f"container_name={self.db}", "-e", f"app_container={self.app}",
                      "-e", f"network={self.network}", "-e", f"volume_name={self.volume}", "-e", f"app_tag={app_tag}",
                      "-e", f"db_port={free_port()}", "-e", f"app_port={free_port()}"]
        self.applied = False
        self.composed = False

    def prepare(self, wheels: Path) -> None:
        self.root.mkdir(parents=True)
        for part in REPO_PARTS:
            src = REPO / part
            if src.is_dir():
                shutil.copytree(src, self.root / part, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.lock", "*.secrets", ".*.lck", "wheels", "*.db", "backups"))
            else:
                shutil.copy(src, self.root / part)
        shutil.copytree(wheels, self.root / "examples/autodeploy/wheels")

    def orchestrate(self, command: str, *argv: str) -> tuple[float, str]:
        if command == "apply":
            self.applied = True
        return run([*orchestrate_cmd(), command, str(self.plan), *self.extra, *argv], self.root, self.env,
                   f"orchestrate {command} {' '.join(argv)}".strip())

    @property
    def compose(self) -> list[str]:
        return [*COMPOSE, "-p", self.project, "-f", str(self.root / "docker-compose.phase2.yml")]

    def compose_up(self) -> tuple[float, str]:
        self.composed = True
        return run([*self.compose, "up", "-d"], self.root, self.env, "docker-compose up -d")

    def ids(self) -> dict[str, str]:
        out = subprocess.run(["docker", "inspect", "--format", "{{.Name}} {{.Id}} {{.State.StartedAt}}",
                              self.db, self.app], capture_output=True, text=True).stdout
        return {line.split()[0]: line for line in out.splitlines()}

    def wait_healthy(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while True:
            out = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", self.db, self.app],
                                 capture_output=True, text=True).stdout.split()
            if out == ["healthy", "healthy"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.db}, {self.app}: not healthy within {seconds} s ({out})")
            time.sleep(1)

    def teardown(self) -> None:
        if self.composed:
            subprocess.run([*self.compose, "down", "-v", "--remove-orphans"], cwd=self.root, env=self.env,
                           capture_output=True)
        if self.applied:
            subprocess.run([*orchestrate_cmd(), "destroy", str(self.plan), *self.extra, "--volumes", "--images",
                            "--yes", "--no-backup"], cwd=self.root, env=self.env, capture_output=True)
        for kind, name in (("container", self.app), ("container", self.db), ("network", self.network),
                           ("volume", self.volume)):
            if subprocess.run(["docker", kind, "inspect", name], capture_output=True).returncode == 0:
                subprocess.run(["docker", kind, "rm", *(["-f", "-v"] if kind == "container" else []), name],
                               capture_output=True)


def cleanup(tag: str, app_tag: str, label: str = LABEL) -> list[str]:
    """Removes what is left of this run (its own tag only); returns what it had to remove."""
    flt = ["--filter", f"label={label}", "--filter", f"label=orchestrate.bench.run={tag}"]
    left = []
    for kind, listing, remove in (("container", ["docker", "ps", "-aq"], ["docker", "rm", "-f", "-v"]),
                                  ("network", ["docker", "network", "ls", "-q"], ["docker", "network", "rm"]),
                                  ("volume", ["docker", "volume", "ls", "-q"], ["docker", "volume", "rm", "-f"]),
                                  ("image", ["docker", "images", "-q"], ["docker", "rmi", "-f"])):
        ids = sorted(set(subprocess.run([*listing, *flt], capture_output=True, text=True).stdout.split()))
        if ids:
            left.append(f"{len(ids)} {kind}(s)")
            subprocess.run([*remove, *ids], capture_output=True)
    if subprocess.run(["docker", "image", "inspect", app_tag], capture_output=True).returncode == 0:
        left.append(f"image {app_tag}")
        subprocess.run(["docker", "rmi", "-f", app_tag], capture_output=True)
    return left


def recap(out: str) -> dict[str, int]:
    """The counts of an apply's last line, ``RECAP name: ok=9 changed=0 failed=0 skipped=0``."""
    line = next(line for line in reversed(out.splitlines()) if line.startswith("RECAP "))
    return {k: int(v) for k, v in (part.split("=") for part in line.split(":", 1)[1].split())}


def changed(out: str) -> bool:
    """An apply's output reports a change (or a failure)."""
    counts = recap(out)
    return counts["changed"] > 0 or counts["failed"] > 0


def converge(what: str, step, tries: int = 5) -> None:
    """Runs ``step`` until it reports that it changed nothing."""
    for _ in range(tries):
        if not step():
            return
    raise RuntimeError(f"{what} did not reach a no-op in {tries} runs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="timed no-op runs of each tool (default 7)")
    ap.add_argument("--files", type=int, default=10_000, help="files in the digest's context (default 10000)")
    ap.add_argument("--digest-runs", type=int, default=7, help="runs of the digest benchmark (default 7)")
    ap.add_argument("--bytecode", choices=("cached", "as-is"), default="cached",
                    help="cached (default): both tools run with their compiled bytecode cached, as after an "
                         "ordinary install, in a folder of the run (PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE "
                         "unset), not in the repository; as-is: the environment unchanged")
    ap.add_argument("--pg-image", default=os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15"))
    ap.add_argument("--python-image",
                    default=os.environ.get("ORCHESTRATE_TEST_PYTHON_IMAGE", "orchestrate-test/python:3.11"))
    args = ap.parse_args()
    for image in (args.pg_image, args.python_image):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            sys.exit(f"image {image} is missing (no registry here: bash tests/images/postgres/build.sh, "
                     f"bash tests/images/python/build.sh)")
    tag = uuid.uuid4().hex[:6]
    app_tag = f"orchestrate-bench/autodeploy-app:{tag}"
    env = {**os.environ, "ORCHESTRATE_LABELS": f"{LABEL},orchestrate.bench.run={tag}", "NO_COLOR": "1"}
    env.pop("AUTODEPLOY_DB_PASSWORD", None)
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-phase2-"))
    if args.bytecode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    orch, comp = Stack(work, "o", tag, args, app_tag, env), Stack(work, "c", tag, args, app_tag, env)
    t_all = time.perf_counter()
    res: dict[str, list[float]] = {"orchestrate apply": [], "docker-compose up -d": []}
    try:
        print(f"downloading the application's wheels on the host ({args.python_image}) ...", flush=True)
        download_wheels(args.python_image, work / "wheels")
        for stack in (orch, comp):
            stack.prepare(work / "wheels")
        print("applying plans/phase2.yaml for orchestrate's stack (the image is built) ...", flush=True)
        first_orch, _ = orch.orchestrate("apply")
        print(f"  converged in {first_orch:.1f} s; applying it for Compose's twin stack, then handing it to "
              f"Compose ...", flush=True)
        first_twin, out = comp.orchestrate("apply")
        if f"built {app_tag}" in out:
            print("  note: the twin apply rebuilt the image; orchestrate's stack is converged again below")
        comp.orchestrate("destroy", "--yes")      # containers only: volume, image and rendered files kept
        first_compose, _ = comp.compose_up()
        comp.wait_healthy()
        print(f"  twin applied in {first_twin:.1f} s, brought up by Compose in {first_compose:.1f} s", flush=True)

        # both at a no-op before timing
        converge("orchestrate apply", lambda: changed(orch.orchestrate("apply")[1]))

        def compose_changed() -> bool:
            before = comp.ids()
            comp.compose_up()
            comp.wait_healthy()
            return comp.ids() != before

        converge("docker-compose up -d", compose_changed)
        before = comp.ids()

        for i in range(args.runs):        # interleaved, so both see the same machine load
            t, out = orch.orchestrate("apply")
            if changed(out):
                raise RuntimeError(f"run {i + 1}: the converged apply changed something:\n{out}")
            res["orchestrate apply"].append(t)
            t, _ = comp.compose_up()
            if comp.ids() != before:
                raise RuntimeError(f"run {i + 1}: docker-compose up -d recreated or restarted a container")
            res["docker-compose up -d"].append(t)
            print(f"run {i + 1}/{args.runs}: orchestrate {res['orchestrate apply'][-1]:.3f} s, "
                  f"docker-compose {t:.3f} s", flush=True)
        _, last = orch.orchestrate("apply")
    finally:
        for stack in (comp, orch):      # Compose's containers first: then the image is free
            stack.teardown()
        left = cleanup(tag, app_tag)
        shutil.rmtree(work, ignore_errors=True)
        if left:
            print(f"cleanup: removed by label/name what teardown left: {', '.join(left)}")
    total = time.perf_counter() - t_all

    print(f"\n(a) no-op on the converged phase-2 stack (db + app on one network; {sum(recap(last).values())} plan "
          f"steps, {recap(last)['ok']} ok), "
          f"{args.runs} interleaved runs each, whole commands, bytecode {args.bytecode}; setup and runs "
          f"{total:.0f} s\n")
    print(f"{'tool':<26}{'median s':>10}{'min s':>9}{'max s':>9}")
    med = {}
    for name, times in res.items():
        med[name] = statistics.median(times)
        print(f"{name:<26}{med[name]:>10.3f}{min(times):>9.3f}{max(times):>9.3f}")
    o, c = med["orchestrate apply"], med["docker-compose up -d"]
    o_min, c_min = min(res["orchestrate apply"]), min(res["docker-compose up -d"])
    print(f"\nratio orchestrate / docker-compose: {o / c:.2f} median, {o_min / c_min:.2f} min; "
          f"target faster than Compose: {'met' if o < c else 'NOT met'}; "
          f"target under 1 s: {'met' if o < 1 else 'NOT met'} (median), {'met' if o_min < 1 else 'NOT met'} (min) "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

    print(f"\n(b) the image step's context digest (benchmarks/context_digest.py), {args.files:,}-file context\n")
    context_digest.report(context_digest.measure(args.files, args.digest_runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
