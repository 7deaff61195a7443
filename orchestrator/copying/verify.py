"""Content checksums of one table on both sides, computed the same way: the source streamed and
converted exactly as the copy converts it, the target computed in the server.

A checksum is ``(row count, sum of the first 64 bits of md5 of each row's canonical text)``:
order-independent, exact, and cheap to compare. Where both sides can take the table in the order
of one integer key (its primary key on both sides), verify uses a cheaper digest instead: per
range of keys (cut where the target's rows number :data:`CHUNK_ROWS`), the md5 of the rows'
canonical texts in key order (:func:`source_digest`, :func:`target_digest`), with no per-row hash
on either side.
"""

from __future__ import annotations

import hashlib
import sqlite3
from zoneinfo import ZoneInfo

from .convert import (TargetColumn, canonical, checksum_sql, make_converter, row_hash, row_text_sql,
                      separated_sql)
from .mapping import TablePlan
from .reflect import quote_sqlite


def source_checksum(src: sqlite3.Connection, p: TablePlan, *, tz: ZoneInfo, strip_nul: bool = False,
                    batch: int = 5000) -> tuple[int, int]:
    convs = [make_converter(c, tz=tz, strip_nul=strip_nul) for _, c in p.columns]
    canons = [canonical(c) for _, c in p.columns]
    cur = src.execute(f"SELECT {', '.join(p.read_sql())} FROM {quote_sqlite(p.source)}")
    count = total = 0
    while rows := cur.fetchmany(batch):
        for row in rows:
            count += 1
            total += row_hash([None if v is None else canon(conv(v)) for conv, canon, v in zip(convs, canons, row)])
    return count, total


AMBIGUOUS = "a value holds a separator"    # never a source's digest: compared the slow way


def target_checksum(pg, p: TablePlan, *, exact: bool = False) -> tuple[int, int | str]:
    """``(row count, checksum)`` of the target table, computed in the server; the checksum is
    :data:`AMBIGUOUS` when a value holds one of the separators of the rows' texts."""
    from psycopg import sql
    idents = [sql.Identifier(c.name).as_string(pg) for c in p.target_columns]
    count, total, separated = pg.execute(checksum_sql(p.target_columns, idents, sql.Identifier(p.target).as_string(pg),
                                                      exact=exact)).fetchone()
    return int(count), AMBIGUOUS if separated else int(total)


# --- the fast path: one pass over the source, canonical text built inside SQLite ----------------

UTC_NAMES = {"UTC", "Etc/UTC", "GMT", "Etc/GMT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal", "UCT", "Etc/UCT"}


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
    """An SQLite expression giving the column's part of the row's canonical text (a separator
    and the canonical text of the converted value, what :func:`convert.canonical` gives after
    :func:`convert.make_converter`, or the NULL mark: :func:`convert.row_text`). Only the common,
    unambiguous storage forms are done in SQL, each chosen by the value's type alone (one CASE
    on typeof); any other value goes through ``fallback``, a registered function running the
    copy's own converter, so the text is never a guess."""
    c, other = ident, f"{fallback}({ident})"

    def by_type(**forms: str) -> str:      # the column's part of the row's text (convert.row_text)
        whens = "".join(f"WHEN '{t}' THEN char(31) || {e} " for t, e in forms.items())
        return f"CASE typeof({c}) {whens}WHEN 'null' THEN char(29) ELSE char(31) || {other} END"
    kind = col.kind
    if kind == "int":
        return by_type(integer=f"CAST({c} AS TEXT)")
    if kind == "bool":
        return by_type(integer=f"CASE {c} WHEN 1 THEN 't' WHEN 0 THEN 'f' ELSE {other} END")
    if kind == "text":
        return by_type(text=c)
    if kind in ("timestamptz", "timestamp") and utc:
        # Text laid out as 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD HH:MM:SS.ffffff' is taken as it
        # is (the fraction's trailing zeros dropped, as the server writes it), without checking
        # its digits: the server's text of a time is always a valid time in that layout, so a
        # malformed value can only read as different (and is then compared the slow, exact
        # way), never as equal. (rtrim only where the last digit is 0: it costs SQLite more
        # than the test.)
        return by_type(text=f"CASE length({c}) WHEN 19 THEN CASE substr({c}, 11, 1) WHEN ' ' THEN {c} "
                            f"ELSE {other} END WHEN 26 THEN CASE WHEN substr({c}, 11, 1) = ' ' AND substr({c}, 20, 1) = '.' "
                            f"THEN CASE substr({c}, 26) WHEN '0' THEN rtrim(rtrim({c}, '0'), '.') ELSE {c} END "
                            f"ELSE {other} END ELSE {other} END")
    return by_type()


