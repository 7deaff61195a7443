"""The service step: a Docker Swarm service (replicas, rolling updates, secrets and configs as files).

The desired service is built as Docker's own ServiceSpec dictionary (:func:`service_spec`, pure);
its digest is kept in the ``orchestrate.config-hash`` label, as docker-compose does, so a second
apply compares one label and changes nothing. A changed spec is one ``update_service`` call: Swarm
rolls the replicas by the step's ``update`` (start-first by default, health-gated, rolled back on
failure); apply waits (bounded) for the roll to finish and fails, naming the failing task, when
Swarm rolled back or paused it.

Swarm secrets and configs are immutable: each is named ``<plan>-<step>-<NAME>-<hash8>`` (hash8 of
a salted digest of the value), so a changed value is a new object and a rolling update; the ones
no service of this step uses any more are removed after the roll. Secret values never go to the
environment or to labels: ``env`` refuses them (use ``secrets:``, mounted at /run/secrets/NAME).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..changes import Action, Change, Diff
from ..errors import StepFailed
from ..fields import ContainerPath, DockerName, Duration, EnvName, Image, LabelKey, LabelValue, Text
from ..plan import Strict
from ..redact import found as secrets_in
from .base import Resource
from .container import EnvText, FileInto, ServiceHealthcheck, Words

HASH_LABEL = "orchestrate.config-hash"
TASK_LABEL = "orchestrate.task-hash"      # on the tasks' containers: which release a task runs
IMAGE_LABEL = "orchestrate.image-id"      # on the tasks: the engine's id of the image (a tag built again rolls)
SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"    # Docker's, on a service's task containers
NS = 1_000_000_000
ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}


class ServicePort(Strict):
    published: int = Field(ge=1, le=65535, description="port on the node")
    target: int = Field(ge=1, le=65535, description="port in the container")
    protocol: Literal["tcp", "udp"] = "tcp"
    mode: Literal["host", "ingress"] = Field("host", description="host: published on the node running the task "
                                                                 "(works without IPVS); ingress: the routing mesh")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if isinstance(data, str):
            m = re.fullmatch(r"(\d+):(\d+)(?:/(tcp|udp))?", data)
            if not m:
                raise ValueError(f"{data!r}: expected PUBLISHED:TARGET[/tcp|udp] or a mapping")
            return {"published": int(m[1]), "target": int(m[2]), "protocol": m[3] or "tcp"}
        return data


class UpdatePolicy(Strict):
    order: Literal["start-first", "stop-first"] = "start-first"
    failure_action: Literal["rollback", "pause"] = "rollback"
    parallelism: int = Field(1, ge=0, le=1000)
    delay: Duration = 0.0
    monitor: Duration = Field(5.0, description="how long a new task is watched for failure after it starts")


class ServiceStepSpec(Strict):
    image: Image = Field(description="image (a single-node swarm uses local images)")
    service: DockerName = Field(description="service name (also its DNS name on its networks)")
    command: Words | None = None
    env: dict[EnvName, EnvText] = Field(default_factory=dict, description="environment (no secret values)")
    secrets: dict[DockerName, Text] = Field(default_factory=dict,
                                            description="Swarm secrets, mounted at /run/secrets/NAME")
    files: list[FileInto] = Field(default_factory=list, description="files as Swarm configs (e.g. rendered ones)")
    replicas: int = Field(1, ge=0, le=1000)
    network: DockerName | None = Field(None, description="overlay network to join")
    aliases: list[DockerName] = Field(default_factory=list)
    endpoint_mode: Literal["vip", "dnsrr"] = Field("vip", description="vip needs IPVS; dnsrr: one DNS record "
                                                                      "per task")
    ports: list[ServicePort] = Field(default_factory=list)
    volumes: list[Text] = Field(default_factory=list, description="NAME:/path[:ro] (named volumes)")
    placement: list[Text] = Field(default_factory=list, description="constraints, e.g. node.role==manager")
    update: UpdatePolicy = Field(default_factory=UpdatePolicy)
    healthcheck: ServiceHealthcheck | None = None
    restart_condition: Literal["any", "on-failure", "none"] = "any"
    stop_grace: Duration = 30.0
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    wait: Duration = Field(300.0, description="how long to wait for a create or roll to finish")

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[str]) -> list[str]:
        for v in value:
            if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+:/[^:]*(:ro|:rw)?", v):
                raise ValueError(f"{v!r}: expected NAME:/path[:ro] (a named volume)")
        return value

    @model_validator(mode="after")
    def _checks(self):
        if self.aliases and not self.network:
            raise ValueError("aliases are names on a network: set network too")
        if self.update.order == "start-first" and self.ports:
            raise ValueError("update: order start-first cannot publish host-mode ports (the new task could not "
                             "bind the port the old one holds): use stop-first, or publish a proxy")
        return self


def object_name(plan: str, step: str, name: str, data: bytes) -> str:
    """``<plan>-<step>-<name>-<hash8>``: a salted (scrypt) digest, so the name says nothing usable
    about a secret; the same value always gives the same name."""
    salt = f"orchestrate/{plan}/{step}/{name}".encode()
    digest = hashlib.scrypt(data, salt=salt, n=2 ** 12, r=8, p=1, dklen=32)
    return f"{plan}-{step}-{name}-{hashlib.sha256(digest).hexdigest()[:8]}"[:64]


def service_spec(spec: ServiceStepSpec, labels: dict[str, str], secrets: dict[str, str],
                 configs: list[tuple[FileInto, str]], image_id: str | None = None) -> dict:
    """Pure: Docker's ServiceSpec for the step (``secrets``: NAME -> Swarm secret name; ``configs``:
    (file, Swarm config name); ``image_id``: the engine's id of the image, when it has it, so the
    same tag built again is a new release), its hash label included. Object IDs are filled in by
    apply. Named volumes Swarm creates carry ``labels``, so destroy knows them as the plan's."""
    hc = None
    if spec.healthcheck is not None:
        h = spec.healthcheck
        hc = {"Test": h.docker_test(), "Interval": int(h.interval * NS), "Timeout": int(h.timeout * NS),
              "Retries": h.retries, "StartPeriod": int(h.start_period * NS)}
    mounts = []
    for v in spec.volumes:
        parts = v.split(":")
        mounts.append({"Type": "volume", "Source": parts[0], "Target": parts[1],
                       "ReadOnly": len(parts) == 3 and parts[2] == "ro", "VolumeOptions": {"Labels": dict(labels)}})
    container: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
        "Labels": dict(labels),
        "Mounts": mounts,
        "StopGracePeriod": int(spec.stop_grace * NS),
        "Secrets": [{"SecretName": sname, "File": {"Name": name, "UID": "0", "GID": "0", "Mode": 0o444}}
                    for name, sname in sorted(secrets.items())],
        "Configs": [{"ConfigName": cname, "File": {"Name": f.dest, "UID": "0", "GID": "0", "Mode": int(f.mode, 8)}}
                    for f, cname in configs],
    }
    if image_id:
        container["Labels"][IMAGE_LABEL] = image_id
    if spec.command:
        container["Args"] = list(spec.command)
    if hc:
        container["Healthcheck"] = hc
    task: dict[str, Any] = {
        "ContainerSpec": container,
        "RestartPolicy": {"Condition": spec.restart_condition},
        "Placement": {"Constraints": list(spec.placement)},
    }
    if spec.network:
        task["Networks"] = [{"Target": spec.network, "Aliases": list(spec.aliases)}]
    container["Labels"][TASK_LABEL] = hashlib.sha256(json.dumps(task, sort_keys=True).encode()).hexdigest()[:16]
    update = {"Parallelism": spec.update.parallelism, "Delay": int(spec.update.delay * NS),
              "FailureAction": spec.update.failure_action, "Monitor": int(spec.update.monitor * NS),
              "Order": spec.update.order}
    out = {
        "Name": spec.service,
        "Labels": {**labels, **spec.labels},
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": spec.replicas}},
        "UpdateConfig": update,
        "RollbackConfig": {**update, "FailureAction": "pause"},
        "EndpointSpec": {"Mode": spec.endpoint_mode,
                         "Ports": [{"Protocol": p.protocol, "TargetPort": p.target, "PublishedPort": p.published,
                                    "PublishMode": p.mode} for p in spec.ports]},
    }
    out["Labels"][HASH_LABEL] = spec_hash(out)
    return out


