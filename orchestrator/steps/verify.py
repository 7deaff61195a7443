"""The verify step: proof that nothing was lost. Read-only; never ``changed``: each check passes
or fails, and a failure stops apply (and ``orchestrate verify``) with exit 1.

Checks: the database answers and its container is healthy; the schema is at the migrate step's
target revision; every table the copy-data step loads holds exactly what the source converts to
(row count and content, compared in the server, the first differing primary-key range named);
no sequence is behind its highest id; no foreign key is violated; a write/read probe succeeds;
and (``http:``) the application answers over HTTP with the status, texts and number of rows the
plan names (see :class:`HttpCheck` and :func:`run_http_check`).

The table comparison streams the source through the copy's own loader into a temporary table,
inside a transaction that is rolled back (so values are normalised exactly as the copy converts
them, and nothing is left behind), then compares the two tables in the server.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import socket
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Callable
from urllib.parse import urljoin, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema, model_validator

from ..changes import Diff
from ..copying.convert import row_hash_sql
from ..copying.mapping import TablePlan, map_tables
from ..copying.verify import (fast_source_checksum, fast_target_checksum, ordered_key, source_digest, target_digest,
                              target_splits)
from ..copying.reflect import open_source, quote_sqlite, reflect_source, reflect_target
from .. import dbconn
from ..background import Background
from .. import __version__
from ..errors import KeyedValueError, OrchestrateError
from ..fields import Duration, NonEmptyText, PgName, Text
from ..plan import Strict
from ..redact import redact
from .base import Resource, libpq_url
from .copy_data import STABLE_OUTPUT, TableState


# --- HTTP checks -----------------------------------------------------------------------------
# Plain standard library (http.client): no proxy from the environment is used (the request goes
# to the URL given, nowhere else), redirects are followed by hand and only within the URL's own
# scheme, host and port, and the whole request, redirects included, is cut at its timeout.

MAX_URL = 2048
MAX_BODY = 8 * 1024 * 1024       # bytes of a body read by default (max_body)
EXCERPT = 300                   # characters of the body a failure shows
MAX_REDIRECTS = 5
MAX_HTTP_TIMEOUT = 300.0
MAX_WAIT = 600.0
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")     # an HTTP header name (RFC 9110 token)


def check_http_url(value: str) -> str:
    """An http:// or https:// URL with a host, no credentials, no spaces or control characters."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("a URL must not contain spaces or control characters (percent-encode them)")
    if not value.isascii():
        raise ValueError("a URL is ASCII: percent-encode other characters (a host name in its xn-- form)")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs can be checked")
    if "@" in parts.netloc:
        # said from the model's validator, which does not echo the URL (its password) back
        return value
    if not parts.hostname:
        raise ValueError("the URL names no host (e.g. http://127.0.0.1:8000/health)")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the URL's port must be a number from 1 to 65535")
    return value


def _statuses(value: Any) -> list[int]:
    """``200`` or ``[200, 204]`` -> a list of status codes from 100 to 599."""
    values = value if isinstance(value, list) else [value]
    if not values or len(values) > 50:
        raise ValueError("give a status (e.g. 200) or a list of 1 to 50 of them")
    out = []
    for v in values:
        if isinstance(v, str) and v.strip().isdigit() and len(v.strip()) <= 3:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 100 <= v <= 599:
            raise ValueError("a status is a number from 100 to 599, or a list of them")
        out.append(v)
    return out


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        if not _TOKEN.match(name):
            raise KeyedValueError(f"{name!r} is not an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)",
                                  name)
        if any(ch in text for ch in "\r\n\x00"):
            raise KeyedValueError("a header value must not contain a line break or NUL", name)
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise KeyedValueError("a header value is ASCII or Latin-1 text", name) from None
    return value


def _bounded_seconds(limit: float):
    def check(value: float) -> float:
        if value > limit:
            raise ValueError(f"at most {limit:g}s")
        return value
    return AfterValidator(check)


def _check_json_path(value: str) -> str:
    if any(part == "" for part in value.split(".")):
        raise ValueError("a dotted path of keys, e.g. data.items (no empty part)")
    return value


HttpUrl = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(check_http_url)]
Statuses = Annotated[list[int], BeforeValidator(_statuses), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 100, "maximum": 599},
              {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599},
               "minItems": 1, "maxItems": 50}]})]
HeaderValue = Annotated[str, StringConstraints(max_length=8192)]
JsonPath = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_check_json_path)]


