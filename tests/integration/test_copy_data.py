"""copy-data against a real PostgreSQL (whose time zone is not UTC) and real SQLite files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from zoneinfo import ZoneInfo

import psycopg
import pytest

from examples.autodeploy.make_sqlite import write as make_reference_db
from orchestrator.copying.mapping import map_tables
from orchestrator.copying.reflect import reflect_source, reflect_target
from orchestrator.copying.verify import source_checksum, target_checksum
from tests.conftest import ROOT, SESSION, free_port, run_cli

pytestmark = pytest.mark.integration
TABLES = ("tenants", "deployments", "deployment_logs")


class Server:
    """One PostgreSQL container for the module (TimeZone America/New_York); a database per test."""

    def __init__(self, port: int, password: str):
        self.port, self.password = port, password

    def url(self, db: str) -> str:
        return f"postgresql://dbadmin:{self.password}@127.0.0.1:{self.port}/{db}"

    def create(self) -> str:
        db = "t" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {db}")
        return db


@pytest.fixture(scope="module")
def server(tmp_path_factory, pg_image):
    tmp = tmp_path_factory.mktemp("server")
    password = "srv-" + uuid.uuid4().hex
    os.environ["COPY_SERVER_PW"] = password
    plan = tmp / "server.yaml"
    plan.write_text(textwrap.dedent(f"""\
        name: t{SESSION}-copysrv
        secrets: {{pw: {{env: COPY_SERVER_PW}}}}
        steps:
          - name: pg
            db-container:
              image: {pg_image}
              container: t{SESSION}-copysrv
              volume: t{SESSION}-copysrv-data
              user: dbadmin
              password: "{{{{ secrets.pw }}}}"
              ports: ["127.0.0.1:{free_port()}:5432"]
              healthcheck: {{interval: 1s}}
              settings: {{timezone: America/New_York, fsync: "off"}}
        """))
    code, out = run_cli("apply", plan)
    assert code == 0, out
    port = json.loads(plan.with_suffix(".lock").read_text())["steps"]["pg"]["outputs"]["port"]
    yield Server(port, password)
    run_cli("destroy", plan, "--volumes", "--yes")


def migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url.replace("postgresql://", "postgresql+psycopg://")}
    done = subprocess.run(["alembic", "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def plan_file(tmp_path, source, url, **options) -> "PlanFile":
    return PlanFile(tmp_path, source, url, options)


class PlanFile:
    def __init__(self, tmp_path, source, url, options):
        self.path = tmp_path / f"copy-{uuid.uuid4().hex[:6]}.yaml"
        self.env = f"COPY_URL_{uuid.uuid4().hex[:6].upper()}"
        os.environ[self.env] = url
        self.url, self.source = url, source
        self.write(**options)

    def write(self, verify: bool = False, **options) -> None:
        body = {"source": str(self.source), "url": "{{ secrets.url }}", **options}
        check = '\n  - name: check\n    verify: {url: "{{ secrets.url }}"}\n' if verify else ""
        self.path.write_text(textwrap.dedent(f"""\
            name: copy-test
            secrets: {{url: {{env: {self.env}}}}}
            steps:
              - name: data
                copy-data: {json.dumps(body)}
            """) + check)

    def run(self, command: str, *extra) -> tuple[int, str]:
        return run_cli(command, self.path, *extra)

    def lock(self) -> dict:
        return json.loads(self.path.with_suffix(".lock").read_text())["steps"]["data"]


def rows(url, query, *params):
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def exact(source, url) -> None:
    """Every table's count and content checksum equal on both sides."""
    src = sqlite3.connect(source)
    with psycopg.connect(url) as pg:
        plans, problems, _ = map_tables(reflect_source(src), reflect_target(pg), tables=[], exclude=[], rename={},
                                        columns={}, drop_columns={})
        assert not problems
        for p in plans:
            assert source_checksum(src, p, tz=ZoneInfo("UTC")) == target_checksum(pg, p), p.target


def written_since(url, xid: int) -> dict[str, int]:
    return {t: rows(url, f"SELECT count(*) FROM {t} WHERE xmin::text::bigint >= %s", xid)[0][0] for t in TABLES}


def current_xid(url) -> int:
    return rows(url, "SELECT txid_current() % 4294967296")[0][0]


@pytest.fixture
def reference(server, tmp_path):
    source = tmp_path / "app.db"
    counts = make_reference_db(source, 20000)
    url = server.url(server.create())
    migrate(url)
    return source, url, counts


def test_reference_database_copies_exactly_and_the_application_can_insert(reference, tmp_path):
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("plan", "--detailed-exitcode")
    assert code == 2, out
    assert "table deployment_logs: 0 rows -> 20000 rows" in out
    code, out = plan.run("apply")
    assert code == 0, out
    assert f"copied {sum(counts.values()):,} rows into 3 table(s)" in out
    for table, count in counts.items():
        assert rows(url, f"SELECT count(*) FROM {table}")[0][0] == count
    assert rows(url, "SELECT count(*) FROM alembic_version")[0][0] == 1, "alembic_version is never copied"
    exact(source, url)
    # each table was emptied in its COPY's own subtransaction and loaded frozen (also the parents,
    # whose empty children's foreign keys were set aside for it): no reader has to set hint bits
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
        frozen = {t: conn.execute("SELECT bool_and(all_frozen) FROM pg_visibility_map(%s)", (t,)).fetchone()[0]
                  for t in TABLES}
        conn.execute("DROP EXTENSION pg_visibility")
    assert frozen == {t: True for t in TABLES}, frozen
    # the application's next insert works: every sequence is past the highest id
    with psycopg.connect(url, autocommit=True) as conn:
        t = conn.execute("INSERT INTO tenants (name, slug) VALUES ('new', 'new') RETURNING id").fetchone()[0]
        d = conn.execute("INSERT INTO deployments (tenant_id, name) VALUES (%s, 'd') RETURNING id", (t,)).fetchone()[0]
        log = conn.execute("INSERT INTO deployment_logs (deployment_id, message) VALUES (%s, 'm') RETURNING id", (d,)).fetchone()[0]
    assert (t, d, log) == (counts["tenants"] + 1, counts["deployments"] + 1, counts["deployment_logs"] + 1)
    lock = plan.lock()
    assert set(lock["observed"]["tables"]) == set(TABLES)
    assert lock["observed"]["tables"]["deployment_logs"]["rows"] == 20000


