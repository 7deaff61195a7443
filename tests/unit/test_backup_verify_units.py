"""Retention and the verify/backup diffs are pure: tables of cases."""

from datetime import datetime, timezone

import pytest

from orchestrator.steps.backup import Observed as BackupObs, diff_backup, plan_retention
from orchestrator.steps.verify import Check, Observed as VerifyObs, TableResult, diff_verify

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=timezone.utc)


def b(name, created):
    return {"name": name, "created": created, "size": 1, "path": name}


BACKUPS = [b("a", "20261110T120000Z"), b("b", "20261118T120000Z"), b("c", "20261121T110000Z")]


@pytest.mark.parametrize("keep,max_age,adding,doomed", [
    (None, None, True, []),
    (3, None, False, []),
    (3, None, True, ["a"]),           # the new one counts: exactly 3 remain
    (1, None, True, ["a", "b", "c"]),
    (2, None, False, ["a"]),
    (None, 7 * 86400, False, ["a"]),   # older than 7 days
    (2, 7 * 86400, True, ["a", "b"]),
])
def test_retention(keep, max_age, adding, doomed):
    assert [x["name"] for x in plan_retention(BACKUPS, keep=keep, max_age=max_age, now=NOW, adding=adding)] == doomed


def test_backup_diff():
    d = diff_backup(BackupObs(backups=BACKUPS, due="when: always", prune=[BACKUPS[0]], missing=["x"]),
                    retention_note="keep 3")
    assert [c.field for c in d.changes] == ["backup", "retention"]
    assert d.changes[1].after == "3 backups" and "removes a" in d.changes[1].reason
    assert d.warnings == ["backup x is recorded but its file is gone"]
    assert diff_backup(BackupObs(backups=BACKUPS), retention_note="").changes == []


def test_verify_is_never_a_change_and_failures_are_problems():
    obs = VerifyObs(ran=True, checks=[Check("database", True, "answers"), Check("sequences", False, "t.id behind")],
                    tables=[TableResult("t", 3, 2, False, "1 row(s) differ")])
    d = diff_verify(obs)
    assert d.changes == [] and d.problems == ["sequences: t.id behind", "table t: 1 row(s) differ"]
    assert d.details["ok"] is False
    assert diff_verify(VerifyObs()).notes and not diff_verify(VerifyObs()).problems
