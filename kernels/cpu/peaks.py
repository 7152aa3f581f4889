"""Global-search peaks: the best distinct optima of the correlation window, sub-pixel (numba, CPU).

The window holds the normalised edge cross-correlation for each candidate
rotation ``k`` and translation ``(ty, tx) = (iy - m, ix - m)`` pixels. Peaks are
taken best first; around each, translations within ``suppress`` pixels are
removed (for every rotation) so that the next one is a distinct optimum. The
best ``n_candidates`` are always kept; beyond them, only near-ties (at least
``recheck_ratio`` of the best: periodic anatomy, a picket fence) up to
``max_candidates``. Each peak is refined to sub-pixel (and sub-step in
rotation) by the vertex of the parabola through its neighbours on each axis.

The window is small (``K x (2m+1)^2``, tens of KiB) and is on the host on every
backend; ``kernels/gpu/peaks.py`` uses this function on it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["search_peaks", "parabola_offset"]


@njit(cache=True, nogil=True)
def parabola_offset(left: float, centre: float, right: float, has_left: bool, has_right: bool) -> float:  # pragma: no cover
    """Offset (-0.5..0.5) of the vertex of the parabola through three equally spaced samples (0 if not a maximum)."""
    if not (has_left and has_right) or not (np.isfinite(left) and np.isfinite(right)):
        return 0.0
    denom = left - 2.0 * centre + right
    if denom >= 0.0:
        return 0.0
    return min(max(0.5 * (left - right) / denom, -0.5), 0.5)


@njit(cache=True, nogil=True)
def search_peaks(window: np.ndarray, thetas: np.ndarray, spacing_row: float, spacing_col: float, n_candidates: int,
                 recheck_ratio: float, suppress: int, out_poses: np.ndarray, out_scores: np.ndarray) -> int:  # pragma: no cover
    """Write the distinct optima of ``window`` as poses; return how many.

    Parameters
    ----------
    window : float64[K, 2m+1, 2m+1]
        Normalised correlation; index ``m`` is zero translation. Not modified.
    thetas : float64[K]
        Rotation (rad) of each surface, equally spaced.
    spacing_row, spacing_col : float
        Pixel spacing (mm) of the search level.
    n_candidates : int
        Peaks always kept (if positive and finite).
    recheck_ratio : float
        Further peaks are kept while they reach this fraction of the best.
    suppress : int
        Half-width (pixels) of the square removed around each peak.
    out_poses : float64[max_candidates, 3]
        ``(dx_mm, dy_mm, theta_rad)`` of each peak, best first.
    out_scores : float64[max_candidates]
        Peak values.
    """
    n_k, size, _ = window.shape
    m = (size - 1) // 2
    work = window.copy()
    step = thetas[1] - thetas[0] if n_k > 1 else 0.0
    found = 0
    while found < out_poses.shape[0]:
        best = -np.inf
        bk, by, bx = 0, 0, 0
        for k in range(n_k):
            for iy in range(size):
                for ix in range(size):
                    if work[k, iy, ix] > best:
                        best = work[k, iy, ix]
                        bk, by, bx = k, iy, ix
        if not np.isfinite(best) or (found > 0 and best <= 0.0):
            break
        if found >= n_candidates and best < recheck_ratio * out_scores[0]:
            break
        centre = window[bk, by, bx]
        fx = parabola_offset(window[bk, by, bx - 1] if bx > 0 else 0.0, centre,
                             window[bk, by, bx + 1] if bx < size - 1 else 0.0, bx > 0, bx < size - 1)
        fy = parabola_offset(window[bk, by - 1, bx] if by > 0 else 0.0, centre,
                             window[bk, by + 1, bx] if by < size - 1 else 0.0, by > 0, by < size - 1)
        ft = parabola_offset(window[bk - 1, by, bx] if bk > 0 else 0.0, centre,
                             window[bk + 1, by, bx] if bk < n_k - 1 else 0.0, bk > 0, bk < n_k - 1)
        out_poses[found, 0] = (bx - m + fx) * spacing_col
        out_poses[found, 1] = (by - m + fy) * spacing_row
        out_poses[found, 2] = thetas[bk] + ft * step
        out_scores[found] = best
        found += 1
        for k in range(n_k):
            for iy in range(max(0, by - suppress), min(size, by + suppress + 1)):
                for ix in range(max(0, bx - suppress), min(size, bx + suppress + 1)):
                    work[k, iy, ix] = -np.inf
    return found
