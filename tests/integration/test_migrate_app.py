"""The migrate step on a real application (tests/apps/realapp): its env.py imports its own `app`
package from the ini's folder, configures logging from alembic.ini and warns; the plan lives in
another folder and the process runs from a third. Also: the application's own interpreter
(`python:`), load failures reported as such, `plan --sql` without a traceback, and a new
database after `destroy --volumes` not taken for a hand migration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, DbPlan

pytestmark = pytest.mark.integration

APP = ROOT / "tests" / "apps" / "realapp"
HEAD = "b2b2b2b2b2b2"
MIGRATE = """
  - name: schema
    migrate:
      alembic_ini: realapp/alembic.ini
"""


class AppPlan(DbPlan):
    """A db-container step and a migrate step in <tmp>/ops/plan.yaml, the application in
    <tmp>/realapp, the process in <tmp>/elsewhere."""

    def __init__(self, tmp_path: Path, image: str, monkeypatch, migrate: str = MIGRATE):
        (tmp_path / "ops").mkdir()
        super().__init__(tmp_path / "ops", image, monkeypatch)
        self.app = tmp_path / "realapp"
        shutil.copytree(APP, self.app, ignore=shutil.ignore_patterns("__pycache__"))
        self.path.write_text("root: ..\n" + self.path.read_text() + migrate)   # paths from <tmp>
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")

    def revision(self):
        with self.connect() as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        return rows[0][0] if rows else None

    def add_revision(self, rev: str, down: str, body: str, head: str = "") -> None:
        (self.app / "alembic" / "versions" / f"{rev}_later.py").write_text(
            f'"""a later change\n\nRevision ID: {rev}\n"""\n{head}\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
            f'revision = "{rev}"\ndown_revision = "{down}"\nbranch_labels = None\ndepends_on = None\n\n\n'
            f'def upgrade() -> None:\n    {body}\n\n\ndef downgrade() -> None:\n    pass\n')

    def needs_vendor_module(self) -> None:
        """The application now needs a module that orchestrate's environment lacks."""
        with open(self.app / "app" / "settings.py", "a") as f:
            f.write("import realapp_vendor  # noqa: E402,F401  (the application's own dependency)\n")


@pytest.fixture
def app_plan(tmp_path, pg_image, monkeypatch) -> AppPlan:
    return AppPlan(tmp_path, pg_image, monkeypatch)


def make_venv(where: Path, *, system_site: bool = True, vendor: bool = True) -> Path:
    """A virtual environment of this Python (no network): with this environment's packages
    (alembic, SQLAlchemy, psycopg) and, only in it, the fake module realapp_vendor."""
    argv = [sys.executable, "-m", "venv", "--without-pip", str(where)]
    subprocess.run(argv + (["--system-site-packages"] if system_site else []), check=True)
    python = where / "bin" / "python"
    if vendor:
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "realapp_vendor.py").write_text("VENDOR = True\n")
    return python


def test_real_application_from_any_folder(app_plan):
    path_before, cwd_before = list(sys.path), os.getcwd()
    code, out = app_plan.run("apply", "-q")
    assert code == 0, out
    assert app_plan.revision() == HEAD
    # Alembic's INFO lines, its logging's output and the warnings are captured, not printed
    for noise in ("INFO", "[alembic", "Running upgrade", "Warning", "DEBUG is on"):
        assert noise not in out, out
    assert sys.path == path_before and os.getcwd() == cwd_before
    assert not [m for m in sys.modules if m == "app" or m.startswith("app.")], "the application's modules leak"
    import logging
    assert not logging.getLogger("orchestrator").disabled, "env.py's fileConfig disabled other loggers"

    # a second run in the same process sees the application as it is now, not as first imported
    with open(app_plan.app / "app" / "models.py", "a") as f:
        f.write("\nSECOND_RUN = 'seen'\n")
    app_plan.add_revision("c3c3c3c3c3c3", HEAD, "op.execute(f\"COMMENT ON TABLE notes IS '{SECOND_RUN}'\")",
                          head="from app.models import SECOND_RUN")
    code, out = app_plan.run("apply", "-v")
    assert code == 0, out
    assert f"upgraded {HEAD} -> c3c3c3c3c3c3 (1 revision(s))" in out, out
    # with -v, what Alembic logged and the warnings are shown, marked as Alembic's
    assert "alembic: INFO  [alembic.runtime.migration] Running upgrade b2b2b2b2b2b2 -> c3c3c3c3c3c3" in out, out
    assert "DEBUG is on" in out and "SAWarning: env.py: a warning such as SQLAlchemy gives" in out, out
    with app_plan.connect() as conn:
        assert conn.execute("SELECT obj_description('notes'::regclass)").fetchone() == ("seen",)


