"""The plan language: YAML -> validated plan.

A plan is ``name``, ``vars``, ``secrets`` and ``steps``. Each step is a mapping with a ``name`` and
exactly one step-type key (``db-container: {...}``), as in Ansible. Loading happens in two stages:

1. :func:`load_plan` checks the document's shape (pydantic, unknown keys are errors) and finds
   each step's type. Step bodies are still raw: their strings may be templates.
2. :func:`render_step` renders a step's body against the context (vars, secrets, env and the
   outputs of earlier steps) and validates it with the step type's pydantic model.

:func:`validate` runs stage 2 for every step with *predicted* outputs in place of real ones, so
``orchestrate validate`` catches undefined variables, references to later steps and bad values
without touching Docker. Every error names the file, line and key path.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from . import fields
from . import secrets as secretlib
from .errors import KeyedValueError, PlanError
from .templating import Scope, render_tree, start_run
from .yamlsrc import Path_, SourceMap, format_key
from .yamlsrc import load as load_yaml

NAME_RE = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
MAX_NAME = 63                  # a plan's or a step's name (it goes into labels and file names)
RELATIVE = r"^(?:[^/~\x00][^\x00]*)?$"
MAX_OVERRIDE = 64 * 1024        # characters of one -e value
GENERATE_SECRETS = "generate_secrets"   # a variable: false forbids generated secrets (production)


class Strict(BaseModel):
    """Base of every plan model: unknown keys are errors."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SecretSource(Strict):
    """Where a secret comes from; several sources are tried in the order env, file, generate."""
    env: fields.EnvName | None = Field(None, description="environment variable holding the secret")
    file: fields.Text | None = Field(None, description="file holding the secret (relative to the plan root)")
    generate: int | None = Field(None, ge=12, le=256,
                                 description="generate a random secret of this length once, kept "
                                             "in <plan>.secrets (mode 0600)")

    @model_validator(mode="after")
    def _one_source(self):
        if not (self.env or self.file or self.generate):
            raise ValueError("a secret needs at least one of: env, file, generate")
        return self


class EngineTLS(Strict):
    ca: fields.Text | None = Field(None, description="the CA certificate that signed the engine's (PEM; relative to the plan root)")
    cert: fields.Text | None = Field(None, description="this client's certificate (PEM)")
    key: fields.Text | None = Field(None, description="this client's key (PEM; keep it 0600)")
    verify: bool | str = Field(True, description="check the engine's certificate against ca (default true)")


class EngineSpec(Strict):
    """Where the plan's Docker operations go (default: DOCKER_HOST, DOCKER_TLS_VERIFY and
    DOCKER_CERT_PATH as the Docker CLI reads them, else the local socket)."""
    host: fields.Text = Field("", description="unix:///path, tcp://HOST:2376 or ssh://USER@HOST; empty: "
                                             "DOCKER_HOST or the local engine")
    tls: EngineTLS | None = Field(None, description="TLS files for a tcp:// engine")
    public_host: fields.Text | None = Field(None, description="the address clients here reach the engine's "
                                                              "published ports at (default: the host of host)")


class KubernetesIngress(Strict):
    """An Ingress in front of one container step's Service (the cluster's ingress controller then
    does what an nginx container does on Docker)."""
    step: fields.NonEmptyText = Field(description="the container step whose Service the Ingress routes to")
    port: int | None = Field(None, ge=1, le=65535, description="the Service's port (default: the step's first)")
    host: fields.Text | None = Field(None, description="the host name it answers for (default: any)")
    class_name: fields.Text | None = Field(None, description="ingressClassName (default: the cluster's default class)")
    tls_secret: fields.Text | None = Field(None, description="a kubernetes.io/tls Secret for HTTPS on host")
    replaces: list[fields.NonEmptyText] = Field(default_factory=list, description="container steps left out of the "
                                                "cluster (the nginx in front, which the Ingress replaces)")


