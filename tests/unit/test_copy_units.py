"""copy-data's pure parts: converters, canonical text, mapping, load order, decisions."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from orchestrator.copying.convert import (ConvertError, TargetColumn, canonical, float_text, interval_text,
                                          jsonb_text, make_converter, separated_sql)
from orchestrator.copying.mapping import load_units, map_tables, selected_tables
from orchestrator.copying.reflect import ForeignKey, SourceTable, TargetTable, reflect_source, virtual_tables
from orchestrator.steps.copy_data import CopyData, Observed, TableState, decide, diff_copy

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def col(base, type_=None, **kw):
    return TargetColumn("c", type_ or base, base, **kw)


@pytest.mark.parametrize("value,expected", [
    (1, True), (0, False), ("1", True), ("0", False), ("true", True), ("FALSE", False), ("t", True),
    ("f", False), ("yes", True), ("No", False), (" yes ", True), (1.0, True),
    # PostgreSQL's boolean input: unique prefixes, on/off, any case, surrounding spaces
    ("on", True), ("OFF", False), (" Of\n", False), ("y", True), ("ye", True), ("n", False), ("tr", True),
    ("fals", False), ("\tTRUE ", True),
])
def test_booleans(value, expected):
    assert make_converter(col("bool"), tz=UTC)(value) is expected


@pytest.mark.parametrize("value", ["maybe", 2, "o", "onn", "truee", "yess", "of f", "", "10", b"\xff"])
def test_not_booleans(value):
    with pytest.raises(ConvertError):
        make_converter(col("bool"), tz=UTC)(value)


@pytest.mark.parametrize("value,tz,expected", [
    ("2024-05-28 11:38:31.339902", UTC, datetime(2024, 5, 28, 11, 38, 31, 339902, tzinfo=timezone.utc)),
    ("2024-05-28T11:38:31", UTC, datetime(2024, 5, 28, 11, 38, 31, tzinfo=timezone.utc)),
    ("2024-05-28 11:38:31+02:00", UTC, datetime(2024, 5, 28, 9, 38, 31, tzinfo=timezone.utc)),
    ("2024-05-28T11:38:31Z", PARIS, datetime(2024, 5, 28, 11, 38, 31, tzinfo=timezone.utc)),
    ("2024-05-28 11:38:31", PARIS, datetime(2024, 5, 28, 9, 38, 31, tzinfo=timezone.utc)),   # read in the step's zone
    (1716896311, UTC, datetime(2024, 5, 28, 11, 38, 31, tzinfo=timezone.utc)),
    (1716896311.5, UTC, datetime(2024, 5, 28, 11, 38, 31, 500000, tzinfo=timezone.utc)),
    ("1716896311", UTC, datetime(2024, 5, 28, 11, 38, 31, tzinfo=timezone.utc)),
])
def test_timestamptz(value, tz, expected):
    assert make_converter(col("timestamptz"), tz=tz)(value) == expected


def test_timestamp_without_zone_gets_the_step_zone_wall_time():
    conv = make_converter(col("timestamp"), tz=PARIS)
    assert conv("2024-05-28 11:38:31+00:00") == datetime(2024, 5, 28, 13, 38, 31)
    assert conv("2024-05-28 11:38:31") == datetime(2024, 5, 28, 11, 38, 31)


@pytest.mark.parametrize("value,words", [("2024-02-30 10:00:00", "day is out of range"), ("now", "not a timestamp"),
                                         ("yesterday", "not a timestamp"), (1e20, "out of range")])
def test_bad_timestamps(value, words):
    with pytest.raises(ConvertError, match=words):
        make_converter(col("timestamptz"), tz=UTC)(value)


def test_dates_and_times():
    assert make_converter(col("date"), tz=UTC)("2024-05-28") == date(2024, 5, 28)
    assert make_converter(col("date"), tz=UTC)("2024-05-28 00:00:00") == date(2024, 5, 28)
    with pytest.raises(ConvertError, match="time of day"):
        make_converter(col("date"), tz=UTC)("2024-05-28 13:00:00")
    assert make_converter(col("time"), tz=UTC)("13:45:01.5") == time(13, 45, 1, 500000)


@pytest.mark.parametrize("base,value,expected", [
    ("int4", "42", 42), ("int4", " -7 ", -7), ("int4", 5.0, 5), ("int8", 2**40, 2**40), ("int2", "32767", 32767),
])
def test_integers(base, value, expected):
    assert make_converter(col(base), tz=UTC)(value) == expected


@pytest.mark.parametrize("base,value,words", [
    ("int4", "4.5", "not an integer"), ("int4", 2**31, "out of range for int4"), ("int2", 40000, "out of range"),
    ("int4", "abc", "not an integer"),
])
def test_bad_integers(base, value, words):
    with pytest.raises(ConvertError, match=words):
        make_converter(col(base), tz=UTC)(value)


def test_floats_and_numerics():
    conv = make_converter(col("float8"), tz=UTC)
    assert math.isnan(conv("NaN")) and conv("Infinity") == math.inf and conv("-inf") == -math.inf
    assert conv("1.5") == 1.5 and conv(3) == 3.0
    with pytest.raises(ConvertError, match="out of range for real"):
        make_converter(col("float4", "real"), tz=UTC)(1e39)
    num = make_converter(col("numeric", "numeric(6,2)", precision=6, scale=2), tz=UTC)
    assert num("12.345") == Decimal("12.35") and num(7) == Decimal("7.00")
    with pytest.raises(ConvertError, match="out of range for numeric"):
        num("12345.6")
    with pytest.raises(ConvertError, match="infinite"):
        num("Infinity")


def test_text():
    conv = make_converter(col("varchar", "character varying(5)", length=5), tz=UTC)
    assert conv("abc") == "abc" and conv(12) == "12" and conv(1.5) == "1.5"
    with pytest.raises(ConvertError, match="a value of 6 characters is longer than character varying"):
        conv("abcdef")
    with pytest.raises(ConvertError, match="NUL"):
        make_converter(col("text"), tz=UTC)("a\x00b")
    assert make_converter(col("text"), tz=UTC, strip_nul=True)("a\x00b") == "ab"
    with pytest.raises(ConvertError, match="invalid UTF-8 at byte 1"):
        make_converter(col("text"), tz=UTC)(b"a\xffb")


def test_json_bytea_uuid():
    assert make_converter(col("jsonb"), tz=UTC)('{"a": 1}') == '{"a": 1}'
    for bad in ("{nope", '{"a": NaN}'):
        with pytest.raises(ConvertError, match="invalid JSON"):
            make_converter(col("jsonb"), tz=UTC)(bad)
    assert make_converter(col("bytea"), tz=UTC)(b"\x00\x01") == b"\x00\x01"
    assert make_converter(col("uuid"), tz=UTC)("{12345678-1234-5678-1234-567812345678}") == \
        "12345678-1234-5678-1234-567812345678"


@pytest.mark.parametrize("value,text", [(1.0, "1"), (0.1, "0.1"), (1e16, "1e+16"), (1.5e-7, "1.5e-07"),
                                        (math.nan, "NaN"), (-math.inf, "-Infinity"), (123456.789, "123456.789")])
def test_float_text_is_postgres_float8_output(value, text):
    assert float_text(value) == text


def test_jsonb_text_is_postgres_jsonb_output():
    doc = json.loads('{"bb": 1, "a": [true, null, "x\\"y"], "ccc": {"z": 1.50, "y": 1e2}}', parse_float=Decimal)
    assert jsonb_text(doc) == '{"a": [true, null, "x\\"y"], "bb": 1, "ccc": {"y": 100, "z": 1.50}}'


def test_jsonb_text_orders_keys_by_utf8_length_then_bytes_and_escapes_as_postgres():
    rng = random.Random(7)
    alphabet = ["a", "b", "z", "A", "é", "ü", "€", "\U0001f600", "\x01", '"', "\\", "\n", "\x7f"]
    for _ in range(500):
        keys = {"".join(rng.choices(alphabet, k=rng.randint(0, 4))) for _ in range(rng.randint(1, 8))}
        doc = {k: i for i, k in enumerate(sorted(keys))}
        text = jsonb_text(doc)
        want = sorted(keys, key=lambda k: (len(k.encode()), k.encode()))
        assert list(json.loads(text)) == want, text
    assert jsonb_text({"k": "a\x01\x1f\x7f\b\t\"\\é"}) == '{"k": "a\\u0001\\u001f\x7f\\b\\t\\"\\\\é"}'


def test_canonical_text():
    # the server's text in the ISO DateStyle: a fraction only when there is one, no trailing zeros
    assert canonical(col("timestamptz"))(datetime(2024, 5, 28, 13, 38, 31, tzinfo=PARIS)) == "2024-05-28 11:38:31"
    assert canonical(col("timestamptz"))(datetime(2024, 5, 28, 13, 38, 31, 120000, tzinfo=PARIS)) == \
        "2024-05-28 11:38:31.12"
    assert canonical(col("timestamp"))(datetime(99, 5, 28, 0, 0, 0, 5)) == "0099-05-28 00:00:00.000005"
    assert canonical(col("bool"))(True) == "t" and canonical(col("int4"))(None) == "\\N"
    assert canonical(col("bytea"))(b"\x01\xff") == "01ff"


# --- mapping and order -------------------------------------------------------------------------

def tcol(name, **kw):
    return TargetColumn(name, "integer", "int4", **kw)


def target(name, cols, pk=("id",), fks=()):
    t = TargetTable(name, {c.name: c for c in cols}, list(pk))
    t.foreign_keys = [ForeignKey(f"{name}_{ref}_fk", name, [c], ref, ["id"], f"FOREIGN KEY ({c}) REFERENCES {ref}(id)")
                      for c, ref in fks]
    return t


def test_mapping_rename_columns_drop_and_problems():
    source = {"old_users": SourceTable("old_users", ["id", "nm", "legacy"], ["id"]),
              "posts": SourceTable("posts", ["id", "user_id", "gone"], ["id"]),
              "alembic_version": SourceTable("alembic_version", ["version_num"], []),
              "extra": SourceTable("extra", ["id"], ["id"])}
    tgt = {"users": target("users", [tcol("id"), tcol("name"), tcol("created", has_default=True)]),
           "posts": target("posts", [tcol("id"), tcol("user_id"), tcol("must", not_null=True)], fks=[("user_id", "users")]),
           "alembic_version": target("alembic_version", [tcol("version_num")], pk=())}
    plans, problems, notes = map_tables(source, tgt, tables=[], exclude=[], rename={"old_users": "users"},
                                        columns={"old_users": {"nm": "name"}}, drop_columns={"old_users": ["legacy"]})
    assert [p.target for p in plans] == ["users", "posts"]
    assert [(s, c.name) for s, c in plans[0].columns] == [("id", "id"), ("nm", "name")]
    assert any("posts.gone has no column in target table posts" in p for p in problems)
    assert any("posts.must is NOT NULL without a default" in p for p in problems)
    assert notes == []
    assert any(p.startswith("source table(s) extra have no table in the target schema") and "exclude:" in p
               for p in problems)
    assert plans[1].parents == {"users"}
    _, problems, _ = map_tables(source, tgt, tables=[], exclude=["extra"], rename={"old_users": "users"},
                                columns={"old_users": {"nm": "name"}}, drop_columns={"old_users": ["legacy"]})
    assert not any("extra" in p for p in problems)


def test_generated_columns_are_copied_where_the_target_keeps_them_as_data():
    """SQLite's generated columns (which PRAGMA table_info leaves out) are read where the target
    has a plain column for them, left to the server where its column is generated too, and left
    behind where the target has none; a plain source column into a generated one is a problem."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a INT, v INT AS (a * 2) VIRTUAL, s INT AS (a + 1) STORED, "
                "g INT AS (a - 1), p INT)")
    source = reflect_source(con)
    assert source["t"].columns == ["id", "a", "v", "s", "g", "p"] and source["t"].generated == {"v", "s", "g"}
    tgt = {"t": target("t", [tcol("id"), tcol("a"), tcol("v"), tcol("s", has_default=True, generated=True)])}
    plans, problems, _ = map_tables(source, tgt, tables=[], exclude=[], rename={}, columns={}, drop_columns={"t": ["p"]})
    assert [(s, c.name) for s, c in plans[0].columns] == [("id", "id"), ("a", "a"), ("v", "v")] and not problems
    tgt["t"].columns["p"] = tcol("p", has_default=True, generated=True)
    _, problems, _ = map_tables(source, tgt, tables=[], exclude=[], rename={}, columns={}, drop_columns={})
    assert problems == ["t.p is a generated column (PostgreSQL computes it and takes no value for it), and source "
                        "column t.p would fill it: list p under drop_columns to leave it behind, or map it to "
                        "another column under columns"]
    _, problems, _ = map_tables(source, tgt, tables=[], exclude=[], rename={}, columns={"t": {"g": "gone"}},
                                drop_columns={"t": ["p"]})
    assert problems == ["t.g has no column in target table t (map it under columns, or list it under drop_columns "
                        "to leave it behind)"]      # named by the user: not left behind without a word


