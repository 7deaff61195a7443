"""The migrate step: the application's Alembic migrations.

Observe reads the migration scripts (heads, the target, the revisions between the database's
revision and the target) and the database's current revision; the diff says which revisions
would run, in order, or why none may (several heads, a downgrade not allowed, a database at a
revision the scripts do not know). Apply takes a PostgreSQL advisory lock, so two runs never
migrate at once, then runs ``alembic upgrade`` exactly as it runs from the folder of
``alembic.ini``: that folder is the working directory, ``prepend_sys_path`` is resolved there, and
the URL is in both ``sqlalchemy.url`` and ``DATABASE_URL`` (env.py files of either style work
unchanged). Alembic runs in-process through its command API, or, with ``python:``, in the
application's own interpreter (the scripts are still read here), or, with ``job:``, as
``alembic -c <ini> upgrade <target>`` in a throwaway container of the application's image on the
plan's network (:mod:`orchestrator.jobs`), with the database's internal URL in ``DATABASE_URL``: the
host then needs none of the application's dependencies. In both of the latter modes the revision
files are read here statically (never run), and the database's revision is read here over the
host URL. What Alembic, SQLAlchemy and env.py log, warn or print is captured: shown with ``-v``,
its last lines added to an error.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator

from pydantic import AfterValidator, Field, field_validator, model_validator

from .. import dbconn, redact
from ..changes import Action, Change, Diff
from ..errors import OrchestrateError, StepFailed
from ..fields import Duration, DockerName, EnvName, EnvValue, Image, NonEmptyText, RelPath, ScriptLocation, Text
from ..jobs import JobTimeout, run_job, shown
from ..jobs import TAIL as JOB_TAIL
from ..lockfile import digest
from ..plan import Strict
from .base import Resource, libpq_url

LOCK_KEY = int.from_bytes(hashlib.sha256(b"orchestrate.migrate").digest()[:8], "big", signed=True)
TAIL = 10   # captured lines added to an error

# Alembic's command API in the application's interpreter: the URL comes from the environment
# (never from argv, where other users could read the password). The working folder that ``-c``
# puts first on sys.path goes, as for the ``alembic`` command (its alembic/ folder is no package).
PROBE = "import sys; del sys.path[0]; import alembic.command"
BOOTSTRAP = """\
import os, sys
del sys.path[0]
from alembic import command
from alembic.config import Config
ini, location, verb, target, sql = sys.argv[1:]
cfg = Config(file_=ini)
if location:
    cfg.set_main_option("script_location", location)
cfg.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))
getattr(command, verb)(cfg, target, sql=bool(sql))
"""


def _interpreter(value: str) -> str:
    """A plan names a Python interpreter here, never any other command."""
    if not re.fullmatch(r"(?:python|pypy)[0-9.]*", os.path.basename(value)):
        raise ValueError(f"{value!r} is not a Python interpreter (python, python3.12, .venv/bin/python)")
    return value


Interpreter = Annotated[NonEmptyText, AfterValidator(_interpreter)]


class MigrateJob(Strict):
    """Alembic as a job in the application's image."""
    image: Image = Field(description="the application's image (e.g. \"{{ steps.app_image.tag }}\"): "
                                     "Alembic runs in a throwaway container of it")
    network: DockerName | None = Field(None, description="network the job joins (default: the network of "
                                                         "the nearest earlier db-container step)")
    alembic_ini: NonEmptyText = Field("alembic.ini", description="alembic.ini inside the image (relative to "
                                                                 "its WORKDIR)")
    url: Text | None = Field(None, description="database URL of the job, given as DATABASE_URL (default: the "
                                               "internal_url of the nearest earlier db-container step)")
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, description="more environment variables of "
                                                                            "the job")
    timeout: Duration = Field(600.0, description="how long the job may run before it is stopped")

    @field_validator("env")
    @classmethod
    def _url_is_set_by_url(cls, value: dict) -> dict:
        if "DATABASE_URL" in value:
            raise ValueError("DATABASE_URL is the job's url (set url: instead)")
        return value


