"""Step types, by the key that names them in a plan."""

from __future__ import annotations

from .backup import Backup
from .base import Resource
from .container import Container
from .copy_data import CopyData
from .database import Database
from .db_container import DbContainer
from .image import ImageStep
from .migrate import Migrate
from .network import Network
from .render import Render
from .service import Service
from .verify import Verify

REGISTRY: dict[str, type[Resource]] = {cls.type: cls for cls in (DbContainer, Database, Render, Migrate, CopyData, Verify, Backup,
                                                             ImageStep, Network, Container, Service)}