def test_an_sqlite_without_table_xinfo_is_read_with_table_info():
    """SQLite before 3.26 returns no row for PRAGMA table_xinfo (an unknown pragma)."""
    real = sqlite3.connect(":memory:")
    real.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)")

    class Old:
        def execute(self, sql, *args):
            return real.execute("SELECT 1 WHERE 0") if "table_xinfo" in sql else real.execute(sql, *args)
    table = reflect_source(Old())["t"]
    assert (table.columns, table.primary_key, table.generated) == (["id", "a"], ["id"], frozenset())


def test_a_uuid_column_reads_a_16_byte_blob_as_its_hex_and_text_as_it_is():
    from orchestrator.copying.convert import source_value_sql
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    con = sqlite3.connect(":memory:")
    con.text_factory = bytes
    col = TargetColumn("u", "uuid", "uuid")
    conv = make_converter(col, tz=UTC)
    read = source_value_sql(col, "v")
    for stored, want in ((u.bytes, str(u)), (str(u), str(u)), (u.hex, str(u)), (None, None)):
        (got,) = con.execute(f"SELECT {read} FROM (SELECT ? AS v)", (stored,)).fetchone()
        assert (None if got is None else conv(got)) == want
    (got,) = con.execute(f"SELECT {read} FROM (SELECT ? AS v)", ("sixteen-chars-xx",)).fetchone()
    with pytest.raises(ConvertError, match="is not a UUID"):
        conv(got)
    assert source_value_sql(TargetColumn("t", "text", "text"), "v") == "v"


