"""Jinja2 rendering of plan values, sandboxed and strict.

Any string value in a step may be a template over ``vars``, ``secrets``, ``env`` and
``steps.<name>.<output>``. A string that is exactly one expression (``"{{ vars.port }}"``) renders
to the expression's native value (an int stays an int, a mapping stays a mapping), as in Ansible;
anything else renders to a string. Undefined names are errors that say what *is* defined.

A template is user code, so rendering one is bounded: it may take :data:`MAX_SECONDS`, produce
:data:`MAX_RENDERED` characters and use :data:`MAX_MEMORY` more memory; repeating text
(``'x' * n``) and powers (``n ** m``) beyond those sizes are refused before they are computed; a
template file must be a regular file inside its folder (no symbolic link leading out of it).
The sandbox already refuses attributes such as ``__class__``, and templates have no function that
reads files or runs commands.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import signal
import threading
import time
from typing import Any, Iterable

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .yamlsrc import Path_, SourceMap


class Scope(dict):
    """A named mapping in the template context, so an undefined key can be reported by name."""

    def __init__(self, label: str, data: dict | None = None, later: Iterable[str] = (),
                 later_text: str = "a step can only use the outputs of the steps before it",
                 list_keys: bool = True):
        super().__init__(data or {})
        self.label = label
        self.later = set(later)
        self.later_text = later_text
        self.list_keys = list_keys
        self.missing: dict[str, str] = {}    # known names without a value here, and why


class _PlanUndefined(jinja2.StrictUndefined):
    @property
    def _undefined_message(self) -> str:  # type: ignore[override]
        obj, name = self._undefined_obj, self._undefined_name
        if isinstance(obj, Scope):
            if name in obj.missing:
                return f"{obj.label}.{name} has no value: {obj.missing[name]}"
            if name in obj.later:
                what = f"step {name!r} runs later" if obj.label == "steps" else f"{name!r} comes later"
                return f"{obj.label}.{name} is not available here: {what}, and {obj.later_text}"
            if not obj.list_keys:
                return f"{obj.label}.{name} is not set"
            known = ", ".join(sorted(map(str, obj))) or "nothing"
            return f"{obj.label}.{name} is not defined ({obj.label} has: {known})"
        if obj is jinja2.utils.missing:
            return (f"{name!r} is not defined (templates can use vars, secrets, env and steps)")
        return super()._undefined_message


MAX_RENDERED = 1024 * 1024          # characters one template may produce
MAX_SECONDS = 1.0                   # time one template may take
MAX_MEMORY = 256 * 1024 * 1024      # memory one template may take, beyond what the process holds
MAX_POWER_BITS = 4096               # size of a number computed with **
MAX_TOTAL = 64 * 1024 * 1024        # what all the templates of one run may produce together
TOO_MUCH_TEXT = f"the template renders more than {MAX_RENDERED // 1024} KiB of text"
_spent = 0


class TemplateLimit(SecurityError):
    """A template went past one of the bounds above."""


def _expired(signum, frame):
    raise TemplateLimit(f"the template ran longer than {MAX_SECONDS:g} s (a loop or recursion too large?)")


_active = threading.local()


@contextlib.contextmanager
def _limits():
    """Bound the time (in the main thread) and the memory of rendering one template."""
    if getattr(_active, "on", False):       # a macro inside a template being rendered
        yield
        return
    timer = threading.current_thread() is threading.main_thread()
    limit = resource.getrlimit(resource.RLIMIT_AS)
    handler, outer, started = signal.getsignal(signal.SIGALRM), (0.0, 0.0), time.monotonic()
    try:
        _active.on = True
        if timer:
            signal.signal(signal.SIGALRM, _expired)
            outer = signal.setitimer(signal.ITIMER_REAL, MAX_SECONDS)    # a caller's own alarm, if any
        if os.path.exists("/proc/self/statm"):    # elsewhere (not Linux): the time bound only
            with open("/proc/self/statm") as f:
                cap = int(f.read().split()[0]) * resource.getpagesize() + MAX_MEMORY
            if limit[1] != resource.RLIM_INFINITY:
                cap = min(cap, limit[1])
            if limit[0] == resource.RLIM_INFINITY or cap < limit[0]:
                resource.setrlimit(resource.RLIMIT_AS, (cap, limit[1]))
        yield
    except MemoryError:
        raise TemplateLimit(f"the template needs more than {MAX_MEMORY // 2**20} MiB of memory") from None
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, handler)
            if outer[0]:
                signal.setitimer(signal.ITIMER_REAL, max(outer[0] - (time.monotonic() - started), 0.001), outer[1])
        resource.setrlimit(resource.RLIMIT_AS, limit)
        _active.on = False


def start_run() -> None:
    """A new run (validate, plan, apply...) of a plan: its templates start with the whole of
    :data:`MAX_TOTAL`, so many templates cannot add up to unbounded memory either."""
    global _spent
    _spent = 0


def _spend(value: Any) -> None:
    """Count a template's result (text by its length, a list or mapping by its entries)."""
    global _spent
    size = len(value) if isinstance(value, str) else 16 * len(value) if isinstance(value, (list, tuple, dict)) else 0
    if size > MAX_RENDERED:
        raise TemplateLimit(TOO_MUCH_TEXT)
    _spent += size
    if _spent > MAX_TOTAL:
        raise TemplateLimit(f"the plan's templates render more than {MAX_TOTAL // 2**20} MiB in all")


