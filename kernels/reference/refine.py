"""Float64 reference for the Newton refinement (slow, obvious numpy).

Same arguments and output as :func:`portalign.kernels.cpu.refine.refine` (the
method is described there): the stencil is a numpy array, the metric comes from
the float64 reference kernels, the quadratic model's concavity from its
eigenvalues and its optimum from ``numpy.linalg.solve``.
"""

from __future__ import annotations

import numpy as np

from . import edge, mutual_information

__all__ = ["refine"]

_STENCIL_3D = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 1, 0], [1, 0, 1], [0, 1, 1]],
    dtype=np.float64,
)
_STENCIL_2D = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [1, 1, 0]], dtype=np.float64)
_MAX_JUMP = 1.5


#: The CPU kernel's (``portalign.kernels.cpu.refine.REJECT_SHRINK``).
REJECT_SHRINK = 0.5


def _affines(poses: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    fax, fay, sy, sx, rax, ray = (float(v) for v in geometry)
    c, s = np.cos(poses[:, 2]), np.sin(poses[:, 2])
    ox = -fax * sx - poses[:, 0]
    oy = -fay * sy - poses[:, 1]
    out = np.empty((len(poses), 2, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = c, s * sy / sx, (c * ox + s * oy) / sx + rax
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = -s * sx / sy, c, (-s * ox + c * oy) / sy + ray
    return out


def _values(metric: int, args: tuple, poses: np.ndarray, geometry: np.ndarray, normalised: bool) -> np.ndarray:
    rows, cols, count, frame_re, frame_im, ref_re, ref_im, frame_bins, ref_bins = args
    affines = _affines(poses, geometry)
    if metric == 1:
        n_bins = int(max(np.max(frame_bins), np.max(ref_bins))) + 1
        hist = np.zeros((len(poses), n_bins, n_bins), dtype=np.int64)
        # the kernels' fixed-point weights (1/256 pixel), so that the reference takes the same steps
        mutual_information.joint_histograms_fixed_point(rows, cols, count, frame_bins, ref_bins, affines, hist)
        out = np.zeros(len(poses))
        mutual_information.mutual_information(hist, normalised, out)
        return out
    rot = np.stack([np.cos(2 * poses[:, 2]), np.sin(2 * poses[:, 2])], axis=1)
    sums = np.zeros((len(poses), 3))
    edge.gradient_correlation(rows, cols, count, frame_re, frame_im, ref_re, ref_im, affines, rot, sums)
    return sums[:, 0] / np.sqrt(np.maximum(sums[:, 1] * sums[:, 2], 1e-30))


def _quadratic_step(f: np.ndarray, dims: int, cross: np.ndarray) -> tuple[np.ndarray, float]:
    plus = np.array([f[1 + 2 * i] for i in range(dims)])
    minus = np.array([f[2 + 2 * i] for i in range(dims)])
    g = 0.5 * (plus - minus)
    h = np.diag(plus + minus - 2 * f[0])
    pairs = [(0, 1), (0, 2), (1, 2)] if dims == 3 else [(0, 1)]
    if len(f) > 1 + 2 * dims:
        cross[: len(pairs)] = [f[1 + 2 * dims + n] - plus[i] - plus[j] + f[0] for n, (i, j) in enumerate(pairs)]
    for n, (i, j) in enumerate(pairs):
        h[i, j] = h[j, i] = cross[n]
    if np.all(np.linalg.eigvalsh(h) < 0):
        jump = -np.linalg.solve(h, g)
        jump = jump / max(1.0, np.max(np.abs(jump)) / _MAX_JUMP)
        return jump, float(f[0] + g @ jump + 0.5 * jump @ h @ jump)
    best = int(np.argmax(f))
    stencil = _STENCIL_3D if dims == 3 else _STENCIL_2D
    return stencil[best, :dims].copy(), float(f[best])


def refine(metric: int, rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray,
           ref_re: np.ndarray, ref_im: np.ndarray, frame_bins: np.ndarray, ref_bins: np.ndarray, geometry: np.ndarray,
           pose: np.ndarray, step: np.ndarray, iterations: int, tolerance: float, star: bool, theta_limit: float,
           normalised: bool, hist: np.ndarray, out: np.ndarray) -> None:
    """Write ``(dx_mm, dy_mm, theta_rad, score, iterations_run)`` of the Newton ascent into ``out``."""
    del hist  # the reference makes its own histograms
    args = (rows, cols, count, frame_re, frame_im, ref_re, ref_im, frame_bins, ref_bins)
    dims = 3 if step[2] > 0 else 2
    stencil = _STENCIL_3D if dims == 3 else _STENCIL_2D
    p = np.array(pose, dtype=np.float64)
    cross = np.zeros(3)
    have_cross = bool(star)
    score = -np.inf
    done = 0
    best, best_value, best_star, rejected = p.copy(), -np.inf, None, False
    for _ in range(int(iterations)):
        points = stencil[: 1 + 2 * dims] if have_cross else stencil
        values = _values(metric, args, p + points * step, geometry, normalised)
        rejected = bool(metric == 0 and values[0] < best_value)  # the jump overshot: the CPU kernel's safeguard
        done += 1
        if rejected and np.any(cross != 0):
            cross[:] = 0.0  # the best centre's star alone
            jump, _ = _quadratic_step(best_star, dims, cross)
            p[:dims] = best[:dims] + jump * step[:dims]
            largest = float(np.max(np.abs(jump)))
        elif rejected:
            p = best + REJECT_SHRINK * (p - best)
            largest = float(np.max(np.abs(p - best)[:dims] / step[:dims]))
        else:
            best, best_value, best_star = p.copy(), float(values[0]), values[: 1 + 2 * dims].copy()
            jump, predicted = _quadratic_step(values, dims, cross)
            have_cross = True
            score = max(float(values[0]), predicted)
            p[:dims] += jump * step[:dims]
            largest = float(np.max(np.abs(jump)))
        p[2] = float(np.clip(p[2], -theta_limit, theta_limit))
        if largest < tolerance:
            break
    if rejected:
        p, score = best, best_value
    out[:] = (p[0], p[1], p[2], score, done)