def test_load_units_parents_first_self_references_and_cycles():
    tables = {"a": target("a", [tcol("id"), tcol("b_id")], fks=[("b_id", "b")]),
              "b": target("b", [tcol("id"), tcol("a_id")], fks=[("a_id", "a")]),
              "root": target("root", [tcol("id"), tcol("parent_id")], fks=[("parent_id", "root")]),
              "leaf": target("leaf", [tcol("id"), tcol("a_id"), tcol("root_id")], fks=[("a_id", "a"), ("root_id", "root")])}
    source = {n: SourceTable(n, list(t.columns), ["id"]) for n, t in tables.items()}
    plans, problems, _ = map_tables(source, tables, tables=[], exclude=[], rename={}, columns={}, drop_columns={})
    assert not problems
    units = [[p.target for p in u] for u in load_units(plans)]
    assert ["a", "b"] in units and ["root"] in units
    assert units.index(["leaf"]) > units.index(["a", "b"]) and units.index(["leaf"]) > units.index(["root"])


# --- decisions ---------------------------------------------------------------------------------

def state(source_rows=10, target_rows=0, checksum=None, digest=None):
    from orchestrator.copying.mapping import TablePlan
    return TableState(TablePlan("t", "t", [], ["id"], TargetTable("t")), source_rows, target_rows, checksum, digest)


