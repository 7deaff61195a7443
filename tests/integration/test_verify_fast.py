"""verify's fast path against a real server: a correct copy of every type the copy converts
checksums equal (SQLite's canonical text = the server's), both as the order-independent sum and as
the digest per key range in key order (which `orchestrate verify` takes for these tables), and each
kind of damage is still found and named: a changed value of every converted type, a deleted row,
an extra row, a sequence behind."""

from __future__ import annotations

import json
import sqlite3
from zoneinfo import ZoneInfo

import psycopg
import pytest

from orchestrator.copying import verify
from orchestrator.copying.mapping import TablePlan, map_tables
from orchestrator.copying.reflect import reflect_source, reflect_target
from orchestrator.copying.verify import (fast_source_checksum, fast_target_checksum, ordered_key, source_checksum,
                                        source_digest, target_digest, target_splits)
from tests.integration.test_copy_data import plan_file, rows, server  # noqa: F401  (server: the module's container)

pytestmark = pytest.mark.integration

DDL = """CREATE TABLE t (id serial PRIMARY KEY, flag boolean, name varchar(40), note text, at timestamptz,
    naive timestamp, day date, clock time, amount numeric(10,2), big numeric, ratio float8, single float4,
    small int2, large int8, doc jsonb, j json, raw bytea, u uuid)"""
COLS = "id, flag, name, note, at, naive, day, clock, amount, big, ratio, single, small, large, doc, j, raw, u"
SOURCE_ROWS = [
    (1, 1, "alpha", "line\nwith tab\t", "2024-03-01 08:00:00", "2024-03-01 08:00:00.123456", "2024-03-01",
     "08:30:00", "12.345", "1e3", 0.1, 1.5, 7, 2**40, '{"b": 1, "a": [1, 2.50, "é"]}', '{"x":  1}', b"\x00\xff",
     "12345678-1234-5678-1234-567812345678"),
    (2, 0, "béta", "", "2024-03-01T08:00:00+02:00", "2024-03-01T09:15:00", "2024-03-02", "23:59:59.5", 3, "-0.001",
     1e300, "-Infinity", -3, -1, "null", "[]", "text as bytes", "{12345678-1234-5678-1234-567812345679}"),
    (3, "yes", 42, None, "2024-03-01 08:00:00.5", "2024-07-01 12:00:00", "2024-02-29", None, "-0.005", "NaN", "NaN", 0,
     0, "9", '{"é": 1, "b": {"zz": "\\u0001\\t\\"", "é": true, "aa": false, "ab": []}, "aaa": [{"ü": null, "z": -0}]}',
     "1", b"", None),
    (4, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None),
]
DAMAGE = {
    "flag": "UPDATE t SET flag = NOT flag WHERE id = 1",
    "name": "UPDATE t SET name = 'alphA' WHERE id = 1",
    "note": "UPDATE t SET note = 'line' WHERE id = 1",
    "at": "UPDATE t SET at = at + interval '1 microsecond' WHERE id = 1",
    "naive": "UPDATE t SET naive = naive - interval '1 hour' WHERE id = 1",
    "day": "UPDATE t SET day = day + 1 WHERE id = 1",
    "clock": "UPDATE t SET clock = '08:30:01' WHERE id = 1",
    "amount": "UPDATE t SET amount = 12.36 WHERE id = 1",
    "big": "UPDATE t SET big = 1001 WHERE id = 1",
    "ratio": "UPDATE t SET ratio = 0.1000000000000001 WHERE id = 1",
    "single": "UPDATE t SET single = 1.25 WHERE id = 1",
    "small": "UPDATE t SET small = 8 WHERE id = 1",
    "large": "UPDATE t SET large = large + 1 WHERE id = 1",
    "doc": """UPDATE t SET doc = '{"b": 1, "a": [1, 2.50, "e"]}' WHERE id = 1""",
    "j": """UPDATE t SET j = '{"x": 1}' WHERE id = 1""",
    "raw": "UPDATE t SET raw = '\\x00fe' WHERE id = 1",
    "u": "UPDATE t SET u = '12345678-1234-5678-1234-567812345670' WHERE id = 1",
    "null": "UPDATE t SET note = NULL WHERE id = 1",
}


