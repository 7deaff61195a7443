"""Heavy libraries (docker-py, requests, SQLAlchemy, Alembic, psycopg) loaded on first use, so a
command that never needs one (``--help``, ``validate``) never pays for importing it.

``lazy("docker")`` returns the module object at once; its code runs when an attribute is first
read (the standard library's :class:`importlib.util.LazyLoader`). ``tests/unit/test_startup.py``
fails when a light command imports one of them.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

HEAVY = ("docker", "requests", "sqlalchemy", "alembic", "psycopg", "paramiko", "urllib3")


def lazy(name: str) -> ModuleType:
    """The top-level module ``name``, imported when first used (at once if already imported)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
