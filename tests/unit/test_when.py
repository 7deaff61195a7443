"""when: on any step: a boolean or a template giving one; false means skipped (no Docker here)."""

from __future__ import annotations

import json
import textwrap

from tests.conftest import run_cli

PLAN = """\
name: when-test
vars: {with_extra: false, mode: dev}
steps:
  - name: base
    render:
      files: [{src: a.j2, dest: out/a.txt}]
  - name: extra
    when: "{{ vars.with_extra }}"
    render:
      files: [{src: b.j2, dest: out/b.txt}]
  - name: prod_only
    when: "{{ vars.mode == 'prod' }}"
    render:
      files: [{src: "{{ steps.extra.not_an_output }}", dest: out/c.txt}]
"""


def write(tmp_path, text=PLAN):
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "a.j2").write_text("a\n")
    (tmp_path / "templates" / "b.j2").write_text("b\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    return plan


def test_a_false_when_skips_the_step_without_rendering_it(tmp_path):
    plan = write(tmp_path)
    code, out = run_cli("validate", plan)
    assert code == 0 and "with 1 step(s): base (render)" in out, out
    code, out = run_cli("plan", plan, "--json")
    assert code == 0, out
    assert [(s["name"], s["status"]) for s in json.loads(out)["steps"]] == \
        [("base", "pending"), ("extra", "skipped"), ("prod_only", "skipped")]
    code, out = run_cli("apply", plan)
    assert code == 0 and "skipped: extra" in out and "skipped=2" in out, out
    assert (tmp_path / "out" / "a.txt").exists() and not (tmp_path / "out" / "b.txt").exists()


def test_a_true_when_runs_the_step(tmp_path):
    plan = write(tmp_path)
    code, out = run_cli("apply", plan, "-e", "with_extra=true")
    assert code == 0 and "changed: extra" in out, out
    assert (tmp_path / "out" / "b.txt").read_text() == "b\n"


def test_when_must_give_a_boolean(tmp_path):
    plan = write(tmp_path, PLAN.replace('when: "{{ vars.with_extra }}"', 'when: "{{ vars.mode }}"'))
    code, out = run_cli("validate", plan)
    assert code == 1 and "plan.yaml:8: steps[1].when: when must give true or false, not 'dev'" in out, out
    plan = write(tmp_path, PLAN.replace('when: "{{ vars.with_extra }}"', "when: 3"))
    code, out = run_cli("validate", plan)
    assert code == 1 and "steps[1].when: when must be true, false or a template" in out, out
