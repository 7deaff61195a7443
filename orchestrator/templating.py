"""Jinja2 rendering of plan values, sandboxed and strict.

Any string value in a step may be a template over ``vars``, ``secrets``, ``env`` and
``steps.<name>.<output>``. A string that is exactly one expression (``"{{ vars.port }}"``) renders
to the expression's native value (an int stays an int, a mapping stays a mapping), as in Ansible;
anything else renders to a string. Undefined names are errors that say what *is* defined.
"""

from __future__ import annotations

import functools
import re
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


class _PlanUndefined(jinja2.StrictUndefined):
    @property
    def _undefined_message(self) -> str:  # type: ignore[override]
        obj, name = self._undefined_obj, self._undefined_name
        if isinstance(obj, Scope):
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


class _Env(ImmutableSandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        # Scopes are looked up by key first, so vars.items (a variable) is never dict.items.
        if isinstance(obj, Scope):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


_env = _Env(undefined=_PlanUndefined, keep_trailing_newline=True, autoescape=False)
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
        single = _SINGLE.match(text)
        if single:
            value = _expression(single.group("expr"))(**context)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()
            return value
        return _compiled(text).render(**context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined: {exc.message}",
                            hint="check the variable, secret and step names in the template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}",
                            hint="templates use {{ expression }}; check the braces and quotes") from None
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
