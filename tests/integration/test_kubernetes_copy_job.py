"""copy-data as a Kubernetes Job, its pod played by Docker (no API server can run here): the image
built from docker/orchestrate/Dockerfile (orchestrate's wheel and its dependencies' wheels, offline),
the Job's init container started with its own command, the SQLite file sent into it by the very
command apply execs (``Upload.command``), then the copy container run with the Job's command, env
(the Secret's DATABASE_URL, the database by its Service name) and mounts, against a real PostgreSQL
migrated by Alembic. The rows arrive, exact; a damaged upload is refused; and without the upload
the init container gives up with its message."""
from __future__ import annotations

import base64
import platform
import shutil
import sqlite3
import subprocess
import sys

import pytest

from orchestrator.kubernetes import load_rendered
from tests.conftest import ROOT, TEST_LABEL, run_cli

pytestmark = pytest.mark.integration

LABELS = {TEST_LABEL[0]: TEST_LABEL[1]}

PLAN = """\
name: {name}
root: ..
vars:
  pg_image: {pg_image}
  copy_image: unset
secrets:
  pw: {{generate: 24}}
kubernetes:
  copy_image: "{{{{ vars.copy_image }}}}"
  copy_timeout: 2m
steps:
  - name: postgres
    db-container:
      image: "{{{{ vars.pg_image }}}}"
      container: {name}-pg
      volume: {name}-data
      user: dbadmin
      password: "{{{{ secrets.pw }}}}"
      database: autodeploy
      ports: ["127.0.0.1:{port}:5432"]
      network: {name}-net
      healthcheck: {{interval: 1s, timeout: 3s, retries: 60}}
  - name: schema
    migrate: {{alembic_ini: alembic.ini}}
  - name: data
    copy-data: {{source: deployment_platform.db, exclude: [deployment_logs]}}
"""


@pytest.fixture(scope="module")
def copy_image(docker_client, python_image, tmp_path_factory):
    """docker/orchestrate/Dockerfile built as a user builds it, from wheels only."""
    ctx = tmp_path_factory.mktemp("orchestrate-image")
    shutil.copy(ROOT / "docker/orchestrate/Dockerfile", ctx / "Dockerfile")
    wheels = ctx / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(wheels.glob("orchestrate-*.whl"))
    env = dict(e.split("=", 1) for e in docker_client.images.get(python_image).attrs["Config"]["Env"])
    version = ".".join(env["PYTHON_VERSION"].split(".")[:2])
    arch = platform.machine()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), str(wheel),
                    "--only-binary=:all:", "--python-version", version, "--platform", f"manylinux_2_28_{arch}",
                    "--platform", f"manylinux2014_{arch}", "--platform", f"manylinux_2_17_{arch}"],
                   check=True, capture_output=True)
    tag = f"orchestrate-test/orchestrate:{TEST_LABEL[1]}"
    docker_client.images.build(path=str(ctx), tag=tag, buildargs={"BASE_IMAGE": python_image}, labels=LABELS,
                               rm=True, forcerm=True)
    yield tag
    docker_client.images.remove(tag, force=True)


class Pod:
    """A Job's pod template played by Docker: each volume a folder (emptyDir) or a file (the
    ConfigMap's entry), each container run with the template's command, env and mounts."""

    def __init__(self, client, job: dict, configmap: dict, secret: dict, network: str, tmp):
        self.client, self.network = client, network
        self.spec = job["spec"]["template"]["spec"]
        self.env = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        self.paths = {}
        for vol in self.spec["volumes"]:
            path = tmp / vol["name"]
            if "emptyDir" in vol:
                path.mkdir(parents=True)
                path.chmod(0o777)           # as Kubernetes makes an emptyDir
            else:
                path.mkdir(parents=True)
                for key, text in configmap["data"].items():
                    (path / key).write_text(text)
            self.paths[vol["name"]] = path
        self.containers = []

    def run(self, c: dict, *, detach: bool):
        binds = {}
        for m in c.get("volumeMounts", []):
            host = self.paths[m["name"]] / m.get("subPath", "")
            binds[str(host)] = {"bind": m["mountPath"], "mode": "ro" if m.get("readOnly") else "rw"}
        env = {}
        for e in c.get("env", []):
            env[e["name"]] = e.get("value") or self.env[e["valueFrom"]["secretKeyRef"]["key"]]
        container = self.client.containers.run(c["image"], c["command"], detach=True, volumes=binds,
                                               environment=env, network=self.network, labels=LABELS,
                                               working_dir=c.get("workingDir"))
        self.containers.append(container)
        if detach:
            return container
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode()

    def close(self):
        for c in self.containers:
            c.remove(force=True)


