#!/usr/bin/env python3
"""Loading the reference application's SQLite database into its migrated PostgreSQL schema (foreign
keys and indexes in place), measured side by side in one run: `orchestrate apply` of a one-step
copy-data plan, pgloader (Debian's package, data only, two configurations) and two physical
references, psql's \\copy of ready CSV files: into the tables as migrated (indexes and foreign keys
maintained row by row), and with the tables' secondary indexes, unique constraints and foreign keys
set aside first and rebuilt after from their own definitions (what the server alone needs to do:
the server's own limit). Targets: orchestrate >= 2x pgloader's rows/s (its faster configuration),
>= 1.3x the plain \\copy's, >= 0.9x the set-aside \\copy's, peak memory < 100 MB and flat (at --rows
and at --rows / 10), and an exact copy.

    python3 benchmarks/copy_data.py [--rows 1000000] [--runs 3] [--image IMAGE] [--keep-going]

Setup (not timed): the deterministic SQLite database (examples.autodeploy.make_sqlite, seed 42),
one PostgreSQL container from the test image, `sqlite3 -csv` exports for \\copy, and the source's
content checksum. Each measured run gets a fresh database `bench_<tool>_<i>`, migrated to head by
Alembic, then a CHECKPOINT so that no tool pays for the previous one's dirty pages; only the
tool's command is timed, as a whole process (start-up and imports included), under
`/usr/bin/time -f %M` for its peak RSS. The set-aside \\copy is one psql process (one transaction)
running SETASIDE_SQL: it reads the definitions from the catalog (pg_get_indexdef,
pg_get_constraintdef) into a temporary table, drops the foreign keys, then the unique and exclusion
constraints and the indexes that back no constraint (the primary keys stay), runs the three \\copy
in FK order, creates the indexes and constraints again, then the foreign keys (which checks every
row), and setval()s each owned sequence to max(column) like orchestrate and pgloader do; the
session's settings are the server's defaults, as for orchestrate. The tools are interleaved
(A, B, C, D, E, A, B, ...), so all see the same machine load; medians are reported. After every
run the target is verified: the md5-based content checksum of each table
(orchestrator.copying.convert.checksum_sql in the server, the same over the SQLite rows through
the step's converters and canonical()/row_hash() in Python), the sequences (nextval > max(id)),
alembic_version, and which foreign keys and indexes were dropped and re-created (their OIDs
changed) or changed (their definitions).

The container and its volume carry the labels orchestrate.bench=copy and a per-run
orchestrate.bench.run=<tag>, and are removed at the end whatever happens. Left-overs of a killed
run: docker rm -f -v $(docker ps -aq --filter label=orchestrate.bench=copy); docker volume rm
$(docker volume ls -q --filter label=orchestrate.bench=copy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))          # examples.autodeploy (and orchestrator, if not installed)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from examples.autodeploy import make_sqlite  # noqa: E402
from orchestrator.copying.convert import (NULL, SEP, canonical, canonical_sql, checksum_sql,  # noqa: E402
                                          make_converter, row_hash)
from orchestrator.copying.mapping import TablePlan, map_tables  # noqa: E402
from orchestrator.copying.reflect import open_source, quote_sqlite, reflect_source, reflect_target  # noqa: E402
from orchestrator.steps.copy_data import STABLE_OUTPUT  # noqa: E402

LABEL = "orchestrate.bench=copy"
USER = "bench"
FK_ORDER = ["tenants", "deployments", "deployment_logs"]      # parents first, for \copy
HEAD = "c9f0e8d7b6a5"                                           # alembic/versions: the head revision
TZ = ZoneInfo("UTC")                                            # the copy-data step's default timezone

PLAN = """\
name: bench-copy
root: ..          # the source database is in the work folder, next to the plan's own folder
secrets:
  url: {{env: BENCH_URL}}
steps:
  - name: copy
    copy-data:
      source: {source}
      url: "{{{{ secrets.url }}}}"
