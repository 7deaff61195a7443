#!/usr/bin/env python3
"""What a client sees while a release replaces the application: start-first next to stop-first, in
one run. A bounded load loop GETs /tenants through nginx (127.0.0.1 only, a fixed request rate)
from a little before `orchestrate apply plans/phase2.yaml` starts to a little after it ends, while
the apply rebuilds the application's image and replaces its container; per strategy it reports
the requests, the failed ones (and how they failed), latency percentiles and the apply's duration.

    python3 benchmarks/replace.py [--releases 3] [--rate 40] [--threads 2] [--lead 1] [--tail 2]
                                  [--pg-image IMAGE] [--python-image IMAGE] [--nginx-image IMAGE]

Setup (not measured): a copy of the repository's plans, templates, migrations and example
application in a temp directory (as tests/conftest.py's repo_copy does), the application's wheels
downloaded on the host into its examples/autodeploy/wheels (as the integration tests do), and one
phase-2 stack with names and ports of its own (-e container_name, app_container, proxy_container,
network, volume_name, app_tag, db_port, http_port on 127.0.0.1), converged with
-e publish_app=false: the application has no host port, nginx is the only way in, and the
application's default replacement is start-first.

Then --releases releases each way, interleaved (the order alternates from one release to the
next, so both strategies see the same machine): a source change of the application (a comment
appended to examples/autodeploy/app/__init__.py in the copy) applied once as the plan says
(start-first) and once with -e app_replace=stop-first (the old container stops, then the new one
starts). Every apply must succeed and report the replacement ("moving traffic to it" for
start-first only). Latency is that of every request sent in the window, failed ones included
(a request times out after 10 s).

Everything created carries the labels orchestrate.bench=replace and orchestrate.bench.run=<tag>
and is removed at the end whatever happens: `orchestrate destroy --volumes --images`, then by
label and by name, the image tag last. Left-overs of a killed run: docker rm -f -v $(docker ps -aq
--filter label=orchestrate.bench=replace) and the containers, network and volume named
bench-<tag>-*.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from phase2 import REPO_PARTS, changed, download_wheels, free_port, orchestrate_cmd  # noqa: E402
from phase2 import cleanup as phase2_cleanup  # noqa: E402

LABEL = "orchestrate.bench=replace"
STRATEGIES = ("start-first", "stop-first")


def failure_kind(exc: BaseException) -> str:
    """A short, stable name for how a request failed."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "closed without a response"
    return f"{type(reason).__name__}: {str(reason)[:60]}"


class Load:
    """GETs ``url`` from ``threads`` threads at ``rate`` requests a second in all (each thread a
    request at a time, on a fixed schedule, never catching up in bursts), until stopped or
    ``limit`` requests; records (start, latency, failure kind or None) for every request."""

    def __init__(self, url: str, rate: float, threads: int, limit: int):
        self.url, self.limit = url, limit
        self.interval = threads / rate           # each thread's period
        self.records: list[tuple[float, float, str | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k * self.interval / threads,), daemon=True)
                         for k in range(threads)]

    def _run(self, offset: float) -> None:
        due = self.t0 + offset
        while not self._stop.is_set():
            wait = due - time.perf_counter()
            if wait > 0 and self._stop.wait(wait):
                return
            with self._lock:
                if len(self.records) >= self.limit:
                    return
            start = time.perf_counter()
            kind = None
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    body = response.read()
                    if response.status != 200 or not body:
                        kind = f"HTTP {response.status}" if response.status != 200 else "empty body"
            except Exception as exc:  # noqa: BLE001 - every failure counts, whatever it is
                kind = failure_kind(exc)
            end = time.perf_counter()
            with self._lock:
                self.records.append((start - self.t0, end - start, kind))
            due = max(due + self.interval, end)

    def start(self) -> None:
        self.t0 = time.perf_counter()
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


