"""The ``orchestrate`` command line. Commands are plain functions; the one place that catches
:class:`OrchestrateError` and turns it into ``error: ...`` and exit code 1 is :func:`main`.

Exit codes: 0 success (and, with ``--detailed-exitcode``, no changes / no drift), 1 error,
2 changes pending or drift (only with ``--detailed-exitcode``, as Terraform does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__, redact
from .errors import OrchestrateError, PlanError

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _import_commands() -> None:
    """What the commands use, imported once the arguments are parsed: ``--help`` and a usage
    error cost no more than argparse (the plan model, the step types and, through them, Docker's
    and the databases' libraries load only for a command that needs them)."""
    global Executor, validate, Output, plan_document, print_plan, print_recap, print_status
    global print_step_line, print_verify, saved, json_schema, load_plan, libpq_url
    from . import saved
    from .executor import Executor, validate
    from .output import (Output, plan_document, print_plan, print_recap, print_status,
                         print_step_line, print_verify)
    from .plan import json_schema, load_plan
    from .steps.base import libpq_url


def _overrides(pairs: list[str] | None) -> dict[str, str]:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PlanError(f"-e {pair!r}: expected KEY=VALUE")
        result[key.strip()] = value
    return result


def _load(args, out: Output, path=None, checks: bool = True):
    """Load and validate the plan named on the command line; print its warnings. ``checks``:
    also each step's file-level checks (templates, migrations), which backup and restore skip."""
    plan = load_plan(path or args.plan, _overrides(args.extra_vars), getattr(args, "var_files", None))
    steps = validate(plan, checks=checks)
    for warning in plan.warnings:
        out.print(out.c(f"warning: {warning}", "yellow"), always=True)
    return plan, steps


def cmd_validate(args, out: Output) -> int:
    for path in args.plan:
        plan, steps = _load(args, out, path)
        out.print(f"{plan.path}: valid plan {plan.name!r} with {len(steps)} step(s): "
                  + ", ".join(f"{s.name} ({s.type})" for s, _ in steps), always=True)
    return EXIT_OK


def cmd_plan(args, out: Output) -> int:
    if getattr(args, "target", "docker") == "kubernetes":
        from .kubernetes_apply import cmd_plan as plan_kubernetes
        return plan_kubernetes(args, out)
    plan, _ = _load(args, out)
    result = Executor(plan, "plan", log=out.debug, progress=out.progress,
                      options={"sql": args.sql, "preview": args.preview}).run()
    if args.json:
        out.json(plan_document(result, "plan"))
    else:
        print_plan(out, result)
    if result.error:
        raise result.error
    if result.problems:
        return EXIT_ERROR
    if args.out:
        saved.write(args.out, result)
        if not args.json:
            out.print(f"Saved the plan to {args.out}; apply exactly these changes with: orchestrate apply {args.out}")
    return EXIT_CHANGES if args.detailed_exitcode and result.changes_pending else EXIT_OK


def cmd_apply(args, out: Output) -> int:
    doc = saved.load(args.plan) if saved.is_saved(args.plan) else None
    kubernetes = (doc or {}).get("target") == "kubernetes"
    if doc is not None and not kubernetes and getattr(args, "target", "docker") == "kubernetes":
        raise OrchestrateError(f"{args.plan} is a saved plan for Docker, not for --target kubernetes",
                               hint="apply it without --target, or make one with orchestrate plan --target kubernetes")
    if kubernetes or getattr(args, "target", "docker") == "kubernetes":
        from .kubernetes_apply import cmd_apply as apply_kubernetes
        return apply_kubernetes(args, out, doc)     # a saved Kubernetes plan says its target itself
    options = {"no_backup": args.no_backup}
    if doc is not None:
        if args.extra_vars or args.var_files or args.only:
            raise OrchestrateError("a saved plan already holds its variables and steps; -e, --var-file and --only "
                                   "go with orchestrate plan")
        saved.check_inputs(doc)
        plan = load_plan(doc["_plan_path"], doc["extra_vars"], doc["_var_files"])
        validate(plan)
        stale = saved.differences(doc, Executor(plan, "plan").run())
        if stale:
            raise OrchestrateError("the saved plan is stale: the real state changed since it was made: "
                                   + "; ".join(stale) + "; nothing was changed",
                                   hint="make a new plan (orchestrate plan PLAN --out FILE) and review it")
        options["expected"] = saved.expected_changes(doc)
        options["after_apply"] = saved.known_after_apply(doc)
        out.print(f"Applying the saved plan {args.plan} (made {doc['created']})")
    else:
        plan, _ = _load(args, out)
    width = max(len(s.name) for s in plan.steps)
    out.print(f"Applying {plan.name} ({plan.path})")
    ex = Executor(plan, "apply", only=args.only, log=out.debug, progress=out.progress, say=out.print,
                  on_step=lambda r: print_step_line(out, r, width), options=options)
    result = ex.run()
    print_recap(out, result)
    if result.error:
        raise result.error
    return EXIT_OK


def cmd_render(args, out: Output) -> int:
    from .kubernetes_apply import cmd_render as render_kubernetes
    return render_kubernetes(args, out)


def cmd_rollback(args, out: Output) -> int:
    """The previous build of each image the plan's containers run, back in service: the tags are
    swapped (the previous build under the tag, the current one under <tag>-previous) and the
    containers that run them replaced as any release is (health-gated); the database is not touched."""
    from .docker_engine import Engine
    from .lockfile import ApplyLock, Lockfile
    from .plan import engine_target
    from .steps.image import previous_tag, swap_previous
    plan, steps = _load(args, out)
    tags = {res.spec.tag for _, res in steps if res.type == "image"}
    targets = [step.name for step, res in steps if res.type == "container" and res.spec.image in tags
               and (not args.only or step.name in args.only)]
    if not targets:
        raise OrchestrateError(f"plan {plan.name} has no container step that runs an image the plan builds; "
                               "nothing to roll back")
    images = sorted({res.spec.image for step, res in steps if step.name in targets})
    downgrade = {}
    if args.downgrade:
        lock = Lockfile.load(plan.lock_path)
        for step, res in steps:
            if res.type == "migrate":
                rec = lock.step(step.name).get("observed") or {}
                if "previous_revision" not in rec:
                    raise OrchestrateError(f"step {step.name}: no revision before the last upgrade is recorded; "
                                           f"nothing was changed", hint="roll back without --downgrade")
                downgrade[step.name] = rec["previous_revision"]
        if downgrade:     # the backup first: a downgrade may drop columns

            def backup(ex, ctx):
                record = ex.backup_resource(ctx).take("before rollback --downgrade")
                out.print(f"took {record['name']} before the downgrade", always=True)

            Executor(plan, "operate", log=out.debug, progress=out.progress, say=out.print,
                     options={"force_backup": True}).operate(backup)
    engine = Engine(read_only=False, log=out.debug, target=engine_target(plan, None))
    swapped = []
    with ApplyLock(plan.path):
        for tag in images:
            if engine.image(previous_tag(tag)) is None:
                raise OrchestrateError(f"there is no previous build of {tag} to go back to ({previous_tag(tag)} "
                                       f"does not exist); nothing was changed",
                                       hint="a previous build is kept once apply has rebuilt the image")
        for tag in images:
            new = swap_previous(engine, tag)
            swapped.append(tag)
            out.print(f"{tag} names the previous build again ({new[7:19]}); the one it replaces is kept as "
                      f"{previous_tag(tag)} (roll back again to return to it)")
    width = max(len(s.name) for s in plan.steps)
    result = Executor(plan, "apply", only=targets, log=out.debug, progress=out.progress, say=out.print,
                      on_step=lambda r: print_step_line(out, r, width), options={"no_backup": True}).run()
    print_recap(out, result)
    if result.error:
        with ApplyLock(plan.path):
            for tag in swapped:
                swap_previous(engine, tag)
        out.print(f"the previous build did not take over; {', '.join(swapped)} name(s) the current build again",
                  always=True)
        raise result.error
    if downgrade:
        result = Executor(plan, "apply", only=list(downgrade), log=out.debug, progress=out.progress,
                          say=out.print, on_step=lambda r: print_step_line(out, r, width),
                          options={"no_backup": True, "downgrade_to": downgrade,
                                   "job_images": {tag: previous_tag(tag) for tag in swapped}}).run()
        print_recap(out, result)
        if result.error:
            raise result.error
        undone = ", ".join(f"{step} to {revision or 'base'}" for step, revision in downgrade.items())
        out.print(f"rolled back {', '.join(targets)} and the schema ({undone}). The next apply builds and "
                  f"migrates the sources again: revert the change in git first to stay on this release.", always=True)
        return EXIT_OK
    out.print(f"rolled back {', '.join(targets)}; the database was not touched. The next apply builds the "
              f"sources again: revert the change in git first to stay on this release.", always=True)
    return EXIT_OK


def cmd_status(args, out: Output) -> int:
    plan, _ = _load(args, out)
    result = Executor(plan, "status", log=out.debug).run()
    if args.json:
        out.json(plan_document(result, "status"))
    else:
        print_status(out, result)
    if result.error:
        raise result.error
    drifted = any(r.drift for r in result.reports)
    return EXIT_CHANGES if args.detailed_exitcode and drifted else EXIT_OK


def cmd_verify(args, out: Output) -> int:
    plan, steps = _load(args, out)
    if not any(s.type == "verify" for s, _ in steps):
        raise OrchestrateError(f"plan {plan.name!r} has no verify step",
                               hint="add one after the copy-data step:  - {name: check, verify: {}}")
    result = Executor(plan, "verify", log=out.debug).run()
    if args.json:
        out.json(plan_document(result, "verify"))
    ok = print_verify(out, result) if not args.json else all(
        r.diff.details.get("ok") for r in result.reports if r.type == "verify")
    if result.error:
        raise result.error
    return EXIT_OK if ok else EXIT_ERROR


def cmd_destroy(args, out: Output) -> int:
    if getattr(args, "target", "docker") == "kubernetes":
        from .kubernetes_apply import cmd_destroy as destroy_kubernetes
        return destroy_kubernetes(args, out)
    plan, _ = _load(args, out)
    if args.volumes and not args.yes:
        if not sys.stdin.isatty():
            raise OrchestrateError("--volumes deletes the data volumes of this plan for good; refusing "
                                   "without confirmation", hint="run it on a terminal to confirm, or add --yes")
        answer = input(f"This removes the data volumes of plan {plan.name!r} and ALL the data in them. "
                       f"Type the plan name to confirm: ")
        if answer.strip() != plan.name:
            raise OrchestrateError("not confirmed; nothing was removed")
    said = Executor(plan, "destroy", only=args.only, log=out.debug, progress=out.progress, say=out.print,
                    options={"no_backup": args.no_backup, "images": args.images}).destroy(volumes=args.volumes)
    for step, lines in said:
        for line in lines or ["nothing to remove"]:
            out.print(f"{step}: {line}", always=True)
    return EXIT_OK


def _confirm(question: str, yes: bool, plan_name: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise OrchestrateError(f"{question}: refusing without confirmation", hint="run it on a terminal, or add --yes")
    if input(f"{question}. Type the plan name to confirm: ").strip() != plan_name:
        raise OrchestrateError("not confirmed; nothing was changed")


def cmd_backup(args, out: Output) -> int:
    plan, _ = _load(args, out, checks=False)

    def run(ex, ctx):
        res = ex.backup_resource(ctx)
        if args.drill:
            record = res.find(args.source or "latest")
            result = res.drill(record)
            what = "rows and content" if record.get("fingerprints") else "row count"
            out.print(f"drill of {record['name']}: sha256 as recorded; restored into a throwaway container; "
                      f"every table's {what} match what was recorded:", always=True)
            for table, (count, _) in result.items():
                out.print(f"  {table}: {count} rows", always=True)
            out.print("the throwaway container and volume were removed", always=True)
            return EXIT_OK
        obs = res.observe()
        out.print(res.apply(obs, res.diff(obs)) or "nothing to do", always=True)
        return EXIT_OK

    return Executor(plan, "operate", log=out.debug, progress=out.progress, say=out.print,
                    options={"force_backup": True}).operate(run)


def cmd_restore(args, out: Output) -> int:
    plan, _ = _load(args, out, checks=False)

    def run(ex, ctx):
        res = ex.backup_resource(ctx)
        record = res.find(args.source)
        res.check_file(record)       # a corrupted or unknown file is refused before anything else
        _confirm(f"This replaces the data of plan {plan.name!r} with {record['name']} ({record['created']})",
                 args.yes, plan.name)
        if not args.no_backup:
            import psycopg
            db = res._db()
            try:
                with psycopg.connect(libpq_url(db.outputs()["url"]), connect_timeout=5) as conn:
                    has_tables = bool(conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema()").fetchone())
            except psycopg.OperationalError:
                has_tables = False
            if has_tables:
                before = res.take(f"before restoring {record['name']}")
                out.print(f"took {before['name']} first (--no-backup skips this)", always=True)
        counts = res.restore(record)
        what = "row counts and content match" if record.get("fingerprints") else "row counts match"
        out.print(f"restored {record['name']} in one transaction; {what} the backup's:", always=True)
        for table, count in counts.items():
            out.print(f"  {table}: {count} rows", always=True)
        return EXIT_OK

    return Executor(plan, "operate", log=out.debug, progress=out.progress, say=out.print).operate(run)


def cmd_schema(args, out: Output) -> int:
    out.stream.write(json.dumps(json_schema(), indent=2) + "\n")
    return EXIT_OK


def cmd_init(args, out: Output) -> int:
    """Plans for the application in --dir (see orchestrator/init.py): written, never overwritten."""
    import os
    from .init import init
    found, written = init(args.dir)
    db, docker = found.database, found.docker
    out.print(f"orchestrate init in {os.path.abspath(args.dir)}:", always=True)
    out.print(f"  alembic.ini: {found.alembic.ini} (scripts: {found.alembic.scripts}/, "
              f"{found.alembic.revisions} revision file(s))", always=True)
    out.print(f"  SQLite database: {db.path} " + (f"({db.origin}" + ("" if db.exists else "; not there yet") + ")"
              if db.origin else "(NOT FOUND: a guess, see the TODO in plans/phase1.yaml)"), always=True)
    out.print(f"  Dockerfile: {docker.path}" if docker else "  Dockerfile: none (no phase-2 plan)", always=True)
    out.print("Wrote:", always=True)
    for rel in written:
        out.print(f"  {rel}", always=True)
    out.print(f"Keep out of version control: plans/*.secrets, {found.env_dest}, backups/ (they hold the "
              "password and the data)", always=True)
    plan = os.path.relpath(os.path.join(args.dir, "plans", "phase1.yaml"))
    out.print("Review plans/phase1.yaml (its comments say what init found and what it guessed), then:", always=True)
    out.print(f"  orchestrate plan {plan}", always=True)
    out.print(f"  orchestrate apply {plan}", always=True)
    return EXIT_OK


def _common(defaults: bool) -> argparse.ArgumentParser:
    """-v, -q and --no-color, accepted before and after the command. After it, they must not
    overwrite what was given before it, so there they default to nothing."""
    common = argparse.ArgumentParser(add_help=False)
    default = False if defaults else argparse.SUPPRESS
    common.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show the Docker and SQL operations performed")
    common.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="print only the recap, warnings and errors")
    common.add_argument("--no-color", action="store_true", default=default, help="plain text, no colour")
    return common


def parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)

    def with_plan(sub, name, help_, many=False):
        p = sub.add_parser(name, help=help_, parents=[common], description=help_)
        if many:
            p.add_argument("plan", nargs="+", help="plan files (YAML)")
        else:
            p.add_argument("plan", help="the plan file (YAML)")
        p.add_argument("-e", "--extra-var", dest="extra_vars", action="append", metavar="KEY=VALUE",
                       help="override a variable of the plan (repeatable; wins over --var-file)")
        p.add_argument("--var-file", dest="var_files", action="append", metavar="FILE",
                       help="YAML file of variables (repeatable; later files win; -e wins over all)")
        return p

    ap = argparse.ArgumentParser(prog="orchestrate", parents=[_common(defaults=True)],
                                 description="Declarative, idempotent moves of an application's "
                                             "database from SQLite to PostgreSQL in Docker.")
    ap.add_argument("--version", action="version", version=f"orchestrate {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = with_plan(sub, "validate", "check plans' syntax, keys, types and references (no Docker)", many=True)
    p.set_defaults(func=cmd_validate)

    p = with_plan(sub, "plan", "show what apply would change (a read-only dry run)")
    p.add_argument("--json", action="store_true", help="print the plan as a JSON document")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 0 when nothing would change, 2 when changes are pending, 1 on error")
    p.add_argument("--sql", action="store_true",
                   help="show the SQL that pending migrations would run (Alembic's offline mode)")
    p.add_argument("--out", metavar="FILE", help="save the plan; orchestrate apply FILE applies exactly it")
    p.add_argument("--preview", action="store_true",
                   help="run pending migrations into a throwaway database and check the copy against that "
                        "schema (removed afterwards)")
    p.add_argument("--target", choices=["docker", "kubernetes"], default="docker",
                   help="kubernetes: which objects apply --target kubernetes would change (server-side dry run)")
    p.add_argument("--namespace", metavar="NAME", help="with --target kubernetes: the namespace apply would use")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --target kubernetes (default: KUBECONFIG)")
    p.set_defaults(func=cmd_plan)

    p = with_plan(sub, "apply", "make the real state match the plan, changing only what differs")
    p.add_argument("--only", action="append", metavar="STEP", help="apply only this step (repeatable)")
    p.add_argument("--no-backup", action="store_true",
                   help="do not take a backup before a destructive change the plan allows")
    p.add_argument("--target", choices=["docker", "kubernetes"], default="docker",
                   help="kubernetes: server-side apply the plan's objects to the kubeconfig's cluster")
    p.add_argument("--namespace", metavar="NAME", help="with --target kubernetes: create and use this namespace")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --target kubernetes (default: KUBECONFIG)")
    p.set_defaults(func=cmd_apply)

    p = with_plan(sub, "render", "write the plan in another form (no Docker, no cluster)")
    p.add_argument("--target", choices=["kubernetes"], required=True, help="kubernetes: the plan as objects")
    p.add_argument("--out", metavar="DIR", help="folder for objects.yaml, secrets.yaml (0600) and NOTES.txt "
                                                "(default: k8s-<plan name>)")
    p.add_argument("--namespace", metavar="NAME", help="put every object in this namespace (and create it)")
    p.add_argument("--no-secrets", action="store_true",
                   help="write the Secrets with empty values (create them yourself)")
    p.set_defaults(func=cmd_render)

    p = with_plan(sub, "status", "what the lockfile recorded next to what is observed now (read-only)")
    p.add_argument("--json", action="store_true", help="print the status as a JSON document")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when the real state drifted")
    p.set_defaults(func=cmd_status)

    p = with_plan(sub, "verify", "prove the database holds what the plan put there (read-only)")
    p.add_argument("--json", action="store_true", help="print the report as a JSON document")
    p.set_defaults(func=cmd_verify)

    p = with_plan(sub, "rollback", "put the previous build of the plan's application images back in service "
                                   "(health-gated, the database untouched)")
    p.add_argument("--only", action="append", metavar="STEP", help="roll back only this container step (repeatable)")
    p.add_argument("--downgrade", action="store_true",
                   help="also undo the migrations of the last upgrade (a backup is taken first)")
    p.set_defaults(func=cmd_rollback)

    p = with_plan(sub, "destroy", "remove the containers the plan created (data volumes are kept)")
    p.add_argument("--volumes", action="store_true", help="also remove the plan's data volumes (asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--only", action="append", metavar="STEP", help="destroy only this step (repeatable)")
    p.add_argument("--no-backup", action="store_true", help="with --volumes: do not take a backup first")
    p.add_argument("--images", action="store_true", help="also remove the images the plan built")
    p.add_argument("--target", choices=["docker", "kubernetes"], default="docker",
                   help="kubernetes: delete the plan's objects in the cluster (the database's volumes are kept)")
    p.add_argument("--namespace", metavar="NAME", help="with --target kubernetes: the namespace apply used")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --target kubernetes (default: KUBECONFIG)")
    p.set_defaults(func=cmd_destroy)

    p = with_plan(sub, "backup", "take a backup now (pg_dump in the container), or prove one restorable")
    p.add_argument("--drill", action="store_true",
                   help="restore a backup into a throwaway container and compare it with what was recorded")
    p.add_argument("--from", dest="source", metavar="FILE", help="with --drill: the backup (default: latest)")
    p.set_defaults(func=cmd_backup)

    p = with_plan(sub, "restore", "restore a recorded backup into the plan's database, in one transaction")
    p.add_argument("--from", dest="source", required=True, metavar="FILE|latest", help="the backup to restore")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--no-backup", action="store_true", help="do not take a backup of the current data first")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("schema", help="print the JSON Schema of the plan format", parents=[common])
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("init", parents=[common], help="write plans for an existing application (never overwrites)",
                       description="Find the application's alembic.ini, SQLite database and Dockerfile (read, "
                                   "never run) and write plans/phase1.yaml (and plans/phase2.yaml with a Dockerfile).")
    p.add_argument("--dir", default=".", metavar="PATH", help="the application's folder (default: the current one)")
    p.set_defaults(func=cmd_init)
    return ap


class _LibraryLog(logging.Handler):
    """Other libraries' log records and Python warnings (psycopg, SQLAlchemy, docker-py...) are
    orchestrate's to tell: shown with -v, never printed on their own between its lines."""

    def __init__(self, out: Output):
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.out.debug(f"{record.name}: {record.getMessage().strip()}")
        except Exception:     # a log line must never break a command
            pass


def main(argv: list[str] | None = None, stdout=None) -> int:
    args = parser().parse_args(argv)
    # pydantic looks for plugins (a scan of every installed package's entry points, ~40 ms) before
    # it builds the first model; the command line has none to load
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    _import_commands()
    out = Output(stdout, verbose=args.verbose, quiet=args.quiet, color=False if args.no_color else None)
    handler = _LibraryLog(out)
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        return _run(args, out, stdout)
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)


def _run(args, out: Output, stdout) -> int:
    try:
        return args.func(args, out)
    except OrchestrateError as exc:
        err = stdout or sys.stderr
        err.write(redact.redact(f"error: {exc.message}\n"))
        if exc.hint:
            err.write(redact.redact(f"hint: {exc.hint}\n"))
        return EXIT_ERROR
    except KeyboardInterrupt:
        (stdout or sys.stderr).write("interrupted; the next apply repairs a half-done step\n")
        return 130


def entry() -> None:
    sys.exit(main())
