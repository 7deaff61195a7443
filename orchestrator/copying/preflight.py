"""Every problem the copy would meet, found before the first row is written.

SQLite itself picks out the values that could fail (a condition per target column, evaluated in
C over the whole table: a non-integer in an integer column, a word that is not a boolean, a NUL
in text, a date SQLite normalises to another day, text longer than its varchar...). Only those rows go through the Python converters that the copy uses, so a check
of a million-row table costs a scan, not a conversion of every value. A value no condition
flags is one the converters accept as it is; anything only the server can judge (a type
orchestrate does not convert, a CHECK constraint, text that is not UTF-8) is still found by the
load, per table, and named.

``plan`` and ``apply`` run the same check: apply refuses before the first table when it finds
anything, and names every problem at once. apply runs it alongside the load (:class:`Alongside`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Callable

from .convert import FALSE, INT_RANGE, TRUE, ConvertError, TargetColumn, has_nul
from .mapping import TablePlan
from .reflect import quote_sqlite

SAMPLE = 5


@dataclass
class Finding:
    """Values of one column that cannot be loaded (``problem``) or that the copy repairs."""
    table: str
    column: str
    reason: str
    count: int = 0
    first: str = ""
    sample: list[str] = field(default_factory=list)
    repair: bool = False

    def describe(self) -> str:
        keys = f" (rows: {'; '.join(self.sample)})" if len(self.sample) > 1 else ""
        if self.repair:
            return f"{self.table}: column {self.column}: {self.count} value(s) {self.reason}, e.g. row {self.sample[0]}{keys}"
        return (f"{self.table}: column {self.column}: {self.count} value(s) cannot be loaded, e.g. row "
                f"{self.sample[0]}: {self.first}{keys}")


def _json_functions(src: sqlite3.Connection) -> bool:
    try:
        src.execute("SELECT json_valid('1')")
        return True
    except sqlite3.OperationalError:
        return False


def suspect_sql(col: TargetColumn, c: str, *, json_ok: bool = True) -> str | None:
    """A SQLite condition, true for a non-NULL value of column ``c`` that the converters must
    judge; None when every value is accepted as it is (or only the server can judge it)."""
    kind = col.kind
    text = f"typeof({c}) != 'text'"
    if kind == "int":
        lo, hi = INT_RANGE[col.base]
        return f"typeof({c}) != 'integer' OR {c} < {lo} OR {c} > {hi}"
    if kind == "bool":
        words = ", ".join(f"'{w}'" for w in sorted(TRUE | FALSE))
        return f"NOT ((typeof({c}) = 'integer' AND {c} IN (0, 1)) OR (typeof({c}) = 'text' AND lower({c}) IN ({words})))"
    if kind == "float":
        wide = f" OR abs({c}) > 3.4e38" if col.base == "float4" else ""
        return f"typeof({c}) NOT IN ('integer', 'real'){wide}"
    if kind == "numeric":
        if col.precision is None:
            return f"typeof({c}) NOT IN ('integer', 'real')"
        return f"typeof({c}) != 'integer' OR abs({c}) >= {10 ** (col.precision - (col.scale or 0))}"
    if kind in ("timestamptz", "timestamp"):
        # a date SQLite would move to another day (2024-02-30) is not kept by "+0 days"
        return (f"{text} OR {c} NOT GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]*' "
                f"OR substr({c}, 6, 2) NOT BETWEEN '01' AND '12' OR substr({c}, 9, 2) = '00' "
                f"OR (substr({c}, 9, 2) > '28' AND date(substr({c}, 1, 10), '+0 days') IS NOT substr({c}, 1, 10)) "
                f"OR (length({c}) > 10 AND datetime({c}) IS NULL)")
    if kind == "date":
        return f"{text} OR length({c}) != 10 OR date({c}, '+0 days') IS NOT {c}"
    if kind == "time":
        return f"{text} OR time({c}) IS NULL"
    if kind in ("json", "jsonb"):
        if not json_ok:
            return "1"
        nul = f" OR instr({c}, '\\u0000') > 0" if kind == "jsonb" else ""
        return f"{text} OR NOT json_valid({c}){nul}"
    if kind == "bytea":
        return f"typeof({c}) NOT IN ('blob', 'text')"
    if kind == "uuid":
        return f"{text} OR length({c}) != 36"
    if kind == "text":
        # (text that is not UTF-8 cannot be told in SQL at a cost worth paying: the load of its
        # table finds it and names the row; instr on text sees past a NUL, length does not)
        longer = f" OR length({c}) > {col.length}" if col.length is not None else ""
        return f"typeof({c}) = 'blob' OR instr({c}, char(0)) > 0{longer}"
    return None


def scan(raw: sqlite3.Connection, p: TablePlan, converters: list[Callable], *, keys: list[str], key_sql: str,
         row_name: Callable, batch_size: int = 5000) -> list[Finding]:
    """Every value of the table that the copy would refuse (or repair), by column and reason.
    ``raw`` is the source opened with text as bytes, so invalid UTF-8 is found and named."""
    json_ok = _json_functions(raw)
    conds = []
    reads = p.read_sql("s")
    for c, (s_col, tcol) in zip(reads, p.columns):
        test = suspect_sql(tcol, c, json_ok=json_ok)
        if tcol.not_null:
            conds.append(f"{c} IS NULL")
        if test is not None:
            conds.append(f"({c} IS NOT NULL AND ({test}))")
    if not conds:
        return []
    query = f"SELECT {', '.join(reads)}, {key_sql} FROM {quote_sqlite(p.source)} AS s WHERE " + " OR ".join(conds)
    found: dict[tuple[str, str], Finding] = {}
    n = len(p.columns)

    def note(column: str, reason: str, message: str, row, repair: bool = False) -> None:
        hit = found.setdefault((column, reason), Finding(p.target, column, reason, first=message, repair=repair))
        hit.count += 1
        if len(hit.sample) < SAMPLE:
            hit.sample.append(row_name(keys, row[n:]))

    cur = raw.execute(query)
    while batch := cur.fetchmany(batch_size):
        for row in batch:
            for i, (conv, (_, tcol)) in enumerate(zip(converters, p.columns)):
                v = row[i]
                if v is None:
                    if tcol.not_null:
                        note(tcol.name, "null", f"NULL, but {p.target}.{tcol.name} is NOT NULL", row)
                    continue
                try:
                    conv(v)
                except ConvertError as exc:
                    text = str(exc)
                    note(tcol.name, text.split("'")[0][:40], text, row)
                    continue
                if tcol.kind == "text" and has_nul(v):
                    note(tcol.name, "had NUL bytes stripped (strip_nul: true)", "", row, repair=True)
    return list(found.values())


class Alongside:
    """apply's check, in a thread while the tables load, meeting the load halfway: it scans the
    tables from the last one the load will reach, while the load begins with the first; a table
    the load has begun is left to the load, which tests every value it writes with the same
    converters and refuses the first bad one (the scan of it, if under way, is stopped). So
    each table is read once, by the check or by the load, and the check is done when the two
    meet: every table then is scanned, or loaded in the open transaction (nothing commits
    before). On a refusal by the load, :meth:`complete` scans what neither covered, so that the
    refusal names every problem. ``start(fn, name)`` runs ``fn`` in its thread (a Background)."""

    def __init__(self, tables: list[str], scan: Callable[[str, sqlite3.Connection], None],
                 open_raw: Callable[[], sqlite3.Connection], start: Callable):
        self._tables = tables             # in the order the load takes them
        self._scan = scan
        self._open = open_raw
        self._lock = threading.Lock()
        self._begun: set[str] = set()     # by the load
        self._passed: set[str] = set()    # loaded: every value tested
        self._scanned: set[str] = set()
        self._scanning: str | None = None
        self._stop = False
        self._job = start(self._run, "orchestrate-preflight")

    def _run(self) -> None:
        if not self._tables:
            return
        with contextlib.closing(self._open()) as raw:
            # SQLite asks this every 100k steps of its virtual machine: a table the load has
            # begun stops its scan at once (a flag, so it holds even before the query runs)
            raw.set_progress_handler(lambda: self._stop, 100_000)
            for table in reversed(self._tables):
                with self._lock:
                    if table in self._begun:
                        return            # met: the load has this table and every one before it
                    self._scanning, self._stop = table, False
                try:
                    self._scan(table, raw)
                except sqlite3.OperationalError:
                    if self._stop:        # interrupted by begin(): the load tests the table
                        return
                    raise
                finally:
                    with self._lock:
                        self._scanning = None
                self._scanned.add(table)

    def begin(self, table: str) -> None:
        """The load begins ``table``: the check leaves it (and those before it) to the load."""
        with self._lock:
            self._begun.add(table)
            if self._scanning == table:
                self._stop = True

    def passed(self, table: str) -> None:
        """The load wrote every row of ``table``: each value was tested."""
        self._passed.add(table)

    def done(self) -> bool:
        return self._job.done()

    def wait(self) -> None:
        """Until the check has met the load (raises what the check raised)."""
        self._job.result()

    def covered(self) -> tuple[list[str], list[str]]:
        """(the tables the check read, those it left to the load), in load order."""
        return ([t for t in self._tables if t in self._scanned],
                [t for t in self._tables if t not in self._scanned])

    def complete(self) -> None:
        """After the load refused a value: wait for the thread, then scan the tables neither it
        nor the load covered, the refused one included."""
        self._job.result()
        rest = [t for t in self._tables if t not in self._scanned and t not in self._passed]
        if rest:
            with contextlib.closing(self._open()) as raw:
                for table in rest:
                    self._scan(table, raw)
                    self._scanned.add(table)
