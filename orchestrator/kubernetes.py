"""A plan as Kubernetes objects (issue 14): pure data, no cluster, no Docker.

YAML -> validated plan -> each step rendered as ``validate`` renders it (outputs known before
apply, e.g. an image step's tag in place of its id) -> a list of object dicts in apply order:
Namespace (optional), Secrets, then per step: db-container -> StatefulSet + Service (or, with the
plan's ``kubernetes: {postgres: cloudnativepg}``, a CloudNativePG Cluster + a Service for its
primary); migrate with ``job:`` -> Job; container -> (ConfigMap for ``files:``) + Deployment +
Service; ``kubernetes.ingress`` -> an Ingress to one container step's Service, the steps it
replaces (nginx) left out.
copy-data, with ``kubernetes.copy_image`` -> a ConfigMap holding a one-step plan + a Job that runs
it in that image, its SQLite source (a file on this machine) uploaded into the pod by apply (see
``Rendered.uploads``); without it the step is left out with a note.
Network, image, render, verify and backup steps have no object.

Secret values appear only in the Secrets' ``data`` (base64); every other object refers to them.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fields import setting_text

MANAGED_BY = "orchestrate"
NO_SECRET = "(left out: --no-secrets; create this Secret yourself)"


def dns_name(*parts: str) -> str:
    """A DNS-1123 label from parts: lower case, underscores and dots become '-', at most 63."""
    name = "-".join(p for p in parts if p).lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")
    return name[:63].rstrip("-") or "x"


def _exec(test: str | list[str]) -> dict:
    """A probe's action running ``test`` (a string through the shell, as Docker's CMD-SHELL)."""
    return {"exec": {"command": ["sh", "-c", test] if isinstance(test, str) else list(test)}}


def _probe(hc, action: dict) -> dict:
    """A readiness probe: ``action`` on the health check's interval, timeout and retries."""
    return {**action, "periodSeconds": _seconds(hc.interval), "timeoutSeconds": _seconds(hc.timeout),
            "failureThreshold": hc.retries}


def _seconds(value: float) -> int:
    return max(1, int(round(value)))


# where a copy-data Job's pod holds its plan, lockfile and source (one emptyDir each for the
# work folder and the source; the plan a ConfigMap entry mounted into the work folder)
COPY_WORK = "/work"
COPY_SOURCE = "source/source.db"        # relative to the pod's plan root (COPY_WORK)
SOURCE_SHA = "orchestrate/source-sha256"   # a copy Job's annotation: its SQLite file's sha256


@dataclass(frozen=True)
class Upload:
    """A file apply sends into a Job's pod: ``container`` (an init container waiting for it) runs
    ``python -m orchestrator.receive put dest``, its stdin the file."""
    path: Path
    dest: str
    container: str
    size: int
    sha256: str

    def command(self) -> list[str]:
        return ["python", "-m", "orchestrator.receive", "put", self.dest, "--size", str(self.size),
                "--sha256", self.sha256]


@dataclass
class Rendered:
    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    secret_values: set[str] = field(default_factory=set)    # for tests and redaction
    uploads: dict[str, Upload] = field(default_factory=dict)   # Job name -> its source file

    def by_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]


