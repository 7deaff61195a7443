"""Hostile plans, variable files and -e values: refused at once, within bounds, never Docker.

``tests/bad_plans/hostile/`` holds small hostile plans with the header of the bad-plan corpus
(``# expect:``, ``# line:``, ``# key:``); the cases too large, binary or machine-specific to commit
(a 2 MB file, UTF-16, NUL bytes, symbolic links, a 2 MB ``-e`` value) are generated below.

Every case runs ``orchestrate validate`` and ``orchestrate plan`` in a child forked from this
test process (already imported, so the figures are the command's own), and must: exit 1 with one
``error:`` line naming the file (and, for corpus files, the line and key), print no traceback,
create no Docker client and no Engine, use at most :data:`CPU_SECONDS` of CPU and
:data:`MEMORY_MB` more resident memory than the test process had, and print at most
:data:`OUTPUT_CHARS` characters (a hostile value is never echoed whole).
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.test_bad_plans import CORPUS, SECRET_VALUE, DockerCalls, _env, error_line, parse_header  # noqa: F401

HOSTILE = CORPUS / "hostile"
FILES = sorted(HOSTILE.glob("*.yaml"))
CPU_SECONDS = 2.0       # a template may run 1 s; everything else takes a few hundredths
MEMORY_MB = 300         # templates may take 256 MiB of address space
WALL_SECONDS = 60       # only against a hang: the child is killed and the case fails
OUTPUT_CHARS = 4000


@dataclass
class Outcome:
    code: int | None
    output: str
    docker: list[str]
    cpu: float
    memory_mb: float
    wall: float


@pytest.fixture
def forked(monkeypatch, tmp_path):
    """Run ``orchestrate ARGV`` in a forked child; Docker clients and the Engine refuse to exist."""
    from orchestrator import docker_engine
    docker = DockerCalls(monkeypatch)

    def no_engine(*args, **kwargs):
        docker.calls.append("Engine()")
        raise RuntimeError("test: no Engine may be created for a hostile plan")

    monkeypatch.setattr(docker_engine.Engine, "__init__", no_engine)
    report = tmp_path / "child.json"

    def run(*argv: str) -> Outcome:
        from orchestrator.cli import main
        idle = os.fork()          # what a child holds before it does anything
        if idle == 0:
            os._exit(0)
        resident = os.wait4(idle, 0)[2].ru_maxrss / 1024
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:      # the child: run the command, report, and leave without pytest's cleanup
            buf, code = io.StringIO(), None
            try:
                code = main([str(a) for a in argv], stdout=buf)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else None
            except BaseException:  # noqa: BLE001 - reported through the output, checked by the test
                buf.write(traceback.format_exc())
            finally:
                report.write_text(json.dumps({"code": code, "output": buf.getvalue(), "docker": docker.calls}))
                os._exit(0)
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - started > WALL_SECONDS:
                os.kill(pid, signal.SIGKILL)
                os.wait4(pid, 0)
                pytest.fail(f"orchestrate {' '.join(map(str, argv))} still ran after {WALL_SECONDS} s")
            time.sleep(0.005)
        assert os.waitstatus_to_exitcode(status) == 0, f"the child died: status {status}"
        result = json.loads(report.read_text())
        return Outcome(result["code"], result["output"], result["docker"], usage.ru_utime + usage.ru_stime,
                       usage.ru_maxrss / 1024 - resident, time.monotonic() - started)

    return run


def refused(outcome: Outcome, path: Path, expect: str, line: int | None = None, key: str | None = None) -> None:
    """The checks every hostile case must pass."""
    out = outcome.output
    assert "Traceback" not in out, out
    assert outcome.docker == [], f"Docker was called: {outcome.docker}\n{out}"
    assert outcome.code == 1, out
    err = error_line(out)
    where = f"error: {path}:{line}: " if line else f"error: {path}:"
    assert err.startswith(where), f"expected {where!r}, got:\n{out[:2000]}"
    assert expect in err, f"expected {expect!r} in:\n{out[:2000]}"
    if key:
        assert f": {key}: " in err, f"expected key {key!r} in:\n{out[:2000]}"
    assert len(out) <= OUTPUT_CHARS, f"{len(out):,} characters of output:\n{out[:2000]}"
    assert SECRET_VALUE not in out
    assert outcome.cpu <= CPU_SECONDS, f"{outcome.cpu:.2f} s of CPU"
    assert outcome.memory_mb <= MEMORY_MB, f"{outcome.memory_mb:.0f} MB more memory"


# --- the committed corpus ------------------------------------------------------------------


def test_hostile_corpus_is_there():
    assert len(FILES) >= 40, f"only {len(FILES)} hostile plans in {HOSTILE}"


@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_hostile_plan(path: Path, command: str, forked):
    header = parse_header(path)
    before = sorted(p.name for p in HOSTILE.iterdir())
    outcome = forked(command, path)
    refused(outcome, path, header["expect"], int(header["line"]), header.get("key"))
    assert sorted(p.name for p in HOSTILE.iterdir()) == before, "the command wrote files next to the plan"


def test_billion_laughs_is_small_and_refused_well_under_a_second(forked):
    path = HOSTILE / "01_billion_laughs.yaml"
    assert path.stat().st_size < 1000
    outcome = forked("validate", path)
    refused(outcome, path, "YAML anchor &a is not allowed", 5)
    assert outcome.cpu < 0.5, f"{outcome.cpu:.2f} s of CPU"


def test_no_template_ran_a_command():
    assert not Path("/tmp/orchestrate-pwned").exists() and not Path("/tmp/orchestrate-escape").exists()


# --- generated cases -------------------------------------------------------------------------

PLAN = """\
name: hostile-generated
vars:
  db_port: 5432
  name: bad_pg