"""

# pgloader 3.6.9 (Debian bookworm; it reports itself as "3.6.7~devel"), SQLite source into tables
# that already exist. Two configurations are measured; both load exactly (checked every run).
#   data only           no CREATE or DROP of tables: COPY the rows into the existing tables, matched
#                       by name (and columns by name). With the default `foreign keys` it also drops
#                       the target tables' foreign keys before the load and re-creates them after
#                       (from the target's own catalog), so its parallel table loads cannot fail on
#                       the order of parent and child rows.
#   create no tables    do not create the tables (implied by data only; said for clarity).
#   create no indexes   do not create indexes after the load: the migrated ones stay in place and
#                       are maintained row by row during COPY.
#   drop indexes        DROP every index of the target tables before COPY (primary keys and unique
#                       constraints included, as constraints) and CREATE them again after, in
#                       parallel; with data only it re-creates them from the target's catalog, so the
#                       schema ends up the same (same names and definitions, new OIDs).
#   foreign keys        (the default) drop and re-create the foreign keys, as above. `no foreign keys`
#                       keeps them in place during the load: it works on this data (the small parent
#                       tables finish first) but is not guaranteed with pgloader's parallel workers,
#                       and it is ~1.6x slower than keeping indexes (17.4 s vs 10.9 s at 1M rows here).
#   reset sequences     (the default) setval() each sequence of the loaded tables to max(column)
#                       after the load, so nextval() gives max + 1.
# Not used: `include drop` (would drop and re-create the tables in pgloader's own types: bigint,
# text, json instead of integer, varchar(n), jsonb), `truncate` (the databases are fresh),
# `disable triggers` (not needed once the foreign keys are dropped). The casting WARNINGs pgloader
# prints (bigint vs integer, text vs varchar, json vs jsonb) are only about the types it would have
# created; it loads into the existing types.
PGLOADER_CONFIGS = {
    "pgloader drop-idx": "data only, create no tables, drop indexes, foreign keys, reset sequences",
    "pgloader keep-idx": "data only, create no tables, create no indexes, foreign keys, reset sequences",
}
PGLOADER_LOAD = """\
LOAD DATABASE
  FROM sqlite://{source}
  INTO postgresql://{user}:{password}@127.0.0.1:{port}/{db}
  WITH {with_};
"""

# The physical reference with the target tables' secondary indexes and foreign keys set aside: one
# psql script (psql -1 -f: one transaction), the definitions captured from the catalog before
# anything is dropped. Set aside: the tables' foreign keys (kind 1: dropped first, added last), their
# unique and exclusion constraints and the indexes that back no constraint (kind 2); the primary
# keys stay, as with orchestrate. Constraints come back by ALTER TABLE ... ADD CONSTRAINT name
# pg_get_constraintdef (a unique constraint re-creates its index under the same name and
# definition), indexes by their pg_get_indexdef. Then each sequence owned by a column of the tables
# is set to max(column), as orchestrate and pgloader do (nextval = max + 1).
SETASIDE = "\\copy, indexes set aside"
SETASIDE_SQL = """\
CREATE TEMP TABLE bench_set_aside AS
SELECT CASE con.contype WHEN 'f' THEN 1 ELSE 2 END AS kind,
       format('ALTER TABLE %I DROP CONSTRAINT %I', c.relname, con.conname) AS drop_sql,
       format('ALTER TABLE %I ADD CONSTRAINT %I %s', c.relname, con.conname, pg_get_constraintdef(con.oid)) AS create_sql
  FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
 WHERE c.relnamespace = 'public'::regnamespace AND c.relname IN ({tables}) AND con.contype IN ('f', 'u', 'x')
UNION ALL
SELECT 2, format('DROP INDEX %I', i.relname), pg_get_indexdef(i.oid)
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
 WHERE c.relnamespace = 'public'::regnamespace AND c.relname IN ({tables})
   AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid AND con.contype IN ('p', 'u', 'x'));
SELECT drop_sql FROM bench_set_aside ORDER BY kind \\gexec
{copies}
SELECT create_sql FROM bench_set_aside ORDER BY kind DESC \\gexec
SELECT format('SELECT setval(%L, max(%I)) FROM %I HAVING max(%I) IS NOT NULL',
              pg_get_serial_sequence(format('%I', c.relname), a.attname), a.attname, c.relname, a.attname)
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'public'::regnamespace AND c.relname IN ({tables}) AND a.attnum > 0 AND NOT a.attisdropped
   AND pg_get_serial_sequence(format('%I', c.relname), a.attname) IS NOT NULL \\gexec
