"""What the two databases hold: the migrated PostgreSQL schema (the truth) and the SQLite source."""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .convert import TargetColumn


@dataclass
class ForeignKey:
    name: str
    table: str
    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    definition: str            # pg_get_constraintdef, to put it back exactly
    nullable: bool = True      # every referencing column may be NULL


@dataclass
class TargetTable:
    name: str
    columns: dict[str, TargetColumn] = field(default_factory=dict)
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    indexes: dict[str, str] = field(default_factory=dict)   # secondary, not backing a constraint
    partitioned: bool = False       # its rows are in its partitions


TARGET_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), t.typname, a.atttypmod,
       a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
       pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname), a.attidentity, c.relkind,
       a.attgenerated <> ''
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
TARGET_CONSTRAINTS = """
SELECT con.conname, con.contype, c.relname, rc.relname,
       ARRAY(SELECT attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute ON attrelid = con.conrelid AND attnum = k.n ORDER BY k.i),
       ARRAY(SELECT attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute ON attrelid = con.confrelid AND attnum = k.n ORDER BY k.i),
       pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class rc ON rc.oid = con.confrelid
WHERE n.nspname = current_schema() AND con.contype IN ('p', 'f')
ORDER BY c.relname, con.conname
"""
TARGET_INDEXES = """
SELECT i.tablename, i.indexname, i.indexdef
FROM pg_indexes i
JOIN pg_class ic ON ic.relname = i.indexname
JOIN pg_namespace n ON n.oid = ic.relnamespace AND n.nspname = i.schemaname
WHERE i.schemaname = current_schema()
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ic.oid)
ORDER BY i.tablename, i.indexname
"""


def reflect_target(conn) -> dict[str, TargetTable]:
    """The tables of the target's current schema (a psycopg connection)."""
    tables: dict[str, TargetTable] = {}
    for (table, col, ftype, base, typmod, not_null, has_default, seq, identity, relkind,
         generated) in conn.execute(TARGET_COLUMNS):
        length = precision = scale = None
        if base in ("varchar", "bpchar") and typmod > 4:
            length = typmod - 4
        if base == "numeric" and typmod > 4:
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        tables.setdefault(table, TargetTable(table, partitioned=relkind == "p")).columns[col] = TargetColumn(
            col, ftype, base, length, precision, scale, not_null, has_default, seq, identity or "", generated)
    for name, kind, table, ref, cols, ref_cols, definition in conn.execute(TARGET_CONSTRAINTS):
        t = tables[table]
        if kind == "p":
            t.primary_key = list(cols)
        else:
            nullable = all(not t.columns[c].not_null for c in cols)
            t.foreign_keys.append(ForeignKey(name, table, list(cols), ref, list(ref_cols), definition, nullable))
    for table, name, definition in conn.execute(TARGET_INDEXES):
        if table in tables:
            tables[table].indexes[name] = definition
    return tables


@dataclass
class SourceTable:
    name: str
    columns: list[str]
    primary_key: list[str]
    derived: str | None = None     # a virtual table holding no data of its own: what it is
    generated: frozenset[str] = frozenset()   # columns SQLite computes (AS (...) VIRTUAL or STORED)


# a full-text index's storage (FTS3/4/5) and an R*Tree's: tables the virtual table itself reads,
# never data of their own (SQLite >= 3.37 says so itself: PRAGMA table_list, type 'shadow')
_RTREE = ("_node", "_rowid", "_parent")
SHADOW_SUFFIXES = {
    "fts3": ("_content", "_segments", "_segdir"), "fts4": ("_content", "_segments", "_segdir", "_docsize", "_stat"),
    "fts5": ("_data", "_idx", "_content", "_docsize", "_config"), "rtree": _RTREE, "rtree_i32": _RTREE,
    "geopoly": _RTREE,
}
_VIRTUAL = re.compile(r"^\s*CREATE\s+VIRTUAL\s+TABLE\s+.*?\bUSING\s+(\w+)\s*(?:\((.*)\))?\s*;?\s*$", re.I | re.S)
_CONTENT = re.compile(r"""(?:^|,)\s*content\s*=\s*(?:'((?:[^']|'')*)'|"((?:[^"]|"")*)"|\[([^\]]*)\]|`([^`]*)`|([^\s,]*))""",
                      re.I)


