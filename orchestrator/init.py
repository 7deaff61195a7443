"""``orchestrate init``: plans for an existing application, from what its folder holds.

Run in an application's folder (like ``docker init``), it finds, statically (the application is
never imported or run; its Python files are parsed with :mod:`ast`):

- ``alembic.ini`` and its migration scripts (required: the phase-1 plan creates PostgreSQL's schema
  with the application's own migrations; without them there is nothing to copy the rows into, so
  init stops with an error saying so, and writes nothing);
- the SQLite database, from the first SQLite URL among: ``DATABASE_URL`` in ``.env``, the default
  of ``DATABASE_URL`` in the application's code (``os.getenv("DATABASE_URL", "sqlite:///...")``,
  ``os.environ.get(...)``, ``... or "sqlite:///..."``, a settings class's ``database_url: str =
  ...``), ``.env.example``, ``sqlalchemy.url`` in ``alembic.ini``, and last a SQLite file in the
  folder; nothing found: ``app.db``, with a TODO;
- the Dockerfile, if there is one (its ``EXPOSE``, ``HEALTHCHECK``, and the build argument of its
  base image);
- a virtualenv (``.venv/bin/python``), where Alembic then runs, with the application's packages.

It writes, all or nothing and never over an existing file, everything under ``plans/``:
``phase1.yaml``, ``phase2.yaml`` (only with a Dockerfile), ``plan.schema.json`` (the schema
``orchestrate schema`` prints, which the plans' ``yaml-language-server`` line names) and
``templates/`` (the compose and ``.env`` templates the plans render, copied from
``orchestrator/init_templates/``: under ``plans/``, not in the application's own ``templates/``,
which in a Flask application holds its HTML). The plans render ``.env`` and
``docker-compose.yml`` into the application's folder only when no such file is there already;
otherwise ``.env.postgres`` and ``docker-compose.postgres.yml`` (the render step would replace an
existing file).
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from . import dockerfile as dockerfile_parser
from .errors import OrchestrateError

# Folders never searched: version control, virtualenvs, caches, builds, dependencies, tests.
SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", ".env", "node_modules", "__pycache__",
             ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", "build", "dist",
             "site-packages", ".eggs", "tests", "test", "plans"}
MAX_PY_FILES = 3000
MAX_FILE_BYTES = 1_000_000
URL_NAMES = {"DATABASE_URL", "SQLALCHEMY_DATABASE_URI", "SQLALCHEMY_DATABASE_URL", "DB_URL"}
# modules where an application usually reads its configuration: searched first
CONFIG_STEMS = ("config", "settings", "database", "db", "models", "core", "session", "base",
                "extensions", "app", "main", "__init__", "env")
ENV_FILES = (".env",)
ENV_EXAMPLES = (".env.example", ".env.sample", ".env.template", ".env.dist", "example.env")
VENV_PYTHONS = (".venv/bin/python", "venv/bin/python", "env/bin/python")
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
DEFAULT_DB = "app.db"
DEFAULT_APP_PORT = 8000
TEMPLATE_FILES = ("docker-compose.yml.j2", "env.j2", "compose/postgres.j2",
                  "docker-compose.phase2.yml.j2", "env.phase2.j2")


class InitError(OrchestrateError):
    """orchestrate init cannot write plans for this folder (or would overwrite a file)."""


# --- finding things ------------------------------------------------------------------------------

def _walk(root: Path, max_depth: int):
    """Files under ``root`` up to ``max_depth`` folders down, shallowest first, in name order,
    never inside SKIP_DIRS or a virtualenv (a folder holding pyvenv.cfg)."""
    level = [root]
    for depth in range(max_depth + 1):
        below = []
        for folder in level:
            try:
                entries = sorted(folder.iterdir(), key=lambda p: p.name)
            except OSError:
                continue
            for entry in entries:
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    if entry.name not in SKIP_DIRS and not (entry / "pyvenv.cfg").exists():
                        below.append(entry)
                elif entry.is_file():
                    yield entry, depth
        level = below


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


@dataclass
class Alembic:
    ini: str                    # relative to the root
    scripts: str                # the scripts folder, relative to the root
    revisions: int
    url: str | None             # sqlalchemy.url of alembic.ini
    others: list[str] = field(default_factory=list)   # further alembic.ini files, not used


def find_alembic(root: Path) -> Alembic:
    """The application's alembic.ini (the shallowest, at most two folders down) and its scripts."""
    found = [p for p, _ in _walk(root, 2) if p.name == "alembic.ini"]
    if not found:
        raise InitError(f"no alembic.ini in {root} (nor up to two folders down)",
                        hint="orchestrate creates PostgreSQL's schema with the application's Alembic migrations: "
                             "set Alembic up first (alembic init alembic; alembic revision --autogenerate), "
                             "then run orchestrate init again")
    ini = found[0]
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(ini.read_text(encoding="utf-8", errors="replace"), source=str(ini))
    except configparser.Error as exc:
        raise InitError(f"{_rel(ini, root)} cannot be read as an ini file: {str(exc).splitlines()[0]}") from None
    here = ini.parent.absolute()

    def option(name: str) -> str | None:
        if not parser.has_option("alembic", name):
            return None
        value = parser.get("alembic", name).strip()
        return value.replace("%(here)s", str(here)).replace("%%", "%") or None

    location = option("script_location")
    if not location:
        raise InitError(f"{_rel(ini, root)} has no script_location in its [alembic] section",
                        hint="it names the folder of the migration scripts, e.g. script_location = %(here)s/alembic")
    if ":" in location and not os.path.isabs(location) and not (here / location).exists():
        # package:resource form: the scripts are inside an importable package
        package, _, resource = location.partition(":")
        scripts = root.absolute().joinpath(*package.split("."), resource)
    else:
        scripts = Path(location) if os.path.isabs(location) else here / location
    if not (scripts / "env.py").is_file():
        raise InitError(f"{_rel(ini, root)}: its script_location {location!r} has no env.py "
                        f"(looked in {_rel(scripts, root)})",
                        hint="point script_location at the folder Alembic made (alembic init), which holds env.py")
    versions = scripts / "versions"
    revisions = sum(1 for p in versions.glob("*.py") if p.name != "__init__.py") if versions.is_dir() else 0
    return Alembic(_rel(ini, root), _rel(scripts, root), revisions, option("sqlalchemy.url"),
                   [_rel(p, root) for p in found[1:]])


