"""The verify step's HTTP checks, the pure parts: what a plan may say (each mistake refused with
its file, line and key), how an answer is judged, the body excerpt (redacted, bounded), the JSON
list, redirects, and the retry window (with a fake clock: no network, no sleeping)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from orchestrator import redact
from orchestrator.steps.verify import (EXCERPT, FetchError, HttpCheck, Observed, Response, RowsUnknown, body_text,
                                       diff_verify, evaluate, excerpt, json_list, redirect_target, run_http_check)

URL = "http://127.0.0.1:8000/tenants"

PLAN = """\
name: t
steps:
  - name: check
    verify:
      url: postgresql://u@127.0.0.1:5432/db
      http:
        - url: http://127.0.0.1:8000/health
        - url: http://127.0.0.1:8000/tenants
{extra}
"""


def validate(tmp_path, extra: str) -> tuple[int, str]:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(extra="\n".join("          " + line for line in extra.splitlines())))
    return run_cli("validate", path)


def test_a_plan_with_http_checks_validates(tmp_path):
    code, out = validate(tmp_path, "status: [200, 206]\njson_rows: tenants\ncontains: [acme]\nwait: 2s\ntimeout: 500ms\n"
                                   "headers: {Authorization: Bearer x}")
    assert code == 0, out


@pytest.mark.parametrize("extra,line,key,text", [
    ("stauts: 200", 9, "http[1].stauts", "unknown key 'stauts' (did you mean 'status'?)"),
    ("status: 700", 9, "http[1].status", "a status is a number from 100 to 599"),
    ("status: [200, ok]", 9, "http[1].status", "a status is a number from 100 to 599"),
    ("json_path: items", 9, "http[1].json_path", "give json_rows too"),
    ("json_rows: t\njson_path: a..b", 10, "http[1].json_path", "no empty part"),
    ("timeout: 10m", 9, "http[1].timeout", "at most 300s"),
    ("timeout: 0s", 9, "http[1].timeout", "a timeout above 0s"),
    ("wait: 1h", 9, "http[1].wait", "at most 600s"),
    ("wait: soon", 9, "http[1].wait", "expected a duration"),
    ("max_body: 0", 9, "http[1].max_body", "greater than or equal to 1"),
    ("headers: {'Bad Name': x}", 9, "http[1].headers.Bad Name", "is not an HTTP header name"),
    ("contains: ['']", 9, "http[1].contains[0]", "must not be empty"),
])
def test_mistakes_name_file_line_and_key(tmp_path, extra, line, key, text):
    code, out = validate(tmp_path, extra)
    assert code == 1 and "Traceback" not in out
    assert f"plan.yaml:{line}: steps[0].verify.{key}: " in out and text in out, out


@pytest.mark.parametrize("url,text", [
    ("ftp://127.0.0.1/x", "only http:// and https:// URLs"),
    ("127.0.0.1:8000/health", "only http:// and https:// URLs"),
    ("file:///etc/passwd", "only http:// and https:// URLs"),
    ("http:///health", "names no host"),
    ("http://127.0.0.1:0/x", "port must be a number from 1 to 65535"),
    ("http://127.0.0.1:99999/x", "port must be a number from 1 to 65535"),
    ("http://127.0.0.1:80a/x", "port must be a number from 1 to 65535"),
    ("'http://127.0.0.1/a b'", "spaces or control characters"),
    ("http://127.0.0.1/é", "a URL is ASCII"),
])
def test_bad_urls(tmp_path, url, text):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(extra="").replace("http://127.0.0.1:8000/tenants", url))
    code, out = run_cli("validate", path)
    assert code == 1 and "plan.yaml:8: steps[0].verify.http[1].url: " in out and text in out, out


def test_credentials_in_a_url_are_refused_without_echoing_them(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(extra="").replace("http://127.0.0.1", "http://admin:hunter2-pw@127.0.0.1"))
    code, out = run_cli("validate", path)
    assert code == 1 and "steps[0].verify.http[0].url: credentials in a URL" in out, out
    assert "hunter2-pw" not in out


def check(**kw) -> HttpCheck:
    return HttpCheck(url=kw.pop("url", URL), **kw)


def resp(body, status=200, reason="OK", **kw) -> Response:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return Response(kw.pop("url", URL), status, reason, "application/json", body, **kw)


ROWS = {"tenants": 2}


def rows(table: str) -> int:
    if table not in ROWS:
        raise RowsUnknown(f"the database has no table {table}")
    return ROWS[table]


@pytest.mark.parametrize("spec,answer,ok,text", [
    (dict(), resp({"status": "ok"}), True, "200 OK"),
    (dict(status=[200, 204]), resp(b"", 204, "No Content"), True, "204 No Content"),
    (dict(), resp({"status": "starting"}, 503, "Service Unavailable"), False,
     'status 503 Service Unavailable, expected 200; body: {"status": "starting"}'),
    (dict(status=[200, 204]), resp(b"", 500, "Internal Server Error"), False, "expected 200 or 204; (empty body)"),
    (dict(json_rows="tenants"), resp([{"name": "acme"}, {"name": "beta"}]), True,
     "2 item(s) in the JSON list, as table tenants has 2 row(s)"),
    (dict(json_rows="tenants"), resp([{"name": "acme"}]), False,
     "1 item(s) in the JSON list, but table tenants has 2 row(s)"),
    (dict(json_rows="tenants", json_path="data.items"), resp({"data": {"items": [1, 2]}}), True,
     "2 item(s) in the JSON list at data.items, as table tenants has 2 row(s)"),
    (dict(json_rows="tenants"), resp({"items": [1, 2], "total": 2}), False,
     "the JSON body is an object, not a list (its keys: items, total); json_path names the list inside it"),
    (dict(json_rows="tenants", json_path="data.rows"), resp({"data": {"items": []}}), False,
     "the JSON body has no data.rows: data is an object (its keys: items)"),
    (dict(json_rows="tenants"), resp(b"<html>oops</html>"), False,
     "cannot compare with table tenants: the body is not JSON (Expecting value at line 1 column 1); "
     "body: <html>oops</html>"),
    (dict(json_rows="nosuch"), resp([1]), False, "cannot compare with table nosuch: the database has no table nosuch"),
    (dict(contains=["acme", "beta"]), resp([{"name": "acme"}]), False, "the body does not contain 'beta'"),
    (dict(contains=["acme"], json_rows="tenants"), resp([{"name": "acme"}, {}]), True,
     "200 OK, contains 'acme', 2 item(s)"),
    (dict(contains=["acme"]), resp(b'["acme"', too_large=True), False, "the body is larger than max_body"),
    (dict(), resp({}, url=URL + "/"), True, f"200 OK (redirected to {URL}/)"),
])
def test_evaluate(spec, answer, ok, text):
    passed, detail = evaluate(check(**spec), answer, rows)
    assert passed is ok and text in detail, detail


def test_a_wrong_status_does_not_also_complain_about_the_body():
    passed, detail = evaluate(check(json_rows="tenants", contains=["acme"]), resp(b"boom", 500, "Error"), rows)
    assert not passed and "contain" not in detail and "JSON" not in detail and detail.endswith("body: boom")


def test_excerpt_is_redacted_flattened_and_bounded():
    redact.register("s3cret-Value-42")
    body = "line one\r\n\tline\x00two " + "x" * (EXCERPT - 30) + "s3cret-Value-42" + "y" * 5000
    shown = excerpt(body)
    assert "s3cret" not in shown and "\n" not in shown and "\x00" not in shown
    assert shown.startswith(f"body (first {EXCERPT} characters): line one line two xxx") and shown.endswith("...")
    assert len(shown) < EXCERPT + 40
    # a secret straddling the cut is redacted before the cut, so no part of it shows
    straddling = "a" * (EXCERPT - 5) + "s3cret-Value-42"
    assert "s3cr" not in excerpt(straddling)
    assert excerpt("") == "(empty body)" and excerpt(" \n ") == "(empty body)"
    assert excerpt('{"ok": true}') == 'body: {"ok": true}'


def test_body_text_follows_the_charset():
    assert body_text("café".encode("latin-1"), "text/plain; charset=ISO-8859-1") == "café"
    assert body_text("café".encode(), "application/json") == "café"
    assert body_text(b"\xff ok", "text/plain; charset=nonsense") == "\ufffd ok"


@pytest.mark.parametrize("body,path,expected", [
    (b"[1, 2, 3]", None, 3),
    (b'{"items": [1]}', "items", 1),
    (b'{"pages": [{"items": [1, 2]}]}', "pages.0.items", 2),
    (b"[]", None, 0),
])
def test_json_list(body, path, expected):
    assert len(json_list(body, path)) == expected


@pytest.mark.parametrize("body,path,text", [
    (b'"text"', None, "the JSON body is a string, not a list"),
    (b"null", None, "the JSON body is null, not a list"),
    (b'{"items": 3}', "items", "the JSON body's items is a number, not a list"),
    (b"[1, 2", None, "the body is not JSON"),
    (b"[" * 100000 + b"]" * 100000, None, "the body is not JSON"),
    (b"\xff\xfe\x00", None, "the body is not JSON"),
    (b"[1]", "0.x", "the JSON body has no 0.x: 0 is a number"),
])
def test_json_list_says_what_the_body_holds(body, path, text):
    with pytest.raises(ValueError) as exc:
        json_list(body, path)
    assert text in str(exc.value)


@pytest.mark.parametrize("current,location,target", [
    ("http://127.0.0.1:8000/tenants", "/tenants/", "http://127.0.0.1:8000/tenants/"),
    ("http://127.0.0.1:8000/a/b", "c", "http://127.0.0.1:8000/a/c"),
    ("http://localhost/a", "http://LOCALHOST:80/b", "http://LOCALHOST:80/b"),
    ("https://app.example/a", "https://app.example:443/b", "https://app.example:443/b"),
])
def test_redirects_within_the_origin(current, location, target):
    assert redirect_target(current, location) == target


@pytest.mark.parametrize("current,location", [
    ("http://127.0.0.1:8000/a", "http://evil.example/a"),
    ("http://127.0.0.1:8000/a", "//evil.example/a"),
    ("http://127.0.0.1:8000/a", "http://127.0.0.1:8001/a"),
    ("https://app.example/a", "http://app.example/a"),       # never down to plain http
    ("http://app.example/a", "https://app.example/a"),       # another scheme and port
    ("http://app.example/a", "http://app.example:99999/a"),
])
def test_redirects_elsewhere_are_not_followed(current, location):
    with pytest.raises(FetchError, match="not followed"):
        redirect_target(current, location, 302)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_retries_until_the_application_answers():
    t = FakeTime()
    answers = [FetchError("connection refused (nothing listens there)"), resp({}, 503, "Service Unavailable"),
               resp({"status": "ok"})]

    def get(_check):
        t.now += 0.01
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    result = run_http_check(check(wait=5), rows, get=get, clock=t.clock, sleep=t.sleep)
    assert result.ok and result.name == f"GET {URL}" and "at attempt 3" in result.detail
    assert t.slept == [0.2, 0.4]


def test_the_retry_window_is_bounded_and_the_last_failure_reported():
    t = FakeTime()
    calls = []

    def get(_check):
        calls.append(t.now)
        t.now += 0.05
        raise FetchError("connection refused (nothing listens there)")

    result = run_http_check(check(wait=3), rows, get=get, clock=t.clock, sleep=t.sleep)
    assert not result.ok and result.detail.startswith("connection refused")
    assert f"({len(calls)} attempts over" in result.detail
    assert calls[-1] == pytest.approx(3.0) and t.now <= 3 + 0.05     # the last attempt when the window ends
    assert max(t.slept) == 1.0 and len(calls) >= 4


def test_wait_zero_makes_one_attempt():
    t = FakeTime()
    result = run_http_check(check(wait=0), rows, get=lambda _c: resp({}, 500, "Error"), clock=t.clock, sleep=t.sleep)
    assert not result.ok and t.slept == [] and "(1 attempt, 0.0s)" in result.detail


def test_a_failed_check_is_a_problem_naming_the_url_and_plan_mode_says_what_verify_will_get():
    from orchestrator.steps.verify import Check
    obs = Observed(ran=True, checks=[Check(f"GET {URL}", False, "status 500 Error, expected 200; body: boom")])
    assert diff_verify(obs).problems == [f"GET {URL}: status 500 Error, expected 200; body: boom"]
    notes = diff_verify(Observed(http=[URL, "http://127.0.0.1:8000/health"])).notes
    assert notes[-1] == f"it will also GET {URL}, http://127.0.0.1:8000/health"
