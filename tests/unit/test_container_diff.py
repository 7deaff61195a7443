"""The container and network diffs are pure functions: tables of cases, no Docker.

Each container case starts from the inspect data of the container orchestrate would create for a
base spec (with the image's defaults merged in, as Docker merges them), changes one thing in the
plan or by hand, and names the step action and the fields it expects.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import pytest

from orchestrator import redact
from orchestrator.changes import Action
from orchestrator.containers import HASH_LABEL, NS, OLD_SUFFIX, config_hash, effective
from orchestrator.fields import parse_port
from orchestrator.steps.container import (ContainerStepSpec, Observed, diff_container, parse_size, parse_volume,
                                          read_env_file)
from orchestrator.steps.network import NetworkSpec, Observed as NetObserved, diff_network

LABELS = {"orchestrate.plan": "p", "orchestrate.step": "app"}
IMAGE_ENV = ["PATH=/opt/venv/bin:/usr/bin", "PYTHONUNBUFFERED=1"]
IMAGE_HEALTH = {"Test": ["CMD", "python", "-c", "check"], "Interval": 10 * NS, "Timeout": 5 * NS,
                "StartPeriod": 10 * NS, "Retries": 3}
BASE = dict(image="app:latest", container="app", network="net", env={"DATABASE_URL": "postgresql://u:pw@postgres/db",
                                                                        "MODE": "prod"},
            ports=["127.0.0.1:8000:8000"], memory="512m", restart="unless-stopped")


def image(**config) -> dict:
    return {"Id": "sha256:" + "a" * 64,
            "Config": {"Env": list(IMAGE_ENV), "Cmd": ["gunicorn", "app"], "Entrypoint": None, "User": "appuser",
                       "Labels": {"org.opencontainers.image.title": "app", "orchestrate.build-digest": "d1"},
                       "Healthcheck": dict(IMAGE_HEALTH), **config}}


def desired(spec: ContainerStepSpec, img: dict):
    hc = spec.healthcheck
    health = None if hc is None else tuple(sorted({"test": tuple(hc.docker_test()), "interval": int(hc.interval * NS),
                                                   "timeout": int(hc.timeout * NS), "retries": hc.retries,
                                                   "start_period": int(hc.start_period * NS)}.items()))
    return effective(name=spec.container, image_ref=spec.image, image=img, command=spec.command,
                     entrypoint=spec.entrypoint, env=dict(spec.env), ports=spec.ports,
                     mounts=[(m.kind, m.source, m.target, m.read_only) for m in spec.volumes], healthcheck=health,
                     labels={**LABELS, **spec.labels}, user=spec.user, read_only=spec.read_only, tmpfs=spec.tmpfs,
                     restart=(spec.restart, 0), memory=spec.memory, cpus=spec.cpus, network=spec.network,
                     aliases=(spec.aliases or ["app"]) if spec.network else [])


def container_for(spec: ContainerStepSpec, img: dict) -> dict:
    """Inspect data of the container orchestrate would have created for ``spec`` from ``img``:
    the image's environment, labels, command, user and health check merged in, as Docker does."""
    cfg = desired(spec, img)
    hc = dict(cfg.healthcheck)
    ports = {}
    for p in cfg.ports:
        ports.setdefault(f"{p.container_port}/{p.proto}", []).append({"HostIp": p.host_ip, "HostPort": str(p.host_port)})
    env = {**dict(e.split("=", 1) for e in img["Config"]["Env"]), **dict(cfg.env)}
    return {
        "Id": "c" * 64, "Name": f"/{cfg.name}", "Image": img["Id"],
        "Config": {"Image": cfg.image, "Cmd": list(cfg.command), "Entrypoint": list(cfg.entrypoint) or None,
                   "User": cfg.user, "Env": [f"{k}={v}" for k, v in env.items()],
                   "Labels": {**img["Config"]["Labels"], **dict(cfg.labels), HASH_LABEL: config_hash(cfg)},
                   "Healthcheck": {"Test": list(hc["test"]), "Interval": hc["interval"], "Timeout": hc["timeout"],
                                   "Retries": hc["retries"], "StartPeriod": hc["start_period"]}},
        "HostConfig": {"PortBindings": ports, "RestartPolicy": {"Name": cfg.restart[0], "MaximumRetryCount": 0},
                       "Mounts": [{"Type": k, "Source": s, "Target": t, "ReadOnly": ro} for k, s, t, ro in cfg.mounts],
                       "Memory": cfg.memory, "CpuPeriod": 100000 if cfg.cpus else 0,
                       "CpuQuota": int(cfg.cpus * 100000), "ReadonlyRootfs": cfg.read_only,
                       "Tmpfs": dict(cfg.tmpfs) or None, "NetworkMode": cfg.network or "default"},
        "NetworkSettings": {"Networks": {cfg.network: {"Aliases": [*cfg.aliases, "cccccccccccc"]}} if cfg.network
                            else {"bridge": {}}},
        "State": {"Status": "running", "Health": {"Status": "healthy"}},
    }


