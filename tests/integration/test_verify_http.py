"""verify's HTTP checks against a real database: a small application (http.server in a thread of
the test, on 127.0.0.1) serves /health and /tenants from the PostgreSQL container a db_plan made,
and verify, run by apply and by ``orchestrate verify``, proves that it answers and serves as many
tenants as the table holds; each failure names the URL and what was wrong, within its bound, with
no traceback and no secret in any output."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.integration

TENANTS = ["acme", "globex", "initech"]


class App:
    """The application: reads the tenants from PostgreSQL at each request. ``mode`` makes it
    misbehave: ``starting`` (503 for the first requests), ``broken`` (500), ``lose-one`` (one
    tenant fewer than the table), ``leak`` (a 500 whose body holds the database URL)."""

    def __init__(self, db_plan):
        self.db_plan = db_plan
        self.mode = "ok"
        self.requests = 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_GET(self):  # noqa: N802
                app.requests += 1
                status, body = app.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str):
        if self.mode == "broken":
            return 500, {"error": "internal error"}
        if self.mode == "leak":
            url = f"postgresql://dbadmin:{self.db_plan.password}@127.0.0.1:{self.db_plan.port}/appdb"
            return 500, {"error": f"cannot connect to {url}", "password": self.db_plan.password}
        if self.mode == "starting" and self.requests <= 3:
            return 503, {"status": "starting"}
        with self.db_plan.connect() as conn:
            if path == "/health":
                conn.execute("SELECT 1")
                return 200, {"status": "ok", "database": "ok"}
            if path == "/tenants":
                rows = conn.execute("SELECT id, name FROM tenants ORDER BY id").fetchall()
                if self.mode == "lose-one":
                    rows = rows[:-1]
                return 200, [{"id": i, "name": n} for i, n in rows]
        return 404, {"error": "not found"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify_step(base: str, **options) -> str:
    extra = "".join(f"\n          {k}: {v}" for k, v in options.items())
    return f"""\
  - name: check
    verify:
      http:
        - url: {base}/health
          status: 200{extra}
        - url: {base}/tenants
          status: 200
          json_rows: tenants
          contains: ["acme"]{extra}
