"""YAML documents that remember where each value came from.

:func:`load` returns the plain Python data *and* a :class:`SourceMap` from key paths
(``("steps", 0, "db-container", "ports", 1)``) to 1-based line numbers, so every later error can
name the file, line and key. Duplicate keys, which PyYAML silently resolves to the last one, are
an error here: in a reviewed plan they are always a mistake.

Plans and variable files may come from anyone, so what YAML could make expensive is refused
before it costs anything: a file over :data:`MAX_BYTES` (checked before parsing), text that is not
UTF-8 or holds a NUL, more than one document, nesting deeper than :data:`MAX_DEPTH`, anchors and
aliases (``&x`` / ``*x``: the "billion laughs" expand exponentially, and a plan says each value
where it is used or in ``vars``), tags other than the plain ones (``!!python/object`` ...), keys
over :data:`MAX_KEY` characters and numbers over :data:`MAX_NUMBER` characters. The screening
reads the parser's events and stops at the first offence, so nothing is ever expanded.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import PlanError

Path_ = tuple[str | int, ...]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when available: faster

MAX_BYTES = 1024 * 1024      # a plan or a variable file
MAX_DEPTH = 32               # nested mappings and lists
MAX_KEY = 256                # characters of a mapping key
MAX_NUMBER = 64              # characters of an unquoted number
_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {"!"} | {_TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_AS_TEXT = {_TAG + "timestamp", _TAG + "value"}   # 2024-01-01 and '=' stay text, as in JSON
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


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


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _screen(text: str, file: str) -> None:
    """Refuse, from the parser's events alone, what would be costly or surprising to build."""
    loader = _Loader(text)
    try:
        depth = documents = 0
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise PlanError("a second YAML document ('---'): a plan or variable file is one document",
                                    file=file, line=line, hint="remove the '---' and what follows, or "
                                                               "put it in a file of its own")
            elif isinstance(event, yaml.NodeEvent) and event.anchor is not None:   # aliases are node events
                kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
                raise PlanError(f"YAML {kind}{_short(event.anchor)[1:-1]} is not allowed: plans and variable "
                                f"files do not use anchors and aliases", file=file, line=line,
                                hint="write the value where it is used, or declare it once under 'vars' and "
                                     "use '{{ vars.NAME }}'")
            if isinstance(event, yaml.NodeEvent) and event.tag is not None and event.tag not in PLAIN_TAGS:
                tag = _short(event.tag.replace(_TAG, "!!"))
                raise PlanError(f"YAML tag {tag} is not allowed: plans hold plain values (text, numbers, "
                                f"true/false, lists and mappings)", file=file, line=line,
                                hint="remove the tag ('!!...'); quote the value if it is text")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise PlanError(f"nested deeper than {MAX_DEPTH} levels", file=file, line=line,
                                    hint="a plan needs only a few levels of mappings and lists")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        if node.tag in (_TAG + "int", _TAG + "float") and len(node.value) > MAX_NUMBER:
            raise PlanError(f"a number of {len(node.value):,} characters (at most {MAX_NUMBER})",
                            file=file, line=node.start_mark.line + 1, key=format_key(path) or None,
                            hint="quote it if it is text")
        if node.tag in _AS_TEXT:
            node.tag = _TAG + "str"
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if len(key) > MAX_KEY:
                raise PlanError(f"a key of {len(key):,} characters ({_short(key)}; at most {MAX_KEY})",
                                file=file, line=line, key=format_key(path) or None)
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
    if len(text) > MAX_BYTES:
        raise PlanError(f"{len(text):,} characters: larger than the {MAX_BYTES // 1024} KiB a plan or "
                        f"variable file may have", file=file)
    if "\x00" in text:
        raise PlanError("contains a NUL character: a plan is UTF-8 text", file=file,
                        line=text.count("\n", 0, text.index("\x00")) + 1)
    smap = SourceMap(file)
    try:
        _screen(text, file)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _walk(node, (), smap.lines, file)
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
    except (yaml.YAMLError, ValueError, OverflowError) as exc:   # e.g. a date that does not exist
        raise PlanError(f"YAML error: {exc}", file=file) from None
    return data, smap


def load(path: str | Path) -> tuple[Any, SourceMap]:
    """Read a plan or variable file, at most :data:`MAX_BYTES` of it, as UTF-8 (a BOM is allowed)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PlanError("file not found", file=str(path),
                        hint="check the path of the plan") from None
    except OSError as exc:
        raise PlanError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    if len(data) > MAX_BYTES:
        raise PlanError(f"larger than the {MAX_BYTES // 1024} KiB a plan or variable file may have",
                        file=str(path), hint="a plan holds settings, not data")
    if data.startswith(_WIDE_BOMS):
        raise PlanError("is UTF-16 or UTF-32 text: plans and variable files are UTF-8", file=str(path),
                        hint="save the file as UTF-8")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise PlanError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x})", file=str(path),
                        line=data.count(b"\n", 0, exc.start) + 1, hint="save the file as UTF-8") from None
    return load_text(text, str(path))
