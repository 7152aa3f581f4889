"""Intensity least squares: the last, finest polish of two images that share their intensities (numba, CPU).

Two portal images of one beam and detector that agree nearly perfectly (``_program.FINE_POLISH``) differ by the
pose, a gain and an offset, and noise. Their pose is then the least-squares one (Lucas & Kanade, 1981, "An
iterative image registration technique with an application to stereo vision", IJCAI; with the gain and offset
fitted alongside as in Evangelidis & Psarakis, 2008, "Parametric image alignment using enhanced correlation
coefficient maximization", IEEE TPAMI 30(10)):

    minimise over (dx, dy[, theta], a, b):  sum_p w_p ( a R(A(dx, dy, theta) p) + b - F(p) )^2

over the frame's usable pixels ``p``, the reference ``R`` sampled bilinearly at the frame pixel's place in it
(``A``: the pose's frame-pixel -> reference-pixel map; the rotation fitted too with ``rotate``, else held), its
gradient the bilinear sample of the reference's central differences. Gauss-Newton: each iteration is one pass over
the pixels that builds the 5 x 5 normal equations (the rotation's row a "no step" one when it is held). Unlike the
quadratic-model stencil of :mod:`.refine` (which halves a sharp peak's remaining offset per iteration), this
converges quadratically on a smooth residual, and two copies of one image meet exactly (zero residual) at their
true shift. The weights ``w_p`` are Huber's (1981) from the second iteration on,
at ``HUBER_K`` times the previous iteration's residual RMS: a dead detector line or a saturated spot (a large
residual) weighs as a bounded error, not a squared one.

A frame pixel counts when its bilinear cell lies wholly in the reference's valid region (``ref_valid``; its
border row and column excluded, so the central differences exist).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["intensity_polish", "HUBER_K", "INLIER_K", "OUT_SIZE"]

#: Huber's threshold in residual RMS of the previous iteration.
HUBER_K = 2.0
#: A pixel whose residual at the pose reached is within this many RMS of the last iteration is an inlier (Gaussian
#: noise: 99.7 %); the correlation reported is the inliers'.
INLIER_K = 3.0
#: Entries of ``out``: dx_mm, dy_mm, gain, offset, residual RMS, pixels used, iterations done, converged (1/0),
#: the normalised correlation of the frame with the reference at the final pose over its inliers (residual within
#: ``INLIER_K`` times the last iteration's RMS: a dead line's pixels are not), the inliers' share of the pixels, and
#: the rotation theta_rad (the start's when held).
OUT_SIZE = 11


#: Fixed number of pixel chunks summed separately then added in order (the sums do not depend on the thread count).
CHUNKS = 16
#: Parameters of the fit: dx_mm, dy_mm, theta_rad, gain, offset.
_P = 5
#: Sums one pass returns: n, S_e^2, then the weighted normal equations (15 upper-triangle entries of J^T W J and the 5
#: of -J^T W e), then the plain moments S_r, S_f, S_rr, S_rf, S_ff for the straight-line fit and the correlation (of the
#: pixels whose residual is within the threshold), and how many those are.
_SUMS = 2 + 15 + 5 + 6


@njit(parallel=True, cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz", "arcp", "contract"})
def _pass(rows: np.ndarray, cols: np.ndarray, count: int, frame: np.ndarray, ref: np.ndarray, gx: np.ndarray,
          gy: np.ndarray, valid: np.ndarray, m: np.ndarray, dm: np.ndarray, gain: float, offset: float,
          threshold: float, stride: int) -> np.ndarray:  # pragma: no cover - compiled
    """One pass over every ``stride``-th listed pixel at the map ``m``: the sums ``_SUMS`` (chunks added in order).

    ``dm``: the map's derivatives, ``(d/d dx, d/d dy, d/d theta)`` of its six entries (``_derivatives``).
    """
    n_rows, n_cols = ref.shape
    x_end = n_cols - 2.0
    y_end = n_rows - 2.0
    visited = (count + stride - 1) // stride
    size = (visited + CHUNKS - 1) // CHUNKS
    partial = np.zeros((CHUNKS, _SUMS))
    m0, m1, m2, m3, m4, m5 = m[0], m[1], m[2], m[3], m[4], m[5]
    for c in prange(CHUNKS):
        acc = np.zeros(_SUMS)
        jac = np.empty(_P)
        for v in range(c * size, min(visited, (c + 1) * size)):
            i = rows[v * stride]
            j = cols[v * stride]
            x = m0 * j + m1 * i + m2
            y = m3 * j + m4 * i + m5
            if not (x >= 1.0 and y >= 1.0 and x < x_end and y < y_end):
                continue
            c0 = int(x)
            r0 = int(y)
            if valid[r0, c0] == 0 or valid[r0, c0 + 1] == 0 or valid[r0 + 1, c0] == 0 or valid[r0 + 1, c0 + 1] == 0:
                continue
            wx = x - c0
            wy = y - r0
            w00 = (1.0 - wx) * (1.0 - wy)
            w01 = wx * (1.0 - wy)
            w10 = (1.0 - wx) * wy
            w11 = wx * wy
            r = w00 * ref[r0, c0] + w01 * ref[r0, c0 + 1] + w10 * ref[r0 + 1, c0] + w11 * ref[r0 + 1, c0 + 1]
            sx = w00 * gx[r0, c0] + w01 * gx[r0, c0 + 1] + w10 * gx[r0 + 1, c0] + w11 * gx[r0 + 1, c0 + 1]
            sy = w00 * gy[r0, c0] + w01 * gy[r0, c0 + 1] + w10 * gy[r0 + 1, c0] + w11 * gy[r0 + 1, c0 + 1]
            f = np.float64(frame[i, j])
            e = gain * r + offset - f
            w = 1.0
            if abs(e) > threshold:
                w = threshold / abs(e)
            for k in range(3):  # d(col, row)/d parameter k, through the map
                dqx = dm[k, 0] * j + dm[k, 1] * i + dm[k, 2]
                dqy = dm[k, 3] * j + dm[k, 4] * i + dm[k, 5]
                jac[k] = gain * (sx * dqx + sy * dqy)
            jac[3] = r
            jac[4] = 1.0
            acc[0] += 1.0
            acc[1] += e * e
            t = 2
            for a in range(_P):
                wa = w * jac[a]
                for b in range(a, _P):
                    acc[t] += wa * jac[b]
                    t += 1
                acc[17 + a] -= wa * e
            if w == 1.0:
                acc[22] += r
                acc[23] += f
                acc[24] += r * r
                acc[25] += r * f
                acc[26] += f * f
                acc[27] += 1.0
        partial[c] = acc
    total = np.zeros(_SUMS)
    for c in range(CHUNKS):
        for k in range(_SUMS):
            total[k] += partial[c, k]
    return total


@njit(cache=True, nogil=True)
def _affine(pose: np.ndarray, geometry: np.ndarray, m: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write the frame-pixel -> reference-pixel map of ``pose`` into ``m`` (``refine.pose_affines_into``'s formula)."""
    fax, fay, sy, sx, rax, ray = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    c = math.cos(pose[2])
    s = math.sin(pose[2])
    ox = -fax * sx - pose[0]
    oy = -fay * sy - pose[1]
    m[0] = c
    m[1] = s * sy / sx
    m[2] = (c * ox + s * oy) / sx + rax
    m[3] = -s * sx / sy
    m[4] = c
    m[5] = (-s * ox + c * oy) / sy + ray


