"""A converged apply costs little: migrate does not load Alembic while its scripts and the
database's revision are as the last apply left them, and verify does not read the data again
when no step before it changed anything (orchestrate verify still compares everything)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROBE = ("import sys\nfrom orchestrator.cli import main\ncode = main(sys.argv[1:])\n"
         "print('LOADED', ' '.join(m for m in ('alembic', 'sqlalchemy') if m in sys.modules))\nsys.exit(code)\n")


def apply(repo, *extra) -> tuple[int, str, set[str]]:
    """`orchestrate apply` in a fresh interpreter; what it printed and which heavy modules it loaded."""
    env = {k: v for k, v in os.environ.items() if k != "AUTODEPLOY_DB_PASSWORD"}
    done = subprocess.run([sys.executable, "-c", PROBE, "apply", str(repo.plan), *repo.extra, *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    loaded = next(line for line in done.stdout.splitlines() if line.startswith("LOADED")).split()[1:]
    return done.returncode, done.stdout + done.stderr, set(loaded)


def test_a_converged_apply_loads_no_alembic_and_reads_no_data_again(repo_copy):
    code, out, loaded = apply(repo_copy)
    assert code == 0 and "alembic" in loaded, out
    code, out, loaded = apply(repo_copy)
    assert code == 0 and "changed:" not in out.replace("Nothing changed:", ""), out
    assert loaded == set(), out
    assert "nothing changed before it" in out, out

    # a changed revision file: Alembic reads the scripts again (and finds nothing to do)
    version = next((repo_copy.root / "alembic" / "versions").glob("4d3b2f1a9c01*.py"))
    version.write_text(version.read_text() + "\n# touched\n")
    code, out, loaded = apply(repo_copy)
    assert code == 0 and "alembic" in loaded, out
    code, out, loaded = apply(repo_copy)
    assert code == 0 and loaded == set(), out

    # a downgrade by hand in the database: one query notices, Alembic takes over
    repo_copy.sql("DROP INDEX ix_deployment_logs_deployment_id_created_at")
    repo_copy.sql("UPDATE alembic_version SET version_num = '7e5a1c9b2d34'")
    code, out, loaded = apply(repo_copy)
    assert code == 0 and "changed: schema" in out and "alembic" in loaded, out

    # the data is compared again when a step before verify changed, and always on request
    assert "verified 3 table(s)" in out, out
    repo_copy.sql("DELETE FROM deployment_logs WHERE id = (SELECT max(id) FROM deployment_logs)")
    code, out = repo_copy.run("verify")
    assert code == 1 and "deployment_logs" in out, out
