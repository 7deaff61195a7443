"""Content checksums of one table on both sides, computed the same way: the source streamed and
converted exactly as the copy converts it, the target computed in the server.

A checksum is ``(row count, sum of the first 64 bits of md5 of each row's canonical text)``:
order-independent, exact, and cheap to compare.
"""

from __future__ import annotations

import hashlib
import sqlite3
from zoneinfo import ZoneInfo

from .convert import NULL, TargetColumn, canonical, checksum_sql, make_converter, row_hash
from .mapping import TablePlan
from .reflect import quote_sqlite


def source_checksum(src: sqlite3.Connection, p: TablePlan, *, tz: ZoneInfo, strip_nul: bool = False,
                    batch: int = 5000) -> tuple[int, int]:
    convs = [make_converter(c, tz=tz, strip_nul=strip_nul) for _, c in p.columns]
    canons = [canonical(c) for _, c in p.columns]
    cols = ", ".join(quote_sqlite(s) for s, _ in p.columns)
    cur = src.execute(f"SELECT {cols} FROM {quote_sqlite(p.source)}")
    count = total = 0
    while rows := cur.fetchmany(batch):
        for row in rows:
            count += 1
            total += row_hash([canon(None if v is None else conv(v)) for conv, canon, v in zip(convs, canons, row)])
    return count, total


def target_checksum(pg, p: TablePlan, *, exact: bool = False) -> tuple[int, int]:
    from psycopg import sql
    idents = [sql.Identifier(c.name).as_string(pg) for c in p.target_columns]
    count, total = pg.execute(checksum_sql(p.target_columns, idents, sql.Identifier(p.target).as_string(pg),
                                           exact=exact)).fetchone()
    return int(count), int(total)


# --- the fast path: one pass over the source, canonical text built inside SQLite ----------------

UTC_NAMES = {"UTC", "Etc/UTC", "GMT", "Etc/GMT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal", "UCT", "Etc/UCT"}
_D = "[0-9]"
TS_GLOB = f"{_D*4}-[01]{_D}-[0-3]{_D} [0-2]{_D}:[0-5]{_D}:[0-5]{_D}"


class _Sum:
    """SQLite aggregate: the sum of the first 64 bits (signed) of md5 of each row's text, as
    :func:`convert.checksum_sql` computes in the server."""
    def __init__(self):
        self.total = 0

    def step(self, text):
        self.total += int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)

    def finalize(self):
        return str(self.total)       # a Python int of any size, as text (SQLite's integers are 64-bit)


def sqlite_canonical(col: TargetColumn, ident: str, fallback: str, *, utc: bool) -> str:
    """An SQLite expression giving the canonical text of the column's converted value (what
    :func:`convert.canonical` gives after :func:`convert.make_converter`). Only the common,
    unambiguous storage forms are done in SQL; any other value goes through ``fallback``, a
    registered function running the copy's own converter, so the text is never a guess."""
    c, kind = ident, col.kind
    null = f"WHEN 'null' THEN '{NULL}'"
    if kind == "int":
        return f"CASE typeof({c}) WHEN 'integer' THEN CAST({c} AS TEXT) {null} ELSE {fallback}({c}) END"
    if kind == "bool":
        return (f"CASE WHEN typeof({c}) = 'integer' AND {c} = 1 THEN 't' WHEN typeof({c}) = 'integer' AND {c} = 0 "
                f"THEN 'f' WHEN {c} IS NULL THEN '{NULL}' ELSE {fallback}({c}) END")
    if kind == "text":
        return f"CASE typeof({c}) WHEN 'text' THEN {c} {null} ELSE {fallback}({c}) END"
    if kind in ("timestamptz", "timestamp") and utc:
        return (f"CASE WHEN typeof({c}) = 'text' AND {c} GLOB '{TS_GLOB}' THEN {c} || '.000000' "
                f"WHEN typeof({c}) = 'text' AND {c} GLOB '{TS_GLOB}.{_D*6}' THEN {c} "
                f"WHEN {c} IS NULL THEN '{NULL}' ELSE {fallback}({c}) END")
    return f"CASE WHEN {c} IS NULL THEN '{NULL}' ELSE {fallback}({c}) END"


def fast_source_checksum(src: sqlite3.Connection, p: TablePlan, *, tz: ZoneInfo, strip_nul: bool = False,
                         server_version: int = 140000) -> tuple[int, int] | None:
    """``(row count, checksum)`` of the source table as the copy would write it, equal to
    :func:`target_checksum` of an exact copy, in one pass computed inside SQLite (the row's
    canonical text there, md5 and sum in one registered aggregate). ``None`` when SQLite cannot
    compute it (a value the copy cannot convert, text that is not UTF-8): the caller then
    compares the slow, exact way. A difference never reads as equal; an equal source may read
    as different (text with NUL bytes under strip_nul), which the slow way then settles."""
    utc = getattr(tz, "key", "") in UTC_NAMES
    names = []
    for i, (_, col) in enumerate(p.columns):
        conv, canon = make_converter(col, tz=tz, strip_nul=strip_nul, server_version=server_version), canonical(col)
        name = f"orchestrate_canon_{i}"
        src.create_function(name, 1, lambda v, conv=conv, canon=canon: canon(None if v is None else conv(v)),
                            deterministic=True)
        names.append(name)
    src.create_aggregate("orchestrate_md5_sum", 1, _Sum)
    row = " || char(31) || ".join(sqlite_canonical(col, quote_sqlite(s), n, utc=utc)
                                  for (s, col), n in zip(p.columns, names)) or "''"
    try:
        count, total = src.execute(f"SELECT count(*), orchestrate_md5_sum({row}) FROM {quote_sqlite(p.source)}").fetchone()
    except (sqlite3.Error, UnicodeError, ValueError):
        return None
    return int(count), int(total) if total is not None else 0


def fast_target_checksum(pg, p: TablePlan) -> tuple[int, int]:
    """The target's side of :func:`fast_source_checksum`, computed in the server (run with the
    copy's stable output settings: TimeZone UTC, extra_float_digits 3, ISO dates)."""
    return target_checksum(pg, p, exact=True)
