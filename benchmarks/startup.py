#!/usr/bin/env python3
"""Start-up time of light commands next to references measured in the same run. Targets (issue
15): `orchestrate validate plans/phase1.yaml` under 0.15 s, `orchestrate --help` under 0.1 s.

    python3 benchmarks/startup.py [--runs N]

Every command is timed as a whole process, interpreter start included, as a user types it: the
console script `orchestrate` of this interpreter (not a pyenv shim, which alone costs ~80 ms).
The repository's plans are copied to a temp folder; `validate` runs there twice:

  fresh      no lockfile: the migrate step loads the Alembic scripts (heads, target), which
             imports alembic and SQLAlchemy: real validation work
  converged  a lockfile as an apply that reached the head leaves it (the migrate step's record
             only, made here without Docker or a database): the scripts are known unchanged by
             their stamp, nothing heavy is imported

References in the same run: the bare interpreter (`python -c pass`, `python -S -c pass`), the
floor under validate (the interpreter importing PyYAML, Jinja2 and pydantic, which validating a
plan with templates needs, and nothing of orchestrate) and, when present, `docker --version` and
`docker-compose version` / `docker compose version`.
All commands are interleaved run by run, so all see the same machine load; medians are reported,
with the load average at start and end. Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from floor import floor_cmd, floor_name  # benchmarks/ is this script's folder, first on sys.path
from phase1_env import copy_repo

REPO = Path(__file__).resolve().parents[1]
PARTS = ("plans", "templates", "alembic", "alembic.ini", "examples", "schema", ".dockerignore")
HEAVY = ("docker", "requests", "sqlalchemy", "alembic", "psycopg", "paramiko", "urllib3")
TARGETS = {"orchestrate --help": 0.10, "orchestrate validate (converged)": 0.15,
           "orchestrate validate (fresh)": 0.15}


def orchestrate_cmd() -> list[str]:
    script = Path(sys.executable).with_name("orchestrate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "orchestrator"]


def converged_lockfile(plan_path: Path) -> bool:
    """Write the lockfile an apply that reached the migrations' head would leave for the migrate
    steps (their record only; the other steps' checks do not read it). False if it cannot."""
    sys.path.insert(0, str(REPO))
    from orchestrator.executor import validate
    from orchestrator.lockfile import Lockfile
    from orchestrator.plan import load_plan
    plan = load_plan(plan_path)
    lock = Lockfile(plan.lock_path)
    for step, res in validate(plan):
        if not hasattr(res, "_stamp"):        # a migrate step
            continue
        stamp = res._stamp()
        head = res._script().get_current_head()
        if not stamp or not head:
            return False
        lock.set_step(step.name, {"observed": {"scripts": stamp, "revision": head, "target_revision": head}})
    lock.save()
    return True


def heavy_loaded(cmd: list[str], cwd: Path) -> list[str]:
    """The heavy top-level packages the command really imports (from -X importtime)."""
    exe = [sys.executable, "-X", "importtime", "-m", "orchestrator"] + cmd[1:]
    done = subprocess.run(exe, cwd=cwd, capture_output=True, text=True)
    names = {line.split("|")[2].strip().split(".")[0] for line in done.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    return sorted(names & set(HEAVY))


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    load_start = os.getloadavg()
    orch = orchestrate_cmd()
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-startup-"))
    # as installed, the modules' bytecode is cached; an environment with PYTHONDONTWRITEBYTECODE
    # (as this project's sessions have) compiles every module at every start instead. The cache
    # goes to a temp folder (PYTHONPYCACHEPREFIX), not into the source tree.
    no_pyc = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    no_pyc["PYTHONDONTWRITEBYTECODE"] = "1"     # orchestrator's own modules compiled at every start
    #                                             (when the source tree holds no __pycache__)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        fresh = copy_repo(work / "fresh", PARTS)
        converged = copy_repo(work / "converged", PARTS)
        made = converged_lockfile(converged / "plans" / "phase1.yaml")
        commands: dict[str, tuple[list[str], Path, dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], work, env),
            "python -S -c pass": ([sys.executable, "-S", "-c", "pass"], work, env),
            floor_name("validate"): (floor_cmd("validate"), work, env),
        }
        if shutil.which("docker"):
            commands["docker --version"] = (["docker", "--version"], work, env)
        if shutil.which("docker-compose"):
            commands["docker-compose version"] = (["docker-compose", "version"], work, env)
        elif shutil.which("docker") and not subprocess.run(["docker", "compose", "version"],
                                                           capture_output=True).returncode:
            commands["docker compose version"] = (["docker", "compose", "version"], work, env)
        commands["orchestrate --help"] = (orch + ["--help"], work, env)
        commands["orchestrate validate (fresh)"] = (orch + ["validate", "plans/phase1.yaml"], fresh, env)
        if made:
            commands["orchestrate validate (converged)"] = (orch + ["validate", "plans/phase1.yaml"], converged, env)
            commands["  same, PYTHONDONTWRITEBYTECODE=1"] = (orch + ["validate", "plans/phase1.yaml"], converged, no_pyc)
        heavy = {name: heavy_loaded(cmd, cwd) for name, (cmd, cwd, _) in commands.items()
                 if name.startswith("orchestrate")}
        results: dict[str, list[float]] = {name: [] for name in commands}
        for name, (cmd, cwd, e) in commands.items():   # one warm-up each (page cache, bytecode)
            timed(cmd, cwd, e)
        for _ in range(args.runs):                     # interleaved: all see the same load
            for name, (cmd, cwd, e) in commands.items():
                results[name].append(timed(cmd, cwd, e))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    bare = statistics.median(results["python -c pass"])
    print(f"\nstart-up, {args.runs} runs each, interleaved; {sys.executable} "
          f"(Python {sys.version.split()[0]}), {os.cpu_count()} cores\n")
    width = max(len(n) for n in results) + 2
    print(f"{'command':<{width}}{'median s':>10}{'min s':>9}{'max s':>9}{'x python':>10}   target")
    for name, times in results.items():
        med = statistics.median(times)
        target = TARGETS.get(name)
        verdict = (f"< {target:.2f} s {'met' if med < target else 'MISSED'}" if target else "")
        print(f"{name:<{width}}{med:>10.3f}{min(times):>9.3f}{max(times):>9.3f}{med / bare:>10.2f}   {verdict}")
    print("\nheavy libraries imported: " + "; ".join(f"{n.removeprefix('orchestrate ')}: {', '.join(h) or 'none'}"
                                                   for n, h in heavy.items()))
    if not made:
        print("(no converged lockfile could be made here: the converged row is missing)")
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
