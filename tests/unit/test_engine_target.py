"""Which engine a plan talks to, and the addresses its published ports are reached at (pure)."""

import pytest

from orchestrator.changes import Action
from orchestrator.containers import port_conflicts
from orchestrator.docker_engine import Target
from orchestrator.errors import PlanError
from orchestrator.fields import parse_port
from orchestrator.plan import engine_target, load_plan
from orchestrator.steps.image import ImageSpec, Observed, diff_image


@pytest.mark.parametrize("env, host, remote, address", [
    ({}, None, False, None),
    ({"DOCKER_HOST": "unix:///run/docker.sock"}, "unix:///run/docker.sock", False, None),
    ({"DOCKER_HOST": "tcp://127.0.0.1:2375"}, "tcp://127.0.0.1:2375", False, None),
    ({"DOCKER_HOST": "tcp://10.9.8.7:2376"}, "tcp://10.9.8.7:2376", True, "10.9.8.7"),
    ({"DOCKER_HOST": "ssh://deploy@db.example.com"}, "ssh://deploy@db.example.com", True, "db.example.com"),
    ({"DOCKER_HOST": "ssh://root@[fd00::2]:2222"}, "ssh://root@[fd00::2]:2222", True, "fd00::2"),
])
def test_the_environment_names_the_engine_as_the_docker_cli_reads_it(env, host, remote, address):
    target = Target.from_env(env)
    assert (target.host, target.remote, target.address) == (host, remote, address)
    assert target.ca is None


def test_docker_tls_verify_takes_the_files_of_docker_cert_path():
    target = Target.from_env({"DOCKER_HOST": "tcp://10.0.0.2:2376", "DOCKER_TLS_VERIFY": "1",
                              "DOCKER_CERT_PATH": "/certs"})
    assert (target.ca, target.cert, target.key) == ("/certs/ca.pem", "/certs/cert.pem", "/certs/key.pem")
    assert Target.from_env({"DOCKER_HOST": "tcp://10.0.0.2:2376", "DOCKER_TLS_VERIFY": "0"}).ca is None


@pytest.mark.parametrize("port, address, expect", [
    ("127.0.0.1:5432:5432", None, "127.0.0.1:5432"),
    ("0.0.0.0:5432:5432", None, "127.0.0.1:5432"),
    ("0.0.0.0:5432:5432", "10.1.2.3", "10.1.2.3:5432"),
    ("10.1.2.3:6000:5432", "10.1.2.3", "10.1.2.3:6000"),
    ("[::]:5432:5432", "fd00::2", "[fd00::2]:5432"),
])
def test_a_published_port_is_reached_at_the_engines_address(port, address, expect):
    assert parse_port(port).client_netloc(address) == expect


class _Remote:
    remote = True
    target = Target(host="tcp://10.1.2.3:2376")

    def publishing(self, port):
        return []

    def is_local(self):
        return False


def test_a_port_on_a_remote_engines_loopback_is_refused_with_advice():
    ports = [parse_port("127.0.0.1:5432:5432"), parse_port("10.1.2.3:5433:5432")]
    problems = port_conflicts(_Remote(), ports, set(), "db", "postgres")
    assert len(problems) == 1
    assert "127.0.0.1:5432->5432/tcp" in problems[0] and "db_bind" in problems[0]
    assert "engine_local_ports" in problems[0]
    assert port_conflicts(_Remote(), ports, set(), "db", "postgres", engine_local=True) == []


def _plan(tmp_path, engine: str):
    path = tmp_path / "plan.yaml"
    path.write_text("name: p\nvars: {where: 'tcp://10.4.4.4:2376'}\n" + engine +
                    "steps:\n  - name: files\n    render: {files: []}\n")
    return load_plan(path)


def test_the_plans_engine_renders_vars_and_resolves_tls_files(tmp_path):
    plan = _plan(tmp_path, "engine:\n  host: '{{ vars.where }}'\n  tls: {ca: certs/ca.pem, cert: certs/c.pem, "
                           "key: certs/k.pem}\n")
    target = engine_target(plan, None)
    assert target.host == "tcp://10.4.4.4:2376" and target.address == "10.4.4.4"
    assert target.ca == str(tmp_path / "certs" / "ca.pem") and target.key == str(tmp_path / "certs" / "k.pem")


def test_an_empty_engine_host_means_the_environments(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@10.5.5.5")
    assert engine_target(_plan(tmp_path, "engine: {host: ''}\n"), None).address == "10.5.5.5"


@pytest.mark.parametrize("engine, expect", [
    ("engine: {host: 'http://10.4.4.4:2375'}\n", "is not a Docker engine address"),
    ("engine: {host: 'tcp://10.4.4.4:2375'}\n", "without TLS"),
    ("engine: {host: 'tcp://10.4.4.4:2376', tls: {cert: c.pem}}\n", "needs both cert and key"),
])
def test_a_bad_engine_is_an_error_naming_the_key(tmp_path, engine, expect):
    with pytest.raises(PlanError) as err:
        engine_target(_plan(tmp_path, engine), None)
    assert expect in str(err.value.message) and err.value.line == 3


def test_a_build_the_remote_engine_lacks_is_sent_not_rebuilt():
    spec = ImageSpec(tag="app:1")
    image = {"Id": "sha256:" + "a" * 64, "Config": {"Labels": {"orchestrate.build-digest": "d"}}}

    class Scan:
        flagged = []

    obs = Observed(image=image, scan=Scan(), want="d", remote="10.1.2.3")
    d = diff_image(obs, spec, {}, "Dockerfile")
    assert [(c.action, c.after) for c in d.changes] == [(Action.UPDATE, "app:1 (aaaaaaaaaaaa)")]
    assert "lacks it" in d.changes[0].reason
    obs.engine_image = dict(image)
    assert diff_image(obs, spec, {}, "Dockerfile").changes == []