class Stack:
    """The phase-2 plan in a copy of the repository, with names and ports of its own."""

    def __init__(self, base: Path, tag: str, args, app_tag: str, env: dict):
        self.root = base / "repo"
        self.name = f"bench-{tag}"
        self.env = env
        self.plan = self.root / "plans" / "phase2.yaml"
        self.db, self.app, self.proxy = f"{self.name}-pg", f"{self.name}-app", f"{self.name}-nginx"
        self.network, self.volume = f"{self.name}-net", f"{self.name}-data"
        self.http_port = free_port()
        self.extra = ["-e", f"pg_image={args.pg_image}", "-e", f"app_base_image={args.python_image}",
                      "-e", f"nginx_image={args.nginx_image}",
                      "-e", f"container_name={self.db}", "-e", f"app_container={self.app}",
                      "-e", f"proxy_container={self.proxy}", "-e", f"network={self.network}",
                      "-e", f"volume_name={self.volume}", "-e", f"app_tag={app_tag}",
                      "-e", f"db_port={free_port()}", "-e", f"app_port={free_port()}",
                      "-e", f"http_port=127.0.0.1:{self.http_port}", "-e", "publish_app=false",
                      "-e", "demo_rows=500"]
        self.applied = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/tenants"

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

    def apply(self, *argv: str) -> tuple[int, float, str]:
        """``orchestrate apply`` as a whole command: (exit code, wall seconds, output)."""
        self.applied = True
        start = time.perf_counter()
        proc = subprocess.run([*orchestrate_cmd(), "apply", str(self.plan), *self.extra, *argv], cwd=self.root,
                              env=self.env, capture_output=True, text=True)
        return proc.returncode, time.perf_counter() - start, proc.stdout + proc.stderr

    def apply_ok(self, *argv: str) -> tuple[float, str]:
        code, seconds, out = self.apply(*argv)
        if code != 0:
            raise RuntimeError(f"orchestrate apply {' '.join(argv)} failed (exit {code}):\n{out}")
        return seconds, out

    def app_ports(self) -> str:
        return subprocess.run(["docker", "inspect", "--format", "{{json .HostConfig.PortBindings}}", self.app],
                              capture_output=True, text=True, check=True).stdout.strip()

    def wait_serving(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.url} does not answer 200 within {seconds} s ({exc})") from None
            time.sleep(0.5)

    def teardown(self) -> None:
        if self.applied:
            subprocess.run([*orchestrate_cmd(), "destroy", str(self.plan), *self.extra, "--volumes", "--images",
                            "--yes", "--no-backup"], cwd=self.root, env=self.env, capture_output=True)
        for kind, name in (("container", self.proxy), ("container", self.app), ("container", self.db),
                           ("network", self.network), ("volume", self.volume)):
            if subprocess.run(["docker", kind, "inspect", name], capture_output=True).returncode == 0:
                subprocess.run(["docker", kind, "rm", *(["-f", "-v"] if kind == "container" else []), name],
                               capture_output=True)


def cleanup(tag: str, app_tag: str) -> list[str]:
    """Removes what is left of this run (its own tag only); returns what it had to remove."""
    return phase2_cleanup(tag, app_tag, LABEL)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def release(stack: Stack, n: int, strategy: str, args) -> dict:
    """One source change applied with ``strategy`` under load; returns its figures."""
    app_file = stack.root / "examples/autodeploy/app/__init__.py"
    app_file.write_text(app_file.read_text() + f"\n# release {n} ({strategy})\n")
    load = Load(stack.url, args.rate, args.threads, args.max_requests)
    load.start()
    time.sleep(args.lead)
    apply_start = time.perf_counter() - load.t0
    code, seconds, out = stack.apply(*(["-e", "app_replace=stop-first"] if strategy == "stop-first" else []))
    time.sleep(args.tail)
    load.stop()
    if code != 0:
        raise RuntimeError(f"release {n} ({strategy}): apply failed (exit {code}):\n{out}")
    if "recreated container (image)" not in out:
        raise RuntimeError(f"release {n} ({strategy}): the application was not replaced:\n{out}")
    if ("moving traffic to it" in out) != (strategy == "start-first"):
        raise RuntimeError(f"release {n} ({strategy}): the apply did not replace {strategy}:\n{out}")
    failed = [(t, lat) for t, lat, kind in load.records if kind]
    slowest = max(load.records, key=lambda r: r[1])
    return {"records": load.records, "apply": seconds, "apply_start": apply_start,
            "slowest": (slowest[1], slowest[0] - apply_start),
            "gap": (min(t for t, _ in failed) - apply_start, max(t + lat for t, lat in failed) - apply_start)
            if failed else None}