"""


class BenchError(Exception):
    pass


def say(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: list[str], *, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


# --- the environment ----------------------------------------------------------------------------

def ensure_tools() -> None:
    if not shutil.which("docker"):
        sys.exit("docker is not installed")
    need = [pkg for exe, pkg in (("sqlite3", "sqlite3"), ("psql", "postgresql-client"), ("/usr/bin/time", "time"),
                                 ("pgloader", "pgloader")) if not shutil.which(exe)]
    if need:
        say(f"installing {' '.join(need)} (apt-get) ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", *need], capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            run(["apt-get", "install", "-y", *need], env=env)


@dataclass
class Server:
    tag: str
    password: str
    port: int = 0

    @property
    def name(self) -> str:
        return f"bench-copy-{self.tag}"

    def url(self, db: str, driver: str = "") -> str:
        scheme = "postgresql+" + driver if driver else "postgresql"
        return f"{scheme}://{USER}:{self.password}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = USER) -> psycopg.Connection:
        return psycopg.connect(self.url(db), autocommit=True, connect_timeout=5)

    def start(self, image: str) -> None:
        labels = ["--label", LABEL, "--label", f"orchestrate.bench.run={self.tag}"]
        run(["docker", "volume", "create", *labels, f"{self.name}-data"])
        # the phase-1 runbook's settings; published on a port Docker picks, on 127.0.0.1 only
        run(["docker", "run", "-d", "--name", self.name, *labels,
             "-e", f"POSTGRES_USER={USER}", "-e", f"POSTGRES_PASSWORD={self.password}", "-e", f"POSTGRES_DB={USER}",
             "-p", "127.0.0.1::5432", "-v", f"{self.name}-data:/var/lib/postgresql/data",
             "--health-cmd", f"pg_isready -h 127.0.0.1 -U {USER} -d {USER}", "--health-interval", "1s",
             "--health-retries", "120", image, "postgres", "-c", "shared_buffers=256MB", "-c", "max_connections=200"])
        out = run(["docker", "port", self.name, "5432/tcp"]).stdout.split()[0]
        self.port = int(out.rsplit(":", 1)[1])
        deadline = time.monotonic() + 120
        while True:      # the entrypoint's init server listens on no TCP port: a TCP connection is the real one
            health = run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", self.name],
                         check=False).stdout.split()
            if health and health[0] != "running":
                logs = run(["docker", "logs", "--tail", "30", self.name], check=False)
                raise BenchError(f"the container stopped ({health}):\n{logs.stdout}{logs.stderr}")
            if health[-1:] == ["healthy"]:
                try:
                    with self.connect() as c:
                        c.execute("SELECT 1")
                    return
                except psycopg.OperationalError:
                    pass
            if time.monotonic() > deadline:
                raise BenchError("PostgreSQL did not become ready within 120 s")
            time.sleep(0.5)

    def remove(self) -> None:
        flt = f"label=orchestrate.bench.run={self.tag}"
        ids = run(["docker", "ps", "-aq", "--filter", flt], check=False).stdout.split()
        if ids:
            run(["docker", "rm", "-f", "-v", *ids], check=False)
        vols = run(["docker", "volume", "ls", "-q", "--filter", flt], check=False).stdout.split()
        if vols:
            run(["docker", "volume", "rm", *vols], check=False)

    def psql(self, db: str) -> list[str]:
        return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", db]


def fresh_database(srv: Server, db: str) -> dict:
    """A new database, migrated to head; returns its foreign keys and indexes as migrated."""
    with srv.connect() as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    alembic = shutil.which("alembic")
    cmd = [alembic] if alembic else [sys.executable, "-m", "alembic"]
    run(cmd + ["upgrade", "head"], cwd=REPO, env={**os.environ, "DATABASE_URL": srv.url(db, "psycopg")})
    with srv.connect(db) as c:
        snap = schema_snapshot(c)
        c.execute("CHECKPOINT")
    return snap


def drop_database(srv: Server, db: str) -> None:
    with srv.connect() as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


# --- exactness ------------------------------------------------------------------------------------

def table_plans(pg: psycopg.Connection, source: Path) -> list[TablePlan]:
    """The copy-data step's own mapping: target column types reflected from the migrated schema."""
    with open_source(source) as src:
        plans, problems, _ = map_tables(reflect_source(src), reflect_target(pg), tables=[], exclude=[], rename={},
                                        columns={}, drop_columns={})
    if problems:
        raise BenchError("mapping problems: " + "; ".join(problems))
    return plans


