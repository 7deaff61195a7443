"""kill -9 of a real `orchestrate apply` process of plans/phase2.yaml during the image build, during
the application container's replacement and during the migration job: the next apply converges
(exit 0, `plan --detailed-exitcode` 0) and leaves no stray container (a build's intermediate
container, a set-aside `-orchestrate-old`, a job container), image tag or temporary name."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import TEST_LABEL, Phase2

pytestmark = pytest.mark.integration

OLD = "-orchestrate-old"
PLAN_IMAGES = {"dangling": True, "label": ["orchestrate.plan=autodeploy-phase2", f"{TEST_LABEL[0]}={TEST_LABEL[1]}"]}


def killed_apply(p: Phase2, ready, *argv: str, timeout: float = 150) -> tuple[str, object]:
    """`orchestrate apply` as a real process, killed with SIGKILL as soon as ``ready(output so far)``
    returns something true; returns (its output, what ``ready`` returned)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("AUTODEPLOY_DB_PASSWORD", None)
    log_path = p.root.parent / f"killed-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["orchestrate", "apply", str(p.plan), *p.extra, *argv], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                out = log_path.read_text(errors="replace")
                found = ready(out)
                if found:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return log_path.read_text(errors="replace"), found
                if proc.poll() is not None:
                    pytest.fail(f"apply ended (exit {proc.returncode}) before the moment to kill it:\n{out}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the moment to kill apply did not come within {timeout:g}s:\n{out}")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def containers(docker_client, prefix: str) -> list[dict]:
    """Every container (any state) whose name starts with ``prefix``."""
    return [c for c in docker_client.api.containers(all=True)
            if any(n.lstrip("/").startswith(prefix) for n in c["Names"])]


def names(docker_client, prefix: str) -> list[str]:
    return sorted(c["Names"][0].lstrip("/") for c in containers(docker_client, prefix))


def throwaways(docker_client) -> list[str]:
    """Job and throwaway containers this test session's runs made."""
    return sorted(c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True, filters={
        "label": ["orchestrate.throwaway", f"{TEST_LABEL[0]}={TEST_LABEL[1]}"]}))


def dangling(docker_client) -> set[str]:
    return {i["Id"] for i in docker_client.api.images(filters=PLAN_IMAGES)}


def tags(docker_client, p: Phase2) -> list[str]:
    """Every tag of this test's names (the plan's, and any temporary one)."""
    return sorted(t for i in docker_client.api.images() for t in i.get("RepoTags") or []
                  if t.startswith(p.name))