def spec_hash(spec: dict) -> str:
    body = {k: v for k, v in spec.items() if k != "Labels"}
    body["Labels"] = {k: v for k, v in (spec.get("Labels") or {}).items() if k != HASH_LABEL}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Observed:
    service: dict | None = None
    tasks: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    image_pending: list[str] = field(default_factory=list)   # earlier image steps building this tag (plan)
    files_pending: list[str] = field(default_factory=list)   # earlier render steps writing its files (plan)

    @property
    def running(self) -> int:
        return sum(1 for t in self.tasks if t.get("DesiredState") == "running"
                   and (t.get("Status") or {}).get("State") == "running")


def _replicas(n: int) -> str:
    return f"{n} replica{'' if n == 1 else 's'}"


def _short(image_id: str | None) -> str | None:
    return (image_id or "").removeprefix("sha256:")[:12] or None


def _shown(value: Any) -> Any:
    """A spec part as Docker returns it: fields at their zero value (``ReadOnly: false``,
    ``StartPeriod: 0``) left out, as Docker leaves them out (so they are not shown as changes)."""
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items() if v not in (None, False, 0, "", [], {})} or None
    if isinstance(value, list):
        return [_shown(v) for v in value] or None
    return value


def _update_parts(want: dict, have: dict) -> list[tuple[str, Any, Any]]:
    """The parts of the spec that differ, as (field, before, after) in words."""
    out = []
    wc, hc = want["TaskTemplate"]["ContainerSpec"], (have.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    if (hc.get("Image") or "").split("@")[0] != wc["Image"]:
        out.append(("image", hc.get("Image"), wc["Image"]))
    elif (hc.get("Labels") or {}).get(IMAGE_LABEL) != wc["Labels"].get(IMAGE_LABEL):
        out.append(("image", _short((hc.get("Labels") or {}).get(IMAGE_LABEL)),
                    f"{wc['Image']} ({_short(wc['Labels'].get(IMAGE_LABEL))}, built again)"))
    for key, name in (("Env", "env"), ("Args", "command"), ("Mounts", "volumes"), ("Healthcheck", "healthcheck")):
        if _shown(hc.get(key)) != _shown(wc.get(key)) and not (key == "Env" and secrets_in(" ".join(wc["Env"]))):
            out.append((name, hc.get(key), wc.get(key)))
    names = lambda refs, k: sorted(r.get(k) for r in refs or [])  # noqa: E731
    if names(hc.get("Secrets"), "SecretName") != names(wc.get("Secrets"), "SecretName"):
        out.append(("secrets", "(changed)", "(new values)"))
    if names(hc.get("Configs"), "ConfigName") != names(wc.get("Configs"), "ConfigName"):
        out.append(("files", names(hc.get("Configs"), "ConfigName"), names(wc.get("Configs"), "ConfigName")))
    have_replicas = ((have.get("Mode") or {}).get("Replicated") or {}).get("Replicas")
    if have_replicas != want["Mode"]["Replicated"]["Replicas"]:
        out.append(("replicas", have_replicas, want["Mode"]["Replicated"]["Replicas"]))
    if not out:
        out.append(("settings", (have.get("Labels") or {}).get(HASH_LABEL), want["Labels"][HASH_LABEL]))
    return out


IN_PROGRESS = {"updating": "Swarm is still rolling the replicas",
               "rollback_started": "Swarm is rolling the replicas back"}


def diff_service(want: dict, obs: Observed, plan: str, step: str) -> Diff:
    """Pure: the desired ServiceSpec vs the observed service."""
    d = Diff()
    d.problems.extend(obs.problems)
    replicas = want["Mode"]["Replicated"]["Replicas"]
    order = want["UpdateConfig"]["Order"]
    d.after_apply = bool(obs.image_pending or obs.files_pending)
    if obs.service is None:
        d.changes.append(Change(Action.CREATE, "service", None, want["Name"], f"create ({_replicas(replicas)})"))
        return d
    have = obs.service.get("Spec") or {}
    labels = have.get("Labels") or {}
    if labels.get("orchestrate.plan") != plan or labels.get("orchestrate.step") != step:
        d.problems.append(f"service {want['Name']} exists and was not created by step {step} of plan {plan}: "
                          f"remove it or choose another name")
        return d
    state = (obs.service.get("UpdateStatus") or {}).get("State")
    parts = [] if labels.get(HASH_LABEL) == want["Labels"][HASH_LABEL] else _update_parts(want, have)
    roll = f"roll {_replicas(replicas)} ({order})"
    image_id = ((have.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Labels", {}).get(IMAGE_LABEL)
    for name, pending, before in (("image", obs.image_pending, _short(image_id)), ("files", obs.files_pending, None)):
        if pending and not any(part[0] == name for part in parts):
            made = "built again" if name == "image" else "rendered again"
            parts.append((name, before, "(known after apply)", f"{made} by step {', '.join(pending)}; {roll} if it "
                                                               f"changes"))
    if not parts:
        if state in ("paused", "rollback_paused"):
            d.changes.append(Change(Action.UPDATE, "update", state, "completed",
                                    f"the last roll is {state}: {roll} again"))
        elif state in IN_PROGRESS:      # an apply that started it was stopped (kill -9, Ctrl-C)
            d.changes.append(Change(Action.UPDATE, "update", state, "completed",
                                    f"the last roll has not ended: {IN_PROGRESS[state]}; wait for it"))
        return d
    only_replicas = all(part[0] == "replicas" for part in parts)
    for name, before, after, *why in parts:
        d.changes.append(Change(Action.UPDATE, name, before, after, why[0] if why else "scale" if only_replicas
                                else roll, secret=name in ("env", "secrets")))
    return d


class Service(Resource):
    """A Docker Swarm service: replicas rolled by Swarm, health-gated, rolled back on failure."""
    type = "service"
    Spec = ServiceStepSpec
    spec: ServiceStepSpec

    def check(self) -> None:
        for key, value in self.spec.env.items():
            if secrets_in(value) or "secrets." in value:
                raise self.rc.plan.smap.error(
                    self.step.path + ("env", key), "a secret in a service's environment is visible to anyone who "
                    "can inspect the service", hint=f"use secrets: {{{key.lower()}: ...}} (a file in "
                    f"/run/secrets/) and, if the image supports it, {key}_FILE=/run/secrets/{key.lower()}")

    def _objects(self) -> tuple[dict[str, tuple[str, bytes]], list[tuple[FileInto, str, bytes]]]:
        plan, step = self.rc.plan.name, self.step.name
        secrets = {n: (object_name(plan, step, n, v.encode()), v.encode()) for n, v in self.spec.secrets.items()}
        configs = []
        for i, f in enumerate(self.spec.files):
            data = self.rc.plan.resolve(f.src).read_bytes() if self.rc.plan.resolve(f.src).exists() else b""
            configs.append((f, object_name(plan, step, f"file{i}", data), data))
        return secrets, configs

    def desired(self) -> dict:
        secrets, configs = self._objects()
        image_id = (self.rc.engine.image(self.spec.image) or {}).get("Id")
        return service_spec(self.spec, self.own_labels, {n: s for n, (s, _) in secrets.items()},
                            [(f, c) for f, c, _ in configs], image_id)

    def observe(self) -> Observed:
        self.check()
        eng = self.rc.engine
        obs = Observed()
        if not eng.swarm_active():
            obs.problems.append("this engine is not a swarm manager: run docker swarm init (or point the plan's "
                                "engine at a manager)")
            return obs
        obs.service = eng.service(self.spec.service)
        if obs.service:
            obs.tasks = eng.service_tasks(obs.service["ID"])
        rc = self.rc
        obs.image_pending = rc.pending_builds(self.step, self.spec.image)
        obs.files_pending = rc.pending_renders(self.step, [f.src for f in self.spec.files])
        return obs

    def diff(self, obs: Observed) -> Diff:
        return diff_service(self.desired(), obs, self.rc.plan.name, self.step.name)

    def apply(self, obs: Observed, diff: Diff) -> str:
        eng = self.rc.engine
        labels = {**self.labels, **self.spec.labels}
        secrets, configs = self._objects()
        have_secrets = {s["Spec"]["Name"]: s["ID"] for s in eng.secrets_labelled(
            f"orchestrate.plan={self.rc.plan.name}", f"orchestrate.step={self.step.name}")}
        have_configs = {c["Spec"]["Name"]: c["ID"] for c in eng.configs_labelled(
            f"orchestrate.plan={self.rc.plan.name}", f"orchestrate.step={self.step.name}")}
        for _, (sname, data) in secrets.items():
            if sname not in have_secrets:
                have_secrets[sname] = eng.create_secret(sname, data, labels)
        for _, cname, data in configs:
            if cname not in have_configs:
                have_configs[cname] = eng.create_config(cname, data, labels)
        want = self.desired()
        want["Labels"] = {**labels, **want["Labels"]}
        want["TaskTemplate"]["ContainerSpec"]["Labels"] = {**labels, **want["TaskTemplate"]["ContainerSpec"]["Labels"]}
        for mount in want["TaskTemplate"]["ContainerSpec"]["Mounts"]:      # the volumes Swarm makes
            mount["VolumeOptions"]["Labels"] = {**labels, **mount["VolumeOptions"]["Labels"]}
        for ref in want["TaskTemplate"]["ContainerSpec"]["Secrets"]:
            ref["SecretID"] = have_secrets[ref["SecretName"]]
        for ref in want["TaskTemplate"]["ContainerSpec"]["Configs"]:
            ref["ConfigID"] = have_configs[ref["ConfigName"]]
        replicas, order = self.spec.replicas, self.spec.update.order
        before = (obs.service or {}).get("UpdateStatus")
        if obs.service is None:
            sid = eng.create_service(want)
            done = f"created service {self.spec.service} ({_replicas(replicas)})"
        elif [c.field for c in diff.changes] == ["update"] and before and before.get("State") in IN_PROGRESS:
            sid, before = obs.service["ID"], None     # the roll under way is this release's: see it end
            done = f"waited for the roll of {self.spec.service} that an earlier apply started"
        else:
            sid = obs.service["ID"]
            eng.update_service(sid, obs.service["Version"]["Index"], want)
            done = f"rolled {_replicas(replicas)} of {self.spec.service} ({order})"
        self._converge(sid, want["TaskTemplate"]["ContainerSpec"]["Labels"][TASK_LABEL], before=before)
        used = {r["SecretName"] for r in want["TaskTemplate"]["ContainerSpec"]["Secrets"]}
        used_c = {r["ConfigName"] for r in want["TaskTemplate"]["ContainerSpec"]["Configs"]}
        for name, oid in have_secrets.items():
            if name not in used:
                eng.remove_secret(oid)
        for name, oid in have_configs.items():
            if name not in used_c:
                eng.remove_config(oid)
        return done

    def _converge(self, sid: str, task_hash: str, *, before: dict | None) -> None:
        """Wait (bounded) until the roll completed and all replicas of this release run (healthy:
        Swarm marks a task running only once its health check passed); fail on a rollback or a
        pause (not the one of an earlier run, ``before``)."""
        eng, deadline = self.rc.engine, time.monotonic() + self.spec.wait
        while True:
            svc = eng.service(sid) or {}
            status = svc.get("UpdateStatus")
            state = status.get("State") if status and status != before else None
            tasks = eng.service_tasks(sid)
            version = (svc.get("Version") or {}).get("Index")
            running = [t for t in tasks if t.get("DesiredState") == "running"
                       and (t.get("Status") or {}).get("State") == "running"]
            if state == "rollback_completed":
                raise StepFailed(f"service {self.spec.service}: the new release did not become healthy and Swarm "
                                 f"rolled it back (rollback completed): the previous release still serves; "
                                 f"{self._failure(tasks)}", hint=f"docker service ps --no-trunc {self.spec.service} "
                                 f"shows each task; fix the release and apply again")
            if state in ("paused", "rollback_paused"):
                raise StepFailed(f"service {self.spec.service}: the update was {state.replace('_', ' ')}: "
                                 f"{(svc.get('UpdateStatus') or {}).get('Message', '')}; {self._failure(tasks)}")
            current = [t for t in running
                       if ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels", {}).get(TASK_LABEL) == task_hash]
            if state in (None, "completed") and len(current) == len(running) == self.spec.replicas:
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"service {self.spec.service}: {len(running)} of {self.spec.replicas} replicas "
                                 f"running after {self.spec.wait:g}s (update state {state or 'none'}; version "
                                 f"{version}); {self._failure(tasks)}")
            self.rc.progress(f"{self.spec.service}: {len(running)}/{self.spec.replicas} running"
                             f"{f', update {state}' if state else ''}")
            time.sleep(1.0)

    @staticmethod
    def _failure(tasks: list[dict]) -> str:
        failed = [t for t in tasks if (t.get("Status") or {}).get("State") in ("failed", "rejected")
                  or (t.get("Status") or {}).get("Err")]
        if not failed:
            return "no task reported an error"
        t = max(failed, key=lambda t: t.get("UpdatedAt") or "")
        st = t.get("Status") or {}
        return f"task {t.get('ID', '')[:12]} {st.get('State')}: {st.get('Err') or st.get('Message')}"

    def summary(self, obs: Observed) -> str:
        return f"{obs.running}/{self.spec.replicas} replicas running"

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        return {"service": self.spec.service, "replicas": self.spec.replicas,
                "ports": [p.published for p in self.spec.ports]}

    def record(self, obs: Observed) -> dict[str, Any]:
        return {"service": self.spec.service, "service_id": (obs.service or {}).get("ID")}

    def secret_inputs(self) -> dict[str, str]:
        return {f"secrets.{k}": v for k, v in self.spec.secrets.items()}

    def destroy(self, obs: Observed, *, volumes: bool) -> list[str]:
        eng, said = self.rc.engine, []
        if obs.service is not None:
            eng.remove_service(obs.service["ID"])
            said.append(f"removed service {self.spec.service}")
            # its tasks' containers still hold the network and the volumes for a moment
            sel, deadline = f"{SWARM_SERVICE_LABEL}={obs.service['ID']}", time.monotonic() + self.spec.stop_grace + 30
            while (left := eng.containers_labelled(sel)) and time.monotonic() < deadline:
                self.rc.progress(f"{self.spec.service}: {len(left)} task container(s) stopping")
                time.sleep(0.5)
            if left:
                said.append(f"{len(left)} task container(s) of {self.spec.service} still stopping: run destroy again "
                            f"to remove what they hold")
                return said
        for v in self.spec.volumes:
            if done := self.destroy_volume(v.split(":")[0], volumes=volumes):
                said.append(done)
        sel = (f"orchestrate.plan={self.rc.plan.name}", f"orchestrate.step={self.step.name}")
        if obs.service is not None or not obs.problems:
            for s in eng.secrets_labelled(*sel):
                eng.remove_secret(s["ID"])
            for c in eng.configs_labelled(*sel):
                eng.remove_config(c["ID"])
        return said
