"""Float64 reference for the gradient-orientation correlation (slow, obvious numpy).

Same arguments and output buffer as :func:`portalign.kernels.cpu.edge.gradient_correlation`
(the score is defined in that module): features are sampled bilinearly in
float64 and every sum is a numpy float64 sum.
"""

from __future__ import annotations

import numpy as np

from ..cpu.edge import VALID_LIMIT

__all__ = ["gradient_correlation", "matched_orientation"]


def _frame_edges(rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the listed frame pixels with a non-zero feature: their rows, columns and complex features (float64)."""
    i = np.asarray(rows[:count], dtype=np.int64)
    j = np.asarray(cols[:count], dtype=np.int64)
    fz = np.asarray(frame_re, dtype=np.float64)[i, j] + 1j * np.asarray(frame_im, dtype=np.float64)[i, j]
    keep = fz != 0
    return i[keep], j[keep], fz[keep]


def gradient_correlation(rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray,
                         ref_re: np.ndarray, ref_im: np.ndarray, affines: np.ndarray, rotations: np.ndarray,
                         out: np.ndarray) -> None:
    """Write ``(S_fr, S_ff, S_rr)`` of each pose into ``out[k, :]``."""
    i, j, fz = _frame_edges(rows, cols, count, frame_re, frame_im)
    rz = np.asarray(ref_re, dtype=np.float64) + 1j * np.asarray(ref_im, dtype=np.float64)
    ref_rows, ref_cols = rz.shape
    for k in range(affines.shape[0]):
        a = np.asarray(affines[k], dtype=np.float64)
        x = (a[0, 0] * j + a[0, 1] * i) + a[0, 2]
        y = (a[1, 0] * j + a[1, 1] * i) + a[1, 2]
        inside = (x >= 0) & (y >= 0)
        c0 = np.floor(np.where(inside, np.minimum(x, ref_cols), 0.0)).astype(np.int64)
        r0 = np.floor(np.where(inside, np.minimum(y, ref_rows), 0.0)).astype(np.int64)
        inside &= (c0 < ref_cols - 1) & (r0 < ref_rows - 1)
        # an invalid reference pixel is a zero feature with no weight; the frame pixel's energy counts by the
        # valid share of its sample (off the image: wholly, as no match)
        wx = np.where(inside, x - c0, 0.0)
        wy = np.where(inside, y - r0, 0.0)
        c0, r0 = np.where(inside, c0, 0), np.where(inside, r0, 0)
        weights = ((1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy)
        corners = (rz[r0, c0], rz[r0, c0 + 1], rz[r0 + 1, c0], rz[r0 + 1, c0 + 1])
        valid = [np.where(z.real <= VALID_LIMIT, w, 0.0) for w, z in zip(weights, corners, strict=True)]
        share = sum(valid)
        counted = np.where(inside, share, 1.0)
        ok = inside & (share > 0)
        sampled = sum(w * z for w, z in zip(valid, corners, strict=True))[ok]
        turned = (rotations[k, 0] + 1j * rotations[k, 1]) * sampled  # the reference edge turned by 2 theta
        out[k, 0] = float(np.real(fz[ok] * np.conj(turned)).sum())
        out[k, 1] = float((counted * np.abs(fz) ** 2).sum())
        out[k, 2] = float((np.abs(turned) ** 2).sum())


def matched_orientation(rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray,
                        ref_re: np.ndarray, ref_im: np.ndarray, affines: np.ndarray, rotations: np.ndarray,
                        out: np.ndarray) -> None:
    """Write ``(W, Z_re, Z_im, S_ff, E)`` of each pose into ``out[k, :]`` (defined in :mod:`portalign.kernels.cpu.edge`)."""
    i, j, fz = _frame_edges(rows, cols, count, frame_re, frame_im)
    valid = (np.asarray(ref_re) <= VALID_LIMIT).astype(np.float64)
    rz = np.where(valid > 0, np.asarray(ref_re, dtype=np.float64) + 1j * np.asarray(ref_im, dtype=np.float64), 0.0)
    ref_rows, ref_cols = rz.shape
    for k in range(affines.shape[0]):
        a = np.asarray(affines[k], dtype=np.float64)
        x = (a[0, 0] * j + a[0, 1] * i) + a[0, 2]
        y = (a[1, 0] * j + a[1, 1] * i) + a[1, 2]
        inside = (x >= 0) & (y >= 0) & (x < ref_cols - 1) & (y < ref_rows - 1)
        energy = np.abs(fz) ** 2
        x, y, z = x[inside], y[inside], fz[inside]
        c0 = np.floor(x).astype(np.int64)
        r0 = np.floor(y).astype(np.int64)
        wx, wy = x - c0, y - r0
        share = ((1 - wx) * (1 - wy) * valid[r0, c0] + wx * (1 - wy) * valid[r0, c0 + 1]
                 + (1 - wx) * wy * valid[r0 + 1, c0] + wx * wy * valid[r0 + 1, c0 + 1])
        out[k, 3] = float(energy[~inside].sum() + (share * energy[inside]).sum())
        out[k, 4] = float(energy.sum())
        sampled = ((1 - wx) * (1 - wy) * rz[r0, c0] + wx * (1 - wy) * rz[r0, c0 + 1] + (1 - wx) * wy * rz[r0 + 1, c0]
                   + wx * wy * rz[r0 + 1, c0 + 1])
        turned = (rotations[k, 0] + 1j * rotations[k, 1]) * sampled
        match = np.maximum(np.real(z * np.conj(turned)), 0.0)
        out[k, 0] = float(match.sum())
        direction = (match * z / np.abs(z)).sum()
        out[k, 1] = float(direction.real)
        out[k, 2] = float(direction.imag)
