"""Refinement: quadratic-model Newton ascent of a metric on one pyramid level, one kernel call per level.

The method (stencil, quadratic fit, jump, convergence) is described in
:mod:`portalign.kernels.cpu.refine`; this stage chooses the steps and limits and
makes the call. ``evaluate`` scores a few poses at once (candidate ranking, final scores).
"""

from __future__ import annotations

import math

import numpy as np
from portalign.kernels.cpu.edge import orientation_summary
from portalign.kernels.cpu.refine import pose_affines_into, rotations_into

from ._plan import FramePlan, Level

__all__ = ["newton", "evaluate", "edge_score", "mi_score", "split_half_spread", "spatial_halves", "peak_curvatures"]

#: Newton iterations each half gets in the split-half precision check.
SPLIT_HALF_ITERATIONS = 3
#: Metric ids of the refine kernel (``portalign.kernels.cpu.refine``).
METRICS = {"edge": 0, "mi": 1, "edge_unguarded": 2}
#: Largest rotation step of the quadratic stencil (radians): small fields constrain rotation weakly.
MAX_ROTATION_STEP = math.radians(0.5)


def evaluate(backend, plan: FramePlan, level: Level, poses: np.ndarray, metric: str, normalised: bool = False,  # type: ignore[no-untyped-def]
             stretch: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Metric values (higher is better) at ``poses`` (float64[n, 3]) on ``level``; any ``n``.

    The plan's result buffers hold one stencil (``MAX_STENCIL`` poses): more poses are scored in chunks of that size.
    ``stretch``: ``(scales float64[n], centre (col, row) pixels)``: each pose's frame pixel coordinates are read
    stretched by its scale about ``centre`` (the anatomy's scale check, ``_scale``).
    """
    poses = np.ascontiguousarray(poses, dtype=np.float64)
    capacity = plan.edge_out.shape[0]
    if poses.shape[0] <= capacity:
        return _evaluate(backend, plan, level, poses, metric, normalised, stretch)
    return np.concatenate([
        _evaluate(backend, plan, level, poses[i:i + capacity], metric, normalised,
                  None if stretch is None else (stretch[0][i:i + capacity], stretch[1]))
        for i in range(0, poses.shape[0], capacity)])


def _evaluate(backend, plan: FramePlan, level: Level, poses: np.ndarray, metric: str, normalised: bool,  # type: ignore[no-untyped-def]
              stretch: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    k = backend.kernels
    n = poses.shape[0]
    table = np.empty((n, 2, 3))
    pose_affines_into(poses, n, level.geometry, table)  # compiled: a handful of calls for any pose count
    if stretch is not None:  # frame pixel p is read as centre + s (p - centre): p -> M (centre + s (p - centre)) + m
        scales, centre = stretch
        table[:, :, 2] += (1.0 - scales)[:, None] * np.einsum("kij,j->ki", table[:, :, :2], centre)
        table[:, :, :2] *= scales[:, None, None]
    affines = backend.staged("evaluate_affines", table)
    if metric == "mi":
        hist = plan.hist[:n]
        k.joint_histograms(level.pixel_rows, level.pixel_cols, level.listed, level.bins, level.ref_bins, affines, hist)
        k.mutual_information(hist, normalised, plan.mi_out[:n])
        return backend.to_host(plan.mi_out[:n]).copy()
    turns = np.empty((n, 2))
    rotations_into(poses, n, turns)
    rot = backend.staged("evaluate_rotations", turns)
    k.gradient_correlation(level.pixel_rows, level.pixel_cols, level.listed, level.feat_re, level.feat_im, level.ref_re,
                           level.ref_im, affines, rot, plan.edge_out[:n])
    sums = backend.to_host(plan.edge_out[:n])
    return sums[:, 0] / np.sqrt(np.maximum(sums[:, 1] * sums[:, 2], 1e-30))


def edge_score(backend, plan: FramePlan, level: Level, pose: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    return float(evaluate(backend, plan, level, pose[None, :], "edge")[0])


def mi_score(backend, plan: FramePlan, level: Level, pose: np.ndarray, normalised: bool) -> float:  # type: ignore[no-untyped-def]
    return float(evaluate(backend, plan, level, pose[None, :], "mi", normalised)[0])


def newton(backend, plan: FramePlan, level: Level, pose: np.ndarray, metric: str, iterations: int,  # type: ignore[no-untyped-def]
           r_eff: float, rotate: bool, opts, tolerance: float = 0.02, star: bool = False,
           pixels: tuple | None = None) -> tuple[np.ndarray, float]:
    """Quadratic-model Newton ascent of ``metric`` from ``pose`` on ``level``; returns (pose, score).

    One kernel call (``kernels.refine``: the whole loop compiled on the CPU) stops after
    ``iterations`` stencils or when a jump is below ``tolerance`` steps. ``star`` uses the star
    (7 poses; 5 with ``rotate`` off, the rotation held at ``pose``'s) from the start, with no mixed
    curvature terms. ``pixels`` ``(rows, cols, count)`` replaces the
    level's usable-pixel list (the split-half precision check).
    """
    # a rotation step moves a typical usable pixel by about one pixel, but never more than MAX_ROTATION_STEP
    theta_step = min(min(level.spacing) / r_eff, MAX_ROTATION_STEP) if rotate else 0.0
    step = np.array([level.spacing[1], level.spacing[0], theta_step])
    theta_limit = math.radians(opts.max_rotation_deg + opts.rotation_step_deg)
    out = plan.refine_out
    rows, cols, count = pixels if pixels is not None else (level.pixel_rows, level.pixel_cols, level.listed)
    backend.kernels.refine(
        METRICS[metric], rows, cols, count, level.feat_re, level.feat_im, level.ref_re,
        level.ref_im, level.bins, level.ref_bins, level.geometry, np.asarray(pose, dtype=np.float64), step,
        int(iterations), float(tolerance), bool(star), theta_limit, bool(opts.normalised_mi), plan.hist, out,
    )
    return out[:3].copy(), float(out[3])


def split_half_spread(backend, plan: FramePlan, level: Level, pose: np.ndarray, r_eff: float, rotate: bool,  # type: ignore[no-untyped-def]
                      opts, metric: str = "edge", block: int = 0) -> tuple[float, float]:
    """Return how far apart (mm, deg) the ``metric`` optima of the two halves of the usable pixels lie.

    The halves are the alternate entries of the row-major pixel list: they cover the same field and
    anatomy, and their noise is independent. Each is refined from the final ``pose``; for independent
    noise their distance is about twice the standard error of the full estimate, so a large spread
    says the optimum is set by noise (a low-dose frame, too little structure), whatever its score.
    ``metric`` is the one whose optimum is reported (``"mi"`` where ``auto`` reports mutual information):
    the check measures the precision of what is reported. The rotation is refined with ``rotate`` only
    (held: a spread of 0 deg, which the caller does not report). ``block`` > 0: the halves are the two colours
    of a checkerboard of ``block``-pixel squares instead (a smoothed frame: neighbours share their noise).
    """
    poses = []
    if block:
        rows = np.asarray(backend.to_host(level.pixel_rows[:level.usable]))
        cols = np.asarray(backend.to_host(level.pixel_cols[:level.usable]))
        colour = (rows // block + cols // block) % 2
    for first in (0, 1):
        if block:
            chosen = colour == first
            count = int(chosen.sum())
            halves = (backend.asarray(np.ascontiguousarray(rows[chosen])),
                      backend.asarray(np.ascontiguousarray(cols[chosen])), count)
        else:
            count = (level.usable - first + 1) // 2
            halves = (level.pixel_rows[first: level.usable: 2], level.pixel_cols[first: level.usable: 2], count)
        # a half's own optimum, unguarded (``kernels.cpu.refine.EDGE_UNGUARDED``)
        poses.append(newton(backend, plan, level, pose, "edge_unguarded" if metric == "edge" else metric,
                            SPLIT_HALF_ITERATIONS, r_eff, rotate, opts,
                            tolerance=0.05, pixels=halves)[0])
    a, b = poses
    return float(np.hypot(a[0] - b[0], a[1] - b[1])), abs(math.degrees(a[2] - b[2]))


#: Newton stencils of each spatial half (``spatial_halves``): started at the whole's optimum, it is within a few.
SPATIAL_HALF_ITERATIONS = 6


def spatial_halves(backend, plan: FramePlan, level: Level, pose: np.ndarray, r_eff: float, opts,  # type: ignore[no-untyped-def]
                   metric: str = "edge", depths=None) -> tuple[float, float, float | None]:  # type: ignore[no-untyped-def]
    """Return how far apart (mm) the translation optima of the usable pixels' spatial halves lie.

    The halves are the pixels above and below their median row (the row-major list's first and second half), and
    left and right of their median column; with ``depths``, also the pixels deeper in the radiation field than their
    median depth and the rest. Each is refined for translation alone from the whole's ``pose`` (its rotation held)
    with ``metric`` (``"edge"``: unguarded, as the split-half check's halves). Unlike :func:`split_half_spread`'s
    interleaved halves, which share the anatomy and differ only in noise, these see different anatomy: where the
    images do not differ by one rigid in-plane motion (a shift across a diverging beam moves anatomy at different
    depths by different amounts; a pitch or roll one view cannot see; a shift along the beam magnifies), the halves'
    optima part, and the whole's lies somewhere between them. The field's outer half holds what is left of its
    edges' penumbra past the band cut out: in two portal images those edges stay with the beam, and where the
    anatomy inside is faint they pull the outer half (and the whole) towards the field's own position while the
    inner half follows the anatomy.

    Parameters
    ----------
    depths : backend array of float, optional
        Each usable pixel's depth inside the frame's field (any unit; ``level.pixel_rows[:usable]``'s order), on
        the backend (``backend.xp``); ``None``: no depth halves.

    Returns
    -------
    rows_mm, cols_mm : float
        The distance (mm at the isocentre plane) between the optima of the upper and lower halves, and of the left
        and right halves.
    depth_mm : float or None
        The distance between the optima of the field's inner and outer halves; ``None`` without ``depths``.
    """
    count = int(level.usable)
    xp = backend.xp  # the halves are taken where the pixel list lives: nothing comes back from a device
    rows, cols = level.pixel_rows[:count], level.pixel_cols[:count]
    start = np.asarray(pose, dtype=np.float64)
    name = "edge_unguarded" if metric == "edge" else metric
    middle = count // 2
    left = cols < xp.partition(cols, middle)[middle]  # the median column's own pixels go right
    right = ~left
    n_left = int(left.sum())
    splits = [((rows[:middle], cols[:middle], middle), (rows[middle:], cols[middle:], count - middle)),  # row-major
              ((rows[left], cols[left], n_left), (rows[right], cols[right], count - n_left))]
    if depths is not None:
        inner = depths > xp.partition(depths, middle)[middle]  # the median depth's own pixels go outer
        n_inner = int(inner.sum())
        if 0 < n_inner < count:
            outer = ~inner
            splits.append(((rows[inner], cols[inner], n_inner), (rows[outer], cols[outer], count - n_inner)))
    distances = []
    for halves in splits:
        a, b = (newton(backend, plan, level, start, name, SPATIAL_HALF_ITERATIONS, r_eff, False, opts, tolerance=0.05,
                       pixels=half)[0] for half in halves)
        distances.append(float(np.hypot(a[0] - b[0], a[1] - b[1])))
    return distances[0], distances[1], (distances[2] if len(distances) > 2 else None)


#: Directions (unit vectors in the image's x, y) along which ``peak_curvatures`` steps: enough to fit a 2 x 2 form.
_PEAK_DIRECTIONS = np.array([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)], [math.sqrt(0.5), -math.sqrt(0.5)]])
#: Least squares of the four drops ``u^T H u`` for ``(Hxx, Hxy, Hyy)``.
_PEAK_FIT = np.linalg.pinv(np.array([[u[0] ** 2, 2.0 * u[0] * u[1], u[1] ** 2] for u in _PEAK_DIRECTIONS]))
#: The check's poses for a unit step (x, y mm, rotation): none, then +u and -u along each of ``_PEAK_DIRECTIONS``.
_PEAK_STEPS = np.zeros((1 + 2 * len(_PEAK_DIRECTIONS), 3))
_PEAK_STEPS[1::2, :2] = _PEAK_DIRECTIONS
_PEAK_STEPS[2::2, :2] = -_PEAK_DIRECTIONS


def peak_curvatures(backend, plan: FramePlan, level: Level, pose: np.ndarray, metric: str,  # type: ignore[no-untyped-def]
                    step_px: float = 1.5) -> tuple[float, float, tuple[float, float], float]:
    """How sharply ``metric`` falls away from ``pose`` in its weakest and strongest directions of shift.

    The metric is scored at ``pose`` and at ``step_px`` pixels of ``level`` either side along four directions (0, 90,
    45 and 135 deg); each direction's mean drop is ``u^T H u`` of a quadratic form ``H``, fitted by least squares; its
    eigenvalues are the drops along its principal directions.

    Returns
    -------
    weakest, strongest : float
        The two drops over ``step_px`` pixels, each relative to the metric's value at ``pose`` (a peak: both > 0; a
        ridge: ``weakest`` about 0; a saddle: ``weakest`` < 0).
    direction : (float, float)
        Unit vector ``(x, y)`` in the image along which the drop is weakest.
    value : float
        The metric at ``pose`` (edge correlation, or normalised MI - 1).
    """
    distance = step_px * (level.spacing[0] if level.spacing[0] < level.spacing[1] else level.spacing[1])
    poses = _PEAK_STEPS * distance  # the nine poses: the centre, then +u and -u of each direction (rotation 0)
    poses += np.asarray(pose, dtype=np.float64)
    values = evaluate(backend, plan, level, poses, metric, normalised=True)
    centre = float(values[0])
    drops = centre - 0.5 * (values[1::2] + values[2::2])
    hxx, hxy, hyy = (_PEAK_FIT @ drops).tolist()
    # the symmetric 2 x 2 form's eigenvalues and the weaker one's unit vector, written out (numpy's eigh is some
    # twenty Python-level calls; this check runs on every smoothed frame)
    mean, half = 0.5 * (hxx + hyy), 0.5 * (hxx - hyy)
    radius = (half * half + hxy * hxy) ** 0.5
    weakest, strongest = mean - radius, mean + radius
    # (H - weakest I) v = 0 solved from the row whose solution is the larger: no cancellation
    if radius == 0.0:  # every direction alike
        along = (1.0, 0.0)
    elif half <= 0.0:  # the weaker direction nearer x: from the second row, (weakest - Hyy, Hxy)
        norm = ((weakest - hyy) ** 2 + hxy * hxy) ** 0.5
        along = ((weakest - hyy) / norm, hxy / norm)
    else:  # nearer y: from the first row, (Hxy, weakest - Hxx)
        norm = (hxy * hxy + (weakest - hxx) ** 2) ** 0.5
        along = (hxy / norm, (weakest - hxx) / norm)
    scale = abs(centre - 1.0) if metric == "mi" else abs(centre)  # MI's value is normalised MI (1 + ...)
    scale = scale if scale > 0 else 1.0
    return weakest / scale, strongest / scale, along, centre - 1.0 if metric == "mi" else centre


def matched_isotropy(backend, plan: FramePlan, level: Level, pose: np.ndarray  # type: ignore[no-untyped-def]
                     ) -> tuple[float | None, float | None, float | None]:
    """Measure how evenly the edges matching at ``pose`` on ``level`` run, which way most run, and what is counted.

    The last: the share of the frame's edge energy that the pose's edge correlation counts.

    Returns
    -------
    (isotropy, direction_deg, counted_share)
        As :func:`portalign.kernels.cpu.edge.orientation_summary` reads the backend's ``matched_orientation`` sums
        (the compiled program reads its own the same way), ``None`` where it gives NaN: the isotropy of the matched
        edges (0 all one way, 1 every way alike), the way the dominant ones run (deg from the frame's x axis toward
        its y axis, 0-180) and the share of the frame's edge energy the edge correlation counts at the pose.
    """
    poses = np.ascontiguousarray(np.asarray(pose, dtype=np.float64)[None, :])
    table = np.empty((1, 2, 3))
    pose_affines_into(poses, 1, level.geometry, table)
    turns = np.empty((1, 2))
    rotations_into(poses, 1, turns)
    out = backend.staged("orientation_out", np.zeros((1, 5)))
    backend.kernels.matched_orientation(
        level.pixel_rows, level.pixel_cols, level.listed, level.feat_re, level.feat_im, level.ref_re, level.ref_im,
        backend.staged("evaluate_affines", table), backend.staged("evaluate_rotations", turns), out)
    summary = orientation_summary(np.ascontiguousarray(backend.to_host(out)[0]))
    return tuple(None if value != value else value for value in summary)  # type: ignore[return-value]
