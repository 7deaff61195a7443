"""Which rows the copy may hand to COPY as SQLite gives them (its fast path).

PostgreSQL's input functions read most of SQLite's values exactly as documented: integers,
text, ISO timestamps in the step's time zone, 0/1 or t/f/true/false/yes/no as booleans. A few
they would misread or refuse, and the table then goes through the Python converters: a BLOB in a
text column, an epoch number or a word such as 'now' in a timestamp column, an offset a
``timestamp`` column would drop, 'o' or 2 in a boolean column, a REAL in an integer column.

:func:`odd_value` finds the first such value of a batch. It tests each batch column by column
with C-speed builtins first (the set of the values' types, the least and greatest string, a
search in all the strings at once): that answers "nothing odd" for a usual batch at a fifth of
the cost of testing each value in Python, which was a third of the copy's own time. The column
tests only ever err towards "look closer": when one fails, each value of the batch is tested
(:func:`_per_value`), which is the rule itself, and names the first odd one.
"""

from __future__ import annotations

from functools import partial
from itertools import repeat
from operator import is_not
from typing import Any, Callable

from .convert import BOOL_WORDS, C_SPACE, DATETIME_SHAPED
from .mapping import TablePlan

Batch = list[tuple]
Odd = tuple[int, Any] | None

# the rule, per target kind: an expression true for a non-NULL value v the fast path must not send
PER_VALUE = {
    "bool": "not BOOL_OK(v)",
    "int": "type(v) is float or type(v) is bytes",
    "timestamptz": "type(v) is not str or not v[:1].isdigit()",
    "timestamp": 'type(v) is not str or not v[:1].isdigit() or "+" in v or "Z" in v or "z" in v or "-" in v[10:]',
    "date": "type(v) is not str or len(v) != 10",
    "time": "True",
    "bytea": "type(v) is not bytes",
    "interval": "type(v) is not str or DATETIME_SHAPED(v) is not None",
}
OTHER = "type(v) is bytes"      # every other kind: text, numbers, JSON, uuid... (PostgreSQL judges the text)

_present = partial(is_not, None)
_NONE = type(None)


def _bool_ok(v) -> bool:
    """A boolean as PostgreSQL reads it: 0 or 1, or one of its words (case aside, after spaces)."""
    return ((v == 0 or v == 1) and type(v) is int) or (type(v) is str and v.strip(C_SPACE).lower() in BOOL_WORDS)


def _per_value(kinds: list[str], name: str) -> Callable[[Batch], Odd]:
    """The rule applied to every value: one function per table, compiled from the fixed
    expressions above (never from data), since a function call per value would cost as much as
    the copy."""
    lines = ["def odd(batch):", "    for row in batch:"]
    for i, kind in enumerate(kinds):
        lines += [f"        v = row[{i}]", f"        if v is not None and ({PER_VALUE.get(kind, OTHER)}):",
                  f"            return {i}, v"]
    lines += ["    return None"]
    namespace = {"BOOL_OK": _bool_ok, "DATETIME_SHAPED": DATETIME_SHAPED.match}
    exec(compile("\n".join(lines), f"<fast-path test of {name}>", "exec"), namespace)
    return namespace["odd"]


def _column_clean(kind: str, col: tuple) -> bool:
    """True only if no value of the column breaks the rule (False: test each value)."""
    types = set(map(type, col))
    if _NONE in types:
        types.discard(_NONE)
        if not types:
            return True
        col = tuple(filter(_present, col))
    if kind == "int":
        return float not in types and bytes not in types
    if kind in ("timestamptz", "timestamp", "date"):
        # every string starts with an ASCII digit: the least is >= "0" and the greatest < ":"
        if types != {str} or min(col) < "0" or max(col) >= ":":
            return False
        if kind == "date":
            return set(map(len, col)) == {10}
        if kind == "timestamp":
            joined = "\x00".join(col)
            return ("+" not in joined and "Z" not in joined and "z" not in joined
                    and max(map(str.find, col, repeat("-"), repeat(10))) < 0)
        return True
    if kind == "bool":
        # (set() would merge 1.0 into 1: the types are checked first)
        return types <= {int, str} and all(map(_bool_ok, set(col)))
    if kind == "time":
        return False
    if kind == "bytea":
        return types == {bytes}
    if kind == "interval":     # text PostgreSQL reads; a number, or a time of day since 1970, is converted
        return types == {str} and not any(map(DATETIME_SHAPED.match, col))
    return bytes not in types


def odd_value(p: TablePlan) -> Callable[[Batch], Odd]:
    """A function returning the first (column index, value) of a batch of source rows that the
    fast path must not send as it is, or None."""
    kinds = [c.kind for _, c in p.columns]
    per_value = _per_value(kinds, p.target)

    def odd(batch: Batch) -> Odd:
        if all(map(_column_clean, kinds, zip(*batch))):
            return None
        return per_value(batch)
    return odd
