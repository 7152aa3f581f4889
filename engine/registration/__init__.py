"""Registration: reference preparation, the per-frame program, quality checks and batches.

The public surface is re-exported here; the implementation lives in private modules:
``_reference`` (prepare once), ``_plan`` (per-geometry plans and lanes), ``_program``
(the per-frame stages in order), ``_frame``, ``_quality``, ``_search``, ``_refine``
(one stage each) and ``_batch``.
"""

from ._batch import BatchError, batch_workers, register_batch, register_each
from ._plan import FramePlan, Level, pose_affines, wants_field
from ._program import register_frame
from ._reference import Reference, prepare_reference, prepare_reference_for, warm_up_kernels

__all__ = [
    "BatchError",
    "batch_workers",
    "FramePlan",
    "Level",
    "Reference",
    "pose_affines",
    "prepare_reference",
    "prepare_reference_for",
    "register_batch",
    "register_each",
    "register_frame",
    "wants_field",
    "warm_up_kernels",
]
