"""The image step: builds an image from a Dockerfile and a context, only when something the build
depends on changed.

The build's digest covers everything it depends on: the files the context sends (after
``.dockerignore``: names, modes, content; see :mod:`orchestrator.buildcontext`), the Dockerfile's
path, the build arguments, the target stage, the labels, and the ids of the base images (``FROM``
lines with the build arguments' values). It is a label on the image (:data:`DIGEST_LABEL`); equal
digests mean nothing is built. Otherwise the plan says ``rebuild`` and why: the files added,
changed or removed since the last build (the lockfile keeps the last build's table), the build
arguments, or a base image. Builds use docker-py's legacy builder; output streams with ``-v``.

No secret may reach an image: build arguments are visible in ``docker history`` and labels in
``docker inspect``, so a ``{{ secrets.* }}`` value (or any value holding a secret) is refused at
validation; a file of the context holding one of the plan's secrets (a rendered ``.env`` not in
``.dockerignore``) stops plan and apply.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from .. import buildcontext, dockerfile
from ..buildcontext import Scan
from ..changes import Action, Change, Diff
from ..docker_engine import BuildFailed
from ..errors import KeyedValueError, StepFailed
from ..fields import EnvName, Image, LabelKey, LabelValue, NonEmptyText, RelPath, Text
from ..lockfile import digest
from ..plan import Strict
from ..redact import found as secrets_in
from .base import Resource

DIGEST_LABEL = "orchestrate.build-digest"
SHOWN = 5                       # files named in a plan, at most
SECRET_TEMPLATE = re.compile(r"(\{\{|\{%)[^}]*\bsecrets\b")


def _as_text(value: Any) -> Any:
    """A number is written as Docker reads a build argument: as text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


BuildArg = Annotated[Text, BeforeValidator(_as_text)]


class ImageSpec(Strict):
    context: RelPath = Field(".", description="folder sent to the build (relative to the plan root)")
    dockerfile: NonEmptyText = Field("Dockerfile", description="the Dockerfile, relative to the context")
    tag: Image = Field(description="name:tag of the built image, e.g. autodeploy-app:latest")
    build_args: dict[EnvName, BuildArg] = Field(
        default_factory=dict, description="build arguments (never a secret: docker history shows them)")
    target: NonEmptyText | None = Field(None, description="stage to build (multi-stage Dockerfile)")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, description="labels of the image")
    build_on: Literal["local", "engine"] = Field(
        "local", description="with a remote engine: build on this machine and send the image there "
                             "(local), or send the context and build on the engine")

    @field_validator("dockerfile")
    @classmethod
    def _inside_context(cls, value: str, info: ValidationInfo) -> str:
        context = info.data.get("context")
        if not isinstance(context, str):
            return value
        path = os.path.normpath(os.path.join(context, value))
        root = os.path.abspath(context)
        if os.path.isabs(value) or os.path.commonpath([root, os.path.abspath(path)]) != root:
            raise ValueError(f"{value!r} is not inside the context {context!r}: the Dockerfile is a path "
                             f"relative to the context, inside it")
        plan = (info.context or {}).get("plan")
        problem = plan.outside_root(path) if plan is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("tag")
    @classmethod
    def _no_digest(cls, value: str) -> str:
        if "@" in value:
            raise ValueError("a built image gets a name:tag, not a @digest")
        return value

    @field_validator("build_args", "labels")
    @classmethod
    def _no_secrets(cls, value: dict, info: ValidationInfo) -> dict:
        step = (info.context or {}).get("step")
        raw = (step.body or {}).get(info.field_name) if step is not None and isinstance(step.body, dict) else None
        what = "build argument" if info.field_name == "build_args" else "label"
        if isinstance(raw, str) and SECRET_TEMPLATE.search(raw):
            raise ValueError(f"a {what} must not come from a secret: {what}s are stored in the image, "
                             f"readable by anyone who can pull it (docker history, docker inspect)")
        for key, item in value.items():
            source = raw.get(key) if isinstance(raw, dict) else None
            if (isinstance(source, str) and SECRET_TEMPLATE.search(source)) or secrets_in(str(item)):
                raise KeyedValueError(
                    f"{what} {key} holds a secret; {what}s are stored in the image, readable by anyone who "
                    f"can pull it (docker history, docker inspect). Pass secrets at run time instead "
                    f"(the container's env)", key)
        return value


