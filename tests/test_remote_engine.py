"""Issue 13: the same plan against a remote Docker Engine.

A second, real Docker Engine runs in a network namespace of its own ("another host" at
10.213.N.2, see tests/remote_engine.py), reached over TCP with TLS and over SSH. First the harness
proves itself (the engine answers over both, refuses strangers, is not the local engine, runs a
container whose published port answers at its address); then orchestrate runs plans/phase1.yaml
and plans/phase2.yaml on it, as a user would: ``DOCKER_HOST`` (and ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``) as for the Docker CLI, or the plan's ``engine:``, and the remote's address as
the database's bind address. Nothing of it may appear on the local engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import TEST_LABEL
from tests.remote_engine import (RemoteEngine, RemoteEngineError, cleanup_leftovers, labelled, make_ca,
                                 make_cert)

pytestmark = pytest.mark.integration

PLAN1 = "autodeploy-phase1"
PLAN2 = "autodeploy-phase2"


@pytest.fixture(scope="session")
def remote_engine():
    """A second Docker Engine for this session (empty: no image), removed whatever happens."""
    engine = RemoteEngine().start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(autouse=True)
def _remote_emptied_after(request):
    """After each test that used it, the session's remote engine is emptied, whatever the test
    left (its images stay: they are what a second run would find there)."""
    yield
    if "remote_engine" not in request.fixturenames:
        return
    client = request.getfixturevalue("remote_engine").client()
    for c in client.api.containers(all=True, quiet=True):
        client.api.remove_container(c["Id"], force=True, v=True)
    for v in client.api.volumes().get("Volumes") or []:
        client.api.remove_volume(v["Name"], force=True)
    for n in client.api.networks():
        if n["Name"] not in ("bridge", "host", "none"):
            client.api.remove_network(n["Id"])


CA_BUNDLE_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def orchestrate(env: dict[str, str], *argv, timeout: int = 600) -> tuple[int, str]:
    """``python3 -m orchestrator ARGV`` as a user runs it, with ``env`` over this process's
    environment; returns (exit code, stdout + stderr). The CA bundle variables of requests go
    unless ``env`` names them (they have a test of their own: the machine's setting of them
    must not decide what the other tests show)."""
    full = {k: v for k, v in os.environ.items() if k not in CA_BUNDLE_VARS}
    full.update(env)
    proc = subprocess.run(["python3", "-m", "orchestrator", *map(str, argv)], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=str(Path(__file__).resolve().parent.parent))
    return proc.returncode, proc.stdout + proc.stderr


def session_objects(client) -> set[tuple[str, str]]:
    """Every container, volume, network and image on an engine that this test session labelled."""
    flt = {"label": f"{TEST_LABEL[0]}={TEST_LABEL[1]}"}
    found = {("container", c["Id"]) for c in client.api.containers(all=True, filters=flt)}
    found |= {("volume", v["Name"]) for v in (client.api.volumes(filters=flt).get("Volumes") or [])}
    found |= {("network", n["Id"]) for n in client.api.networks(filters=flt)}
    found |= {("image", i["Id"]) for i in client.api.images(filters=flt)}
    return found


def plan_objects(client, plan: str) -> dict[str, list[str]]:
    return labelled(client, f"orchestrate.plan={plan}")


def env_line(root: Path) -> str:
    return next(line for line in (root / ".env").read_text().splitlines() if line.startswith("DATABASE_URL="))


def http_get(url: str, deadline_s: float = 30.0) -> tuple[int, bytes]:
    deadline, last = time.monotonic() + deadline_s, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer: {last}")


# --- the harness itself -------------------------------------------------------------------------

def test_certificates_from_the_openssl_command_line_verify(tmp_path):
    """The fallback for machines without the cryptography package makes the same chain."""
    ca = make_ca(tmp_path, "test CA", backend="openssl")
    _, server = make_cert(tmp_path, "server-", ca, "engine", server_ip="10.213.9.2", backend="openssl")
    _, client = make_cert(tmp_path, "client-", ca, "client", backend="openssl")
    for cert in (server, client):
        check = subprocess.run(["openssl", "verify", "-CAfile", str(ca[1]), str(cert)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(server), "-noout", "-text"], capture_output=True,
                          text=True).stdout
    assert "IP Address:10.213.9.2" in text and "TLS Web Server Authentication" in text
    assert oct((tmp_path / "server-key.pem").stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def no_ca_bundle_env(monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set on many machines, this one too) win
    over a session's own CA: the harness's own docker-py clients go without them."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def test_the_remote_engine_over_tls_is_another_engine(remote_engine, docker_client, no_ca_bundle_env):
    import docker
    remote = docker.DockerClient(base_url=remote_engine.tcp_url, tls=remote_engine.tls_config(), timeout=30)
    info = remote.info()
    assert info["ID"] == remote_engine.client().info()["ID"]
    assert info["ID"] != docker_client.info()["ID"]
    assert info["Name"] == remote_engine.netns
    # DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the Docker CLI and docker-py read them
    from_env = docker.from_env(environment=remote_engine.tls_env())
    assert from_env.info()["ID"] == info["ID"]
    cli = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **remote_engine.tls_env()})
    assert cli.stdout.strip() == info["ID"], cli.stderr


@pytest.mark.parametrize("kind", ["no-cert", "other-ca", "wrong-ca", "plain-http"])
def test_an_untrusted_client_is_refused(remote_engine, kind, no_ca_bundle_env):
    import docker
    import requests
    tls = False if kind == "plain-http" else remote_engine.tls_config(remote_engine.untrusted_cert_dir(kind))
    with pytest.raises((docker.errors.DockerException, requests.exceptions.RequestException, OSError)) as caught:
        docker.DockerClient(base_url=remote_engine.tcp_url, tls=tls, timeout=10).info()
    text = str(caught.value)
    if kind == "wrong-ca":       # the client refuses the engine: its certificate is not signed by that CA
        assert "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text, text
    elif kind == "plain-http":
        assert "HTTPS" in text or "400" in text, text
    else:                        # the engine refuses the client: no certificate, or one it did not sign
        # (an alert, or the connection closed mid-handshake, as the TLS library reports it)
        assert re.search(r"BAD_CERTIFICATE|CERTIFICATE_REQUIRED|SSLEOFError|UNKNOWN_CA|reset by peer", text), text


def test_ssh_reaches_the_remote_engine_not_the_local_one(remote_engine, docker_client, monkeypatch):
    import docker
    root_ssh_before = Path("/root/.ssh").exists()
    for key, value in remote_engine.ssh_env().items():
        monkeypatch.setenv(key, value)
    over_ssh = docker.DockerClient(base_url=remote_engine.ssh_url, use_ssh_client=True, timeout=60)
    try:
        info = over_ssh.info()
    finally:
        over_ssh.close()
    assert info["ID"] == remote_engine.client().info()["ID"] != docker_client.info()["ID"]
    assert info["Name"] == remote_engine.netns
    # the Docker CLI's ssh:// transport too (it runs `docker system dial-stdio` there)
    cli = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True, text=True, timeout=60)
    assert cli.stdout.strip() == info["ID"], cli.stderr
    # root by key only: another key is refused
    other = Path(remote_engine.home) / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    refused = subprocess.run(["/usr/bin/ssh", "-F", "/dev/null", "-i", str(other), "-o", "IdentitiesOnly=yes",
                              "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                              "UserKnownHostsFile=/dev/null", f"root@{remote_engine.address}", "true"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused.stderr
    assert Path("/root/.ssh").exists() == root_ssh_before, "the tests must not touch /root/.ssh"


def test_a_loaded_image_runs_and_its_published_port_answers_at_the_remote_address(remote_engine, python_image,
                                                                                 docker_client):
    remote_engine.load(python_image, docker_client)
    client = remote_engine.client()
    assert python_image in [t for img in client.images.list() for t in img.tags]
    container = client.containers.run(python_image, ["python3", "-m", "http.server", "8000", "-d", "/etc"],
                                      detach=True, ports={"8000/tcp": (remote_engine.address, 8123)},
                                      labels={TEST_LABEL[0]: TEST_LABEL[1]})
    try:
        status, body = http_get(f"http://{remote_engine.address}:8123/")
        assert status == 200 and b"os-release" in body
        assert not docker_client.containers.list(all=True, filters={"id": container.id})
    finally:
        container.remove(force=True)


def test_leftovers_of_a_killed_run_are_removed(remote_engine):
    """A run killed before its teardown (dockerd killed, the owning process gone) leaves a
    namespace, processes, mounts and folders; the next start removes them, never a live run's."""
    other = RemoteEngine().start()
    try:
        (other.dir / "owner").write_text("999999999\n")          # its test process is gone
        dockerd_pid = int((other.dir / "dockerd.pid").read_text())
        os.kill(dockerd_pid, 9)
        other._dockerd = other._sshd = other._client = None      # and nobody will stop it
        removed = cleanup_leftovers()
        assert other.tag in removed and remote_engine.tag not in removed
        assert not other.dir.exists() and not other.run_dir.exists()
        assert other.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        leftover = subprocess.run(["pgrep", "-f", str(other.dir)], capture_output=True, text=True).stdout.split()
        assert leftover == [], leftover
        assert remote_engine.client().ping()
    finally:
        other.stop()