@dataclass
class UrlFound:
    where: str                  # "app/database.py:9", ".env", ...
    url: str | None             # None: found, but not a literal
    how: str                    # what the line was, in words


def _string(node: ast.AST | None, consts: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return consts.get(node.id)
    return None


def _reads_url(node: ast.AST) -> ast.Call | None:
    """``node`` is a call whose first argument is "DATABASE_URL" (or another URL_NAMES):
    os.getenv, os.environ.get, environ.setdefault, decouple's config, environs' env.str..."""
    if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in URL_NAMES):
        return node
    return None


def _call_name(call: ast.Call) -> str:
    try:
        return ast.unparse(call.func)
    except Exception:     # pragma: no cover - unparse of a parsed tree
        return "a call"


def urls_in_python(text: str, filename: str) -> list[UrlFound]:
    """The default database URLs a Python module gives, read with :mod:`ast` (never run)."""
    try:
        tree = ast.parse(text, filename=filename)
    except (SyntaxError, ValueError):
        return []
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
    found: list[UrlFound] = []
    inside_or: set[int] = set()

    def add(node: ast.AST, value: ast.AST | None, how: str) -> None:
        found.append(UrlFound(f"{filename}:{node.lineno}", _string(value, consts), how))

    for node in ast.walk(tree):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) >= 2:
            call = _reads_url(node.values[0])
            if call is not None and len(call.args) == 1 and not call.keywords:
                inside_or.add(id(call))
                add(node, node.values[1], f"{_call_name(call)}({call.args[0].value!r}) or ...")
        call = _reads_url(node)
        if call is not None and id(call) not in inside_or:
            default = call.args[1] if len(call.args) > 1 else next(
                (k.value for k in call.keywords if k.arg == "default"), None)
            if default is not None:
                add(call, default, f"the default of {_call_name(call)}({call.args[0].value!r}, ...)")
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str) and node.value.value.startswith("sqlite"):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else None
                if name and name.upper() in URL_NAMES:
                    add(node, node.value, f"{name} = ...")
    found.sort(key=lambda f: int(f.where.rsplit(":", 1)[1]))
    return found


