"""Saved plans: ``orchestrate plan PLAN --out FILE`` and ``orchestrate apply FILE``, as Terraform
does. A saved plan records, per step, a fingerprint of everything observed (the identities the
step records plus its changes) and the changes themselves; applying it first observes again
(read-only) and refuses, changing nothing, when anything differs: a stale plan. It holds no secret
in clear (changes are redacted, observations only as digests).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import OrchestrateError
from .executor import RunResult
from .fsutil import atomic_write
from .lockfile import digest
from .redact import REDACTED, redact_obj

KIND = "orchestrate-saved-plan"
FORMAT = 1


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def is_saved(path: str | Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lstrip().startswith("{") and f'"{KIND}"' in head


def _header(path: Path, plan) -> dict[str, Any]:
    """What every saved plan holds: where its plan and variables came from, as digests."""
    rel = lambda p: os.path.relpath(Path(p).resolve(), path.parent)  # noqa: E731
    return {
        "kind": KIND,
        "format_version": FORMAT,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "plan": {"name": plan.name, "file": rel(plan.path), "digest": file_digest(plan.path)},
        "var_files": [{"file": rel(f), "digest": file_digest(f)} for f in plan.var_files],
        "extra_vars": dict(plan.overrides),
    }


def _save(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    doc = redact_obj(doc)
    atomic_write(path, json.dumps(doc, indent=2) + "\n", mode=0o644)
    return doc


def write(path: str | Path, result: RunResult) -> dict[str, Any]:
    path = Path(path).resolve()
    steps = [{"name": r.name, "type": r.type, "action": r.action.key, "fingerprint": r.fingerprint,
              "known_after_apply": r.diff.after_apply, "changes": [c.to_dict() for c in r.diff.changes]}
             for r in result.reports]
    return _save(path, {**_header(path, result.plan), "changes_pending": result.changes_pending,
                        "fingerprint": digest([s["fingerprint"] for s in steps]), "steps": steps})


def write_kubernetes(path: str | Path, plan, namespace: str, objects: list[dict[str, Any]], *,
                     namespace_option: str | None = None) -> dict[str, Any]:
    """A plan for --target kubernetes: per object its key, what apply would do, the digest of the
    object rendered (a Secret's values only as a salted hash) and what the cluster showed of it;
    ``namespace``: where the objects go; ``namespace_option``: --namespace, if given."""
    path = Path(path).resolve()
    return _save(path, {**_header(path, plan), "target": "kubernetes", "namespace": namespace,
                        "namespace_option": namespace_option,
                        "changes_pending": any(o["action"] != "no change" for o in objects), "objects": objects})


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OrchestrateError(f"{path}: not a readable saved plan ({exc})") from None
    if doc.get("kind") != KIND or doc.get("format_version") != FORMAT:
        raise OrchestrateError(f"{path}: not a saved plan of this version of orchestrate",
                               hint="make a new one: orchestrate plan PLAN --out FILE")
    base = path.resolve().parent
    doc["_plan_path"] = base / doc["plan"]["file"]
    doc["_var_files"] = [base / v["file"] for v in doc["var_files"]]
    return doc


def check_inputs(doc: dict[str, Any]) -> None:
    """The plan file and the variable files must be the ones the plan was made from."""
    stale = []
    if not doc["_plan_path"].is_file() or file_digest(doc["_plan_path"]) != doc["plan"]["digest"]:
        stale.append(f"the plan file {doc['_plan_path']} changed")
    for path, entry in zip(doc["_var_files"], doc["var_files"]):
        if not path.is_file() or file_digest(path) != entry["digest"]:
            stale.append(f"the variable file {path} changed")
    if any(v == REDACTED for v in doc["extra_vars"].values()):
        stale.append("a -e value looked like a secret and was not saved; pass it with the plan, not with -e")
    if stale:
        raise OrchestrateError("the saved plan is stale: " + "; ".join(stale) + "; nothing was changed",
                               hint="make a new plan (orchestrate plan PLAN --out FILE) and review it")


def differences(doc: dict[str, Any], fresh: RunResult) -> list[str]:
    """What differs between the saved plan and the state observed now (read-only)."""
    saved = {s["name"]: s for s in doc["steps"]}
    out = []
    for r in fresh.reports:
        s = saved.get(r.name)
        if s is None:
            out.append(f"step {r.name} is new")
        elif s["fingerprint"] != r.fingerprint:
            now = [f"{c.action.key} {c.field}" for c in r.diff.changes]
            then = [f"{c['action']} {c['field']}" for c in s["changes"]]
            what = f" (planned: {', '.join(then) or 'no change'}; now: {', '.join(now) or 'no change'})" \
                if now != then else " (what it observes changed since)"
            out.append(f"step {r.name}{what}")
    return out


def expected_changes(doc: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    return {s["name"]: {(c["action"], c["field"]) for c in s["changes"]} for s in doc["steps"]}


def known_after_apply(doc: dict[str, Any]) -> set[str]:
    """Steps whose changes the saved plan could only show as "known after apply": they depended on
    earlier steps' changes. Applying the saved plan lets them create and update (never recreate
    or destroy) what the plan could not see."""
    return {s["name"] for s in doc["steps"] if s.get("known_after_apply")}
