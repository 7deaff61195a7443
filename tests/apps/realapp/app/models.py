"""The application's models; env.py takes their metadata."""
from sqlalchemy import String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app import settings  # noqa: F401  (the settings module is imported as the application does)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    tag: Mapped[str | None] = mapped_column(String(20))
