"""Float64 reference for partial-volume mutual information (slow, obvious numpy).

Same arguments and output buffers as :mod:`portalign.kernels.cpu.mutual_information`.

- :func:`joint_histograms` is partial-volume interpolation (Maes et al., IEEE
  TMI 1997) with exact float64 bilinear weights: each counted frame pixel adds
  a total weight of 1.0 (``out`` is float64). The kernels quantise the weights
  to 1/256 pixel, so their histograms divided by ``PV_ONE`` differ from this by
  at most ``4 * 2/256`` per pixel and bin.
- :func:`joint_histograms_fixed_point` is the kernels' integer definition
  written out in numpy (positions rounded in the same order, weights truncated
  to 1/256, int64 sums): it must equal the CPU kernel bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PV_ONE", "quantize", "joint_histograms", "joint_histograms_fixed_point", "mutual_information"]

#: Fixed-point weight of one pixel in the kernels' histograms.
PV_ONE = 65536


def quantize(image: np.ndarray, mask: np.ndarray, low: float, high: float, bins: int, out: np.ndarray) -> None:
    """Write ``floor((v - low) * bins / (high - low))`` clipped to ``0..bins-1``, ``-1`` where ``mask == 0``."""
    scale = bins / (float(high) - float(low))
    b = np.floor((np.asarray(image, dtype=np.float64) - float(low)) * scale)
    out[...] = np.where(np.asarray(mask) != 0, np.clip(b, 0, bins - 1), -1)


def _positions(rows: np.ndarray, cols: np.ndarray, count: int, affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return listed pixels ``(i, j)`` and reference positions ``x = (a00 j + a01 i) + a02``, ``y`` alike."""
    i = np.asarray(rows[:count], dtype=np.int64)
    j = np.asarray(cols[:count], dtype=np.int64)
    x = (affine[0, 0] * j + affine[0, 1] * i) + affine[0, 2]
    y = (affine[1, 0] * j + affine[1, 1] * i) + affine[1, 2]
    return i, j, x, y


def _counted(frame_bins: np.ndarray, ref_bins: np.ndarray, i: np.ndarray, j: np.ndarray, x: np.ndarray,
             y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return the pixels that count (a frame bin, four valid reference neighbours inside) and their bins."""
    ref_rows, ref_cols = ref_bins.shape
    fb = frame_bins[i, j].astype(np.int64)
    ok = (fb >= 0) & (x >= 0) & (y >= 0)
    c0 = np.floor(np.where(ok, np.minimum(x, ref_cols), 0.0)).astype(np.int64)
    r0 = np.floor(np.where(ok, np.minimum(y, ref_rows), 0.0)).astype(np.int64)
    ok &= (c0 < ref_cols - 1) & (r0 < ref_rows - 1)
    c0 = np.where(ok, c0, 0)
    r0 = np.where(ok, r0, 0)
    corners = [ref_bins[r0, c0], ref_bins[r0, c0 + 1], ref_bins[r0 + 1, c0], ref_bins[r0 + 1, c0 + 1]]
    for b in corners:
        ok &= b >= 0
    return ok, fb, c0, r0, [b.astype(np.int64) for b in corners]


def joint_histograms(rows: np.ndarray, cols: np.ndarray, count: int, frame_bins: np.ndarray, ref_bins: np.ndarray,
                     affines: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out[k]`` (float64) with exact-weight partial-volume counts: each counted pixel adds 1.0."""
    out[...] = 0.0
    for k in range(affines.shape[0]):
        i, j, x, y = _positions(rows, cols, int(count), np.asarray(affines[k], dtype=np.float64))
        ok, fb, c0, r0, corners = _counted(frame_bins, ref_bins, i, j, x, y)
        wx = (x - c0)[ok]
        wy = (y - r0)[ok]
        weights = [(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy]
        for b, w in zip(corners, weights, strict=True):
            np.add.at(out[k], (fb[ok], b[ok]), w)


def joint_histograms_fixed_point(rows: np.ndarray, cols: np.ndarray, count: int, frame_bins: np.ndarray,
                                 ref_bins: np.ndarray, affines: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out[k]`` (int64) with the kernels' fixed-point counts: weights in 1/256 pixel, ``PV_ONE`` a pixel."""
    out[...] = 0
    for k in range(affines.shape[0]):
        i, j, x, y = _positions(rows, cols, int(count), np.asarray(affines[k], dtype=np.float64))
        ok, fb, c0, r0, corners = _counted(frame_bins, ref_bins, i, j, x, y)
        qx = np.floor((x - c0)[ok] * 256.0).astype(np.int64)
        qy = np.floor((y - r0)[ok] * 256.0).astype(np.int64)
        weights = [(256 - qx) * (256 - qy), qx * (256 - qy), (256 - qx) * qy, qx * qy]
        for b, w in zip(corners, weights, strict=True):
            np.add.at(out[k], (fb[ok], b[ok]), w)


def mutual_information(hist: np.ndarray, normalised: bool, out: np.ndarray) -> None:
    """Write ``H(F) + H(R) - H(F, R)`` (nats), or ``(H(F) + H(R)) / H(F, R)``, of each ``hist[k]``; 0 if empty."""
    for k in range(hist.shape[0]):
        h = np.asarray(hist[k], dtype=np.float64)
        total = h.sum()
        if total <= 0:
            out[k] = 0.0
            continue
        p = h / total

        def entropy(q: np.ndarray) -> float:
            q = q[q > 0]
            return float(-(q * np.log(q)).sum())

        h_joint, h_f, h_r = entropy(p.ravel()), entropy(p.sum(axis=1)), entropy(p.sum(axis=0))
        if normalised:
            out[k] = (h_f + h_r) / h_joint if h_joint > 0 else 1.0
        else:
            out[k] = h_f + h_r - h_joint
