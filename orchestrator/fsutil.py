"""Small file-system helpers shared by the lockfile, the secrets file and the render step."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


TEMP_SUFFIX = ".tmp"


def temp_files(path: str | Path) -> list[Path]:
    """The temp files that :func:`atomic_write` of ``path`` left when it was killed (``.NAME.XXXXXXXX.tmp``)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}")
    try:
        return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file())
    except FileNotFoundError:
        return []


def atomic_write(path: str | Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    The temp file is created with ``mode`` from the start, so a secret is never readable by
    others, not even for a moment. A crash leaves either the old file or the new one.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
