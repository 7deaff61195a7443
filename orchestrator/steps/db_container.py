"""The db-container step: PostgreSQL in Docker, with a named data volume.

Desired and actual container configurations are normalised into the same :class:`ContainerConfig`
shape and compared field by field through :data:`RULES` (a table saying, per field, whether a
difference is updated in place or forces a recreate). A ``orchestrate.config-hash`` label on the
container makes "was it created from exactly this configuration?" one comparison.

Beyond what Compose does, the step knows it holds data:
- the lockfile remembers the volume's identity, so a volume that vanished or was recreated is
  reported in plain words (the data in it is gone) before a new one is created;
- ``POSTGRES_PASSWORD`` only works on an empty volume, so a changed password is set with
  ``ALTER ROLE`` inside the database, and a changed user or database name is refused with advice;
- the data directory's ``PG_VERSION`` is checked against the image's major version before the
  container starts;
- a container is replaced safely: the old one is stopped and kept aside until the new one is
  healthy, and put back if the new one fails.
"""

from __future__ import annotations

import re
import struct
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, field_validator

from ..changes import Action, Change, Diff
from ..containers import (HASH_LABEL, NS, OLD_SUFFIX, ContainerConfig, Lifecycle, actual_config, compare,
                          docker_healthcheck, effective, env_dict, fingerprint, health_tuple, is_mine, labels_for,
                          masked, network_aliases, paused_problem, port_conflicts, update_in_place)
from ..docker_engine import ContainerSpec
from ..errors import KeyedValueError, StepFailed
from ..fields import (ContainerPath, DockerName, Duration, EnvName, EnvValue, Image, LabelKey, LabelValue, Password,
                      PgIdent, Ports, SettingName, SettingValue, Text, setting_text)
from ..lockfile import digest
from ..plan import Strict
from ..redact import REDACTED
from ..secrets import hash_matches
from .base import Resource, extra_labels

SETTING = re.compile(r"^[a-z_][a-z0-9_.]*$")
VOLUME_LABEL = "orchestrate.volume-created"   # Docker's own CreatedAt is the data dir's mtime
RESERVED_ENV = {"POSTGRES_USER": "user", "POSTGRES_PASSWORD": "password", "POSTGRES_DB": "database",
                "PGDATA": "data_dir"}


class HealthcheckSpec(Strict):
    """Docker healthcheck; the default test is ``pg_isready`` over TCP inside the container."""
    test: list[Text] | Text | None = Field(None, description="command (default: pg_isready -h 127.0.0.1)")
    interval: Duration = 2.0
    timeout: Duration = 5.0
    retries: int = Field(30, ge=1, le=10_000)
    start_period: Duration = 0.0


class DbContainerSpec(Strict):
    image: Image = Field(description="PostgreSQL image, e.g. postgres:16-alpine")
    container: DockerName = Field(description="container name")
    volume: DockerName = Field(description="named volume holding the data directory")
    user: PgIdent = Field("postgres", description="superuser (POSTGRES_USER)")
    password: Password = Field(json_schema_extra={"writeOnly": True},
                          description="the user's password; use a secret: '{{ secrets.db_password }}'")
    database: PgIdent | None = Field(None, description="database (POSTGRES_DB); default: user")
    ports: Ports = Field(default_factory=list)
    engine_local_ports: bool = Field(False, description="on a remote engine, ports published on its loopback "
                                                        "serve only programs on the engine's host (otherwise refused: "
                                                        "no client here reaches them)")
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    healthcheck: HealthcheckSpec = Field(default_factory=HealthcheckSpec)
    settings: dict[SettingName, SettingValue] = Field(
        default_factory=dict, description="PostgreSQL settings, passed as -c name=value")
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, description="extra environment variables")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    network: DockerName | None = Field(None,
                                description="user-defined network to create and join (phase 2)")
    aliases: list[DockerName] | None = Field(
        None, description="names the container answers to on the network (default: the step's name)")
    data_dir: ContainerPath = Field("/var/lib/postgresql/data", description="PGDATA")
    wait: Duration = Field(120.0, description="how long to wait for the container to be healthy")

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict) -> dict:
        for key in value:
            if not SETTING.match(key):
                raise KeyedValueError(f"{key!r} is not a PostgreSQL setting name (lower case, "
                                      f"e.g. max_connections)", key)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict) -> dict:
        for key in value:
            if key in RESERVED_ENV:
                raise KeyedValueError(f"set {key} with the step's '{RESERVED_ENV[key]}' key, not env", key)
        return value

    @property
    def db(self) -> str:
        return self.database or self.user


