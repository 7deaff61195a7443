"""The service step on a single-node swarm the module creates (docker swarm init on 127.0.0.1) and
leaves (swarm leave --force, docker_gwbridge removed) whatever happens: an overlay network, a
service of 2 replicas (dnsrr: this kernel has no IPVS) serving a Swarm secret as a file, a second
apply that changes nothing, a changed setting rolled start-first, and a release whose health
check fails rolled back by Swarm with apply exiting 1. Then plans/phase2-swarm.yaml, the phase-2
stack as services, as a user runs it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import TEST_LABEL, engine_exclusive, free_port, run_cli
from tests.integration.test_zero_downtime import Load

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

PLAN = """\
name: {name}
vars:
  version: "1"
  health_path: /greeting
  max_conn: "50"
secrets:
  greeting: {{env: SWARM_TEST_GREETING}}
steps:
  - name: net
    network: {{name: {name}-net, driver: overlay}}
  - name: db
    service:
      image: {pg}
      service: {name}-db
      command: ["postgres", "-c", "max_connections={{{{ vars.max_conn }}}}"]
      env: {{POSTGRES_USER: app, POSTGRES_DB: app, POSTGRES_PASSWORD_FILE: /run/secrets/db_password}}
      secrets: {{db_password: "{{{{ secrets.greeting }}}}"}}
      network: "{{{{ steps.net.name }}}}"
      volumes: ["{name}-pgdata:/var/lib/postgresql/data"]
      placement: ["node.role==manager"]
      update: {{order: stop-first}}
      healthcheck: {{test: "pg_isready -U app -d app", interval: 1s, timeout: 3s, retries: 30}}
      wait: 120s
  - name: web
    service:
      image: {image}
      service: {name}-web
      command: "python3 -m http.server 8080 --directory /run/secrets"
      env: {{VERSION: "{{{{ vars.version }}}}"}}
      secrets: {{greeting: "{{{{ secrets.greeting }}}}"}}
      replicas: 2
      network: "{{{{ steps.net.name }}}}"
      endpoint_mode: dnsrr
      update: {{order: start-first, failure_action: rollback, monitor: 3s}}
      healthcheck: {{http: {{path: "{{{{ vars.health_path }}}}", port: 8080}}, interval: 1s, timeout: 3s, retries: 2}}
      wait: 120s
  - name: proxy
    service:
      image: {nginx}
      service: {name}-proxy
      files: [{{src: nginx.conf, dest: /etc/nginx/conf.d/default.conf}}]
      network: "{{{{ steps.net.name }}}}"
      ports: ["{port}:80"]
      update: {{order: stop-first}}
      healthcheck: {{http: {{path: /nginx-health, port: 80}}, interval: 1s, timeout: 3s, retries: 3}}
      wait: 120s
