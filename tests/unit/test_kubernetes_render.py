"""orchestrate render --target kubernetes: the phase-2 plan as objects, validated offline against
the API schema of Kubernetes 1.30 (kubernetes-validate ships the schemas); no secret outside the
Secrets' data, none in stdout."""
from __future__ import annotations

import base64
import io
import re
import stat

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.kubernetes import dns_name, load_rendered

from ..conftest import copy_repo

kv = pytest.importorskip("kubernetes_validate")

K8S_VERSION = "1.30"
PASSWORD = "k8s-Test-pw-7c1e"
VARS = {"pg_image": "orchestrate-test/postgres:15", "app_base_image": "orchestrate-test/python:3.11",
        "nginx_image": "orchestrate-test/nginx:1.22"}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", PASSWORD)
    monkeypatch.setenv("AUTODEPLOY_PGADMIN_PASSWORD", "pgadmin-pw-unused")
    return copy_repo(tmp_path / "repo")


def _render(repo, **kw):
    return load_rendered(repo / "plans" / "phase2.yaml", VARS, **kw)


def test_every_object_validates_offline_against_the_api_schema(repo):
    _, r = _render(repo, namespace="autodeploy")
    kinds = [o["kind"] for o in r.objects]
    assert kinds[0] == "Namespace"
    assert {"Secret", "Service", "StatefulSet", "Job", "Deployment", "ConfigMap"} <= set(kinds)
    for obj in r.objects:
        kv.validate(obj, K8S_VERSION, strict=True)      # raises on any schema error or unknown field
    # apply order: Secrets, then the database before the migration Job, the Job before the app
    order = [f"{o['kind']}/{o['metadata']['name']}" for o in r.objects]
    assert order.index("StatefulSet/postgres") < order.index("Job/autodeploy-phase2-schema") \
        < order.index("Deployment/app") < order.index("Deployment/proxy")
    assert max(i for i, k in enumerate(kinds) if k == "Secret") < kinds.index("StatefulSet")