class KubernetesOptions(Strict):
    """How ``--target kubernetes`` writes the plan (Docker runs ignore it)."""
    postgres: Literal["statefulset", "cloudnativepg"] = Field(
        "statefulset", description="a db-container as a StatefulSet with a PersistentVolumeClaim, or as a "
                                   "CloudNativePG Cluster (the operator must be installed in the cluster)")
    cloudnativepg_image: fields.Image | None = Field(None, description="the Cluster's imageName (a CloudNativePG "
                                                     "operand image; default: the operator's)")
    storage: str = Field("1Gi", max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
                                 description="the database's volume size (a Kubernetes quantity)")
    ingress: KubernetesIngress | None = None
    copy_image: fields.Text | None = Field(
        None, description="an image with orchestrate installed (docker/orchestrate/Dockerfile, pushed to the "
                          "cluster's registry; templates see vars): each copy-data step becomes a Job in it, "
                          "its SQLite source uploaded into the Job's pod by apply. Without it copy-data is "
                          "left out (a note says how to run it from this machine)")
    copy_timeout: fields.Duration = Field(3600.0, description="how long a copy-data Job may take, upload included")


class PlanDocument(Strict):
    """The top level of a plan file."""
    name: str = Field(pattern=NAME_RE, max_length=MAX_NAME, description="the plan's name; labels everything it creates")
    description: fields.Text | None = None
    root: str = Field(".", pattern=RELATIVE, max_length=fields.MAX_TEXT,
                      description="folder that relative paths in the plan start from, relative to the plan "
                                  "file (default: the plan's own folder); every path of the plan stays inside it")
    vars: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, SecretSource] = Field(default_factory=dict)
    engine: EngineSpec | None = Field(None, description="the Docker Engine the plan runs on (default: "
                                                        "DOCKER_HOST, else this machine's)")
    kubernetes: KubernetesOptions = Field(default_factory=KubernetesOptions,
                                          description="how render/apply --target kubernetes write the plan")
    steps: list[dict[str, Any]] = Field(min_length=1)


@dataclass
class StepDecl:
    index: int
    name: str
    type: str
    body: Any
    when: Any = None          # a bool or a template giving one; false: the step is skipped

    @property
    def path(self) -> Path_:
        return ("steps", self.index, self.type)


@dataclass
class Plan:
    path: Path
    doc: PlanDocument
    smap: SourceMap
    steps: list[StepDecl]
    overrides: dict[str, str] = field(default_factory=dict)      # -e KEY=VALUE
    var_files: list[Path] = field(default_factory=list)           # --var-file, in order
    file_vars: dict[str, Any] = field(default_factory=dict)      # their values, merged in order
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.doc.name

    @property
    def base_dir(self) -> Path:
        """Where relative paths in the plan start (``root``, relative to the plan file)."""
        return self.path.parent / self.doc.root

    def outside_root(self, path: str) -> str | None:
        """Why ``path`` (relative to the root, or absolute) is not inside the plan's root, symbolic
        links followed; None when it is."""
        base = os.path.abspath(self.base_dir)
        where = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
        root = os.path.realpath(base)
        if os.path.commonpath([root, os.path.realpath(where)]) == root:
            return None
        link = " through a symbolic link" if os.path.commonpath([base, where]) == base else ""
        return f"{path!r} leads outside the plan's root {root}{link}"

    def resolve(self, path: str) -> Path:
        """``path`` under the plan's root; a path leading outside the root is refused."""
        problem = self.outside_root(path)
        if problem:
            raise PlanError(problem, file=str(self.path), hint=ROOT_HINT)
        return Path(os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path))))

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def step(self, name: str) -> StepDecl:
        for step in self.steps:
            if step.name == name:
                return step
        raise PlanError(f"no step named {name!r} (steps: {', '.join(s.name for s in self.steps)})")


def step_types() -> dict[str, type]:
    from .steps import REGISTRY  # steps import this module; import late
    return REGISTRY


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


ROOT_HINT = "paths of a plan stay inside its root (the 'root' key, relative to the plan file)"
PATTERN_TEXT = {
    NAME_RE: "use letters, digits, '_', '.' or '-', starting with a letter or digit",
    RELATIVE: "it must be a relative path, from the plan's folder",
    **fields.PATTERN_TEXT,
}
TYPE_TEXT = {
    "dict_type": "must be a mapping", "list_type": "must be a list", "string_type": "must be a string",
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "float_parsing": "must be a number", "bool_parsing": "must be true or false",
    "bool_type": "must be true or false", "int_from_float": "must be a whole number",
}


def _error_order(err: dict) -> int:
    # An unknown key usually explains a missing one (a typo): report it first.
    return {"extra_forbidden": 0, "missing": 2}.get(err["type"], 1)