class HttpCheck(Strict):
    """One GET request verify sends, and what its answer must be."""
    url: HttpUrl = Field(description="http:// or https:// URL to GET (no credentials in it; use headers)")
    status: Statuses = Field([200], description="the status the answer must have (default 200), or a list of "
                                                 "allowed ones")
    json_rows: PgName | None = Field(None, description="a table of the verified database: the body must be a JSON "
                                                       "list with as many items as the table has rows")
    json_path: JsonPath | None = Field(None, description="with json_rows, when the body is a JSON object: the "
                                                         "dotted path of keys to the list (e.g. data.items)")
    contains: list[NonEmptyText] = Field(default_factory=list, max_length=50,
                                         description="texts the body must contain")
    headers: Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=256)], HeaderValue],
                       AfterValidator(_check_headers)] = Field(
        default_factory=dict, max_length=50, description="request headers (values may come from secrets; "
                                                         "they are only ever sent to the URL's own host)")
    timeout: Annotated[Duration, _bounded_seconds(MAX_HTTP_TIMEOUT)] = Field(
        5.0, description="how long one request may take, connecting and reading included (at most 5m)")
    wait: Annotated[Duration, _bounded_seconds(MAX_WAIT)] = Field(
        5.0, description="for an application that just started: failed attempts are repeated until this "
                         "long after the first (0: one attempt); at most 10m")
    max_body: int = Field(MAX_BODY, ge=1, le=1024 ** 3, description="bytes of the body read at most; a larger "
                                                                     "body fails the check")

    @model_validator(mode="after")
    def _path_needs_rows(self):
        if "@" in urlsplit(self.url).netloc:
            raise KeyedValueError("credentials in a URL would be shown wherever the URL is: send them in headers "
                                  "(e.g. Authorization: \"Bearer {{ secrets.token }}\")", "url")
        if self.json_path is not None and self.json_rows is None:
            raise KeyedValueError("json_path names the list that json_rows counts: give json_rows too",
                                  "json_path")
        if self.timeout <= 0:
            raise KeyedValueError("a request needs a timeout above 0s", "timeout")
        return self

    @property
    def statuses(self) -> list[int]:
        return self.status

    @property
    def name(self) -> str:
        return f"GET {self.url}"


class FetchError(Exception):
    """No HTTP answer (refused, timed out, not HTTP, a redirect verify does not follow)."""


@dataclass
class Response:
    url: str                 # the URL that answered (after same-origin redirects)
    status: int
    reason: str = ""
    content_type: str = ""
    body: bytes = b""
    too_large: bool = False  # the body went on past max_body; ``body`` holds its start
    location: str | None = None   # a redirect's Location header


class RowsUnknown(Exception):
    """The number of rows of a table cannot be read (no such table, the database did not answer)."""


def _origin(parts) -> tuple[str, str, int]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def redirect_target(current: str, location: str, status: int = 302) -> str:
    """The URL a redirect from ``current`` to ``location`` leads to; FetchError when it leaves the
    URL's scheme, host and port (another host, or https to http). Pure."""
    target = urljoin(current, location.strip())
    try:
        same = _origin(urlsplit(target)) == _origin(urlsplit(current))
    except ValueError:                  # a malformed port in Location
        same = False
    if not same:
        raise FetchError(f"status {status} redirects to {target[:300]}, not the scheme, host and port of "
                         f"{current}: not followed (status: {status} accepts the redirect itself)")
    return target


def _describe(exc: BaseException, host: str, timeout: float) -> str:
    import http.client
    import ssl
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host {host!r}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__}: {str(exc)[:100]})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _request(url: str, headers: dict[str, str], deadline: float, timeout: float, max_body: int) -> Response:
    """One GET of ``url``, cut (the socket shut down from a timer) when ``deadline`` passes."""
    import http.client      # here, not at the top: validating a plan needs neither (~10 ms)
    import ssl
    parts = urlsplit(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(f"no answer within {timeout:g}s")
    if parts.scheme.lower() == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=remaining, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=remaining)
    cut = threading.Event()
    opened: list[socket.socket] = []    # the connection's socket (http.client lets go of it once answered)

    def cut_off() -> None:
        cut.set()
        for sock in opened:             # wakes a read blocked on it (the plain socket's shutdown, under TLS too)
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(remaining, cut_off)
    timer.daemon = True
    timer.start()
    try:
        conn.connect()                  # bounded by the socket's timeout (the time left)
        opened.append(conn.sock)
        if cut.is_set():
            cut_off()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"User-Agent": f"orchestrate/{__version__} (verify)", "Accept": "*/*", "Connection": "close",
                **headers}
        conn.request("GET", path, headers=sent)
        resp = conn.getresponse()
        body = bytearray()
        too_large = False
        while True:
            chunk = resp.read(min(65536, max_body + 1 - len(body)))
            if not chunk:
                break
            body += chunk
            if len(body) > max_body:
                too_large, body = True, body[:max_body]
                break
        if cut.is_set():
            raise FetchError(f"no complete answer within {timeout:g}s")
        return Response(url, resp.status, resp.reason or "", resp.getheader("Content-Type") or "", bytes(body),
                        too_large, resp.getheader("Location"))
    except FetchError:
        raise
    except Exception as exc:        # anything the network or a broken server causes: a failed check
        raise FetchError(f"no answer within {timeout:g}s" if cut.is_set()
                         else _describe(exc, parts.hostname or "", timeout)) from None
    finally:
        timer.cancel()
        with contextlib.suppress(Exception):
            conn.close()


