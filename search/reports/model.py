"""The result model of a report: tiers, groups and their members, query results, the report."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..engine import EngineError, Hit

if TYPE_CHECKING:  # the outliers section is typed here, built in .outliers
    from .outliers import Outliers

log = logging.getLogger(__name__)


SCHEMA = "lookalike.report/1"
FORMATS = ("html", "json", "csv")


@dataclass(frozen=True)
class Tier:
    """A named band of near-duplicates: pairs of neighbours whose cosine similarity is >=
    `threshold`, or whose perceptual hashes differ in at most `hamming` bits and whose detail
    agrees (:mod:`.detail`), or where one is within `crop_hamming` bits of a window of the
    other (a small crop, anywhere).

    `crowd_margin`: a pair that passes on its cosine alone, below every stricter tier's
    threshold (or vetoed by the stricter tier on its detail), must also stand out from the
    images around it: its cosine at least `crowd_margin` above each end's crowd, the cosine of
    that image's k-th nearest neighbour (:func:`.pairs.similar_pairs`). In a dense region
    (MNIST's "1"s: a few strokes every "1" shares) a cosine that elsewhere means "another
    picture of the same thing" only means "one of many".

    `detail_veto`: two files on one canvas (the same pixel size and format) whose whole-picture
    hashes line up but whose detail differs are two pictures, whatever their cosine
    (:func:`.rules.tier_mask`). For tiers that promise the same picture; not for "similar", whose
    burst shots and variants differ in detail by its own description."""

    name: str
    threshold: float
    description: str = ""
    hamming: int | None = None
    crop_hamming: int | None = None
    crowd_margin: float | None = None
    detail_veto: bool = False


class ReportError(EngineError):
    """The report cannot be made as asked (unknown tier, bad format...)."""


# ---------------------------------------------------------------- results


@dataclass
class Member:
    """One image of a group. `similarity`: cosine to the group's keeper (1.0 for the keeper)."""

    id: int
    path: str
    width: int | None
    height: int | None
    size: int | None
    similarity: float | None = None
    hamming: int | None = None  # perceptual-hash bits that differ from the keeper's, when hashed

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["similarity"] is not None:
            d["similarity"] = round(d["similarity"], 6)
        return d


@dataclass
class Group:
    """Images that belong together: the suggested keeper and the others."""

    tier: str
    keeper: Member
    others: list[Member]
    key: str | None = None  # the content hash, for exact duplicates

    @property
    def members(self) -> list[Member]:
        return [self.keeper, *self.others]

    @property
    def min_similarity(self) -> float | None:
        sims = [m.similarity for m in self.others if m.similarity is not None]
        return min(sims) if sims else None

    def as_dict(self) -> dict:
        d = {
            "tier": self.tier,
            "size": 1 + len(self.others),
            "keeper": self.keeper.as_dict(),
            "others": [m.as_dict() for m in self.others],
        }
        if self.key is not None:
            d["content_hash"] = self.key
        else:
            ms = self.min_similarity
            d["min_similarity"] = None if ms is None else round(ms, 6)
        return d


@dataclass
class NearDuplicates:
    """Near-duplicate groups per tier (strictest first), and how they were found."""

    tiers: tuple[Tier, ...]
    groups: dict[str, list[Group]]
    k: int
    method: str
    vectors: int
    pairs: int
    seconds: float
    similarity: str = "cosine of the whitened search vectors"

    def header(self) -> dict:
        return {
            "similarity": self.similarity,
            "k": self.k,
            "method": self.method,
            "vectors": self.vectors,
            "pairs": self.pairs,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class QueryResult:
    """The top-k of one query image. `exact_match_id`: an indexed file with the same bytes."""

    query: dict
    neighbours: list[Hit] = field(default_factory=list)
    exact_match_id: int | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return {
            "query": self.query,
            "exact_match_id": self.exact_match_id,
            "error": self.error,
            "neighbours": [h.as_dict() for h in self.neighbours],
        }


@dataclass
class Report:
    index: str
    model_id: str | None
    images: int
    generated_at: str
    exact: list[Group] | None = None
    near: NearDuplicates | None = None
    neighbours: list[QueryResult] | None = None
    neighbours_k: int = 0
    outliers: Outliers | None = None
