"""The container step: a long-lived service container (the application; later nginx, pgadmin).

Its configuration is compared with the running container through the table shared with
db-container (:mod:`orchestrator.containers`): restart policy, limits, network and aliases are
changed in place, anything else recreates it, safely (the old one is set aside until the new one
is healthy, and put back if it fails). ``env_file``'s content is part of the configuration, like
``env``. A new image built by an earlier ``image`` step (same tag) recreates the container; in a
plan, while that build is pending, the recreate is shown as known after apply.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema, field_validator, model_validator

from ..changes import Action, Change, Diff
from ..containers import (NEW_SUFFIX, NS, ContainerConfig, docker_healthcheck, Lifecycle, actual_config, compare, config_hash,
                          effective, fingerprint, health_tuple, is_mine, labels_for, network_aliases,
                          paused_problem,
                          port_conflicts, set_aside, update_in_place)
from ..docker_engine import ContainerSpec
from ..errors import KeyedValueError, StepFailed
from ..fields import (ContainerPath, DockerName, Duration, EnvName, EnvValue, Image, LabelKey, LabelValue, Ports,
                      RelPath, Text)
from ..plan import Strict
from ..redact import found as secrets_in
from .base import Resource, extra_labels
from .image import drop_previous


def _as_text(value: Any) -> Any:
    """Numbers and booleans in env are written as the container reads them: as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


def _words(value: Any) -> Any:
    """A command as a list, or a string split as a shell would (no shell runs it)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r} into words: {exc}") from None
    return value


EnvText = Annotated[EnvValue, BeforeValidator(_as_text), WithJsonSchema(
    {"type": ["string", "number", "boolean"], "description": "a value (numbers and booleans are written as text)"})]
Words = Annotated[list[Text], BeforeValidator(_words), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
     "description": "a list of words, or a string split as a shell would"})]
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: Any) -> int:
    """``512m``, ``1g``, ``64k`` or a number of bytes -> bytes (at least 6 MiB, as Docker wants)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512m or 1g")
    text = str(value).strip().lower().removesuffix("b") if isinstance(value, str) else str(value)
    unit = text[-1:] if text[-1:] in _UNITS and not text[-1:].isdigit() else ""
    number = text[:-1] if unit else text
    try:
        size = int(float(number) * _UNITS[unit])
    except ValueError:
        raise ValueError(f"{value!r} is not a size such as 512m or 1g") from None
    if not 6 * (1 << 20) <= size <= 1 << 50:
        raise ValueError(f"{value!r}: a memory limit is between 6m and 1024t")
    return size


Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 6291456}, {"type": "string", "pattern": r"^\d+(\.\d+)?[bkmgBKMG]?$"}],
     "description": "a size: 512m, 1g, or bytes"})]


@dataclass(frozen=True)
class VolumeMount:
    kind: str                 # volume | bind
    source: str               # a volume's name, or a path relative to the plan root
    target: str
    read_only: bool


def parse_volume(value: Any) -> VolumeMount:
    """``NAME:/path[:ro]`` (a named volume) or ``./dir:/path[:ro]`` / ``/abs:/path[:ro]`` (a bind
    mount; relative paths start at the plan's root), as in Compose."""
    if isinstance(value, VolumeMount):
        return value
    if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
        raise ValueError("expected a volume such as \"data:/var/lib/app\" or \"./conf:/etc/app:ro\"")
    parts = value.split(":")
    mode = "rw"
    if len(parts) == 3:
        source, target, mode = parts
    elif len(parts) == 2:
        source, target = parts
    else:
        raise ValueError(f"malformed volume {value!r}: expected SOURCE:TARGET[:ro]")
    if mode not in ("ro", "rw"):
        raise ValueError(f"malformed volume {value!r}: the mode is ro or rw, not {mode!r}")
    if not target.startswith("/"):
        raise ValueError(f"malformed volume {value!r}: the target {target!r} must be an absolute path in the container")
    bind = source.startswith(("/", ".", "~"))
    if not bind:
        import re
        if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$", source):
            raise ValueError(f"malformed volume {value!r}: {source!r} is neither a volume name nor a path "
                             f"(a path starts with ./ or /)")
    if source.startswith("~"):
        raise ValueError(f"malformed volume {value!r}: write the path relative to the plan's root (./...)")
    return VolumeMount("bind" if bind else "volume", source, target, mode == "ro")


