"""The fast source checksum (computed inside SQLite) equals the exact one (the copy's own
converters in Python) for every converted type and storage form, and differs when a value does."""

from __future__ import annotations

import sqlite3
from zoneinfo import ZoneInfo

import pytest

from orchestrator.copying.convert import TargetColumn
from orchestrator.copying.mapping import TablePlan
from orchestrator.copying import verify
from orchestrator.copying.verify import (CHUNK_ROWS, fast_source_checksum, key_ranges, ordered_key, source_checksum,
                                        source_digest)

COLS = [TargetColumn("id", "integer", "int4"), TargetColumn("flag", "boolean", "bool"),
        TargetColumn("name", "text", "text"), TargetColumn("at", "timestamp with time zone", "timestamptz"),
        TargetColumn("naive", "timestamp without time zone", "timestamp"), TargetColumn("day", "date", "date"),
        TargetColumn("amount", "numeric(10,2)", "numeric", precision=10, scale=2),
        TargetColumn("ratio", "double precision", "float8"), TargetColumn("doc", "jsonb", "jsonb"),
        TargetColumn("raw", "bytea", "bytea"), TargetColumn("u", "uuid", "uuid"), TargetColumn("j", "json", "json")]
ROWS = [
    (1, 1, "alpha", "2024-03-01 08:00:00", "2024-03-01 08:00:00.123456", "2024-03-01", "12.345", 0.1,
     '{"b": 1, "a": [1, 2.50]}', b"\x00\xff", "12345678-1234-5678-1234-567812345678", '{"x":1}'),
    (2, 0, "béta", "2024-03-01T08:00:00+02:00", 1709280000, 1709480000.5, 3, 1e300, "null", "text", None, None),
    (3, "yes", 42, 1709280000, "2024-03-01 08:00:00", "2024-03-01 00:00:00", "-0.005", "NaN", "[]", None,
     "{12345678-1234-5678-1234-567812345678}", "[]"),
    (4, None, None, None, None, None, None, None, None, None, None, None),
    (5, "0", 1.5, "2024-03-01 08:00:00Z", "1709280000", "2024-02-29", 7, "-Infinity", '"\\u00e9"', b"", None, "1"),
]


def _db(rows=ROWS) -> sqlite3.Connection:
    src = sqlite3.connect(":memory:")
    src.execute("CREATE TABLE t (" + ", ".join(f'"{c.name}"' for c in COLS) + ", PRIMARY KEY (id))")
    src.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(COLS))})", rows)
    return src


def _plan() -> TablePlan:
    return TablePlan("t", "t", [(c.name, c) for c in COLS], ["id"], table=None)


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_fast_equals_exact_for_every_type(tz):
    src, p = _db(), _plan()
    assert fast_source_checksum(src, p, tz=ZoneInfo(tz)) == source_checksum(src, p, tz=ZoneInfo(tz))


@pytest.mark.parametrize("col", range(1, len(COLS)))
def test_a_changed_value_changes_the_checksum(col):
    p = _plan()
    before = fast_source_checksum(_db(), p, tz=ZoneInfo("UTC"))
    rows = [list(r) for r in ROWS]
    rows[0][col] = ROWS[1][col] if ROWS[1][col] != ROWS[0][col] else None
    src = _db([tuple(r) for r in rows])
    after = fast_source_checksum(src, p, tz=ZoneInfo("UTC"))
    assert after == source_checksum(src, p, tz=ZoneInfo("UTC"))
    assert after != before


def test_deleted_and_extra_rows_change_count_and_sum():
    p = _plan()
    full = fast_source_checksum(_db(), p, tz=ZoneInfo("UTC"))
    assert fast_source_checksum(_db(ROWS[:-1]), p, tz=ZoneInfo("UTC"))[0] == full[0] - 1
    assert fast_source_checksum(_db(ROWS + [(6,) + ROWS[0][1:]]), p, tz=ZoneInfo("UTC"))[0] == full[0] + 1