def test_second_apply_writes_nothing_and_a_changed_source_reloads_only_its_table(reference, tmp_path):
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url)
    assert plan.run("apply")[0] == 0
    xid = current_xid(url)
    code, out = plan.run("apply")
    assert code == 0 and "ok:      data" in out, out
    assert written_since(url, xid) == {t: 0 for t in TABLES}
    assert plan.run("plan", "--detailed-exitcode")[0] == 0

    with sqlite3.connect(source) as src:
        src.execute("UPDATE deployments SET status = 'failed' WHERE id = 7")
        src.execute("INSERT INTO deployments (id, tenant_id, name, created_at) VALUES (99999, 1, 'new', '2025-01-01 00:00:00')")
    code, out = plan.run("plan")
    assert "table deployments" in out and "(+1)" in out, out
    assert "table tenants" not in out and "table deployment_logs" not in out
    xid = current_xid(url)
    code, out = plan.run("apply")
    assert code == 0, out
    changed = written_since(url, xid)
    assert changed["deployments"] == counts["deployments"] + 1
    assert changed["tenants"] == 0 and changed["deployment_logs"] == 0
    exact(source, url)


def scans(url) -> dict[str, int]:
    """Sequential and index scans of each table, as the server counted them."""
    return {t: n for t, n in rows(url, "SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) "
                                       "FROM pg_stat_user_tables WHERE relname = ANY(%s)", list(TABLES))}


def counted(url, table: str, at_least: int, column: str = "n_tup_upd") -> None:
    """Wait until the server's statistics count a write (a backend reports them as it ends)."""
    deadline = time.monotonic() + 15
    while rows(url, f"SELECT {column} FROM pg_stat_user_tables WHERE relname = %s", table)[0][0] < at_least:
        assert time.monotonic() < deadline, f"the server never counted the write to {table}"
        time.sleep(0.2)


def test_a_converged_apply_reads_no_row_and_still_sees_every_write(reference, tmp_path):
    """Issue 15: a no-op apply decides "unchanged" from the server's write counters, not by
    reading every row; an update, a reset of the statistics or a TRUNCATE still lead back to the
    checksum, so a write to PostgreSQL is seen exactly as before."""
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url)
    assert plan.run("apply")[0] == 0                     # the copy records what the server will count of it
    tables = plan.lock()["observed"]["tables"]
    assert all(tables[t].get("counters") for t in TABLES), tables
    time.sleep(1.5)                                      # the load's and the checksum's scans are counted
    before = scans(url)
    code, out = plan.run("apply")
    assert code == 0 and "ok:      data" in out, out
    assert plan.run("plan", "--detailed-exitcode")[0] == 0
    time.sleep(1.5)
    assert scans(url) == before, "a converged apply read the tables"

    # statistics reset (as after a crash): the checksum is taken again, the table is still the copy
    rows(url, "SELECT pg_stat_reset()")
    code, out = plan.run("apply")
    assert code == 0 and "ok:      data" in out, out
    assert plan.lock()["observed"]["tables"]["deployments"]["counters"] != tables["deployments"]["counters"]

    # one value changed in PostgreSQL, the source untouched: seen (the checksum), nothing to copy
    rows(url, "UPDATE deployment_logs SET message = message || ' (edited in PostgreSQL)' WHERE id = 1")
    counted(url, "deployment_logs", 1)
    code, out = plan.run("apply")
    assert code == 0 and "deployment_logs: written in PostgreSQL since the last copy" in out, out
    assert "written" in plan.lock()["observed"]["tables"]["deployment_logs"]
    rows(url, "UPDATE deployment_logs SET message = replace(message, ' (edited in PostgreSQL)', '') WHERE id = 1")
    counted(url, "deployment_logs", 2)
    code, out = plan.run("apply")
    assert code == 0 and "ok:      data" in out and "written in PostgreSQL" not in out, out   # the copy's again
    assert "written" not in plan.lock()["observed"]["tables"]["deployment_logs"]

    # emptied and refilled with other rows of the same count: new storage, so the checksum decides
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE keep AS SELECT * FROM deployment_logs")
        conn.execute("TRUNCATE deployment_logs")
        conn.execute("INSERT INTO deployment_logs SELECT * FROM keep")
        conn.execute("UPDATE deployment_logs SET level = 'X' WHERE id = 2")
    code, out = plan.run("apply")
    assert code == 0 and "deployment_logs: written in PostgreSQL since the last copy" in out, out
    with sqlite3.connect(source) as src:                 # and now the source too: a conflict, refused
        src.execute("UPDATE deployment_logs SET message = 'changed in SQLite' WHERE id = 5")
    code, out = plan.run("apply")
    assert code == 1 and "deployment_logs holds rows that the last copy did not leave there" in out, out
    assert rows(url, "SELECT level FROM deployment_logs WHERE id = 2")[0][0] == "X"


