"""A corpus of bad plans: each one mistake, each a clear error at the right line, never Docker.

Every file in ``tests/bad_plans/`` is a small, complete plan with exactly one mistake. Its first
lines say what the error must look like::

    # expect: <a substring of the error message>
    # line: <the 1-based line the error must point at>
    # key: <the dotted key path the message must name>      (optional)

For each file, ``orchestrate validate`` and ``orchestrate plan`` run in-process and must exit 1
with ``error: <file>:<line>: ...``, the expected text and key, no traceback, and no Docker client
ever created (validation happens before anything talks to Docker).

Cases whose message is not yet what a user deserves are marked ``xfail(strict=True)`` in
:data:`XFAIL`, with the reason; fixing the message makes them pass (and the mark must go).
"""

from __future__ import annotations

import io
import re
import traceback
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent.parent / "bad_plans"
FILES = sorted(CORPUS.glob("*.yaml"))

SECRET_ENV = "ORCH_TEST_PW"
SECRET_VALUE = "orch-test-pw-Zq81x"
UNSET_SECRET_ENV = "ORCH_TEST_UNSET_SECRET_XYZ"
# Set for every case and named by no plan: an error message that prints it is dumping the
# process environment (names of variables) into the terminal, logs and CI output.
CANARY_ENV = "ORCH_TEST_ENV_CANARY_QX7"

XFAIL: dict[str, str] = {}


def parse_header(path: Path) -> dict[str, str]:
    """The ``# expect:``, ``# line:`` and optional ``# key:`` comments at the top of a case."""
    header: dict[str, str] = {}
    for text in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#\s*(expect|line|key):\s?(.*)$", text)
        if not match:
            break
        header[match.group(1)] = match.group(2).strip()
    return header


def _case(path: Path):
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[path.stem])] if path.stem in XFAIL else []
    return pytest.param(path, id=path.stem, marks=marks)


class DockerCalls:
    """Records (and refuses) every attempt to create a Docker client."""

    def __init__(self, monkeypatch):
        import docker
        import docker.errors
        self.calls: list[str] = []

        def refuse(what):
            def fake(*args, **kwargs):
                self.calls.append(what)
                raise docker.errors.DockerException(f"test: {what} must not be called here")
            return fake

        monkeypatch.setattr(docker, "from_env", refuse("docker.from_env"))
        monkeypatch.setattr(docker.DockerClient, "__init__", refuse("docker.DockerClient()"))
        monkeypatch.setattr(docker.APIClient, "__init__", refuse("docker.APIClient()"))


@pytest.fixture
def docker_calls(monkeypatch) -> DockerCalls:
    return DockerCalls(monkeypatch)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    from orchestrator import redact
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    monkeypatch.setenv(CANARY_ENV, "1")
    monkeypatch.delenv(UNSET_SECRET_ENV, raising=False)
    yield
    redact.clear()


def run(*argv: str) -> tuple[int | None, str]:
    """``orchestrate ARGV`` in-process; an exception escaping main() is returned as its traceback."""
    from orchestrator.cli import main
    buf = io.StringIO()
    try:
        code = main([str(a) for a in argv], stdout=buf)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else None
    except BaseException:  # noqa: BLE001 - reported through the output, checked below
        return None, buf.getvalue() + traceback.format_exc()
    return code, buf.getvalue()


def error_line(output: str) -> str:
    return next((line for line in output.splitlines() if line.startswith("error: ")), "")


# --- the corpus ---------------------------------------------------------------------------


def test_corpus_has_at_least_20_cases():
    assert len(FILES) >= 20, f"only {len(FILES)} bad plans in {CORPUS}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_case_header(path: Path):
    header = parse_header(path)
    assert header.get("expect"), f"{path.name}: first line must be '# expect: <text>'"
    assert header.get("line", "").isdigit(), f"{path.name}: second line must be '# line: <N>'"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert 1 <= int(header["line"]) <= len(lines), f"{path.name}: line {header['line']} is not in the file"
    assert not lines[int(header["line"]) - 1].lstrip().startswith("#"), \
        f"{path.name}: line {header['line']} is a comment"
    if path.stem != "21_unset_secret_env":
        assert UNSET_SECRET_ENV not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("path", [_case(p) for p in FILES])
