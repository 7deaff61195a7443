"""What every step that runs a long-lived container shares (db-container, container).

- :class:`ContainerConfig`: a container's configuration, normalised the same way from the plan
  (:func:`effective`, with the image's defaults filled in as Docker fills them) and from Docker's
  inspect output (:func:`actual_config`), so that the two compare field by field;
- :data:`RULES`: the comparison table, per field, whether a difference is updated in place
  (restart policy, limits, network and aliases) or forces a recreate; :func:`compare` turns it
  into change objects, and adds a recreate when the container's ``orchestrate.config-hash``
  label says it was not created from this configuration (a change by hand the table misses);
- :class:`Lifecycle`: start (a taken port said plainly), wait until healthy (failing with the
  container's last log lines and its health check's output), and a safe replace: the old
  container is stopped and set aside (``<name>-orchestrate-old``) until the new one is healthy,
  and put back if it fails. What a crash leaves aside is found and removed by the next apply.

Values that hold one of the plan's secrets never reach a label, a diff or the lockfile: they are
compared in memory only, and masked in what is hashed (:func:`masked`) and shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from .changes import Action, Change
from .docker_engine import Engine, PortInUse
from .errors import StepFailed
from .fields import PortMapping
from .lockfile import digest
from .redact import found as secrets_in

NS = 1_000_000_000
HASH_LABEL = "orchestrate.config-hash"
EXTRA_LABEL = "orchestrate.extra-labels"      # which labels came from ORCHESTRATE_LABELS
OLD_SUFFIX = "-orchestrate-old"
NEW_SUFFIX = "-orchestrate-new"
SECRET_MARK = "(secret)"
STEADY = 1.0            # seconds a container without a health check must keep running to count as up


@dataclass(frozen=True)
class ContainerConfig:
    """A container's configuration, normalised the same way from the plan and from Docker.
    ``None`` in command, entrypoint, user or healthcheck never appears here: the image's value
    is filled in, as Docker does."""
    name: str
    image: str
    command: tuple[str, ...]
    entrypoint: tuple[str, ...]
    env: tuple[tuple[str, str], ...]                  # without the image's own values
    ports: tuple[PortMapping, ...]
    mounts: tuple[tuple[str, str, str, bool], ...]    # (volume|bind, source, target, read-only)
    healthcheck: tuple[tuple[str, Any], ...]          # () when the container has none
    labels: tuple[tuple[str, str], ...]               # without the image's and orchestrate's own
    user: str
    read_only: bool
    tmpfs: tuple[tuple[str, str], ...]
    restart: tuple[str, int]
    memory: int
    cpus: float
    network: str | None
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    field: str
    action: Action
    show: Callable[[Any], str] = str


def _pairs(pairs) -> str:
    return ", ".join(f"{k}={v}" for k, v in pairs) or "(none)"


def _keys(pairs) -> str:
    return ", ".join(k for k, _ in pairs) or "(none)"


def _mounts(mounts) -> str:
    return ", ".join(f"{src}:{dst}{':ro' if ro else ''}" for _kind, src, dst, ro in mounts) or "(none)"


def _health(pairs) -> str:
    if not pairs:
        return "(none)"
    hc = dict(pairs)
    test = hc["test"]
    shown = test[1] if test[0] == "CMD-SHELL" else " ".join(test[1:])
    return (f"{shown[:60] + '...' if len(shown) > 60 else shown} every {hc['interval'] / NS:g}s, timeout "
            f"{hc['timeout'] / NS:g}s, {hc['retries']} retries, start period {hc['start_period'] / NS:g}s")


def _words(words) -> str:
    return " ".join(words) or "(image default: none)"


def _size(n: int) -> str:
    if not n:
        return "unlimited"
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


RULES: tuple[Rule, ...] = (
    Rule("name", Action.RECREATE),
    Rule("image", Action.RECREATE),
    Rule("command", Action.RECREATE, _words),
    Rule("entrypoint", Action.RECREATE, _words),
    Rule("env", Action.RECREATE, _keys),
    Rule("ports", Action.RECREATE, lambda ports: ", ".join(str(p) for p in ports) or "(none)"),
    Rule("mounts", Action.RECREATE, _mounts),
    Rule("healthcheck", Action.RECREATE, _health),
    Rule("labels", Action.RECREATE, _pairs),
    Rule("user", Action.RECREATE, lambda u: u or "(image default)"),
    Rule("read_only", Action.RECREATE),
    Rule("tmpfs", Action.RECREATE, _pairs),
    Rule("restart", Action.UPDATE, lambda r: r[0]),
    Rule("memory", Action.UPDATE, _size),
    Rule("cpus", Action.UPDATE, lambda c: f"{c:g}" if c else "unlimited"),
    Rule("network", Action.UPDATE, lambda n: n or "(default)"),
    Rule("aliases", Action.UPDATE, lambda a: ", ".join(a) or "(none)"),
)
RECREATE_FIELDS = tuple(r.field for r in RULES if r.action is Action.RECREATE)


def env_dict(items) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in items or [])


def image_config(image: dict | None) -> dict:
    return (image or {}).get("Config") or {}


def health_tuple(test: list[str] | tuple[str, ...] | None, interval: int = 0, timeout: int = 0,
                 retries: int = 0, start_period: int = 0) -> tuple[tuple[str, Any], ...]:
    """A health check as compared; () for none (no test, or Docker's ``NONE``)."""
    if not test or tuple(test) == ("NONE",):
        return ()
    return tuple(sorted({"test": tuple(test), "interval": interval, "timeout": timeout,
                         "retries": retries, "start_period": start_period}.items()))


def docker_healthcheck(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any] | None:
    """A compared health check as the engine's ContainerSpec takes it (None: none)."""
    if not pairs:
        return None
    hc = dict(pairs)
    return {**hc, "test": list(hc["test"])}


def _docker_health(hc: dict | None) -> tuple[tuple[str, Any], ...]:
    hc = hc or {}
    return health_tuple(hc.get("Test"), hc.get("Interval") or 0, hc.get("Timeout") or 0,
                        hc.get("Retries") or 0, hc.get("StartPeriod") or 0)


def effective(*, name: str, image_ref: str, image: dict | None, command: list[str] | None,
              entrypoint: list[str] | None, env: dict[str, str], ports, mounts, healthcheck: tuple | None,
              labels: dict[str, str], user: str | None = None, read_only: bool = False,
              tmpfs: dict[str, str] | None = None, restart: tuple[str, int] = ("no", 0), memory: int | None = None,
              cpus: float | None = None, network: str | None = None, aliases: list[str] | None = None,
              ignore_env: frozenset[str] = frozenset()) -> ContainerConfig:
    """The configuration the plan asks for, with the image's defaults filled in as Docker fills
    them when it creates the container (``healthcheck=None``: the image's)."""
    img = image_config(image)
    image_env = env_dict(img.get("Env"))
    image_health = dict(_docker_health(img.get("Healthcheck")))
    if healthcheck and image_health:      # Docker takes the image's value for each one left 0
        healthcheck = tuple((k, v or (image_health.get(k, 0) if k != "test" else v)) for k, v in healthcheck)
    if entrypoint is None:
        entrypoint, command = img.get("Entrypoint") or [], command if command is not None else img.get("Cmd") or []
    else:
        command = command or []
    return ContainerConfig(
        name=name, image=image_ref, command=tuple(command), entrypoint=tuple(entrypoint),
        env=tuple(sorted((k, v) for k, v in env.items() if image_env.get(k) != v and k not in ignore_env)),
        ports=tuple(sorted(ports)), mounts=tuple(sorted(mounts)),
        healthcheck=_docker_health(img.get("Healthcheck")) if healthcheck is None else healthcheck,
        labels=tuple(sorted((k, v) for k, v in labels.items() if (img.get("Labels") or {}).get(k) != v)),
        user=user if user is not None else img.get("User") or "", read_only=read_only,
        tmpfs=tuple(sorted((tmpfs or {}).items())), restart=restart, memory=memory or 0, cpus=cpus or 0.0,
        network=network, aliases=tuple(sorted(set(aliases or []))) if network else ())


def _from_image(container_value: dict, image_value: dict, wanted) -> dict:
    """What the container holds, without what it took from its image. With ``wanted`` (the plan's
    configuration), a key the image has counts only when the plan sets it: the container may carry
    an older build's value (a rebuilt image's new PATH or labels are not a change of the plan)."""
    if wanted is None:
        return {k: v for k, v in container_value.items() if image_value.get(k) != v}
    keys = {k for k, _ in wanted}
    return {k: v for k, v in container_value.items() if k not in image_value or k in keys}


def actual_config(container: dict, image: dict | None, *, network: str | None,
                  ignore_env: frozenset[str] = frozenset(), want: ContainerConfig | None = None) -> ContainerConfig:
    """A container's configuration as Docker reports it, normalised like :func:`effective`
    (with ``want``, compared with it: see :func:`_from_image`)."""
    cfg, host = container.get("Config") or {}, container.get("HostConfig") or {}
    img = image_config(image)
    env = {k: v for k, v in _from_image(env_dict(cfg.get("Env")), env_dict(img.get("Env")),
                                        want.env if want else None).items() if k not in ignore_env}
    ports = []
    for key, bindings in (host.get("PortBindings") or {}).items():
        cport, _, proto = key.partition("/")
        for b in bindings or []:
            ports.append(PortMapping(b.get("HostIp") or "0.0.0.0", int(b.get("HostPort") or 0),
                                     int(cport), proto or "tcp"))
    mounts = [((m.get("Type") or "volume"), m.get("Source") or "", m.get("Target") or "", bool(m.get("ReadOnly")))
              for m in host.get("Mounts") or []]
    all_labels = cfg.get("Labels") or {}
    extra = set(filter(None, all_labels.get(EXTRA_LABEL, "").split(",")))
    labels = {k: v for k, v in _from_image(all_labels, img.get("Labels") or {}, want.labels if want else None).items()
              if k not in (HASH_LABEL, EXTRA_LABEL) and k not in extra}
    policy = host.get("RestartPolicy") or {}
    period, quota = host.get("CpuPeriod") or 0, host.get("CpuQuota") or 0
    cpus = quota / period if period and quota > 0 else (host.get("NanoCpus") or 0) / NS
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    joined = networks.get(network) if network else None
    short_id = (container.get("Id") or "")[:12]
    aliases = [a for a in (joined or {}).get("Aliases") or [] if a != short_id]
    return ContainerConfig(
        name=container.get("Name", "").lstrip("/"), image=cfg.get("Image", ""),
        command=tuple(cfg.get("Cmd") or ()), entrypoint=tuple(cfg.get("Entrypoint") or ()),
        env=tuple(sorted(env.items())), ports=tuple(sorted(ports)), mounts=tuple(sorted(mounts)),
        healthcheck=_docker_health(cfg.get("Healthcheck")), labels=tuple(sorted(labels.items())),
        user=cfg.get("User") or "", read_only=bool(host.get("ReadonlyRootfs")),
        tmpfs=tuple(sorted((host.get("Tmpfs") or {}).items())),
        restart=(policy.get("Name") or "no", policy.get("MaximumRetryCount") or 0),
        memory=host.get("Memory") or 0, cpus=round(cpus, 3),
        network=network if joined is not None else None,
        aliases=tuple(sorted(set(aliases))) if joined is not None else ())


def masked(config: ContainerConfig) -> ContainerConfig:
    """The configuration with every environment value that holds a secret replaced by a mark:
    what may be hashed into a label or the lockfile."""
    return replace(config, env=tuple((k, SECRET_MARK if secrets_in(v) else v) for k, v in config.env))


def config_hash(config: ContainerConfig, hashed: tuple[str, ...] = RECREATE_FIELDS) -> str:
    cfg = masked(config)
    return digest({f: getattr(cfg, f) for f in hashed})[7:23]


def fingerprint(config: ContainerConfig) -> str:
    """The whole configuration as it is, for the lockfile (a change by hand shows there)."""
    cfg = masked(config)
    return digest([getattr(cfg, f.name) for f in fields(cfg)])[7:23]


def _env_change(before, after) -> tuple[str, str]:
    b, a = dict(before), dict(after)
    added = sorted(set(a) - set(b))
    removed = sorted(set(b) - set(a))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    parts = [f"{what}: {', '.join(keys)}" for what, keys in
             (("added", added), ("changed", changed), ("removed", removed)) if keys]
    return _keys(before), "; ".join(parts)


def compare(want: ContainerConfig, want_hash: str, container: dict, image: dict | None,
            have: ContainerConfig) -> list[Change]:
    """The changes from ``have`` (Docker's) to ``want`` (the plan's), by :data:`RULES`; plus a
    recreate when the image the tag names is not the container's, or when the hash label says
    the container was made from another configuration; plus a start when it is not running."""
    changes = []
    for rule in RULES:
        before, after = getattr(have, rule.field), getattr(want, rule.field)
        if rule.field == "image":
            image_id = (image or {}).get("Id")
            if before == after and image_id is not None and image_id != container.get("Image"):
                changes.append(Change(Action.RECREATE, "image", f"{before} ({container.get('Image', '')[7:19]})",
                                      f"{after} ({image_id[7:19]})", "the image tag now points to another image"))
            elif before != after:
                changes.append(Change(Action.RECREATE, "image", before, after, "forces recreate"))
            continue
        if before == after:
            continue
        action = rule.action
        if rule.field in ("memory", "cpus") and not after:
            action = Action.RECREATE         # Docker cannot lift a limit in place
        if rule.field == "env":
            shown_before, shown_after = _env_change(before, after)
        else:
            shown_before, shown_after = rule.show(before), rule.show(after)
        secret = bool(secrets_in(str(before)) or secrets_in(str(after))) and rule.field != "env"
        changes.append(Change(action, rule.field, shown_before, shown_after,
                              "forces recreate" if action is Action.RECREATE else "changed in place", secret=secret))
    if not any(c.action is Action.RECREATE for c in changes):
        label = ((container.get("Config") or {}).get("Labels") or {}).get(HASH_LABEL)
        if label != want_hash:
            changes.append(Change(Action.RECREATE, "config-hash", label, want_hash,
                                  "the container was not created from this configuration"))
    recreate = any(c.action is Action.RECREATE for c in changes)
    status = (container.get("State") or {}).get("Status")
    if status not in ("running", "paused") and not recreate:
        changes.append(Change(Action.START, "state", status, "running", "the container is not running"))
    return changes


def network_aliases(network: str | None, aliases: list[str] | None, step: str) -> list[str]:
    """The names a step's container answers to on its network: the plan's, or the step's name."""
    if not network:
        return []
    return list(aliases) if aliases is not None else [step]


def paused_problem(container: dict, name: str) -> str | None:
    if (container.get("State") or {}).get("Status") == "paused":
        return f"container {name} is paused; unpause it (docker unpause {name}) and run again"
    return None


def labels_for(own: dict[str, str], extra: dict[str, str], want_hash: str) -> dict[str, str]:
    """The labels a new container gets: the configuration's own, ORCHESTRATE_LABELS's (named in
    :data:`EXTRA_LABEL`, so they are not part of the configuration) and the hash label."""
    return {**extra, **own, HASH_LABEL: want_hash, **({EXTRA_LABEL: ",".join(sorted(extra))} if extra else {})}


def is_mine(container: dict, plan: str, step: str) -> bool:
    labels = (container.get("Config") or {}).get("Labels") or {}
    return labels.get("orchestrate.plan") == plan and labels.get("orchestrate.step") == step


def health_output(container: dict | None) -> str:
    """The last health check's output, as Docker kept it."""
    log = (((container or {}).get("State") or {}).get("Health") or {}).get("Log") or []
    if not log:
        return ""
    last = log[-1]
    lines = [line.strip() for line in (last.get("Output") or "").splitlines() if line.strip()]
    shown = " / ".join(lines[-2:])       # a traceback's last line says what failed
    return f"exit code {last.get('ExitCode')}: {shown[-400:] or '(no output)'}"


class Lifecycle:
    """Start, wait for health, replace safely: one container of one step."""

    def __init__(self, engine: Engine, *, name: str, step: str, wait: float,
                 progress: Callable[[str], None] = lambda _m: None):
        self.engine, self.name, self.step, self.wait = engine, name, step, wait
        self.progress = progress

    def start(self, container_id: str) -> None:
        try:
            self.engine.start(container_id, self.name)
        except PortInUse as exc:
            raise StepFailed(f"a host port of container {self.name} is already in use: {exc}",
                             hint=f"free the port or publish another one (ports of step {self.step})") from None

    def wait_healthy(self, container_id: str, *, patient: bool = False, quiet: bool = False) -> None:
        """Until running and healthy (or running, without a health check), for at most ``wait``.
        A new container that turns unhealthy or exits has failed; one that ran before
        (``patient``) may be unhealthy for a while and is waited for to recover."""
        eng = self.engine
        deadline = time.monotonic() + self.wait
        announced = quiet
        steady: tuple[str, float] | None = None    # no health check: running since (StartedAt, seen at)
        while True:
            info = eng.container(container_id)
            state = (info or {}).get("State") or {}
            health = (state.get("Health") or {}).get("Status")
            if state.get("Status") == "running" and health == "healthy":
                return
            if state.get("Status") == "running" and health is None:
                # without a health check, "running" must last a moment: a process that dies at
                # start-up is running for a few milliseconds
                if patient or (steady and steady[0] == state.get("StartedAt")
                               and time.monotonic() - steady[1] >= STEADY):
                    return
                if not steady or steady[0] != state.get("StartedAt"):
                    steady = (state.get("StartedAt"), time.monotonic())
            restarting = state.get("Status") == "restarting" or (steady and steady[0] != state.get("StartedAt"))
            if (state.get("Status") in ("exited", "dead") or info is None or (restarting and not patient)
                    or (health == "unhealthy" and not patient) or time.monotonic() > deadline):
                why = ("was removed" if info is None
                       else f"exited with code {state.get('ExitCode')}" if state.get("Status") in ("exited", "dead")
                       else f"keeps restarting (last exit code {state.get('ExitCode')})" if restarting and not patient
                       else "is unhealthy" if health == "unhealthy" and not patient
                       else f"was not healthy after {self.wait:g}s")
                logs = eng.logs(container_id, tail=20).rstrip() if info is not None else ""
                checked = health_output(info)
                raise StepFailed(
                    f"container {self.name} {why}"
                    + (f"; its last health check: {checked}" if checked else "")
                    + f"; its last log lines:\n{logs or '(no output)'}",
                    hint=f"read the full log with: docker logs {self.name}")
            if not announced:
                self.progress(f"waiting for {self.name} to be healthy")
                announced = True
            time.sleep(0.25)

    def replace(self, old: dict | None, create: Callable[[], str],
                before_start: Callable[[str], None] | None = None) -> str:
        """Create (through ``create``), start and wait for the new container; an old one is
        stopped and set aside until the new one is healthy, and put back (and started again, if
        it ran) when the new one fails. Returns the new container's id."""
        eng = self.engine
        aside = self.name + OLD_SUFFIX
        was_running, old_name = False, None
        if old is not None:
            old_name = old["Name"].lstrip("/")
            was_running = (old.get("State") or {}).get("Status") == "running"
            if was_running:
                eng.stop(old["Id"], old_name)
            if old_name != aside:
                eng.rename(old["Id"], aside)
        new_id = None
        try:
            new_id = create()
            if before_start is not None:
                before_start(new_id)
            self.start(new_id)
            self.wait_healthy(new_id)
        except BaseException:
            if new_id is not None:
                eng.remove_container(new_id, self.name)
            if old is not None:
                eng.rename(old["Id"], old_name if old_name != aside else self.name)
                if was_running:
                    self.progress(f"putting the previous {self.name} back")
                    eng.start(old["Id"], old_name)
                    try:     # serving again before the failure is reported
                        self.wait_healthy(old["Id"], patient=True, quiet=True)
                    except StepFailed:
                        pass
            raise
        if old is not None:
            eng.remove_container(old["Id"], aside)
        return new_id

    def replace_start_first(self, old: dict | None, create: Callable[[str], str], *, drain: float,
                            grace: int) -> str:
        """Zero-downtime replacement of a stateless service: the new container starts beside the
        old one under a temporary name (``<name>-orchestrate-new``), with the same network
        aliases, so both answer to the service's name; once it is healthy, and after ``drain``
        seconds (resolvers that cached the name before the new container existed ask again), the
        old one is stopped gracefully (its server finishes what it serves, for at most ``grace``
        seconds; meanwhile a proxy that retries on a refused connection reaches the new one),
        removed, and the new one takes the service's name. A new container that never gets
        healthy is removed; the old one never stopped serving."""
        eng = self.engine
        temp = self.name + NEW_SUFFIX
        new_id = None
        try:
            new_id = create(temp)
            self.start(new_id)
            self.wait_healthy(new_id)
        except BaseException:
            if new_id is not None:
                eng.remove_container(new_id, temp)
            raise
        if old is not None:
            old_name = old["Name"].lstrip("/")
            if drain:
                self.progress(f"{temp} is healthy; moving traffic to it ({drain:g}s)")
                time.sleep(drain)
            if (old.get("State") or {}).get("Status") == "running":
                eng.stop(old["Id"], old_name, timeout=grace)
            eng.remove_container(old["Id"], old_name)
        eng.rename(new_id, self.name)
        return new_id

def update_in_place(engine: Engine, container: dict, want: ContainerConfig, changed: set[str]) -> list[str]:
    """Apply the changes :data:`RULES` allows in place; what was done, in words."""
    cid, name = container["Id"], want.name
    done = []
    if "restart" in changed:
        engine.update_restart(cid, name, want.restart)
        done.append("updated restart policy")
    if changed & {"memory", "cpus"}:
        engine.update_limits(cid, name, want.memory or None, want.cpus or None)
        done.append("updated resource limits")
    if changed & {"network", "aliases"} and want.network:
        if want.network in ((container.get("NetworkSettings") or {}).get("Networks") or {}):
            engine.disconnect(want.network, cid, name)     # aliases change only by joining again
        engine.connect(want.network, cid, name, list(want.aliases))
        done.append(f"joined network {want.network}" + (f" as {', '.join(want.aliases)}" if want.aliases else ""))
    return done


def set_aside(engine: Engine, name: str, plan: str, step: str, suffix: str = OLD_SUFFIX) -> list[dict]:
    """Containers of this step that an interrupted replace left (``<name>-orchestrate-old``, or
    with ``suffix`` ``-orchestrate-new``)."""
    found = engine.container(name + suffix)
    return [found] if found is not None and is_mine(found, plan, step) else []


def port_conflicts(engine: Engine, ports, held: set, name: str, step: str, *, engine_local: bool = False) -> list[str]:
    """The host ports the plan publishes that something else holds: another container, or (on
    this machine) another process. ``held``: what the step's own container publishes already.
    On a remote engine, a port on its loopback is refused unless the step says it serves only
    programs on the engine's host (``engine_local``): nobody here could reach it."""
    problems = []
    for port in ports:
        if engine.remote and port.loopback and not engine_local:
            problems.append(f"port {port} is published on the loopback of the remote engine "
                            f"{engine.target.url}: no client on this machine can reach it (ports of step {step}); "
                            f"publish it on the engine's address (e.g. -e db_bind=<its address>), or set "
                            f"engine_local_ports: true when only programs on that host use it")
            continue
        if port in held or port.proto != "tcp":
            continue
        users = [u for u in engine.publishing(port.host_port) if u not in (name, name + OLD_SUFFIX)]
        problem = None if users or engine.remote else engine.port_problem(port.host_ip, port.host_port)
        if users:
            who = f"container {', '.join(users)}"
        elif problem == "in use":
            who = "another process"
        elif problem:
            problems.append(f"host address {port.host_ip} of port {port} is not an address of this machine, "
                            f"where the Docker engine runs (ports of step {step}); publish on one of its "
                            f"addresses, or point DOCKER_HOST (or the plan's engine:) at the engine that has it")
            continue
        else:
            continue
        problems.append(f"host port {port.host_ip}:{port.host_port} is already in use by {who}; free "
                        f"it or publish another port in the plan (ports of step {step})")
    return problems
