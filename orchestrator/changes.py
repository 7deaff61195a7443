"""Diffs as data: what a step would change, and what a run did.

A resource's ``diff`` is a pure function returning a list of :class:`Change`. The step's action is
the most disruptive action among its changes. Plan output, ``--json``, saved plans and apply all
read these same objects.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Action(enum.IntEnum):
    """Ordered from harmless to disruptive; a step's action is the max of its changes'."""
    NONE = 0
    START = 1
    UPDATE = 2
    CREATE = 3
    RECREATE = 4

    @property
    def label(self) -> str:
        return {Action.NONE: "no change", Action.START: "start", Action.UPDATE: "update in place",
                Action.CREATE: "create", Action.RECREATE: "recreate"}[self]

    @property
    def key(self) -> str:
        return {Action.NONE: "none", Action.START: "start", Action.UPDATE: "update",
                Action.CREATE: "create", Action.RECREATE: "recreate"}[self]


@dataclass(frozen=True)
class Change:
    """One field that differs: ``before -> after``, why, and what it forces."""
    action: Action
    field: str
    before: Any = None
    after: Any = None
    reason: str = ""
    secret: bool = False

    def to_dict(self) -> dict[str, Any]:
        from .redact import REDACTED
        d = asdict(self)
        d["action"] = self.action.key
        d["forces_recreate"] = self.action is Action.RECREATE
        if self.secret:
            d["before"] = REDACTED if self.before is not None else None
            d["after"] = REDACTED if self.after is not None else None
        del d["secret"]
        return d


def step_action(changes: list[Change]) -> Action:
    return max((c.action for c in changes), default=Action.NONE)


@dataclass
class Diff:
    """The result of diffing one step: its changes, warnings in plain words (the step still
    runs), problems (the step cannot run; plan and apply both stop on them) and notes."""
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)   # step-specific data (revisions, file diffs)
    destructive: str | None = None    # why applying it destroys data (a backup is taken first)
    # plan: what the step will do depends on changes of earlier steps not made yet ("known after
    # apply", as Terraform says): a saved plan may then make other non-destructive changes
    after_apply: bool = False

    @property
    def action(self) -> Action:
        return step_action(self.changes)

    def fields(self, action: Action | None = None) -> list[str]:
        return [c.field for c in self.changes if action is None or c.action is action]


@dataclass
class StepReport:
    """What plan or apply says about one step."""
    name: str
    type: str
    diff: Diff
    status: str = "pending"        # plan: pending | ok ; apply: ok | changed | failed | skipped
    message: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    drift: list[tuple[str, Any, Any]] = field(default_factory=list)   # status: (key, recorded, now)
    fingerprint: str = ""       # plan: digest of what the step observed and would change

    @property
    def action(self) -> Action:
        return self.diff.action

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "action": self.action.key,
            "status": self.status,
            "message": self.message,
            "changes": [c.to_dict() for c in self.diff.changes],
            "warnings": list(self.diff.warnings),
            "problems": list(self.diff.problems),
            "notes": list(self.diff.notes),
            "details": dict(self.diff.details),
            "known_after_apply": self.diff.after_apply,
            "drift": [{"field": k, "recorded": a, "observed": b} for k, a, b in self.drift],
        }
