"""Batch similarity reports over an index: exact duplicates, near-duplicates in tiers,
neighbours of a set of images, and outliers by reconstruction error.

No web framework here: ``lookalike report``, the ``/reports/...`` HTTP endpoints and
the benchmarks call these functions. One module a job:

- :mod:`.model`: the result model (tiers, groups, members, query results, the report);
- :mod:`.members`: what the catalog says of the images in a report;
- :mod:`.pairs`: whitening, kNN pairs without an n x n matrix, connected components;
- :mod:`.scan`: the one decoding pass (reconstruction errors, perceptual hashes), cached;
- :mod:`.duplicates`: exact duplicates and the near-duplicate tiers;
- :mod:`.sets`: neighbours of a folder or of indexed ids;
- :mod:`.outliers`: the images the autoencoder reconstructs worst;
- :mod:`.build`: the whole report; :mod:`.formats` and :mod:`.html` write it.
"""

from .build import build_report, write_report
from .duplicates import (
    EXACT_MAX,
    TIERS,
    exact_duplicates,
    near_duplicates,
    resolve_tiers,
)
from .hashes import MIN_HASH_LIMIT
from .members import canonical_ids
from .model import FORMATS, SCHEMA, Group, Member, NearDuplicates, QueryResult, Report, ReportError, Tier
from .outliers import OUTLIER_Z, Outlier, Outliers, outliers, robust_z
from .pairs import DEFAULT_K, connected_components, similar_pairs, whiten
from .scan import CACHE_FILE, Scan, hamming, hash_distance_limit, perceptual_hash, scan_images
from .sets import neighbours_of_folder, neighbours_of_ids
from .vectors import compared_vectors

__all__ = [
    "compared_vectors",
    "CACHE_FILE",
    "DEFAULT_K",
    "EXACT_MAX",
    "FORMATS",
    "MIN_HASH_LIMIT",
    "OUTLIER_Z",
    "SCHEMA",
    "TIERS",
    "Group",
    "Member",
    "NearDuplicates",
    "Outlier",
    "Outliers",
    "QueryResult",
    "Report",
    "ReportError",
    "Scan",
    "Tier",
    "build_report",
    "canonical_ids",
    "connected_components",
    "exact_duplicates",
    "hamming",
    "hash_distance_limit",
    "near_duplicates",
    "neighbours_of_folder",
    "neighbours_of_ids",
    "outliers",
    "perceptual_hash",
    "resolve_tiers",
    "robust_z",
    "scan_images",
    "similar_pairs",
    "whiten",
    "write_report",
]
