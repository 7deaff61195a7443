"""The service step on a single-node swarm the module creates (docker swarm init on 127.0.0.1) and
leaves (swarm leave --force, docker_gwbridge removed) whatever happens: an overlay network, a
service of 2 replicas (dnsrr: this kernel has no IPVS) serving a Swarm secret as a file, a second
apply that changes nothing, a changed setting rolled start-first, and a release whose health
check fails rolled back by Swarm with apply exiting 1."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import TEST_LABEL, free_port, run_cli
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _docker("ps", "-aq", "--filter", sel, check=False).stdout.strip():
        time.sleep(1)     # the services' tasks going away
    ids = _docker("network", "ls", "-q", "--filter", sel, check=False).stdout.split()
    if ids:
        _docker("network", "rm", *ids, check=False)


@pytest.fixture(scope="module")
def swarm(docker_client):
    state = docker_client.info().get("Swarm", {}).get("LocalNodeState")
    if state != "inactive":
        pytest.fail(f"the engine is already in swarm mode ({state}): these tests create and leave their own "
                    f"single-node swarm and will not touch one they did not make")
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
    conf = (ROOT / "templates" / "nginx.conf.j2").read_text()
    conf = conf.replace("{{ upstream.host }}", f"{name}-web").replace("{{ upstream.port }}", "8080")
    (root / "nginx.conf").write_text(re.sub(r"\{%-? if tls %\}.*?\{%-? endif %\}", "", conf, flags=re.S))
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
