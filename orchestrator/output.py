"""What people and pipelines read: plan listings, apply lines, the recap, JSON documents.

Everything printed goes through :func:`orchestrator.redact.redact`. Colour is used only on a
terminal, never when ``NO_COLOR`` or ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from .changes import Action, StepReport
from .executor import RunResult
from .redact import redact, redact_obj

JSON_FORMAT = 1
_COLOURS = {"green": "32", "yellow": "33", "red": "31", "cyan": "36", "bold": "1", "dim": "2"}
STATUS_COLOUR = {"ok": "green", "changed": "yellow", "failed": "red", "skipped": "dim", "pending": "yellow"}
ACTION_COLOUR = {Action.NONE: "dim", Action.START: "cyan", Action.UPDATE: "yellow",
                 Action.CREATE: "green", Action.RECREATE: "red"}


class Output:
    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False, quiet: bool = False,
                 color: bool | None = None):
        self.stream = stream or sys.stdout
        self.verbose, self.quiet = verbose, quiet
        if color is None:
            color = (hasattr(self.stream, "isatty") and self.stream.isatty()
                     and "NO_COLOR" not in os.environ and not os.environ.get("CI"))
        self.color = color
        self.live = bool(color)          # a terminal: progress redraws one line in place
        self._open = False

    def c(self, text: str, colour: str) -> str:
        return f"\033[{_COLOURS[colour]}m{text}\033[0m" if self.color else text

    def print(self, text: str = "", *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        self._close_live()
        self.stream.write(redact(text) + "\n")
        self.stream.flush()

    def debug(self, text: str) -> None:
        if self.verbose:
            self.print(self.c(f"  . {text}", "dim"))

    def progress(self, text: str) -> None:
        """Long work: one line redrawn in place on a terminal, plain lines otherwise."""
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\033[K" + self.c(f"  ... {redact(text)}", "dim"))
            self.stream.flush()
            self._open = True
        else:
            self.print(f"  ... {text}")

    def _close_live(self) -> None:
        if self._open:
            self.stream.write("\r\033[K")
            self._open = False

    def json(self, doc: dict[str, Any]) -> None:
        self.stream.write(json.dumps(redact_obj(doc), indent=2, sort_keys=False, default=str) + "\n")
        self.stream.flush()


def _step_title(r: StepReport, width: int) -> str:
    return f"{r.name:<{width}} ({r.type})"


def print_plan(out: Output, result: RunResult) -> None:
    width = max((len(r.name) for r in result.reports), default=0)
    out.print(f"Plan {result.plan.name} ({result.plan.path})")
    out.print()
    for r in result.reports:
        action = r.action
        if r.status == "skipped":
            skipped = out.c(f"{'skipped':<15}", "dim")
            out.print(f"  {skipped} {_step_title(r, width)}  ({r.message})")
            continue
        label = out.c(f"{action.label:<15}", ACTION_COLOUR[action])
        out.print(f"  {label} {_step_title(r, width)}")
        for ch in r.diff.changes:
            tail = out.c(f"  ({ch.reason})", "dim") if ch.reason else ""
            if ch.before is None and ch.action is Action.CREATE:
                out.print(f"      + {ch.field}: {ch.after}{tail}")
            else:
                before = "(redacted)" if ch.secret else ch.before
                after = "(redacted)" if ch.secret else ch.after
                out.print(f"      ~ {ch.field}: {before} -> {after}{tail}")
        for w in r.diff.warnings:
            out.print("      " + out.c(f"! {w}", "red"), always=True)
        for p in r.diff.problems:
            out.print("      " + out.c(f"x {p}", "red"), always=True)
        for n in r.diff.notes:
            out.print("      " + out.c(f"- {n}", "dim"))
        for name, text in (r.diff.details.get("diffs") or {}).items():
            out.print(_indent(out, text, 8))
        if r.diff.details.get("sql"):
            out.print("      SQL that apply would run:")
            out.print(_indent(out, r.diff.details["sql"], 8, colour=False))
        if r.status == "failed":
            out.print("      " + out.c(f"x {r.message}", "red"), always=True)
    out.print()
    print_summary(out, result)


def _indent(out: Output, text: str, width: int, colour: bool = True) -> str:
    lines = []
    for line in text.rstrip("\n").splitlines():
        if colour and line.startswith("+") and not line.startswith("+++"):
            line = out.c(line, "green")
        elif colour and line.startswith("-") and not line.startswith("---"):
            line = out.c(line, "red")
        lines.append(" " * width + line)
    return "\n".join(lines)


def summary_counts(result: RunResult) -> dict[str, int]:
    counts = {a.key: 0 for a in Action}
    for r in result.reports:
        counts[r.action.key] += 1
    return counts


def print_summary(out: Output, result: RunResult) -> None:
    counts = summary_counts(result)
    pending = sum(v for k, v in counts.items() if k != "none")
    if result.problems or result.error:
        out.print(out.c(f"Plan has {len(result.problems) or 1} problem(s) that stop apply; fix them first.", "red"),
                  always=True)
    elif pending:
        parts = [f"{counts[a.key]} to {a.key}" for a in reversed(Action) if a is not Action.NONE and counts[a.key]]
        out.print(f"Changes pending: {', '.join(parts)}; {counts['none']} unchanged.", always=True)
    else:
        out.print("No changes. The real state matches the plan.", always=True)


def print_step_line(out: Output, r: StepReport, width: int = 0) -> None:
    status = out.c(f"{r.status + ':':<8}", STATUS_COLOUR.get(r.status, "bold"))
    line = f"{status} {_step_title(r, width)}"
    if r.status in ("changed", "ok", "skipped") and r.message:
        line += f": {r.message}"
    if r.status == "failed":   # the reason follows once, as the run's error
        out.print(line, always=True)
        return
    out.print(line)
    for w in r.diff.warnings:
        out.print("    " + out.c(f"! {w}", "red"), always=True)


def print_recap(out: Output, result: RunResult) -> None:
    counts = {s: result.count(s) for s in ("ok", "changed", "failed", "skipped")}
    line = (f"RECAP {result.plan.name}: ok={counts['ok']} changed={counts['changed']} "
            f"failed={counts['failed']} skipped={counts['skipped']}")
    out.print()
    out.print(out.c(line, "red" if counts["failed"] else "yellow" if counts["changed"] else "green"),
              always=True)
    if not counts["changed"] and not counts["failed"]:
        out.print("Nothing changed: the system already matched the plan.", always=True)


def print_status(out: Output, result: RunResult) -> None:
    width = max((len(r.name) for r in result.reports), default=0)
    out.print(f"Status of {result.plan.name} ({result.plan.lock_path} vs. what is running now)")
    out.print()
    for r in result.reports:
        state = "drifted" if r.drift else "in sync"
        out.print(f"  {out.c(f'{state:<8}', 'red' if r.drift else 'green')} {_step_title(r, width)}")
        for key, before, now in r.drift:
            out.print(f"      ~ {key}: recorded {before} -> now {now}")
        for w in r.diff.warnings:
            out.print("      " + out.c(f"! {w}", "red"), always=True)
        if r.diff.changes:
            out.print("      " + out.c(f"pending: {', '.join(r.diff.fields())} ({r.action.label})", "yellow"))


def print_verify(out: Output, result: RunResult) -> bool:
    """The verify report: per table source rows, target rows and equality; then the checks."""
    ok = True
    for r in result.reports:
        if r.type != "verify":
            continue
        details = r.diff.details
        tables = details.get("tables") or []
        out.print(f"Verify {result.plan.name}: step {r.name}", always=True)
        if tables:
            width = max(len(t["table"]) for t in tables)
            out.print(f"  {'table':<{width}}  {'source rows':>12}  {'target rows':>12}  checksum", always=True)
            for t in tables:
                mark = out.c("equal", "green") if t["equal"] else out.c("DIFFERENT", "red")
                if not t.get("compared", True):
                    mark = "not compared"
                src = "-" if t["source_rows"] is None else f"{t['source_rows']:,}"
                tgt = "-" if t["target_rows"] is None else f"{t['target_rows']:,}"
                out.print(f"  {t['table']:<{width}}  {src:>12}  {tgt:>12}  {mark}", always=True)
                if not t["equal"] or not t.get("compared", True):
                    out.print(f"      {t['detail']}", always=True)
        for c in details.get("checks") or []:
            mark = out.c("ok  ", "green") if c["ok"] else out.c("FAIL", "red")
            out.print(f"  {mark} {c['name']}: {c['detail']}", always=True)
        ok = ok and bool(details.get("ok"))
        out.print(("Verified: nothing differs." if details.get("ok") else
                   out.c("Verification FAILED.", "red")) + f" ({details.get('seconds', 0)}s)", always=True)
    return ok


def plan_document(result: RunResult, command: str) -> dict[str, Any]:
    return {
        "format_version": JSON_FORMAT,
        "command": command,
        "plan": {"name": result.plan.name, "file": str(result.plan.path),
                 "lockfile": str(result.plan.lock_path)},
        "changes_pending": result.changes_pending,
        "drift": any(r.drift for r in result.reports),
        "summary": summary_counts(result),
        "problems": [{"step": s, "problem": p} for s, p in result.problems],
        "error": result.error.message if result.error else None,
        "steps": [r.to_dict() for r in result.reports],
    }
