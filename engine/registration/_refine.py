"""Refinement: quadratic-model Newton ascent of a metric on one pyramid level.

Each iteration evaluates the metric at 10 poses in one kernel call (the centre,
+-1 step on each axis and the three mixed pairs), fits the full quadratic and
jumps to its optimum. Steps are one pixel of the level, so the partial-volume
ripple of MI (period one pixel) adds the same amount to every sample of a
translation axis and does not bias the fit.
"""

from __future__ import annotations

import math

import numpy as np

from ._plan import FramePlan, Level

__all__ = ["newton", "evaluate", "edge_score", "mi_score", "quadratic_step", "STENCIL_2D", "STENCIL_3D"]

#: Quadratic-model stencil in units of one step: centre, +-each axis, the three mixed pairs.
STENCIL_3D = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 1, 0], [1, 0, 1], [0, 1, 1]],
    dtype=np.float64,
)
STENCIL_2D = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [1, 1, 0]], dtype=np.float64)
#: Largest Newton jump, in steps, per iteration.
MAX_JUMP = 1.5
#: Largest rotation step of the quadratic stencil (radians): small fields constrain rotation weakly.
MAX_ROTATION_STEP = math.radians(0.5)


def evaluate(backend, plan: FramePlan, level: Level, poses: np.ndarray, metric: str, normalised: bool = False) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Metric values (higher is better) at ``poses`` on ``level``."""
    k = backend.kernels
    n = poses.shape[0]
    affines = backend.asarray(level.affines(poses))
    if metric == "mi":
        hist = plan.hist[:n]
        k.joint_histograms(level.pixel_rows, level.pixel_cols, level.usable, level.bins, level.ref_bins, affines, hist)
        k.mutual_information(hist, normalised, plan.mi_out[:n])
        return backend.to_host(plan.mi_out[:n]).copy()
    rot = backend.asarray(np.stack([np.cos(2 * poses[:, 2]), np.sin(2 * poses[:, 2])], axis=1))
    k.gradient_correlation(level.pixel_rows, level.pixel_cols, level.usable, level.feat_re, level.feat_im, level.ref_re,
                           level.ref_im, affines, rot, plan.edge_out[:n])
    sums = backend.to_host(plan.edge_out[:n])
    return sums[:, 0] / np.sqrt(np.maximum(sums[:, 1] * sums[:, 2], 1e-30))


def edge_score(backend, plan: FramePlan, level: Level, pose: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    return float(evaluate(backend, plan, level, pose[None, :], "edge")[0])


def mi_score(backend, plan: FramePlan, level: Level, pose: np.ndarray, normalised: bool) -> float:  # type: ignore[no-untyped-def]
    return float(evaluate(backend, plan, level, pose[None, :], "mi", normalised)[0])


def newton(backend, plan: FramePlan, level: Level, pose: np.ndarray, metric: str, iterations: int,  # type: ignore[no-untyped-def]
            r_eff: float, rotate: bool, opts, tolerance: float = 0.02, star: bool = False) -> tuple[np.ndarray, float]:
    """Quadratic-model Newton ascent of ``metric`` from ``pose`` on ``level``; returns (pose, score).

    Stops after ``iterations`` stencils or when a jump is below ``tolerance`` steps. ``star`` uses the
    7-pose star from the start, with no mixed curvature terms.
    """
    stencil = STENCIL_3D if rotate else STENCIL_2D
    # a rotation step moves a typical usable pixel by about one pixel, but never more than MAX_ROTATION_STEP
    theta_step = min(min(level.spacing) / r_eff, MAX_ROTATION_STEP) if rotate else 0.0
    step = np.array([level.spacing[1], level.spacing[0], theta_step])
    theta_limit = math.radians(opts.max_rotation_deg + opts.rotation_step_deg)
    pose = pose.astype(np.float64).copy()
    if not rotate:
        pose[2] = 0.0
    dims = 3 if rotate else 2
    score = -np.inf
    cross = np.zeros(3 if rotate else 1) if star else None
    for _ in range(iterations):
        # the mixed second derivatives change slowly: after the first fit, the star (centre and
        # +-1 step per axis) is enough and the previous mixed terms are reused
        points = stencil if cross is None else stencil[: 1 + 2 * dims]
        values = evaluate(backend, plan, level, pose + points * step, metric, opts.normalised_mi)
        jump, predicted, cross = quadratic_step(values, dims, cross)
        score = max(float(values[0]), predicted)
        pose = pose + np.concatenate([jump, np.zeros(3 - dims)]) * step
        pose[2] = float(np.clip(pose[2], -theta_limit, theta_limit))
        if np.max(np.abs(jump)) < tolerance:
            break
    return pose, score


def quadratic_step(f: np.ndarray, dims: int, cross: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """Newton jump (in steps) to the maximum of the quadratic through the stencil values, its value, and the mixed terms.

    For the 3-D stencil ``f = [f0, f+x, f-x, f+y, f-y, f+t, f-t, f+x+y, f+x+t, f+y+t]``:
    ``g_i = (f+i - f-i)/2``, ``H_ii = f+i + f-i - 2 f0``, ``H_ij = f+i+j - f+i - f+j + f0``.
    A star stencil (the first ``1 + 2 dims`` entries) takes the mixed terms ``H_ij`` from ``cross``.
    A model that is not concave moves to the best stencil point instead.
    """
    f0 = f[0]
    plus = np.array([f[1 + 2 * i] for i in range(dims)])
    minus = np.array([f[2 + 2 * i] for i in range(dims)])
    g = 0.5 * (plus - minus)
    h = np.diag(plus + minus - 2 * f0)
    pairs = [(0, 1), (0, 2), (1, 2)] if dims == 3 else [(0, 1)]
    if len(f) > 1 + 2 * dims:
        cross = np.array([f[1 + 2 * dims + n] - plus[i] - plus[j] + f0 for n, (i, j) in enumerate(pairs)])
    elif cross is None:
        cross = np.zeros(len(pairs))
    for n, (i, j) in enumerate(pairs):
        h[i, j] = h[j, i] = cross[n]
    stencil = STENCIL_3D if dims == 3 else STENCIL_2D
    try:
        eig = np.linalg.eigvalsh(h)
        concave = bool(np.all(eig < 0))
    except np.linalg.LinAlgError:  # pragma: no cover - 2x2/3x3 symmetric always decomposes
        concave = False
    if concave:
        jump = -np.linalg.solve(h, g)
        scale = np.max(np.abs(jump)) / MAX_JUMP
        if scale > 1:
            jump = jump / scale
        predicted = float(f0 + g @ jump + 0.5 * jump @ h @ jump)
        return jump, predicted, cross
    best = int(np.argmax(f))
    return stencil[best, :dims].copy(), float(f[best]), cross


