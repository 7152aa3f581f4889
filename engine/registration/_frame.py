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
    if field.dead_rows or field.dead_cols:
        _drop_dead_lines(level, field, field_level)
    level.usable = int(k.pixel_list(level.eroded, level.pixel_rows, level.pixel_cols))
    lo, hi, _ = k.masked_range(level.image, level.eroded, 0.005, 0.995)
    level.range = (float(lo), float(hi))
    if hi <= lo:
        hi = lo + 1.0
    k.quantize(level.image, level.eroded, float(lo), float(hi), bins, level.bins)
    level.eps = edge_features(k, level.image, level.eroded, level.row_sums, level.feat_re, level.feat_im,
                              backend.to_host)




def _drop_dead_lines(level: Level, field: FieldEstimate, field_level: int) -> None:
    """Leave dead detector lines (found on the field level) and the pixels next to them out of a level's mask.

    Field-level row ``i`` covers level-0 rows ``2^F i .. 2^F (i + 1) - 1``, i.e. this level's rows
    ``2^(F-L) i .. 2^(F-L) (i + 1) - 1`` (one row when the level is coarser); one more row on each side goes
    too, since the edge features there take a gradient across the line.
    """
    for lines, size, axis in ((field.dead_rows, level.shape[0], 0), (field.dead_cols, level.shape[1], 1)):
        for i in lines:
            if level.index < field_level:
                # the block the field level saw: the line is the one that spikes most away from its neighbours
                span = 2 ** (field_level - level.index)
                lo, hi = max(i * span - 1, 0), min((i + 1) * span + 1, size)
                means = level.image[lo:hi].mean(axis=1) if axis == 0 else level.image[:, lo:hi].mean(axis=0)
                means = np.asarray(means.get() if hasattr(means, "get") else means, dtype=np.float64)
                if means.size >= 3:
                    spike = np.abs(2.0 * means[1:-1] - means[:-2] - means[2:])
                    j = lo + 1 + int(np.argmax(spike))
                    lo, hi = j - 1, j + 2
            else:
                j = i // 2 ** (level.index - field_level)
                lo, hi = j - 1, j + 2
            lo, hi = max(lo, 0), min(hi, size)
            if axis == 0:
                level.eroded[lo:hi, :] = 0
            else:
                level.eroded[:, lo:hi] = 0
