"""Shared fixtures.

Everything the tests create in Docker carries the label ``orchestrate.test=<session>`` (through
``ORCHESTRATE_LABELS``, which orchestrate adds to every object it creates, and explicitly for
objects a test makes by hand); it is removed by that label before and after the session.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_IMAGE = os.environ.get("ORCHESTRATE_TEST_PG_IMAGE", "orchestrate-test/postgres:15")
PYTHON_IMAGE = os.environ.get("ORCHESTRATE_TEST_PYTHON_IMAGE", "orchestrate-test/python:3.11")
SESSION = uuid.uuid4().hex[:8]
# the label's value names the test process: the start-up cleanup removes what killed sessions
# left, never what a session still running beside this one (another shell, a CI rehearsal) uses
TEST_LABEL = ("orchestrate.test", f"{os.getpid()}-{SESSION}")
os.environ["ORCHESTRATE_LABELS"] = f"{TEST_LABEL[0]}={TEST_LABEL[1]}"


def run_cli(*argv: str) -> tuple[int, str]:
    """Run ``orchestrate ARGV`` in-process; returns (exit code, everything printed)."""
    from orchestrator.cli import main
    buf = io.StringIO()
    code = main([str(a) for a in argv], stdout=buf)
    return code, buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _abandoned(labels: dict | None) -> bool:
    """Made by a test session whose process is gone (or by one that did not say which)."""
    value = (labels or {}).get(TEST_LABEL[0], "")
    pid = value.split("-", 1)[0]
    if value == TEST_LABEL[1] or not pid.isdigit():
        return True
    from orchestrator.throwaway import process_ended
    return process_ended(int(pid))


def docker_cleanup(client, *, every_session: bool = False) -> None:
    """Remove what this session (or, at start, any earlier killed session) left behind (containers
    first, images last: an image goes once no container uses it)."""
    from docker.errors import APIError, NotFound
    flt = {"label": TEST_LABEL[0] if every_session else f"{TEST_LABEL[0]}={TEST_LABEL[1]}"}
    for kind, listed in (("container", lambda: client.containers.list(all=True, filters=flt, sparse=True)),
                         ("volume", lambda: client.volumes.list(filters=flt)),
                         ("network", lambda: client.networks.list(filters=flt)),
                         ("image", lambda: client.images.list(filters=flt))):
        for obj in listed():
            # an image's labels are in its Config (its attrs["Labels"] is None)
            labels = (obj.labels if kind == "image" else obj.attrs.get("Labels")) or {}
            if not _abandoned(labels):
                continue
            try:     # another cleanup (a test's own, another session's) may have removed it meanwhile
                if kind == "image":
                    client.images.remove(obj.id, force=True)
                else:
                    obj.remove(force=True) if kind != "network" else obj.remove()
            except (NotFound, APIError):    # gone meanwhile, or still in use by a live session
                pass


# --- the engine in swarm mode: no other test runs meanwhile ----------------------------------------
# Swarm mode (docker swarm init / leave) reconfigures the engine's networking: a container started
# on a bridge network meanwhile can fail to resolve its peers' names. The swarm tests therefore
# hold the engine alone (engine_exclusive); every other test, in any worker or session on this
# machine, holds it shared for its duration. A gate lock gives the exclusive holder precedence: once
# it waits, no new test starts, the running ones finish, then it runs.
ENGINE_LOCK = Path("/tmp/orchestrate-tests-engine")
_exclusive = False


def _locked(suffix: str, mode: int):
    import fcntl
    f = open(f"{ENGINE_LOCK}.{suffix}", "a+")
    fcntl.flock(f, mode)
    return f


@contextlib.contextmanager
def engine_exclusive():
    """This process alone uses the engine (waits for the tests running elsewhere to finish)."""
    import fcntl
    global _exclusive
    gate = _locked("gate", fcntl.LOCK_EX)
    held = _locked("lock", fcntl.LOCK_EX)
    _exclusive = True
    try:
        yield
    finally:
        _exclusive = False
        held.close()
        gate.close()


UNIT = ROOT / "tests" / "unit"
SWARM_FIRST = ROOT / "tests" / "integration" / "test_swarm.py"


def _unit(item) -> bool:
    """A unit test: it makes no Docker call (tests/unit/test_bad_plans.py refuses any)."""
    return item.path.is_relative_to(UNIT)


@pytest.fixture(autouse=True)
def _engine_shared(request):
    """Each test uses the engine beside others, never while a swarm test holds it alone. Unit tests
    do not use the engine: they run while a swarm test holds it, in the other worker."""
    import fcntl
    if _exclusive or _unit(request.node):
        yield
        return
    gate = _locked("gate", fcntl.LOCK_SH)
    held = _locked("lock", fcntl.LOCK_SH)
    gate.close()
    try:
        yield
    finally:
        held.close()


def pytest_collection_modifyitems(items):
    """The order in which the two workers take whole files (pyproject.toml: --dist loadfile
    --no-loadscope-reorder): the swarm module, then the unit files, then the integration files;
    within each, the files with the most tests first, as xdist's own reordering does. The swarm
    module holds the engine alone for minutes; started first, it runs while the other worker goes
    through the unit files, which need no engine. Last (xdist's order), it left the other worker
    idle for its whole length."""
    count: dict[Path, int] = {}
    for item in items:
        count[item.path] = count.get(item.path, 0) + 1
    items.sort(key=lambda item: (item.path != SWARM_FIRST, not _unit(item), -count[item.path]))


@pytest.fixture(autouse=True)
def _fresh_redaction():
    """Each test starts with no known secrets, as each orchestrate process does."""
    from orchestrator import redact
    redact.clear()
    yield
    redact.clear()


@pytest.fixture(scope="session")
def docker_client():
    import docker
    client = docker.from_env()
    docker_cleanup(client, every_session=True)
    yield client
    docker_cleanup(client)


@pytest.fixture(scope="session")
def pg_image(docker_client) -> str:
    """The PostgreSQL image; built from Debian's packages when missing (no registry here)."""
    subprocess.run(["bash", str(ROOT / "tests/images/postgres/build.sh"), PG_IMAGE], check=True)
    return PG_IMAGE


@pytest.fixture(scope="session")
def python_image(docker_client) -> str:
    """The reference application's base image (python:3.11-slim's stand-in), built like pg_image."""
    subprocess.run(["bash", str(ROOT / "tests/images/python/build.sh"), PYTHON_IMAGE], check=True)
    return PYTHON_IMAGE


@pytest.fixture(scope="session")
def nginx_image(docker_client) -> str:
    """The reverse proxy's image (nginx:alpine's stand-in: the plans' ``nginx_image``), built like pg_image."""
    image = os.environ.get("ORCHESTRATE_TEST_NGINX_IMAGE", "orchestrate-test/nginx:1.22")
    subprocess.run(["bash", str(ROOT / "tests/images/nginx/build.sh"), image], check=True)
    return image


class MutationRecorder:
    """Records every HTTP call to the Docker daemon that could change something."""

    def __init__(self, monkeypatch):
        import docker.api.client as apiclient
        self.calls: list[str] = []
        for method in ("_post", "_put", "_delete"):
            original = getattr(apiclient.APIClient, method)

            def wrapper(api, url, *a, _orig=original, _m=method, **kw):
                self.calls.append(f"{_m[1:].upper()} {url.split('/v1.', 1)[-1]}")
                return _orig(api, url, *a, **kw)

            monkeypatch.setattr(apiclient.APIClient, method, wrapper)


@pytest.fixture
def mutations(monkeypatch) -> MutationRecorder:
    return MutationRecorder(monkeypatch)


DB_PLAN = """\
name: {name}
vars:
  image: {image}
  port: {port}
  user: dbadmin
  db: appdb
secrets:
  pw: {{env: {pw_env}}}
steps:
  - name: postgres
    db-container:
      image: "{{{{ vars.image }}}}"
      container: {name}-pg
      volume: {name}-data
      user: "{{{{ vars.user }}}}"
      password: "{{{{ secrets.pw }}}}"
      database: "{{{{ vars.db }}}}"
      ports: ["127.0.0.1:{{{{ vars.port }}}}:5432"]
      restart: unless-stopped
      healthcheck: {{interval: 1s, timeout: 3s, retries: 60}}
      settings: {{max_connections: 50}}
"""


class DbPlan:
    """A one-step db-container plan in a temp dir, with its own names, port and password."""

    def __init__(self, tmp_path: Path, image: str, monkeypatch):
        self.name = f"t{SESSION}-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.pw_env = f"PW_{uuid.uuid4().hex[:6].upper()}"
        self.password = "Pw-" + uuid.uuid4().hex
        monkeypatch.setenv(self.pw_env, self.password)
        self.path = tmp_path / "plan.yaml"
        self.path.write_text(DB_PLAN.format(name=self.name, image=image, port=self.port, pw_env=self.pw_env))
        self.container, self.volume = f"{self.name}-pg", f"{self.name}-data"
        self._monkeypatch = monkeypatch

    def set_password(self, value: str) -> None:
        self.password = value
        self._monkeypatch.setenv(self.pw_env, value)

    def run(self, command: str, *extra: str) -> tuple[int, str]:
        return run_cli(command, self.path, *extra)

    def connect(self, password: str | None = None, port: int | None = None):
        import psycopg
        return psycopg.connect(host="127.0.0.1", port=port or self.port, user="dbadmin",
                               password=password or self.password, dbname="appdb", connect_timeout=5,
                               autocommit=True)

    @property
    def lock(self) -> Path:
        return self.path.with_suffix(".lock")


@pytest.fixture
def db_plan(tmp_path, pg_image, docker_client, monkeypatch) -> DbPlan:
    plan = DbPlan(tmp_path, pg_image, monkeypatch)
    yield plan
    remove_named(docker_client, plan.name)


def remove_named(client, prefix: str) -> None:
    """After a test: its containers, volumes and networks (names starting with its unique
    prefix, labelled as this session's), so that dozens of idle servers do not pile up over a
    session and slow every later test."""
    from docker.errors import APIError, NotFound
    flt = {"label": f"{TEST_LABEL[0]}={TEST_LABEL[1]}"}
    for kind, listed in (("container", lambda: client.containers.list(all=True, filters=flt, sparse=True)),
                         ("volume", lambda: client.volumes.list(filters=flt)),
                         ("network", lambda: client.networks.list(filters=flt))):
        for obj in listed():
            name = (obj.attrs.get("Names") or [obj.attrs.get("Name") or ""])[0].lstrip("/")
            if name.startswith(prefix):
                try:
                    obj.remove(force=True) if kind != "network" else obj.remove()
                except (NotFound, APIError):
                    pass


REPO_PARTS = ("plans", "templates", "alembic", "alembic.ini", "examples", "schema", ".dockerignore")


def copy_repo(root: Path) -> Path:
    """The repository's plans, templates, migrations and example application, copied to ``root``
    (no lockfile, no secrets file, no caches)."""
    root.mkdir()
    for part in REPO_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.lock", "*.secrets"))
        elif src.exists():
            shutil.copy(src, root / part)
    return root


@pytest.fixture
def repo_copy(tmp_path, pg_image, docker_client, monkeypatch):
    """The repository's plans, templates, migrations and example application in a temp dir, and
    the -e arguments that give the phase-1 plan its own container, volume and port there."""
    root = copy_repo(tmp_path / "repo")
    monkeypatch.delenv("AUTODEPLOY_DB_PASSWORD", raising=False)
    name = f"t{SESSION}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    extra = ["-e", f"pg_image={pg_image}", "-e", f"db_port={port}",
             "-e", f"container_name={name}-pg", "-e", f"volume_name={name}-data"]
    yield RepoCopy(root, extra, port, f"{name}-pg")
    remove_named(docker_client, name)


