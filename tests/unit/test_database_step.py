"""The database step without a server: its URL, its pure diff, how a refusal is worded, where the
client tools run, and the plan-level errors (file, line, key; no traceback, no secret)."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.steps import database as dbmod
from orchestrator.steps.database import DatabaseSpec, Observed, Target, diff_database, parse_url
from tests.conftest import run_cli


# --- the URL --------------------------------------------------------------------------------

@pytest.mark.parametrize("url,want", [
    ("postgresql://app@db.example.com/app", Target("app", "db.example.com", 5432, "app")),
    ("postgres://app@db.example.com:6543/appdb", Target("app", "db.example.com", 6543, "appdb")),
    ("postgresql+psycopg://app@127.0.0.1:5432/x", Target("app", "127.0.0.1", 5432, "x")),
    ("postgresql://app@[::1]:5433/x", Target("app", "::1", 5433, "x")),
    ("postgresql://a%40b@h/d?application_name=orch", Target("a@b", "h", 5432, "d", (("application_name", "orch"),))),
])
def test_urls(url, want):
    assert parse_url(url) == want


@pytest.mark.parametrize("url,says", [
    ("postgresql://app:secret@h/d", "holds a password"),
    ("postgresql://h/d", "no user"),
    ("postgresql://app@h/", "no database"),
    ("mysql://app@h/d", "expected a postgresql:// URL"),
    ("postgresql://app@h:99999/d", "port"),
    ("postgresql://app@h/d?sslmode=disable", "sslmode is a key of the step"),
    ("postgresql://app@h/d?password=x", "password"),
])
def test_bad_urls(url, says):
    with pytest.raises(ValueError, match=says):
        parse_url(url)


def test_loopback():
    assert Target("a", "127.0.0.1", 1, "d").loopback and Target("a", "localhost", 1, "d").loopback
    assert Target("a", "::1", 1, "d").loopback and not Target("a", "db.example.com", 1, "d").loopback


# --- the pure diff --------------------------------------------------------------------------

T = Target("app", "db.example.com", 5432, "appdb")
ALL = {"create": True, "temp": True, "schema_usage": True, "schema_create": True}


def obs(**kw) -> Observed:
    base = dict(version="16.4", version_num=160004, tls="TLSv1.3 (TLS_AES_256_GCM_SHA384)", owner=True,
                db_owner="app", privileges=dict(ALL))
    return Observed(**{**base, **kw})


def spec(**kw) -> DatabaseSpec:
    return DatabaseSpec.model_validate({"url": "postgresql://app@db.example.com/appdb", **kw})


def test_an_owner_over_verified_tls_is_no_change():
    d = diff_database(obs(), spec=spec(), target=T, recorded={})
    assert not d.changes and not d.problems and not d.warnings


def test_a_server_an_earlier_pending_step_starts_is_known_after_apply():
    d = diff_database(Observed(pending=["pg"]), spec=spec(), target=T, recorded={})
    assert d.after_apply and [c.after for c in d.changes] == ["(known after apply)"]
    assert "started by step pg" in d.changes[0].reason and not d.problems and not d.warnings


def test_without_tls_or_without_verification_warns():
    d = diff_database(obs(tls=None), spec=spec(sslmode="prefer"), target=T, recorded={})
    assert "not encrypted" in d.warnings[0]
    d = diff_database(obs(), spec=spec(sslmode="require"), target=T, recorded={})
    assert "not checked" in d.warnings[0] and not d.problems


def test_a_role_that_neither_owns_nor_may_create_is_told_each_grant():
    p = {**ALL, "schema_create": False, "temp": False}
    d = diff_database(obs(owner=False, db_owner="rdsadmin", privileges=p), spec=spec(), target=T, recorded={})
    (problem,) = d.problems
    assert "does not own database appdb (its owner is rdsadmin)" in problem
    assert "GRANT CREATE ON SCHEMA public TO app" in problem and "GRANT TEMPORARY ON DATABASE appdb TO app" in problem
    assert "ALTER DATABASE appdb OWNER TO app" in problem


def test_a_role_that_may_create_but_does_not_own_is_a_note():
    d = diff_database(obs(owner=False, db_owner="admin"), spec=spec(), target=T, recorded={})
    assert not d.problems and "may create in schema public" in d.notes[0]


def test_a_superuser_needs_nothing_more():
    d = diff_database(obs(owner=False, superuser=True, privileges={}), spec=spec(), target=T, recorded={})
    assert not d.problems


def test_tables_of_another_owner_are_a_problem():
    d = diff_database(obs(foreign_tables=[("tenants", "admin")]), spec=spec(), target=T, recorded={})
    assert "tenants (owner admin)" in d.problems[0] and "OWNER TO app" in d.problems[0]


def test_settings_the_managed_way_or_refused():
    s = spec(settings={"work_mem": "16MB", "shared_buffers": "256MB", "jit": False, "nonsense_x": 1})
    o = obs(settings={"jit": "off"}, contexts={"work_mem": "user", "shared_buffers": "postmaster", "jit": "user",
                                               "nonsense_x": None})
    d = diff_database(o, spec=s, target=T, recorded={})
    assert [(c.field, c.before, c.after) for c in d.changes] == [("settings.work_mem", None, "16MB")]
    assert any("settings.shared_buffers" in p and "DB parameter group" in p and "ALTER SYSTEM" in p for p in d.problems)
    assert any("no setting 'nonsense_x'" in p for p in d.problems)


def test_a_setting_dropped_from_the_plan_is_reset():
    o = obs(settings={"work_mem": "16MB"})
    d = diff_database(o, spec=spec(), target=T, recorded={"observed": {"settings_set": ["work_mem"]}})
    assert [(c.field, c.after) for c in d.changes] == [("settings.work_mem", None)]
    # one the plan never set is not the plan's to reset
    assert not diff_database(o, spec=spec(), target=T, recorded={}).changes


# --- where the client tools run -------------------------------------------------------------

class FakeDb:
    def __init__(self, **kw):
        self.spec = spec(**kw)


@pytest.mark.parametrize("mode,host,major,want", [
    ("auto", 15, 15, ("host", None)),
    ("auto", 14, 15, ("container", "postgres:15")),
    ("auto", None, 16, ("container", "postgres:16")),
    ("container", 15, 15, ("container", "postgres:15")),
    ("host", 15, 15, ("host", None)),
])
def test_choose_client(monkeypatch, mode, host, major, want):
    monkeypatch.setattr(dbmod, "host_major", lambda tool="pg_dump": host)
    assert dbmod.choose_client(FakeDb(client=mode), major) == want


def test_choose_client_with_an_image_and_a_host_that_cannot(monkeypatch):
    monkeypatch.setattr(dbmod, "host_major", lambda tool="pg_dump": 14)
    assert dbmod.choose_client(FakeDb(client_image="my/pg:15"), 15) == ("container", "my/pg:15")
    with pytest.raises(dbmod.StepFailed, match="pg_dump is PostgreSQL 14") as err:
        dbmod.choose_client(FakeDb(client="host"), 15)
    assert "postgresql-client-15" in err.value.hint


# --- the plan: errors name file, line and key; outputs carry the TLS parameters ----------------

PLAN = """\
name: ext
secrets:
  pw: {{env: ORCH_TEST_EXT_PW}}
