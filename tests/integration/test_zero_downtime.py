"""Replacements no client notices: the phase-2 plan with the application unpublished (nginx in front
is the only way in), a bounded load loop through nginx on 127.0.0.1 while apply replaces the
application (start-first), tries a release that never gets healthy, or reloads nginx's
configuration. Each test prints how many requests it sent and how many failed."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.integration


class Load:
    """GET a URL in a loop from a thread, a request at a time, until stopped (or ``limit`` requests)."""

    def __init__(self, url: str, limit: int = 20_000):
        self.url, self.limit = url, limit
        self.sent = self.failed = 0
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.sent < self.limit:
            self.sent += 1
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    response.read()
                    if response.status != 200:
                        raise urllib.error.HTTPError(self.url, response.status, "", {}, None)
            except Exception as exc:  # noqa: BLE001 - every failure counts, whatever it is
                self.failed += 1
                key = str(exc)[:80]
                self.errors[key] = self.errors.get(key, 0) + 1
            time.sleep(0.005)

    def __enter__(self) -> "Load":
        self._thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)          # the requests right after the switch count too
        self._stop.set()
        self._thread.join(30)
        print(f"\n{self.url}: {self.sent} requests, {self.failed} failed {self.errors or ''}")


def ids(docker_client, name: str) -> tuple[str, str]:
    info = docker_client.api.inspect_container(name)
    return info["Id"], info["State"]["StartedAt"]


def revision(docker_client, p) -> str:
    run = docker_client.api.exec_create(p.db_container, ["psql", "-U", "dbadmin", "-d", "autodeploy", "-tAc",
                                                         "select version_num from alembic_version"])
    return docker_client.api.exec_start(run["Id"]).decode().strip()


@pytest.fixture
def prod(phase2):
    phase2.extra += ["-e", "publish_app=false"]
    code, out = phase2.run("apply")
    assert code == 0, out
    return phase2


def test_a_release_replaces_the_application_with_no_failed_request(prod, docker_client):
    db_before = ids(docker_client, prod.db_container)
    app_before = ids(docker_client, prod.app)[0]
    info = docker_client.api.inspect_container(prod.app)
    assert info["HostConfig"]["PortBindings"] in ({}, None)     # only nginx is published
    app_file = prod.root / "examples/autodeploy/app/__init__.py"
    app_file.write_text(app_file.read_text() + "\n# release 2\n")
    with Load(f"http://127.0.0.1:{prod.http_port}/tenants") as load:
        code, out = prod.run("apply")
    assert code == 0 and "moving traffic to it" in out and "recreated container (image)" in out, out
    assert load.sent > 100 and load.failed == 0, load.errors
    assert ids(docker_client, prod.app)[0] != app_before
    assert ids(docker_client, prod.db_container) == db_before
    names = [c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True)]
    assert prod.app in names and not [n for n in names if n.startswith(prod.app + "-orchestrate")]
    assert prod.run("plan", "--detailed-exitcode")[0] == 0


def test_a_release_that_never_gets_healthy_fails_no_request(prod, docker_client):
    app_before = ids(docker_client, prod.app)
    app_file = prod.root / "examples/autodeploy/app/__init__.py"
    good = app_file.read_text()
    app_file.write_text(good + "\n\n_create_app = create_app\n\n\ndef create_app(url=None):\n"
                               "    app = _create_app(url)\n"
                               "    app.view_functions['health'] = lambda: ('broken release', 500)\n"
                               "    return app\n")
    with Load(f"http://127.0.0.1:{prod.http_port}/tenants") as load:
        code, out = prod.run("apply")
    assert code == 1 and f"container {prod.app} is unhealthy" in out, out
    assert "its last health check: exit code" in out, out
    assert load.sent > 50 and load.failed == 0, load.errors
    assert ids(docker_client, prod.app) == app_before          # the old one never stopped
    names = [c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True)]
    assert not [n for n in names if n.startswith(prod.app + "-orchestrate")]


def test_a_changed_nginx_configuration_is_reloaded_not_recreated(prod, docker_client):
    proxy_before = ids(docker_client, prod.proxy)
    template = prod.root / "templates/nginx.conf.j2"
    template.write_text(template.read_text().replace("client_max_body_size 10m;", "client_max_body_size 20m;"))
    code, out = prod.run("plan")
    assert "update in place" in out and "rendered again by step proxy_conf" in out, out
    with Load(f"http://127.0.0.1:{prod.http_port}/tenants") as load:
        code, out = prod.run("apply")
    assert code == 0 and "ran nginx -s reload" in out, out
    assert load.failed == 0, load.errors
    assert ids(docker_client, prod.proxy) == proxy_before
    conf = docker_client.api.exec_start(docker_client.api.exec_create(
        prod.proxy, ["cat", "/etc/nginx/conf.d/default.conf"])["Id"]).decode()
    assert "client_max_body_size 20m;" in conf
    assert prod.run("plan", "--detailed-exitcode")[0] == 0


def test_rollback_puts_the_previous_build_back_with_no_failed_request(prod, docker_client):
    code, out = prod.run("rollback")
    assert code == 1 and "no previous build" in out and "nothing was changed" in out, out
    first_image = docker_client.api.inspect_container(prod.app)["Image"]
    app_file = prod.root / "examples/autodeploy/app/__init__.py"
    app_file.write_text(app_file.read_text() + "\n# release 2\n")
    assert prod.run("apply")[0] == 0
    second_image = docker_client.api.inspect_container(prod.app)["Image"]
    assert second_image != first_image
    db_before = ids(docker_client, prod.db_container)
    with Load(f"http://127.0.0.1:{prod.http_port}/tenants") as load:
        code, out = prod.run("rollback")
    assert code == 0 and "the database was not touched" in out, out
    assert load.failed == 0, load.errors
    assert docker_client.api.inspect_container(prod.app)["Image"] == first_image
    assert docker_client.api.inspect_image(prod.tag + "-previous")["Id"] == second_image
    assert ids(docker_client, prod.db_container) == db_before


def test_rollback_downgrade_takes_a_backup_then_undoes_the_last_migrations(prod, docker_client):
    first_image = docker_client.api.inspect_container(prod.app)["Image"]
    prod.repo.add_revision("e10000000001", "c9f0e8d7b6a5", "    op.execute('CREATE TABLE release_two (id int)')")
    app_file = prod.root / "examples/autodeploy/app/__init__.py"
    app_file.write_text(app_file.read_text() + "\n# release 2 needs release_two\n")
    code, out = prod.run("apply")
    assert code == 0 and revision(docker_client, prod) == "e10000000001", out
    backups = set((prod.root / "backups").glob("*.dump"))
    code, out = prod.run("rollback", "--downgrade")
    assert code == 0 and "before the downgrade" in out and "schema to c9f0e8d7b6a5" in out, out
    assert set((prod.root / "backups").glob("*.dump")) - backups          # the backup was taken first
    assert revision(docker_client, prod) == "c9f0e8d7b6a5"
    assert docker_client.api.inspect_container(prod.app)["Image"] == first_image
    assert prod.get("/tenants", proxy=True)[0] == 200


def test_a_start_first_replace_killed_after_the_old_container_went_is_taken_over(prod, docker_client):
    # what a kill -9 between "old container removed" and "new one renamed" leaves
    docker_client.api.rename(prod.app, prod.app + "-orchestrate-new")
    with Load(f"http://127.0.0.1:{prod.http_port}/tenants") as load:
        code, out = prod.run("apply")
    assert code == 0, out
    assert load.failed == 0, load.errors
    names = [c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True)]
    assert prod.app in names and not [n for n in names if n.startswith(prod.app + "-orchestrate")]
    assert prod.run("plan", "--detailed-exitcode")[0] == 0