secrets:
  pw: {env: ORCH_TEST_PW}
steps:
  - name: postgres
    db-container:
      image: "postgres:16-alpine"
      container: "{{ vars.name }}"
      volume: bad_data
      password: "{{ secrets.pw }}"
      ports: ["127.0.0.1:{{ vars.db_port }}:5432"]
"""
CONTAINER_LINE = 11


def write(tmp_path: Path, content: str | bytes, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


GENERATED = {
    # name: (file content, what the error says, its line)
    "two_megabytes": (PLAN.replace('"{{ vars.name }}"', "c" * 2_000_000), "larger than the 1024 KiB", None),
    "container_name_of_900_kb": (PLAN.replace('"{{ vars.name }}"', "c" * 900_000),
                                 "too long: 900,000 characters, at most 128", CONTAINER_LINE),
    "utf16": (PLAN.encode("utf-16"), "is UTF-16 or UTF-32 text", None),
    "latin1": (PLAN.replace("bad_data", "donn\xe9es").encode("latin-1"), "is not UTF-8 text (byte 0xe9)", 12),
    "nul_byte": (PLAN.replace("bad_data", "bad\x00data"), "contains a NUL character", 12),
    "nesting_300000_deep": (PLAN + "      labels: {a: " + "[" * 300_000 + "]" * 300_000 + "}\n",
                            "nested deeper than 32 levels", 15),
    "number_of_a_megabyte": (PLAN.replace("db_port: 5432", "db_port: 1" + ":1" * 500_000),
                             "a number of 1,000,001 characters", 3),
    "many_anchors": (PLAN + "".join(f"      x{i}: &a{i} 1\n" for i in range(10_000)), "YAML anchor &a0", 15),
    "templates_adding_up": (PLAN.replace("  name: bad_pg\n", "  name: bad_pg\n  big: \"{{ 'x' * 1000000 }}\"\n" + "".join(
        f"  copy{i}: \"{{{{ vars.big ~ {i} }}}}\"\n" for i in range(100))), "templates render more than 64 MiB in all", 72),
    "template_renders_2_mb": (PLAN + "      labels: {a: \"{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}\"}\n",
                              "renders more than 1024 KiB", 15),
}


@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("case", GENERATED, ids=str)
def test_generated_hostile_plan(case, command, forked, tmp_path):
    content, expect, line = GENERATED[case]
    path = write(tmp_path, content)
    refused(forked(command, path), path, expect, line)


def test_a_utf8_bom_is_fine(forked, tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + PLAN.encode())
    outcome = forked("validate", path)
    assert outcome.code == 0, outcome.output
    assert outcome.docker == []


@pytest.mark.parametrize("value,expect", [
    ("c" * 2_000_000, "-e name=...: the value is 2,000,000 characters long"),
    ("bad\x00pg", "-e name=...: the value holds a NUL character"),
    ("c" * 60_000, "too long: 60,000 characters, at most 128"),
])
def test_hostile_extra_var(value, expect, forked, tmp_path):
    path = write(tmp_path, PLAN)
    outcome = forked("validate", path, "-e", f"name={value}")
    refused(outcome, path, expect, 4 if "-e" in expect else CONTAINER_LINE)


@pytest.mark.parametrize("content,expect,line", [
    ("name: &x bad_pg\n", "YAML anchor &x is not allowed", 1),
    ("name: !!python/object/apply:os.system [id]\n", "YAML tag '!!python/object/apply:os.system'", 1),
    ("name: " + "c" * (1024 * 1024) + "\n", "larger than the 1024 KiB", None),
    ("name: a\n---\nname: b\n", "a second YAML document", 2),
    ("db_port: " + "9" * 5000 + "\n", "a number of 5,000 characters", 1),
])
def test_hostile_variable_file(content, expect, line, forked, tmp_path):
    plan = write(tmp_path, PLAN)
    var_file = write(tmp_path, content, "vars.yaml")
    refused(forked("validate", plan, "--var-file", var_file), var_file, expect, line)


def test_a_variable_file_cannot_smuggle_a_long_name(forked, tmp_path):
    plan = write(tmp_path, PLAN)
    var_file = write(tmp_path, "name: " + "c" * 1_000_000 + "\n", "vars.yaml")
    refused(forked("plan", plan, "--var-file", var_file), plan, "too long: 1,000,000 characters", CONTAINER_LINE,
            "steps[0].db-container.container")


RENDER_PLAN = """\
name: hostile-render
steps:
  - name: files
    render:
      files: [{src: %s, dest: %s}]
