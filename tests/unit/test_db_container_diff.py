"""The db-container diff is a pure function: a table of cases, no Docker.

Each case starts from a converged container (inspect data as Docker returns it, built from the
desired configuration) and changes one thing, by hand or in the plan; it names the step action,
the fields it expects and the words the warning or problem must contain.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import pytest

from orchestrator.changes import Action
from orchestrator.secrets import salted_hash
from orchestrator.steps.db_container import (HASH_LABEL, VOLUME_LABEL, DbContainerSpec, Observed,
                                             config_hash, desired_config, diff_db_container,
                                             image_major)

IMAGE_ENV = ["PATH=/usr/local/bin:/usr/bin", "PGDATA=/var/lib/postgresql/data", "PG_MAJOR=15", "LANG=C.UTF-8"]
LABELS = {"orchestrate.plan": "p", "orchestrate.step": "postgres"}
BASE = dict(image="pg:15", container="db", volume="data", user="app", password="secret-pw-1",
            database="appdb", ports=["127.0.0.1:5432:5432"], settings={"max_connections": 50},
            healthcheck={"interval": "1s"})


def image() -> dict:
    return {"Id": "sha256:" + "a" * 64, "Config": {"Env": list(IMAGE_ENV), "Labels": {"maintainer": "x"}}}


def container_for(spec: DbContainerSpec) -> dict:
    """Inspect data of the container orchestrate would have created for ``spec``."""
    cfg = desired_config(spec, LABELS, image())
    hc = dict(cfg.healthcheck)
    ports = {}
    for p in cfg.ports:
        ports.setdefault(f"{p.container_port}/{p.proto}", []).append({"HostIp": p.host_ip, "HostPort": str(p.host_port)})
    return {
        "Id": "c" * 64, "Name": f"/{cfg.name}", "Image": "sha256:" + "a" * 64,
        "Config": {"Image": cfg.image, "Cmd": list(cfg.command),
                   "Env": [f"{k}={v}" for k, v in cfg.env] + [f"POSTGRES_PASSWORD={spec.password}"] + IMAGE_ENV,
                   "Labels": {**dict(cfg.labels), "maintainer": "x", HASH_LABEL: config_hash(cfg)},
                   "Healthcheck": {"Test": list(hc["test"]), "Interval": hc["interval"], "Timeout": hc["timeout"],
                                   "Retries": hc["retries"], "StartPeriod": hc["start_period"] or None}},
        "HostConfig": {"PortBindings": ports, "RestartPolicy": {"Name": cfg.restart[0], "MaximumRetryCount": 0},
                       "Mounts": [{"Type": kind, "Source": src, "Target": dst, "ReadOnly": ro}
                                  for kind, src, dst, ro in cfg.mounts]},
        "Mounts": [{"Type": kind, "Name": src, "Destination": dst} for kind, src, dst, _ro in cfg.mounts],
        "NetworkSettings": {"Networks": {"bridge": {}}},
        "State": {"Status": "running", "Health": {"Status": "healthy"}},
    }


VOLUME = {"Name": "data", "Labels": {**LABELS, VOLUME_LABEL: "2026-01-01T00:00:00+00:00"}}
RECORDED = {"observed": {"volume": "data", "volume_created": "2026-01-01T00:00:00+00:00", "pg_version": "15",
                         "system_id": "42"},
            "outputs": {"user": "app", "database": "appdb"},
            "secrets": {"password": salted_hash("secret-pw-1")}}


@dataclass
class Case:
    id: str
    plan: dict = field(default_factory=dict)                    # changes to the plan
    by_hand: Callable[[Observed], None] = lambda obs: None      # changes made outside orchestrate
    action: Action = Action.NONE
    fields: list[str] = field(default_factory=list)
    warning: str | None = None
    problem: str | None = None
    recorded: dict | None = None


def _set(path, value):
    def mutate(obs: Observed):
        node = obs.container
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _drop_volume(obs):
    obs.volume = None
    obs.container = None


CASES = [
    Case("converged"),
    Case("stopped", by_hand=_set(("State", "Status"), "exited"), action=Action.START, fields=["state"]),
    Case("port changed in plan", plan={"ports": ["127.0.0.1:5433:5432"]}, action=Action.RECREATE, fields=["ports"]),
    Case("published on all interfaces by hand",
         by_hand=_set(("HostConfig", "PortBindings"), {"5432/tcp": [{"HostIp": "", "HostPort": "5432"}]}),
         action=Action.RECREATE, fields=["ports"]),
    Case("image changed in plan", plan={"image": "pg:15.9"}, action=Action.RECREATE, fields=["image"]),
    Case("image tag now points elsewhere", by_hand=_set(("Image",), "sha256:" + "b" * 64),
         action=Action.RECREATE, fields=["image"]),
    Case("setting changed", plan={"settings": {"max_connections": 60}}, action=Action.RECREATE, fields=["command"]),
    Case("restart policy changed", plan={"restart": "always"}, action=Action.UPDATE, fields=["restart"]),
    Case("healthcheck changed", plan={"healthcheck": {"interval": "5s"}}, action=Action.RECREATE,
         fields=["healthcheck"]),
    Case("env added by hand", by_hand=lambda o: o.container["Config"]["Env"].append("TZ=Europe/Paris"),
         action=Action.RECREATE, fields=["env"]),
    Case("container renamed in plan", plan={"container": "db2"}, action=Action.RECREATE, fields=["name"]),
    Case("created by something else (no hash label)",
         by_hand=lambda o: o.container["Config"]["Labels"].pop(HASH_LABEL),
         action=Action.RECREATE, fields=["config-hash"]),
    Case("container removed", by_hand=lambda o: setattr(o, "container", None),
         action=Action.CREATE, fields=["container"]),
    Case("volume removed", by_hand=_drop_volume, action=Action.CREATE, fields=["volume", "container"],
         warning="DATA LOSS: volume data held this database at the last apply and no longer exists"),
    Case("volume never recorded is simply created", by_hand=_drop_volume, recorded={},
         action=Action.CREATE, fields=["volume", "container"]),
    Case("volume recreated", by_hand=lambda o: o.volume["Labels"].update({VOLUME_LABEL: "2026-02-02"}),
         warning="removed and created again"),
    Case("data directory initialised again", by_hand=lambda o: setattr(o, "system_id", "43"),
         warning="initialised again"),
    Case("data of another major version", by_hand=lambda o: setattr(o, "data_pg_version", "14"),
         problem="holds a PostgreSQL 14 data directory but image pg:15 runs PostgreSQL 15"),
    Case("password changed in plan (probe failed)", plan={"password": "new-pw-22"},
         by_hand=lambda o: setattr(o, "password_ok", False), action=Action.UPDATE, fields=["password"]),
    Case("password changed in plan (no probe: hash)", plan={"password": "new-pw-22"},
         action=Action.UPDATE, fields=["password"]),
    Case("password changed with a new volume: nothing to alter", plan={"password": "new-pw-22"},
         by_hand=_drop_volume, action=Action.CREATE, fields=["volume", "container"], recorded={}),
    Case("user changed on an initialised volume", plan={"user": "other"}, action=Action.RECREATE,
         fields=["env", "healthcheck"], problem="user changed from 'app' to 'other'"),
    Case("database renamed with the container gone", plan={"database": "otherdb"},
         by_hand=lambda o: setattr(o, "container", None), action=Action.CREATE, fields=["container"],
         problem="database changed from 'appdb' to 'otherdb'"),
    Case("paused", by_hand=_set(("State", "Status"), "paused"), problem="is paused"),
    Case("volume used by a foreign container", by_hand=lambda o: o.volume_users.append("old_pg"),
         problem="in use by running container(s) old_pg"),
    Case("network added in plan: create it, then join it", plan={"network": "appnet"}, action=Action.CREATE,
         fields=["network", "network"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_diff(case: Case):
    start = DbContainerSpec.model_validate(BASE)
    want_spec = DbContainerSpec.model_validate({**BASE, **case.plan})
    obs = Observed(image=image(), container=container_for(start), volume=copy.deepcopy(VOLUME),
                   data_pg_version="15", system_id="42")
    case.by_hand(obs)
    want = desired_config(want_spec, LABELS, obs.image)
    recorded = RECORDED if case.recorded is None else case.recorded
    diff = diff_db_container(want, config_hash(want), obs, recorded=recorded, spec=want_spec,
                             password=want_spec.password, major=image_major(want_spec.image, obs.image))
    assert diff.action is case.action, diff
    assert diff.fields() == case.fields, diff
    if case.warning:
        assert any(case.warning in w for w in diff.warnings), diff.warnings
    else:
        assert diff.warnings == []
    if case.problem:
        assert any(case.problem in p for p in diff.problems), diff.problems
    else:
        assert diff.problems == []


def test_changes_show_before_and_after():
    start = DbContainerSpec.model_validate(BASE)
    want_spec = DbContainerSpec.model_validate({**BASE, "ports": ["5433:5432"]})
    obs = Observed(image=image(), container=container_for(start), volume=dict(VOLUME))
    want = desired_config(want_spec, LABELS, obs.image)
    diff = diff_db_container(want, config_hash(want), obs, recorded=RECORDED, spec=want_spec,
                             password="secret-pw-1", major="15")
    change = diff.changes[0]
    assert (change.before, change.after) == ("127.0.0.1:5432->5432/tcp", "127.0.0.1:5433->5432/tcp")
    assert change.to_dict()["forces_recreate"] is True


def test_password_change_is_shown_redacted():
    start = DbContainerSpec.model_validate(BASE)
    obs = Observed(image=image(), container=container_for(start), volume=dict(VOLUME), password_ok=False)
    want_spec = DbContainerSpec.model_validate({**BASE, "password": "brand-new-pw"})
    want = desired_config(want_spec, LABELS, obs.image)
    diff = diff_db_container(want, config_hash(want), obs, recorded=RECORDED, spec=want_spec,
                             password="brand-new-pw", major="15")
    doc = diff.changes[0].to_dict()
    assert doc["before"] == doc["after"] == "(redacted)"
    assert "brand-new-pw" not in repr(doc)


@pytest.mark.parametrize("ref,env,major", [
    ("postgres:16-alpine", [], "16"), ("postgres:15.4", [], "15"), ("registry:5000/pg:14", [], "14"),
    ("postgres:latest", [], None), ("mypg", ["PG_MAJOR=17"], "17"), ("orchestrate-test/postgres:15", [], "15"),
])
def test_image_major(ref, env, major):
    assert image_major(ref, {"Config": {"Env": env}}) == major


def test_the_hash_label_is_computed_as_before_so_an_upgrade_recreates_no_database():
    """Containers created by earlier versions carry this very hash: it must not move."""
    body = dict(image="pg:15", container="db", volume="data", user="app", password="secret-pw-1",
                database="appdb", ports=["127.0.0.1:5432:5432"], settings={"max_connections": 50},
                healthcheck={"interval": "1s"}, env={"TZ": "UTC"}, labels={"a": "b"}, network="net1")
    img = {"Id": "sha256:" + "a" * 64, "Config": {"Env": ["PATH=/x", "PG_MAJOR=15"], "Labels": {"m": "x"}}}
    want = desired_config(DbContainerSpec(**body), LABELS, img, ["postgres"])
    assert config_hash(want) == "ba817f32151413ad"
