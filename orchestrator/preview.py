"""``orchestrate plan --preview``: see every data problem before the first real change.

When the target schema does not exist yet (a fresh machine, or migrations still pending), a plan
can only say that copy-data's work is "known after apply". With ``--preview`` the pending
migrations run into a throwaway database, and copy-data's full preflight (conversions, dangling
references, overlong values, unmapped tables and columns, NOT NULL columns without a value) runs
against that schema. The throwaway is a database of its own in the plan's server when that
server answers, otherwise a throwaway container from the db-container step's image; either is
removed whatever happens (a ``kill -9`` leaves it to the next preview, which drops it). Nothing
of the plan's own database, container or volume is touched: the preview is the one part of
``plan`` that writes, and only what it throws away.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

from .errors import OrchestrateError, StepFailed
from .steps.base import RunContext, libpq_url

PREFIX = "orchestrate_preview_"


def _sqlalchemy_url(url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url
    u = make_url(url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url)
    if database:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def _drop(conn, name: str) -> None:
    from psycopg import sql
    force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name)))


@contextlib.contextmanager
def _in_server(url: str) -> Iterator[str | None]:
    """A throwaway database in the server at ``url``; yields its SQLAlchemy URL (None when the
    server does not answer)."""
    import psycopg
    from psycopg import sql
    try:
        conn = psycopg.connect(libpq_url(url), connect_timeout=5, autocommit=True)
    except psycopg.OperationalError:
        yield None
        return
    with conn:
        for (old,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",)).fetchall():
            _drop(conn, old)          # left by a preview that was killed
        name = PREFIX + uuid.uuid4().hex[:12]
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            # a role that may not CREATE DATABASE (a managed database's owner role): a throwaway
            # server instead
            yield None
            return
        except psycopg.Error as exc:
            raise StepFailed(f"preview: cannot create a throwaway database in the plan's server: "
                             f"{str(exc).strip().splitlines()[0]}",
                             hint="the preview needs a user that may CREATE DATABASE; or stop the server so "
                                  "the preview uses a throwaway container") from None
        try:
            yield _sqlalchemy_url(url, name)
        finally:
            _drop(conn, name)


@contextlib.contextmanager
def preview_schema(rc: RunContext, step, url: str) -> Iterator[tuple[str, str]]:
    """The target schema as the plan's migrations will leave it, in a throwaway database: yields
    (its URL for psycopg, where it lives)."""
    migrate = rc.earlier(step, "migrate")
    with _in_server(url) as in_server:
        if in_server is not None:
            if migrate is not None:
                rc.progress("preview: running the pending migrations into a throwaway database")
                migrate.run_upgrade(in_server)
            yield libpq_url(in_server), "a throwaway database in the plan's server"
            return
    db = rc.earlier_database(step)
    if db is None:
        raise StepFailed("preview: the target database does not answer and no db-container step comes before "
                         "this one to make a throwaway server from",
                         hint="start the database, then plan --preview again")
    user, database = db.login
    try:
        image, data_dir = db.throwaway_server()
    except OrchestrateError:    # an external database that does not answer, its major not recorded
        raise StepFailed("preview: the external database does not answer, and without its major version "
                         "(recorded by an apply) no throwaway server can be chosen",
                         hint=f"set client_image: in step {db.step.name}, or make the database "
                              f"reachable") from None
    from .docker_engine import Engine
    from .throwaway import throwaway_postgres
    engine = Engine(read_only=False, log=rc.log, target=rc.target)
    with throwaway_postgres(engine, plan=rc.plan.name, purpose="preview", image=image, user=user,
                            database=database, data_dir=data_dir, labels=db.labels,
                            progress=rc.progress) as server:
        if migrate is not None:
            rc.progress("preview: running the migrations into a throwaway container")
            migrate.run_upgrade(_sqlalchemy_url(server.url))
        yield server.url, f"a throwaway container from {image}"
