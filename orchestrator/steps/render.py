"""The render step: files from Jinja2 templates (compose files, ``.env``), written only when
their content or mode differs.

Templates render in the same sandbox, with the same strict undefined names and the same context
as plan values (``vars``, ``secrets``, ``env``, ``steps``), plus the step's own ``vars``. Files are
written atomically with their mode from the start (a ``.env`` holding a password is never
readable by others, not even for a moment). The plan shows a unified diff per file, secrets
redacted on both sides, the earlier ones too (see "secrets in diffs" below); a file edited by hand
since the last apply shows as drift, with its diff. The lockfile keeps, per file, a digest of what
apply wrote (salted, for a file holding a secret) and which of its lines hold a secret.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
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
from ..redact import REDACTED, redact
from ..redact import found as redact_found
from ..secrets import hash_matches, salted_hash
from ..templating import TemplateError, environment
from .base import Resource

TOKEN = "\x00secret\x00"    # stands for every secret in the second, secret-free rendering


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
    masked: str | None = None        # the rendering with every secret as TOKEN (None: same as want)


def digest_text(text: str) -> str:
    """sha256 of the content with secrets redacted: what the lockfile keeps of a file that holds
    no secret (and what earlier versions kept of every file)."""
    return hashlib.sha256(redact(text).encode()).hexdigest()


def file_digest(text: str, *, secret: bool) -> str:
    """What the lockfile keeps of a written file: its sha256, or, when a secret is in it, a salted
    scrypt hash (a plain hash of a file whose other lines are known would let anyone holding the
    lockfile test guesses of the password)."""
    return salted_hash(text) if secret else digest_text(text)


def as_written(text: str, stored: str | None) -> bool:
    """Whether ``text`` is exactly what the last apply wrote (``stored``: its recorded digest). This
    needs no secret: a file is not 'edited by hand' because the password it holds was changed."""
    if not stored:
        return False
    return hash_matches(text, stored) if stored.startswith("scrypt$") else digest_text(text) == stored


@dataclass
class Observed:
    files: list[FileState] = field(default_factory=list)
    secrets: str = ""     # the secrets the templates can see (compared with the lockfile's salted hash)


# --- secrets in diffs --------------------------------------------------------------------------
# The file on disk may hold a secret that is no longer known (the password before a change): a
# value-based mask cannot find it. So each template is rendered a second time with every secret
# replaced by TOKEN; the lines where the two renderings differ come from a secret. A line is shown
# only as far as it agrees with a line of that secret-free rendering, the rest as (redacted).

def _body(line: str) -> str:
    return line.rstrip("\r\n")


def mask_line(line: str, patterns: list[str]) -> str:
    """``line`` (one that may hold a secret) as it may be shown: the text it shares with one of
    ``patterns`` (lines of the TOKEN rendering, which hold no secret), the rest (redacted)."""
    best, kept = REDACTED, -1
    for pattern in patterns:
        parts = pattern.split(TOKEN)
        if len(parts) > 1 and re.fullmatch("(.*)".join(map(re.escape, parts)), line, re.S):
            return REDACTED.join(parts)        # differs only where the secrets are
        n = len(os.path.commonprefix([line, pattern]))
        m = len(os.path.commonprefix([line[n:][::-1], pattern[n:][::-1]]))
        if n + m > kept:
            best, kept = line[:n] + REDACTED + line[len(line) - m:], n + m
    return best


def _like_secret(line: str, patterns: list[str]) -> bool:
    """A line of unknown origin that starts or ends as a secret's line does (when a line is all
    secret, any line may be one)."""
    for pattern in patterns:
        parts = pattern.split(TOKEN)
        head, tail = (parts[0], parts[-1]) if len(parts) > 1 else ("", "")
        if (len(head) < 3 and len(tail) < 3) or (len(head) >= 3 and line.startswith(head)) \
                or (len(tail) >= 3 and line.endswith(tail)):
            return True
    return False


def secret_lines(want: str, masked: str | None) -> tuple[dict[int, str], list[str], bool]:
    """The lines of ``want`` that come from a secret, by index, each as it may be shown; the TOKEN
    lines they come from; and whether a secret spans lines."""
    if masked is None or masked == want:
        return {}, [], False
    real, fake = want.splitlines(keepends=True), masked.splitlines(keepends=True)
    shown, patterns, multiline = {}, [], False
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, fake, real, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        pats = [_body(line) for line in fake[i1:i2]]
        patterns += pats
        multiline |= i2 - i1 != j2 - j1
        for k, j in enumerate(range(j1, j2)):
            body = _body(real[j])
            shown[j] = mask_line(body, pats[k:k + 1] if i2 - i1 == j2 - j1 else pats) + real[j][len(body):]
    return shown, patterns, multiline


def shown_lines(f: FileState, *, recorded_lines: list[int], trusted: bool,
                secrets_same: bool) -> tuple[list[str], list[str]]:
    """The lines of the file on disk and of the new rendering as a diff may show them.

    ``trusted``: the file is what the last apply wrote, whose secret lines were ``recorded_lines``;
    ``secrets_same``: the secrets are those of the last apply (all known, so masked by value). A
    file edited by hand or never recorded has its lines that look like a secret's masked too."""
    new, patterns, multiline = secret_lines(f.want, f.masked)
    after = [new.get(j, redact(line)) for j, line in enumerate(f.want.splitlines(keepends=True))]
    as_shown = dict(zip(f.want.splitlines(keepends=True), after))
    before = []
    for i, line in enumerate((f.have or "").splitlines(keepends=True)):
        body = _body(line)
        if line in as_shown:
            before.append(as_shown[line])
        elif i in recorded_lines or (not trusted and (multiline or _like_secret(body, patterns))):
            plain = redact(body)
            before.append((plain if trusted and secrets_same and plain != body else mask_line(body, patterns))
                          + line[len(body):])
        else:
            before.append(redact(line))
    return before, after