def url_in_env(text: str) -> str | None:
    """DATABASE_URL of a .env file (``KEY=VALUE`` lines, ``export`` and quotes allowed)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep or key.strip() not in URL_NAMES:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        return value
    return None


def sqlite_path(url: str | None) -> str | None:
    """The file of a SQLite URL (``sqlite:///rel.db``, ``sqlite+aiosqlite:////abs.db``), or None
    for another database or an in-memory one."""
    if not url:
        return None
    m = re.match(r"^sqlite(?:\+[A-Za-z0-9_]+)?://(.*)$", url.strip())
    if not m:
        return None
    rest = m.group(1).split("?", 1)[0]
    if not rest.startswith("/"):
        return None           # sqlite:// (memory) or a host part SQLite does not have
    path = rest[1:]
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    return path


def _is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


@dataclass
class Database:
    path: str                   # as the plan's copy-data source: relative to the root, or absolute
    url: str                    # the SQLite URL (for the .env fallback line)
    origin: str | None          # where it was found, in words; None: not found (the default)
    exists: bool
    inside: bool                # inside the application's folder (a plan's path must be)
    notes: list[str] = field(default_factory=list)    # other candidates, and what was not read


def _python_files(root: Path) -> list[tuple[Path, int]]:
    files = [(p, d) for p, d in _walk(root, 6) if p.suffix == ".py"][:MAX_PY_FILES]

    def rank(item):
        path, depth = item
        stem = path.stem.lower()
        in_migrations = "versions" in path.parts
        return (in_migrations, stem not in CONFIG_STEMS, depth, str(path))
    return sorted(files, key=rank)


def find_database(root: Path, alembic: Alembic | None) -> Database:
    candidates: list[tuple[str, str]] = []          # (url, where it was found)
    notes: list[str] = []
    for name in ENV_FILES:
        if (root / name).is_file():
            url = url_in_env((root / name).read_text(encoding="utf-8", errors="replace"))
            if url:
                candidates.append((url, f"DATABASE_URL in {name}"))
    for path, _ in _python_files(root):
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        lowered = text.lower()
        if not any(name.lower() in lowered for name in URL_NAMES):
            continue
        for hit in urls_in_python(text, _rel(path, root)):
            if hit.url is None:
                notes.append(f"{hit.where}: {hit.how} is not a literal (not read)")
            else:
                candidates.append((hit.url, f"{hit.how} in {hit.where}"))
    for name in ENV_EXAMPLES:
        if (root / name).is_file():
            url = url_in_env((root / name).read_text(encoding="utf-8", errors="replace"))
            if url:
                candidates.append((url, f"DATABASE_URL in {name}"))
    if alembic and alembic.url:
        candidates.append((alembic.url, f"sqlalchemy.url in {alembic.ini}"))
    chosen = None
    for url, where in candidates:
        if sqlite_path(url) is None:
            notes.append(f"{where}: not a SQLite file ({_scheme(url)})")
        elif chosen is None:
            chosen = (url, where)
        elif sqlite_path(url) != sqlite_path(chosen[0]):
            notes.append(f"{where}: {sqlite_path(url)} (not used)")
    if chosen is None:
        files = [p for p, _ in _walk(root, 2) if p.suffix in (".db", ".sqlite", ".sqlite3") and _is_sqlite_file(p)]
        if files:
            rel = _rel(files[0], root)
            chosen = (f"sqlite:///./{rel}", "a SQLite file in the folder (no SQLite DATABASE_URL found)")
            notes += [f"also a SQLite file: {_rel(p, root)}" for p in files[1:]]
    if chosen is None:
        return Database(DEFAULT_DB, f"sqlite:///./{DEFAULT_DB}", None, (root / DEFAULT_DB).is_file(), True, notes)
    url, where = chosen
    path = sqlite_path(url)
    full = Path(path) if os.path.isabs(path) else root / path
    inside = os.path.commonpath([os.path.realpath(root), os.path.realpath(full)]) == os.path.realpath(root)
    if inside:
        path = _rel(full, root)
    return Database(path, url, where, full.is_file(), inside, notes)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] + "://..." if "://" in url else "no URL"


@dataclass
class Docker:
    path: str                   # the Dockerfile, relative to the root (the build context)
    port: int | None            # its first EXPOSE
    healthcheck: bool           # the final stage has a HEALTHCHECK
    health_path: str | None     # the URL path its HEALTHCHECK asks, when it names one
    base_arg: str | None        # the global ARG the first FROM names
    base_default: str | None    # that ARG's default
    base_image: str | None      # the first FROM, as written
    others: list[str] = field(default_factory=list)


def find_dockerfile(root: Path) -> Docker | None:
    found = [p for p, _ in _walk(root, 3)
             if p.name == "Dockerfile" or p.name.startswith("Dockerfile.") or p.name.endswith(".Dockerfile")]
    if not found:
        return None
    found.sort(key=lambda p: (len(p.relative_to(root).parts), p.name != "Dockerfile", str(p)))
    path = found[0]
    info = read_dockerfile(path.read_text(encoding="utf-8", errors="replace"))
    info.path = _rel(path, root)
    info.others = [_rel(p, root) for p in found[1:]]
    return info


def read_dockerfile(text: str) -> Docker:
    args: dict[str, str | None] = {}
    base_arg = base_default = base_image = None
    port = None
    health = False
    health_path = None
    seen_from = False
    for ins in dockerfile_parser.parse(text):
        if ins.keyword == "ARG" and not seen_from:
            for part in ins.args.split():
                name, eq, default = part.partition("=")
                args[name] = default.strip("\"'") if eq else None
        elif ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if words and not seen_from:
                base_image = words[0]
                m = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", words[0])
                if m and m.group(1) in args:
                    base_arg, base_default = m.group(1), args[m.group(1)]
            seen_from = True
            health, health_path = False, None     # a HEALTHCHECK counts in the final stage only
        elif ins.keyword == "EXPOSE" and port is None:
            m = re.match(r"^(\d+)", ins.args.strip())
            if m:
                port = int(m.group(1))
        elif ins.keyword == "HEALTHCHECK":
            health = ins.args.strip().upper() != "NONE"
            m = re.search(r"https?://[^/\s'\"]+(/[^\s'\"|;]*)", ins.args)
            health_path = m.group(1) if (health and m) else None
    return Docker("Dockerfile", port, health, health_path, base_arg, base_default, base_image)


def find_python(root: Path) -> str | None:
    for rel in VENV_PYTHONS:
        if (root / rel).exists():
            return rel
    return None


@dataclass
class Found:
    root: Path
    slug: str
    alembic: Alembic
    database: Database
    docker: Docker | None
    python: str | None
    env_dest: str               # where the plans render .env
    compose_dest: str           # and docker-compose.yml
    compose2_dest: str


def slug(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return text or "app"


def ident(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]
    if not text:
        return "app"
    return "_" + text if text[0].isdigit() else text


def detect(root: Path) -> Found:
    root = Path(root)
    if not root.is_dir():
        raise InitError(f"{root} is not a folder", hint="run orchestrate init in the application's folder, or give --dir")
    alembic = find_alembic(root)
    database = find_database(root, alembic)
    name = slug(root.resolve().name)
    return Found(
        root=root, slug=name, alembic=alembic, database=database, docker=find_dockerfile(root),
        python=find_python(root),
        env_dest=".env.postgres" if (root / ".env").exists() else ".env",
        compose_dest="docker-compose.postgres.yml" if _any(root, *COMPOSE_FILES) else "docker-compose.yml",
        compose2_dest="docker-compose.postgres.phase2.yml" if (root / "docker-compose.phase2.yml").exists()
        else "docker-compose.phase2.yml")


def _any(root: Path, *names: str) -> bool:
    return any((root / n).exists() for n in names)


# --- the plans -----------------------------------------------------------------------------------

def _q(value: str) -> str:
    """A YAML scalar: JSON's double-quoted string is valid YAML."""
    return json.dumps(value)


def _found_lines(f: Found) -> list[str]:
    a, db = f.alembic, f.database
    lines = [f"#   - alembic.ini: {a.ini} (scripts: {a.scripts}/, {a.revisions} revision file(s))"]
    lines += [f"#     also {o} (not used; change schema's alembic_ini to use it)" for o in a.others]
    if db.origin:
        state = "" if db.exists else "; it does not exist yet: run the application once, or point source at it"
        lines.append(f"#   - the SQLite database: {db.path}, from {db.origin}{state}")
    else:
        lines.append(f"#   - the SQLite database: NOT FOUND (no SQLite DATABASE_URL in .env, the code, "
                     f".env.example or alembic.ini, no SQLite file); {DEFAULT_DB} assumed, see TODO below")
    lines += [f"#     {n}" for n in db.notes]
    if f.docker:
        lines.append(f"#   - Dockerfile: {f.docker.path} (phase 2: plans/phase2.yaml)")
        lines += [f"#     also {o} (not used)" for o in f.docker.others]
    else:
        lines.append("#   - no Dockerfile: no phase-2 plan (the application in Docker) was written")
    if f.python:
        lines.append(f"#   - a virtualenv: {f.python} (Alembic runs there, with the application's packages)")
    return lines


def _header(f: Found, phase: str, intro: list[str]) -> list[str]:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return ["# yaml-language-server: $schema=plan.schema.json",
            "#",
            *[f"# {line}" for line in intro],
            f"# Written by `orchestrate init` on {when}; review it, then:",
            f"#   orchestrate plan plans/{phase}.yaml      # what would change (read-only)",
            f"#   orchestrate apply plans/{phase}.yaml     # make it so; run it again and nothing changes",
            "# On a machine without a registry, use local images: -e pg_image=NAME (see vars).",
            "# plans/plan.schema.json is the plan format's JSON Schema, for editors (`orchestrate schema`",
            "# prints the installed version's).",
            "#",
            "# What init found in the application's folder (read, never imported or run):",
            *_found_lines(f)]


def _vars(f: Found, extra: list[str]) -> list[str]:
    return ["vars:",
            '  pg_image: "postgres:16-alpine"',
            *extra,
            f"  container_name: {f.slug}_postgres",
            f"  volume_name: {f.slug}_pgdata      # the data: kept by destroy unless --volumes",
            f"  db_user: {ident(f.slug)}",
            f"  db_name: {ident(f.slug)}",
            "  db_port: 5432          # on 127.0.0.1 only"]


def _secrets(f: Found, phase: str) -> list[str]:
    env = ident(f.slug).upper() + "_DB_PASSWORD"
    return ["secrets:",
            f"  # From the environment when set; otherwise generated once into plans/{phase}.secrets (mode 0600:",
            "  # keep it, and .env, out of version control).",
            f"  db_password: {{env: {env}, generate: 32}}"]


def _postgres(network: bool) -> list[str]:
    lines = ["  - name: postgres",
             "    db-container:",
             '      image: "{{ vars.pg_image }}"',
             '      container: "{{ vars.container_name }}"',
             '      volume: "{{ vars.volume_name }}"',
             '      user: "{{ vars.db_user }}"',
             '      password: "{{ secrets.db_password }}"',
             '      database: "{{ vars.db_name }}"']
    if network:
        lines.append('      network: "{{ steps.net.name }}"   # other containers reach it as postgres:5432 (the step\'s name)')
    lines += ['      ports: ["127.0.0.1:{{ vars.db_port }}:5432"]',
              "      restart: unless-stopped",
              "      healthcheck: {interval: 2s, timeout: 5s, retries: 30}",
              "      settings: {shared_buffers: 128MB, max_connections: 100}"]
    return lines


def _data(f: Found) -> list[str]:
    db = f.database
    lines = ["  - name: data",
             "    copy-data:"]
    if not db.origin:
        lines.append(f"      # TODO: init found no SQLite database; {DEFAULT_DB} is a guess: point source at the "
                     "application's database")
    elif not db.inside:
        lines.append("      # TODO: this database is outside the application's folder, where a plan's paths must "
                     "stay: copy it in (or widen root), then point source at it")
    elif not db.exists:
        lines.append("      # it does not exist yet: the plan reports that until the application has created it")
    lines.append(f"      source: {_q(db.path)}     # the application's SQLite database (relative to root)")
    return lines


def render_phase1(f: Found) -> str:
    a = f.alembic
    lines = _header(f, "phase1", [
        f"Phase 1 for {f.root.resolve().name}: PostgreSQL in Docker, the application still on this machine.",
        "After the apply, the application uses PostgreSQL once its DATABASE_URL is the one written",
        f"into {f.env_dest}; the SQLite file stays as it is (the way back)."])
    lines += [
        f"name: {f.slug}-phase1",
        "description: >-",
        "  PostgreSQL in Docker with a named volume, the application's Alembic migrations at head, every",
        "  row of its SQLite database copied and verified, .env and a compose file, and a backup",
        "root: ..          # relative paths below start at the application's folder",
        "",
        *_vars(f, []),
        "",
        *_secrets(f, "phase1"),
        "",
        "steps:",
        "  # 1. PostgreSQL in a container, its data in a named volume, published on 127.0.0.1 only,",
        "  #    with a pg_isready health check.",
        *_postgres(network=False),
        "",
        f"  # 2. {f.env_dest} (mode 0600: DATABASE_URL for the application on this machine, the password for",
        f"  #    Compose) and {f.compose_dest} (the same database as a Compose service, for running it by hand).",
        "  #    The templates are in plans/templates/ (written by init: change them as you like). The URL",
        "  #    names the psycopg (3) driver, postgresql+psycopg://; an application on psycopg2 wants",
        "  #    postgresql:// (edit plans/templates/env.j2).",
    ]
    if f.env_dest != ".env" or f.compose_dest != "docker-compose.yml":
        lines.append("  #    The application already has its own .env or compose file: this plan writes beside them,")
        lines.append("  #    never over them (merge DATABASE_URL into your .env yourself; docker compose needs")
        lines.append(f"  #    --env-file {f.env_dest} -f {f.compose_dest}).")
    lines += [
        "  - name: files",
        "    render:",
        "      template_dir: plans/templates",
        f'      vars: {{db: "{{{{ steps.postgres }}}}", sqlite_url: {_q(f.database.url)}}}',
        "      files:",
        f"        - {{src: docker-compose.yml.j2, dest: {f.compose_dest}, mode: \"0644\"}}",
        f"        - {{src: env.j2, dest: {f.env_dest}, mode: \"0600\"}}",
        "",
        "  # 3. The schema: the application's Alembic migrations, at head, in the new database (the URL",
        "  #    is the postgres step's, given to env.py as DATABASE_URL and sqlalchemy.url).",
        "  - name: schema",
        "    migrate:",
        f"      alembic_ini: {_q(a.ini)}",
        "      target: head",
    ]
    if f.python:
        lines.append(f"      python: {f.python}      # Alembic runs in the application's virtualenv")
    else:
        lines.append("      # python: .venv/bin/python   # when env.py imports packages only the application's virtualenv has")
    lines += [
        "",
        "  # 4. Every row of the SQLite database into the migrated schema, converted (booleans, timestamps,",
        "  #    JSON), sequences set past the highest ids. The SQLite file is only read.",
        *_data(f),
        "",
        "  # 5. Row counts and content of every table equal the source's, no sequence behind, no foreign",
        "  #    key broken, a write/read probe: any failure stops the apply with exit 1.",
        "  - name: check",
        "    verify: {}",
        "",
        "  # 6. A pg_dump into backups/ whenever the apply changed something; the last 7 are kept.",
        "  - name: snapshot",
        "    backup: {keep: 7, when: changed}",
        ""]
    return "\n".join(lines)


def render_phase2(f: Found) -> str:
    d = f.docker
    assert d is not None
    a = f.alembic
    port = d.port or DEFAULT_APP_PORT
    extra = []
    if d.base_arg:
        extra.append(f"  app_base_image: {_q(d.base_default or 'python:3.12-slim')}   # the Dockerfile's {d.base_arg}")
    extra += [f'  app_tag: "{f.slug}-app:latest"',
              f"  network: {f.slug}",
              f"  app_container: {f.slug}_app",
              f"  app_port: {port}          # published on 127.0.0.1 for this machine"]
    lines = _header(f, "phase2", [
        f"Phase 2 for {f.root.resolve().name}: the application in Docker too. Inside its container,",
        '"localhost" is the application itself: both containers join one network, where the database',
        'answers to the name "postgres", and the application\'s DATABASE_URL names that host.'])
    lines += [
        f"name: {f.slug}-phase2",
        "description: >-",
        "  PostgreSQL and the application in Docker on one network: the image built when its sources",
        "  change, the migrations run as a job in that image, the SQLite rows copied and verified, the",
        "  application replaced only when its image or configuration changed, and a backup",
        "root: ..          # relative paths below start at the application's folder",
        "",
        *_vars(f, extra),
        "",
        *_secrets(f, "phase2"),
        "",
        "steps:",
        "  # 1. The network both containers join.",
        "  - name: net",
        "    network:",
        '      name: "{{ vars.network }}"',
        "",
        "  # 2. PostgreSQL, as in phase 1 (same container and volume: phase 2 takes over phase 1's data).",
        *_postgres(network=True),
        "",
        "  # 3. The application's image, built only when the files sent to the build change (mind",
        "  #    .dockerignore: the SQLite file, .env and plans/*.secrets have no place in an image).",
        "  - name: app_image",
        "    image:",
        "      context: .",
        f"      dockerfile: {_q(d.path)}",
        '      tag: "{{ vars.app_tag }}"',
    ]
    if d.base_arg:
        lines.append(f'      build_args: {{{d.base_arg}: "{{{{ vars.app_base_image }}}}"}}')
    else:
        lines.append(f"      # TODO: the Dockerfile's base image ({d.base_image or 'its FROM'}) is fixed: to build from another")
        lines.append("      # image (a local one, with no registry), declare ARG BASE_IMAGE=... before FROM ${BASE_IMAGE},")
        lines.append('      # then add: build_args: {BASE_IMAGE: "{{ vars.app_base_image }}"} and the variable.')
    lines += [
        "",
        "  # 4. The migrations, run as a job in a throwaway container of that image, on the network.",
        "  - name: schema",
        "    migrate:",
        f"      alembic_ini: {_q(a.ini)}     # read here: which revisions would run",
        "      target: head",
        "      job:",
        '        image: "{{ steps.app_image.tag }}"',
        f"        alembic_ini: {_q(a.ini)}   # inside the image, relative to its WORKDIR: where a COPY . . puts it",
        "",
        "  # 5. Every row of the SQLite database, as in phase 1 (rows already copied are not copied again).",
        *_data(f),
        "",
        "  # 6. The application's container: replaced only when its image or configuration changed.",
        "  - name: app",
        "    container:",
        '      image: "{{ steps.app_image.tag }}"',
        '      container: "{{ vars.app_container }}"',
        '      network: "{{ steps.net.name }}"',
        "      env:",
        "        # the service name, not localhost: inside this container localhost is the application",
        '        DATABASE_URL: "{{ steps.postgres.internal_url }}"',
    ]
    if not d.port:
        lines.append(f"      # TODO: the Dockerfile has no EXPOSE; {DEFAULT_APP_PORT} is assumed as the port the application listens on")
    lines.append(f'      ports: ["127.0.0.1:{{{{ vars.app_port }}}}:{port}"]')
    if d.healthcheck:
        lines.append("      # health check: the image's HEALTHCHECK")
    else:
        lines.append("      # TODO: the Dockerfile has no HEALTHCHECK: / is asked; point path at the application's health endpoint")
        lines.append(f"      healthcheck: {{http: {{path: /, port: {port}}}, interval: 2s, timeout: 5s, retries: 3}}")
    lines += [
        "      restart: unless-stopped",
        "",
        "  # 7. The same stack as a Compose file, for running it by hand.",
        "  - name: files",
        "    render:",
        "      template_dir: plans/templates",
        '      vars: {db: "{{ steps.postgres }}", app: "{{ steps.app }}", build: "{{ steps.app_image }}"}',
        "      files:",
        f"        - {{src: docker-compose.phase2.yml.j2, dest: {f.compose2_dest}, mode: \"0644\"}}",
        f"        - {{src: env.phase2.j2, dest: {f.env_dest}, mode: \"0600\"}}",
        "",
        "  # 8. Counts, checksums, sequences, keys, a probe; and over HTTP, the application answering.",
        "  - name: check",
        "    verify:",
        "      http:",
        f'        - url: "{{{{ steps.app.url }}}}{d.health_path or "/"}"'
        + ("" if d.health_path else "     # TODO: a page that needs the database, e.g. /health"),
        "",
        "  # 9. A pg_dump into backups/ whenever the apply changed something; the last 7 are kept.",
        "  - name: snapshot",
        "    backup: {keep: 7, when: changed}",
        ""]
    return "\n".join(lines)


def template_text(name: str) -> str:
    return resources.files("orchestrator").joinpath("init_templates", name).read_text(encoding="utf-8")


def files_for(f: Found) -> dict[str, str]:
    """Every file init writes, relative to the application's folder, and its content."""
    from .plan import json_schema
    files = {"plans/phase1.yaml": render_phase1(f)}
    if f.docker:
        files["plans/phase2.yaml"] = render_phase2(f)
    files["plans/plan.schema.json"] = json.dumps(json_schema(), indent=2) + "\n"
    for name in TEMPLATE_FILES:
        if f.docker or "phase2" not in name:
            files[f"plans/templates/{name}"] = template_text(name)
    return files


def write(root: Path, files: dict[str, str]) -> list[str]:
    """Write ``files`` under ``root``: all or nothing, never over an existing file (each is created
    exclusively; when one cannot be, those written so far are removed again)."""
    root = Path(root)
    existing = [rel for rel in files if os.path.lexists(root / rel)]
    if existing:
        plans = [r for r in existing if r.endswith(".yaml")]
        named = plans or existing[:3]
        more = len(existing) - len(named)
        raise InitError(f"{', '.join(named)} already exist{'s' if len(named) == 1 else ''} in {os.path.abspath(root)}"
                        + (f" (and {more} more of the files init writes)" if more else "")
                        + "; orchestrate init never overwrites a file, and wrote nothing",
                        hint=("the plans are there already: orchestrate plan " + plans[0] if plans else
                              "move " + ("that file" if len(existing) == 1 else "those files")
                              + " away and run orchestrate init again"))
    written: list[Path] = []
    made: list[Path] = []
    try:
        for rel, text in files.items():
            path = root / rel
            for parent in reversed(path.relative_to(root).parents):
                folder = root / parent
                if not folder.exists():
                    folder.mkdir()
                    made.append(folder)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            written.append(path)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise InitError(f"cannot write {exc.filename}: {exc.strerror}; nothing was written") from None
    return list(files)


def init(root: Path) -> tuple[Found, list[str]]:
    """Detect, then write: what was found and the files written (relative to ``root``)."""
    found = detect(root)
    return found, write(root, files_for(found))
