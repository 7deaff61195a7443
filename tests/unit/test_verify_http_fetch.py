"""The verify step's HTTP request itself, against a small server in a thread on 127.0.0.1 (no
Docker): redirects followed only within the URL's scheme, host and port, the body read bounded,
the whole request cut at its timeout however the server dawdles, no proxy from the environment."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.steps.verify import FetchError, HttpCheck, fetch, run_http_check


class Handler(BaseHTTPRequestHandler):
    seen_headers: dict = {}

    def log_message(self, *_args):
        pass

    def send(self, status: int, body: bytes = b"", **headers) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        Handler.seen_headers = dict(self.headers)
        port = self.server.server_address[1]
        routes = {
            "/ok": lambda: self.send(200, json.dumps([1, 2, 3]).encode(), Content_Type="application/json"),
            "/hop": lambda: self.send(301, Location="/hop2"),
            "/hop2": lambda: self.send(302, Location=f"http://127.0.0.1:{port}/ok"),
            "/away": lambda: self.send(302, Location="http://192.0.2.1/ok"),
            "/loop": lambda: self.send(302, Location="/loop"),
            "/big": lambda: self.send(200, b"x" * 100_000),
        }
        if self.path in routes:
            return routes[self.path]()
        if self.path == "/trickle":          # one byte every 0.1 s, each within any per-read timeout
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
            return
        if self.path == "/silent":
            time.sleep(3)
            return
        self.send(404, b"not here")


@pytest.fixture(scope="module")
def base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_plain_answer(base):
    resp = fetch(HttpCheck(url=base + "/ok", headers={"X-Token": "abc"}))
    assert (resp.status, resp.body, resp.url) == (200, b"[1, 2, 3]", base + "/ok")
    assert Handler.seen_headers["X-Token"] == "abc" and Handler.seen_headers["User-Agent"].startswith("orchestrate/")


def test_redirects_are_followed_within_the_origin(base):
    resp = fetch(HttpCheck(url=base + "/hop"))
    assert (resp.status, resp.url) == (200, base + "/ok")


def test_a_redirect_elsewhere_is_not_followed_unless_accepted(base):
    with pytest.raises(FetchError, match=r"status 302 redirects to http://192.0.2.1/ok, not the scheme, host and "
                                         r"port of .*/away: not followed"):
        fetch(HttpCheck(url=base + "/away"))
    assert fetch(HttpCheck(url=base + "/away", status=302)).status == 302


def test_a_redirect_loop_ends(base):
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(HttpCheck(url=base + "/loop"))


def test_the_body_read_is_bounded(base):
    resp = fetch(HttpCheck(url=base + "/big", max_body=1000))
    assert resp.too_large and len(resp.body) == 1000
    assert not fetch(HttpCheck(url=base + "/big")).too_large


@pytest.mark.parametrize("path,text", [("/trickle", "no complete answer within 1s"), ("/silent", "no answer within 1s")])
def test_the_whole_request_ends_at_its_timeout(base, path, text):
    started = time.monotonic()
    with pytest.raises(FetchError, match=text):
        fetch(HttpCheck(url=base + path, timeout=1))
    # the trickle would last 100 s and the silence forever: any bound well under that shows the
    # cut-off (a tight one failed once on a machine busy with the integration tests)
    assert time.monotonic() - started < 4


def test_nothing_listening_fails_within_wait_plus_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = run_http_check(HttpCheck(url=f"http://127.0.0.1:{port}/health", wait=1, timeout=1), lambda t: 0)
    assert not result.ok and result.detail.startswith("connection refused") and "attempts over" in result.detail
    assert time.monotonic() - started < 2.5


def test_a_server_that_accepts_but_never_answers_fails_within_wait_plus_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        started = time.monotonic()
        result = run_http_check(HttpCheck(url=url, wait=1, timeout=1), lambda t: 0)
    assert not result.ok and "no answer within 1s" in result.detail
    assert time.monotonic() - started < 2.5


def test_no_proxy_from_the_environment_is_used(base, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9/")     # nothing listens on the discard port
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert fetch(HttpCheck(url=base + "/ok")).status == 200
