"""The migrate step: the application's Alembic migrations, run in-process.

Observe reads the migration scripts (heads, the target, the revisions between the database's
revision and the target) and the database's current revision; the diff says which revisions
would run, in order, or why none may (several heads, a downgrade not allowed, a database at a
revision the scripts do not know). Apply takes a PostgreSQL advisory lock, so two runs never
migrate at once, then runs ``alembic upgrade`` through Alembic's command API with the URL in both
``sqlalchemy.url`` and ``DATABASE_URL`` (env.py files of either style work unchanged), from the
folder of ``alembic.ini`` (as people run ``alembic`` from their project root).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field

from ..changes import Action, Change, Diff
from ..errors import OrchestrateError, StepFailed
from ..fields import Duration
from ..plan import Strict
from .base import Resource

LOCK_KEY = int.from_bytes(hashlib.sha256(b"orchestrate.migrate").digest()[:8], "big", signed=True)


class MigrateSpec(Strict):
    alembic_ini: str = Field("alembic.ini", description="the application's alembic.ini (relative to the plan root)")
    script_location: str | None = Field(None, description="overrides script_location of alembic.ini")
    target: str = Field("head", min_length=1, description="revision to reach: head, a revision id, or base")
    url: str | None = Field(None, description="database URL (default: the url of the nearest earlier "
                                              "db-container step)")
    allow_downgrade: bool = Field(False, description="allow a target below the database's revision")
    lock_timeout: Duration = Field(300.0, description="how long to wait for another run's migration")


@dataclass
class Rev:
    revision: str
    message: str

    def __str__(self) -> str:
        return f"{self.revision} {self.message}"


@dataclass
class Observed:
    heads: list[Rev] = field(default_factory=list)       # of the scripts
    target: str | None = None                            # resolved target revision (None: base)
    reachable: bool = False
    error: str | None = None                             # why the database was not reachable
    current: str | None = None                           # the database's revision (None: empty)
    unknown_current: bool = False                        # the database's revision is not in the scripts
    upgrade: list[Rev] = field(default_factory=list)     # revisions to run, in order
    downgrade: list[Rev] = field(default_factory=list)   # revisions to undo, in order
    sql: str | None = None                               # offline SQL of the upgrade (plan --sql)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def diff_migrate(obs: Observed, *, target: str, allow_downgrade: bool, recorded: dict) -> Diff:
    """What the migrations would do. Pure."""
    d = Diff()
    if len(obs.heads) > 1:
        d.problems.append("the migrations have several heads: " + "; ".join(map(str, obs.heads))
                          + ". Merge them (alembic merge heads) or name one as the step's target.")
        return d
    rec = (recorded.get("observed") or {}).get("revision")
    if not obs.reachable:
        d.notes.append(f"the database is not reachable now ({obs.error}); if an earlier step of this "
                       f"plan creates it, every revision up to the target runs")
    elif obs.unknown_current:
        d.problems.append(f"the database is at revision {obs.current}, which these migrations do not contain "
                          f"(was it migrated by a newer version of the application?); refusing to guess")
        return d
    elif rec is not None and rec != obs.current:
        d.warnings.append(f"the database is at revision {obs.current or '(none)'} but the last apply recorded "
                          f"{rec}: alembic was run (or stamped) by hand since")
    target_name = obs.target or "base"
    if obs.upgrade:
        d.changes.append(Change(Action.UPDATE, "revision", obs.current or "(none)", target_name,
                                f"{len(obs.upgrade)} revision(s) to apply"))
        d.notes += [f"will run {r}" for r in obs.upgrade]
        d.details["pending"] = [{"revision": r.revision, "message": r.message} for r in obs.upgrade]
    elif obs.downgrade:
        undo = "; ".join(map(str, obs.downgrade))
        if not allow_downgrade:
            d.problems.append(f"target {target} ({target_name}) is below the database's revision {obs.current}: "
                              f"a downgrade undoing {undo}. Refused unless the step says allow_downgrade: true")
        else:
            d.changes.append(Change(Action.UPDATE, "revision", obs.current, target_name,
                                    f"downgrade: {len(obs.downgrade)} revision(s) to undo"))
            d.warnings.append(f"DOWNGRADE: undoing {undo}; what those revisions created (tables, "
                              f"columns and their data) is dropped")
            d.destructive = f"a migration downgrade to {target_name}"
            d.details["undo"] = [{"revision": r.revision, "message": r.message} for r in obs.downgrade]
    if obs.sql:
        d.details["sql"] = obs.sql
    return d


class Migrate(Resource):
    """Alembic migrations of the application, run in-process under an advisory lock."""
    type = "migrate"
    Spec = MigrateSpec
    spec: MigrateSpec

    # configuration ---------------------------------------------------------------------------

    @property
    def ini(self) -> Path:
        return self.rc.plan.resolve(self.spec.alembic_ini)

    def _error(self, key: str, message: str, hint: str | None = None) -> OrchestrateError:
        return self.rc.plan.smap.error(self.step.path + (key,), message, hint=hint)

    def _config(self, **kw):
        from alembic.config import Config
        if not self.ini.is_file():
            raise self._error("alembic_ini", f"{self.ini} does not exist",
                              hint="point alembic_ini at the application's alembic.ini")
        cfg = Config(file_=str(self.ini), **kw)
        location = self.spec.script_location or cfg.get_main_option("script_location")
        if location and not Path(location).is_absolute():
            location = str(self.ini.parent / location)   # alembic runs from the ini's folder
        if location:
            cfg.set_main_option("script_location", location)
        return cfg

    def _script(self):
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError
        try:
            return ScriptDirectory.from_config(self._config())
        except CommandError as exc:
            raise self._error("alembic_ini", f"cannot load the migrations: {exc}") from None

    @property
    def url(self) -> str:
        return self.database_url(self.spec.url)

    def check(self) -> None:
        script = self._script()
        heads = script.get_heads()
        if len(heads) > 1:
            raise self._error("alembic_ini", "the migrations have several heads: " + ", ".join(heads),
                              hint="merge them (alembic merge heads) or name one as the step's target")
        self._resolve_target(script)
        _ = self.url

    def _resolve_target(self, script) -> str | None:
        from alembic.util import CommandError
        if self.spec.target == "base":
            return None
        try:
            found = script.get_revision(self.spec.target)
        except CommandError as exc:
            raise self._error("target", f"unknown target revision {self.spec.target!r}: {exc}") from None
        if found is None:
            raise self._error("target", f"unknown target revision {self.spec.target!r}")
        return found.revision

    # observe ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, autocommit: bool = True) -> Iterator[Any]:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool
        engine = create_engine(self.url, poolclass=NullPool, connect_args={"connect_timeout": 5})
        try:
            conn = engine.connect()
            if autocommit:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            with conn:
                yield conn
        finally:
            engine.dispose()

    def _current(self, conn) -> tuple[str, ...]:
        from alembic.runtime.migration import MigrationContext
        return MigrationContext.configure(conn).get_current_heads()

    def observe(self) -> Observed:
        from sqlalchemy.exc import SQLAlchemyError
        script = self._script()
        obs = Observed(heads=[Rev(h, script.get_revision(h).doc) for h in script.get_heads()])
        if len(obs.heads) > 1:
            return obs
        obs.target = self._resolve_target(script)
        try:
            with self._connect() as conn:
                current = self._current(conn)
            obs.reachable = True
        except SQLAlchemyError as exc:
            obs.error = _first_line(exc)
            if self.rc.mode == "apply":
                raise StepFailed(f"cannot reach the database to migrate: {obs.error}",
                                 hint="check the db-container step (or the url) and that the server is up") from None
            current = ()
        if len(current) > 1:
            raise StepFailed(f"the database has several current revisions ({', '.join(current)}); "
                             f"resolve the branches with alembic by hand first")
        obs.current = current[0] if current else None
        self._walk(script, obs)
        if self.rc.options.get("sql") and obs.upgrade:
            obs.sql = self._offline_sql(obs)
        return obs

    def _walk(self, script, obs: Observed) -> None:
        from alembic.script.revision import RevisionError
        from alembic.util import CommandError
        if obs.current is not None:
            try:
                script.get_revision(obs.current)
            except (CommandError, RevisionError):
                obs.unknown_current = True
                return
        if obs.current == obs.target:
            return
        try:
            path = list(script.iterate_revisions(obs.target or "base", obs.current or "base"))
            obs.upgrade = [Rev(s.revision, s.doc) for s in reversed(path)]
        except (CommandError, RevisionError):
            path = list(script.iterate_revisions(obs.current, obs.target or "base"))
            obs.downgrade = [Rev(s.revision, s.doc) for s in path]

    def _offline_sql(self, obs: Observed) -> str:
        from alembic import command
        buf = io.StringIO()
        cfg = self._config(output_buffer=buf)
        span = f"{obs.current}:{obs.target}" if obs.current else obs.target
        with self._alembic_env(cfg):
            command.upgrade(cfg, span, sql=True)
        return buf.getvalue()

    # diff and apply --------------------------------------------------------------------------

    def diff(self, obs: Observed) -> Diff:
        return diff_migrate(obs, target=self.spec.target, allow_downgrade=self.spec.allow_downgrade,
                            recorded=self.recorded)

    @contextlib.contextmanager
    def _alembic_env(self, cfg) -> Iterator[None]:
        """The URL in sqlalchemy.url and DATABASE_URL, and the ini's folder as working directory."""
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        saved_url, saved_cwd = os.environ.get("DATABASE_URL"), os.getcwd()
        os.environ["DATABASE_URL"] = self.url
        os.chdir(self.ini.parent)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            if saved_url is None:
                os.environ.pop("DATABASE_URL", None)
            else:
                os.environ["DATABASE_URL"] = saved_url

    def _lock(self, conn) -> None:
        from sqlalchemy import text
        deadline = time.monotonic() + self.spec.lock_timeout
        announced = False
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
            if time.monotonic() > deadline:
                raise StepFailed(f"another run has been migrating this database for more than "
                                 f"{self.spec.lock_timeout:g}s; nothing was changed",
                                 hint="wait for it to finish, then apply again")
            if not announced:
                self.rc.progress("another run is migrating this database; waiting for it")
                announced = True
            time.sleep(0.5)

    def apply(self, obs: Observed, diff: Diff) -> str:
        from alembic import command
        script = self._script()
        with self._connect() as lock_conn:
            self._lock(lock_conn)
            # under the lock, look again: another run may have migrated meanwhile
            now = Observed(heads=obs.heads, target=obs.target, reachable=True)
            current = self._current(lock_conn)
            now.current = current[0] if current else None
            self._walk(script, now)
            if not now.upgrade and not now.downgrade:
                return f"already at {obs.target or 'base'} (migrated by another run meanwhile)"
            started: list[str] = []
            handler = _RevisionLog(started)
            log = logging.getLogger("alembic.runtime.migration")
            log.addHandler(handler)
            if log.level == logging.NOTSET or log.level > logging.INFO:
                log.setLevel(logging.INFO)
            cfg = self._config()
            try:
                with self._alembic_env(cfg):
                    if now.upgrade:
                        command.upgrade(cfg, obs.target)
                    else:
                        command.downgrade(cfg, obs.target or "base")
            except Exception as exc:  # a migration is application code: any failure is reported
                current = self._current(lock_conn)
                at = current[0] if current else "(none)"
                failed = started[-1] if started else self._next(now, at)
                raise StepFailed(f"migration {failed} failed: {_first_line(exc)}; the database stays at "
                                 f"revision {at} (the failed revision was rolled back)",
                                 hint="fix the migration and apply again: it is still pending") from None
            finally:
                log.removeHandler(handler)
        done = now.upgrade or now.downgrade
        verb = "upgraded" if now.upgrade else "downgraded"
        return f"{verb} {now.current or '(none)'} -> {obs.target or 'base'} ({len(done)} revision(s))"

    @staticmethod
    def _next(now: Observed, at: str) -> str:
        revs = now.upgrade or now.downgrade
        ids = [r.revision for r in revs]
        nxt = ids.index(at) + 1 if at in ids else 0
        return str(revs[min(nxt, len(revs) - 1)])

    # record ----------------------------------------------------------------------------------

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        if obs is None or not obs.reachable:
            return {"revision": self.spec.target, "target": self.spec.target}
        return {"revision": obs.current, "target": obs.target}

    def record(self, obs: Observed) -> dict[str, Any]:
        return {"revision": obs.current if obs.reachable else None}


class _RevisionLog(logging.Handler):
    """Remembers each ``Running upgrade a -> b, message`` line, so a failure names its revision."""
    PATTERN = re.compile(r"Running (?:upgrade|downgrade) \S* ?-> (\S*), (.*)")

    def __init__(self, started: list[str]):
        super().__init__(logging.INFO)
        self.started = started

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.started.append(f"{match.group(1)} {match.group(2)}")
