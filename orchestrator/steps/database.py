"""The database step: an external PostgreSQL that orchestrate does not run (a managed database:
RDS, Cloud SQL, a server of the user's).

It manages no container. ``plan`` checks it read-only: the server answers over the TLS the step
asks for (``sslmode: verify-full`` and the CA's certificate by default), its version, and the
role's privileges (a superuser is not needed; the role must own the database, or at least may
CREATE in it and in its schema, and own the tables already there). Later steps find its ``url``
(password and TLS parameters included) as they find a db-container's.

What a managed database forbids is done the managed way or refused with what to do instead:
``settings`` are set with ``ALTER DATABASE ... SET`` over the connection (the settings a session
may change); one only the server's configuration can change (``shared_buffers``) is a problem
naming the place to change it (RDS's DB parameter group, Cloud SQL's database flags). The
password is never changed here: it is the role's, changed the managed way.

It also provides the PostgreSQL client tools the backup step runs against it (:func:`pg_client`):
the host's ``pg_dump``/``pg_restore`` when their major version is the server's, otherwise the same
tools inside a throwaway container of ``client_image`` (``postgres:<major>`` by default).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import Field, field_validator

from ..changes import Action, Change, Diff
from ..errors import KeyedValueError, OrchestrateError, StepFailed
from ..fields import Duration, Image, Password, RelPath, SettingName, SettingValue, Text, setting_text
from ..plan import Strict
from ..redact import REDACTED
from .db_container import SETTING
from .base import Resource, extra_labels

CLIENT_DIR = "/tmp/orchestrate-client"                   # files a client container gets (CA, dump)
# Settings whose context lets a database's owner set them per database (ALTER DATABASE ... SET);
# the others belong to the server's configuration.
SETTABLE = ("user",)
MANAGED_HINT = ("on RDS, in the instance's DB parameter group; on Cloud SQL, as a database flag; on a server of "
                "your own, in postgresql.conf")


class DatabaseSpec(Strict):
    url: Text = Field(description="postgresql://USER@HOST[:PORT]/DATABASE, without the password (give it in "
                                  "password:, from a secret)")
    password: Password | None = Field(None, json_schema_extra={"writeOnly": True},
                                      description="the role's password; use a secret: '{{ secrets.db_password }}'")
    previous_password: Password | None = Field(
        None, json_schema_extra={"writeOnly": True},
        description="to rotate the password: the one the role has now; apply sets password with ALTER ROLE over "
                    "the connection (then drop this key)")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "verify-full", description="libpq's sslmode; verify-full checks the server's certificate and name")
    sslrootcert: RelPath | None = Field(None, description="the CA certificate(s) the server's certificate must "
                                                          "chain to (relative to the plan root), or 'system'")
    sslcert: RelPath | None = Field(None, description="a client certificate, where the server asks for one")
    sslkey: RelPath | None = Field(None, description="the client certificate's key")
    settings: dict[SettingName, SettingValue] = Field(
        default_factory=dict, description="per-database settings, set with ALTER DATABASE ... SET (only those a "
                                          "session may change; server settings belong to the service's "
                                          "configuration)")
    client: Literal["auto", "host", "container"] = Field(
        "auto", description="where pg_dump and pg_restore run: the host's (when their major version is the "
                            "server's), a throwaway container of client_image, or auto (host if it matches)")
    client_image: Image | None = Field(None, description="PostgreSQL image for pg_dump/pg_restore and restore drills "
                                                         "(default postgres:<the server's major version>)")
    timeout: Duration = Field(15.0, description="how long to wait for the server when connecting")

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict) -> dict:
        for key in value:
            if not SETTING.match(key):
                raise KeyedValueError(f"{key!r} is not a PostgreSQL setting name (lower case, e.g. work_mem)", key)
        return value


# --- the URL ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int
    database: str
    params: tuple[tuple[str, str], ...] = ()      # other libpq parameters from the URL's query

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(self.host).is_loopback
        return False


TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


def parse_url(url: str) -> Target:
    """``postgresql://user@host:port/db`` -> :class:`Target`. Raises ValueError (a sentence) for a
    URL that holds a password, lacks a part, or sets a TLS parameter the step has a key for."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") and not re.fullmatch(r"postgresql\+\w+", parts.scheme):
        raise ValueError(f"expected a postgresql:// URL, not {parts.scheme or 'no scheme'}://")
    if parts.password is not None:
        raise ValueError("the URL holds a password: give it in password: (from a secret) and leave it out of the "
                         "URL, which is shown in plans and recorded")
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError("the URL's port is not a number from 1 to 65535") from None
    user, host, database = unquote(parts.username or ""), parts.hostname or "", unquote(parts.path.lstrip("/"))
    missing = [what for what, v in (("user", user), ("host", host), ("database", database)) if not v]
    if missing:
        raise ValueError(f"the URL names no {' and no '.join(missing)} (postgresql://USER@HOST:PORT/DATABASE)")
    params = parse_qsl(parts.query, keep_blank_values=True)
    for key, _ in params:
        if key in TLS_KEYS:
            raise ValueError(f"{key} is a key of the step: give it as {key}: ..., not in the URL")
        if key == "password":
            raise ValueError("the URL holds a password: give it in password: (from a secret)")
    return Target(user, host, port, database, tuple(params))