@pytest.mark.parametrize("ts,rec,same,overwrite,action", [
    (state(), {}, False, False, "copy"),
    (state(target_rows=10, checksum="h2:10:5"), {"checksum": "h2:10:5", "source_rows": 10}, True, False, "ok"),
    (state(target_rows=10, checksum="h2:10:5", digest="d1"), {"checksum": "h2:10:5", "source_digest": "d1"}, False, False, "ok"),
    (state(target_rows=10, checksum="h2:10:5", digest="d2"), {"checksum": "h2:10:5", "source_digest": "d1"}, False, False, "reload"),
    (state(target_rows=10, checksum="h2:10:5"), {"committing": "h2:10:5", "checksum": None}, True, False, "ok"),
    (state(target_rows=10, checksum="h2:10:5"), {"checksum": "h2:9:1", "file": "OLD",
                                                 "committing": {"checksum": "h2:10:5", "file": "F"}}, False, False, "ok"),
    (state(target_rows=9, checksum="h2:9:1", digest="d0"), {"checksum": "h2:9:1", "file": "OLD", "source_digest": "d0",
                                                            "committing": {"checksum": "h2:10:5", "file": "F"}}, False, False, "ok"),
    (state(target_rows=9, checksum="h2:9:1", digest="d1"), {"checksum": "h2:9:1", "file": "OLD", "source_digest": "d0",
                                                            "committing": {"checksum": "h2:10:5", "file": "F"}}, False, False, "reload"),
    (state(target_rows=11, checksum="h2:11:9"), {"checksum": "h2:10:5"}, False, False, "refuse"),
    (state(target_rows=11, checksum="h2:11:9"), {"checksum": "h2:10:5"}, True, False, "ok"),
    (state(target_rows=11, checksum="h2:11:9", digest="d1"), {"checksum": "h2:10:5", "source_digest": "d1"},
     False, False, "ok"),
    (state(target_rows=11, checksum="h2:11:9", digest="d2"), {"checksum": "h2:10:5", "source_digest": "d1"},
     False, False, "refuse"),
    (state(target_rows=11, checksum="h2:11:9"), {}, True, False, "refuse"),
    (state(target_rows=11, checksum="h2:11:9"), {"checksum": "h2:10:5"}, True, True, "reload"),
    (state(target_rows=10, checksum="h2:10:5"), {"checksum": "10:77", "rows": 10}, True, False, "ok"),
    (state(target_rows=11, checksum="h2:11:5"), {"checksum": "10:77", "rows": 10}, True, False, "ok"),
    (state(target_rows=11, checksum="h2:11:5"), {"checksum": "10:77", "rows": 10}, False, False, "refuse"),
], ids=["empty", "unchanged", "same-digest", "source-changed", "killed-after-commit", "killed-after-commit-dict",
        "killed-before-commit-same-source", "killed-before-commit-source-changed", "foreign-rows-source-changed",
        "written-in-postgres-source-unchanged", "written-in-postgres-same-digest", "written-on-both-sides",
        "never-copied", "overwrite", "older-fingerprint-same-count", "older-fingerprint-other-count-same-source",
        "older-fingerprint-other-count-source-changed"])
