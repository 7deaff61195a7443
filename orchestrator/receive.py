"""The two ends, inside a cluster, of copy-data's upload (issue 14): standard library only, run as
``python -m orchestrator.receive`` in the copy Job's pod.

``wait PATH --timeout S``   the Job's init container: exit 0 once PATH exists; 1 after S seconds.
``put PATH --size N --sha256 H``   what ``apply --target kubernetes`` runs in that init container
    (an exec, its stdin the SQLite file): exactly N bytes read from stdin into PATH.part, checked
    against H, then renamed to PATH. Reading a known size needs no end-of-input signal, which the
    exec protocol's v4 does not have.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

CHUNK = 1 << 20


def put(path: str, size: int, sha256: str, stream) -> str:
    """Write ``size`` bytes of ``stream`` to ``path`` (through ``path``.part); raise ValueError
    when fewer arrive or their digest is not ``sha256``."""
    part = path + ".part"
    h, left = hashlib.sha256(), size
    with open(part, "wb") as fh:
        while left:
            data = stream.read(min(CHUNK, left))
            if not data:
                break
            h.update(data)
            fh.write(data)
            left -= len(data)
        fh.flush()
        os.fsync(fh.fileno())
    if left or h.hexdigest() != sha256:
        os.unlink(part)
        got = f"{size - left} of {size} bytes" if left else f"sha256 {h.hexdigest()[:12]}, not {sha256[:12]}"
        raise ValueError(f"the upload of {path} is incomplete or damaged ({got})")
    os.replace(part, path)
    return f"received {path} ({size} bytes, sha256 {sha256[:12]})"


def wait(path: str, timeout: float, poll: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.isfile(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.receive")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wait")
    w.add_argument("path")
    w.add_argument("--timeout", type=float, default=900.0)
    p = sub.add_parser("put")
    p.add_argument("path")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--sha256", required=True)
    args = parser.parse_args(argv)
    if args.command == "wait":
        if wait(args.path, args.timeout):
            print(f"{args.path} is here", flush=True)
            return 0
        print(f"error: no upload of {args.path} within {args.timeout:g}s: `orchestrate apply --target "
              f"kubernetes` uploads it while this container waits; run it again", file=sys.stderr, flush=True)
        return 1
    try:
        print(put(args.path, args.size, args.sha256, sys.stdin.buffer), flush=True)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