def source_checksums(source: Path, plans: list[TablePlan]) -> dict[str, tuple[int, int]]:
    """Per table (count, sum of row_hash) over the SQLite rows, through the step's converters (as
    the step reads them: text as str, timezone UTC) and canonical(). The sum is not wrapped: the
    server's sum() of bigint is a numeric. The source is deterministic, so this is done once."""
    out = {}
    src = open_source(source)
    try:
        for p in plans:
            pairs = [(make_converter(c, tz=TZ), canonical(c)) for c in p.target_columns]
            cur = src.execute("SELECT " + ", ".join(quote_sqlite(s) for s, _ in p.columns)
                              + " FROM " + quote_sqlite(p.source))
            count = total = 0
            while batch := cur.fetchmany(10000):
                for row in batch:
                    total += row_hash([NULL if v is None else can(conv(v)) for v, (conv, can) in zip(row, pairs)])
                count += len(batch)
            out[p.target] = (count, total)
    finally:
        src.close()
    return out


def schema_snapshot(pg: psycopg.Connection) -> dict[str, tuple[str, int, str]]:
    """Foreign keys and indexes of the public schema: name -> (kind, oid, definition)."""
    snap = {}
    for name, oid, definition in pg.execute(
            "SELECT conname, oid::int, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace AND contype = 'f'"):
        snap["fk " + name] = ("fk", oid, definition)
    for name, oid, definition in pg.execute(
            "SELECT relname, oid::int, pg_get_indexdef(oid) FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace AND relkind = 'i'"):
        snap["index " + name] = ("index", oid, definition)
    return snap


@dataclass
class Check:
    exact: bool = True
    sequences_ok: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verify(srv: Server, db: str, plans: list[TablePlan], expected: dict[str, tuple[int, int]],
           before: dict, source: Path, diagnose: bool) -> Check:
    ck = Check()
    behind: list[str] = []
    with srv.connect(db) as pg:
        pg.execute(STABLE_OUTPUT.format(local="SESSION"))
        for p in plans:
            cols = p.target_columns
            q = checksum_sql(cols, [sql.Identifier(c.name).as_string(pg) for c in cols],
                             sql.Identifier(p.target).as_string(pg))
            count, total = pg.execute(q).fetchone()
            if (count, int(total)) != expected[p.target]:
                ck.exact = False
                ck.problems.append(f"{p.target}: server checksum (count {count}, sum {total}) != SQLite side "
                                   f"(count {expected[p.target][0]}, sum {expected[p.target][1]})")
                if diagnose:
                    ck.problems += locate_mismatch(pg, source, p)
            for c in cols:
                if c.sequence:
                    nxt, top = pg.execute(sql.SQL("SELECT nextval(%s), (SELECT max({}) FROM {})").format(
                        sql.Identifier(c.name), sql.Identifier(p.target)), (c.sequence,)).fetchone()
                    if top is not None and nxt <= top:
                        ck.sequences_ok = False
                        behind.append(f"{p.target} nextval {nxt} <= max(id) {top}")
        ck.notes.append("sequences ok" if ck.sequences_ok else "sequences NOT reset: " + ", ".join(behind))
        versions = [r[0] for r in pg.execute("SELECT version_num FROM alembic_version")]
        if versions != [HEAD]:
            ck.problems.append(f"alembic_version is {versions}, expected [{HEAD!r}]")
        else:
            ck.notes.append("alembic_version kept")
        after = schema_snapshot(pg)
    for kind in ("fk", "index"):
        names = sorted(k for k, v in before.items() if v[0] == kind)
        gone = [k for k in names if k not in after]
        changed = [k for k in names if k in after and after[k][2] != before[k][2]]
        recreated = [k for k in names if k in after and after[k][1] != before[k][1]]
        if gone or changed:
            ck.problems.append(f"{kind}: missing {gone}, definition changed {changed}")
        label = "FKs" if kind == "fk" else "indexes"
        ck.notes.append(f"{label} {'kept' if not recreated else f'{len(recreated)}/{len(names)} re-created'}")
    extra = sorted(set(after) - set(before))
    if extra:
        ck.problems.append(f"new objects: {extra}")
    return ck