def test_after_the_switch_the_application_writes_to_postgres_and_apply_still_converges(reference, tmp_path):
    """The application now writes to PostgreSQL and nothing writes to SQLite any more: the copy
    has nothing to bring, so apply is ok (a note, no refusal), verify checks what it still can
    without comparing those tables with the source, and nothing is written to them. Only when the
    source changes too is there a conflict, refused as before."""
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url, verify=True)
    assert plan.run("apply")[0] == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (name, slug) VALUES ('after-the-switch', 'after-the-switch')")
    counted(url, "tenants", counts["tenants"] + 1, column="n_tup_ins")
    xid = current_xid(url)
    for _ in range(2):                  # the second one from the counters alone
        code, out = plan.run("apply")
        assert code == 0, out
        assert "ok:      data" in out and "tenants: written in PostgreSQL since the last copy" in out, out
        assert "nothing to copy" in out, out
    assert written_since(url, xid) == {t: 0 for t in TABLES}
    assert plan.lock()["observed"]["tables"]["tenants"]["written"] == {"rows": counts["tenants"] + 1}
    assert plan.lock()["observed"]["tables"]["tenants"]["rows"] == counts["tenants"], "the copy's figures stay"
    assert plan.run("plan", "--detailed-exitcode")[0] == 0

    # a plan saved for review still applies after the application wrote again (GitOps)
    saved = tmp_path / "reviewed.plan.json"
    assert plan.run("plan", "--out", str(saved))[0] == 0
    rows(url, "INSERT INTO tenants (name, slug) VALUES ('after-the-review', 'after-the-review')")
    counted(url, "tenants", counts["tenants"] + 2, column="n_tup_ins")
    code, out = run_cli("apply", saved)
    assert code == 0 and "tenants: written in PostgreSQL since the last copy" in out, out

    # orchestrate verify compares every table, and says which differences are of that kind
    rows(url, "INSERT INTO deployments (tenant_id, name) VALUES (1, 'after-the-switch')")
    counted(url, "deployments", counts["deployments"] + 1, column="n_tup_ins")
    code, out = plan.run("verify")
    assert code == 1, out
    marks = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.split()[:1] in ([t] for t in TABLES)}
    assert marks == {"tenants": "DIFFERENT", "deployments": "DIFFERENT", "deployment_logs": "equal"}, out
    assert out.count("it was written in PostgreSQL since the last copy, its source unchanged") == 2, out
    # while an apply whose verify compares the data says they are the application's now
    plan.path.write_text(plan.path.read_text().replace('verify: {url: "{{ secrets.url }}"}',
                                                       'verify: {url: "{{ secrets.url }}", every_apply: true}'))
    code, out = plan.run("apply")
    assert code == 0, out
    assert "verified 1 table(s)" in out and "2 table(s) written in PostgreSQL since the copy" in out, out
    plan.write(verify=True)

    # a source change in a table the application did not write: reloaded as before
    with sqlite3.connect(source) as src:
        src.execute("UPDATE deployment_logs SET message = 'changed in SQLite' WHERE id = 3")
    code, out = plan.run("apply")
    assert code == 0, out
    assert rows(url, "SELECT message FROM deployment_logs WHERE id = 3")[0][0] == "changed in SQLite"
    assert rows(url, "SELECT count(*) FROM tenants WHERE slug = 'after-the-switch'")[0][0] == 1

    # both sides written: a conflict, refused, the application's row kept
    with sqlite3.connect(source) as src:
        src.execute("UPDATE tenants SET name = 'changed in SQLite' WHERE id = 1")
    code, out = plan.run("apply")
    assert code == 1, out
    assert "tenants holds rows that the last copy did not leave there" in out, out
    assert rows(url, "SELECT count(*) FROM tenants WHERE slug = 'after-the-switch'")[0][0] == 1


def test_a_write_the_server_has_not_counted_yet_does_not_fail_the_apply(reference, tmp_path):
    """The server counts a write when its session reports it; until then copy-data's counters say
    unwritten. The apply's verify, finding the table different from the source, takes the
    checksum before it calls it a difference: written in PostgreSQL since the copy, so not
    compared. orchestrate verify still reports it."""
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url, verify=True)
    plan.path.write_text(plan.path.read_text().replace('verify: {url: "{{ secrets.url }}"}',
                                                       'verify: {url: "{{ secrets.url }}", every_apply: true}'))
    assert plan.run("apply")[0] == 0
    assert plan.run("apply")[0] == 0                     # the counters recorded
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET track_counts = off")           # this write is never counted
        conn.execute("INSERT INTO tenants (name, slug) VALUES ('uncounted', 'uncounted')")
    code, out = plan.run("apply")
    assert code == 0, out
    assert "1 table(s) written in PostgreSQL since the copy, not compared with the source" in out, out
    code, out = plan.run("verify")                       # the audit still finds it, and says what it is
    assert code == 1 and "it was written in PostgreSQL since the last copy, its source unchanged" in out, out


def test_a_copy_whose_verification_never_ran_is_verified_by_the_next_apply(reference, tmp_path):
    """An apply that stops between a reload and its verify step (killed, or --only data) leaves
    the verification owed: the next apply verifies the data instead of taking "nothing changed
    before it" for verified."""
    source, url, _ = reference
    plan = plan_file(tmp_path, source, url, verify=True)
    code, out = plan.run("apply")
    assert code == 0 and "verified 3 table(s)" in out, out
    with sqlite3.connect(source) as src:
        src.execute("UPDATE deployment_logs SET message = 'changed in SQLite' WHERE id = 6")
    code, out = plan.run("apply", "--only", "data")
    assert code == 0 and "copied 20,000 rows into 1 table(s)" in out and "verified" not in out, out
    code, out = plan.run("apply")
    assert code == 0 and "verified 3 table(s)" in out and "nothing changed before it" not in out, out
    code, out = plan.run("apply")
    assert code == 0 and "nothing changed before it" in out, out


def test_a_table_the_application_emptied_is_not_filled_again(reference, tmp_path):
    """After the switch the application deleted every row of a table; its source is unchanged.
    Copying it again would bring the deleted rows back: ok, with a note, and nothing written."""
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url)
    assert plan.run("apply")[0] == 0
    assert plan.run("apply")[0] == 0                     # the counters recorded
    rows(url, "DELETE FROM deployment_logs")
    counted(url, "deployment_logs", counts["deployment_logs"], column="n_tup_del")
    for _ in range(2):
        code, out = plan.run("apply")
        assert code == 0, out
        assert "deployment_logs: written in PostgreSQL since the last copy (0 rows now, 20000 after the copy)" in out, out
        assert rows(url, "SELECT count(*) FROM deployment_logs")[0][0] == 0
    assert plan.run("plan", "--detailed-exitcode")[0] == 0


