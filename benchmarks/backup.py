#!/usr/bin/env python3
"""`orchestrate backup` of the reference database next to the raw reference
`docker exec CONTAINER pg_dump -Fc > file`, measured in one run: wall time, dump MB/s and peak
RSS of each process. Targets (issue 15): orchestrate at most 1.05x the raw dump at --rows
(1,000,000) and at most 1.3x at --rows/10 (100,000), and flat memory (the same peak RSS at both).
The floor is printed beside them: the raw dump plus a bare interpreter importing the libraries a
backup cannot do without (PyYAML, Jinja2, pydantic, docker-py, psycopg), nothing of orchestrate.

    python3 benchmarks/backup.py [--rows 1000000] [--runs 3] [--image IMAGE]

Setup (not timed): two copies of the repository's plans, templates, migrations and example
application in temp directories (as tests/conftest.py's repo_copy does), each with the
deterministic SQLite database (examples.autodeploy.make_sqlite, seed 42) at --rows and at
--rows/10, and the phase-1 plan applied to each (its own container, volume and port, through -e),
which copies, verifies and backs up once. Then each round runs, interleaved and in alternating
order: `orchestrate backup` at --rows, the raw `docker exec ... pg_dump -Fc` into a file on the
host, `orchestrate backup` at --rows/10, and (in-process) the `table_fingerprints` that
orchestrate's backup takes in the same snapshot before it dumps. Every command is timed as a
whole process (start-up included) under `/usr/bin/time -f %M` for its peak RSS (for the raw
dump: the `docker` CLI process; pg_dump itself runs in the container for both). Medians.

`orchestrate backup` does more than the raw command: it counts every table's rows in the snapshot
the dump reads (so the lockfile describes the dump exactly), hashes the stream (sha256), fsyncs the
file and records it in the lockfile. That is reported as is. The content fingerprints a backup step
takes with `fingerprints: true` (off by default) are timed on their own, in-process, to show what
that option would add.

Everything created carries the labels orchestrate.bench=phase1 and orchestrate.bench.run=<tag>;
it is destroyed at the end whatever happens (orchestrate destroy --volumes, then by label).
Left-overs of a killed run: docker rm -f -v $(docker ps -aq --filter label=orchestrate.bench=phase1);
docker volume rm $(docker volume ls -q --filter label=orchestrate.bench=phase1).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))          # examples.autodeploy (and orchestrator, if not installed)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor import floor_cmd, floor_name  # noqa: E402
from phase1_env import LABEL, Phase1Copy, cleanup_by_label  # noqa: E402

TIME = "/usr/bin/time"


class Env(Phase1Copy):
    def apply(self) -> float:
        return super().apply()[0]

    def latest_backup(self) -> dict:
        return self.step_record("snapshot")["backups"][-1]


def timed(cmd: list[str], cwd: Path, env: dict, stdout_path: Path | None = None) -> tuple[float, float, str]:
    """Run CMD under /usr/bin/time; returns (wall seconds, peak RSS in MB, its output)."""
    rss_file = Path(tempfile.mktemp(prefix="bench-rss-"))
    full = [TIME, "-f", "%M", "-o", str(rss_file), *cmd]
    try:
        if stdout_path is not None:
            with open(stdout_path, "wb") as fh:
                start = time.perf_counter()
                proc = subprocess.run(full, cwd=cwd, env=env, stdout=fh, stderr=subprocess.PIPE)
                elapsed = time.perf_counter() - start
            output = proc.stderr.decode(errors="replace")
        else:
            start = time.perf_counter()
            proc = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{output}")
        rss_mb = int(rss_file.read_text().split()[-1]) / 1024
    finally:
        rss_file.unlink(missing_ok=True)
    return elapsed, rss_mb, output


def fingerprint_seconds(env: Env) -> float:
    """table_fingerprints as orchestrate's backup runs it: REPEATABLE READ, after exporting a
    snapshot, over every table of the schema."""
    import psycopg
    from orchestrator.steps.backup import table_fingerprints
    with env.connect() as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            conn.execute("SELECT pg_export_snapshot()").fetchone()
            start = time.perf_counter()
            table_fingerprints(conn)
            return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="deployment_logs rows (default 1000000)")
    ap.add_argument("--runs", type=int, default=3, help="measured rounds (default 3)")
    ap.add_argument("--image", default=os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15"))
    args = ap.parse_args()
    if not Path(TIME).exists():
        sys.exit(f"{TIME} is missing (apt-get install time)")
    tag = uuid.uuid4().hex[:6]
    env = {**os.environ, "ORCHESTRATE_LABELS": f"{LABEL},orchestrate.bench.run={tag}", "NO_COLOR": "1"}
    env.pop("AUTODEPLOY_DB_PASSWORD", None)
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-backup-"))
    small_rows = max(1, args.rows // 10)
    big = Env(work, "big", args.rows, args.image, tag, env)
    small = Env(work, "small", small_rows, args.image, tag, env)
    raw_file = work / "raw.dump"
    t_all = time.perf_counter()
    res: dict[str, list] = {"orch": [], "orch_rss": [], "raw": [], "raw_rss": [], "small": [], "small_rss": [],
                            "raw_small": [], "raw_small_rss": [], "fp": [], "validate": [],
                            "orch_size": [], "raw_size": [], "small_size": [], "raw_small_size": [], "floor": []}
    load_start = os.getloadavg()
    try:
        for e in (big, small):
            t0 = time.perf_counter()
            counts = e.prepare()
            t_sqlite = time.perf_counter() - t0
            print(f"[{e.root.name}] SQLite source: {sum(counts.values()):,} rows ({counts}) in {t_sqlite:.1f} s; "
                  f"applying the phase-1 plan ({args.image}) ...", flush=True)
            print(f"[{e.root.name}] applied (container, files, migrations, copy, verify, backup) in "
                  f"{e.apply():.1f} s", flush=True)

        orch_cmd = lambda e: ["orchestrate", "backup", str(e.plan), *e.extra]  # noqa: E731
        raw_cmd = lambda e: ["docker", "exec", e.container, "pg_dump", "-U", "dbadmin", "-d", "autodeploy", "-Fc"]  # noqa: E731

        # warm-up (not counted): both read the same tables once, so neither pays for a cold cache
        t, _, _ = timed(orch_cmd(big), big.root, env)
        t2, _, _ = timed(raw_cmd(big), big.root, env, raw_file)
        print(f"warm-up: orchestrate backup {t:.2f} s, raw pg_dump {t2:.2f} s", flush=True)

        def run_orch():
            t, rss, _ = timed(orch_cmd(big), big.root, env)
            res["orch"].append(t), res["orch_rss"].append(rss), res["orch_size"].append(big.latest_backup()["size"])
            return f"orchestrate {t:.2f} s {rss:.0f} MB"

        def run_raw():
            t, rss, _ = timed(raw_cmd(big), big.root, env, raw_file)
            res["raw"].append(t), res["raw_rss"].append(rss), res["raw_size"].append(raw_file.stat().st_size)
            return f"raw {t:.2f} s {rss:.0f} MB"

        def run_raw_small():
            t, rss, _ = timed(raw_cmd(small), small.root, env, raw_file)
            res["raw_small"].append(t), res["raw_small_rss"].append(rss)
            res["raw_small_size"].append(raw_file.stat().st_size)
            return f"raw@{small_rows:,} {t:.2f} s"

        def run_validate():       # the floor of any orchestrate command: start-up, imports, the plan
            t, _, _ = timed(["orchestrate", "validate", str(big.plan), *big.extra], big.root, env)
            res["validate"].append(t)
            return f"validate {t:.2f} s"

        def run_small():
            t, rss, _ = timed(orch_cmd(small), small.root, env)
            res["small"].append(t), res["small_rss"].append(rss)
            res["small_size"].append(small.latest_backup()["size"])
            return f"orchestrate@{small_rows:,} {t:.2f} s {rss:.0f} MB"

        def run_fp():
            t = fingerprint_seconds(big)
            res["fp"].append(t)
            return f"fingerprints {t:.2f} s"

        def run_floor():
            t, _, _ = timed(floor_cmd("backup"), big.root, env)
            res["floor"].append(t)
            return f"imports {t:.2f} s"

        order = [run_orch, run_raw, run_small, run_raw_small, run_fp, run_validate, run_floor]
        for i in range(args.runs):        # interleaved, alternating order, so all see the same load
            seq = order if i % 2 == 0 else order[::-1]
            print(f"run {i + 1}/{args.runs}: " + "; ".join(f() for f in seq), flush=True)
    finally:
        for e in (big, small):
            e.destroy()
        cleanup_by_label(tag)
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_all

    med = {k: statistics.median(v) for k, v in res.items() if v}
    mb = lambda n: n / 1e6  # noqa: E731
    print(f"\nbackup of the reference database ({args.rows:,} deployment_logs rows), {args.runs} interleaved runs "
          f"each, medians; dump {mb(med['orch_size']):.1f} MB (orchestrate) / {mb(med['raw_size']):.1f} MB (raw); "
          f"whole benchmark {total:.0f} s\n")
    rows = [
        ("orchestrate backup", res["orch"], med["orch_size"], med["orch_rss"]),
        ("docker exec pg_dump -Fc > file", res["raw"], med["raw_size"], med["raw_rss"]),
        (f"orchestrate backup @ {small_rows:,} rows", res["small"], med["small_size"], med["small_rss"]),
        (f"docker exec pg_dump @ {small_rows:,} rows", res["raw_small"], med["raw_small_size"], med["raw_small_rss"]),
        ("table_fingerprints alone (in-process)", res["fp"], None, None),
        ("orchestrate validate", res["validate"], None, None),
        (floor_name("backup"), res["floor"], None, None),
    ]
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'tool':<{width}}{'median s':>10}{'min s':>9}{'max s':>9}{'MB/s':>8}{'peak MB':>9}")
    for name, times, size, rss in rows:
        m = statistics.median(times)
        rate = f"{mb(size) / m:>8.1f}" if size else f"{'-':>8}"
        peak = f"{rss:>9.0f}" if rss is not None else f"{'-':>9}"
        print(f"{name:<{width}}{m:>10.2f}{min(times):>9.2f}{max(times):>9.2f}{rate}{peak}")

    ratio = med["orch"] / med["raw"]
    ratio_small = med["small"] / med["raw_small"]
    floor, floor_small = (med["raw"] + med["floor"]) / med["raw"], (med["raw_small"] + med["floor"]) / med["raw_small"]
    flat = med["orch_rss"] / med["small_rss"]
    share = med["fp"] / med["orch"]
    print(f"\nratio orchestrate / raw at {args.rows:,} rows: {ratio:.2f} (target at most 1.05x: "
          f"{'met' if ratio <= 1.05 else 'MISSED'}; floor {floor:.2f}x)")
    print(f"ratio orchestrate / raw at {small_rows:,} rows: {ratio_small:.2f} (target at most 1.3x: "
          f"{'met' if ratio_small <= 1.3 else 'MISSED'}; floor {floor_small:.2f}x)")
    print(f"  (floor: the raw dump plus the imports alone, {med['floor']:.2f} s: no Python command using these "
          f"libraries can do better)")
    print(f"peak RSS {med['orch_rss']:.0f} MB at {args.rows:,} rows vs {med['small_rss']:.0f} MB at "
          f"{small_rows:,} rows, ratio {flat:.2f} (target flat memory, within 1.15x: "
          f"{'met' if flat <= 1.15 else 'MISSED'})")
    print(f"orchestrate's extra {med['orch'] - med['raw']:.2f} s is mostly the fixed cost of any orchestrate "
          f"command (validate alone: {med['validate']:.2f} s; at {small_rows:,} rows orchestrate minus raw: "
          f"{med['small'] - med['raw_small']:.2f} s); fingerprints: true would add about {med['fp']:.2f} s "
          f"({share:.0%} of this backup's time)")
    load_end = os.getloadavg()
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