def _shown(value: Any, secret: bool = False) -> str:
    """A value as an error message shows it: secrets masked first, then cut to a readable length."""
    from . import redact
    if secret:
        return "(redacted)"
    try:
        text = redact.redact(repr(value))
    except ValueError:                      # an integer of thousands of digits
        return "a number of thousands of digits"
    if len(text) <= 80:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[:60]}...{size}"


def pydantic_error(exc: ValidationError, smap: SourceMap, base: Path_, model: type[BaseModel]) -> PlanError:
    """Turn pydantic's most telling error into a PlanError at the right file, line and key."""
    errors = sorted(exc.errors(), key=_error_order)
    err = errors[0]
    # drop pydantic's internal location parts (validator and union tags, '[key]')
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.endswith("]") and "[" in p))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedValueError):
        loc += tuple(cause.subpath)
    path = base + loc
    kind, msg = err["type"], err["msg"]
    hint = None
    value = err.get("input")
    ctx = err.get("ctx") or {}
    shown = _shown(value, secret=bool(SECRET_NAME.search(str(loc[-1]) if loc else "")))
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        known = sorted(_keys(parent)) if parent else []
        msg = f"unknown key {loc[-1]!r}{_suggest(str(loc[-1]), known)}"
        if known:
            hint = "allowed keys here: " + ", ".join(known)
    elif kind == "missing":
        msg = f"required key {loc[-1]!r} is missing"
    elif kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        msg = f"{shown} is not allowed here: " + PATTERN_TEXT.get(pattern, f"it must match {pattern}")
    elif kind in TYPE_TEXT:
        msg = f"{TYPE_TEXT[kind]} (got {shown})"
    elif kind == "too_short" and isinstance(value, (list, dict)) or kind == "string_too_short" and value == "":
        msg = "must not be empty"
    elif kind == "string_too_long":
        msg = f"too long: {len(value):,} characters, at most {ctx.get('max_length'):,} (got {shown})"
    elif kind == "too_long":
        msg = f"too many entries: {len(value):,}, at most {ctx.get('max_length'):,}"
    else:
        msg = msg.removeprefix("Value error, ")
        head = shown[:60]
        if isinstance(value, (str, int, float, bool)) and head not in msg and head.strip("'\"") not in msg:
            msg = f"{msg} (got {shown})"
    if len(errors) > 1:
        others = [format_key(base + tuple(e["loc"])) for e in errors[1:4]]
        msg += f"; {len(errors) - 1} more problem(s) at: {', '.join(others)}"
    return smap.error(path, _shown_message(msg), hint=hint)


def _shown_message(msg: str, limit: int = 1000) -> str:
    from . import redact
    msg = redact.redact(msg)
    return msg if len(msg) <= limit else msg[:limit] + f"... ({len(msg):,} characters in all)"


