"""The database step against a PostgreSQL set up the way managed services are (tests/managed_pg.py):
TLS only, a CA and server certificate made by the test, ``sslmode=verify-full`` from the client, and
a plan that only gets a role that owns its database and is not a superuser.

The whole phase-1 flow runs against it with plans/phase1-external.yaml: migrate, copy-data, verify,
backup, restore and a restore drill; a second apply is a no-op; what the server refuses (no TLS,
a wrong CA, a wrong password) and what the role may not do (no CREATE, server settings) is
reported in one line naming the step's key.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid

import pytest

from tests.conftest import TEST_LABEL, copy_repo, run_cli
from tests.managed_pg import make_certificates, managed_postgres

pytestmark = pytest.mark.integration


class External:
    """plans/phase1-external.yaml in a copy of the repository, pointed at the managed server."""

    def __init__(self, root, server, monkeypatch):
        self.root, self.server = root, server
        self.plan = root / "plans" / "phase1-external.yaml"
        (root / "certs").mkdir(exist_ok=True)
        shutil.copy(server.ca, root / "certs" / "test-ca.crt")
        monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", server.password)
        self.extra = ["-e", "db_host=127.0.0.1", "-e", f"db_port={server.port}", "-e", f"db_user={server.user}",
                      "-e", f"db_name={server.database}", "-e", "db_ca=certs/test-ca.crt",
                      "-e", f"client_image={PG_IMAGE_FOR_CLIENT[0]}", "-e", "demo_rows=2000"]

    def run(self, command: str, *argv: str) -> tuple[int, str]:
        return run_cli(command, self.plan, *self.extra, *argv)

    def set_step_keys(self, text: str) -> None:
        """Add keys to the database step (after its client_image line)."""
        body = self.plan.read_text()
        self.plan.write_text(body.replace("      client_image: \"{{ vars.client_image }}\"\n",
                                          "      client_image: \"{{ vars.client_image }}\"\n" + text))

    def source_counts(self) -> dict[str, int]:
        with sqlite3.connect(self.root / "deployment_platform.db") as conn:
            return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                    for t in ("tenants", "deployments", "deployment_logs")}

    def target_counts(self) -> dict[str, int]:
        return {t: self.server.sql(f'SELECT count(*) FROM "{t}"')[0][0]
                for t in ("tenants", "deployments", "deployment_logs")}


PG_IMAGE_FOR_CLIENT = [""]


@pytest.fixture
def external(tmp_path, pg_image, docker_client, monkeypatch):
    PG_IMAGE_FOR_CLIENT[0] = pg_image
    root = copy_repo(tmp_path / "repo")
    with managed_postgres(docker_client, pg_image, tmp_path, labels={TEST_LABEL[0]: TEST_LABEL[1]},
                          prefix=f"managed-{uuid.uuid4().hex[:6]}") as server:
        yield External(root, server, monkeypatch)


def _no_leftovers(docker_client, plan: str) -> list[str]:
    found = docker_client.containers.list(all=True, filters={"label": f"orchestrate.plan={plan}"})
    return [c.name for c in found if c.labels.get(TEST_LABEL[0]) == TEST_LABEL[1]]


def _clean(out: str, secret: str) -> None:
    assert "Traceback" not in out
    assert secret not in out


def test_phase1_flow_against_a_tls_only_database_owned_by_a_plain_role(external, docker_client):
    s = external.server
    assert s.sql("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user") == \
        [(False, False, False)]
    assert s.sql("SELECT count(*) FROM pg_hba_file_rules WHERE type = 'host'", superuser=True) == [(0,)]

    code, out = external.run("plan")
    assert code == 0, out
    assert "TLSv1" in out and f"role {s.user} (owner)" in out

    code, out = external.run("apply")
    assert code == 0, out
    _clean(out, s.password)
    assert "changed: data" in out and "ok:      check    (verify)" in out and "changed: snapshot (backup)" in out
    # copy exact: the counts, and the tables are the role's own
    assert external.target_counts() == external.source_counts()
    owners = {o for (o,) in s.sql("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {s.user}

    # a second apply is a no-op
    code, out = external.run("plan", "--detailed-exitcode")
    assert code == 0, out
    code, out = external.run("apply")
    assert code == 0 and "Nothing changed" in out, out

    code, out = external.run("verify")
    assert code == 0, out
    assert "ok   tls: TLSv1" in out and "sslmode verify-full" in out and "ok   server: PostgreSQL 15" in out
    assert "no container to check" in out and "ok   container" not in out

    # a privilege granted to a role only the managed server has (as RDS's rds_* roles): the drill's
    # throwaway server lacks it, and still restores the content
    s.sql("CREATE ROLE reporting NOLOGIN", superuser=True)
    s.sql("GRANT SELECT ON tenants TO reporting")
    code, out = external.run("backup")
    assert code == 0, out
    code, out = external.run("backup", "--drill")
    assert code == 0, out
    assert "restored into a throwaway container" in out and "were removed" in out

    # the live data changes, then the backup comes back
    s.sql("DELETE FROM deployment_logs WHERE id IN (SELECT id FROM deployment_logs ORDER BY id LIMIT 10)")
    code, out = external.run("restore", "--from", "latest", "--yes")
    assert code == 0, out
    _clean(out, s.password)
    assert external.target_counts() == external.source_counts()
    code, out = external.run("verify")
    assert code == 0, out

    lock = external.plan.with_suffix(".lock").read_text()
    assert s.password not in lock
    assert not _no_leftovers(docker_client, "autodeploy-phase1-external")


def test_client_tools_in_a_throwaway_container(external, docker_client):
    """client: container: pg_dump and pg_restore of the server's version run in a throwaway
    container of client_image (host networking for a server on this machine's loopback)."""
    external.set_step_keys("      client: container\n")
    volumes_before = {v["Name"] for v in docker_client.api.volumes()["Volumes"] or []}
    code, out = external.run("apply")
    assert code == 0, out
    assert "client in a throwaway container" in out
    code, out = external.run("restore", "--from", "latest", "--yes")
    assert code == 0, out
    assert external.target_counts() == external.source_counts()
    assert not _no_leftovers(docker_client, "autodeploy-phase1-external")
    # the client image declares VOLUME /var/lib/postgresql/data: its anonymous volume goes with it
    created = {v["Name"] for v in docker_client.api.volumes()["Volumes"] or []} - volumes_before
    assert not [v for v in created if len(v) == 64], created


def test_a_connection_without_tls_is_refused_by_the_server_and_named(external):
    code, out = external.run("plan", "-e", "sslmode=disable")
    assert code == 1
    _clean(out, external.server.password)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "steps[0].database.sslmode" in errors[0] and "refuses connections without TLS" in errors[0]
    assert "no pg_hba.conf entry" in errors[0]


def test_a_certificate_from_another_ca_is_refused(external, tmp_path):
    other = make_certificates(tmp_path / "other")
    shutil.copy(other["ca"], external.root / "certs" / "other-ca.crt")
    code, out = external.run("plan", "-e", "db_ca=certs/other-ca.crt")
    assert code == 1
    _clean(out, external.server.password)
    assert "steps[0].database.sslrootcert" in out and "not signed by a CA of sslrootcert" in out


def test_a_wrong_password_names_the_key_and_never_the_secret(external, monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", "Wrong-" + uuid.uuid4().hex)
    code, out = external.run("plan")
    assert code == 1
    assert "steps[0].database.password" in out and "refused the password" in out
    _clean(out, "Wrong-")


def test_a_role_that_may_not_create_is_told_what_is_missing(external, monkeypatch):
    s = external.server
    s.sql("CREATE ROLE helper LOGIN PASSWORD 'Helper-pw-1'", superuser=True)
    external.extra += ["-e", "db_user=helper"]
    monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", "Helper-pw-1")
    code, out = external.run("plan")
    assert code == 1, out
    assert "does not own database appdb" in out and "CREATE on schema public" in out
    assert "GRANT CREATE ON SCHEMA public TO helper" in out


def test_settings_the_managed_way_or_refused(external):
    external.set_step_keys("      settings: {work_mem: 16MB, shared_buffers: 256MB}\n")
    code, out = external.run("plan")
    assert code == 1
    assert "shared_buffers can only be set in the server's configuration" in out and "parameter group" in out
    external.plan.write_text(external.plan.read_text().replace(", shared_buffers: 256MB", ""))
    code, out = external.run("plan")
    assert code == 0 and "settings.work_mem" in out, out
    code, out = external.run("apply", "--only", "postgres")
    assert code == 0 and "set work_mem = 16MB" in out, out
    rows = external.server.sql("SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d "
                               "ON d.oid = s.setdatabase WHERE d.datname = current_database()")
    assert ("work_mem=16MB",) in rows
    code, out = external.run("plan", "--detailed-exitcode")
    assert "settings.work_mem" not in out, out


def test_a_password_rotated_the_managed_way(external, monkeypatch):
    """previous_password: the role's password is changed with ALTER ROLE over the connection (a
    SCRAM verifier, never the password in a statement), no docker exec; then a no-op."""
    s = external.server
    body = external.plan.read_text()
    body = body.replace("  db_password: {env: AUTODEPLOY_DB_PASSWORD}\n",
                        "  db_password: {env: AUTODEPLOY_DB_PASSWORD}\n  db_previous: {env: AUTODEPLOY_DB_PREVIOUS}\n")
    external.plan.write_text(body)
    external.set_step_keys("      previous_password: \"{{ secrets.db_previous }}\"\n")
    new = "New-" + uuid.uuid4().hex
    monkeypatch.setenv("AUTODEPLOY_DB_PASSWORD", new)
    monkeypatch.setenv("AUTODEPLOY_DB_PREVIOUS", s.password)
    code, out = external.run("plan")
    assert code == 0, out
    assert "password: (redacted) -> (redacted)" in out and "ALTER ROLE" in out
    _clean(out, new)
    code, out = external.run("apply", "--only", "postgres")
    assert code == 0 and "set the new password with ALTER ROLE" in out, out
    _clean(out, new)
    s.password = new
    assert s.sql("SELECT current_user") == [(s.user,)]
    code, out = external.run("plan")
    assert "password:" not in out, out
    assert new not in external.plan.with_suffix(".lock").read_text()


def test_preview_without_create_database_uses_a_throwaway_server(external, docker_client):
    """plan --preview: the owner role may not CREATE DATABASE (as on a managed service), so the
    pending migrations and the preflight run in a throwaway server of the client image; nothing is
    written to the real database."""
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "examples.autodeploy.make_sqlite", "deployment_platform.db", "--rows", "300"],
                   cwd=external.root, check=True, capture_output=True, timeout=120)
    code, out = external.run("plan", "--preview")
    assert code == 0, out
    assert "throwaway container from" in out, out
    assert external.server.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert not _no_leftovers(docker_client, "autodeploy-phase1-external")
