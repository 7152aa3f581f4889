"""Reference for the global-search peaks (slow, obvious numpy): same arguments as the CPU kernel."""

from __future__ import annotations

import numpy as np

__all__ = ["search_peaks"]


def _vertex(left: float | None, centre: float, right: float | None) -> float:
    if left is None or right is None or not (np.isfinite(left) and np.isfinite(right)):
        return 0.0
    denom = left - 2.0 * centre + right
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def search_peaks(window: np.ndarray, thetas: np.ndarray, spacing_row: float, spacing_col: float, n_candidates: int,
                 recheck_ratio: float, suppress: int, out_poses: np.ndarray, out_scores: np.ndarray) -> int:
    """Write the distinct optima of ``window`` as poses (best first); return how many."""
    work = np.array(window, dtype=np.float64)
    n_k, size, _ = work.shape
    m = (size - 1) // 2
    step = thetas[1] - thetas[0] if n_k > 1 else 0.0
    found = 0
    while found < len(out_poses):
        k, iy, ix = np.unravel_index(int(np.argmax(work)), work.shape)
        peak = float(work[k, iy, ix])
        if not np.isfinite(peak) or (found and peak <= 0):
            break
        if found >= n_candidates and peak < recheck_ratio * out_scores[0]:
            break
        w = window
        fx = _vertex(w[k, iy, ix - 1] if ix > 0 else None, w[k, iy, ix], w[k, iy, ix + 1] if ix < size - 1 else None)
        fy = _vertex(w[k, iy - 1, ix] if iy > 0 else None, w[k, iy, ix], w[k, iy + 1, ix] if iy < size - 1 else None)
        ft = _vertex(w[k - 1, iy, ix] if k > 0 else None, w[k, iy, ix], w[k + 1, iy, ix] if k < n_k - 1 else None)
        out_poses[found] = ((ix - m + fx) * spacing_col, (iy - m + fy) * spacing_row, thetas[k] + ft * step)
        out_scores[found] = peak
        found += 1
        work[:, max(0, iy - suppress): iy + suppress + 1, max(0, ix - suppress): ix + suppress + 1] = -np.inf
    return found
