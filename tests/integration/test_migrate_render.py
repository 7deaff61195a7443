"""Phase 1 whole: PostgreSQL, the rendered .env and docker-compose.yml, and the application's
Alembic migrations, against a real PostgreSQL with the repository's real migrations."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap

import psycopg
import pytest

pytestmark = pytest.mark.integration

HEAD = "c9f0e8d7b6a5"


def read_env(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def compose_config(cwd) -> subprocess.CompletedProcess:
    cmd = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    return subprocess.run([*cmd, "config", "-q"], cwd=cwd, capture_output=True, text=True)


def test_phase1_whole(repo_copy):
    code, out = repo_copy.run("apply")
    assert code == 0, out
    assert "changed: schema" in out and f"upgraded (none) -> {HEAD} (3 revision(s))" in out, out
    tables = {r[0] for r in repo_copy.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"tenants", "deployments", "deployment_logs", "alembic_version"}
    assert repo_copy.revision() == HEAD

    env_file = repo_copy.root / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((repo_copy.root / "docker-compose.yml").stat().st_mode) == 0o644
    url = read_env(env_file)["DATABASE_URL"]
    assert url == repo_copy.url
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), connect_timeout=5) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("tenants", "deployments", "deployment_logs")]
    assert counts == [5, 205, 10000], "the demo SQLite database (created if missing) is copied"
    assert (repo_copy.root / "deployment_platform.db").is_file()
    assert "ok:      check    (verify): verified 3 table(s)" in out, out
    assert len(list((repo_copy.root / "backups").glob("autodeploy-phase1-*.dump"))) == 1
    assert "# DATABASE_URL=postgresql+psycopg://dbadmin:" in env_file.read_text()
    assert "@postgres:5432/autodeploy" in env_file.read_text(), "phase 2's service-name form, commented"
    check = compose_config(repo_copy.root)
    assert check.returncode == 0, check.stderr

    code, out = repo_copy.run("plan", "--detailed-exitcode")
    assert code == 0, out
    code, out = repo_copy.run("apply")
    assert code == 0 and "ok=6 changed=0 failed=0" in out, out


def test_new_revision_is_the_only_one_planned_and_run(repo_copy):
    assert repo_copy.run("apply")[0] == 0
    repo_copy.add_revision("a1b2c3d4e5f6", HEAD, "    op.add_column('deployments', sa.Column('region', sa.String(30)))",
                           message="add deployments.region")
    code, out = repo_copy.run("plan", "--detailed-exitcode")
    assert code == 2
    assert f"~ revision: {HEAD} -> a1b2c3d4e5f6  (1 revision(s) to apply)" in out, out
    assert "will run a1b2c3d4e5f6 add deployments.region" in out
    assert "will run 4d3b2f1a9c01" not in out and "will run 7e5a1c9b2d34" not in out
    code, out = repo_copy.run("plan", "--sql")
    assert "ALTER TABLE deployments ADD COLUMN region VARCHAR(30)" in out, out
    assert "CREATE TABLE tenants" not in out
    code, out = repo_copy.run("apply")
    assert code == 0 and f"upgraded {HEAD} -> a1b2c3d4e5f6 (1 revision(s))" in out, out
    assert repo_copy.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'deployments' "
                         "AND column_name = 'region'") == [("region",)]


def test_failing_migration_stops_at_the_previous_revision(repo_copy):
    assert repo_copy.run("apply")[0] == 0
    repo_copy.add_revision("badbadbad001", HEAD, textwrap.indent(textwrap.dedent("""\
        op.create_table('half_done', sa.Column('id', sa.Integer, primary_key=True))
        op.execute('SELECT 1/0')"""), "    "), message="breaks halfway")
    code, out = repo_copy.run("apply")
    assert code == 1, out
    assert "error: migration badbadbad001 breaks halfway failed: division by zero" in out, out
    assert f"the database stays at revision {HEAD}" in out
    assert repo_copy.revision() == HEAD
    assert repo_copy.sql("SELECT to_regclass('half_done')") == [(None,)], "the failed revision was rolled back"
    import json
    lock = json.loads(repo_copy.plan.with_suffix(".lock").read_text())
    assert lock["steps"]["schema"]["observed"]["revision"] == HEAD
    code, out = repo_copy.run("plan", "--detailed-exitcode")
    assert code == 2 and "will run badbadbad001 breaks halfway" in out, out


def test_two_applies_at_once_never_migrate_twice(repo_copy, tmp_path):
    assert repo_copy.run("apply")[0] == 0
    repo_copy.add_revision("51ee9a7e0001", HEAD, textwrap.indent(textwrap.dedent("""\
        op.create_table('migrated_once', sa.Column('id', sa.Integer, primary_key=True))
        op.execute('SELECT pg_sleep(3)')
        op.execute('INSERT INTO migrated_once VALUES (1)')"""), "    "), message="slow")
    plans = []
    for i in range(2):   # two plans (two apply locks), one database
        plan = repo_copy.root / "plans" / f"migrate{i}.yaml"
        plan.write_text(textwrap.dedent(f"""\
            name: migrate-only-{i}
            root: ..
            secrets:
              url: {{env: TEST_DB_URL}}
            steps:
              - name: schema
                migrate: {{url: "{{{{ secrets.url }}}}"}}
            """))
        plans.append(plan)
    env = {**os.environ, "TEST_DB_URL": repo_copy.url}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "apply", str(p)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for p in plans]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("upgraded" in o for o in outs) == 1, outs
    assert repo_copy.sql("SELECT count(*) FROM migrated_once") == [(1,)]
    assert repo_copy.revision() == "51ee9a7e0001"


def test_downgrade_is_refused_unless_allowed(repo_copy):
    assert repo_copy.run("apply")[0] == 0
    text = repo_copy.plan.read_text()
    repo_copy.plan.write_text(text.replace("target: head", "target: 7e5a1c9b2d34"))
    code, out = repo_copy.run("apply")
    assert code == 1, out
    assert "is below the database's revision c9f0e8d7b6a5" in out and "allow_downgrade: true" in out, out
    assert repo_copy.revision() == HEAD
    repo_copy.plan.write_text(text.replace("target: head", "target: 7e5a1c9b2d34\n      allow_downgrade: true"))
    code, out = repo_copy.run("plan")
    assert "DOWNGRADE: undoing c9f0e8d7b6a5" in out, out
    code, out = repo_copy.run("apply")
    assert code == 0 and "downgraded c9f0e8d7b6a5 -> 7e5a1c9b2d34" in out, out
    assert "before a migration downgrade to 7e5a1c9b2d34; --no-backup skips this" in out, "a backup first"
    assert repo_copy.revision() == "7e5a1c9b2d34"


def test_migration_run_by_hand_shows_as_drift(repo_copy):
    assert repo_copy.run("apply")[0] == 0
    env = {**os.environ, "DATABASE_URL": repo_copy.url}
    done = subprocess.run(["alembic", "downgrade", "-1"], cwd=repo_copy.root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    code, out = repo_copy.run("status", "--detailed-exitcode")
    assert code == 2 and f"revision: recorded {HEAD} -> now 7e5a1c9b2d34" in out, out
    code, out = repo_copy.run("plan")
    assert f"the database is at revision 7e5a1c9b2d34 but the last apply recorded {HEAD}" in out, out
    assert repo_copy.run("apply")[0] == 0
    assert repo_copy.revision() == HEAD


def test_migrations_run_unchanged_with_alembic_by_hand(repo_copy):
    """The application is ordinary: `alembic upgrade head` works too, and orchestrate agrees."""
    code, out = repo_copy.run("apply", "--only", "postgres")
    assert code == 0, out
    env = {**os.environ, "DATABASE_URL": repo_copy.url}
    done = subprocess.run(["alembic", "upgrade", "head"], cwd=repo_copy.root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert repo_copy.revision() == HEAD
    code, out = repo_copy.run("plan")
    assert "no change       schema" in out, out


def test_variable_change_shows_the_rendered_diff_without_secrets(repo_copy):
    from tests.conftest import free_port
    assert repo_copy.run("apply")[0] == 0
    new_port = free_port()
    code, out = repo_copy.run("plan", "-e", f"db_port={new_port}")
    assert code == 0, out
    assert f"-DATABASE_URL=postgresql+psycopg://dbadmin:(redacted)@127.0.0.1:{repo_copy.port}/autodeploy" in out, out
    assert f"+DATABASE_URL=postgresql+psycopg://dbadmin:(redacted)@127.0.0.1:{new_port}/autodeploy" in out
    assert f'+      - "127.0.0.1:{new_port}:5432/tcp"' in out
    assert repo_copy.password not in out
    code, out = repo_copy.run("plan", "--json", "-e", f"db_port={new_port}")
    assert repo_copy.password not in out and "(redacted)" in out


def test_file_edited_by_hand_is_drift_with_its_diff(repo_copy):
    assert repo_copy.run("apply")[0] == 0
    compose = repo_copy.root / "docker-compose.yml"
    compose.write_text(compose.read_text().replace('restart: "unless-stopped"', 'restart: "always"'))
    code, out = repo_copy.run("plan", "--detailed-exitcode")
    assert code == 2
    assert "docker-compose.yml was edited by hand since the last apply" in out, out
    assert '-    restart: "always"' in out and '+    restart: "unless-stopped"' in out
    code, out = repo_copy.run("status", "--detailed-exitcode")
    assert code == 2 and "files:" in out, out
    (repo_copy.root / ".env").chmod(0o644)
    code, out = repo_copy.run("apply")
    assert code == 0 and "wrote docker-compose.yml" in out and "set the mode of .env to 0600" in out, out
    assert stat.S_IMODE((repo_copy.root / ".env").stat().st_mode) == 0o600
    assert repo_copy.run("plan", "--detailed-exitcode")[0] == 0


def test_a_container_still_starting_is_waited_for_before_later_steps(repo_copy, docker_client):
    """Nothing to change, but not usable yet: the step waits for health before migrate runs."""
    assert repo_copy.run("apply", "--only", "postgres")[0] == 0
    docker_client.api.restart(repo_copy.container, timeout=10)
    assert docker_client.api.inspect_container(repo_copy.container)["State"]["Health"]["Status"] == "starting"
    code, out = repo_copy.run("apply")
    assert code == 0, out
    assert "ok:      postgres" in out and "changed: schema" in out
    assert repo_copy.revision() == HEAD