class _Builder:
    def __init__(self, plan, namespace: str | None, secrets: bool, copy_image: str | None = None):
        self.plan, self.namespace, self.with_secrets = plan, namespace, secrets
        self.copy_image = copy_image
        self.out = Rendered()
        self.secrets: list[dict] = []
        self.workloads: list[dict] = []
        self.files: dict[Path, str] = {}     # what the plan's render steps write, by path
        self.services: dict[str, tuple[str, list[int]]] = {}   # container step -> its Service and ports
        self.options = plan.doc.kubernetes

    # helpers ------------------------------------------------------------------------------------
    def meta(self, name: str, step: str, extra: dict | None = None) -> dict:
        m = {"name": name, "labels": self.labels(step)}
        if self.namespace:
            m["namespace"] = self.namespace
        if extra:
            m.update(extra)
        return m

    def labels(self, step: str) -> dict:
        return {"app.kubernetes.io/managed-by": MANAGED_BY,
                "orchestrate.plan": dns_name(self.plan.name), "orchestrate.step": dns_name(step)}

    def selector(self, step: str) -> dict:
        return {"orchestrate.plan": dns_name(self.plan.name), "orchestrate.step": dns_name(step)}

    def secret(self, step: str, values: dict[str, str], *, suffix: str = "env", type_: str = "Opaque") -> str:
        name = dns_name(self.plan.name, step, suffix)
        self.out.secret_values.update(v for v in values.values() if v)
        obj = {"apiVersion": "v1", "kind": "Secret", "metadata": self.meta(name, step), "type": type_}
        if self.with_secrets:
            obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())}
        else:
            obj["metadata"]["annotations"] = {"orchestrate/secret": NO_SECRET}
            obj["data"] = {k: "" for k in sorted(values)}
        self.secrets.append(obj)
        return name

    def env(self, step: str, env: dict[str, str], secret_words: set[str]) -> list[dict]:
        """Plain values as value; a value holding a secret through the step's Secret."""
        hidden = {k: v for k, v in env.items() if any(w and w in str(v) for w in secret_words)}
        name = self.secret(step, hidden) if hidden else None
        out = []
        for k, v in sorted(env.items()):
            if k in hidden:
                out.append({"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k}}})
            else:
                out.append({"name": k, "value": str(v)})
        return out

    # steps --------------------------------------------------------------------------------------
    def db_container(self, step, res, secret_words):
        if self.options.postgres == "cloudnativepg":
            return self.cloudnativepg(step, res)
        spec = res.spec
        name = dns_name(res.service_host)
        env = {"POSTGRES_USER": spec.user, "POSTGRES_PASSWORD": spec.password, "POSTGRES_DB": spec.db,
               "PGDATA": spec.data_dir.rstrip("/") + "/pgdata", **spec.env}
        hc = spec.healthcheck
        test = hc.test or ["pg_isready", "-h", "127.0.0.1", "-U", spec.user, "-d", spec.db]
        probe = _probe(hc, _exec(test))
        args = []
        for key, value in sorted(spec.settings.items()):
            args += ["-c", f"{key}={setting_text(value)}"]
        volume = dns_name(spec.volume)
        container = {"name": "postgres", "image": spec.image, "env": self.env(step.name, env, secret_words),
                     "ports": [{"name": "postgres", "containerPort": 5432}],
                     "volumeMounts": [{"name": volume, "mountPath": spec.data_dir}],
                     "readinessProbe": probe, "livenessProbe": {**probe, "failureThreshold": max(hc.retries, 3),
                                                                  "initialDelaySeconds": 30}}
        if args:
            container["args"] = args
        sel = self.selector(step.name)
        self.workloads.append({
            "apiVersion": "v1", "kind": "Service", "metadata": self.meta(name, step.name),
            "spec": {"clusterIP": "None", "selector": sel,
                     "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432}]}})
        self.workloads.append({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": self.meta(name, step.name),
            "spec": {"serviceName": name, "replicas": 1, "selector": {"matchLabels": sel},
                     "template": {"metadata": {"labels": self.labels(step.name)},
                                  "spec": {"containers": [container]}},
                     "volumeClaimTemplates": [{
                         "metadata": {"name": volume, "labels": self.labels(step.name)},
                         "spec": {"accessModes": ["ReadWriteOnce"],
                                  "resources": {"requests": {"storage": self.options.storage}}}}]}})

    def cloudnativepg(self, step, res):
        """The database as a CloudNativePG ``Cluster`` (the operator runs PostgreSQL, its volume and
        its services ``<name>-rw``/``-ro``/``-r``); the role's password in a basic-auth Secret; and a
        Service of the step's own name for the primary, so the URLs later steps were given still
        answer."""
        spec = res.spec
        name = dns_name(res.service_host)
        auth = self.secret(step.name, {"username": spec.user, "password": spec.password}, suffix="app",
                           type_="kubernetes.io/basic-auth")
        cluster: dict[str, Any] = {
            "instances": 1,
            "storage": {"size": self.options.storage},
            "bootstrap": {"initdb": {"database": spec.db, "owner": spec.user, "secret": {"name": auth}}},
        }
        if self.options.cloudnativepg_image:
            cluster["imageName"] = self.options.cloudnativepg_image
        if spec.settings:
            cluster["postgresql"] = {"parameters": {k: setting_text(v) for k, v in sorted(spec.settings.items())}}
        self.workloads.append({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
                               "metadata": self.meta(name, step.name), "spec": cluster})
        # the primary under the name the plan's URLs use (the operator's own is <name>-rw)
        self.workloads.append({
            "apiVersion": "v1", "kind": "Service", "metadata": self.meta(name, step.name),
            "spec": {"selector": {"cnpg.io/cluster": name, "cnpg.io/instanceRole": "primary"},
                     "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432}]}})
        self.out.notes.append(f"{step.name}: a CloudNativePG Cluster {name} (the operator must be installed: "
                              f"https://cloudnative-pg.io); Service {name} is its primary, as {name}-rw is")

    def ingress(self, plan, steps_by_name: dict) -> None:
        """An Ingress routing to the Service of ``kubernetes.ingress.step``."""
        ing = self.options.ingress
        where = ("kubernetes", "ingress")
        decl = steps_by_name.get(ing.step)
        if decl is None or decl.type != "container":
            raise plan.smap.error(where + ("step",), f"{ing.step!r} is not a container step of this plan",
                                  hint="name the step of the application the Ingress routes to")
        if ing.step not in self.services:
            raise plan.smap.error(where + ("step",), f"step {ing.step!r} is not rendered (when: false?)")
        service, ports = self.services[ing.step]
        port = ing.port or (ports[0] if ports else None)
        if port is None or (ports and port not in ports):
            raise plan.smap.error(where + ("port",), f"step {ing.step} has no port {port or ''} to route to".rstrip(),
                                  hint=f"give one of its ports: {', '.join(map(str, ports))}" if ports else
                                  "give the step a health check on its HTTP port, or a ports: entry")
        rule: dict[str, Any] = {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": service, "port": {"number": port}}}}]}}
        if ing.host:
            rule["host"] = ing.host
        body: dict[str, Any] = {"rules": [rule]}
        if ing.class_name:
            body["ingressClassName"] = ing.class_name
        if ing.tls_secret:
            body["tls"] = [{"secretName": ing.tls_secret, **({"hosts": [ing.host]} if ing.host else {})}]
        self.workloads.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                               "metadata": self.meta(dns_name(self.plan.name), ing.step), "spec": body})

    def migrate(self, step, res, secret_words, db_url: str | None):
        job = res.spec.job
        if job is None:
            self.out.notes.append(f"{step.name}: migrate without job: runs Alembic on this machine; not an object "
                                  f"(give it job: to run it in the cluster)")
            return
        url = job.url or res.spec.url or db_url
        env = {**job.env, **({"DATABASE_URL": url} if url else {})}
        secret_words = secret_words | ({url} if url else set())
        self.workloads.append({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": self.meta(dns_name(self.plan.name, step.name), step.name),
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": _seconds(job.timeout),
                     "template": {"metadata": {"labels": self.labels(step.name)},
                                  "spec": {"restartPolicy": "Never", "containers": [{
                                      "name": "migrate", "image": job.image,
                                      "command": ["alembic", "-c", job.alembic_ini, "upgrade", res.spec.target],
                                      "env": self.env(step.name, env, secret_words)}]}}}})

    def copy_data(self, step, res, secret_words, db_url: str | None):
        """A Job in ``kubernetes.copy_image`` running ``orchestrate apply`` on a one-step plan (the
        step's own options; its source the file apply uploads into the pod; its target the
        cluster's database through a Secret). The source's sha256 is an annotation of the Job, so
        a changed file is a changed Job, which apply runs anew."""
        spec = res.spec
        if not self.copy_image:
            self.out.notes.append(
                f"{step.name}: copy-data reads a file on this machine ({res.source_name}): give the plan "
                f"kubernetes.copy_image (an image with orchestrate installed, docker/orchestrate/Dockerfile) "
                f"to run it as a Job, or forward the database (kubectl port-forward svc/<db service> "
                f"5432:5432) and run orchestrate apply --only {step.name} with its url at 127.0.0.1:5432")
            return
        url = spec.url or db_url
        if not url:
            raise self.plan.smap.error(step.path, "copy-data has no target in the cluster: no url and no earlier "
                                       "db-container step", hint="give the step a url the cluster reaches")
        from urllib.parse import urlsplit
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        if host in ("localhost", "127.0.0.1", "::1"):
            self.out.notes.append(f"{step.name}: its url names {host}, which in the Job's pod is the pod itself: "
                                  f"leave url out (the database's Service is used) or name the database's Service")
        options = spec.model_dump(mode="json", exclude_defaults=True, exclude={"source", "url", "if_missing"})
        inner = {"name": self.plan.name,
                 "description": f"step {step.name} of plan {self.plan.name}, run in the cluster by orchestrate",
                 "secrets": {"database_url": {"env": "DATABASE_URL"}},
                 "steps": [{"name": step.name, "copy-data": {"source": COPY_SOURCE,
                                                            "url": "{{ secrets.database_url }}", **options}}]}
        import yaml
        cm = dns_name(self.plan.name, step.name, "plan")
        self.workloads.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": self.meta(cm, step.name),
                               "data": {"plan.yaml": yaml.safe_dump(inner, sort_keys=False)}})
        name = dns_name(self.plan.name, step.name)
        source, receiver = f"{COPY_WORK}/{COPY_SOURCE}", "receive"
        source_dir = str(Path(source).parent)
        path = res.source_path
        if path.is_file():
            sha, size = file_sha256(path), path.stat().st_size
            self.out.uploads[name] = Upload(path, source, receiver, size, sha)
        else:
            sha = "unknown: the source does not exist yet"
            self.out.notes.append(f"{step.name}: {res.source_name} does not exist yet; apply creates it "
                                  f"(if_missing) or stops, before the Job")
        timeout = _seconds(self.options.copy_timeout)
        image = self.copy_image
        pod = {"restartPolicy": "Never",
               "volumes": [{"name": "work", "emptyDir": {}}, {"name": "source", "emptyDir": {}},
                           {"name": "plan", "configMap": {"name": cm}}],
               "initContainers": [{
                   "name": receiver, "image": image,
                   "command": ["python", "-m", "orchestrator.receive", "wait", source, "--timeout", str(timeout)],
                   "volumeMounts": [{"name": "source", "mountPath": source_dir}]}],
               "containers": [{
                   "name": "copy", "image": image, "workingDir": COPY_WORK,
                   "command": ["orchestrate", "apply", f"{COPY_WORK}/plan.yaml"],
                   "env": self.env(step.name, {"DATABASE_URL": url}, secret_words | {url}),
                   "volumeMounts": [{"name": "work", "mountPath": COPY_WORK},
                                    {"name": "source", "mountPath": source_dir},
                                    {"name": "plan", "mountPath": f"{COPY_WORK}/plan.yaml", "subPath": "plan.yaml",
                                     "readOnly": True}]}]}
        self.workloads.append({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": self.meta(name, step.name, {"annotations": {SOURCE_SHA: sha}}),
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": timeout,
                     "template": {"metadata": {"labels": self.labels(step.name)}, "spec": pod}}})

    def container(self, step, res, secret_words):
        spec = res.spec
        name = dns_name(res.aliases[0] if res.aliases else spec.container)
        c: dict[str, Any] = {"name": dns_name(step.name), "image": spec.image}
        if spec.entrypoint:
            c["command"] = list(spec.entrypoint) if isinstance(spec.entrypoint, list) else ["sh", "-c", spec.entrypoint]
        if spec.command:
            c["args"] = list(spec.command) if isinstance(spec.command, list) else ["sh", "-c", spec.command]
        if spec.env:
            c["env"] = self.env(step.name, dict(spec.env), secret_words)
        ports = sorted({p.container_port for p in spec.ports}
                       | ({spec.healthcheck.http.port} if spec.healthcheck and spec.healthcheck.http else set()))
        if ports:
            c["ports"] = [{"containerPort": p} for p in ports]
        hc = spec.healthcheck
        if hc is not None and (hc.http or hc.test):
            action = {"httpGet": {"path": hc.http.path, "port": hc.http.port}} if hc.http else _exec(hc.test)
            probe = _probe(hc, action)
            c["readinessProbe"] = probe
            c["livenessProbe"] = {**probe, "initialDelaySeconds": _seconds(max(hc.start_period, 10))}
        resources = {}
        if spec.memory:
            resources["memory"] = str(int(spec.memory))
        if spec.cpus:
            resources["cpu"] = f"{spec.cpus:g}"
        if resources:
            c["resources"] = {"limits": resources}
        if spec.read_only:
            c["securityContext"] = {"readOnlyRootFilesystem": True}
        volumes, mounts = [], []
        for i, path in enumerate(sorted(spec.tmpfs)):
            volumes.append({"name": f"tmp{i}", "emptyDir": {"medium": "Memory"}})
            mounts.append({"name": f"tmp{i}", "mountPath": path})
        if spec.volumes:
            self.out.notes.append(f"{step.name}: volumes/bind mounts are not rendered; add PersistentVolumeClaims")
        if spec.files:
            cm = dns_name(self.plan.name, step.name, "files")
            data, items = {}, []
            for i, f in enumerate(spec.files):
                key = f"f{i}-" + dns_name(Path(f.dest).name)
                where = Path(self.plan.resolve(f.src))
                text = self.files.get(where)
                if text is None:
                    try:
                        text = where.read_text(encoding="utf-8")
                    except OSError:
                        text = ""
                        self.out.notes.append(f"{step.name}: {f.src} does not exist and no render step writes it; "
                                              f"its ConfigMap entry is empty")
                if any(w in text for w in secret_words):
                    text = ""
                    self.out.notes.append(f"{step.name}: {f.src} holds a secret; not put in a ConfigMap (left "
                                          f"empty: make it a Secret yourself)")
                if re.search(r"resolver\s+127\.0\.0\.11", text):
                    self.out.notes.append(f"{step.name}: {f.src} names Docker's DNS resolver (127.0.0.11); in a "
                                          f"cluster nginx must use the cluster's DNS (kube-dns) instead: change "
                                          f"the template before applying")
                data[key] = text
                mounts.append({"name": "files", "mountPath": f.dest, "subPath": key, "readOnly": True})
                items.append({"key": key, "path": key, "mode": int(f.mode, 8)})
            volumes.append({"name": "files", "configMap": {"name": cm, "items": items}})
            self.workloads.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": self.meta(cm, step.name),
                                   "data": data})
        if mounts:
            c["volumeMounts"] = mounts
        pod: dict[str, Any] = {"containers": [c]}
        if volumes:
            pod["volumes"] = volumes
        sel = self.selector(step.name)
        self.workloads.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": self.meta(name, step.name),
            "spec": {"replicas": 1, "selector": {"matchLabels": sel},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                     "template": {"metadata": {"labels": self.labels(step.name)}, "spec": pod}}})
        self.services[step.name] = (name, ports)
        if ports:
            self.workloads.append({
                "apiVersion": "v1", "kind": "Service", "metadata": self.meta(name, step.name),
                "spec": {"selector": sel, "ports": [{"name": f"p{p}", "port": p, "targetPort": p} for p in ports]}})


