"""kill -9 of copy-data at seeded moments: what a crash interrupts, the next apply redoes.

Each case starts an apply of a copy-data + verify plan as its own process, reads its -v output,
and kills it (SIGKILL) a seeded few milliseconds after the n-th line of one phase of the load
(the first statements, COPY, the index rebuild, the sequences, the foreign keys, the checksums,
the commit's checkpoint), with the source unchanged since the last copy or changed (a table
edited, rows added to another). After each kill: the next apply exits 0, verify passes, every
table holds exactly the source's row count and no id twice.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from examples.autodeploy.make_sqlite import write as make_reference_db
from tests.integration.test_copy_data import TABLES, migrate, plan_file, rows, server  # noqa: F401

pytestmark = pytest.mark.integration

# phases of a table's load as -v names them, each with how many times it appears in one load of
# the three reference tables (tenants, deployments, deployment_logs)
# phases of a load as -v names them, each with how often it shows at least in one load (the
# reference tables, first copied or reloaded after a change)
PHASES = [
    ("sql: ALTER TABLE", 3),         # foreign keys set aside (early), then put back (late)
    ("sql: TRUNCATE", 1),            # only when reloading: the source changed
    ("sql: COPY", 2),
    ("rows in", 2),                  # a table's COPY done
    ("sql: CREATE INDEX", 1),        # the index rebuild
    ("sql: SELECT setval", 2),       # the sequences
    ("indexes and sequences in", 2),
    ("foreign keys checked in", 2),
    ("checksums in", 2),             # the fingerprints, just before the checkpoint and COMMIT
]
SEEDS = range(20)


@pytest.fixture(scope="module")
def migrated(server):  # noqa: F811
    """A database at the migrations' head, to clone for each case (CREATE DATABASE ... TEMPLATE)."""
    name = server.create()
    migrate(server.url(name))
    return name


def clone(server, template: str) -> str:  # noqa: F811
    import uuid
    name = "k" + uuid.uuid4().hex[:10]
    rows(server.url("postgres"), f"CREATE DATABASE {name} TEMPLATE {template}")
    return server.url(name)


def kill_point(seed: int) -> tuple[str, int, float, bool]:
    rng = random.Random(seed)
    phase, times = PHASES[seed % len(PHASES)]
    return phase, rng.randint(1, times), rng.choice([0, 0, 0.002, 0.01, 0.03]), bool(seed % 2) or "TRUNCATE" in phase


def change_source(source, seed: int) -> None:
    with sqlite3.connect(source) as src:
        src.execute("UPDATE tenants SET name = name || ?", (f"-{seed}",))
        top = src.execute("SELECT max(id) FROM deployment_logs").fetchone()[0]
        src.executemany("INSERT INTO deployment_logs (id, deployment_id, level, message, created_at) "
                        "VALUES (?, 1, 'INFO', 'added', '2024-06-01 10:00:00')",
                        [(top + i,) for i in range(1, 40 + seed)])


def run_killed(plan, phase: str, nth: int, delay: float) -> tuple[bool, str]:
    """Apply in a process of its own, killed after the nth line holding ``phase``: (killed, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "apply", str(plan.path), "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen, out = 0, []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        out.append(line)
        if phase in line and "orchestrate_verify" not in line:
            seen += 1
            if seen == nth:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait()
    proc.stdout.close()
    return proc.returncode == -signal.SIGKILL, "".join(out)


@pytest.mark.parametrize("seed", SEEDS)
def test_copy_data_killed_at_a_seeded_moment_is_redone_by_the_next_apply(server, migrated, tmp_path, seed):  # noqa: F811
    phase, nth, delay, changed = kill_point(seed)
    source = tmp_path / "app.db"
    make_reference_db(source, 2000, seed=seed)
    url = clone(server, migrated)
    plan = plan_file(tmp_path, source, url, verify=True)
    if changed:
        code, out = plan.run("apply")
        assert code == 0, out
        change_source(source, seed)
    killed, out = run_killed(plan, phase, nth, delay)
    assert killed, f"the apply ended before {phase!r} #{nth}:\n{out}"
    code, out = plan.run("apply")
    assert code == 0, f"kill at {phase!r} #{nth} (+{delay}s, source {'changed' if changed else 'unchanged'}):\n{out}"
    code, out = plan.run("verify")
    assert code == 0, out
    with sqlite3.connect(source) as src:
        for table in TABLES:
            expected = src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert rows(url, f"SELECT count(*), count(DISTINCT id) FROM {table}") == [(expected, expected)], table
    assert plan.run("plan", "--detailed-exitcode")[0] == 0
