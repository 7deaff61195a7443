"""Heavy libraries (docker-py, requests, SQLAlchemy, Alembic, psycopg) loaded on first use, so a
command that never needs one (``--help``, ``validate``) never pays for importing it.

``lazy("docker")`` returns a stand-in at once; the first attribute read imports the module with
:func:`importlib.import_module` (whose import locks make a first use from two threads at once
safe, which the standard library's ``LazyLoader`` is not before Python 3.12: two threads could
run a package's ``__init__`` twice and leave two copies of its exception classes) and forwards
to it. Until then the module is not in ``sys.modules`` at all. ``tests/unit/test_startup.py``
fails when a light command imports one of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

HEAVY = ("docker", "requests", "sqlalchemy", "alembic", "psycopg", "paramiko", "urllib3")


class _Lazy:
    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._module is not None else ''}>"


def lazy(name: str) -> Any:
    """The module ``name``, imported when one of its attributes is first read."""
    return _Lazy(name)