def test_rows_written_to_postgres_are_never_overwritten_silently(reference, tmp_path):
    source, url, _ = reference
    plan = plan_file(tmp_path, source, url)
    assert plan.run("apply")[0] == 0
    rows(url, "INSERT INTO tenants (name, slug) VALUES ('written-in-pg', 'written-in-pg') RETURNING id")
    with sqlite3.connect(source) as src:
        src.execute("UPDATE tenants SET name = 'changed' WHERE id = 1")
    code, out = plan.run("apply")
    assert code == 1, out
    assert "tenants holds rows that the last copy did not leave there" in out and "overwrite: true" in out
    assert rows(url, "SELECT count(*) FROM tenants WHERE slug = 'written-in-pg'")[0][0] == 1
    plan.write(overwrite=True)
    code, out = plan.run("apply")
    assert code == 1 and "a backup must be taken before copy-data overwrite: true" in out, out
    assert rows(url, "SELECT count(*) FROM tenants WHERE slug = 'written-in-pg'")[0][0] == 1
    code, out = plan.run("apply", "--no-backup")
    assert code == 0, out
    assert rows(url, "SELECT count(*) FROM tenants WHERE slug = 'written-in-pg'")[0][0] == 0
    assert rows(url, "SELECT name FROM tenants WHERE id = 1")[0][0] == "changed"
    exact(source, url)


def test_kill_9_in_the_middle_of_a_large_table_then_apply_completes(server, tmp_path):
    source = tmp_path / "big.db"
    counts = make_reference_db(source, 300000)
    url = server.url(server.create())
    migrate(url)
    plan = plan_file(tmp_path, source, url)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "apply", str(plan.path)], env=os.environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        active = rows(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY \"deployment_logs\"%'")[0][0]
        if active:
            time.sleep(0.3)
            break
        time.sleep(0.05)
    else:
        pytest.fail("never saw the COPY of deployment_logs")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows(url, "SELECT count(*) FROM deployment_logs")[0][0] in (0, counts["deployment_logs"])
    code, out = plan.run("apply")
    assert code == 0, out
    for table, count in counts.items():
        assert rows(url, f"SELECT count(*) FROM {table}")[0][0] == count
    exact(source, url)
    assert plan.run("plan", "--detailed-exitcode")[0] == 0


def test_dangling_references_error_null_and_skip(server, tmp_path):
    source = tmp_path / "dangling.db"
    with sqlite3.connect(source) as src:
        src.executescript("""
            CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
            CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id), note TEXT);
            INSERT INTO parent VALUES (1, 'one'), (2, 'two');
            INSERT INTO child VALUES (10, 1, 'ok'), (11, 3, 'dangling'), (12, NULL, 'none'), (13, 4, 'dangling too');
            """)
    for mode, expected in (("error", None), ("null", [(10, 1), (11, None), (12, None), (13, None)]),
                           ("skip", [(10, 1), (12, None)])):
        url = server.url(server.create())
        rows(url, "CREATE TABLE parent (id int PRIMARY KEY, name text)")
        rows(url, "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent(id), note text)")
        plan = plan_file(tmp_path, source, url, on_dangling=mode)
        code, out = plan.run("plan")
        assert "child: 2 row(s) reference parent rows that do not exist (parent_id; e.g. id=11, id=13)" in out, out
        code, out = plan.run("apply")
        if expected is None:
            assert code == 1 and "child: 2 row(s) reference parent rows that do not exist" in out, out
            assert "Set on_dangling: null (set the reference to NULL) or skip" in out
            assert rows(url, "SELECT count(*) FROM child")[0][0] == 0
            continue
        assert code == 0, out
        assert rows(url, "SELECT id, parent_id FROM child ORDER BY id") == expected
        report = plan.lock()["observed"]["tables"]["child"]
        key = "nulled" if mode == "null" else "skipped"
        assert report[key] == {"rows": 2, "sample": ["id=11", "id=13"]}


def test_single_transaction_mode(reference, tmp_path):
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url, transaction="single")
    assert plan.run("apply")[0] == 0
    exact(source, url)


HARD_SQLITE = r"""
CREATE TABLE flags (id INTEGER PRIMARY KEY, b BOOLEAN);
INSERT INTO flags VALUES (1, 1), (2, 0), (3, '1'), (4, '0'), (5, 'true'), (6, 'false'), (7, 't'), (8, 'f'),
                         (9, 'yes'), (10, 'no'), (11, 'TRUE'), (12, NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME, wall DATETIME, day DATE);
INSERT INTO events VALUES
  (1, '2024-05-28 11:38:31', '2024-05-28 11:38:31', '2024-05-28'),
  (2, '2024-05-28T11:38:31.123456', '2024-05-28T11:38:31.5', '2024-05-28'),
  (3, '2024-05-28 13:38:31+02:00', '2024-05-28 13:38:31+02:00', '2024-05-28 00:00:00'),
  (4, '2024-05-28T11:38:31Z', '2024-05-28T11:38:31Z', 1716854400),
  (5, 1716896311, 1716896311, NULL),
  (6, 1716896311.25, '1716896311', NULL),
  (7, '1716896311', NULL, NULL);
CREATE TABLE numbers (id INTEGER PRIMARY KEY, n INTEGER, big BIGINT, f FLOAT, r REAL, amount NUMERIC);
INSERT INTO numbers VALUES (1, '42', '9007199254740993', 'NaN', 1.5, '12.345'),
                           (2, ' 7 ', 5, 'Infinity', 'Infinity', 7),
                           (3, 5.0, -1, '-Infinity', '-1.25', '-0.005'),
                           (4, NULL, NULL, 1e300, NULL, NULL);
CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB, note TEXT);
INSERT INTO blobs VALUES (1, x'00ff10', 'plain'), (2, 'text in a blob column', 42), (3, NULL, 1.5);
CREATE TABLE "Order" ("Select" INTEGER PRIMARY KEY, "MixedCase" TEXT, "user" TEXT);
INSERT INTO "Order" VALUES (1, 'Mixed', 'reserved');
CREATE TABLE composite (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b));
INSERT INTO composite VALUES (1, 'x', 'one'), (1, 'y', 'two'), (2, 'x', 'three');
CREATE TABLE tree (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES tree(id), name TEXT);
INSERT INTO tree VALUES (1, 3, 'child before its parent'), (2, NULL, 'root'), (3, 2, 'middle');
CREATE TABLE norowid (code TEXT PRIMARY KEY, label TEXT) WITHOUT ROWID;
INSERT INTO norowid VALUES ('b', 'bee'), ('a', 'ay');
CREATE TABLE auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
INSERT INTO auto VALUES (1, 'one'), (5, 'five'), (9, 'nine');
CREATE TABLE serials (id INTEGER PRIMARY KEY, v TEXT);
INSERT INTO serials VALUES (3, 'three'), (100, 'hundred');
"""