def fetch(check: HttpCheck) -> Response:
    """GET the check's URL, following redirects (at most 5) within its scheme, host and port only,
    all within the check's timeout; a 3xx the check accepts is returned, not followed."""
    deadline = time.monotonic() + check.timeout
    url = check.url
    for _ in range(MAX_REDIRECTS + 1):
        resp = _request(url, check.headers, deadline, check.timeout, check.max_body)
        if not (300 <= resp.status < 400) or resp.status in check.statuses or resp.location is None:
            return resp
        url = redirect_target(url, resp.location, resp.status)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def body_text(body: bytes, content_type: str = "") -> str:
    """The body as text: the charset the Content-Type names, else UTF-8; bad bytes replaced. Pure."""
    match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", content_type or "", re.I)
    charset = "utf-8"
    if match:
        with contextlib.suppress(LookupError):
            charset = codecs.lookup(match[1]).name
    return body.decode(charset, errors="replace")


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """The start of a body for a failure message: secrets redacted (in the whole body, before it is
    cut), line breaks and control characters as spaces, at most ``limit`` characters. Pure."""
    text = redact(text)
    flat = re.sub(r"\s+", " ", "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in text[:limit * 4]))
    flat = flat.strip()
    if not flat:
        return "(empty body)"
    if len(flat) > limit or len(text) > limit * 4:
        return f"body (first {limit} characters): {flat[:limit]}..."
    return f"body: {flat}"


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
          bool: "true or false", type(None): "null"}


