"""The catalog's tables (SQLAlchemy ORM): the images, the models that made their vectors, and
key/value metadata; and the image statuses. How they are opened, migrated and queried is
:mod:`indexer.catalog`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import NamedTuple

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

STATUS_OK = "ok"  # decoded, embedded, has a vector
STATUS_FAILED = "failed"  # could not be decoded; `error` says why
STATUS_PENDING = "pending"  # known, but its vector is missing (e.g. after a crash): embed it


class Base(DeclarativeBase):
    pass


#: Catalog ids are FAISS keys (int64). SQLite's INTEGER is already 64-bit, and only the exact
#: type INTEGER makes its primary key the rowid (and allows AUTOINCREMENT); elsewhere BIGINT.
CatalogId = BigInteger().with_variant(Integer, "sqlite")
#: A relative path, compared byte by byte as SQLite does: in PostgreSQL the "C" collation, so
#: ORDER BY path is the walk's order whatever the server's locale, and the path index serves
#: ``LIKE 'prefix%'``.
PathString = String(4096).with_variant(String(4096, collation="C"), "postgresql")


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ModelRecord(Base):
    """A model that made vectors: identified by a hash of its weights and config."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    config_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatalogRow(NamedTuple):
    """What the indexer's walk needs of an :class:`ImageRecord`, read as a plain tuple."""

    id: int
    path: str
    size: int
    mtime_ns: int
    status: str
    content_hash: str | None


class ImageRecord(Base):
    """One image file under the indexed root. `id` is also its vector's id in FAISS."""

    __tablename__ = "images"
    # Never reuse the id of a deleted row: ids are also FAISS keys, and a reused id
    # could pair a stale vector with a new file after a crash.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(CatalogId, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(PathString, unique=True, index=True)  # relative, '/'-separated
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    embedded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"))
    #: For a byte-identical copy: the id of the first file with this content.
    duplicate_of: Mapped[int | None] = mapped_column(CatalogId, index=True)
    #: Sequence number of the store save that holds this row's vector; rows newer than the
    #: last completed save (meta `store_seq`) lost their vector in a crash and are re-embedded.
    vector_seq: Mapped[int] = mapped_column(Integer, default=0)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "status": self.status,
            "error": self.error,
            "content_hash": self.content_hash,
            "duplicate_of": self.duplicate_of,
            "embedded_at": self.embedded_at.isoformat() if self.embedded_at else None,
            "model_id": self.model_id,
        }


#: :class:`CatalogRow`'s columns, in its fields' order: ``select(*CATALOG_ROW_COLUMNS)``.
CATALOG_ROW_COLUMNS = tuple(getattr(ImageRecord, name) for name in CatalogRow._fields)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
