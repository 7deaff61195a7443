"""Moving rows from SQLite into a migrated PostgreSQL schema: type conversion, checksums,
schema reflection (used by the copy-data step)."""