HARD_POSTGRES = """
CREATE TABLE flags (id int PRIMARY KEY, b boolean);
CREATE TABLE events (id int PRIMARY KEY, at timestamptz, wall timestamp, day date);
CREATE TABLE numbers (id int PRIMARY KEY, n integer, big bigint, f double precision, r real, amount numeric(10,2));
CREATE TABLE blobs (id int PRIMARY KEY, data bytea, note text);
CREATE TABLE "Order" ("Select" int PRIMARY KEY, "MixedCase" text, "user" text);
CREATE TABLE composite (a int, b text, v text, PRIMARY KEY (a, b));
CREATE TABLE tree (id int PRIMARY KEY, parent_id int REFERENCES tree(id), name text);
CREATE TABLE norowid (code text PRIMARY KEY, label text);
CREATE TABLE auto (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE serials (id serial PRIMARY KEY, v text);
"""


def test_hard_cases_land_as_documented(server, tmp_path):
    source = tmp_path / "hard.db"
    with sqlite3.connect(source) as src:
        src.executescript(HARD_SQLITE)
    url = server.url(server.create())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(HARD_POSTGRES)
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("plan")
    assert code == 0 and "problem" not in out, out
    code, out = plan.run("apply")
    assert code == 0, out
    assert [r[0] for r in rows(url, "SELECT b FROM flags ORDER BY id")] == \
        [True, False, True, False, True, False, True, False, True, False, True, None]
    # the server runs in America/New_York: naive text is still read in the step's zone (UTC)
    at = rows(url, "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM events ORDER BY id")
    assert at == [(1, "2024-05-28 11:38:31.000000"), (2, "2024-05-28 11:38:31.123456"), (3, "2024-05-28 11:38:31.000000"),
                  (4, "2024-05-28 11:38:31.000000"), (5, "2024-05-28 11:38:31.000000"),
                  (6, "2024-05-28 11:38:31.250000"), (7, "2024-05-28 11:38:31.000000")]
    wall = rows(url, "SELECT to_char(wall, 'YYYY-MM-DD HH24:MI:SS.US'), day::text FROM events ORDER BY id")
    assert wall[:6] == [("2024-05-28 11:38:31.000000", "2024-05-28"), ("2024-05-28 11:38:31.500000", "2024-05-28"),
                        ("2024-05-28 11:38:31.000000", "2024-05-28"), ("2024-05-28 11:38:31.000000", "2024-05-28"),
                        ("2024-05-28 11:38:31.000000", None), ("2024-05-28 11:38:31.000000", None)]
    assert rows(url, "SELECT n, big, f::text, r::text, amount::text FROM numbers ORDER BY id") == [
        (42, 9007199254740993, "NaN", "1.5", "12.35"), (7, 5, "Infinity", "Infinity", "7.00"),
        (5, -1, "-Infinity", "-1.25", "-0.01"), (None, None, "1e+300", None, None)]
    assert rows(url, "SELECT id, encode(data, 'hex'), note FROM blobs ORDER BY id") == [
        (1, "00ff10", "plain"), (2, b"text in a blob column".hex(), "42"), (3, None, "1.5")]
    assert rows(url, 'SELECT "Select", "MixedCase", "user" FROM "Order"') == [(1, "Mixed", "reserved")]
    assert rows(url, "SELECT a, b, v FROM composite ORDER BY a, b") == [(1, "x", "one"), (1, "y", "two"), (2, "x", "three")]
    assert rows(url, "SELECT id, parent_id FROM tree ORDER BY id") == [(1, 3), (2, None), (3, 2)]
    assert rows(url, "SELECT code, label FROM norowid ORDER BY code") == [("a", "ay"), ("b", "bee")]
    assert plan.run("plan", "--detailed-exitcode")[0] == 0
    assert rows(url, "INSERT INTO auto (v) VALUES ('next') RETURNING id") == [(10,)]
    assert rows(url, "INSERT INTO serials (v) VALUES ('next') RETURNING id") == [(101,)]
    code, out = plan.run("plan", "--detailed-exitcode")     # the application's rows: nothing to copy
    assert code == 0 and "auto: written in PostgreSQL since the last copy" in out, out


