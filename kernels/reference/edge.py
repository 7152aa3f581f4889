"""Float64 reference for the gradient-orientation correlation (slow, obvious numpy).

Same arguments and output buffer as :func:`portalign.kernels.cpu.edge.gradient_correlation`
(the score is defined in that module): features are sampled bilinearly in
float64 and every sum is a numpy float64 sum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gradient_correlation"]


def gradient_correlation(rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray,
                         ref_re: np.ndarray, ref_im: np.ndarray, affines: np.ndarray, rotations: np.ndarray,
                         out: np.ndarray) -> None:
    """Write ``(S_fr, S_ff, S_rr)`` of each pose into ``out[k, :]``."""
    i = np.asarray(rows[:count], dtype=np.int64)
    j = np.asarray(cols[:count], dtype=np.int64)
    fz = np.asarray(frame_re, dtype=np.float64)[i, j] + 1j * np.asarray(frame_im, dtype=np.float64)[i, j]
    keep = fz != 0
    i, j, fz = i[keep], j[keep], fz[keep]
    rz = np.asarray(ref_re, dtype=np.float64) + 1j * np.asarray(ref_im, dtype=np.float64)
    ref_rows, ref_cols = rz.shape
    for k in range(affines.shape[0]):
        a = np.asarray(affines[k], dtype=np.float64)
        x = (a[0, 0] * j + a[0, 1] * i) + a[0, 2]
        y = (a[1, 0] * j + a[1, 1] * i) + a[1, 2]
        ok = (x >= 0) & (y >= 0)
        c0 = np.floor(np.where(ok, np.minimum(x, ref_cols), 0.0)).astype(np.int64)
        r0 = np.floor(np.where(ok, np.minimum(y, ref_rows), 0.0)).astype(np.int64)
        ok &= (c0 < ref_cols - 1) & (r0 < ref_rows - 1)
        c0, r0 = c0[ok], r0[ok]
        wx = x[ok] - c0
        wy = y[ok] - r0
        sampled = ((1 - wx) * (1 - wy) * rz[r0, c0] + wx * (1 - wy) * rz[r0, c0 + 1]
                   + (1 - wx) * wy * rz[r0 + 1, c0] + wx * wy * rz[r0 + 1, c0 + 1])
        turned = (rotations[k, 0] + 1j * rotations[k, 1]) * sampled  # the reference edge turned by 2 theta
        out[k, 0] = float(np.real(fz[ok] * np.conj(turned)).sum())
        out[k, 1] = float((np.abs(fz) ** 2).sum())
        out[k, 2] = float((np.abs(turned) ** 2).sum())
