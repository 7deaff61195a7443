"""The migrate step with ``job:``: Alembic runs in a throwaway container of the reference
application's image (built offline, as tests/integration/test_reference_app_image.py builds it),
on the plan's network, reaching PostgreSQL by the db-container's ``internal_url``; orchestrate
reads the database's revision over the host URL and the pending revisions from the host's files.
A failing job fails the step with its last lines, and no job container is ever left: not after a
failure, and not after a ``kill -9`` of the CLI (the next apply removes it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.throwaway import OWNER_LABEL, PURPOSE_LABEL
from tests.conftest import ROOT, TEST_LABEL, run_cli
from tests.integration.test_reference_app_image import HEAD, Stack

pytestmark = pytest.mark.integration

LABELS = {TEST_LABEL[0]: TEST_LABEL[1]}
REVISIONS = ["4d3b2f1a9c01", "7e5a1c9b2d34", HEAD]

PLAN = """\
name: {name}
root: ..
vars:
  pg_image: {pg_image}
  app_image: {app_image}
  port: {port}
  sleep: "0"
secrets:
  pw: {{generate: 24}}
steps:
  - name: postgres
    db-container:
      image: "{{{{ vars.pg_image }}}}"
      container: {name}-pg
      volume: {name}-data
      user: dbadmin
      password: "{{{{ secrets.pw }}}}"
      database: autodeploy
      ports: ["127.0.0.1:{{{{ vars.port }}}}:5432"]
      network: {name}-net
      healthcheck: {{interval: 1s, timeout: 3s, retries: 60}}
  - name: schema
    migrate:
      alembic_ini: alembic.ini
      job:
        image: "{{{{ vars.app_image }}}}"
        env: {{MIGRATION_SLEEP: "{{{{ vars.sleep }}}}"}}
        timeout: 5m
"""

SLEEPING = """\
    import os
    import time
    time.sleep(float(os.environ.get("MIGRATION_SLEEP", "0")))
    op.execute("CREATE TABLE slept (id integer)")"""


@pytest.fixture(scope="module")
def app_image(docker_client, python_image, tmp_path_factory):
    """The reference application's image, built once for this module."""
    stack = Stack(docker_client)
    try:
        stack.build(python_image, tmp_path_factory.mktemp("job-image"))
        yield stack.tag
    finally:
        for tag in reversed(stack.tags):
            docker_client.images.remove(tag, force=True)


class JobPlan:
    """A db-container on a network and a migrate step with job:, in a copy of the repository."""

    def __init__(self, repo, pg_image: str, app_image: str, client):
        self.repo, self.client = repo, client
        self.name = repo.container.removesuffix("-pg")      # repo_copy removes what starts with it
        self.path = repo.root / "plans" / "job.yaml"
        self.path.write_text(PLAN.format(name=self.name, pg_image=pg_image, app_image=app_image, port=repo.port))
        self.images: list[str] = []

    def run(self, command: str, *argv: str) -> tuple[int, str]:
        return run_cli(command, self.path, *argv)

    @property
    def password(self) -> str:
        import yaml
        return yaml.safe_load(self.path.with_suffix(".secrets").read_text())["pw"]

    def revision(self) -> str | None:
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.repo.port, user="dbadmin", password=self.password,
                             dbname="autodeploy", autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        return rows[0][0] if rows else None

    def jobs(self) -> list:
        """The plan's job containers, running or not, found by the throwaway label. (docker-py
        inspects each container it lists: one the apply removed in between is listed again.)"""
        import docker
        flt = {"label": [f"{PURPOSE_LABEL}=migrate", f"orchestrate.plan={self.name}"]}
        for _ in range(10):
            try:
                return self.client.containers.list(all=True, filters=flt)
            except docker.errors.NotFound:
                time.sleep(0.1)
        return self.client.containers.list(all=True, filters=flt)

    def image_with(self, base: str, rev: str, down: str, body: str, tmp) -> str:
        """A revision added to the host's files and to an image derived from ``base`` (as the
        application's next build would have it)."""
        self.repo.add_revision(rev, down, body)
        context = tmp / f"ctx-{rev}"
        context.mkdir()
        (context / f"{rev}_later.py").write_bytes((self.repo.root / "alembic/versions" / f"{rev}_later.py").read_bytes())
        (context / "Dockerfile").write_text(f"FROM {base}\nCOPY {rev}_later.py /app/alembic/versions/\n")
        tag = f"orchestrate-test/autodeploy-app:{self.name}-{rev}"
        self.client.images.build(path=str(context), tag=tag, labels=LABELS, rm=True, forcerm=True)
        self.images.append(tag)
        return tag

    def close(self) -> None:
        for container in self.jobs():
            container.remove(force=True)
        for tag in self.images:
            self.client.images.remove(tag, force=True)


