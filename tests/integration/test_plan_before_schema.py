"""The complete phase-1 plan as a new user meets it: a plan that sees the copy before the database
or the schema exists, saved plans that apply on a fresh machine and after a port change, and
plan --preview, which finds data problems before anything exists and leaves nothing behind."""

from __future__ import annotations

import json
import sqlite3

import pytest

from examples.autodeploy.make_sqlite import write as make_reference_db
from tests.conftest import TEST_LABEL, free_port, run_cli

pytestmark = pytest.mark.integration


def source_counts(repo) -> dict[str, int]:
    return make_reference_db(repo.root / "deployment_platform.db", 2000)


def test_plan_on_a_fresh_machine_shows_the_copy_and_its_saved_plan_applies(repo_copy, tmp_path, monkeypatch):
    counts = source_counts(repo_copy)
    code, out = repo_copy.run("plan", "--json")
    data = next(s for s in json.loads(out)["steps"] if s["name"] == "data")
    assert data["action"] == "create" and data["known_after_apply"] is True, data
    assert {c["field"]: c["after"] for c in data["changes"]} == {f"table {t}": f"{n} rows" for t, n in counts.items()}
    assert not any("alembic_version" in n for n in data["notes"])
    saved = tmp_path / "p.saved"
    assert repo_copy.run("plan", "--out", saved)[0] == 0
    monkeypatch.chdir(tmp_path)                       # another folder than the plan's
    code, out = run_cli("apply", saved)
    assert code == 0 and "failed=0" in out, out
    assert repo_copy.sql("SELECT count(*) FROM deployment_logs") == [(counts["deployment_logs"],)]
    # converged; only the port changes: the saved plan applies too
    port = free_port()
    code, out = repo_copy.run("plan", "-e", f"db_port={port}", "--out", saved)
    assert code == 0, out
    code, out = run_cli("apply", saved)
    assert code == 0 and "recreated container" in out and "failed=0" in out, out
    code, out = repo_copy.run("plan", "-e", f"db_port={port}", "--detailed-exitcode")
    assert code == 0, out


def test_with_the_database_up_and_the_schema_pending_the_copy_is_known_after_apply(repo_copy):
    counts = source_counts(repo_copy)
    assert repo_copy.run("apply", "--only", "postgres")[0] == 0
    code, out = repo_copy.run("plan")
    assert code == 0, out
    assert "known after apply: step schema runs first, which migrates the target schema" in out, out
    assert f"table deployment_logs: (known after apply) -> {counts['deployment_logs']} rows" in out
    assert "has no table in the target" not in out


def damage(repo) -> None:
    with sqlite3.connect(repo.root / "deployment_platform.db") as src:
        src.execute("UPDATE deployments SET tenant_id = 999 WHERE id IN (3, 7)")
        src.execute("UPDATE deployment_logs SET level = 'CRITICAL-ERROR-LEVEL' WHERE id = 5")


def leftovers(docker_client) -> list[str]:
    flt = {"label": f"{TEST_LABEL[0]}={TEST_LABEL[1]}"}
    return [c.name for c in docker_client.containers.list(all=True, filters=flt) if "preview" in c.name] + \
        [v.name for v in docker_client.volumes.list(filters=flt) if "preview" in v.name]


def test_preview_finds_data_problems_before_anything_exists_and_leaves_nothing(repo_copy, docker_client):
    source_counts(repo_copy)
    damage(repo_copy)
    for where in ("a throwaway container", "a throwaway database in the plan's server"):
        code, out = repo_copy.run("plan", "--preview")
        assert code == 1, out
        assert f"preview: the migrations ran into {where}" in out, out
        assert "deployments: 2 row(s) reference tenants rows that do not exist (tenant_id; e.g. id=3, id=7)" in out
        assert ("deployment_logs: column level: 1 value(s) cannot be loaded, e.g. row id=5: a value of 20 "
                "characters is longer than character varying(10)") in out
        assert leftovers(docker_client) == []
        if where == "a throwaway container":
            assert docker_client.containers.list(all=True, filters={"name": repo_copy.container}) == []
            assert repo_copy.run("apply", "--only", "postgres")[0] == 0
        else:
            assert repo_copy.sql("SELECT datname FROM pg_database WHERE datname LIKE 'orchestrate_preview%'") == []
            assert repo_copy.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_the_server_stopped_in_the_middle_of_a_copy_is_one_error_and_the_next_apply_repairs(repo_copy, docker_client):
    import os
    import subprocess
    import sys
    import time
    make_reference_db(repo_copy.root / "deployment_platform.db", 300000)
    assert repo_copy.run("apply", "--only", "postgres", "--only", "schema")[0] == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AUTODEPLOY_DB_PASSWORD": repo_copy.password}
    env.pop("AUTODEPLOY_DB_PASSWORD")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "apply", str(repo_copy.plan), *repo_copy.extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if repo_copy.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY \"deployment_logs\"%'")[0][0]:
            break
        time.sleep(0.05)
    docker_client.containers.get(repo_copy.container).stop(timeout=5)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert out.count("error:") == 1 and "error ignored" not in out and "Traceback" not in out, out
    code, out = repo_copy.run("apply")
    assert code == 0, out
    assert repo_copy.run("verify")[0] == 0
