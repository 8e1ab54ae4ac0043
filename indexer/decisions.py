"""What a person decided about near-duplicates, kept in the catalog beside the images.

Two tables, both keyed by content hash rather than catalog id, so a decision survives
a re-index, a move or a rename (ids and paths change, bytes do not):

- :class:`DismissedPair`: two contents someone marked "not duplicates";
- :class:`QuarantinedFile`: a file moved into the index's quarantine folder when its
  group was resolved, with the keeper it was judged a copy of, until it is restored.

The tables are created when first written (:func:`ensure_tables`), not by a numbered
migration: they only add, and a reader treats a missing table as "nothing decided".
Bumping the schema version would make every read-only server refuse an existing
index until it is re-indexed, and older releases refuse it for good, for two tables
they never read.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, inspect
from sqlalchemy.orm import Mapped, mapped_column

from .catalog import Base, Catalog


class DismissedPair(Base):
    """Two contents marked "not duplicates". Stored once, as (smaller hash, larger hash);
    both hashes are equal for byte-identical copies kept on purpose."""

    __tablename__ = "review_dismissed"
    hash_a: Mapped[str] = mapped_column(String(64), primary_key=True)
    hash_b: Mapped[str] = mapped_column(String(64), primary_key=True)
    tier: Mapped[str] = mapped_column(String(32))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class QuarantinedFile(Base):
    """A file moved aside when its group was resolved. `path` is where it was (relative to
    the indexed root); the file is at QUARANTINE/<batch>/<path> until `restored_at` is set."""

    __tablename__ = "review_quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(4096), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    keeper_path: Mapped[str] = mapped_column(String(4096))
    keeper_hash: Mapped[str] = mapped_column(String(64))
    tier: Mapped[str] = mapped_column(String(32))
    moved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    restored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


TABLES = (DismissedPair.__table__, QuarantinedFile.__table__)


def ensure_tables(catalog: Catalog) -> None:
    """Create the decision tables in a catalog that lacks them (idempotent)."""
    Base.metadata.create_all(catalog.engine, tables=list(TABLES), checkfirst=True)


def has_tables(catalog: Catalog) -> bool:
    """Whether anything was ever decided in this catalog (the tables exist)."""
    names = set(inspect(catalog.engine).get_table_names())
    return all(t.name in names for t in TABLES)


def pair_key(h1: str, h2: str) -> tuple[str, str]:
    """The stored order of a pair: a dismissal does not depend on which image was the keeper."""
    return (h1, h2) if h1 <= h2 else (h2, h1)
