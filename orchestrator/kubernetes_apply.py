"""orchestrate render/apply --target kubernetes: the objects of ``orchestrator.kubernetes`` applied
with the official client (server-side apply, field manager ``orchestrate``), in order, each waited
on (StatefulSet ready, Job Complete, Deployment Available, a CloudNativePG Cluster Ready), recorded
in the lockfile."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import OrchestrateError
from .kubernetes import SOURCE_SHA, dns_name, load_rendered, to_yaml, write
from .lockfile import ApplyLock, Lockfile, digest

FIELD_MANAGER = "orchestrate"
JOB_DIGEST = "orchestrate/applied-digest"      # a Job's annotation: the digest apply records of it
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
PLURALS = {"Namespace": ("namespaces", False), "Secret": ("secrets", True), "ConfigMap": ("configmaps", True),
           "Service": ("services", True), "StatefulSet": ("statefulsets", True),
           "Deployment": ("deployments", True), "Job": ("jobs", True), "Ingress": ("ingresses", True),
           "Cluster": ("clusters", True)}     # Cluster: CloudNativePG's (postgresql.cnpg.io/v1)


def object_path(obj: dict, namespace: str) -> str:
    plural, namespaced = PLURALS[obj["kind"]]
    api = obj["apiVersion"]
    base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    if namespaced:
        base += f"/namespaces/{obj['metadata'].get('namespace') or namespace}"
    return f"{base}/{plural}/{obj['metadata']['name']}"


def key_of(obj: dict, namespace: str) -> str:
    ns = obj["metadata"].get("namespace") or namespace if PLURALS[obj["kind"]][1] else ""
    return f"{obj['kind']}/{ns}/{obj['metadata']['name']}"


class Cluster:
    """The API server of the kubeconfig's current context (KUBECONFIG or ~/.kube/config)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None):
        try:
            from kubernetes import client, config
        except ImportError:
            raise OrchestrateError("the kubernetes package is not installed",
                                   hint="pip install 'orchestrate[kubernetes]'") from None
        cfg = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        except Exception as exc:   # the client's own errors name the file and the context
            raise OrchestrateError(f"no usable kubeconfig: {exc}",
                                   hint="set KUBECONFIG to the cluster's kubeconfig file") from None
        self.namespace = (active.get("context") or {}).get("namespace") or "default"
        self.api = client.ApiClient(cfg)
        self.server = cfg.host

    def request(self, method: str, path: str, *, query: list | None = None, body: Any = None,
                content_type: str | None = None) -> tuple[int, dict | None]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, hdrs, data, _ = self.api.param_serialize(method, path, query_params=query or [],
                                                         header_params=headers, body=body,
                                                         auth_settings=["BearerToken"])
        try:
            resp = self.api.call_api(m, url, hdrs, data)
            resp.read()
        except Exception as exc:
            raise OrchestrateError(f"{method} {path}: the API server at {self.server} did not answer: {exc}") from None
        text = resp.data.decode("utf-8", "replace") if resp.data else ""
        try:
            doc = json.loads(text) if text else None
        except json.JSONDecodeError:
            doc = {"message": text[:200]}
        return resp.status, doc

    def get(self, path: str) -> dict | None:
        status, doc = self.request("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise OrchestrateError(f"GET {path}: {status} {(doc or {}).get('message', '')}")
        return doc

    def apply(self, obj: dict, path: str, *, dry_run: bool = False) -> dict:
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")] + ([("dryRun", "All")] if dry_run else [])
        status, doc = self.request("PATCH", path, query=query, body=to_yaml([obj])[4:],
                                   content_type=APPLY_CONTENT_TYPE)
        if status >= 300:
            crd = status == 404 and obj["apiVersion"].startswith("postgresql.cnpg.io/")
            raise OrchestrateError(f"{obj['kind']}/{obj['metadata']['name']}: the server refused it: {status} "
                                   f"{(doc or {}).get('message', '')}",
                                   hint=f"the cluster does not know {obj['apiVersion']} {obj['kind']}: install the "
                                        f"CloudNativePG operator (https://cloudnative-pg.io), or drop the plan's "
                                        f"kubernetes.postgres" if crd else None)
        return doc or {}

    def exec_upload(self, namespace: str, pod: str, container: str, command: list[str], path: Path,
                    *, timeout: float) -> str:
        """Run ``command`` in a container of ``pod`` (the exec subresource, a websocket), its stdin
        the file at ``path``; return what it printed; raise when it fails."""
        from kubernetes import client
        from kubernetes.stream import stream
        where = f"pod {pod}, container {container}"
        try:
            ws = stream(client.CoreV1Api(self.api).connect_get_namespaced_pod_exec, pod, namespace,
                        container=container, command=command, stdin=True, stdout=True, stderr=True, tty=False,
                        _preload_content=False, binary=True)
        except Exception as exc:
            raise OrchestrateError(f"{where}: the API server at {self.server} did not open an exec: {exc}",
                                   hint="the kubeconfig's user needs the pods/exec permission") from None
        output, status = b"", b""
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    ws.write_stdin(chunk)
                    ws.update(timeout=0)
            deadline = time.monotonic() + timeout
            while ws.is_open() and time.monotonic() < deadline:
                ws.update(timeout=1)
                output += ws.read_channel(1) + ws.read_channel(2)
                status += ws.read_channel(3)
            output += ws.read_channel(1) + ws.read_channel(2)
            status += ws.read_channel(3)
        except OSError as exc:
            raise OrchestrateError(f"{where}: the upload broke off: {exc}", hint="run apply again: the Job "
                                   "runs anew and the file is sent again") from None
        except Exception as exc:       # websocket-client's own errors
            raise OrchestrateError(f"{where}: the upload broke off: {exc}", hint="run apply again") from None
        finally:
            ws.close()
        text = output.decode("utf-8", "replace").strip()
        try:
            result = json.loads(status) if status else {}
        except json.JSONDecodeError:
            result = {"status": "Failure", "message": status.decode("utf-8", "replace")[:200]}
        if result.get("status") != "Success":
            why = text or result.get("message") or (f"no answer within {timeout:g}s" if not status else "failed")
            raise OrchestrateError(f"{where}: the upload failed: {why}", hint="run apply again: the Job runs anew "
                                   "and the file is sent again")
        return text

    def delete(self, path: str) -> None:
        status, doc = self.request("DELETE", path, query=[("propagationPolicy", "Background")])
        if status >= 300 and status != 404:
            raise OrchestrateError(f"DELETE {path}: {status} {(doc or {}).get('message', '')}")


def _condition(live: dict, kind: str) -> dict | None:
    for c in (live.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def _last_condition(live: dict | None) -> str:
    conds = ((live or {}).get("status") or {}).get("conditions") or []
    if not conds:
        return "no condition reported"
    c = conds[-1]
    return f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason')}: {c.get('message', '')})"
                                                   if c.get("reason") else "")


def ready(obj: dict, live: dict) -> bool:
    """Whether ``live`` (the object as read back) is ready; a failed Job raises."""
    kind, status = obj["kind"], live.get("status") or {}
    generation = (live.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    current = generation is None or observed is None or observed >= generation
    if kind == "StatefulSet":
        want = (live.get("spec") or {}).get("replicas", 1)
        return current and status.get("readyReplicas", 0) == want
    if kind == "Deployment":
        want = (live.get("spec") or {}).get("replicas", 1)
        avail = _condition(live, "Available")
        return current and bool(avail and avail.get("status") == "True") and status.get("updatedReplicas", 0) == want
    if kind == "Job":
        failed = _condition(live, "Failed")
        if failed and failed.get("status") == "True":
            raise OrchestrateError(f"Job/{obj['metadata']['name']} failed: {failed.get('reason', '?')}: "
                                   f"{failed.get('message', '')}".rstrip(": "),
                                   hint=f"kubectl logs job/{obj['metadata']['name']}")
        done = _condition(live, "Complete")
        return bool(done and done.get("status") == "True")
    if kind == "Cluster":           # CloudNativePG: Ready once its instances run and the primary answers
        cond = _condition(live, "Ready")
        return bool(cond and cond.get("status") == "True")
    return True


def wait_ready(cluster: Cluster, obj: dict, path: str, *, timeout: float, poll: float) -> dict:
    deadline = time.monotonic() + timeout
    live = None
    while True:
        live = cluster.get(path)
        if live is not None and ready(obj, live):
            return live
        if time.monotonic() >= deadline:
            raise OrchestrateError(f"{obj['kind']}/{obj['metadata']['name']} not ready after {timeout:g}s; "
                                   f"last condition: {_last_condition(live)}",
                                   hint=f"kubectl describe {obj['kind'].lower()}/{obj['metadata']['name']}")
        time.sleep(poll)


PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError")


def receiving_pod(pods: list[dict], container: str) -> tuple[str | None, str]:
    """Of a Job's pods: the one whose init container ``container`` runs now (its name, "") or
    why none will ("", why); (None, "") while it is starting."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        if status.get("phase") == "Failed":
            return "", f"pod {name} failed: {status.get('reason', '')} {status.get('message', '')}".rstrip()
        for c in status.get("initContainerStatuses") or []:
            if c.get("name") != container:
                continue
            state = c.get("state") or {}
            if "running" in state:
                return name, ""
            if "terminated" in state:
                t = state["terminated"]
                return "", (f"pod {name}: init container {container} ended (exit {t.get('exitCode')}) before "
                            f"the upload: {t.get('message') or t.get('reason') or ''}".rstrip(": "))
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in PULL_FAILURES:
                return "", (f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
                            + f" (image {c.get('image', '?')})")
    return None, ""


def upload(cluster: Cluster, job: dict, applied: dict, up, namespace: str, out, *, timeout: float,
           poll: float) -> None:
    """Send ``up`` (kubernetes.Upload) into the Job's new pod, whose init container waits for it."""
    name = job["metadata"]["name"]
    ns = job["metadata"].get("namespace") or namespace
    uid = (applied.get("metadata") or {}).get("uid")
    selector = f"controller-uid={uid}" if uid else f"job-name={name}"
    deadline = time.monotonic() + timeout
    while True:
        _, doc = cluster.request("GET", f"/api/v1/namespaces/{ns}/pods", query=[("labelSelector", selector)])
        pod, why = receiving_pod((doc or {}).get("items") or [], up.container)
        if why:
            raise OrchestrateError(f"Job/{name}: {why}", hint="kubernetes.copy_image must be an image with orchestrate "
                                   "installed that the cluster can pull (docker/orchestrate/Dockerfile, pushed to "
                                   f"its registry); kubectl describe job/{name}")
        if pod:
            break
        if time.monotonic() >= deadline:
            raise OrchestrateError(f"Job/{name}: no pod waiting for the upload after {timeout:g}s",
                                   hint=f"kubectl describe job/{name}")
        time.sleep(poll)
    out.print(f"Job/{name}: sending {up.path.name} ({up.size:,} bytes) into pod {pod}", always=True)
    said = cluster.exec_upload(ns, pod, up.container, up.command(), up.path, timeout=timeout)
    out.print(f"Job/{name}: {said or 'received'}", always=True)


def secret_values(obj: dict) -> str:
    """A Secret's values as one text: what is kept of them is only its salted hash."""
    return json.dumps(obj.get("data") or {}, sort_keys=True)


def fingerprint(obj: dict, prev: dict) -> tuple[dict, bool]:
    """What the lockfile records of ``obj`` and whether it is what ``prev`` recorded. A Secret's
    values only as a salted hash (the secrets module's), its other fields as a digest."""
    from .secrets import hash_matches, stable_hash
    if obj["kind"] != "Secret":
        want = digest(obj)
        return {"hash": want}, prev.get("hash") == want
    values = secret_values(obj)
    shape = digest({k: v for k, v in obj.items() if k != "data"} | {"keys": sorted(obj.get("data") or {})})
    same = prev.get("hash") == shape and hash_matches(values, prev.get("data_hash"))
    return {"hash": shape, "data_hash": stable_hash(values, prev.get("data_hash"))}, same


def apply_objects(plan, objects: list[dict], out, *, cluster: Cluster, timeout: float = 600.0,
                  poll: float = 2.0, uploads: dict | None = None) -> dict[str, str]:
    """Apply in order; skip an object whose applied digest is the recorded one and that exists.
    ``uploads``: Job name -> the file sent into its pod once it is (re)created."""
    lock = Lockfile.load(plan.lock_path)
    recorded = lock.kubernetes_objects()
    ns = namespace_of(objects, cluster)
    results, entries = {}, {}
    try:
        for obj in objects:
            key, path = key_of(obj, ns), object_path(obj, ns)
            live = cluster.get(path)
            prev = recorded.get(key) or {}
            hashes, same = fingerprint(obj, prev)
            if obj["kind"] == "Job":          # how a Job that ended before its apply recorded it is known
                obj = {**obj, "metadata": {**obj["metadata"], "annotations": {
                    **obj["metadata"].get("annotations", {}), JOB_DIGEST: hashes["hash"]}}}
            if live is not None and same:
                results[key] = "no change"
            elif obj["kind"] == "Job" and live is not None and _completed(live, hashes["hash"]):
                results[key] = "no change (it completed before: recorded now)"    # e.g. apply was killed
            else:
                if obj["kind"] == "Job" and live is not None:   # a Job's template is immutable: run it anew
                    cluster.delete(path)
                    _wait_gone(cluster, path, timeout=timeout, poll=poll)
                applied = cluster.apply(obj, path)
                results[key] = "applied" + (" (the Job replaced: it runs again)" if live is not None else "")
                out.print(f"{key}: {results[key]}", always=True)
                up = (uploads or {}).get(obj["metadata"]["name"]) if obj["kind"] == "Job" else None
                if up is not None:
                    upload(cluster, obj, applied, up, ns, out, timeout=timeout, poll=poll)
            if results[key].startswith("no change"):
                out.print(f"{key}: {results[key]}", always=True)
            live = wait_ready(cluster, obj, path, timeout=timeout, poll=poll)
            entries[key] = {"kind": obj["kind"], "name": obj["metadata"]["name"],
                            "namespace": key.split("/")[1] or None,
                            "resourceVersion": (live.get("metadata") or {}).get("resourceVersion"), **hashes}
    finally:    # what was applied and became ready is recorded, even when a later object failed
        lock.set_kubernetes_objects({**recorded, **entries})
        lock.save()
    return results


def _completed(live: dict, want: str) -> bool:
    """A Job applied with this very digest that completed (its apply died before recording it)."""
    applied = ((live.get("metadata") or {}).get("annotations") or {}).get(JOB_DIGEST)
    done = _condition(live, "Complete")
    return applied == want and bool(done and done.get("status") == "True")


def _wait_gone(cluster: Cluster, path: str, *, timeout: float, poll: float) -> None:
    deadline = time.monotonic() + timeout
    while cluster.get(path) is not None:
        if time.monotonic() >= deadline:
            raise OrchestrateError(f"{path}: still there {timeout:g}s after it was deleted")
        time.sleep(poll)


def _overrides(args) -> dict:
    from .cli import _overrides as parse
    return parse(args.extra_vars)


def cmd_render(args, out) -> int:
    plan, rendered = load_rendered(args.plan, _overrides(args), args.var_files,
                                   namespace=args.namespace, secrets=not args.no_secrets)
    out_dir = Path(args.out or f"k8s-{plan.name}")
    for path in write(rendered, out_dir):
        out.print(f"wrote {path}" + (" (0600: holds the secret values)" if path.name == "secrets.yaml" else ""),
                  always=True)
    out.print(f"{len(rendered.objects)} object(s): "
              + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in rendered.objects), always=True)
    for note in rendered.notes:
        out.print(f"note: {note}", always=True)
    return 0


def cmd_apply(args, out, doc: dict | None = None) -> int:
    """``doc``: a saved plan (``plan --target kubernetes --out FILE``) to apply exactly."""
    from . import saved
    if getattr(args, "only", None):
        raise OrchestrateError("--only does not go with --target kubernetes (every object is applied)")
    if doc is not None:
        if args.extra_vars or args.var_files or getattr(args, "namespace", None):
            raise OrchestrateError("a saved plan already holds its variables and namespace; -e, --var-file and "
                                   "--namespace go with orchestrate plan")
        saved.check_inputs(doc)
        plan, rendered = load_rendered(doc["_plan_path"], doc["extra_vars"], doc["_var_files"],
                                       namespace=doc.get("namespace_option"), create_sources=True)
    else:
        plan, rendered = load_rendered(args.plan, _overrides(args), args.var_files,
                                       namespace=getattr(args, "namespace", None), create_sources=True)
    cluster = Cluster(getattr(args, "kubeconfig", None))
    if doc is not None:
        stale = stale_objects(doc, rendered.objects, cluster)
        if stale:
            raise OrchestrateError("the saved plan is stale: " + "; ".join(stale) + "; nothing was changed",
                                   hint="make a new plan (orchestrate plan --target kubernetes PLAN --out FILE) "
                                        "and review it")
        out.print(f"Applying the saved plan {args.plan} (made {doc['created']})", always=True)
    with ApplyLock(plan.path):
        results = apply_objects(plan, rendered.objects, out, cluster=cluster, uploads=rendered.uploads,
                                timeout=getattr(args, "k8s_timeout", 600.0), poll=getattr(args, "k8s_poll", 2.0))
    changed = sum(1 for r in results.values() if not r.startswith("no change"))
    out.print(f"Kubernetes: {changed} applied, {len(results) - changed} unchanged ({cluster.server})", always=True)
    for note in rendered.notes:
        out.print(f"note: {note}", always=True)
    return 0


def namespace_of(objects: list[dict], cluster: Cluster) -> str:
    return next((o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"), None) or cluster.namespace


def seen(live: dict | None) -> str | None:
    """What a saved plan records of an object as the cluster showed it: absent (None), or its
    generation (spec changes; status updates leave it) or, for objects without one, its
    resourceVersion."""
    if live is None:
        return None
    meta = live.get("metadata") or {}
    return f"generation {meta['generation']}" if meta.get("generation") else f"version {meta.get('resourceVersion')}"


def destroy_objects(plan, objects: list[dict], out, *, cluster: Cluster, volumes: bool) -> None:
    """Delete the plan's objects, last applied first. Kept: the Namespace, a CloudNativePG Cluster
    (deleting it deletes its volumes) and the database's PersistentVolumeClaims, unless ``volumes``."""
    ns = namespace_of(objects, cluster)
    lock = Lockfile.load(plan.lock_path)
    recorded = lock.kubernetes_objects()
    data_steps = set()
    for obj in reversed(objects):
        key, path = key_of(obj, ns), object_path(obj, ns)
        if obj["kind"] == "StatefulSet":
            data_steps.add(obj["metadata"]["labels"]["orchestrate.step"])
        if obj["kind"] == "Namespace":
            out.print(f"{key}: kept (delete it yourself once nothing else lives in it)", always=True)
            continue
        if obj["kind"] == "Cluster" and not volumes:
            out.print(f"{key}: kept (the operator deletes its volumes with it: --volumes deletes it)", always=True)
            continue
        if cluster.get(path) is None:
            out.print(f"{key}: absent", always=True)
        else:
            cluster.delete(path)
            out.print(f"{key}: deleted", always=True)
        recorded.pop(key, None)
        lock.set_kubernetes_objects(recorded)
        lock.save()               # one by one: a kill -9 leaves the lockfile saying what is left
    for step in sorted(data_steps):
        selector = f"orchestrate.plan={dns_name(plan.name)},orchestrate.step={step}"
        _, doc = cluster.request("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
                                 query=[("labelSelector", selector)])
        for pvc in (doc or {}).get("items") or []:
            name = pvc["metadata"]["name"]
            if volumes:
                cluster.delete(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}")
                out.print(f"PersistentVolumeClaim/{ns}/{name}: deleted, with the data in it", always=True)
            else:
                out.print(f"PersistentVolumeClaim/{ns}/{name}: kept (the database's data; --volumes deletes it)",
                          always=True)


def plan_objects(plan, objects: list[dict], *, cluster: Cluster, saved: list | None = None) -> dict[str, str]:
    """What apply would do to each object, read-only: create (absent), update (its digest is not
    the recorded one; the server checks it by a server-side apply with dryRun=All) or no change.
    ``saved``: a list that gets, per object, what a saved plan records of it."""
    from .secrets import stable_hash
    recorded = Lockfile.load(plan.lock_path).kubernetes_objects()
    ns = namespace_of(objects, cluster)
    results = {}
    for obj in objects:
        key, path = key_of(obj, ns), object_path(obj, ns)
        live = cluster.get(path)
        hashes, same = fingerprint(obj, recorded.get(key) or {})
        if saved is not None:
            entry = {"key": key, "hash": hashes["hash"], "seen": seen(live)}
            if ((obj["metadata"].get("annotations") or {}).get(SOURCE_SHA) or "").startswith("unknown") \
                    or _pending_secret(obj):
                entry["known_after_apply"] = True    # a copy Job whose source apply creates (if_missing), a
                                                     # Secret holding a value apply generates
            if "data_hash" in hashes:
                entry["data_hash"] = stable_hash(secret_values(obj), None)
            saved.append(entry)
        if live is not None and (same or obj["kind"] == "Job" and _completed(live, hashes["hash"])):
            results[key] = "no change"
        else:
            if live is not None or cluster.get(object_path({"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": ns}}, ns)) is not None:
                cluster.apply(obj, path, dry_run=True)    # the server's own admission and validation
            results[key] = "create" if live is None else ("replace (a Job runs again)" if obj["kind"] == "Job"
                                                          else "update")
        if saved is not None:
            saved[-1]["action"] = results[key]
    return results


def _pending_secret(obj: dict) -> bool:
    import base64
    from urllib.parse import quote
    from .secrets import PENDING
    marks = {PENDING, quote(PENDING, safe=""), quote(PENDING)}     # as is, or as a URL part
    return obj["kind"] == "Secret" and any(m in base64.b64decode(v).decode("utf-8", "replace")
                                           for v in (obj.get("data") or {}).values() for m in marks)


def stale_objects(doc: dict, objects: list[dict], cluster: Cluster) -> list[str]:
    """What differs between a saved Kubernetes plan and now: the objects rendered again (the
    same plan, variables and secrets, the same source files) and the cluster (each object as
    it was seen: absent, or the same generation)."""
    from .secrets import hash_matches
    ns = namespace_of(objects, cluster)
    out = [] if ns == doc.get("namespace") else [f"the namespace is {ns}, not {doc.get('namespace')}"]
    saved = {o["key"]: o for o in doc.get("objects") or []}
    keys = [key_of(obj, ns) for obj in objects]
    out += [f"{k} is no longer in the plan" for k in saved if k not in keys]
    recorded = Lockfile.load(Path(doc["_plan_path"]).with_suffix(".lock")).kubernetes_objects()
    for key, obj in zip(keys, objects):
        then = saved.get(key)
        if then is None:
            out.append(f"{key} is new in the plan")
            continue
        hashes, _ = fingerprint(obj, recorded.get(key) or {})
        if then.get("known_after_apply"):
            pass
        elif hashes["hash"] != then["hash"] or ("data_hash" in then
                                                and not hash_matches(secret_values(obj), then["data_hash"])):
            out.append(f"{key} renders differently now (a variable, secret or source file changed)")
            continue
        now = seen(cluster.get(object_path(obj, ns)))
        if now != then.get("seen"):
            out.append(f"{key} changed in the cluster ({then.get('seen') or 'absent'} then, {now or 'absent'} now)")
    return out


def cmd_destroy(args, out) -> int:
    if getattr(args, "only", None) or getattr(args, "images", False):
        raise OrchestrateError("--only and --images do not go with --target kubernetes")
    if args.volumes and not args.no_backup:
        raise OrchestrateError("--volumes deletes the database's volumes in the cluster, and no backup can be taken "
                               "from here first", hint="take one (kubectl port-forward svc/<db service> 5432:5432, "
                               "then orchestrate backup with the plan's url at 127.0.0.1:5432), then add --no-backup")
    plan, rendered = load_rendered(args.plan, _overrides(args), args.var_files,
                                   namespace=getattr(args, "namespace", None), secrets=False, generate=False)
    if args.volumes:
        from .cli import _confirm
        _confirm(f"This deletes the database volumes of plan {plan.name!r} in the cluster and ALL the data in "
                 f"them, with no backup", args.yes, plan.name)
    cluster = Cluster(getattr(args, "kubeconfig", None))
    with ApplyLock(plan.path):
        destroy_objects(plan, rendered.objects, out, cluster=cluster, volumes=args.volumes)
    return 0


def cmd_plan(args, out) -> int:
    from . import saved
    if getattr(args, "json", False) or args.sql or args.preview:
        raise OrchestrateError("--json, --sql and --preview do not go with --target kubernetes")
    namespace = getattr(args, "namespace", None)
    plan, rendered = load_rendered(args.plan, _overrides(args), args.var_files, namespace=namespace,
                                   generate=False)     # plan writes nothing: a secret to generate is pending
    cluster = Cluster(getattr(args, "kubeconfig", None))
    entries: list[dict] = []
    results = plan_objects(plan, rendered.objects, cluster=cluster, saved=entries)
    for key, what in results.items():
        out.print(f"{key}: {what}", always=True)
    changed = sum(1 for r in results.values() if r != "no change")
    out.print(f"Kubernetes: {changed} to apply, {len(results) - changed} unchanged ({cluster.server})", always=True)
    if args.out:
        saved.write_kubernetes(args.out, plan, namespace_of(rendered.objects, cluster), entries,
                               namespace_option=namespace)
        out.print(f"Saved the plan to {args.out}; apply exactly these changes with: orchestrate apply {args.out}",
                  always=True)
    return 2 if changed and args.detailed_exitcode else 0
