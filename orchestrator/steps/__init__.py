"""Step types, by the key that names them in a plan.

A step type's module is imported when a plan first uses that type (``REGISTRY[type]``): a plan of
six steps does not pay for the pydantic models of the other types (start-up, issue 15). Listing
the keys imports nothing; iterating the items (``orchestrate schema``) imports them all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

# type key -> (module in this package, class name)
_WHERE = {
    "db-container": ("db_container", "DbContainer"), "database": ("database", "Database"),
    "render": ("render", "Render"), "migrate": ("migrate", "Migrate"), "copy-data": ("copy_data", "CopyData"),
    "verify": ("verify", "Verify"), "backup": ("backup", "Backup"), "image": ("image", "ImageStep"),
    "network": ("network", "Network"), "container": ("container", "Container"), "service": ("service", "Service"),
}


class _Registry(Mapping):
    def __init__(self) -> None:
        self._loaded: dict[str, type] = {}

    def __getitem__(self, kind: str) -> type:
        if kind not in self._loaded:
            module, name = _WHERE[kind]          # KeyError for an unknown type, as a dict
            cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
            assert cls.type == kind, (cls, kind)
            self._loaded[kind] = cls
        return self._loaded[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


REGISTRY: Mapping[str, type] = _Registry()
