"""Bounded database work: a server that stops answering (its container paused, its host gone)
ends the wait with one clear error instead of a hang.

A paused container's kernel still accepts and acknowledges TCP, so once connected neither
``connect_timeout``, nor ``statement_timeout`` (the frozen server never sees the time pass), nor
TCP keepalives help. The bound is therefore kept on the client's side:

- :func:`connect` gives up when the server does not complete a connection within ``timeout``;
- :func:`bounded` watches a block of work on a connection: every few seconds a watchdog thread
  asks the server for a fresh connection; when that gets no answer within ``timeout``, it shuts
  the work's socket down, so the blocked call returns, and the block raises :class:`NoAnswer`
  naming what waited and for how long. The bound is on the server's silence, not on the work's
  length: a long statement on a server that answers (a table of a hundred million rows) never
  trips it.

Lock waits on a server that answers are bounded server-side (``SET lock_timeout``) by the caller.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Iterator

from .errors import OrchestrateError

if TYPE_CHECKING:         # psycopg is imported when first used: it costs commands without a database
    import psycopg

TIMEOUT = 30.0          # seconds a server may stay silent
HINT = ("is the database's container paused or its host overloaded (docker ps shows '(Paused)')? "
        "docker unpause it, or wait until the server answers, and run again")


class NoAnswer(OrchestrateError):
    """The database did not answer within the bound."""


def where(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict
    params = conninfo_to_dict(url)
    host = params.get("host") or "localhost"
    return f"{host}:{params.get('port') or 5432}"


def connect(url: str, *, what: str, timeout: float = TIMEOUT, **kwargs: Any) -> psycopg.Connection:
    """``psycopg.connect``, bounded: no answer within ``timeout`` raises :class:`NoAnswer`;
    another failure (refused, a wrong password) an :class:`OrchestrateError` with the server's
    first line. ``what`` says what the connection is for ("verifying", "copying table x")."""
    import psycopg
    try:
        return psycopg.connect(url, connect_timeout=max(2, round(timeout)), **kwargs)
    except psycopg.errors.ConnectionTimeout:
        raise NoAnswer(f"no answer from the database at {where(url)} within {timeout:g}s while {what} "
                       f"(connecting)", hint=HINT) from None
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OrchestrateError(f"cannot connect to the database at {where(url)} while {what}: {first}") from None


class _Watchdog(threading.Thread):
    """Asks the server for a fresh connection every ``interval`` seconds; when none comes within
    ``timeout``, cuts ``conn``'s socket so the call blocked on it returns."""

    def __init__(self, conn: psycopg.Connection, timeout: float, interval: float):
        super().__init__(daemon=True, name="orchestrate-db-watchdog")
        info = conn.info
        self.probe = {"host": info.host, "port": info.port, "user": info.user, "password": info.password,
                      "dbname": info.dbname, "connect_timeout": max(2, round(timeout))}
        params = info.get_parameters()     # an external database's TLS: the probe asks as the work did
        self.probe.update({k: params[k] for k in ("sslmode", "sslrootcert", "sslcert", "sslkey") if k in params})
        host = info.host if not info.host.startswith("/") else "localhost"
        self.where = f"{host}:{info.port}"
        self.conn, self.interval = conn, interval
        self.done = threading.Event()
        self.tripped = False

    def run(self) -> None:
        import psycopg
        while not self.done.wait(self.interval):
            try:
                psycopg.connect(**self.probe).close()
            except psycopg.errors.ConnectionTimeout:
                if not self.done.is_set():
                    self.tripped = True
                    _cut(self.conn)
                return
            except psycopg.Error:
                pass          # it answered, if only to refuse

    def stop(self) -> None:
        self.done.set()
        self.join()


def _cut(conn: psycopg.Connection) -> None:
    """Shut the connection's socket down (both ways) under libpq's feet: a call blocked on it
    fails at once, and the connection is broken for good."""
    with contextlib.suppress(Exception):
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def bounded(conn: psycopg.Connection, *, what: str, timeout: float = TIMEOUT) -> Iterator[None]:
    """Run the block on ``conn`` for as long as its work needs while the server answers; when the
    server stays silent for ``timeout`` seconds, the connection is cut and closed and
    :class:`NoAnswer` is raised (also when the block caught the error of the cut call itself)."""
    dog = _Watchdog(conn, timeout, interval=min(5.0, max(1.0, timeout / 3)))
    dog.start()
    try:
        yield
    finally:
        dog.stop()
        if dog.tripped:
            conn.close()
            raise NoAnswer(f"no answer from the database at {dog.where} for {timeout:g}s while {what}",
                           hint=HINT) from None
