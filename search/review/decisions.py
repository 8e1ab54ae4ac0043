"""Decisions already made, and reports that leave out what they settled.

A report computes its groups from the index as it is; :func:`hide_decided` then takes out

- files resolved into the quarantine whose catalog rows remain until the next
  `lookalike index` (matched by path and content hash, and only while nothing is back at
  that path: a file a person put back by hand is shown again);
- images "settled" by dismissals: an image is settled in a group when every pair it forms
  with the others was dismissed, so a dismissed group stays hidden however it is
  recomputed, while a new image joining it brings it back, whole.

A group left with fewer than two images is dropped. If the keeper was taken out, the best
remaining image by keeper order becomes the keeper, and the similarities (which were
measured to the old keeper) are left unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path

from sqlalchemy import select

from indexer import Catalog, ImageRecord
from indexer.catalog import in_chunks, utcnow
from indexer.decisions import DismissedPair, QuarantinedFile, has_tables, pair_key

from ..engine import Engine
from ..reports.members import keeper_order
from ..reports.model import Group, Report


@dataclass
class Decisions:
    """What the catalog holds: dismissed pairs of contents, and files in the quarantine."""

    dismissed: set[tuple[str, str]] = field(default_factory=set)
    quarantined: dict[str, str] = field(default_factory=dict)  # original path -> content hash

    def __bool__(self) -> bool:
        return bool(self.dismissed or self.quarantined)


def load_decisions(catalog: Catalog) -> Decisions:
    """The decisions in `catalog` (none if nothing was ever decided there)."""
    if not has_tables(catalog):
        return Decisions()
    with catalog.session() as s:
        pairs = {(a, b) for a, b in s.execute(select(DismissedPair.hash_a, DismissedPair.hash_b))}
        q = select(QuarantinedFile.path, QuarantinedFile.content_hash).where(QuarantinedFile.restored_at.is_(None))
        quarantined = dict(s.execute(q).all())
    return Decisions(pairs, quarantined)


def filter_groups(
    groups: Sequence[Group], decisions: Decisions, hashes: Mapping[int, str | None], root: Path
) -> list[Group]:
    """`groups` less what `decisions` settled (see the module docstring). `hashes`: the
    content hash of every member, by id."""
    if not decisions:
        return list(groups)
    out = []
    for g in groups:
        members = [m for m in g.members if not _quarantined(m.path, hashes.get(m.id), decisions, root)]
        if decisions.dismissed and len(members) > 1:
            members = [m for m in members if not _settled(m.id, members, hashes, decisions.dismissed)]
        if len(members) < 2:
            continue
        if members[0].id == g.keeper.id:
            out.append(replace(g, keeper=members[0], others=members[1:]))
            continue
        ranked = sorted(members, key=keeper_order)
        keeper = replace(ranked[0], similarity=1.0, hamming=None)
        out.append(replace(g, keeper=keeper, others=[replace(m, similarity=None, hamming=None) for m in ranked[1:]]))
    return out


def _quarantined(path: str, digest: str | None, decisions: Decisions, root: Path) -> bool:
    return decisions.quarantined.get(path) == digest and not os.path.lexists(root / path)


def _settled(mid: int, members: list, hashes: Mapping[int, str | None], dismissed: set[tuple[str, str]]) -> bool:
    mine = hashes.get(mid)
    if mine is None:
        return False
    for other in members:
        theirs = hashes.get(other.id)
        if other.id != mid and (theirs is None or pair_key(mine, theirs) not in dismissed):
            return False
    return True


def content_hashes(catalog: Catalog, ids: Sequence[int]) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    with catalog.session() as s:
        for chunk in in_chunks(list(ids)):
            q = select(ImageRecord.id, ImageRecord.content_hash).where(ImageRecord.id.in_(chunk))
            out.update(s.execute(q).all())
    return out


def hide_decided(engine: Engine, groups: Sequence[Group]) -> list[Group]:
    """`groups` less what was resolved or dismissed (read from the engine's catalog)."""
    decisions = load_decisions(engine.catalog)
    if not decisions or not groups:
        return list(groups)
    ids = sorted({m.id for g in groups for m in g.members})
    return filter_groups(groups, decisions, content_hashes(engine.catalog, ids), engine.root)


def record_dismissal(catalog: Catalog, digests: Sequence[str], tier: str) -> int:
    """Store every pair among `digests` as "not duplicates" (a pair already stored keeps its
    first record). Returns how many pairs were new. The caller has created the tables."""
    keys = {pair_key(a, b) for a, b in combinations(digests, 2)}
    now = utcnow()
    added = 0
    with catalog.session() as s, s.begin():
        for a, b in sorted(keys):
            if s.get(DismissedPair, (a, b)) is None:
                s.add(DismissedPair(hash_a=a, hash_b=b, tier=tier, decided_at=now))
                added += 1
    return added


def hide_decided_in_report(engine: Engine, report: Report) -> Report:
    """`report` with resolved and dismissed groups left out of its duplicate sections, in place."""
    if report.exact is not None:
        report.exact = hide_decided(engine, report.exact)
    if report.near is not None:
        report.near.groups = {tier: hide_decided(engine, gs) for tier, gs in report.near.groups.items()}
    return report