class HttpCheck(Strict):
    path: Text = Field("/", description="path of the URL asked inside the container, e.g. /health")
    port: int = Field(ge=1, le=65535, description="the port the application listens on inside the container")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " '\"\\`$\n"):
            raise ValueError("a path starting with '/', without spaces, quotes, '$' or backslashes")
        return value


class ServiceHealthcheck(Strict):
    """A command run in the container (``test``), or an HTTP GET (``http``) that must answer 2xx/3xx."""
    test: Words | None = Field(None, description="command; a string is run by the container's shell")
    http: HttpCheck | None = None
    interval: Duration = 5.0
    timeout: Duration = 5.0
    retries: int = Field(3, ge=1, le=10_000)
    start_period: Duration = 0.0
    shell: bool | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _shell(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("test"), str):
            data = {**data, "shell": True}
        return data

    @model_validator(mode="after")
    def _one(self):
        if (self.test is None) == (self.http is None):
            raise ValueError("a healthcheck has exactly one of: test (a command), http: {path, port}")
        return self

    def docker_test(self) -> list[str]:
        if self.http is not None:
            url = f"http://127.0.0.1:{self.http.port}{self.http.path}"
            t = max(1, int(self.timeout))
            return ["CMD-SHELL",
                    f"if command -v curl >/dev/null 2>&1; then curl -fsS -o /dev/null --max-time {t} {url}; "
                    f"elif command -v wget >/dev/null 2>&1; then wget -q -O /dev/null -T {t} {url}; "
                    f"else python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], "
                    f"timeout={t})' {url}; fi"]
        if self.shell:
            return ["CMD-SHELL", shlex.join(self.test) if self.test else ""]
        return ["CMD", *self.test]


class FileInto(Strict):
    """A file of the plan's (often one a render step wrote) copied into the container before it
    starts: configuration without a bind mount."""
    src: RelPath = Field(description="the file, relative to the plan root")
    dest: ContainerPath = Field(description="where it goes in the container (its folder must exist)")
    mode: Text = Field("0644", pattern=r"^0?[0-7]{3}$", description="file mode in octal")


class ContainerStepSpec(Strict):
    image: Image = Field(description="image: an image step's tag ('{{ steps.app_image.tag }}') or a name")
    container: DockerName = Field(description="container name")
    command: Words | None = Field(None, description="command (default: the image's CMD)")
    entrypoint: Words | None = Field(None, description="entrypoint (default: the image's)")
    env: dict[EnvName, EnvText] = Field(default_factory=dict, description="environment variables")
    env_file: list[RelPath] = Field(default_factory=list,
                                    description="files of KEY=VALUE lines (relative to the plan root); env wins")
    ports: Ports = Field(default_factory=list, description="published ports; the host address defaults to 127.0.0.1")
    engine_local_ports: bool = Field(False, description="on a remote engine, ports published on its loopback "
                                                        "serve only programs on the engine's host (otherwise refused: "
                                                        "no client here reaches them)")
    volumes: list[Annotated[VolumeMount, BeforeValidator(parse_volume), WithJsonSchema(
        {"type": "string", "description": "NAME:/path[:ro] or ./dir:/path[:ro]"})]] = Field(
        default_factory=list, description="NAME:/path[:ro] (named volume) or ./dir:/path[:ro] (bind mount)")
    network: DockerName | None = Field(None, description="the plan's network to join")
    aliases: list[DockerName] | None = Field(None, description="names on the network (default: the step's name)")
    healthcheck: ServiceHealthcheck | None = Field(None, description="default: the image's HEALTHCHECK")
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    user: Text | None = Field(None, description="user[:group] to run as (default: the image's)")
    read_only: bool = Field(False, description="read-only root file system")
    tmpfs: dict[ContainerPath, Text] = Field(default_factory=dict, description="tmpfs mounts: path -> options")
    memory: Size | None = Field(None, description="memory limit, e.g. 512m")
    cpus: float | None = Field(None, gt=0, le=1024, description="CPU limit, e.g. 1.5")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    wait: Duration = Field(120.0, description="how long to wait for the container to be healthy")
    files: list[FileInto] = Field(default_factory=list, description="files copied into the container before it starts")
    reload: Words | None = Field(None, description="command run in the container when only files changed "
                                                   "(e.g. nginx -s reload); without it a changed file recreates")
    replace: Literal["start-first", "stop-first"] | None = Field(
        None, description="start-first: the new container starts beside the old one and takes over once "
                          "healthy (no downtime); stop-first: the old one stops first. Default: start-first "
                          "unless the container publishes a host port or mounts a volume")
    drain: Duration = Field(2.0, description="start-first: how long both serve before the old one stops")
    stop_grace: Duration = Field(30.0, description="how long a stopping container may take to finish its work")

    @model_validator(mode="after")
    def _start_first_needs_no_port_or_volume(self):
        if self.replace == "start-first" and (self.ports or any(m.kind == "volume" for m in self.volumes)):
            raise ValueError("replace: start-first needs a container without published host ports and named "
                             "volumes (two containers cannot hold one host port, nor should two write one "
                             "volume); put a proxy in front (nginx) and publish that, or use stop-first")
        return self

    @property
    def strategy(self) -> str:
        if self.replace:
            return self.replace
        return "stop-first" if self.ports or any(m.kind == "volume" for m in self.volumes) else "start-first"

    @field_validator("env_file", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("tmpfs", mode="before")
    @classmethod
    def _tmpfs_list(cls, value: Any) -> Any:
        return {path: "" for path in value} if isinstance(value, list) else value


    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list, info: ValidationInfo) -> list:
        plan = (info.context or {}).get("plan")
        targets = set()
        for i, mount in enumerate(value):
            if mount.target in targets:
                raise KeyedValueError(f"{mount.target} is mounted twice", i)
            targets.add(mount.target)
            if mount.kind == "bind" and plan is not None and (problem := plan.outside_root(mount.source)):
                raise KeyedValueError(problem, i)
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases_need_network(cls, value, info: ValidationInfo):
        if value and not info.data.get("network"):
            raise ValueError("aliases are names on a network: set network too")
        return value