def _sqlite_row(src: sqlite3.Connection, p: TablePlan, *, tz: ZoneInfo, strip_nul: bool,
                server_version: int) -> str:
    """The SQLite expression of a row's canonical text (as :func:`convert.row_text_sql` gives in
    the server, ``exact``), registering on ``src`` the fallback functions it calls."""
    utc = getattr(tz, "key", "") in UTC_NAMES
    names = []
    for i, (_, col) in enumerate(p.columns):
        conv, canon = make_converter(col, tz=tz, strip_nul=strip_nul, server_version=server_version), canonical(col)
        name = f"orchestrate_canon_{i}"
        src.create_function(name, 1, lambda v, conv=conv, canon=canon: canon(conv(v)), deterministic=True)
        names.append(name)
    return " || ".join(sqlite_canonical(col, read, n, utc=utc)
                       for read, (_, col), n in zip(p.read_sql(), p.columns, names)) or "''"


def fast_source_checksum(src: sqlite3.Connection, p: TablePlan, *, tz: ZoneInfo, strip_nul: bool = False,
                         server_version: int = 140000) -> tuple[int, int] | None:
    """``(row count, checksum)`` of the source table as the copy would write it, equal to
    :func:`target_checksum` of an exact copy, in one pass computed inside SQLite (the row's
    canonical text there, md5 and sum in one registered aggregate). ``None`` when SQLite cannot
    compute it (a value the copy cannot convert, text that is not UTF-8): the caller then
    compares the slow, exact way. A difference never reads as equal; an equal source may read
    as different (text with NUL bytes under strip_nul), which the slow way then settles."""
    row = _sqlite_row(src, p, tz=tz, strip_nul=strip_nul, server_version=server_version)
    src.create_aggregate("orchestrate_md5_sum", 1, _Sum)
    try:
        count, total = src.execute(f"SELECT count(*), orchestrate_md5_sum({row}) FROM {quote_sqlite(p.source)}").fetchone()
    except (sqlite3.Error, UnicodeError, ValueError):
        return None
    return int(count), int(total) if total is not None else 0


# --- cheaper where a key orders the table: md5 per key range of the rows' texts in key order ------

CHUNK_ROWS = 50_000        # rows per key range at most (~5 MB of text at 100 bytes a row)
CHUNK_BYTES = 8 << 20      # and fewer where the target's rows are wider (its size on disk per row)


def ranges(splits: list[int]) -> list[tuple[int | None, int | None]]:
    """The half-open key ranges ``[lo, hi)`` that ``splits`` (ascending) cut the keys into, the
    first open below and the last open above: every integer key falls in exactly one."""
    bounds = [None, *splits, None]
    return list(zip(bounds, bounds[1:]))


def range_sql(key: str, lo: int | None, hi: int | None) -> str:
    """The WHERE condition of one range, its bounds inlined (integers; no parameters, so no %
    is read in a name)."""
    parts = ([f"{key} >= {int(lo)}"] if lo is not None else []) + ([f"{key} < {int(hi)}"] if hi is not None else [])
    return " AND ".join(parts) or "TRUE"


def ordered_key(src: sqlite3.Connection, p: TablePlan) -> str | None:
    """The source column that orders both sides, or None: the source table's one-column primary
    key, copied into an integer column that is the target's one-column primary key (so each
    side reads a key range through its own index, in order)."""
    col = dict(p.columns).get(p.source_pk[0]) if len(p.source_pk) == 1 else None
    if col is None or col.kind != "int" or (p.table is not None and p.table.primary_key != [col.name]):
        return None
    try:
        pk = [name for _, name in sorted(src.execute(
            "SELECT pk, name FROM pragma_table_info(?) WHERE pk > 0", (p.source,)).fetchall())]
    except sqlite3.Error:
        return None
    return p.source_pk[0] if pk == [p.source_pk[0]] else None


