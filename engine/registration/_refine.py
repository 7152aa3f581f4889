"""Refinement: quadratic-model Newton ascent of a metric on one pyramid level, one kernel call per level.

The method (stencil, quadratic fit, jump, convergence) is described in
:mod:`portalign.kernels.cpu.refine`; this stage chooses the steps and limits and
makes the call. ``evaluate`` scores a few poses at once (candidate ranking, final scores).
"""

from __future__ import annotations

import math

import numpy as np

from ._plan import FramePlan, Level

__all__ = ["newton", "evaluate", "edge_score", "mi_score"]

#: Metric ids of the refine kernel (``portalign.kernels.cpu.refine``).
METRICS = {"edge": 0, "mi": 1}
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

    One kernel call (``kernels.refine``: the whole loop compiled on the CPU) stops after
    ``iterations`` stencils or when a jump is below ``tolerance`` steps. ``star`` uses the 7-pose
    star from the start, with no mixed curvature terms.
    """
    # a rotation step moves a typical usable pixel by about one pixel, but never more than MAX_ROTATION_STEP
    theta_step = min(min(level.spacing) / r_eff, MAX_ROTATION_STEP) if rotate else 0.0
    step = np.array([level.spacing[1], level.spacing[0], theta_step])
    theta_limit = math.radians(opts.max_rotation_deg + opts.rotation_step_deg)
    out = plan.refine_out
    backend.kernels.refine(
        METRICS[metric], level.pixel_rows, level.pixel_cols, level.usable, level.feat_re, level.feat_im, level.ref_re,
        level.ref_im, level.bins, level.ref_bins, level.geometry, np.asarray(pose, dtype=np.float64), step,
        int(iterations), float(tolerance), bool(star), theta_limit, bool(opts.normalised_mi), plan.hist, out,
    )
    return out[:3].copy(), float(out[3])
