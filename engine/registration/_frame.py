"""Frame side of a level: usable pixels (inside the field, off its edge band), bins and edge features.

One kernel call per level (``kernels.prepare_level``; its steps are described in
:mod:`portalign.kernels.cpu.level`).
"""

from __future__ import annotations

import numpy as np

from ..field import FieldEstimate
from ._plan import Level

__all__ = ["frame_mask"]

#: Stand-in field mask for levels of a frame without a detected field.
_NO_MASK = np.ones((1, 1), dtype=bool)


def frame_mask(backend, level: Level, field: FieldEstimate, field_level: int, bins: int) -> None:  # type: ignore[no-untyped-def]
    """Usable pixels of a level: inside the field, away from its edge, off the border; then bins and features."""
    has_field = field.detected and field.mask is not None
    # level pixel i is level-0 pixel 2^L i + (2^L - 1)/2, i.e. field-level pixel (that - (2^F - 1)/2) / 2^F
    scale = 2.0 ** (level.index - field_level)
    offset = ((2.0**level.index - 1) / 2 - (2.0**field_level - 1) / 2) / 2.0**field_level
    small = field.mask if has_field else _NO_MASK
    stats = level.stats
    backend.kernels.prepare_level(level.image, small, has_field, scale, offset, level.erosion_px, bins, level.mask,
                                  level.scratch, level.eroded, level.pixel_rows, level.pixel_cols, level.bins,
                                  level.row_sums, level.feat_re, level.feat_im, stats)
    level.usable = int(stats[0])
    level.range = (float(stats[1]), float(stats[2]))
    level.eps = float(stats[3])