def previous_tag(ref: str) -> str:
    """``name:tag`` -> ``name:tag-previous`` (the build before the current one)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return f"{ref}:latest-previous"
    return f"{name}:{tag}-previous"


def swap_previous(engine, tag: str) -> str | None:
    """``orchestrate rollback``: swap ``tag`` and ``<tag>-previous``, so the previous build is named
    by the tag again and the current one by -previous (a second rollback returns to it). The new
    id the tag names; None when there is no previous build."""
    current, previous = engine.image(tag), engine.image(previous_tag(tag))
    if previous is None:
        return None
    engine.tag(previous["Id"], tag)
    if current is not None and current["Id"] != previous["Id"]:
        engine.tag(current["Id"], previous_tag(tag))
    return previous["Id"]


def drop_previous(engine, image_id: str, plan: str) -> bool:
    """Remove an earlier build of this plan that no tag names any more, unless a container still
    uses it (the container step drops it once it has replaced that container)."""
    from ..errors import DockerError
    info = engine.image(image_id)
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    if info is None or info.get("RepoTags") or labels.get("orchestrate.plan") != plan or DIGEST_LABEL not in labels:
        return False
    if engine.containers_using(image_id):
        return False
    try:
        engine.remove_image(image_id)
    except DockerError:
        return False
    return True


@dataclass
class Observed:
    image: dict | None = None                  # the image the tag names now
    scan: Scan | None = None                   # the context as it is now
    dockerfile: str = ""                       # the Dockerfile's text
    bases: dict[str, str | None] = field(default_factory=dict)   # base image -> its id (None: absent)
    base_lines: dict[str, int] = field(default_factory=dict)
    problem: str | None = None                 # the context or the Dockerfile cannot be read
    want: str | None = None                    # the build's digest (None: a base image is absent)
    remote: str | None = None                  # built here for this remote engine (its address)
    engine_image: dict | None = None           # what the tag names on that engine

    @property
    def shipped(self) -> bool:
        """The engine the containers run on has this build (always so when it is where we build)."""
        return self.remote is None or (self.image is not None and self.engine_image is not None
                                       and self.engine_image["Id"] == self.image["Id"])

    @property
    def have(self) -> str | None:
        return (((self.image or {}).get("Config") or {}).get("Labels") or {}).get(DIGEST_LABEL)

    @property
    def current(self) -> bool:
        return self.image is not None and self.want is not None and self.have == self.want


def build_digest(spec: ImageSpec, own_labels: dict[str, str], context: str, bases: dict[str, str | None]) -> str:
    return digest({"context": context, "dockerfile": os.path.normpath(spec.dockerfile), "build_args": spec.build_args,
                   "target": spec.target, "labels": {**own_labels, **spec.labels}, "bases": bases})


def _first(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def why_rebuild(obs: Observed, spec: ImageSpec, recorded: dict) -> str:
    """What changed since the image was built, from the lockfile's record of that build."""
    rec = recorded.get("observed") or {}
    if obs.have is None:
        return "the image was not built by orchestrate (it has no build digest)"
    built = buildcontext.decode(rec.get("context"))
    if rec.get("digest") != obs.have or built is None:
        return "the image was built from other sources than the lockfile records (by another run, or by hand)"
    reasons = []
    files = buildcontext.changes(built.hashes(), obs.scan.hashes()) if obs.scan else []
    if files:
        reasons.append("files " + _first(files))
    before, now = rec.get("build_args") or {}, spec.build_args
    args = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if args:
        reasons.append("build args " + ", ".join(args))
    for key, label in (("target", "target"), ("labels", "labels"), ("dockerfile", "Dockerfile path")):
        if rec.get(key) != (os.path.normpath(spec.dockerfile) if key == "dockerfile" else getattr(spec, key)):
            reasons.append(f"{label} changed")
    old_bases = rec.get("bases") or {}
    for ref, image_id in obs.bases.items():
        if image_id is None:
            reasons.append(f"base image {ref} is not on this engine")
        elif old_bases.get(ref) != image_id:
            reasons.append(f"base image {ref} changed")
    return "; ".join(reasons) or "the build's digest changed"


