"""The shipped example plan, run as a user runs it: the `orchestrate` console script, in a copy
of the repository's plans folder, with no password in the environment."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import psycopg
import pytest
import yaml

from tests.conftest import ROOT, SESSION, free_port, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def phase1(repo_copy):
    return repo_copy.plan, repo_copy.extra, repo_copy.port, repo_copy.container


def orchestrate(*argv, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    env.pop("AUTODEPLOY_DB_PASSWORD", None)
    return subprocess.run(["orchestrate", *map(str, argv)], capture_output=True, text=True, env=env, timeout=300)


def test_phase1_on_a_fresh_machine(phase1, docker_client):
    plan, extra, port, name = phase1
    first = orchestrate("apply", plan, *extra)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "changed: postgres (db-container)" in first.stdout

    secrets_file = plan.with_suffix(".secrets")
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    password = yaml.safe_load(secrets_file.read_text())["db_password"]
    assert len(password) == 32
    with psycopg.connect(host="127.0.0.1", port=port, user="dbadmin", password=password,
                         dbname="autodeploy", connect_timeout=5) as conn:
        assert conn.execute("show shared_buffers").fetchone()[0] == "256MB"
        assert conn.execute("show max_connections").fetchone()[0] == "200"
    lock = json.loads(plan.with_suffix(".lock").read_text())
    assert lock["plan"] == "autodeploy-phase1" and sorted(lock["steps"]) == ["check", "data", "files", "postgres", "schema", "snapshot"]
    for text in (first.stdout, first.stderr, plan.with_suffix(".lock").read_text()):
        assert password not in text

    before = docker_client.api.inspect_container(name)
    assert before["HostConfig"]["PortBindings"]["5432/tcp"][0]["HostIp"] == "127.0.0.1"
    check = orchestrate("plan", plan, "--detailed-exitcode", *extra)
    assert check.returncode == 0, check.stdout + check.stderr
    again = orchestrate("apply", plan, *extra)
    assert again.returncode == 0 and "ok=6 changed=0 failed=0" in again.stdout, again.stdout
    after = docker_client.api.inspect_container(name)
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert yaml.safe_load(secrets_file.read_text())["db_password"] == password, "the generated secret is reused"


def test_kill_9_during_apply_is_repaired_by_the_next_apply(phase1, docker_client):
    plan, extra, port, name = phase1
    env = {**os.environ}
    env.pop("AUTODEPLOY_DB_PASSWORD", None)
    killed_log = plan.parent / "killed-apply.log"
    with open(killed_log, "wb") as log:
        proc = subprocess.Popen(["orchestrate", "apply", str(plan), *extra], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:     # kill it while it waits for the new container
            # summaries only: a per-container inspect races with the container coming and going
            if docker_client.api.containers(all=True, filters={"name": name}):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = orchestrate("apply", plan, *extra)
    assert done.returncode == 0, (done.stdout + done.stderr + "\nthe killed apply said:\n"
                                  + killed_log.read_text(errors="replace"))
    assert orchestrate("plan", plan, "--detailed-exitcode", *extra).returncode == 0
    assert len(docker_client.api.containers(filters={"name": name})) == 1


def test_leftover_of_an_interrupted_replace_is_cleaned_up(phase1, docker_client):
    plan, extra, port, name = phase1
    assert orchestrate("apply", plan, *extra).returncode == 0
    # what a crash between "set the old container aside" and "create the new one" leaves
    docker_client.api.stop(name)
    docker_client.api.rename(name, name + "-orchestrate-old")
    code, out = run_cli("apply", plan, *extra)
    assert code == 0, out
    names = sorted(c.name for c in docker_client.containers.list(all=True, filters={"label": "orchestrate.plan=autodeploy-phase1"})
                   if c.name.startswith(name))
    assert names == [name]


def test_only_applies_the_named_steps(tmp_path, pg_image, docker_client):
    from tests.conftest import DB_PLAN
    text = DB_PLAN.format(name=f"t{SESSION}-only", image=pg_image, port=free_port(), pw_env="ONLY_PW")
    second = text.split("steps:\n", 1)[1].replace("name: postgres", "name: second").replace(
        f"t{SESSION}-only-pg", f"t{SESSION}-only2-pg").replace(f"t{SESSION}-only-data", f"t{SESSION}-only2-data")
    second = second.replace("{{ vars.port }}", str(free_port()))
    (tmp_path / "p.yaml").write_text(text + second)
    os.environ["ONLY_PW"] = "only-password-1"
    try:
        code, out = run_cli("apply", tmp_path / "p.yaml", "--only", "second")
        assert code == 0, out
        assert "skipped: postgres" in out and "changed: second" in out and "skipped=1" in out
        assert not docker_client.containers.list(all=True, filters={"name": f"t{SESSION}-only-pg"})
        code, out = run_cli("apply", tmp_path / "p.yaml", "--only", "nosuch")
        assert code == 1 and "no step named 'nosuch'" in out
    finally:
        run_cli("destroy", tmp_path / "p.yaml", "--volumes", "--yes")
        del os.environ["ONLY_PW"]


def test_network_is_created_joined_labelled_and_removed(db_plan, docker_client):
    net = f"{db_plan.name}-net"
    db_plan.path.write_text(db_plan.path.read_text() + f"      network: {net}\n")
    code, out = db_plan.run("apply")
    assert code == 0 and f"created network {net}" in out, out
    info = docker_client.api.inspect_network(net)
    assert info["Labels"]["orchestrate.plan"] == db_plan.name
    assert db_plan.container in [c["Name"] for c in info["Containers"].values()]
    lock = json.loads(db_plan.lock.read_text())
    # on its network the database answers to its step's name
    assert lock["steps"]["postgres"]["outputs"]["internal_url"].endswith("@postgres:5432/appdb")
    assert db_plan.run("plan", "--detailed-exitcode")[0] == 0
    code, out = db_plan.run("destroy")
    assert f"removed network {net}" in out, out
