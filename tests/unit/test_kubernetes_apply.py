"""orchestrate apply --target kubernetes against a fake API server (http.server on 127.0.0.1) that
records every request, answers server-side apply PATCHes and GETs, and reports an object ready
only after a few reads; gives a copy-data Job a pod whose init container takes the upload through
the exec subresource (a websocket speaking the v4 channel protocol, as the API server does); and,
when KUBECONFIG names a real cluster, against that cluster."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from orchestrator.cli import main

from ..conftest import copy_repo

pytest.importorskip("kubernetes")

PASSWORD = "k8s-Apply-pw-93ab"
READY_AFTER = 2      # GETs of an object before its status says ready


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   # RFC 6455


def ws_read_frame(rfile) -> tuple[int, bytes]:
    """One frame from a websocket client (masked, as clients send them)."""
    head = rfile.read(2)
    if len(head) < 2:
        return 8, b""
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n))
    return head + payload


class FakeApi:
    def __init__(self, fail_jobs=(), pull_fail=False, damage=False):
        self.requests: list[dict] = []
        self.objects: dict[str, dict] = {}
        self.reads: dict[str, int] = {}
        self.fail_jobs = set(fail_jobs)
        self.pods: dict[str, dict] = {}          # pod name -> pod (a copy-data Job's)
        self.received: dict[str, bytes] = {}     # pod name -> the file its init container took
        self.pull_fail, self.damage = pull_fail, damage
        self.version = 100
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    return api.exec(self)
                self._answer(*api.handle(self, "GET"))

            def do_PATCH(self):
                self._answer(*api.handle(self, "PATCH"))

            def do_DELETE(self):
                self._answer(*api.handle(self, "DELETE"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, h, method):
        parts = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode() if method == "PATCH" else ""
        with self.lock:
            self.requests.append({"method": method, "path": parts.path, "query": parse_qs(parts.query),
                                  "content_type": h.headers.get("Content-Type"), "body": body})
            path = parts.path
            if method == "PATCH":
                obj = yaml.safe_load(body)
                old = self.objects.get(path)
                if parse_qs(parts.query).get("dryRun") == ["All"]:
                    return 200, obj
                self.version += 1
                gen = (old or {}).get("metadata", {}).get("generation", 0) + 1
                uid = (old or {}).get("metadata", {}).get("uid") or f"uid-{self.version}"
                obj["metadata"].update(resourceVersion=str(self.version), generation=gen, uid=uid)
                obj["status"] = {}
                self.objects[path] = obj
                self.reads[path] = 0
                if obj["kind"] == "Job" and obj["spec"]["template"]["spec"].get("initContainers"):
                    self.start_pod(obj)
                for vct in obj["spec"].get("volumeClaimTemplates") or [] if obj["kind"] == "StatefulSet" else []:
                    name = f"{vct['metadata']['name']}-{obj['metadata']['name']}-0"     # as the controller names it
                    ns = path.split("/")[5]           # /apis/apps/v1/namespaces/NS/statefulsets/NAME
                    self.objects[f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"] = {
                        "kind": "PersistentVolumeClaim", "metadata": {"name": name, "labels": vct["metadata"]["labels"]}}
                return (200 if old else 201), obj
            if method == "DELETE":
                self.objects.pop(path, None)
                return 200, {"kind": "Status", "status": "Success"}
            if path.endswith("/persistentvolumeclaims"):
                want = dict(kv.split("=", 1) for kv in parse_qs(parts.query)["labelSelector"][0].split(","))
                return 200, {"kind": "PersistentVolumeClaimList", "items": [
                    o for p, o in self.objects.items() if p.startswith(path + "/")
                    and want.items() <= o["metadata"]["labels"].items()]}
            if path.endswith("/pods"):
                selector = parse_qs(parts.query)["labelSelector"][0]
                key, value = selector.split("=", 1)
                items = [p for p in self.pods.values() if p["metadata"]["labels"].get(key) == value]
                for pod in items:     # the init container runs (or cannot pull) from the second read on
                    pod["reads"] = pod.get("reads", 0) + 1
                    if pod["reads"] >= 2:
                        pod["status"]["initContainerStatuses"][0]["state"] = (
                            {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
                            if self.pull_fail else {"running": {"startedAt": "2026-12-06T00:00:00Z"}})
                return 200, {"kind": "PodList", "items": [{k: v for k, v in p.items() if k != "reads"}
                                                          for p in items]}
            obj = self.objects.get(path)
            if obj is None:
                return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "message": "not found"}
            self.reads[path] = self.reads.get(path, 0) + 1
            if self.reads[path] >= READY_AFTER:
                obj["status"] = self.ready_status(obj)
            return 200, obj

    def start_pod(self, job):
        name = f"{job['metadata']['name']}-{job['metadata']['uid'][-5:]}"
        init = job["spec"]["template"]["spec"]["initContainers"][0]
        self.pods[name] = {"metadata": {"name": name, "labels": {"controller-uid": job["metadata"]["uid"],
                                                                  "job-name": job["metadata"]["name"]}},
                           "status": {"phase": "Pending", "initContainerStatuses": [
                               {"name": init["name"], "image": init["image"],
                                "state": {"waiting": {"reason": "PodInitializing"}}}]}}

    def exec(self, h):
        """The exec subresource: the websocket handshake, then the v4 channel protocol: stdin
        (channel 0) read until the size the command names, stdout (1) and the status (3) sent."""
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        pod = parts.path.split("/")[-2]
        with self.lock:
            self.requests.append({"method": "EXEC", "path": parts.path, "query": query})
        accept = base64.b64encode(hashlib.sha1((h.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
        h.send_response(101)
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept.decode())
        h.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        h.end_headers()
        command = query["command"]
        size, sha = int(command[command.index("--size") + 1]), command[command.index("--sha256") + 1]
        data = b""
        while len(data) < size:
            opcode, payload = ws_read_frame(h.rfile)
            if opcode == 8:
                break
            if payload[:1] == b"\0":
                data += payload[1:]
        if self.damage:
            data = data[:-1] + b"?"
        if hashlib.sha256(data).hexdigest() == sha:
            self.received[pod] = data
            h.wfile.write(ws_frame(b"\x01" + f"received {command[command.index('put') + 1]}".encode()))
            h.wfile.write(ws_frame(b"\x03" + json.dumps({"metadata": {}, "status": "Success"}).encode()))
        else:
            h.wfile.write(ws_frame(b"\x02" + b"error: the upload is incomplete or damaged"))
            h.wfile.write(ws_frame(b"\x03" + json.dumps({
                "status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with exit code 1",
                "details": {"causes": [{"reason": "ExitCode", "message": "1"}]}}).encode()))
        h.wfile.write(ws_frame(b"\x03\xe8", opcode=8))
        h.close_connection = True

    def ready_status(self, obj):
        gen = obj["metadata"]["generation"]
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Job" and obj["spec"]["template"]["spec"].get("initContainers"):
            pod = f"{name}-{obj['metadata']['uid'][-5:]}"
            if pod not in self.received:      # its init container still waits for the file
                return {"active": 1}
        if kind == "StatefulSet":
            return {"observedGeneration": gen, "replicas": 1, "readyReplicas": 1}
        if kind == "Deployment":
            return {"observedGeneration": gen, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
                    "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}
        if kind == "Job":
            if name in self.fail_jobs:
                return {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                     "message": "Job has reached the specified backoff limit"}]}
            return {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        if kind == "Cluster":          # CloudNativePG's
            return {"instances": 1, "readyInstances": 1, "phase": "Cluster in healthy state",
                    "conditions": [{"type": "Ready", "status": "True", "reason": "ClusterIsReady"}]}
        return {}

    def patches(self):
        return [r for r in self.requests if r["method"] == "PATCH"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def kubeconfig(path, server):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "orch"}}]}))
    return path


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", PASSWORD)
    monkeypatch.setenv("AUTODEPLOY_PGADMIN_PASSWORD", "pgadmin-pw-unused")
    return copy_repo(tmp_path / "repo")


def run_apply(repo, config, *extra):
    buf = io.StringIO()
    code = main(["apply", "--target", "kubernetes", str(repo / "plans" / "phase2.yaml"), "--kubeconfig", str(config),
                 "-e", "pg_image=orchestrate-test/postgres:15", "-e", "nginx_image=orchestrate-test/nginx:1.22",
                 *extra], stdout=buf)
    return code, buf.getvalue()


@pytest.fixture
def fast(monkeypatch):
    import orchestrator.kubernetes_apply as ka
    real = ka.wait_ready
    monkeypatch.setattr(ka, "wait_ready", lambda c, o, p, timeout, poll: real(c, o, p, timeout=5, poll=0.01))
    monkeypatch.setattr(ka, "_wait_gone", lambda c, p, timeout, poll: None)


def test_apply_sends_server_side_apply_in_order_and_waits(repo, tmp_path, fast):
    api = FakeApi()
    try:
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url))
        assert code == 0, text
        assert PASSWORD not in text
        patches = api.patches()
        kinds = [yaml.safe_load(p["body"])["kind"] + "/" + yaml.safe_load(p["body"])["metadata"]["name"]
                 for p in patches]
        assert kinds == ["Secret/autodeploy-phase2-postgres-env", "Secret/autodeploy-phase2-schema-env",
                         "Secret/autodeploy-phase2-data-env", "Secret/autodeploy-phase2-app-env",
                         "Service/postgres", "StatefulSet/postgres", "Job/autodeploy-phase2-schema",
                         "ConfigMap/autodeploy-phase2-data-plan", "Job/autodeploy-phase2-data",
                         "Deployment/app", "Service/app",
                         "ConfigMap/autodeploy-phase2-proxy-files", "Deployment/proxy", "Service/proxy"]
        for p in patches:
            assert p["content_type"] == "application/apply-patch+yaml"
            assert p["query"]["fieldManager"] == ["orchestrate"] and p["query"]["force"] == ["true"]
        assert patches[5]["path"] == "/apis/apps/v1/namespaces/orch/statefulsets/postgres"
        assert patches[6]["path"] == "/apis/batch/v1/namespaces/orch/jobs/autodeploy-phase2-schema"
        # each workload was read back until its status said ready, before the next object was applied
        seq = [(r["method"], r["path"]) for r in api.requests]
        sts = "/apis/apps/v1/namespaces/orch/statefulsets/postgres"
        first_job_patch = seq.index(("PATCH", "/apis/batch/v1/namespaces/orch/jobs/autodeploy-phase2-schema"))
        assert seq[:first_job_patch].count(("GET", sts)) >= 1 + READY_AFTER
        assert api.reads["/apis/apps/v1/namespaces/orch/deployments/app"] >= READY_AFTER
        # copy-data: the SQLite file went into the Job's pod, whole, after the Job and before the app;
        # the Job was then read back until Complete
        source = (repo / "deployment_platform.db").read_bytes()
        assert list(api.received.values()) == [source]
        data_job = "/apis/batch/v1/namespaces/orch/jobs/autodeploy-phase2-data"
        upload = next(i for i, r in enumerate(api.requests) if r["method"] == "EXEC")
        assert seq.index(("PATCH", data_job)) < upload < seq.index(("PATCH", "/apis/apps/v1/namespaces/orch/deployments/app"))
        assert api.requests[upload]["query"]["container"] == ["receive"]
        assert ("GET", data_job) in seq[upload:seq.index(("PATCH", "/apis/apps/v1/namespaces/orch/deployments/app"))]
        assert f"sending deployment_platform.db ({len(source):,} bytes)" in text
        lock = json.loads((repo / "plans" / "phase2.lock").read_text())
        objs = lock["kubernetes"]["objects"]
        assert objs["StatefulSet/orch/postgres"]["resourceVersion"] and objs["Job/orch/autodeploy-phase2-schema"]["hash"]
        assert PASSWORD not in json.dumps(lock)
        assert base64.b64encode(PASSWORD.encode()).decode() not in json.dumps(lock)
        assert objs["Secret/orch/autodeploy-phase2-postgres-env"]["data_hash"]   # salted, the values' only trace
        # the second apply: every object exists with the recorded digest: no request changes anything
        n, before = len(patches), len(api.requests)
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url))
        assert code == 0, text
        assert len(api.patches()) == n and not [r for r in api.requests[before:] if r["method"] in ("DELETE", "EXEC")]
        assert "14 unchanged" in text and text.count("no change") == 14
        # a changed image: the Deployment is applied again, the rest is unchanged
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url), "-e", "nginx_image=nginx:1.27")
        assert code == 0, text
        assert [yaml.safe_load(p["body"])["metadata"]["name"] for p in api.patches()[n:]] == ["proxy"]
    finally:
        api.close()


def test_plan_shows_what_apply_would_change_and_changes_nothing(repo, tmp_path, fast):
    api = FakeApi()
    config = kubeconfig(tmp_path / "kubeconfig", api.url)
    args = ["plan", "--target", "kubernetes", str(repo / "plans" / "phase2.yaml"), "--kubeconfig", str(config),
            "-e", "pg_image=orchestrate-test/postgres:15", "-e", "nginx_image=orchestrate-test/nginx:1.22",
            "--detailed-exitcode"]
    try:
        api.objects["/api/v1/namespaces/orch"] = {"kind": "Namespace", "metadata": {"name": "orch", "generation": 1}}
        buf = io.StringIO()
        assert main(args, stdout=buf) == 2
        assert buf.getvalue().count(": create") == 14 and PASSWORD not in buf.getvalue()
        patches = api.patches()
        assert len(patches) == 14 and all(p["query"]["dryRun"] == ["All"] for p in patches)
        assert len(api.objects) == 1                         # nothing was stored
        assert not (repo / "plans" / "phase2.lock").exists()
        code, text = run_apply(repo, config)
        assert code == 0, text
        buf = io.StringIO()
        assert main(args, stdout=buf) == 0 and buf.getvalue().count("no change") == 14
        buf = io.StringIO()
        assert main(args + ["-e", "nginx_image=nginx:1.27"], stdout=buf) == 2
        assert "Deployment/orch/proxy: update" in buf.getvalue()
    finally:
        api.close()


def test_namespace_is_created_first_and_holds_every_object(repo, tmp_path, fast):
    api = FakeApi()
    try:
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url), "--namespace", "autodeploy")
        assert code == 0, text
        paths = [p["path"] for p in api.patches()]
        assert paths[0] == "/api/v1/namespaces/autodeploy"
        assert all(p.startswith(("/api/v1/namespaces/autodeploy/", "/apis/apps/v1/namespaces/autodeploy/",
                                 "/apis/batch/v1/namespaces/autodeploy/")) for p in paths[1:])
    finally:
        api.close()


def test_a_failed_job_fails_the_apply_with_its_reason(repo, tmp_path, fast):
    api = FakeApi(fail_jobs={"autodeploy-phase2-schema"})
    try:
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url))
        assert code == 1
        assert "Job/autodeploy-phase2-schema failed: BackoffLimitExceeded" in text
        names = [yaml.safe_load(p["body"])["metadata"]["name"] for p in api.patches()]
        assert names[-1] == "autodeploy-phase2-schema"      # nothing after the failed Job was applied
        lock = json.loads((repo / "plans" / "phase2.lock").read_text())
        assert "Job/orch/autodeploy-phase2-schema" not in lock["kubernetes"]["objects"]
        assert "StatefulSet/orch/postgres" in lock["kubernetes"]["objects"]
    finally:
        api.close()


def test_a_timeout_names_the_object_and_its_last_condition(repo, tmp_path, monkeypatch):
    import orchestrator.kubernetes_apply as ka
    real = ka.wait_ready
    monkeypatch.setattr(ka, "wait_ready", lambda c, o, p, timeout, poll: real(c, o, p, timeout=0.2, poll=0.01))
    api = FakeApi()
    api.ready_status = lambda obj: {"conditions": [{"type": "Progressing", "status": "True", "reason": "Waiting",
                                                    "message": "0 of 1 ready"}]}
    try:
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url))
        assert code == 1
        assert "StatefulSet/postgres not ready after 0.2s; last condition: Progressing=True (Waiting: 0 of 1 ready)" in text
    finally:
        api.close()


def test_a_cloudnativepg_cluster_is_applied_and_waited_on_then_the_ingress(repo, tmp_path, fast):
    from .test_kubernetes_render import _with_options
    _with_options(repo, "kubernetes:\n  postgres: cloudnativepg\n  ingress: {step: app, host: autodeploy.example.com, "
                        "replaces: [proxy]}\n")
    api = FakeApi()
    try:
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url))
        assert code == 0, text
        kinds = [yaml.safe_load(p["body"])["kind"] + "/" + yaml.safe_load(p["body"])["metadata"]["name"]
                 for p in api.patches()]
        assert kinds == ["Secret/autodeploy-phase2-postgres-app", "Secret/autodeploy-phase2-schema-env",
                         "Secret/autodeploy-phase2-app-env", "Cluster/postgres", "Service/postgres",
                         "Job/autodeploy-phase2-schema", "Deployment/app", "Service/app", "Ingress/autodeploy-phase2"]
        cluster = "/apis/postgresql.cnpg.io/v1/namespaces/orch/clusters/postgres"
        ingress = "/apis/networking.k8s.io/v1/namespaces/orch/ingresses/autodeploy-phase2"
        assert cluster in [p["path"] for p in api.patches()] and ingress in [p["path"] for p in api.patches()]
        # the Cluster was read back until Ready before the migrate Job was applied
        seq = [(r["method"], r["path"]) for r in api.requests]
        job = seq.index(("PATCH", "/apis/batch/v1/namespaces/orch/jobs/autodeploy-phase2-schema"))
        assert seq[:job].count(("GET", cluster)) >= 1 + READY_AFTER
        assert PASSWORD not in text
        # destroy keeps the Cluster: the operator would delete its volumes with it
        buf = io.StringIO()
        assert main(["destroy", "--target", "kubernetes", str(repo / "plans" / "phase2.yaml"), "--kubeconfig",
                     str(kubeconfig(tmp_path / "kubeconfig", api.url))], stdout=buf) == 0
        assert "Cluster/orch/postgres: kept (the operator deletes its volumes with it" in buf.getvalue()
        assert cluster in api.objects and ingress not in api.objects
    finally:
        api.close()


def test_a_damaged_upload_fails_and_the_next_apply_runs_the_job_anew(repo, tmp_path, fast):
    api = FakeApi(damage=True)
    config = kubeconfig(tmp_path / "kubeconfig", api.url)
    job = "/apis/batch/v1/namespaces/orch/jobs/autodeploy-phase2-data"
    try:
        code, text = run_apply(repo, config)
        assert code == 1
        assert "container receive: the upload failed: error: the upload is incomplete or damaged" in text
        assert "run apply again" in text
        names = [yaml.safe_load(p["body"])["metadata"]["name"] for p in api.patches()]
        assert names[-1] == "autodeploy-phase2-data" and not api.received   # nothing after it was applied
        lock = json.loads((repo / "plans" / "phase2.lock").read_text())
        assert "Job/orch/autodeploy-phase2-data" not in lock["kubernetes"]["objects"]
        # as after a kill -9 during the upload: the Job is there, not recorded; apply deletes it,
        # creates it again, and sends the file into the new pod
        api.damage = False
        before = len(api.requests)
        code, text = run_apply(repo, config)
        assert code == 0, text
        seq = [(r["method"], r["path"]) for r in api.requests[before:]]
        assert seq.index(("DELETE", job)) < seq.index(("PATCH", job)) < [m for m, _ in seq].index("EXEC")
        assert list(api.received.values()) == [(repo / "deployment_platform.db").read_bytes()]
        assert "Job/orch/autodeploy-phase2-data: no change" not in text
    finally:
        api.close()


def test_a_job_that_completed_before_its_apply_recorded_it_is_not_run_again(repo, tmp_path, fast):
    """apply killed after the copy Job completed, before the lockfile said so: the next apply
    sees the Job it applied (its digest annotation) completed, and records it; no second copy."""
    api = FakeApi()
    config = kubeconfig(tmp_path / "kubeconfig", api.url)
    try:
        assert run_apply(repo, config)[0] == 0
        lock_path = repo / "plans" / "phase2.lock"
        lock = json.loads(lock_path.read_text())
        for key in ("Job/orch/autodeploy-phase2-data", "Job/orch/autodeploy-phase2-schema"):
            del lock["kubernetes"]["objects"][key]
        lock_path.write_text(json.dumps(lock))
        before = len(api.requests)
        code, text = run_apply(repo, config)
        assert code == 0, text
        assert not [r for r in api.requests[before:] if r["method"] in ("PATCH", "DELETE", "EXEC")]
        assert "Job/orch/autodeploy-phase2-data: no change (it completed before: recorded now)" in text
        assert "Job/orch/autodeploy-phase2-data" in json.loads(lock_path.read_text())["kubernetes"]["objects"]
    finally:
        api.close()


def test_an_image_the_cluster_cannot_pull_stops_the_upload_with_what_to_do(repo, tmp_path, fast):
    api = FakeApi(pull_fail=True)
    try:
        code, text = run_apply(repo, kubeconfig(tmp_path / "kubeconfig", api.url), "-e", "orchestrate_image=nowhere/orch:1")
        assert code == 1
        assert "ImagePullBackOff" in text and "(image nowhere/orch:1)" in text
        assert "kubernetes.copy_image must be an image with orchestrate installed" in text
        assert not [r for r in api.requests if r["method"] == "EXEC"]
    finally:
        api.close()


def _plan_out(repo, config, saved, *extra):
    buf = io.StringIO()
    code = main(["plan", "--target", "kubernetes", str(repo / "plans" / "phase2.yaml"), "--kubeconfig", str(config),
                 "-e", "pg_image=orchestrate-test/postgres:15", "-e", "nginx_image=orchestrate-test/nginx:1.22",
                 "--out", str(saved), *extra], stdout=buf)
    return code, buf.getvalue()


def _apply_saved(saved, config, *extra):
    buf = io.StringIO()
    code = main(["apply", str(saved), "--kubeconfig", str(config), *extra], stdout=buf)
    return code, buf.getvalue()


def test_a_saved_plan_applies_exactly_what_was_reviewed(repo, tmp_path, fast, monkeypatch):
    """plan --target kubernetes --out FILE on a pull request, apply FILE on merge: the saved plan
    holds no secret; it is applied as it was (the copy Job's source, made by if_missing at apply,
    known after apply); a second plan finds nothing to do."""
    api = FakeApi()
    config = kubeconfig(tmp_path / "kubeconfig", api.url)
    saved = tmp_path / "k8s.plan"
    try:
        code, text = _plan_out(repo, config, saved)
        assert code == 0 and "Saved the plan" in text, text
        assert not api.objects and PASSWORD not in saved.read_text()
        doc = json.loads(saved.read_text())
        assert doc["target"] == "kubernetes" and doc["namespace"] == "orch" and len(doc["objects"]) == 14
        code, text = _apply_saved(saved, config)          # no --target: the saved plan says it
        assert code == 0, text
        assert "Applying the saved plan" in text and "14 applied" in text
        assert list(api.received.values()) == [(repo / "deployment_platform.db").read_bytes()]
        # reviewed again and changed by someone else in between: the saved plan is stale
        code, text = _plan_out(repo, config, saved, "-e", "nginx_image=nginx:1.27")
        assert code == 0 and "Deployment/orch/proxy: update" in text
        assert run_apply(repo, config, "-e", "nginx_image=nginx:1.25")[0] == 0
        before = len(api.patches())
        code, text = _apply_saved(saved, config)
        assert code == 1 and "the saved plan is stale" in text and "nothing was changed" in text
        assert "Deployment/orch/proxy changed in the cluster (generation 1 then, generation 2 now)" in text
        assert len(api.patches()) == before
        # a secret that changed since the plan was made: stale too, and the value is not said
        code, text = _plan_out(repo, config, saved, "-e", "nginx_image=nginx:1.25")
        assert code == 0
        monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", "another-Password-51")
        code, text = _apply_saved(saved, config)
        assert code == 1 and "Secret/orch/autodeploy-phase2-postgres-env renders differently now" in text
        assert "another-Password-51" not in text and PASSWORD not in text
        assert len(api.patches()) == before
        # -e with a saved plan is refused: it holds its variables
        code, text = _apply_saved(saved, config, "-e", "x=1")
        assert code == 1 and "a saved plan already holds its variables" in text
    finally:
        api.close()


def test_a_saved_plan_made_before_its_secrets_exist_applies_them_generated(repo, tmp_path, fast, monkeypatch):
    monkeypatch.delenv("AUTODEPLOY_DB_PASSWORD")
    monkeypatch.delenv("AUTODEPLOY_PGADMIN_PASSWORD")
    api = FakeApi()
    config = kubeconfig(tmp_path / "kubeconfig", api.url)
    try:
        code, text = _plan_out(repo, config, tmp_path / "k8s.plan")
        assert code == 0, text
        assert not (repo / "plans" / "phase2.secrets").exists()        # plan wrote nothing
        code, text = _apply_saved(tmp_path / "k8s.plan", config)
        assert code == 0 and "14 applied" in text, text
        generated = yaml.safe_load((repo / "plans" / "phase2.secrets").read_text())["db_password"]
        secret = api.objects["/api/v1/namespaces/orch/secrets/autodeploy-phase2-postgres-env"]
        assert base64.b64decode(secret["data"]["POSTGRES_PASSWORD"]).decode() == generated
        assert generated not in text
    finally:
        api.close()


def test_destroy_deletes_the_objects_last_first_and_keeps_the_data(repo, tmp_path, fast):
    api = FakeApi()
    config = kubeconfig(tmp_path / "kubeconfig", api.url)
    pvc = "/api/v1/namespaces/orch/persistentvolumeclaims/postgres-data-postgres-0"

    def destroy(*extra):
        buf = io.StringIO()
        code = main(["destroy", "--target", "kubernetes", str(repo / "plans" / "phase2.yaml"), "--kubeconfig",
                     str(config), *extra], stdout=buf)
        return code, buf.getvalue()
    try:
        assert run_apply(repo, config)[0] == 0
        assert pvc in api.objects
        applied = [p["path"] for p in api.patches()]
        code, text = destroy()
        assert code == 0, text
        deleted = [r["path"] for r in api.requests if r["method"] == "DELETE"]
        assert deleted == list(reversed(applied))                 # last applied, first deleted
        assert pvc in api.objects and "postgres-data-postgres-0: kept (the database's data" in text
        lock = json.loads((repo / "plans" / "phase2.lock").read_text())
        assert lock["kubernetes"]["objects"] == {}
        # again: nothing is left to delete
        code, text = destroy()
        assert code == 0 and text.count(": absent") == 14 and ": deleted" not in text
        # --volumes: refused without --no-backup (no backup can be taken from here), then asked for
        code, text = destroy("--volumes")
        assert code == 1 and "no backup can be taken from here" in text and pvc in api.objects
        code, text = destroy("--volumes", "--no-backup", "--yes")
        assert code == 0 and "postgres-data-postgres-0: deleted, with the data in it" in text
        assert pvc not in api.objects
    finally:
        api.close()


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG is not set: no real cluster to apply to")
def test_against_a_real_cluster(repo):
    """The same plan on the cluster KUBECONFIG names, in a namespace of its own; the images must be
    pullable there (KUBE_TEST_APP_IMAGE: the application's image in a registry the cluster reads;
    KUBE_TEST_COPY_IMAGE: orchestrate's, for the copy-data Job and its upload)."""
    import uuid
    ns = f"orchestrate-test-{uuid.uuid4().hex[:6]}"
    extra = ["--namespace", ns, "-e", "pg_image=postgres:16-alpine", "-e", "nginx_image=nginx:alpine"]
    if os.environ.get("KUBE_TEST_APP_IMAGE"):
        extra += ["-e", f"app_tag={os.environ['KUBE_TEST_APP_IMAGE']}"]
    # KUBE_TEST_COPY_IMAGE: orchestrate's image (docker/orchestrate/Dockerfile); without it, no copy Job
    extra += ["-e", f"orchestrate_image={os.environ.get('KUBE_TEST_COPY_IMAGE', '')}"]
    code, text = run_apply(repo, os.environ["KUBECONFIG"], *extra)
    try:
        assert code == 0, text
        code, text = run_apply(repo, os.environ["KUBECONFIG"], *extra)
        assert code == 0 and ": applied" not in text and "0 applied" in text, text
    finally:
        from kubernetes import client, config
        config.load_kube_config()
        client.CoreV1Api().delete_namespace(ns)