def _copied(server, tmp_path, timezone="UTC"):  # noqa: F811
    return _copy_one(server, tmp_path, f"CREATE TABLE t ({COLS}, PRIMARY KEY (id))", SOURCE_ROWS, DDL, timezone)


def _copy_one(server, tmp_path, create: str, source_rows: list, ddl: str, timezone="UTC"):  # noqa: F811
    """One SQLite table (``create``, its rows), its target table (``ddl``), copied and verified."""
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as src:
        src.execute(create)
        src.executemany(f"INSERT INTO {create.split()[2]} VALUES ({', '.join('?' * len(source_rows[0]))})", source_rows)
    url = server.url(server.create())
    rows(url, ddl)
    plan = plan_file(tmp_path, source, url, timezone=timezone)
    plan.write(verify=True, timezone=timezone)
    code, out = plan.run("apply")
    assert code == 0 and "verified 1 table(s)" in out, out
    return source, url, plan


def _table_plan(src, pg) -> TablePlan:
    (p,), _, _ = map_tables(reflect_source(src), reflect_target(pg), tables=[], exclude=[], rename={},
                            columns={}, drop_columns={})
    return p


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York"])
def test_a_correct_copy_of_every_type_checksums_equal_on_the_fast_path(server, tmp_path, timezone):  # noqa: F811
    source, url, plan = _copied(server, tmp_path, timezone)
    src = sqlite3.connect(source)
    with psycopg.connect(url) as pg:
        pg.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'")
        p = _table_plan(src, pg)
        tz = ZoneInfo(timezone)
        differ, ordered = [], []
        version = pg.info.server_version
        for pair in p.columns:        # column by column, so a mismatch names its type
            one = TablePlan(p.source, p.target, [pair], p.source_pk, p.table)
            fast = fast_source_checksum(src, one, tz=tz, server_version=version)
            if not (fast == source_checksum(src, one, tz=tz) == fast_target_checksum(pg, one)):
                differ.append(pair[1].type)
            keyed = TablePlan(p.source, p.target, [p.columns[0], pair], p.source_pk, p.table)
            assert ordered_key(src, keyed) == "id"
            for splits in ([], [3]):
                digest = source_digest(src, keyed, "id", splits, tz=tz, server_version=version)
                if digest is None or digest != target_digest(pg, keyed, splits):
                    ordered.append(pair[1].type)
        assert differ == [] and ordered == []
        assert fast_source_checksum(src, p, tz=tz, server_version=version) == fast_target_checksum(pg, p)
        assert target_splits(pg, p) == (verify.CHUNK_ROWS, [])
        assert source_digest(src, p, "id", [2], tz=tz, server_version=version) == target_digest(pg, p, [2])
        assert [n for n, _ in target_digest(pg, p, [2])[1]] == [1, 3]
    code, out = plan.run("verify")
    assert code == 0 and "Verified: nothing differs." in out, out


@pytest.mark.parametrize("what", sorted(DAMAGE))
def test_a_changed_value_of_every_type_is_found_and_named(server, tmp_path, what):  # noqa: F811
    _, url, plan = _copied(server, tmp_path)
    rows(url, DAMAGE[what])
    _failed(plan, "1 row(s) differ (1 changed); first differing key range: id=1")


@pytest.mark.parametrize("damage,detail", [
    ("DELETE FROM t WHERE id = 2", "1 row(s) differ (1 missing in the target); first differing key range: id=2"),
    ("INSERT INTO t (id, name) VALUES (9, 'extra')", "1 row(s) differ (1 not in the source); first differing key range: id=9"),
    ("SELECT setval('t_id_seq', 2)", "sequences: t.id: public.t_id_seq would hand out 3, but the highest id is 4"),
], ids=["deleted-row", "extra-row", "sequence-behind"])
def test_deleted_extra_rows_and_a_sequence_behind_are_found_and_named(server, tmp_path, damage, detail):  # noqa: F811
    _, url, plan = _copied(server, tmp_path)
    rows(url, damage)
    _failed(plan, detail)


