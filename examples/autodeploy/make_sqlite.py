"""Write the SQLite-era database of the autodeploy application, deterministically.

    python3 -m examples.autodeploy.make_sqlite deployment_platform.db --rows 100000

The schema is what the application created on SQLite before the move (SQLAlchemy's SQLite DDL:
BOOLEAN, DATETIME, JSON and VARCHAR are only names there), and the values are what such a
database really holds: booleans as 0/1, timestamps as text (SQLAlchemy's
``YYYY-MM-DD HH:MM:SS.ffffff`` and SQLite's own ``CURRENT_TIMESTAMP`` form), JSON as text, NULLs
in the optional columns, log messages from one line to multi-line stack traces. The same
arguments always write the same bytes of data (``--seed`` changes them).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

SCHEMA = """
CREATE TABLE tenants (
    id INTEGER NOT NULL,
    name VARCHAR(100) NOT NULL,
    slug VARCHAR(100) NOT NULL,
    contact_email VARCHAR(255),
    is_active BOOLEAN DEFAULT 1 NOT NULL,
    created_at DATETIME DEFAULT (CURRENT_TIMESTAMP) NOT NULL,
    plan_tier VARCHAR(20) DEFAULT 'free' NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (name),
    UNIQUE (slug)
);
CREATE TABLE deployments (
    id INTEGER NOT NULL,
    tenant_id INTEGER NOT NULL,
    name VARCHAR(200) NOT NULL,
    status VARCHAR(20) DEFAULT 'pending' NOT NULL,
    auto_deploy BOOLEAN DEFAULT 0 NOT NULL,
    is_production BOOLEAN DEFAULT 0 NOT NULL,
    settings JSON,
    replicas INTEGER DEFAULT 1 NOT NULL,
    created_at DATETIME DEFAULT (CURRENT_TIMESTAMP) NOT NULL,
    updated_at DATETIME,
    last_deployed_at DATETIME,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id) ON DELETE CASCADE
);
CREATE INDEX ix_deployments_tenant_id ON deployments (tenant_id);
CREATE TABLE deployment_logs (
    id INTEGER NOT NULL,
    deployment_id INTEGER NOT NULL,
    level VARCHAR(10) DEFAULT 'INFO' NOT NULL,
    message TEXT NOT NULL,
    created_at DATETIME DEFAULT (CURRENT_TIMESTAMP) NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(deployment_id) REFERENCES deployments (id) ON DELETE CASCADE
);
CREATE INDEX ix_deployment_logs_deployment_id_created_at ON deployment_logs (deployment_id, created_at);
"""

EPOCH = datetime(2024, 3, 1, 8, 0, 0)
STATUSES = ["pending", "running", "succeeded", "failed", "rolled_back"]
LEVELS = ["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"]
WORDS = ("build image push registry pull layer deploy rollout replica health check container "
         "service ingress certificate migrate database cache warm restart scale node").split()


def _ts(rng: random.Random, start: datetime, span_days: int, sqlite_form: bool = False) -> str:
    moment = start + timedelta(seconds=rng.randrange(span_days * 86400), microseconds=rng.randrange(1_000_000))
    if sqlite_form:                       # CURRENT_TIMESTAMP: no fraction
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")   # SQLAlchemy's SQLite DATETIME storage


def _message(rng: random.Random, i: int) -> str:
    roll = rng.random()
    if roll < 0.02:   # a stack trace: the large text of a real log table
        frames = "\n".join(f'  File "/app/deploy/{rng.choice(WORDS)}.py", line {rng.randrange(1, 900)}, in '
                           f"{rng.choice(WORDS)}_{rng.choice(WORDS)}" for _ in range(rng.randrange(5, 25)))
        return f"Traceback (most recent call last):\n{frames}\nRuntimeError: {rng.choice(WORDS)} failed (attempt {i % 7})"
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 14)))
    return f"step {i % 40}: {words}"


def tenants(rng: random.Random, count: int):
    for i in range(1, count + 1):
        yield (i, f"Tenant {i:04d}", f"tenant-{i:04d}",
               None if rng.random() < 0.2 else f"ops{i}@tenant{i}.example",
               0 if rng.random() < 0.1 else 1,
               _ts(rng, EPOCH, 30, sqlite_form=rng.random() < 0.5),
               rng.choice(["free", "free", "team", "enterprise"]))


def deployments(rng: random.Random, count: int, tenant_count: int):
    for i in range(1, count + 1):
        created = _ts(rng, EPOCH + timedelta(days=30), 60)
        settings = None if rng.random() < 0.15 else json.dumps(
            {"region": rng.choice(["eu-west-1", "us-east-1", "ap-south-1"]), "cpu": rng.choice([0.5, 1, 2]),
             "env": {"LOG_LEVEL": rng.choice(LEVELS), "FEATURES": rng.sample(WORDS, 3)}}, sort_keys=True)
        deployed = None if rng.random() < 0.3 else _ts(rng, EPOCH + timedelta(days=90), 30)
        updated = None if rng.random() < 0.4 else _ts(rng, EPOCH + timedelta(days=90), 30)
        yield (i, rng.randrange(1, tenant_count + 1), f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i}",
               rng.choice(STATUSES), rng.randrange(2), 1 if rng.random() < 0.25 else 0, settings,
               rng.randrange(1, 6), created, updated, deployed)


def logs(rng: random.Random, count: int, deployment_count: int):
    for i in range(1, count + 1):
        yield (i, rng.randrange(1, deployment_count + 1), rng.choice(LEVELS), _message(rng, i),
               _ts(rng, EPOCH + timedelta(days=90), 120))


def write(path: Path, rows: int, *, seed: int = 42, tenant_count: int | None = None,
          deployment_count: int | None = None) -> dict[str, int]:
    """Write the database to ``path`` (which must not exist); returns the row count per table."""
    tenant_count = tenant_count or max(3, min(200, rows // 5000 + 3))
    deployment_count = deployment_count or max(5, min(20000, rows // 50 + 5))
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    try:
        conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        conn.executemany("INSERT INTO tenants VALUES (?,?,?,?,?,?,?)", tenants(rng, tenant_count))
        conn.executemany("INSERT INTO deployments VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         deployments(rng, deployment_count, tenant_count))
        conn.executemany("INSERT INTO deployment_logs VALUES (?,?,?,?,?)", logs(rng, rows, deployment_count))
        conn.commit()
    finally:
        conn.close()
    return {"tenants": tenant_count, "deployments": deployment_count, "deployment_logs": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path, help="the SQLite file to write")
    ap.add_argument("--rows", type=int, default=10_000, help="rows of deployment_logs (default 10000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--force", action="store_true", help="replace the file if it exists")
    args = ap.parse_args(argv)
    if args.path.exists():
        if not args.force:
            print(f"error: {args.path} exists; pass --force to replace it", file=sys.stderr)
            return 1
        args.path.unlink()
    args.path.parent.mkdir(parents=True, exist_ok=True)
    counts = write(args.path, args.rows, seed=args.seed)
    print(f"wrote {args.path}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
