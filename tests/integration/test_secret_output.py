"""No secret, old or new, is ever printed: a password change on a converged phase-1 system, searched
for in every output format, the saved plan and the lockfile."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.integration


def leaks(text: str, *secrets: str) -> list[str]:
    return [s for s in secrets for form in {s, quote(s, safe="")} if form in text]


def test_a_changed_password_is_never_printed_old_or_new(repo_copy, monkeypatch, tmp_path):
    assert repo_copy.run("apply")[0] == 0
    old = repo_copy.password                       # generated into plans/phase1.secrets
    new = "New/pass-" + uuid.uuid4().hex           # '/' is URL-encoded inside DATABASE_URL
    monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", new)

    printed = {}
    code, printed["plan"] = repo_copy.run("plan", "--detailed-exitcode")
    assert code == 2, printed["plan"]
    text = printed["plan"]
    assert "-POSTGRES_PASSWORD=(redacted)" in text and "+POSTGRES_PASSWORD=(redacted)" in text, text
    assert f"-DATABASE_URL=postgresql+psycopg://dbadmin:(redacted)@127.0.0.1:{repo_copy.port}/autodeploy" in text
    assert f"+DATABASE_URL=postgresql+psycopg://dbadmin:(redacted)@127.0.0.1:{repo_copy.port}/autodeploy" in text
    assert "-# DATABASE_URL=postgresql+psycopg://dbadmin:(redacted)@postgres:5432/autodeploy" in text
    assert "edited by hand" not in text, "a password change is not a hand edit"
    printed["plan --json"] = repo_copy.run("plan", "--json")[1]
    assert ".env" in printed["plan --json"] and "(redacted)" in printed["plan --json"]
    printed["plan -v"] = repo_copy.run("plan", "-v")[1]
    saved = tmp_path / "plan.saved"
    code, printed["plan --out"] = repo_copy.run("plan", "--out", saved)
    printed["saved plan"] = saved.read_text()
    # the port changing as well: the old line now matches the new one nowhere but its masked parts
    printed["plan, port too"] = repo_copy.run("plan", "-e", f"db_port={free_port()}")[1]
    assert "-POSTGRES_PASSWORD=(redacted)" in printed["plan, port too"]
    printed["status --json"] = repo_copy.run("status", "--json")[1]
    code, printed["apply saved -v"] = run_cli("-v", "apply", saved)
    assert code == 0, printed["apply saved -v"]
    assert "set the new password with ALTER ROLE" in printed["apply saved -v"]
    printed["lockfile"] = repo_copy.plan.with_suffix(".lock").read_text()
    code, printed["plan after"] = repo_copy.run("plan", "--detailed-exitcode")
    assert code == 0, printed["plan after"]
    printed["status after"] = repo_copy.run("status")[1]

    for name, text in printed.items():
        assert not leaks(text, old, new), f"{name} shows a password:\n{text}"
    env = (repo_copy.root / ".env").read_text()
    assert f"POSTGRES_PASSWORD={new}\n" in env and f":{quote(new, safe='')}@127.0.0.1:" in env
