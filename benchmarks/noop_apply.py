#!/usr/bin/env python3
"""Wall time of converged (no-op) `orchestrate apply` runs next to `docker-compose up -d` on an
equivalent service, measured in one run, with their ratios and the floor under them.

    python3 benchmarks/noop_apply.py [--image IMAGE] [--runs N] [--rows N [N ...]]

Timed, interleaved run by run so all see the same machine load (medians):

- `orchestrate apply` of a one-step db-container plan (issue 15: at most 0.5x Compose);
- `orchestrate apply plans/phase1.yaml`, all six steps (container, rendered files, migrations,
  copy, verify, backup), on a copy of the repository whose SQLite source holds --rows
  deployment_logs rows, once per size (default 10,000 and 1,000,000; issue 15: under 0.4 s and at
  most 0.6x Compose at every size: a converged apply must not read the data);
- `docker-compose up -d` on the equivalent compose file (the same image and PostgreSQL settings,
  its own names and port);
- the floor: a bare interpreter importing the libraries such an apply cannot do without (PyYAML,
  Jinja2, pydantic, docker-py; psycopg too for phase 1, whose steps query the database), and
  `python -c pass`.

Every tool first converges its own PostgreSQL container (different names and ports, same image);
the phase-1 copies are applied twice before timing and must report no change. Each run is timed
as a whole command, process start included, with the modules' bytecode cached (as after an
install), as a user or a pipeline runs it. Everything is removed afterwards (destroy --volumes,
then by label).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # examples.autodeploy
from floor import floor_cmd, floor_name  # noqa: E402  (benchmarks/ is this script's folder)
from phase1_env import LABEL as PHASE1_LABEL, Phase1Copy, cleanup_by_label, free_port  # noqa: E402
from startup import orchestrate_cmd  # noqa: E402

LABEL = "orchestrate.bench=noop"

PLAN = """\
name: bench-{tag}
vars: {{port: {port}}}
secrets:
  pw: {{env: BENCH_PW}}
steps:
  - name: postgres
    db-container:
      image: {image}
      container: bench-{tag}-orch
      volume: bench-{tag}-orch-data
      user: dbadmin
      password: "{{{{ secrets.pw }}}}"
      database: autodeploy
      ports: ["127.0.0.1:{{{{ vars.port }}}}:5432"]
      restart: unless-stopped
      healthcheck: {{interval: 1s, timeout: 5s, retries: 30}}
      settings: {{shared_buffers: 128MB, max_connections: 100}}
"""

COMPOSE = """\
services:
  postgres:
    image: {image}
    container_name: bench-{tag}-compose
    restart: unless-stopped
    environment:
      POSTGRES_USER: dbadmin
      POSTGRES_PASSWORD: ${{BENCH_PW}}
      POSTGRES_DB: autodeploy
    command: ["postgres", "-c", "max_connections=100", "-c", "shared_buffers=128MB"]
    ports: ["127.0.0.1:{port}:5432"]
    volumes: ["data:/var/lib/postgresql/data"]
    labels: ["{label}"]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -h 127.0.0.1 -U dbadmin -d autodeploy"]
      interval: 1s
      timeout: 5s
      retries: 30
volumes:
  data:
    name: bench-{tag}-compose-data
    labels: ["{label}"]
