"""Content checksums of one table on both sides, computed the same way: the source streamed and
converted exactly as the copy converts it, the target computed in the server.

A checksum is ``(row count, sum of the first 64 bits of md5 of each row's canonical text)``:
order-independent, exact, and cheap to compare.
"""

from __future__ import annotations

import sqlite3
from zoneinfo import ZoneInfo

from .convert import canonical, checksum_sql, make_converter, row_hash
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


def target_checksum(pg, p: TablePlan) -> tuple[int, int]:
    from psycopg import sql
    idents = [sql.Identifier(c.name).as_string(pg) for c in p.target_columns]
    count, total = pg.execute(checksum_sql(p.target_columns, idents, sql.Identifier(p.target).as_string(pg))).fetchone()
    return int(count), int(total)
