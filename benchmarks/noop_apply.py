#!/usr/bin/env python3
"""Wall time of a converged `orchestrate apply` next to `docker-compose up -d` on the equivalent
compose file, measured in one run, and their ratio. Target: under 0.5 s, and faster than Compose.

    python3 benchmarks/noop_apply.py [--image IMAGE] [--runs N]

Both tools first converge their own PostgreSQL container (different names and ports, same image
and configuration); then each no-op run is timed as a whole command, process start included, as
a user or a pipeline would run it. Everything is removed afterwards (by label).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    sys.exit("neither docker-compose nor 'docker compose' is installed (apt-get install docker-compose)")


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15"))
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:6]
    env = {**os.environ, "BENCH_PW": "bench-" + uuid.uuid4().hex, "ORCHESTRATE_LABELS": LABEL, "NO_COLOR": "1"}
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-"))
    (work / "plan.yaml").write_text(PLAN.format(tag=tag, image=args.image, port=free_port()))
    (work / "docker-compose.yml").write_text(COMPOSE.format(tag=tag, image=args.image, port=free_port(), label=LABEL))
    orch = [sys.executable, "-m", "orchestrator", "apply", "plan.yaml"]
    compose = compose_cmd() + ["-p", f"bench{tag}", "up", "-d"]
    try:
        print(f"converging both ({args.image}) ...", flush=True)
        first_orch = timed(orch, work, env)
        first_compose = timed(compose, work, env)
        # compose returns before the database is healthy; let it settle so both are converged
        subprocess.run(["docker", "wait", "--condition", "healthy", f"bench-{tag}-compose"], capture_output=True)
        time.sleep(2)
        compose_name = " ".join(compose_cmd()) + " up -d"
        results = {"orchestrate apply": [], compose_name: []}
        for _ in range(args.runs):        # interleaved, so both see the same machine load
            results["orchestrate apply"].append(timed(orch, work, env))
            results[compose_name].append(timed(compose, work, env))
    finally:
        subprocess.run([sys.executable, "-m", "orchestrator", "destroy", "plan.yaml", "--volumes", "--yes"],
                       cwd=work, env=env, capture_output=True)
        subprocess.run(compose_cmd() + ["-p", f"bench{tag}", "down", "-v"], cwd=work, env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nno-op apply on a converged PostgreSQL container, {args.runs} runs each (first converge: "
          f"orchestrate {first_orch:.2f} s, compose {first_compose:.2f} s)\n")
    print(f"{'tool':<26}{'median s':>10}{'min s':>10}{'max s':>10}")
    medians = {}
    for name, times in results.items():
        medians[name] = statistics.median(times)
        print(f"{name:<26}{medians[name]:>10.3f}{min(times):>10.3f}{max(times):>10.3f}")
    orch_median, compose_median = medians.values()
    print(f"\nratio orchestrate / compose: {orch_median / compose_median:.2f} "
          f"({'faster' if orch_median < compose_median else 'slower'} than Compose); "
          f"target under 0.5 s: {'met' if orch_median < 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
