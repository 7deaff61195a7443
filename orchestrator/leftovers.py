"""What an interrupted run of a plan left behind, removed by the next run that holds the plan's lock.

A ``kill -9`` can leave: a half-written dump (``.<plan>-<time>.dump.partial`` in a backups folder),
the temporary file of an atomic write (``.<name>.<random>.tmp`` next to the lockfile, the secrets
file or a rendered file), a throwaway container and its volume (``<plan>-<purpose>-<tag>``) and a
dump copied into the database container for a restore. Each is found by its exact name pattern
(in Docker also by the plan's label, the throwaway label and an owner process that has ended),
never anything else, and only while the plan's lock is held, so never while another run of the
plan is at work.
"""

from __future__ import annotations

import os
from pathlib import Path

from .docker_engine import Engine
from .errors import DockerError, OrchestrateError
from .fsutil import temp_files
from .lockfile import Lockfile
from .plan import Context, Plan, render_step
from .secrets import secrets_path
from .steps.backup import BackupSpec, partials, remove_restore_copies
from .throwaway import remove_leftovers

DOCKER_STEPS = ("db-container", "container", "image", "network")


def backup_folders(plan: Plan, lock: Lockfile, ctx: Context) -> set[Path]:
    """Where this plan's backups are written: each backup step's folder (when it can be rendered
    before anything runs), the default one if the plan has no backup step, and every folder a
    recorded backup is in."""
    folders = set()
    decls = [s for s in plan.steps if s.type == "backup"]
    if not decls:
        folders.add(plan.resolve(BackupSpec().directory))
    for decl in decls:
        try:
            folders.add(plan.resolve(render_step(decl, plan, ctx).directory))
        except OrchestrateError:   # it uses outputs not known yet: the recorded folders below
            pass
    for entry in lock.data["steps"].values():
        if entry.get("type") == "backup":
            folders |= {plan.resolve(b["path"]).parent for b in (entry.get("observed") or {}).get("backups") or []}
    return folders


def leftover_files(plan: Plan, lock: Lockfile, ctx: Context) -> list[Path]:
    files = temp_files(plan.lock_path) + temp_files(secrets_path(plan.path))
    for entry in lock.data["steps"].values():
        if entry.get("type") == "render":
            for dest in (entry.get("observed") or {}).get("files") or {}:
                files += temp_files(plan.resolve(dest))
    for folder in sorted(backup_folders(plan, lock, ctx)):
        files += partials(folder, plan.name)
    return files


def clean(plan: Plan, lock: Lockfile, engine: Engine, ctx: Context) -> str | None:
    """Remove what interrupted runs of ``plan`` left; the line that says so (None: nothing was left).
    The caller holds the plan's lock."""
    removed = []
    for path in leftover_files(plan, lock, ctx):
        try:
            path.unlink()
        except OSError:   # gone already, or its folder became read-only: left for a later run
            continue
        removed.append(os.path.relpath(path, plan.base_dir))
    if any(s.type in DOCKER_STEPS or (s.type == "migrate" and "job" in (s.body or {})) for s in plan.steps):
        removed += remove_leftovers(engine, plan.name)
        removed += remove_restore_copies(lock, engine)
    elif any(s.type == "database" for s in plan.steps):
        # an external database's backups may run pg_dump and drills in throwaway containers;
        # a machine without Docker never made any
        try:
            removed += remove_leftovers(engine, plan.name)
        except DockerError:
            pass
    return f"removed what an interrupted run left: {', '.join(removed)}" if removed else None