FAILURES = [
    ("bad-boolean", "CREATE TABLE t (id INTEGER PRIMARY KEY, b BOOLEAN); INSERT INTO t VALUES (1, 1), (2, 'maybe');",
     "CREATE TABLE t (id int PRIMARY KEY, b boolean)", "t: column b: 1 value(s) cannot be loaded, e.g. row id=2: 'maybe' is not a boolean"),
    ("overlong", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t VALUES (1, 'ok'), (3, 'abcdefgh');",
     "CREATE TABLE t (id int PRIMARY KEY, name varchar(5))",
     "t: column name: 1 value(s) cannot be loaded, e.g. row id=3: a value of 8 characters is longer than character varying(5)"),
    ("invalid-utf8", "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT); INSERT INTO t VALUES (1, 'ok'), (2, CAST(x'61ff62' AS TEXT));",
     "CREATE TABLE t (id int PRIMARY KEY, note text)", "t: row id=2: column note: invalid UTF-8 at byte 1"),
    ("impossible-date", "CREATE TABLE t (id INTEGER PRIMARY KEY, at DATETIME); INSERT INTO t VALUES (1, '2024-02-28 10:00:00'), (2, '2024-02-30 10:00:00');",
     "CREATE TABLE t (id int PRIMARY KEY, at timestamptz)",
     "t: column at: 1 value(s) cannot be loaded, e.g. row id=2: '2024-02-30 10:00:00' is not a timestamp (day is out of range for month)"),
    ("out-of-range", "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO t VALUES (1, 1), (2, 3000000000);",
     "CREATE TABLE t (id int PRIMARY KEY, n integer)", "t: column n: 1 value(s) cannot be loaded, e.g. row id=2: 3000000000 is out of range for integer"),
    ("invalid-json", "CREATE TABLE t (id INTEGER PRIMARY KEY, doc JSON); INSERT INTO t VALUES (1, '{}'), (2, '{nope');",
     "CREATE TABLE t (id int PRIMARY KEY, doc jsonb)", "t: column doc: 1 value(s) cannot be loaded, e.g. row id=2: invalid JSON"),
    ("nul-bytes", "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT); INSERT INTO t VALUES (1, 'ok'), (2, 'a' || char(0) || 'b');",
     "CREATE TABLE t (id int PRIMARY KEY, note text)", "t: column note: 1 value(s) cannot be loaded, e.g. row id=2: text contains NUL bytes"),
    ("not-null", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t VALUES (1, 'a'), (2, NULL);",
     "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)", "t: column name: 1 value(s) cannot be loaded, e.g. row id=2: NULL, but t.name is NOT NULL"),
    ("unique", "CREATE TABLE t (id INTEGER PRIMARY KEY, slug TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'a');",
     "CREATE TABLE t (id int PRIMARY KEY, slug text UNIQUE)", "t: row id=3: duplicate key value violates unique constraint \"t_slug_key\""),
]


@pytest.mark.parametrize("sqlite_ddl,pg_ddl,message", [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_hard_case_failures_name_table_key_and_column(server, tmp_path, sqlite_ddl, pg_ddl, message):
    source = tmp_path / "bad.db"
    with sqlite3.connect(source) as src:
        src.executescript(sqlite_ddl)
    url = server.url(server.create())
    rows(url, pg_ddl)
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply")
    assert code == 1, out
    assert message in out, out
    assert "Traceback" not in out
    assert rows(url, "SELECT count(*) FROM t")[0][0] == 0, "nothing of the table half-loaded"


def test_sqlite_generated_columns_are_data_where_the_target_keeps_them(server, tmp_path):
    """SQLite's generated columns (PRAGMA table_info leaves them out: their values were dropped
    and verify said equal) are copied into plain target columns and verified; a column the target
    generates itself is left to the server; a plain column into a generated one stops the plan."""
    source = tmp_path / "generated.db"
    with sqlite3.connect(source) as src:
        src.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, price INT, qty INT, "
                          "total INT AS (price * qty) STORED, label TEXT AS ('item ' || id) VIRTUAL, "
                          "doubled INT AS (price * 2));"
                          "INSERT INTO items (id, price, qty) VALUES (1, 5, 3), (2, 7, NULL), (3, 2, 10);")
    url = server.url(server.create())
    rows(url, "CREATE TABLE items (id int PRIMARY KEY, price int, qty int, total int, label text, "
              "doubled int GENERATED ALWAYS AS (price * 2) STORED)")
    plan = plan_file(tmp_path, source, url, verify=True)
    code, out = plan.run("apply")
    assert code == 0 and "copied 3 rows" in out, out
    assert rows(url, "SELECT id, total, label, doubled FROM items ORDER BY id") == [
        (1, 15, "item 1", 10), (2, None, "item 2", 14), (3, 20, "item 3", 4)]
    code, out = plan.run("apply")
    assert code == 0 and "Nothing changed" in out, out
    rows(url, "UPDATE items SET total = 16 WHERE id = 1")
    code, out = plan.run("verify")
    assert code == 1 and "1 row(s) differ (1 changed)" in out and "id=1" in out, out

    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as src:
        src.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, price INT, qty INT, total INT, label TEXT, "
                          "doubled INT); INSERT INTO items VALUES (1, 5, 3, 15, 'x', 99);")
    url = server.url(server.create())
    rows(url, "CREATE TABLE items (id int PRIMARY KEY, price int, qty int, total int, label text, "
              "doubled int GENERATED ALWAYS AS (price * 2) STORED)")
    plan = plan_file(tmp_path, plain, url)
    code, out = plan.run("plan")
    assert code == 1 and "items.doubled is a generated column" in out and "drop_columns" in out, out
    plan.write(drop_columns={"items": ["doubled"]})
    code, out = plan.run("apply")
    assert code == 0 and rows(url, "SELECT doubled FROM items") == [(10,)], out


def test_uuids_stored_as_their_16_bytes_are_copied_and_verified(server, tmp_path):
    """A UUID as a 16-byte BLOB (Rust's sqlx, sqlalchemy-utils' binary UUIDType) was refused as
    "not a UUID"; it now lands as that UUID beside the text forms, and verify compares it."""
    ids = [uuid.UUID(int=n * 0x1234567890ABCDEF1234567 + 5) for n in range(1, 5)]
    source = tmp_path / "uuids.db"
    with sqlite3.connect(source) as src:
        src.execute("CREATE TABLE things (id INTEGER PRIMARY KEY, u BLOB, ref TEXT)")
        src.executemany("INSERT INTO things VALUES (?, ?, ?)", [
            (1, ids[0].bytes, str(ids[0])), (2, str(ids[1]), ids[1].hex), (3, ids[2].hex.upper(), None),
            (4, None, str(ids[3]).upper())])
    url = server.url(server.create())
    rows(url, "CREATE TABLE things (id int PRIMARY KEY, u uuid, ref uuid)")
    plan = plan_file(tmp_path, source, url, verify=True)
    code, out = plan.run("apply")
    assert code == 0 and "verified 1 table(s)" in out, out
    assert rows(url, "SELECT u, ref FROM things ORDER BY id") == [
        (ids[0], ids[0]), (ids[1], ids[1]), (ids[2], None), (None, ids[3])]
    rows(url, "UPDATE things SET u = %s WHERE id = 1", ids[3])
    code, out = plan.run("verify")
    assert code == 1 and "1 row(s) differ (1 changed)" in out and "id=1" in out, out

    text16 = tmp_path / "text16.db"       # 16 characters of text are no UUID: still refused
    with sqlite3.connect(text16) as src:
        src.executescript("CREATE TABLE things (id INTEGER PRIMARY KEY, u TEXT, ref TEXT);"
                          "INSERT INTO things VALUES (1, 'sixteen-chars-xx', NULL);")
    url = server.url(server.create())
    rows(url, "CREATE TABLE things (id int PRIMARY KEY, u uuid, ref uuid)")
    code, out = plan_file(tmp_path, text16, url).run("apply")
    assert code == 1 and "'sixteen-chars-xx' is not a UUID" in out, out