def test_a_failed_start_says_why_and_leaves_nothing(monkeypatch):
    engine = RemoteEngine()
    monkeypatch.setattr(RemoteEngine, "_storage_driver", staticmethod(lambda: "no-such-driver"))
    with pytest.raises(RemoteEngineError) as caught:
        engine.start()
    assert "dockerd exited" in str(caught.value) and "no-such-driver" in str(caught.value)
    assert not engine.dir.exists() and not engine.run_dir.exists()
    assert engine.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


# --- orchestrate on the remote engine: phase 1 ---------------------------------------------------

def phase1_must_show(repo_copy, remote_engine, docker_client, env: dict[str, str]) -> None:
    """apply, .env naming the engine's address, verify, backup, drill, restore, a password
    change, a converged second apply, and nothing on the local engine; then destroy."""
    addr = remote_engine.address
    plan = repo_copy.plan
    args = ["-e", f"db_bind={addr}", "-e", "pg_image=orchestrate-test/postgres:15"]
    local_before = session_objects(docker_client)
    code, out = orchestrate(env, "apply", plan, *args)
    assert code == 0, out
    assert "changed: postgres (db-container)" in out, out
    url = env_line(repo_copy.root)
    assert f"@{addr}:5432/autodeploy" in url and "127.0.0.1" not in url and "localhost" not in url, url
    lock = json.loads(plan.with_suffix(".lock").read_text())
    assert addr in json.dumps(lock["steps"]["postgres"]["outputs"])
    assert "127.0.0.1" not in lock["steps"]["postgres"]["outputs"].get("url", "")
    remote = plan_objects(remote_engine.client(), PLAN1)
    assert remote["containers"] == ["autodeploy_postgres"] and "postgres_data" in remote["volumes"], remote
    binding = remote_engine.client().api.inspect_container("autodeploy_postgres")["HostConfig"]["PortBindings"]
    assert binding["5432/tcp"][0]["HostIp"] == addr

    # converged: plan has nothing to do, apply changes nothing
    code, out = orchestrate(env, "plan", plan, "--detailed-exitcode", *args)
    assert code == 0, out
    code, out = orchestrate(env, "apply", plan, *args)
    assert code == 0 and "ok=6 changed=0 failed=0" in out, out

    code, out = orchestrate(env, "verify", plan, *args)
    assert code == 0, out
    code, out = orchestrate(env, "backup", plan, *args)
    assert code == 0 and "wrote autodeploy-phase1-" in out, out
    code, out = orchestrate(env, "backup", plan, "--drill", *args)
    assert code == 0 and "sha256 as recorded" in out and "restored into a throwaway container" in out, out
    # a row lost, then the backup restored
    import psycopg
    password = repo_copy.password
    with psycopg.connect(host=addr, port=5432, user="dbadmin", password=password, dbname="autodeploy",
                         autocommit=True, connect_timeout=5) as conn:
        conn.execute("DELETE FROM deployment_logs WHERE id = (SELECT min(id) FROM deployment_logs)")
    code, out = orchestrate(env, "restore", plan, "--from", "latest", "--yes", *args)
    assert code == 0 and "restored autodeploy-phase1-" in out, out
    code, out = orchestrate(env, "verify", plan, *args)
    assert code == 0, out

    # a password change from the environment reaches the remote database
    new_password = "Remote-" + os.urandom(12).hex()
    code, out = orchestrate({**env, "AUTODEPLOY_DB_PASSWORD": new_password}, "apply", plan, *args)
    assert code == 0, out
    assert new_password not in out
    with psycopg.connect(host=addr, port=5432, user="dbadmin", password=new_password, dbname="autodeploy",
                         connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM deployment_logs").fetchone()[0] > 0
    code, out = orchestrate({**env, "AUTODEPLOY_DB_PASSWORD": new_password}, "plan", plan,
                            "--detailed-exitcode", *args)
    assert code == 0, out

    # nothing of it on the local engine
    assert session_objects(docker_client) - local_before == set()
    code, out = orchestrate({**env, "AUTODEPLOY_DB_PASSWORD": new_password}, "destroy", plan, "--volumes", "--yes",
                            *args)
    assert code == 0, out
    assert plan_objects(remote_engine.client(), PLAN1) == {"containers": [], "volumes": [], "networks": []}
    assert session_objects(docker_client) - local_before == set()


def test_phase1_on_a_remote_engine_over_tls_from_docker_host(repo_copy, remote_engine, docker_client):
    phase1_must_show(repo_copy, remote_engine, docker_client, remote_engine.tls_env())


def test_phase1_on_a_remote_engine_over_ssh_from_docker_host(repo_copy, remote_engine, docker_client):
    phase1_must_show(repo_copy, remote_engine, docker_client, remote_engine.ssh_env())


def with_engine_key(repo_copy, remote_engine, engine_yaml: str) -> None:
    """phase1.yaml with an ``engine:`` block and the remote's address as a plan variable."""
    text = repo_copy.plan.read_text()
    text = text.replace("vars:\n", f"vars:\n  remote_addr: {remote_engine.address}\n", 1)
    text = text.replace("\nsecrets:\n", f"\n{engine_yaml}\nsecrets:\n", 1)
    repo_copy.plan.write_text(text)


def converge_by_engine_key(env, repo_copy, remote_engine, docker_client) -> None:
    """The plan (its engine: set) applied, converged, nothing local, then destroyed."""
    args = ["-e", f"db_bind={remote_engine.address}", "-e", "pg_image=orchestrate-test/postgres:15",
            "-e", "demo_rows=300"]
    local_before = session_objects(docker_client)
    code, out = orchestrate(env, "apply", repo_copy.plan, *args)
    assert code == 0, out
    assert f"@{remote_engine.address}:5432/" in env_line(repo_copy.root)
    assert plan_objects(remote_engine.client(), PLAN1)["containers"] == ["autodeploy_postgres"]
    code, out = orchestrate(env, "plan", repo_copy.plan, "--detailed-exitcode", *args)
    assert code == 0, out
    assert session_objects(docker_client) - local_before == set()
    code, out = orchestrate(env, "destroy", repo_copy.plan, "--volumes", "--yes", *args)
    assert code == 0, out
    assert plan_objects(remote_engine.client(), PLAN1)["volumes"] == []


def test_the_plans_engine_key_over_tls(repo_copy, remote_engine, docker_client):
    certs = repo_copy.root / "engine-certs"
    certs.mkdir(mode=0o700)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (certs / name).write_bytes((remote_engine.cert_dir / name).read_bytes())
    os.chmod(certs / "key.pem", 0o600)
    with_engine_key(repo_copy, remote_engine, """\
engine:
  host: "tcp://{{ vars.remote_addr }}:2376"
  tls: {ca: engine-certs/ca.pem, cert: engine-certs/cert.pem, key: engine-certs/key.pem}
""")
    # no DOCKER_HOST: the plan names the engine (a DOCKER_HOST naming this machine's engine is
    # where images are built and sent from)
    env = {"DOCKER_HOST": "", "DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": ""}
    converge_by_engine_key(env, repo_copy, remote_engine, docker_client)


def test_the_plans_engine_key_over_ssh(repo_copy, remote_engine, docker_client):
    with_engine_key(repo_copy, remote_engine, """\
engine:
  host: "ssh://root@{{ vars.remote_addr }}"
""")
    env = {k: v for k, v in remote_engine.ssh_env().items() if k != "DOCKER_HOST"}
    env["DOCKER_HOST"] = ""
    converge_by_engine_key(env, repo_copy, remote_engine, docker_client)


def test_a_ca_bundle_in_the_environment_does_not_replace_the_engines_ca(repo_copy, remote_engine):
    """REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set on many machines, for other tools' sake) name the
    CAs of public sites; the Docker CLI ignores them, and so must orchestrate: the engine's CA is
    DOCKER_CERT_PATH's ca.pem (requests would otherwise let the variable win over it)."""
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    assert os.path.exists(bundle)
    env = {**remote_engine.tls_env(), "REQUESTS_CA_BUNDLE": bundle, "CURL_CA_BUNDLE": bundle}
    code, out = orchestrate(env, "plan", repo_copy.plan, "-e", f"db_bind={remote_engine.address}",
                            "-e", "pg_image=orchestrate-test/postgres:15")
    assert code == 0 and "create" in out and "autodeploy_postgres" in out, out


def test_a_tls_engine_whose_certificate_is_not_trusted_is_refused(repo_copy, remote_engine):
    env = remote_engine.tls_env(remote_engine.untrusted_cert_dir("wrong-ca"))
    code, out = orchestrate(env, "apply", repo_copy.plan, "-e", f"db_bind={remote_engine.address}",
                            "-e", "pg_image=orchestrate-test/postgres:15")
    assert code != 0 and "could not be trusted" in out and "CERTIFICATE_VERIFY_FAILED" in out, out
    assert plan_objects(remote_engine.client(), PLAN1)["containers"] == []


# --- phase 2 on the remote engine -------------------------------------------------------------------

def test_phase2_on_a_remote_engine_over_tls(phase2, remote_engine, docker_client):
    addr = remote_engine.address
    overrides = {"db_bind": addr, "http_port": f"{addr}:8080", "publish_app": "false",
                 "pg_image": "orchestrate-test/postgres:15", "app_base_image": "orchestrate-test/python:3.11",
                 "nginx_image": "orchestrate-test/nginx:1.22", "demo_rows": "500"}
    # the fixture's own names (container, network, tag: unique to this test), the remote's addresses
    kept = []
    pairs = list(zip(phase2.extra[0::2], phase2.extra[1::2]))
    for flag, value in pairs:
        if value.split("=", 1)[0] not in overrides:
            kept += [flag, value]
    args = kept + [x for k, v in overrides.items() for x in ("-e", f"{k}={v}")]
    env = remote_engine.tls_env()
    remote = remote_engine.client()
    local_before = session_objects(docker_client)
    code, out = orchestrate(env, "apply", phase2.plan, *args)
    assert code == 0, out
    assert re.search(rf"sent {re.escape(phase2.tag)}\b", out), out      # built here, sent there
    image = remote.images.get(phase2.tag)          # the application's image, shipped there
    status, body = http_get(f"http://{addr}:8080/tenants")
    assert status == 200 and len(json.loads(body)) == phase2.source_tenants() > 0
    # the application is not published (only nginx is), and nothing runs locally
    app = remote.api.inspect_container(phase2.app)
    assert not any(app["HostConfig"]["PortBindings"] or {})
    new_local = session_objects(docker_client) - local_before
    assert {kind for kind, _ in new_local} <= {"image"}, new_local   # built here, then shipped

    # converged: nothing to do, nothing shipped again
    code, out = orchestrate(env, "plan", phase2.plan, "--detailed-exitcode", *args)
    assert code == 0, out
    code, out = orchestrate(env, "apply", phase2.plan, *args)
    assert code == 0 and "\nchanged:" not in out and not re.search(r"\bsen(t|ding)\b", out), out
    assert remote.images.get(phase2.tag).id == image.id
    assert http_get(f"http://{addr}:8080/tenants")[0] == 200
    # and destroy removes it all there (the autouse fixture empties the engine if a step above failed)
    code, out = orchestrate(env, "destroy", phase2.plan, "--volumes", "--yes", *args)
    assert code == 0, out
    assert plan_objects(remote, PLAN2) == {"containers": [], "volumes": [], "networks": []}


def test_an_image_built_on_the_remote_engine_and_its_base_sent_there(tmp_path, remote_engine, docker_client,
                                                                      python_image):
    """build_on: engine: the context goes to the remote engine, which builds there; the base image
    it lacks is sent from this machine first; nothing is built here; the second apply builds and
    sends nothing."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {python_image}\nRUN echo built-remotely > /built\n")
    tag = f"orch-remote-build-{uuid.uuid4().hex[:6]}:1"
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"name: remote-build\nsteps:\n  - name: app_image\n    image: {{context: ctx, tag: '{tag}', "
                    f"build_on: engine}}\n")
    env = remote_engine.tls_env()
    code, out = orchestrate(env, "apply", plan)
    assert code == 0 and "built " + tag in out, out
    remote = remote_engine.client()
    assert remote.images.get(tag).id and remote.images.get(python_image).id
    assert not docker_client.images.list(name=tag.split(":")[0])           # built there, not here
    code, out = orchestrate(env, "apply", plan)
    assert code == 0 and "Nothing changed" in out, out