class Target:
    """The plan's database, as seen from this machine."""

    def __init__(self, plan, port: int):
        import yaml
        self.password = yaml.safe_load(plan.with_suffix(".secrets").read_text())["pw"]
        self.port = port

    def sql(self, query: str):
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.port, user="dbadmin", password=self.password,
                             dbname="autodeploy", autocommit=True, connect_timeout=5) as conn:
            return conn.execute(query).fetchall()


@pytest.fixture
def stack(repo_copy, pg_image, docker_client, tmp_path):
    name = repo_copy.container.removesuffix("-pg")
    plan = repo_copy.root / "plans" / "k8s-copy.yaml"
    plan.write_text(PLAN.format(name=name, pg_image=pg_image, port=repo_copy.port))
    subprocess.run([sys.executable, "-m", "examples.autodeploy.make_sqlite", "deployment_platform.db",
                    "--rows", "400"], cwd=repo_copy.root, check=True)
    code, text = run_cli("apply", plan, "--only", "postgres", "--only", "schema")
    assert code == 0, text
    pods = []

    def pod(image):
        _, rendered = load_rendered(plan, {"copy_image": image})
        by = {(o["kind"], o["metadata"]["name"]): o for o in rendered.objects}
        job = by[("Job", f"{name}-data")]
        p = Pod(docker_client, job, by[("ConfigMap", f"{name}-data-plan")], by[("Secret", f"{name}-data-env")],
                f"{name}-net", tmp_path / f"pod{len(pods)}")
        pods.append(p)
        return p, rendered.uploads[f"{name}-data"]
    yield plan, repo_copy.root, Target(plan, repo_copy.port), pod
    for p in pods:
        p.close()


def test_the_job_copies_the_uploaded_file_into_the_cluster_database(stack, copy_image):
    plan, root, repo, pod = stack
    p, upload = pod(copy_image)
    init = p.run(p.spec["initContainers"][0], detach=True)
    sent = subprocess.run(["docker", "exec", "-i", init.id, *upload.command()], input=upload.path.read_bytes(),
                          capture_output=True)
    assert sent.returncode == 0, sent.stderr
    assert b"received /work/source/source.db" in sent.stdout
    assert init.wait(timeout=60)["StatusCode"] == 0            # the init container saw the file and ended
    code, logs = p.run(p.spec["containers"][0], detach=False)
    assert code == 0, logs
    assert repo.password not in logs
    with sqlite3.connect(root / "deployment_platform.db") as src:
        for table in ("tenants", "deployments"):
            want = src.execute(f"select count(*) from {table}").fetchone()[0]
            assert want and repo.sql(f"select count(*) from {table}") == [(want,)]
    assert repo.sql("select count(*) from deployment_logs") == [(0,)]   # the step's own exclude: went along
    lock = (p.paths["work"] / "plan.lock").read_text()                  # the pod's lockfile, in its work folder
    assert '"deployments"' in lock and repo.password not in lock
    # this machine's lockfile never saw the copy: only the Job's object record will hold it
    assert '"deployments"' not in (plan.with_suffix(".lock")).read_text()


def test_a_damaged_upload_is_refused_and_an_upload_that_never_comes_ends_the_pod(stack, copy_image):
    _, _, _, pod = stack
    p, upload = pod(copy_image)
    init = p.run(p.spec["initContainers"][0], detach=True)
    data = bytearray(upload.path.read_bytes())
    data[100] ^= 0xFF
    sent = subprocess.run(["docker", "exec", "-i", init.id, *upload.command()], input=bytes(data),
                          capture_output=True, text=False)
    assert sent.returncode == 1 and b"incomplete or damaged" in sent.stderr
    assert not (p.paths["source"] / "source.db").exists() and not (p.paths["source"] / "source.db.part").exists()
    # nothing arrives: the init container gives up (its timeout, shortened here) with what to do
    c = dict(p.spec["initContainers"][0])
    c["command"] = c["command"][:-1] + ["1"]
    code, logs = p.run(c, detach=False)
    assert code == 1 and "no upload of /work/source/source.db within 1s" in logs and "Traceback" not in logs