"""


@pytest.fixture
def app(db_plan):
    """The database applied, a tenants table filled, the application serving it, and the plan
    with its verify step (the database step alone applied first)."""
    code, out = db_plan.run("apply")
    assert code == 0, out
    with db_plan.connect() as conn:
        conn.execute("CREATE TABLE tenants (id serial PRIMARY KEY, name text NOT NULL)")
        for name in TENANTS:
            conn.execute("INSERT INTO tenants (name) VALUES (%s)", (name,))
    app = App(db_plan)
    app.plan_text = db_plan.path.read_text()
    yield app
    app.stop()


def with_verify(app, **options) -> None:
    app.db_plan.path.write_text(app.plan_text + verify_step(app.base, **options))


def test_the_application_answers_and_serves_the_copied_rows(app, db_plan):
    with_verify(app)
    code, out = db_plan.run("plan")
    assert code == 0 and f"it will also GET {app.base}/health, {app.base}/tenants" in out, out
    assert app.requests == 0, "plan sends no request"

    app.mode = "starting"                   # the first requests meet an application still starting
    code, out = db_plan.run("apply")
    assert code == 0, out
    assert "(verify): verified 0 table(s) and 5 check(s) (2 over HTTP) in " in out, out

    code, out = db_plan.run("verify")
    assert code == 0, out
    assert f"ok   GET {app.base}/health: 200 OK (" in out, out
    assert (f"ok   GET {app.base}/tenants: 200 OK, contains 'acme', 3 item(s) in the JSON list, as table "
            f"tenants has 3 row(s)") in out, out
    assert "Verified: nothing differs." in out

    code, out = db_plan.run("verify", "--json")
    assert code == 0, out
    step = next(s for s in json.loads(out)["steps"] if s["type"] == "verify")
    http = [c for c in step["details"]["checks"] if c["name"].startswith("GET ")]
    assert [c["name"] for c in http] == [f"GET {app.base}/health", f"GET {app.base}/tenants"]
    assert all(c["ok"] for c in http) and step["details"]["ok"] is True


def test_a_wrong_status_fails_naming_the_url(app, db_plan):
    with_verify(app, wait="1s")
    app.mode = "broken"
    started = time.monotonic()
    code, out = db_plan.run("verify")
    assert code == 1 and "Traceback" not in out, out
    assert (f"FAIL GET {app.base}/health: status 500 Internal Server Error, expected 200; "
            f'body: {{"error": "internal error"}} (') in out, out
    assert "Verification FAILED." in out
    assert time.monotonic() - started < 30

    code, out = db_plan.run("apply")
    assert code == 1 and "Traceback" not in out, out
    assert f"GET {app.base}/health: status 500 Internal Server Error, expected 200" in out, out
    assert "failed=1" in out


def test_a_count_that_differs_names_the_table_and_both_counts(app, db_plan):
    with_verify(app, wait="1s")
    app.mode = "lose-one"
    code, out = db_plan.run("verify")
    assert code == 1 and "Traceback" not in out, out
    assert f"ok   GET {app.base}/health" in out
    assert (f"FAIL GET {app.base}/tenants: 2 item(s) in the JSON list, but table tenants has 3 row(s); "
            f'body: [{{"id": 1, "name": "acme"}}, {{"id": 2, "name": "globex"}}]') in out, out

    app.mode = "ok"                          # a tenant added: the count is the table's, now
    with db_plan.connect() as conn:
        conn.execute("INSERT INTO tenants (name) VALUES ('umbrella')")
    code, out = db_plan.run("verify")
    assert code == 0 and "4 item(s) in the JSON list, as table tenants has 4 row(s)" in out, out


def test_an_application_that_is_down_fails_within_the_bound(app, db_plan):
    port = free_port()                       # nothing listens there
    db_plan.path.write_text(app.plan_text + verify_step(f"http://127.0.0.1:{port}", wait="1s", timeout="1s"))
    started = time.monotonic()
    code, out = db_plan.run("verify")
    elapsed = time.monotonic() - started
    assert code == 1 and "Traceback" not in out, out
    assert f"FAIL GET http://127.0.0.1:{port}/health: connection refused (nothing listens there) (" in out, out
    assert f"FAIL GET http://127.0.0.1:{port}/tenants: connection refused" in out, out
    assert "ok   database: PostgreSQL" in out, "the database checks still ran"
    # two checks, each at most wait + timeout, and the database checks
    assert elapsed < 15, f"verify took {elapsed:.1f}s"

    started = time.monotonic()
    code, out = db_plan.run("apply")
    assert code == 1 and "Traceback" not in out and f"GET http://127.0.0.1:{port}/health: connection refused" in out
    assert time.monotonic() - started < 20


def test_a_secret_in_the_body_is_never_printed(app, db_plan, tmp_path):
    with_verify(app, wait="0s")
    app.mode = "leak"
    secret = db_plan.password
    printed = {}
    code, printed["verify"] = db_plan.run("verify")
    assert code == 1 and f"FAIL GET {app.base}/health: status 500" in printed["verify"], printed["verify"]
    assert "cannot connect to postgresql://dbadmin:(redacted)@127.0.0.1" in printed["verify"]
    code, printed["verify --json"] = db_plan.run("verify", "--json")
    assert code == 1
    code, printed["apply -v"] = run_cli("-v", "apply", db_plan.path)
    assert code == 1 and "status 500" in printed["apply -v"]
    printed["lockfile"] = db_plan.lock.read_text()
    for name, text in printed.items():
        assert secret not in text and quote(secret, safe="") not in text, f"{name} shows the password:\n{text}"
