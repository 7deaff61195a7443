"""The image step's pure parts: the Dockerfile reader and linter, the context digest (docker-py's
ignore rules, the cache, the files it names), the diff, and the refusal of secrets."""

from __future__ import annotations

import os
import time

import pytest

from orchestrator import buildcontext, dockerfile
from orchestrator.changes import Action
from orchestrator.steps.image import DIGEST_LABEL, ImageSpec, Observed, build_digest, diff_image
from tests.conftest import run_cli

# --- the linter ---------------------------------------------------------------------------------

BAD = r'''# syntax=docker/dockerfile:1
FROM python:3.11-slim AS runtime
# a comment
RUN apt-get update && \
    # a comment inside a continuation
    apt-get install -y curl
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:\$PORT app:app"]
ENTRYPOINT ['python', 'app.py']
HEALTHCHECK --interval=5s --timeout=3s \
  CMD ["curl", "-f", "http://localhost:$PORT/health"]
RUN ["echo", "${HOME}"]
'''


def test_each_warning_names_the_file_and_its_line():
    warnings = dockerfile.lint(BAD, "app/Dockerfile")
    assert len(warnings) == 4, warnings
    assert warnings[0].startswith("app/Dockerfile:7: CMD ") and "not valid JSON" in warnings[0]
    assert "[sh,: not found" in warnings[0]
    assert warnings[1].startswith("app/Dockerfile:8: ENTRYPOINT ") and "not valid JSON" in warnings[1]
    assert warnings[2].startswith("app/Dockerfile:9: HEALTHCHECK CMD is exec form") and "$PORT" in warnings[2]
    assert warnings[3].startswith("app/Dockerfile:11: RUN is exec form") and "$HOME" in warnings[3]


GOOD = r'''FROM python:3.11-slim
ENV PORT=8000
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:$PORT app:app"]
ENTRYPOINT ["/bin/bash", "-ec", "echo $HOME"]
RUN echo "$HOME" && ls [abc]
RUN --mount=type=cache,target=/root/.cache ["pip", "install", "flask"]
HEALTHCHECK NONE
HEALTHCHECK CMD curl -f http://localhost:$PORT/ || exit 1
CMD ["python", "-m", "app", "--price", "\\$5"]
SHELL ["/bin/sh", "-c"]
EXPOSE $PORT
'''


def test_valid_forms_give_no_warning():
    assert dockerfile.lint(GOOD, "Dockerfile") == []


def test_escape_directive_and_continuations_keep_line_numbers():
    text = "# escape=`\n\nFROM scratch\nCMD [\"a\", `\n     \"$X\"]\nRUN echo \\\n"
    warnings = dockerfile.lint(text, "D")
    assert len(warnings) == 1 and warnings[0].startswith("D:4: CMD is exec form") and "$X" in warnings[0]
    # with the default escape, a backtick is just a character: the exec form is then not JSON
    assert "not valid JSON" in dockerfile.lint(text.replace("# escape=`\n", ""), "D")[0]


def test_onbuild_instructions_are_linted_too():
    assert dockerfile.lint('FROM scratch\nONBUILD CMD ["a" "b"]\n', "D")[0].startswith("D:2: CMD")


def test_base_images_with_build_args_stages_and_target():
    text = ("ARG BASE=python:3.11-slim\nARG TAG\nFROM ${BASE} AS builder\nFROM builder AS test\n"
            "FROM scratch AS empty\nFROM --platform=linux/amd64 debian:${TAG:-bookworm} AS runtime\n"
            "FROM $BASE\n")
    assert dockerfile.base_images(text, {}) == [(3, "python:3.11-slim"), (6, "debian:bookworm")]
    assert dockerfile.base_images(text, {"BASE": "orchestrate-test/python:3.11", "TAG": "trixie"}) == [
        (3, "orchestrate-test/python:3.11"), (6, "debian:trixie")]
    assert dockerfile.base_images(text, {}, target="test") == [(3, "python:3.11-slim")]


# --- the context digest -------------------------------------------------------------------------

def make_tree(root, files: dict[str, str], age: float = 3600) -> None:
    for path, text in files.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
    old = time.time() - age      # older than the racy window: the cache may trust their stat
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            os.utime(os.path.join(dirpath, name), (old, old))


TREE = {"Dockerfile": "FROM scratch\n", "app/main.py": "print(1)\n", "app/util.py": "x = 1\n",
        "app/__pycache__/main.cpython-311.pyc": "junk", "node_modules/a/index.js": "1",
        "node_modules/keep/x.js": "2", "docs/readme.md": "doc", "secret.env": "PW=1", "deep/a/b/c.pyc": "pyc"}
