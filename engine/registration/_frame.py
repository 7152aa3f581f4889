"""Frame side of a level: usable pixels (inside the field, off its edge band), bins and edge features."""

from __future__ import annotations

import numpy as np

from ..field import FieldEstimate, sample_mask
from ._plan import Level, edge_features

__all__ = ["frame_mask"]


def frame_mask(backend, level: Level, field: FieldEstimate, field_level: int, bins: int) -> None:  # type: ignore[no-untyped-def]
    """Usable pixels of a level: inside the field, away from its edge, off the border; then bins and features."""
    k = backend.kernels
    if field.detected and field.mask is not None:
        # level pixel i is level-0 pixel 2^L i + (2^L - 1)/2, i.e. field-level pixel (that - (2^F - 1)/2) / 2^F
        scale = 2.0 ** (level.index - field_level)
        offset = ((2.0**level.index - 1) / 2 - (2.0**field_level - 1) / 2) / 2.0**field_level
        level.mask[...] = backend.asarray(sample_mask(field.mask, scale, offset, level.shape).astype(np.uint8))
        k.erode_box(level.mask, level.erosion_px, level.scratch, level.eroded)
    else:
        level.mask[...] = 1
        k.erode_box(level.mask, 1, level.scratch, level.eroded)
    level.usable = int(k.pixel_list(level.eroded, level.pixel_rows, level.pixel_cols))
    lo, hi, _ = k.masked_range(level.image, level.eroded, 0.005, 0.995)
    level.range = (float(lo), float(hi))
    if hi <= lo:
        hi = lo + 1.0
    k.quantize(level.image, level.eroded, float(lo), float(hi), bins, level.bins)
    level.eps = edge_features(k, level.image, level.eroded, level.row_sums, level.feat_re, level.feat_im,
                              backend.to_host)