class MigrateSpec(Strict):
    alembic_ini: RelPath = Field("alembic.ini", description="the application's alembic.ini (relative to the plan root)")
    script_location: ScriptLocation | None = Field(None, description="overrides script_location of alembic.ini")
    target: NonEmptyText = Field("head", description="revision to reach: head, a revision id, or base")
    url: Text | None = Field(None, description="database URL (default: the url of the nearest earlier "
                                              "db-container or database step)")
    allow_downgrade: bool = Field(False, description="allow a target below the database's revision")
    lock_timeout: Duration = Field(300.0, description="how long to wait for another run's migration")
    python: Interpreter | None = Field(None, description="the application's Python interpreter (a path "
                               "relative to the plan root, or a command on PATH): Alembic runs there, as a "
                               "subprocess, instead of in orchestrate's own environment")
    job: MigrateJob | None = Field(None, description="run Alembic in a throwaway container of the "
                                   "application's image, on the plan's network (the revisions are still "
                                   "read from alembic_ini here, the files the image is built from)")

    @model_validator(mode="after")
    def _one_runner(self):
        if self.job is not None and self.python is not None:
            raise ValueError("python: and job: exclude each other (Alembic runs in the application's "
                             "interpreter, or in its image)")
        if self.job is not None and self.script_location is not None:
            raise ValueError("script_location: does not reach a job (the alembic.ini inside the image "
                             "decides where its scripts are)")
        return self


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
    fresh: bool = False                                  # the database has no alembic_version table
    unknown_current: bool = False                        # the database's revision is not in the scripts
    upgrade: list[Rev] = field(default_factory=list)     # revisions to run, in order
    downgrade: list[Rev] = field(default_factory=list)   # revisions to undo, in order
    sql: str | None = None                               # offline SQL of the upgrade (plan --sql)
    sql_error: str | None = None                         # why that SQL cannot be shown
    after_apply: str | None = None                       # plan: why the database cannot be seen yet
    notes: list[str] = field(default_factory=list)       # about the job (its image, plan --sql)
    stamp: str | None = None                             # the scripts' stamp (the converged path)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


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
    if obs.after_apply:
        d.after_apply = True
        d.notes.append(f"known after apply: {obs.after_apply} (the database does not answer now: {obs.error}); "
                       + (f"the last apply left it at {obs.current}" if obs.current else
                          "a new database gets every revision up to the target"))
    elif not obs.reachable:
        d.notes.append(f"the database is not reachable now ({obs.error}); if an earlier step of this "
                       f"plan creates it, every revision up to the target runs")
    elif obs.unknown_current:
        d.problems.append(f"the database is at revision {obs.current}, which these migrations do not contain "
                          f"(was it migrated by a newer version of the application?); refusing to guess")
        return d
    elif rec is not None and obs.current is None and obs.fresh:
        d.notes.append(f"the database is new (it has no alembic_version table; the last apply left it at "
                       f"{rec}): every revision up to the target runs")
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
    d.notes += obs.notes
    if obs.sql:
        d.details["sql"] = obs.sql
    if obs.sql_error:
        d.problems.append(obs.sql_error)
    return d


# running Alembic: failures, and what it printed ------------------------------------------------

@dataclass
class Failure:
    """An exception raised by Alembic, env.py or a migration, in-process or in a subprocess."""
    frames: list[tuple[str, str]]   # (file, function), outermost first
    kind: str                       # the exception's class name
    text: str                       # the first line of its message
    module: str | None = None       # the module an ImportError could not find


class AlembicFailed(Exception):
    def __init__(self, failure: Failure, lines: list[str], job: bool = False):
        super().__init__(failure.text)
        self.failure, self.lines, self.job = failure, lines, job


