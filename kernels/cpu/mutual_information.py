"""Mutual information from partial-volume joint histograms (numba, CPU).

The frame is the fixed image: each usable frame pixel has one intensity bin.
The reference is the moving one: a frame pixel maps, under a candidate pose, to
a fractional reference position; partial-volume interpolation (Maes et al.,
IEEE TMI 1997) spreads the pixel's unit weight over the bins of the four
neighbouring reference pixels with the bilinear weights. The histogram, and so
the metric, then varies continuously with sub-pixel shifts instead of jumping
as nearest-neighbour binning does.

Determinism: weights are fixed-point integers (the fractional position is
quantised to 1/256 pixel, the four weights sum to exactly 65536) and the
histograms are int64. Integer sums do not depend on their order, so the result
is bit-identical whatever the thread count or the GPU's atomic order.

Poses come as affine maps ``(K, 2, 3)`` from frame pixel ``(col, row, 1)`` to
reference pixel ``(col, row)``; the kernels know nothing of millimetres.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["quantize", "joint_histograms", "mutual_information", "PV_ONE"]

#: Fixed-point scale of one pixel's weight: 256 sub-positions per axis.
PV_ONE = 65536


@njit(parallel=True, cache=True, nogil=True)
def quantize(
    image: np.ndarray, mask: np.ndarray, low: float, high: float, bins: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Write the bin of each pixel into ``out`` (int16), ``-1`` where ``mask == 0``.

    Values are clipped to ``[low, high]`` and mapped linearly onto ``0 .. bins-1``.
    """
    rows, cols = image.shape
    scale = bins / (high - low)
    for i in prange(rows):
        for j in range(cols):
            if mask[i, j] == 0:
                out[i, j] = -1
                continue
            b = int((image[i, j] - low) * scale)
            if b < 0:
                b = 0
            elif b >= bins:
                b = bins - 1
            out[i, j] = b


@njit(parallel=True, cache=True, nogil=True)
def joint_histograms(
    rows: np.ndarray, cols: np.ndarray, count: int, frame_bins: np.ndarray, ref_bins: np.ndarray,
    affines: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Fill ``out[k, frame_bin, ref_bin]`` with partial-volume counts for each pose ``k``.

    Parameters
    ----------
    rows, cols : int32[>= count]
        The usable frame pixels (see :func:`portalign.kernels.cpu.mask.pixel_list`), in
        row-major order; only these are visited.
    count : int
        Number of entries of ``rows``/``cols`` in use.
    frame_bins : int16[rows, cols]
        Frame bins (``-1`` pixels are skipped even if listed).
    ref_bins : int16[ref_rows, ref_cols]
        Reference bins, ``-1`` where the reference is not valid.
    affines : float64[K, 2, 3]
        Frame pixel -> reference pixel maps.
    out : int64[K, bins, bins]
        Overwritten. A frame pixel counts only when all four reference neighbours
        are valid, so each counted pixel adds exactly ``PV_ONE``.
    """
    n_pose = affines.shape[0]
    if out.shape[0] < n_pose:
        raise ValueError("joint_histograms: out needs a histogram per pose of affines")
    ref_rows, ref_cols = ref_bins.shape
    for k in prange(n_pose):
        hist = out[k]
        hist[:, :] = 0
        a00 = affines[k, 0, 0]
        a01 = affines[k, 0, 1]
        a02 = affines[k, 0, 2]
        a10 = affines[k, 1, 0]
        a11 = affines[k, 1, 1]
        a12 = affines[k, 1, 2]
        for t in range(count):
            i = rows[t]
            j = cols[t]
            fb = frame_bins[i, j]
            if fb < 0:
                continue
            x = a00 * j + a01 * i + a02
            y = a10 * j + a11 * i + a12
            if x < 0.0 or y < 0.0:
                continue
            c0 = int(x)
            r0 = int(y)
            if c0 >= ref_cols - 1 or r0 >= ref_rows - 1:
                continue
            b00 = ref_bins[r0, c0]
            b01 = ref_bins[r0, c0 + 1]
            b10 = ref_bins[r0 + 1, c0]
            b11 = ref_bins[r0 + 1, c0 + 1]
            if b00 < 0 or b01 < 0 or b10 < 0 or b11 < 0:
                continue
            qx = int((x - c0) * 256.0)
            qy = int((y - r0) * 256.0)
            hist[fb, b00] += (256 - qx) * (256 - qy)
            hist[fb, b01] += qx * (256 - qy)
            hist[fb, b10] += (256 - qx) * qy
            hist[fb, b11] += qx * qy


@njit(cache=True, nogil=True)
def mutual_information(hist: np.ndarray, normalised: bool, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write the mutual information of each joint histogram ``hist[k]`` into ``out[k]``.

    ``MI = H(F) + H(R) - H(F, R)`` in nats; with ``normalised`` the
    normalised MI of Studholme et al. ``(H(F) + H(R)) / H(F, R)`` (1 for
    independent images, 2 for identical ones). An empty histogram gives 0.
    """
    n_pose, n_f, n_r = hist.shape
    p_f = np.empty(n_f)
    p_r = np.empty(n_r)
    for k in range(n_pose):
        total = 0.0
        for a in range(n_f):
            for b in range(n_r):
                total += hist[k, a, b]
        if total <= 0.0:
            out[k] = 0.0
            continue
        p_f[:] = 0.0
        p_r[:] = 0.0
        h_joint = 0.0
        for a in range(n_f):
            for b in range(n_r):
                h = hist[k, a, b]
                if h > 0:
                    p = h / total
                    h_joint -= p * np.log(p)
                    p_f[a] += p
                    p_r[b] += p
        h_f = 0.0
        for a in range(n_f):
            if p_f[a] > 0.0:
                h_f -= p_f[a] * np.log(p_f[a])
        h_r = 0.0
        for b in range(n_r):
            if p_r[b] > 0.0:
                h_r -= p_r[b] * np.log(p_r[b])
        if normalised:
            out[k] = (h_f + h_r) / h_joint if h_joint > 0.0 else 1.0
        else:
            out[k] = h_f + h_r - h_joint
