"""The reference application's image (examples/autodeploy/Dockerfile) on the test Python image,
with no registry and no PyPI inside containers: the wheels are downloaded on the host into a copy
of the build context (the user's build, without a wheels folder, installs from PyPI). It runs
next to PostgreSQL on a user-defined network where the database is `postgres`, its migrations run
as a throwaway container of the same image, and it answers over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import psycopg
import pytest
from docker.errors import BuildError, NotFound
from docker.utils.build import exclude_paths

from tests.conftest import ROOT, SESSION, TEST_LABEL, free_port

pytestmark = pytest.mark.integration

DOCKERFILE = "examples/autodeploy/Dockerfile"
HEAD = "c9f0e8d7b6a5"   # the newest revision in alembic/versions
LABELS = {TEST_LABEL[0]: TEST_LABEL[1]}


def context_files() -> list[str]:
    """What `docker build` sends from the repository root, after .dockerignore (files only)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return sorted(p for p in exclude_paths(str(ROOT), patterns, DOCKERFILE) if (ROOT / p).is_file())


def download_wheels(image: str, dest, docker_client) -> None:
    """The pinned requirements as wheels for the image's Python (the host reaches PyPI)."""
    env = dict(e.split("=", 1) for e in docker_client.images.get(image).attrs["Config"]["Env"])
    version = ".".join(env["PYTHON_VERSION"].split(".")[:2])
    arch = platform.machine()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(dest),
                    "-r", str(ROOT / "examples/autodeploy/requirements.txt"), "--only-binary=:all:",
                    "--python-version", version, "--platform", f"manylinux_2_28_{arch}",
                    "--platform", f"manylinux2014_{arch}"], check=True)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(what: str, check, seconds: float):
    """Polls ``check`` until it returns a true value; fails naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
        except (OSError, psycopg.Error):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.5)


def test_the_context_holds_only_what_the_image_needs():
    files = context_files()
    assert {".dockerignore", "alembic.ini", "alembic/env.py", "examples/__init__.py", DOCKERFILE,
            "examples/autodeploy/__init__.py", "examples/autodeploy/models.py",
            "examples/autodeploy/requirements.txt", "examples/autodeploy/app/__init__.py"} <= set(files)
    assert [f for f in files if f.startswith("alembic/versions/")]
    leaked = [f for f in files if not f.startswith(("alembic/", "examples/autodeploy/app/"))
              and f not in {".dockerignore", "alembic.ini", "examples/__init__.py", DOCKERFILE,
                            "examples/autodeploy/__init__.py", "examples/autodeploy/models.py",
                            "examples/autodeploy/requirements.txt"}]
    assert leaked == []
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".db", ".env", ".secrets"))]


class Stack:
    """The app image built for this module, PostgreSQL on a network as `postgres`, the app."""

    def __init__(self, client):
        self.client = client
        self.name = f"t{SESSION}-{uuid.uuid4().hex[:6]}"
        self.tag = f"orchestrate-test/autodeploy-app:{self.name}"
        self.builder_tag, self.tags = f"{self.tag}-builder", []
        self.password = "Pw-" + uuid.uuid4().hex
        self.internal_url = f"postgresql+psycopg://dbadmin:{self.password}@postgres:5432/autodeploy"
        self.pg_port, self.app_port = free_port(), free_port()
        self.containers, self.network, self.volume = [], None, None

    def start(self, python_image: str, pg_image: str, tmp) -> None:
        self.build(python_image, tmp)
        self.start_postgres(pg_image)
        self.migrate()
        self.sql("INSERT INTO tenants (name, slug, contact_email) VALUES ('Acme', 'acme', 'ops@acme.test')")
        self.app = self.run(self.tag, "app", environment={"DATABASE_URL": self.internal_url},
                            ports={"8000/tcp": ("127.0.0.1", self.app_port)})

    def build(self, python_image: str, tmp) -> None:
        context = tmp / "context"
        for rel in context_files():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, context / rel)
        download_wheels(python_image, context / "examples/autodeploy/wheels", self.client)
        # The builder stage first, under a tag of its own: the whole build reuses it, and removing
        # both tags at the end removes every layer (a builder stage is otherwise left untagged).
        try:
            for target, tag in (("builder", self.builder_tag), (None, self.tag)):
                self.image, _ = self.client.images.build(
                    path=str(context), dockerfile=DOCKERFILE, tag=tag, target=target,
                    buildargs={"BASE_IMAGE": python_image}, labels=LABELS, rm=True, forcerm=True)
                self.tags.append(tag)
        except BuildError as exc:
            lines = [str(chunk.get("stream") or chunk.get("error") or "").rstrip() for chunk in exc.build_log]
            pytest.fail("the app image does not build:\n" + "\n".join(line for line in lines if line)[-3000:])

    def run(self, image: str, name: str, **kw):
        container = self.client.containers.run(image, name=f"{self.name}-{name}", detach=True, labels=LABELS,
                                               network=self.network.name, **kw)
        self.containers.append(container)
        return container

    def start_postgres(self, pg_image: str) -> None:
        self.network = self.client.networks.create(f"{self.name}-net", driver="bridge", labels=LABELS)
        self.volume = self.client.volumes.create(f"{self.name}-data", labels=LABELS)
        self.pg = self.run(
            pg_image, "pg", volumes={self.volume.name: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            environment={"POSTGRES_USER": "dbadmin", "POSTGRES_PASSWORD": self.password,
                         "POSTGRES_DB": "autodeploy"},
            ports={"5432/tcp": ("127.0.0.1", self.pg_port)},
            networking_config={self.network.name: self.client.api.create_endpoint_config(aliases=["postgres"])})
        wait_for("PostgreSQL accepts connections", lambda: self.sql("SELECT 1"), 120)

    def migrate(self) -> None:
        """`alembic upgrade head` in a throwaway container of the app image, as a job."""
        job = self.run(self.tag, "migrate", command=["alembic", "upgrade", "head"],
                       environment={"DATABASE_URL": self.internal_url})
        try:
            self.migrate_exit = job.wait(timeout=180)["StatusCode"]
            self.migrate_logs = job.logs().decode()
        finally:
            job.remove(force=True)
            self.containers.remove(job)

    def sql(self, query: str, *params):
        with psycopg.connect(host="127.0.0.1", port=self.pg_port, user="dbadmin", password=self.password,
                             dbname="autodeploy", autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(query, params or None)
            return cursor.fetchall() if cursor.description else [()]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.app_port}{path}"

    def close(self) -> None:
        for container in self.containers:
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
        for obj in (self.network, self.volume):
            if obj is not None:
                obj.remove()
        for tag in reversed(self.tags):
            self.client.images.remove(tag)


@pytest.fixture(scope="module")
def stack(docker_client, python_image, pg_image, tmp_path_factory):
    stack = Stack(docker_client)
    try:
        stack.start(python_image, pg_image, tmp_path_factory.mktemp("app-image"))
        yield stack
    finally:
        stack.close()


def test_migrations_ran_as_a_job_in_the_app_image(stack):
    assert stack.migrate_exit == 0, stack.migrate_logs
    assert f"-> {HEAD}" in stack.migrate_logs
    assert stack.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert stack.password not in stack.migrate_logs
    assert not stack.client.containers.list(all=True, filters={"name": f"{stack.name}-migrate"})


def test_the_app_serves_tenants_from_postgres_over_http(stack):
    wait_for("GET /health answers 200", lambda: http("GET", stack.url("/health"))[0] == 200, 120)
    status, tenants = http("GET", stack.url("/tenants"))
    assert status == 200
    assert [(t["name"], t["slug"], t["contact_email"], t["plan_tier"]) for t in tenants] == \
        [("Acme", "acme", "ops@acme.test", "free")]
    assert http("GET", stack.url("/health")) == (200, {"status": "ok", "database": "ok"})


def test_the_image_healthcheck_reports_healthy(stack):
    def healthy():
        stack.app.reload()
        return stack.app.attrs["State"]["Health"]["Status"] == "healthy"
    wait_for("the image's HEALTHCHECK reports healthy", healthy, 180)


def test_post_deployments_writes_to_postgres(stack):
    (tenant_id,), = stack.sql("SELECT id FROM tenants WHERE slug = 'acme'")
    status, row = http("POST", stack.url("/deployments"),
                       {"tenant_id": tenant_id, "name": "api", "settings": {"region": "eu"}, "replicas": 2})
    assert status == 201
    assert (row["tenant_id"], row["name"], row["status"], row["settings"]) == (tenant_id, "api", "pending",
                                                                            {"region": "eu"})
    assert stack.sql("SELECT name, replicas, settings FROM deployments WHERE id = %s", row["id"]) == \
        [("api", 2, {"region": "eu"})]
    assert http("POST", stack.url("/deployments"), {"tenant_id": tenant_id + 1000, "name": "x"})[0] == 404


def test_the_app_runs_as_a_non_root_user(stack):
    assert stack.image.attrs["Config"]["User"] == "appuser"
    uid = stack.app.exec_run(["id", "-u"]).output.decode().strip()
    assert uid.isdigit() and uid != "0"
    # gunicorn (PID 1) runs as that user: real and effective uid
    status = stack.app.exec_run(["cat", "/proc/1/status"]).output.decode()
    assert [line.split()[1:3] for line in status.splitlines() if line.startswith("Uid:")] == [[uid, uid]]
    assert stack.app.exec_run(["touch", "/app/x"]).exit_code != 0   # the code is not the app's to change


def test_the_image_holds_only_the_app_and_no_secret(stack):
    files = stack.app.exec_run(["find", "/app", "-type", "f"]).output.decode().split()
    assert sorted(f.removeprefix("/app/") for f in files) == \
        sorted(f for f in context_files() if f not in {".dockerignore", DOCKERFILE, "examples/autodeploy/requirements.txt"})
    assert stack.app.exec_run(["find", "/app", "/opt/venv", "-name", "*.whl"]).output == b""   # builder's only
    history = json.dumps(stack.client.api.history(stack.tag))
    config = json.dumps(stack.image.attrs["Config"])
    for text in (history, config):
        assert stack.password not in text
        assert "DATABASE_URL" not in text
    assert stack.image.labels[TEST_LABEL[0]] == TEST_LABEL[1]
    assert stack.app.attrs["Config"]["Env"].count(f"DATABASE_URL={stack.internal_url}") == 1


def test_health_is_503_when_the_database_stops(stack):
    stack.pg.stop(timeout=10)
    status, body = wait_for("GET /health answers 503", lambda: (r := http("GET", stack.url("/health")))[0] == 503
                            and r, 60)
    assert body["status"] == "unavailable"
    assert stack.password not in json.dumps(body)
    assert http("GET", stack.url("/tenants"))[0] == 503
