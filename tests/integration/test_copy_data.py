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

    def write(self, **options) -> None:
        body = {"source": str(self.source), "url": "{{ secrets.url }}", **options}
        self.path.write_text(textwrap.dedent(f"""\
            name: copy-test
            secrets: {{url: {{env: {self.env}}}}}
            steps:
              - name: data
                copy-data: {json.dumps(body)}
            """))

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
    assert f"copied {sum(counts.values())} rows into 3 table(s)" in out
    for table, count in counts.items():
        assert rows(url, f"SELECT count(*) FROM {table}")[0][0] == count
    assert rows(url, "SELECT count(*) FROM alembic_version")[0][0] == 1, "alembic_version is never copied"
    exact(source, url)
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
            assert "e.g. row id=11; id=13" in out and "hint: set on_dangling: null or skip" in out
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
