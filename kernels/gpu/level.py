"""One frame pyramid level made ready for matching on the GPU (same signature as the CPU twin ``prepare_level``).

The same steps in the same order with the GPU kernels; the field mask is sampled
onto the level on the host (it is a few thousand pixels) and uploaded. Two small
results come back: the usable count and range (from ``pixel_list`` and
``masked_range``) and the gradient row sums for ``eps``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from portalign.kernels.cpu.gradient import gradient_limit
from portalign.kernels.cpu.level import DEAD_LINE, cut_dead_lines, sample_nearest
from portalign.kernels.cpu.mask import robust_tail

from . import launch
from .gradient import gradient_row_sums, orientation_features
from .mask import erode_box, masked_range, pixel_list
from .mutual_information import quantize

__all__ = ["prepare_level"]


def prepare_level(image: Any, field_mask: np.ndarray, has_field: bool, scale: float, offset: float, erosion_px: int,
                  n_bins: int, mask: Any, scratch: Any, eroded: Any, pixel_rows: Any, pixel_cols: Any, bins: Any,
                  row_sums: Any, feat_re: Any, feat_im: Any, stats: np.ndarray) -> None:
    """Fill a level's frame buffers; write ``(usable, low, high, eps)`` into the host array ``stats``."""
    xp = launch.array_module()
    if has_field:
        sampled = np.empty(tuple(mask.shape), dtype=np.uint8)
        sample_nearest(np.ascontiguousarray(field_mask, dtype=np.uint8), scale, offset, sampled)
        mask[...] = xp.asarray(sampled)
        erode_box(mask, erosion_px, scratch, eroded)
        if (field_mask == DEAD_LINE).any():  # rare: dead detector lines, cut out on the host's copy of the rule
            keep = np.ones(tuple(mask.shape), dtype=np.uint8)
            cut_dead_lines(np.ascontiguousarray(field_mask, dtype=np.uint8), scale, offset, keep)
            eroded[...] = eroded * xp.asarray(keep)
    else:
        mask[...] = 1
        erode_box(mask, 1, scratch, eroded)
    usable = pixel_list(eroded, pixel_rows, pixel_cols)
    tail = robust_tail(usable)
    lo, hi, _ = masked_range(image, eroded, tail, 1.0 - tail)
    stats[0], stats[1], stats[2] = usable, lo, hi
    limit = gradient_limit(lo, hi)
    if hi <= lo:  # a flat level: one unit above, or one part in 10^6 where values are beyond 2^53 (lo + 1 == lo)
        hi = lo + max(1.0, abs(lo) * 1e-6)
    quantize(image, eroded, float(lo), float(hi), n_bins, bins)
    gradient_row_sums(image, eroded, limit, row_sums)
    sums = launch.to_host(row_sums)
    total = 0.0
    count = 0.0
    for i in range(sums.shape[0]):  # in row order, as the CPU twin adds them
        total += float(sums[i, 0])
        count += float(sums[i, 1])
    eps = total / max(count, 1.0)
    stats[3] = eps
    orientation_features(image, eroded, max(eps, 1e-12), limit, feat_re, feat_im)
