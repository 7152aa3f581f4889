"""Edge features: doubled-angle gradient orientation (numba, CPU).

For a gradient ``g = (gx, gy)`` (central differences) the feature is the
complex number::

    z = (gx + i*gy)**2 / (|g|**2 + eps**2)
      = |g|**2 / (|g|**2 + eps**2) * exp(2i*phi)

Squaring doubles the orientation angle ``phi``, so an edge whose contrast is
inverted (``g -> -g``: MV portal versus kV DRR, bone dark versus bright) gives
the same feature. The magnitude ``|g|^2 / (|g|^2 + eps^2)`` is a soft edge
indicator: about 1 on edges stronger than ``eps`` and about 0 in flat or noisy
regions (Haber & Modersitzki's normalised gradient fields use the same
normalisation). Under an in-plane rotation by ``theta`` the feature rotates by
``2*theta``.

Masked pixels (``mask == 0``) and the image border get ``z = 0``; they then add
nothing to any correlation. So does a pixel next to an outlier: one whose
central differences exceed ``limit`` in either direction. The callers pass
``limit = 1.5 (high - low)`` for the image's robust range (0.5 and 99.5 %
quantiles): two neighbours ``3 (high - low)`` apart, which needs a value beyond
that range widened by its own width. A hot or dead pixel far outside the image's
values (65535 among values of 0-2; 1e38) would otherwise be the strongest "edge"
of the image and inflate the edge scale ``eps`` many-fold, flattening every real
edge; ``limit = inf`` leaves nothing out.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["orientation_features", "gradient_row_sums", "gradient_limit", "LIMIT_RANGES"]

#: The largest central difference of a usable pixel, in robust ranges (``high - low``).
LIMIT_RANGES = 1.5


@njit(cache=True, nogil=True)
def gradient_limit(low: float, high: float) -> float:  # pragma: no cover - compiled
    """Return the ``limit`` for an image whose robust range (0.5 / 99.5 % quantiles) is ``low .. high``.

    ``LIMIT_RANGES * (high - low)``: neighbours ``3 (high - low)`` apart; ``inf`` when the range is empty.
    """
    return LIMIT_RANGES * (high - low) if high > low else np.inf


@njit(parallel=True, cache=True, nogil=True)
def orientation_features(
    image: np.ndarray, mask: np.ndarray, eps: float, limit: float, out_re: np.ndarray, out_im: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Write the doubled-angle features of ``image`` into ``out_re``, ``out_im``.

    Parameters
    ----------
    image : float32[rows, cols]
    mask : uint8[rows, cols]
        1 where the pixel may be used.
    eps : float
        Edge-strength scale in image units per pixel.
    limit : float
        Largest central difference of a usable pixel (image units per pixel; ``inf``: no bound); a pixel
        beyond it is next to an outlier and gets ``z = 0``.
    out_re, out_im : float32[rows, cols]
        ``(gx^2 - gy^2) / (|g|^2 + eps^2)`` and ``2 gx gy / (|g|^2 + eps^2)``.
    """
    rows, cols = image.shape
    eps2 = eps * eps
    for i in prange(rows):
        for j in range(cols):
            if i == 0 or j == 0 or i == rows - 1 or j == cols - 1 or mask[i, j] == 0:
                out_re[i, j] = 0.0
                out_im[i, j] = 0.0
                continue
            gx = 0.5 * (image[i, j + 1] - image[i, j - 1])
            gy = 0.5 * (image[i + 1, j] - image[i - 1, j])
            if abs(gx) > limit or abs(gy) > limit:
                out_re[i, j] = 0.0
                out_im[i, j] = 0.0
                continue
            norm = gx * gx + gy * gy + eps2
            out_re[i, j] = (gx * gx - gy * gy) / norm
            out_im[i, j] = 2.0 * gx * gy / norm


@njit(parallel=True, cache=True, nogil=True)
def gradient_row_sums(image: np.ndarray, mask: np.ndarray, limit: float, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write per row ``(sum |g|, count)`` over masked interior pixels into ``out[row, :]``.

    The caller adds the rows in order, so the mean gradient magnitude (the
    feature scale ``eps``) is the same whatever the thread count. Pixels with a
    central difference beyond ``limit`` (next to an outlier; see the module
    docstring) are neither summed nor counted, as :func:`orientation_features`
    leaves them out.
    """
    rows, cols = image.shape
    for i in prange(rows):
        total = 0.0
        count = 0
        if 0 < i < rows - 1:
            for j in range(1, cols - 1):
                if mask[i, j] == 0:
                    continue
                gx = 0.5 * (image[i, j + 1] - image[i, j - 1])
                gy = 0.5 * (image[i + 1, j] - image[i - 1, j])
                if abs(gx) > limit or abs(gy) > limit:
                    continue
                total += np.sqrt(gx * gx + gy * gy)
                count += 1
        out[i, 0] = total
        out[i, 1] = count
