"""Jobs: a command run to completion in a throwaway container of an image (migrations in the
application's image; later steps reuse it).

A job's container is named ``<plan>-<purpose>-<8 hex>`` and carries the labels of the step that
runs it plus :data:`~orchestrator.throwaway.PURPOSE_LABEL` and
:data:`~orchestrator.throwaway.OWNER_LABEL`, so that the next command of the plan removes what a
``kill -9`` left (:func:`orchestrator.throwaway.remove_leftovers`), never a container a live run
still uses. It is removed whatever happens (an interrupt included). Its output streams to the log
(``-v``), redacted; secrets reach it only through ``env``, never its command line. A job that runs
past its timeout is stopped and fails with a clear error; a non-zero exit fails (with
``check=True``) with the job's last lines.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from .docker_engine import ContainerSpec, Engine
from .errors import StepFailed
from .redact import redact
from .throwaway import OWNER_LABEL, PURPOSE_LABEL, owner

TAIL = 20   # the job's last lines in an error


@dataclass
class JobResult:
    code: int
    lines: list[str] = field(default_factory=list)   # everything the job printed, redacted

    def tail(self, n: int = TAIL) -> list[str]:
        return self.lines[-n:]


class JobFailed(StepFailed):
    """The job exited with a non-zero code."""

    def __init__(self, message: str, result: JobResult, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.result = result


class JobTimeout(StepFailed):
    """The job ran past its timeout and was stopped."""

    def __init__(self, message: str, lines: list[str], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.lines = lines


def job_name(plan: str, purpose: str) -> str:
    return f"{plan}-{purpose}-{uuid.uuid4().hex[:8]}"


def job_labels(labels: dict[str, str], purpose: str) -> dict[str, str]:
    """The step's labels plus those that let the next run recognise a leftover of this one."""
    return {**labels, PURPOSE_LABEL: purpose, OWNER_LABEL: owner()}


def as_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def shown(lines: list[str]) -> str:
    """Lines as an error message shows them, indented under it."""
    return "".join(f"\n  | {line}" for line in lines) if lines else "\n  | (no output)"


def format_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


class _Follower(threading.Thread):
    """Streams the job's output to the log, line by line, while it runs (only for ``-v``: the
    job's lines in the result are read whole once it ended)."""

    def __init__(self, engine: Engine, cid: str, log: Callable[[str], None], prefix: str):
        super().__init__(daemon=True)
        self.engine, self.cid, self.log, self.prefix = engine, cid, log, prefix
        self.stop = threading.Event()

    def run(self) -> None:
        tail: int | str = "all"
        part = ""
        while not self.stop.is_set():
            try:
                for chunk in self.engine.follow_logs(self.cid, tail=tail):
                    part += chunk.decode(errors="replace")
                    *done, part = part.split("\n")
                    for line in done:
                        if line.strip():
                            self.log(f"{self.prefix}{redact(line.rstrip())}")
                return    # the stream ends when the container does
            except Exception:  # a silence longer than the client's timeout, or the container went
                try:
                    if self.stop.is_set() or self.engine.container(self.cid) is None:
                        return
                except Exception:  # the daemon is gone too: the main thread says so
                    return
                tail = 0        # follow again from now on
            finally:
                if part.strip():
                    self.log(f"{self.prefix}{redact(part.rstrip())}")
                part = ""


def run_job(engine: Engine, *, plan: str, purpose: str, image: str, command: list[str],
            env: dict[str, str], network: str | None, labels: dict[str, str], timeout: float,
            progress: Callable[[str], None] = lambda _m: None, log: Callable[[str], None] = lambda _m: None,
            check: bool = False, user: str | None = None) -> JobResult:
    """Run ``command`` in a new container of ``image`` (on ``network``, with ``env``) until it
    exits; return its exit code and output lines. The container is removed whatever happens.
    Raises :class:`JobTimeout` after ``timeout`` seconds, and (``check``) :class:`JobFailed` on a
    non-zero exit, each with the job's last lines."""
    name = job_name(plan, purpose)
    cid = None
    follower = None
    try:
        cid = engine.create_container(ContainerSpec(
            name=name, image=image, command=list(command), env=dict(env), labels=job_labels(labels, purpose),
            ports=[], volumes=[], restart=("no", 0), network=network, user=user,
            healthcheck={"test": ["NONE"]}))     # the image's HEALTHCHECK asks a server a job does not run
        progress(f"running the {purpose} job {name} (image {image})")
        engine.start(cid, name)
        follower = _Follower(engine, cid, log, f"{purpose}: ")
        follower.start()
        code = engine.wait_exit(cid, name, timeout)
        if code is None:
            lines = as_lines(engine.logs(cid, tail=TAIL))
            raise JobTimeout(f"the {purpose} job {name} did not finish within {format_duration(timeout)}; it was "
                             f"stopped and removed. Its last lines:{shown(lines)}", lines,
                             hint="raise the job's timeout if it needs longer; -v shows its whole output")
        follower.join(5)
        result = JobResult(code, as_lines(engine.logs(cid, tail="all")))
        if code and check:
            raise JobFailed(f"the {purpose} job {name} exited with code {code}; its last lines:"
                            f"{shown(result.tail())}", result, hint="-v shows the job's whole output")
        return result
    finally:
        # removed even on KeyboardInterrupt; a kill -9 is repaired by the next command of the plan
        if follower is not None:
            follower.stop.set()
        if cid is None:      # a create that failed halfway may still have made it
            try:
                cid = (engine.container(name) or {}).get("Id")
            except Exception:  # the failure being reported matters more; the next run removes it
                cid = None
        if cid is not None:
            engine.remove_container(cid, name, throwaway=True)
