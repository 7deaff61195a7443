"""The copy-data step: every row of a SQLite database into the migrated PostgreSQL schema.

The target schema is the truth (reflected from PostgreSQL, never from the application's models).
Each table is loaded in one transaction: its foreign keys and secondary indexes are dropped,
the rows stream in through COPY, the indexes are rebuilt from their original definitions, the
sequences are set past the highest id, the foreign keys are added back (which checks every row
at once) and the table's checksum is taken in the server, all before COMMIT: a failure or a kill
leaves the table as it was.

Rows take the fast path when SQLite's values are already what PostgreSQL's own input functions
read exactly as documented (booleans as 0/1 or t/f/true/false/yes/no, ISO timestamps read in the
step's time zone, numbers as text): each batch is tested column by column for a value that needs
Python (epoch numbers, REALs in integer columns, BLOBs in text columns, ...: copying/fastpath.py),
and one such value sends the table through the Python converters. When PostgreSQL
refuses a row, the table is rolled back to its savepoint and the Python converters name the row,
its key, the column and why; what they can convert, they convert, and the table is loaded again.

The lockfile keeps, per table, the source's digest, the row counts and the target's checksum:
an unchanged source and target is ``ok``; a changed source reloads only the tables that changed
(the foreign keys pointing at a reloaded table are set aside and put back, which checks the rows
of the tables that reference it against the new rows); rows in the target that the last copy did
not leave there are never overwritten unless the step says ``overwrite: true``. A converged apply
reads no row: when the server's write counters for a table (rows inserted, updated, deleted, its
storage, the last reset) are those recorded when a checksum last proved it the copy of the same
source file, the recorded figures stand (see :func:`write_counters`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import marshal
import os
import re
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, field_validator

from ..changes import Action, Change, Diff
from ..copying import fastpath, preflight
from ..copying.convert import ConvertError, TargetColumn, has_nul, make_converter, row_hash_sql, show_value
from ..copying.mapping import TablePlan, load_units, map_tables, selected_tables
from ..copying.reflect import (ForeignKey, fingerprint, open_source, quote_sqlite, reflect_source,
                               reflect_target, source_problem)
from .. import dbconn
from ..background import Background
from ..errors import OrchestrateError, StepFailed, refusal
from ..fields import PgName, SqlitePath, Text
from ..plan import Strict
from .base import Resource, libpq_url

SAMPLE = 5
# the version of the target fingerprint; one recorded by another version cannot be compared
FINGERPRINT = "h2"
# session settings that make a row's text the same whatever the server's defaults are
STABLE_OUTPUT = ("SET {local} TimeZone = 'UTC'; SET {local} DateStyle = 'ISO, YMD'; "
                 "SET {local} IntervalStyle = 'postgres'; SET {local} extra_float_digits = 3; "
                 "SET {local} bytea_output = 'hex'")
CONNECT_TIMEOUT = 10.0      # seconds; the server's silence during work is bounded by dbconn.bounded
LINE = re.compile(r"COPY [^,]+, line (\d+)(?:, column ([^:]+))?")


def _argument(value: Any) -> Any:
    """Command arguments are text; a number from a template ("{{ vars.rows }}") becomes text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class CopyDataSpec(Strict):
    source: SqlitePath = Field(description="the SQLite database: a path (relative to the plan root) "
                                                  "or a sqlite:/// URL; opened read-only")
    url: Text | None = Field(None, description="target database (default: the url of the nearest earlier "
                                              "db-container or database step)")
    tables: list[PgName] = Field(default_factory=list, description="copy only these tables")
    exclude: list[PgName] = Field(default_factory=list, description="do not copy these tables")
    rename: dict[PgName, PgName] = Field(default_factory=dict, description="source table -> target table")
    columns: dict[PgName, dict[PgName, PgName]] = Field(default_factory=dict,
                                               description="per source table: source column -> target column")
    drop_columns: dict[PgName, list[PgName]] = Field(default_factory=dict,
                                               description="per source table: columns to leave behind")
    timezone: Text = Field("UTC", description="zone of timestamps written without an offset")
    on_dangling: Literal["error", "null", "skip"] = Field(
        "error", description="references to rows that do not exist: fail, set them NULL, or leave the rows out")
    strip_nul: bool = Field(False, description="drop NUL bytes from text instead of failing")
    overwrite: bool = Field(False, description="replace target rows that did not come from the source")
    transaction: Literal["table", "single"] = Field("table", description="one transaction per table, or one in all")
    batch_size: int = Field(5000, ge=100, le=1_000_000)
    preflight: bool = Field(True, description="plan reads and converts every source value to report problems")
    if_missing: list[Annotated[Text, BeforeValidator(_argument)]] | None = Field(None, min_length=1, description="a command (argv, no shell, run from the "
                                         "plan root) that creates the source when it does not exist")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (e.g. UTC, Europe/Paris)") from None
        return value


# --- observation -----------------------------------------------------------------------------

@dataclass
class Dangling:
    fk: ForeignKey
    count: int
    sample: list[str]


@dataclass
class TableState:
    plan: TablePlan
    source_rows: int
    target_rows: int | None = None           # None: the target was not reachable
    checksum: str | None = None              # the target's, taken in the server
    digest: str | None = None                # the source table's, when it had to be read
    counters: str | None = None              # the server's write counters for it (see write_counters)
    written: bool = False                    # written in PostgreSQL since the copy, its source unchanged
    action: str = "ok"                       # ok | copy | reload | refuse
    reason: str = ""
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)      # values the copy will repair (strip_nul)
    dangling: list[Dangling] = field(default_factory=list)


@dataclass
class Observed:
    source: Path
    fingerprint: str | None = None
    shown: str = ""        # the source as changes name it: relative to the plan's root (a saved
                           # plan's fingerprint must not depend on the folder it was made from)
    tables: list[TableState] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reachable: bool = True
    plans: list[TablePlan] = field(default_factory=list)     # every table mapped, copied now or not
    incoming: dict[str, list[ForeignKey]] = field(default_factory=dict)   # target table -> FKs to it
    create_source: bool = False       # the source is missing and if_missing will create it
    after_apply: str | None = None    # why the target cannot be seen yet (plan: known after apply)
    # with after_apply: (source table, target table, source rows, loaded from this very file before)
    unknown: list[tuple[str, str, int, bool]] = field(default_factory=list)
    checked: bool = False             # the preflight ran (apply runs it while the rows load)


def settled(entry: dict, checksum: str | None) -> dict:
    """The lockfile's entry for a table as it really stands: a load records what it is about to
    commit under ``committing`` just before COMMIT; if the target now holds exactly that, the
    commit happened (and the process died before it could say so). Pure."""
    entry = dict(entry or {})
    committing = entry.pop("committing", None)
    if isinstance(committing, dict) and checksum is not None and committing.get("checksum") == checksum:
        return committing
    if isinstance(committing, str) and checksum is not None and committing == checksum:   # older format
        return {**entry, "checksum": checksum}
    return entry


