#!/usr/bin/env python3
"""`orchestrate verify` right after the copy it checks, measured in one run on the reference
database: the copy (`orchestrate apply PLAN --only data` into the empty migrated tables) next to
`orchestrate verify PLAN --json`, and their ratio. Target (issue 15): verifying takes at most half the
copy's time.

    python3 benchmarks/verify.py [--rows 1000000] [--runs 3] [--image IMAGE]

Setup (not timed): a copy of the repository's plans, templates, migrations and example
application in a temp directory (as tests/conftest.py's repo_copy does), the deterministic SQLite
database (examples.autodeploy.make_sqlite, seed 42) at --rows deployment_logs rows, and the
phase-1 plan applied (its own container, volume and port, through -e). Each run then empties the
three tables (TRUNCATE), removes the data step's entry from the plan's lockfile and runs a
CHECKPOINT, so the copy really copies everything and does not pay for earlier dirty pages, then
times, as whole processes (start-up included):

  copy     orchestrate apply PLAN --only data     (its own load time: rows / the rows/s it prints)
  verify   orchestrate verify PLAN --json         (right after; the step's own time: details.seconds)

(apply --only check is not timed: a converged apply verifies lightly, without reading the data.)

Every run checks that the copy copied every row and that verify found everything equal.
Medians are reported, with the machine's load average at the start and at the end. The verify
step reads each source table once inside SQLite (a canonical text per row, built there; for a
table with an integer primary key, the md5 of each key range's rows joined in key order, else md5
and sum in one registered aggregate) while the server computes the same digest of the target;
only a table whose digests differ is loaded again into a temporary twin and compared row by row
(so a difference is still named).

Everything created carries the labels orchestrate.bench=phase1 and orchestrate.bench.run=<tag>;
it is destroyed at the end whatever happens (orchestrate destroy --volumes, then by label).
Left-overs of a killed run: docker rm -f -v $(docker ps -aq --filter label=orchestrate.bench=phase1);
docker volume rm $(docker volume ls -q --filter label=orchestrate.bench=phase1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))          # examples.autodeploy (and orchestrator, if not installed)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from phase1_env import LABEL, Phase1Copy, cleanup_by_label  # noqa: E402

TABLES = ("tenants", "deployments", "deployment_logs")


class Env(Phase1Copy):
    def __init__(self, base: Path, rows: int, image: str, tag: str, env: dict):
        super().__init__(base, "repo", rows, image, tag, env)

    def empty(self) -> None:
        """Empty the copied tables and forget the last copy, so the next apply copies everything."""
        with self.connect(autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(TABLES)}")
            conn.execute("CHECKPOINT")
        lock = json.loads(self.lock.read_text())
        lock["steps"].pop("data", None)
        self.lock.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")


COPIED = re.compile(r"changed: data\s+\(copy-data\): copied ([\d,]+) rows into \d+ table\(s\) \((\d+)k rows/s\)")
VERIFIED = re.compile(r"ok:\s+check\s+\(verify\): verified (\d+) table\(s\) and (\d+) check\(s\) in ([\d.]+)s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="deployment_logs rows (default 1000000)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs (default 3)")
    ap.add_argument("--image", default=os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15"))
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:6]
    env = {**os.environ, "ORCHESTRATE_LABELS": f"{LABEL},orchestrate.bench.run={tag}", "NO_COLOR": "1"}
    env.pop("AUTODEPLOY_DB_PASSWORD", None)
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-verify-"))
    e = Env(work, args.rows, args.image, tag, env)
    t_all = time.perf_counter()
    load_start = os.getloadavg()
    res: dict[str, list[float]] = {"copy": [], "copy_load": [], "verify": [], "verify_step": []}
    try:
        t0 = time.perf_counter()
        counts = e.prepare()
        total_rows = sum(counts.values())
        print(f"SQLite source: {total_rows:,} rows ({counts}) in {time.perf_counter() - t0:.1f} s; applying the "
              f"phase-1 plan ({args.image}) ...", flush=True)
        elapsed, out = e.apply()
        first = VERIFIED.search(out)
        print(f"applied (container, files, migrations, copy, verify, backup) in {elapsed:.1f} s; "
              f"{(COPIED.search(out) or [''])[0]}; {(first or [''])[0]}", flush=True)

        for i in range(args.runs):
            e.empty()
            t_copy, out = e.orchestrate("apply", "--only", "data")
            m = COPIED.search(out)
            if not m or int(m.group(1).replace(",", "")) != total_rows:
                raise RuntimeError(f"run {i + 1}: the copy did not copy all {total_rows} rows:\n{out}")
            copied, rate = int(m.group(1).replace(",", "")), int(m.group(2)) * 1000
            res["copy"].append(t_copy)
            res["copy_load"].append(copied / rate)

            t_verify, out = e.orchestrate("verify", "--json")
            doc = json.loads(out[out.index("{"):])
            details = next(s["details"] for s in doc["steps"] if s["type"] == "verify")
            if not details.get("ok"):
                raise RuntimeError(f"run {i + 1}: verify did not find everything equal:\n{json.dumps(details)}")
            res["verify"].append(t_verify)
            res["verify_step"].append(details["seconds"])

            print(f"run {i + 1}/{args.runs}: copy {t_copy:.2f} s (load {copied / rate:.2f} s, {rate // 1000}k rows/s); "
                  f"verify {t_verify:.2f} s (step {details['seconds']:.2f} s)", flush=True)
    finally:
        e.destroy()
        cleanup_by_label(tag)
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_all

    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\ncopy then verify of the reference database ({args.rows:,} deployment_logs rows, {total_rows:,} rows in all), "
          f"{args.runs} runs, each into emptied tables; medians; whole benchmark {total:.0f} s; load average "
          f"{' '.join(f'{x:.2f}' for x in load_start)} at the start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"at the end\n")
    print(f"{'what':<44}{'median s':>10}{'min s':>9}{'max s':>9}{'k rows/s':>10}")
    rows = [
        ("copy: orchestrate apply --only data", "copy"),
        ("  its load (rows / printed rows/s)", "copy_load"),
        ("verify: orchestrate verify --json", "verify"),
        ("  the step (details.seconds)", "verify_step"),
    ]
    for name, key in rows:
        times = res[key]
        print(f"{name:<44}{med[key]:>10.2f}{min(times):>9.2f}{max(times):>9.2f}{total_rows / med[key] / 1000:>10.0f}")
    ratio = med["verify"] / med["copy"]
    step_ratio = med["verify_step"] / med["copy_load"]
    print(f"\nratio verify / copy: {ratio:.2f} as commands, {step_ratio:.2f} step against load; target at most "
          f"0.5: {'met' if ratio <= 0.5 else 'NOT met'} (commands), {'met' if step_ratio <= 0.5 else 'NOT met'} (steps)")


if __name__ == "__main__":
    main()
