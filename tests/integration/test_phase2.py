"""plans/phase2.yaml as a user runs it, in a copy of the repository: the network, PostgreSQL on it as
`postgres`, the application's image (built offline from wheels downloaded on the host), the
migrations, the copy, the application's container on 127.0.0.1, verify, backup."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import TEST_LABEL

pytestmark = pytest.mark.integration


def ids(docker_client, name: str) -> tuple[str, str]:
    info = docker_client.api.inspect_container(name)
    return info["Id"], info["State"]["StartedAt"]


def test_phase2_fresh_apply_converges_and_rebuilds_only_what_changed(phase2, docker_client, mutations):
    code, out = phase2.run("apply")
    assert code == 0, out
    status, tenants = phase2.get("/tenants")
    assert status == 200 and len(tenants) == phase2.source_tenants() > 0
    env = docker_client.api.inspect_container(phase2.app)["Config"]["Env"]
    url = next(e for e in env if e.startswith("DATABASE_URL="))
    assert "@postgres:5432/" in url and "localhost" not in url and "127.0.0.1" not in url
    # the application's container answers to its name on the network, as the database does
    net = docker_client.api.inspect_network(phase2.network)
    assert {c["Name"] for c in net["Containers"].values()} == {phase2.db_container, phase2.app, phase2.proxy}
    # and nginx in front serves the same rows
    assert len(phase2.get("/tenants", proxy=True)[1]) == phase2.source_tenants()

    # converged: a second apply makes no mutating Docker call, and plan has nothing to do
    mutations.calls.clear()
    code, out = phase2.run("apply")
    assert code == 0 and "\nchanged:" not in out, out
    assert mutations.calls == []
    assert phase2.run("plan", "--detailed-exitcode")[0] == 0

    # the application writes to PostgreSQL now (through nginx, as clients do); the SQLite source
    # is unchanged, so the copy has nothing to bring and releases keep converging
    status, created = phase2.post("/deployments", {"tenant_id": 1, "name": "after-the-switch"}, proxy=True)
    assert status in (200, 201), created

    # one source file changed: rebuild naming it, recreate the application only
    db_before = ids(docker_client, phase2.db_container)
    app_file = phase2.root / "examples/autodeploy/app/__init__.py"
    app_file.write_text(app_file.read_text() + "\n# a change\n")
    code, out = phase2.run("plan", "--detailed-exitcode")
    assert code == 2, out
    assert "rebuild" in out and "examples/autodeploy/app/__init__.py (changed)" in out, out
    lines = [line for line in out.splitlines() if line.startswith(("  recreate", "  create", "  update"))]
    assert [line.split()[1] for line in lines if "recreate" in line] == ["app_image", "app"], out
    code, out = phase2.run("apply")
    assert code == 0 and "recreated container (image)" in out, out
    # (copy-data says so too once the server has counted the write; verify checks it either way)
    assert "verified 2 table(s)" in out and "1 table(s) written in PostgreSQL since the copy" in out, out
    assert ids(docker_client, phase2.db_container) == db_before
    assert len(phase2.get("/tenants")[1]) == phase2.source_tenants()
    # the build it replaced is gone: no untagged image of this plan is left behind
    assert docker_client.api.images(filters={"dangling": True, "label": [
        "orchestrate.plan=autodeploy-phase2", f"{TEST_LABEL[0]}={TEST_LABEL[1]}"]}) == []

    # a file the .dockerignore leaves out changed: nothing to do
    (phase2.root / "examples/autodeploy/NOTES.txt").write_text("not in the image\n")
    assert phase2.run("plan", "--detailed-exitcode")[0] == 0

    # a build argument changed (another name for the same base image): rebuild, and the new
    # image replaces the application
    other = f"{phase2.name}-base:3.11"
    docker_client.images.get(phase2.base).tag(other)
    try:
        phase2.extra += ["-e", f"app_base_image={other}"]
        code, out = phase2.run("plan", "--detailed-exitcode")
        assert code == 2 and "build args BASE_IMAGE" in out, out
        code, out = phase2.run("apply")
        assert code == 0 and "built " in out, out
        assert ids(docker_client, phase2.db_container) == db_before
    finally:
        docker_client.images.remove(other)


def test_a_new_image_whose_health_check_fails_is_removed_and_the_old_one_kept(phase2, docker_client):
    code, out = phase2.run("apply")
    assert code == 0, out
    old_id = ids(docker_client, phase2.app)[0]
    app_file = phase2.root / "examples/autodeploy/app/__init__.py"
    good = app_file.read_text()
    # a release whose /health always fails
    app_file.write_text(good + "\n\n_create_app = create_app\n\n\ndef create_app(url=None):\n"
                                "    app = _create_app(url)\n"
                                "    app.view_functions['health'] = lambda: ('broken release', 500)\n"
                                "    return app\n")
    code, out = phase2.run("apply")
    assert code == 1, out
    assert f"container {phase2.app} is unhealthy" in out, out
    assert "its last health check: exit code" in out, out
    # the broken container is gone; the previous one runs again under its name
    named = [c for c in docker_client.api.containers(all=True) if c["Names"][0].lstrip("/").startswith(phase2.app)]
    assert [c["Id"] for c in named] == [old_id]
    assert named[0]["State"] == "running"
    assert phase2.get("/health")[0] == 200
    # fixed: the next apply succeeds
    app_file.write_text(good + "\n# fixed\n")
    code, out = phase2.run("apply")
    assert code == 0 and "recreated container" in out, out
    assert phase2.run("plan", "--detailed-exitcode")[0] == 0


def test_the_compose_file_is_accepted_and_no_secret_reaches_images_or_outputs(phase2, docker_client):
    code, out = phase2.run("apply", "-v")
    assert code == 0, out
    compose = phase2.root / "docker-compose.phase2.yml"
    done = subprocess.run(["docker-compose", "-f", str(compose), "config", "-q"], capture_output=True, text=True,
                          cwd=phase2.root, timeout=60)
    assert done.returncode == 0, done.stderr
    config = subprocess.run(["docker-compose", "-f", str(compose), "config"], capture_output=True, text=True,
                            cwd=phase2.root, timeout=60).stdout
    assert f"container_name: {phase2.app}" in config and "condition: service_healthy" in config
    secret = next(line.split("=", 1)[1] for line in (phase2.root / ".env").read_text().splitlines()
                  if line.startswith("POSTGRES_PASSWORD="))
    assert secret not in compose.read_text()
    image = docker_client.api.inspect_image(phase2.tag)
    history = json.dumps(docker_client.api.history(phase2.tag))
    lock = (phase2.root / "plans/phase2.lock").read_text()
    for text in (out, json.dumps(image["Config"]), history, lock, phase2.run("plan", "--json")[1]):
        assert secret not in text



def test_a_failing_migration_job_stops_before_the_application_is_replaced(phase2, docker_client):
    code, out = phase2.run("apply")
    assert code == 0, out
    app_before = ids(docker_client, phase2.app)
    # a release: new application code and a revision that fails
    app_file = phase2.root / "examples/autodeploy/app/__init__.py"
    app_file.write_text(app_file.read_text() + "\n# the release that needs the new column\n")
    phase2.repo.add_revision("f00000000001", "c9f0e8d7b6a5",
                             "    op.execute('ALTER TABLE no_such_table ADD COLUMN x int')")
    code, out = phase2.run("apply")
    assert code == 1, out
    assert "changed: app_image" in out and "no_such_table" in out, out
    assert "changed: app " not in out and "app       (container)" not in out.split("failed")[-1], out
    # the application still runs its old code on the old schema, and no job container is left
    assert ids(docker_client, phase2.app) == app_before
    # (this worker's only: the other worker's tests may have a throwaway of their own running)
    assert docker_client.api.containers(all=True, filters={"label": [
        "orchestrate.throwaway", f"{TEST_LABEL[0]}={TEST_LABEL[1]}"]}) == []
    assert phase2.get("/health")[0] == 200
    # destroy: containers and network go; the data volume and the image stay unless asked
    code, out = phase2.run("destroy")
    assert code == 0 and f"kept image {phase2.tag} (--images removes it)" in out, out
    assert [c for c in docker_client.api.containers(all=True)
            if c["Names"][0].lstrip("/") in (phase2.app, phase2.db_container)] == []
    assert docker_client.api.networks(names=[phase2.network]) == []
    assert docker_client.api.inspect_volume(f"{phase2.name}-data")
    assert docker_client.api.images(name=phase2.tag)
    code, out = phase2.run("destroy", "--images")
    assert code == 0 and f"removed image {phase2.tag}" in out, out
    assert docker_client.api.images(name=phase2.tag) == []