def test_a_value_the_copy_cannot_convert_gives_none():
    rows = [tuple(r) for r in ROWS[:1]] + [(2, "maybe") + ROWS[1][2:]]
    assert fast_source_checksum(_db(rows), _plan(), tz=ZoneInfo("UTC")) is None



# --- the digest per key range, in key order (verify's path for a table with an integer key) -----

def _digest(src, p=None):
    p = p or _plan()
    return source_digest(src, p, ordered_key(src, p), tz=ZoneInfo("UTC"))


@pytest.mark.parametrize("lo,hi,count", [(1, 1, 1), (1, 120_000, 120_000), (-5, 5, 11), (1, 10**12, 3),
                                         (-2**63, 2**63 - 1, 200_001), (7, 50_006, 50_000), (7, 50_007, 50_001)])
def test_key_ranges_cover_every_key_once_in_order(lo, hi, count):
    ranges = key_ranges(lo, hi, count)
    assert ranges[0][0] == lo and ranges[-1][1] == hi
    assert all(a <= b for a, b in ranges) and all(b + 1 == a for (_, b), (a, _) in zip(ranges, ranges[1:]))
    assert len(ranges) == -(-count // CHUNK_ROWS)


def test_key_ranges_of_an_empty_table():
    assert key_ranges(None, None, 0) == []


def test_ordered_key_is_a_one_column_integer_primary_key():
    src = _db()
    assert ordered_key(src, _plan()) == "id"
    src.execute("CREATE TABLE two (a, b, PRIMARY KEY (a, b))")
    two = TablePlan("two", "two", [("a", COLS[0]), ("b", COLS[0])], ["a", "b"], table=None)
    assert ordered_key(src, two) is None
    src.execute("CREATE TABLE named (name TEXT PRIMARY KEY, id INTEGER)")
    by_name = TablePlan("named", "named", [("name", COLS[2]), ("id", COLS[0])], ["name"], table=None)
    assert ordered_key(src, by_name) is None       # a text key
    src.execute("CREATE TABLE nopk (id INTEGER, v)")
    nopk = TablePlan("nopk", "nopk", [("id", COLS[0]), ("v", COLS[2])], ["id"], table=None)
    assert ordered_key(src, nopk) is None          # not SQLite's key: no index to range over


def test_the_digest_covers_every_row_in_ranges(monkeypatch):
    monkeypatch.setattr(verify, "CHUNK_ROWS", 2)
    count, lo, hi, chunks = _digest(_db())
    assert (count, lo, hi) == (5, 1, 5) and sum(n for n, _ in chunks) == 5 and len(chunks) == 3


@pytest.mark.parametrize("col", range(1, len(COLS)))
def test_a_changed_value_changes_the_digest(col, monkeypatch):
    monkeypatch.setattr(verify, "CHUNK_ROWS", 2)
    before = _digest(_db())
    rows = [list(r) for r in ROWS]
    rows[0][col] = ROWS[1][col] if ROWS[1][col] != ROWS[0][col] else None
    after = _digest(_db([tuple(r) for r in rows]))
    assert after != before and after[3][1:] == before[3][1:]      # only the first range differs


def test_values_moved_between_rows_change_the_digest():
    rows = [list(r) for r in ROWS]
    rows[0][2], rows[1][2] = rows[1][2], rows[0][2]
    assert _digest(_db([tuple(r) for r in rows])) != _digest(_db())


def test_deleted_and_extra_rows_change_the_digest():
    full = _digest(_db())
    assert _digest(_db(ROWS[:-1]))[0] == full[0] - 1
    assert _digest(_db(ROWS[:2] + ROWS[3:])) != full
    assert _digest(_db(ROWS + [(6,) + ROWS[0][1:]]))[0] == full[0] + 1


def test_a_key_the_copy_converts_or_a_value_it_cannot_gives_none():
    assert _digest(_db(ROWS + [("7",) + ROWS[0][1:]])) is None
    assert _digest(_db([tuple(r) for r in ROWS[:1]] + [(2, "maybe") + ROWS[1][2:]])) is None
