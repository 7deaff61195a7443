"""The test application's own package (imported by alembic/env.py, as real applications do)."""
