"""What the near-duplicate report's cosines are of: the search vectors, or the model's own vectors
where the search vector is VLAD (:meth:`encoder.Encoder.copy_vectors`, computed in the report's
decoding pass, :mod:`.scan`)."""

from __future__ import annotations

import numpy as np

from encoder.calibration import fit_calibration

from ..engine import Engine
from .members import canonical_ids
from .pairs import whiten
from .scan import Scan, scan_images


def compared_vectors(engine: Engine, scan: Scan | None = None, *, whitened: bool = True):
    """(ids, vectors compared, raw search vectors) of the indexed images that are not byte-identical
    copies (those are the exact section's): what the near-duplicate report's cosines are of.

    The search vectors, unless the model has copy vectors (a VLAD search vector:
    :meth:`encoder.Encoder.copy_vectors`); then the scan's (`scan`, or a new one), centred on these
    images' mean as the model's own vector is when it is the search vector (the "centre"
    calibration), so the report sees the vector its tiers were tuned on; images the scan could not
    decode (changed or gone since they were indexed) are left out. Whitened (:func:`whiten`)
    unless `whitened` is False."""
    return compared_in_snapshot(engine, engine.snapshot(), scan, whitened)


def compared_in_snapshot(engine: Engine, snap, scan: Scan | None, whitened: bool):
    """:func:`compared_vectors` of one index generation `snap` (``engine.snapshot()``), so that a
    caller's index and vectors come from the same one."""
    store_ids = snap.vectors.ids()  # ascending; from the flat store or the generation's segments
    ids = store_ids[np.isin(store_ids, canonical_ids(engine))]
    copies = None
    if snap.encoder.has_copy_vectors:
        scan = scan if scan is not None else scan_images(engine)
        if scan.vectors is not None:
            where, found = scan.locate(ids)
            ids, copies = ids[found], scan.vectors[where[found]]
            if len(copies):
                copies = fit_calibration(copies, "centre").apply(copies)
    raw = snap.vectors.get(ids)  # one copy, of the distinct images' vectors only
    compared = raw if copies is None else copies
    return ids, (whiten(compared) if whitened else compared), raw