def _concat(parts: Iterable[str]) -> str:
    """What Jinja joins a template's output with: bounded in size, time and memory."""
    with _limits():
        out, size = [], 0
        for part in parts:
            size += len(part)
            if size > MAX_RENDERED:
                raise TemplateLimit(TOO_MUCH_TEXT)
            out.append(part)
        text = "".join(out)
        _spend(text)
        return text


def _too_big(operator: str, left: Any, right: Any) -> bool:
    if operator == "**":
        return (isinstance(left, int) and isinstance(right, int) and right > 0
                and right * abs(left).bit_length() > MAX_POWER_BITS)
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_RENDERED:
            return True
    return False


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})
    concat = staticmethod(_concat)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if _too_big(operator, left, right):
            raise TemplateLimit(f"{operator!r} here would make a value larger than a template may "
                                f"({MAX_RENDERED // 1024} KiB of text, {MAX_POWER_BITS}-bit numbers)")
        return super().call_binop(context, operator, left, right)

    def get_template(self, name, parent=None, globals=None):
        # A template file (and what it includes) is a regular file inside the template folder.
        if isinstance(name, str) and isinstance(self.loader, jinja2.FileSystemLoader):
            full = self.join_path(name, parent) if parent else name
            for folder in self.loader.searchpath:
                path = os.path.join(folder, *full.split("/"))
                if not os.path.lexists(path):
                    continue
                real, top = os.path.realpath(path), os.path.realpath(folder)
                if os.path.commonpath([real, top]) != top:
                    raise TemplateLimit(f"template {full!r} leads outside {folder} through a symbolic link")
                if not os.path.isfile(real) or os.path.getsize(real) > MAX_RENDERED:
                    raise TemplateLimit(f"template {full!r} is not a regular file of at most "
                                        f"{MAX_RENDERED // 1024} KiB")
                break
        return super().get_template(name, parent, globals)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Scopes are looked up by key first, so vars.items (a variable) is never dict.items.
        if isinstance(obj, Scope):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


class _CompiledTemplates(jinja2.BytecodeCache):
    """Jinja2's bytecode cache, in memory: a template file is compiled once per process and
    source (Jinja checks each entry against a checksum of the source), though the render step's
    check and its observe each load it through an environment of their own."""

    def __init__(self):
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket) -> None:
        if bucket.key in self._code:
            bucket.bytecode_from_string(self._code[bucket.key])

    def dump_bytecode(self, bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_env = _Env(undefined=_PlanUndefined, keep_trailing_newline=True, autoescape=False,
            bytecode_cache=_CompiledTemplates())


def _urlpart(value: Any) -> str:
    """A value as one part of a URL (a user, a password): every reserved character encoded, ``/``
    included (Jinja's ``urlencode`` leaves ``/`` as it is, which breaks a password in a URL)."""
    from urllib.parse import quote
    return quote(str(value), safe="")


_env.filters["urlpart"] = _urlpart
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.S)


@functools.lru_cache(maxsize=512)
def _compiled(text: str) -> jinja2.Template:
    return _env.from_string(text)


@functools.lru_cache(maxsize=512)
def _expression(expr: str):
    return _env.compile_expression(expr, undefined_to_none=False)


def environment() -> jinja2.Environment:
    """The shared sandboxed environment (the render step uses it for template files too)."""
    return _env


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value or "{#" in value


class TemplateError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def render_string(text: str, context: dict[str, Any]) -> Any:
    """Render one string; raises :class:`TemplateError` with a readable message."""
    if not is_template(text):
        return text
    try:
        with _limits():
            single = _SINGLE.match(text)
            if not single:
                return _compiled(text).render(**context)
            value = _expression(single.group("expr"))(**context)
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()
        _spend(value)
        return value
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined: {exc.message}",
                            hint="check the variable, secret and step names in the template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}",
                            hint="templates use {{ expression }}; check the braces and quotes") from None
    except TemplateLimit as exc:
        raise TemplateError(f"template stopped: {exc}", hint="templates fill in values; they are not "
                                                           "for computing large results") from None
    except SecurityError as exc:
        raise TemplateError(f"template not allowed in the sandbox: {exc}") from None
    except Exception as exc:  # a template is user code: any failure is the user's to fix
        raise TemplateError(f"template error: {type(exc).__name__}: {exc}") from None


def render_tree(value: Any, context: dict[str, Any], path: Path_, smap: SourceMap) -> Any:
    """Render every string inside ``value``; errors name the file, line and key path."""
    if isinstance(value, str):
        try:
            return render_string(value, context)
        except TemplateError as exc:
            raise smap.error(path, exc.message, hint=exc.hint) from None
    if isinstance(value, dict):
        return {k: render_tree(v, context, path + (k,), smap) for k, v in value.items()}
    if isinstance(value, list):
        return [render_tree(v, context, path + (i,), smap) for i, v in enumerate(value)]
    return value
