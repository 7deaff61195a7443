"""The backup step: pg_dump through the Docker API, retention, restore and restore drills.

``pg_dump`` runs inside the database container (its version matches the server; the host needs
no PostgreSQL client) and its output streams into a file on the host, hashed as it is written:
memory stays flat. The dump reads a snapshot exported by a transaction that, at the same moment,
counts each table's rows and takes its fingerprint, so what the lockfile records describes the
dump exactly. Every backup is recorded (path, size, sha256, counts, fingerprints); retention
removes only files this plan recorded.

Restore checks a file's sha256 against the lockfile before anything happens, restores it in one
transaction and checks the restored row counts. A drill restores into a throwaway container with
a temporary volume, compares counts and fingerprints, and removes both whatever happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..changes import Action, Change, Diff
from ..errors import OrchestrateError, StepFailed
from ..fields import Duration, RelPath
from ..lockfile import Lockfile
from ..redact import redact
from ..plan import Strict
from .base import Resource, libpq_url

STAMP = "%Y%m%dT%H%M%SZ"
PARTIAL = ".partial"
RESTORE_DIR = "/tmp/orchestrate-restore"   # where a restore copies the dump inside the container
# Bounds. pg_dump streams without pause (a 1,000,000-row dump sends data every few milliseconds),
# so silence this long means it is stuck; a restore is silent while it works, so it gets a time
# that grows with the dump (ten times what a 1,000,000-row restore takes on a slow machine).
DUMP_IDLE = 300.0
LOCK_WAIT = "120s"   # pg_dump waits this long for a table that another session locks exclusively
RESTORE_BASE, RESTORE_PER_MB = 600.0, 2.0


class BackupSpec(Strict):
    directory: RelPath = Field("backups", description="where dumps are written (relative to the plan root)")
    format: Literal["custom", "plain"] = Field("custom", description="pg_dump's custom format, or plain SQL")
    keep: int | None = Field(None, ge=1, description="keep this many of this plan's backups (newest)")
    max_age: Duration | None = Field(None, description="remove this plan's backups older than this (e.g. 7d)")
    fingerprints: bool = Field(False, description="also record a fingerprint of every table's content, so "
                                                  "restore and drills check content, not only row counts "
                                                  "(about 0.3 s per million rows)")
    when: Literal["always", "changed", "daily"] = Field(
        "changed", description="in apply: always; only if an earlier step changed something; or if the "
                               "newest backup is older than a day")


@dataclass
class Observed:
    backups: list[dict] = field(default_factory=list)    # recorded, oldest first
    missing: list[str] = field(default_factory=list)     # recorded files no longer on disk
    due: str | None = None                               # why a backup would be taken now
    prune: list[dict] = field(default_factory=list)
    owed: list[str] = field(default_factory=list)        # steps whose change no backup covers yet


def _age(record: dict, now: datetime) -> timedelta:
    return now - datetime.strptime(record["created"], STAMP).replace(tzinfo=timezone.utc)


def plan_retention(backups: list[dict], *, keep: int | None, max_age: float | None, now: datetime,
                   adding: bool) -> list[dict]:
    """Which recorded backups retention removes (a backup about to be taken counts). Pure."""
    ordered = list(backups)
    doomed = []
    if keep is not None:
        room = keep - (1 if adding else 0)
        doomed += ordered[:max(0, len(ordered) - room)]
    if max_age is not None:
        doomed += [b for b in ordered if _age(b, now).total_seconds() > max_age and b not in doomed]
    return doomed


def partial_path(path: Path) -> Path:
    """Where a dump is written until it is complete (hidden; renamed into place at the end)."""
    return path.with_name(f".{path.name}{PARTIAL}")


def partials(directory: Path, plan: str) -> list[Path]:
    """The half-written dumps of ``plan`` that killed backups left in ``directory``."""
    pattern = re.compile(rf"\.{re.escape(plan)}-\d{{8}}T\d{{6}}Z(-\d+)?\.(dump|sql){re.escape(PARTIAL)}")
    try:
        return sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name) and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []


def owe(lock: Lockfile, step: str, because: str) -> None:
    """Record that backup step ``step`` owes a backup because step ``because`` is changing. It stays
    owed (in the lockfile) until a backup is taken, so an apply killed or failed before its backup
    step leaves it to the next apply."""
    entry = lock.step(step) or {"type": "backup"}
    owed = entry.setdefault("observed", {}).setdefault("owed", [])
    if because not in owed:
        owed.append(because)
    lock.set_step(step, entry)


def remove_restore_copies(lock: Lockfile, engine) -> list[str]:
    """A restore killed after copying its dump into the database container left the copy there
    (the lockfile names the container): remove it. A stopped container keeps it until it runs."""
    removed = []
    for entry in lock.data["steps"].values():
        container = (entry.get("observed") or {}).get("loading") if entry.get("type") == "backup" else None
        if not container:
            continue
        info = engine.container(container)
        if info is not None and info["State"].get("Status") != "running":
            continue
        if info is not None and engine.exec(info["Id"], container, ["rm", "-r", RESTORE_DIR])[0] == 0:
            removed.append(f"{RESTORE_DIR} in container {container}")
        del entry["observed"]["loading"]
        lock.save()
    return removed


def watched(chunks, what: str, *, idle: float | None = None, total: float | None = None):
    """Yield from a Docker stream; when nothing comes for ``idle`` seconds, or it lasts longer than
    ``total``, close it and fail, saying what was waited for and how long."""
    start = last = time.monotonic()
    tripped: list[str] = []
    done = threading.Event()

    def watchdog():
        while not done.wait(min(1.0, idle or 1.0, total or 1.0)):
            now = time.monotonic()
            if idle is not None and now - last > idle:
                tripped.append(f"{what} sent nothing for {idle:g}s")
            elif total is not None and now - start > total:
                tripped.append(f"{what} did not finish within {total:g}s")
            else:
                continue
            with contextlib.suppress(Exception):
                chunks.close()
            return

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for chunk in chunks:
            last = time.monotonic()
            yield chunk
    except Exception:
        if not tripped:
            raise
    finally:
        done.set()
        with contextlib.suppress(Exception):
            chunks.close()
    if tripped:
        raise StepFailed(f"{tripped[0]}; gave up waiting", hint="is the database container paused or overloaded? "
                                                              "(docker ps); the next run starts again")


@contextlib.contextmanager
def _writing_into(directory: Path):
    """File-system errors while writing a dump: one sentence naming the folder and the cause."""
    try:
        yield
    except OSError as exc:
        cause = (exc.strerror or str(exc)).lower()
        raise StepFailed(f"cannot write a backup into {directory}: {cause}",
                         hint="make the folder writable or free space there, then run again (an apply "
                              "takes the backup it owes)") from None


def diff_backup(obs: Observed, *, retention_note: str) -> Diff:
    d = Diff()
    if obs.due:
        d.changes.append(Change(Action.CREATE, "backup", None, "a new dump", obs.due))
    if obs.prune:
        d.changes.append(Change(Action.UPDATE, "retention", f"{len(obs.backups)} backups",
                                f"{len(obs.backups) - len(obs.prune) + (1 if obs.due else 0)} backups",
                                f"{retention_note}: removes {', '.join(b['name'] for b in obs.prune)}"))
    for name in obs.missing:
        d.warnings.append(f"backup {name} is recorded but its file is gone")
    d.details["backups"] = [{k: b[k] for k in ("name", "size", "created")} for b in obs.backups]
    return d


class Backup(Resource):
    """pg_dump of the plan's database into files on the host, with retention."""
    type = "backup"
    Spec = BackupSpec
    spec: BackupSpec

    # where and what --------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self.rc.plan.resolve(self.spec.directory)

    def _db(self):
        db = self.rc.earlier_database(self.step)
        if db is None:
            raise self.rc.plan.smap.error(self.step.path, "a backup needs a db-container or database step before it")
        return db

    @contextlib.contextmanager
    def _client(self, db, *, failure=StepFailed):
        """Where pg_dump and pg_restore run: inside the database's container (its version is the
        server's), or, for an external database, the host's client of the server's major version
        or a throwaway container of its client image."""
        from .database import ExecClient, pg_client
        if db.type == "database":
            with pg_client(db, self.rc.engine, plan=self.rc.plan.name, labels=self.labels,
                           progress=self.rc.progress) as client:
                yield client
            return
        info = self.rc.engine.container(db.spec.container)
        if info is None or info["State"].get("Status") != "running":
            raise failure(f"container {db.spec.container} is not running",
                          hint="apply the plan first (orchestrate apply)")
        yield ExecClient(self.rc.engine, info["Id"], db.spec.container)

    def check(self) -> None:
        self._db()

    def _entry_observed(self) -> dict:
        return self.rc.lock.step(self.step.name).get("observed") or {}

    def recorded_backups(self) -> list[dict]:
        return list(self._entry_observed().get("backups") or [])

    # observe, diff, apply --------------------------------------------------------------------

    def observe(self) -> Observed:
        backups = self.recorded_backups()
        obs = Observed(backups=backups,
                       missing=[b["name"] for b in backups if not self.rc.plan.resolve(b["path"]).is_file()])
        if self.spec.when == "changed":
            obs.owed = list(self._entry_observed().get("owed") or [])
        now = datetime.now(timezone.utc)
        when = self.spec.when
        if self.rc.options.get("force_backup"):
            obs.due = "asked for"
        elif when == "always":
            obs.due = "when: always"
        elif when == "changed" and self.rc.changed:
            obs.due = f"when: changed, and {', '.join(self.rc.changed)} changed"
        elif when == "changed" and obs.owed:
            obs.due = f"when: changed, owed since an earlier apply in which {', '.join(obs.owed)} changed"
        elif when == "daily":
            newest = backups[-1] if backups else None
            if newest is None:
                obs.due = "when: daily, and there is no backup yet"
            elif _age(newest, now) > timedelta(days=1):
                obs.due = f"when: daily, and the newest backup is from {newest['created']}"
        obs.prune = plan_retention(backups, keep=self.spec.keep, max_age=self.spec.max_age, now=now,
                                   adding=obs.due is not None)
        return obs

    def diff(self, obs: Observed) -> Diff:
        note = " and ".join(x for x in (f"keep {self.spec.keep}" if self.spec.keep else "",
                                        f"max_age {self.spec.max_age:g}s" if self.spec.max_age else "") if x)
        return diff_backup(obs, retention_note=note or "retention")

    def apply(self, obs: Observed, diff: Diff) -> str:
        done = []
        if obs.due:
            record = self.take(obs.due)
            done.append(f"wrote {record['name']} ({record['size'] / 1e6:.1f} MB, sha256 {record['sha256'][:12]})")
        for b in obs.prune:
            path = self.rc.plan.resolve(b["path"])
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._save([r for r in self.recorded_backups() if r["name"] != b["name"]])
            done.append(f"removed {b['name']}")
        return "; ".join(done)

    def _save(self, backups: list[dict]) -> None:
        self.update_observed(backups=backups)

    def outputs(self, obs: Observed | None = None) -> dict[str, Any]:
        backups = self.recorded_backups()
        return {"latest": backups[-1]["path"] if backups else None, "count": len(backups)}

    def record(self, obs: Observed) -> dict[str, Any]:
        return {"backups": self.recorded_backups(), **({"owed": obs.owed} if obs.owed else {})}

    # taking a backup -------------------------------------------------------------------------

    def take(self, reason: str) -> dict:
        """Dump the database now, record it, return the record."""
        import psycopg
        db = self._db()
        out = db.outputs()
        user, dbname = db.login
        if db.type == "db-container":
            info = self.rc.engine.container(db.spec.container)
            if info is None or info["State"].get("Status") != "running":
                raise StepFailed(f"cannot back up: container {db.spec.container} is not running",
                                 hint="apply the plan first (orchestrate apply)")
        with _writing_into(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc)
        ext = "dump" if self.spec.format == "custom" else "sql"
        taken = {b["name"] for b in self.recorded_backups()}
        stem, n = f"{self.rc.plan.name}-{now.strftime(STAMP)}", 1
        name = f"{stem}.{ext}"
        while name in taken or (self.directory / name).exists():   # two backups in one second
            n += 1
            name = f"{stem}-{n}.{ext}"
        path = self.directory / name
        self.rc.progress(f"backing up {out['database']} to {path} ({reason})")
        with self._client(db) as client, psycopg.connect(libpq_url(out["url"]), connect_timeout=5) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
                cmd = ["pg_dump", "-U", user, "-d", dbname, "--no-password", f"--snapshot={snapshot}",
                       f"--format={self.spec.format}", f"--lock-wait-timeout={LOCK_WAIT}"]
                if self.spec.format == "plain":
                    cmd += ["--clean", "--if-exists"]
                # the counts (and fingerprints) are taken in the very snapshot pg_dump reads, while
                # it runs (this connection is the thread's alone until it is joined)
                taken: dict[str, Any] = {}
                worker = threading.Thread(target=_fingerprints_into, args=(conn, taken, self.spec.fingerprints),
                                          daemon=True)
                worker.start()
                try:
                    size, digest = self._stream_to(client, cmd, path)
                finally:
                    worker.join(DUMP_IDLE)
                if worker.is_alive():
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    raise StepFailed(f"counting the tables for the backup record did not finish within "
                                     f"{DUMP_IDLE:g}s after the dump; gave up waiting")
                if "error" in taken:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    raise StepFailed(f"cannot count the tables for the backup record: {taken['error']}")
                counts, prints = taken["result"]
        rel = os.path.relpath(path, self.rc.plan.base_dir)
        record = {"name": name, "path": rel, "size": size, "sha256": digest, "created": now.strftime(STAMP),
                  "format": self.spec.format, "reason": reason, "counts": counts}
        if prints:
            record["fingerprints"] = prints
        self._entry_observed().pop("owed", None)   # whatever changed before is in this backup
        self._save(self.recorded_backups() + [record])
        return record

    def _stream_to(self, client, cmd: list[str], path: Path) -> tuple[int, str]:
        partial = partial_path(path)
        digest = hashlib.sha256()
        size = 0
        errors = bytearray()
        chunks, exit_code = client.stream(cmd)
        fh = None
        try:
            with _writing_into(self.directory):   # dumps hold data: 0600
                fh = open(partial, "wb", opener=lambda p, flags: os.open(p, flags, 0o600))
            for stdout, stderr in watched(chunks, "pg_dump", idle=DUMP_IDLE):
                if stdout:
                    with _writing_into(self.directory):
                        fh.write(stdout)
                    digest.update(stdout)
                    size += len(stdout)
                if stderr and len(errors) < 8192:
                    errors += stderr
            with _writing_into(self.directory):
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
            code = exit_code()
            if code != 0:
                raise StepFailed(f"pg_dump failed (exit {code}) in {client.where}: "
                                 f"{redact(errors.decode(errors='replace')).strip()[:500]}")
            with _writing_into(self.directory):
                os.replace(partial, path)
        finally:
            if fh is not None:   # created: remove it (if that fails too, the next run does)
                with contextlib.suppress(OSError):
                    fh.close()
                with contextlib.suppress(OSError):
                    partial.unlink()
        return size, digest.hexdigest()

    # restore and drill -----------------------------------------------------------------------

    def find(self, which: str) -> dict:
        """A recorded backup: 'latest', a file name or a path; anything else is refused."""
        backups = self.recorded_backups()
        if not backups:
            raise OrchestrateError(f"plan {self.rc.plan.name!r} has recorded no backup",
                                   hint="take one: orchestrate backup PLAN")
        if which == "latest":
            return backups[-1]
        wanted = Path(which).resolve()
        for b in backups:
            if b["name"] == which or self.rc.plan.resolve(b["path"]).resolve() == wanted:
                return b
        raise OrchestrateError(f"{which} is not a backup that this plan recorded; refusing to restore it",
                               hint="orchestrate restore accepts only files listed in the plan's lockfile")

    def check_file(self, record: dict) -> Path:
        path = self.rc.plan.resolve(record["path"])
        if not path.is_file():
            raise OrchestrateError(f"backup {record['name']} is recorded but {path} does not exist")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != record["sha256"]:
            raise OrchestrateError(f"backup {path} is corrupted: its sha256 is {digest.hexdigest()[:16]}..., the "
                                   f"lockfile recorded {record['sha256'][:16]}...; refusing to restore it",
                                   hint="restore another backup (orchestrate restore PLAN --from FILE)")
        return path

    def _load_dump(self, client, user: str, database: str, record: dict, path: Path, *,
                   privileges: bool = True) -> None:
        """Give the client the dump (a copy inside its container) and restore it there, in one
        transaction; bounded by a time that grows with the dump."""
        with client.file(path) as target:
            if record["format"] == "custom":
                cmd = ["pg_restore", "-U", user, "-d", database, "--single-transaction", "--clean", "--if-exists",
                       "--no-owner", "--exit-on-error", target]
                if not privileges:
                    cmd.insert(-1, "--no-privileges")
            else:
                cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-U", user, "-d", database,
                       "-f", target]
            chunks, exit_code = client.stream(cmd)
            output = bytearray()
            for out, err in watched(chunks, f"restoring {record['name']} ({cmd[0]})",
                                    total=RESTORE_BASE + RESTORE_PER_MB * path.stat().st_size / 1e6):
                if len(output) < 8192:
                    output += (out or b"") + (err or b"")
            code = exit_code()
            if code != 0:
                raise StepFailed(f"restoring {record['name']} failed (nothing was changed: one transaction): "
                                 f"{redact(output.decode(errors='replace')).strip()[:500]}")

    def restore(self, record: dict) -> dict[str, int]:
        """Restore a (checked) backup into the plan's database; returns the restored counts."""
        import psycopg
        path = self.check_file(record)
        db = self._db()
        user, dbname = db.login
        with self._client(db, failure=OrchestrateError) as client:
            self.rc.progress(f"restoring {record['name']} into {dbname}")
            if db.type == "db-container":   # a kill leaves the copy in its container: the next run removes it
                self.update_observed(loading=db.spec.container)
            try:
                self._load_dump(client, user, dbname, record, path)
                self._entry_observed().pop("owed", None)   # the database is now what a backup holds
            finally:
                self._entry_observed().pop("loading", None)
                self.rc.lock.save()
        with psycopg.connect(libpq_url(db.outputs()["url"]), connect_timeout=5) as conn:
            counts, prints = table_fingerprints(conn, content=bool(record.get("fingerprints")))
        wrong = [f"{t}: {counts.get(t)} rows (recorded {n})" for t, n in record["counts"].items() if counts.get(t) != n]
        wrong += [f"{t}: content differs from what was recorded" for t, fp in record.get("fingerprints", {}).items()
                  if prints.get(t) != fp and counts.get(t) == record["counts"].get(t)]
        if wrong:
            raise StepFailed("the restored database differs from what was recorded with the backup: " + "; ".join(wrong))
        return counts

    def drill(self, record: dict) -> dict[str, tuple[int, str]]:
        """Restore into a throwaway container with a temporary volume and compare counts and
        fingerprints with the record; the container and volume are removed whatever happens."""
        import psycopg
        from ..throwaway import throwaway_postgres
        from .database import ExecClient
        path = self.check_file(record)
        db = self._db()
        user, dbname = db.login
        image, data_dir = db.throwaway_server()
        if self.rc.engine.image(image) is None:     # an external database's client image
            self.rc.engine.pull(image)
        with throwaway_postgres(self.rc.engine, plan=self.rc.plan.name, purpose="drill", image=image,
                                user=user, database=dbname, data_dir=data_dir,
                                labels={**self.labels, "orchestrate.drill": "yes"},
                                progress=lambda m: self.rc.progress(f"drill: {m}")) as tmp:
            # a managed server's dump may GRANT to roles of the service (rdsadmin, cloudsqlsuperuser)
            # that a throwaway server lacks: a drill checks content, not privileges
            self._load_dump(ExecClient(self.rc.engine, tmp.container_id, tmp.name), tmp.user, tmp.database, record,
                            path, privileges=db.type != "database")
            with psycopg.connect(tmp.url, connect_timeout=5) as conn:
                counts, prints = table_fingerprints(conn, content=bool(record.get("fingerprints")))
        problems = [f"{t}: {counts.get(t)} rows (recorded {n})" for t, n in record["counts"].items() if counts.get(t) != n]
        problems += [f"{t}: content differs from what was recorded" for t, fp in record.get("fingerprints", {}).items()
                     if prints.get(t) != fp and counts.get(t) == record["counts"].get(t)]
        if problems:
            raise StepFailed(f"drill of {record['name']} failed: " + "; ".join(problems))
        return {t: (counts[t], prints.get(t)) for t in record["counts"]}


def _fingerprints_into(conn, taken: dict[str, Any], content: bool) -> None:
    try:
        taken["result"] = table_fingerprints(conn, content=content)
    except Exception as exc:   # reported by the caller, in its thread
        taken["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def table_fingerprints(conn, content: bool = True) -> tuple[dict[str, int], dict[str, str]]:
    """Row count and (``content``) a fingerprint of the content of every table of the current
    schema."""
    from psycopg import sql

    from ..copying.convert import row_hash_sql
    from ..copying.reflect import reflect_target
    counts, prints = {}, {}
    for name, table in sorted(reflect_target(conn).items()):
        if not content:
            counts[name] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0]
            continue
        cols = list(table.columns.values())
        expr = row_hash_sql(cols, [sql.Identifier(c.name).as_string(conn) for c in cols], conn.info.server_version)
        count, total = conn.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}").format(
            sql.SQL(expr), sql.Identifier(name))).fetchone()
        counts[name], prints[name] = count, f"{count}:{total}"
    return counts, prints