"""


def test_a_symbolic_link_cannot_lead_a_path_out_of_the_root(forked, tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ok.j2").write_text("ok\n")
    (tmp_path / "out").symlink_to("/tmp")
    path = write(tmp_path, RENDER_PLAN % ("ok.j2", "out/orchestrate-escape"))
    refused(forked("validate", path), path, "leads outside the plan's root", 5, "steps[0].render.files[0].dest")
    assert "through a symbolic link" in forked("validate", path).output


def test_a_template_file_cannot_be_a_link_out_of_its_folder(forked, tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "evil.j2").symlink_to("/etc/hostname")
    path = write(tmp_path, RENDER_PLAN % ("evil.j2", "out.txt"))
    refused(forked("plan", path), path, "leads outside", 5, "steps[0].render.files[0].src")


def test_a_template_file_is_bounded_too(forked, tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "slow.j2").write_text(
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}")
    path = write(tmp_path, RENDER_PLAN % ("slow.j2", "out.txt"))
    refused(forked("validate", path), path, "the template ran longer than 1 s", 5)
    assert not (tmp_path / "out.txt").exists()


def test_a_secret_file_must_be_a_regular_file(forked, tmp_path):
    os.mkfifo(tmp_path / "pw.fifo")
    path = write(tmp_path, PLAN.replace("{env: ORCH_TEST_PW}", "{file: pw.fifo}"))
    refused(forked("validate", path), path, "is not a regular file", 6, "secrets.pw.file")


# --- what stays allowed, and what the bounds leave alone ----------------------------------------


def test_values_at_the_bounds_are_valid(forked, tmp_path):
    plan = PLAN.replace("volume: bad_data", "volume: " + "v" * 128).replace(
        "password:", "user: " + "u" * 63 + "\n      database: " + "d" * 63 + "\n      password:")
    path = write(tmp_path, plan + "      env: {BIG: \"" + "e" * 32 * 1024 + "\"}\n      wait: 3650d\n")
    outcome = forked("validate", path, "-e", "name=" + "c" * 128)
    assert outcome.code == 0, outcome.output
    assert outcome.docker == []


def test_a_template_keeps_the_callers_alarm():
    from orchestrator.templating import render_string

    def handler(signum, frame):
        raise AssertionError("the caller's alarm fired")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        assert render_string("{{ 6 * 7 }}", {}) == 42
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert signal.getsignal(signal.SIGALRM) is handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert 20 < remaining <= 30