def test_env_py_failing_to_import_is_not_a_failed_revision(app_plan, tmp_path):
    assert app_plan.run("apply", "--only", "postgres")[0] == 0
    app_plan.needs_vendor_module()
    code, out = app_plan.run("apply")
    assert code == 1, out
    assert "Traceback" not in out
    assert "error: alembic/env.py could not be loaded: No module named 'realapp_vendor'" in out.replace(
        "realapp/", ""), out
    assert "no revision ran, the database stays at revision (none)" in out, out
    assert "rolled back" not in out and "migration a1a1" not in out
    assert "hint: install the package that provides realapp_vendor into orchestrate's environment" in out and "python:" in out, out

    # the application's interpreter has the module: Alembic runs there
    python = make_venv(tmp_path / "ops" / "venv")
    text = app_plan.path.read_text()
    app_plan.path.write_text(text + "      python: ops/venv/bin/python\n")
    code, out = app_plan.run("apply", "-v")
    assert code == 0, out
    assert f"upgraded (none) -> {HEAD} (2 revision(s))" in out, out
    assert "alembic: INFO  [alembic.runtime.migration] Running upgrade a1a1a1a1a1a1 -> b2b2b2b2b2b2" in out, out
    assert app_plan.password not in out
    assert app_plan.revision() == HEAD
    assert python.exists()

    # a failing revision in the subprocess: named, with the database error and the last lines; it
    # imports what only the application's interpreter has (orchestrate reads it without running it)
    app_plan.add_revision("d4d4d4d4d4d4", HEAD, "op.execute('SELECT 1/0')", head="import realapp_vendor")
    code, out = app_plan.run("apply", "-q")
    assert code == 1, out
    assert "error: migration d4d4d4d4d4d4 a later change failed: division by zero; the database stays at " \
           f"revision {HEAD}" in out, out
    assert "  | " in out and "Running upgrade" not in out.split("error:")[0], "captured lines go with the error only"


def test_python_interpreter_missing_or_without_alembic(app_plan, tmp_path):
    text = app_plan.path.read_text()
    app_plan.path.write_text(text + "      python: ops/nowhere/bin/python\n")
    code, out = app_plan.run("validate")
    assert code == 1, out
    assert "plan.yaml:" in out and "python: ops/nowhere/bin/python: no such interpreter" in out, out
    make_venv(tmp_path / "ops" / "bare", system_site=False, vendor=False)
    app_plan.path.write_text(text + "      python: ops/bare/bin/python\n")
    code, out = app_plan.run("validate")
    assert code == 1, out
    assert "python: " in out and "cannot run Alembic: ModuleNotFoundError: No module named 'alembic'" in out, out
    assert "-m pip install alembic" in out


def test_plan_sql_names_the_revision_it_cannot_show(app_plan):
    assert app_plan.run("apply", "--only", "postgres")[0] == 0
    code, out = app_plan.run("plan", "--sql")
    assert code == 1, out
    assert "Traceback" not in out
    assert "plan --sql cannot show the SQL of revision b2b2b2b2b2b2 tag notes, backfilled from the data: " \
           "'NoneType' object has no attribute 'scalar'" in out, out
    assert "offline mode" in out
    app_plan.needs_vendor_module()
    code, out = app_plan.run("plan", "--sql")
    assert code == 1 and "Traceback" not in out, out
    assert "plan --sql cannot show the SQL: " in out and "No module named 'realapp_vendor'" in out, out


