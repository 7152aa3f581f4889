"""Float64 reference for the intensity least-squares polish (slow, obvious numpy).

Same arguments and output as :func:`portalign.kernels.cpu.intensity.intensity_polish`: Gauss-Newton over
``(dx_mm, dy_mm, gain, offset)`` of ``sum w (gain R(A p) + offset - F(p))^2``, Huber weights from the second
iteration on (Lucas & Kanade 1981; Evangelidis & Psarakis 2008).
"""

from __future__ import annotations

import math

import numpy as np

from portalign.kernels.cpu.intensity import HUBER_K, INLIER_K, OUT_SIZE

__all__ = ["intensity_polish"]


def _affine(pose: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    fax, fay, sy, sx, rax, ray = (float(v) for v in geometry)
    c, s = math.cos(pose[2]), math.sin(pose[2])
    ox, oy = -fax * sx - pose[0], -fay * sy - pose[1]
    return np.array([[c, s * sy / sx, (c * ox + s * oy) / sx + rax],
                     [-s * sx / sy, c, (-s * ox + c * oy) / sy + ray]])


def _samples(rows, cols, frame, ref, gx, gy, valid, a):  # type: ignore[no-untyped-def]
    """(R, dR/dcol, dR/drow, F) at the pixels whose bilinear cell lies wholly in the valid region."""
    x = a[0, 0] * cols + a[0, 1] * rows + a[0, 2]
    y = a[1, 0] * cols + a[1, 1] * rows + a[1, 2]
    n_rows, n_cols = ref.shape
    inside = (x >= 1.0) & (y >= 1.0) & (x < n_cols - 2.0) & (y < n_rows - 2.0)
    x, y, r_i, c_i = x[inside], y[inside], rows[inside], cols[inside]
    c0, r0 = x.astype(np.int64), y.astype(np.int64)
    cell = (valid[r0, c0] > 0) & (valid[r0, c0 + 1] > 0) & (valid[r0 + 1, c0] > 0) & (valid[r0 + 1, c0 + 1] > 0)
    x, y, r_i, c_i, c0, r0 = x[cell], y[cell], r_i[cell], c_i[cell], c0[cell], r0[cell]
    wx, wy = x - c0, y - r0

    def bilinear(img):  # type: ignore[no-untyped-def]
        img = np.asarray(img, dtype=np.float64)
        return ((1 - wx) * (1 - wy) * img[r0, c0] + wx * (1 - wy) * img[r0, c0 + 1]
                + (1 - wx) * wy * img[r0 + 1, c0] + wx * wy * img[r0 + 1, c0 + 1])

    return bilinear(ref), bilinear(gx), bilinear(gy), np.asarray(frame, dtype=np.float64)[r_i, c_i]


def intensity_polish(rows, cols, count, frame, ref, ref_gx, ref_gy, ref_valid, geometry, pose, iterations,  # type: ignore[no-untyped-def]
                     tolerance_mm, stride, out) -> None:
    """See :func:`portalign.kernels.cpu.intensity.intensity_polish`."""
    rows = np.asarray(rows[:count:stride], dtype=np.int64)
    cols = np.asarray(cols[:count:stride], dtype=np.int64)
    pose = np.asarray(pose, dtype=np.float64)
    sy, sx = float(geometry[2]), float(geometry[3])
    c, s = math.cos(pose[2]), math.sin(pose[2])
    d = np.array([[-c / sx, -s / sx], [s / sy, -c / sy]])  # d(col, row) / d(dx, dy)
    out[:] = 0.0
    out[0], out[1] = pose[0], pose[1]
    current = pose.copy()
    r, _, _, f = _samples(rows, cols, frame, ref, ref_gx, ref_gy, ref_valid, _affine(current, geometry))
    if r.size < 16 or not np.var(r) > 0.0:
        return
    gain = float(np.mean((r - r.mean()) * (f - f.mean())) / np.var(r))
    offset = float(f.mean() - gain * r.mean())
    threshold, rms, done, converged = math.inf, 0.0, 0, False
    for it in range(iterations):
        r, sxx, syy, f = _samples(rows, cols, frame, ref, ref_gx, ref_gy, ref_valid, _affine(current, geometry))
        if r.size < 16:
            return
        e = gain * r + offset - f
        w = np.where(np.abs(e) > threshold, threshold / np.maximum(np.abs(e), 1e-300), 1.0)
        jac = np.stack([gain * (sxx * d[0, 0] + syy * d[1, 0]), gain * (sxx * d[0, 1] + syy * d[1, 1]), r,
                        np.ones_like(r)], axis=1)
        normal = jac.T @ (w[:, None] * jac)
        rms = math.sqrt(float(np.mean(e * e)))
        threshold = HUBER_K * rms if rms > 0.0 else math.inf
        if not np.all(np.isfinite(normal)) or abs(np.linalg.det(normal)) <= 0.0:
            return
        step = np.linalg.solve(normal, -(jac.T @ (w * e)))
        current[0] += step[0]
        current[1] += step[1]
        gain += float(step[2])
        offset += float(step[3])
        done = it + 1
        if math.hypot(step[0], step[1]) < tolerance_mm:
            converged = True
            break
    r, _, _, f = _samples(rows, cols, frame, ref, ref_gx, ref_gy, ref_valid, _affine(current, geometry))
    inlier = np.abs(gain * r + offset - f) <= (INLIER_K * rms if rms > 0.0 else math.inf)
    ri, fi = r[inlier], f[inlier]
    correlation = float(np.corrcoef(ri, fi)[0, 1]) if ri.size > 1 and np.var(ri) > 0 and np.var(fi) > 0 else 0.0
    out[:OUT_SIZE] = [current[0], current[1], gain, offset, rms, r.size, done, 1.0 if converged else 0.0, correlation,
                      ri.size / max(r.size, 1)]