def decide(ts: TableState, recorded: dict, *, file: str | None, overwrite: bool) -> None:
    """What to do with one table, from counts, checksums and what the last copy recorded of it
    (its entry, with the source file's fingerprint ``file`` at the time it was loaded). Pure."""
    rec = settled(recorded, ts.checksum)
    if ts.target_rows is None:
        ts.action, ts.reason = "copy", "the target is not reachable yet"
        return
    same_source = bool(rec) and ((file is not None and rec.get("file") == file)
                                 or (ts.digest is not None and ts.digest == rec.get("source_digest")))
    if ts.target_rows == 0:
        if ts.source_rows == 0 and rec:
            ts.action = "ok"
        elif same_source and not overwrite and (rec.get("rows") or 0) > 0 and emptied(rec.get("counters"), ts.counters):
            # the application deleted every row: copying the source again would bring them back
            ts.action, ts.written = "ok", True
            ts.reason = written_note(ts.plan.target, 0, rec.get("rows"))
        else:
            ts.action, ts.reason = "copy", f"copy {ts.source_rows} rows"
        return
    ours = rec.get("checksum") == ts.checksum
    recorded = rec.get("checksum") or ""
    if recorded and not recorded.startswith(FINGERPRINT + ":"):
        # recorded by another version of orchestrate: only the row count can be compared
        ours = rec.get("rows") == ts.target_rows
    if ours:
        if same_source:
            ts.action = "ok"
            return
        delta = ts.source_rows - rec.get("source_rows", 0)
        ts.action = "reload"
        ts.reason = (f"the source changed since the last copy: {ts.source_rows} rows now, "
                     f"{rec.get('source_rows', 0)} then ({delta:+d})")
        return
    if same_source and not overwrite:
        # the application writes to PostgreSQL now, and the source has nothing new: converged
        ts.action, ts.written = "ok", True
        ts.reason = written_note(ts.plan.target, ts.target_rows, rec.get("rows"))
        return
    foreign = (f"{ts.plan.target} holds rows that the last copy did not leave there ("
               + (f"{ts.target_rows} rows now, {rec.get('rows')} after the last copy, and the checksum differs: "
                  f"rows were written to PostgreSQL since)" + ("" if same_source else ", and its source changed since "
                                                              "that copy too") if rec else
                  f"{ts.target_rows} rows, and nothing was copied into it by this plan)"))
    if overwrite:
        ts.action, ts.reason = "reload", f"overwrite: true: {foreign}; they are replaced by the source's rows"
    else:
        ts.action = "refuse"
        ts.problems.append(f"{foreign}. Refusing to overwrite them: the application may have started writing "
                           f"to PostgreSQL. Set overwrite: true to replace them with the source's rows.")


WRITE_COUNTERS = """
SELECT t.name, c.relkind, c.oid::bigint, c.relfilenode::bigint, pg_stat_get_tuples_inserted(c.oid),
       pg_stat_get_tuples_updated(c.oid), pg_stat_get_tuples_deleted(c.oid),
       coalesce(pg_stat_get_db_stat_reset_time(d.oid)::text, ''), current_setting('track_counts')
FROM unnest(%s::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(format('%%I.%%I', current_schema(), t.name))
JOIN pg_database d ON d.datname = current_database()
"""


def write_counters(pg, plans: list[TablePlan]) -> dict[str, str]:
    """Per target table, what the server counts of the writes to it: rows inserted, updated and
    deleted, its storage (oid and relfilenode: TRUNCATE, a rewrite or a re-created table change
    them), when the database's counters were last reset (a reset, or a crash, which discards
    them) and the columns the copy maps. Equal to what was recorded when a checksum proved the
    table the copy's: no row was written to it since, as far as the server has counted. Tables
    the server does not count (track_counts off, a partitioned table, whose writes count on its
    partitions, or a server that cannot say) are left out: their checksum is taken every time."""
    cols = {p.target: hashlib.sha256(repr([(s, c.name, c.type) for s, c in p.columns]).encode()).hexdigest()[:16]
            for p in plans}
    found = _statistics(pg, WRITE_COUNTERS, list(cols))
    if found is None:           # a server without these statistics: the checksum every time
        return {}
    out = {}
    for name, kind, oid, node, ins, upd, dele, reset, track in found:
        if kind == "r" and track == "on":
            out[name] = f"{oid}:{node}:{ins}:{upd}:{dele}:{reset}:{cols[name]}"
    return out


def _statistics(pg, query: str, tables: list[str]) -> list[tuple] | None:
    """The rows of a query of the server's statistics for ``tables``, or None where the server
    cannot say. In a savepoint: inside the load's transaction, a refusal leaves it usable."""
    import psycopg
    try:
        with pg.transaction():
            return pg.execute(query, (tables,)).fetchall()
    except psycopg.Error:
        return None


XACT_WRITES = """
SELECT t.name, c.relfilenode::bigint, pg_stat_get_xact_tuples_inserted(c.oid),
       pg_stat_get_xact_tuples_updated(c.oid), pg_stat_get_xact_tuples_deleted(c.oid)
FROM unnest(%s::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(format('%%I.%%I', current_schema(), t.name))
"""


def counters_after(pg, before: dict[str, str]) -> dict[str, str]:
    """What :func:`write_counters` will read of each table once this session's writes reach the
    server's statistics: ``before`` (read in this transaction before its first write to them)
    plus the writes this session has not reported yet (this transaction's, attempts rolled back
    to a savepoint included, as the server counts them), with the storage this transaction left.
    Recorded after a load, it lets the next run read nothing; any other session's write, or a
    count the server makes otherwise, only makes the counters differ, and the table is then read
    again (never taken as unwritten while it was written)."""
    found = _statistics(pg, XACT_WRITES, list(before))
    if found is None:
        return {}
    out = {}
    for name, node, ins, upd, dele in found:
        oid, _, ins0, upd0, dele0, reset, cols = _fields(before[name])
        out[name] = f"{oid}:{node}:{ins0 + ins}:{upd0 + upd}:{dele0 + dele}:{reset}:{cols}"
    return out


def emptied(recorded: str | None, now: str | None) -> bool:
    """Whether an empty table is the very table whose write counters were recorded, its rows
    deleted (or truncated) since: the same oid, statistics never reset since, the same columns
    mapped, and every counter at least what it was (they only grow). A re-created table or
    database, a reset or a crash gives other counters: then it is not known, and the copy runs
    again. Pure."""
    try:
        (oid, _, ins, upd, dele, reset, cols), (oid2, _, ins2, upd2, dele2, reset2, cols2) = _fields(recorded), _fields(now)
    except (AttributeError, ValueError):       # none recorded, or not this version's
        return False
    return (oid, reset, cols) == (oid2, reset2, cols2) and ins2 >= ins and upd2 >= upd and dele2 >= dele


def _fields(counters: str) -> tuple:
    """``write_counters``' text back into its parts (the reset time holds colons of its own)."""
    oid, node, ins, upd, dele, rest = counters.split(":", 5)
    reset, cols = rest.rsplit(":", 1)
    return oid, node, int(ins), int(upd), int(dele), reset, cols


def unwritten(recorded: dict, counters: str | None, file: str | None) -> bool:
    """Whether a table's lockfile entry still describes it without reading it: the counters are
    those recorded when a checksum last proved it the copy of this very source file (or found it
    written in PostgreSQL since, ``written``), and no commit of a copy is pending. Pure."""
    return bool(counters and recorded.get("counters") == counters and "committing" not in recorded
                and file is not None and recorded.get("file") == file and recorded.get("checksum")
                and isinstance(recorded.get("rows"), int) and isinstance(recorded.get("source_rows"), int))


def written_note(table: str, rows_now: int | None, rows_copied: int | None) -> str:
    return (f"{table}: written in PostgreSQL since the last copy ({rows_now} rows now, {rows_copied} after the "
            f"copy); its source is unchanged, so there is nothing to copy (an apply's verify no longer compares it "
            f"with the source)")