def test_strip_nul_drops_nul_bytes(server, tmp_path):
    source = tmp_path / "nul.db"
    with sqlite3.connect(source) as src:
        src.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT); INSERT INTO t VALUES (1, 'a' || char(0) || 'b');")
    url = server.url(server.create())
    rows(url, "CREATE TABLE t (id int PRIMARY KEY, note text)")
    plan = plan_file(tmp_path, source, url, strip_nul=True)
    assert plan.run("apply")[0] == 0
    assert rows(url, "SELECT note FROM t") == [("ab",)]


@pytest.mark.parametrize("damage,table,detail", [
    ("DELETE FROM deployment_logs WHERE id = 4242", "deployment_logs",
     "1 row(s) differ (1 missing in the target); first differing key range: id=4242"),
    ("UPDATE tenants SET name = 'tampered' WHERE id = 3", "tenants",
     "1 row(s) differ (1 changed); first differing key range: id=3"),
    ("SELECT setval('deployment_logs_id_seq', 5)", None,
     "sequences: deployment_logs.id: public.deployment_logs_id_seq would hand out 6, but the highest id is 20000"),
], ids=["deleted-row", "changed-value", "sequence-set-back"])
def test_verify_fails_naming_table_and_key(reference, tmp_path, damage, table, detail):
    source, url, _ = reference
    plan = plan_file(tmp_path, source, url)
    plan.write(verify=True)
    code, out = plan.run("apply")
    assert code == 0 and "ok:      check (verify): verified 3 table(s)" in out, out
    code, out = plan.run("verify")
    assert code == 0 and "Verified: nothing differs." in out, out
    rows(url, damage)
    code, out = plan.run("verify")
    assert code == 1 and detail in out and "Verification FAILED" in out, out
    if table:
        assert any(line.split()[:1] == [table] and line.endswith("DIFFERENT") for line in out.splitlines()), out
    code, out = plan.run("verify", "--json")
    step = next(s for s in json.loads(out)["steps"] if s["type"] == "verify")
    assert step["details"]["ok"] is False and any(detail in p for p in step["problems"])


def test_verify_leaves_nothing_behind(reference, tmp_path):
    source, url, _ = reference
    plan = plan_file(tmp_path, source, url)
    plan.write(verify=True)
    assert plan.run("apply")[0] == 0
    before = rows(url, "SELECT relname FROM pg_class WHERE relkind = 'r' ORDER BY 1")
    xid = current_xid(url)
    assert plan.run("verify")[0] == 0
    assert rows(url, "SELECT relname FROM pg_class WHERE relkind = 'r' ORDER BY 1") == before
    assert written_since(url, xid) == {t: 0 for t in TABLES}


def test_a_partitioned_target_is_loaded_through_its_partitions_and_reloaded(server, tmp_path):
    """A partitioned table takes no COPY FREEZE: it is loaded as any other table, the rows
    routed to its partitions, and reloaded when its source changes."""
    source = tmp_path / "part.db"
    with sqlite3.connect(source) as src:
        src.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, v TEXT)")
        src.executemany("INSERT INTO events VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 301)])
    url = server.url(server.create())
    rows(url, "CREATE TABLE events (id int PRIMARY KEY, v text) PARTITION BY RANGE (id); "
              "CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (150); "
              "CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (150) TO (1000)")
    plan = plan_file(tmp_path, source, url, verify=True)
    code, out = plan.run("apply")
    assert code == 0 and "copied 300 rows into 1 table(s)" in out and "verified 1 table(s)" in out, out
    assert rows(url, "SELECT count(*) FROM events_low")[0][0] == 149
    with sqlite3.connect(source) as src:
        src.execute("UPDATE events SET v = 'changed' WHERE id = 200")
    code, out = plan.run("apply")
    assert code == 0 and "copied 300 rows into 1 table(s)" in out, out
    assert rows(url, "SELECT v FROM events WHERE id = 200")[0][0] == "changed"
    assert plan.run("apply")[0] == 0 and plan.run("plan", "--detailed-exitcode")[0] == 0


def test_a_parent_deleted_with_its_children_in_the_source_reloads_both_in_one_transaction(reference, tmp_path):
    """The application deleted a tenant with its deployments and their logs (ON DELETE CASCADE)
    in SQLite. The children's old rows in PostgreSQL reference the deleted tenant, so their
    foreign keys are put back by their own reload, in the tenant's transaction, against their
    new rows; before, putting them back right after the tenants failed, on every apply."""
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url, verify=True)
    assert plan.run("apply")[0] == 0
    with sqlite3.connect(source) as src:
        gone = src.execute("SELECT count(*) FROM deployments WHERE tenant_id = 2").fetchone()[0]
        src.execute("DELETE FROM deployment_logs WHERE deployment_id IN (SELECT id FROM deployments WHERE tenant_id = 2)")
        src.execute("DELETE FROM deployments WHERE tenant_id = 2")
        src.execute("DELETE FROM tenants WHERE id = 2")
    assert gone > 0
    code, out = plan.run("apply", "-v")
    assert code == 0 and "verified 3 table(s)" in out, out
    assert "deployments: reloaded too, so loaded in this transaction" in out, out
    exact(source, url)
    assert rows(url, "SELECT count(*) FROM deployments WHERE tenant_id = 2")[0][0] == 0
    assert rows(url, "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' ORDER BY 1") == [
        ("deployment_logs_deployment_id_fkey", True), ("deployments_tenant_id_fkey", True)]
    code, out = plan.run("apply")
    assert code == 0 and "ok:      data" in out, out