# --- the configuration, through the shared comparison table (orchestrator.containers) --------

IGNORED_ENV = frozenset({"POSTGRES_PASSWORD"})     # compared through the password's salted hash
LEGACY_HASHED = ("name", "image", "command", "env", "ports", "volume", "healthcheck", "labels")


def desired_config(spec: DbContainerSpec, labels: dict[str, str], image: dict | None,
                   aliases: list[str] | None = None) -> ContainerConfig:
    env = {"POSTGRES_USER": spec.user, "POSTGRES_DB": spec.db, "PGDATA": spec.data_dir, **spec.env}
    command = ["postgres"]
    for key, value in sorted(spec.settings.items()):
        command += ["-c", f"{key}={setting_text(value)}"]
    hc = spec.healthcheck
    test = hc.test or f"pg_isready -h 127.0.0.1 -U {spec.user} -d {spec.db}"
    test = ["CMD-SHELL", test] if isinstance(test, str) else ["CMD", *test]
    return effective(
        name=spec.container, image_ref=spec.image, image=image, command=command, entrypoint=None, env=env,
        ports=spec.ports, mounts=[("volume", spec.volume, spec.data_dir, False)],
        healthcheck=health_tuple(test, int(hc.interval * NS), int(hc.timeout * NS), hc.retries,
                                 int(hc.start_period * NS)),
        labels={**labels, **spec.labels}, restart=(spec.restart, 0), network=spec.network,
        aliases=aliases, ignore_env=IGNORED_ENV)


def actual_db_config(container: dict, image: dict | None, network: str | None,
                     want: ContainerConfig | None = None) -> ContainerConfig:
    return actual_config(container, image, network=network, ignore_env=IGNORED_ENV, want=want)


def config_hash(config: ContainerConfig) -> str:
    """The hash label's value, computed as orchestrate always did for this step (so an upgrade of
    orchestrate recreates no database container): over the fields that force a recreate."""
    cfg = masked(config)
    volume = next(((src, dst) for kind, src, dst, _ro in cfg.mounts if kind == "volume"), (None, ""))
    values = {"volume": volume, **{f: getattr(cfg, f) for f in LEGACY_HASHED if f != "volume"}}
    return digest({f: values[f] for f in LEGACY_HASHED})[7:23]


# --- observation ---------------------------------------------------------------------------

@dataclass
class Observed:
    image: dict | None = None
    container: dict | None = None          # the container this step manages now (by name or label)
    volume: dict | None = None
    network: dict | None = None
    volume_users: list[str] = field(default_factory=list)   # other running containers on the volume
    data_pg_version: str | None = None     # PG_VERSION in the data directory, if known
    system_id: str | None = None           # the cluster's system identifier (unique per initdb)
    password_ok: bool | None = None        # None: could not check by connecting
    port_conflicts: list[str] = field(default_factory=list)
    network_planned: bool = False          # an earlier network step of the plan creates it

    @property
    def running(self) -> bool:
        return bool(self.container) and self.container["State"].get("Status") == "running"

    @property
    def volume_created(self) -> str | None:
        return ((self.volume or {}).get("Labels") or {}).get(VOLUME_LABEL)

    @property
    def health(self) -> str | None:
        if not self.container:
            return None
        return ((self.container["State"].get("Health") or {}).get("Status"))


def image_major(image_ref: str, image: dict | None) -> str | None:
    """The PostgreSQL major version an image runs: its PG_MAJOR variable (official image), else
    the first number of its tag (``postgres:16-alpine`` -> 16)."""
    env = env_dict(((image or {}).get("Config") or {}).get("Env"))
    if env.get("PG_MAJOR"):
        return env["PG_MAJOR"].split(".")[0]
    tag = image_ref.rsplit("/", 1)[-1].partition(":")[2]
    match = re.match(r"(\d+)", tag)
    return match.group(1) if match else None