def _range(start: int, length: int) -> str:
    return str(start + 1) if length == 1 else f"{start + (1 if length else 0)},{length}"


def unified(f: FileState, before: list[str], after: list[str]) -> str:
    """A unified diff of the real lines, printed as shown (a changed secret shows as a changed
    line, (redacted) on both sides)."""
    have, want = (f.have or "").splitlines(keepends=True), f.want.splitlines(keepends=True)
    out = [f"--- {f.dest} (now)" if f.have is not None else "--- /dev/null", f"+++ {f.dest} (planned)"]
    for group in difflib.SequenceMatcher(None, have, want).get_grouped_opcodes(3):
        (_, i1, _, j1, _), (_, _, i2, _, j2) = group[0], group[-1]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                out += [" " + after[j] for j in range(b1, b2)]
                continue
            out += ["-" + before[i] for i in range(a1, a2)] + ["+" + after[j] for j in range(b1, b2)]
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def _sha(lines: list[str]) -> str:
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()[:12]


def diff_render(obs: Observed, recorded: dict) -> Diff:
    """Per file: create, rewrite (with its diff) or fix the mode. Pure."""
    d = Diff()
    rec_obs = recorded.get("observed") or {}
    written, lines = rec_obs.get("files") or {}, rec_obs.get("secret_lines") or {}
    stored = (recorded.get("secrets") or {}).get("secrets")
    secrets_same = hash_matches(obs.secrets, stored) if stored else not obs.secrets
    diffs = {}
    for f in obs.files:
        if f.have is None:
            d.changes.append(Change(Action.CREATE, f.dest, None, f"mode {f.mode:04o}", "the file does not exist"))
            diffs[f.dest] = unified(f, *shown_lines(f, recorded_lines=[], trusted=True, secrets_same=True))
            continue
        if f.have != f.want:
            trusted = as_written(f.have, written.get(f.dest))
            by_hand = f.dest in written and not trusted
            before, after = shown_lines(f, recorded_lines=lines.get(f.dest) or [], trusted=trusted,
                                        secrets_same=secrets_same)
            d.changes.append(Change(Action.UPDATE, f.dest, _sha(before), _sha(after),
                                    "edited by hand since the last apply; apply puts the rendered content back"
                                    if by_hand else "the rendered content differs" if before != after
                                    else "a secret in it changed", secret=before == after))
            if by_hand:
                d.warnings.append(f"{f.dest} was edited by hand since the last apply (see its diff); apply "
                                  f"overwrites it with the rendered template: change the template to keep the edit")
            diffs[f.dest] = unified(f, before, after)
        if f.have_mode != f.mode:
            d.changes.append(Change(Action.UPDATE, f"{f.dest} mode", f"{f.have_mode:04o}", f"{f.mode:04o}",
                                    "the file mode differs"))
    if diffs:
        d.details["diffs"] = diffs
    return d