def wait_healthy(docker_client, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = docker_client.api.inspect_container(name)
        if (info["State"].get("Health") or {}).get("Status") == "healthy" or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def converges(p: Phase2, docker_client, killed: str, *argv: str) -> str:
    """The next apply succeeds and leaves the plan converged, with nothing of the killed run left."""
    code, out = p.run("apply", *argv)
    assert code == 0, out + "\n--- the killed apply said:\n" + killed
    code, again = p.run("plan", "--detailed-exitcode")
    assert code == 0, again + "\n--- the apply after the kill said:\n" + out
    assert names(docker_client, p.name) == sorted([p.db_container, p.app, p.proxy]), out
    assert throwaways(docker_client) == [], out
    # the plan's tag, and the build before it kept for orchestrate rollback (after a rebuild)
    assert tags(docker_client, p) in ([p.tag], [p.tag, p.tag + "-previous"]), out
    info = wait_healthy(docker_client, p.app)
    assert info["State"]["Status"] == "running" and info["State"]["Health"]["Status"] == "healthy", out
    status, tenants = p.get("/tenants")
    assert status == 200 and len(tenants) == p.source_tenants() > 0
    return out


def test_kill_9_during_the_image_build(phase2, docker_client):
    # a requirements file of its own: the early layers (the pip install) are not in the cache, so
    # the build runs long enough to be killed inside its RUN step
    requirements = phase2.root / "examples/autodeploy/requirements.txt"
    requirements.write_text(requirements.read_text() + f"\n# {phase2.name}\n")
    before = dangling(docker_client)

    def building(out: str):
        # with -v the build's output streams: "Step 4/..: RUN python -m venv ..." then the id
        # of the legacy builder's intermediate container it runs in
        after = out.split("RUN python -m venv", 1)
        match = re.search(r"Running in ([0-9a-f]{12})", after[1]) if len(after) == 2 else None
        if match is None:
            return None
        # killed while pip runs in it, not between its creation and its start
        running = docker_client.api.containers(filters={"id": match.group(1), "status": "running"})
        return running and match.group(1)

    killed, intermediate = killed_apply(phase2, building, "-v")
    assert f"building {phase2.tag}" in killed, killed
    assert not docker_client.api.images(name=phase2.tag), "the killed build must not have tagged"

    out = converges(phase2, docker_client, killed)
    assert f"built {phase2.tag}" in out, out
    # the intermediate container the killed build ran its RUN step in is gone
    assert not docker_client.api.containers(all=True, filters={"id": intermediate}), (
        f"the killed build's intermediate container {intermediate} was left:\n{out}")
    assert dangling(docker_client) <= before, out


def kill_during_the_replacement(p: Phase2, docker_client) -> tuple[str, set[str], str]:
    """A converged stack, a new release, and its apply killed once the old container is set aside
    and the new one created under the name, not yet healthy; returns (the next apply's output, the
    plan's untagged images before, the old container's image)."""
    code, out = p.run("apply")
    assert code == 0, out
    old_id = docker_client.api.inspect_container(p.app)["Id"]
    old_image = docker_client.api.inspect_container(p.app)["Image"]
    before = dangling(docker_client)
    app_file = p.root / "examples/autodeploy/app/__init__.py"
    app_file.write_text(app_file.read_text() + "\n# a new release\n")

    def replacing(out: str):
        found = {c["Names"][0].lstrip("/"): c for c in containers(docker_client, p.app)}
        new = found.get(p.app)
        if p.app + OLD in found and new is not None and new["Id"] != old_id:
            return new
        return None

    killed, new = killed_apply(p, replacing)
    assert "healthy)" not in new["Status"], f"killed too late: the new container was {new['Status']}"
    assert "(container)" not in killed, killed      # the app step had not finished

    out = converges(p, docker_client, killed)
    assert not docker_client.api.containers(all=True, filters={"id": old_id}), out
    assert docker_client.api.inspect_container(p.app)["Id"] == new["Id"], out
    return out, before, old_image


def test_kill_9_during_the_app_replacement(phase2, docker_client):
    out, _, _ = kill_during_the_replacement(phase2, docker_client)
    assert f"removed {phase2.app}{OLD}, left aside by an interrupted run" in out, out


def test_kill_9_during_the_app_replacement_leaves_no_previous_build(phase2, docker_client):
    out, before, old_image = kill_during_the_replacement(phase2, docker_client)
    assert dangling(docker_client) <= before, f"the previous build {old_image[7:19]} was left:\n{out}"


SLOW = "d5e6f7a8b9c0"


def as_job(p: Phase2) -> None:
    """The plan's schema step as a job in the application's image (as the README shows), unless the
    plan already says so."""
    text = p.plan.read_text()
    step = text.split("- name: schema", 1)[1].split("- name:", 1)[0]
    if "job:" not in step:
        new = step.replace("      target: head\n", "      target: head\n      job:\n"
                                                    "        image: \"{{ steps.app_image.tag }}\"\n", 1)
        assert new != step, step
        p.plan.write_text(text.replace(step, new, 1))


def test_kill_9_during_the_migration_job(phase2, docker_client):
    as_job(phase2)
    code, out = phase2.run("apply")
    assert code == 0 and "migrate job" in out, out
    versions = phase2.root / "alembic/versions"
    heads = {line.split('"')[1] for f in versions.glob("*.py") for line in f.read_text().splitlines()
             if line.startswith("revision")}
    downs = {line.split('"')[1] for f in versions.glob("*.py") for line in f.read_text().splitlines()
             if line.startswith("down_revision") and '"' in line}
    (head,) = heads - downs
    phase2.repo.add_revision(SLOW, head, '    op.execute("select pg_sleep(5)")\n'
                                         '    op.execute("create table kill_test_marker (id integer primary key)")',
                             "a slow revision (the kill test's)")
    seen: dict[str, float] = {}

    def in_the_job(out: str):
        # the job's container runs, inside the slow revision (its log line with -v, or 2 s in)
        jobs = docker_client.api.containers(filters={"status": "running", "label": [
            "orchestrate.throwaway", f"{TEST_LABEL[0]}={TEST_LABEL[1]}"]})
        if not jobs:
            return None
        first = seen.setdefault(jobs[0]["Id"], time.monotonic())
        if f"-> {SLOW}" in out or time.monotonic() - first > 2:
            return jobs[0]
        return None

    killed, job = killed_apply(phase2, in_the_job, "-v")
    assert docker_client.api.containers(all=True, filters={"id": job["Id"]}), "the kill left no job to clean"
    assert "(migrate)" not in killed.split("(image)", 1)[-1], killed     # killed inside the step

    out = converges(phase2, docker_client, killed)
    assert not docker_client.api.containers(all=True, filters={"id": job["Id"]}), out
    assert throwaways(docker_client) == [], out
    rows = subprocess.run(["docker", "exec", phase2.db_container, "psql", "-U", "dbadmin", "-d", "autodeploy",
                           "-tAc", "select version_num from alembic_version"], capture_output=True, text=True)
    assert rows.stdout.strip() == SLOW, rows.stdout + rows.stderr
