"""orchestrate init on real applications: a copy of the reference application (its plans removed)
and the comic-pile fixture application (tests/apps/comicpile, laid out as the guide `001`
describes). The plans init writes validate, the phase-1 plan applies against the real engine and
converges on a second apply, and a second init refuses and changes nothing."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.conftest import ROOT, SESSION, free_port, remove_named, run_cli

pytestmark = pytest.mark.integration

COMICPILE = ROOT / "tests" / "apps" / "comicpile"


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def init_validate(root: Path, *, phase2: bool) -> str:
    code, out = run_cli("init", "--dir", root)
    assert code == 0, out
    assert "  plans/phase1.yaml\n" in out and ("  plans/phase2.yaml\n" in out) == phase2
    assert "orchestrate plan " in out and "orchestrate apply " in out
    plans = [root / "plans" / "phase1.yaml"] + ([root / "plans" / "phase2.yaml"] if phase2 else [])
    code, checked = run_cli("validate", *plans)
    assert code == 0, checked
    assert checked.count("valid plan") == len(plans)
    return out


def second_init_refuses(root: Path) -> None:
    before = snapshot(root)
    code, out = run_cli("init", "--dir", root)
    assert code == 1, out
    assert out.startswith("error: plans/phase1.yaml") and "never overwrites a file, and wrote nothing" in out
    assert "Traceback" not in out
    assert snapshot(root) == before


def apply_twice(root: Path, name: str, port: int, pg_image: str) -> list[str]:
    extra = ["-e", f"pg_image={pg_image}", "-e", f"db_port={port}",
             "-e", f"container_name={name}-pg", "-e", f"volume_name={name}-data"]
    plan = root / "plans" / "phase1.yaml"
    code, out = run_cli("apply", plan, *extra)
    assert code == 0, out
    assert "failed=0" in out and "changed: data     (copy-data)" in out, out
    code, again = run_cli("apply", plan, *extra)
    assert code == 0 and "ok=6 changed=0 failed=0" in again, again
    code, pending = run_cli("plan", plan, "--detailed-exitcode", *extra)
    assert code == 0, pending
    return extra


def pg_counts(root: Path, port: int, ident: str, tables: list[str]) -> dict[str, int]:
    password = yaml.safe_load((root / "plans" / "phase1.secrets").read_text())["db_password"]
    with psycopg.connect(host="127.0.0.1", port=port, user=ident, password=password, dbname=ident,
                         connect_timeout=5) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def sqlite_counts(path: Path, tables: list[str]) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    conn.close()
    return counts


def test_init_on_the_reference_application(repo_copy, pg_image, docker_client):
    root = repo_copy.root
    shutil.rmtree(root / "plans")           # an application without plans: init writes them
    subprocess.run([sys.executable, "-m", "examples.autodeploy.make_sqlite", "deployment_platform.db",
                    "--rows", "300"], cwd=root, check=True, capture_output=True)
    out = init_validate(root, phase2=True)
    assert "SQLite database: deployment_platform.db (the default of os.getenv('DATABASE_URL', ...) in " \
           "examples/autodeploy/models.py:18)" in out
    assert "Dockerfile: examples/autodeploy/Dockerfile" in out
    phase2 = (root / "plans" / "phase2.yaml").read_text()
    assert 'build_args: {BASE_IMAGE: "{{ vars.app_base_image }}"}' in phase2
    assert '- url: "{{ steps.app.url }}/health"' in phase2

    # the phase-1 plan, applied as written, with the test's own image, names and port
    name = repo_copy.container.removesuffix("-pg")
    apply_twice(root, name, repo_copy.port, pg_image)
    tables = ["tenants", "deployments", "deployment_logs"]
    assert pg_counts(root, repo_copy.port, "repo", tables) == sqlite_counts(root / "deployment_platform.db", tables)
    env = root / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert f"@127.0.0.1:{repo_copy.port}/repo" in env.read_text()
    assert "# DATABASE_URL=sqlite:///./deployment_platform.db" in env.read_text()

    second_init_refuses(root)


def test_init_on_the_comicpile_application(tmp_path, pg_image, docker_client, monkeypatch):
    root = tmp_path / "comic-pile"
    shutil.copytree(COMICPILE, root)
    out = init_validate(root, phase2=True)
    assert "comic_pile.db (the default of os.getenv('DATABASE_URL', ...) in app/database.py:9; not there yet)" in out
    assert (root / "docker-compose.yml").read_bytes() == (COMICPILE / "docker-compose.yml").read_bytes()

    # the database the application would have written on SQLite; then phase 1, as init wrote it
    with sqlite3.connect(root / "comic_pile.db") as conn:
        conn.executescript("""
            CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL,
                                created_at DATETIME DEFAULT (CURRENT_TIMESTAMP) NOT NULL);
            CREATE TABLE threads (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id),
                                  title VARCHAR(200) NOT NULL, issues_read INTEGER NOT NULL,
                                  is_active BOOLEAN NOT NULL);
            INSERT INTO users (name, created_at) VALUES ('ann', '2026-01-02 10:00:00'), ('bob', '2026-01-03 11:30:00');
            INSERT INTO threads (user_id, title, issues_read, is_active)
                VALUES (1, 'Saga', 54, 1), (1, 'Monstress', 12, 0), (2, 'Paper Girls', 30, 1);
        """)
    conn.close()
    monkeypatch.delenv("COMIC_PILE_DB_PASSWORD", raising=False)
    name, port = f"t{SESSION}-{uuid.uuid4().hex[:6]}", free_port()
    try:
        apply_twice(root, name, port, pg_image)
        tables = ["users", "threads"]
        assert pg_counts(root, port, "comic_pile", tables) == {"users": 2, "threads": 3}
        # the application's own compose file is untouched: the plan wrote its own beside it
        assert (root / "docker-compose.yml").read_bytes() == (COMICPILE / "docker-compose.yml").read_bytes()
        assert (root / "docker-compose.postgres.yml").is_file()
        second_init_refuses(root)
    finally:
        remove_named(docker_client, name)
