"""The production variant of phase 2 (--var-file examples/autodeploy/production.yaml): secrets only
from the environment, restart always, no bind mount, the application unpublished, nginx the only
published service; and pgadmin, which only a variable turns on."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration

PRODUCTION = str(ROOT / "examples/autodeploy/production.yaml")


def test_the_production_variant(phase2, docker_client, monkeypatch):
    # the password from the environment only: without it the plan refuses, naming the variable
    code, out = phase2.run("plan", "--var-file", PRODUCTION)
    assert code == 1 and "AUTODEPLOY_DB_PASSWORD is not set" in out and "generate_secrets is false" in out, out
    monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", "Prod-secret-4c1b8e7f")
    extra = ("--var-file", PRODUCTION, "-e", f"http_port={phase2.http_port}")
    code, out = phase2.run("apply", *extra)
    assert code == 0, out
    secrets = phase2.root / "plans/phase2.secrets"
    assert not secrets.exists() or "db_password" not in secrets.read_text()    # nothing generated
    assert len(phase2.get("/tenants", proxy=True)[1]) == phase2.source_tenants()
    published = {}
    for name in (phase2.db_container, phase2.app, phase2.proxy):
        info = docker_client.api.inspect_container(name)
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "always", name
        assert not [m for m in info["HostConfig"].get("Mounts") or [] if m["Type"] == "bind"], name
        assert not info["HostConfig"].get("Binds"), name
        published[name] = info["HostConfig"]["PortBindings"] or {}
    assert published[phase2.app] == {}
    assert published[phase2.proxy] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(phase2.http_port)}]}
    assert phase2.run("plan", "--detailed-exitcode", *extra)[0] == 0

    # between the two variable files, plan shows exactly the differences of the production shape
    code, out = phase2.run("plan")
    assert code == 0, out
    changed = [line.split()[-2] for line in out.splitlines()
               if line.startswith(("  recreate", "  update in place", "  create"))]
    assert set(changed) >= {"postgres", "app", "proxy"}, out
    assert "~ restart: always -> unless-stopped" in out and "(none) -> 127.0.0.1:" in out, out
    assert "Prod-secret-4c1b8e7f" not in out


def test_pgadmin_only_when_asked_with_its_password_a_secret(phase2, docker_client, nginx_image):
    code, out = phase2.run("plan")
    assert code == 0 and [line for line in out.splitlines() if "pgadmin" in line and "skipped" in line], out
    # pgadmin cannot be pulled here: an image that also serves on port 80 stands in for it
    port = free_port()
    extra = ("-e", "pgadmin=true", "-e", f"pgadmin_image={nginx_image}", "-e", f"pgadmin_port={port}",
             "-e", f"pgadmin_container={phase2.name}-pgadmin")
    code, out = phase2.run("apply", *extra)
    assert code == 0 and "changed: pgadmin" in out, out
    import yaml
    password = yaml.safe_load((phase2.root / "plans/phase2.secrets").read_text())["pgadmin_password"]
    info = docker_client.api.inspect_container(f"{phase2.name}-pgadmin")
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["PGADMIN_DEFAULT_PASSWORD"] == password and env["PGADMIN_DEFAULT_EMAIL"] == "admin@example.com"
    assert info["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert phase2.name + "-net" in info["NetworkSettings"]["Networks"]
    code, out = phase2.run("plan", "--json", *extra)
    assert code == 0 and password not in out and password not in (phase2.root / "plans/phase2.lock").read_text()
    # off again (the default): the plan skips it; destroy of the plan leaves it to the user
    assert phase2.run("plan", "--detailed-exitcode")[0] == 0


def test_https_only_when_a_certificate_and_key_are_given(phase2, docker_client, monkeypatch, tmp_path):
    import ssl
    import subprocess
    import urllib.request
    cert, key = phase2.root / "tls/cert.pem", phase2.root / "tls/key.pem"
    cert.parent.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    https = free_port()
    code, out = phase2.run("apply", "-e", "tls_cert=tls/cert.pem", "-e", "tls_key=tls/key.pem",
                           "-e", f"https_port=127.0.0.1:{https}")
    assert code == 0, out
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with urllib.request.urlopen(f"https://127.0.0.1:{https}/tenants", context=context, timeout=10) as response:
        assert response.status == 200
    info = docker_client.api.inspect_container(phase2.proxy)
    assert "443/tcp" in info["HostConfig"]["PortBindings"]
    assert not [m for m in info["HostConfig"].get("Mounts") or [] if m["Type"] == "bind"]    # copied in
    # the key's content never shows; without the files, no HTTPS
    code, out = phase2.run("plan")
    assert key.read_text().splitlines()[1] not in out
    assert "443" in out, out      # plan says the HTTPS port goes
