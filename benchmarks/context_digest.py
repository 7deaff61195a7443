#!/usr/bin/env python3
"""The image step's context digest on a generated 10,000-file context, next to what a build does
with the same context anyway, in one run: docker-py's own ``exclude_paths`` (the file list a
build starts with), docker-py's ``utils.tar`` of the context (what ``docker build`` sends), and
GNU ``tar c`` of the folder piped to ``wc -c`` (no ignore rules), and a bare ``os.walk`` with an
``lstat`` of every file, the floor of any size-and-mtime cache. Target: the no-op digest (the
lockfile's cache decoded, the context walked and stat'ed, nothing read) under 0.3 s.

    python3 benchmarks/context_digest.py [--files 10000] [--runs 7]

The context (generated once, not timed): --files source files of 200 to 4,000 bytes in folders of
50, plus a ``node_modules`` folder of 2,000 files and ``*.pyc`` files that ``.dockerignore``
excludes, with mtimes an hour old (a source tree, not files written a second ago: those the
cache reads again, as git does). Timed, interleaved, medians and best runs (the
best shows the work itself on a busy machine): the cold digest (every file read),
the no-op digest, the digest after one file changed, and the peers. Also printed: the size of the
line the lockfile keeps.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docker.utils.build import tar as docker_tar  # noqa: E402

from orchestrator import buildcontext  # noqa: E402


def generate(root: Path, files: int) -> None:
    rng = random.Random(42)
    for i in range(files - 2):
        path = root / "src" / f"pkg{i // 50:03d}" / f"module_{i % 50:02d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(100, 2000)).hex().encode())
        if i % 10 == 0:
            path.with_suffix(".pyc").write_bytes(b"compiled")
    for i in range(2000):
        path = root / "node_modules" / f"dep{i // 100}" / f"f{i}.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("module.exports = 1\n")
    (root / "Dockerfile").write_text("FROM scratch\nCOPY src /src\n")
    (root / ".dockerignore").write_text("node_modules\n**/*.pyc\n")
    old = time.time() - 3600
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            os.utime(os.path.join(dirpath, name), (old, old))


def walk_stat(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.lstat(os.path.join(dirpath, name))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


NOOP = "orchestrate digest, no-op (cache from the lockfile)"


def measure(files: int = 10_000, runs: int = 7) -> dict:
    """Generates the context in a temp folder, times everything ``runs`` times, interleaved, and
    removes the folder. Returns ``{"times": {name: [seconds, ...]}, "files": files, "runs": runs,
    "sent": paths sent, "lockfile_chars": size of the lockfile's line}``; ``times[NOOP]`` is the
    no-op digest (what phase2.py reports too)."""
    root = Path(tempfile.mkdtemp(prefix="ctx-bench-"))
    try:
        generate(root, files)
        ctx = str(root)
        first = buildcontext.scan(ctx, "Dockerfile")
        blob = buildcontext.encode(first)
        changed = root / "src/pkg007/module_07.py"
        times: dict[str, list[float]] = {}

        def run(name, fn):
            times.setdefault(name, []).append(timed(fn))

        def one_changed():
            changed.write_text(f"x = {time.time()}\n")
            buildcontext.scan(ctx, "Dockerfile", buildcontext.decode(blob))

        for _ in range(runs):
            run("orchestrate digest, cold (every file read)", lambda: buildcontext.scan(ctx, "Dockerfile"))
            run(NOOP, lambda: buildcontext.scan(ctx, "Dockerfile", buildcontext.decode(blob)))
            run("orchestrate digest, one file changed", one_changed)
            run("os.walk + lstat of every file (a stat cache's floor)", lambda: walk_stat(root))
            run("docker-py exclude_paths (the file list only)",
                lambda: buildcontext.sent_paths(ctx, "Dockerfile"))
            run("docker-py utils.tar (what docker build sends)",
                lambda: docker_tar(ctx, exclude=buildcontext.ignore_patterns(ctx), dockerfile=("Dockerfile", None)).close())
            run("GNU tar c | wc -c (no ignore rules)",
                lambda: subprocess.run(f"tar -C {root} -cf - . | wc -c", shell=True, check=True,
                                       stdout=subprocess.DEVNULL))
        return {"times": times, "files": files, "runs": runs, "sent": len(first.files), "lockfile_chars": len(blob)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(result: dict) -> float:
    """Prints the table of ``measure``'s result; returns the no-op digest's median."""
    times, files, runs = result["times"], result["files"], result["runs"]
    print(f"context: {files:,} source files, {(files - 2 + 9) // 10:,} *.pyc and 2,000 node_modules files ignored; "
          f"{result['sent']:,} paths sent (folders included); {runs} interleaved runs, medians")
    width = max(map(len, times))
    noop = statistics.median(times[NOOP])
    print(f"  {'':<{width}}   median     best   median vs the no-op")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<{width}}  {med:6.3f} s {min(values):6.3f} s  {med / noop:5.1f}x")
    print(f"  lockfile: the context's table is one line of {result['lockfile_chars']:,} characters "
          f"({result['lockfile_chars'] / result['sent']:.1f} per path)")
    print(f"no-op target (under 0.3 s): {'met' if noop < 0.3 else 'MISSED'} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return noop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    report(measure(args.files, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
