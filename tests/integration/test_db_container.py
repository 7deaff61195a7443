"""The db-container step against a real Docker Engine and a real PostgreSQL.

Covers the idempotency cycle (plan -> apply -> apply -> plan), the seed runbook's persistence
experiments, password changes, destroy, and the refusals that must change nothing.
"""

from __future__ import annotations

import json
import socket

import psycopg
import pytest

from tests.conftest import TEST_LABEL, run_cli

pytestmark = pytest.mark.integration


def write_row(db_plan, value: str) -> None:
    with db_plan.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survivors (v text)")
        conn.execute("INSERT INTO survivors VALUES (%s)", (value,))


def rows(db_plan) -> list[str]:
    with db_plan.connect() as conn:
        return [r[0] for r in conn.execute("SELECT v FROM survivors ORDER BY v")]


def container(docker_client, name):
    return docker_client.api.inspect_container(name)


def test_idempotency_cycle_plan_apply_apply_plan(db_plan, docker_client, mutations):
    code, out = db_plan.run("plan", "--detailed-exitcode")
    assert code == 2, out
    assert "create" in out and "+ container" in out and "+ volume" in out
    assert mutations.calls == [], "plan must not call a mutating Docker API"

    code, out = db_plan.run("apply")
    assert code == 0, out
    assert "changed: postgres" in out and "ok=0 changed=1 failed=0" in out
    assert mutations.calls, "the first apply creates things"
    before = container(docker_client, db_plan.container)
    assert before["State"]["Health"]["Status"] == "healthy"
    with db_plan.connect() as conn:   # the plan's credentials work on 127.0.0.1
        assert conn.execute("show max_connections").fetchone()[0] == "50"
    lock_text = db_plan.lock.read_text()

    mutations.calls.clear()
    code, out = db_plan.run("apply")
    assert code == 0, out
    assert "ok:      postgres" in out and "ok=1 changed=0 failed=0" in out
    assert "Nothing changed" in out
    assert mutations.calls == [], f"a converged apply made mutating calls: {mutations.calls}"
    after = container(docker_client, db_plan.container)
    assert after["Id"] == before["Id"] and after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert db_plan.lock.read_text() == lock_text, "a converged apply must not rewrite the lockfile"

    code, out = db_plan.run("plan", "--detailed-exitcode")
    assert code == 0, out
    assert "No changes" in out
    assert mutations.calls == []


