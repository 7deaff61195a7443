"""Light commands import no heavy library (issue 15, start-up).

Each command runs in a fresh interpreter; afterwards the test lists the heavy modules that were
really loaded (a stand-in of ``orchestrator.lazy`` is not in ``sys.modules``; a standard-library
``LazyLoader`` module that was never touched still has the type ``_LazyModule`` and is skipped).
On failure the import chain of each culprit is printed, from ``python -X importtime``.

``validate`` of a plan with a ``migrate`` step that no lockfile records as converged loads the
Alembic scripts (heads, target): real validation work, so ``alembic`` and the ``sqlalchemy`` it
pulls in are allowed there, and only there. No timing is asserted here: see benchmarks/startup.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("docker", "requests", "sqlalchemy", "alembic", "psycopg", "psycopg2", "paramiko", "urllib3")
MIGRATE_ONLY = ("alembic", "sqlalchemy")   # the migrate step's check loads the scripts

PROBE = r"""
import json, sys, traceback
heavy = tuple(sys.argv[2].split(","))
out = sys.argv[1]
first = {}

class Watch:   # records who imports a heavy top-level package first (the orchestrator frames)
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in heavy and name not in first:
            first[name] = [f"{f.filename.rsplit('/orchestrator/', 1)[-1]}:{f.lineno} in {f.name}"
                           for f in traceback.extract_stack()[:-1] if "/orchestrator/" in f.filename]
        return None

sys.meta_path.insert(0, Watch)
sys.argv = ["orchestrate", *sys.argv[3:]]
from orchestrator.cli import main
try:
    rc = main()
except SystemExit as exc:
    rc = exc.code
loaded = sorted(n for n, m in list(sys.modules.items())
                if n.split(".")[0] in heavy and m is not None and type(m).__name__ != "_LazyModule")
with open(out, "w") as f:
    json.dump({"rc": rc, "loaded": loaded, "first": first}, f)
"""

SMALL_PLAN = """\
name: startup-probe
steps:
  - name: postgres
    db-container:
      image: orchestrate-test/postgres:15
      container: startup-probe-pg
      volume: startup-probe-data
      user: dbadmin
      password: not-a-secret
      database: app
      ports: ["127.0.0.1:55432:5432"]
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("AUTODEPLOY_DB_PASSWORD", "not-a-secret")   # phase1-external reads it
    return env


