"""A rendered file's diff never shows a secret, current or earlier (the earlier one is not known to
the process: only where it was, recorded at apply, and the shape of the lines it sits in)."""

from __future__ import annotations

import base64

from orchestrator import redact
from orchestrator.secrets import salted_hash
from orchestrator.steps.render import (TOKEN, FileState, Observed, as_written, diff_render, file_digest,
                                       secret_lines)

OLD, NEW = "old-Secret-value-1", "new-Secret-value-2"
TEMPLATE = "# comment\nURL=postgresql://app:{pw}@127.0.0.1:{port}/db\nPW={pw}\nA={a}\n"


def render(pw: str, port: int = 5432, a: int = 1) -> str:
    return TEMPLATE.format(pw=pw, port=port, a=a)


def state(have: str | None, **want) -> FileState:
    return FileState(".env", None, render(NEW, **want), 0o600, have, 0o600 if have is not None else None,
                     masked=render(TOKEN, **want))


def recorded_for(written: str, secrets: str = OLD) -> dict:
    """What apply recorded after writing ``written`` with ``secrets``."""
    return {"secrets": {"secrets": salted_hash(secrets)},
            "observed": {"files": {".env": file_digest(written, secret=True)}, "secret_lines": {".env": [1, 2]}}}


def the_diff(obs: Observed, recorded: dict) -> str:
    return diff_render(obs, recorded).details["diffs"][".env"]


def test_secret_lines_show_only_what_the_secret_free_rendering_has():
    shown, patterns, multiline = secret_lines(render(NEW), render(TOKEN))
    assert shown == {1: "URL=postgresql://app:(redacted)@127.0.0.1:5432/db\n", 2: "PW=(redacted)\n"}
    assert not multiline and all(TOKEN in p for p in patterns)


def test_a_secret_passed_through_a_filter_is_masked_too():
    encode = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    shown, _, _ = secret_lines(f"X=1\nAUTH=Basic {encode(NEW)}\n", f"X=1\nAUTH=Basic {encode(TOKEN)}\n")
    assert list(shown) == [1] and shown[1].startswith("AUTH=Basic ") and encode(NEW)[4:] not in shown[1]


def test_a_secret_spanning_lines_is_masked_on_every_line():
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----"
    shown, _, multiline = secret_lines(f"A=1\nKEY={key}\nB=2\n", f"A=1\nKEY={TOKEN}\nB=2\n")
    assert multiline and sorted(shown) == [1, 2, 3]
    assert "MIIE" not in "".join(shown.values())


def test_password_changed_old_value_unknown_is_redacted_on_both_sides():
    redact.register(NEW)                               # the new one is known, the old one is not
    old_file = render(OLD)
    obs = Observed([state(old_file)], secrets=NEW)
    d = diff_render(obs, recorded_for(old_file))
    text = d.details["diffs"][".env"]
    assert OLD not in text and NEW not in text
    assert "-PW=(redacted)\n" in text and "+PW=(redacted)\n" in text
    assert "-URL=postgresql://app:(redacted)@127.0.0.1:5432/db\n" in text
    assert not d.warnings, "the file is what apply wrote: not edited by hand"
    assert d.changes[0].secret and d.changes[0].reason == "a secret in it changed"


def test_password_and_port_changed_together():
    redact.register(NEW)
    old_file = render(OLD, port=5433)
    text = the_diff(Observed([state(old_file, port=5434)], secrets=NEW), recorded_for(old_file))
    assert OLD not in text and "-PW=(redacted)\n" in text
    assert "+URL=postgresql://app:(redacted)@127.0.0.1:5434/db\n" in text


def test_same_secrets_are_masked_by_value_so_the_rest_of_the_line_shows():
    redact.register(NEW)
    old_file = render(NEW, port=5433)
    text = the_diff(Observed([state(old_file, port=5434)], secrets=NEW), recorded_for(old_file, NEW))
    assert "-URL=postgresql://app:(redacted)@127.0.0.1:5433/db\n" in text
    assert "+URL=postgresql://app:(redacted)@127.0.0.1:5434/db\n" in text


def test_without_a_record_lines_shaped_like_a_secrets_are_masked_and_the_rest_shows():
    redact.register(NEW)
    text = the_diff(Observed([state(render(OLD, port=5433), a=2)], secrets=NEW), {})
    assert OLD not in text
    assert "-PW=(redacted)\n" in text and "-A=1\n" in text and "+A=2\n" in text


def test_a_hand_edit_is_reported_and_shown_but_not_the_old_secret():
    redact.register(NEW)
    written = render(OLD)
    edited = written.replace("A=1", "A=9")
    d = diff_render(Observed([state(edited)], secrets=NEW), recorded_for(written))
    text = d.details["diffs"][".env"]
    assert OLD not in text and "-A=9\n" in text
    assert any("edited by hand" in w for w in d.warnings)


def test_the_record_of_a_file_with_a_secret_is_salted_and_matches_only_that_content():
    stored = file_digest(render(OLD), secret=True)
    assert stored.startswith("scrypt$") and OLD not in stored
    assert as_written(render(OLD), stored) and not as_written(render(NEW), stored)
    assert as_written("A=1\n", file_digest("A=1\n", secret=False))
