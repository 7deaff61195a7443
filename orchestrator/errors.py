"""The one exception family of orchestrate.

Everything that goes wrong for a reason the user can act on raises an :class:`OrchestrateError`
(or a subclass). The CLI catches exactly this base class, prints ``error: <message>`` and the
hint, and exits 1 with no traceback. Anything else escaping is a bug and shows its traceback.
"""

from __future__ import annotations


class OrchestrateError(Exception):
    """A failure with a message for people: what is wrong, and (in ``hint``) what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class PlanError(OrchestrateError):
    """The plan (or a variable file, or a command-line override) is wrong.

    ``location`` is ``file:line`` and ``key`` the dotted key path inside the plan, so the
    message points at the exact spot to fix.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, hint: str | None = None):
        self.file, self.line, self.key = file, line, key
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        if key:
            where += f"{key}: "
        super().__init__(where + message, hint)
        self.detail = message


class DockerError(OrchestrateError):
    """The Docker Engine refused or could not be reached."""


class StepFailed(OrchestrateError):
    """A step failed while being applied; the executor stops there."""


def refusal(problems: list[str]) -> StepFailed:
    """A step that cannot run: every problem at once (the step changes nothing)."""
    if len(problems) == 1:
        return StepFailed(problems[0])
    return StepFailed(f"{len(problems)} problems; the step changed nothing:\n" + "\n".join(f"  - {p}" for p in problems))


class LockHeld(OrchestrateError):
    """Another orchestrate process holds the plan's apply lock."""


class KeyedValueError(ValueError):
    """Raised inside a pydantic validator to point at a sub-key (a dict key or a list index) of
    the field being validated, so the error names that key's own line."""

    def __init__(self, message: str, *subpath: str | int):
        super().__init__(message)
        self.subpath = subpath