def diff_image(obs: Observed, spec: ImageSpec, recorded: dict, dockerfile_path: str) -> Diff:
    """Desired vs observed, as change objects. Pure: reads only its arguments."""
    d = Diff()
    if obs.problem:
        d.problems.append(obs.problem)
        return d
    if obs.scan.flagged:
        d.problems.append(
            f"the build context {spec.context} holds a secret of this plan in {_first(obs.scan.flagged)}: the "
            f"build would send it to Docker and a COPY would put it in the image's layers. Add "
            f"{'it' if len(obs.scan.flagged) == 1 else 'them'} to {os.path.join(spec.context, '.dockerignore')}")
    d.warnings += dockerfile.lint(obs.dockerfile, dockerfile_path)
    for ref, image_id in obs.bases.items():
        if image_id is None:
            d.notes.append(f"base image {ref} ({dockerfile_path}:{obs.base_lines[ref]}) is not on this Docker "
                           f"engine: apply will try to pull it")
    if obs.image is None:
        d.changes.append(Change(Action.CREATE, "image", None, spec.tag, "build: the image does not exist"))
    elif not obs.current:
        d.changes.append(Change(Action.RECREATE, "image", f"{spec.tag} ({obs.image['Id'][7:19]})", "rebuild",
                                why_rebuild(obs, spec, recorded)))
    elif not obs.shipped:
        there = f"{spec.tag} ({obs.engine_image['Id'][7:19]})" if obs.engine_image else None
        d.changes.append(Change(Action.UPDATE, "image", there, f"{spec.tag} ({obs.image['Id'][7:19]})",
                                f"send this machine's build to the engine at {obs.remote} (it "
                                f"{'has another build' if obs.engine_image else 'lacks it'})"))
    return d