@dataclass
class Case:
    id: str
    plan: dict = field(default_factory=dict)                    # changes to the plan
    by_hand: Callable[[Observed], None] = lambda obs: None      # changes made outside orchestrate
    action: Action = Action.NONE
    fields: list[str] = field(default_factory=list)
    problem: str | None = None


def _set(path, value):
    def mutate(obs: Observed):
        node = obs.container
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _rebuilt(obs: Observed):
    """The tag now names a new build: other id, another PATH and digest label in the image."""
    obs.image = image(Env=["PATH=/opt/venv2/bin:/usr/bin", "PYTHONUNBUFFERED=1"],
                      Labels={"org.opencontainers.image.title": "app", "orchestrate.build-digest": "d2"})
    obs.image["Id"] = "sha256:" + "b" * 64


CASES = [
    Case("converged"),
    Case("command", plan={"command": "gunicorn --workers 4 app"}, action=Action.RECREATE, fields=["command"]),
    Case("env value", plan={"env": {**BASE["env"], "MODE": "dev"}}, action=Action.RECREATE, fields=["env"]),
    Case("env added", plan={"env": {**BASE["env"], "EXTRA": 1}}, action=Action.RECREATE, fields=["env"]),
    Case("port", plan={"ports": ["127.0.0.1:8001:8000"]}, action=Action.RECREATE, fields=["ports"]),
    Case("volume", plan={"volumes": ["data:/data:ro"]}, action=Action.RECREATE, fields=["mounts"]),
    Case("healthcheck", plan={"healthcheck": {"http": {"path": "/health", "port": 8000}}},
         action=Action.RECREATE, fields=["healthcheck"]),
    Case("user", plan={"user": "root"}, action=Action.RECREATE, fields=["user"]),
    Case("read-only root", plan={"read_only": True}, action=Action.RECREATE, fields=["read_only"]),
    Case("tmpfs", plan={"tmpfs": ["/tmp"]}, action=Action.RECREATE, fields=["tmpfs"]),
    Case("restart in place", plan={"restart": "always"}, action=Action.UPDATE, fields=["restart"]),
    Case("memory in place", plan={"memory": "1g"}, action=Action.UPDATE, fields=["memory"]),
    Case("cpus added in place", plan={"cpus": 1.5}, action=Action.UPDATE, fields=["cpus"]),
    Case("memory lifted: recreate", plan={"memory": None}, action=Action.RECREATE, fields=["memory"]),
    Case("aliases in place", plan={"aliases": ["app", "api"]}, action=Action.UPDATE, fields=["aliases"]),
    Case("left the network by hand", by_hand=_set(("NetworkSettings", "Networks"), {"bridge": {}}),
         action=Action.UPDATE, fields=["network", "aliases"]),
    Case("stopped", by_hand=_set(("State", "Status"), "exited"), action=Action.START, fields=["state"]),
    Case("paused", by_hand=_set(("State", "Status"), "paused"), problem="is paused"),
    Case("hash label of another configuration", by_hand=_set(("Config", "Labels", HASH_LABEL), "0" * 16),
         action=Action.RECREATE, fields=["config-hash"]),
    Case("the tag names a new build", by_hand=_rebuilt, action=Action.RECREATE, fields=["image"]),
    Case("image name", plan={"image": "app:v2"}, action=Action.RECREATE, fields=["image"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_container_diff(case: Case):
    base = ContainerStepSpec(**BASE)
    want_spec = ContainerStepSpec(**{k: v for k, v in {**BASE, **case.plan}.items() if v is not None})
    obs = Observed(image=image(), container=container_for(base, image()))
    obs.container = copy.deepcopy(obs.container)
    case.by_hand(obs)
    want = desired(want_spec, obs.image)
    diff = diff_container(want, config_hash(want), obs, name=want_spec.container)
    assert diff.action is case.action, diff.changes
    assert [c.field for c in diff.changes] == case.fields
    if case.problem:
        assert any(case.problem in p for p in diff.problems), diff.problems
    else:
        assert diff.problems == []


def test_an_environment_change_names_variables_never_values():
    redact.register("pw-very-secret")
    base = ContainerStepSpec(**{**BASE, "env": {"DATABASE_URL": "postgresql://u:pw-very-secret@postgres/db"}})
    want_spec = ContainerStepSpec(**{**BASE, "env": {"DATABASE_URL": "postgresql://u:pw-other-secret@postgres/db"}})
    redact.register("pw-other-secret")
    obs = Observed(image=image(), container=container_for(base, image()))
    want = desired(want_spec, obs.image)
    diff = diff_container(want, config_hash(want), obs, name="app")
    [change] = diff.changes
    assert change.field == "env" and change.after == "changed: DATABASE_URL"
    assert "secret" not in str(change.before) + str(change.after)
    # and the hash label is not a hash of the secret: a changed password leaves it as it was
    assert config_hash(want) == config_hash(desired(base, obs.image))


def test_a_pending_build_of_the_same_tag_is_a_recreate_known_after_apply():
    base = ContainerStepSpec(**BASE)
    obs = Observed(image=image(), container=container_for(base, image()), image_pending=["app_image"])
    want = desired(base, obs.image)
    diff = diff_container(want, config_hash(want), obs, name="app")
    assert diff.after_apply and [(c.field, c.action) for c in diff.changes] == [("image", Action.RECREATE)]
    assert "rebuilt by step app_image" in diff.changes[0].reason


def test_a_container_left_aside_by_an_interrupted_replace_is_removed():
    base = ContainerStepSpec(**BASE)
    obs = Observed(image=image(), container=container_for(base, image()),
                   aside=[{"Id": "d" * 64, "Name": "/app" + OLD_SUFFIX}])
    want = desired(base, obs.image)
    diff = diff_container(want, config_hash(want), obs, name="app")
    assert [(c.field, c.action) for c in diff.changes] == [("leftover", Action.UPDATE)]


def test_missing_container_is_created_and_problems_are_named():
    obs = Observed(image=image(), env_file_problem="env_file app.env does not exist", missing_binds=["./conf"],
                   network_missing=True)
    diff = diff_container(None, "", obs, name="app")
    assert diff.action is Action.CREATE
    assert len(diff.problems) == 3 and "add a network step" in diff.problems[2]


@pytest.mark.parametrize("value, expected", [
    ("data:/var/lib/app", ("volume", "data", "/var/lib/app", False)),
    ("./conf:/etc/app:ro", ("bind", "./conf", "/etc/app", True)),
    ("/srv/x:/x:rw", ("bind", "/srv/x", "/x", False)),
])
def test_volume_syntax(value, expected):
    m = parse_volume(value)
    assert (m.kind, m.source, m.target, m.read_only) == expected


@pytest.mark.parametrize("value", ["data", "data:relative", "a:/b:rx", "~/x:/x", "bad name:/x", "a:/b:ro:x"])
def test_volume_syntax_refused(value):
    with pytest.raises(ValueError):
        parse_volume(value)


def test_sizes_and_env_files():
    assert parse_size("512m") == 512 << 20 and parse_size("1g") == 1 << 30 and parse_size(8 << 20) == 8 << 20
    for bad in ("1k", "lots", True, "-5m"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert read_env_file("# c\n\nexport A=1\nB = 'two words'\nC=\"x=y\"\n") == {"A": "1", "B": "two words",
                                                                                "C": "x=y"}
    with pytest.raises(ValueError, match="line 2"):
        read_env_file("A=1\nnot a pair\n")


NET = {"Name": "net", "Driver": "bridge", "Internal": False, "Labels": {"orchestrate.plan": "p",
                                                                       "orchestrate.step": "postgres"},
       "IPAM": {"Config": [{"Subnet": "172.30.0.0/16"}]}}


@pytest.mark.parametrize("spec, network, action, fields, note", [
    ({"name": "net"}, None, Action.CREATE, ["network"], None),
    ({"name": "net"}, NET, Action.NONE, [], None),           # made by db-container: the same network
    ({"name": "net", "subnet": "172.30.0.0/16"}, NET, Action.NONE, [], None),
    ({"name": "net", "internal": True}, NET, Action.RECREATE, ["internal"], None),
    ({"name": "net", "subnet": "10.9.0.0/24"}, NET, Action.RECREATE, ["subnet"], None),
    ({"name": "net", "internal": True}, {**NET, "Labels": {}}, Action.NONE, [], "not created by this plan"),
])
def test_network_diff(spec, network, action, fields, note):
    obs = NetObserved(network=network, attached={"app": ["app"], "db": ["postgres"]})
    diff = diff_network(NetworkSpec(**spec), {"orchestrate.plan": "p", "orchestrate.step": "net"}, "p", obs)
    assert diff.action is action and [c.field for c in diff.changes] == fields
    if action is Action.RECREATE:
        assert "containers that must follow (disconnected, then joined again): app, db" in diff.changes[0].reason
    if note:
        assert any(note in n for n in diff.notes)


def test_published_port_defaults_to_loopback():
    assert ContainerStepSpec(**{**BASE, "ports": [8000]}).ports == [parse_port("127.0.0.1:8000:8000")]


@pytest.mark.parametrize("reloadable, action", [(True, Action.UPDATE), (False, Action.RECREATE)])
def test_a_changed_file_is_reloaded_in_place_or_recreates(reloadable, action):
    base = ContainerStepSpec(**BASE)
    obs = Observed(image=image(), container=container_for(base, image()),
                   files_changed=["/etc/nginx/conf.d/default.conf"], reloadable=reloadable)
    want = desired(base, obs.image)
    diff = diff_container(want, config_hash(want), obs, name="app")
    assert [(c.field, c.action) for c in diff.changes] == [("files", action)]
    pending = Observed(image=image(), container=container_for(base, image()), files_pending=["proxy_conf"],
                       reloadable=reloadable)
    diff = diff_container(want, config_hash(want), pending, name="app")
    assert diff.after_apply and [(c.field, c.action) for c in diff.changes] == [("files", action)]
    assert "rendered again by step proxy_conf" in diff.changes[0].reason


def test_replacement_strategy_defaults_and_refusals():
    assert ContainerStepSpec(**{**BASE, "ports": []}).strategy == "start-first"
    assert ContainerStepSpec(**BASE).strategy == "stop-first"                       # a host port
    assert ContainerStepSpec(**{**BASE, "ports": [], "volumes": ["data:/d"]}).strategy == "stop-first"
    assert ContainerStepSpec(**{**BASE, "ports": [], "replace": "stop-first"}).strategy == "stop-first"
    with pytest.raises(ValueError, match="start-first needs a container without published host ports"):
        ContainerStepSpec(**{**BASE, "replace": "start-first"})
