"""A PostgreSQL container set up the way managed services (RDS, Cloud SQL) are, for the tests of
the database step.

- TLS only: pg_hba.conf has ``hostssl`` lines and no ``host`` line, so a client that does not
  encrypt is refused by the server itself;
- a CA and a server certificate generated here (openssl), the server's with the right
  subjectAltName (IP 127.0.0.1 and DNS localhost), so ``sslmode=verify-full`` passes against
  127.0.0.1 and fails against any other name;
- the plan's role is not a superuser: the fixture creates it (as the superuser, inside the
  container's initialisation) as the owner of its database, and the plan only gets that role.

The container comes from the local test image, carries the test session's label, is published on
127.0.0.1 with a port Docker picks, and is removed with its data volume (named and labelled like
it) whatever happens.
The certificates live in a temporary directory.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

INIT_SCRIPT = r"""#!/bin/bash
# Runs once, as postgres, while the entrypoint's temporary server (socket only) is up.
set -euo pipefail
cp /tls-src/server.crt /tls-src/server.key "$PGDATA"/
chmod 600 "$PGDATA/server.key"
# A managed service's rules: TLS for every network client, no unencrypted line at all.
# (The local socket stays trusted for the container's own health check, as on a managed host
# nobody outside has it.)
cat > "$PGDATA/pg_hba.conf" <<'EOF'
local   all all                 trust
hostssl all all 0.0.0.0/0       scram-sha-256
hostssl all all ::/0            scram-sha-256
EOF
cat >> "$PGDATA/postgresql.conf" <<'EOF'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
psql -v ON_ERROR_STOP=1 -X -q --dbname postgres --set pw="$APP_PASSWORD" --set role="$APP_USER" --set db="$APP_DB" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE :"db" OWNER :"role";
SQL
"""


def make_certificates(directory: Path, *, names: tuple[str, ...] = ("localhost",),
                      ips: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, Path]:
    """A CA, and a server key and certificate it signs for ``names`` and ``ips``; returns the paths
    (ca.crt, server.crt, server.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage=serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=orchestrate test CA",
            "-keyout", str(ca_key), "-out", str(ca_crt))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}", "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return {"ca": ca_crt, "cert": crt, "key": key}


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class ManagedPg:
    container: str
    port: int
    ca: Path                      # the CA certificate a client needs for verify-full
    user: str                     # the owner role (not a superuser)
    password: str
    database: str
    superuser_password: str       # for the test's own checks only; never given to a plan

    host = "127.0.0.1"

    @property
    def url(self) -> str:
        """The database step's url: no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def connect(self, *, superuser: bool = False, **kwargs):
        import psycopg
        return psycopg.connect(host=self.host, port=self.port, dbname=self.database,
                               user="postgres" if superuser else self.user,
                               password=self.superuser_password if superuser else self.password,
                               sslmode="verify-full", sslrootcert=str(self.ca), connect_timeout=5,
                               autocommit=True, **kwargs)

    def sql(self, query: str, *params, superuser: bool = False):
        with self.connect(superuser=superuser) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def managed_postgres(client, image: str, tmp: Path, *, labels: dict[str, str], prefix: str = "managed",
                     user: str = "app_owner", database: str = "appdb") -> Iterator[ManagedPg]:
    """The TLS-only, non-superuser PostgreSQL described above; removed whatever happens."""
    certs = make_certificates(tmp / "tls")
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    su_password, password = secrets.token_urlsafe(18), "Own-" + secrets.token_urlsafe(18)
    container = volume = None
    try:
        # a named, labelled data volume (not the image's anonymous one): a cleanup by label finds it
        volume = client.volumes.create(name, labels={**labels, "orchestrate.test.managed": "yes"})
        container = client.containers.create(
            image, command=["postgres"], name=name, labels={**labels, "orchestrate.test.managed": "yes"},
            environment={"POSTGRES_PASSWORD": su_password, "APP_USER": user, "APP_PASSWORD": password,
                         "APP_DB": database},
            ports={"5432/tcp": ("127.0.0.1", None)},
            volumes={name: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            healthcheck={"test": ["CMD-SHELL", "pg_isready -U postgres -d postgres"], "interval": 500_000_000,
                         "timeout": 5_000_000_000, "retries": 240})
        container.put_archive("/", _tar({
            "docker-entrypoint-initdb.d/50-managed.sh": (INIT_SCRIPT.encode(), 0o755),
            "tls-src/server.crt": (certs["cert"].read_bytes(), 0o644),
            "tls-src/server.key": (certs["key"].read_bytes(), 0o644),
        }))
        container.start()
        deadline = time.monotonic() + 120
        while True:
            container.reload()
            state = container.attrs["State"]
            if (state.get("Health") or {}).get("Status") == "healthy":
                break
            if state.get("Status") in ("exited", "dead") or time.monotonic() > deadline:
                raise RuntimeError(f"managed PostgreSQL {name} did not start: "
                                   f"{container.logs(tail=30).decode(errors='replace')}")
            time.sleep(0.25)
        port = int(container.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"])
        server = ManagedPg(name, port, certs["ca"], user, password, database, su_password)
        _wait_tls(server)
        yield server
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
        if volume is not None:
            with contextlib.suppress(Exception):
                volume.remove(force=True)


def _wait_tls(server: ManagedPg, seconds: float = 30) -> None:
    """The health check sees the socket; wait until the published port takes a TLS connection."""
    import psycopg
    deadline = time.monotonic() + seconds
    while True:
        try:
            server.connect().close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