def test_decide(ts, rec, same, overwrite, action):
    decide(ts, {**rec, "file": "F"} if same and rec else rec, file="F", overwrite=overwrite)
    assert ts.action == action
    if action == "refuse":
        assert "Refusing to overwrite" in ts.problems[0] and "overwrite: true" in ts.problems[0]
    assert ts.written == (action == "ok" and ts.target_rows == 11)      # 11 rows: more than the copy left
    if ts.written:
        assert "written in PostgreSQL since the last copy (11 rows now" in ts.reason and "nothing to copy" in ts.reason


GOOD = {"counters": "16424:16424:10000:0:0::c5", "file": "F", "checksum": "h2:10:5", "rows": 10, "source_rows": 10}


@pytest.mark.parametrize("rec,counters,file,expected", [
    (GOOD, "16424:16424:10000:0:0::c5", "F", True),
    (GOOD, "16424:16424:10000:1:0::c5", "F", False),                   # a row updated since
    (GOOD, "16424:16424:10000:0:0:2026-12-06 10:00:00+00:c5", "F", False),   # statistics reset
    (GOOD, "16424:16999:10000:0:0::c5", "F", False),                   # truncated or rewritten
    (GOOD, "16424:16424:10000:0:0::d7", "F", False),                   # the columns mapped changed
    (GOOD, None, "F", False),                                          # not counted (track_counts off)
    (GOOD, "16424:16424:10000:0:0::c5", "G", False),                   # the source file changed
    (GOOD, "16424:16424:10000:0:0::c5", None, False),
    ({**GOOD, "committing": {"checksum": "h2:11:6"}}, "16424:16424:10000:0:0::c5", "F", False),
    ({k: v for k, v in GOOD.items() if k != "counters"}, "16424:16424:10000:0:0::c5", "F", False),
    ({k: v for k, v in GOOD.items() if k != "checksum"}, "16424:16424:10000:0:0::c5", "F", False),
    ({**GOOD, "rows": None}, "16424:16424:10000:0:0::c5", "F", False),
], ids=["unwritten", "updated", "stats-reset", "new-storage", "mapping-changed", "not-counted", "source-changed",
        "no-source-fingerprint", "commit-pending", "never-counted", "no-checksum", "no-rows"])
