"""One frame pyramid level made ready for matching, in one compiled call (numba, CPU).

The stage's steps, in order:

1. usable mask: the detected field (a small mask from the field-detection level)
   sampled nearest-neighbour onto the level, pixel ``i`` at ``i * scale + offset``
   of the small level; or the whole image when no field edge was found;
2. erosion by ``erosion_px`` (the field-edge band; 1 px without a field) with
   :func:`.mask.erode_box`; the usable pixels listed row-major (:func:`.mask.pixel_list`);
3. robust intensity range (0.5 / 99.5 % quantiles, :func:`.mask.masked_range`) and
   the intensity bins for mutual information (:func:`.mutual_information.quantize`);
4. edge features: the mean gradient magnitude ``eps`` over the usable pixels (rows
   summed in order), then the doubled-angle features (:mod:`.gradient`).

``stats`` receives ``(usable, low, high, eps)``. ``kernels/gpu/level.py`` has the
same signature and runs the GPU kernels in the same order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .gradient import gradient_row_sums, orientation_features
from .mask import erode_box, masked_range, pixel_list
from .mutual_information import quantize

__all__ = ["prepare_level", "sample_nearest"]


@njit(cache=True, nogil=True)
def sample_nearest(small: np.ndarray, scale: float, offset: float, out: np.ndarray) -> None:  # pragma: no cover
    """Write ``small`` sampled nearest-neighbour onto ``out``'s grid (pixel ``i`` at ``rint(i * scale + offset)``)."""
    rows, cols = out.shape
    s_rows, s_cols = small.shape
    for i in range(rows):
        r = min(max(int(np.rint(i * scale + offset)), 0), s_rows - 1)
        for j in range(cols):
            c = min(max(int(np.rint(j * scale + offset)), 0), s_cols - 1)
            out[i, j] = 1 if small[r, c] != 0 else 0


@njit(cache=True, nogil=True)
def prepare_level(image: np.ndarray, field_mask: np.ndarray, has_field: bool, scale: float, offset: float,
                  erosion_px: int, n_bins: int, mask: np.ndarray, scratch: np.ndarray, eroded: np.ndarray,
                  pixel_rows: np.ndarray, pixel_cols: np.ndarray, bins: np.ndarray, row_sums: np.ndarray,
                  feat_re: np.ndarray, feat_im: np.ndarray, stats: np.ndarray) -> None:  # pragma: no cover
    """Fill a level's frame buffers (mask, usable pixels, bins, features); write ``(usable, low, high, eps)`` to ``stats``.

    Parameters
    ----------
    image : float32[rows, cols]
        The frame's pyramid level.
    field_mask : uint8[r, c]
        The field on the detection level (ignored unless ``has_field``).
    has_field : bool
    scale, offset : float
        Level pixel ``i`` lies at ``i * scale + offset`` on the detection level.
    erosion_px : int
        Half-width of the field-edge band (pixels of this level).
    n_bins : int
        Intensity bins for mutual information.
    mask, scratch, eroded : uint8[rows, cols]
    pixel_rows, pixel_cols : int32[rows * cols]
    bins : int16[rows, cols]
    row_sums : float64[rows, 2]
    feat_re, feat_im : float32[rows, cols]
        Output buffers (overwritten).
    stats : float64[4]
    """
    if has_field:
        sample_nearest(field_mask, scale, offset, mask)
        erode_box(mask, erosion_px, scratch, eroded)
    else:
        mask[:, :] = 1
        erode_box(mask, 1, scratch, eroded)
    usable = pixel_list(eroded, pixel_rows, pixel_cols)
    lo, hi, _ = masked_range(image, eroded, 0.005, 0.995)
    stats[0] = usable
    stats[1] = lo
    stats[2] = hi
    if hi <= lo:
        hi = lo + 1.0
    quantize(image, eroded, lo, hi, n_bins, bins)
    gradient_row_sums(image, eroded, row_sums)
    total = 0.0
    count = 0.0
    for i in range(row_sums.shape[0]):
        total += row_sums[i, 0]
        count += row_sums[i, 1]
    eps = total / max(count, 1.0)
    stats[3] = eps
    orientation_features(image, eroded, max(eps, 1e-12), feat_re, feat_im)
