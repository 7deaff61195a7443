"""A throwaway PostgreSQL container: made for one job (a restore drill, a migration preview) and
removed whatever happens.

Container and volume share the name ``<plan>-<purpose>-<tag>`` and carry the labels
``orchestrate.throwaway=<purpose>`` and ``orchestrate.owner=<host>:<pid>``, so that the next
command of the plan can recognise and remove what a killed run left (:mod:`orchestrator.leftovers`)
without touching one that a live process still uses.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _random
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

from .docker_engine import ContainerSpec, Engine
from .errors import StepFailed
from .redact import register

PURPOSE_LABEL = "orchestrate.throwaway"
OWNER_LABEL = "orchestrate.owner"


def owner() -> str:
    """This process, as the owner label names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Throwaway:
    name: str
    container_id: str
    port: int
    user: str
    password: str
    database: str
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}:{self.password}@{host}:{self.port}/{self.database}"


@contextlib.contextmanager
def throwaway_postgres(engine: Engine, *, plan: str, purpose: str, image: str, user: str, database: str,
                       data_dir: str, labels: dict[str, str], progress: Callable[[str], None] = lambda m: None,
                       wait: float = 120) -> Iterator[Throwaway]:
    """A PostgreSQL container named ``<plan>-<purpose>-<tag>`` with a volume of the same name, both
    labelled (``labels`` plus the throwaway and owner labels), published on a random 127.0.0.1
    port (on a remote engine: a random port of its address, the only way a client here reaches
    it; the password is random and the container lives for one job), healthy when yielded;
    container and volume are removed whatever happens."""
    name = f"{plan}-{purpose}-{uuid.uuid4().hex[:8]}"
    labels = {**labels, PURPOSE_LABEL: purpose, OWNER_LABEL: owner()}
    password = _random.token_urlsafe(24)
    register(password)
    cid = None
    try:
        engine.create_volume(name, labels)
        cid = engine.create_container(ContainerSpec(
            name=name, image=image, command=["postgres"], labels=labels,
            env={"POSTGRES_USER": user, "POSTGRES_PASSWORD": password, "POSTGRES_DB": database},
            ports=[("0.0.0.0" if engine.remote else "127.0.0.1", None, 5432, "tcp")],   # Docker picks a free port
            volumes=[(name, data_dir)], restart=("no", 0),
            healthcheck={"test": ["CMD-SHELL", f"pg_isready -h 127.0.0.1 -U {user} -d {database}"],
                         "interval": 500_000_000, "timeout": 5_000_000_000, "retries": 120, "start_period": 0}))
        engine.start(cid, name)
        progress(f"waiting for the throwaway container {name}")
        info = wait_healthy(engine, cid, name, wait)
        port = int(info["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"])
        yield Throwaway(name, cid, port, user, password, database, engine.target.address or "127.0.0.1")
    finally:
        # removed even on KeyboardInterrupt; a kill -9 is repaired by the next command of the plan
        if cid is not None:
            engine.remove_container(cid, name, throwaway=True)
        if engine.volume(name) is not None:
            engine.remove_volume(name)


def wait_healthy(engine: Engine, cid: str, name: str, seconds: float) -> dict:
    """Wait until the container is healthy and return its inspect; bounded by ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        info = engine.container(cid) or {}
        state = info.get("State") or {}
        if (state.get("Health") or {}).get("Status") == "healthy":
            return info
        if state.get("Status") in ("exited", "dead"):
            why = f"exited with code {state.get('ExitCode')}"
            break
        if time.monotonic() > deadline:
            why = f"was not healthy after waiting {seconds:g}s"
            break
        time.sleep(0.25)
    raise StepFailed(f"throwaway container {name} {why}; its last log lines:\n"
                     f"{engine.logs(cid, 20).rstrip() or '(no output)'}")


def _owner_gone(value: str | None) -> bool:
    """Whether the process an owner label names has ended. Another host's process, or this one,
    counts as alive; no owner label at all is a drill of an earlier version (gone)."""
    if value is None:
        return True
    host, _, pid = value.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return process_ended(int(pid))


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` of this machine has ended (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_leftover(name: str, labels: dict[str, str], plan: str) -> bool:
    """A throwaway of ``plan`` whose owner has ended: the name prefix, the plan's label and the
    throwaway label (or the drill label of earlier versions), and never a data volume."""
    return (name.startswith(f"{plan}-") and labels.get("orchestrate.plan") == plan
            and (PURPOSE_LABEL in labels or "orchestrate.drill" in labels)
            and "orchestrate.volume-created" not in labels and _owner_gone(labels.get(OWNER_LABEL)))


def remove_leftovers(engine: Engine, plan: str) -> list[str]:
    """Remove the throwaway containers and volumes that killed runs of ``plan`` left; say which."""
    removed = []
    for c in engine.containers_labelled(f"orchestrate.plan={plan}"):
        name = c["Names"][0].lstrip("/")
        if is_leftover(name, c.get("Labels") or {}, plan):
            engine.remove_container(c["Id"], name, throwaway=True)
            removed.append(f"container {name}")
    for v in engine.volumes_labelled(f"orchestrate.plan={plan}"):
        if is_leftover(v["Name"], v.get("Labels") or {}, plan):
            engine.remove_volume(v["Name"])
            removed.append(f"volume {v['Name']}")
    return removed