def _keys(model: type[BaseModel]) -> set[str]:
    return {f.alias or n for n, f in model.model_fields.items()}


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Best effort: the pydantic model that holds the key at ``loc`` (for 'allowed keys')."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        if part not in fields:
            return None
        current = _inner_model(fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


SECRET_NAME = re.compile(r"(?i)(pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential)")


def load_plan(path: str | Path, overrides: dict[str, str] | None = None,
              var_files: list[str | Path] | None = None) -> Plan:
    """Parse and check the shape of a plan; step bodies stay raw (templates)."""
    path = Path(path)
    data, smap = load_yaml(path)
    if not isinstance(data, dict):
        raise smap.error((), "a plan must be a YAML mapping with name, vars, secrets and steps")
    try:
        doc = PlanDocument.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(exc, smap, (), PlanDocument) from None
    types = step_types()
    steps: list[StepDecl] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(doc.steps):
        where = ("steps", i)
        if not isinstance(raw, dict):
            raise smap.error(where, "a step must be a mapping with 'name' and one step type")
        name = raw.get("name")
        if not isinstance(name, str) or not re.match(NAME_RE, name) or len(name) > MAX_NAME:
            raise smap.error(where + ("name",),
                             f"every step needs a 'name' of letters, digits, '_', '.' or '-' (at most {MAX_NAME})"
                             + (f" (got {_shown(name)})" if name is not None else ""))
        if name in seen:
            raise smap.error(where + ("name",), f"duplicate step name {name!r} (also step {seen[name]})",
                             hint="step names must be unique: later steps refer to them")
        seen[name] = i
        kinds = [k for k in raw if k not in ("name", "when")]
        when = raw.get("when")
        if "when" in raw and not isinstance(when, (bool, str)):
            raise smap.error(where + ("when",), f"when must be true, false or a template giving one "
                                                f"(got {_shown(when)})",
                             hint='e.g. when: "{{ vars.with_pgadmin }}"')
        unknown = [k for k in kinds if k not in types]
        if unknown:
            raise smap.error(where + (unknown[0],),
                             f"unknown step type or key {unknown[0]!r}{_suggest(unknown[0], types)}",
                             hint="step types: " + ", ".join(sorted(types)))
        if len(kinds) != 1:
            raise smap.error(where, f"step {name!r} must have exactly one step type, found "
                             + (", ".join(kinds) if kinds else "none"),
                             hint="step types: " + ", ".join(sorted(types)))
        kind = kinds[0]
        body = raw[kind]
        if body is None:
            body = {}
        steps.append(StepDecl(i, name, kind, body, when))
    plan = Plan(path=path, doc=doc, smap=smap, steps=steps)
    for key, source in doc.secrets.items():
        problem = source.file and plan.outside_root(source.file)
        if problem:
            raise smap.error(("secrets", key, "file"), problem, hint=ROOT_HINT)
    plan.overrides = dict(overrides or {})
    _check_overrides(plan)
    _warn_secret_vars(plan, "the plan", plan.doc.vars)
    _warn_secret_vars(plan, "-e", plan.overrides)
    for var_file in var_files or []:
        _load_var_file(plan, Path(var_file))
    return plan


def _load_var_file(plan: Plan, path: Path) -> None:
    """A YAML mapping of variables the plan declares; values keep their YAML types."""
    data, smap = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise smap.error((), "a variable file must be a YAML mapping of variable: value")
    for key, value in data.items():
        if key not in plan.doc.vars:
            known = ", ".join(sorted(plan.doc.vars)) or "none"
            raise smap.error((key,), f"the plan {plan.path} has no variable {key!r}{_suggest(str(key), plan.doc.vars)}",
                             hint=f"declare it under 'vars' in the plan first (variables: {known})")
        plan.file_vars[key] = value
    plan.var_files.append(path)
    _warn_secret_vars(plan, f"variable file {path}", data)


def _warn_secret_vars(plan: Plan, where: str, values: dict) -> None:
    """A secret belongs under 'secrets' (from the environment or a file), never in a plain
    variable: warn, and keep the value out of every output and file all the same."""
    from . import redact
    for key, value in values.items():
        if SECRET_NAME.search(str(key)) and isinstance(value, str) and value and "{{" not in value:
            if len(value) >= 8:   # a guess: masking a short word ("none") everywhere would garble output
                redact.register(value)
            plan.warnings.append(
                f"variable {key!r} in {where} looks like a secret: variables are kept in clear; declare it "
                f"under 'secrets' ({{env: NAME}} or {{file: PATH}}) instead. Its value is masked in every "
                f"output, the lockfile and saved plans.")


def _check_overrides(plan: Plan) -> None:
    for key, value in plan.overrides.items():
        if len(value) > MAX_OVERRIDE or "\x00" in value:
            what = "holds a NUL character" if "\x00" in value else f"is {len(value):,} characters long"
            raise PlanError(f"-e {key}=...: the value {what}; -e takes text of at most {MAX_OVERRIDE:,} "
                            f"characters", file=str(plan.path), line=plan.smap.line(("vars", key)))
        if key not in plan.doc.vars:
            known = ", ".join(sorted(plan.doc.vars)) or "none"
            raise PlanError(f"-e {key}=...: the plan has no variable {key!r}{_suggest(key, plan.doc.vars)}",
                            file=str(plan.path), line=plan.smap.line(("vars",)),
                            hint=f"declare it under 'vars' first (variables: {known})")


def _coerce(value: str, default: Any) -> Any:
    """A command-line override takes the type of the variable's value in the plan."""
    if isinstance(default, bool):
        if value.lower() in ("true", "yes", "on", "1"):
            return True
        if value.lower() in ("false", "no", "off", "0"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    return value


@dataclass
class Context:
    """What templates can see. ``steps`` fills up as steps run."""
    vars: Scope
    secrets: Scope
    env: Scope
    steps: Scope

    def as_dict(self) -> dict[str, Any]:
        return {"vars": self.vars, "secrets": self.secrets, "env": self.env, "steps": self.steps}


def _vars(plan: Plan) -> tuple[Scope, Scope]:
    """The environment and the plan's variables (plan < variable files, in order < -e), rendered."""
    values: dict[str, Any] = {}
    for key, default in plan.doc.vars.items():
        default = plan.file_vars.get(key, default)     # plan < variable files (in order) < -e
        if key in plan.overrides:
            try:
                values[key] = _coerce(plan.overrides[key], default)
            except ValueError as exc:
                raise PlanError(f"-e {key}={plan.overrides[key]!r}: {exc}, like the plan's value "
                                f"{default!r}",
                                file=str(plan.path), line=plan.smap.line(("vars", key))) from None
        else:
            values[key] = default
    # vars may refer to env and to other (earlier) vars
    env = Scope("env", dict(os.environ), list_keys=False)
    var_scope = Scope("vars", {}, later=values, later_text="variables can only use the variables "
                                                          "declared before them")
    for key, value in values.items():
        var_scope.later.discard(key)
        var_scope[key] = render_tree(value, {"vars": var_scope, "env": env}, ("vars", key), plan.smap)
    return env, var_scope


def build_context(plan: Plan, store: secretlib.SecretStore, *, generate: bool) -> Context:
    start_run()
    env, var_scope = _vars(plan)
    secret_values, missing = {}, {}
    # a plan (or its production variables) may forbid generated secrets: each must then come from
    # the environment or a file; one that does not is an error where a step uses it (a secret of a
    # step whose when is false is not needed)
    stored = var_scope.get(GENERATE_SECRETS, True) is not False
    for key, source in plan.doc.secrets.items():
        given = source.model_dump(exclude_none=True)
        if not stored and given.pop("generate", None):
            if not given or (given.get("env") and not os.environ.get(given["env"]) and not given.get("file")):
                missing[key] = ("generate_secrets is false (no generated secret here) and "
                                + (f"the environment variable {given['env']} is not set; export it from "
                                   f"your secret store" if given.get("env") else "it has no env: or file: source"))
                continue
        secret_values[key] = secretlib.resolve(
            key, given, base_dir=plan.base_dir, store=store,
            smap=plan.smap, path=("secrets", key), generate=generate)
    later = [s.name for s in plan.steps]
    secrets_scope = Scope("secrets", secret_values)
    secrets_scope.missing = missing
    return Context(vars=var_scope, secrets=secrets_scope, env=env,
                   steps=Scope("steps", {}, later=later))


ENGINE_SCHEMES = ("unix://", "tcp://", "ssh://", "npipe://")


def engine_target(plan: Plan, ctx: Context | None):
    """The Docker Engine this plan runs on: its ``engine:`` (templates see vars and env), else
    the environment as the Docker CLI reads it."""
    from .docker_engine import Target
    spec = plan.doc.engine
    if spec is None:
        return Target.from_env()
    env, var_scope = (ctx.env, ctx.vars) if ctx is not None else _vars(plan)
    scope = {"vars": var_scope, "env": env}
    raw = render_tree(spec.model_dump(exclude_none=True), scope, ("engine",), plan.smap)
    host = str(raw.get("host") or "").strip()
    if not host:
        return Target.from_env()
    if not host.startswith(ENGINE_SCHEMES):
        raise plan.smap.error(("engine", "host"), f"{host!r} is not a Docker engine address",
                              hint="use tcp://HOST:2376 (with tls:), ssh://USER@HOST or unix:///path")
    tls = raw.get("tls") or {}
    files = {}
    for key in ("ca", "cert", "key"):
        if tls.get(key):
            # relative to the plan's root; an absolute or ~ path may be anywhere (~/.docker)
            files[key] = os.path.normpath(os.path.join(plan.base_dir, os.path.expanduser(str(tls[key]))))
    if ("cert" in files) != ("key" in files):
        raise plan.smap.error(("engine", "tls"), "a client certificate needs both cert and key")
    verify = tls.get("verify", True)
    if isinstance(verify, str):
        verify = verify.strip().lower() not in ("false", "no", "0", "")
    if host.startswith("tcp://") and not files and not verify is False and not _loopback_host(host):
        raise plan.smap.error(("engine", "host"), f"{host} is a remote engine reached without TLS: anyone on the "
                              "way could take over the engine", hint="give engine.tls {ca, cert, key} (the "
                              "engine's --tlsverify files), or use ssh://USER@HOST")
    return Target(host=host, ca=files.get("ca"), cert=files.get("cert"), key=files.get("key"),
                  verify=bool(verify), public_host=(str(raw.get("public_host") or "").strip() or None))


def _loopback_host(host: str) -> bool:
    from .docker_engine import Target
    return not Target(host=host).remote


def render_step(step: StepDecl, plan: Plan, ctx: Context) -> BaseModel:
    """Render a step's body and validate it with its step type's model."""
    cls = step_types()[step.type]
    rendered = render_tree(step.body, ctx.as_dict(), step.path, plan.smap)
    if not isinstance(rendered, dict):
        raise plan.smap.error(step.path, f"the body of a {step.type} step must be a mapping")
    try:
        return cls.Spec.model_validate(rendered, context={"plan": plan, "step": step})
    except ValidationError as exc:
        raise pydantic_error(exc, plan.smap, step.path, cls.Spec) from None


def enabled(step: StepDecl, plan: Plan, ctx: Context) -> bool:
    """The step's ``when``, rendered with what templates see at this point of the run."""
    if step.when is None or isinstance(step.when, bool):
        return step.when is not False
    path = ("steps", step.index, "when")
    value = render_tree(step.when, ctx.as_dict(), path, plan.smap)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise plan.smap.error(path, f"when must give true or false, not {_shown(value)}",
                              hint='compare explicitly, e.g. when: "{{ vars.env == \'dev\' }}"')
    return value


def set_outputs(ctx: Context, step: StepDecl, outputs: dict[str, Any]) -> None:
    ctx.steps[step.name] = Scope(f"steps.{step.name}", outputs)
    ctx.steps.later.discard(step.name)


# --- JSON Schema --------------------------------------------------------------------------

_TEMPLATE = {"type": "string", "pattern": r"\{\{.*\}\}", "description": "a Jinja2 template"}


def _allow_templates(node: Any, value_position: bool = False) -> Any:
    """Let every non-string *value* also be a template string, as the loader allows."""
    if isinstance(node, list):
        return [_allow_templates(v, value_position) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, sub in node.items():
        if key in ("properties", "$defs"):
            out[key] = {k: _allow_templates(v, key == "properties") for k, v in sub.items()}
        elif key in ("items", "additionalProperties") and isinstance(sub, dict):
            out[key] = _allow_templates(sub, True)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [_allow_templates(v) for v in sub]
        else:
            out[key] = sub
    plain_string = out.get("type") == "string" and not ({"pattern", "enum", "format"} & set(out))
    if value_position and not plain_string:
        return {"anyOf": [out, _TEMPLATE]}
    return out


def json_schema() -> dict[str, Any]:
    """The plan format's JSON Schema, generated from the same models the loader uses."""
    step_models = []
    for kind, cls in sorted(step_types().items()):
        attr = kind.replace("-", "_")
        step_models.append(create_model(
            f"{cls.Spec.__name__}Step", __base__=Strict,
            name=(str, Field(pattern=NAME_RE, description="the step's unique name")),
            when=(Union[bool, str, None], Field(None, description="false (or a template giving false): the step "
                                                                 "is skipped")),
            **{attr: (cls.Spec, Field(alias=kind, description=cls.__doc__.strip().splitlines()[0]))}))
    model = create_model("Plan", __base__=PlanDocument,
                         steps=(list[Union[tuple(step_models)]], Field(min_length=1)))  # type: ignore[valid-type]
    schema = model.model_json_schema(by_alias=True)
    # Step bodies are rendered before they are validated: there, any value may be a template.
    # (Every model below a step's body is part of one; the plan's own are SecretSource and the steps.)
    schema["$defs"] = {name: sub if name == "SecretSource" or name.endswith("Step") else _allow_templates(sub)
                       for name, sub in schema["$defs"].items()}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestrate plan"
    return schema