IGNORES = ["", "node_modules\n", "**/__pycache__\n**/*.pyc\n*.env\n", "node_modules\n!node_modules/keep\n",
           "*\n!app\n!Dockerfile\n", "# comment\ndocs/\n  app/util.py  \n", "Dockerfile\n.dockerignore\n"]


@pytest.mark.parametrize("ignore", IGNORES)
def test_the_context_is_what_docker_py_sends(tmp_path, ignore):
    make_tree(tmp_path, {**TREE, ".dockerignore": ignore} if ignore else TREE)
    want = buildcontext.sent_paths(str(tmp_path), "Dockerfile")
    first = buildcontext.scan(str(tmp_path), "Dockerfile")
    assert sorted(first.files) == want
    again = buildcontext.scan(str(tmp_path), "Dockerfile", cache=first)
    assert sorted(again.files) == want and again.digest == first.digest


def test_the_cache_reads_only_changed_files_and_the_changes_are_named(tmp_path):
    make_tree(tmp_path, {**TREE, ".dockerignore": "**/*.pyc\nnode_modules\n"})
    first = buildcontext.scan(str(tmp_path), "Dockerfile")
    cached = buildcontext.decode(buildcontext.encode(first))
    assert cached.files == first.files and cached.digest == first.digest
    noop = buildcontext.scan(str(tmp_path), "Dockerfile", cache=cached)
    assert noop.hashed == [] and noop.digest == first.digest
    # an ignored file changes: nothing is read, nothing changes
    (tmp_path / "deep/a/b/c.pyc").write_text("other")
    assert buildcontext.scan(str(tmp_path), "Dockerfile", cache=cached).digest == first.digest
    (tmp_path / "app/main.py").write_text("print(2)\n")
    (tmp_path / "app/new.py").write_text("")
    (tmp_path / "docs/readme.md").unlink()
    (tmp_path / "secret.env").chmod(0o600)
    now = buildcontext.scan(str(tmp_path), "Dockerfile", cache=cached)
    assert now.digest != first.digest
    assert set(now.hashed) == {"app/main.py", "app/new.py", "secret.env"}
    assert buildcontext.changes(first.hashes(), now.hashes()) == [
        "app/main.py (changed)", "app/new.py (added)", "docs/readme.md (removed)", "secret.env (changed)"]


def test_flag_sees_every_file_read_across_its_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(buildcontext, "CHUNK", 64)
    make_tree(tmp_path, {**TREE, "app/.env": "x" * 60 + "PW=s3cret-pw\n"})
    found = buildcontext.scan(str(tmp_path), "Dockerfile", flag=lambda data: b"s3cret-pw" in data)
    assert found.flagged == ["app/.env"]                     # split over two 64-byte blocks


def test_a_file_written_within_the_racy_window_is_read_again(tmp_path):
    make_tree(tmp_path, TREE, age=0)
    first = buildcontext.scan(str(tmp_path), "Dockerfile")
    again = buildcontext.scan(str(tmp_path), "Dockerfile", cache=first)
    assert "app/main.py" in again.hashed      # its mtime is too close to the first scan's time


def test_a_bad_cache_is_no_cache():
    assert buildcontext.decode("not base64!") is None and buildcontext.decode(None) is None


# --- the diff -----------------------------------------------------------------------------------

SPEC = ImageSpec(context=".", tag="app:latest", build_args={"BASE": "python:3.11"})
OWN = {"orchestrate.plan": "p", "orchestrate.step": "img"}


def observed(tmp_path, spec: ImageSpec = SPEC, built: str | None = None, bases=None, cache=None) -> Observed:
    scan = buildcontext.scan(str(tmp_path), "Dockerfile", cache)
    bases = {"python:3.11": "sha256:" + "b" * 64} if bases is None else bases
    obs = Observed(scan=scan, dockerfile="FROM python:3.11\n", bases=bases, base_lines={"python:3.11": 1})
    if None not in bases.values():
        obs.want = build_digest(spec, OWN, scan.digest, bases)
    if built is not None:
        obs.image = {"Id": "sha256:" + "c" * 64, "Config": {"Labels": {DIGEST_LABEL: built}}}
    return obs


def recorded(obs: Observed, spec: ImageSpec = SPEC) -> dict:
    return {"observed": {"digest": obs.want, "context": buildcontext.encode(obs.scan), "build_args": spec.build_args,
                         "target": spec.target, "labels": spec.labels, "dockerfile": "Dockerfile",
                         "bases": obs.bases}}