class RepoCopy:
    def __init__(self, root: Path, extra: list[str], port: int, container: str):
        self.root, self.extra, self.port, self.container = root, extra, port, container
        self.plan = root / "plans" / "phase1.yaml"

    def run(self, command: str, *argv: str) -> tuple[int, str]:
        return run_cli(command, self.plan, *self.extra, *argv)

    @property
    def password(self) -> str:
        import yaml
        return yaml.safe_load(self.plan.with_suffix(".secrets").read_text())["db_password"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://dbadmin:{self.password}@127.0.0.1:{self.port}/autodeploy"

    def sql(self, query: str, *params):
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.port, user="dbadmin", password=self.password,
                             dbname="autodeploy", autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def revision(self) -> str | None:
        rows = self.sql("SELECT version_num FROM alembic_version")
        return rows[0][0] if rows else None

    def add_revision(self, rev: str, down: str, body: str, message: str = "a later change") -> None:
        (self.root / "alembic" / "versions" / f"{rev}_later.py").write_text(
            f'''"""{message}

Revision ID: {rev}
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
''')


# --- phase 2: plans/phase2.yaml in a copy of the repository, with the app's wheels ------------

@pytest.fixture(scope="session")
def app_wheels(tmp_path_factory, python_image, docker_client):
    from tests.integration.test_reference_app_image import download_wheels
    dest = tmp_path_factory.mktemp("wheels")
    download_wheels(python_image, dest, docker_client)
    return dest


class Phase2:
    def __init__(self, repo, python_image: str, app_wheels, nginx_image: str):
        self.repo = repo
        self.root, self.base = repo.root, python_image
        self.plan = repo.root / "plans" / "phase2.yaml"
        self.name = repo.container.removesuffix("-pg")
        self.db_container, self.app = repo.container, f"{self.name}-app"
        self.network, self.tag = f"{self.name}-net", f"{self.name}-app:test"
        self.app_port, self.db_port, self.http_port = free_port(), repo.port, free_port()
        self.proxy = f"{self.name}-nginx"
        self.extra = [*repo.extra, "-e", f"app_base_image={python_image}", "-e", f"app_port={self.app_port}",
                      "-e", f"app_container={self.app}", "-e", f"network={self.network}", "-e", f"app_tag={self.tag}",
                      "-e", "demo_rows=500", "-e", f"nginx_image={nginx_image}",
                      "-e", f"proxy_container={self.name}-nginx", "-e", f"http_port={self.http_port}"]
        shutil.copytree(app_wheels, self.root / "examples/autodeploy/wheels", dirs_exist_ok=True)

    def run(self, command: str, *argv: str) -> tuple[int, str]:
        return run_cli(command, self.plan, *self.extra, *argv)

    def get(self, path: str, proxy: bool = False):
        port = self.http_port if proxy else self.app_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())

    def post(self, path: str, body: dict, proxy: bool = False):
        port = self.http_port if proxy else self.app_port
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())

    def source_tenants(self) -> int:
        with sqlite3.connect(self.root / "deployment_platform.db") as conn:
            return conn.execute("select count(*) from tenants").fetchone()[0]


@pytest.fixture
def phase2(repo_copy, python_image, app_wheels, nginx_image, docker_client):
    p = Phase2(repo_copy, python_image, app_wheels, nginx_image)
    yield p
    remove_named(docker_client, p.name)
    for image in docker_client.images.list(name=p.tag.split(":")[0]):
        docker_client.images.remove(image.id, force=True)