def diff_copy(obs: Observed, on_dangling: str) -> Diff:
    """Per table: copy, reload or refuse, with counts and every problem found. Pure."""
    d = Diff(problems=list(obs.problems), notes=list(obs.notes))
    if obs.create_source:
        d.changes.append(Change(Action.CREATE, "source", None, obs.shown or str(obs.source), "created by if_missing"))
        d.after_apply = True
    details = {}
    if obs.after_apply:
        d.after_apply = True
        if not obs.tables:      # (a preview saw the tables)
            d.notes.append(f"known after apply: {obs.after_apply}")
        for s_name, t, rows, same in obs.unknown:
            details[t] = {"source_table": s_name, "source_rows": rows, "target_rows": None,
                          "action": "ok" if same else "copy"}
            if same:
                d.notes.append(f"{t}: {rows} source rows, copied from this very file by the last apply "
                               f"(expected unchanged)")
            else:
                d.changes.append(Change(Action.CREATE, f"table {t}", "(known after apply)", f"{rows} rows",
                                        "every source row, into the migrated table"))
    for ts in obs.tables:
        t = ts.plan.target
        details[t] = {"source_table": ts.plan.source, "source_rows": ts.source_rows,
                      "target_rows": ts.target_rows, "action": ts.action}
        if ts.written:
            d.notes.append(ts.reason)
        if ts.action == "copy":
            before = "(known after apply)" if obs.after_apply else f"{ts.target_rows or 0} rows"
            d.changes.append(Change(Action.CREATE, f"table {t}", before,
                                    f"{ts.source_rows} rows", ts.reason))
        elif ts.action == "reload":
            d.changes.append(Change(Action.RECREATE, f"table {t}", f"{ts.target_rows} rows",
                                    f"{ts.source_rows} rows", ts.reason))
            if ts.reason.startswith("overwrite"):
                d.destructive = f"copy-data overwrite: true over rows written to {t}"
        d.problems += ts.problems
        d.warnings += ts.repairs
        for dg in ts.dangling:
            what = (f"{t}: {dg.count} row(s) reference {dg.fk.ref_table} rows that do not exist "
                    f"({', '.join(dg.fk.columns)}; e.g. {', '.join(dg.sample)})")
            if on_dangling == "error":
                d.problems.append(what + ". Set on_dangling: null (set the reference to NULL) or skip (leave "
                                         "those rows out).")
            elif on_dangling == "null" and not dg.fk.nullable:
                d.problems.append(what + f"; on_dangling: null cannot apply: {', '.join(dg.fk.columns)} is NOT NULL")
            else:
                d.warnings.append(what + (": set to NULL" if on_dangling == "null" else ": left out"))
    d.details["tables"] = details
    return d


# --- the step --------------------------------------------------------------------------------

