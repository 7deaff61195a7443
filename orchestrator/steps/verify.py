"""The verify step: proof that nothing was lost. Read-only; never ``changed``: each check passes
or fails, and a failure stops apply (and ``orchestrate verify``) with exit 1.

Checks: the database answers and its container is healthy; the schema is at the migrate step's
target revision; every table the copy-data step loads holds exactly what the source converts to
(row count and content, compared in the server, the first differing primary-key range named);
no sequence is behind its highest id; no foreign key is violated; a write/read probe succeeds.

The table comparison streams the source through the copy's own loader into a temporary table,
inside a transaction that is rolled back (so values are normalised exactly as the copy converts
them, and nothing is left behind), then compares the two tables in the server.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field

from ..changes import Diff
from ..copying.convert import row_hash_sql
from ..copying.mapping import TablePlan, map_tables
from ..copying.reflect import open_source, quote_sqlite, reflect_source, reflect_target
from .. import dbconn
from ..errors import OrchestrateError
from ..fields import Duration
from ..fields import Text
from ..plan import Strict
from .base import Resource, libpq_url
from .copy_data import STABLE_OUTPUT, TableState


class VerifySpec(Strict):
    url: Text | None = Field(None, description="database (default: the url of the nearest earlier db-container step)")
    copy_step: Text | None = Field(None, description="the copy-data step whose tables to compare (default: the "
                                                    "nearest earlier one)")
    probe: bool = Field(True, description="write and read a row inside a transaction that is rolled back")
    timeout: Duration = Field(dbconn.TIMEOUT, description="how long the database may stay silent (connecting, or "
                                                          "during a check, however long the check) or a lock be "
                                                          "waited for, before verify gives up")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class TableResult:
    table: str
    source_rows: int | None
    target_rows: int | None
    equal: bool
    detail: str = ""


@dataclass
class Observed:
    ran: bool = False
    checks: list[Check] = field(default_factory=list)
    tables: list[TableResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and all(t.equal for t in self.tables)


def diff_verify(obs: Observed) -> Diff:
    """Never a change: failed checks are problems, which stop apply. Pure."""
    d = Diff()
    if not obs.ran:
        d.notes.append("verify runs with apply (after the steps before it) and with orchestrate verify")
        return d
    for c in obs.checks:
        if not c.ok:
            d.problems.append(f"{c.name}: {c.detail}")
    for t in obs.tables:
        if not t.equal:
            d.problems.append(f"table {t.table}: {t.detail}")
    d.details = {"checks": [asdict(c) for c in obs.checks], "tables": [asdict(t) for t in obs.tables],
                 "ok": obs.ok, "seconds": round(obs.seconds, 2)}
    return d


class Verify(Resource):
    """Read-only checks that the database holds what the plan put there."""
    type = "verify"
    Spec = VerifySpec
    spec: VerifySpec

    @property
    def url(self) -> str:
        return libpq_url(self.database_url(self.spec.url))

    def _copy_step(self):
        if self.spec.copy_step:
            res = self.rc.resources.get(self.spec.copy_step)
            if res is None or res.type != "copy-data":
                raise self.rc.plan.smap.error(self.step.path + ("copy_step",),
                                              f"{self.spec.copy_step!r} is not a copy-data step before this one")
            return res
        return self.rc.earlier(self.step, "copy-data")

    def check(self) -> None:
        _ = self.url
        self._copy_step()

    def observe(self) -> Observed:
        obs = Observed()
        if self.rc.mode not in ("apply", "verify") or not self.rc.selected(self.step):
            return obs
        obs.ran = True
        started = time.monotonic()
        self._container(obs)
        try:
            pg = dbconn.connect(self.url, what="verifying", timeout=self.spec.timeout, autocommit=True)
        except OrchestrateError as exc:
            obs.checks.insert(0, Check("database", False, exc.message))
            obs.seconds = time.monotonic() - started
            return obs
        with pg:
            with self._bounded(pg, "reading the server's version"):
                # the source's temporary twin stays in memory (temp_buffers is set before first use)
                pg.execute("SET temp_buffers = '512MB'")
                pg.execute(f"SET lock_timeout = '{int(self.spec.timeout * 1000)}ms'")
                pg.execute(STABLE_OUTPUT.format(local="SESSION"))
                version = pg.execute("SHOW server_version").fetchone()[0]
            obs.checks.insert(0, Check("database", True, f"PostgreSQL {version} answers"))
            self._schema(obs)
            tables = self._tables(obs, pg)
            with self._bounded(pg, "checking sequences, foreign keys and the write/read probe"):
                self._sequences(obs, pg, tables)
                self._foreign_keys(obs, pg, tables)
                if self.spec.probe:
                    self._probe(obs, pg)
        obs.seconds = time.monotonic() - started
        return obs

    def _bounded(self, pg, what: str):
        """Work on ``pg`` that ends with an error when the server stops answering (a paused
        container) for the step's timeout, however long the work itself takes."""
        return dbconn.bounded(pg, what=f"verifying: {what}", timeout=self.spec.timeout)

    def _container(self, obs: Observed) -> None:
        db = self.rc.earlier(self.step, "db-container")
        if db is None:
            return
        info = self.rc.engine.container(db.spec.container)
        state = (info or {}).get("State") or {}
        health = (state.get("Health") or {}).get("Status")
        status = state.get("Status") or "missing"
        ok = status == "running" and health in ("healthy", None)
        obs.checks.append(Check("container", ok, f"{db.spec.container} is "
                                + (health or status if status == "running" else status)))

    def _schema(self, obs: Observed) -> None:
        mig = self.rc.earlier(self.step, "migrate")
        if mig is None or not self.rc.context or mig.step.name not in self.rc.context.steps:
            return
        out = self.rc.context.steps[mig.step.name]
        ok = out.get("revision") == out.get("target") and out.get("revision") is not None
        obs.checks.append(Check("schema", ok, f"at revision {out.get('revision') or '(none)'}"
                                + ("" if ok else f", the migrate step's target is {out.get('target')}")))

    def _tables(self, obs: Observed, pg) -> list[TablePlan]:
        cp = self._copy_step()
        if cp is None:
            return []
        if not cp.source_path.is_file():
            obs.checks.append(Check("source", False, f"{cp.source_path} does not exist"))
            return []
        spec = cp.spec
        with contextlib.closing(open_source(cp.source_path)) as src:
            with self._bounded(pg, "reading the tables"):
                target = reflect_target(pg)
            plans, problems, _ = map_tables(reflect_source(src), target, tables=spec.tables,
                                            exclude=spec.exclude, rename=spec.rename, columns=spec.columns,
                                            drop_columns=spec.drop_columns)
            if problems:
                obs.checks.append(Check("mapping", False, "; ".join(problems)))
                return []
            for p in plans:
                with self._bounded(pg, f"comparing table {p.target}"):
                    obs.tables.append(self._compare(pg, src, cp, p, plans))
        return plans

    def _compare(self, pg, src: sqlite3.Connection, cp, p: TablePlan, plans: list[TablePlan]) -> TableResult:
        """Load the source table into a temporary twin, as the copy would, and compare in the server."""
        from psycopg import sql
        source_rows = src.execute(f"SELECT count(*) FROM {quote_sqlite(p.source)}").fetchone()[0]
        temp = f"orchestrate_verify_{p.target}"[:63]
        target, twin = sql.Identifier(p.target), sql.Identifier(temp)
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in p.target_columns)
        row_hash = sql.SQL(row_hash_sql(p.target_columns, [sql.Identifier(c.name).as_string(pg)
                                                           for c in p.target_columns], pg.info.server_version))
        try:
            with pg.transaction(force_rollback=True):
                pg.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(cp.spec.timezone)))
                pg.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(twin, target))
                ts = TableState(p, source_rows)
                if cp.spec.on_dangling != "error":
                    ts.dangling = cp._dangling(src, p, plans)
                t0 = time.monotonic()
                try:
                    cp.load_into(pg, src, p, ts, plans, into=temp)
                except OrchestrateError as exc:
                    return TableResult(p.target, source_rows, None, False, f"the source does not load: {exc.message}")
                self.rc.log(f"{p.target}: source loaded into a temporary twin in {time.monotonic() - t0:.2f}s")
                t0 = time.monotonic()
                pg.execute(STABLE_OUTPUT.format(local="LOCAL"))
                sums = {}
                for name, ident in (("source", twin), ("target", target)):
                    sums[name] = pg.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}")
                                            .format(row_hash, ident)).fetchone()
                self.rc.log(f"{p.target}: compared in the server in {time.monotonic() - t0:.2f}s")
                if sums["source"] == sums["target"]:
                    return TableResult(p.target, sums["source"][0], sums["target"][0], True, "equal")
                return TableResult(p.target, sums["source"][0], sums["target"][0], False,
                                   self._first_difference(pg, p, twin, target, cols))
        except OrchestrateError:
            raise
        except Exception as exc:   # the database refused the comparison: a failed check, not a crash
            return TableResult(p.target, source_rows, None, False, f"cannot compare: {str(exc).strip().splitlines()[0]}")

    @staticmethod
    def _first_difference(pg, p: TablePlan, twin, target, cols) -> str:
        from psycopg import sql
        key = p.table.primary_key or [c.name for c in p.target_columns]
        on = sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=sql.Identifier(k)) for k in key)
        s_row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c.name)) for c in p.target_columns))
        t_row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c.name)) for c in p.target_columns))
        first = sql.SQL(", ").join(sql.SQL("coalesce(s.{k}, t.{k})").format(k=sql.Identifier(k)) for k in key)
        query = sql.SQL("SELECT {first}, s.{k0} IS NULL, t.{k0} IS NULL FROM {twin} s FULL JOIN {target} t ON {on} "
                        "WHERE {s_row}::text IS DISTINCT FROM {t_row}::text ORDER BY {first}").format(
            first=first, k0=sql.Identifier(key[0]), twin=twin, target=target, on=on, s_row=s_row, t_row=t_row)
        rows = pg.execute(query).fetchall()
        n = len(key)
        name = lambda r: ", ".join(f"{k}={v}" for k, v in zip(key, r[:n]))  # noqa: E731
        missing = sum(1 for r in rows if r[n + 1])
        extra = sum(1 for r in rows if r[n])
        changed = len(rows) - missing - extra
        parts = [f"{count} {what}" for count, what in ((missing, "missing in the target"), (changed, "changed"),
                                                        (extra, "not in the source")) if count]
        span = name(rows[0]) if len(rows) == 1 else f"{name(rows[0])} .. {name(rows[-1])}"
        return f"{len(rows)} row(s) differ ({', '.join(parts)}); first differing key range: {span}"

    def _sequences(self, obs: Observed, pg, plans: list[TablePlan]) -> None:
        from psycopg import sql
        behind = []
        for p in plans:
            for col in p.target_columns:
                if not col.sequence:
                    continue
                highest = pg.execute(sql.SQL("SELECT max({}) FROM {}").format(
                    sql.Identifier(col.name), sql.Identifier(p.target))).fetchone()[0]
                last, called = pg.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                    sql.SQL(col.sequence))).fetchone()
                nxt = last + 1 if called else last
                if highest is not None and nxt <= highest:
                    behind.append(f"{p.target}.{col.name}: {col.sequence} would hand out {nxt}, but the highest id is "
                                  f"{highest}")
        if plans:
            obs.checks.append(Check("sequences", not behind, "; ".join(behind) if behind else "none behind its highest id"))

    def _foreign_keys(self, obs: Observed, pg, plans: list[TablePlan]) -> None:
        """A foreign key in place and validated cannot be violated; one that is missing or NOT
        VALID is checked row by row."""
        from psycopg import sql
        broken = []
        valid = {name for (name,) in pg.execute(
            "SELECT conname FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace "
            "WHERE contype = 'f' AND convalidated AND n.nspname = current_schema()").fetchall()}
        for p in plans:
            for fk in p.table.foreign_keys:
                if fk.name in valid:
                    continue
                cond = sql.SQL(" AND ").join(sql.SQL("r.{} = c.{}").format(sql.Identifier(rc), sql.Identifier(c))
                                             for c, rc in zip(fk.columns, fk.ref_columns))
                not_null = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in fk.columns)
                count = pg.execute(sql.SQL("SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} r WHERE {})")
                                   .format(sql.Identifier(p.target), not_null, sql.Identifier(fk.ref_table), cond)).fetchone()[0]
                if count:
                    broken.append(f"{p.target}.{', '.join(fk.columns)}: {count} row(s) reference missing {fk.ref_table} rows")
        if plans:
            obs.checks.append(Check("foreign keys", not broken, "; ".join(broken) if broken else "all hold"))

    def _probe(self, obs: Observed, pg) -> None:
        try:
            with pg.transaction(force_rollback=True):
                pg.execute("CREATE TEMP TABLE orchestrate_probe (v text)")
                pg.execute("INSERT INTO orchestrate_probe VALUES ('probe')")
                ok = pg.execute("SELECT v FROM orchestrate_probe").fetchone() == ("probe",)
            obs.checks.append(Check("write/read probe", ok, "a row written and read back, then rolled back"))
        except Exception as exc:
            obs.checks.append(Check("write/read probe", False, str(exc).strip().splitlines()[0]))

    def diff(self, obs: Observed) -> Diff:
        return diff_verify(obs)

    def summary(self, obs: Observed) -> str:
        if not obs.ran:
            return ""
        return (f"verified {len(obs.tables)} table(s) and {len(obs.checks)} check(s) in {obs.seconds:.1f}s"
                if obs.ok else "")

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        if obs is None or not obs.ran:
            return {"ok": None}
        return {"ok": obs.ok, "tables": {t.table: t.target_rows for t in obs.tables}}

    def record(self, obs: Observed) -> dict[str, Any]:
        return {}     # nothing to identify: each run proves the state anew (and fails the run if not)
