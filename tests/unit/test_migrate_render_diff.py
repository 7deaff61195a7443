"""The migrate and render diffs are pure functions: tables of cases, no database, no Docker."""

from __future__ import annotations

import pytest

from orchestrator.changes import Action
from orchestrator.steps.migrate import Observed as MigObs, Rev, diff_migrate
from orchestrator.steps.render import FileSpec, FileState, Observed as RenderObs, diff_render, digest_text

R1, R2, R3 = Rev("r1", "initial"), Rev("r2", "add column"), Rev("r3", "add index")


def mig(**kw) -> MigObs:
    base = dict(heads=[R3], target="r3", reachable=True, current="r3")
    return MigObs(**{**base, **kw})


@pytest.mark.parametrize("obs,kw,action,field_change,words,kind", [
    (mig(), {}, Action.NONE, None, None, None),
    (mig(current=None, upgrade=[R1, R2, R3]), {}, Action.UPDATE, ("(none)", "r3"), "will run r1 initial", "notes"),
    (mig(current="r2", upgrade=[R3]), {}, Action.UPDATE, ("r2", "r3"), "will run r3 add index", "notes"),
    (mig(reachable=False, current=None, error="refused", upgrade=[R1, R2, R3]), {}, Action.UPDATE,
     ("(none)", "r3"), "not reachable now (refused)", "notes"),
    (mig(heads=[R2, R3]), {}, Action.NONE, None, "several heads: r2 add column; r3 add index", "problems"),
    (mig(current="zz", unknown_current=True), {}, Action.NONE, None, "revision zz, which these migrations do not contain", "problems"),
    (mig(target="r1", current="r3", downgrade=[R3, R2]), {}, Action.NONE, None, "Refused unless the step says allow_downgrade", "problems"),
    (mig(target="r1", current="r3", downgrade=[R3, R2]), {"allow_downgrade": True}, Action.UPDATE, ("r3", "r1"),
     "DOWNGRADE: undoing r3 add index; r2 add column", "warnings"),
    (mig(current="r2", upgrade=[R3]), {"recorded": {"observed": {"revision": "r3"}}}, Action.UPDATE, ("r2", "r3"),
     "alembic was run (or stamped) by hand", "warnings"),
    (mig(current=None, fresh=True, upgrade=[R1, R2, R3]), {"recorded": {"observed": {"revision": "r3"}}},
     Action.UPDATE, ("(none)", "r3"), "the database is new (it has no alembic_version table", "notes"),
    (mig(current=None, upgrade=[R1, R2, R3]), {"recorded": {"observed": {"revision": "r3"}}}, Action.UPDATE,
     ("(none)", "r3"), "alembic was run (or stamped) by hand", "warnings"),
], ids=["at-target", "empty", "one-pending", "unreachable", "heads", "unknown", "downgrade-refused",
        "downgrade-allowed", "drift", "new-database", "downgraded-to-base-by-hand"])
def test_diff_migrate(obs, kw, action, field_change, words, kind):
    d = diff_migrate(obs, target=kw.get("target", obs.target or "base"), allow_downgrade=kw.get("allow_downgrade", False),
                     recorded=kw.get("recorded", {}))
    assert d.action is action
    if field_change:
        assert (d.changes[0].before, d.changes[0].after) == field_change
    if words:
        assert any(words in text for text in getattr(d, kind)), getattr(d, kind)
    if kind != "warnings":
        assert not d.warnings, d.warnings
    if not words:
        assert not d.problems


def test_pending_revisions_are_data():
    d = diff_migrate(mig(current="r1", upgrade=[R2, R3]), target="head", allow_downgrade=False, recorded={})
    assert d.details["pending"] == [{"revision": "r2", "message": "add column"}, {"revision": "r3", "message": "add index"}]


def state(have, want="a=1\n", mode=0o600, have_mode=0o600):
    return FileState(".env", None, want, mode, have, have_mode if have is not None else None)


@pytest.mark.parametrize("files,recorded,fields,actions,warning", [
    ([state("a=1\n")], {}, [], [], None),
    ([state(None)], {}, [".env"], [Action.CREATE], None),
    ([state("a=0\n")], {}, [".env"], [Action.UPDATE], None),
    ([state("a=0\n")], {"observed": {"files": {".env": digest_text("a=1\n")}}}, [".env"], [Action.UPDATE],
     "edited by hand"),
    ([state("a=1\n", have_mode=0o644)], {}, [".env mode"], [Action.UPDATE], None),
], ids=["same", "missing", "content", "edited-by-hand", "mode"])
def test_diff_render(files, recorded, fields, actions, warning):
    d = diff_render(RenderObs(files), recorded)
    assert d.fields() == fields and [c.action for c in d.changes] == actions
    assert bool(d.warnings) == bool(warning) and all(warning in w for w in d.warnings)
    if fields and fields[0] == ".env":
        assert ".env" in d.details["diffs"]


def test_render_diff_is_unified():
    d = diff_render(RenderObs([state("a=0\nb=2\n", want="a=1\nb=2\n")]), {})
    text = d.details["diffs"][".env"]
    assert "-a=0\n" in text and "+a=1\n" in text and " b=2" in text


@pytest.mark.parametrize("given,mode", [("0600", "0600"), ("644", "0644"), (0o600, "0600"), (0o644, "0644"),
                                        (644, None), ("0o", None), ("999", None)])
def test_file_mode(given, mode):
    if mode is None:
        with pytest.raises(ValueError, match="mode"):
            FileSpec(src="a", dest="b", mode=given)
    else:
        assert FileSpec(src="a", dest="b", mode=given).mode == mode


def test_digest_of_a_file_holding_a_secret_does_not_hash_the_secret():
    from orchestrator import redact
    redact.register("a-secret-password")
    assert digest_text("PW=a-secret-password\n") == digest_text("PW=(redacted)\n")