def _chains(args: list[str], names: list[str]) -> str:
    """The import chain of each top package in ``names``, as ``-X importtime`` shows it."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", *args],
                          capture_output=True, text=True, cwd=REPO, env=_env())
    lines = [l for l in done.stderr.splitlines() if l.startswith("import time:") and "|" in l][1:]
    tops = {n.split(".")[0] for n in names}
    out = []
    for i, line in enumerate(lines):
        mod = line.split("|")[2]
        name = mod.strip()
        if name.split(".")[0] not in tops:
            continue
        depth = len(mod) - len(mod.lstrip())
        chain = [name]
        for later in lines[i + 1:]:
            m = later.split("|")[2]
            d = len(m) - len(m.lstrip())
            if d < depth:
                chain.append(m.strip())
                depth = d
        if len(chain) > 1 and chain[1].split(".")[0] in tops:
            continue          # inside another heavy module: its parent's chain says it
        out.append("  " + " <- ".join(chain) + ("  (at run time)" if len(chain) == 1 else ""))
    return "\n".join(out) or "  (no chain found)"


def _loaded(args: list[str], tmp_path: Path) -> tuple[int, list[str], dict[str, list[str]]]:
    result = tmp_path / "probe.json"
    subprocess.run([sys.executable, "-c", PROBE, str(result), ",".join(HEAVY), *args],
                   cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    data = json.loads(result.read_text())
    return data["rc"], data["loaded"], data["first"]


def _assert_light(args: list[str], tmp_path: Path, allowed: tuple[str, ...] = (), succeed: bool = True) -> None:
    rc, loaded, first = _loaded(args, tmp_path)
    assert rc in (0, None) or not succeed, f"orchestrate {' '.join(args)} exited {rc}"
    culprits = [n for n in loaded if n.split(".")[0] not in allowed]
    if culprits:
        tops = sorted({n.split(".")[0] for n in culprits})
        stacks = "\n".join(f"  {top} first imported from:\n" + "\n".join(f"    {f}" for f in first.get(top, []))
                           for top in tops)
        pytest.fail(f"orchestrate {' '.join(args)} loaded {', '.join(tops)}:\n{stacks}\n"
                    f"import chains (python -X importtime):\n" + _chains(args, culprits), pytrace=False)


def test_help_imports_nothing_heavy(tmp_path):
    _assert_light(["--help"], tmp_path)


def test_schema_imports_nothing_heavy(tmp_path):
    _assert_light(["schema"], tmp_path)


def test_validate_plan_without_migrate_imports_nothing_heavy(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(SMALL_PLAN)
    _assert_light(["validate", str(plan)], tmp_path)


@pytest.mark.parametrize("plan", sorted(p.name for p in (REPO / "plans").glob("*.yaml")))
def test_validate_example_plan_imports_only_what_migrate_needs(tmp_path, plan):
    # phase1-external.yaml names a CA bundle (certs/) that is not in the repository: its validate
    # fails there, and must still fail without loading anything heavy
    _assert_light(["validate", f"plans/{plan}"], tmp_path, allowed=MIGRATE_ONLY,
                  succeed=plan != "phase1-external.yaml")


def test_the_probe_sees_a_heavy_import(tmp_path):
    """The check itself works: a command that does touch Docker's library is caught."""
    result = tmp_path / "probe.json"
    code = PROBE.replace("from orchestrator.cli import main", "import docker.api\nfrom orchestrator.cli import main")
    subprocess.run([sys.executable, "-c", code, str(result), ",".join(HEAVY), "--help"],
                   cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert "docker.api" in json.loads(result.read_text())["loaded"]


def test_validate_imports_only_the_step_types_the_plan_uses(tmp_path):
    """A step type's module (its pydantic models) loads when a plan uses the type."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(SMALL_PLAN)
    probe = PROBE.replace('if n.split(".")[0] in heavy and', 'if (n.split(".")[0] in heavy or '
                          'n.startswith("orchestrator.steps.")) and')
    result = tmp_path / "probe.json"
    subprocess.run([sys.executable, "-c", probe, str(result), ",".join(HEAVY), "validate", str(plan)],
                   cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    data = json.loads(result.read_text())
    steps = {n for n in data["loaded"] if n.startswith("orchestrator.steps.")}
    assert data["rc"] in (0, None)
    # db-container, with what every step shares (base) and what the executor asks of backups
    assert steps == {"orchestrator.steps.base", "orchestrator.steps.db_container", "orchestrator.steps.backup"}, steps


def test_docker_loads_without_paramiko_for_a_local_engine_and_ssh_still_works_after():
    """docker-py imports paramiko (its ssh:// adapter) as it loads; only an ssh:// engine needs it.
    A local engine first, an ssh:// one later in the same process: the adapter is there then."""
    code = """
import sys
from orchestrator.docker_engine import _load_docker
_load_docker(False)
assert "docker" in sys.modules and "paramiko" not in sys.modules, "paramiko loaded"
from docker.api import client
assert not hasattr(client, "SSHHTTPAdapter")
_load_docker(True)
assert "paramiko" in sys.modules and client.SSHHTTPAdapter.__name__ == "SSHHTTPAdapter"
import docker
api = docker.APIClient(base_url="ssh://nobody@127.0.0.1:1", use_ssh_client=True, version="1.41")
assert type(api._custom_adapter).__name__ == "SSHHTTPAdapter"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