def _failed(plan, detail):
    code, out = plan.run("verify")
    assert code == 1 and detail in out and "Verification FAILED" in out, out
    code, out = plan.run("verify", "--json")
    step = next(s for s in json.loads(out)["steps"] if s["type"] == "verify")
    assert step["details"]["ok"] is False and any(detail in p for p in step["problems"]), step


SPARSE_KEYS = [-2**40, -7, 0, 1, 2, 3] + list(range(1000, 1300)) + [10**9 + k for k in range(40)] + [2**62]


def _sparse(server, tmp_path):  # noqa: F811
    return _copy_one(server, tmp_path, "CREATE TABLE s (id INTEGER PRIMARY KEY, v TEXT, at TIMESTAMP)",
                     [(k, f"value {k}", f"2024-03-01 08:{k % 60:02d}:00") for k in SPARSE_KEYS],
                     "CREATE TABLE s (id bigint PRIMARY KEY, v text, at timestamptz)")


@pytest.mark.parametrize("damage,detail", [
    ("UPDATE s SET v = 'changed' WHERE id = 1100", "1 row(s) differ (1 changed); first differing key range: id=1100"),
    ("DELETE FROM s WHERE id = -1099511627776",
     "1 row(s) differ (1 missing in the target); first differing key range: id=-1099511627776"),
    ("INSERT INTO s VALUES (1000000041, 'extra', now())",
     "1 row(s) differ (1 not in the source); first differing key range: id=1000000041"),
    ("UPDATE s SET at = at + interval '1 second' WHERE id = 4611686018427387904",
     "1 row(s) differ (1 changed); first differing key range: id=4611686018427387904"),
], ids=["changed", "lowest-key-deleted", "extra-row", "highest-key-changed"])
def test_sparse_keys_in_many_ranges_are_digested_alike_and_each_difference_named(server, tmp_path, monkeypatch,
                                                                                  damage, detail):  # noqa: F811
    monkeypatch.setattr(verify, "CHUNK_ROWS", 16)        # 347 rows with very uneven gaps, in 22 ranges
    source, url, plan = _sparse(server, tmp_path)
    src = sqlite3.connect(source)
    with psycopg.connect(url) as pg:
        pg.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'")
        p = _table_plan(src, pg)
        assert ordered_key(src, p) == "id"
        page, splits = target_splits(pg, p)
        assert page == 16 and splits[:3] == [1010, 1026, 1042] and splits[-1] == 10**9 + 30
        theirs = target_digest(pg, p, splits)
        for each in (16, 5, 1000):       # the source read 16, 5 or 1000 rows at a time: the same digest
            assert source_digest(src, p, "id", splits, tz=ZoneInfo("UTC"), server_version=pg.info.server_version,
                                 page=each) == theirs
        assert theirs[0] == len(SPARSE_KEYS) and [n for n, _ in theirs[1]] == [16] * 21 + [11]
    code, out = plan.run("verify", "-v")
    assert code == 0 and "s: checksums equal" in out, out
    rows(url, damage)
    _failed(plan, detail)


@pytest.mark.parametrize("damage,detail", [
    ("UPDATE k SET v = 'changed' WHERE code = 'b'", "1 row(s) differ (1 changed); first differing key range: code=b"),
    ("DELETE FROM k WHERE code = 'a'", "1 row(s) differ (1 missing in the target); first differing key range: code=a"),
], ids=["changed", "deleted"])
def test_a_text_key_takes_the_order_independent_sum_and_each_difference_is_named(server, tmp_path, damage,
                                                                                   detail):  # noqa: F811
    source, url, plan = _copy_one(server, tmp_path, "CREATE TABLE k (code TEXT PRIMARY KEY, v TEXT, n INTEGER)",
                                  [("a", "one", 1), ("b", "two", 2), ("c", None, 3)],
                                  "CREATE TABLE k (code text PRIMARY KEY, v text, n int)")
    src = sqlite3.connect(source)
    with psycopg.connect(url) as pg:
        p = _table_plan(src, pg)
        assert ordered_key(src, p) is None
    code, out = plan.run("verify", "-v")
    assert code == 0 and "k: checksums equal" in out, out
    rows(url, damage)
    _failed(plan, detail)


