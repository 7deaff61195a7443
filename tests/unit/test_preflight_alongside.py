"""apply's check of the source meets the load halfway (copying/preflight.Alongside): each table
is read once, by the check or by the load, and nothing is left unchecked."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from orchestrator.background import Background
from orchestrator.copying.preflight import Alongside


class Scans:
    """A scan that records the tables it read; ``hold`` blocks the scan of one table until set."""

    def __init__(self, hold: str | None = None):
        self.read: list[str] = []
        self.hold = hold
        self.held = threading.Event()
        self.release = threading.Event()

    def __call__(self, table: str, raw: sqlite3.Connection) -> None:
        if table == self.hold:
            self.held.set()
            assert self.release.wait(5)
        self.read.append(table)


def opened() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", check_same_thread=False)


def test_each_table_is_read_once_by_the_check_or_by_the_load():
    scans = Scans(hold="c")
    check = Alongside(["a", "b", "c"], scans, opened, Background)
    assert scans.held.wait(5)            # the check starts with the last table the load reaches
    check.begin("a")
    check.passed("a")
    check.begin("b")                     # the load has b before the check comes to it
    scans.release.set()
    check.wait()
    assert check.done() and scans.read == ["c"]


def test_without_a_load_the_check_reads_every_table_from_the_last():
    scans = Scans()
    check = Alongside(["a", "b", "c"], scans, opened, Background)
    check.wait()
    assert scans.read == ["c", "b", "a"]


def test_the_load_beginning_a_table_interrupts_its_scan():
    started = threading.Event()

    def endless(table: str, raw: sqlite3.Connection) -> None:
        cur = raw.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
                          "SELECT i FROM n WHERE i % 1000000 = 0")
        started.set()
        while cur.fetchmany(1):
            pass

    check = Alongside(["a", "big"], endless, opened, Background)
    assert started.wait(5)
    check.begin("a")
    check.begin("big")
    deadline = time.monotonic() + 5
    while not check.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert check.done(), "the scan was not interrupted"
    check.wait()                         # no error: the load tests the table itself


def test_a_real_error_of_the_scan_reaches_the_caller():
    def broken(table: str, raw: sqlite3.Connection) -> None:
        raw.execute("SELECT * FROM no_such_table")

    check = Alongside(["a"], broken, opened, Background)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        check.wait()


def test_after_a_refusal_complete_reads_what_neither_covered():
    scans = Scans(hold="d")
    check = Alongside(["a", "b", "c", "d"], scans, opened, Background)
    assert scans.held.wait(5)
    check.begin("a")
    check.passed("a")                    # loaded clean: its values were tested
    check.begin("b")                     # the load refused a value of b
    scans.release.set()
    check.complete()
    assert scans.read == ["d", "c", "b"]     # the thread read c before it met the load at b


def test_a_checked_source_starts_nothing():
    scans = Scans()
    check = Alongside([], scans, opened, Background)
    check.complete()
    assert check.done() and scans.read == []