def source_digest(src: sqlite3.Connection, p: TablePlan, key: str, splits: list[int], *, tz: ZoneInfo,
                  strip_nul: bool = False, server_version: int = 140000, page: int = CHUNK_ROWS) -> tuple | None:
    """``(row count, [(rows, md5) per range of keys that splits cut]))`` of the source as the copy
    would write it, equal to :func:`target_digest` of an exact copy: each range's canonical row
    texts (built and joined inside SQLite, ``page`` rows at a time, so memory stays bounded
    whatever a range holds), in key order, each followed by a record separator. ``None`` where
    SQLite cannot compute it (as :func:`fast_source_checksum`) or a key is NULL (in no range):
    the caller then compares the slow, exact way. A key of another type (text, real) needs no
    check: SQLite sorts it where it sorts, and its row's text (the key as the copy converts it)
    must then be found in the same place on the target for the digests to be equal."""
    row = _sqlite_row(src, p, tz=tz, strip_nul=strip_nul, server_version=server_version)
    k, table = quote_sqlite(key), quote_sqlite(p.source)
    try:
        count = src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        chunks = []
        for lo, hi in ranges(splits):
            n, digest, after = 0, hashlib.md5(), None
            while True:
                where = range_sql(k, lo, hi) + (f" AND {k} > {int(after)}" if after is not None else "")
                got, after, text = src.execute(
                    f"SELECT count(*), max(orchestrate_key), group_concat(r, char(30)) FROM (SELECT {row} AS r, "
                    f"{k} AS orchestrate_key FROM {table} WHERE {where} ORDER BY {k} LIMIT {int(page)})").fetchone()
                if got:
                    digest.update((text + "\x1e").encode("utf-8", "surrogatepass"))
                n += got
                if got < page:
                    break
            chunks.append((n, digest.hexdigest() if n else None))
    except (sqlite3.Error, UnicodeError, ValueError):
        return None
    if sum(n for n, _ in chunks) != count:
        return None
    return count, chunks


def target_splits(pg, p: TablePlan) -> tuple[int, list[int]]:
    """``(rows, keys)``: the keys that cut the target, in key order, into ranges of ``rows`` rows
    (:data:`CHUNK_ROWS`, fewer where its rows are wide), each found ``rows`` entries further on
    in its key's index; both sides then digest the same ranges."""
    from psycopg import sql
    key, table = sql.Identifier(p.table.primary_key[0]).as_string(pg), sql.Identifier(p.target).as_string(pg)
    size, tuples = pg.execute("SELECT pg_table_size(c.oid), c.reltuples FROM pg_class c WHERE c.oid = %s::regclass",
                              (table,)).fetchone()
    width = size / tuples if tuples and tuples > 0 else 0
    rows = max(1, min(CHUNK_ROWS, int(CHUNK_BYTES // width))) if width else CHUNK_ROWS
    def step(where: str) -> str:    # the key `rows` entries further on in the index
        return f"SELECT {key} FROM {table} WHERE {where} ORDER BY {key} OFFSET {rows} LIMIT 1"
    cte = "orchestrate_verify_splits"   # a name no table of the copy is likely to have
    found = pg.execute(f"WITH RECURSIVE {cte}(k) AS (({step('TRUE')}) UNION ALL SELECT ({step(f'{key} >= {cte}.k')}) "
                       f"FROM {cte} WHERE {cte}.k IS NOT NULL) SELECT k FROM {cte} WHERE k IS NOT NULL").fetchall()
    return rows, [k for (k,) in found]


def target_digest(pg, p: TablePlan, splits: list[int]) -> tuple:
    """The target's side of :func:`source_digest`, computed in the server (in the copy's stable
    output settings), keyed by the target's one-column primary key."""
    from psycopg import sql
    ident = lambda name: sql.Identifier(name).as_string(pg)  # noqa: E731
    key, table = ident(p.table.primary_key[0]), ident(p.target)
    idents = [ident(c.name) for c in p.target_columns]
    row, separated = row_text_sql(p.target_columns, idents, exact=True), separated_sql(p.target_columns, idents)
    chunks = []
    for lo, hi in ranges(splits):
        n, digest, ambiguous = pg.execute(
            f"SELECT count(*), md5(string_agg(r, chr(30)) || chr(30)), bool_or(x) FROM (SELECT {row} AS r, "
            f"{separated} AS x FROM {table} WHERE {range_sql(key, lo, hi)} ORDER BY {key}) s").fetchone()
        chunks.append((int(n), AMBIGUOUS if ambiguous else digest))
    return sum(n for n, _ in chunks), chunks


def fast_target_checksum(pg, p: TablePlan) -> tuple[int, int]:
    """The target's side of :func:`fast_source_checksum`, computed in the server (run with the
    copy's stable output settings: TimeZone UTC, extra_float_digits 3, ISO dates)."""
    return target_checksum(pg, p, exact=True)
