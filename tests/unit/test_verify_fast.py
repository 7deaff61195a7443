"""The fast source checksum (computed inside SQLite) equals the exact one (the copy's own
converters in Python) for every converted type and storage form, and differs when a value does."""

from __future__ import annotations

import sqlite3
from zoneinfo import ZoneInfo

import pytest

from orchestrator.copying.convert import TargetColumn
from orchestrator.copying.mapping import TablePlan
from orchestrator.copying.verify import fast_source_checksum, source_checksum

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