@njit(cache=True, nogil=True)
def _derivatives(pose: np.ndarray, geometry: np.ndarray, dm: np.ndarray) -> None:  # pragma: no cover - compiled
    """``dm[k]``: the derivative of ``_affine``'s six entries with respect to dx_mm, dy_mm and theta_rad."""
    fax, fay, sy, sx = geometry[0], geometry[1], geometry[2], geometry[3]
    c = math.cos(pose[2])
    s = math.sin(pose[2])
    ox = -fax * sx - pose[0]
    oy = -fay * sy - pose[1]
    for k in range(3):
        for q in range(6):
            dm[k, q] = 0.0
    dm[0, 2] = -c / sx  # ox = -fax sx - dx
    dm[0, 5] = s / sy
    dm[1, 2] = -s / sx
    dm[1, 5] = -c / sy
    dm[2, 0] = -s
    dm[2, 1] = c * sy / sx
    dm[2, 2] = (-s * ox + c * oy) / sx
    dm[2, 3] = -c * sx / sy
    dm[2, 4] = -s
    dm[2, 5] = (-c * ox - s * oy) / sy


@njit(cache=True, nogil=True)
def intensity_polish(rows: np.ndarray, cols: np.ndarray, count: int, frame: np.ndarray, ref: np.ndarray,
                     ref_gx: np.ndarray, ref_gy: np.ndarray, ref_valid: np.ndarray, geometry: np.ndarray,
                     pose: np.ndarray, iterations: int, tolerance_mm: float, stride: int, rotate: bool,
                     out: np.ndarray) -> None:  # pragma: no cover
    """Gauss-Newton least squares of the translation (and rotation), gain and offset from ``pose``; write ``out``.

    Parameters
    ----------
    rows, cols : int32[>= count]
        The frame's usable pixels on the level (``mask.pixel_list``).
    frame : float32[rows, cols]
        The frame's pyramid image on the level.
    ref, ref_gx, ref_gy : float32[ref_rows, ref_cols]
        The reference resampled onto the level's spacing and its central differences along columns and rows.
    ref_valid : uint8[ref_rows, ref_cols]
        Where the reference may be compared (its field less the edge band).
    geometry : float64[6]
        ``(frame_axis_col, frame_axis_row, spacing_row_mm, spacing_col_mm, ref_axis_col, ref_axis_row)``.
    pose : float64[3]
        Start ``(dx_mm, dy_mm, theta_rad)``.
    iterations : int
        Most Gauss-Newton steps.
    tolerance_mm : float
        Converged when a step moves the translation by less than this.
    stride : int
        Every ``stride``-th listed pixel is visited (1: all): bounds the cost on a large image.
    rotate : bool
        Fit the rotation too (about the frame's beam axis); False holds it at ``pose``'s.
    out : float64[OUT_SIZE]
        ``dx_mm, dy_mm, gain, offset, rms, pixels, iterations, converged, correlation, inliers, theta_rad``;
        ``pixels`` 0 (and the start pose) when too few pixels overlap or the reference is flat there.
    """
    m = np.empty(6)
    dm = np.empty((3, 6))
    current = pose.copy()
    for k in range(OUT_SIZE):
        out[k] = 0.0
    out[0] = pose[0]
    out[1] = pose[1]
    out[10] = pose[2]
    # the gain and offset at the start pose: a straight-line fit of the frame on the reference
    _affine(current, geometry, m)
    _derivatives(current, geometry, dm)
    sums = _pass(rows, cols, count, frame, ref, ref_gx, ref_gy, ref_valid, m, dm, 1.0, 0.0, math.inf, stride)
    n = sums[0]
    if n < 16:
        return
    var_r = sums[24] / n - (sums[22] / n) ** 2
    if not var_r > 0.0:
        return
    gain = (sums[25] / n - (sums[22] / n) * (sums[23] / n)) / var_r
    offset = sums[23] / n - gain * sums[22] / n
    threshold = math.inf
    normal = np.zeros((_P, _P))
    rhs = np.zeros(_P)
    done = 0
    converged = False
    rms = 0.0
    for it in range(iterations):
        _affine(current, geometry, m)
        _derivatives(current, geometry, dm)
        sums = _pass(rows, cols, count, frame, ref, ref_gx, ref_gy, ref_valid, m, dm, gain, offset, threshold, stride)
        n = sums[0]
        if n < 16:
            return
        t = 2
        for a in range(_P):
            for b in range(a, _P):
                normal[a, b] = sums[t]
                normal[b, a] = sums[t]
                t += 1
            rhs[a] = sums[17 + a]
        if not rotate:  # the rotation held: its row and column say "no step"
            for a in range(_P):
                normal[2, a] = 0.0
                normal[a, 2] = 0.0
            normal[2, 2] = 1.0
            rhs[2] = 0.0
        rms = math.sqrt(sums[1] / n)
        threshold = HUBER_K * rms if rms > 0.0 else math.inf
        if not np.all(np.isfinite(normal)) or abs(np.linalg.det(normal)) <= 0.0:
            return
        step = np.linalg.solve(normal, rhs)
        current[0] += step[0]
        current[1] += step[1]
        current[2] += step[2]
        gain += step[3]
        offset += step[4]
        done = it + 1
        if math.hypot(step[0], step[1]) < tolerance_mm and abs(step[2]) * 100.0 < tolerance_mm:
            converged = True
            break
    # the correlation at the pose reached (how well the intensities agree there), over the inliers
    _affine(current, geometry, m)
    _derivatives(current, geometry, dm)
    inlier = INLIER_K * rms if rms > 0.0 else math.inf
    sums = _pass(rows, cols, count, frame, ref, ref_gx, ref_gy, ref_valid, m, dm, gain, offset, inlier, stride)
    n = max(sums[27], 1.0)
    var_r = sums[24] / n - (sums[22] / n) ** 2
    var_f = sums[26] / n - (sums[23] / n) ** 2
    cov = sums[25] / n - (sums[22] / n) * (sums[23] / n)
    out[0] = current[0]
    out[1] = current[1]
    out[2] = gain
    out[3] = offset
    out[4] = rms
    out[5] = sums[0]
    out[6] = done
    out[7] = 1.0 if converged else 0.0
    out[8] = cov / math.sqrt(var_r * var_f) if var_r > 0.0 and var_f > 0.0 else 0.0
    out[9] = sums[27] / max(sums[0], 1.0)
    out[10] = current[2]