def locate_mismatch(pg: psycopg.Connection, source: Path, p: TablePlan, limit: int = 3) -> list[str]:
    """Walk both sides in primary-key order and show the first differing rows column by column:
    the server's canonical text (canonical_sql), the Python side's (canonical over the converted
    value) and the raw SQLite value, so a wrong converter/canonical can be told from a wrong copy."""
    cols = p.target_columns
    pk_t = p.table.primary_key
    back = {c.name: s for s, c in p.columns}
    pk_s = [back[c] for c in pk_t]
    text = " || chr(31) || ".join(canonical_sql(c, sql.Identifier(c.name).as_string(pg)) for c in cols)
    order = ", ".join(sql.Identifier(c).as_string(pg) for c in pk_t)
    out: list[str] = []
    src = open_source(source)
    pairs = [(make_converter(c, tz=TZ), canonical(c)) for c in cols]
    with pg.transaction():
        cur = pg.cursor(name="bench_locate")
        cur.execute(f"SELECT ARRAY[{order}]::text[], {text} FROM {sql.Identifier(p.target).as_string(pg)} ORDER BY {order}")
        s_cur = src.execute("SELECT " + ", ".join(quote_sqlite(s) for s, _ in p.columns) + ", "
                            + ", ".join(quote_sqlite(k) for k in pk_s) + " FROM " + quote_sqlite(p.source)
                            + " ORDER BY " + ", ".join(quote_sqlite(k) for k in pk_s))
        n = len(cols)
        srv_row = cur.fetchone()
        src_row = s_cur.fetchone()
        while (srv_row or src_row) and len(out) < limit:
            s_key = [str(k) for k in src_row[n:]] if src_row else None
            t_key = list(srv_row[0]) if srv_row else None
            if s_key is not None and (t_key is None or _key(s_key) < _key(t_key)):
                out.append(f"  {p.target} row {s_key}: in SQLite, missing in PostgreSQL")
                src_row = s_cur.fetchone()
                continue
            if t_key is not None and (s_key is None or _key(t_key) < _key(s_key)):
                out.append(f"  {p.target} row {t_key}: in PostgreSQL, not in SQLite")
                srv_row = cur.fetchone()
                continue
            py = []
            for v, (conv, can) in zip(src_row[:n], pairs):
                try:
                    py.append(NULL if v is None else can(conv(v)))
                except Exception as exc:    # noqa: BLE001 - shown as the finding
                    py.append(f"<{type(exc).__name__}: {exc}>")
            server = srv_row[1].split(SEP)
            if server != py:
                diffs = [f"{c.name} ({c.type}): sqlite {src_row[i]!r} -> python {py[i]!r}, server {server[i]!r}"
                         for i, c in enumerate(cols) if i < len(server) and server[i] != py[i]]
                out.append(f"  {p.target} row {s_key}: " + "; ".join(diffs))
            srv_row, src_row = cur.fetchone(), s_cur.fetchone()
        cur.close()
    src.close()
    return out or [f"  {p.target}: no differing row found in key order (the sums differ: check the sum itself)"]


def _key(k: list[str]):
    return [int(x) if x.lstrip("-").isdigit() else x for x in k]


# --- the tools ----------------------------------------------------------------------------------

@dataclass
class Result:
    seconds: float
    peak_kb: int
    check: Check | None = None


def timed(cmd: list[str], work: Path, *, cwd: Path, env: dict, log: Path) -> tuple[float, int]:
    """Wall time of the whole command and its peak RSS (GNU time's %M: the maximum resident set of
    the process, in KB; pgloader is one SBCL process with threads, psql and orchestrate one each)."""
    rss = work / "rss.txt"
    with open(log, "w") as fh:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), *cmd], cwd=cwd, env=env,
                              stdout=fh, stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(log.read_text().splitlines()[-25:]))
    return elapsed, int(rss.read_text().split()[-1])


def run_orchestrate(srv: Server, db: str, source: Path, work: Path) -> tuple[float, int]:
    plan_dir = Path(tempfile.mkdtemp(prefix="plan-", dir=work))     # fresh: no lockfile from a previous run
    (plan_dir / "plan.yaml").write_text(PLAN.format(source=source))
    exe = shutil.which("orchestrate")
    cmd = [exe] if exe else [sys.executable, "-m", "orchestrator"]
    env = {**os.environ, "BENCH_URL": srv.url(db, "psycopg"), "NO_COLOR": "1"}
    try:
        return timed(cmd + ["apply", "plan.yaml"], work, cwd=plan_dir, env=env, log=work / "orchestrate.log")
    finally:
        shutil.rmtree(plan_dir, ignore_errors=True)


