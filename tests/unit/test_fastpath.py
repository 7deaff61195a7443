"""The fast path's test of a batch: its column-wise shortcut never says "nothing odd" where the
per-value rule finds an odd value (data-driven and randomized against the rule itself)."""

from __future__ import annotations

import random

import pytest

from orchestrator.copying import fastpath
from orchestrator.copying.convert import TargetColumn
from orchestrator.copying.mapping import TablePlan
from orchestrator.copying.reflect import TargetTable

BASE = {"bool": "bool", "int": "int4", "timestamptz": "timestamptz", "timestamp": "timestamp", "date": "date",
        "time": "time", "bytea": "bytea", "text": "text", "float": "float8", "numeric": "numeric", "jsonb": "jsonb",
        "uuid": "uuid", "interval": "interval"}


def plan(*kinds: str) -> TablePlan:
    cols = [(f"c{i}", TargetColumn(f"c{i}", BASE[k], BASE[k])) for i, k in enumerate(kinds)]
    return TablePlan("t", "t", cols, [], TargetTable("t"))


def test_finds_values_postgres_would_misread():
    odd = fastpath.odd_value(plan("bool", "timestamptz", "text"))
    assert odd([(1, "2024-05-28 10:00:00", "x"), ("yes", None, None)]) is None
    assert odd([(1, "now", "x")]) == (1, "now")
    assert odd([(1, 1716896311, "x")]) == (1, 1716896311)
    assert odd([(" ON ", "2024-05-28 10:00:00", "x")]) is None   # PostgreSQL reads it
    assert odd([("o", "2024-05-28", "x")]) == (0, "o")
    assert odd([(1, "2024-05-28", b"\x00blob")]) == (2, b"\x00blob")
    assert odd([]) is None


@pytest.mark.parametrize("kind, clean, dirty", [
    ("int", [1, -5, None, 2**40, "7"], [1.0, b"1"]),
    ("bool", [0, 1, "t", "No", " yes ", None], [2, 1.0, "o", b"1", "", "maybe"]),
    ("timestamptz", ["2024-05-28 10:00:00", "2024-05-28T10:00:00+02:00", "1999-01-01", None],
     ["now", "", " 2024-05-28", 1716896311, 1.5, b"2024", ":00", "\u0663024-01-01"]),
    ("timestamp", ["2024-05-28 10:00:00.5", "2024-05-28", None],
     ["2024-05-28 10:00:00+02", "2024-05-28T10:00:00Z", "2024-05-28 10:00:00z", "2024-05-28 10:00:00-05", "x"]),
    ("date", ["2024-05-28", None], ["2024-5-28", "2024-05-28 00:00", 20240528, "now"]),
    ("time", [None], ["10:00"]),
    ("bytea", [b"", b"\x00", None], ["text", 1]),
    ("text", ["", "a\tb", None, 5, 1.5], [b"x"]),
    ("jsonb", ['{"a": 1}', None], [b"{}"]),
    ("interval", ["1 day 02:00:00", "00:05:00", "P1DT2H", "300 seconds", None],
     ["1970-01-01 00:05:00.000000", "1969-12-31T23:55:00", 300, 1.5, b"1 day"]),
])
def test_each_kind_clean_and_dirty(kind, clean, dirty):
    odd = fastpath.odd_value(plan("int", kind))
    assert odd([(i, v) for i, v in enumerate(clean)]) is None
    for v in dirty:
        batch = [(i, c) for i, c in enumerate(clean)] + [(99, v)] + [(100, clean[0])]
        got = odd(batch)
        # the rule itself decides: a Unicode digit passes it (PostgreSQL then names the row)
        if got is None:
            assert kind == "timestamptz" and v[:1].isdigit()
        else:
            assert got == (1, v)


POOL = [None, 0, 1, 2, -1, 1.0, 0.5, b"", b"x", "", "t", "yes", " off ", "o", "now", "2024-05-28",
        "2024-05-28 10:00:00", "2024-05-28T10:00:00Z", "2024-05-28 10:00:00+02:00", "2024-05-28 10:00:00-05",
        "10:00", "x-y-z-w", "\u0663", "9", ":", "/", "20240528", 1716896311]


def test_randomized_against_the_per_value_rule():
    rng = random.Random(7)
    kinds = list(BASE)
    for _ in range(3000):
        ks = rng.sample(kinds, rng.randint(1, 4))
        p = plan(*ks)
        rule = fastpath._per_value(ks, "t")
        odd = fastpath.odd_value(p)
        # mostly-clean batches: a column's values drawn from a few, sometimes one odd one
        batch = [tuple(rng.choice(POOL[:rng.randint(1, len(POOL))]) for _ in ks) for _ in range(rng.randint(0, 6))]
        assert odd(batch) == rule(batch), (ks, batch)
        if rule(batch) is not None:
            assert not all(map(fastpath._column_clean, ks, zip(*batch)))