class CopyData(Resource):
    """Every row of a SQLite database into the migrated PostgreSQL schema."""
    type = "copy-data"
    Spec = CopyDataSpec
    spec: CopyDataSpec

    def __init__(self, *args):
        super().__init__(*args)
        self._loaded: dict[str, dict] = {}    # after apply: target -> rows, checksum, counters
        # target -> rows, of the tables written in PostgreSQL since the copy (its source unchanged),
        # as this run observed them; None: not observed in this run (see written_tables)
        self._written: dict[str, int | None] | None = None
        self._report: dict[str, dict] = {}              # rows changed or left out, per table
        self._server_version = 140000                  # the target's, once connected

    @property
    def source_path(self) -> Path:
        src = self.spec.source
        if src.startswith("sqlite:///"):
            src = src[len("sqlite:///"):]
        return self.rc.plan.resolve(src)

    @property
    def source_name(self) -> str:
        """The source as recorded: relative to the plan's root, so a lockfile in git means the same
        file from any working folder and any clone."""
        return os.path.relpath(self.source_path.absolute(), self.rc.plan.base_dir.absolute())

    @property
    def url(self) -> str:
        return self.database_url(self.spec.url)

    @property
    def libpq_url(self) -> str:
        return libpq_url(self.url)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.spec.timezone)

    def check(self) -> None:
        _ = self.url

    def _connect(self, what: str, url: str | None = None):
        """A bounded connection to the target, or to ``url`` (see orchestrator/dbconn.py)."""
        conn = dbconn.connect(url or self.libpq_url, what=what, timeout=CONNECT_TIMEOUT, autocommit=True)
        conn.execute(STABLE_OUTPUT.format(local="SESSION"))
        self._server_version = conn.info.server_version
        return conn

    # observe ---------------------------------------------------------------------------------

    def observe(self) -> Observed:
        obs = Observed(self.source_path, shown=self.source_name)
        if not obs.source.is_file():
            if self.spec.if_missing:
                obs.create_source = True
                obs.notes.append(f"the source {obs.source} does not exist yet: apply creates it with "
                                 f"{' '.join(self.spec.if_missing)}, then copies every table")
            else:
                obs.problems.append(f"the source database {obs.source} does not exist")
            return obs
        wrong = source_problem(obs.source)
        if wrong:
            obs.problems.append(f"the source {obs.source} {wrong}")
            return obs
        obs.fingerprint = fingerprint(obs.source)
        rec = self.recorded.get("observed") or {}
        try:
            with self._reading():
                return self._observe_source_and_target(obs, rec)
        except _Unreadable as exc:
            obs.problems.append(str(exc))
            return obs

    @contextlib.contextmanager
    def _reading(self):
        """SQLite refusing the file as a whole (malformed, not a database) becomes one sentence."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "no such" in str(exc):
                raise
            raise _Unreadable(f"the source {self.source_path} cannot be read by SQLite: {exc} (is it a whole, "
                              f"uncorrupted SQLite database? sqlite3 FILE 'PRAGMA integrity_check' tells)") from None

    def _observe_source_and_target(self, obs: Observed, rec: dict) -> Observed:
        src = open_source(obs.source)
        try:
            pending = self.rc.pending_before(self.step, "db-container", "database", "migrate")
            try:
                pg = self._connect("reading the target's tables")
            except OrchestrateError as exc:
                if self.rc.mode == "apply":
                    raise StepFailed(f"cannot reach the target database: {exc.message}",
                                     hint=exc.hint or "check the db-container or database step (or the url)") from None
                obs.reachable = False
                obs.after_apply = ("the target database is not reachable now"
                                   + (f"; {_steps(pending)} first" if pending else ""))
                pg = None
            schema = self.rc.pending_before(self.step, "migrate")
            if pg is not None and schema:
                obs.after_apply = (f"{_steps(schema)} first, which migrates the target schema; "
                                   f"plan --preview shows the copy into that schema")
            try:
                if obs.after_apply and self.rc.options.get("preview") and self.rc.mode == "plan":
                    self._observe_preview(obs, src)
                elif obs.after_apply:
                    self._observe_source(obs, src, rec)
                else:
                    with dbconn.bounded(pg, what="reading the target's tables"):
                        self._observe_tables(obs, src, pg, rec)
            finally:
                if pg is not None:
                    pg.close()
        finally:
            src.close()
        return obs

    def _observe_preview(self, obs: Observed, src: sqlite3.Connection) -> None:
        """plan --preview: the whole check against the schema the migrations will make, in a
        throwaway database (see orchestrator/preview.py)."""
        from ..preview import preview_schema
        with preview_schema(self.rc, self.step, self.url) as (url, where):
            with self._connect("previewing the copy", url) as pg:
                self._observe_tables(obs, src, pg, {})
        obs.notes.append(f"preview: the migrations ran into {where}, removed since; every check above ran "
                         f"against that schema")

    def _observe_source(self, obs: Observed, src: sqlite3.Connection, rec: dict) -> None:
        """The target cannot be seen yet: what is known from the source and the lockfile."""
        source = reflect_source(src)
        selected = selected_tables(source, tables=self.spec.tables, exclude=self.spec.exclude, rename=self.spec.rename)
        obs.problems += self._nothing_selected(source, selected)
        for s_name, t_name in selected:
            rows = src.execute(f"SELECT count(*) FROM {quote_sqlite(s_name)}").fetchone()[0]
            entry = self._table_record(rec, t_name)
            same = entry.get("file") == obs.fingerprint and "committing" not in entry
            obs.unknown.append((s_name, t_name, rows, same))

    def _table_record(self, rec: dict, target: str) -> dict:
        """What the last copy recorded of a table, with the source file it was loaded from (none
        when the step's source is another file now)."""
        entry = dict((rec.get("tables") or {}).get(target) or {})
        if "file" not in entry and rec.get("fingerprint"):     # recorded before per-table fingerprints
            entry["file"] = rec["fingerprint"]
        if rec.get("source") != self.source_name:
            entry.pop("file", None)
        return entry

    def _nothing_selected(self, source: dict, selected: list) -> list[str]:
        if not source:
            return [f"the source {self.source_path} holds no tables: is it the application's database? "
                    f"(nothing is copied or recorded)"]
        if not selected and not self.spec.tables and not self.spec.exclude:
            return [f"the source {self.source_path} holds only {', '.join(sorted(source))}: nothing to copy"]
        return []

    def _observe_tables(self, obs: Observed, src: sqlite3.Connection, pg, rec: dict) -> None:
        spec = self.spec
        target = reflect_target(pg)
        source = reflect_source(src)
        plans, problems, notes = map_tables(source, target, tables=spec.tables, exclude=spec.exclude,
                                            rename=spec.rename, columns=spec.columns, drop_columns=spec.drop_columns)
        obs.problems += self._nothing_selected(source, plans) or problems
        obs.notes += notes
        obs.plans = plans
        for t in target.values():
            for fk in t.foreign_keys:
                obs.incoming.setdefault(fk.ref_table, []).append(fk)
        # read before any checksum: a write the counters miss now is in no checksum taken after
        counters = write_counters(pg, plans)
        for p in plans:
            r = self._table_record(rec, p.target)
            written = r.get("written")
            if (p.target not in self._loaded and unwritten(r, counters.get(p.target), obs.fingerprint)
                    and not (written and spec.overwrite)):
                # nothing was written to it since a checksum proved it the copy of this very
                # source file (or found it written since): the recorded figures stand, and no row
                # is read on either side
                if isinstance(written, dict):
                    ts = TableState(p, r["source_rows"], written.get("rows"), None, counters=r["counters"],
                                    written=True, reason=written_note(p.target, written.get("rows"), r["rows"]))
                else:
                    ts = TableState(p, r["source_rows"], r["rows"], r["checksum"], counters=r["counters"])
                    decide(ts, r, file=obs.fingerprint, overwrite=spec.overwrite)
                obs.tables.append(ts)
                continue
            ts = TableState(p, src.execute(f"SELECT count(*) FROM {quote_sqlite(p.source)}").fetchone()[0])
            if p.target in self._loaded:
                loaded = self._loaded[p.target]
                ts.target_rows, ts.checksum, ts.counters = loaded["rows"], loaded["checksum"], loaded.get("counters")
            else:
                ts.target_rows, ts.checksum = self._target_checksum(pg, p)
                ts.counters = counters.get(p.target)
            now = settled(r, ts.checksum)
            if ts.target_rows and now.get("file") != obs.fingerprint and (now.get("checksum") == ts.checksum
                                                                           or now.get("source_digest")):
                ts.digest = self._source_digest(src, p)
            decide(ts, r, file=obs.fingerprint, overwrite=spec.overwrite)
            obs.tables.append(ts)
        self._written = {ts.plan.target: ts.target_rows for ts in obs.tables if ts.written}
        for ts in obs.tables:
            if ts.action in ("copy", "reload"):
                ts.dangling = self._dangling(src, ts.plan, plans)
        # plan's preflight names every value the copy would refuse or repair, all at once. apply
        # runs the same check while the tables load, meeting the load halfway, and commits nothing
        # before every table is covered (preflight.Alongside); it runs here when the step is
        # refused anyway, so that refusal names all
        todo = [ts for ts in obs.tables if ts.action in ("copy", "reload")]
        refused = obs.problems or any(ts.problems or ts.dangling for ts in todo)
        if (spec.preflight and self.rc.mode != "apply") or (self.rc.mode == "apply" and refused):
            for ts in todo:
                _found(ts, self._preflight(ts.plan))
            obs.checked = True

    def _target_checksum(self, pg, p: TablePlan) -> tuple[int, str]:
        """Row count and a fingerprint of the target table's content, taken in the server: the
        sum of a 64-bit hash of each row's copied columns. It answers "is the table still what
        the last copy left?" at a fraction of the cost of an md5 over every value; a migration
        that adds a column since (filled by its default) does not count as a change."""
        from psycopg import sql
        cols = p.target_columns
        idents = [sql.Identifier(c.name).as_string(pg) for c in cols]
        expr = row_hash_sql(cols, idents, pg.info.server_version)
        count, total = pg.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}").format(
            sql.SQL(expr), sql.Identifier(p.target))).fetchone()
        return count, f"{FINGERPRINT}:{count}:{total}"

    def _select(self, p: TablePlan, extra: str = "") -> str:
        return f"SELECT {', '.join(p.read_sql('s'))}{extra} FROM {quote_sqlite(p.source)} AS s"

    def _source_digest(self, src: sqlite3.Connection, p: TablePlan) -> str | None:
        """The table as read for a copy, hashed: the same bytes as the copy itself hashes."""
        h = hashlib.sha256()
        try:
            cur = src.execute(self._select(p))
            while batch := cur.fetchmany(self.spec.batch_size):
                h.update(_digest_bytes(batch))
        except sqlite3.OperationalError:
            return None      # unreadable as text: it counts as changed, and the copy names the row
        return h.hexdigest()

    def _describe(self, src: sqlite3.Connection, p: TablePlan, line: int | None = None,
                  where: str | None = None) -> list[str]:
        """Primary keys of rows, for messages: the ``line``-th row read, or those matching ``where``."""
        keys, cols = _keys(p)
        if line is not None:
            rows = src.execute(f"{self._select(p, ', ' + cols)} LIMIT 1 OFFSET ?", (line - 1,)).fetchall()
            rows = [r[len(p.columns):] for r in rows]
        else:
            rows = src.execute(f"SELECT {cols} FROM {quote_sqlite(p.source)} AS s {where} LIMIT {SAMPLE}").fetchall()
        return [_row_name(keys, r) for r in rows]

    def _dangling(self, src: sqlite3.Connection, p: TablePlan, plans: list[TablePlan]) -> list[Dangling]:
        out = []
        for fk, join, cond in self._fk_joins(p, plans):
            where = f"{join} WHERE {cond}"
            count = src.execute(f"SELECT count(*) FROM {quote_sqlite(p.source)} AS s {where}").fetchone()[0]
            if count:
                out.append(Dangling(fk, count, self._describe(src, p, where=where)))
        return out

    def _fk_joins(self, p: TablePlan, plans: list[TablePlan]):
        """Per foreign key whose parent is copied too: the SQLite LEFT JOIN to its parent and the
        condition that is true for a dangling reference."""
        by_target = {q.target: q for q in plans}
        for i, fk in enumerate(p.table.foreign_keys):
            parent = by_target.get(fk.ref_table)
            if parent is None:
                continue
            to_src = {c.name: s for s, c in p.columns}
            parent_src = {c.name: s for s, c in parent.columns}
            if not all(c in to_src for c in fk.columns) or not all(c in parent_src for c in fk.ref_columns):
                continue
            alias = f"p{i}"
            on = " AND ".join(f"{alias}.{quote_sqlite(parent_src[rc])} = s.{quote_sqlite(to_src[c])}"
                              for c, rc in zip(fk.columns, fk.ref_columns))
            not_null = " AND ".join(f"s.{quote_sqlite(to_src[c])} IS NOT NULL" for c in fk.columns)
            first = quote_sqlite(parent_src[fk.ref_columns[0]])
            yield fk, f"LEFT JOIN {quote_sqlite(parent.source)} AS {alias} ON {on}", \
                f"{not_null} AND {alias}.{first} IS NULL"

    def _converters(self, p: TablePlan):
        return [make_converter(c, tz=self.tz, strip_nul=self.spec.strip_nul, server_version=self._server_version)
                for _, c in p.columns]

    def _preflight(self, p: TablePlan, raw: sqlite3.Connection | None = None) -> list[preflight.Finding]:
        """Every value of the table that the copy would refuse or repair (read-only); ``raw``: the
        source opened with text as bytes (opened here if not given)."""
        if raw is None:
            with contextlib.closing(self._open_raw()) as opened:
                return self._preflight(p, opened)
        keys, key_sql = _keys(p)
        return preflight.scan(raw, p, self._converters(p), keys=keys, key_sql=key_sql, row_name=_row_name,
                              batch_size=self.spec.batch_size)

    def _open_raw(self) -> sqlite3.Connection:
        return open_source(self.source_path, raw_text=True)

    # diff --------------------------------------------------------------------------------------

    def diff(self, obs: Observed) -> Diff:
        return diff_copy(obs, self.spec.on_dangling)

    # apply -------------------------------------------------------------------------------------

    def apply(self, obs: Observed, diff: Diff) -> str:
        with self._reading():
            return self._apply(obs)

    def _apply(self, obs: Observed) -> str:
        if obs.create_source:
            self._create_source()
            obs = self.observe()
            later = self.diff(obs)
            if later.problems:
                raise refusal(later.problems)
        todo = [t for t in obs.tables if t.action in ("copy", "reload")]
        if not todo:
            return "nothing to copy"
        names = {t.plan.target for t in todo}
        plans = [t.plan for t in obs.tables if t.plan.target in names]
        states = {t.plan.target: t for t in todo}
        units = load_units(plans)
        if self.spec.transaction == "single":
            units = [[p for unit in units for p in unit]]
        started = time.monotonic()
        # plan's preflight, on its own SQLite connection while the rows load, meeting the load halfway
        order = [p.target for unit in units for p in unit]
        checks = preflight.Alongside([] if obs.checked else order,
                                     lambda table, raw: _found(states[table], self._preflight(states[table].plan, raw)),
                                     self._open_raw, Background)
        with contextlib.closing(open_source(obs.source)) as src, self._connect("copying the source's rows") as pg:
            pg.autocommit = False
            with dbconn.bounded(pg, what="copying the source's rows"):
                try:
                    total = self._load_units(pg, src, units, states, obs, checks)
                    if order and not obs.checked:
                        read, left = checks.covered()
                        self.rc.log(f"the source's check read {', '.join(read) or 'no table'}; the load tested "
                                    f"{', '.join(left) or 'no table'} itself (each table is read once)")
                except OrchestrateError:
                    _checked(checks, todo, complete=True)    # every value the check refuses, not the first
                    raise
        said = f"copied {total:,} rows into {len(names)} table(s) ({_rate(total, time.monotonic() - started)})"
        for table, out in sorted(self._report.items()):
            for what in REPAIRS:
                if what in out:
                    said += (f"; {table}: {out[what]['rows']:,} row(s) {REPAIR_WORDS[what]} "
                             f"(e.g. {'; '.join(out[what]['sample'])})")
        return said

    def _create_source(self) -> None:
        import subprocess
        cmd = self.spec.if_missing
        self.rc.progress(f"creating the source with: {' '.join(cmd)}")
        try:
            done = subprocess.run(cmd, cwd=self.rc.plan.base_dir, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StepFailed(f"if_missing could not run {cmd[0]}: {exc}") from None
        if done.returncode != 0 or not self.source_path.is_file():
            raise StepFailed(f"if_missing ({' '.join(cmd)}) did not create {self.source_path} "
                             f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")

    def written_tables(self) -> dict[str, int | None]:
        """Target -> rows of the tables written in PostgreSQL since the copy, their source
        unchanged: as this run observed them, else as the lockfile records them."""
        if self._written is not None:
            return dict(self._written)
        return {t: e["written"].get("rows") for t, e in self._live_tables.items() if isinstance(e.get("written"), dict)}

    def written_since_copy(self, pg, p: TablePlan) -> bool:
        """Whether the target table now holds other rows than the last copy left there, its source
        unchanged since (the checksum, taken now). verify asks when a table differs from the source
        that this step had found unwritten from the server's counters, which count a write only
        once the writing session reports it: the application may have written just before."""
        rec = self._table_record(self.rc.lock.step(self.step.name).get("observed") or {}, p.target)
        if not rec.get("checksum") or not self.source_path.is_file() or rec.get("file") != fingerprint(self.source_path):
            return False
        _, checksum = self._target_checksum(pg, p)
        return settled(rec, checksum).get("checksum") != checksum

    @property
    def _live_tables(self) -> dict[str, dict]:
        """The tables as the lockfile holds them now (checkpoints of this very run included)."""
        return (self.rc.lock.step(self.step.name).get("observed") or {}).get("tables") or {}

    def _checkpoint(self, tables: dict[str, dict]) -> None:
        """Record tables in the lockfile as soon as they are known (before and after COMMIT). Each
        table's entry names the source file's fingerprint it was loaded from: a run killed between
        two tables leaves the others recorded as they were, so the next run reloads them."""
        self.update_observed(source=self.source_name, tables={**self._live_tables, **tables})

    def _load_units(self, pg, src: sqlite3.Connection, units: list[list[TablePlan]], states: dict[str, TableState],
                    obs: Observed, checks: preflight.Alongside) -> int:
        """Load the units in order, each in its own transaction. Nothing commits before apply's
        preflight has covered every table (scanned it, or left it to the load, which tests every
        value it writes): until the two meet, the next unit joins the open transaction (each
        table stays all-or-nothing; a kill then loses the tables of that transaction only). So
        does a unit that reloads a table referencing one that this transaction reloaded."""
        todo = list(states.values())
        rows, i = 0, 0
        while i < len(units):
            results: dict[str, dict] = {}
            owed: set[str] = set()      # whose foreign key a unit of this transaction left to them
            with pg.transaction():
                while True:
                    later = {p.target for unit in units[i + 1:] for p in unit}
                    loaded, left = self._load_unit(pg, src, units[i], states, obs, later, checks)
                    results.update(loaded)
                    owed = (owed | left) - set(loaded)
                    i += 1
                    if i == len(units) or (checks.done() and not owed):
                        break
                    self.rc.log(f"{', '.join(sorted(owed))}: reloaded too, so loaded in this transaction (its foreign "
                                f"keys are put back against its new rows)" if owed else
                                "the source's check still runs: the next table joins this transaction")
                _checked(checks, todo)
                before = self._live_tables
                pending = {t: {**settled(before.get(t) or {}, None), "committing": r} for t, r in results.items()}
                self._checkpoint(pending)      # a kill between COMMIT and the next line is recognised
            for t, r in results.items():
                self._loaded[t] = r
                rows += r["rows"]
            self._checkpoint(results)
        return rows

    def _load_unit(self, pg, src: sqlite3.Connection, unit: list[TablePlan], states: dict[str, TableState],
                   obs: Observed, later: set[str], checks: preflight.Alongside) -> tuple[dict[str, dict], set[str]]:
        """Load one unit's tables inside the caller's transaction; returns what to record of each,
        and the tables of ``later`` units whose foreign keys it left to them (they must load in
        this transaction)."""
        from psycopg import sql
        q = lambda name: sql.Identifier(name).as_string(pg)  # noqa: E731
        results: dict[str, dict] = {}
        names = {p.target for p in unit}
        full = [p for p in unit if states[p.target].target_rows]
        # Emptying a table that other tables reference: their foreign keys to it are set aside
        # too, and put back at the end, which checks their rows against the new ones; the
        # referencing tables themselves are not touched. So are those of tables that hold no
        # row (nothing to check), so that this table can be emptied in its COPY's own
        # subtransaction and load frozen (below). The foreign key of a referencing table with
        # rows that a later unit reloads is put back by that unit, in this same transaction,
        # against its new rows: its old ones may reference rows the source no longer has (a
        # parent deleted with its children).
        @functools.cache
        def holds_rows(table: str) -> bool:
            return pg.execute(f"SELECT EXISTS (SELECT 1 FROM {q(table)})").fetchone()[0]
        incoming: list[ForeignKey] = []
        kept: set[str] = set()          # tables another table's foreign key still stands on
        for p in unit:
            for fk in obs.incoming.get(p.target, []):
                if fk.table in names:
                    continue
                if states[p.target].target_rows or not holds_rows(fk.table):
                    incoming.append(fk)
                else:
                    kept.add(p.target)
        left = {fk.table for fk in incoming if fk.table in later and holds_rows(fk.table)}
        def run(statement, params=None):
            self.rc.log(f"sql: {statement if isinstance(statement, str) else statement.as_string(pg)}")
            return pg.execute(statement, params)

        pg.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(self.spec.timezone)))
        before = write_counters(pg, unit)       # before this transaction's first write to them
        for fk in incoming:
            run(f"ALTER TABLE {q(fk.table)} DROP CONSTRAINT {q(fk.name)}")
        for p in unit:
            for fk in p.table.foreign_keys:
                # (IF EXISTS: an earlier unit of this transaction may have set it aside already)
                run(f"ALTER TABLE {q(p.target)} DROP CONSTRAINT IF EXISTS {q(fk.name)}")
            for name in p.table.indexes:
                run(f"DROP INDEX {q(name)}")
            for col in p.target_columns:
                if col.identity == "a":
                    run(f"ALTER TABLE {q(p.target)} ALTER COLUMN {q(col.name)} SET GENERATED BY DEFAULT")
        # A table this load can empty right before its COPY, in the same subtransaction, takes
        # its rows frozen (COPY FREEZE): already known committed and visible to all, so no later
        # reader (the verify right after, the application) checks and rewrites each row's
        # status. Not where another table's foreign key to it stands (kept: TRUNCATE refuses).
        # The others are emptied here.
        freeze = {p.target for p in unit if not p.table.partitioned and p.target not in kept}
        emptied_here = [p for p in full if p.target not in freeze]
        if emptied_here:
            run("TRUNCATE " + ", ".join(q(p.target) for p in emptied_here))
        for p in unit:
            t0 = time.monotonic()
            checks.begin(p.target)
            results[p.target] = self._load_table(pg, src, p, states[p.target], obs.plans, freeze=p.target in freeze)
            checks.passed(p.target)
            self.rc.log(f"{p.target}: COPY {results[p.target]['rows']} rows in {time.monotonic() - t0:.2f}s")
        t0 = time.monotonic()
        for p in unit:
            for name, definition in p.table.indexes.items():
                try:
                    run(definition)
                except Exception as exc:
                    raise StepFailed(f"{p.target}: index {name} cannot be built on the copied rows: "
                                     f"{_pg_message(exc)}") from None
            for col in p.target_columns:
                if col.identity == "a":
                    run(f"ALTER TABLE {q(p.target)} ALTER COLUMN {q(col.name)} SET GENERATED ALWAYS")
                if col.sequence:
                    run(f"SELECT setval(%s, greatest(coalesce((SELECT max({q(col.name)}) FROM {q(p.target)}), 0), "
                        f"%s) + 1, false)", (col.sequence, self._promised(src, p, col)))
        self.rc.log(f"indexes and sequences in {time.monotonic() - t0:.2f}s")
        t0 = time.monotonic()
        for p in unit:
            for fk in p.table.foreign_keys:
                try:
                    run(f"ALTER TABLE {q(p.target)} ADD CONSTRAINT {q(fk.name)} {fk.definition}")
                except Exception as exc:
                    raise self._fk_failure(src, p, fk, exc, obs.plans) from None
        for fk in incoming:
            if fk.table in left:
                continue        # put back with the referencing table's new rows, by its own unit
            try:
                run(f"ALTER TABLE {q(fk.table)} ADD CONSTRAINT {q(fk.name)} {fk.definition}")
            except Exception as exc:
                raise StepFailed(f"{fk.table} has rows that reference {fk.ref_table} rows the source no "
                                 f"longer has ({_pg_message(exc)}); {fk.ref_table} was not reloaded",
                                 hint=f"copy {fk.table} too (it is excluded or not in the source), or "
                                      f"remove those rows") from None
        self.rc.log(f"foreign keys checked in {time.monotonic() - t0:.2f}s")
        t0 = time.monotonic()
        pg.execute(STABLE_OUTPUT.format(local="LOCAL"))
        for p in unit:
            count, checksum = self._target_checksum(pg, p)
            expected = results[p.target]["rows"]
            if count != expected:
                raise StepFailed(f"{p.target}: {count} rows in the target after the copy, {expected} expected; "
                                 f"rolled back")
            results[p.target].update(rows=count, checksum=checksum, file=obs.fingerprint)
        for t, counters in counters_after(pg, before).items():
            results[t]["counters"] = counters
        self.rc.log(f"checksums in {time.monotonic() - t0:.2f}s")
        return results, left

    @staticmethod
    def _promised(src: sqlite3.Connection, p: TablePlan, col: TargetColumn) -> int:
        """The highest id SQLite promised never to hand out again (AUTOINCREMENT keeps it in
        sqlite_sequence, also for rows deleted since): the sequence must go past it too."""
        source_col = next((s for s, c in p.columns if c.name == col.name), None)
        if source_col is None or p.source_pk != [source_col]:
            return 0
        try:
            row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (p.source,)).fetchone()
        except sqlite3.OperationalError:      # no AUTOINCREMENT table in the database
            return 0
        return int(row[0]) if row and isinstance(row[0], int) else 0

    def _fk_failure(self, src, p: TablePlan, fk: ForeignKey, exc: Exception, plans: list[TablePlan]) -> StepFailed:
        for dfk, join, cond in self._fk_joins(p, plans):
            if dfk.name == fk.name:
                where = f"{join} WHERE {cond}"
                count = src.execute(f"SELECT count(*) FROM {quote_sqlite(p.source)} AS s {where}").fetchone()[0]
                sample = self._describe(src, p, where=where)
                return StepFailed(f"{p.target}: {count} row(s) reference {fk.ref_table} rows that do not exist "
                                  f"(column {', '.join(fk.columns)}; e.g. row {'; '.join(sample)}); nothing of "
                                  f"{p.target} was loaded",
                                  hint="set on_dangling: null or skip in the step, or fix the source")
        return StepFailed(f"{p.target}: foreign key {fk.name} does not hold after the copy: {_pg_message(exc)}; "
                          f"nothing of {p.target} was loaded",
                          hint="set on_dangling: null or skip in the step, or fix the source")

    def load_into(self, pg, src: sqlite3.Connection, p: TablePlan, ts: TableState, plans: list[TablePlan],
                  into: str) -> dict:
        """Load the source table into another table (verify loads it into a temporary one),
        converting exactly as the copy does."""
        return self._load_table(pg, src, p, ts, plans, into=into)

    def _load_table(self, pg, src: sqlite3.Connection, p: TablePlan, ts: TableState,
                    plans: list[TablePlan], into: str | None = None, freeze: bool = False) -> dict:
        """COPY one table, inside the caller's transaction; returns what to record. ``freeze``:
        emptied in the COPY's own subtransaction, which loads it frozen."""
        import psycopg
        need = {i for i, (_, c) in enumerate(p.columns) if c.kind == "time"}
        fixes = self._dangling_fixes(p, ts, plans)
        result: dict[str, Any] = {"source_table": p.source, "source_rows": ts.source_rows}
        try:
            if not need and not fixes:
                try:
                    with pg.transaction():
                        result.update(self._copy(pg, src, p, None, None, ts.source_rows, into, freeze))
                    return result
                except _NeedsPython as why:
                    self.rc.log(f"{p.target}: {why}: the table goes through the Python converters")
                except psycopg.DataError as exc:
                    if "NUL" not in str(exc):        # psycopg refuses NUL bytes before sending
                        self._diagnose(src, p, exc)
                except psycopg.Error as exc:
                    self._diagnose(src, p, exc)   # raises, unless the Python converters can do it
                need = set(range(len(p.columns)))
            with pg.transaction():
                try:
                    result.update(self._copy(pg, src, p, need or set(range(len(p.columns))), fixes, ts.source_rows,
                                             into, freeze))
                except psycopg.Error as exc:
                    self._diagnose(src, p, exc, final=True)
        except sqlite3.OperationalError as exc:
            raise self._unreadable(p, exc) from None
        return result

    def _unreadable(self, p: TablePlan, exc: Exception) -> StepFailed:
        """SQLite could not hand over a value as text (invalid UTF-8): find and name the row."""
        keys, key_sql = _keys(p)
        n = len(p.columns)
        with contextlib.closing(open_source(self.source_path, raw_text=True)) as raw:
            for row in raw.execute(self._select(p, ", " + key_sql)):
                for i, v in enumerate(row[:n]):
                    if isinstance(v, bytes) and p.columns[i][1].kind != "bytea":
                        try:
                            v.decode("utf-8")
                        except UnicodeDecodeError as err:
                            key = _row_name(keys, row[n:])
                            return StepFailed(f"{p.target}: row {key}: column {p.columns[i][1].name}: invalid "
                                              f"UTF-8 at byte {err.start} ({v[max(0, err.start - 8):err.start + 8]!r}); "
                                              f"nothing of {p.target} was loaded",
                                              hint="fix the text in the source (it is not UTF-8)")
        return StepFailed(f"{p.target}: SQLite could not read the table: {exc}")

    def _dangling_fixes(self, p: TablePlan, ts: TableState, plans: list[TablePlan]):
        """With on_dangling null/skip and dangling rows: the joins that flag them."""
        if self.spec.on_dangling == "error" or not ts.dangling:
            return None
        names = {d.fk.name for d in ts.dangling}
        return [(fk, join, cond) for fk, join, cond in self._fk_joins(p, plans) if fk.name in names]

    def _copy(self, pg, src: sqlite3.Connection, p: TablePlan, convert: set[int] | None, fixes,
              ts_rows: int = 0, into: str | None = None, freeze: bool = False) -> dict:
        from psycopg import sql
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in p.target_columns)
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(into or p.target), cols)
        if freeze:
            empty = sql.SQL("TRUNCATE {}").format(sql.Identifier(p.target))
            self.rc.log(f"sql: {empty.as_string(pg)}")
            pg.execute(empty)
            stmt = sql.SQL("{} (FREEZE)").format(stmt)
        extra, joins = "", ""
        if fixes:
            extra = ", " + ", ".join(f"CASE WHEN {cond} THEN 1 ELSE 0 END" for _, _, cond in fixes)
            joins = " " + " ".join(join for _, join, _ in fixes)
        query = self._select(p, extra) + joins
        reader = src
        h = hashlib.sha256()
        rows = 0
        repaired = {what: _Repairs() for what in REPAIRS}
        n = len(p.columns)
        convs = self._converters(p) if convert is not None else None
        order = sorted(convert) if convert is not None else []
        nul_text = [i for i in (order if self.spec.strip_nul else ()) if p.columns[i][1].kind == "text"]
        positions = {c.name: i for i, c in enumerate(p.target_columns)}
        odd_value = fastpath.odd_value(p) if convert is None else None
        progress = _Progress(self.rc.progress, p.target, ts_rows)
        cur = reader.execute(query)
        self.rc.log(f"sql: {stmt.as_string(pg)}  <- SQLite {p.source}")
        with pg.cursor().copy(stmt) as copy:
            line = 0
            while batch := cur.fetchmany(self.spec.batch_size):
                if convert is None and not fixes:
                    h.update(_digest_bytes(batch))
                    odd = odd_value(batch)
                    if odd is not None:
                        raise _NeedsPython(f"column {p.columns[odd[0]][1].name} holds {show_value(odd[1], 40)}")
                    deque(map(copy.write_row, batch), 0)
                    rows += len(batch)
                    progress.tick(rows)
                    continue
                h.update(_digest_bytes([r[:n] for r in batch]))
                for row in batch:
                    line += 1
                    values = list(row[:n])
                    for i in nul_text:
                        v = values[i]
                        if has_nul(v):
                            repaired["stripped"].add(lambda: self._describe(src, p, line=line))
                            break
                    for i in order:
                        v = values[i]
                        if v is None:
                            continue
                        try:
                            values[i] = convs[i](v)
                        except ConvertError as exc:
                            key = self._describe(src, p, line=line)
                            raise StepFailed(f"{p.target}: row {key[0] if key else line}: column "
                                             f"{p.columns[i][1].name}: {exc}; nothing of {p.target} was loaded",
                                             hint=_hint(p.columns[i][1], str(exc))) from None
                    if fixes:
                        flags = row[n:]
                        if any(flags):
                            describe = lambda: self._describe(src, p, line=line)  # noqa: E731
                            if self.spec.on_dangling == "skip":
                                repaired["skipped"].add(describe)
                                continue
                            for (fk, _, _), flag in zip(fixes, flags):
                                if flag:
                                    for col in fk.columns:
                                        values[positions[col]] = None
                            repaired["nulled"].add(describe)
                    copy.write_row(values)
                    rows += 1
                progress.tick(rows)
        out = {"rows": rows, "source_digest": h.hexdigest()}
        for what, r in repaired.items():
            if r.rows:
                out[what] = {"rows": r.rows, "sample": r.sample}
        if any(r.rows for r in repaired.values()):
            self._report[p.target] = out
        return out

    def _diagnose(self, src: sqlite3.Connection, p: TablePlan, exc: Exception, final: bool = False) -> None:
        """PostgreSQL refused a row: name it. Raises StepFailed, or returns when the Python
        converters can convert the value (the caller then loads the table through them)."""
        diag = getattr(exc, "diag", None)
        context = getattr(diag, "context", None) or ""
        match = LINE.search(context)
        line = int(match.group(1)) if match else None
        column = (match.group(2) if match and match.group(2) else None) or getattr(diag, "column_name", None)
        key = self._describe(src, p, line=line) if line else []
        where = f"row {key[0]}" if key else (f"row {line}" if line else "a row")
        col = next((c for _, c in p.columns if c.name == column), None)
        if col is not None and line is not None and not final:
            with contextlib.closing(open_source(self.source_path, raw_text=True)) as raw:
                row = raw.execute(f"{self._select(p)} LIMIT 1 OFFSET ?", (line - 1,)).fetchone()
            value = row[[c.name for c in p.target_columns].index(col.name)] if row else None
            try:
                if value is not None:
                    make_converter(col, tz=self.tz, strip_nul=self.spec.strip_nul,
                                   server_version=self._server_version)(value)
                    return                     # Python can convert it: load through the converters
            except ConvertError as err:
                raise StepFailed(f"{p.target}: {where}: column {col.name}: {err}; nothing of {p.target} was loaded",
                                 hint=_hint(col, str(err))) from None
        what = f"column {column}: " if column else ""
        raise StepFailed(f"{p.target}: {where}: {what}{_pg_message(exc)}; nothing of {p.target} was loaded") from None

    # record ------------------------------------------------------------------------------------

    def summary(self, obs: Observed) -> str:
        """Tables the application has written in PostgreSQL since the copy, their source unchanged."""
        return "; ".join(ts.reason for ts in obs.tables if ts.written)

    def identity(self, record: dict[str, Any]) -> dict[str, Any]:
        """Without the server's write counters (a cache of what a checksum proved), nor the row
        count of a table the application writes: a plan saved before it wrote again still
        applies, and status calls neither drift."""
        tables = {}
        for name, entry in (record.get("tables") or {}).items():
            entry = {k: v for k, v in entry.items() if k != "counters"}
            if "written" in entry:
                entry["written"] = True
            tables[name] = entry
        return {**record, "tables": tables} if "tables" in record else record

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        if obs is None or not obs.tables:
            return {"tables": {}}
        return {"tables": {t.plan.target: t.target_rows for t in obs.tables}}

    def record(self, obs: Observed) -> dict[str, Any]:
        rec = self._live_tables
        tables = {}
        for ts in ([] if obs.after_apply else obs.tables):     # a preview's tables are thrown away
            prev = settled(rec.get(ts.plan.target) or {}, ts.checksum)
            entry = {"source_table": ts.plan.source, "source_rows": ts.source_rows, "rows": ts.target_rows,
                     "checksum": ts.checksum, "source_digest": prev.get("source_digest"), "file": prev.get("file")}
            if ts.digest and ts.action == "ok":
                # (only a table proven the copy of this source: a failed apply records the
                # tables it did not reload with the digest of the source they were loaded from)
                entry["source_digest"] = ts.digest
            if ts.written:
                # the copy's own figures stay (a changed source is then still refused), with what
                # was seen now; counters: the next apply reads nothing while they hold
                entry = {**prev, "written": {"rows": ts.target_rows}}
                entry.pop("counters", None)
            if ts.action == "ok":
                entry["file"] = obs.fingerprint      # proven equal to this very file
                if ts.counters:
                    entry["counters"] = ts.counters
            elif ts.plan.target in self._loaded and ts.counters:
                entry["counters"] = ts.counters      # what the server will count of this run's load
            for key in REPAIRS:
                if key in (self._report.get(ts.plan.target) or prev):
                    entry[key] = (self._report.get(ts.plan.target) or prev)[key]
            tables[ts.plan.target] = entry
        return {"source": self.source_name, "fingerprint": obs.fingerprint, "tables": tables}