def virtual_tables(conn: sqlite3.Connection) -> tuple[dict[str, str | None], set[str]]:
    """The source's virtual tables (name: what it is when it holds no data of its own, else
    None) and the shadow tables that store them. A full-text index (FTS4/5) whose content is
    another table (``content=posts``) or nothing (``content=''``) holds none: SQLite reads it
    from that table, and PostgreSQL has full-text search of its own."""
    virtual: dict[str, str | None] = {}
    shadow: set[str] = set()
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'"):
        name, sql = _text(name), _text(sql) or ""
        found = _VIRTUAL.match(sql)
        module, args = (found.group(1).lower(), found.group(2) or "") if found else ("", "")
        shadow.update(name + suffix for suffix in SHADOW_SUFFIXES.get(module, ()))
        content = _CONTENT.search(args) if module in ("fts4", "fts5") else None
        if content is None:
            virtual[name] = None
            continue
        source = next((g for g in content.groups() if g is not None), "")
        virtual[name] = (f"a full-text index ({module.upper()}) over {source}" if source
                         else f"a contentless full-text index ({module.upper()})")
    try:
        shadow |= {r[1] for r in conn.execute("PRAGMA table_list") if r[2] == "shadow"}
    except sqlite3.Error:          # SQLite before 3.37: the module's own names above
        pass
    return virtual, {_text(s) for s in shadow}


def _text(value: str | bytes | None) -> str | None:
    """A name or definition as str, whether the connection gives text as str or as bytes."""
    return value.decode() if isinstance(value, bytes) else value


SQLITE_MAGIC = b"SQLite format 3\x00"


def source_problem(path: Path) -> str | None:
    """What is wrong with a file given as a SQLite database, read from its 100-byte header (no
    full scan): empty, not SQLite at all, or shorter than the pages its header counts (a copy
    cut short). None when it looks whole."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "is empty (0 bytes), not a SQLite database: is it the right file, or was it cut short?"
    if not header.startswith(SQLITE_MAGIC) or len(header) < 100:
        return "is not a SQLite database (its first bytes are not SQLite's header)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    counter_valid = header[24:28] == header[92:96]          # the in-header size is to be trusted
    if counter_valid and pages and size < pages * page_size:
        return (f"is cut short: its header counts {pages} pages of {page_size} bytes, "
                f"but the file has {size} bytes")
    return None


def open_source(path: Path, raw_text: bool = False) -> sqlite3.Connection:
    """Read-only (never writes, never creates the file). Text arrives as str, and a value that is
    not UTF-8 makes SQLite raise; with ``raw_text`` it arrives as bytes, so such a value can be
    found and named."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    if raw_text:
        conn.text_factory = bytes
    return conn


def reflect_source(conn: sqlite3.Connection) -> dict[str, SourceTable]:
    """The source's tables: its own, and virtual tables (those that hold no data of their own
    with ``derived`` set, and no columns read); never SQLite's internal tables, nor the shadow
    tables a virtual table keeps its data in."""
    tables = {}
    virtual, shadow = virtual_tables(conn)
    names = [_text(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for name in names:
        if name in shadow:
            continue
        if virtual.get(name):
            tables[name] = SourceTable(name, [], [], derived=virtual[name])
            continue
        # table_xinfo: table_info leaves out generated columns (hidden 2: VIRTUAL, 3: STORED),
        # whose values are still rows' data where the target keeps them in plain columns (an
        # SQLite before 3.26 knows no table_xinfo, nor generated columns: it returns no row)
        info = [r for r in conn.execute(f"PRAGMA table_xinfo({quote_sqlite(name)})").fetchall() if r[6] != 1] or \
            [(*r, 0) for r in conn.execute(f"PRAGMA table_info({quote_sqlite(name)})").fetchall()]
        cols = [_text(r[1]) for r in info]
        pk = [c for _, c in sorted((r[5], cols[i]) for i, r in enumerate(info) if r[5])]
        generated = frozenset(cols[i] for i, r in enumerate(info) if r[6] in (2, 3))
        tables[name] = SourceTable(name, cols, pk, generated=generated)
    return tables


def quote_sqlite(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def fingerprint(path: Path) -> str:
    """Cheap identity of the source file's content: size, mtime and SQLite's change counter."""
    st = os.stat(path)
    with open(path, "rb") as fh:
        header = fh.read(100)
    counter = int.from_bytes(header[24:28], "big") if len(header) >= 28 else 0
    wal = Path(f"{path}-wal")     # in WAL mode, recent writes live there, not in the main file
    wal_part = f":{wal.stat().st_size}:{wal.stat().st_mtime_ns}" if wal.exists() else ""
    return f"{st.st_size}:{st.st_mtime_ns}:{counter}{wal_part}"