def test_unwritten(rec, counters, file, expected):
    """A table is taken as unchanged without reading it only when every part of the recorded
    counters matches, the source file is the one proven, and no commit is pending."""
    from orchestrator.steps.copy_data import unwritten
    assert unwritten(rec, counters, file) is expected


@pytest.mark.parametrize("now,expected", [
    ("16424:16424:10000:0:10000::c5", True),            # every row deleted
    ("16424:17001:10000:0:0::c5", True),                # truncated: new storage, the same table
    ("16424:16424:0:0:0::c5", False),                   # counters below the record: another table
    ("16424:16424:10000:0:0:2026-12-06 10:00:00+00:c5", False),   # statistics reset (or a crash)
    ("16999:16999:10000:0:10000::c5", False),           # re-created
    ("16424:16424:10000:0:10000::d7", False),           # other columns mapped
    (None, False),
], ids=["deleted", "truncated", "fresh-database", "stats-reset", "re-created", "mapping-changed", "not-counted"])
def test_emptied(now, expected):
    from orchestrator.steps.copy_data import emptied
    assert emptied("16424:16424:10000:0:0::c5", now) is expected
    assert emptied(None, now) is False and emptied("not:this:format", now) is False


@pytest.mark.parametrize("counters,overwrite,action", [
    ("16424:16424:10000:0:10000::c5", False, "ok"),
    ("16424:16424:0:0:0::c5", False, "copy"),
    ("16424:16424:10000:0:10000::c5", True, "copy"),
], ids=["emptied-by-the-application", "a-new-database", "overwrite"])
def test_an_empty_target_table(counters, overwrite, action):
    """Emptied by the application after the switch (its source unchanged): not copied again;
    a new, empty database: copied."""
    ts = state(source_rows=10, target_rows=0)
    ts.counters = counters
    decide(ts, {"checksum": "h2:10:5", "rows": 10, "file": "F", "counters": "16424:16424:10000:0:0::c5"},
           file="F", overwrite=overwrite)
    assert ts.action == action and ts.written == (action == "ok")


def test_diff_names_tables_counts_and_dangling():
    from orchestrator.steps.copy_data import Dangling
    ts = state(source_rows=5)
    decide(ts, {}, file=None, overwrite=False)
    fk = ForeignKey("fk", "t", ["parent_id"], "p", ["id"], "", nullable=True)
    ts.dangling = [Dangling(fk, 2, ["id=3", "id=4"])]
    d = diff_copy(Observed(source=None, tables=[ts]), "error")
    assert d.changes[0].field == "table t" and d.changes[0].after == "5 rows"
    assert "2 row(s) reference p rows that do not exist (parent_id; e.g. id=3, id=4)" in d.problems[0]
    d = diff_copy(Observed(source=None, tables=[ts]), "null")
    assert not d.problems and d.warnings[0].endswith("set to NULL")