# --- observation --------------------------------------------------------------------------------

@dataclass
class Observed:
    version: str = ""                     # SHOW server_version
    version_num: int = 0
    tls: str | None = None                # "TLSv1.3 (TLS_AES_256_GCM_SHA384)", None: not encrypted
    superuser: bool = False
    owner: bool = False                   # the role owns the database (or is a member of its owner)
    db_owner: str = ""
    privileges: dict[str, bool] = field(default_factory=dict)   # create, temp, schema_usage, schema_create
    schema: str = "public"
    foreign_tables: list[tuple[str, str]] = field(default_factory=list)   # (table, owner) not the role's
    settings: dict[str, str] = field(default_factory=dict)     # ALTER DATABASE ... SET, as the server has them
    contexts: dict[str, str | None] = field(default_factory=dict)   # pg_settings.context of wanted settings
    rotate: bool = False                  # the role still has previous_password: apply sets password
    pending: list[str] = field(default_factory=list)   # plan: earlier steps that start the server, not yet applied

    @property
    def major(self) -> int:
        return self.version_num // 10000


def diff_database(obs: Observed, *, spec: DatabaseSpec, target: Target, recorded: dict) -> Diff:
    """What the plan asks of the server vs what it is. Pure."""
    d = Diff()
    if obs.pending:
        d.changes.append(Change(Action.UPDATE, "server", None, "(known after apply)",
                                f"started by step {', '.join(obs.pending)}: checked when apply reaches this step"))
        d.after_apply = True
        return d
    if obs.rotate:
        d.changes.append(Change(Action.UPDATE, "password", REDACTED, REDACTED,
                                "the role still has previous_password: apply sets password with ALTER ROLE over the "
                                "connection (as a SCRAM verifier: the password itself never reaches the server)",
                                secret=True))
    if obs.tls is None:
        d.warnings.append(f"the connection to {target.netloc} is not encrypted (sslmode: {spec.sslmode}); a managed "
                          f"database should be reached with sslmode: verify-full and its CA's certificate")
    elif spec.sslmode not in ("verify-ca", "verify-full"):
        d.warnings.append(f"TLS is in use but the server's certificate is not checked (sslmode: {spec.sslmode}); "
                          f"use sslmode: verify-full with sslrootcert: the CA's certificate")
    p = obs.privileges
    role = target.user
    if not obs.owner and not obs.superuser:
        missing = []
        if not p.get("schema_create"):
            missing.append(f"CREATE on schema {obs.schema} (GRANT CREATE ON SCHEMA {obs.schema} TO {role})")
        if not p.get("schema_usage"):
            missing.append(f"USAGE on schema {obs.schema} (GRANT USAGE ON SCHEMA {obs.schema} TO {role})")
        if not p.get("temp"):
            missing.append(f"TEMPORARY on database {target.database} (GRANT TEMPORARY ON DATABASE "
                           f"{target.database} TO {role}; verify compares in temporary tables)")
        if missing:
            d.problems.append(
                f"role {role} does not own database {target.database} (its owner is {obs.db_owner}) and lacks "
                f"{'; '.join(missing)}. Connected as {obs.db_owner} (or the service's admin user), run the GRANTs, "
                f"or make {role} the owner: ALTER DATABASE {target.database} OWNER TO {role}")
        else:
            d.notes.append(f"role {role} does not own database {target.database} (its owner is {obs.db_owner}) but "
                           f"may create in schema {obs.schema}: the tables the migrations create are its own")
    if obs.foreign_tables:
        names = ", ".join(f"{t} (owner {o})" for t, o in obs.foreign_tables[:10])
        more = f" and {len(obs.foreign_tables) - 10} more" if len(obs.foreign_tables) > 10 else ""
        d.problems.append(
            f"table(s) {names}{more} in schema {obs.schema} are not owned by role {role}: migrate and copy-data "
            f"alter their tables (indexes and foreign keys set aside and rebuilt), which only the owner may. "
            f"Connected as their owner, run ALTER TABLE ... OWNER TO {role} (or REASSIGN OWNED BY <owner> TO {role})")
    # settings: the managed way (ALTER DATABASE ... SET) or refused with where to set them
    managed = set((recorded.get("observed") or {}).get("settings_set") or [])
    for name, value in sorted(spec.settings.items()):
        want = setting_text(value)
        context = obs.contexts.get(name)
        if context is None:
            d.problems.append(f"settings.{name}: the server knows no setting {name!r}")
        elif context not in SETTABLE and not (context == "superuser" and obs.superuser):
            d.problems.append(
                f"settings.{name}: {name} can only be set in the server's configuration (context {context}), which a "
                f"managed database does not let a role change (no ALTER SYSTEM, no superuser); set it {MANAGED_HINT}, "
                f"and remove it from this step")
        elif obs.settings.get(name) != want:
            d.changes.append(Change(Action.UPDATE, f"settings.{name}", obs.settings.get(name), want,
                                    f"ALTER DATABASE {target.database} SET {name} (new sessions get it)"))
    for name in sorted(managed - set(spec.settings)):
        if name in obs.settings:
            d.changes.append(Change(Action.UPDATE, f"settings.{name}", obs.settings[name], None,
                                    f"no longer in the plan: ALTER DATABASE {target.database} RESET {name}"))
    return d