def test_labels_and_outputs(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    info = container(docker_client, db_plan.container)
    labels = info["Config"]["Labels"]
    assert labels["orchestrate.plan"] == db_plan.name and labels["orchestrate.step"] == "postgres"
    assert labels["orchestrate.config-hash"]
    vol = docker_client.api.inspect_volume(db_plan.volume)
    assert vol["Labels"]["orchestrate.plan"] == db_plan.name
    assert info["HostConfig"]["PortBindings"]["5432/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(db_plan.port)}]
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert info["Config"]["Cmd"] == ["postgres", "-c", "max_connections=50"]
    found = docker_client.containers.list(filters={"label": f"orchestrate.plan={db_plan.name}"})
    assert [c.name for c in found] == [db_plan.container]
    lock = json.loads(db_plan.lock.read_text())
    step = lock["steps"]["postgres"]
    assert step["observed"]["container_id"] == info["Id"]
    assert step["observed"]["volume"] == db_plan.volume and step["observed"]["volume_created"]
    assert step["observed"]["pg_version"] == "15" and step["observed"]["system_id"]
    assert step["outputs"]["url"] == f"postgresql+psycopg://dbadmin:(redacted)@127.0.0.1:{db_plan.port}/appdb"
    assert step["secrets"]["password"].startswith("scrypt$")


def test_experiment_1_stopped_container_is_started_and_data_survives(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    write_row(db_plan, "before-stop")
    docker_client.api.stop(db_plan.container)
    code, out = db_plan.run("plan")
    assert "start" in out and "state: exited -> running" in out
    code, out = db_plan.run("apply")
    assert code == 0 and "started container" in out, out
    assert rows(db_plan) == ["before-stop"]


def test_experiment_2_removed_container_is_recreated_on_the_same_volume(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    write_row(db_plan, "before-rm")
    docker_client.api.remove_container(db_plan.container, force=True)
    code, out = db_plan.run("plan")
    assert f"it will use the existing volume {db_plan.volume}" in out, out
    assert "DATA LOSS" not in out
    code, out = db_plan.run("apply")
    assert code == 0 and "created container" in out, out
    assert rows(db_plan) == ["before-rm"]


def test_port_change_names_the_field_recreates_and_keeps_data(db_plan, docker_client):
    from tests.conftest import free_port
    assert db_plan.run("apply")[0] == 0
    write_row(db_plan, "before-port-change")
    old_id = container(docker_client, db_plan.container)["Id"]
    new_port = free_port()
    code, out = db_plan.run("plan", "-e", f"port={new_port}", "--detailed-exitcode")
    assert code == 2
    assert "recreate" in out and "~ ports:" in out and "forces recreate" in out
    assert f"127.0.0.1:{db_plan.port}->5432/tcp -> 127.0.0.1:{new_port}->5432/tcp" in out
    code, out = db_plan.run("apply", "-e", f"port={new_port}")
    assert code == 0 and "recreated container (ports)" in out, out
    assert container(docker_client, db_plan.container)["Id"] != old_id
    with db_plan.connect(port=new_port) as conn:
        assert conn.execute("SELECT v FROM survivors").fetchone()[0] == "before-port-change"
    leftovers = docker_client.containers.list(all=True, filters={"label": f"orchestrate.plan={db_plan.name}"})
    assert [c.name for c in leftovers] == [db_plan.container], "the old container must be gone"


def test_restart_policy_changes_in_place(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    old_id = container(docker_client, db_plan.container)["Id"]
    db_plan.path.write_text(db_plan.path.read_text().replace("restart: unless-stopped", "restart: always"))
    code, out = db_plan.run("plan")
    assert "update in place" in out and "~ restart: unless-stopped -> always" in out, out
    code, out = db_plan.run("apply")
    assert code == 0 and "updated restart policy" in out, out
    info = container(docker_client, db_plan.container)
    assert info["Id"] == old_id and info["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert db_plan.run("plan", "--detailed-exitcode")[0] == 0


def test_experiment_3_volume_removed_by_hand_is_reported_as_data_loss(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    write_row(db_plan, "will-be-lost")
    docker_client.api.remove_container(db_plan.container, force=True)
    docker_client.api.remove_volume(db_plan.volume)
    code, out = db_plan.run("plan")
    assert "DATA LOSS" in out and f"volume {db_plan.volume} held this database" in out, out
    assert "no longer exists" in out and "gone" in out
    code, out = db_plan.run("apply")
    assert code == 0 and "DATA LOSS" in out, out
    with db_plan.connect() as conn:
        assert conn.execute("SELECT to_regclass('survivors')").fetchone()[0] is None
    code, out = db_plan.run("plan", "--detailed-exitcode")
    assert code == 0 and "DATA LOSS" not in out, "once accepted, the new volume is the recorded one"


def test_volume_recreated_by_hand_is_reported(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    docker_client.api.remove_container(db_plan.container, force=True)
    docker_client.api.remove_volume(db_plan.volume)
    docker_client.api.create_volume(db_plan.volume, labels=dict([TEST_LABEL]))
    code, out = db_plan.run("plan")
    assert "DATA LOSS" in out and "removed and created again" in out, out


def test_destroy_keeps_the_volume_unless_asked(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    write_row(db_plan, "kept")
    code, out = db_plan.run("destroy")
    assert code == 0, out
    assert f"removed container {db_plan.container}" in out
    assert f"kept volume {db_plan.volume}" in out
    assert docker_client.api.inspect_volume(db_plan.volume)
    assert db_plan.run("apply")[0] == 0
    assert rows(db_plan) == ["kept"]
    code, out = db_plan.run("destroy", "--volumes")
    assert code == 1 and "refusing without confirmation" in out, out
    assert docker_client.containers.list(filters={"name": db_plan.container}), "refusal changes nothing"
    code, out = db_plan.run("destroy", "--volumes", "--yes")
    assert code == 0 and f"removed volume {db_plan.volume}" in out, out
    assert not docker_client.volumes.list(filters={"name": db_plan.volume})


def test_password_change_on_an_initialised_volume(db_plan):
    assert db_plan.run("apply")[0] == 0
    old = db_plan.password
    db_plan.set_password("New-" + old)
    code, out = db_plan.run("plan", "--detailed-exitcode")
    assert code == 2
    assert "~ password: (redacted) -> (redacted)" in out and "ALTER ROLE" in out, out
    assert "recreate" not in out
    code, out = db_plan.run("apply")
    assert code == 0 and "ALTER ROLE" in out, out
    with db_plan.connect() as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        db_plan.connect(password=old)
    assert db_plan.run("plan", "--detailed-exitcode")[0] == 0
    for text in (out, db_plan.lock.read_text()):
        assert db_plan.password not in text and old not in text


def test_password_changed_outside_orchestrate_is_repaired(db_plan):
    """No lockfile hash to trust: the plan probes the database and finds the password stale."""
    assert db_plan.run("apply")[0] == 0
    with db_plan.connect() as conn:
        conn.execute("ALTER ROLE dbadmin PASSWORD 'set-by-hand-123'")
    db_plan.lock.unlink()
    code, out = db_plan.run("plan")
    assert "~ password" in out, out
    assert db_plan.run("apply")[0] == 0
    db_plan.connect().close()


def test_user_change_on_an_initialised_volume_is_refused(db_plan, docker_client, mutations):
    assert db_plan.run("apply")[0] == 0
    mutations.calls.clear()
    db_plan.path.write_text(db_plan.path.read_text().replace("user: dbadmin", "user: someoneelse"))
    code, out = db_plan.run("apply")
    assert code == 1
    assert "user changed from 'dbadmin' to 'someoneelse'" in out and "already initialised" in out, out
    assert mutations.calls == []


def test_secret_never_appears_in_output_lockfile_or_logs(db_plan, docker_client):
    printed = []
    for argv in (("plan",), ("plan", "--json"), ("apply",), ("apply", "-v"), ("status",), ("status", "--json"),
                 ("validate",)):
        printed.append(db_plan.run(*argv)[1])
    # A plan that leaks the secret into a visible field: every output must still mask it.
    db_plan.path.write_text(db_plan.path.read_text().replace(
        "settings: {max_connections: 50}", "settings: {max_connections: 50}\n      env: {LEAK: \"x{{ secrets.pw }}\"}"))
    for argv in (("plan",), ("plan", "--json"), ("apply", "-v"), ("status", "--json")):
        printed.append(db_plan.run(*argv)[1])
    # an environment change names the variables, never their values
    assert "added: LEAK" in printed[-4], printed[-4]
    assert "added: LEAK" in printed[-3]
    db_plan.set_password("Changed-" + db_plan.password)
    printed += [db_plan.run("plan", "--json")[1], db_plan.run("apply", "-v")[1]]
    logs = docker_client.api.logs(db_plan.container).decode()
    for text in printed + [db_plan.lock.read_text(), logs]:
        assert db_plan.password not in text
        assert db_plan.password[len("Changed-"):] not in text


def test_data_directory_of_another_major_version_is_refused(db_plan, docker_client, pg_image, mutations):
    """A volume holding a PostgreSQL 14 directory must not be started by a 15 image."""
    import io
    import tarfile
    docker_client.api.create_volume(db_plan.volume, labels=dict([TEST_LABEL]))
    helper = docker_client.api.create_container(
        pg_image, command=["true"], labels=dict([TEST_LABEL]),
        host_config=docker_client.api.create_host_config(binds={db_plan.volume: {"bind": "/data", "mode": "rw"}}))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("PG_VERSION")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"14\n"))
    docker_client.api.put_archive(helper["Id"], "/data", buf.getvalue())
    docker_client.api.remove_container(helper["Id"], v=True)   # and the image's anonymous data volume
    mutations.calls.clear()
    code, out = db_plan.run("apply")
    assert code == 1, out
    assert "PostgreSQL 14 data directory" in out and "runs PostgreSQL 15" in out, out
    assert "pg_upgrade" in out
    assert not any(call.startswith("POST containers/") and call.endswith("/start") for call in mutations.calls)
    assert not docker_client.containers.list(all=True, filters={"name": db_plan.container})


def test_docker_daemon_unreachable(db_plan, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code, out = db_plan.run("apply")
    assert code == 1
    errors = [l for l in out.splitlines() if "cannot reach" in l]
    assert errors == ["error: cannot reach the Docker daemon at unix:///nonexistent/docker.sock: "
                      "no Docker socket there"], out
    assert "Traceback" not in out
    code, out = db_plan.run("plan")
    assert code == 1 and "error: cannot reach the Docker daemon" in out


def test_missing_image_with_no_registry(db_plan, docker_client):
    db_plan.path.write_text(db_plan.path.read_text().replace(db_plan_image_line(db_plan),
                                                             "  image: orchestrate-test/absent:15"))
    code, out = db_plan.run("apply")
    assert code == 1, out
    assert "error: image orchestrate-test/absent:15 is not on this Docker engine and pulling it failed" in out
    assert "Traceback" not in out
    assert not docker_client.containers.list(all=True, filters={"name": db_plan.container})


def db_plan_image_line(db_plan) -> str:
    return next(l for l in db_plan.path.read_text().splitlines() if l.startswith("  image:"))


def test_host_port_taken_is_refused_before_anything_changes(db_plan, docker_client, mutations):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", db_plan.port))
        holder.listen()
        code, out = db_plan.run("plan")
        assert code == 1 and f"host port 127.0.0.1:{db_plan.port} is already in use by another process" in out
        code, out = db_plan.run("apply")
    assert code == 1, out
    assert "already in use" in out and "Traceback" not in out
    assert mutations.calls == []
    assert not docker_client.volumes.list(filters={"name": db_plan.volume})


def test_port_held_by_another_container_is_named(db_plan, docker_client, tmp_path, pg_image, monkeypatch):
    from tests.conftest import DbPlan
    assert db_plan.run("apply")[0] == 0
    (tmp_path / "other").mkdir()
    other = DbPlan(tmp_path / "other", pg_image, monkeypatch)
    other.path.write_text(other.path.read_text().replace(f"port: {other.port}", f"port: {db_plan.port}"))
    code, out = other.run("plan")
    assert code == 1 and f"already in use by container {db_plan.container}" in out, out


def test_a_second_apply_on_the_same_plan_fails_at_once(db_plan):
    from orchestrator.lockfile import ApplyLock
    with ApplyLock(db_plan.path):
        code, out = db_plan.run("apply")
    assert code == 1
    assert "another orchestrate run holds the lock of this plan" in out, out


def test_status_reports_drift(db_plan, docker_client):
    assert db_plan.run("apply")[0] == 0
    assert db_plan.run("status", "--detailed-exitcode")[0] == 0
    docker_client.api.stop(db_plan.container)
    code, out = db_plan.run("status", "--detailed-exitcode")
    assert code == 2 and "drifted" in out and "running: recorded True -> now False" in out, out
    code, out = db_plan.run("status", "--json")
    doc = json.loads(out)
    assert doc["drift"] is True and doc["steps"][0]["drift"][0]["field"] == "running"


def test_two_deployments_of_one_plan_never_touch_each_other(tmp_path, pg_image, monkeypatch, docker_client):
    """Same plan name, two folders, two container names: one's apply and destroy leave the other be."""
    from tests.conftest import DbPlan
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = DbPlan(tmp_path / "a", pg_image, monkeypatch)
    b = DbPlan(tmp_path / "b", pg_image, monkeypatch)
    b.path.write_text(b.path.read_text().replace(f"name: {b.name}", f"name: {a.name}"))
    assert a.run("apply")[0] == 0 and b.run("apply")[0] == 0
    b_id = container(docker_client, b.container)["Id"]
    docker_client.api.remove_container(a.container, force=True)
    code, out = a.run("apply")
    assert code == 0 and "created container" in out, out
    assert container(docker_client, b.container)["Id"] == b_id
    code, out = a.run("destroy")
    assert code == 0 and b.container not in out, out
    assert container(docker_client, b.container)["State"]["Running"]


def test_labels_from_the_environment_are_not_configuration(db_plan, docker_client, monkeypatch):
    """ORCHESTRATE_LABELS tags what is created (the suite relies on it), but a shell without it
    must not see a change."""
    assert db_plan.run("apply")[0] == 0
    labels = container(docker_client, db_plan.container)["Config"]["Labels"]
    assert labels[TEST_LABEL[0]] == TEST_LABEL[1] and labels["orchestrate.extra-labels"] == TEST_LABEL[0]
    monkeypatch.delenv("ORCHESTRATE_LABELS")
    code, out = db_plan.run("plan", "--detailed-exitcode")
    assert code == 0, out
