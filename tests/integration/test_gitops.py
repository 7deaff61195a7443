"""Saved plans, drift checks and variable files on the complete phase-1 plan."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import TEST_LABEL, free_port

pytestmark = pytest.mark.integration


def test_saved_plan_is_applied_exactly(repo_copy, docker_client):
    saved = repo_copy.root / "plan.saved"
    code, out = repo_copy.run("plan", "--detailed-exitcode", "--out", str(saved))
    assert code == 2 and f"Saved the plan to {saved}" in out, out
    doc = json.loads(saved.read_text())
    assert doc["kind"] == "orchestrate-saved-plan" and doc["changes_pending"] is True
    from tests.conftest import run_cli
    code, out = run_cli("apply", saved)
    assert code == 0 and "Applying the saved plan" in out and "failed=0" in out, out
    code, out = repo_copy.run("plan", "--detailed-exitcode")
    assert code == 0, out
    code, out = run_cli("apply", saved)
    assert code == 1 and "the saved plan is stale" in out, "a saved plan is applied once"


def test_stale_saved_plan_is_refused_and_changes_nothing(repo_copy, docker_client):
    from tests.conftest import run_cli
    assert repo_copy.run("apply")[0] == 0
    saved = repo_copy.root / "plan.saved"
    new_port = free_port()
    code, out = repo_copy.run("plan", "-e", f"db_port={new_port}", "--out", str(saved))
    assert code == 0 and "recreate" in out, out
    docker_client.api.update_container(repo_copy.container, restart_policy={"Name": "always"})   # by hand
    before = docker_client.api.inspect_container(repo_copy.container)
    env_before = (repo_copy.root / ".env").read_text()
    code, out = run_cli("apply", saved)
    assert code == 1, out
    assert "the saved plan is stale: the real state changed since it was made: step postgres" in out, out
    assert "nothing was changed" in out
    after = docker_client.api.inspect_container(repo_copy.container)
    assert after["Id"] == before["Id"] and after["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert (repo_copy.root / ".env").read_text() == env_before


def test_a_saved_plan_is_stale_when_the_plan_file_changes(repo_copy):
    from tests.conftest import run_cli
    saved = repo_copy.root / "plan.saved"
    assert repo_copy.run("plan", "--out", str(saved))[0] == 0
    repo_copy.plan.write_text(repo_copy.plan.read_text().replace("demo_rows: 10000", "demo_rows: 5000"))
    code, out = run_cli("apply", saved)
    assert code == 1 and "the plan file" in out and "changed" in out, out


def test_status_detailed_exitcode_after_each_kind_of_drift(repo_copy, docker_client):
    def status() -> tuple[int, str]:
        return repo_copy.run("status", "--detailed-exitcode")

    assert repo_copy.run("apply")[0] == 0
    assert status()[0] == 0

    # the container changed by hand
    docker_client.api.update_container(repo_copy.container, restart_policy={"Name": "always"})
    code, out = status()
    assert code == 2 and "config: recorded" in out, out
    assert repo_copy.run("apply")[0] == 0 and status()[0] == 0

    # the container gone
    docker_client.api.remove_container(repo_copy.container, force=True)
    code, out = status()
    assert code == 2 and "container_id: recorded" in out, out
    assert repo_copy.run("apply")[0] == 0 and status()[0] == 0

    # a rendered file edited by hand
    env = repo_copy.root / ".env"
    env.write_text(env.read_text() + "\n# edited\n")
    code, out = status()
    assert code == 2 and "files: recorded" in out, out
    assert repo_copy.run("apply")[0] == 0 and status()[0] == 0

    # a migration applied by hand
    done = subprocess.run(["alembic", "downgrade", "-1"], cwd=repo_copy.root, capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": repo_copy.url})
    assert done.returncode == 0, done.stderr
    code, out = status()
    assert code == 2 and "revision: recorded" in out, out
    assert repo_copy.run("apply")[0] == 0 and status()[0] == 0

    # rows changed in a copied table
    name = repo_copy.sql("SELECT name FROM tenants WHERE id = 1")[0][0]
    repo_copy.sql("UPDATE tenants SET name = 'changed by hand' WHERE id = 1")
    code, out = status()
    assert code == 2 and "tables: recorded" in out, out
    repo_copy.sql("UPDATE tenants SET name = %s WHERE id = 1", name)
    assert status()[0] == 0

    # the volume replaced (last: the data is gone with it)
    volume = repo_copy.container.removesuffix("-pg") + "-data"
    docker_client.api.remove_container(repo_copy.container, force=True)
    docker_client.api.remove_volume(volume)
    docker_client.api.create_volume(volume, labels=dict([TEST_LABEL]))
    code, out = status()
    assert code == 2 and "volume_created: recorded" in out and "DATA LOSS" in out, out


def test_a_secret_in_a_variable_file_never_reaches_the_lockfile_or_a_saved_plan(repo_copy):
    secret = "Tok-" + os.urandom(8).hex()
    text = repo_copy.plan.read_text()
    text = text.replace("  demo_rows: 10000", "  demo_rows: 10000\n  api_token: none")
    text = text.replace("      restart: unless-stopped", "      restart: unless-stopped\n      labels: {app.token: \"{{ vars.api_token }}\"}")
    repo_copy.plan.write_text(text)
    var_file = repo_copy.root / "prod.yaml"
    var_file.write_text(f"api_token: {secret}\n")
    code, out = repo_copy.run("validate", "--var-file", str(var_file))
    assert code == 0 and "warning: variable 'api_token'" in out and "looks like a secret" in out, out
    saved = repo_copy.root / "plan.saved"
    outputs = [repo_copy.run("plan", "--var-file", str(var_file), "--out", str(saved))[1],
               repo_copy.run("plan", "--var-file", str(var_file), "--json")[1],
               repo_copy.run("apply", "--var-file", str(var_file), "-v")[1]]
    for text in outputs + [saved.read_text(), repo_copy.plan.with_suffix(".lock").read_text()]:
        assert secret not in text


def test_a_saved_plan_made_from_another_folder_by_a_relative_path_is_not_stale(repo_copy, tmp_path, monkeypatch):
    """What a saved plan records must not depend on how the plan's path was spelled: plan made
    from another folder with ../repo/plans/phase1.yaml, applied with the path the saved plan
    resolves (the source database still to be made by if_missing, named in the changes)."""
    from orchestrator import saved
    from orchestrator.executor import Executor
    from orchestrator.plan import load_plan
    from tests.conftest import run_cli
    (repo_copy.root / "deployment_platform.db").unlink(missing_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plan = os.path.relpath(repo_copy.root / "plans" / "phase1.yaml", elsewhere)
    code, out = run_cli("plan", plan, *repo_copy.extra, "--out", "s.plan")
    assert code == 0 and "created by if_missing" in out, out
    doc = saved.load(elsewhere / "s.plan")
    fresh = Executor(load_plan(doc["_plan_path"], doc["extra_vars"], doc["_var_files"]), "plan").run()
    assert saved.differences(doc, fresh) == []
