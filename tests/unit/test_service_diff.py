"""The service step's pure parts: its ServiceSpec, immutable object names, and the diff
(create, no-op, roll, scale, a paused roll, someone else's service); the network step's driver."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from orchestrator.changes import Action
from orchestrator.steps.network import NetworkSpec, Observed as NetObserved, diff_network
from orchestrator.steps.service import (HASH_LABEL, TASK_LABEL, Observed, ServiceStepSpec, diff_service, object_name,
                                        service_spec)

OWN = {"orchestrate.plan": "p", "orchestrate.step": "app"}
BASE = {"image": "app:1", "service": "app", "replicas": 3, "network": "net", "endpoint_mode": "dnsrr",
        "env": {"MODE": "prod"}, "healthcheck": {"http": {"path": "/health", "port": 8000}}}


def want(**over) -> dict:
    spec = ServiceStepSpec(**{**BASE, **over})
    return service_spec(spec, OWN, {"db_password": object_name("p", "app", "db_password", b"s3cret")}, [])


def observed(spec: dict, state: str | None = "completed") -> Observed:
    have = copy.deepcopy(spec)
    have["Labels"]["extra"] = "from ORCHESTRATE_LABELS"       # put on at creation, not compared
    return Observed(service={"ID": "x", "Version": {"Index": 7}, "Spec": have,
                             "UpdateStatus": {"State": state} if state else None})


def test_absent_service_is_created():
    d = diff_service(want(), Observed(), "p", "app")
    assert d.action is Action.CREATE and "3 replicas" in d.changes[0].reason


def test_same_spec_is_a_no_op():
    assert diff_service(want(), observed(want()), "p", "app").action is Action.NONE


def test_new_image_rolls_the_replicas_start_first():
    d = diff_service(want(image="app:2"), observed(want()), "p", "app")
    assert d.action is Action.UPDATE and [c.field for c in d.changes] == ["image"]
    assert d.changes[0].reason == "roll 3 replicas (start-first)"


def test_the_same_tag_built_again_rolls_the_replicas():
    spec = ServiceStepSpec(**BASE)
    old = service_spec(spec, OWN, {}, [], "sha256:" + "a" * 64)
    new = service_spec(spec, OWN, {}, [], "sha256:" + "b" * 64)
    assert new["Labels"][HASH_LABEL] != old["Labels"][HASH_LABEL]
    assert new["TaskTemplate"]["ContainerSpec"]["Labels"][TASK_LABEL] != \
        old["TaskTemplate"]["ContainerSpec"]["Labels"][TASK_LABEL]       # the new tasks are told apart
    d = diff_service(new, observed(old), "p", "app")
    assert [(c.field, c.before) for c in d.changes] == [("image", "a" * 12)] and "built again" in d.changes[0].after
    assert d.changes[0].reason == "roll 3 replicas (start-first)"


@pytest.mark.parametrize("pending", ["image_pending", "files_pending"])
def test_an_image_or_file_an_earlier_step_makes_is_known_after_apply(pending):
    obs = observed(want())
    setattr(obs, pending, ["build"])
    d = diff_service(want(), obs, "p", "app")
    assert d.after_apply and d.action is Action.UPDATE
    assert d.changes[0].after == "(known after apply)" and "by step build" in d.changes[0].reason
    absent = Observed(**{pending: ["build"]})
    d = diff_service(want(), absent, "p", "app")
    assert d.after_apply and d.action is Action.CREATE
    assert not diff_service(want(), observed(want()), "p", "app").after_apply


def test_replicas_only_scales():
    d = diff_service(want(replicas=5), observed(want()), "p", "app")
    assert [(c.field, c.before, c.after, c.reason) for c in d.changes] == [("replicas", 3, 5, "scale")]


def test_a_new_secret_value_is_a_new_secret_name_and_a_roll():
    a = object_name("p", "app", "db_password", b"one")
    b = object_name("p", "app", "db_password", b"two")
    assert a != b and a == object_name("p", "app", "db_password", b"one")
    assert a.startswith("p-app-db_password-") and "one" not in a
    spec = ServiceStepSpec(**BASE)
    d = diff_service(service_spec(spec, OWN, {"db_password": b}, []),
                     observed(service_spec(spec, OWN, {"db_password": a}, [])), "p", "app")
    assert [c.field for c in d.changes] == ["secrets"] and d.changes[0].secret


def test_a_paused_roll_is_rolled_again():
    d = diff_service(want(), observed(want(), "paused"), "p", "app")
    assert d.action is Action.UPDATE and "paused" in d.changes[0].reason


@pytest.mark.parametrize("state", ["updating", "rollback_started"])
def test_a_roll_still_under_way_is_waited_for(state):
    """An apply killed during a roll left Swarm rolling: the next one does not call it converged."""
    d = diff_service(want(), observed(want(), state), "p", "app")
    assert [c.field for c in d.changes] == ["update"] and "wait for it" in d.changes[0].reason
    assert not diff_service(want(), observed(want(), "completed"), "p", "app").changes


def test_someone_elses_service_is_a_problem():
    other = want()
    other["Labels"]["orchestrate.step"] = "other"
    assert diff_service(want(), observed(other), "p", "app").problems


def test_spec_carries_docker_fields():
    s = want(ports=["5432:5432"], update={"order": "stop-first"}, volumes=["pgdata:/var/lib/postgresql/data"],
             placement=["node.role==manager"])
    assert s["EndpointSpec"] == {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": 5432,
                                                             "PublishedPort": 5432, "PublishMode": "host"}]}
    assert s["UpdateConfig"]["Order"] == "stop-first" and s["UpdateConfig"]["FailureAction"] == "rollback"
    cs = s["TaskTemplate"]["ContainerSpec"]
    assert cs["Secrets"][0]["File"]["Name"] == "db_password" and "s3cret" not in str(s)
    assert cs["Mounts"] == [{"Type": "volume", "Source": "pgdata", "Target": "/var/lib/postgresql/data",
                             "ReadOnly": False, "VolumeOptions": {"Labels": OWN}}]   # destroy knows it as ours
    assert s["TaskTemplate"]["Placement"] == {"Constraints": ["node.role==manager"]}
    assert len(s["Labels"][HASH_LABEL]) == 16


def test_start_first_refuses_host_ports():
    with pytest.raises(ValidationError, match="start-first"):
        ServiceStepSpec(**{**BASE, "ports": ["8080:80"]})


@pytest.mark.parametrize("spec, network, fields", [
    ({"name": "net", "driver": "overlay"}, {"Driver": "overlay", "Attachable": True}, []),
    ({"name": "net", "driver": "overlay"}, {"Driver": "bridge"}, ["driver", "attachable"]),
    ({"name": "net", "driver": "overlay", "attachable": False}, {"Driver": "overlay", "Attachable": True},
     ["attachable"]),
    ({"name": "net"}, {"Driver": "overlay", "Attachable": True}, ["driver"]),
    ({"name": "net"}, {"Driver": "bridge"}, []),
])
def test_network_driver(spec, network, fields):
    net = {"Labels": {"orchestrate.plan": "p"}, "Internal": False, **network}
    d = diff_network(NetworkSpec(**spec), {}, "p", NetObserved(network=net))
    assert [c.field for c in d.changes] == fields


def test_fields_docker_leaves_out_at_their_zero_value_are_not_shown_as_changes():
    old = want(volumes=["pgdata:/data"], healthcheck={"test": "true"})
    have = copy.deepcopy(old)
    for m in have["TaskTemplate"]["ContainerSpec"]["Mounts"]:
        del m["ReadOnly"]                                  # Docker returns no ReadOnly: false
    del have["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["StartPeriod"]    # nor StartPeriod: 0
    have["Labels"][HASH_LABEL] = "older"
    d = diff_service(want(volumes=["pgdata:/data"], healthcheck={"test": "true"}, env={"MODE": "x"}),
                     observed(have), "p", "app")
    assert [c.field for c in d.changes] == ["env"], [c.field for c in d.changes]
