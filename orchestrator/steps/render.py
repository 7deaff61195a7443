"""The render step: files from Jinja2 templates (compose files, ``.env``), written only when
their content or mode differs.

Templates render in the same sandbox, with the same strict undefined names and the same context
as plan values (``vars``, ``secrets``, ``env``, ``steps``), plus the step's own ``vars``. Files are
written atomically with their mode from the start (a ``.env`` holding a password is never
readable by others, not even for a moment). The plan shows a unified diff per file, secrets
redacted; a file edited by hand since the last apply shows as drift, with its diff.
"""

from __future__ import annotations

import difflib
import hashlib
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from pydantic import Field, field_validator

from ..changes import Action, Change, Diff
from ..fields import NonEmptyText, RelPath
from ..fsutil import atomic_write
from ..plan import Strict
from ..redact import redact
from ..templating import TemplateError, environment
from .base import Resource


class FileSpec(Strict):
    src: NonEmptyText = Field(description="template, relative to template_dir")
    dest: RelPath = Field(description="file to write, relative to the plan root")
    mode: str = Field("0644", description="file mode in octal, e.g. '0600' for files holding secrets")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> str:
        # A YAML integer is the mode's value (YAML reads 0644 as octal), as in Ansible; a string is
        # octal digits. So 0644 and "0644" both mean rw-r--r--, and a bare 644 is out of range.
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value), 8)
            except ValueError:
                raise ValueError(f"mode {value!r} is not an octal file mode such as '0644'") from None
        if not 0 <= number <= 0o777:
            raise ValueError(f"mode {value!r} is not between 0000 and 0777 (quote it: mode: '0644')")
        return f"{number:04o}"


class RenderSpec(Strict):
    template_dir: RelPath = Field("templates", description="folder of the templates (relative to the plan root)")
    vars: dict[str, Any] = Field(default_factory=dict, description="extra variables for the templates")
    files: list[FileSpec] = Field(min_length=1)


@dataclass
class FileState:
    dest: str
    path: Path
    want: str
    mode: int
    have: str | None = None          # None: the file does not exist
    have_mode: int | None = None

    @property
    def sha(self) -> str | None:
        return None if self.have is None else digest_text(self.have)

    @property
    def want_sha(self) -> str:
        return digest_text(self.want)


def digest_text(text: str) -> str:
    """sha256 of the content with secrets redacted: what the lockfile may hold of a file that
    contains a password (a hash of the password itself would be guessable offline)."""
    return hashlib.sha256(redact(text).encode()).hexdigest()


@dataclass
class Observed:
    files: list[FileState] = field(default_factory=list)


def unified(before: str | None, after: str, name: str) -> str:
    return "".join(difflib.unified_diff((before or "").splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"{name} (now)" if before is not None else "/dev/null",
                                        tofile=f"{name} (planned)"))


def diff_render(obs: Observed, recorded: dict) -> Diff:
    """Per file: create, rewrite (with its diff) or fix the mode. Pure."""
    d = Diff()
    written = (recorded.get("observed") or {}).get("files") or {}
    diffs = {}
    for f in obs.files:
        if f.have is None:
            d.changes.append(Change(Action.CREATE, f.dest, None, f"mode {f.mode:04o}", "the file does not exist"))
            diffs[f.dest] = unified(None, f.want, f.dest)
            continue
        if f.have != f.want:
            by_hand = f.dest in written and written[f.dest] != f.sha
            d.changes.append(Change(Action.UPDATE, f.dest, f"sha256:{f.sha[:12]}", f"sha256:{f.want_sha[:12]}",
                                    "edited by hand since the last apply; apply puts the rendered content back"
                                    if by_hand else "the rendered content differs"))
            if by_hand:
                d.warnings.append(f"{f.dest} was edited by hand since the last apply (see its diff); apply "
                                  f"overwrites it with the rendered template: change the template to keep the edit")
            diffs[f.dest] = unified(f.have, f.want, f.dest)
        if f.have_mode != f.mode:
            d.changes.append(Change(Action.UPDATE, f"{f.dest} mode", f"{f.have_mode:04o}", f"{f.mode:04o}",
                                    "the file mode differs"))
    if diffs:
        d.details["diffs"] = diffs
    return d


class Render(Resource):
    """Files rendered from Jinja2 templates, written atomically and only when they differ."""
    type = "render"
    Spec = RenderSpec
    spec: RenderSpec

    def _loader_env(self) -> jinja2.Environment:
        base = environment()
        root = self.rc.plan.resolve(self.spec.template_dir)
        return base.overlay(loader=jinja2.FileSystemLoader(str(root)))

    def _render_all(self) -> list[FileState]:
        env = self._loader_env()
        context = {**(self.rc.context.as_dict() if self.rc.context else {}), **self.spec.vars}
        states = []
        for i, f in enumerate(self.spec.files):
            where = self.step.path + ("files", i, "src")
            try:
                text = env.get_template(f.src).render(**context)
            except jinja2.TemplateNotFound:
                raise self.rc.plan.smap.error(where, f"template {f.src!r} not found in "
                                              f"{self.rc.plan.resolve(self.spec.template_dir)}") from None
            except jinja2.TemplateSyntaxError as exc:
                raise self.rc.plan.smap.error(where, f"{f.src}:{exc.lineno}: template syntax error: {exc.message}") from None
            except jinja2.UndefinedError as exc:
                raise self.rc.plan.smap.error(where, f"{f.src}: undefined: {exc.message}",
                                              hint="the template can use vars, secrets, env, steps and the "
                                                   "step's own vars") from None
            except (TemplateError, jinja2.TemplateError) as exc:
                raise self.rc.plan.smap.error(where, f"{f.src}: {exc}") from None
            states.append(FileState(f.dest, self.rc.plan.resolve(f.dest), text, int(f.mode, 8)))
        return states

    def check(self) -> None:
        self._render_all()

    def observe(self) -> Observed:
        obs = Observed(self._render_all())
        for f in obs.files:
            try:
                f.have = f.path.read_text(encoding="utf-8")
                f.have_mode = stat.S_IMODE(f.path.stat().st_mode)
            except FileNotFoundError:
                pass
        return obs

    def diff(self, obs: Observed) -> Diff:
        return diff_render(obs, self.recorded)

    def apply(self, obs: Observed, diff: Diff) -> str:
        done = []
        for f in obs.files:
            if f.have != f.want:
                atomic_write(f.path, f.want, mode=f.mode)
                done.append(f"wrote {f.dest}")
            elif f.have_mode != f.mode:
                f.path.chmod(f.mode)
                done.append(f"set the mode of {f.dest} to {f.mode:04o}")
        return "; ".join(done)

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        return {"files": {f.dest: str(self.rc.plan.resolve(f.dest)) for f in self.spec.files}}

    def record(self, obs: Observed) -> dict[str, Any]:
        return {"files": {f.dest: f.sha for f in obs.files}}
