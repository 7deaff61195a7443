"""The GitOps example, the pre-commit hook, variable files and plain output: no Docker."""

from __future__ import annotations

import io

import re
import shlex
import subprocess

import pytest
import yaml

from orchestrator.cli import parser
from orchestrator.output import Output
from orchestrator.plan import build_context, load_plan
from orchestrator.secrets import SecretStore, secrets_path
from tests.conftest import ROOT, run_cli

WORKFLOW = ROOT / "examples" / "gitops" / "orchestrate.yml"


def test_workflow_is_a_valid_github_actions_workflow():
    done = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def workflow_commands() -> list[list[str]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    env = {k: v for k, v in doc["env"].items() if isinstance(v, str)}
    found = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                line = line.strip()
                if line.startswith("orchestrate "):
                    line = line.split(" > ")[0]
                    for key, value in env.items():
                        line = line.replace(f'"${key}"', value)
                    found.append(shlex.split(line)[1:])
    return found


def test_workflow_commands_are_the_documented_ones():
    commands = workflow_commands()
    assert {c[0] for c in commands} >= {"validate", "plan", "apply", "verify", "status"}
    readme = (ROOT / "README.md").read_text()
    for argv in commands:
        parser().parse_args(argv)            # every command and flag exists
        for flag in (a for a in argv if a.startswith("--")):
            assert flag in readme, f"the README does not document {flag} (used by the workflow: {argv})"
        assert f"orchestrate {argv[0]}" in readme
    plan_cmd = next(c for c in commands if c[0] == "plan" and "--out" in c)
    assert "--detailed-exitcode" in plan_cmd


def test_workflow_validates_the_production_variables():
    code, out = run_cli("validate", ROOT / "plans" / "phase1.yaml", "--var-file",
                        ROOT / "examples" / "gitops" / "vars" / "production.yaml")
    assert code == 0 and "warning" not in out, out


def test_pre_commit_hook_runs_orchestrate_validate_on_plans():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "orchestrate-validate")
    assert hook["entry"] == "orchestrate validate" and hook["pass_filenames"] is True
    assert re.search(hook["files"], "plans/phase1.yaml")
    # pre-commit passes several files at once
    code, out = run_cli("validate", ROOT / "plans" / "phase1.yaml", ROOT / "plans" / "phase1.yaml")
    assert code == 0 and out.count("valid plan") == 2


def test_variable_precedence_plan_then_files_in_order_then_e(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nvars: {a: 1, b: plan, c: plan}\nsteps:\n"
                    "  - name: f\n    render: {files: [{src: t.j2, dest: out}]}\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.j2").write_text("x")
    (tmp_path / "one.yaml").write_text("a: 2\nb: one\n")
    (tmp_path / "two.yaml").write_text("b: two\n")
    p = load_plan(plan, {"c": "cli"}, [tmp_path / "one.yaml", tmp_path / "two.yaml"])
    ctx = build_context(p, SecretStore(secrets_path(plan)), generate=False)
    assert dict(ctx.vars) == {"a": 2, "b": "two", "c": "cli"}
    p = load_plan(plan, {"a": "7"}, [tmp_path / "one.yaml"])
    assert build_context(p, SecretStore(secrets_path(plan)), generate=False).vars["a"] == 7


def test_a_secret_in_a_variable_file_is_warned_about(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nvars: {db_password: '', port: 1}\nsteps:\n"
                    "  - name: f\n    render: {files: [{src: t.j2, dest: out}]}\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.j2").write_text("{{ vars.db_password }}")
    (tmp_path / "prod.yaml").write_text("db_password: Sup3r-Secret-Value\n")
    code, out = run_cli("validate", plan, "--var-file", tmp_path / "prod.yaml")
    assert code == 0
    assert f"warning: variable 'db_password' in variable file {tmp_path / 'prod.yaml'} looks like a secret" in out
    code, out = run_cli("plan", plan, "--var-file", tmp_path / "prod.yaml")
    assert "Sup3r-Secret-Value" not in out and "(redacted)" in out, out


def test_unknown_variable_in_a_variable_file_names_its_line(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nvars: {port: 1}\nsteps:\n  - name: f\n    render: {files: [{src: t.j2, dest: out}]}\n")
    (tmp_path / "vars.yaml").write_text("# comment\nprot: 2\n")
    code, out = run_cli("validate", plan, "--var-file", tmp_path / "vars.yaml")
    assert code == 1 and f"error: {tmp_path / 'vars.yaml'}:2: prot: the plan" in out and "did you mean 'port'" in out


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"CI": "true"}])
def test_plain_output_without_control_characters(monkeypatch, env):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stream = Tty()
    out = Output(stream)
    out.print(out.c("changed:", "yellow"))
    out.progress("copying")
    assert "\033" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_colour_and_live_progress_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("CI", raising=False)
    stream = Tty()
    out = Output(stream)
    out.progress("copying")
    out.print(out.c("changed:", "yellow"))
    assert "\033[33mchanged:" in stream.getvalue() and "\r\033[K" in stream.getvalue()


def test_quiet_prints_only_the_recap_and_errors():
    stream = io.StringIO()
    out = Output(stream, quiet=True)
    out.print("a step line")
    out.print("RECAP x", always=True)
    out.progress("copying")
    assert stream.getvalue() == "RECAP x\n"



def test_a_short_secret_looking_default_is_warned_about_but_not_masked(tmp_path):
    from orchestrator import redact
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nvars: {api_token: none}\nsteps:\n  - name: f\n    render: {files: [{src: t.j2, dest: out}]}\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.j2").write_text("x")
    code, out = run_cli("validate", plan)
    assert code == 0 and "warning: variable 'api_token'" in out
    assert redact.redact("upgraded (none) -> head") == "upgraded (none) -> head"


@pytest.mark.parametrize("argv", [["-v", "-q", "--no-color", "plan", "p.yaml"], ["plan", "p.yaml", "-v", "-q", "--no-color"]])
def test_global_options_work_before_and_after_the_command(argv):
    args = parser().parse_args(argv)
    assert (args.verbose, args.quiet, args.no_color) == (True, True, True)
    assert parser().parse_args(["plan", "p.yaml"]).verbose is False
