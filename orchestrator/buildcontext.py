"""The digest of a build context: what ``docker build`` would send, read as docker-py reads it.

The files are those docker-py's own ``docker.utils.build.exclude_paths`` lists for the context's
``.dockerignore`` (read as docker-py reads it; the Dockerfile is always sent), so the digest
covers exactly what the build can see. Each entry counts with its path, type, mode and content
(a symbolic link: its target); owners and times do not count (Docker's build cache ignores them).

A no-op must stay cheap on a large context, so content is hashed only for files whose size or
mtime changed since the last scan: the last scan's table (per path a short key of its type, mode,
size and mtime, and a short content hash) is kept in the lockfile as one compressed line (see
:func:`encode`). A file whose mtime is within
:data:`RACY_NS` of the time the table was made is hashed again whatever its stat says, as git
does, since a write in the same clock tick would not change the mtime.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import stat
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator


CONTENT_CHARS = 12       # hex characters kept of a file's content hash (48 bits)
STAT_CHARS = 8           # hex characters of the CRC-32 of its (type, mode, size, mtime)
RACY_NS = 2_000_000_000  # a cached hash is trusted only for files older than this at recording
CHUNK = 1 << 20
OVERLAP = 4096           # bytes of the block before that ``flag`` sees again


@dataclass
class Scan:
    files: dict[str, str]            # path -> stat key + content hash (STAT_CHARS + CONTENT_CHARS hex)
    digest: str                      # sha256 of every path and its content hash
    patterns: str = ""               # digest of the ignore rules the walk used
    at: int = 0                      # time.time_ns() when the scan started
    hashed: list[str] = field(default_factory=list)   # paths whose content was read
    flagged: list[str] = field(default_factory=list)  # read files in which ``flag`` found something

    def hashes(self) -> dict[str, str]:
        return {path: key[STAT_CHARS:] for path, key in self.files.items()}


def ignore_patterns(root: str) -> list[str]:
    """The ``.dockerignore`` patterns, read exactly as docker-py's ``build`` reads them."""
    path = os.path.join(root, ".dockerignore")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        lines = [line.strip() for line in fh.read().splitlines()]
    return [line for line in lines if line and line[0] != "#"]


def _walk(root: str, matcher, known: dict) -> Iterator[tuple[str, os.stat_result]]:
    """docker-py's ``PatternMatcher.walk`` (what ``exclude_paths`` returns), with each path's
    lstat, and with the rules' answer for ``known`` paths (sent by an earlier walk with the same
    rules) taken as it was: only new paths are matched against the patterns."""
    def rec(current: str, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        with os.scandir(current) as it:
            entries = list(it)
        for entry in entries:
            path = rel + entry.name
            st = entry.stat(follow_symlinks=False)
            excluded = path not in known and matcher.matches(path)
            if not excluded:
                yield path, st
            if not stat.S_ISDIR(st.st_mode):
                continue
            if excluded and not any(p.exclusion and p.cleaned_pattern.startswith(path)
                                    for p in matcher.patterns):
                continue
            yield from rec(entry.path, path + "/")
    return rec(root, "")


def sent_paths(root: str, dockerfile: str) -> list[str]:
    """The paths (files and folders) that the build context sends, as docker-py lists them."""
    from docker.utils.build import exclude_paths
    return sorted(exclude_paths(os.path.abspath(root), ignore_patterns(root), dockerfile=os.path.normpath(dockerfile)))


def _content_hash(full: str, st: os.stat_result, kind: str, flag: Callable[[bytes], bool] | None) -> tuple[str, bool]:
    """The content's short hash, and whether ``flag`` said yes to a block of it (each block is
    given with the end of the one before, so a match across two blocks is found too)."""
    h = hashlib.sha256(kind.encode() + b"\0")
    flagged = False
    if stat.S_ISLNK(st.st_mode):
        h.update(os.readlink(full).encode(errors="surrogateescape"))
    elif stat.S_ISREG(st.st_mode):
        tail = b""
        with open(full, "rb") as fh:
            while block := fh.read(CHUNK):
                h.update(block)
                flagged = flagged or bool(flag and flag(tail + block))
                tail = block[-OVERLAP:]
    return h.hexdigest()[:CONTENT_CHARS], flagged


@functools.lru_cache(maxsize=256)
def _kind(mode: int) -> str:
    kind = "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f" if stat.S_ISREG(mode) else "o"
    return f"{kind}{stat.S_IMODE(mode):o}"


def scan(root: str, dockerfile: str, cache: Scan | None = None, flag: Callable[[bytes], bool] | None = None) -> Scan:
    """The context's table and digest; ``cache`` (an earlier scan) spares reading the files whose
    type, mode, size and mtime are unchanged, and matching the paths it sent against the rules.
    ``flag`` sees the content of every file read (the image step looks for secrets)."""
    root = os.path.abspath(root)
    patterns = ignore_patterns(root) + [f"!{os.path.normpath(dockerfile)}"]   # as exclude_paths does
    rules = hashlib.sha256("\n".join(patterns).encode()).hexdigest()[:16]
    old = cache.files if cache and cache.patterns == rules else {}
    trusted_before = (cache.at if cache else 0) - RACY_NS
    at = time.time_ns()
    files: dict[str, str] = {}
    hashed, flagged = [], []
    from docker.utils.build import PatternMatcher
    for path, st in sorted(_walk(root, PatternMatcher(patterns), old), key=lambda item: item[0]):
        kind = _kind(st.st_mode)
        size = st.st_size if kind[0] == "f" else 0
        key = f"{zlib.crc32(f'{kind}:{size}:{st.st_mtime_ns}'.encode()):08x}"
        before = old.get(path)
        if before and before.startswith(key) and (kind[0] == "d" or st.st_mtime_ns < trusted_before):
            files[path] = before
            continue
        if kind[0] != "d":
            hashed.append(path)
        content, found = _content_hash(os.path.join(root, path), st, kind, flag)
        if found:
            flagged.append(path)
        files[path] = key + content
    table = "".join(f"{path}\0{key[STAT_CHARS:]}\n" for path, key in files.items())
    return Scan(files, "sha256:" + hashlib.sha256(table.encode(errors="surrogateescape")).hexdigest(), rules, at,
                hashed, flagged)


def encode(s: Scan) -> str:
    """The table as one line for the lockfile: base64 of zlib-compressed JSON, the paths grouped by
    folder. One line, so a changed file changes one line of the lockfile; about 9 bytes a file."""
    folders: dict[str, dict[str, str]] = {}
    for path, key in s.files.items():
        folder, _, name = path.rpartition("/")
        folders.setdefault(folder, {})[name] = key
    doc = {"at": s.at, "rules": s.patterns, "digest": s.digest, "folders": folders}
    return base64.b64encode(zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)).decode()


def decode(blob: str | None) -> Scan | None:
    """A table written by :func:`encode`; None for anything else (the cache is then empty)."""
    if not blob:
        return None
    try:
        doc = json.loads(zlib.decompress(base64.b64decode(blob)))
        files = {(f"{folder}/{name}" if folder else name): key
                 for folder, names in doc["folders"].items() for name, key in names.items()}
        return Scan(files, doc["digest"], doc["rules"], int(doc["at"]))
    except (ValueError, TypeError, KeyError, AttributeError, zlib.error):
        return None


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two ``Scan.hashes()``: ``path (added|changed|removed)``, in path order."""
    out = []
    for path in sorted(set(before) | set(after)):
        if path not in before:
            out.append(f"{path} (added)")
        elif path not in after:
            out.append(f"{path} (removed)")
        elif before[path] != after[path]:
            out.append(f"{path} (changed)")
    return out
