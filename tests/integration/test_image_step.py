"""The image step against the real engine, with tiny Dockerfiles (no registry: ``FROM scratch`` or
the test PostgreSQL image as a base)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import ROOT, SESSION, TEST_LABEL, run_cli

PLAN = """\
name: {name}
vars:
  greeting: hello
steps:
  - name: app_image
    image:
      context: src
      dockerfile: docker/Dockerfile
      tag: {tag}
      build_args: {{GREETING: "{{{{ vars.greeting }}}}"{extra}}}
  - name: note
    render:
      template_dir: templates
      files: [{{src: note.j2, dest: out/note.txt}}]
"""


class ImagePlan:
    def __init__(self, root, dockerfile: str, extra_args: str = ""):
        self.root = root
        self.name = f"t{SESSION}-{uuid.uuid4().hex[:6]}"
        self.tag = f"orchestrate-test-img/{self.name}:latest"
        self.path = root / "plan.yaml"
        self.path.write_text(PLAN.format(name=self.name, tag=self.tag, extra=extra_args))
        (root / "templates").mkdir()
        (root / "templates/note.j2").write_text("{{ steps.app_image.tag }} {{ steps.app_image.id }}\n")
        (root / "src/docker").mkdir(parents=True)
        (root / "src/docker/Dockerfile").write_text(dockerfile)
        (root / "src/app.txt").write_text("version 1\n")
        (root / "src/notes.log").write_text("ignored 1\n")
        (root / "src/.dockerignore").write_text("*.log\n")
        old = time.time() - 3600     # sources older than the cache's racy window, as a checkout's are
        for path in (root / "src").rglob("*"):
            os.utime(path, (old, old))

    def run(self, command: str, *extra: str) -> tuple[int, str]:
        return run_cli(command, self.path, *extra)


@pytest.fixture
def image_plan(tmp_path, docker_client):
    made: list[ImagePlan] = []

    def make(dockerfile: str = "FROM scratch\nCOPY app.txt /app.txt\nARG GREETING\nLABEL greeting=$GREETING\n",
             extra_args: str = "") -> ImagePlan:
        made.append(ImagePlan(tmp_path, dockerfile, extra_args))
        return made[-1]

    yield make
    for plan in made:
        for image in docker_client.images.list(filters={"label": f"orchestrate.plan={plan.name}"}):
            docker_client.images.remove(image.id, force=True)


def test_build_once_then_nothing_changes(image_plan, docker_client, mutations):
    p = image_plan()
    code, out = p.run("apply")
    assert code == 0, out
    assert re.search(rf"changed: +app_image \(image\): built {re.escape(p.tag)}", out), out
    image = docker_client.images.get(p.tag)
    labels = image.labels
    assert labels[TEST_LABEL[0]] == TEST_LABEL[1] and labels["orchestrate.step"] == "app_image"
    assert labels["orchestrate.build-digest"].startswith("sha256:") and labels["greeting"] == "hello"
    assert (p.root / "out/note.txt").read_text() == f"{p.tag} {image.id}\n"   # the outputs, for later steps

    lock = p.path.with_suffix(".lock").read_text()
    mutations.calls.clear()
    code, out = p.run("apply")
    assert code == 0 and re.search(r"ok: +app_image \(image\): .* is up to date", out), out
    assert mutations.calls == [], f"a converged apply made mutating Docker calls: {mutations.calls}"
    assert p.path.with_suffix(".lock").read_text() == lock, "a converged apply rewrote the lockfile"
    code, out = p.run("plan", "--detailed-exitcode")
    assert code == 0, out
    assert p.run("status", "--detailed-exitcode")[0] == 0
    saved = p.root / "plan.saved"
    assert p.run("plan", "--out", saved)[0] == 0
    code, out = run_cli("apply", saved)
    assert code == 0 and "stale" not in out, out
    assert docker_client.images.get(p.tag).id == image.id


def test_a_changed_source_file_is_named_and_rebuilt_an_ignored_one_changes_nothing(image_plan, docker_client):
    p = image_plan()
    assert p.run("apply")[0] == 0
    first = docker_client.images.get(p.tag).id

    (p.root / "src/notes.log").write_text("ignored 2, longer\n")
    code, out = p.run("plan", "--detailed-exitcode")
    assert code == 0 and "no change" in out, out

    (p.root / "src/app.txt").write_text("version 2\n")
    code, out = p.run("plan", "--detailed-exitcode")
    assert code == 2, out
    assert "rebuild" in out and "files app.txt (changed)" in out
    code, out = p.run("apply")
    assert code == 0 and "built" in out and "app.txt (changed)" in out, out
    assert docker_client.images.get(p.tag).id != first
    assert p.run("plan", "--detailed-exitcode")[0] == 0


def test_a_changed_build_arg_rebuilds(image_plan, docker_client):
    p = image_plan()
    assert p.run("apply")[0] == 0
    code, out = p.run("plan", "-e", "greeting=bonjour")
    assert "rebuild" in out and "build args GREETING" in out, out
    code, out = p.run("apply", "-e", "greeting=bonjour")
    assert code == 0, out
    assert docker_client.images.get(p.tag).labels["greeting"] == "bonjour"


def test_a_base_image_of_the_engine_is_part_of_the_digest(image_plan, docker_client, pg_image):
    p = image_plan(f"ARG BASE\nFROM $BASE\nCOPY app.txt /app.txt\n", extra_args=f", BASE: {pg_image}")
    code, out = p.run("apply")
    assert code == 0, out
    record = json.loads(p.path.with_suffix(".lock").read_text())["steps"]["app_image"]
    assert record["observed"]["bases"] == {pg_image: docker_client.images.get(pg_image).id}
    assert p.run("plan", "--detailed-exitcode")[0] == 0


def test_a_failing_build_fails_the_step_with_its_last_lines_and_leaves_no_tag(image_plan, docker_client, pg_image):
    p = image_plan(f"FROM {pg_image}\nRUN echo about-to-fail && exit 3\n")
    code, out = p.run("apply")
    assert code == 1, out
    assert re.search(r"failed: +app_image \(image\)", out) and f"building image {p.tag} failed" in out
    assert "about-to-fail" in out and "returned a non-zero code: 3" in out
    assert docker_client.images.list(name=p.tag.rsplit(":", 1)[0]) == []
    assert docker_client.containers.list(all=True, filters={"ancestor": pg_image, "status": "exited",
                                                            "label": f"orchestrate.plan={p.name}"}) == []


def test_a_missing_base_image_is_planned_and_apply_says_it_could_not_be_pulled(image_plan):
    p = image_plan("FROM orchestrate-test/no-such-base:1\nCOPY app.txt /\n")
    code, out = p.run("plan")
    assert "base image orchestrate-test/no-such-base:1 (src/docker/Dockerfile:1) is not on this Docker engine" in out
    code, out = p.run("apply")
    assert code == 1
    assert "image orchestrate-test/no-such-base:1 is not on this Docker engine and pulling it failed" in out, out


def test_dockerfile_warnings_appear_in_the_plan_with_file_and_line(image_plan):
    p = image_plan('FROM scratch\nCOPY app.txt /\nCMD ["sh", "-c", "echo \\$HOME"]\nENTRYPOINT ["/app", "$PORT"]\n')
    code, out = p.run("plan")
    assert code == 0, out
    assert "! src/docker/Dockerfile:3: CMD" in out and "not valid JSON" in out and "[sh,: not found" in out
    assert "! src/docker/Dockerfile:4: ENTRYPOINT is exec form, so no shell expands $PORT" in out


def test_a_multi_stage_build_with_a_target(image_plan, docker_client):
    p = image_plan("FROM scratch AS files\nCOPY app.txt /app.txt\nFROM scratch AS runtime\n"
                   "COPY --from=files /app.txt /copied.txt\nLABEL stage=runtime\nFROM runtime AS debug\n"
                   "LABEL stage=debug\n")
    p.path.write_text(p.path.read_text().replace("      build_args:", "      target: runtime\n      build_args:"))
    code, out = p.run("apply")
    assert code == 0, out
    assert docker_client.images.get(p.tag).labels["stage"] == "runtime"
    assert p.run("plan", "--detailed-exitcode")[0] == 0
    p.path.write_text(p.path.read_text().replace("target: runtime", "target: debug"))
    code, out = p.run("plan")
    assert "rebuild" in out and "target changed" in out, out
    assert p.run("apply")[0] == 0 and docker_client.images.get(p.tag).labels["stage"] == "debug"


def test_kill_9_during_a_build_leaves_no_container_or_tag_and_the_next_apply_builds(image_plan, docker_client, pg_image):
    p = image_plan(f'FROM {pg_image}\nARG GREETING\nRUN case "$GREETING" in slow) sleep 120;; esac; '
                   f'echo "$GREETING" > /greeting\n')
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "apply", "-v", str(p.path), "-e", "greeting=slow"],
                            cwd=ROOT, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        running = None
        for line in proc.stdout:                      # the build's container runs the slow RUN
            match = re.search(r"Running in ([0-9a-f]{12})", line)
            if match:
                running = match.group(1)
                break
        assert running, "the build never reached its RUN"
        time.sleep(1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.time() + 60                       # Docker cancels the build: its container goes
    while docker_client.containers.list(all=True, filters={"id": running}) and time.time() < deadline:
        time.sleep(0.5)
    assert docker_client.containers.list(all=True, filters={"id": running}) == []
    assert docker_client.images.list(name=p.tag.rsplit(":", 1)[0]) == []

    code, out = p.run("apply")
    assert code == 0, out
    assert p.run("plan", "--detailed-exitcode")[0] == 0


def test_a_context_file_holding_a_secret_stops_plan_and_apply(image_plan, docker_client, monkeypatch):
    p = image_plan()
    monkeypatch.setenv("IMG_TEST_DB_PW", "Pw-in-a-rendered-env-file")
    p.path.write_text(p.path.read_text().replace("vars:\n", "secrets:\n  pw: {env: IMG_TEST_DB_PW}\nvars:\n"))
    (p.root / "src/.env").write_text("DATABASE_URL=postgresql://app:Pw-in-a-rendered-env-file@db/app\n")
    for command in ("plan", "apply"):
        code, out = p.run(command)
        assert code == 1, out
        assert "the build context src holds a secret of this plan in .env" in out and "src/.dockerignore" in out
        assert "Pw-in-a-rendered-env-file" not in out
    assert docker_client.images.list(name=p.tag.rsplit(":", 1)[0]) == []
    (p.root / "src/.dockerignore").write_text("*.log\n.env\n")
    code, out = p.run("apply")
    assert code == 0, out