def test_bad_plan(path: Path, command: str, docker_calls: DockerCalls):
    header = parse_header(path)
    expect, line, key = header["expect"], int(header["line"]), header.get("key")
    before = sorted(p.name for p in CORPUS.iterdir())

    code, output = run(command, path)

    assert "Traceback" not in output, output
    assert docker_calls.calls == [], f"Docker was called: {docker_calls.calls}\n{output}"
    assert code == 1, output
    assert "error: " in output, output
    err = error_line(output)
    assert err.startswith(f"error: {path}:{line}: "), \
        f"expected the error at {path.name}:{line}, got:\n{output}"
    assert expect in output, f"expected {expect!r} in:\n{output}"
    if key:
        assert f": {key}: " in err, f"expected key {key!r} in:\n{output}"
    assert CANARY_ENV not in output, f"the message lists the process environment:\n{output[:2000]}"
    assert SECRET_VALUE not in output
    assert sorted(p.name for p in CORPUS.iterdir()) == before, "the command wrote files next to the plan"


# --- -e overrides ---------------------------------------------------------------------------

GOOD_PLAN = """\
name: extra-vars
vars:
  pg_image: "postgres:16-alpine"
  db_port: 5432
secrets:
  pw: {env: ORCH_TEST_PW}
steps:
  - name: postgres
    db-container:
      image: "{{ vars.pg_image }}"
      container: extra_vars_pg
      volume: extra_vars_data
      password: "{{ secrets.pw }}"
      ports: ["127.0.0.1:{{ vars.db_port }}:5432"]
"""


@pytest.fixture
def good_plan(tmp_path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(GOOD_PLAN, encoding="utf-8")
    return path


def test_good_plan_is_valid(good_plan, docker_calls):
    """The base the -e cases start from is itself valid (so the -e is the one mistake)."""
    code, output = run("validate", good_plan)
    assert code == 0, output
    assert docker_calls.calls == []


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_extra_var_unknown(good_plan, command, docker_calls):
    code, output = run(command, good_plan, "-e", "nosuchvar=1")
    assert "Traceback" not in output, output
    assert docker_calls.calls == [], output
    assert code == 1, output
    assert error_line(output).startswith(f"error: {good_plan}:2: "), output  # the 'vars:' line
    assert "the plan has no variable 'nosuchvar'" in output, output


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_extra_var_unknown_suggests(good_plan, command, docker_calls):
    code, output = run(command, good_plan, "-e", "db_prot=1")
    assert code == 1, output
    assert "no variable 'db_prot' (did you mean 'db_port'?)" in output, output
    assert docker_calls.calls == [], output


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_extra_var_wrong_type(good_plan, command, docker_calls):
    code, output = run(command, good_plan, "-e", "db_port=abc")
    assert "Traceback" not in output, output
    assert docker_calls.calls == [], output
    assert code == 1, output
    err = error_line(output)
    assert err.startswith(f"error: {good_plan}:4: "), output  # the 'db_port:' line
    assert "db_port" in err and "'abc'" in err, output
    assert "expected a whole number, like the plan's value 5432" in err, output


def test_extra_var_wrong_type_wording(good_plan, docker_calls):
    code, output = run("validate", good_plan, "-e", "db_port=abc")
    assert code == 1, output
    assert "int()" not in output and "base 10" not in output, output


def test_extra_var_malformed(good_plan, docker_calls):
    code, output = run("validate", good_plan, "-e", "garbage")
    assert code == 1, output
    assert "error: -e 'garbage': expected KEY=VALUE" in output, output
    assert docker_calls.calls == [], output
