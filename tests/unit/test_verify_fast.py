"""The fast source checksum (computed inside SQLite) equals the exact one (the copy's own
converters in Python) for every converted type and storage form, and differs when a value does."""

from __future__ import annotations

import sqlite3
import tracemalloc
from zoneinfo import ZoneInfo

import pytest

from orchestrator.copying.convert import TargetColumn
from orchestrator.copying.mapping import TablePlan
from orchestrator.copying.verify import (fast_source_checksum, ordered_key, range_sql, ranges, source_checksum,
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


TIMES = ["2024-03-01 08:00:00", "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00.120000",
         "2024-03-01 08:00:00.123456", "2024-03-01 08:00:00.100000", "0099-03-01 08:00:00.500000",
         "2024-03-01T08:00:00.250", "2024-03-01 08:00:00.5", "2024-03-01 08:00:00.0000000", 1709280000.5]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_every_layout_of_a_time_reads_as_the_copy_converts_it(tz):
    """SQLite's own text of a time, the fraction's trailing zeros dropped, is what the copy's
    converter and canonical() give; every other layout goes through the converter."""
    times = [c for c in COLS if c.name in ("id", "at", "naive")]
    src = sqlite3.connect(":memory:")
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT, naive TEXT)")
    src.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, v, v) for i, v in enumerate(TIMES)])
    p = TablePlan("t", "t", [(c.name, c) for c in times], ["id"], table=None)
    assert fast_source_checksum(src, p, tz=ZoneInfo(tz)) == source_checksum(src, p, tz=ZoneInfo(tz))
    assert source_digest(src, p, "id", [3], tz=ZoneInfo(tz)) is not None


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

def _digest(src, p=None, splits=(3,)):
    p = p or _plan()
    return source_digest(src, p, ordered_key(src, p), list(splits), tz=ZoneInfo("UTC"))


@pytest.mark.parametrize("splits", [[], [1], [-5, 0, 5], [2**62, 2**63 - 1]])
def test_ranges_cover_every_key_once_in_order(splits):
    cut = ranges(splits)
    assert cut[0][0] is None and cut[-1][1] is None and len(cut) == len(splits) + 1
    assert all(hi == lo for (_, hi), (lo, _) in zip(cut, cut[1:]))
    assert [range_sql("k", lo, hi) for lo, hi in ranges([5])] == ["k < 5", "k >= 5"]
    assert range_sql("k", None, None) == "TRUE"


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


@pytest.mark.parametrize("splits,counts", [([], [5]), ([3], [2, 3]), ([2, 4], [1, 2, 2]), ([-9, 99], [0, 5, 0])])
def test_the_digest_counts_every_row_in_its_range(splits, counts):
    count, chunks = _digest(_db(), splits=splits)
    assert count == 5 and [n for n, _ in chunks] == counts
    assert all((digest is None) == (n == 0) for n, digest in chunks)
    for page in (1, 2, 3):          # read a few rows at a time: the same digest
        p = _plan()
        assert source_digest(_db(), p, "id", splits, tz=ZoneInfo("UTC"), page=page) == (count, chunks)


@pytest.mark.parametrize("col", range(1, len(COLS)))
def test_a_changed_value_changes_the_digest(col):
    before = _digest(_db())
    rows = [list(r) for r in ROWS]
    rows[0][col] = ROWS[1][col] if ROWS[1][col] != ROWS[0][col] else None
    after = _digest(_db([tuple(r) for r in rows]))
    assert after != before and after[1][1] == before[1][1]      # only the first range differs


def test_values_moved_between_rows_change_the_digest():
    rows = [list(r) for r in ROWS]
    rows[0][2], rows[1][2] = rows[1][2], rows[0][2]
    assert _digest(_db([tuple(r) for r in rows])) != _digest(_db())


def test_deleted_and_extra_rows_change_the_digest():
    full = _digest(_db())
    assert _digest(_db(ROWS[:-1]))[0] == full[0] - 1
    assert _digest(_db(ROWS[:2] + ROWS[3:])) != full
    assert _digest(_db(ROWS + [(6,) + ROWS[0][1:]]))[0] == full[0] + 1


def test_memory_stays_flat_whatever_a_range_holds():
    src = sqlite3.connect(":memory:")
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    src.executemany("INSERT INTO t VALUES (?, ?)", ((i, "x" * 1000) for i in range(20_000)))
    p = TablePlan("t", "t", [("id", COLS[0]), ("name", COLS[2])], ["id"], table=None)
    tracemalloc.start()
    count, chunks = source_digest(src, p, "id", [], tz=ZoneInfo("UTC"), page=500)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 20_000 and len(chunks) == 1 and peak < 4 << 20, peak     # 20 MB of text in one range


def test_a_null_key_or_a_value_the_copy_cannot_convert_gives_none():
    assert _digest(_db(ROWS + [(None,) + ROWS[0][1:]])) is None
    assert _digest(_db([tuple(r) for r in ROWS[:1]] + [(2, "maybe") + ROWS[1][2:]])) is None


def test_a_key_stored_as_text_or_real_digests_where_sqlite_sorts_it():
    extra = ROWS[0][1:]
    as_int = _digest(_db(ROWS + [(0,) + extra]), splits=(3,))
    assert _digest(_db(ROWS + [(0.0,) + extra]), splits=(3,)) == as_int    # 0.0 sorts as 0: as the target's 0
    assert _digest(_db(ROWS + [("0",) + extra]), splits=(3,)) != as_int    # '0' sorts after every number