def _found(ts: TableState, findings: list[preflight.Finding]) -> None:
    for finding in findings:
        (ts.repairs if finding.repair else ts.problems).append(finding.describe())


def _checked(checks: preflight.Alongside, tables: list[TableState], complete: bool = False) -> None:
    """Wait for apply's preflight (``complete``: after the load refused, scan what it left too);
    refuse (the transaction then rolls back) if it found any value that cannot be loaded, naming
    every one."""
    if complete:
        checks.complete()
    else:
        checks.wait()
    problems = [p for ts in tables for p in ts.problems]
    if problems:
        raise refusal(problems)


def _steps(names: list[str]) -> str:
    return f"step {names[0]} runs" if len(names) == 1 else f"steps {', '.join(names)} run"


def _digest_bytes(batch: list) -> bytes:
    """Rows as bytes for the source digest: marshal (C speed; version 2 writes values only, no
    back-references that would depend on object identity), so equal rows give equal bytes.
    repr() cost as much as reading the rows."""
    return marshal.dumps(batch, 2)


REPAIRS = ("nulled", "skipped", "stripped")     # what the copy changed on the way, counted per table
REPAIR_WORDS = {"nulled": "with dangling references set to NULL", "skipped": "left out (dangling references)",
                "stripped": "with NUL bytes stripped"}