def test_virtual_tables_their_storage_and_which_hold_data():
    """Full-text indexes over another table (or over nothing) hold no data; an FTS table of its
    own, an R*Tree, hold rows; the shadow tables they are stored in are never tables to copy
    (found by the module's names, and by SQLite itself where it says so)."""
    src = sqlite3.connect(":memory:")
    src.executescript("""
        CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT, body TEXT);
        CREATE TABLE notes_content_archive (id INTEGER PRIMARY KEY);
        CREATE VIRTUAL TABLE posts_fts USING fts5(title, body, content='posts', content_rowid='id');
        CREATE VIRTUAL TABLE bare USING fts5(body, content='');
        CREATE VIRTUAL TABLE old_style USING fts4(content="posts", title, body);
        CREATE VIRTUAL TABLE notes USING fts5(content, body);
        CREATE VIRTUAL TABLE places USING rtree(id, minx, maxx);
    """)
    virtual, shadow = virtual_tables(src)
    assert virtual == {"posts_fts": "a full-text index (FTS5) over posts", "bare": "a contentless full-text index (FTS5)",
                       "old_style": "a full-text index (FTS4) over posts", "notes": None, "places": None}
    assert {"posts_fts_data", "notes_content", "old_style_segdir", "places_node"} <= shadow
    tables = reflect_source(src)
    assert sorted(tables) == ["bare", "notes", "notes_content_archive", "old_style", "places", "posts", "posts_fts"]
    assert tables["notes"].columns == ["content", "body"] and tables["notes"].derived is None
    assert tables["posts_fts"].columns == [] and tables["posts_fts"].derived
    assert [s for s, _ in selected_tables(tables, tables=[], exclude=[], rename={})] == \
        ["notes", "notes_content_archive", "places", "posts"]


def test_durations_into_an_interval_column():
    """SQLAlchemy's Interval without a native type is 1970-01-01 plus the duration; the text
    sent is PostgreSQL's own output for it (so verify reads it back alike); other text goes as
    it is, and a bare number is refused (its unit is not known)."""
    conv = make_converter(col("interval"), tz=ZoneInfo("Europe/Paris"))
    assert conv("1970-01-01 00:05:00.000000") == "00:05:00"
    assert conv("1970-01-02 01:00:00.500000") == "1 day 01:00:00.5"
    assert conv("1969-12-30 23:55:00") == "-2 days +23:55:00"
    assert conv("1970-01-04T00:00:00+00:00") == "3 days"
    assert conv(b" 1 day 02:00:00 ") == "1 day 02:00:00" and conv("P1D") == "P1D"
    for number in (300, 1.5):
        with pytest.raises(ConvertError, match="a duration's unit is not known"):
            conv(number)
    assert interval_text(timedelta(0)) == "00:00:00" and interval_text(timedelta(days=1)) == "1 day"
    assert interval_text(timedelta(days=-1)) == "-1 days" and interval_text(timedelta(hours=-1)) == "-1 days +23:00:00"


def test_the_server_looks_for_the_column_marks_in_free_text_only():
    """verify's test of the target's values: the column separator and the NULL mark, in text and
    types read from text; the row separator needs none, and no other type can hold either."""
    cols = [TargetColumn("n", "integer", "int4"), TargetColumn("t", "text", "text"),
            TargetColumn("u", "uuid", "uuid"), TargetColumn("x", "xml", "other")]
    test = separated_sql(cols, ['"n"', '"t"', '"u"', '"x"'])
    assert test.count("strpos(") == 4 and test.count("chr(31)") == test.count("chr(29)") == 2, test
    assert "chr(30)" not in test and '"n"' not in test and '"u"' not in test
    assert separated_sql(cols[:1], ['"n"']) == "false"