"""


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


def _remove_labelled() -> None:
    sel = f"label={TEST_LABEL[0]}={TEST_LABEL[1]}"
    for kind in ("service", "secret", "config"):
        ids = _docker(kind, "ls", "-q", "--filter", sel, check=False).stdout.split()
        if ids:
            _docker(kind, "rm", *ids, check=False)
    # the services' tasks going away: their containers only (this worker's other tests may have
    # left containers with the same label, removed at the session's end; waiting on those took the
    # whole minute, three times, while the engine was held alone)
    task = "label=com.docker.swarm.task.id"
    deadline = time.monotonic() + 60
    while (time.monotonic() < deadline
           and _docker("ps", "-aq", "--filter", sel, "--filter", task, check=False).stdout.strip()):
        time.sleep(1)
    ids = _docker("network", "ls", "-q", "--filter", sel, check=False).stdout.split()
    if ids:
        _docker("network", "rm", *ids, check=False)


@pytest.fixture(scope="module")
def swarm(docker_client):
    """A single-node swarm for this module, with the engine to itself meanwhile (no test in another
    worker runs while the engine enters, is in, or leaves swarm mode)."""
    with engine_exclusive():
        state = docker_client.info().get("Swarm", {}).get("LocalNodeState")
        if state != "inactive":
            pytest.fail(f"the engine is already in swarm mode ({state}): these tests create and leave their "
                        f"own single-node swarm and will not touch one they did not make")
        _docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        try:
            yield
        finally:
            try:
                _remove_labelled()
            finally:
                _docker("swarm", "leave", "--force", check=False)
                _docker("network", "rm", "docker_gwbridge", check=False)


@pytest.fixture(scope="module")
def stack(swarm, python_image, nginx_image, pg_image, tmp_path_factory):
    name, port = f"sw{uuid.uuid4().hex[:6]}", free_port()
    root = tmp_path_factory.mktemp("swarm")
    from orchestrator.templating import environment
    conf = environment().from_string((ROOT / "templates" / "nginx.conf.j2").read_text())
    (root / "nginx.conf").write_text(conf.render(upstream={"host": f"{name}-web", "port": 8080}, tls=False,
                                                 target="docker"))
    plan = root / "plan.yaml"
    plan.write_text(PLAN.format(name=name, image=python_image, nginx=nginx_image, port=port, pg=pg_image))
    yield name, plan, port
    _remove_labelled()
    _docker("volume", "rm", f"{name}-pgdata", check=False)      # made by Swarm for the db service


def _web(docker_client, name: str) -> dict:
    return docker_client.api.inspect_service(f"{name}-web")


def test_create_then_a_second_apply_is_a_no_op(stack, docker_client, mutations, monkeypatch):
    name, plan, port = stack
    monkeypatch.setenv("SWARM_TEST_GREETING", "hello-swarm")
    code, out = run_cli("apply", str(plan))
    assert code == 0, out
    tasks = docker_client.api.tasks(filters={"service": f"{name}-web", "desired-state": "running"})
    assert len([t for t in tasks if t["Status"]["State"] == "running"]) == 2
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/greeting", timeout=10) as response:
        assert response.read() == b"hello-swarm"     # the secret, as a file, through nginx
    spec = _web(docker_client, name)["Spec"]
    assert "hello-swarm" not in str(spec) and spec["EndpointSpec"]["Mode"] == "dnsrr"
    net = docker_client.api.inspect_network(f"{name}-net")
    assert net["Driver"] == "overlay" and net["Attachable"]
    mutations.calls.clear()
    code, out = run_cli("apply", str(plan))
    assert code == 0, out
    assert mutations.calls == [], mutations.calls


def test_a_changed_setting_rolls_the_replicas(stack, docker_client, monkeypatch):
    name, plan, port = stack
    monkeypatch.setenv("SWARM_TEST_GREETING", "hello-swarm")
    code, out = run_cli("plan", str(plan), "-e", "version=2")
    assert "roll 2 replicas (start-first)" in out, out
    with Load(f"http://127.0.0.1:{port}/greeting", limit=5000) as load:
        code, out = run_cli("apply", str(plan), "-e", "version=2")
    assert code == 0, out
    assert load.sent > 20 and load.failed == 0, load.errors
    svc = _web(docker_client, name)
    assert "VERSION=2" in svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert svc["UpdateStatus"]["State"] == "completed"


def test_a_failing_release_is_rolled_back_and_apply_exits_1(stack, docker_client, monkeypatch):
    name, plan, port = stack
    monkeypatch.setenv("SWARM_TEST_GREETING", "hello-swarm")
    code, out = run_cli("apply", str(plan), "-e", "version=2", "-e", "health_path=/missing")
    assert code == 1, out
    assert "rollback" in out, out
    svc = _web(docker_client, name)
    assert "VERSION=2" in svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert svc["UpdateStatus"]["State"] == "rollback_completed"
    health = svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"][-1]
    assert "/greeting" in health


def _psql(docker_client, name: str, sql: str) -> str:
    task = [t for t in docker_client.api.tasks(filters={"service": f"{name}-db", "desired-state": "running"})
            if t["Status"]["State"] == "running"][0]
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    return _docker("exec", cid, "psql", "-U", "app", "-d", "app", "-At", "-c", sql).stdout.strip()


def test_the_database_service_keeps_its_data_across_a_settings_update(stack, docker_client, monkeypatch):
    name, plan, port = stack
    monkeypatch.setenv("SWARM_TEST_GREETING", "hello-swarm")
    _psql(docker_client, name, "CREATE TABLE IF NOT EXISTS kept (v text); INSERT INTO kept VALUES ('row')")
    code, out = run_cli("apply", str(plan), "-e", "version=2", "-e", "max_conn=60")
    assert code == 0, out
    assert _psql(docker_client, name, "SHOW max_connections") == "60"
    assert _psql(docker_client, name, "SELECT v FROM kept") == "row"


# --- plans/phase2-swarm.yaml as a user runs it, in a copy of the repository -----------------------

@pytest.fixture
def swarm_stack(swarm, tmp_path, pg_image, python_image, nginx_image, app_wheels, docker_client, monkeypatch):
    """The repository copied (the app's wheels in it), and a var file giving this test's names."""
    from tests.conftest import copy_repo
    root = copy_repo(tmp_path / "repo")
    shutil.copytree(app_wheels, root / "examples/autodeploy/wheels", dirs_exist_ok=True)
    monkeypatch.delenv("AUTODEPLOY_DB_PASSWORD", raising=False)
    name = f"sw{uuid.uuid4().hex[:6]}"
    names = {"network": f"{name}-net", "db_service": f"{name}-db", "app_service": f"{name}-app",
             "proxy_service": f"{name}-nginx", "volume_name": f"{name}-pgdata", "app_tag": f"{name}-app:test"}
    ports = {"db_port": free_port(), "http_port": free_port()}
    values = {**names, **ports, "pg_image": pg_image, "app_base_image": python_image, "nginx_image": nginx_image,
              "demo_rows": 300}
    (tmp_path / "vars.yaml").write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    stack = SimpleNamespace(root=root, plan=root / "plans" / "phase2-swarm.yaml", vars=tmp_path / "vars.yaml",
                            url=f"http://127.0.0.1:{ports['http_port']}", **names)
    yield stack
    _remove_labelled()
    _docker("volume", "rm", stack.volume_name, check=False)
    _docker("image", "rm", "-f", stack.app_tag, check=False)


def _cli(stack, *argv: str) -> tuple[int, str]:
    return run_cli(*argv[:1], stack.plan, "--var-file", stack.vars, *argv[1:])


def _running(docker_client, service: str) -> list[dict]:
    return [t for t in docker_client.api.tasks(filters={"service": service, "desired-state": "running"})
            if t["Status"]["State"] == "running"]


def test_the_phase2_stack_as_swarm_services(swarm_stack, docker_client, mutations):
    s = swarm_stack
    code, out = _cli(s, "plan")          # nothing exists yet: the database is known after apply
    assert code == 0 and "known after apply" in out, out
    code, out = _cli(s, "apply")
    assert code == 0, out
    assert len(_running(docker_client, s.app_service)) == 3
    with urllib.request.urlopen(f"{s.url}/tenants", timeout=10) as response:
        tenants = json.loads(response.read())
    with sqlite3.connect(s.root / "deployment_platform.db") as conn:
        assert len(tenants) == conn.execute("SELECT count(*) FROM tenants").fetchone()[0] > 0
    # the password is a Swarm secret (a file): in no spec, no output, no lockfile
    password = yaml.safe_load((s.root / "plans" / "phase2-swarm.secrets").read_text())["db_password"]
    specs = str([docker_client.api.inspect_service(n)["Spec"] for n in (s.db_service, s.app_service)])
    lock = (s.root / "plans" / "phase2-swarm.lock").read_text()
    assert password not in specs and password not in out and password not in lock
    assert "/run/secrets/" in specs

    mutations.calls.clear()              # converged: no mutating call, nothing planned
    code, out = _cli(s, "apply")
    assert code == 0 and mutations.calls == [], (out, mutations.calls)
    assert _cli(s, "plan", "--detailed-exitcode")[0] == 0

    # a source change: the image is built again and the 3 replicas roll, no request failing
    app = s.root / "examples/autodeploy/app/__init__.py"
    good = app.read_text()
    app.write_text(good + "\n# a change\n")
    code, out = _cli(s, "plan", "--detailed-exitcode")
    assert code == 2 and "roll 3 replicas (start-first)" in out, out
    before = {t["ID"] for t in _running(docker_client, s.app_service)}
    with Load(f"{s.url}/tenants", limit=20_000) as load:
        code, out = _cli(s, "apply")
    assert code == 0 and "rolled 3 replicas" in out, out
    assert load.sent > 20 and load.failed == 0, load.errors
    after = _running(docker_client, s.app_service)
    assert len(after) == 3 and not before & {t["ID"] for t in after}

    # a release whose health check fails: Swarm rolls it back, apply exits 1, the old one serves
    app.write_text(good.replace('return jsonify(status="ok", database="ok")', 'return jsonify(status="broken"), 500'))
    code, out = _cli(s, "apply")
    assert code == 1 and "rolled it back" in out, out
    assert docker_client.api.inspect_service(s.app_service)["UpdateStatus"]["State"] == "rollback_completed"
    with urllib.request.urlopen(f"{s.url}/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"
    app.write_text(good)

    # the database service keeps its data across an update of its settings (stop-first)
    code, out = _cli(s, "apply", "-e", "db_max_connections=150")
    assert code == 0 and "rolled 1 replica of" in out, out
    db = _running(docker_client, s.db_service)[0]["Status"]["ContainerStatus"]["ContainerID"]
    shown = _docker("exec", db, "psql", "-U", "dbadmin", "-d", "autodeploy", "-At", "-c",
                    "SHOW max_connections; SELECT count(*) FROM tenants").stdout.split()
    assert shown == ["150", str(len(tenants))]

    # destroy keeps the data volume (made by Swarm, labelled as the plan's)
    code, out = _cli(s, "destroy", "-e", "db_max_connections=150")
    assert code == 0 and f"kept volume {s.volume_name}" in out, out
    volume = docker_client.api.inspect_volume(s.volume_name)
    assert volume["Labels"]["orchestrate.plan"] == "autodeploy-swarm"
    assert not docker_client.api.services(filters={"name": s.app_service})