def read_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as Compose reads them: blank lines and ``#`` comments skipped, an optional
    ``export``, one pair of surrounding quotes removed."""
    env = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise ValueError(f"line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


@dataclass
class Observed:
    image: dict | None = None
    container: dict | None = None
    aside: list[dict] = field(default_factory=list)       # set aside by an interrupted replace
    env_file: dict[str, str] = field(default_factory=dict)
    env_file_problem: str | None = None
    env_file_pending: list[str] = field(default_factory=list)   # earlier render steps pending (plan)
    image_pending: list[str] = field(default_factory=list)      # earlier image steps building this tag (plan)
    missing_binds: list[str] = field(default_factory=list)
    network_missing: bool = False
    network_pending: bool = False
    problems: list[str] = field(default_factory=list)         # ports taken, a name taken, a file unreadable
    files_changed: list[str] = field(default_factory=list)      # container paths whose content differs
    files_pending: list[str] = field(default_factory=list)      # earlier render steps pending (plan)
    reloadable: bool = False                                    # the step has a reload command
    new_aside: list[dict] = field(default_factory=list)         # left by an interrupted start-first

    @property
    def running(self) -> bool:
        return bool(self.container) and (self.container.get("State") or {}).get("Status") == "running"


def diff_container(want: ContainerConfig | None, want_hash: str, obs: Observed, *, name: str) -> Diff:
    """Desired vs observed, as change objects. Pure."""
    d = Diff()
    d.problems += obs.problems
    if obs.env_file_problem and not obs.env_file_pending:
        d.problems.append(obs.env_file_problem)
    for path in obs.missing_binds:
        d.problems.append(f"bind mount source {path} does not exist; create it, or mount a named volume instead")
    if obs.network_missing and not obs.network_pending:
        d.problems.append(f"network {want.network if want else ''} does not exist; add a network step before "
                          f"this one (or create it: docker network create ...)")
    if obs.image is None and not obs.image_pending:
        d.notes.append("the image is not on this Docker engine: apply will pull it")
    for leftover in obs.aside + obs.new_aside:
        if obs.container is not None:
            d.changes.append(Change(Action.UPDATE, "leftover", leftover["Name"].lstrip("/"), "removed",
                                    "left by an interrupted replace"))
    if obs.container is None:
        why = "the container does not exist"
        if obs.aside:
            why += "; the previous one, set aside by an interrupted replace, is removed once it is healthy"
        d.changes.append(Change(Action.CREATE, "container", None, name, why))
        d.after_apply = bool(obs.image_pending or obs.env_file_pending or obs.network_pending)
        return d
    if problem := paused_problem(obs.container, name):
        d.problems.append(problem)
    if obs.image_pending:
        d.changes.append(Change(Action.RECREATE, "image", obs.container.get("Image", "")[7:19],
                                "(known after apply)", f"rebuilt by step {', '.join(obs.image_pending)}"))
        d.after_apply = True
    if want is None:          # the image is not there to fill in its defaults: known after the build
        d.after_apply = True
        return d
    have = actual_config(obs.container, obs.image, network=want.network, want=want)
    changes = compare(want, want_hash, obs.container, obs.image, have)
    if obs.image_pending:
        changes = [c for c in changes if c.field not in ("image", "config-hash", "state")]
    if obs.env_file_pending or obs.network_pending:
        d.after_apply = True
    d.changes += changes
    if obs.files_changed and not any(c.action is Action.RECREATE for c in changes):
        action = Action.UPDATE if obs.reloadable else Action.RECREATE
        d.changes.append(Change(action, "files", None, ", ".join(obs.files_changed),
                                "copied in and reloaded" if obs.reloadable else "forces recreate (no reload command)"))
    if obs.files_pending:
        d.after_apply = True
        if not d.changes:
            d.changes.append(Change(Action.UPDATE if obs.reloadable else Action.RECREATE, "files", None,
                                    "(known after apply)", f"rendered again by step {', '.join(obs.files_pending)}"
                                    + ("; copied in and reloaded if they change" if obs.reloadable else "")))
    return d


class Container(Resource):
    """A service container on the plan's network."""
    type = "container"
    Spec = ContainerStepSpec
    spec: ContainerStepSpec

    @property
    def aliases(self) -> list[str]:
        return network_aliases(self.spec.network, self.spec.aliases, self.step.name)

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.rc.engine, name=self.spec.container, step=self.step.name, wait=self.spec.wait,
                         progress=self.rc.progress)

    def _healthcheck(self) -> tuple | None:
        hc = self.spec.healthcheck
        if hc is None:
            return None
        return health_tuple(hc.docker_test(), int(hc.interval * NS), int(hc.timeout * NS), hc.retries,
                            int(hc.start_period * NS))

    def _env(self, obs: Observed) -> dict[str, str]:
        return {**obs.env_file, **self.spec.env}

    def _mounts(self) -> list[tuple[str, str, str, bool]]:
        return [(m.kind, str(self.rc.plan.resolve(m.source)) if m.kind == "bind" else m.source, m.target, m.read_only)
                for m in self.spec.volumes]

    def _desired(self, obs: Observed, image: dict | None) -> tuple[ContainerConfig, str]:
        spec = self.spec
        want = effective(
            name=spec.container, image_ref=spec.image, image=image, command=spec.command,
            entrypoint=spec.entrypoint, env=self._env(obs), ports=spec.ports, mounts=self._mounts(),
            healthcheck=self._healthcheck(), labels={**self.own_labels, **spec.labels}, user=spec.user,
            read_only=spec.read_only, tmpfs=spec.tmpfs, restart=(spec.restart, 0), memory=spec.memory,
            cpus=spec.cpus, network=spec.network, aliases=self.aliases)
        return want, config_hash(want)

    # observe ---------------------------------------------------------------------------------

    def observe(self) -> Observed:
        eng, spec, rc = self.rc.engine, self.spec, self.rc
        obs = Observed(image=eng.image(spec.image))
        found = eng.container(spec.container)
        if found is not None and not is_mine(found, rc.plan.name, self.step.name):
            obs.problems.append(
                f"a container named {spec.container} exists and was not created by this plan's step "
                f"{self.step.name}; rename or remove it (docker rm -f {spec.container}), or name this "
                f"step's container differently")
        else:
            obs.container = found
        obs.aside = set_aside(eng, spec.container, rc.plan.name, self.step.name)
        obs.new_aside = set_aside(eng, spec.container, rc.plan.name, self.step.name, NEW_SUFFIX)
        obs.reloadable = bool(spec.reload)
        if spec.files:
            obs.files_pending = rc.pending_renders(self.step, [f.src for f in spec.files])
            for f in spec.files:
                try:
                    want = rc.plan.resolve(f.src).read_bytes()
                except OSError as exc:
                    if not obs.files_pending:
                        obs.problems.append(f"files: cannot read {f.src}: {exc.strerror or exc}")
                    continue
                if obs.container is not None and eng.read_file(obs.container["Id"], f.dest) != want:
                    obs.files_changed.append(f.dest)
        obs.image_pending = rc.pending_builds(self.step, spec.image)
        obs.env_file_pending = rc.pending_before(self.step, "render")
        for path in spec.env_file:
            try:
                obs.env_file.update(read_env_file(rc.plan.resolve(path).read_text()))
            except FileNotFoundError:
                obs.env_file_problem = f"env_file {path} does not exist"
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                obs.env_file_problem = f"env_file {path} cannot be read: {exc}"
        # a bind mount names a path on the engine's host: only this machine's can be checked here
        obs.missing_binds = [m.source for m in spec.volumes if m.kind == "bind" and not eng.remote
                             and not rc.plan.resolve(m.source).exists()]
        if spec.network and eng.network(spec.network) is None:
            obs.network_missing = True
            obs.network_pending = bool(rc.pending_before(self.step, "network", "db-container"))
        held = set()
        if obs.container is not None:
            held = set(actual_config(obs.container, obs.image, network=None).ports)
        obs.problems += port_conflicts(eng, spec.ports, held, spec.container, self.step.name,
                                       engine_local=spec.engine_local_ports)
        return obs

    def diff(self, obs: Observed) -> Diff:
        if obs.image is None:
            want, want_hash = None, ""
        else:
            want, want_hash = self._desired(obs, obs.image)
        return diff_container(want, want_hash, obs, name=self.spec.container)

    # apply -----------------------------------------------------------------------------------

    def apply(self, obs: Observed, diff: Diff) -> str:
        eng, spec = self.rc.engine, self.spec
        done = []
        image = obs.image
        if image is None:
            eng.pull(spec.image, self.rc.progress)
            image = eng.image(spec.image)
        want, want_hash = self._desired(obs, image)
        for volume in {m.source for m in spec.volumes if m.kind == "volume"}:
            if eng.volume(volume) is None:
                eng.create_volume(volume, {**self.labels, **spec.labels})
                done.append(f"created volume {volume}")
        fields = set(diff.fields())
        if obs.container is None or Action.RECREATE in {c.action for c in diff.changes}:
            old = obs.container or (obs.aside[0] if obs.aside else None)
            if old is None and obs.new_aside:
                # a start-first replace killed after the old container went: the new one serves under
                # its temporary name; it takes the service's name, and is replaced like any old one
                eng.rename(obs.new_aside[0]["Id"], spec.container)
                old = eng.container(spec.container)
                obs.new_aside = obs.new_aside[1:]
            for leftover in obs.aside + obs.new_aside:
                if old is None or leftover["Id"] != old["Id"]:
                    self._remove_leftover(leftover, image)

            def create(name: str = spec.container) -> str:
                cid = eng.create_container(self._spec(want, want_hash, obs, name))
                self._put_files(cid, name)
                return cid

            if spec.strategy == "start-first" and old is not None and old["Name"].lstrip("/") == spec.container:
                self.lifecycle.replace_start_first(old, create, drain=spec.drain, grace=int(spec.stop_grace))
            else:
                self.lifecycle.replace(old, create)
            done.append(("recreated container" if obs.container else "created container")
                        + (f" ({', '.join(diff.fields(Action.RECREATE))})" if obs.container else ""))
            if old is not None and old.get("Image") != image.get("Id"):
                drop_previous(eng, old["Image"], self.rc.plan.name)   # the build it ran, if no tag names it
            return "; ".join(done)
        cid = obs.container["Id"]
        done += update_in_place(eng, obs.container, want, fields)
        if "files" in fields:
            self._put_files(cid, spec.container, only=obs.files_changed)
            code, output = eng.exec(cid, spec.container, list(spec.reload))
            if code != 0:
                raise StepFailed(f"{' '.join(spec.reload)} failed in {spec.container} (exit code {code}) after "
                                 f"{', '.join(obs.files_changed)} changed: {output.strip()[-500:]}",
                                 hint="fix the file and apply again; the container kept its running configuration "
                                      "if the reload refused the new one")
            done.append(f"copied {', '.join(obs.files_changed)} in and ran {' '.join(spec.reload)}")
        if "state" in fields:
            self.lifecycle.start(cid)
            done.append("started container")
        self.lifecycle.wait_healthy(cid, patient="state" not in fields)
        for leftover in obs.aside + obs.new_aside:
            self._remove_leftover(leftover, image)
            done.append(f"removed {leftover['Name'].lstrip('/')}, left aside by an interrupted run")
        return "; ".join(done) or "ok"

    def _remove_leftover(self, leftover: dict, image: dict) -> None:
        """A container an interrupted replace set aside, and the earlier build it ran (when no tag
        names that build any more and nothing else runs it)."""
        self.rc.engine.remove_container(leftover["Id"], leftover["Name"].lstrip("/"))
        if leftover.get("Image") != image.get("Id"):
            drop_previous(self.rc.engine, leftover["Image"], self.rc.plan.name)

    def _put_files(self, container_id: str, name: str, only: list[str] | None = None) -> None:
        for f in self.spec.files:
            if only is None or f.dest in only:
                self.rc.engine.put_bytes(container_id, name, f.dest, self.rc.plan.resolve(f.src).read_bytes(),
                                         int(f.mode, 8))

    def _spec(self, want: ContainerConfig, want_hash: str, obs: Observed, name: str | None = None) -> ContainerSpec:
        spec = self.spec
        return ContainerSpec(
            name=name or spec.container, image=spec.image, command=spec.command, entrypoint=spec.entrypoint,
            env=self._env(obs), labels=labels_for(dict(want.labels), extra_labels(), want_hash),
            ports=[tuple(p) for p in spec.ports],
            volumes=[(src, dst) for kind, src, dst, _ro in want.mounts if kind == "volume"],
            read_only_volumes={dst for kind, _src, dst, ro in want.mounts if kind == "volume" and ro},
            binds=[(src, dst, ro) for kind, src, dst, ro in want.mounts if kind == "bind"],
            restart=want.restart,
            healthcheck=docker_healthcheck(want.healthcheck) if spec.healthcheck is not None else None,
            network=spec.network, aliases=list(want.aliases), user=spec.user, read_only=spec.read_only,
            tmpfs=dict(spec.tmpfs), memory=spec.memory, cpus=spec.cpus)

    def settle(self, obs: Observed) -> None:
        if obs.running:
            self.lifecycle.wait_healthy(obs.container["Id"], patient=True)

    # outputs, record, destroy ----------------------------------------------------------------

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        spec = self.spec
        env = {**(obs.env_file if obs is not None else {}), **spec.env}
        published = [p for p in spec.ports if p.proto == "tcp"]
        url = None
        if published:
            url = f"http://{published[0].client_netloc(self.rc.target.address)}"
        hc = spec.healthcheck
        return {
            "service": self.step.name, "container": spec.container, "image": spec.image,
            "id": (obs.container or {}).get("Id", "(known after apply)") if obs is not None else "(known after apply)",
            "command": spec.command, "entrypoint": spec.entrypoint, "env": env,
            "secret_env": sorted(k for k, v in env.items() if secrets_in(v)),
            "env_file": list(spec.env_file),
            "files": [{"src": f.src, "dest": f.dest, "mode": f.mode} for f in spec.files],
            "ports": [f"{p.host_ip}:{p.host_port}:{p.container_port}/{p.proto}" for p in spec.ports],
            "volumes": [f"{m.source}:{m.target}{':ro' if m.read_only else ''}" for m in spec.volumes],
            "network": spec.network, "aliases": self.aliases, "restart": spec.restart, "user": spec.user,
            "read_only": spec.read_only, "tmpfs": dict(spec.tmpfs), "memory": spec.memory, "cpus": spec.cpus,
            "healthcheck": None if hc is None else {
                "test": hc.docker_test(), "interval": f"{hc.interval:g}s", "timeout": f"{hc.timeout:g}s",
                "retries": hc.retries, "start_period": f"{hc.start_period:g}s"},
            "url": url,
        }

    def record(self, obs: Observed) -> dict[str, Any]:
        c = obs.container or {}
        labels = (c.get("Config") or {}).get("Labels") or {}
        return {
            "config": fingerprint(actual_config(c, obs.image, network=self.spec.network)) if c else None,
            "container": self.spec.container,
            "container_id": c.get("Id"),
            "image": self.spec.image,
            "image_id": c.get("Image"),
            "config_hash": labels.get("orchestrate.config-hash"),
            "running": obs.running,
        }

    def destroy(self, obs: Observed, *, volumes: bool) -> list[str]:
        eng, spec = self.rc.engine, self.spec
        said = []
        for c in ([obs.container] if obs.container else []) + obs.aside:
            eng.remove_container(c["Id"], c["Name"].lstrip("/"))
            said.append(f"removed container {c['Name'].lstrip('/')}")
        for volume in sorted({m.source for m in spec.volumes if m.kind == "volume"}):
            if done := self.destroy_volume(volume, volumes=volumes):
                said.append(done)
        return said
