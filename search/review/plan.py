"""What resolving groups would move, checked against the disk: nothing here changes a file.

A move is planned only for a file that is exactly what the catalog says (a regular
file inside the indexed folder, same size, mtime and content hash as its row), and
only when its keeper is too: the similarity that put them in one group was measured
on those bytes, and a keeper that changed or vanished must not cost the last copy.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from indexer import ImageRecord
from indexer.catalog import STATUS_OK, content_hash

from ..engine import Engine, NotFound
from ..reports.members import keeper_order
from ..reports.model import Group
from .errors import FileChanged, OutsideFolder, ReviewError
from .moves import safe_relative

#: Tiers whose groups are duplicates: resolved in bulk. "similar" groups are alike, not copies,
#: and are resolved one group at a time, by a person naming the keeper and the files.
DUPLICATE_TIERS = ("exact", "near-identical", "near-duplicate")


@dataclass(frozen=True)
class Move:
    """One file to move aside, and the keeper it is judged a copy of."""

    id: int
    path: str  # relative to the indexed root, as in the catalog
    content_hash: str
    size: int
    mtime_ns: int
    keeper_id: int
    keeper_path: str
    keeper_hash: str
    tier: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """The moves of a set of groups, and the groups left alone with the reason."""

    moves: list[Move] = field(default_factory=list)
    skipped: list[tuple[Group, str]] = field(default_factory=list)


def check_file(root: Path, rec: ImageRecord, *, read_content: bool = True) -> Path:
    """The absolute path of `rec`'s file, if it is still exactly what was indexed; else
    FileChanged (gone, size, mtime or content differ) or OutsideFolder (a symlink, or a
    folder on the way that leads out of the root). Without `read_content`, the content hash
    is not compared (a second check of files whose content was compared when planned)."""
    if rec.status != STATUS_OK or not rec.content_hash:
        raise NotFound(f"no indexed image with id {rec.id}")
    rel = safe_relative(rec.path)
    path = root / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FileChanged(f"{rec.path} (id {rec.id}) is no longer on disk; run `lookalike index` first") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutsideFolder(f"{rec.path} (id {rec.id}) is a symbolic link; only regular files are moved")
    if not stat.S_ISREG(st.st_mode):
        raise FileChanged(f"{rec.path} (id {rec.id}) is not a regular file any more")
    if os.path.realpath(path) != os.path.join(os.path.realpath(root), *rel.parts):
        raise OutsideFolder(f"{rec.path} (id {rec.id}) leads outside the indexed folder {root}; not touched")
    if st.st_size != rec.size or st.st_mtime_ns != rec.mtime_ns:
        raise FileChanged(
            f"{rec.path} (id {rec.id}) changed since it was indexed (size or modification time); "
            "run `lookalike index` and review it again"
        )
    if read_content and content_hash(path) != rec.content_hash:
        raise FileChanged(
            f"{rec.path} (id {rec.id}) changed since it was indexed (its content hash differs); "
            "run `lookalike index` and review it again"
        )
    return path


def indexed_rows(engine: Engine, ids: Iterable[int]) -> dict[int, ImageRecord]:
    """The catalog rows of `ids`, all of them indexed, or NotFound."""
    ids = list(ids)
    rows = engine.catalog.get_images(ids)
    for i in ids:
        rec = rows.get(i)
        if rec is None or rec.status != STATUS_OK:
            raise NotFound(f"no indexed image with id {i}")
    return rows


def plan_resolution(engine: Engine, keeper_id: int, member_ids: Sequence[int], tier: str) -> list[Move]:
    """The moves that resolve one group: every one of `member_ids` goes aside, `keeper_id`
    stays. Raises (and plans nothing) if any of them, or the keeper, fails :func:`check_file`."""
    members = list(dict.fromkeys(int(i) for i in member_ids))
    if not members:
        raise ReviewError("name at least one image to move besides the keeper")
    if keeper_id in members:
        raise ReviewError(f"image {keeper_id} cannot be both the keeper and moved")
    rows = indexed_rows(engine, [keeper_id, *members])
    keeper = rows[keeper_id]
    check_file(engine.root, keeper)
    moves = []
    for i in members:
        rec = rows[i]
        check_file(engine.root, rec)
        moves.append(
            Move(
                rec.id,
                rec.path,
                rec.content_hash or "",
                rec.size,
                rec.mtime_ns,
                keeper.id,
                keeper.path,
                keeper.content_hash or "",
                tier,
            )
        )
    return moves


def plan_groups(engine: Engine, groups: Sequence[Group]) -> Plan:
    """The moves that resolve `groups` (strictest first) in bulk, keeping each suggested keeper.

    A file is moved once and a keeper is never moved: where groups overlap (a looser tier's
    group holding a stricter one's files), files already planned drop out of the later group,
    and a later group whose keeper is already going keeps its best remaining member instead.
    A group with a file that fails :func:`check_file` is skipped whole, with the reason."""
    plan = Plan()
    moving: set[int] = set()
    kept: set[int] = set()
    for g in groups:
        if g.tier not in DUPLICATE_TIERS:
            plan.skipped.append((g, f"{g.tier} images are alike, not duplicates: resolve them one group at a time"))
            continue
        members = [m for m in g.members if m.id not in moving]
        if len(members) < 2:
            continue
        keeper = members[0] if members[0].id == g.keeper.id else min(members, key=keeper_order)
        others = [m for m in members if m is not keeper and m.id not in kept]
        if not others:
            continue
        try:
            moves = plan_resolution(engine, keeper.id, [m.id for m in others], g.tier)
        except (ReviewError, NotFound) as exc:
            plan.skipped.append((g, str(exc)))
            continue
        plan.moves += moves
        kept.add(keeper.id)
        moving.update(m.id for m in moves)
    return plan