# --- the pure diff ---------------------------------------------------------------------------

def diff_db_container(want: ContainerConfig, want_hash: str, obs: Observed, *, recorded: dict,
                      spec: DbContainerSpec, password: str, major: str | None) -> Diff:
    """Desired vs observed, as change objects. Pure: reads only its arguments."""
    d = Diff()
    rec_obs = recorded.get("observed") or {}
    rec_out = recorded.get("outputs") or {}

    # The data volume, and whether its data is the data we recorded.
    volume_new = obs.volume is None
    recorded_here = rec_obs.get("volume") == spec.volume
    same_volume = (not volume_new and recorded_here
                   and rec_obs.get("volume_created") == obs.volume_created)
    if volume_new:
        d.changes.append(Change(Action.CREATE, "volume", None, spec.volume, "the data volume does not exist"))
        if recorded_here:
            d.warnings.append(
                f"DATA LOSS: volume {spec.volume} held this database at the last apply and no longer "
                f"exists. The data that was in it is gone; a new, empty volume will be created. "
                f"Restore a backup into it if you have one.")
    elif recorded_here and not same_volume:
        d.warnings.append(
            f"DATA LOSS: volume {spec.volume} was removed and created again since the last apply "
            f"(recorded {rec_obs.get('volume_created')}, now {obs.volume_created}). The data recorded "
            f"before is not in it.")
    elif (recorded_here and obs.system_id and rec_obs.get("system_id")
          and obs.system_id != rec_obs["system_id"]):
        d.warnings.append(
            f"DATA LOSS: the data directory in volume {spec.volume} was initialised again since the "
            f"last apply (PostgreSQL system identifier {rec_obs['system_id']} is now {obs.system_id}). "
            f"The data recorded before is not in it.")
    if not volume_new and (obs.volume.get("Labels") or {}).get("orchestrate.plan") is None:
        d.notes.append(f"volume {spec.volume} exists and was not created by orchestrate: it is "
                       f"used as it is (its data is kept) and never removed by destroy")
    if obs.volume_users:
        d.problems.append(
            f"volume {spec.volume} is in use by running container(s) {', '.join(obs.volume_users)} that "
            f"this step does not manage; two PostgreSQL servers must never share a data directory. "
            f"Stop them first (docker stop {' '.join(obs.volume_users)}).")

    if spec.network and obs.network is None and not obs.network_planned:
        d.changes.append(Change(Action.CREATE, "network", None, spec.network, "the network does not exist"))
    if obs.image is None:
        d.notes.append(f"image {spec.image} is not on this Docker engine: apply will pull it")

    # PostgreSQL major version of the data directory vs the image.
    data_version = obs.data_pg_version
    if data_version is None and same_volume:
        data_version = rec_obs.get("pg_version")
    if data_version and major and data_version != major and obs.image is None:
        # only the tag says so: the image may not exist at all, which apply's pull reports
        d.notes.append(f"if image {spec.image} runs PostgreSQL {major}, as its tag suggests, it cannot open "
                       f"the PostgreSQL {data_version} data directory in volume {spec.volume}: apply pulls "
                       f"it, then refuses to start it")
    elif data_version and major and data_version != major:
        d.problems.append(
            f"volume {spec.volume} holds a PostgreSQL {data_version} data directory but image "
            f"{spec.image} runs PostgreSQL {major}, which cannot open it. Keep an image of version "
            f"{data_version}, or move the data: dump it (pg_dump) and restore it into a new volume, "
            f"or upgrade the directory with pg_upgrade.")

    # The container, field by field.
    if obs.container is None:
        d.changes.append(Change(Action.CREATE, "container", None, spec.container,
                                "the container does not exist" + ("" if volume_new else
                                                                  f"; it will use the existing volume {spec.volume}")))
    else:
        have = actual_db_config(obs.container, obs.image, spec.network, want)
        d.changes += compare(want, want_hash, obs.container, obs.image, have)
        if problem := paused_problem(obs.container, spec.container):
            d.problems.append(problem)

        # Credentials: POSTGRES_* are ignored once the volume is initialised.
        if not volume_new:
            env = env_dict((obs.container.get("Config") or {}).get("Env"))
            for key, value, what in (("POSTGRES_USER", spec.user, "user"), ("POSTGRES_DB", spec.db, "database")):
                if env.get(key) and env[key] != value:
                    d.problems.append(_initialised_error(spec, what, env[key], value))
    if obs.container is None and same_volume:
        for key, value, what in (("user", spec.user, "user"), ("database", spec.db, "database")):
            if rec_out.get(key) and rec_out[key] != value:
                d.problems.append(_initialised_error(spec, what, rec_out[key], value))

    if not volume_new:
        recorded_hash = (recorded.get("secrets") or {}).get("password")
        stale = obs.password_ok is False or (
            obs.password_ok is None and recorded_hash is not None and not hash_matches(password, recorded_hash))
        if stale:
            d.changes.append(Change(
                Action.UPDATE, "password", REDACTED, REDACTED,
                "PostgreSQL ignores POSTGRES_PASSWORD once the volume is initialised; apply sets the "
                "new password with ALTER ROLE inside the database", secret=True))
    for conflict in obs.port_conflicts:
        d.problems.append(conflict)
    return d


