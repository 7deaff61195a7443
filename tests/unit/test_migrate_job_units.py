"""Jobs (orchestrator/jobs.py) and the migrate step's job: mode, without Docker: the job's name
and labels (which the next run's leftover removal recognises), removal whatever happens, the
timeout and a failed exit, and how a failure in a job is shown and blamed."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from orchestrator import jobs, redact
from orchestrator.steps.migrate import Failure, Migrate, MigrateSpec, Observed, Rev, blame, failure_in_output, \
    in_host_files, job_tail
from orchestrator.throwaway import OWNER_LABEL, PURPOSE_LABEL, is_leftover, owner


class FakeEngine:
    """What run_job asks of the Engine, recorded."""

    def __init__(self, code=0, output=b"", wait_raises=None):
        self.code, self.output, self.wait_raises = code, output, wait_raises
        self.calls, self.spec = [], None

    def create_container(self, spec):
        self.spec = spec
        self.calls.append(("create", spec.name))
        return "cid"

    def start(self, cid, name):
        self.calls.append(("start", name))

    def wait_exit(self, cid, name, timeout):
        self.calls.append(("wait", timeout))
        if self.wait_raises:
            raise self.wait_raises
        return self.code

    def follow_logs(self, cid, tail="all"):
        yield self.output

    def logs(self, cid, tail=30):
        lines = self.output.decode().splitlines()
        return redact.redact("\n".join(lines if tail == "all" else lines[-tail:]))

    def container(self, name):
        return None

    def remove_container(self, cid, name, *, throwaway=False):
        self.calls.append(("remove", name))


def run(engine, **kw):
    logged = []
    args = dict(plan="myplan", purpose="migrate", image="app:1", command=["alembic", "upgrade", "head"],
                env={"DATABASE_URL": "postgresql://u:Secret-pw@db/x"}, network="net",
                labels={"orchestrate.plan": "myplan", "orchestrate.step": "schema"}, timeout=60, log=logged.append)
    args.update(kw)
    return jobs.run_job(engine, **args), logged


def test_a_job_is_named_labelled_run_and_removed():
    redact.register("Secret-pw")
    engine = FakeEngine(output=b"one\ntwo Secret-pw\n")
    result, logged = run(engine)
    assert result.code == 0 and result.lines == ["one", "two (redacted)"]
    spec = engine.spec
    prefix, _, tag = spec.name.rpartition("-")
    assert prefix == "myplan-migrate" and len(tag) == 8 and int(tag, 16) >= 0
    assert spec.labels == {"orchestrate.plan": "myplan", "orchestrate.step": "schema",
                           PURPOSE_LABEL: "migrate", OWNER_LABEL: owner()}
    assert spec.command == ["alembic", "upgrade", "head"] and spec.network == "net"
    assert spec.env["DATABASE_URL"].endswith("Secret-pw@db/x")          # secrets only in env
    assert not any("Secret-pw" in part for part in spec.command)
    assert spec.restart == ("no", 0) and spec.ports == [] and spec.volumes == []
    assert [c[0] for c in engine.calls] == ["create", "start", "wait", "remove"]
    assert "migrate: two (redacted)" in logged and not any("Secret-pw" in line for line in logged)


def test_a_failed_exit_is_returned_or_raised_with_the_last_lines():
    output = "".join(f"line {i}\n" for i in range(30)).encode()
    result, _ = run(FakeEngine(code=3, output=output))
    assert result.code == 3 and result.tail() == [f"line {i}" for i in range(10, 30)]
    engine = FakeEngine(code=3, output=output)
    with pytest.raises(jobs.JobFailed) as caught:
        run(engine, check=True)
    assert "exited with code 3; its last lines:" in caught.value.message
    assert "  | line 29" in caught.value.message and "line 9\n" not in caught.value.message
    assert engine.calls[-1][0] == "remove"


def test_a_timeout_stops_the_job_with_a_clear_error():
    engine = FakeEngine(code=None, output=b"working\n")
    with pytest.raises(jobs.JobTimeout) as caught:
        run(engine, timeout=600)
    assert "did not finish within 10m; it was stopped and removed" in caught.value.message
    assert "  | working" in caught.value.message
    assert engine.calls[-1][0] == "remove"


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("lost")])
def test_the_container_is_removed_whatever_happens(exc):
    engine = FakeEngine(wait_raises=exc)
    with pytest.raises(type(exc)):
        run(engine)
    assert engine.calls[-1] == ("remove", engine.spec.name)


def test_a_job_a_killed_run_left_is_a_leftover_of_its_plan_and_only_then():
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = {**jobs.job_labels({"orchestrate.plan": "myplan", "orchestrate.step": "schema"}, "migrate"),
              OWNER_LABEL: f"{owner().rpartition(':')[0]}:{dead.pid}"}
    name = jobs.job_name("myplan", "migrate")
    assert is_leftover(name, labels, "myplan")
    assert not is_leftover(name, {**labels, OWNER_LABEL: owner()}, "myplan")     # this run's own
    assert not is_leftover(name, labels, "other")
    assert not is_leftover(jobs.job_name("other", "migrate"), labels, "myplan")


def test_the_job_spec():
    spec = MigrateSpec(job={"image": "app:1"})
    assert (spec.job.alembic_ini, spec.job.timeout, spec.job.url, spec.job.network) == ("alembic.ini", 600, None, None)
    assert MigrateSpec(job={"image": "app:1", "timeout": "10m"}).job.timeout == 600
    for bad, says in (({"job": {"image": "app:1"}, "python": "python3"}, "exclude each other"),
                      ({"job": {"image": "app:1"}, "script_location": "alembic"}, "does not reach a job"),
                      ({"job": {"image": "app:1", "env": {"DATABASE_URL": "x"}}}, "set url: instead"),
                      ({"job": {"image": "app:1", "imag": "x"}}, "imag"),
                      ({"job": {}}, "image")):
        with pytest.raises(ValidationError, match=says):
            MigrateSpec(**bad)


FAILED_JOB = """\
INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Running upgrade c9 -> e1, a later change
Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py", line 1967, in _exec_single_context
    self.dialect.do_execute(
psycopg.errors.DivisionByZero: division by zero

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/opt/venv/bin/alembic", line 8, in <module>
    sys.exit(main())
  File "/opt/venv/lib/python3.11/site-packages/alembic/runtime/migration.py", line 616, in run_migrations
    step.migration_fn(**kw)
  File "/app/alembic/versions/e1_later.py", line 15, in upgrade
    op.execute('SELECT 1/0')
  File "/opt/venv/lib/python3.11/site-packages/psycopg/cursor.py", line 117, in execute
    raise ex.with_traceback(None)
sqlalchemy.exc.DataError: (psycopg.errors.DivisionByZero) division by zero
[SQL: SELECT 1/0]
(Background on this error at: https://sqlalche.me/e/21/9h9h)"""


def test_a_failure_in_the_image_is_blamed_on_the_hosts_revision_file(tmp_path):
    scripts = {str(tmp_path / "versions" / "c9_init.py"): Rev("c9", "init"),
               str(tmp_path / "versions" / "e1_later.py"): Rev("e1", "a later change")}
    failure = failure_in_output(FAILED_JOB.splitlines())
    assert blame(failure, scripts) == ("running", None)          # paths inside the image: not the host's
    where, rev = blame(in_host_files(failure, scripts), scripts)
    assert (where, rev.revision) == ("revision", "e1")
    env = Failure([("/app/alembic/env.py", "<module>")], "ModuleNotFoundError", "No module named 'x'", "x")
    assert blame(in_host_files(env, scripts), scripts) == ("load", None)


def test_the_jobs_last_lines_keep_the_log_the_revision_frame_and_the_exception(tmp_path):
    scripts = {str(tmp_path / "e1_later.py"): Rev("e1", "a later change")}
    tail = job_tail(FAILED_JOB.splitlines(), scripts)
    assert tail == [
        "INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.",
        "INFO  [alembic.runtime.migration] Running upgrade c9 -> e1, a later change",
        "Traceback (most recent call last): ... (-v shows it whole)",
        '  File "/app/alembic/versions/e1_later.py", line 15, in upgrade',
        "    op.execute('SELECT 1/0')",
        "sqlalchemy.exc.DataError: (psycopg.errors.DivisionByZero) division by zero",
        "[SQL: SELECT 1/0]",
        "(Background on this error at: https://sqlalche.me/e/21/9h9h)"]
    plain = [f"line {i}" for i in range(40)]
    assert job_tail(plain, scripts) == plain[-20:]
    assert len(job_tail([f"log {i}" for i in range(40)] + FAILED_JOB.splitlines(), scripts)) <= 20


def _migrate(pending: list[str], image_there: bool, sql: bool = False) -> Migrate:
    res = object.__new__(Migrate)
    res.spec = MigrateSpec(job={"image": "app:new"})
    res.step = SimpleNamespace(name="schema")
    res.rc = SimpleNamespace(pending_before=lambda step, *types: pending if types == ("image",) else [],
                             engine=SimpleNamespace(image=lambda ref: {"Id": "x"} if image_there else None),
                             options={"sql": sql})
    return res


def test_plan_says_the_image_is_known_after_apply_when_its_build_is_pending():
    obs = Observed(upgrade=[Rev("e1", "a later change")])
    _migrate(["app_image"], image_there=False)._observe_job(obs)
    assert obs.notes == ["the image app:new is known after apply (step app_image builds it first); "
                         "the migrations run in it as a job"]
    obs = Observed(upgrade=[Rev("e1", "a later change")])
    _migrate([], image_there=False, sql=True)._observe_job(obs)
    assert "not on this Docker engine: apply pulls it" in obs.notes[0] and "plan --sql cannot" in obs.notes[1]
    obs = Observed()                  # nothing to run: the image is not even looked at
    _migrate([], image_there=False)._observe_job(obs)
    assert obs.notes == []


def test_format_duration():
    assert [jobs.format_duration(s) for s in (20, 90, 600, 0.5)] == ["20s", "90s", "10m", "0.5s"]
