"""Step types, by the key that names them in a plan."""

from __future__ import annotations

from .base import Resource
from .db_container import DbContainer

REGISTRY: dict[str, type[Resource]] = {
    DbContainer.type: DbContainer,
}