def _rate(rows: int, seconds: float) -> str:
    rate = rows / max(seconds, 1e-6)
    return f"{rate / 1000:,.0f}k rows/s" if rate >= 10_000 else f"{rate:,.0f} rows/s"


class _Repairs:
    """Rows the copy repaired, counted, with the keys of the first few (looked up only for those)."""

    def __init__(self):
        self.rows, self.sample = 0, []

    def add(self, describe) -> None:
        self.rows += 1
        if len(self.sample) < SAMPLE:
            self.sample += describe()


class _Unreadable(StepFailed):
    """The source as a whole is not readable SQLite."""


class _NeedsPython(Exception):
    """A value the fast path must not hand to PostgreSQL as it is."""





class _Progress:
    """Progress of a large table: a bar with rows per second (redrawn in place on a terminal,
    a plain line every two seconds otherwise)."""

    def __init__(self, say, table: str, total: int):
        self.say, self.table, self.total = say, table, total
        self.start = self.last = time.monotonic()

    def tick(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last >= 2.0:
            self.last = now
            if self.total:
                done = min(rows / self.total, 1.0)
                bar = "#" * int(done * 20)
                self.say(f"{self.table} [{bar:<20}] {done:4.0%} {rows:,}/{self.total:,} rows, {_rate(rows, now - self.start)}")
            else:
                self.say(f"{self.table}: {rows:,} rows, {_rate(rows, now - self.start)}")


def _keys(p: TablePlan) -> tuple[list[str], str]:
    """The source columns that name a row in messages (rowid when there is no key), and their SQL."""
    keys = p.source_pk or ["rowid"]
    return keys, ", ".join(f"s.{quote_sqlite(k)}" if k != "rowid" else "s.rowid" for k in keys)


def _row_name(keys: list[str], values) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in zip(keys, values))


def _plain(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return repr(value)
    return str(value)


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    detail = getattr(diag, "message_detail", None)
    return f"{primary} ({detail})" if detail else primary


def _hint(col: TargetColumn, reason: str) -> str:
    if "NUL" in reason:
        return "fix the source, or set strip_nul: true to drop NUL bytes"
    if "longer than" in reason:
        return f"shorten the value in the source, or widen {col.name} with a migration"
    return "fix the value in the source, or change the column's type with a migration"
