"""How the migrate step runs Alembic, without a database: what a failure blames, what is captured
and put back, how revision files are read without running them."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import warnings

import pytest

from orchestrator.steps.migrate import (Failure, Rev, _Lines, app_imports, blame, captured, failure_in_output,
                                        failure_of, last_started, read_script)

MIGRATION_PY = os.path.join("site-packages", "alembic", "runtime", "migration.py")
SUBPROCESS_OUTPUT = """\
INFO  [alembic.runtime.migration] Running upgrade b2 -> d4, a later change
Traceback (most recent call last):
  File "<string>", line 9, in <module>
  File "/venv/site-packages/alembic/runtime/migration.py", line 616, in run_migrations
    step.migration_fn(**kw)
  File "/app/alembic/versions/d4_later.py", line 15, in upgrade
    op.execute('SELECT 1/0')
    ^^^^^^^^^^^^^^^^^^^^^^^^
sqlalchemy.exc.DataError: (psycopg.errors.DivisionByZero) division by zero
[SQL: SELECT 1/0]
"""


def test_a_traceback_printed_by_a_subprocess_is_read_back():
    f = failure_in_output(SUBPROCESS_OUTPUT.splitlines())
    assert f.kind == "DataError" and f.text == "division by zero" and f.module is None
    assert f.frames[-1] == ("/app/alembic/versions/d4_later.py", "upgrade")
    f = failure_in_output(["Traceback (most recent call last):", '  File "/app/alembic/env.py", line 3',
                           "    import app.", "SyntaxError: invalid syntax"])
    assert f.frames == [("/app/alembic/env.py", "<module>")] and f.kind == "SyntaxError"
    f = failure_in_output(["Traceback (most recent call last):", '  File "/app/alembic/env.py", line 1, in <module>',
                           "ModuleNotFoundError: No module named 'dotenv'"])
    assert f.module == "dotenv"
    assert failure_in_output(["INFO  [alembic] nothing went wrong"]) is None


@pytest.mark.parametrize("frames,where", [
    ([("/a/env.py", "<module>"), ("/a/app/models.py", "<module>")], ("load", None)),
    ([("/a/env.py", "<module>"), (MIGRATION_PY, "run_migrations"), ("/a/v/r2.py", "upgrade")], ("revision", "r2")),
    ([("/a/env.py", "<module>"), (MIGRATION_PY, "run_migrations"), ("/a/v/r2.py", "upgrade"),
      ("/a/app/helpers.py", "backfill")], ("revision", "r2")),
    ([("/a/env.py", "<module>"), (MIGRATION_PY, "run_migrations"), ("/a/v/r2.py", "<module>")], ("load", "/a/v/r2.py")),
    ([("/a/env.py", "<module>"), (MIGRATION_PY, "run_migrations"), ("/sa/engine/base.py", "commit")], ("running", None)),
], ids=["env-import", "in-upgrade", "in-a-helper", "script-import", "at-commit"])
def test_blame(frames, where):
    scripts = {"/a/v/r1.py": Rev("r1", "first"), "/a/v/r2.py": Rev("r2", "second")}
    kind, what = blame(Failure(frames, "Error", "boom"), scripts)
    assert (kind, what.revision if isinstance(what, Rev) else what) == where


def test_failure_of_an_exception_in_process():
    try:
        import orchestrate_no_such_module  # noqa: F401
    except ImportError as exc:
        f = failure_of(exc)
    assert f.kind == "ModuleNotFoundError" and f.module == "orchestrate_no_such_module"
    assert f.frames[-1][0] == __file__
    try:
        compile("def (:", "/a/env.py", "exec")
    except SyntaxError as exc:
        f = failure_of(exc)
    assert f.frames[-1] == ("/a/env.py", "<module>")


def test_last_started_revision_from_the_log():
    assert last_started(SUBPROCESS_OUTPUT.splitlines()) == "d4 a later change"
    assert last_started(["INFO  [alembic.runtime.migration] Running upgrade  -> a1, create notes"]) == "a1 create notes"
    assert last_started(["nothing"]) is None


def test_logs_warnings_and_prints_are_captured_and_logging_put_back(capsys, tmp_path):
    ini = tmp_path / "log.ini"
    ini.write_text(textwrap.dedent("""\
        [loggers]
        keys = root,alembic
        [handlers]
        keys = console
        [formatters]
        keys = generic
        [logger_root]
        level = WARN
        handlers = console
        [logger_alembic]
        level = INFO
        handlers =
        qualname = alembic
        [handler_console]
        class = StreamHandler
        args = (sys.stderr,)
        formatter = generic
        [formatter_generic]
        format = %(levelname)s [%(name)s] %(message)s
        """))
    other = logging.getLogger("orchestrate.test.other")
    root_handlers, root_level = list(logging.getLogger().handlers), logging.getLogger().level
    sink = _Lines()
    with captured(sink):
        from logging.config import fileConfig
        fileConfig(str(ini))            # as env.py does: disables other loggers, a handler on stderr
        logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> a1, create notes")
        warnings.warn("a library's warning")
        print("env.py prints")
    lines = sink.close_lines()
    assert "INFO [alembic.runtime.migration] Running upgrade  -> a1, create notes" in lines
    assert any("UserWarning: a library's warning" in line for line in lines)
    assert "env.py prints" in lines
    assert capsys.readouterr() == ("", ""), "nothing reached the terminal"
    assert logging.getLogger().handlers == root_handlers and logging.getLogger().level == root_level
    assert not other.disabled and logging.getLogger("alembic").level == logging.NOTSET
    logging.getLogger("alembic").warning("after the run")
    assert "after the run" not in " ".join(sink.lines)


def test_app_imports_put_back_path_cwd_and_forget_the_apps_modules(tmp_path):
    app = tmp_path / "realapp"
    (app / "orchestrate_test_app").mkdir(parents=True)
    (app / "orchestrate_test_app" / "__init__.py").write_text("import os\nWHERE = os.getcwd()\n")
    path, cwd = list(sys.path), os.getcwd()
    with app_imports(app, [app]):
        import orchestrate_test_app
        assert orchestrate_test_app.WHERE == str(app)
    assert sys.path == path and os.getcwd() == cwd
    assert "orchestrate_test_app" not in sys.modules
    assert "textwrap" in sys.modules, "modules from elsewhere stay"


def test_revision_files_are_read_without_running_them(tmp_path):
    (tmp_path / "r2_x.py").write_text(textwrap.dedent('''\
        """add a column

        Revision ID: r2
        """
        import only_the_application_has_this
        from typing import Union
        revision: str = "r2"
        down_revision: Union[str, None] = "r1"
        branch_labels = None
        depends_on = ("r0",)
        '''))
    module = read_script(tmp_path, "r2_x.py")
    assert (module.revision, module.down_revision, module.depends_on) == ("r2", "r1", ("r0",))
    assert module.__doc__.startswith("add a column")
    (tmp_path / "r3_x.py").write_text("revision = make_id()\n")
    with pytest.raises(SyntaxError, match="revision is not a literal"):
        read_script(tmp_path, "r3_x.py")


@pytest.mark.parametrize("given,ok", [(".venv/bin/python", True), ("python3.12", True), ("pypy3", True),
                                      ("sh", False), ("bin/bash", False), ("python; rm -rf x", False)])
def test_python_names_an_interpreter_and_nothing_else(given, ok):
    from pydantic import ValidationError
    from orchestrator.steps.migrate import MigrateSpec
    if ok:
        assert MigrateSpec(python=given).python == given
    else:
        with pytest.raises(ValidationError, match="is not a Python interpreter"):
            MigrateSpec(python=given)
