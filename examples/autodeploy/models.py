"""SQLAlchemy 2 models of the autodeploy platform (tenants, their deployments, deployment logs).

These are the application's models; its Alembic migrations in the top-level ``alembic/`` folder
create the same schema. ``DATABASE_URL`` picks the database, SQLite or PostgreSQL, as the seed's
``database.py`` does.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, create_engine, func, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

DATABASE_URL = os.getenv("DATABASE_URL", "sqlite:///./deployment_platform.db")
if os.getenv("DATABASE_URL_FILE"):      # a secret given as a file (a Swarm or Kubernetes secret)
    with open(os.environ["DATABASE_URL_FILE"], encoding="utf-8") as _url_file:
        DATABASE_URL = _url_file.read().strip()


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    contact_email: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    plan_tier: Mapped[str] = mapped_column(String(20), server_default="free")          # revision 0002

    deployments: Mapped[list["Deployment"]] = relationship(back_populates="tenant")


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    auto_deploy: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    is_production: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON().with_variant(postgresql.JSONB(), "postgresql"))
    replicas: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_deployed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tenant: Mapped[Tenant] = relationship(back_populates="deployments")
    logs: Mapped[list["DeploymentLog"]] = relationship(back_populates="deployment")


class DeploymentLog(Base):
    __tablename__ = "deployment_logs"
    __table_args__ = (Index("ix_deployment_logs_deployment_id_created_at", "deployment_id", "created_at"),)  # 0003

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(10), default="INFO", server_default="INFO")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    deployment: Mapped[Deployment] = relationship(back_populates="logs")


def make_session(url: str = DATABASE_URL):
    """An engine and session factory for ``url``, as the seed's database.py builds them."""
    # a server that does not answer fails a connection within 5 s instead of hanging a request
    args = {"check_same_thread": False} if url.startswith("sqlite") else {"connect_timeout": 5}
    engine = create_engine(url, connect_args=args, pool_pre_ping=True)
    return engine, sessionmaker(bind=engine, autoflush=False)