"""


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    sys.exit("neither docker-compose nor 'docker compose' is installed (apt-get install docker-compose)")


def timed(cmd: list[str], cwd: Path, env: dict, converged: bool = False) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    if converged and "Nothing changed" not in proc.stdout:
        sys.exit(f"{' '.join(cmd)} was not a no-op:\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rows", type=int, nargs="*", default=[10_000, 1_000_000],
                    help="deployment_logs rows of each phase-1 copy (none: the db-container plan only)")
    args = ap.parse_args()
    load_start = os.getloadavg()
    tag = uuid.uuid4().hex[:6]
    # bytecode cached as after an install (this project's sessions set PYTHONDONTWRITEBYTECODE),
    # into a temp folder rather than the source tree
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-"))
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "AUTODEPLOY_DB_PASSWORD")}
    base.update({"PYTHONPYCACHEPREFIX": str(work / "pycache"), "NO_COLOR": "1"})
    env = {**base, "BENCH_PW": "bench-" + uuid.uuid4().hex, "ORCHESTRATE_LABELS": LABEL}
    env_p1 = {**base, "ORCHESTRATE_LABELS": f"{PHASE1_LABEL},orchestrate.bench.run={tag}"}
    (work / "plan.yaml").write_text(PLAN.format(tag=tag, image=args.image, port=free_port()))
    (work / "docker-compose.yml").write_text(COMPOSE.format(tag=tag, image=args.image, port=free_port(), label=LABEL))
    orch = orchestrate_cmd()
    compose = compose_cmd() + ["-p", f"bench{tag}", "up", "-d"]
    compose_name = " ".join(compose_cmd()) + " up -d"
    copies = [Phase1Copy(work, f"phase1-{rows}", rows, args.image, tag, env_p1) for rows in args.rows]
    commands: dict[str, tuple[list[str], Path, dict, bool]] = {}
    try:
        print(f"converging ({args.image}) ...", flush=True)
        first_orch = timed(orch + ["apply", "plan.yaml"], work, env)
        first_compose = timed(compose, work, env)
        for copy in copies:
            t0 = time.perf_counter()
            counts = copy.prepare()
            applied, _ = copy.apply()
            print(f"  phase 1 at {sum(counts.values()):,} rows ({counts['deployment_logs']:,} log rows): SQLite "
                  f"written and applied in {time.perf_counter() - t0:.1f} s (the apply {applied:.1f} s)", flush=True)
            _, out = copy.orchestrate("apply")
            if "Nothing changed" not in out:
                sys.exit(f"the second apply of {copy.plan} changed something:\n{out}")
        # compose returns before the database is healthy; let it settle so both are converged
        subprocess.run(["docker", "wait", "--condition", "healthy", f"bench-{tag}-compose"], capture_output=True)
        time.sleep(2)
        commands["python -c pass"] = ([sys.executable, "-c", "pass"], work, env, False)
        commands[floor_name("apply, db-container plan")] = (floor_cmd("apply, db-container plan"), work, env, False)
        if copies:
            commands[floor_name("apply")] = (floor_cmd("apply"), work, env, False)
        commands[compose_name] = (compose, work, env, False)
        commands["orchestrate apply, db-container plan"] = (orch + ["apply", "plan.yaml"], work, env, True)
        for copy in copies:
            commands[f"orchestrate apply, phase 1, {copy.rows:,} rows"] = (
                orch + ["apply", str(copy.plan), *copy.extra], copy.root, env_p1, True)
        for cmd, cwd, e, converged in commands.values():     # one warm-up each (bytecode, page cache)
            timed(cmd, cwd, e, converged)
        results: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):        # interleaved, so all see the same machine load
            for name, (cmd, cwd, e, converged) in commands.items():
                results[name].append(timed(cmd, cwd, e, converged))
    finally:
        subprocess.run(orch + ["destroy", "plan.yaml", "--volumes", "--yes", "--no-backup"],
                       cwd=work, env=env, capture_output=True)
        subprocess.run(compose_cmd() + ["-p", f"bench{tag}", "down", "-v"], cwd=work, env=env, capture_output=True)
        for copy in copies:
            copy.destroy()
        cleanup_by_label(tag)
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    print(f"\nno-op apply on converged systems, {args.runs} runs each, interleaved (first converge: "
          f"db-container plan {first_orch:.2f} s, compose {first_compose:.2f} s); {os.cpu_count()} cores\n")
    compose_median = statistics.median(results[compose_name])
    width = max(len(n) for n in results) + 2
    print(f"{'command':<{width}}{'median s':>10}{'min s':>9}{'max s':>9}{'vs compose':>12}   target")
    for name, times in results.items():
        med = statistics.median(times)
        ratio = med / compose_median
        if name == "orchestrate apply, db-container plan":
            verdict = f"<= 0.5x compose: {'met' if ratio <= 0.5 else 'MISSED'}"
        elif name.startswith("orchestrate apply, phase 1"):
            verdict = (f"< 0.4 s: {'met' if med < 0.4 else 'MISSED'}; "
                       f"<= 0.6x compose: {'met' if ratio <= 0.6 else 'MISSED'}")
        else:
            verdict = "reference"
        print(f"{name:<{width}}{med:>10.3f}{min(times):>9.3f}{max(times):>9.3f}{ratio:>11.2f}x   {verdict}")
    print(f"\nload average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