def failure_of(exc: BaseException) -> Failure:
    frames = [(f.filename, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    if isinstance(exc, SyntaxError) and exc.filename:
        frames.append((exc.filename, "<module>"))        # the file that does not parse
    module = exc.name if isinstance(exc, ImportError) else None
    return Failure(frames, type(exc).__name__, _first_line(exc), module)


_FRAME = re.compile(r'^  File "(.+)", line \d+(?:, in (.+))?$')


def failure_in_output(lines: list[str]) -> Failure | None:
    """The last traceback Python printed in ``lines``."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    frames, kind, text = [], "", ""
    for line in lines[starts[-1] + 1:]:
        match = _FRAME.match(line)
        if match:
            frames.append((match.group(1), match.group(2) or "<module>"))
        elif line and not line.startswith(" "):
            kind, _, text = line.partition(": ")
            break
    text = re.sub(r"^\([\w.]+\) ", "", text.strip())       # SQLAlchemy's "(psycopg.errors.X) " prefix
    module = re.search(r"No module named '([^']+)'", text)
    return Failure(frames, kind.rsplit(".", 1)[-1], text or kind, module.group(1) if module else None)


def in_host_files(failure: Failure, scripts: dict[str, Rev]) -> Failure:
    """A failure in a job, its frames' files (paths inside the image) replaced by the host's
    revision files of the same name (the files the image is built from)."""
    by_name = {os.path.basename(path): path for path in scripts}
    frames = [(by_name.get(os.path.basename(file), file), function) for file, function in failure.frames]
    return Failure(frames, failure.kind, failure.text, failure.module)


def job_tail(lines: list[str], scripts: dict[str, Rev], most: int = 20) -> list[str]:
    """A job's last lines for an error: when it ended in a Python traceback, the lines logged
    before it, the traceback's frames in the revision files and its exception (the frames of
    SQLAlchemy and Alembic in between are left to -v); otherwise its last ``most`` lines."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return lines[-most:]
    body = lines[starts[-1] + 1:]
    end = next((i for i, line in enumerate(body) if line and not line.startswith(" ")), len(body))
    names = {os.path.basename(path) for path in scripts}
    kept = []
    for i, line in enumerate(body[:end]):
        match = _FRAME.match(line)
        if match and os.path.basename(match.group(1)) in names:
            kept.append(line)
            kept += [code for code in body[i + 1:i + 2] if not _FRAME.match(code)]
    after = body[end:][:most // 2]
    before = lines[:starts[0]][-max(most - len(after) - len(kept) - 1, 3):]
    return before + ["Traceback (most recent call last): ... (-v shows it whole)"] + kept + after


def blame(failure: Failure, scripts: dict[str, Rev]) -> tuple[str, str | Rev | None]:
    """Where a failure happened: ``("revision", Rev)`` inside a migration, ``("load", file)`` while
    loading a migration script, ``("running", None)`` while migrating but outside any script's code
    (a commit), else ``("load", None)``: env.py (or what it imports) failed before any revision ran."""
    for file, function in reversed(failure.frames):
        rev = scripts.get(os.path.realpath(file))
        if rev is not None:
            return ("load", file) if function == "<module>" else ("revision", rev)
    if any(function == "run_migrations" and file.endswith(os.path.join("runtime", "migration.py"))
           for file, function in failure.frames):
        return "running", None
    return "load", None


_RUNNING = re.compile(r"Running (?:upgrade|downgrade) \S* ?-> (\S*), (.*)")


def last_started(lines: list[str]) -> str | None:
    """The last ``Running upgrade a -> b, message`` Alembic logged, as ``b message``."""
    found = [m for m in map(_RUNNING.search, lines) if m]
    return f"{found[-1].group(1)} {found[-1].group(2)}" if found else None


class _Lines(io.TextIOBase):
    """A text stream that keeps what is written to it as lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._part = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._part += text
        *done, self._part = self._part.split("\n")
        self.lines += [line.rstrip() for line in done if line.strip()]
        return len(text)

    def close_lines(self) -> list[str]:
        if self._part.strip():
            self.lines.append(self._part.rstrip())
        self._part = ""
        return self.lines


@contextlib.contextmanager
def captured(sink: _Lines) -> Iterator[None]:
    """Log records, warnings and prints go to ``sink`` instead of the terminal, whatever env.py's
    ``fileConfig`` sets up; the logging configuration is put back afterwards."""
    root = logging.getLogger()
    loggers = [root, *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(levelname)-5.5s [%(name)s] %(message)s"))
    root.addHandler(handler)
    if logging.getLogger("alembic").level == logging.NOTSET:
        logging.getLogger("alembic").setLevel(logging.INFO)    # what `alembic upgrade` tells, for -v

    def show(message, category, filename, lineno, file=None, line=None):
        sink.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.showwarning = show
        try:
            yield
        finally:
            for lg in [root, *logging.Logger.manager.loggerDict.values()]:
                if isinstance(lg, logging.Logger):
                    level, handlers, propagate, disabled = saved.get(lg, (logging.NOTSET, [], True, False))
                    lg.setLevel(level)
                    lg.handlers[:] = handlers
                    lg.propagate, lg.disabled = propagate, disabled


@contextlib.contextmanager
def app_imports(folder: Path, paths: list[Path]) -> Iterator[None]:
    """Python as in ``folder`` with ``paths`` first on sys.path (as ``alembic`` run there has it).
    Afterwards the working directory and sys.path are put back, and the modules imported from
    those folders forgotten, so the next run (of this or another application) imports afresh."""
    saved_cwd, saved_path, before = os.getcwd(), list(sys.path), set(sys.modules)
    roots = [str(p) + os.sep for p in {folder, *paths}]
    os.chdir(folder)
    sys.path[:0] = [str(p) for p in paths]
    importlib.invalidate_caches()    # files written since the last import (a new revision) are seen
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), "")
            if where and any(str(where).startswith(r) for r in roots):
                del sys.modules[name]


SCRIPT_NAMES = ("revision", "down_revision", "branch_labels", "depends_on")


def read_script(dir_, filename) -> types.ModuleType:
    """A revision file as Alembic needs it (its docstring and identifiers), read without running it."""
    path = Path(dir_, filename)
    tree = ast.parse(path.read_bytes(), str(path))
    module = types.ModuleType(re.sub(r"\W", "_", path.name))
    module.__doc__ = ast.get_docstring(tree)
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
        for name in (t.id for t in targets if isinstance(t, ast.Name) and t.id in SCRIPT_NAMES):
            try:
                setattr(module, name, ast.literal_eval(node.value))
            except ValueError:
                raise SyntaxError(f"{name} is not a literal", (str(path), node.lineno, 0, "")) from None
    return module


@contextlib.contextmanager
def static_scripts() -> Iterator[None]:
    """Alembic reads the revision files without running them (with ``python:``, the application's
    code runs in its own interpreter only, which may have packages orchestrate's lacks)."""
    from alembic import util
    saved, util.load_python_file = util.load_python_file, read_script
    try:
        yield
    finally:
        util.load_python_file = saved


class Migrate(Resource):
    """Alembic migrations of the application, run under an advisory lock."""
    type = "migrate"
    Spec = MigrateSpec
    spec: MigrateSpec

    def __init__(self, step, spec: MigrateSpec, rc):
        # orchestrate rollback --downgrade: back to the revision before the last upgrade
        target = (rc.options.get("downgrade_to") or {}).get(step.name, ...)
        if target is not ...:
            spec = spec.model_copy(update={"target": target or "base", "allow_downgrade": True})
            # the job runs in the newer build (now <tag>-previous): only it has the revisions to undo
            newer = (rc.options.get("job_images") or {}).get(spec.job.image) if spec.job else None
            if newer:
                spec = spec.model_copy(update={"job": spec.job.model_copy(update={"image": newer})})
        super().__init__(step, spec, rc)

    # configuration ---------------------------------------------------------------------------

    @property
    def ini(self) -> Path:
        return Path(os.path.abspath(self.rc.plan.resolve(self.spec.alembic_ini)))

    def _error(self, key: str, message: str, hint: str | None = None) -> OrchestrateError:
        return self.rc.plan.smap.error(self.step.path + (key,), message, hint=hint)

    def _shown(self, path: str | Path) -> str:
        """A path as the user knows it: relative to the plan root when inside it."""
        rel = os.path.relpath(path, os.path.abspath(self.rc.plan.base_dir))
        return str(path) if rel.startswith("..") else rel

    def _location(self, cfg) -> str | None:
        location = self.spec.script_location or cfg.get_main_option("script_location")
        if location and not Path(location).is_absolute():
            location = str(self.ini.parent / location)   # alembic runs from the ini's folder
        return location

    def _config(self, **kw):
        from alembic.config import Config
        if not self.ini.is_file():
            raise self._error("alembic_ini", f"{self.ini} does not exist",
                              hint="point alembic_ini at the application's alembic.ini")
        cfg = Config(file_=str(self.ini), **kw)
        location = self._location(cfg)
        if location:
            cfg.set_main_option("script_location", location)
        return cfg

    @contextlib.contextmanager
    def _in_app(self, url: str | None = None, **kw) -> Iterator[tuple[Any, list[str]]]:
        """Alembic's configuration in force as when ``alembic`` runs from the ini's folder (see
        :func:`app_imports`), the URL in sqlalchemy.url and DATABASE_URL, everything printed or
        logged captured into the yielded list of lines (shown with -v afterwards)."""
        saved_url = os.environ.get("DATABASE_URL")
        with self._captured() as lines:
            cfg = self._config(**kw)
            paths = [Path(os.path.normpath(self.ini.parent / p)) for p in cfg.get_prepend_sys_paths_list() or []]
            cfg.set_main_option("prepend_sys_path", "")     # put on sys.path by app_imports, resolved
            with app_imports(self.ini.parent, paths):
                if url:
                    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
                    os.environ["DATABASE_URL"] = url
                try:
                    yield cfg, lines
                finally:
                    if saved_url is None:
                        os.environ.pop("DATABASE_URL", None)
                    else:
                        os.environ["DATABASE_URL"] = saved_url

    @contextlib.contextmanager
    def _captured(self) -> Iterator[list[str]]:
        """What Alembic and SQLAlchemy log, warn or print meanwhile, as lines; shown with -v."""
        sink = _Lines()
        try:
            with captured(sink):
                yield sink.lines
        finally:
            for line in sink.close_lines():
                self.rc.log(f"alembic: {line}")

    def _script(self):
        """The migration scripts, every revision file loaded (as Alembic loads them)."""
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError
        if getattr(self, "_loaded", None) is None:
            static = self.spec.python or self.spec.job
            with self._in_app() as (cfg, lines), (static_scripts() if static else contextlib.nullcontext()):
                try:
                    script = ScriptDirectory.from_config(cfg)
                    _ = script.revision_map.heads       # loads every revision file, here
                except CommandError as exc:
                    raise self._error("alembic_ini", f"cannot load the migrations: {exc}") from None
                except (Exception, SystemExit) as exc:  # a revision file is application code
                    lines += "".join(traceback.format_exception(exc)).splitlines()
                    failure = failure_of(exc)
                    file = next((f for f, fn in failure.frames if fn == "<module>" and not f.startswith("<")),
                                self._location(cfg))
                    raise self._error("alembic_ini", "cannot read the migrations: " + self._load_message(failure, file)
                                      + self._tail(lines), hint=self._load_hint(failure, reading=True)) from None
            self._loaded = script
        return self._loaded

    def _scripts(self, script) -> dict[str, Rev]:
        return {os.path.realpath(s.path): Rev(s.revision, s.doc) for s in script.walk_revisions()}

    @property
    def url(self) -> str:
        return self.database_url(self.spec.url)

    @property
    def job_url(self) -> str:
        """The URL the job uses (``job.url``, or the db-container's ``internal_url``)."""
        if self.spec.job.url:
            return self.spec.job.url
        db = self.rc.earlier_database(self.step)
        if db is not None and db.type == "database":
            # an external database: the job reaches it at its own address, but the CA file is the
            # host's, which the job's container does not have
            if db.spec.sslrootcert not in (None, "system") or db.spec.sslcert is not None:
                raise self.rc.plan.smap.error(
                    self.step.path + ("job", "url"), f"no job url given, and the url of database step "
                    f"{db.step.name} names certificate files of this machine, which the job's container does not have",
                    hint="give job.url with sslrootcert= a path inside the image (bake the CA into it), or "
                         "sslrootcert: system when the image trusts the server's CA")
            return db.outputs()["url"]
        found = self.rc.earlier_outputs(self.step, "db-container")
        if not found or not found[1].get("internal_url"):
            raise self.rc.plan.smap.error(self.step.path + ("job", "url"), "no job url given and no db-container "
                                          "step before this one", hint="add url: ... to the job (the database "
                                          "as the job's container reaches it), or a db-container step before it")
        return found[1]["internal_url"]

    @property
    def job_network(self) -> str | None:
        """The network the job joins (``job.network``, or the db-container's network)."""
        if self.spec.job.network:
            return self.spec.job.network
        found = self.rc.earlier_outputs(self.step, "db-container")
        return (found[1].get("network") or None) if found else None

    def _python(self) -> str:
        """The application's interpreter (``python:``), as a path."""
        given = self.spec.python
        found = shutil.which(given)
        if os.sep in given:      # a virtual environment's python is a link out of the root: the path itself must stay in
            base = os.path.abspath(self.rc.plan.base_dir)
            found = os.path.normpath(os.path.join(base, os.path.expanduser(given)))
            if os.path.commonpath([base, found]) != base:
                raise self._error("python", f"{given} leads outside the plan's root {base}",
                                  hint="name the interpreter of an environment inside the root (e.g. "
                                       ".venv/bin/python), or a command on PATH")
        if not found or not os.access(found, os.X_OK) or os.path.isdir(found):
            raise self._error("python", f"{given}: no such interpreter"
                              + (f" ({found} does not exist or is not executable)" if found else " on PATH"),
                              hint="give the application's interpreter, e.g. python: .venv/bin/python "
                                   "(relative to the plan root)")
        return found

    def check(self) -> None:
        if self._converged():      # loaded and run to the target by the last apply, unchanged since
            _ = self.url
            if self.spec.job:
                _ = self.job_url
            return
        script = self._script()
        heads = script.get_heads()
        if len(heads) > 1:
            raise self._error("alembic_ini", "the migrations have several heads: " + ", ".join(heads),
                              hint="merge them (alembic merge heads) or name one as the step's target")
        self._resolve_target(script)
        _ = self.url
        if self.spec.job:
            _ = self.job_url
        if self.spec.python:
            python = self._python()
            done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True,
                                  cwd=self.ini.parent)
            if done.returncode:
                last = (done.stderr.strip().splitlines() or ["failed"])[-1]
                raise self._error("python", f"{python} cannot run Alembic: {last}",
                                  hint=f"install it into the application's environment: {python} -m pip install alembic")

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
    def _connect(self, url: str) -> Iterator[Any]:
        """An autocommit connection; what Alembic and SQLAlchemy log or warn meanwhile is captured."""
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool
        engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
        with self._captured():
            try:
                with engine.connect() as conn:
                    yield conn.execution_options(isolation_level="AUTOCOMMIT")
            finally:
                engine.dispose()

    def _current(self, conn) -> tuple[str, ...]:
        from alembic.runtime.migration import MigrationContext
        return MigrationContext.configure(conn).get_current_heads()

    def _now(self, script, conn, obs: Observed) -> Observed:
        """``obs`` with the database's current revision and the revisions between it and the target."""
        from sqlalchemy import inspect
        current = self._current(conn)
        if len(current) > 1:
            raise StepFailed(f"the database has several current revisions ({', '.join(current)}); "
                             f"resolve the branches with alembic by hand first")
        obs.reachable = True
        obs.current = current[0] if current else None
        obs.fresh = obs.current is None and not inspect(conn).has_table("alembic_version")
        self._walk(script, obs)
        return obs

    # the converged path: no Alembic, no SQLAlchemy ---------------------------------------------

    def _stamp(self) -> str | None:
        """Size and modification time of alembic.ini and of every file in the scripts folder,
        with the step's settings: equal to the recorded stamp, the scripts are the ones the last
        apply loaded and reached the target with. None when the folder cannot be found cheaply."""
        import configparser
        try:
            ini = self.ini
            location = self.spec.script_location
            if location is None:
                parser = configparser.ConfigParser(defaults={"here": str(ini.parent)})
                parser.read(ini)
                location = parser.get("alembic", "script_location", fallback=None)
            if not location or ":" in location.replace(str(ini.parent), ""):   # a package resource
                return None
            folder = Path(location) if Path(location).is_absolute() else ini.parent / location
            entries = [("alembic.ini", *_stat(ini))]
            for root, dirs, files in os.walk(folder):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                entries += [(os.path.relpath(os.path.join(root, f), folder), *_stat(Path(root, f)))
                            for f in sorted(files) if not f.endswith((".pyc", ".pyo"))]
        except (OSError, configparser.Error, ValueError):
            return None
        if len(entries) == 1:
            return None
        spec = self.spec
        return digest([str(folder), entries, spec.target, spec.script_location, spec.python,
                       bool(spec.job), spec.allow_downgrade])[7:23]

    def _converged(self) -> bool:
        """The last apply reached the target with scripts that have not changed since."""
        rec = self.recorded.get("observed") or {}
        if not rec.get("scripts") or rec.get("revision") != rec.get("target_revision"):
            return False
        if getattr(self, "_stamp_now", None) is None:
            self._stamp_now = self._stamp() or ""
        return self._stamp_now == rec["scripts"]

    def _fast_observe(self) -> Observed | None:
        """One SQL query instead of Alembic: the database still at the recorded revision."""
        import psycopg
        rec = self.recorded.get("observed") or {}
        try:
            with dbconn.connect(libpq_url(self.url), what="reading the database's revision", timeout=5) as conn:
                rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except (psycopg.Error, OrchestrateError):
            return None
        if [r[0] for r in rows] != [rec["revision"]]:
            return None
        return Observed(heads=[Rev(rec["revision"], "")], target=rec["target_revision"], reachable=True,
                        current=rec["revision"], stamp=self._stamp_now)

    def observe(self) -> Observed:
        if self._converged() and not self.rc.options.get("sql") and (fast := self._fast_observe()) is not None:
            return fast
        from sqlalchemy.exc import SQLAlchemyError
        script = self._script()
        obs = Observed(heads=[Rev(h, script.get_revision(h).doc) for h in script.get_heads()])
        if len(obs.heads) > 1:
            return obs
        obs.target = self._resolve_target(script)
        try:
            with self._connect(self.url) as conn:
                self._now(script, conn, obs)
        except SQLAlchemyError as exc:
            obs.error = _first_line(exc)
            if self.rc.mode == "apply":
                raise StepFailed(f"cannot reach the database to migrate: {obs.error}",
                                 hint="check the db-container or database step (or the url) and that the server is up") from None
            pending = self.rc.pending_before(self.step, "db-container", "database")
            if pending:
                # what runs depends on the database the earlier step is about to start: the one
                # the last apply left (recorded), or a new one
                obs.after_apply = f"step {', '.join(pending)} changes the database server first"
                obs.current = (self.recorded.get("observed") or {}).get("revision")
            self._walk(script, obs)
        if self.spec.job:
            self._observe_job(obs)
        elif self.rc.options.get("sql") and obs.upgrade:
            self._offline_sql(obs)
        return obs

    def _observe_job(self, obs: Observed) -> None:
        """What plan says about the job's image when there is something to run (read-only)."""
        if not (obs.upgrade or obs.downgrade):
            return
        image = self.spec.job.image
        pending = self.rc.pending_before(self.step, "image")
        if pending:
            obs.notes.append(f"the image {image} is known after apply (step {', '.join(pending)} builds it first); "
                             f"the migrations run in it as a job")
        elif self.rc.engine.image(image) is None:
            obs.notes.append(f"the image {image} is not on this Docker engine: apply pulls it to run the job")
        if self.rc.options.get("sql"):
            obs.notes.append("plan --sql cannot show the SQL of a job (Alembic runs in the image, and plan "
                             "starts no container); the revisions above are what apply runs")

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

    def _offline_sql(self, obs: Observed) -> None:
        """plan --sql: the SQL of the pending revisions (Alembic's offline mode), or why it cannot be shown."""
        span = f"{obs.current}:{obs.target}" if obs.current else obs.target
        try:
            obs.sql = self._run(self.url, "upgrade", span, sql=True)
        except AlembicFailed as failed:
            where, what = blame(failed.failure, self._scripts(self._script()))
            if where == "load":
                obs.sql_error = (f"plan --sql cannot show the SQL: {self._load_message(failed.failure, what)}; "
                                 f"{self._load_hint(failed.failure)}")
            else:
                rev = what or last_started(failed.lines) or obs.upgrade[0]
                obs.sql_error = (f"plan --sql cannot show the SQL of revision {rev}: {failed.failure.text}. "
                                 f"Alembic's offline mode runs no query, so a migration that reads the database "
                                 f"(op.get_bind(), a SELECT) cannot be shown as SQL; apply runs it as usual")

    # diff and apply --------------------------------------------------------------------------

    def diff(self, obs: Observed) -> Diff:
        return diff_migrate(obs, target=self.spec.target, allow_downgrade=self.spec.allow_downgrade,
                            recorded=self.recorded)

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

    def _run(self, url: str, verb: str, target: str, *, sql: bool = False) -> str:
        """``alembic <verb> <target>`` (``--sql``: the SQL, returned), in-process or in ``python:``;
        raises :class:`AlembicFailed` with what went wrong and the lines captured."""
        from sqlalchemy.engine import make_url
        redact.register(make_url(url).password or "")     # a URL given here (a preview's) is masked too
        if self.spec.job and not sql:
            return self._run_job(verb, target)
        if self.spec.python:
            return self._run_python(url, verb, target, sql=sql)
        from alembic import command
        buf = io.StringIO()
        with self._in_app(url, **({"output_buffer": buf} if sql else {})) as (cfg, lines):
            try:
                getattr(command, verb)(cfg, target, sql=sql)
            except (Exception, SystemExit) as exc:  # env.py and the migrations are application code
                lines += "".join(traceback.format_exception(exc)).splitlines()   # for -v, as alembic prints it
                raise AlembicFailed(failure_of(exc), lines) from None
        return buf.getvalue()

    def _run_python(self, url: str, verb: str, target: str, *, sql: bool) -> str:
        python = self._python()
        location = self._location(self._config()) or ""
        argv = [python, "-c", BOOTSTRAP, str(self.ini), location, verb, target, "sql" if sql else ""]
        try:
            done = subprocess.run(argv, cwd=self.ini.parent, env={**os.environ, "DATABASE_URL": url},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE if sql else subprocess.STDOUT,
                                  text=True, errors="replace")
        except OSError as exc:
            raise self._error("python", f"cannot run {python}: {exc.strerror}") from None
        lines = [line.rstrip() for line in ((done.stderr or "") if sql else done.stdout).splitlines() if line.strip()]
        for line in lines:
            self.rc.log(f"alembic: {line}")
        if done.returncode:
            failure = failure_in_output(lines) or Failure([], "", (lines or [f"exit code {done.returncode}"])[-1])
            raise AlembicFailed(failure, lines)
        return done.stdout if sql else ""

    def _run_job(self, verb: str, target: str) -> str:
        """``alembic -c <ini> <verb> <target>`` as a job in the application's image, the internal
        URL in DATABASE_URL (which env.py reads); raises AlembicFailed on a non-zero exit."""
        from sqlalchemy.engine import make_url
        job = self.spec.job
        url = self.job_url
        try:
            redact.register(make_url(url).password or "")
        except Exception:  # not a URL SQLAlchemy reads: env.py will say so in the job
            pass
        eng = self.rc.engine
        if eng.image(job.image) is None:
            eng.pull(job.image)
        result = run_job(eng, plan=self.rc.plan.name, purpose="migrate", image=job.image,
                         command=["alembic", "-c", job.alembic_ini, verb, target],
                         env={**job.env, "DATABASE_URL": url}, network=self.job_network, labels=self.labels,
                         timeout=job.timeout, progress=self.rc.progress, log=self.rc.log)
        if result.code:
            failure = failure_in_output(result.lines) or Failure(
                [], "", (result.lines or [f"exit code {result.code}"])[-1])
            raise AlembicFailed(failure, result.lines, job=True)
        return ""

    def _migrate(self, url: str, now: Observed, conn) -> None:
        """Run the revisions ``now`` lists; a failure names what failed and where the database stays."""
        verb = "upgrade" if now.upgrade else "downgrade"
        try:
            self._run(url, verb, now.target or "base")
        except JobTimeout as exc:
            current = self._current(conn)
            raise StepFailed(f"{exc.message}\nThe database stays at revision {current[0] if current else '(none)'} "
                             f"(the revision that was running was rolled back)", hint=exc.hint) from None
        except AlembicFailed as failed:
            current = self._current(conn)
            at = current[0] if current else "(none)"
            scripts = self._scripts(self._script())
            failure = in_host_files(failed.failure, scripts) if failed.job else failed.failure
            where, what = blame(failure, scripts)
            tail = (f"; the job's last lines:{shown(job_tail(failed.lines, scripts, JOB_TAIL))}" if failed.job
                    else self._tail(failed.lines))
            if where == "load":
                raise StepFailed(self._load_message(failure, what) + f"; no revision ran, the database "
                                 f"stays at revision {at}" + tail,
                                 hint=self._load_hint(failure)) from None
            rev = what or last_started(failed.lines) or self._next(now, at)
            raise StepFailed(f"migration {rev} failed: {failure.text}; the database stays at "
                             f"revision {at} (the failed revision was rolled back)" + tail,
                             hint="fix the migration and apply again: it is still pending") from None

    def _load_message(self, failure: Failure, file: str | None) -> str:
        """``file`` (env.py when None; a folder: the scripts in it) could not be loaded, and why."""
        if file is None:
            what = self._shown(Path(self._location(self._config()) or self.ini.parent) / "env.py") + " could not be loaded"
        elif Path(file).is_dir():
            what = f"the migration scripts in {self._shown(file)} could not be read"
        else:
            what = f"the migration script {self._shown(file)} could not be loaded"
        kind = f"{failure.kind}: " if failure.kind and failure.module is None else ""
        return f"{what}: {kind}{failure.text}"

    def _load_hint(self, failure: Failure, reading: bool = False) -> str:
        if self.spec.job and not reading:
            if failure.module is None:
                return (f"it runs as `alembic -c {self.spec.job.alembic_ini}` in the image {self.spec.job.image}; "
                        f"-v shows the job's whole output")
            return (f"install the package that provides {failure.module.split('.')[0]} into the image "
                    f"{self.spec.job.image} (its requirements), rebuild it, and apply again")
        if failure.module is None:
            return (f"it runs as `alembic upgrade` does from {self.ini.parent}; -v shows the whole traceback")
        top = failure.module.split(".")[0]
        own = self.ini.parent / top
        if failure.module == top and (own.is_dir() or own.with_suffix(".py").is_file()):
            # the application's own package, beside alembic.ini, where `alembic init` puts it on the
            # path (prepend_sys_path = .); an ini without that line fails with `alembic` too
            return (f"{top} is the application's own package ({self._shown(own)}), which alembic.ini does not put "
                    f"on Python's path: add `prepend_sys_path = .` to its [alembic] section (as `alembic init` "
                    f"writes it), or install the application into the environment Alembic runs in")
        if self.spec.python and not reading:
            return (f"install the package that provides {top} into the application's environment "
                    f"({self.spec.python} -m pip install ...)")
        where = f"orchestrate's environment ({sys.executable} -m pip install ...)"
        if reading:
            return (f"orchestrate reads the migration scripts itself, so {top} must be importable in "
                    f"{where}; or set python: to the application's interpreter (the scripts are then read, "
                    f"not run, here)")
        return (f"install the package that provides {top} into {where}, or set python: to the "
                f"application's interpreter (e.g. python: .venv/bin/python) so Alembic runs there")

    @staticmethod
    def _tail(lines: list[str]) -> str:
        """The last lines logged before the traceback (which the message sums up; -v shows it whole)."""
        end = next((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")),
                   len(lines))
        return "".join(f"\n  | {line}" for line in lines[:end][-TAIL:])

    def apply(self, obs: Observed, diff: Diff) -> str:
        script = self._script()
        with self._connect(self.url) as lock_conn:
            self._lock(lock_conn)
            # under the lock, look again: another run may have migrated meanwhile
            now = self._now(script, lock_conn, Observed(heads=obs.heads, target=obs.target))
            if not now.upgrade and not now.downgrade:
                return f"already at {obs.target or 'base'} (migrated by another run meanwhile)"
            self._migrate(self.url, now, lock_conn)
        done = now.upgrade or now.downgrade
        verb = "upgraded" if now.upgrade else "downgraded"
        return f"{verb} {now.current or '(none)'} -> {obs.target or 'base'} ({len(done)} revision(s))"

    def run_upgrade(self, url: str) -> None:
        """Bring the database at ``url`` (a SQLAlchemy URL) to the step's target by the same path as
        apply (in-process or ``python:``), without the lockfile; raises StepFailed as apply does."""
        if self.spec.job:
            raise StepFailed(f"step {self.step.name} runs its migrations as a job in the image "
                             f"{self.spec.job.image}, which a preview cannot run yet",
                             hint=f"apply the migrations first (orchestrate apply PLAN --only {self.step.name}), "
                                  f"then plan --preview again")
        script = self._script()
        with self._connect(url) as conn:
            now = self._now(script, conn, Observed(target=self._resolve_target(script)))
            if now.unknown_current:
                raise StepFailed(f"the database is at revision {now.current}, which these migrations do not contain")
            if now.upgrade or now.downgrade:
                self._migrate(url, now, conn)

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
        rec = {"revision": obs.current if obs.reachable else None}
        before = self.recorded.get("observed") or {}
        if obs.reachable and before.get("revision") != obs.current:
            rec["previous_revision"] = before.get("revision")     # where rollback --downgrade returns
        elif before.get("previous_revision"):
            rec["previous_revision"] = before["previous_revision"]
        if obs.reachable and obs.current == obs.target and obs.current is not None:
            stamp = obs.stamp or self._stamp()
            if stamp:       # the next run may skip Alembic while these scripts stay as they are
                rec.update(scripts=stamp, target_revision=obs.target)
        return rec