def test_a_new_database_after_destroy_volumes_is_no_hand_migration(app_plan):
    assert app_plan.run("apply")[0] == 0
    code, out = app_plan.run("destroy", "--volumes", "--yes", "--no-backup")
    assert code == 0, out
    assert app_plan.run("apply", "--only", "postgres")[0] == 0     # a new, empty volume
    code, out = app_plan.run("plan")
    assert code == 0 and "by hand" not in out, out
    assert f"the database is new (it has no alembic_version table; the last apply left it at {HEAD})" in out, out
    code, out = app_plan.run("apply")
    assert code == 0 and "by hand" not in out, out
    assert app_plan.revision() == HEAD


def test_run_upgrade_migrates_another_database_by_the_same_path(app_plan):
    """What plan --preview uses: the step's target in a database of its choosing, no lockfile."""
    from orchestrator.errors import StepFailed
    from orchestrator.executor import validate
    from orchestrator.plan import load_plan
    assert app_plan.run("apply", "--only", "postgres")[0] == 0
    with app_plan.connect() as conn:
        conn.execute("CREATE DATABASE preview")
    lock_before = app_plan.lock.read_text()
    [migrate] = [res for step, res in validate(load_plan(app_plan.path)) if step.type == "migrate"]
    url = f"postgresql+psycopg://dbadmin:{app_plan.password}@127.0.0.1:{app_plan.port}/preview"
    migrate.run_upgrade(url)
    with app_plan.connect() as conn:
        conn.execute("SET search_path TO public")
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,), "appdb untouched"
    import psycopg
    with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=5) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (HEAD,)
    assert app_plan.lock.read_text() == lock_before
    app_plan.add_revision("d4d4d4d4d4d4", HEAD, "op.execute('SELECT 1/0')")
    [migrate] = [res for step, res in validate(load_plan(app_plan.path)) if step.type == "migrate"]
    with pytest.raises(StepFailed, match=f"migration d4d4d4d4d4d4 a later change failed: division by zero; "
                                         f"the database stays at revision {HEAD}"):
        migrate.run_upgrade(url)


def test_a_revision_file_that_cannot_be_read_is_named_at_validate(app_plan, tmp_path):
    app_plan.add_revision("e5e5e5e5e5e5", HEAD, "pass", head="import realapp_vendor")
    code, out = app_plan.run("validate")
    assert code == 1 and "Traceback" not in out, out
    assert "alembic_ini: cannot read the migrations: the migration script " \
           "realapp/alembic/versions/e5e5e5e5e5e5_later.py could not be loaded: No module named 'realapp_vendor'" in out
    assert "or set python: to the application's interpreter" in out
    # with python:, orchestrate reads the scripts without running them: the import is no matter,
    # but an identifier it cannot read without running the file is named
    make_venv(tmp_path / "ops" / "venv")
    app_plan.path.write_text(app_plan.path.read_text() + "      python: ops/venv/bin/python\n")
    assert app_plan.run("validate")[0] == 0
    script = app_plan.app / "alembic" / "versions" / "e5e5e5e5e5e5_later.py"
    script.write_text(script.read_text().replace('revision = "e5e5e5e5e5e5"', 'revision = "e5e5" + "e5e5e5e5"'))
    code, out = app_plan.run("validate")
    assert code == 1, out
    assert "the migration script realapp/alembic/versions/e5e5e5e5e5e5_later.py could not be loaded: " \
           "SyntaxError: revision is not a literal" in out, out


def test_an_ini_that_does_not_put_the_application_on_the_path_is_told_how(app_plan):
    """An alembic.ini without `prepend_sys_path = .` (which `alembic init` writes): env.py cannot
    import the application's own package, with `alembic` as with orchestrate; the hint says
    which line to add, and with it the migrations run."""
    ini = app_plan.app / "alembic.ini"
    text = ini.read_text()
    ini.write_text(text.replace("prepend_sys_path = .\n", ""))
    assert app_plan.run("apply", "--only", "postgres")[0] == 0
    code, out = app_plan.run("apply")
    assert code == 1 and "could not be loaded: No module named 'app'" in out, out
    assert ("hint: app is the application's own package (realapp/app), which alembic.ini does not put on "
            "Python's path: add `prepend_sys_path = .` to its [alembic] section") in out, out
    ini.write_text(text)
    code, out = app_plan.run("apply")
    assert code == 0 and f"upgraded (none) -> {HEAD}" in out, out