steps:
  - name: db
    database:
      url: "{url}"
      password: "{{{{ secrets.pw }}}}"
{extra}
  - name: schema
    migrate: {{}}
"""


def write(tmp_path, url="postgresql://app@db.example.com:5432/appdb", extra=""):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(url=url, extra=textwrap.indent(extra, "      ")))
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = alembic\n")
    return path


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("ORCH_TEST_EXT_PW", "s3cret-Pa$$word")


@pytest.mark.parametrize("url,extra,line,key,says", [
    ("postgresql://app:inline@db/appdb", "", 7, "steps[0].database.url", "holds a password"),
    ("postgresql://app@db/appdb", "sslrootcert: certs/missing.pem", 9, "steps[0].database.sslrootcert", "does not exist"),
    ("postgresql://app@db/appdb", "sslmode: maybe", 9, "steps[0].database.sslmode", ""),
    ("postgresql://app@db/appdb", "sslrootcert: ../../outside.pem", 9, "steps[0].database.sslrootcert", "outside"),
])
def test_plan_errors_name_the_key(tmp_path, url, extra, line, key, says):
    path = write(tmp_path, url, extra)
    code, out = run_cli("validate", path)
    assert code == 1, out
    assert f"{path}:{line}: {key}" in out and says in out, out
    assert "Traceback" not in out and "s3cret" not in out


def test_outputs_carry_password_and_tls_for_later_steps(tmp_path):
    from orchestrator.executor import validate
    from orchestrator.plan import load_plan
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("not checked here")
    path = write(tmp_path, extra="sslrootcert: certs/ca.pem\nclient_image: postgres:16")
    plan = load_plan(path)
    (step, res), _ = validate(plan, checks=False)
    out = res.outputs(None)
    ca = str(tmp_path / "certs" / "ca.pem")
    assert out["url"] == (f"postgresql+psycopg://app:s3cret-Pa%24%24word@db.example.com:5432/appdb"
                          f"?sslmode=verify-full&sslrootcert={ca}")
    assert out["host"] == "db.example.com" and out["container"] is None and out["client_image"] == "postgres:16"
    env = res.libpq_env()
    assert env["PGPASSWORD"] == "s3cret-Pa$$word" and env["PGSSLROOTCERT"] == ca and env["PGSSLMODE"] == "verify-full"
    assert res.secret_inputs() == {"password": "s3cret-Pa$$word"}
    # the migrate step after it finds the url as it finds a db-container's
    assert _[1].url == out["url"]


# --- refusals, as one sentence naming the key ------------------------------------------------

class _Smap:
    def error(self, path, message, hint=None):
        from orchestrator.errors import PlanError
        return PlanError(message, key=".".join(map(str, path)), hint=hint)


class _Plan:
    smap = _Smap()


class _Rc:
    plan = _Plan()


def refusal(text: str, **kw):
    res = dbmod.Database.__new__(dbmod.Database)
    res.spec, res.rc = spec(**kw), _Rc()
    res.step = type("S", (), {"path": ("steps", 0, "database")})()
    return res._refused(text, "checking it")


@pytest.mark.parametrize("text,key,says", [
    ('connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  no pg_hba.conf entry for host '
     '"10.0.0.9", user "app", database "appdb", no encryption', "sslmode", "refuses connections without TLS"),
    ("connection failed: SSL error: certificate verify failed", "sslrootcert", "not signed by a CA"),
    ('connection failed: server certificate for "other.example.com" does not match host name "db.example.com"',
     "url", "is not for host"),
    ('connection failed: FATAL:  password authentication failed for user "app"', "password", "refused the password"),
    ('connection failed: FATAL:  database "appdb" does not exist', "url", "does not exist"),
    ("connection failed: server does not support SSL, but SSL was required", "sslmode", "does not offer TLS"),
    ("connection failed: Connection refused", "url", "cannot connect"),
])
def test_refusals(text, key, says):
    err = refusal(text)
    assert err.key == f"steps.0.database.{key}" and says in err.message and "\n" not in err.message


def test_rotation_is_a_redacted_password_change():
    d = diff_database(obs(rotate=True), spec=spec(), target=T, recorded={})
    (c,) = d.changes
    assert c.field == "password" and c.secret and c.to_dict()["after"] == "(redacted)"


def test_a_migration_job_needs_its_own_url_when_the_ca_is_a_file_of_this_machine(tmp_path):
    import shutil
    from tests.conftest import ROOT
    shutil.copytree(ROOT / "alembic", tmp_path / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    (tmp_path / "ca.pem").write_text("x")
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(url="postgresql://app@db.example.com/appdb", extra="      sslrootcert: ca.pem")
                    .replace("    migrate: {}\n", "    migrate: {job: {image: app:1}}\n"))
    code, out = run_cli("validate", path)
    assert code == 1 and "steps[1].migrate.job.url" in out and "certificate files of this machine" in out, out
    path.write_text(path.read_text().replace("      sslrootcert: ca.pem\n", "      sslrootcert: system\n"))
    code, out = run_cli("validate", path)
    assert code == 0, out