def summary(runs: list[dict]) -> dict:
    records = [r for run in runs for r in run["records"]]
    latencies = [lat * 1000 for _, lat, _ in records]
    kinds: dict[str, int] = {}
    for _, _, kind in records:
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"requests": len(records), "failed": sum(kinds.values()), "kinds": kinds,
            "p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
            "max": max(latencies), "slow": sum(1 for lat in latencies if lat > 1000),
            "apply": [run["apply"] for run in runs],
            "failing_releases": sum(1 for run in runs if run["gap"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--releases", type=int, default=3, help="releases applied each way (default 3)")
    ap.add_argument("--rate", type=float, default=40, help="requests a second, all threads together (default 40)")
    ap.add_argument("--threads", type=int, default=2, help="client threads (default 2)")
    ap.add_argument("--lead", type=float, default=1.0, help="seconds of load before the apply starts (default 1)")
    ap.add_argument("--tail", type=float, default=2.0, help="seconds of load after the apply ends (default 2)")
    ap.add_argument("--max-requests", type=int, default=20_000, help="bound of one release's requests (default 20000)")
    ap.add_argument("--pg-image", default=os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15"))
    ap.add_argument("--python-image",
                    default=os.environ.get("ORCHESTRATE_TEST_PYTHON_IMAGE", "orchestrate-test/python:3.11"))
    ap.add_argument("--nginx-image", default=os.environ.get("ORCHESTRATE_TEST_NGINX_IMAGE",
                                                            "orchestrate-test/nginx:1.22"))
    args = ap.parse_args()
    if args.releases < 1 or args.rate <= 0 or args.threads < 1 or args.max_requests < 1:
        sys.exit("--releases, --rate, --threads and --max-requests must be positive")
    for image in (args.pg_image, args.python_image, args.nginx_image):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            sys.exit(f"image {image} is missing (no registry here: bash tests/images/postgres/build.sh, "
                     f"bash tests/images/python/build.sh, bash tests/images/nginx/build.sh)")
    tag = uuid.uuid4().hex[:6]
    app_tag = f"orchestrate-bench/autodeploy-app:{tag}"
    env = {**os.environ, "ORCHESTRATE_LABELS": f"{LABEL},orchestrate.bench.run={tag}", "NO_COLOR": "1"}
    env.pop("AUTODEPLOY_DB_PASSWORD", None)
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-replace-"))
    stack = Stack(work, tag, args, app_tag, env)
    results: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    t_all = time.perf_counter()
    try:
        print(f"downloading the application's wheels on the host ({args.python_image}) ...", flush=True)
        download_wheels(args.python_image, work / "wheels")
        stack.prepare(work / "wheels")
        print("applying plans/phase2.yaml with -e publish_app=false (the image is built) ...", flush=True)
        first, _ = stack.apply_ok()
        for _ in range(5):
            if not changed(stack.apply_ok()[1]):
                break
        else:
            raise RuntimeError("the phase-2 plan did not reach a no-op in 5 runs")
        if stack.app_ports() not in ("{}", "null"):
            raise RuntimeError(f"{stack.app} publishes host ports ({stack.app_ports()}): not the production shape")
        stack.wait_serving()
        print(f"  converged (first apply {first:.1f} s); nginx on 127.0.0.1:{stack.http_port}, the application "
              f"unpublished", flush=True)

        for n in range(1, args.releases + 1):       # interleaved, the order alternating
            order = STRATEGIES if n % 2 else STRATEGIES[::-1]
            for strategy in order:
                run = release(stack, n, strategy, args)
                results[strategy].append(run)
                failed = sum(1 for r in run["records"] if r[2])
                gap = (f", failures from {run['gap'][0]:+.2f} s to {run['gap'][1]:+.2f} s after the apply started"
                       if run["gap"] else "")
                print(f"release {n}/{args.releases} {strategy:<11}: apply {run['apply']:.2f} s, "
                      f"{len(run['records'])} requests, {failed} failed{gap}; slowest "
                      f"{run['slowest'][0] * 1000:.0f} ms at {run['slowest'][1]:+.2f} s", flush=True)
                stack.wait_serving()
                time.sleep(1)
    finally:
        stack.teardown()
        left = cleanup(tag, app_tag)
        shutil.rmtree(work, ignore_errors=True)
        if left:
            print(f"cleanup: removed by label/name what teardown left: {', '.join(left)}")
    total = time.perf_counter() - t_all

    print(f"\nA release of the application under load through nginx (phase-2 plan, publish_app=false), "
          f"{args.releases} releases each way, interleaved; GET /tenants at {args.rate:g} req/s from "
          f"{args.threads} thread(s), {args.lead:g} s before each apply to {args.tail:g} s after it; "
          f"latency of every request, failed ones included; setup and runs {total:.0f} s "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    s = {name: summary(runs) for name, runs in results.items()}
    rows = [("requests", lambda x: f"{x['requests']}"),
            ("failed", lambda x: f"{x['failed']} ({100 * x['failed'] / x['requests']:.1f}%)"),
            ("releases with a failure", lambda x: f"{x['failing_releases']}/{len(x['apply'])}"),
            ("latency p50 ms", lambda x: f"{x['p50']:.1f}"),
            ("latency p90 ms", lambda x: f"{x['p90']:.1f}"),
            ("latency p99 ms", lambda x: f"{x['p99']:.1f}"),
            ("latency max ms", lambda x: f"{x['max']:.1f}"),
            ("requests over 1 s", lambda x: f"{x['slow']}"),
            ("apply median s", lambda x: f"{statistics.median(x['apply']):.2f}"),
            ("apply min-max s", lambda x: f"{min(x['apply']):.2f}-{max(x['apply']):.2f}")]
    print(f"{'':<26}" + "".join(f"{name:>16}" for name in STRATEGIES))
    for label, fmt in rows:
        print(f"{label:<26}" + "".join(f"{fmt(s[name]):>16}" for name in STRATEGIES))
    for name in STRATEGIES:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(s[name]["kinds"].items(), key=lambda kv: -kv[1]))
        print(f"\n{name} failures by kind: {kinds or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
