"""orchestrate: a declarative, idempotent move of an application's database from SQLite to
PostgreSQL in Docker, driven by YAML plans."""

__version__ = "0.1.0"