def test_names_labels_probes_and_shape(repo):
    _, r = _render(repo)
    for obj in r.objects:
        name = obj["metadata"]["name"]
        assert name == dns_name(name) and "_" not in name
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "orchestrate"
        assert obj["metadata"]["labels"]["orchestrate.plan"] == "autodeploy-phase2"
    sts = r.by_kind("StatefulSet")[0]
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["serviceName"] == "postgres"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "postgres-data"
    pg = sts["spec"]["template"]["spec"]["containers"][0]
    assert pg["args"] == ["-c", "max_connections=200", "-c", "shared_buffers=256MB"]
    assert pg["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert {s["metadata"]["name"] for s in r.by_kind("Service")} == {"postgres", "app", "proxy"}
    job = r.by_kind("Job")[0]
    assert job["spec"]["backoffLimit"] == 0
    jc = job["spec"]["template"]["spec"]["containers"][0]
    assert jc["image"] == "autodeploy-app:latest"         # the image step's tag: its id is known after apply
    assert jc["command"] == ["alembic", "-c", "alembic.ini", "upgrade", "head"]
    deps = {d["metadata"]["name"]: d for d in r.by_kind("Deployment")}
    app = deps["app"]["spec"]
    assert app["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    c = app["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    env = {e["name"]: e for e in c["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "autodeploy-phase2-app-env"
    proxy = deps["proxy"]["spec"]["template"]["spec"]
    mount = proxy["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == "/etc/nginx/conf.d/default.conf" and mount["subPath"]
    cm = next(c for c in r.by_kind("ConfigMap") if c["metadata"]["name"] == "autodeploy-phase2-proxy-files")
    conf = cm["data"][mount["subPath"]]                     # what the plan's render step writes, for a cluster:
    assert "proxy_pass http://app:8000;" in conf and "resolver 127.0.0.11" not in conf   # the Service by name
    assert not any("127.0.0.11" in n for n in r.notes)


# --- copy-data as a Job ---------------------------------------------------------------------------

def _copy_job(r):
    return next(j for j in r.by_kind("Job") if j["metadata"]["name"] == "autodeploy-phase2-data")


def test_copy_data_is_a_job_running_a_one_step_plan_on_the_uploaded_file(repo, tmp_path, monkeypatch):
    import hashlib
    source = repo / "deployment_platform.db"
    import sqlite3
    with sqlite3.connect(source) as conn:
        conn.execute("create table t (id integer primary key)")
    plan = repo / "plans" / "phase2.yaml"
    plan.write_text(plan.read_text().replace("      source: deployment_platform.db",
                                             "      source: deployment_platform.db\n"
                                             "      exclude: [audit_log]\n      timezone: Europe/Paris"))
    _, r = _render(repo, namespace="autodeploy")
    for obj in r.objects:
        kv.validate(obj, K8S_VERSION, strict=True)
    order = [f"{o['kind']}/{o['metadata']['name']}" for o in r.objects]
    assert order.index("Job/autodeploy-phase2-schema") < order.index("ConfigMap/autodeploy-phase2-data-plan") \
        < order.index("Job/autodeploy-phase2-data") < order.index("Deployment/app")
    job = _copy_job(r)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert job["metadata"]["annotations"]["orchestrate/source-sha256"] == sha
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 3600
    pod = job["spec"]["template"]["spec"]
    init, copy = pod["initContainers"][0], pod["containers"][0]
    assert init["image"] == copy["image"] == "orchestrate:latest"       # vars.orchestrate_image
    assert init["command"][:4] == ["python", "-m", "orchestrator.receive", "wait"]
    assert copy["command"] == ["orchestrate", "apply", "/work/plan.yaml"]
    env = {e["name"]: e for e in copy["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "autodeploy-phase2-data-env"
    url = base64.b64decode(next(s for s in r.by_kind("Secret") if s["metadata"]["name"] == "autodeploy-phase2-data-env")
                           ["data"]["DATABASE_URL"]).decode()
    assert "@postgres:5432/" in url and PASSWORD in url             # the database's Service, not this machine
    assert r.uploads["autodeploy-phase2-data"].sha256 == sha
    assert r.uploads["autodeploy-phase2-data"].dest == init["command"][4]
    # the pod's plan: the step's own options, its source where the upload lands, the url from the env;
    # a plan orchestrate itself validates, holding no secret
    inner_text = next(c for c in r.by_kind("ConfigMap") if c["metadata"]["name"] == "autodeploy-phase2-data-plan") \
        ["data"]["plan.yaml"]
    assert PASSWORD not in inner_text
    inner = yaml.safe_load(inner_text)
    assert inner["steps"] == [{"name": "data", "copy-data": {"source": "source/source.db",
                                                             "url": "{{ secrets.database_url }}",
                                                             "exclude": ["audit_log"], "timezone": "Europe/Paris"}}]
    pod_root = tmp_path / "pod"
    (pod_root / "source").mkdir(parents=True)
    (pod_root / "plan.yaml").write_text(inner_text)
    monkeypatch.setenv("DATABASE_URL", url)
    buf = io.StringIO()
    assert main(["validate", str(pod_root / "plan.yaml")], stdout=buf) == 0, buf.getvalue()
    # a changed source is a changed Job (apply runs it anew)
    with sqlite3.connect(source) as conn:
        conn.execute("insert into t values (1)")
    _, r2 = _render(repo, namespace="autodeploy")
    assert _copy_job(r2)["metadata"]["annotations"]["orchestrate/source-sha256"] != sha


def test_a_copy_url_naming_this_machine_gets_a_note(repo):
    plan = repo / "plans" / "phase2.yaml"
    plan.write_text(plan.read_text().replace("      source: deployment_platform.db",
                                             "      source: deployment_platform.db\n"
                                             "      url: \"{{ steps.postgres.url }}\""))
    _, r = _render(repo)
    assert any(n.startswith("data: its url names 127.0.0.1") for n in r.notes), r.notes
    url = base64.b64decode(next(s for s in r.by_kind("Secret") if s["metadata"]["name"] == "autodeploy-phase2-data-env")
                           ["data"]["DATABASE_URL"]).decode()
    assert "127.0.0.1" in url


def test_without_copy_image_copy_data_is_left_out_with_the_way_by_hand(repo):
    _with_options(repo, "kubernetes:\n  storage: 2Gi\n")
    _, r = _render(repo)
    assert [j["metadata"]["name"] for j in r.by_kind("Job")] == ["autodeploy-phase2-schema"]
    assert any("copy-data" in n and "copy_image" in n and "port-forward" in n for n in r.notes)
    assert not r.uploads


def test_secret_values_only_in_the_secrets_data(repo):
    _, r = _render(repo)
    secrets = r.by_kind("Secret")
    decoded = {k: base64.b64decode(v).decode() for s in secrets for k, v in s["data"].items()}
    assert decoded["POSTGRES_PASSWORD"] == PASSWORD and PASSWORD in decoded["DATABASE_URL"]
    others = yaml.safe_dump([o for o in r.objects if o["kind"] != "Secret"])
    assert PASSWORD not in others
    for s in secrets:
        assert PASSWORD not in yaml.safe_dump({k: v for k, v in s.items() if k != "data"})


def test_render_command_writes_files_and_prints_no_secret(repo, tmp_path):
    out_dir = tmp_path / "k8s"
    buf = io.StringIO()
    args = ["render", "--target", "kubernetes", str(repo / "plans" / "phase2.yaml"), "--out", str(out_dir)]
    for k, v in VARS.items():
        args += ["-e", f"{k}={v}"]
    assert main(args, stdout=buf) == 0
    text = buf.getvalue()
    assert PASSWORD not in text and "objects.yaml" in text and "secrets.yaml" in text
    assert stat.S_IMODE((out_dir / "secrets.yaml").stat().st_mode) == 0o600
    assert PASSWORD not in (out_dir / "objects.yaml").read_text()
    docs = list(yaml.safe_load_all((out_dir / "objects.yaml").read_text()))
    for doc in docs + list(yaml.safe_load_all((out_dir / "secrets.yaml").read_text())):
        kv.validate(doc, K8S_VERSION, strict=True)
    # --no-secrets: the Secrets are there, empty, and no value is written anywhere
    out2 = tmp_path / "k8s2"
    args[args.index(str(out_dir))] = str(out2)
    assert main(args + ["--no-secrets"], stdout=io.StringIO()) == 0
    assert all(PASSWORD not in p.read_text() for p in out2.iterdir())
    assert "data:" in (out2 / "secrets.yaml").read_text()


# --- the plan's kubernetes: options -----------------------------------------------------------------

OPTIONS = """\
kubernetes:
  postgres: cloudnativepg
  storage: 5Gi
  ingress: {step: app, host: autodeploy.example.com, class_name: nginx, tls_secret: autodeploy-tls,
            replaces: [proxy]}
"""


def _with_options(repo, options: str = OPTIONS):
    """The phase-2 plan with its kubernetes: section replaced by ``options``."""
    plan = repo / "plans" / "phase2.yaml"
    text = re.sub(r"\nkubernetes:.*?\nsteps:\n", f"\n{options}\nsteps:\n", plan.read_text(), count=1, flags=re.S)
    assert options in text
    plan.write_text(text)
    return plan


def test_cloudnativepg_cluster_and_an_ingress_when_the_plan_says_so(repo):
    _with_options(repo)
    _, r = _render(repo)
    kinds = [o["kind"] for o in r.objects]
    assert "StatefulSet" not in kinds and kinds.count("Cluster") == 1 and kinds.count("Ingress") == 1
    cluster = r.by_kind("Cluster")[0]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["metadata"]["name"] == "postgres"
    init = cluster["spec"]["bootstrap"]["initdb"]
    assert (init["database"], init["owner"]) == ("autodeploy", "dbadmin")
    assert cluster["spec"]["storage"] == {"size": "5Gi"} and cluster["spec"]["instances"] == 1
    assert cluster["spec"]["postgresql"]["parameters"] == {"max_connections": "200", "shared_buffers": "256MB"}
    auth = next(s for s in r.by_kind("Secret") if s["metadata"]["name"] == init["secret"]["name"])
    assert auth["type"] == "kubernetes.io/basic-auth"
    assert base64.b64decode(auth["data"]["password"]).decode() == PASSWORD
    assert base64.b64decode(auth["data"]["username"]).decode() == "dbadmin"
    # the URLs the app and the migrate job were given name "postgres": a Service for the primary
    svc = next(o for o in r.by_kind("Service") if o["metadata"]["name"] == "postgres")
    assert svc["spec"]["selector"] == {"cnpg.io/cluster": "postgres", "cnpg.io/instanceRole": "primary"}
    # the Ingress routes to the app's Service; the nginx it replaces is left out
    ing = r.by_kind("Ingress")[0]["spec"]
    assert ing["ingressClassName"] == "nginx" and ing["tls"] == [{"secretName": "autodeploy-tls",
                                                                  "hosts": ["autodeploy.example.com"]}]
    path = ing["rules"][0]["http"]["paths"][0]
    assert ing["rules"][0]["host"] == "autodeploy.example.com"
    assert path["backend"]["service"] == {"name": "app", "port": {"number": 8000}}
    assert "proxy" not in {o["metadata"]["labels"].get("orchestrate.step") for o in r.objects}
    assert PASSWORD not in yaml.safe_dump([o for o in r.objects if o["kind"] != "Secret"])
    for obj in r.objects:            # the built-in kinds against the API schema; the Cluster is a CRD
        if obj["kind"] != "Cluster":
            kv.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("options,key,says", [
    ("kubernetes: {ingress: {step: nope}}", "kubernetes.ingress.step", "'nope' is not a container step"),
    ("kubernetes: {ingress: {step: app, port: 9999}}", "kubernetes.ingress.port", "has no port 9999"),
    ("kubernetes: {ingress: {step: app, replaces: [schema]}}", "kubernetes.ingress.replaces[0]",
     "'schema' is not a container step"),
    ("kubernetes: {postgres: crunchy}", "kubernetes.postgres", "statefulset"),
    ("kubernetes: {storage: lots}", "kubernetes.storage", "must match"),
])
def test_bad_kubernetes_options_name_the_key(repo, options, key, says):
    from orchestrator.errors import OrchestrateError
    plan = _with_options(repo, options)
    with pytest.raises(OrchestrateError) as exc:
        _render(repo)
    text = str(exc.value) + " " + (getattr(exc.value, "hint", "") or "")
    assert key in text and says in text, text
    assert str(plan) in text or "phase2.yaml" in text
