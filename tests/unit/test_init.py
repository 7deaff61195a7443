"""orchestrate init's detection (on small fixture trees), the plans it writes, and its refusals.
No Docker: the plans are checked with validate (which reads templates and migrations, never the
engine) and against the JSON Schema init writes beside them."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator import init as initmod
from orchestrator.executor import validate
from orchestrator.init import (InitError, detect, files_for, find_alembic, find_database, read_dockerfile,
                               sqlite_path, url_in_env, urls_in_python, write)
from orchestrator.plan import load_plan
from tests.conftest import ROOT, run_cli

COMICPILE = ROOT / "tests" / "apps" / "comicpile"

ALEMBIC_INI = """\
[alembic]
script_location = {location}
sqlalchemy.url = {url}
"""


def app_tree(root: Path, *, ini_dir: str = "", location: str = "%(here)s/alembic",
             url: str = "driver://user:pass@localhost/dbname") -> Path:
    """A minimal application: alembic.ini, alembic/env.py and one revision file."""
    base = root / ini_dir
    (base / "alembic" / "versions").mkdir(parents=True)
    (base / "alembic.ini").write_text(ALEMBIC_INI.format(location=location, url=url))
    (base / "alembic" / "env.py").write_text("# env.py\n")
    (base / "alembic" / "versions" / "0001_initial.py").write_text('revision = "0001"\ndown_revision = None\n')
    return root


def write_file(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- DATABASE_URL in Python, read with ast --------------------------------------------------------

@pytest.mark.parametrize("source, url", [
    ('import os\nDATABASE_URL = os.getenv("DATABASE_URL", "sqlite:///./a.db")\n', "sqlite:///./a.db"),
    ('import os\nDATABASE_URL = os.getenv(\n    "DATABASE_URL",\n    "sqlite:///./comic_pile.db"\n)\n',
     "sqlite:///./comic_pile.db"),
    ('import os\nurl = os.environ.get("DATABASE_URL", "sqlite:///data/b.db")\n', "sqlite:///data/b.db"),
    ('from os import getenv\nurl = getenv("DATABASE_URL", default="sqlite:///c.db")\n', "sqlite:///c.db"),
    ('import os\nurl = os.environ.get("DATABASE_URL") or "sqlite:///d.db"\n', "sqlite:///d.db"),
    ('import os\nDEFAULT = "sqlite:///e.db"\nurl = os.getenv("DATABASE_URL", DEFAULT)\n', "sqlite:///e.db"),
    ('import os\nos.environ.setdefault("DATABASE_URL", "sqlite:///f.db")\n', "sqlite:///f.db"),
    ('from decouple import config\nDATABASE_URL = config("DATABASE_URL", default="sqlite:///g.db")\n',
     "sqlite:///g.db"),
    ('class Settings(BaseSettings):\n    database_url: str = "sqlite:///./h.db"\n', "sqlite:///./h.db"),
    ('SQLALCHEMY_DATABASE_URI = "sqlite:///i.db"\n', "sqlite:///i.db"),
    ('import os\nSQLALCHEMY_DATABASE_URI = os.environ.get("SQLALCHEMY_DATABASE_URI", "sqlite:///j.db")\n',
     "sqlite:///j.db"),
], ids=["getenv", "getenv-multiline", "environ.get", "getenv-keyword", "or-default", "module-constant",
        "setdefault", "decouple", "settings-class", "flask-config", "flask-env"])
def test_database_url_defaults_in_python(source, url):
    found = urls_in_python(source, "config.py")
    assert [f.url for f in found] == [url]
    assert found[0].where.startswith("config.py:")


def test_a_default_that_is_not_a_literal_is_found_but_not_guessed():
    found = urls_in_python('import os\nurl = os.getenv("DATABASE_URL", f"sqlite:///{BASE}/app.db")\n', "settings.py")
    assert [(f.url, f.where) for f in found] == [(None, "settings.py:2")]


def test_python_that_does_not_parse_or_reads_other_variables_gives_nothing():
    assert urls_in_python("def broken(:\n", "x.py") == []
    assert urls_in_python('import os\nos.getenv("SECRET_KEY", "sqlite:///no.db")\nos.getenv("DATABASE_URL")\n',
                          "x.py") == []


@pytest.mark.parametrize("url, path", [
    ("sqlite:///./app.db", "./app.db"),
    ("sqlite:///app.db", "app.db"),
    ("sqlite:////var/lib/app.db", "/var/lib/app.db"),
    ("sqlite+aiosqlite:///./x.sqlite3?check_same_thread=false", "./x.sqlite3"),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
    ("postgresql+psycopg://u:p@localhost/db", None),
    ("", None),
])
def test_sqlite_path(url, path):
    assert sqlite_path(url) == path


def test_url_in_env_files():
    assert url_in_env("# DATABASE_URL=sqlite:///no.db\nX=1\nDATABASE_URL=sqlite:///./a.db  # local\n") == "sqlite:///./a.db"
    assert url_in_env('export DATABASE_URL="sqlite:///b.db"\n') == "sqlite:///b.db"
    assert url_in_env("DATABASE_URL='sqlite:///c # d.db'\n") == "sqlite:///c # d.db"
    assert url_in_env("OTHER=1\n") is None


# --- which database ---------------------------------------------------------------------------------

def test_the_application_default_is_found_in_its_config_module(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, "app/__init__.py", "")
    write_file(tmp_path, "app/database.py", 'import os\nDATABASE_URL = os.getenv("DATABASE_URL", "sqlite:///./comic_pile.db")\n')
    db = find_database(tmp_path, find_alembic(tmp_path))
    assert (db.path, db.exists, db.inside) == ("comic_pile.db", False, True)
    assert "app/database.py:2" in db.origin


def test_env_wins_over_the_code_default_and_a_postgres_url_is_passed_over(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, "config.py", 'import os\nURL = os.getenv("DATABASE_URL", "sqlite:///./code.db")\n')
    write_file(tmp_path, ".env", "DATABASE_URL=sqlite:///./instance/live.db\n")
    db = find_database(tmp_path, find_alembic(tmp_path))
    assert (db.path, db.origin) == ("instance/live.db", "DATABASE_URL in .env")
    assert any("code.db" in note for note in db.notes), db.notes

    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://u:secret@localhost/app\n")
    db = find_database(tmp_path, find_alembic(tmp_path))
    assert db.path == "code.db"
    assert any(".env: not a SQLite file (postgresql://...)" in note for note in db.notes)
    assert not any("secret" in note for note in db.notes), "a URL's password is never repeated"


def test_env_example_then_alembic_ini_then_a_sqlite_file_then_the_default(tmp_path):
    app_tree(tmp_path, url="sqlite:///./from_ini.db")
    write_file(tmp_path, ".env.example", "DATABASE_URL=sqlite:///./example.db\n")
    assert find_database(tmp_path, find_alembic(tmp_path)).path == "example.db"
    (tmp_path / ".env.example").unlink()
    db = find_database(tmp_path, find_alembic(tmp_path))
    assert (db.path, db.origin) == ("from_ini.db", "sqlalchemy.url in alembic.ini")

    (tmp_path / "alembic.ini").write_text(ALEMBIC_INI.format(location="alembic", url="driver://x/y"))
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "found.sqlite3") as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.close()
    (tmp_path / "notes.db").write_text("not a database")
    db = find_database(tmp_path, find_alembic(tmp_path))
    assert (db.path, db.exists) == ("data/found.sqlite3", True)
    assert "a SQLite file" in db.origin

    (tmp_path / "data" / "found.sqlite3").unlink()
    db = find_database(tmp_path, find_alembic(tmp_path))
    assert (db.path, db.origin) == ("app.db", None)


def test_a_settings_class_default_is_found_in_the_tree(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, "src/shop/core/settings.py",
               'from pydantic_settings import BaseSettings\n\n\nclass Settings(BaseSettings):\n'
               '    database_url: str = "sqlite:///./var/shop.db"\n')
    db = find_database(tmp_path, find_alembic(tmp_path))
    assert (db.path, db.origin) == ("var/shop.db", "database_url = ... in src/shop/core/settings.py:5")


def test_tests_and_virtualenvs_are_not_the_application(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, "tests/conftest.py", 'import os\nos.environ.setdefault("DATABASE_URL", "sqlite:///test.db")\n')
    write_file(tmp_path, ".venv/lib/site.py", 'import os\nos.getenv("DATABASE_URL", "sqlite:///venv.db")\n')
    write_file(tmp_path, "vendored/pyvenv.cfg", "home = /usr/bin\n")
    write_file(tmp_path, "vendored/x.py", 'import os\nos.getenv("DATABASE_URL", "sqlite:///vendored.db")\n')
    write_file(tmp_path, "main.py", 'import os\nos.getenv("DATABASE_URL", "sqlite:///./main.db")\n')
    assert find_database(tmp_path, find_alembic(tmp_path)).path == "main.db"


def test_a_database_outside_the_folder_is_kept_but_flagged(tmp_path):
    app_tree(tmp_path / "app")
    write_file(tmp_path / "app", "db.py", 'import os\nos.getenv("DATABASE_URL", "sqlite:////srv/data/app.db")\n')
    db = find_database(tmp_path / "app", find_alembic(tmp_path / "app"))
    assert (db.path, db.inside) == ("/srv/data/app.db", False)


# --- alembic ------------------------------------------------------------------------------------------

def test_no_alembic_ini_is_a_clear_error(tmp_path):
    write_file(tmp_path, "app.py", "print('hi')\n")
    with pytest.raises(InitError) as err:
        find_alembic(tmp_path)
    assert "no alembic.ini" in err.value.message and "alembic init" in err.value.hint


def test_alembic_in_a_subfolder_and_relative_script_location(tmp_path):
    app_tree(tmp_path, ini_dir="backend", location="alembic")
    a = find_alembic(tmp_path)
    assert (a.ini, a.scripts, a.revisions) == ("backend/alembic.ini", "backend/alembic", 1)


def test_script_location_without_env_py_is_a_clear_error(tmp_path):
    app_tree(tmp_path, location="migrations")
    with pytest.raises(InitError) as err:
        find_alembic(tmp_path)
    assert "'migrations' has no env.py" in err.value.message


# --- Dockerfile ----------------------------------------------------------------------------------------

def test_dockerfile_facts():
    d = read_dockerfile("ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE} AS build\nRUN true\n"
                        "FROM ${BASE_IMAGE}\nEXPOSE 5000/tcp 6000\n"
                        "HEALTHCHECK --interval=5s CMD curl -f http://localhost:5000/healthz || exit 1\n")
    assert (d.base_arg, d.base_default, d.port, d.healthcheck, d.health_path) == \
        ("BASE_IMAGE", "python:3.11-slim", 5000, True, "/healthz")
    d = read_dockerfile("FROM python:3.13-slim\nHEALTHCHECK NONE\nCMD [\"app\"]\n")
    assert (d.base_arg, d.base_image, d.port, d.healthcheck) == (None, "python:3.13-slim", None, False)


# --- the plans -------------------------------------------------------------------------------------------

def validated(path: Path):
    plan = load_plan(path)
    steps = validate(plan)
    schema = json.loads((path.parent / "plan.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    assert path.read_text().startswith("# yaml-language-server: $schema=plan.schema.json\n")
    return plan, [(s.name, s.type) for s, _ in steps]


def test_comicpile_plans_validate_and_say_what_was_found(tmp_path):
    root = tmp_path / "comic-pile"
    shutil.copytree(COMICPILE, root)
    found, written = initmod.init(root)
    assert written[:3] == ["plans/phase1.yaml", "plans/phase2.yaml", "plans/plan.schema.json"]
    assert sorted(p.relative_to(root).as_posix() for p in (root / "plans").rglob("*") if p.is_file()) == sorted(written)
    plan, steps = validated(root / "plans" / "phase1.yaml")
    assert steps == [("postgres", "db-container"), ("files", "render"), ("schema", "migrate"),
                     ("data", "copy-data"), ("check", "verify"), ("snapshot", "backup")]
    assert plan.name == "comic-pile-phase1" and plan.doc.root == ".."
    assert plan.doc.secrets["db_password"].env == "COMIC_PILE_DB_PASSWORD"
    assert set(plan.doc.vars) >= {"pg_image", "container_name", "volume_name", "db_port"}
    text = (root / "plans" / "phase1.yaml").read_text()
    assert "comic_pile.db, from the default of os.getenv('DATABASE_URL', ...) in app/database.py:9" in text
    assert "DATABASE_URL in .env.example: not a SQLite file" in text
    assert 'source: "comic_pile.db"' in text
    # the application's own compose file is never replaced: the plan writes beside it
    assert "dest: docker-compose.postgres.yml" in text and "dest: .env," in text

    plan2, steps2 = validated(root / "plans" / "phase2.yaml")
    assert [t for _, t in steps2] == ["network", "db-container", "image", "migrate", "copy-data", "container",
                                      "render", "verify", "backup"]
    text2 = (root / "plans" / "phase2.yaml").read_text()
    assert 'dockerfile: "Dockerfile"' in text2 and "TODO: the Dockerfile's base image (python:3.13-slim) is fixed" in text2
    assert '"{{ steps.app.url }}/health"' in text2, "the HEALTHCHECK's path is the HTTP check"
    assert ':8000"]' in text2


def test_without_a_dockerfile_only_phase1_and_its_templates(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, ".env", "DATABASE_URL=sqlite:///./local.db\nSECRET_KEY=keep-me\n")
    files = files_for(detect(tmp_path))
    assert "plans/phase2.yaml" not in files
    assert not any("phase2" in name for name in files)
    write(tmp_path, files)
    _, steps = validated(tmp_path / "plans" / "phase1.yaml")
    text = (tmp_path / "plans" / "phase1.yaml").read_text()
    assert "dest: .env.postgres" in text, "an existing .env is never the render's target"
    assert "no Dockerfile: no phase-2 plan" in text
    assert (tmp_path / ".env").read_text().endswith("SECRET_KEY=keep-me\n")


def test_nothing_found_gives_todos_and_defaults_that_validate(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, "Dockerfile", "FROM python:3.12\nCMD [\"python\", \"app.py\"]\n")
    write(tmp_path, files_for(detect(tmp_path)))
    text1 = (tmp_path / "plans" / "phase1.yaml").read_text()
    assert "NOT FOUND" in text1 and "TODO: init found no SQLite database; app.db is a guess" in text1
    text2 = (tmp_path / "plans" / "phase2.yaml").read_text()
    assert "TODO: the Dockerfile has no EXPOSE; 8000 is assumed" in text2
    assert "TODO: the Dockerfile has no HEALTHCHECK" in text2
    validated(tmp_path / "plans" / "phase1.yaml")
    validated(tmp_path / "plans" / "phase2.yaml")


def test_a_virtualenv_runs_alembic(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, ".venv/pyvenv.cfg", "home = /usr/bin\n")
    write_file(tmp_path, ".venv/bin/python", "")
    text = files_for(detect(tmp_path))["plans/phase1.yaml"]
    assert "      python: .venv/bin/python" in text


def test_names_from_an_awkward_folder_name(tmp_path):
    root = tmp_path / "9 My App!"
    app_tree(root)
    write(root, files_for(detect(root)))
    plan, _ = validated(root / "plans" / "phase1.yaml")
    assert plan.name == "9-my-app-phase1"
    assert plan.doc.vars["db_name"] == "_9_my_app" and plan.doc.secrets["db_password"].env == "_9_MY_APP_DB_PASSWORD"


def test_an_existing_target_refuses_everything(tmp_path):
    app_tree(tmp_path)
    write_file(tmp_path, "plans/templates/env.j2", "mine\n")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InitError) as err:
        initmod.init(tmp_path)
    assert "plans/templates/env.j2 already exists" in err.value.message and "wrote nothing" in err.value.message
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "plans/templates/env.j2").read_text() == "mine\n"


def test_a_write_that_fails_halfway_leaves_nothing(tmp_path, monkeypatch):
    app_tree(tmp_path)
    files = files_for(detect(tmp_path))
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "templates").write_text("a file where a folder must go")
    with pytest.raises(InitError) as err:
        write(tmp_path, files)
    assert "nothing was written" in err.value.message
    assert sorted(p.name for p in (tmp_path / "plans").iterdir()) == ["templates"]


def test_init_templates_are_the_repository_templates():
    """orchestrator/init_templates/ ships the repository's templates/ (the package has no other
    copy): the same, but for the header naming plans/templates/ and env.j2's SQLite fallback."""
    for name in initmod.TEMPLATE_FILES:
        ours = initmod.template_text(name).replace("from plans/templates/", "from templates/")
        ours = ours.replace("# DATABASE_URL={{ sqlite_url }}", "# DATABASE_URL=sqlite:///./deployment_platform.db")
        assert ours == (ROOT / "templates" / name).read_text(), \
            f"orchestrator/init_templates/{name} differs from templates/{name}: copy the change over"


# --- the command ------------------------------------------------------------------------------------------

def test_cli_prints_what_it_wrote_and_the_next_commands(tmp_path, monkeypatch):
    root = tmp_path / "shop"
    app_tree(root)
    monkeypatch.chdir(tmp_path)
    code, out = run_cli("init", "--dir", "shop")
    assert code == 0, out
    assert "  plans/phase1.yaml\n" in out and "plans/phase2.yaml" not in out
    assert "  orchestrate plan shop/plans/phase1.yaml\n" in out
    assert "  orchestrate apply shop/plans/phase1.yaml\n" in out
    code, out = run_cli("init", "--dir", "shop")
    assert code == 1 and out.startswith("error: plans/phase1.yaml already exists") and "Traceback" not in out


def test_cli_without_alembic_exits_1_with_a_hint(tmp_path):
    code, out = run_cli("init", "--dir", str(tmp_path))
    assert code == 1 and "error: no alembic.ini" in out and "hint:" in out and "Traceback" not in out
    assert list(tmp_path.iterdir()) == []
    code, out = run_cli("init", "--dir", str(tmp_path / "missing"))
    assert code == 1 and "is not a folder" in out
