"""The network step: a user-defined bridge network, labelled, on which the plan's containers find
each other by name (the database as ``postgres``).

Docker cannot change a network in place: a changed ``internal`` or ``subnet`` is planned as what
it is, a recreate, naming the containers attached to it that must follow. Apply disconnects them,
recreates the network and joins them again with the aliases they had; a crash in between leaves
containers that the container steps after this one join again (their network is a field they
update in place). A network the plan did not create is used as it is and never removed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from ..changes import Action, Change, Diff
from ..errors import StepFailed
from ..fields import DockerName, LabelKey, LabelValue, Text
from ..plan import Strict
from .base import Resource


class NetworkSpec(Strict):
    name: DockerName = Field(description="the network's name")
    internal: bool = Field(False, description="no route out of the network (containers reach only each other)")
    subnet: Text | None = Field(None, description="address range, e.g. 172.28.0.0/16 (default: Docker picks one)")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    driver: Literal["bridge", "overlay"] = Field("bridge", description="bridge (one engine) or overlay (a swarm's "
                                                                      "services; needs swarm mode)")
    attachable: bool | None = Field(None, description="overlay: plain containers (a migrate job) may join it "
                                                      "(default: true for overlay)")

    @property
    def is_attachable(self) -> bool:
        return self.driver == "overlay" and self.attachable is not False

    @field_validator("subnet")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a subnet such as 172.28.0.0/16: {exc}") from None


@dataclass
class Observed:
    network: dict | None = None
    attached: dict[str, list[str]] = field(default_factory=dict)   # container name -> its aliases here


def _subnets(network: dict) -> list[str]:
    return [c.get("Subnet") for c in ((network.get("IPAM") or {}).get("Config") or []) if c.get("Subnet")]


def diff_network(spec: NetworkSpec, labels: dict[str, str], plan: str, obs: Observed) -> Diff:
    """Pure: the plan's network vs Docker's."""
    d = Diff()
    net = obs.network
    if net is None:
        d.changes.append(Change(Action.CREATE, "network", None, spec.name, "the network does not exist"))
        return d
    have_labels = net.get("Labels") or {}
    if have_labels.get("orchestrate.plan") != plan:
        d.notes.append(f"network {spec.name} exists and was not created by this plan: it is used as it is "
                       f"and never removed by destroy")
        return d
    follow = ", ".join(sorted(obs.attached)) or "none"
    changes = []
    if bool(net.get("Internal")) != spec.internal:
        changes.append(("internal", str(bool(net.get("Internal"))).lower(), str(spec.internal).lower()))
    if spec.subnet and spec.subnet not in _subnets(net):
        changes.append(("subnet", ", ".join(_subnets(net)) or "(Docker's choice)", spec.subnet))
    want_labels = {"orchestrate.plan": plan, **spec.labels}    # not the step's: db-container may have made it
    if any(have_labels.get(k) != v for k, v in want_labels.items()):
        changes.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(have_labels.items()) if k in want_labels),
                        ", ".join(f"{k}={v}" for k, v in sorted(want_labels.items()))))
    if (net.get("Driver") or "bridge") != spec.driver:
        changes.append(("driver", net.get("Driver"), spec.driver))
    if spec.driver == "overlay" and bool(net.get("Attachable")) != spec.is_attachable:
        changes.append(("attachable", str(bool(net.get("Attachable"))).lower(), str(spec.is_attachable).lower()))
    for name, before, after in changes:
        d.changes.append(Change(Action.RECREATE, name, before, after,
                                f"Docker cannot change a network in place; containers that must follow "
                                f"(disconnected, then joined again): {follow}"))
    return d


class Network(Resource):
    """A user-defined bridge network, on which the plan's containers reach each other by name."""
    type = "network"
    Spec = NetworkSpec
    spec: NetworkSpec

    def observe(self) -> Observed:
        eng = self.rc.engine
        obs = Observed(network=eng.network(self.spec.name))
        for cid, info in ((obs.network or {}).get("Containers") or {}).items():
            container = eng.container(cid)
            if container is None:
                continue
            here = ((container.get("NetworkSettings") or {}).get("Networks") or {}).get(self.spec.name) or {}
            obs.attached[container["Name"].lstrip("/")] = [a for a in here.get("Aliases") or [] if a != cid[:12]]
        return obs

    def diff(self, obs: Observed) -> Diff:
        return diff_network(self.spec, self.own_labels, self.rc.plan.name, obs)

    def apply(self, obs: Observed, diff: Diff) -> str:
        eng, spec = self.rc.engine, self.spec
        labels = {**self.labels, **spec.labels}
        if spec.driver == "overlay" and not eng.swarm_active():
            raise StepFailed(f"network {spec.name}: driver overlay needs an engine in swarm mode (docker swarm init)")
        if obs.network is None:
            self._create(labels)
            return f"created network {spec.name}"
        for name in obs.attached:
            eng.disconnect(spec.name, name, name)
        eng.remove_network(spec.name)
        self._create(labels)
        for name, aliases in obs.attached.items():
            eng.connect(spec.name, name, name, aliases)
        joined = f"; joined again: {', '.join(sorted(obs.attached))}" if obs.attached else ""
        return f"recreated network {spec.name} ({', '.join(diff.fields(Action.RECREATE))}){joined}"

    def _create(self, labels: dict[str, str]) -> None:
        spec = self.spec
        if spec.driver == "overlay":
            self.rc.engine.create_overlay_network(spec.name, labels, internal=spec.internal, subnet=spec.subnet,
                                                  attachable=spec.is_attachable)
        else:
            self.rc.engine.create_network(spec.name, labels, internal=spec.internal, subnet=spec.subnet)

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        return {"name": self.spec.name, "internal": self.spec.internal, "subnet": self.spec.subnet,
                "driver": self.spec.driver}

    def record(self, obs: Observed) -> dict[str, Any]:
        return {"network": self.spec.name, "network_id": (obs.network or {}).get("Id")}

    def destroy(self, obs: Observed, *, volumes: bool) -> list[str]:
        if obs.network is None:
            return []
        if (obs.network.get("Labels") or {}).get("orchestrate.plan") != self.rc.plan.name:
            return [f"kept network {self.spec.name}: it was not created by this plan"]
        if obs.attached:
            return [f"kept network {self.spec.name}: containers still use it ({', '.join(sorted(obs.attached))})"]
        self.rc.engine.remove_network(self.spec.name)
        return [f"removed network {self.spec.name}"]
