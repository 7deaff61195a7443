"""Reading a Dockerfile as Docker's parser does, for two things: the base images a build depends
on (``FROM``, with the build arguments' values) and warnings about instructions Docker silently
reinterprets.

Docker reads ``CMD``, ``ENTRYPOINT``, ``RUN`` and ``HEALTHCHECK ... CMD`` as exec form only when
the text is a valid JSON array of strings; anything else, even ``["sh", "-c", "echo \\$X"]`` with
one stray backslash, runs as *shell* form, ``/bin/sh -c '["sh", "-c", ...]'``, and the container
dies at start with ``/bin/sh: 1: [sh,: not found``. And in a valid exec form no shell runs, so a
``$VARIABLE`` in it is passed as it is. Both are warnings, with the file and the line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_]*)\s*=\s*(.*?)\s*$")
EXEC_FORM = ("CMD", "ENTRYPOINT", "RUN")
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh"}
SHELL_C = re.compile(r"^-[a-zA-Z]*c[a-zA-Z]*$")          # -c, -ec, -euxc ...
VARIABLE = re.compile(r"(?<!\\)\$(\{[A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*)")
SUBST = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Instruction:
    line: int          # where it starts (1-based)
    keyword: str       # upper case
    args: str          # the rest, continuation lines joined


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: parser directives read (``escape``), comments dropped,
    continuation lines joined (comment and empty lines inside a continuation are skipped, as
    Docker does)."""
    escape = "\\"
    lines = text.splitlines()
    start = 0
    for i, raw in enumerate(lines):           # directives: only at the very top
        match = DIRECTIVE.match(raw.strip())
        if not match:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
        start = i + 1
    out: list[Instruction] = []
    pending: list[str] = []
    first = 0
    for number, raw in enumerate(lines[start:], start + 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            first = number
        body = raw.rstrip()
        if body.endswith(escape):
            pending.append(body[:-1])
            continue
        pending.append(body)
        out.append(_instruction(first, "".join(pending)))
        pending = []
    if pending:
        out.append(_instruction(first, "".join(pending)))
    return out


def _instruction(line: int, text: str) -> Instruction:
    keyword, _, args = text.strip().partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        args = more + " " + args
    return Instruction(line, keyword.upper(), args.strip())


def _flags(args: str) -> str:
    """``args`` without its leading ``--flag=value`` options."""
    while args.startswith("--"):
        _, _, args = args.partition(" ")
        args = args.lstrip()
    return args


def exec_form(args: str) -> list[str] | None:
    """The argument list when ``args`` is exec form as Docker reads it (a JSON array of strings)."""
    try:
        value = json.loads(args)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def lint(text: str, path: str) -> list[str]:
    """Warnings, each starting with ``path:line:``."""
    warnings = []
    for ins in parse(text):
        keyword, args = ins.keyword, ins.args
        if keyword == "ONBUILD":
            keyword, _, args = args.partition(" ")
            keyword, args = keyword.upper(), args.strip()
        if keyword == "HEALTHCHECK":
            rest = _flags(args)
            if not rest.upper().startswith("CMD"):
                continue
            keyword, args = "HEALTHCHECK CMD", rest[3:].strip()
        elif keyword == "RUN":
            args = _flags(args)
        elif keyword not in EXEC_FORM:
            continue
        where = f"{path}:{ins.line}"
        if not args.startswith("["):
            continue
        argv = exec_form(args)
        if argv is None:
            warnings.append(
                f"{where}: {keyword} {_cut(args)} is not valid JSON, so Docker runs it as a shell command, "
                f"not as the exec form it looks like (the container fails with '/bin/sh: 1: "
                f"{_cut(args.split()[0].replace(chr(34), '').replace(chr(39), ''), 20)}: not found'). Use double quotes, and "
                f"no backslash before $ (JSON knows no \\$)")
            continue
        shell = bool(argv) and os.path.basename(argv[0]) in SHELLS and any(SHELL_C.match(a) for a in argv[1:2])
        if not shell:
            found = sorted({m.group(1).lstrip("{") for a in argv for m in VARIABLE.finditer(a)})
            if found:
                names = ", ".join("$" + n for n in found)
                warnings.append(
                    f"{where}: {keyword} is exec form, so no shell expands {names}: the program gets the "
                    f"text as it is. Use [\"sh\", \"-c\", \"...\"] (or the shell form) if it should be expanded")
    return warnings


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def substitute(text: str, values: dict[str, str | None]) -> str:
    """``$NAME``, ``${NAME}``, ``${NAME:-word}`` and ``${NAME:+word}`` as Docker expands them in FROM."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        value = values.get(name) or ""
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value
    return SUBST.sub(one, text)


def base_images(text: str, build_args: dict[str, str], target: str | None = None) -> list[tuple[int, str]]:
    """(line, image) of every base image the build needs, up to the ``target`` stage: FROM lines
    with the global ARGs (those before the first FROM) expanded from ``build_args``; ``scratch``
    and earlier stages' names are not images."""
    args: dict[str, str | None] = {}
    stages: set[str] = set()
    found: list[tuple[int, str]] = []
    seen_from = False
    for ins in parse(text):
        if ins.keyword == "ARG" and not seen_from:
            for part in ins.args.split():
                name, eq, default = part.partition("=")
                args[name] = build_args.get(name, default.strip("\"'") if eq else None)
        if ins.keyword != "FROM":
            continue
        seen_from = True
        words = _flags(ins.args).split()
        if not words:
            continue
        ref = substitute(words[0], args)
        if ref.lower() != "scratch" and ref.lower() not in stages and ref not in [r for _, r in found]:
            found.append((ins.line, ref))
        stage = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None
        if stage:
            stages.add(stage)
        if target and stage == target.lower():
            break
    return found