# --- the step -----------------------------------------------------------------------------------

class Database(Resource):
    """An external PostgreSQL (managed or the user's own): checked, never run, by orchestrate."""
    type = "database"
    Spec = DatabaseSpec
    spec: DatabaseSpec

    # what the step is given ------------------------------------------------------------------

    def _key(self, *key: str | int):
        return self.step.path + tuple(key)

    @property
    def target(self) -> Target:
        try:
            return parse_url(self.spec.url)
        except ValueError as exc:
            raise self.rc.plan.smap.error(self._key("url"), str(exc)) from None

    def _file(self, key: str) -> str | None:
        value = getattr(self.spec, key)
        if value is None or (key == "sslrootcert" and value == "system"):
            return value
        return str(self.rc.plan.resolve(value))

    def tls_params(self) -> dict[str, str]:
        """The libpq TLS parameters (files as absolute paths)."""
        out = {"sslmode": self.spec.sslmode}
        for key in ("sslrootcert", "sslcert", "sslkey"):
            if (path := self._file(key)) is not None:
                out[key] = path
        return out

    def conninfo(self, password: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (the password, or ``password``, included)."""
        t = self.target
        kw: dict[str, Any] = {"host": t.host, "port": t.port, "user": t.user, "dbname": t.database,
                              **dict(t.params), **self.tls_params()}
        if (password or self.spec.password) is not None:
            kw["password"] = password or self.spec.password
        return kw

    def libpq_env(self) -> dict[str, str]:
        """The same connection as libpq's environment variables (for pg_dump, pg_restore, psql:
        the password never on a command line)."""
        names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "password": "PGPASSWORD",
                 "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
                 "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME", "options": "PGOPTIONS"}
        env = {names[k]: str(v) for k, v in self.conninfo().items() if k in names}
        env.setdefault("PGCONNECT_TIMEOUT", str(max(2, round(self.spec.timeout))))
        return env

    def url_with(self, password: str | None) -> str:
        t = self.target
        auth = quote(t.user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
        query = [*t.params, *self.tls_params().items()]
        qs = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in query)
        return f"postgresql+psycopg://{auth}@{t.netloc}/{quote(t.database, safe='')}" + (f"?{qs}" if qs else "")

    def check(self) -> None:
        _ = self.target
        for key in ("sslrootcert", "sslcert", "sslkey"):
            path = self._file(key)
            if path not in (None, "system") and not Path(path).is_file():
                raise self.rc.plan.smap.error(self._key(key), f"{getattr(self.spec, key)} does not exist",
                                              hint="give the path of the file, relative to the plan's root")
        if (self.spec.sslcert is None) != (self.spec.sslkey is None):
            raise self.rc.plan.smap.error(self._key("sslcert" if self.spec.sslcert is None else "sslkey"),
                                          "sslcert and sslkey go together")

    @property
    def login(self) -> tuple[str, str]:
        """(role, database) that clients such as pg_dump connect as and to."""
        return self.target.user, self.target.database

    def throwaway_server(self) -> tuple[str, str]:
        """(image, data directory) of a throwaway server for this database (a drill, a preview):
        the client image, of the server's major version (asked when none is recorded)."""
        return self.client_image() or f"postgres:{self.server_major()}", "/var/lib/postgresql/data"

    def secret_inputs(self) -> dict[str, str]:
        return {k: v for k in ("password", "previous_password") if (v := getattr(self.spec, k)) is not None}

    # observe ---------------------------------------------------------------------------------

    def connect(self, *, what: str, password: str | None = None, **kwargs):
        """A connection to the server, or an error naming the step's key to fix (one line)."""
        import psycopg
        self.check()
        try:
            return psycopg.connect(**self.conninfo(password), connect_timeout=max(2, round(self.spec.timeout)),
                                   **kwargs)
        except psycopg.errors.ConnectionTimeout:
            raise self._error("url", f"no answer from the database at {self.target.netloc} within "
                                     f"{self.spec.timeout:g}s while {what}",
                              "is the host right, and does its firewall (an RDS security group) let this machine "
                              "in?") from None
        except psycopg.OperationalError as exc:
            raise self._refused(str(exc), what) from None

    def _error(self, key: str, message: str, hint: str | None = None) -> OrchestrateError:
        return self.rc.plan.smap.error(self._key(key), message, hint=hint)

    def _refused(self, text: str, what: str) -> OrchestrateError:
        """The server's (or libpq's) refusal, as one sentence naming the key to change."""
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        first = next((ln for ln in lines if "FATAL" in ln or "error" in ln.lower()), lines[0] if lines else "")
        first = re.sub(r"^.*failed: (FATAL:\s*)?", "", first)
        where, mode = self.target.netloc, self.spec.sslmode
        low = text.lower()
        if "no encryption" in low or ("pg_hba.conf" in low and "ssl off" in low):
            return self._error("sslmode", f"the server at {where} refuses connections without TLS, and sslmode is "
                                          f"{mode}: {first}",
                               "set sslmode: verify-full and sslrootcert: the CA's certificate (for RDS, the region's "
                               "certificate bundle)")
        if "server does not support ssl" in low or "ssl was required" in low:
            return self._error("sslmode", f"the server at {where} does not offer TLS, and sslmode is {mode}",
                               "enable TLS on the server; only for a server on a trusted network, lower sslmode")
        if "certificate verify failed" in low or "root certificate" in low or "certificate" in low and "sslrootcert" in low:
            key = "sslrootcert"
            return self._error(key, f"the certificate of the server at {where} is not signed by a CA of sslrootcert "
                                    f"({self.spec.sslrootcert or 'none given'}): {first}",
                               "give the CA's certificate that signed the server's (for RDS, the region's bundle)")
        if "does not match host name" in low or "server certificate for" in low:
            return self._error("url", f"the certificate of the server at {where} is not for host {self.target.host!r} "
                                      f"(sslmode {mode} checks the name): {first}",
                               "connect with the host name the certificate names (the endpoint's DNS name)")
        if "password authentication failed" in low or "no password supplied" in low:
            return self._error("password", f"the server at {where} refused the password of role {self.target.user}",
                               "a managed database's password is the role's: change it the managed way (RDS: "
                               "modify-db-instance --master-user-password; or ALTER ROLE ... PASSWORD connected as "
                               "the role), then set the same value in the secret")
        if "does not exist" in low and "database" in low:
            return self._error("url", f"database {self.target.database!r} does not exist on {where}",
                               "create it (CREATE DATABASE ... OWNER role) connected as the service's admin user")
        if "role" in low and "does not exist" in low:
            return self._error("url", f"role {self.target.user!r} does not exist on {where}")
        return self._error("url", f"cannot connect to the database at {where} while {what}: {first}")

    def observe(self) -> Observed:
        # read-only by construction: the session itself refuses to write
        ro = {"options": "-c default_transaction_read_only=on"} if "options" not in dict(self.target.params) else {}
        try:
            try:
                conn = self.connect(what="checking it", autocommit=True, **ro)
                rotate = False
            except OrchestrateError as exc:
                if not (self.spec.previous_password and getattr(exc, "key", "").endswith(".password")):
                    raise
                conn = self.connect(what="checking it with previous_password", password=self.spec.previous_password,
                                    autocommit=True, **ro)
                rotate = True
            with conn:
                obs = self._read(conn)
            obs.rotate = rotate
            return obs
        except OrchestrateError:
            if self.rc.mode == "destroy":     # nothing of it is removed: an unreachable server stops nothing
                return Observed()
            # plan: a server an earlier step (a service, a container) is about to start is not up yet
            if pending := self.rc.pending_before(self.step, "service", "container", "db-container"):
                return Observed(pending=pending)
            raise

    def _read(self, conn) -> Observed:
        obs = Observed()
        obs.version = conn.execute("SHOW server_version").fetchone()[0]
        obs.version_num = conn.info.server_version
        if conn.pgconn.ssl_in_use:
            found = conn.execute("SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
            obs.tls = f"{found[0]} ({found[1]})" if found and found[0] else "TLS"
        row = conn.execute(
            "SELECT r.rolsuper, pg_has_role(current_user, d.datdba, 'MEMBER'), pg_get_userbyid(d.datdba), "
            "has_database_privilege(current_database(), 'CREATE'), has_database_privilege(current_database(), 'TEMP'), "
            "coalesce(current_schema(), 'public') "
            "FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()").fetchone()
        obs.superuser, obs.owner, obs.db_owner, create, temp, obs.schema = row
        usage, screate = conn.execute("SELECT has_schema_privilege(%s, 'USAGE'), has_schema_privilege(%s, 'CREATE')",
                                      (obs.schema, obs.schema)).fetchone()
        obs.privileges = {"create": create, "temp": temp, "schema_usage": usage, "schema_create": screate}
        obs.foreign_tables = [tuple(r) for r in conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT pg_has_role(current_user, c.relowner, 'MEMBER') "
            "ORDER BY 1", (obs.schema,)).fetchall()]
        for (entry,) in conn.execute(
                "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = current_database() AND s.setrole = 0").fetchall():
            key, _, value = entry.partition("=")
            obs.settings[key] = value
        if self.spec.settings:
            found = dict(conn.execute("SELECT name, context FROM pg_settings WHERE name = ANY(%s)",
                                      (list(self.spec.settings),)).fetchall())
            obs.contexts = {name: found.get(name) for name in self.spec.settings}
        return obs

    def diff(self, obs: Observed) -> Diff:
        d = diff_database(obs, spec=self.spec, target=self.target, recorded=self.recorded)
        d.notes.insert(0, self.summary(obs))
        d.details["server"] = {"version": obs.version, "tls": obs.tls, "owner": obs.owner}
        return d

    def summary(self, obs: Observed) -> str:
        if obs.pending:
            return f"PostgreSQL at {self.target.netloc}: started by step {', '.join(obs.pending)} (known after apply)"
        who = "owner" if obs.owner else "superuser" if obs.superuser else "not the owner"
        return (f"PostgreSQL {obs.version.split()[0] if obs.version else '?'} at {self.target.netloc}, "
                f"{obs.tls or 'NOT encrypted'}, role {self.target.user} ({who})")

    # apply: only what a database's owner does over the connection ---------------------------

    def apply(self, obs: Observed, diff: Diff) -> str:
        from psycopg import sql
        done = []
        if obs.rotate:
            with self.connect(what="setting the new password", password=self.spec.previous_password,
                              autocommit=True) as conn:
                # libpq computes the SCRAM-SHA-256 verifier (SASLprep included): the password
                # itself is in no statement the server may log
                verifier = conn.pgconn.encrypt_password((self.spec.password or "").encode(),
                                                        self.target.user.encode(), b"scram-sha-256").decode()
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self.target.user), sql.Literal(verifier)))
            self.connect(what="proving the new password").close()
            done.append("set the new password with ALTER ROLE (drop previous_password from the step now)")
        with self.connect(what="setting the database's settings", autocommit=True) as conn:
            db = sql.Identifier(self.target.database)
            for change in diff.changes:
                if change.field == "password":
                    continue
                name = change.field.removeprefix("settings.")
                if change.after is None:
                    conn.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(db, sql.Identifier(name)))
                    done.append(f"reset {name}")
                else:
                    conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                        db, sql.Identifier(name), sql.Literal(change.after)))
                    done.append(f"set {name} = {change.after}")
        self.update_observed(settings_set=sorted(self.spec.settings))
        return "; ".join(done) or "ok"

    # outputs and record ----------------------------------------------------------------------

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        t = self.target
        url = self.url_with(self.spec.password)
        out = {"url": url, "internal_url": url, "host": t.host, "port": t.port, "user": t.user,
               "password": self.spec.password, "database": t.database, "container": None,
               "sslmode": self.spec.sslmode, "sslrootcert": self._file("sslrootcert"),
               "server_version": obs.version if obs else "(known after plan)",
               "tls": (obs.tls if obs else None), "client_image": self.client_image(obs)}
        return out

    def client_image(self, obs: Observed | None = None) -> str | None:
        if self.spec.client_image:
            return self.spec.client_image
        major = (obs.major if obs else None) or (self.recorded.get("observed") or {}).get("major")
        return f"postgres:{major}" if major else None

    def record(self, obs: Observed) -> dict[str, Any]:
        rec = {"host": self.target.host, "port": self.target.port, "database": self.target.database,
               "user": self.target.user, "server_version": obs.version, "major": obs.major,
               "tls": obs.tls, "owner": obs.owner, "superuser": obs.superuser}
        settings_set = (self.recorded.get("observed") or {}).get("settings_set")
        if self.spec.settings or settings_set:
            rec["settings_set"] = sorted(self.spec.settings)
        return rec

    def server_major(self) -> int:
        """The server's major version (asked now)."""
        with self.connect(what="reading its version", autocommit=True) as conn:
            return conn.info.server_version // 10000

    def destroy(self, obs: Observed, *, volumes: bool) -> list[str]:
        return [f"kept database {self.target.database} at {self.target.netloc}: this step only connects to it (a "
                f"server that a step of this plan runs is that step's to remove)"]