@pytest.mark.parametrize("key", ["INTEGER PRIMARY KEY", "TEXT PRIMARY KEY"], ids=["key-ranges", "sum"])
@pytest.mark.parametrize("source_rows,damage,fast", [
    # a source NULL, the text '\N' in the target: a NULL is marked by its own separator
    ([(1, "x", "y"), (2, None, "w"), (3, "\\N", "")], "UPDATE f SET a = '\\N' WHERE id::text = '2'", True),
    # a separator moved over a column's edge: values holding separators are compared the slow way
    ([(1, "x\x1fy", "z"), (2, "w\x1e", None)], "UPDATE f SET a = 'x', b = 'y' || chr(31) || 'z' WHERE id::text = '1'",
     False),
    # the row separator alone in values: no test needed (the columns' marks and the rows counted
    # on both sides place each row's end); a change of where it stands is still found
    ([(1, "x\x1e", "y"), (2, "\x1e", "\x1e\x1e"), (3, None, "\x1e")],
     "UPDATE f SET a = 'x', b = chr(30) || 'y' WHERE id::text = '1'", True),
], ids=["null-as-text", "column-separator", "row-separator"])
def test_values_holding_the_separators_or_a_null_s_text_are_told_apart(server, tmp_path, key, source_rows, damage,
                                                                        fast):  # noqa: F811
    """A row's canonical text reads back into its values one way only: each column's edge and
    each NULL carry their own separator, and a target whose values hold a column's separator or
    the NULL mark is compared row by row. Before, the first two read as equal."""
    kind = "int" if key.startswith("INTEGER") else "text"
    source, url, plan = _copy_one(server, tmp_path, f"CREATE TABLE f (id {key}, a TEXT, b TEXT)", source_rows,
                                  f"CREATE TABLE f (id {kind} PRIMARY KEY, a text, b text)")
    code, out = plan.run("verify", "-v")
    assert code == 0 and "Verified: nothing differs." in out, out
    assert ("f: checksums equal" in out) is fast, out
    rows(url, damage)
    code, out = plan.run("verify")
    assert code == 1 and "1 row(s) differ (1 changed)" in out and "Verification FAILED" in out, out


TIMES = ["2024-03-01 08:00:00", "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00.120000",
         "2024-03-01 08:00:00.123456", "2024-03-01 08:00:00.100000", "0099-03-01 08:00:00.500000",
         "2024-03-01T08:00:00.250", "2024-03-01 08:00:00.5", 1709280000.5, None]


def test_times_in_every_layout_read_alike_on_both_sides_and_a_microsecond_is_found(server, tmp_path):  # noqa: F811
    """The canonical text of a time is the server's own (ISO DateStyle: the fraction without its
    trailing zeros); SQLite's text, the copy's converter and the server give the same for each
    layout, on the fast path, and one microsecond more is a difference."""
    source_rows = [(i + 1, v, v, v if isinstance(v, str) and len(v) == 10 else None) for i, v in enumerate(TIMES)]
    source_rows += [(20, None, None, "2024-03-01"), (21, None, None, "0099-12-31")]
    source, url, plan = _copy_one(server, tmp_path, "CREATE TABLE w (id INTEGER PRIMARY KEY, at TEXT, naive TEXT, "
                                  "day TEXT)", source_rows, "CREATE TABLE w (id int PRIMARY KEY, at timestamptz, "
                                  "naive timestamp, day date)")
    src = sqlite3.connect(source)
    with psycopg.connect(url) as pg:
        pg.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        p = _table_plan(src, pg)
        version = pg.info.server_version
        tz = ZoneInfo("UTC")
        assert fast_source_checksum(src, p, tz=tz, server_version=version) == source_checksum(src, p, tz=tz) \
            == fast_target_checksum(pg, p)
        assert source_digest(src, p, "id", [4], tz=tz, server_version=version) == target_digest(pg, p, [4])
    code, out = plan.run("verify", "-v")
    assert code == 0 and "w: checksums equal" in out and "Verified: nothing differs." in out, out
    rows(url, "UPDATE w SET naive = naive + interval '1 microsecond' WHERE id = 3")
    code, out = plan.run("verify")
    assert code == 1 and "1 row(s) differ (1 changed); first differing key range: id=3" in out, out