def run_pgloader(srv: Server, db: str, source: Path, work: Path, with_: str) -> tuple[float, int, str]:
    load = work / "load.load"
    load.write_text(PGLOADER_LOAD.format(source=source, user=USER, password=srv.password, port=srv.port, db=db,
                                         with_=with_))
    load.chmod(0o600)
    root = work / "pgloader"
    shutil.rmtree(root, ignore_errors=True)
    log = work / "pgloader.log"
    elapsed, kb = timed(["pgloader", "--root-dir", str(root), str(load)], work, cwd=work, env=dict(os.environ), log=log)
    text = log.read_text()
    casts = sum(1 for line in text.splitlines() if "is casted to type" in line)
    errors = [line for line in text.splitlines() if " ERROR " in line]
    note = f"{casts} casting warnings" + (f"; {len(errors)} ERROR lines, e.g. {errors[0][:200]}" if errors else "")
    return elapsed, kb, note


def run_copy(srv: Server, db: str, csvs: dict[str, tuple[Path, list[str]]], work: Path) -> tuple[float, int]:
    cmd = srv.psql(db)
    for table in FK_ORDER:
        path, cols = csvs[table]
        cmd += ["-c", f"\\copy {table} ({', '.join(cols)}) FROM '{path}' WITH (FORMAT csv)"]
    return timed(cmd, work, cwd=work, env={**os.environ, "PGPASSWORD": srv.password}, log=work / "psql.log")


def run_copy_setaside(srv: Server, db: str, csvs: dict[str, tuple[Path, list[str]]], work: Path) -> tuple[float, int]:
    script = work / "setaside.sql"
    script.write_text(SETASIDE_SQL.format(
        tables=", ".join(f"'{t}'" for t in FK_ORDER),
        copies="\n".join(f"\\copy {t} ({', '.join(csvs[t][1])}) FROM '{csvs[t][0]}' WITH (FORMAT csv)" for t in FK_ORDER)))
    return timed(srv.psql(db) + ["-1", "-f", str(script)], work, cwd=work,
                 env={**os.environ, "PGPASSWORD": srv.password}, log=work / "psql.log")


def export_csv(source: Path, work: Path) -> dict[str, tuple[Path, list[str]]]:
    """sqlite3 -csv: NULL as an empty unquoted field, '' as "" (PostgreSQL's CSV reads them back the
    same), booleans as 0/1 (which boolin reads), text timestamps and JSON as they are."""
    out = {}
    con = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        for table in FK_ORDER:
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({quote_sqlite(table)})")]
            path = work / f"{table}.csv"
            with open(path, "w") as fh:
                subprocess.run(["sqlite3", "-csv", str(source), f"SELECT {', '.join(map(quote_sqlite, cols))} "
                                f"FROM {quote_sqlite(table)}"], stdout=fh, check=True)
            out[table] = (path, cols)
    finally:
        con.close()
    return out


