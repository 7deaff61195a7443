"""YAML documents that remember where each value came from.

:func:`load` returns the plain Python data *and* a :class:`SourceMap` from key paths
(``("steps", 0, "db-container", "ports", 1)``) to 1-based line numbers, so every later error can
name the file, line and key. Duplicate keys, which PyYAML silently resolves to the last one, are
an error here: in a reviewed plan they are always a mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import PlanError

Path_ = tuple[str | int, ...]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when available: faster


def format_key(path: Path_) -> str:
    """``("steps", 0, "db-container", "ports", 1)`` -> ``steps[0].db-container.ports[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass
class SourceMap:
    file: str
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def error(self, path: Path_, message: str, hint: str | None = None) -> PlanError:
        return PlanError(message, file=self.file, line=self.line(path),
                         key=format_key(path) or None, hint=hint)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise PlanError(f"duplicate key {key!r} (first defined on line {seen[key]})",
                                file=file, line=line, key=format_key(path + (key,)),
                                hint="remove one of the two entries")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, file)


def load_text(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse ``text`` (named ``file`` in messages) into data and its source map."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}: {problem}"
        raise PlanError(f"YAML syntax error: {problem}", file=file, line=line,
                        hint="fix the YAML syntax (indentation, quotes, colons)") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"YAML error: {exc}", file=file) from None
    smap = SourceMap(file)
    if node is not None:
        _walk(node, (), smap.lines, file)
    return data, smap


def load(path: str | Path) -> tuple[Any, SourceMap]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError("file not found", file=str(path),
                        hint="check the path of the plan") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read: {exc}", file=str(path)) from None
    return load_text(text, str(path))
