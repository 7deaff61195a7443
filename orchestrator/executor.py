"""The executor: one path for plan, apply, status and destroy.

Per step: render its spec (with the real outputs of earlier steps), observe, diff, and in apply
mode apply the changes, observe again and record. Plan and status run the very same code with a
read-only engine. Apply stops at the first failing step, names it and says why; the steps before
it stay recorded in the lockfile, which is rewritten after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import leftovers, redact
from .changes import Diff, StepReport
from .errors import OrchestrateError, StepFailed, refusal
from .lockfile import ApplyLock, Lockfile, digest
from .plan import Plan, StepDecl, build_context, enabled, render_step, set_outputs
from .secrets import SecretStore, secrets_path, stable_hash
from .steps import REGISTRY
from .steps.backup import owe
from .steps.base import DB_STEPS, Resource, RunContext


@dataclass
class RunResult:
    mode: str
    plan: Plan
    reports: list[StepReport] = field(default_factory=list)
    failed: StepReport | None = None
    error: OrchestrateError | None = None

    @property
    def changes_pending(self) -> bool:
        return any(r.diff.changes for r in self.reports if r.status != "skipped")

    @property
    def problems(self) -> list[tuple[str, str]]:
        return [(r.name, p) for r in self.reports for p in r.diff.problems]

    def count(self, status: str) -> int:
        return sum(1 for r in self.reports if r.status == status)


def _lock_entry(res: Resource, obs, outputs: dict, old: dict) -> dict:
    old_hashes = old.get("secrets") or {}
    hashes = {k: stable_hash(v, old_hashes.get(k)) for k, v in res.secret_inputs().items()}
    inputs = redact.redact_obj(res.spec.model_dump(mode="json"))   # secrets only as salted hashes
    for key, hashed in hashes.items():
        inputs[key] = hashed
    return {
        "type": res.type,
        "inputs_digest": digest(inputs),
        "secrets": hashes,
        "observed": res.record(obs),
        "outputs": redact.redact_obj({k: v for k, v in outputs.items() if k not in res.secret_inputs()}),
    }


def validate(plan: Plan, *, checks: bool = True) -> list[tuple[StepDecl, Resource]]:
    """Render and validate every step, and (``checks``) run its file-level checks, with the
    outputs that are known before anything runs in place of real ones: no Docker, no database,
    no writes."""
    store = SecretStore(secrets_path(plan.path))
    ctx = build_context(plan, store, generate=False)
    try:    # what the last apply recorded lets a check skip what it proved then (migrate's scripts)
        lock = Lockfile.load(plan.lock_path)
    except OrchestrateError:   # a damaged lockfile is the business of the command that reads it
        lock = Lockfile(plan.lock_path)
    rc = RunContext(plan=plan, mode="validate", lock=lock, context=ctx)
    out = []
    for step, res in rendered_steps(plan, ctx, rc):
        if res is None:
            continue
        if checks:
            res.check()
        set_outputs(ctx, step, res.outputs(None))
        out.append((step, res))
    return out


def rendered_steps(plan: Plan, ctx, rc: RunContext):
    """Yield (step, resource) in plan order, each rendered with the outputs set so far in
    ``ctx`` by the caller; (step, None) for a step whose ``when`` is false (it has no outputs)."""
    rc.context = ctx
    for step in plan.steps:
        if not enabled(step, plan, ctx):
            set_outputs(ctx, step, {})
            yield step, None
            continue
        res = REGISTRY[step.type](step, render_step(step, plan, ctx), rc)
        for value in res.secret_inputs().values():
            redact.register(value)
        rc.resources[step.name] = res
        yield step, res


class Executor:
    def __init__(self, plan: Plan, mode: str, *, only: list[str] | None = None,
                 options: dict | None = None,
                 log: Callable[[str], None] = lambda _m: None,
                 progress: Callable[[str], None] = lambda _m: None,
                 say: Callable[[str], None] | None = None,
                 on_step: Callable[[StepReport], None] = lambda _r: None):
        self.plan = plan
        self.mode = mode
        self.only = set(only) if only else None
        for name in self.only or ():
            plan.step(name)   # unknown names are an error before anything runs
        self.on_step = on_step
        self.say = say or progress
        self.lock = Lockfile.load(plan.lock_path)
        self.store = SecretStore(secrets_path(plan.path))
        self.rc = RunContext(plan=plan, mode=mode, lock=self.lock, log=log, progress=progress,
                             options=dict(options or {}), only=self.only)

    def run(self) -> RunResult:
        if self.mode == "apply":
            with ApplyLock(self.plan.path):
                return self._run()
        return self._run()

    def _run(self) -> RunResult:
        result = RunResult(self.mode, self.plan)
        ctx = self._ctx = build_context(self.plan, self.store, generate=self.mode == "apply")
        if self.mode == "apply":
            self.store.save()        # a generated secret is kept before anything uses it
            self.lock.data["plan"] = self.plan.name
            self.lock.data["plan_digest"] = digest(self.plan.path.read_text(encoding="utf-8"))
            self._clean_leftovers(ctx)
        for step, res in rendered_steps(self.plan, ctx, self.rc):
            report = StepReport(step.name, step.type, Diff())
            result.reports.append(report)
            if res is None:
                report.status, report.message = "skipped", "when: false"
                self.on_step(report)
                continue
            try:
                outputs = self._step(step, res, report)
            except OrchestrateError as exc:
                report.status, report.message = "failed", exc.message
                result.failed, result.error = report, exc
                self.on_step(report)
                break
            self.on_step(report)
            set_outputs(ctx, step, outputs)
        if self.mode == "apply":
            self.lock.save()
        return result

    def _step(self, step: StepDecl, res: Resource, report: StepReport) -> dict:
        obs = res.observe()
        report.diff = diff = res.diff(obs)
        if self.mode in ("plan", "status", "verify"):
            report.status = "pending" if diff.changes else "ok"
            report.fingerprint = digest(redact.redact_obj({
                "observed": res.identity(res.record(obs)),
                "changes": [[c.action.key, c.field, c.to_dict()["before"], c.to_dict()["after"]] for c in diff.changes]}))
            if diff.changes:
                self.rc.changed.append(step.name)
            if self.mode == "status":
                report.drift = drift(res.identity(self.lock.step(step.name).get("observed") or {}),
                                     res.identity(res.record(obs)))
            return res.outputs(obs)
        if self.only is not None and step.name not in self.only:
            report.status = "skipped"
            return res.outputs(obs)
        if diff.problems:
            raise refusal(diff.problems)
        expected = self.rc.options.get("expected")
        if expected is not None:
            unplanned = {(c.action.key, c.field) for c in diff.changes} - expected.get(step.name, set())
            if step.name in self.rc.options.get("after_apply", ()) and not diff.destructive:
                unplanned = {(a, f) for a, f in unplanned if a not in ("create", "update", "start")}
            if unplanned:
                raise StepFailed(f"step {step.name} would now {', '.join(sorted(a + ' ' + f for a, f in unplanned))}, "
                                 f"which the saved plan did not show; stopped here",
                                 hint="make a new plan (orchestrate plan PLAN --out FILE) and review it")
        if diff.changes:
            if diff.destructive and not self.rc.options.get("no_backup"):
                self._backup_before(step, diff.destructive)
            self._owe_later(step)
            try:
                report.message = res.apply(obs, diff)
            except OrchestrateError:
                self._record_after_failure(step, res)
                raise
            obs = res.observe()
            report.status = "changed"
            self.rc.changed.append(step.name)
        else:
            res.settle(obs)
            report.status = "ok"
            report.message = res.summary(obs)
        outputs = res.outputs(obs)
        self.lock.set_step(step.name, _lock_entry(res, obs, outputs, self.lock.step(step.name)))
        self.lock.save()
        return outputs

    def _clean_leftovers(self, ctx) -> None:
        """Holding the plan's lock: remove what an interrupted run of this plan left, and say so."""
        line = leftovers.clean(self.plan, self.lock, self.rc.engine, ctx)
        if line:
            self.say(line)

    def _owe_later(self, step: StepDecl) -> None:
        """Step ``step`` is about to change something: every later backup step owes a backup until
        one is taken, and every later verify step a full verification until one passes (recorded
        now, so that a run killed before them still owes them)."""
        from .steps.verify import owe_verification
        later = [s for s in self.plan.steps[step.index + 1:] if s.type in ("backup", "verify")]
        for decl in later:
            if decl.type == "backup":
                owe(self.lock, decl.name, step.name)
            else:
                owe_verification(self.lock, decl.name)
        if later:
            self.lock.save()

    def backup_resource(self, ctx) -> Resource:
        """The plan's (first) backup step, rendered now; a default one if the plan has none."""
        from .steps.backup import Backup
        decl = next((s for s in self.plan.steps if s.type == "backup"), None)
        if decl is None:
            decl = StepDecl(len(self.plan.steps), "backup", "backup", {})
            return Backup(decl, Backup.Spec(), self.rc)
        if decl.name in self.rc.resources:
            return self.rc.resources[decl.name]
        try:
            return Backup(decl, render_step(decl, self.plan, ctx), self.rc)
        except OrchestrateError as exc:
            raise StepFailed(f"cannot prepare the backup step {decl.name!r} yet: {exc.message}") from None

    def _backup_before(self, step: StepDecl, why: str) -> None:
        """Something destructive the user allowed is about to happen: take a backup first."""
        if not any(s.type in DB_STEPS for s in self.plan.steps[:step.index]):
            raise StepFailed(f"a backup must be taken before {why}, but this plan has no db-container or database step to "
                             f"take it from; nothing was changed",
                             hint="back the database up yourself, then apply with --no-backup")
        res = self.backup_resource(self._ctx)
        record = res.take(f"before {why} (step {step.name})")
        self.rc.progress(f"took {record['name']} before {why}; --no-backup skips this")

    def operate(self, what):
        """Run ``what(executor, ctx)`` (backup, restore, drill) with every step rendered and its
        known outputs set, applying nothing."""
        with ApplyLock(self.plan.path):
            ctx = self._ctx = build_context(self.plan, self.store, generate=False)
            self._clean_leftovers(ctx)
            for step, res in rendered_steps(self.plan, ctx, self.rc):
                if res is not None:
                    set_outputs(ctx, step, res.outputs(None))
            return what(self, ctx)

    def _backup_before_destroy(self, ctx, resources) -> list[tuple[str, list[str]]]:
        if not _running_db(resources):
            return [("backup", ["no backup taken: the database container is not running"])]
        record = self.backup_resource(ctx).take("before destroy --volumes")
        return [("backup", [f"took {record['name']} before removing the volumes (--no-backup skips this)"])]

    def _record_after_failure(self, step: StepDecl, res: Resource) -> None:
        """A step that failed halfway still records what it left (say, the last good migration)."""
        try:
            obs = res.observe()
            entry = _lock_entry(res, obs, res.outputs(obs), self.lock.step(step.name))
        except Exception:   # best effort: the failure being reported matters more
            return
        self.lock.set_step(step.name, entry)
        self.lock.save()

    def destroy(self, *, volumes: bool) -> list[tuple[str, list[str]]]:
        """Remove what the plan created, last step first; volumes only when asked (and then after
        a backup, unless the options say no_backup)."""
        said = []
        with ApplyLock(self.plan.path):
            ctx = self._ctx = build_context(self.plan, self.store, generate=False)
            self._clean_leftovers(ctx)
            resources = []
            for step, res in rendered_steps(self.plan, ctx, self.rc):
                if res is not None:
                    set_outputs(ctx, step, res.outputs(None))
                    resources.append((step, res))
            if volumes and not self.rc.options.get("no_backup"):
                said += self._backup_before_destroy(ctx, resources)
            for step, res in reversed(resources):
                if self.only is not None and step.name not in self.only:
                    continue
                obs = res.observe()
                said.append((step.name, res.destroy(obs, volumes=volumes)))
                obs = res.observe()
                entry = self.lock.step(step.name)
                if entry:
                    entry["observed"] = res.record(obs)
                    self.lock.set_step(step.name, entry)
                self.lock.save()
        return said


def _running_db(resources) -> bool:
    for _, res in resources:
        if res.type == "db-container":
            info = res.rc.engine.container(res.spec.container)
            return bool(info) and info["State"].get("Status") == "running"
        if res.type == "database":      # not ours to stop: a backup that cannot connect says why
            return True
    return False


def drift(recorded: dict, now: dict) -> list[tuple[str, object, object]]:
    """Identities recorded at the last apply that differ now: ``(key, recorded, now)``."""
    return [(k, recorded.get(k), now.get(k)) for k in sorted(set(recorded) | set(now))
            if recorded.get(k) != now.get(k)]
