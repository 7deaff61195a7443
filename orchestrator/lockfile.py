"""The plan lockfile (``<plan>.lock``) and the per-plan apply mutex.

The lockfile is JSON with sorted keys and two-space indents, rewritten atomically after every
step, so a ``git diff`` shows only what really changed and a crash leaves the last good state.
It holds the plan digest and, per step: the digest of its resolved inputs (secrets replaced by
salted hashes), the identities observed after apply (container id, image id, volume name and
creation time, ...) and the step's outputs with secrets redacted. It never holds a secret.

The apply mutex is an ``flock`` on ``.<plan>.lck`` next to the plan: the kernel releases it when
the process dies, so a killed apply never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import LockHeld, OrchestrateError
from .fsutil import atomic_write
from .redact import redact

FORMAT = 1


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical(obj).encode()).hexdigest()


class Lockfile:
    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"format": FORMAT, "plan": None, "plan_digest": None, "steps": {}}
        self._loaded_text: str | None = None

    @classmethod
    def load(cls, path: Path) -> "Lockfile":
        lf = cls(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return lf
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OrchestrateError(
                f"{path}:{exc.lineno}: the lockfile is not valid JSON ({exc.msg})",
                hint="restore it from git (it is meant to be committed), or remove it: the next "
                     "apply observes the real state and writes a new one") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise OrchestrateError(f"{path}: unknown lockfile format {data.get('format') if isinstance(data, dict) else '?'}",
                                   hint="restore it from git, or remove it to start a new one")
        data.setdefault("steps", {})
        lf.data = data
        lf._loaded_text = text
        return lf

    def step(self, name: str) -> dict[str, Any]:
        return self.data["steps"].get(name) or {}

    def set_step(self, name: str, entry: dict[str, Any]) -> None:
        self.data["steps"][name] = entry

    # orchestrate apply --target kubernetes: what it applied, by "Kind/namespace/name": kind, name,
    # namespace, resourceVersion and the digest of the applied object (never a secret value)
    def kubernetes_objects(self) -> dict[str, dict[str, Any]]:
        return dict((self.data.get("kubernetes") or {}).get("objects") or {})

    def set_kubernetes_objects(self, objects: dict[str, dict[str, Any]]) -> None:
        self.data["kubernetes"] = {"objects": objects}

    def render(self) -> str:
        return redact(json.dumps(self.data, sort_keys=True, indent=2, default=str)) + "\n"

    def save(self) -> bool:
        """Write the lockfile if its content changed; returns whether it was written."""
        text = self.render()
        if text == self._loaded_text:
            return False
        atomic_write(self.path, text, mode=0o644)
        self._loaded_text = text
        return True


class ApplyLock:
    """Exclusive, non-blocking, per-plan lock held for the whole of an apply or destroy."""

    def __init__(self, plan_path: Path):
        self.path = plan_path.parent / f".{plan_path.stem}.lck"
        self._fd: int | None = None

    def __enter__(self) -> "ApplyLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockHeld(f"another orchestrate run holds the lock of this plan ({holder})",
                           hint=f"wait for it to finish; the lock ({self.path}) is released "
                                f"automatically when that process ends") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
