"""The container and network steps on their own, against the real engine: a small web server from
the test Python image (which has neither curl nor wget: the http health check falls back to
Python), with an env_file, a read-only bind mount, a named volume, a read-only root with a tmpfs,
limits, a network and aliases."""

from __future__ import annotations

import urllib.request
import uuid

import pytest

from tests.conftest import SESSION, free_port, remove_named, run_cli

pytestmark = pytest.mark.integration

PLAN = """\
name: {name}
vars:
  memory: 64m
  restart: unless-stopped
  aliases: [web]
  internal: false
  command: "python3 -m http.server 8080 --directory /site"
steps:
  - name: net
    network: {{name: {name}-net, internal: "{{{{ vars.internal }}}}"}}
  - name: web
    container:
      image: {image}
      container: {name}-web
      command: "{{{{ vars.command }}}}"
      env: {{GREETING: hello, WORKERS: 2}}
      env_file: web.env
      ports: ["127.0.0.1:{port}:8080"]
      volumes: ["./site:/site:ro", "{name}-cache:/cache"]
      network: "{{{{ steps.net.name }}}}"
      aliases: "{{{{ vars.aliases }}}}"
      healthcheck: {{http: {{path: /index.html, port: 8080}}, interval: 1s, timeout: 3s, retries: 3}}
      read_only: true
      tmpfs: [/tmp]
      memory: "{{{{ vars.memory }}}}"
      restart: "{{{{ vars.restart }}}}"
      wait: 60s
"""


class Web:
    def __init__(self, tmp_path, image):
        self.name = f"t{SESSION}-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.dir = tmp_path
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "index.html").write_text("<h1>hi</h1>\n")
        (tmp_path / "web.env").write_text("# from a file\nFROM_FILE=1\nGREETING=overridden by env\n")
        self.path = tmp_path / "plan.yaml"
        self.path.write_text(PLAN.format(name=self.name, image=image, port=self.port))

    def run(self, command: str, *argv: str) -> tuple[int, str]:
        return run_cli(command, self.path, *argv)

    def get(self, path: str = "/index.html") -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.read().decode()


@pytest.fixture
def web(tmp_path, python_image, docker_client):
    w = Web(tmp_path, python_image)
    yield w
    remove_named(docker_client, w.name)


def test_container_converges_updates_in_place_and_recreates_only_when_it_must(web, docker_client, mutations):
    code, out = web.run("apply")
    assert code == 0 and "created container" in out, out
    assert web.get() == "<h1>hi</h1>\n"
    info = docker_client.api.inspect_container(f"{web.name}-web")
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["FROM_FILE"] == "1" and env["GREETING"] == "hello" and env["WORKERS"] == "2"
    assert info["HostConfig"]["ReadonlyRootfs"] and info["HostConfig"]["Memory"] == 64 << 20
    assert info["State"]["Health"]["Status"] == "healthy"
    assert "web" in info["NetworkSettings"]["Networks"][f"{web.name}-net"]["Aliases"]
    first = info["Id"]

    mutations.calls.clear()
    assert web.run("apply")[0] == 0 and mutations.calls == []
    assert web.run("plan", "--detailed-exitcode")[0] == 0

    # limits, restart policy and aliases change in place: the same container
    changed = web.dir / "changed.yaml"
    changed.write_text("memory: 96m\nrestart: always\naliases: [web, www]\n")
    extra = ("--var-file", str(changed))
    code, out = web.run("apply", *extra)
    assert code == 0 and "updated restart policy" in out and "updated resource limits" in out, out
    info = docker_client.api.inspect_container(f"{web.name}-web")
    assert info["Id"] == first and info["HostConfig"]["Memory"] == 96 << 20
    assert {"web", "www"} <= set(info["NetworkSettings"]["Networks"][f"{web.name}-net"]["Aliases"])
    assert web.run("plan", "--detailed-exitcode", *extra)[0] == 0

    # the env file's content is configuration: a change recreates, naming the variable only
    (web.dir / "web.env").write_text("FROM_FILE=2\n")
    code, out = web.run("plan", *extra)
    assert "recreate" in out and "changed: FROM_FILE" in out and "FROM_FILE=2" not in out, out
    code, out = web.run("apply", *extra)
    assert code == 0 and "recreated container (env)" in out, out
    assert docker_client.api.inspect_container(f"{web.name}-web")["Id"] != first

    # the network cannot change in place: planned as a recreate naming who follows; the
    # container is joined again with its aliases and keeps serving
    code, out = web.run("plan", *extra, "-e", "internal=true")
    assert "recreate" in out and f"containers that must follow (disconnected, then joined again): {web.name}-web" in out, out
    code, out = web.run("apply", *extra, "-e", "internal=true")
    assert code == 0 and "recreated network" in out, out
    net = docker_client.api.inspect_network(f"{web.name}-net")
    assert net["Internal"] and [c["Name"] for c in net["Containers"].values()] == [f"{web.name}-web"]
    assert web.run("plan", "--detailed-exitcode", *extra, "-e", "internal=true")[0] == 0

    # destroy: the container and the network go, the named volume stays
    code, out = web.run("destroy")
    assert code == 0 and f"removed container {web.name}-web" in out and f"kept volume {web.name}-cache" in out, out
    assert docker_client.api.containers(all=True, filters={"name": f"{web.name}-web"}) == []
    assert docker_client.api.inspect_volume(f"{web.name}-cache")


def test_a_container_that_dies_or_never_gets_healthy_fails_with_its_logs(web, docker_client):
    code, out = web.run("apply", "-e", "command=python3 -c 'import sys; print(\"no config here\"); sys.exit(3)'")
    assert code == 1, out
    assert f"container {web.name}-web" in out and "no config here" in out, out
    assert docker_client.api.containers(all=True, filters={"name": f"{web.name}-web"}) == []
    # serving, but not what the health check asks for: its output is in the error
    code, out = web.run("apply", "-e", "command=python3 -m http.server 8080 --directory /tmp")
    assert code == 1 and "is unhealthy" in out and "its last health check: exit code" in out, out
    assert docker_client.api.containers(all=True, filters={"name": f"{web.name}-web"}) == []
    # fixed: converges
    assert web.run("apply")[0] == 0
    assert web.get() == "<h1>hi</h1>\n"


def test_bad_container_plans_are_refused_with_file_line_and_key(web):
    text = web.path.read_text()
    for old, new, words in (
            ('memory: "{{ vars.memory }}"', "memory: 1k", "memory"),
            ('"./site:/site:ro"', '"./site:site"', "volumes"),
            ("tmpfs: [/tmp]", "tmpfs: [tmp]", "tmpfs"),
            ("env_file: web.env", "env_file: ../../../etc/passwd", "env_file")):
        web.path.write_text(text.replace(old, new))
        code, out = web.run("plan")
        assert code == 1 and f"{web.path}:" in out and words in out and "Traceback" not in out, out
    web.path.write_text(text)
    (web.dir / "web.env").unlink()
    code, out = web.run("plan")
    assert code == 1 and "env_file web.env does not exist" in out, out