def file_sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def render_objects(plan, steps, *, namespace: str | None = None, secrets: bool = True,
                   secret_words: set[str] | None = None, copy_image: str | None = None) -> Rendered:
    """``steps``: (step, resource) pairs as ``executor.validate`` returns them; ``secret_words``:
    the plan's secret values (an env value holding one goes through a Secret); ``copy_image``:
    ``kubernetes.copy_image`` rendered."""
    b = _Builder(plan, namespace, secrets, copy_image)
    secret_words = set(secret_words or ())
    ingress = plan.doc.kubernetes.ingress
    by_name = {s.name: s for s in plan.steps}
    for i, name in enumerate(ingress.replaces if ingress else []):
        if name not in by_name or by_name[name].type != "container":
            raise plan.smap.error(("kubernetes", "ingress", "replaces", i), f"{name!r} is not a container step of "
                                  f"this plan", hint="list the container steps the Ingress replaces (nginx)")
    for _step, res in steps:
        secret_words |= {v for v in res.secret_inputs().values() if v}
    db_url = None
    for step, res in steps:
        if step.type == "db-container":
            b.db_container(step, res, secret_words)
            db_url = res.outputs(None)["internal_url"]
            secret_words.add(db_url)
        elif step.type == "migrate":
            b.migrate(step, res, secret_words, db_url)
        elif step.type == "container" and ingress and step.name in ingress.replaces:
            b.out.notes.append(f"{step.name}: left out: the Ingress replaces it (kubernetes.ingress.replaces)")
        elif step.type == "container":
            b.container(step, res, secret_words)
        elif step.type == "copy-data":
            b.copy_data(step, res, secret_words, db_url)
        elif step.type == "render":
            for state in res._render_all()[0]:
                b.files[Path(state.path)] = state.want
        elif step.type in ("network", "image", "verify", "backup"):
            continue
        else:
            b.out.notes.append(f"{step.name}: {step.type} steps have no Kubernetes form; left out")
    if ingress:
        b.ingress(plan, by_name)
    ns = []
    if namespace:
        ns = [{"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": namespace, "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}}}]
    b.out.objects = ns + b.secrets + b.workloads
    return b.out


def load_rendered(plan_path, overrides=None, var_files=None, *, namespace=None, secrets=True,
                  generate: bool | None = None, create_sources: bool = False) -> tuple[Any, Rendered]:
    """Load the plan and render it as objects (no Docker), each step rendered as ``validate``
    does. ``secrets``: the real values (a secret to generate is generated into the plan's secrets
    file, the one a Docker apply uses); otherwise placeholders and empty Secrets.
    ``create_sources`` (apply): a copy-data source that is missing is created by its if_missing."""
    from .errors import OrchestrateError
    from .executor import rendered_steps
    from .lockfile import Lockfile
    from .plan import build_context, load_plan, set_outputs
    from .secrets import PENDING, SecretStore, secrets_path
    from .steps.base import RunContext
    plan = load_plan(plan_path, overrides, var_files)
    store = SecretStore(secrets_path(plan.path))
    generate = secrets if generate is None else generate     # plan: never writes the secrets file
    ctx = build_context(plan, store, generate=generate)
    rc = RunContext(plan=plan, mode="validate", lock=Lockfile(plan.lock_path), context=ctx,
                    options={"target": "kubernetes"})      # templates write the cluster's form
    steps = []
    for step, res in rendered_steps(plan, ctx, rc):
        if res is None:
            continue
        res.check() if step.type == "render" else None     # its templates exist and render
        set_outputs(ctx, step, res.outputs(None))
        steps.append((step, res))
    words = {v for v in (ctx.as_dict().get("secrets") or {}).values() if isinstance(v, str) and v}
    if secrets and generate and any(PENDING in w for w in words):
        raise OrchestrateError("a secret of the plan has no value yet", hint="use --no-secrets")
    copy_image = None
    if plan.doc.kubernetes.copy_image:
        from .templating import render_tree
        copy_image = str(render_tree(plan.doc.kubernetes.copy_image, {"vars": ctx.vars, "env": ctx.env},
                                     ("kubernetes", "copy_image"), plan.smap)).strip() or None
        for step, res in steps if create_sources else ():
            if step.type == "copy-data" and not res.source_path.is_file():
                if not res.spec.if_missing:
                    raise plan.smap.error(step.path + ("source",), f"{res.source_name} does not exist: there is "
                                          f"nothing to upload", hint="point source at the application's SQLite "
                                          "database, or give the step if_missing")
                res._create_source()
    if generate:
        store.save()
    return plan, render_objects(plan, steps, namespace=namespace, secrets=secrets, secret_words=words,
                                copy_image=copy_image)


def to_yaml(objects: list[dict]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True
    return "".join("---\n" + yaml.dump(o, Dumper=Dumper, sort_keys=False, default_flow_style=False)
                   for o in objects)


def write(rendered: Rendered, out_dir: Path) -> list[Path]:
    """objects.yaml: every object but the Secrets; secrets.yaml (0600): the Secrets; NOTES.txt."""
    import os
    out_dir.mkdir(parents=True, exist_ok=True)
    secrets = [o for o in rendered.objects if o["kind"] == "Secret"]
    others = [o for o in rendered.objects if o["kind"] != "Secret"]
    written = []
    p = out_dir / "objects.yaml"
    p.write_text(to_yaml(others), encoding="utf-8")
    written.append(p)
    if secrets:
        p = out_dir / "secrets.yaml"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(to_yaml(secrets))
        written.append(p)
    if rendered.notes:
        p = out_dir / "NOTES.txt"
        p.write_text("".join(f"- {n}\n" for n in rendered.notes), encoding="utf-8")
        written.append(p)
    return written
