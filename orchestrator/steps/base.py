"""What every step type implements, and the context it runs in.

A step type is a :class:`Resource` subclass with a pydantic ``Spec``. The executor calls, in order:
``observe`` (read-only), ``diff`` (pure: desired vs observed, returning change objects),
``apply`` (only in apply mode, only when the diff has changes), ``observe`` again, then
``record`` and ``outputs`` for the lockfile and for later steps. Plan mode runs the same path up
to ``diff`` with a read-only engine, so a dry run cannot mutate.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel

from ..changes import Diff
from ..docker_engine import Engine
from ..errors import PlanError
from ..lockfile import Lockfile
from ..plan import Context, Plan, StepDecl


DB_STEPS = ("db-container", "database")   # the step types that provide a database to later steps


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq and psycopg take it."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def extra_labels() -> dict[str, str]:
    """Labels from ``ORCHESTRATE_LABELS=k=v,k2=v2``, put on everything orchestrate creates
    (CI and the test suite use it to tag and clean up what they made)."""
    raw = os.environ.get("ORCHESTRATE_LABELS", "").strip()
    labels = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PlanError(f"ORCHESTRATE_LABELS: {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


@dataclass
class RunContext:
    plan: Plan
    mode: str                       # "validate" | "plan" | "apply" | "status" | "destroy"
    lock: Lockfile
    context: Context | None = None  # what templates see, with the outputs of the steps so far
    options: dict[str, Any] = field(default_factory=dict)   # command options, e.g. {"sql": True}
    resources: dict[str, Any] = field(default_factory=dict)  # the steps rendered so far, by name
    changed: list[str] = field(default_factory=list)         # steps changed (apply) or pending (plan) so far
    only: set[str] | None = None                              # apply --only: the steps selected

    def selected(self, step: StepDecl) -> bool:
        return self.only is None or step.name in self.only
    log: Callable[[str], None] = lambda _m: None
    progress: Callable[[str], None] = lambda _m: None
    _engine: Engine | None = field(default=None, repr=False)
    _target: Any = field(default=None, repr=False)

    @property
    def read_only(self) -> bool:
        return self.mode in ("validate", "plan", "status", "verify")

    def earlier(self, step: StepDecl, *types: str):
        """The resource of the nearest earlier step of one of these types (None if there is none)."""
        for earlier in reversed(self.plan.steps[:step.index]):
            if earlier.type in types and earlier.name in self.resources:
                return self.resources[earlier.name]
        return None

    def earlier_database(self, step: StepDecl):
        """The step that provides the database to ``step``: the nearest earlier db-container
        (PostgreSQL in Docker) or database (an external one) step; None if there is none."""
        return self.earlier(step, *DB_STEPS)

    def pending_before(self, step: StepDecl, *types: str) -> list[str]:
        """Read-only runs: the earlier steps (of these types) with changes pending, whose result
        this step cannot see yet."""
        if not self.read_only:
            return []
        return [s.name for s in self.plan.steps[:step.index] if s.name in self.changed and s.type in types]

    def pending_builds(self, step: StepDecl, tag: str) -> list[str]:
        """Read-only runs: the earlier image steps, with changes pending, that build ``tag``."""
        return [s for s in self.pending_before(step, "image")
                if getattr(self.resources.get(s), "spec", None) is not None and self.resources[s].spec.tag == tag]

    def pending_renders(self, step: StepDecl, sources) -> list[str]:
        """Read-only runs: the earlier render steps, with changes pending, that write one of the
        files ``sources`` (paths as the plan gives them)."""
        ours = {self.plan.resolve(src) for src in sources}
        return [name for name in self.pending_before(step, "render")
                if any(self.plan.resolve(f.dest) in ours
                       for f in getattr(getattr(self.resources.get(name), "spec", None), "files", []))]

    def earlier_outputs(self, step: StepDecl, *types: str) -> tuple[str, dict] | None:
        """Name and outputs of the nearest earlier step of one of these types."""
        for earlier in reversed(self.plan.steps[:step.index]):
            if earlier.type in types and self.context and earlier.name in self.context.steps:
                return earlier.name, self.context.steps[earlier.name]
        return None

    @property
    def target(self):
        """The Docker Engine of this run (the plan's ``engine:``, else DOCKER_HOST, else local)."""
        if self._target is None:
            from ..plan import engine_target
            self._target = engine_target(self.plan, self.context)
        return self._target

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(read_only=self.read_only, log=self.log, target=self.target)
        return self._engine


class Resource:
    """Base class of step types."""
    type: ClassVar[str]
    Spec: ClassVar[type[BaseModel]]

    def __init__(self, step: StepDecl, spec: BaseModel, rc: RunContext):
        self.step = step
        self.spec = spec
        self.rc = rc
        self.recorded: dict[str, Any] = rc.lock.step(step.name)

    @property
    def own_labels(self) -> dict[str, str]:
        """The labels that identify what this step creates (part of its configuration)."""
        return {"orchestrate.plan": self.rc.plan.name, "orchestrate.step": self.step.name}

    @property
    def labels(self) -> dict[str, str]:
        """The labels of everything this step creates: its own, and those of ORCHESTRATE_LABELS,
        which are put on at creation but are not part of the configuration (a shell without the
        variable must not see a change)."""
        return {**extra_labels(), **self.own_labels}

    def destroy_volume(self, name: str, *, volumes: bool) -> str | None:
        """Destroy's one rule for a data volume: removed only when asked (``--volumes``) and made by
        this plan; what was done, in words (None: there is no such volume)."""
        info = self.rc.engine.volume(name)
        if info is None:
            return None
        ours = (info.get("Labels") or {}).get("orchestrate.plan") == self.rc.plan.name
        if volumes and ours:
            self.rc.engine.remove_volume(name)
            return f"removed volume {name} and the data in it"
        if volumes:
            return f"kept volume {name}: it was not created by this plan"
        return f"kept volume {name} (the data is preserved; --volumes removes it)"

    def database_url(self, explicit: str | None) -> str:
        """``explicit``, or the url of the nearest earlier db-container or database step."""
        if explicit:
            return explicit
        found = self.rc.earlier_outputs(self.step, *DB_STEPS)
        if not found:
            raise self.rc.plan.smap.error(
                self.step.path + ("url",), "no url given and no db-container step before this one, nor a database "
                "step (an external PostgreSQL)", hint="add url: ... to the step, or a db-container or database step "
                                                      "before it")
        return found[1]["url"]

    def update_observed(self, **fields: Any) -> None:
        """Write part of this step's record into the lockfile now, and save it (a checkpoint that
        survives a crash later in the step)."""
        entry = self.rc.lock.step(self.step.name) or {"type": self.type}
        entry.setdefault("observed", {}).update(fields)
        self.rc.lock.set_step(self.step.name, entry)
        self.rc.lock.save()

    def check(self) -> None:
        """Validate-time checks that need no Docker and no database (files, templates)."""

    def observe(self) -> Any:
        raise NotImplementedError

    def diff(self, observed: Any) -> Diff:
        raise NotImplementedError

    def apply(self, observed: Any, diff: Diff) -> str:
        """Make the changes; return a short description of what was done."""
        raise NotImplementedError

    def summary(self, observed: Any) -> str:
        """A short line for a step that was ``ok`` (nothing to change), when it has one."""
        return ""

    def settle(self, observed: Any) -> None:
        """Apply mode, nothing to change: wait (read-only) until what exists is usable by the
        steps after this one, e.g. a container started by an interrupted run still starting."""

    def outputs(self, observed: Any = None) -> dict[str, Any]:
        """Outputs for later steps; with ``observed=None``, what is known before anything runs."""
        return {}

    def record(self, observed: Any) -> dict[str, Any]:
        """Identities observed, for the lockfile and drift detection (no secrets)."""
        return {}

    def identity(self, record: dict[str, Any]) -> dict[str, Any]:
        """A record (``record()``'s, or the lockfile's) as saved plans and drift compare it: less
        what changes without changing what the step would do."""
        return record

    def secret_inputs(self) -> dict[str, str]:
        """Secret values among the inputs, by field name (stored only as salted hashes)."""
        return {}

    def destroy(self, observed: Any, *, volumes: bool) -> list[str]:
        return []