class ImageStep(Resource):
    """Build an image from a Dockerfile and a context, only when what it depends on changed."""
    type = "image"
    Spec = ImageSpec
    spec: ImageSpec

    @property
    def context_dir(self) -> str:
        return str(self.rc.plan.resolve(self.spec.context))

    @property
    def dockerfile_path(self) -> str:
        """The Dockerfile as the plan names it (relative to the plan's root)."""
        return os.path.normpath(os.path.join(self.spec.context, self.spec.dockerfile))

    def check(self) -> None:
        if not os.path.isfile(os.path.join(self.context_dir, self.spec.dockerfile)):
            raise self.rc.plan.smap.error(self.step.path + ("dockerfile",),
                                          f"there is no file {self.dockerfile_path} (relative to the plan's root)")

    @property
    def builder(self):
        """The engine that builds: this machine's when the plan's engine is remote (the image is
        then sent there), unless ``build_on: engine``."""
        return self.rc.engine.local() if self.spec.build_on == "local" else self.rc.engine

    def _bases(self, text: str) -> tuple[dict[str, str | None], dict[str, int]]:
        refs = dockerfile.base_images(text, self.spec.build_args, self.spec.target)
        return ({ref: (self.builder.image(ref) or {}).get("Id") for _, ref in refs},
                {ref: line for line, ref in refs})

    def observe(self) -> Observed:
        obs = Observed(image=self.builder.image(self.spec.tag))
        if self.builder is not self.rc.engine:
            obs.remote = self.rc.target.address or self.rc.target.url
            obs.engine_image = self.rc.engine.image(self.spec.tag)
        try:
            with open(os.path.join(self.context_dir, self.spec.dockerfile), encoding="utf-8", errors="replace") as fh:
                obs.dockerfile = fh.read()
            cache = buildcontext.decode((self.recorded.get("observed") or {}).get("context"))
            obs.scan = buildcontext.scan(self.context_dir, self.spec.dockerfile, cache,
                                         flag=lambda data: bool(secrets_in(data.decode("utf-8", "replace"))))
        except OSError as exc:
            where = os.path.relpath(exc.filename, self.rc.plan.base_dir) if exc.filename else self.spec.context
            obs.problem = f"cannot read {where} (build context {self.spec.context}): {exc.strerror or exc}"
            return obs
        obs.bases, obs.base_lines = self._bases(obs.dockerfile)
        if None not in obs.bases.values():
            obs.want = build_digest(self.spec, self.own_labels, obs.scan.digest, obs.bases)
        return obs

    def diff(self, obs: Observed) -> Diff:
        return diff_image(obs, self.spec, self.recorded, self.dockerfile_path)

    def apply(self, obs: Observed, diff: Diff) -> str:
        said = self._build(obs, diff) if not obs.current else ""
        if self.builder is not self.rc.engine:
            said = "; ".join(filter(None, [said, self._ship()]))
        return said

    def _ship(self) -> str:
        """Send this machine's build to the remote engine unless it has it; the build it replaces
        there stays as ``<tag>-previous`` (rollback runs on that engine)."""
        eng, tag = self.rc.engine, self.spec.tag
        local = self.builder.image(tag)
        there = eng.image(tag)
        if there is not None and there["Id"] == local["Id"]:
            return ""
        eng.ship(tag, self.rc.progress)
        if there is not None:
            older = eng.image(previous_tag(tag))
            eng.tag(there["Id"], previous_tag(tag))
            if older is not None and older["Id"] not in (there["Id"], local["Id"]):
                drop_previous(eng, older["Id"], self.rc.plan.name)
        return f"sent {tag} ({local['Id'][7:19]}) to {self.rc.target.address or self.rc.target.url}"

    def _build(self, obs: Observed, diff: Diff) -> str:
        eng, spec = self.builder, self.spec
        for ref, image_id in obs.bases.items():
            if image_id is None:
                eng.pull(ref)
        bases, _ = self._bases(obs.dockerfile)
        want = build_digest(spec, self.own_labels, obs.scan.digest, bases)
        self.rc.progress(f"building {spec.tag}")
        try:
            image_id = eng.build_image(self.context_dir, spec.dockerfile, spec.tag, build_args=spec.build_args,
                                       target=spec.target, labels={**self.labels, **spec.labels, DIGEST_LABEL: want})
        except BuildFailed as exc:
            raise StepFailed(exc.message, hint=f"fix {self.dockerfile_path} or the context and run apply again "
                                               f"(orchestrate apply -v shows the whole build); {spec.tag} was "
                                               f"not changed") from None
        reason = diff.changes[0].reason if diff.changes else ""
        if obs.image is not None and obs.image["Id"] != image_id:
            # the build it replaces stays, as <tag>-previous, for orchestrate rollback; the one that
            # was previous before goes once no container runs it
            older = eng.image(previous_tag(spec.tag))
            eng.tag(obs.image["Id"], previous_tag(spec.tag))
            if older is not None and older["Id"] not in (obs.image["Id"], image_id):
                drop_previous(eng, older["Id"], self.rc.plan.name)
        return f"built {spec.tag} ({image_id[7:19]})" + (f": {reason}" if obs.image is not None else "")



    def summary(self, obs: Observed) -> str:
        return f"{self.spec.tag} ({obs.image['Id'][7:19]}) is up to date" if obs.current else ""

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        """``id`` is the image's id once it is built from these sources; before (validate, or a
        plan with the build pending: known after apply) it is the tag, a reference that still
        names an image, and the step counts as pending for the steps after it."""
        spec = self.spec
        return {"tag": spec.tag, "id": obs.image["Id"] if obs is not None and obs.current else spec.tag,
                # what a Compose file's build: section needs (the context relative to the plan root)
                "context": spec.context, "dockerfile": spec.dockerfile,
                "build_args": dict(spec.build_args), "target": spec.target}

    def record(self, obs: Observed) -> dict[str, Any]:
        """The build the image is from: its digest, the context's table (also the next scan's
        cache), the build arguments and the base images' ids. Read-only runs and an image not
        built from the current sources (a pending or failed build) keep the last build's record
        and update only the image's id, so ``status`` and saved plans see a change only when the
        image changed; a converged apply keeps the table's line as it was unless a file's stat
        changed (the lockfile is not rewritten by a no-op)."""
        rec = dict(self.recorded.get("observed") or {})
        if self.rc.read_only or not obs.current:
            return {**rec, "image_id": (obs.image or {}).get("Id")} if rec or obs.image else {}
        last = buildcontext.decode(rec.get("context"))
        same = last is not None and last.files == obs.scan.files and not obs.scan.hashed
        return {"digest": obs.want, "image_id": obs.image["Id"],
                "context": rec["context"] if same else buildcontext.encode(obs.scan),
                "files": len(obs.scan.files), "build_args": self.spec.build_args, "target": self.spec.target,
                "labels": self.spec.labels, "dockerfile": os.path.normpath(self.spec.dockerfile),
                "bases": obs.bases}

    def destroy(self, obs: Observed, *, volumes: bool) -> list[str]:
        """The image stays (rebuilding costs time) unless ``destroy --images``; only an image this
        plan built is removed."""
        if obs.image is None:
            return []
        labels = ((obs.image.get("Config") or {}).get("Labels") or {})
        if not self.rc.options.get("images"):
            return [f"kept image {self.spec.tag} (--images removes it)"]
        if labels.get("orchestrate.plan") != self.rc.plan.name:
            return [f"kept image {self.spec.tag}: it was not built by this plan"]
        users = self.rc.engine.containers_using(obs.image["Id"])
        if users:
            return [f"kept image {self.spec.tag}: container(s) {', '.join(users)} use it"]
        self.rc.engine.remove_image(self.spec.tag)
        said = [f"removed image {self.spec.tag}"]
        previous = self.rc.engine.image(previous_tag(self.spec.tag))
        if previous is not None and not self.rc.engine.containers_using(previous["Id"]):
            self.rc.engine.remove_image(previous_tag(self.spec.tag))
            said.append(f"removed image {previous_tag(self.spec.tag)}")
        return said
