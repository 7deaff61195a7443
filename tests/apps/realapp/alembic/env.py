"""Alembic environment of the test application: the URL from the application's settings (which
read DATABASE_URL), the metadata from its models, logging from alembic.ini, as real env.py files
do. It imports the application's own package, found through prepend_sys_path."""

import warnings
from logging.config import fileConfig

from sqlalchemy import engine_from_config, exc, pool

from alembic import context
from app import settings
from app.models import Base

config = context.config
config.set_main_option("sqlalchemy.url", settings.DATABASE_URL.replace("%", "%%"))
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
warnings.warn(exc.SAWarning("env.py: a warning such as SQLAlchemy gives"))
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
