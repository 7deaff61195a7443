"""copy-data refuses all-or-nothing, leaves no table behind, says what it repaired, and reads what
PostgreSQL reads: against a real PostgreSQL and real SQLite files."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.integration.test_copy_data import plan_file, rows, server  # noqa: F401  (the module's server)

pytestmark = pytest.mark.integration


def sqlite_db(path, script: str):
    with sqlite3.connect(path) as src:
        src.executescript(script)
    return path


def target(server, ddl: str) -> str:  # noqa: F811
    url = server.url(server.create())
    rows(url, ddl)
    return url


MANY_PROBLEMS_SQLITE = """
CREATE TABLE a_parent (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO a_parent VALUES (1, 'one'), (2, 'two');
CREATE TABLE b_child (id INTEGER PRIMARY KEY, parent_id INTEGER, other_id INTEGER, code TEXT, flag BOOLEAN,
                      name TEXT);
INSERT INTO b_child VALUES (10, 1, 1, 'ok', 1, 'fine'),
                           (11, 7, 1, 'ok', 0, 'dangling parent'),
                           (12, 1, 9, 'ok', 'on', 'dangling other'),
                           (13, 1, 1, 'much-too-long', 'maybe', NULL);
"""
MANY_PROBLEMS_PG = """
CREATE TABLE a_parent (id int PRIMARY KEY, name text);
CREATE TABLE b_child (id int PRIMARY KEY, parent_id int REFERENCES a_parent(id), other_id int REFERENCES a_parent(id),
                      code varchar(5), flag boolean, name text NOT NULL);
"""


def test_every_problem_is_named_at_once_and_nothing_is_written(server, tmp_path):  # noqa: F811
    source = sqlite_db(tmp_path / "many.db", MANY_PROBLEMS_SQLITE)
    url = target(server, MANY_PROBLEMS_PG)
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("plan")
    assert code == 1, out
    code, out = plan.run("apply")
    assert code == 1, out
    # both dangling columns, the overlong value, the word that is no boolean, the missing NOT NULL value
    assert "b_child: 1 row(s) reference a_parent rows that do not exist (parent_id; e.g. id=11)" in out, out
    assert "b_child: 1 row(s) reference a_parent rows that do not exist (other_id; e.g. id=12)" in out, out
    assert "b_child: column code: 1 value(s) cannot be loaded, e.g. row id=13: a value of 13 characters" in out
    assert "b_child: column flag: 1 value(s) cannot be loaded, e.g. row id=13: 'maybe' is not a boolean" in out
    assert "b_child: column name: 1 value(s) cannot be loaded, e.g. row id=13: NULL, but b_child.name is NOT NULL" in out
    assert "5 problems; the step changed nothing" in out and "Traceback" not in out
    # the parent table, which had no problem and comes first, was not written either
    assert rows(url, "SELECT count(*) FROM a_parent") == [(0,)]
    assert rows(url, "SELECT count(*) FROM b_child") == [(0,)]
    lock = plan.path.with_suffix(".lock")
    assert not lock.exists() or "data" not in json.loads(lock.read_text())["steps"], "nothing recorded"


def test_a_source_table_without_a_target_table_is_an_error_unless_excluded_or_renamed(server, tmp_path):  # noqa: F811
    source = sqlite_db(tmp_path / "extra.db", """
        CREATE TABLE kept (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO kept VALUES (1, 'a');
        CREATE TABLE legacy_notes (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO legacy_notes VALUES (1, 'b');
        CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES ('abc');
        """)
    url = target(server, "CREATE TABLE kept (id int PRIMARY KEY, v text); CREATE TABLE notes (id int PRIMARY KEY, v text)")
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply")
    assert code == 1, out
    assert "source table(s) legacy_notes have no table in the target schema" in out and "exclude:" in out, out
    assert "alembic_version" not in out.split("error:")[1]
    assert rows(url, "SELECT count(*) FROM kept") == [(0,)]
    plan.write(exclude=["legacy_notes"])
    code, out = plan.run("apply")
    assert code == 0, out
    assert rows(url, "SELECT count(*) FROM kept") == [(1,)]
    plan.write(rename={"legacy_notes": "notes"})
    code, out = plan.run("apply")
    assert code == 0, out
    assert rows(url, "SELECT v FROM notes") == [("b",)]


def test_strip_nul_counts_every_repair_in_the_output_and_the_lockfile(server, tmp_path):  # noqa: F811
    source = sqlite_db(tmp_path / "nul.db", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, other TEXT);
        INSERT INTO t VALUES (1, 'a' || char(0) || 'b', 'x'), (2, 'clean', 'y'), (3, 'c' || char(0), 'z' || char(0));
        """)
    url = target(server, "CREATE TABLE t (id int PRIMARY KEY, note text, other text)")
    plan = plan_file(tmp_path, source, url, strip_nul=True)
    code, out = plan.run("plan")
    assert code == 0 and "t: column note: 2 value(s) had NUL bytes stripped (strip_nul: true), e.g. row id=1" in out, out
    code, out = plan.run("apply")
    assert code == 0, out
    assert "t: 2 row(s) with NUL bytes stripped (e.g. id=1; id=3)" in out, out
    assert rows(url, "SELECT note, other FROM t ORDER BY id") == [("ab", "x"), ("clean", "y"), ("c", "z")]
    assert plan.lock()["observed"]["tables"]["t"]["stripped"] == {"rows": 2, "sample": ["id=1", "id=3"]}


def test_booleans_as_postgresql_reads_them(server, tmp_path):  # noqa: F811
    words = [("on", True), ("OFF", False), (" Yes ", True), ("n", False), ("tr", True), ("fa", False), ("1", True)]
    values = ", ".join(f"({i}, '{w}')" for i, (w, _) in enumerate(words, 1))
    source = sqlite_db(tmp_path / "bool.db", f"CREATE TABLE t (id INTEGER PRIMARY KEY, b BOOLEAN); INSERT INTO t VALUES {values};")
    url = target(server, "CREATE TABLE t (id int PRIMARY KEY, b boolean)")
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply")
    assert code == 0, out
    assert [r[0] for r in rows(url, "SELECT b FROM t ORDER BY id")] == [b for _, b in words]
    sqlite_db(source, "INSERT INTO t VALUES (99, 'o');")      # ambiguous: on or off?
    code, out = plan.run("apply")
    assert code == 1 and "row id=99: 'o' is not a boolean" in out, out


def test_autoincrement_sequence_goes_past_ids_sqlite_promised_never_to_reuse(server, tmp_path):  # noqa: F811
    source = sqlite_db(tmp_path / "auto.db", """
        CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
        INSERT INTO t (v) VALUES ('a'), ('b'), ('c'), ('d'), ('e');
        DELETE FROM t WHERE id >= 3;
        """)
    url = target(server, "CREATE TABLE t (id serial PRIMARY KEY, v text)")
    code, out = plan_file(tmp_path, source, url).run("apply")
    assert code == 0, out
    assert rows(url, "INSERT INTO t (v) VALUES ('next') RETURNING id") == [(6,)]


@pytest.mark.parametrize("force_python", [False, True], ids=["as-is", "through-converters"])
def test_numeric_infinity_lands_the_same_whichever_path_the_table_takes(server, tmp_path, force_python):  # noqa: F811
    # an epoch number in a timestamp column sends the whole table through the Python converters
    at = "1716896311" if force_python else "'2024-05-28 11:38:31'"
    source = sqlite_db(tmp_path / "inf.db", f"""
        CREATE TABLE t (id INTEGER PRIMARY KEY, n NUMERIC, at DATETIME);
        INSERT INTO t VALUES (1, 'Infinity', {at}), (2, '-Infinity', {at}), (3, 1.5, {at});
        CREATE TABLE fixed (id INTEGER PRIMARY KEY, n NUMERIC, at DATETIME);
        INSERT INTO fixed VALUES (1, 'Infinity', {at});
        """)
    # PostgreSQL 14 and later hold Infinity in an unconstrained numeric, never in numeric(p, s)
    url = target(server, "CREATE TABLE t (id int PRIMARY KEY, n numeric, at timestamptz);"
                         "CREATE TABLE fixed (id int PRIMARY KEY, n numeric(10, 2), at timestamptz)")
    plan = plan_file(tmp_path, source, url, tables=["t"])
    code, out = plan.run("apply")
    assert code == 0, out
    assert rows(url, "SELECT n::text FROM t ORDER BY id") == [("Infinity",), ("-Infinity",), ("1.5",)]
    plan.write(tables=["fixed"])
    code, out = plan.run("apply")
    assert code == 1 and "row id=1: 'Infinity' is infinite, which numeric(10,2) cannot hold" in out, out


@pytest.mark.parametrize("damage,said", [
    (lambda p: p.write_bytes(b""), "is empty (0 bytes), not a SQLite database"),
    (lambda p: p.write_text("id,name\n1,alice\n"), "is not a SQLite database"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is cut short"),
], ids=["empty", "csv", "cut-in-half"])
def test_a_bad_source_is_one_error_naming_the_file_and_nothing_is_recorded(server, tmp_path, damage, said):  # noqa: F811
    source = sqlite_db(tmp_path / "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
                                            "INSERT INTO t VALUES (1, 'kept');" + "".join(
                                                f"INSERT INTO t VALUES ({i}, '{'x' * 500}');" for i in range(2, 200)))
    url = target(server, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    plan = plan_file(tmp_path, source, url)
    assert plan.run("apply")[0] == 0
    recorded = plan.lock()
    damage(source)
    for command in ("plan", "apply"):
        code, out = plan.run(command)
        assert code == 1 and f"the source {source} {said}" in out and "Traceback" not in out, out
    assert plan.lock() == recorded, "nothing recorded"
    assert rows(url, "SELECT count(*) FROM t") == [(199,)]


def test_a_source_sqlite_refuses_midway_is_one_error(server, tmp_path):  # noqa: F811
    source = sqlite_db(tmp_path / "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);" + "".join(
        f"INSERT INTO t VALUES ({i}, '{'x' * 900}');" for i in range(1, 400)))
    data = bytearray(source.read_bytes())
    data[4096 * 3:4096 * 3 + 64] = b"\xde\xad" * 32      # a damaged page in the middle, the header intact
    source.write_bytes(bytes(data))
    url = target(server, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    code, out = plan_file(tmp_path, source, url).run("apply")
    assert code == 1 and "cannot be read by SQLite" in out and str(source) in out and "Traceback" not in out, out
    assert rows(url, "SELECT count(*) FROM t") == [(0,)]


def test_values_in_messages_are_written_as_a_user_would(server, tmp_path):  # noqa: F811
    source = sqlite_db(tmp_path / "show.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER);"
                                             "INSERT INTO t VALUES (1, 'lots-of-it');")
    url = target(server, "CREATE TABLE t (id int PRIMARY KEY, n integer)")
    code, out = plan_file(tmp_path, source, url).run("apply")
    assert code == 1 and "'lots-of-it' is not an integer" in out and "b'" not in out, out


def test_a_small_copy_reports_its_rate_in_rows(server, tmp_path):  # noqa: F811
    source = sqlite_db(tmp_path / "small.db", "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
    url = target(server, "CREATE TABLE t (id int PRIMARY KEY)")
    code, out = plan_file(tmp_path, source, url).run("apply")
    assert code == 0 and "copied 2 rows into 1 table(s) (" in out and "(0k rows/s)" not in out, out


def test_apply_checks_while_loading_and_commits_nothing_when_a_value_is_refused(server, tmp_path):  # noqa: F811
    """No dangling row: apply's preflight runs while the tables load; the parent, clean and loaded
    first, is rolled back with the rest, and every refused value is named."""
    source = sqlite_db(tmp_path / "values.db",
                       MANY_PROBLEMS_SQLITE.replace("(11, 7, 1,", "(11, 1, 1,").replace("(12, 1, 9,", "(12, 1, 1,"))
    with sqlite3.connect(source) as src:      # a larger child, so that the load and the check overlap
        src.executemany("INSERT INTO b_child VALUES (?, 1, 2, 'ok', 1, 'row')", [(100 + i,) for i in range(50_000)])
    url = target(server, MANY_PROBLEMS_PG)
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply", "-v")
    assert code == 1, out
    assert "reference a_parent rows that do not exist" not in out
    assert "b_child: column code: 1 value(s) cannot be loaded, e.g. row id=13: a value of 13 characters" in out
    assert "b_child: column flag: 1 value(s) cannot be loaded, e.g. row id=13: 'maybe' is not a boolean" in out
    assert "b_child: column name: 1 value(s) cannot be loaded, e.g. row id=13: NULL, but b_child.name is NOT NULL" in out
    assert "3 problems; the step changed nothing" in out and "Traceback" not in out
    assert rows(url, "SELECT count(*) FROM a_parent") == [(0,)]
    assert rows(url, "SELECT count(*) FROM b_child") == [(0,)]
    # (a failed apply records what it left: empty tables, no copy, nothing about to commit)
    tables = (plan.lock().get("observed") or {}).get("tables") or {}
    assert all(not t.get("rows") and "committing" not in t for t in tables.values()), tables
    # plan names the same problems without loading anything
    code, out = plan.run("plan")
    assert code == 1 and "3 problem(s) that stop apply" in out, out


class _SlowCheck:
    """apply's preflight still running until it is waited for."""
    def __init__(self, fn, name):
        self.fn = fn

    def done(self) -> bool:
        return False

    def result(self):
        return self.fn()


class _QuickCheck(_SlowCheck):
    def __init__(self, fn, name):
        self.value = fn()

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


PARENT_CHILD_SQLITE = """
CREATE TABLE a_parent (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO a_parent VALUES (1, 'one'), (2, 'two');
CREATE TABLE b_child (id INTEGER PRIMARY KEY, parent_id INTEGER, code TEXT, flag BOOLEAN, name TEXT);
INSERT INTO b_child VALUES (10, 1, 'ok', 1, 'fine'), (11, 2, 'ok', 0, 'fine too');
"""


@pytest.mark.parametrize("check, together", [(_SlowCheck, True), (_QuickCheck, False)])
def test_units_commit_apart_once_the_check_passed_and_together_while_it_runs(server, tmp_path, monkeypatch,  # noqa: F811
                                                                             check, together):
    import orchestrator.steps.copy_data as copy_data
    monkeypatch.setattr(copy_data, "Background", check)
    source = sqlite_db(tmp_path / "pc.db", PARENT_CHILD_SQLITE)
    # a CHECK only the server judges: the child's load fails after the parent's unit is done
    url = target(server, MANY_PROBLEMS_PG.replace("name text NOT NULL", "name text NOT NULL CHECK (id < 11)")
                 .replace(", other_id int REFERENCES a_parent(id)", ""))
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply", "-v")
    assert code == 1 and "b_child" in out and "Traceback" not in out, out
    assert ("the source's check still runs: the next table joins this transaction" in out) is together, out
    # while the check ran, the parent waited in the same transaction, and rolled back with the child
    assert rows(url, "SELECT count(*) FROM a_parent") == [(0,) if together else (2,)]
    assert rows(url, "SELECT count(*) FROM b_child") == [(0,)]
    rows(url, "ALTER TABLE b_child DROP CONSTRAINT b_child_id_check")
    code, out = plan.run("apply")
    assert code == 0, out
    assert rows(url, "SELECT count(*) FROM a_parent") == [(2,)] and rows(url, "SELECT count(*) FROM b_child") == [(2,)]
    tables = plan.lock()["observed"]["tables"]
    assert tables["a_parent"]["rows"] == 2 and tables["b_child"]["rows"] == 2, tables
    code, out = plan.run("apply")
    assert code == 0 and "changed=0" in out, out


@pytest.mark.parametrize("bad", [False, True], ids=["clean", "refused"])
def test_a_table_the_load_has_begun_is_left_to_it_and_still_every_problem_is_named(server, tmp_path,  # noqa: F811
                                                                                   monkeypatch, bad):
    """apply's check meets the load: the child's scan, under way when its load begins, stops, and
    the load tests its values itself (each table read once). A refused value is still named with
    every other one, and nothing commits."""
    import threading

    from orchestrator.steps.copy_data import CopyData
    loading, stopped = threading.Event(), []
    real_scan, real_load = CopyData._preflight, CopyData._load_table

    def scan(self, p, raw=None):
        if p.target == "b_child" and raw is not None:       # apply's check, in its thread
            assert loading.wait(30)                          # ... until the load has begun b_child
            try:
                return real_scan(self, p, raw)
            except sqlite3.OperationalError:
                stopped.append(p.target)
                raise
        return real_scan(self, p, raw)

    def load(self, pg, src, p, *args, **kw):
        if p.target == "b_child":
            loading.set()
        return real_load(self, pg, src, p, *args, **kw)

    monkeypatch.setattr(CopyData, "_preflight", scan)
    monkeypatch.setattr(CopyData, "_load_table", load)
    source = sqlite_db(tmp_path / "pc.db", PARENT_CHILD_SQLITE)
    with sqlite3.connect(source) as src:
        src.executemany("INSERT INTO b_child VALUES (?, 1, 'ok', 1, 'row')", [(100 + i,) for i in range(200_000)])
        if bad:
            src.execute("INSERT INTO b_child VALUES (999999, 2, 'ok', 'maybe', 'last')")
            src.execute("INSERT INTO b_child VALUES (1000000, 2, 'much-too-long', 1, 'last')")
    url = target(server, MANY_PROBLEMS_PG.replace(", other_id int REFERENCES a_parent(id)", ""))
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply", "-v")
    assert stopped == ["b_child"], out
    if bad:
        assert code == 1, out
        assert "b_child: column flag: 1 value(s) cannot be loaded, e.g. row id=999999: 'maybe' is not a boolean" in out
        assert "b_child: column code: 1 value(s) cannot be loaded, e.g. row id=1000000" in out, out
        assert rows(url, "SELECT count(*) FROM a_parent") == [(0,)]
        assert rows(url, "SELECT count(*) FROM b_child") == [(0,)]
        return
    assert code == 0, out
    assert "the source's check read no table; the load tested a_parent, b_child itself" in out, out
    assert rows(url, "SELECT count(*), sum(id) FROM b_child") == [(200_002, sum(range(100, 200_100)) + 21)]
    code, out = plan.run("apply")
    assert code == 0 and "changed=0" in out, out


def test_a_refused_apply_does_not_pass_a_changed_table_off_as_copied(server, tmp_path):  # noqa: F811
    """A refusal during apply records what it left: a table whose source changed, and which
    was not reloaded, must still be reloaded by the next apply (found by a new user's try)."""
    source = sqlite_db(tmp_path / "pc.db", PARENT_CHILD_SQLITE)
    url = target(server, MANY_PROBLEMS_PG.replace(", other_id int REFERENCES a_parent(id)", ""))
    plan = plan_file(tmp_path, source, url)
    code, out = plan.run("apply")
    assert code == 0, out
    with sqlite3.connect(source) as src:       # a new name in the parent, a refused value in the child
        src.execute("UPDATE a_parent SET name = 'renamed' WHERE id = 1")
        src.execute("UPDATE b_child SET code = 'much-too-long' WHERE id = 11")
    code, out = plan.run("apply")
    assert code == 1 and "column code: 1 value(s) cannot be loaded" in out, out
    assert rows(url, "SELECT name FROM a_parent WHERE id = 1") == [("one",)]
    with sqlite3.connect(source) as src:
        src.execute("UPDATE b_child SET code = 'ok' WHERE id = 11")
    code, out = plan.run("apply")
    assert code == 0, out
    assert rows(url, "SELECT name FROM a_parent WHERE id = 1") == [("renamed",)], out
    code, out = plan.run("apply")
    assert code == 0 and "changed=0" in out, out