# --- main -----------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of deployment_logs (default 1000000)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per tool, interleaved (default 3)")
    ap.add_argument("--image", default=os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15"))
    ap.add_argument("--keep-going", action="store_true",
                    help="after a failed run or an inexact copy, report it and go on (default: stop)")
    args = ap.parse_args()

    def on_term(signum, frame):      # run the finally blocks (container and volume removal) on SIGTERM too
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    began = time.monotonic()
    load_before = os.getloadavg()[0]
    head = run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], check=False).stdout.strip() or "?"
    ensure_tools()
    tag = uuid.uuid4().hex[:8]
    srv = Server(tag, uuid.uuid4().hex)
    work = Path(tempfile.mkdtemp(prefix="orchestrate-bench-copy-"))
    tools = ["orchestrate", *PGLOADER_CONFIGS, "\\copy (ready CSV)", SETASIDE]
    results: dict[str, list[Result]] = {t: [] for t in tools}
    failures: dict[str, list[str]] = {t: [] for t in tools}
    small: Result | None = None
    notes: dict[str, set[str]] = {t: set() for t in tools}
    try:
        source, source_small = work / "source.db", work / "source-small.db"
        small_rows = max(1, args.rows // 10)
        t0 = time.monotonic()
        counts = make_sqlite.write(source, args.rows, seed=42)
        make_sqlite.write(source_small, small_rows, seed=42)
        total_rows = sum(counts.values())
        say(f"SQLite source: {', '.join(f'{t} {n:,}' for t, n in counts.items())} ({total_rows:,} rows, "
            f"{source.stat().st_size / 2**20:.0f} MB), and {small_rows:,} log rows for the small run "
            f"({time.monotonic() - t0:.1f} s)")
        t0 = time.monotonic()
        csvs = export_csv(source, work)
        say(f"CSV exports for \\copy: {sum(p.stat().st_size for p, _ in csvs.values()) / 2**20:.0f} MB "
            f"({time.monotonic() - t0:.1f} s)")
        say(f"starting PostgreSQL ({args.image}) ...")
        t0 = time.monotonic()
        srv.start(args.image)
        say(f"  {srv.name} ready on 127.0.0.1:{srv.port} ({time.monotonic() - t0:.1f} s)")

        t0 = time.monotonic()
        fresh_database(srv, "bench_reference")
        with srv.connect("bench_reference") as pg:
            plans = table_plans(pg, source)
        drop_database(srv, "bench_reference")
        expected = source_checksums(source, plans)
        expected_small = source_checksums(source_small, plans)
        say(f"source checksums through the step's converters: "
            + ", ".join(f"{t} {c:,}" for t, (c, _) in expected.items()) + f" ({time.monotonic() - t0:.1f} s)")

        def measure(tool: str, i: int, src: Path, exp: dict, rows: int) -> Result | None:
            db = "bench_" + {"orchestrate": "orchestrate", "pgloader drop-idx": "pgloader_dropidx",
                             "pgloader keep-idx": "pgloader_keepidx", SETASIDE: "copy_setaside"}.get(tool, "copy") + f"_{i}"
            before = fresh_database(srv, db)
            note = ""
            try:
                if tool == "orchestrate":
                    secs, kb = run_orchestrate(srv, db, src, work)
                elif tool.startswith("pgloader"):
                    secs, kb, note = run_pgloader(srv, db, src, work, PGLOADER_CONFIGS[tool])
                elif tool == SETASIDE:
                    secs, kb = run_copy_setaside(srv, db, csvs, work)
                else:
                    secs, kb = run_copy(srv, db, csvs, work)
                ck = verify(srv, db, plans, exp, before, src, diagnose=(tool == "orchestrate"))
            except BenchError as exc:
                failures[tool].append(f"run {i}: {exc}")
                say(f"  [{tool} {i}] FAILED: {exc}")
                if not args.keep_going:
                    raise
                return None
            finally:
                drop_database(srv, db)
            if note:
                ck.notes.append(note)
            notes[tool].update(ck.notes + [p for p in ck.problems if p.startswith("alembic")])
            res = Result(secs, kb, ck)
            status = "exact: yes" if ck.exact else "exact: NO"
            say(f"  {f'[{tool} {i}]':<30}{secs:6.2f} s {rows / secs:>10,.0f} rows/s  peak {kb / 1024:6.1f} MB  "
                f"{status}; {'; '.join(ck.notes)}")
            for p in ck.problems:
                say(f"      {p}")
            if not ck.exact and tool == "orchestrate":
                failures[tool].append(f"run {i}: not exact")
                if not args.keep_going:
                    raise BenchError("orchestrate's copy is not exact (see above); --keep-going to go on")
            return res

        for i in range(1, args.runs + 1):
            say(f"round {i}/{args.runs}")
            for tool in tools:
                res = measure(tool, i, source, expected, total_rows)
                if res is not None:
                    results[tool].append(res)
        say(f"orchestrate once at --rows / 10 ({small_rows:,} log rows), for its peak memory")
        small = measure("orchestrate", 0, source_small, expected_small,
                        small_rows + counts["tenants"] + counts["deployments"])
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc}); cleaning up")
        return 130
    except BenchError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        srv.remove()
        shutil.rmtree(work, ignore_errors=True)

    # --- report ---
    say(f"\nSQLite -> migrated PostgreSQL schema (FKs and indexes in place), {total_rows:,} rows "
        f"(deployment_logs {args.rows:,}), {args.runs} interleaved run(s) per tool; total {time.monotonic() - began:.0f} s; "
        f"orchestrate at {head}; load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    for tool in tools:
        times = " ".join(f"{r.seconds:.2f}" for r in results[tool]) or "-"
        say(f"  {tool:<26} runs: {times} s" + (f"   FAILED: {len(failures[tool])}" if failures[tool] else ""))
    for tool in tools:
        if notes[tool]:
            say(f"  {tool:<26} " + "; ".join(sorted(notes[tool])))
    say("  pgloader WITH: " + " | ".join(f"{k}: {v}" for k, v in PGLOADER_CONFIGS.items()))
    say("  \\copy: one psql process, three \\copy in FK order into the migrated tables (indexes and FKs "
        "maintained row by row); it leaves the sequences where they were (nextval = 1): a real migration "
        "would still need setval()")
    say(f"  {SETASIDE}: one psql process, one transaction: the tables' foreign keys, unique constraints and "
        "secondary indexes (not the primary keys) dropped, the same three \\copy, then the indexes, constraints "
        "and foreign keys created again from their catalog definitions and the sequences set to max(id)")

    med = {t: statistics.median(r.seconds for r in results[t]) for t in tools if results[t]}
    rate = {t: total_rows / s for t, s in med.items()}
    peak = {t: max(r.peak_kb for r in results[t]) / 1024 for t in tools if results[t]}
    say(f"\n{'tool':<26}{'median s':>9}{'rows/s':>11}{'peak MB':>10}{'vs orchestrate':>16}")
    for t in tools:
        if t not in med:
            say(f"{t:<26}{'failed':>9}")
            continue
        vs = f"{rate['orchestrate'] / rate[t]:.2f}" if "orchestrate" in rate else "-"
        say(f"{t:<26}{med[t]:>9.2f}{rate[t]:>11,.0f}{peak[t]:>10.1f}{vs:>16}")
    say("(vs orchestrate: orchestrate's rows/s divided by the tool's; peak MB: the largest of the runs)")
    if small is not None and "orchestrate" in peak:
        say(f"orchestrate peak memory: {peak['orchestrate']:.1f} MB at {args.rows:,} log rows, "
            f"{small.peak_kb / 1024:.1f} MB at {small_rows:,} ({small.seconds:.2f} s)")

    def ratio(other: list[str]) -> tuple[float, str] | None:
        have = [t for t in other if t in rate]
        if "orchestrate" not in rate or not have:
            return None
        best = max(have, key=lambda t: rate[t])      # the fastest configuration of the peer
        return rate["orchestrate"] / rate[best], best

    parts = []
    pgl = ratio(list(PGLOADER_CONFIGS))
    if pgl:
        others = [f"{rate['orchestrate'] / rate[t]:.2f}x vs {t}" for t in PGLOADER_CONFIGS if t in rate and t != pgl[1]]
        parts.append(f">=2x pgloader: {'yes' if pgl[0] >= 2 else 'NO'} ({pgl[0]:.2f}x vs {pgl[1]}"
                     + (f"; {', '.join(others)}" if others else "") + ")")
    else:
        parts.append(">=2x pgloader: n/a")
    cp = ratio(["\\copy (ready CSV)"])
    parts.append(f">=1.3x \\copy: {'yes' if cp[0] >= 1.3 else 'NO'} ({cp[0]:.2f}x)" if cp else ">=1.3x \\copy: n/a")
    sa = ratio([SETASIDE])      # the server's own limit: orchestrate's time <= its time / 0.9
    parts.append(f">=0.9x {SETASIDE}: {'yes' if sa[0] >= 0.9 else 'NO'} ({sa[0]:.2f}x)" if sa
                 else f">=0.9x {SETASIDE}: n/a")
    if "orchestrate" in peak:
        worst = max(peak["orchestrate"], small.peak_kb / 1024 if small else 0)
        parts.append(f"peak < 100 MB: {'yes' if worst < 100 else 'NO'} ({worst:.1f} MB)")
    runs = results["orchestrate"] + ([small] if small else [])
    exact = bool(runs) and all(r.check.exact and r.check.sequences_ok for r in runs) and not failures["orchestrate"]
    parts.append(f"exact: {'yes' if exact else 'NO'}" + (f" ({len(runs)} runs, checksums and sequences)" if exact else ""))
    say("targets: " + " | ".join(parts))
    return 0 if not any(failures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