def json_list(body: bytes, path: str | None) -> list:
    """The JSON list in ``body`` (at the dotted ``path`` of keys when given); ValueError saying what
    the body holds instead. Pure."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:     # bad UTF-8, a number of thousands of digits, deep nesting
        raise ValueError(f"the body is not JSON that can be read ({type(exc).__name__})") from None
    node, walked = data, []
    for key in path.split(".") if path else []:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            keys = f" (its keys: {', '.join(list(node)[:10])})" if isinstance(node, dict) else ""
            where = ".".join(walked) or "the body"
            raise ValueError(f"the JSON body has no {'.'.join(walked + [key])}: {where} is "
                             f"{_KINDS.get(type(node), 'a value')}{keys}")
        walked.append(key)
    if not isinstance(node, list):
        where = f"the JSON body's {path}" if path else "the JSON body"
        hint = ""
        if isinstance(node, dict):
            hint = f" (its keys: {', '.join(list(node)[:10])})" + ("" if path else "; json_path names the "
                                                                              "list inside it")
        raise ValueError(f"{where} is {_KINDS.get(type(node), 'a value')}, not a list{hint}")
    return node


def evaluate(check: HttpCheck, resp: Response, rows: Callable[[str], int]) -> tuple[bool, str]:
    """Whether an answer is what the check asks for, and in words why (a failure ends with the
    start of the body, redacted). ``rows(table)`` counts a table's rows (RowsUnknown when it
    cannot). Pure but for ``rows``."""
    text = body_text(resp.body, resp.content_type)
    moved = f" (redirected to {resp.url})" if resp.url != check.url else ""
    if resp.status not in check.statuses:
        expected = " or ".join(str(s) for s in check.statuses)
        return False, f"status {resp.status} {resp.reason}".rstrip() + f"{moved}, expected {expected}; {excerpt(text)}"
    facts, problems = [f"{resp.status} {resp.reason}".rstrip() + moved], []
    if resp.too_large:
        problems.append(f"the body is larger than max_body ({check.max_body:,} bytes)")
    else:
        missing = [c for c in check.contains if c not in text]
        if missing:
            problems.append("the body does not contain " + ", ".join(repr(c) for c in missing))
        elif check.contains:
            facts.append("contains " + ", ".join(repr(c) for c in check.contains))
        if check.json_rows:
            at = f" at {check.json_path}" if check.json_path else ""
            try:
                items = len(json_list(resp.body, check.json_path))
                count = rows(check.json_rows)
            except (ValueError, RowsUnknown) as exc:
                problems.append(f"cannot compare with table {check.json_rows}: {exc}")
            else:
                if items != count:
                    problems.append(f"{items} item(s) in the JSON list{at}, but table {check.json_rows} has "
                                    f"{count} row(s)")
                else:
                    facts.append(f"{items} item(s) in the JSON list{at}, as table {check.json_rows} has "
                                 f"{count} row(s)")
    if problems:
        return False, "; ".join(problems) + f"; {excerpt(text)}"
    return True, ", ".join(facts)


def run_http_check(check: HttpCheck, rows: Callable[[str], int], *, get: Callable[[HttpCheck], Response] = None,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Check:
    """Run one check: attempts until one passes or ``wait`` has passed since the first (pauses of
    0.2 s doubling to 1 s between them), each bounded by ``timeout`` (so at most wait + timeout in
    all); the last failure is reported."""
    get = get or fetch
    started, attempts, pause = clock(), 0, 0.2
    while True:
        attempts += 1
        try:
            ok, detail = evaluate(check, get(check), rows)
        except FetchError as exc:
            ok, detail = False, str(exc)
        elapsed = clock() - started
        if ok:
            tries = f", at attempt {attempts}" if attempts > 1 else ""
            return Check(check.name, True, f"{detail} ({elapsed:.2f}s{tries})")
        if elapsed >= check.wait:
            break
        sleep(min(pause, check.wait - elapsed))     # the last attempt starts when the window ends
        pause = min(pause * 2, 1.0)
    tried = f"{attempts} attempts over {elapsed:.1f}s" if attempts > 1 else f"1 attempt, {elapsed:.1f}s"
    return Check(check.name, False, redact(f"{detail} ({tried})"))


class VerifySpec(Strict):
    url: Text | None = Field(None, description="database (default: the url of the nearest earlier db-container or "
                                               "database step)")
    copy_step: Text | None = Field(None, description="the copy-data step whose tables to compare (default: the "
                                                    "nearest earlier one)")
    probe: bool = Field(True, description="write and read a row inside a transaction that is rolled back")
    timeout: Duration = Field(dbconn.TIMEOUT, description="how long the database may stay silent (connecting, or "
                                                          "during a check, however long the check) or a lock be "
                                                          "waited for, before verify gives up")
    http: list[HttpCheck] = Field(default_factory=list, max_length=100,
                                  description="GET requests to the application and what each answer must be "
                                              "(status, texts, as many JSON items as a table has rows)")
    every_apply: bool = Field(False, description="compare the data on every apply; by default an apply in "
                                                 "which no earlier step changed anything checks only the "
                                                 "container, the schema and the HTTP answers (the data was "
                                                 "verified when it last changed; orchestrate verify compares it now)")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class TableResult:
    table: str
    source_rows: int | None
    target_rows: int | None
    equal: bool
    detail: str = ""
    compared: bool = True       # False: written in PostgreSQL since the copy, not compared


@dataclass
class Observed:
    ran: bool = False
    checks: list[Check] = field(default_factory=list)
    tables: list[TableResult] = field(default_factory=list)
    seconds: float = 0.0
    http: list[str] = field(default_factory=list)     # the URLs the HTTP checks GET
    light: bool = False                               # a converged apply: the data not read again

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and all(t.equal for t in self.tables)


def _not_compared(table: str, rows: int | None) -> TableResult:
    return TableResult(table, None, rows, True, "written in PostgreSQL since the copy (its source unchanged): "
                                                "not compared with the source", compared=False)


def owe_verification(lock, step: str) -> None:
    """Record that verify step ``step`` owes a full verification: a step before it is changing
    the data. An apply killed between that change and the verification leaves it to the next
    apply, which would otherwise take "nothing changed before it" for verified."""
    entry = lock.step(step)
    if (entry.get("observed") or {}).get("verified") is True:
        entry["observed"]["verified"] = False
        lock.set_step(step, entry)


def diff_verify(obs: Observed) -> Diff:
    """Never a change: failed checks are problems, which stop apply. Pure."""
    d = Diff()
    if not obs.ran:
        d.notes.append("verify runs with apply (after the steps before it) and with orchestrate verify")
        if obs.http:
            d.notes.append("it will also GET " + ", ".join(obs.http))
        return d
    for c in obs.checks:
        if not c.ok:
            d.problems.append(f"{c.name}: {c.detail}")
    for t in obs.tables:
        if not t.equal:
            d.problems.append(f"table {t.table}: {t.detail}")
    d.details = {"checks": [asdict(c) for c in obs.checks], "tables": [asdict(t) for t in obs.tables],
                 "ok": obs.ok, "seconds": round(obs.seconds, 2)}
    return d


class Verify(Resource):
    """Read-only checks that the database holds what the plan put there."""
    type = "verify"
    Spec = VerifySpec
    spec: VerifySpec

    @property
    def url(self) -> str:
        return libpq_url(self.database_url(self.spec.url))

    def _copy_step(self):
        if self.spec.copy_step:
            res = self.rc.resources.get(self.spec.copy_step)
            if res is None or res.type != "copy-data":
                raise self.rc.plan.smap.error(self.step.path + ("copy_step",),
                                              f"{self.spec.copy_step!r} is not a copy-data step before this one")
            return res
        return self.rc.earlier(self.step, "copy-data")

    def check(self) -> None:
        _ = self.url
        self._copy_step()

    def observe(self) -> Observed:
        obs = Observed(http=[c.url for c in self.spec.http])
        if self.rc.mode not in ("apply", "verify") or not self.rc.selected(self.step):
            return obs
        obs.ran = True
        started = time.monotonic()
        self._container(obs)
        try:
            pg = dbconn.connect(self.url, what="verifying", timeout=self.spec.timeout, autocommit=True)
        except OrchestrateError as exc:
            obs.checks.insert(0, Check("database", False, exc.message))
            self._http(obs, None)
            obs.seconds = time.monotonic() - started
            return obs
        with pg:
            with self._bounded(pg, "reading the server's version"):
                # the source's temporary twin stays in memory (temp_buffers is set before first use)
                pg.execute("SET temp_buffers = '512MB'")
                pg.execute(f"SET lock_timeout = '{int(self.spec.timeout * 1000)}ms'")
                pg.execute(STABLE_OUTPUT.format(local="SESSION"))
                version = pg.execute("SHOW server_version").fetchone()[0]
            obs.checks.insert(0, Check("database", True, f"PostgreSQL {version} answers"))
            self._schema(obs)
            obs.light = self._light()
            if not obs.light:
                tables = self._tables(obs, pg)
                with self._bounded(pg, "checking sequences, foreign keys and the write/read probe"):
                    self._sequences(obs, pg, tables)
                    self._foreign_keys(obs, pg, tables)
                    if self.spec.probe:
                        self._probe(obs, pg)
            self._http(obs, pg)
        obs.seconds = time.monotonic() - started
        return obs

    def _light(self) -> bool:
        """An apply in which no step before this one changed anything, after one whose full
        verification passed: the data is as it was then (copy-data, which would have changed,
        compares its sources' fingerprints), so it is not read again."""
        if self.rc.mode != "apply" or self.spec.every_apply:
            return False
        if (self.recorded.get("observed") or {}).get("verified") is not True:
            return False
        return not any(s.name in self.rc.changed for s in self.rc.plan.steps[:self.step.index])

    def _bounded(self, pg, what: str):
        """Work on ``pg`` that ends with an error when the server stops answering (a paused
        container) for the step's timeout, however long the work itself takes."""
        return dbconn.bounded(pg, what=f"verifying: {what}", timeout=self.spec.timeout)

    def _container(self, obs: Observed) -> None:
        db = self.rc.earlier_database(self.step)
        if db is None:
            return
        if db.type == "database":       # no container: the server's version and the TLS in use instead
            self._external(obs, db)
            return
        info = self.rc.engine.container(db.spec.container)
        state = (info or {}).get("State") or {}
        health = (state.get("Health") or {}).get("Status")
        status = state.get("Status") or "missing"
        ok = status == "running" and health in ("healthy", None)
        obs.checks.append(Check("container", ok, f"{db.spec.container} is "
                                + (health or status if status == "running" else status)))

    def _external(self, obs: Observed, db) -> None:
        """An external database (a database step): how this connection reaches it, checked as
        that step asks (TLS when its sslmode requires it)."""
        try:
            with db.connect(what="verifying", autocommit=True) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
                tls = None
                if conn.pgconn.ssl_in_use:
                    row = conn.execute("SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
                    tls = f"{row[0]} ({row[1]})" if row and row[0] else "TLS"
        except OrchestrateError as exc:
            obs.checks.append(Check("server", False, exc.message))
            return
        t = db.target
        obs.checks.append(Check("server", True, f"PostgreSQL {version.split()[0]} at {t.netloc}, an external database "
                                                f"(step {db.step.name}: no container to check)"))
        mode = db.spec.sslmode
        need = mode in ("require", "verify-ca", "verify-full")
        obs.checks.append(Check("tls", tls is not None or not need,
                                (f"{tls}, sslmode {mode}" + (", the server's certificate and name checked"
                                                             if mode == "verify-full" else ""))
                                if tls else f"not encrypted (sslmode {mode})"))

    def _schema(self, obs: Observed) -> None:
        mig = self.rc.earlier(self.step, "migrate")
        if mig is None or not self.rc.context or mig.step.name not in self.rc.context.steps:
            return
        out = self.rc.context.steps[mig.step.name]
        ok = out.get("revision") == out.get("target") and out.get("revision") is not None
        obs.checks.append(Check("schema", ok, f"at revision {out.get('revision') or '(none)'}"
                                + ("" if ok else f", the migrate step's target is {out.get('target')}")))

    def _tables(self, obs: Observed, pg) -> list[TablePlan]:
        cp = self._copy_step()
        if cp is None:
            return []
        if not cp.source_path.is_file():
            obs.checks.append(Check("source", False, f"{cp.source_path} does not exist"))
            return []
        spec = cp.spec
        with contextlib.closing(open_source(cp.source_path)) as src:
            with self._bounded(pg, "reading the tables"):
                target = reflect_target(pg)
            plans, problems, _ = map_tables(reflect_source(src), target, tables=spec.tables,
                                            exclude=spec.exclude, rename=spec.rename, columns=spec.columns,
                                            drop_columns=spec.drop_columns)
            if problems:
                obs.checks.append(Check("mapping", False, "; ".join(problems)))
                return []
            written = cp.written_tables()
            # apply converges: a table the application has written since the copy is its own now,
            # and comparing it with the source would only find those writes. orchestrate verify
            # compares every table and says which differences are of that kind.
            converging = self.rc.mode == "apply"
            for p in plans:
                if converging and p.target in written:
                    obs.tables.append(_not_compared(p.target, written[p.target]))
                    continue
                with self._bounded(pg, f"comparing table {p.target}"):
                    result = self._compare(pg, src, cp, p, plans)
                    theirs = not result.equal and (p.target in written or cp.written_since_copy(pg, p))
                if theirs and converging:
                    result = _not_compared(p.target, result.target_rows)
                elif theirs:
                    result.detail += ("; it was written in PostgreSQL since the last copy, its source "
                                      "unchanged (the application's own writes, if it uses PostgreSQL now)")
                obs.tables.append(result)
        return plans

    def _compare(self, pg, src: sqlite3.Connection, cp, p: TablePlan, plans: list[TablePlan]) -> TableResult:
        """Load the source table into a temporary twin, as the copy would, and compare in the server."""
        from psycopg import sql
        source_rows = src.execute(f"SELECT count(*) FROM {quote_sqlite(p.source)}").fetchone()[0]
        temp = f"orchestrate_verify_{p.target}"[:63]
        target, twin = sql.Identifier(p.target), sql.Identifier(temp)
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in p.target_columns)
        row_hash = sql.SQL(row_hash_sql(p.target_columns, [sql.Identifier(c.name).as_string(pg)
                                                           for c in p.target_columns], pg.info.server_version))
        try:
            with pg.transaction(force_rollback=True):
                pg.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(cp.spec.timezone)))
                pg.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(twin, target))
                ts = TableState(p, source_rows)
                if cp.spec.on_dangling != "error":
                    ts.dangling = cp._dangling(src, p, plans)
                if not ts.dangling:     # fast: one pass over the source inside SQLite, checksums compared
                    t0 = time.monotonic()
                    pg.execute(STABLE_OUTPUT.format(local="LOCAL"))
                    theirs: dict = {}
                    key = ordered_key(src, p)   # both sides in key order: md5 per key range, no per-row hash
                    split = threading.Event()   # set once the server has cut its keys into ranges

                    def server_side():      # the server's checksum meanwhile (psycopg waits without the GIL)
                        try:
                            if key:
                                theirs["page"], theirs["splits"] = target_splits(pg, p)
                                split.set()
                                theirs["sum"] = target_digest(pg, p, theirs["splits"])
                            else:
                                theirs["sum"] = fast_target_checksum(pg, p)
                            theirs["seconds"] = time.monotonic() - t0
                        finally:
                            split.set()
                    worker = Background(server_side, f"verify-{p.target}")
                    try:
                        options = dict(tz=cp.tz, strip_nul=cp.spec.strip_nul, server_version=pg.info.server_version)
                        if key:
                            split.wait()
                            fast = (source_digest(src, p, key, theirs["splits"], page=theirs["page"], **options)
                                    if "splits" in theirs else None)
                        else:
                            fast = fast_source_checksum(src, p, **options)
                        ours = time.monotonic() - t0
                    finally:
                        worker.result()       # (what the server side raised, raised here)
                    if fast is not None:
                        if fast == theirs["sum"]:
                            self.rc.log(f"{p.target}: checksums equal in {time.monotonic() - t0:.2f}s (SQLite's "
                                        f"{ours:.2f}s, the server's {theirs['seconds']:.2f}s, at once)")
                            return TableResult(p.target, fast[0], fast[0], True, "equal")
                    self.rc.log(f"{p.target}: checksums differ or not computable in SQLite; comparing row by row")
                    pg.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(cp.spec.timezone)))
                t0 = time.monotonic()
                try:
                    cp.load_into(pg, src, p, ts, plans, into=temp)
                except OrchestrateError as exc:
                    return TableResult(p.target, source_rows, None, False, f"the source does not load: {exc.message}")
                self.rc.log(f"{p.target}: source loaded into a temporary twin in {time.monotonic() - t0:.2f}s")
                t0 = time.monotonic()
                pg.execute(STABLE_OUTPUT.format(local="LOCAL"))
                sums = {}
                for name, ident in (("source", twin), ("target", target)):
                    sums[name] = pg.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}")
                                            .format(row_hash, ident)).fetchone()
                self.rc.log(f"{p.target}: compared in the server in {time.monotonic() - t0:.2f}s")
                if sums["source"] == sums["target"]:
                    return TableResult(p.target, sums["source"][0], sums["target"][0], True, "equal")
                return TableResult(p.target, sums["source"][0], sums["target"][0], False,
                                   self._first_difference(pg, p, twin, target, cols))
        except OrchestrateError:
            raise
        except Exception as exc:   # the database refused the comparison: a failed check, not a crash
            return TableResult(p.target, source_rows, None, False, f"cannot compare: {str(exc).strip().splitlines()[0]}")

    @staticmethod
    def _first_difference(pg, p: TablePlan, twin, target, cols) -> str:
        from psycopg import sql
        key = p.table.primary_key or [c.name for c in p.target_columns]
        on = sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=sql.Identifier(k)) for k in key)
        s_row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c.name)) for c in p.target_columns))
        t_row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c.name)) for c in p.target_columns))
        first = sql.SQL(", ").join(sql.SQL("coalesce(s.{k}, t.{k})").format(k=sql.Identifier(k)) for k in key)
        query = sql.SQL("SELECT {first}, s.{k0} IS NULL, t.{k0} IS NULL FROM {twin} s FULL JOIN {target} t ON {on} "
                        "WHERE {s_row}::text IS DISTINCT FROM {t_row}::text ORDER BY {first}").format(
            first=first, k0=sql.Identifier(key[0]), twin=twin, target=target, on=on, s_row=s_row, t_row=t_row)
        rows = pg.execute(query).fetchall()
        n = len(key)
        name = lambda r: ", ".join(f"{k}={v}" for k, v in zip(key, r[:n]))  # noqa: E731
        missing = sum(1 for r in rows if r[n + 1])
        extra = sum(1 for r in rows if r[n])
        changed = len(rows) - missing - extra
        parts = [f"{count} {what}" for count, what in ((missing, "missing in the target"), (changed, "changed"),
                                                        (extra, "not in the source")) if count]
        span = name(rows[0]) if len(rows) == 1 else f"{name(rows[0])} .. {name(rows[-1])}"
        return f"{len(rows)} row(s) differ ({', '.join(parts)}); first differing key range: {span}"

    def _sequences(self, obs: Observed, pg, plans: list[TablePlan]) -> None:
        from psycopg import sql
        behind = []
        for p in plans:
            for col in p.target_columns:
                if not col.sequence:
                    continue
                highest = pg.execute(sql.SQL("SELECT max({}) FROM {}").format(
                    sql.Identifier(col.name), sql.Identifier(p.target))).fetchone()[0]
                last, called = pg.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                    sql.SQL(col.sequence))).fetchone()
                nxt = last + 1 if called else last
                if highest is not None and nxt <= highest:
                    behind.append(f"{p.target}.{col.name}: {col.sequence} would hand out {nxt}, but the highest id is "
                                  f"{highest}")
        if plans:
            obs.checks.append(Check("sequences", not behind, "; ".join(behind) if behind else "none behind its highest id"))

    def _foreign_keys(self, obs: Observed, pg, plans: list[TablePlan]) -> None:
        """A foreign key in place and validated cannot be violated; one that is missing or NOT
        VALID is checked row by row."""
        from psycopg import sql
        broken = []
        valid = {name for (name,) in pg.execute(
            "SELECT conname FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace "
            "WHERE contype = 'f' AND convalidated AND n.nspname = current_schema()").fetchall()}
        for p in plans:
            for fk in p.table.foreign_keys:
                if fk.name in valid:
                    continue
                cond = sql.SQL(" AND ").join(sql.SQL("r.{} = c.{}").format(sql.Identifier(rc), sql.Identifier(c))
                                             for c, rc in zip(fk.columns, fk.ref_columns))
                not_null = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in fk.columns)
                count = pg.execute(sql.SQL("SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} r WHERE {})")
                                   .format(sql.Identifier(p.target), not_null, sql.Identifier(fk.ref_table), cond)).fetchone()[0]
                if count:
                    broken.append(f"{p.target}.{', '.join(fk.columns)}: {count} row(s) reference missing {fk.ref_table} rows")
        if plans:
            obs.checks.append(Check("foreign keys", not broken, "; ".join(broken) if broken else "all hold"))

    def _probe(self, obs: Observed, pg) -> None:
        try:
            with pg.transaction(force_rollback=True):
                pg.execute("CREATE TEMP TABLE orchestrate_probe (v text)")
                pg.execute("INSERT INTO orchestrate_probe VALUES ('probe')")
                ok = pg.execute("SELECT v FROM orchestrate_probe").fetchone() == ("probe",)
            obs.checks.append(Check("write/read probe", ok, "a row written and read back, then rolled back"))
        except Exception as exc:
            obs.checks.append(Check("write/read probe", False, str(exc).strip().splitlines()[0]))

    def _http(self, obs: Observed, pg) -> None:
        """The HTTP checks, in order; ``pg`` (None when the database did not answer) counts rows."""
        for check in self.spec.http:
            self.rc.progress(f"GET {check.url}")
            result = run_http_check(check, lambda table: self._rows(pg, table))
            self.rc.log(f"{result.name}: {'ok' if result.ok else 'FAILED'}: {result.detail}")
            obs.checks.append(result)

    def _rows(self, pg, table: str) -> int:
        """The rows of ``table`` in the verified database, now."""
        import psycopg
        from psycopg import sql
        if pg is None or pg.closed:
            raise RowsUnknown("the database did not answer")
        with self._bounded(pg, f"counting the rows of {table}"):
            try:
                return pg.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            except psycopg.errors.UndefinedTable:
                raise RowsUnknown(f"the database has no table {table}") from None
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()
                raise RowsUnknown(first[0] if first else type(exc).__name__) from None

    def diff(self, obs: Observed) -> Diff:
        return diff_verify(obs)

    def summary(self, obs: Observed) -> str:
        if not obs.ran:
            return ""
        over_http = f" ({len(self.spec.http)} over HTTP)" if self.spec.http else ""
        if obs.light and obs.ok:
            return (f"nothing changed before it: {len(obs.checks)} check(s){over_http} in {obs.seconds:.1f}s; the "
                    f"data was verified when it last changed (orchestrate verify compares it now)")
        written = sum(1 for t in obs.tables if not t.compared)
        tables = len(obs.tables) - written
        return (f"verified {tables} table(s) and {len(obs.checks)} check(s){over_http} in {obs.seconds:.1f}s"
                + (f"; {written} table(s) written in PostgreSQL since the copy, not compared with the source"
                   if written else "") if obs.ok else "")

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        if obs is None or not obs.ran:
            return {"ok": None}
        return {"ok": obs.ok, "tables": {t.table: t.target_rows for t in obs.tables}}

    def record(self, obs: Observed) -> dict[str, Any]:
        """Whether the last full verification (the data compared) passed: a converged apply after
        one that passed may skip reading the data again."""
        if obs.ran and not obs.light and self.rc.mode == "apply":
            return {"verified": obs.ok}
        return dict(self.recorded.get("observed") or {})