def test_a_server_that_refuses_the_statistics_queries_still_copies(reference, tmp_path, monkeypatch):
    """The write counters are read inside the load's transaction: a server that refuses those
    queries costs the counters (the next apply takes the checksum), not the load."""
    import orchestrator.steps.copy_data as copy_data
    monkeypatch.setattr(copy_data, "WRITE_COUNTERS", "SELECT no_such_function(%s::text[])")
    monkeypatch.setattr(copy_data, "XACT_WRITES", "SELECT no_such_function(%s::text[])")
    source, url, counts = reference
    plan = plan_file(tmp_path, source, url, verify=True)
    code, out = plan.run("apply")
    assert code == 0 and "verified 3 table(s)" in out, out
    exact(source, url)
    assert not any(e.get("counters") for e in plan.lock()["observed"]["tables"].values())
    code, out = plan.run("apply")
    assert code == 0 and "ok:      data" in out, out


def test_full_text_indexes_are_not_data_and_a_virtual_table_holding_rows_is_named(server, tmp_path):
    """An application's SQLite with full-text search: an FTS5 index over a table (kept by a
    trigger), a view, and an FTS5 table that holds its own rows. The index and the shadow tables
    SQLite stores virtual tables in are not copied (a note says why); the table holding rows
    with no table in the target is named, by its own name, as any table would be."""
    source = tmp_path / "app.db"
    with sqlite3.connect(source) as src:
        src.executescript("""
            CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);
            CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), title TEXT, body TEXT);
            CREATE VIRTUAL TABLE posts_fts USING fts5(title, body, content='posts', content_rowid='id');
            CREATE TRIGGER posts_ai AFTER INSERT ON posts BEGIN
                INSERT INTO posts_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END;
            CREATE VIEW named_posts AS SELECT p.title, u.name FROM posts p JOIN users u ON u.id = p.user_id;
            CREATE VIRTUAL TABLE notes USING fts5(body);
            INSERT INTO users (name) VALUES ('ann'), ('bob');
            INSERT INTO posts VALUES (1, 1, 'hello', 'world'), (2, 2, 'it''s', 'back\\slash');
            INSERT INTO notes VALUES ('a note only the index holds');
        """)
    url = server.url(server.create())
    rows(url, "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL)")
    rows(url, "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users(id), title text, body text)")
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply")
    assert code == 1 and "source table(s) notes have no table in the target schema" in out, out
    assert "_data" not in out and "_content" not in out and "posts_fts" not in out, out
    assert rows(url, "SELECT count(*) FROM posts") == [(0,)]
    plan.write(verify=True, exclude=["notes"])
    code, out = plan.run("plan")
    assert code == 0 and "posts_fts: a full-text index (FTS5) over posts, holds no data of its own: not copied" in out, out
    code, out = plan.run("apply")
    assert code == 0 and "copied 4 rows into 2 table(s)" in out and "verified 2 table(s)" in out, out
    assert rows(url, "SELECT id, title, body FROM posts ORDER BY id") == [(1, "hello", "world"), (2, "it's", "back\\slash")]
    code, out = plan.run("apply")
    assert code == 0 and "changed=0" in out, out
    code, out = plan.run("verify")
    assert code == 0 and "Verified: nothing differs." in out, out


def test_durations_as_sqlalchemy_stores_them_without_a_native_interval_become_intervals(server, tmp_path):
    """SQLAlchemy's Interval on SQLite is a datetime: 1970-01-01 plus the duration. Into an
    interval column it is that duration; text PostgreSQL reads goes as it is; a bare number (its
    unit unknown: seconds to PostgreSQL, microseconds to Django) is refused, naming the row."""
    from datetime import timedelta
    source = tmp_path / "durations.db"
    with sqlite3.connect(source) as src:
        src.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, took DATETIME)")
        src.executemany("INSERT INTO jobs VALUES (?, ?)", [
            (1, "1970-01-01 00:05:00.000000"), (2, "1970-01-03 01:00:00.500000"), (3, "1969-12-31 23:55:00.000000"),
            (4, "1 day 02:00:00"), (5, "00:00:00.25"), (6, None)])
    url = server.url(server.create())
    rows(url, "CREATE TABLE jobs (id serial PRIMARY KEY, took interval)")
    plan = plan_file(tmp_path, source, url)
    plan.write(verify=True)
    code, out = plan.run("apply")
    assert code == 0 and "copied 6 rows" in out, out
    assert rows(url, "SELECT id, took FROM jobs ORDER BY id") == [
        (1, timedelta(minutes=5)), (2, timedelta(days=2, hours=1, seconds=0.5)), (3, timedelta(minutes=-5)),
        (4, timedelta(days=1, hours=2)), (5, timedelta(seconds=0.25)), (6, None)]
    code, out = plan.run("verify", "-v")
    assert code == 0 and "jobs: checksums equal" in out, out
    rows(url, "UPDATE jobs SET took = took + interval '1 microsecond' WHERE id = 2")
    code, out = plan.run("verify")
    assert code == 1 and "1 row(s) differ (1 changed); first differing key range: id=2" in out, out
    with sqlite3.connect(source) as src:
        src.execute("INSERT INTO jobs VALUES (7, 300)")
    plan.write(overwrite=True)
    code, out = plan.run("apply", "--no-backup")
    assert code == 1 and "jobs: row id=7: column took: 300 is a number, and a duration's unit is not known" in out, out
    assert rows(url, "SELECT took FROM jobs WHERE id = 2") == [(timedelta(days=2, hours=1, seconds=0.5, microseconds=1),)]
