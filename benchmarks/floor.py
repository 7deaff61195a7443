"""The floor under a command's start-up: a bare interpreter importing the libraries that command
cannot run without (the project's required dependencies), nothing of orchestrate itself. A target
below this floor cannot be met by changing orchestrate's own code; the benchmarks print it beside
the command they time."""

from __future__ import annotations

import sys

# what each command needs, as orchestrate imports it: docker-py without paramiko (orchestrate
# blocks that import for an engine that is not ssh://), pydantic with its plugin scan off (as the
# command line sets PYDANTIC_DISABLE_PLUGINS)
LIBRARIES = {
    "validate": ("yaml", "jinja2", "pydantic"),
    "apply": ("yaml", "jinja2", "pydantic", "docker", "psycopg"),
    "apply, db-container plan": ("yaml", "jinja2", "pydantic", "docker"),
    "backup": ("yaml", "jinja2", "pydantic", "docker", "psycopg"),
}


def floor_cmd(command: str) -> list[str]:
    """A process that imports what ``command`` needs (the plan's templates need Jinja2, the plan
    model pydantic, Docker docker-py, the database psycopg) and exits."""
    code = ["import os, sys", "os.environ['PYDANTIC_DISABLE_PLUGINS'] = '1'", "sys.modules['paramiko'] = None"]
    for name in LIBRARIES[command]:
        code.append("from pydantic import BaseModel" if name == "pydantic" else f"import {name}")
    return [sys.executable, "-c", "; ".join(code)]


def floor_name(command: str) -> str:
    return f"floor: import {', '.join(LIBRARIES[command])}"