def _masked(obj: Any, found: set[str]) -> Any:
    """``obj`` (the template context) with every secret in its strings replaced by TOKEN; the
    secrets met are added to ``found``."""
    if isinstance(obj, str):
        found |= redact_found(obj)
        return redact(obj, TOKEN)
    if isinstance(obj, dict):
        new = copy.copy(obj)       # keeps a Scope a Scope (its names and messages)
        new.update((k, _masked(v, found)) for k, v in obj.items())
        return new
    if isinstance(obj, (list, tuple)):
        return [_masked(v, found) for v in obj]
    return obj


class Render(Resource):
    """Files rendered from Jinja2 templates, written atomically and only when they differ."""
    type = "render"
    Spec = RenderSpec
    spec: RenderSpec

    def _loader_env(self) -> jinja2.Environment:
        base = environment()
        root = self.rc.plan.resolve(self.spec.template_dir)
        return base.overlay(loader=jinja2.FileSystemLoader(str(root)))

    def _contexts(self) -> tuple[dict, dict, str]:
        """The template context, the same with every secret as TOKEN, and the secrets in it.
        ``target`` says where the files go: ``docker`` (an engine) or ``kubernetes`` (render
        --target kubernetes), for what differs between them (nginx's resolver)."""
        context = {"target": self.rc.options.get("target", "docker"),
                   **(self.rc.context.as_dict() if self.rc.context else {}), **self.spec.vars}
        found: set[str] = set()
        masked = _masked(context, found)
        return context, masked, "\0".join(sorted(found))

    def _render_all(self) -> tuple[list[FileState], str]:
        env = self._loader_env()
        context, masked, secrets = self._contexts()
        states = []
        for i, f in enumerate(self.spec.files):
            where = self.step.path + ("files", i, "src")
            try:
                template = env.get_template(f.src)
                text = template.render(**context)
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
            try:
                fake = template.render(**masked) if secrets else text
            except Exception:   # a template that computes with a secret (say | int): mask by value
                fake = redact(text, TOKEN)
            states.append(FileState(f.dest, self.rc.plan.resolve(f.dest), text, int(f.mode, 8), masked=fake))
        return states, secrets

    def check(self) -> None:
        self._render_all()

    def secret_inputs(self) -> dict[str, str]:
        secrets = self._contexts()[2]
        return {"secrets": secrets} if secrets else {}

    def observe(self) -> Observed:
        files, secrets = self._render_all()
        obs = Observed(files, secrets)
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
        """Per file the digest of what apply wrote (kept while the file is unchanged) and the
        indices of its lines that hold a secret (so a later diff can mask them even when that
        secret is no longer known)."""
        rec = self.recorded.get("observed") or {}
        written, lines = rec.get("files") or {}, rec.get("secret_lines") or {}
        files, secret = {}, {}
        for f in obs.files:
            index = lines.get(f.dest) or []
            if f.have is None:
                files[f.dest] = None
            elif as_written(f.have, written.get(f.dest)):
                files[f.dest] = written[f.dest]
            elif f.have == f.want and not self.rc.read_only:
                index = sorted(secret_lines(f.want, f.masked)[0])
                files[f.dest] = file_digest(f.have, secret=bool(index))
            else:
                files[f.dest] = "(not what the last apply wrote)"
            if index:
                secret[f.dest] = index
        return {"files": files, **({"secret_lines": secret} if secret else {})}
