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


def _derivatives(pose: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """d(affine)/d(dx, dy, theta), each (2, 3), by the formula of ``_affine``."""
    fax, fay, sy, sx = (float(v) for v in geometry[:4])
    c, s = math.cos(pose[2]), math.sin(pose[2])
    ox, oy = -fax * sx - pose[0], -fay * sy - pose[1]
    return np.array([[[0.0, 0.0, -c / sx], [0.0, 0.0, s / sy]],
                     [[0.0, 0.0, -s / sx], [0.0, 0.0, -c / sy]],
                     [[-s, c * sy / sx, (-s * ox + c * oy) / sx], [-c * sx / sy, -s, (-c * ox - s * oy) / sy]]])


def intensity_polish(rows, cols, count, frame, ref, ref_gx, ref_gy, ref_valid, geometry,  # type: ignore[no-untyped-def]
                     pose, iterations, tolerance_mm, stride, rotate, out) -> None:
    """See :func:`portalign.kernels.cpu.intensity.intensity_polish`."""
    rows = np.asarray(rows[:count:stride], dtype=np.int64)
    cols = np.asarray(cols[:count:stride], dtype=np.int64)
    pose = np.asarray(pose, dtype=np.float64)
    out[:] = 0.0
    out[0], out[1], out[10] = pose[0], pose[1], pose[2]
    current = pose.copy()

    def samples():  # type: ignore[no-untyped-def]
        a = _affine(current, geometry)
        x = a[0, 0] * cols + a[0, 1] * rows + a[0, 2]
        y = a[1, 0] * cols + a[1, 1] * rows + a[1, 2]
        n_rows, n_cols = ref.shape
        keep = (x >= 1.0) & (y >= 1.0) & (x < n_cols - 2.0) & (y < n_rows - 2.0)
        c0, r0 = np.where(keep, x, 1.0).astype(np.int64), np.where(keep, y, 1.0).astype(np.int64)
        keep &= (ref_valid[r0, c0] > 0) & (ref_valid[r0, c0 + 1] > 0) & (ref_valid[r0 + 1, c0] > 0) & (
            ref_valid[r0 + 1, c0 + 1] > 0)
        r_i, c_i, x, y, c0, r0 = rows[keep], cols[keep], x[keep], y[keep], c0[keep], r0[keep]
        wx, wy = x - c0, y - r0

        def bilinear(img):  # type: ignore[no-untyped-def]
            img = np.asarray(img, dtype=np.float64)
            return ((1 - wx) * (1 - wy) * img[r0, c0] + wx * (1 - wy) * img[r0, c0 + 1]
                    + (1 - wx) * wy * img[r0 + 1, c0] + wx * wy * img[r0 + 1, c0 + 1])

        return r_i, c_i, bilinear(ref), bilinear(ref_gx), bilinear(ref_gy), np.asarray(frame, np.float64)[r_i, c_i]

    _, _, r, _, _, f = samples()
    if r.size < 16 or not np.var(r) > 0.0:
        return
    gain = float(np.mean((r - r.mean()) * (f - f.mean())) / np.var(r))
    offset = float(f.mean() - gain * r.mean())
    threshold, rms, done, converged = math.inf, 0.0, 0, False
    for it in range(iterations):
        r_i, c_i, r, gx, gy, f = samples()
        if r.size < 16:
            return
        e = gain * r + offset - f
        w = np.where(np.abs(e) > threshold, threshold / np.maximum(np.abs(e), 1e-300), 1.0)
        dm = _derivatives(current, geometry)
        columns = []
        for k in range(3):
            dqx = dm[k, 0, 0] * c_i + dm[k, 0, 1] * r_i + dm[k, 0, 2]
            dqy = dm[k, 1, 0] * c_i + dm[k, 1, 1] * r_i + dm[k, 1, 2]
            columns.append(gain * (gx * dqx + gy * dqy))
        jac = np.stack([*columns, r, np.ones_like(r)], axis=1)
        normal = jac.T @ (w[:, None] * jac)
        rhs = -(jac.T @ (w * e))
        if not rotate:
            normal[2, :] = 0.0
            normal[:, 2] = 0.0
            normal[2, 2] = 1.0
            rhs[2] = 0.0
        rms = math.sqrt(float(np.mean(e * e)))
        threshold = HUBER_K * rms if rms > 0.0 else math.inf
        if not np.all(np.isfinite(normal)) or abs(np.linalg.det(normal)) <= 0.0:
            return
        step = np.linalg.solve(normal, rhs)
        current[:3] += step[:3]
        gain += float(step[3])
        offset += float(step[4])
        done = it + 1
        if math.hypot(step[0], step[1]) < tolerance_mm and abs(step[2]) * 100.0 < tolerance_mm:
            converged = True
            break
    _, _, r, _, _, f = samples()
    inlier = np.abs(gain * r + offset - f) <= (INLIER_K * rms if rms > 0.0 else math.inf)
    ri, fi = r[inlier], f[inlier]
    correlation = float(np.corrcoef(ri, fi)[0, 1]) if ri.size > 1 and np.var(ri) > 0 and np.var(fi) > 0 else 0.0
    out[:OUT_SIZE] = [current[0], current[1], gain, offset, rms, r.size, done, 1.0 if converged else 0.0, correlation,
                      ri.size / max(r.size, 1), current[2]]