def _initialised_error(spec: DbContainerSpec, what: str, old: str, new: str) -> str:
    return (f"{what} changed from {old!r} to {new!r}, but volume {spec.volume} is already initialised "
            f"and PostgreSQL ignores POSTGRES_{'USER' if what == 'user' else 'DB'} from now on. Keep "
            f"{old!r} in the plan; or create the new {what} inside the database yourself "
            f"(CREATE {'ROLE' if what == 'user' else 'DATABASE'} ...) and then change the plan; or back "
            f"up, remove the volume (orchestrate destroy --volumes) and apply to initialise afresh.")


# --- the step --------------------------------------------------------------------------------

class DbContainer(Resource):
    """PostgreSQL in a Docker container with a named data volume."""
    type = "db-container"
    Spec = DbContainerSpec
    spec: DbContainerSpec

    def _static_outputs(self) -> dict[str, Any]:
        spec = self.spec
        user, pw, db = quote(spec.user, safe=""), quote(spec.password, safe=""), quote(spec.db, safe="")
        internal = f"postgresql+psycopg://{user}:{pw}@{self.service_host}:5432/{db}"
        hc = spec.healthcheck
        out = {"user": spec.user, "password": spec.password, "database": spec.db,
               "container": spec.container, "volume": spec.volume, "image": spec.image,
               "internal_url": internal, "container_id": "(known after apply)",
               "host": None, "port": None, "url": internal,
               # the rest lets templates reproduce the container (e.g. as a Compose service)
               "restart": spec.restart, "data_dir": spec.data_dir, "network": spec.network,
               "aliases": self.aliases,
               "ports": [f"{p.host_ip}:{p.host_port}:{p.container_port}/{p.proto}" for p in spec.ports],
               "command": list(desired_config(spec, {}, None).command),
               "healthcheck": {"test": hc.test or f"pg_isready -h 127.0.0.1 -U {spec.user} -d {spec.db}",
                               "interval": f"{hc.interval:g}s", "timeout": f"{hc.timeout:g}s",
                               "retries": hc.retries, "start_period": f"{hc.start_period:g}s"},
               "env": dict(spec.env)}
        p = self._published
        if p is not None:
            address = self.rc.target.address
            out["host"], out["port"] = p.client_host(address), p.host_port
            out["url"] = f"postgresql+psycopg://{user}:{pw}@{p.client_netloc(address)}/{db}"
        return out

    @property
    def _published(self):
        """The port PostgreSQL is published on (None: it is not)."""
        return next((p for p in self.spec.ports if p.container_port == 5432 and p.proto == "tcp"), None)

    @property
    def aliases(self) -> list[str]:
        return network_aliases(self.spec.network, self.spec.aliases, self.step.name)

    @property
    def service_host(self) -> str:
        """The host name other containers reach the database by: its first alias on the plan's
        network (``postgres``), else the container's name."""
        return (self.aliases or [self.spec.container])[0]

    @property
    def login(self) -> tuple[str, str]:
        """(role, database) that clients such as pg_dump connect as and to."""
        return self.spec.user, self.spec.db

    def throwaway_server(self) -> tuple[str, str]:
        """(image, data directory) of a throwaway server for this database (a drill, a preview):
        the container's own image."""
        return self.spec.image, self.spec.data_dir

    def secret_inputs(self) -> dict[str, str]:
        return {"password": self.spec.password}

    # observe ---------------------------------------------------------------------------------

    def _desired(self, image: dict | None) -> tuple[ContainerConfig, str]:
        want = desired_config(self.spec, self.own_labels, image, self.aliases)
        return want, config_hash(want)

    def observe(self) -> Observed:
        eng, spec = self.rc.engine, self.spec
        obs = Observed(image=eng.image(spec.image), volume=eng.volume(spec.volume))
        obs.container = eng.container(spec.container)
        if obs.container is None:   # ours under another name: the plan renamed it
            recorded = eng.container(rec_id) if (rec_id := (self.recorded.get("observed") or {}).get("container_id")) else None
            if recorded is not None and is_mine(recorded, self.rc.plan.name, self.step.name) and not recorded["Name"].endswith(OLD_SUFFIX):
                obs.container = recorded
        if spec.network:
            obs.network = eng.network(spec.network)
            obs.network_planned = any(getattr(self.rc.resources.get(s.name), "type", None) == "network"
                                      and self.rc.resources[s.name].spec.name == spec.network
                                      for s in self.rc.plan.steps[:self.step.index])
        if obs.volume is not None:
            if not obs.running:   # about to start a server on this data: nobody else may use it
                mine = (obs.container or {}).get("Id")
                obs.volume_users = [name for cid, name in eng.running_on_volume(spec.volume)
                                    if cid != mine and not name.endswith(OLD_SUFFIX)]
            rec = self.recorded.get("observed") or {}
            if obs.container is not None and obs.running and rec.get("container_id") == obs.container["Id"] \
                    and rec.get("volume") == spec.volume and rec.get("volume_created") == obs.volume_created:
                # The same container has held this same volume since it was recorded: its data
                # directory cannot have been replaced under the running server.
                obs.data_pg_version, obs.system_id = rec.get("pg_version"), rec.get("system_id")
            elif obs.container is not None:
                obs.data_pg_version, obs.system_id = self._read_data_identity(obs.container["Id"])
        # The lockfile's salted hash vouches for an unchanged password; only a password that
        # differs from the recorded one (or none recorded) is probed with a real connection.
        recorded_hash = (self.recorded.get("secrets") or {}).get("password")
        if (obs.volume is not None and obs.running and obs.health == "healthy"
                and not hash_matches(spec.password, recorded_hash)):
            obs.password_ok = self._password_works()
        obs.port_conflicts = self._port_conflicts(obs)
        return obs

    def _read_data_identity(self, container_id: str) -> tuple[str | None, str | None]:
        """PG_VERSION and the system identifier (first 8 bytes of global/pg_control) of the
        data directory, read through the container (works when it is stopped too)."""
        eng = self.rc.engine
        raw = eng.read_file(container_id, f"{self.spec.data_dir}/PG_VERSION")
        version = raw.decode().strip() if raw else None
        control = eng.read_file(container_id, f"{self.spec.data_dir}/global/pg_control") if raw else None
        system_id = str(struct.unpack("<Q", control[:8])[0]) if control and len(control) >= 8 else None
        return version, system_id

    def _password_works(self) -> bool | None:
        out, published = self._static_outputs(), self._published
        if published is None or (self.rc.engine.remote and published.loopback):   # nothing here reaches it
            return None
        import psycopg
        try:
            psycopg.connect(host=out["host"], port=out["port"], user=self.spec.user,
                            password=self.spec.password, dbname=self.spec.db, connect_timeout=3).close()
            return True
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return False
            return None

    def _port_conflicts(self, obs: Observed) -> list[str]:
        held = set()
        if obs.container is not None:
            held = set(actual_db_config(obs.container, obs.image, None).ports)
        return port_conflicts(self.rc.engine, self.spec.ports, held, self.spec.container, self.step.name,
                              engine_local=self.spec.engine_local_ports)

    # diff ------------------------------------------------------------------------------------

    def diff(self, obs: Observed) -> Diff:
        want, want_hash = self._desired(obs.image)
        return diff_db_container(want, want_hash, obs, recorded=self.recorded, spec=self.spec,
                                 password=self.spec.password, major=image_major(self.spec.image, obs.image))

    # apply -----------------------------------------------------------------------------------

    def apply(self, obs: Observed, diff: Diff) -> str:
        eng, spec = self.rc.engine, self.spec
        done = []
        if spec.network and obs.network is None:
            eng.create_network(spec.network, self.labels)
            done.append(f"created network {spec.network}")
        if obs.volume is None:
            created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            eng.create_volume(spec.volume, {**self.labels, **spec.labels, VOLUME_LABEL: created})
            done.append(f"created volume {spec.volume}")
        image = obs.image
        if image is None:
            eng.pull(spec.image, self.rc.progress)
            image = eng.image(spec.image)
        fields = set(diff.fields())
        if obs.container is None or Action.RECREATE in {c.action for c in diff.changes}:
            self._replace(obs.container, image)
            done.append(("recreated container" if obs.container else "created container")
                        + (f" ({', '.join(diff.fields(Action.RECREATE))})" if obs.container else ""))
        else:
            cid = obs.container["Id"]
            want, _ = self._desired(image)
            done += update_in_place(eng, obs.container, want, fields)
            if "state" in fields:
                self.lifecycle.start(cid)
                done.append("started container")
            self.lifecycle.wait_healthy(cid, patient="state" not in fields)
        if "password" in fields:
            self._set_password()
            done.append("set the new password with ALTER ROLE")
        return "; ".join(done) or "ok"

    def _spec(self, image: dict | None) -> ContainerSpec:
        spec = self.spec
        want, want_hash = self._desired(image)
        env = {"POSTGRES_USER": spec.user, "POSTGRES_PASSWORD": spec.password, "POSTGRES_DB": spec.db,
               "PGDATA": spec.data_dir, **spec.env}
        return ContainerSpec(
            name=spec.container, image=spec.image, command=list(want.command), env=env,
            labels=labels_for(dict(want.labels), extra_labels(), want_hash),
            ports=[tuple(p) for p in spec.ports], volumes=[(spec.volume, spec.data_dir)],
            restart=(spec.restart, 0),
            healthcheck=docker_healthcheck(want.healthcheck),
            network=spec.network, aliases=self.aliases)

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.rc.engine, name=self.spec.container, step=self.step.name, wait=self.spec.wait,
                         progress=self.rc.progress)

    def _mine_by_name(self, obs: Observed | None = None) -> list[dict]:
        """This deployment's containers: the plan's name, the recorded one, and what an
        interrupted replace set aside. Never "every container with the plan's label": the same
        plan may be deployed twice on one engine (another folder, another container name)."""
        eng, spec = self.rc.engine, self.spec
        recorded = (self.recorded.get("observed") or {}).get("container")
        names = [spec.container, spec.container + OLD_SUFFIX]
        if recorded and recorded != spec.container:
            names += [recorded, recorded + OLD_SUFFIX]
        found = {}
        for name in names:
            c = eng.container(name)
            if c is not None and is_mine(c, self.rc.plan.name, self.step.name):
                found[c["Id"]] = c
        return list(found.values())

    def _replace(self, old: dict | None, image: dict | None) -> None:
        """Create the container; an old one is stopped and set aside until the new one is
        healthy, and put back if the new one fails (a crash midway is repaired by the next
        apply, which removes what it set aside)."""
        eng = self.rc.engine
        for leftover in self._mine_by_name():
            if leftover["Name"].endswith(OLD_SUFFIX) and (old is None or leftover["Id"] != old["Id"]):
                eng.remove_container(leftover["Id"], leftover["Name"].lstrip("/"))
        self.lifecycle.replace(old, lambda: eng.create_container(self._spec(image)),
                               before_start=lambda cid: self._check_data_version(cid, image))

    def _check_data_version(self, container_id: str, image: dict | None) -> None:
        raw = self.rc.engine.read_file(container_id, f"{self.spec.data_dir}/PG_VERSION")
        major = image_major(self.spec.image, image)
        if raw and major and raw.decode().strip() != major:
            raise StepFailed(
                f"volume {self.spec.volume} holds a PostgreSQL {raw.decode().strip()} data directory but "
                f"image {self.spec.image} runs PostgreSQL {major}; the container was not started",
                hint="keep an image of the data's version, or dump and restore the data into a new "
                     "volume, or upgrade it with pg_upgrade")

    def _set_password(self) -> None:
        """ALTER ROLE over the container's local socket; the password travels in the exec's
        environment (never on a command line) and is read by psql as a variable."""
        spec = self.spec
        script = ('printf "%s\\n" "ALTER ROLE :\\"role\\" WITH PASSWORD :\'pw\';" | '
                  'psql -X -q -v ON_ERROR_STOP=1 -U "$ORCH_USER" -d "$ORCH_DB" '
                  '-v role="$ORCH_USER" -v pw="$ORCH_PW"')
        info = self.rc.engine.container(spec.container)
        code, output = self.rc.engine.exec(
            info["Id"], spec.container, ["sh", "-c", script],
            env={"ORCH_USER": spec.user, "ORCH_DB": spec.db, "ORCH_PW": spec.password})
        if code != 0:
            raise StepFailed(f"could not set the new password inside the database: {output.strip()}",
                             hint="the image must allow local socket connections for the user, as the "
                                  "official postgres image does")
        if self._password_works() is False:
            raise StepFailed("the new password was set but a connection with it was refused")

    def settle(self, obs: Observed) -> None:
        if obs.running and obs.health not in ("healthy", None):
            self.lifecycle.wait_healthy(obs.container["Id"], patient=True)

    # record, outputs, destroy ----------------------------------------------------------------

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        out = self._static_outputs()
        if obs is not None and obs.container is not None:
            out["container_id"] = obs.container["Id"]
        return out

    def record(self, obs: Observed) -> dict[str, Any]:
        c = obs.container or {}
        labels = (c.get("Config") or {}).get("Labels") or {}
        actual = fingerprint(actual_db_config(c, obs.image, self.spec.network)) if c else None
        return {
            "config": actual,     # the container's configuration as it is: a change by hand shows
            "container": self.spec.container,
            "container_id": c.get("Id"),
            "image": self.spec.image,
            "image_id": c.get("Image"),
            "config_hash": labels.get(HASH_LABEL),
            "running": obs.running,
            "volume": self.spec.volume if obs.volume else None,
            "volume_created": obs.volume_created,
            "pg_version": obs.data_pg_version,
            "system_id": obs.system_id,
        }

    def destroy(self, obs: Observed, *, volumes: bool) -> list[str]:
        eng, spec = self.rc.engine, self.spec
        said = []
        mine = self._mine_by_name()
        for c in mine:
            eng.remove_container(c["Id"], c["Name"].lstrip("/"))
            said.append(f"removed container {c['Name'].lstrip('/')}")
        if obs.container is not None and obs.container["Id"] not in {c["Id"] for c in mine}:
            said.append(f"kept container {spec.container}: it was not created by this plan")
        if obs.volume is not None and (done := self.destroy_volume(spec.volume, volumes=volumes)):
            said.append(done)
        if spec.network and obs.network is not None:
            labels = obs.network.get("Labels") or {}
            # made by this step (a network step's network is that step's to remove)
            if labels.get("orchestrate.plan") == self.rc.plan.name and labels.get("orchestrate.step") == self.step.name:
                net = eng.network(spec.network) or {}
                if not net.get("Containers"):
                    eng.remove_network(spec.network)
                    said.append(f"removed network {spec.network}")
        return said