def test_diff_builds_a_missing_image_and_leaves_a_current_one(tmp_path):
    make_tree(tmp_path, TREE)
    d = diff_image(observed(tmp_path), SPEC, {}, "Dockerfile")
    assert d.action is Action.CREATE and d.fields() == ["image"]
    current = observed(tmp_path)
    assert diff_image(observed(tmp_path, built=current.want), SPEC, {}, "Dockerfile").changes == []


def test_diff_names_the_files_args_and_base_images_that_changed(tmp_path):
    make_tree(tmp_path, TREE)
    before = observed(tmp_path)
    rec = recorded(before)
    (tmp_path / "app/main.py").write_text("changed\n")
    spec = SPEC.model_copy(update={"build_args": {"BASE": "python:3.11", "DEBUG": "1"}})
    now = observed(tmp_path, spec, built=before.want, bases={"python:3.11": "sha256:" + "d" * 64})
    d = diff_image(now, spec, rec, "Dockerfile")
    assert d.action is Action.RECREATE and d.changes[0].after == "rebuild"
    assert d.changes[0].reason == ("files app/main.py (changed); build args DEBUG; "
                                   "base image python:3.11 changed")


def test_diff_a_missing_base_image_is_a_note_and_a_rebuild(tmp_path):
    make_tree(tmp_path, TREE)
    before = observed(tmp_path)
    now = observed(tmp_path, built=before.want, bases={"python:3.11": None})
    d = diff_image(now, SPEC, recorded(before), "Dockerfile")
    assert d.action is Action.RECREATE and "python:3.11 is not on this engine" in d.changes[0].reason
    assert "Dockerfile:1" in d.notes[0] and "pull" in d.notes[0]


def test_diff_an_image_built_elsewhere_says_so(tmp_path):
    make_tree(tmp_path, TREE)
    d = diff_image(observed(tmp_path, built="sha256:other"), SPEC, {}, "Dockerfile")
    assert "other sources" in d.changes[0].reason


# --- validation ---------------------------------------------------------------------------------

PLAN = """\
name: imgsecret
secrets:
  token: {{env: IMG_TEST_TOKEN}}
vars:
  base: python:3.11
steps:
  - name: app_image
    image:
      tag: app:latest
      build_args:
        BASE: "{{{{ vars.base }}}}"
        TOKEN: {value}
"""


@pytest.mark.parametrize("value", ['"{{ secrets.token }}"', '"x-{{ secrets[\'token\'] }}"'])
def test_a_secret_in_a_build_arg_is_refused_with_file_line_and_key(tmp_path, monkeypatch, value):
    monkeypatch.setenv("IMG_TEST_TOKEN", "tok-123456")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(value=value))
    code, out = run_cli("validate", plan)
    assert code == 1
    assert f"{plan}:12: steps[0].image.build_args.TOKEN: build argument TOKEN holds a secret" in out, out
    assert "tok-123456" not in out


def test_a_secret_too_short_to_mask_is_refused_by_its_template(tmp_path, monkeypatch):
    monkeypatch.setenv("IMG_TEST_TOKEN", "ab")       # not masked (too short), still a secret
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(value='"{{ secrets.token }}"'))
    code, out = run_cli("validate", plan)
    assert code == 1 and "build_args.TOKEN: build argument TOKEN holds a secret" in out, out


def test_a_label_holding_a_secret_value_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("IMG_TEST_TOKEN", "tok-123456")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(value="plain").replace("      build_args:", "      labels: {note: tok-123456}\n"
                                                                          "      build_args:"))
    code, out = run_cli("validate", plan)
    assert code == 1 and "image.labels.note: label note holds a secret" in out and "tok-123456" not in out


def test_a_missing_dockerfile_or_one_outside_the_context_is_an_error_at_its_key(tmp_path):
    plan = tmp_path / "plan.yaml"
    (tmp_path / "app").mkdir()
    plan.write_text("name: imgpaths\nsteps:\n  - name: app_image\n    image:\n      context: app\n"
                    "      dockerfile: docker/Dockerfile\n      tag: app:latest\n")
    code, out = run_cli("validate", plan)
    assert code == 1 and f"{plan}:6: steps[0].image.dockerfile: there is no file app/docker/Dockerfile" in out, out
    plan.write_text(plan.read_text().replace("docker/Dockerfile", "../Dockerfile"))
    code, out = run_cli("validate", plan)
    assert code == 1 and "image.dockerfile: '../Dockerfile' is not inside the context 'app'" in out, out

