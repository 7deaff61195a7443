import json
import os
import stat

import pytest

from orchestrator import redact
from orchestrator.errors import LockHeld, OrchestrateError
from orchestrator.lockfile import ApplyLock, Lockfile
from orchestrator.plan import build_context, load_plan
from orchestrator.secrets import PENDING, SecretStore, hash_matches, salted_hash, secrets_path, stable_hash

PLAN = """\
name: s
secrets:
  generated: {generate: 24}
  from_env: {env: ORCH_UNIT_PW, generate: 16}
  from_file: {file: pw.txt}
steps:
  - name: a
    db-container: {image: x, container: c, volume: v, password: "{{ secrets.generated }}"}
"""


@pytest.fixture
def plan(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCH_UNIT_PW", raising=False)
    (tmp_path / "pw.txt").write_text("from-a-file\n")
    path = tmp_path / "p.yaml"
    path.write_text(PLAN)
    return load_plan(path)


def test_generated_secret_is_created_once_with_mode_0600(plan):
    store = SecretStore(secrets_path(plan.path))
    ctx = build_context(plan, store, generate=True)
    store.save()
    first = ctx.secrets["generated"]
    assert len(first) == 24 and first.isalnum()
    mode = stat.S_IMODE(os.stat(secrets_path(plan.path)).st_mode)
    assert mode == 0o600
    again = build_context(plan, SecretStore(secrets_path(plan.path)), generate=True)
    assert again.secrets["generated"] == first
    assert again.secrets["from_file"] == "from-a-file"


def test_plan_mode_never_writes_secrets(plan):
    ctx = build_context(plan, SecretStore(secrets_path(plan.path)), generate=False)
    assert ctx.secrets["generated"] == PENDING
    assert not secrets_path(plan.path).exists()


def test_environment_wins_over_generation(plan, monkeypatch):
    monkeypatch.setenv("ORCH_UNIT_PW", "from-the-env")
    ctx = build_context(plan, SecretStore(secrets_path(plan.path)), generate=True)
    assert ctx.secrets["from_env"] == "from-the-env"
    assert redact.redact("x from-the-env y") == "x (redacted) y"


def test_salted_hash():
    h = salted_hash("pw-123456")
    assert h.startswith("scrypt$") and "pw-123456" not in h
    assert hash_matches("pw-123456", h) and not hash_matches("pw-1234567", h)
    assert salted_hash("pw-123456") != h                      # salted
    assert stable_hash("pw-123456", h) == h                   # no churn in the lockfile
    assert stable_hash("other-pw", h) != h


def test_lockfile_is_deterministic_and_redacted(tmp_path):
    redact.register("very-secret-value")
    lf = Lockfile(tmp_path / "p.lock")
    lf.set_step("b", {"z": 1, "a": "url://u:very-secret-value@h"})
    lf.set_step("a", {"k": [3, 2]})
    assert lf.save() is True
    text = (tmp_path / "p.lock").read_text()
    assert "very-secret-value" not in text and "(redacted)" in text
    assert list(json.loads(text)["steps"]) == ["a", "b"]       # sorted keys
    again = Lockfile.load(tmp_path / "p.lock")
    assert again.save() is False                               # unchanged content is not rewritten
    assert not list(tmp_path.glob(".p.lock.*")), "no temp file left behind"


def test_corrupt_lockfile_is_a_clear_error(tmp_path):
    (tmp_path / "p.lock").write_text("{ not json")
    with pytest.raises(OrchestrateError, match=r"p.lock:1: the lockfile is not valid JSON"):
        Lockfile.load(tmp_path / "p.lock")


def test_apply_lock_is_exclusive_and_released(tmp_path):
    plan = tmp_path / "p.yaml"
    with ApplyLock(plan):
        with pytest.raises(LockHeld, match="another orchestrate run holds the lock"):
            with ApplyLock(plan):
                pass
    with ApplyLock(plan):   # released
        pass