# --- PostgreSQL client tools for the backup step ------------------------------------------------

def host_major(tool: str = "pg_dump") -> int | None:
    """The major version of the host's ``tool`` (None when there is none)."""
    path = shutil.which(tool)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


class _ProcessStream:
    """A host process's output as (stdout, stderr) chunks, as Docker's exec streams give them;
    ``close`` kills the process (the backup's watchdog uses it)."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env)
        self.errors = bytearray()
        self._reader = threading.Thread(target=self._read_errors, daemon=True)
        self._reader.start()

    def _read_errors(self) -> None:
        while chunk := self.proc.stderr.read(4096):
            if len(self.errors) < 65536:
                self.errors += chunk

    def __iter__(self):
        while chunk := self.proc.stdout.read1(1 << 16):
            yield chunk, None
        self._reader.join(30)
        if self.errors:
            yield None, bytes(self.errors)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def exit_code(self) -> int:
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class HostClient:
    """The host's PostgreSQL client tools, connected through libpq's environment."""
    where = "the host's client"

    def __init__(self, env: dict[str, str]):
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env = {**base, **env}

    def stream(self, cmd: list[str]):
        proc = _ProcessStream(cmd, self.env)
        return proc, proc.exit_code

    @contextlib.contextmanager
    def file(self, path: Path) -> Iterator[str]:
        yield str(path)


class ExecClient:
    """The client tools inside a container (the database's own, a drill's, or a throwaway client)."""

    def __init__(self, engine, container_id: str, name: str, env: dict[str, str] | None = None):
        self.engine, self.id, self.name, self.env = engine, container_id, name, env
        self.where = f"container {name}"

    def stream(self, cmd: list[str]):
        return self.engine.exec_stream(self.id, self.name, cmd, env=self.env)

    @contextlib.contextmanager
    def file(self, path: Path, inside: str = "/tmp/orchestrate-restore") -> Iterator[str]:
        """Copy a host file into the container for the block; removed after it."""
        self.engine.exec(self.id, self.name, ["mkdir", "-p", inside])
        try:
            self.engine.put_file(self.id, self.name, inside, path)
            yield f"{inside}/{path.name}"
        finally:
            self.engine.exec(self.id, self.name, ["rm", "-rf", inside])


def choose_client(db: Database, major: int) -> tuple[str, str | None]:
    """("host", None) or ("container", image): where pg_dump/pg_restore run for a server of
    ``major``. Raises with what to do when neither can."""
    mode = db.spec.client
    have = host_major()
    if mode in ("auto", "host") and have == major:
        return "host", None
    if mode == "host":
        raise StepFailed(f"client: host, but the host's pg_dump is {f'PostgreSQL {have}' if have else 'missing'} "
                         f"and the server runs PostgreSQL {major}",
                         hint=f"install the PostgreSQL {major} client (postgresql-client-{major}), or set client: "
                              f"container with client_image: postgres:{major}")
    image = db.spec.client_image or f"postgres:{major}"
    return "container", image


@contextlib.contextmanager
def pg_client(db: Database, engine, *, plan: str, labels: dict[str, str], progress=lambda m: None) -> Iterator[Any]:
    """The client tools for ``db``: the host's when their major version is the server's, or a
    throwaway container of the client image (removed whatever happens; host networking when the
    server is on this machine's loopback, Docker's default network otherwise)."""
    major = db.server_major()
    kind, image = choose_client(db, major)
    env = db.libpq_env()
    if kind == "host":
        yield HostClient(env)
        return
    from ..docker_engine import ContainerSpec
    from ..throwaway import OWNER_LABEL, PURPOSE_LABEL, owner
    if engine.image(image) is None:
        engine.pull(image)
    name = f"{plan}-client-{uuid.uuid4().hex[:8]}"
    cid = None
    try:
        cid = engine.create_container(ContainerSpec(
            name=name, image=image, command=["sleep", "infinity"], env={},
            labels={**extra_labels(), **labels, PURPOSE_LABEL: "client", OWNER_LABEL: owner()},
            ports=[], volumes=[], restart=("no", 0), network="host" if db.target.loopback and not getattr(engine, "remote", False) else None))
        engine.start(cid, name)
        progress(f"running the PostgreSQL {major} client in a throwaway container of {image}")
        # the certificates the connection needs, at fixed paths inside
        for key, var in (("sslrootcert", "PGSSLROOTCERT"), ("sslcert", "PGSSLCERT"), ("sslkey", "PGSSLKEY")):
            path = db._file(key)
            if path not in (None, "system"):
                inside = f"{CLIENT_DIR}/{key}"
                engine.put_bytes(cid, name, inside, Path(path).read_bytes(), mode=0o600)
                env[var] = inside
        yield ExecClient(engine, cid, name, env)
    finally:
        if cid is not None:
            engine.remove_container(cid, name, throwaway=True)
