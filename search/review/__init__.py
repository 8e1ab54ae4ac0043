"""Review and resolve near-duplicates: keep one image of a group, move the others aside, undo.

No web framework here: ``lookalike dedupe``/``restore`` and the ``/duplicates/...`` HTTP
endpoints call these functions. One module a job:

- :mod:`.plan`: what resolving would move, checked against the disk (nothing moves);
- :mod:`.moves`: the journaled moves into ``INDEX/quarantine/<batch>/`` and back, and the
  recovery that makes a kill at any moment lose nothing;
- :mod:`.actions`: resolve, restore, dismiss, under the index's writer lock;
- :mod:`.decisions`: what was decided (in the catalog, by content hash), and the filter
  that keeps resolved and dismissed groups out of the next report.

Files are moved, never deleted; a file that is not exactly what the catalog says (size,
mtime, content hash), or that leads outside the indexed folder, is never touched.
"""

from .actions import Batch, QuarantineEntry, batches, dismiss, recover, resolve, restore, writing
from .decisions import Decisions, filter_groups, hide_decided, hide_decided_in_report, load_decisions
from .errors import Conflict, FileChanged, OutsideFolder, ReviewError
from .plan import DUPLICATE_TIERS, Move, Plan, check_file, plan_groups, plan_resolution

__all__ = [
    "DUPLICATE_TIERS",
    "Batch",
    "Conflict",
    "Decisions",
    "FileChanged",
    "Move",
    "OutsideFolder",
    "Plan",
    "QuarantineEntry",
    "ReviewError",
    "batches",
    "check_file",
    "dismiss",
    "filter_groups",
    "hide_decided",
    "hide_decided_in_report",
    "load_decisions",
    "plan_groups",
    "plan_resolution",
    "recover",
    "resolve",
    "restore",
    "writing",
]