@pytest.fixture
def job_plan(repo_copy, pg_image, app_image, docker_client):
    plan = JobPlan(repo_copy, pg_image, app_image, docker_client)
    yield plan
    plan.close()


def test_the_job_migrates_to_head_and_a_second_apply_changes_nothing(job_plan, app_image, mutations):
    code, out = job_plan.run("plan")
    assert code == 0, out
    for rev in REVISIONS:
        assert f"will run {rev}" in out          # read from the host's files, as today

    code, out = job_plan.run("apply", "-v")
    assert code == 0, out
    assert job_plan.revision() == HEAD
    assert f"migrate: INFO  [alembic.runtime.migration] Running upgrade 7e5a1c9b2d34 -> {HEAD}" in out   # -v streams
    assert f"create container {job_plan.name}-migrate-" in out
    assert job_plan.password not in out
    assert job_plan.jobs() == []

    mutations.calls.clear()
    code, out = job_plan.run("apply")
    assert code == 0, out
    assert mutations.calls == []
    assert "schema" in out and "ok" in out
    code, out = job_plan.run("plan", "--detailed-exitcode")
    assert code == 0, out


def test_a_failing_migration_fails_with_the_jobs_last_lines_and_leaves_no_container(job_plan, app_image, tmp_path):
    image = job_plan.image_with(app_image, "e1f2a3b4c5d6", HEAD, "    op.execute('SELECT 1/0')", tmp_path)
    code, out = job_plan.run("apply", "-e", f"app_image={image}")
    assert code == 1, out
    assert "migration e1f2a3b4c5d6 a later change failed: division by zero" in out
    assert f"the database stays at revision {HEAD}" in out
    assert "the job's last lines:" in out and "  | " in out and "DivisionByZero" in out
    assert 'e1f2a3b4c5d6_later.py", line' in out    # the revision's frame, not SQLAlchemy's
    assert "Traceback" not in out.split("the job's last lines:")[0]
    assert job_plan.password not in out
    assert job_plan.revision() == HEAD            # the revisions before it ran, the failed one rolled back
    assert job_plan.jobs() == []


def test_kill_9_during_a_job_leaves_a_container_the_next_apply_removes(job_plan, app_image, tmp_path):
    image = job_plan.image_with(app_image, "a5b6c7d8e9f0", HEAD, SLEEPING, tmp_path)
    log = tmp_path / "killed.log"
    argv = [sys.executable, "-m", "orchestrator", "apply", str(job_plan.path), "-e", f"app_image={image}",
            "-e", "sleep=300"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=os.environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not [c for c in job_plan.jobs() if c.status == "running"]:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no job container started: " + log.read_text()
            time.sleep(0.2)
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()      # reaped: its owner label names a process that has ended
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    left = job_plan.jobs()
    assert len(left) == 1 and left[0].name.startswith(f"{job_plan.name}-migrate-")
    assert left[0].labels[OWNER_LABEL].endswith(f":{proc.pid}")

    code, out = job_plan.run("apply", "-e", f"app_image={image}")
    assert code == 0, out
    assert f"removed what an interrupted run left: container {left[0].name}" in out
    assert job_plan.revision() == "a5b6c7d8e9f0"
    assert job_plan.jobs() == []


def test_a_job_past_its_timeout_is_stopped_with_a_clear_error(job_plan, app_image, tmp_path):
    image = job_plan.image_with(app_image, "b7c8d9e0f1a2", HEAD, SLEEPING, tmp_path)
    job_plan.path.write_text(job_plan.path.read_text().replace("timeout: 5m", "timeout: 20s"))
    code, out = job_plan.run("apply", "-e", f"app_image={image}", "-e", "sleep=300")
    assert code == 1, out
    assert "did not finish within 20s; it was stopped and removed" in out
    assert f"The database stays at revision {HEAD}" in out
    assert job_plan.revision() == HEAD
    assert job_plan.jobs() == []

