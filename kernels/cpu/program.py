"""The search and refinement of one frame as one compiled call (numba, CPU).

Stage 3 of the per-frame program (:mod:`portalign.registration._program`): the
global search (:func:`.correlation.coarse_search`), the ranking of its optima on
the first refinement level, the Newton ascent of the best (and of any close
runner-up: a rival or a shoulder of the winner), the rotation lever-arm check,
the later and the polishing levels, the mutual-information cross-check (on a
weak edge match the mutual-information optimum itself, refined fully, becomes the
result), the final scores and the split-half precision check. The decisions between the steps
(which candidate, whether rotation is estimated, where the next level starts)
are made here, from state that stays in compiled code; the engine makes this
one call and reads one vector of results.

``portalign.registration._search_program.search_eager`` runs the same steps as
Python between the backend's kernels (the GPU path, and the simulator's); the
two give the same numbers (``tests/test_program_kernels.py``).

Levels come as a tuple of same-typed level tuples ``(rows, cols, feat_re,
feat_im, ref_re, ref_im, bins, ref_bins, geometry)`` in the order: the coarse
(search) level, the first refinement level, the later refinement levels, then the
polishing levels. ``counts[i]`` is the usable pixel count of level ``i`` and
``spacings[i]`` its ``(row, col)`` spacing in mm.

``settings`` carries the engine's constants (``portalign.registration._search_program.SETTINGS``):
see :data:`SETTING_NAMES`. ``out`` receives the results at the indices named in :data:`OUT_NAMES`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .correlation import coarse_search
from .edge import matched_orientation, orientation_summary
from .mutual_information import PV_ONE, mutual_information
from .peaks import search_peaks
from .refine import (
    EDGE,
    EDGE_UNGUARDED,
    MI,
    STENCIL_3D,
    metric_values,
    pose_affines_into,
    refine,
    refine_from,
    rotation_lever_arm,
    rotations_into,
    stencil_poses,
)

__all__ = ["search_program", "scan_start_poses", "scan_wanted", "SETTING_NAMES", "OUT_NAMES", "METHOD_EDGE",
           "METHOD_MI", "METHOD_AUTO", "MAX_RECORDS", "STAGE_LEVELS"]

#: ``settings[i]`` of :func:`search_program`.
SETTING_NAMES = (
    "candidate_floor", "distinct_mm", "recheck_ratio", "coarse_recheck_ratio", "recheck_iterations",
    "iterations_first", "iterations_middle", "iterations_last", "coarse_tolerance", "fine_tolerance",
    "min_rotation_support_mm", "min_usable_pixels", "split_half_below_score", "split_half_iterations",
    "max_rotation_step", "weak_edge_score", "alike", "alike_min_support_mm", "alike_rotation_edge_score",
    "alike_rotation_overlap", "mi_tolerance", "alike_below_edge", "split_half_block", "rotation_scan",
    "rotation_scan_gain", "rotation_scan_ratio",
)
#: ``out[i]`` of :func:`search_program` (NaN where not measured).
OUT_NAMES = (
    "dx_mm", "dy_mm", "theta_rad", "score", "best_score", "ambiguity", "runner_dx_mm", "runner_dy_mm",
    "rotate", "rotation_support_mm", "mi_gap_mm", "mi_dx_mm", "mi_dy_mm", "mi_theta_rad", "final_edge", "reported",
    "split_mm", "split_deg", "n_ranked", "n_records", "no_match", "rotation_unsupported", "mi_final", "mi_rotated",
    "mi_at_edge", "edge_theta_rad", "matched_isotropy", "matched_edge_direction_deg",
    "counted_edge_share",
)
METHOD_EDGE = 0
METHOD_MI = 1
METHOD_AUTO = 2
#: Most level records (later and polishing levels) the program writes.
MAX_RECORDS = 8
#: The levels tuple always has this many entries (padded with the coarse level): one compiled program for every
#: plan, whatever its number of levels (numba compiles once per tuple length).
STAGE_LEVELS = 8

_O = {name: i for i, name in enumerate(OUT_NAMES)}
_DX, _DY, _THETA, _SCORE, _BEST, _AMBIGUITY, _RUNNER_X, _RUNNER_Y = (_O[k] for k in OUT_NAMES[:8])
_ROTATE, _SUPPORT, _MI_GAP, _MI_X, _MI_Y, _MI_T, _FINAL_EDGE, _REPORTED = (_O[k] for k in OUT_NAMES[8:16])
_SPLIT_MM, _SPLIT_DEG, _N_RANKED, _N_RECORDS, _NO_MATCH, _UNSUPPORTED = (_O[k] for k in OUT_NAMES[16:22])
_MI_FINAL = _O["mi_final"]
_MI_ROTATED = _O["mi_rotated"]
_ISOTROPY = _O["matched_isotropy"]
_EDGE_ANGLE = _O["matched_edge_direction_deg"]
_COUNTED = _O["counted_edge_share"]
_MI_AT_EDGE = _O["mi_at_edge"]
_EDGE_T = _O["edge_theta_rad"]


@njit(cache=True, nogil=True)
def _evaluate(level, count, poses, n, metric, normalised, hist, sums, values):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Metric values of ``poses[:n]`` on ``level`` into ``values[:n]`` (n at most the scratch's stencil size)."""
    rows, cols, feat_re, feat_im, ref_re, ref_im, bins, ref_bins, geometry = level
    affines = np.empty((n, 2, 3))
    pose_affines_into(poses, n, geometry, affines)
    metric_values(metric, rows, cols, count, feat_re, feat_im, ref_re, ref_im, bins, ref_bins, normalised, poses,
                  affines, n, hist, sums, values)


@njit(cache=True, nogil=True)
def _lever_arm(level, count, spacing, pose, r_eff, n_stencil, metric, normalised, hist, sums, scratch, values):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Return the rotation's lever arm (mm; ``LEVER_ARM_UNTOLD`` where ``pose`` is not a maximum) on ``level``.

    ``_quality.rotation_support_mm``'s stencil: one pixel in x and y, a turn that moves a pixel at ``r_eff`` by one.
    """
    h_t = min(spacing[0], spacing[1])
    step = np.array([spacing[1], spacing[0], h_t / max(r_eff, 5.0)])
    stencil_poses(pose, step, 3, n_stencil, scratch)
    _evaluate(level, count, scratch, n_stencil, metric, normalised, hist, sums, values)
    return rotation_lever_arm(values, step)


@njit(cache=True, nogil=True)
def _steps(spacing, r_eff, rotate, max_rotation_step):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Stencil steps ``(mm, mm, rad)`` as ``portalign.registration._refine.newton`` chooses them (0 rad: no rotation)."""
    theta_step = min(min(spacing[0], spacing[1]) / r_eff, max_rotation_step) if rotate else 0.0
    return np.array([spacing[1], spacing[0], theta_step])


@njit(cache=True, nogil=True)
def _newton(level, count, spacing, pose, metric, iterations, r_eff, rotate, theta_limit, normalised, tolerance,  # type: ignore[no-untyped-def]
            star, max_rotation_step, hist, result, start_value):  # pragma: no cover
    """Newton ascent as ``portalign.registration._refine.newton``; pose in ``result[:3]``, score in ``result[3]``.

    ``start_value``: the metric at ``pose`` when already measured (NaN if not): not evaluated again.
    """
    rows, cols, feat_re, feat_im, ref_re, ref_im, bins, ref_bins, geometry = level
    step = _steps(spacing, r_eff, rotate, max_rotation_step)
    refine_from(metric, rows, cols, count, feat_re, feat_im, ref_re, ref_im, bins, ref_bins, geometry, pose, step,
                iterations, tolerance, star, theta_limit, normalised, hist, result, start_value)


@njit(cache=True, nogil=True)
def _newton_half(level, first, count, spacing, pose, metric, iterations, r_eff, rotate, theta_limit, normalised,  # type: ignore[no-untyped-def]
                 tolerance, max_rotation_step, hist, result, block):  # pragma: no cover
    """Newton ascent of ``metric`` on one half of the usable pixels (the split-half check).

    ``block`` 0: the alternate entries of the pixel list starting at ``first``; else the pixels of the squares of
    ``block`` pixels whose checkerboard colour is ``first`` (a smoothed frame's noise is shared by neighbours).
    """
    rows, cols, feat_re, feat_im, ref_re, ref_im, bins, ref_bins, geometry = level
    # contiguous copies: a strided view would compile the whole refine chain a second time, for another layout
    half_rows = np.empty((count + 1) // 2 if block == 0 else count, dtype=rows.dtype)
    half_cols = np.empty(half_rows.shape[0], dtype=cols.dtype)
    half = 0
    if block == 0:
        half = (count - first + 1) // 2
        for t in range(half):
            half_rows[t] = rows[first + 2 * t]
            half_cols[t] = cols[first + 2 * t]
    else:
        for t in range(count):
            if (rows[t] // block + cols[t] // block) % 2 == first:
                half_rows[half] = rows[t]
                half_cols[half] = cols[t]
                half += 1
    step = _steps(spacing, r_eff, rotate, max_rotation_step)
    no = np.bool_(False)  # typed, not literal: see search_program
    # a half's own optimum, unguarded: a half whose jumps were all taken back would return the start pose
    half_metric = EDGE_UNGUARDED if metric == EDGE else metric
    refine(half_metric, half_rows, half_cols, half, feat_re, feat_im, ref_re, ref_im, bins, ref_bins, geometry, pose,
           step, iterations, tolerance, no, theta_limit, normalised, hist, result)


@njit(cache=True, nogil=True)
def scan_wanted(theta: float, thetas: np.ndarray) -> bool:  # pragma: no cover
    """Return whether a start at rotation ``theta`` (rad) gets the rotation scan.

    It does more than one search step (of the uniform grid ``thetas``) from no turn. Nearer, the ascent walks to any
    optimum within its reach, and a frame's own turn is rarely larger: most frames are not scanned (no cost); a large
    turn the coarse level claims is checked.
    """
    if thetas.shape[0] < 2:
        return False
    return abs(theta) > abs(thetas[1] - thetas[0])


@njit(cache=True, nogil=True)
def scan_start_poses(rows_sum: int, cols_sum: int, count: int, geometry: np.ndarray, pose: np.ndarray,  # pragma: no cover
                     thetas: np.ndarray, n_scan: int, out: np.ndarray) -> int:
    """Write the poses of the rotation scan before the best optimum's ascent (``_search_program.rotation_scan``).

    The searched rotations ``thetas`` (rad, a uniform grid; all of them, or ``n_scan`` evenly spread over them, the
    first and last included) more than one and a half grid steps from ``pose``'s rotation, each with the translation
    that maps the centroid of the level's ``count`` usable pixels (their row and column indices summed in integers,
    ``rows_sum`` and ``cols_sum``: exact, the same on every path; ``geometry``: the level's) where ``pose`` maps it: a
    turn about the matched structure, not the beam axis. A pose ``(dx, dy, theta)``
    places reference point ``q`` at ``R(theta) q + (dx, dy)`` in the frame. Writes ``out[:n]`` and returns ``n`` (0: no
    usable pixel, or no rotation that far).
    """
    if count <= 0:
        return 0
    cx = (cols_sum / count - geometry[0]) * geometry[3]
    cy = (rows_sum / count - geometry[1]) * geometry[2]
    c = math.cos(pose[2])
    s = math.sin(pose[2])
    ux = cx - pose[0]
    uy = cy - pose[1]
    qx = c * ux + s * uy
    qy = -s * ux + c * uy
    n_theta = thetas.shape[0]
    if n_theta < 2:
        return 0
    # only rotations the ascent cannot reach itself: more than one and a half of the search's steps from the start
    # (nearer, its own steps get there: a start moved by a near rotation's unrefined score could end on a lower peak)
    near = 1.5 * abs(thetas[1] - thetas[0])
    m = n_theta if n_theta <= n_scan else n_scan
    n = 0
    for k in range(m):
        angle = thetas[k] if n_theta <= n_scan else thetas[(k * (n_theta - 1)) // (n_scan - 1)]
        if abs(angle - pose[2]) <= near:
            continue
        ca = math.cos(angle)
        sa = math.sin(angle)
        out[n, 0] = cx - (ca * qx - sa * qy)
        out[n, 1] = cy - (sa * qx + ca * qy)
        out[n, 2] = angle
        n += 1
    return n


@njit(cache=True, nogil=True)
def _split_spread(level, count, spacing, pose, metric, iterations, r_eff, rotate, theta_limit, normalised,  # type: ignore[no-untyped-def]
                  max_rotation_step, hist, result, halves, block):  # pragma: no cover
    """Return how far apart (mm, deg) the ``metric`` optima of the two halves of the usable pixels lie.

    The twin of ``portalign.registration._refine.split_half_spread``: each half refined from ``pose`` (tolerance
    0.05 steps), the rotation only with ``rotate``; the halves as :func:`_newton_half` takes them (``block``).
    ``halves`` is scratch ``(2, 3)``.
    """
    for h in range(2):
        _newton_half(level, np.int64(h), count, spacing, pose, metric, iterations, r_eff, rotate, theta_limit,
                     normalised, 0.05, max_rotation_step, hist, result, block)
        halves[h, :] = result[:3]
    return (math.hypot(halves[0, 0] - halves[1, 0], halves[0, 1] - halves[1, 1]),
            abs(math.degrees(halves[0, 2] - halves[1, 2])))


@njit(cache=True, nogil=True)
def search_program(levels, counts: np.ndarray, spacings: np.ndarray, level_index: np.ndarray, n_later: int,  # type: ignore[no-untyped-def]
                   n_polish: int, spectra: np.ndarray, energy: np.ndarray, window_rows: np.ndarray,
                   window_cols: np.ndarray, thetas: np.ndarray, padded_rows: int, padded_cols: int, margin: int,
                   suppress: int, window: np.ndarray, peak_poses: np.ndarray, peak_scores: np.ndarray,
                   surfaces_ready: bool, surfaces: np.ndarray, n_candidates: int, method: int, rotate: bool,
                   r_eff: float, theta_limit: float, normalised: bool,
                   check_precision: bool, polish: bool, settings: np.ndarray, workers: int, hist: np.ndarray,
                   ranked: np.ndarray, records: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Run stage 3 of the per-frame program for one frame; results into ``out``, ``ranked`` and ``records``.

    Parameters
    ----------
    levels : tuple of STAGE_LEVELS level tuples
        Coarse level, first refinement level, ``n_later`` later levels, ``n_polish`` polishing levels, then
        padding (never read).
    counts : int64[n_levels]
    spacings : float64[n_levels, 2]
    level_index : int64[n_levels]
        Pyramid index of each level (for the records).
    n_later, n_polish : int
    spectra, energy, window_rows, window_cols, thetas, padded_rows, padded_cols, margin, suppress, window, peak_poses,
    peak_scores
        The coarse search's arrays, as :func:`.correlation.coarse_search` takes them (already cut to rotation 0
        when rotation is not estimated).
    surfaces_ready : bool
        The level stage computed the searched windows already (``kernels.cpu.level.levels_and_surfaces``):
        only their peaks are searched, in ``surfaces``.
    surfaces : float64[K, M, M]
        With ``surfaces_ready``: the normalised windows of the searched rotations (those of ``thetas``).
    n_candidates : int
        Optima the global search keeps (``RegistrationOptions.candidates``).
    method : int
        ``METHOD_EDGE``, ``METHOD_MI`` or ``METHOD_AUTO``.
    rotate : bool
        Estimate the in-plane rotation.
    r_eff : float
        RMS radius (mm) of the usable pixels around the beam axis.
    theta_limit : float
        Largest rotation (rad) a Newton step may reach.
    normalised : bool
        Normalised MI for the MI refinement (``RegistrationOptions.normalised_mi``).
    check_precision : bool
        The frame passed its quality checks: a weak match gets the split-half precision check.
    polish : bool
        The frame is clean: the polishing levels are refined too.
    settings : float64[len(SETTING_NAMES)]
    workers : int
        Threads for the global search's FFTs (the engine passes ``correlation.FFT_WORKERS``).
    hist : int64[>= MAX_STENCIL, bins, bins]
        Histogram scratch.
    ranked : float64[>= MAX_CANDIDATES, 5]
        Receives the ranked optima: ``dx_mm, dy_mm, theta_rad``, the first level's edge score, the
        global-search peak over the best peak.
    records : float64[MAX_RECORDS, 4]
        Receives per later/polishing level: pyramid index, metric (0 edge, 1 MI), score, polishing (1/0).
    out : float64[len(OUT_NAMES)]
    """
    floor, distinct, recheck_ratio, coarse_recheck = settings[0], settings[1], settings[2], settings[3]
    recheck_iterations = int(settings[4])
    iterations = (int(settings[5]), int(settings[6]), int(settings[7]))
    coarse_tolerance, fine_tolerance = settings[8], settings[9]
    min_support, min_usable = settings[10], settings[11]
    split_below, split_iterations, max_step = settings[12], int(settings[13]), settings[14]
    weak_edge = settings[15]
    alike, alike_support = settings[16] != 0.0, settings[17]
    alike_rotation_edge, alike_rotation_overlap = settings[18], settings[19]
    mi_tolerance = settings[20]  # the finest levels' convergence for MI, whose partial-volume ripple needs it tighter
    split_block = np.int64(settings[22])  # the split-half check's checkerboard squares (0: alternate pixels)
    alike_below_edge = settings[21]  # two alike images report MI below this edge score only (inf: whatever it is)
    n_scan = np.int64(settings[23])  # the searched rotations scored before the best optimum's ascent (at most)
    scan_gain, scan_ratio = settings[24], settings[25]  # ...and what one must gain over the start to replace it
    out[:] = np.nan
    # typed (not literal) metric ids, counts and flags for the calls below: numba compiles a callee once per
    # literal argument value, and the refine chain is the costliest compile there is
    edge_id, mi_id, one = np.int64(EDGE), np.int64(MI), np.int64(1)
    n_stencil = np.int64(STENCIL_3D.shape[0])
    no, yes = np.bool_(False), np.bool_(True)
    n_ranked_max = ranked.shape[0]
    scratch_poses = np.empty((STENCIL_3D.shape[0], 3))
    sums = np.empty((STENCIL_3D.shape[0], 3))
    values = np.empty(STENCIL_3D.shape[0])
    result = np.empty(5)
    unknown = np.nan  # no start value measured
    coarse, first = levels[0], levels[1]
    # 2. global search ---------------------------------------------------------------------------
    if surfaces_ready:
        found = search_peaks(surfaces, thetas, spacings[0, 0], spacings[0, 1], n_candidates, coarse_recheck, suppress,
                             peak_poses, peak_scores)
    else:
        found = coarse_search(coarse[2], coarse[3], padded_rows, padded_cols, margin, spectra, energy, window_rows,
                              window_cols, thetas, spacings[0, 0], spacings[0, 1], n_candidates, coarse_recheck,
                              suppress, window, peak_poses, peak_scores, workers)
    no_match = found == 0
    if no_match:  # no finite correlation at all: nothing to refine
        peak_poses[0, :] = 0.0
        peak_scores[0] = 0.0
        found = 1
    # optima far below the best cannot come near it after refinement
    kept = np.int64(0)  # typed, not literal: a literal 0 compiled _evaluate and metric_values a second time
    kept_peaks = np.empty(found)  # the global-search peak of each kept optimum
    for i in range(found):
        if peak_scores[i] >= floor * peak_scores[0] and kept < n_ranked_max:
            scratch_poses[kept, :] = peak_poses[i, :]
            kept_peaks[kept] = peak_scores[i]
            kept += 1
    # 3. rank the optima by their edge score where the search put them, refine the best -----------
    only_level = n_later == 0
    first_tolerance = fine_tolerance if only_level else coarse_tolerance
    _evaluate(first, counts[1], scratch_poses, kept, edge_id, no, hist, sums, values)
    order = np.argsort(-values[:kept], kind="mergesort")  # stable, as the engine's argsort
    top = max(peak_scores[0], 1e-30)
    for r in range(kept):
        i = order[r]
        ranked[r, 0:3] = scratch_poses[i, :]
        ranked[r, 3] = values[i]
        ranked[r, 4] = kept_peaks[i] / top
    start = ranked[0, 0:3].copy()
    start_value = ranked[0, 3]
    if rotate and not alike and scan_wanted(start[2], thetas):
        # the searched rotations of the best optimum, scored where the ascent runs: the coarse level's large rotation
        # can lie several of the ascent's steps from this level's optimum (``_search_program.rotation_scan``; not for
        # two portal images, whose shared aperture's edges are in every score)
        rows_sum = np.int64(0)
        cols_sum = np.int64(0)
        for i in range(counts[1]):
            rows_sum += first[0][i]
            cols_sum += first[1][i]
        n = scan_start_poses(rows_sum, cols_sum, counts[1], first[8], start, thetas, n_scan, scratch_poses)
        if n > 0:
            _evaluate(first, counts[1], scratch_poses, n, edge_id, no, hist, sums, values)
            chosen = np.argmax(values[:n])
            if values[chosen] >= start_value + scan_gain and values[chosen] >= scan_ratio * start_value:
                start = scratch_poses[chosen, :].copy()
                start_value = values[chosen]
    # its first stencil's centre is the start's score (not measured again)
    _newton(first, counts[1], spacings[1], start, edge_id, iterations[0], r_eff, rotate, theta_limit,
            normalised, first_tolerance, no, max_step, hist, result, start_value)
    best = result[:3].copy()
    best_score = max(result[3], start_value)
    ambiguity = 0.0
    runner = np.full(2, np.nan)
    for r in range(1, kept):
        other = ranked[r, 0:3].copy()
        other_score = ranked[r, 3]
        if math.hypot(other[0] - best[0], other[1] - best[1]) <= distinct:
            continue
        # the best's own start scored nothing (<= 0): no ratio of unrefined scores means anything; an infinite one makes
        # every distinct rival a close call, refined and compared (before, none was: "no rival", ambiguity 0)
        ratio = other_score / ranked[0, 3] if ranked[0, 3] > 0 else math.inf  # both unrefined
        if ratio >= recheck_ratio or ranked[r, 4] >= coarse_recheck:
            # a close call: refine the runner-up too; on a broad peak it walks onto the winner
            _newton(first, counts[1], spacings[1], other, edge_id, recheck_iterations, r_eff, rotate, theta_limit,
                    normalised, coarse_tolerance, no, max_step, hist, result, other_score)
            other = result[:3].copy()
            other_score = result[3]
            if math.hypot(other[0] - best[0], other[1] - best[1]) <= distinct:
                continue
            if other_score > best_score:  # the global search's order was wrong
                best, other = other, best
                best_score, other_score = other_score, best_score
            ratio = other_score / best_score if best_score > 0 else 1.0
        if ratio > ambiguity:
            ambiguity = ratio
            runner[0] = other[0]
            runner[1] = other[1]
    pose = best.copy()
    score = best_score
    unsupported = False
    if rotate:
        # a rotation the matched structure cannot pin (a ball bearing, a cone's edge) is not reported
        support = _lever_arm(coarse, counts[0], spacings[0], pose, r_eff, n_stencil, edge_id, no, hist, sums,
                             scratch_poses, values)
        if support < 0.0:
            # untold on the search level (the first level's optimum is not a maximum there: its 4 mm pixels blur what
            # the first level resolved): measured on the first refinement level, where the pose is the ascent's optimum
            support = max(_lever_arm(first, counts[1], spacings[1], pose, r_eff, n_stencil, edge_id, no, hist, sums,
                                     scratch_poses, values), 0.0)
        out[_SUPPORT] = support
        if support < min_support:
            rotate = False
            unsupported = True
            start = np.array([pose[0], pose[1], 0.0])
            _newton(first, counts[1], spacings[1], start, edge_id, iterations[0], r_eff, no, theta_limit, normalised,
                    first_tolerance, no, max_step, hist, result, unknown)
            pose = result[:3].copy()
            score = result[3]
    # later levels, then the polishing ones (a clean frame carries detail finer than the working levels)
    level_metric = MI if method == METHOD_MI else EDGE
    n_records = 0
    finest = 1
    refined_later = False
    n_refined = n_later + (n_polish if polish and not no_match else 0)
    for i in range(n_refined):
        j = 2 + i
        polishing = i >= n_later
        if polishing and counts[j] < min_usable:
            break
        if polishing or i == n_later - 1:  # a polishing level or the finest working level
            its, tolerance = iterations[2], (mi_tolerance if level_metric == MI else fine_tolerance)
        else:
            its, tolerance = iterations[min(i + 1, 2)], coarse_tolerance
        _newton(levels[j], counts[j], spacings[j], pose, level_metric, its, r_eff, rotate, theta_limit, normalised,
                tolerance, no, max_step, hist, result, unknown)
        pose = result[:3].copy()
        score = result[3]
        if n_records < records.shape[0]:
            records[n_records, 0] = level_index[j]
            records[n_records, 1] = level_metric
            records[n_records, 2] = score
            records[n_records, 3] = 1.0 if polishing else 0.0
            n_records += 1
        finest = j
        refined_later = True
    fin = levels[finest]  # one runtime index into the levels tuple (each one is a switch over its entries)
    if method == METHOD_MI and not refined_later:
        # a single-level plan: the MI refinement still runs, on the only level there is
        _newton(fin, counts[finest], spacings[finest], pose, mi_id, iterations[2], r_eff, rotate,
                theta_limit, normalised, 0.02, no, max_step, hist, result, unknown)
        pose = result[:3].copy()
        score = result[3]
    # a weak edge match (noise-dominated gradients: a low-dose frame) is placed more precisely by mutual
    # information on the intensities: refined fully from the edge optimum, which is then its cross-check
    # ...and so is that of two portal images (``alike``), whose intensities match (its rotation only as below), unless
    # the matched structure pins rotation weakly (its lever arm, when measured, below
    # ``alike_min_support_mm``: a small field's)
    alike_final = alike and not out[_SUPPORT] < alike_support and score < alike_below_edge  # NaN is not below
    mi_final = method == METHOD_AUTO and not no_match and (score < weak_edge or alike_final)
    mi_rotates = False
    if method == METHOD_AUTO:
        if mi_final:
            # on a weak edge match MI places the rotation too; two portal images keep the edge optimum's rotation
            # unless below: MI's own drifted on strong clean edges and on partial overlaps (0.40-0.46 deg on windows
            # of one phantom image), the edges' did not
            mi_rotates = rotate and score < weak_edge
            if rotate and not mi_rotates and score < alike_rotation_edge:
                # two portal images on a moderate edge match (noisy MV anatomy, where MI's rotation is the better)
                # over most of the frame (alike_rotation_overlap): MI places the rotation too. The share of its usable pixels
                # that land on the reference is the edge optimum's joint histogram's mass
                scratch_poses[0, :] = pose
                _evaluate(fin, counts[finest], scratch_poses, one, mi_id, no, hist, sums, values)
                mass = 0.0
                for a in range(hist.shape[1]):
                    for b in range(hist.shape[2]):
                        mass += hist[0, a, b]
                mi_rotates = mass >= alike_rotation_overlap * PV_ONE * max(counts[finest], 1)
            _newton(fin, counts[finest], spacings[finest], pose, mi_id, iterations[2], r_eff, mi_rotates, theta_limit,
                    normalised, mi_tolerance, no, max_step, hist, result, unknown)
            out[_MI_ROTATED] = 1.0 if mi_rotates else 0.0
        else:
            # cross-check: the MI optimum next to the edge optimum must be the same place. One 2-D star stencil
            # (5 poses: diagonal curvature, the rotation held at the edge optimum's) places it well enough: its
            # distance is all the check reads
            _newton(fin, counts[finest], spacings[finest], pose, mi_id, one, r_eff, no, theta_limit, normalised,
                    0.02, yes, max_step, hist, result, unknown)
        out[_MI_X] = result[0]
        out[_MI_Y] = result[1]
        out[_MI_T] = result[2]
        out[_MI_GAP] = math.hypot(result[0] - pose[0], result[1] - pose[1])
    if method == METHOD_MI:
        scratch_poses[0, :] = pose
        _evaluate(fin, counts[finest], scratch_poses, one, edge_id, no, hist, sums, values)
        final_edge = values[0]
    else:
        final_edge = score  # the quadratic model's value at the final edge optimum
    edge_pose = pose.copy()
    out[_EDGE_T] = edge_pose[2]  # the edge optimum's rotation, beside MI's where auto reports MI's (its uncertainty)
    # how evenly the edges matched at the edge optimum run in every direction (the aperture problem: one-way edges
    # fix no shift along themselves; ``matched_orientation``), on the first refinement level (a quarter of the finest
    # one's pixels or fewer: the way edges run does not need their finest detail)
    out[_ISOTROPY] = np.nan
    out[_EDGE_ANGLE] = np.nan
    out[_COUNTED] = np.nan
    if not no_match:
        scratch_poses[0, :] = edge_pose
        affine = np.empty((1, 2, 3))
        pose_affines_into(scratch_poses, one, first[8], affine)
        turn = np.empty((1, 2))
        rotations_into(scratch_poses, one, turn)
        orientation = np.empty((1, 5))
        matched_orientation(first[0], first[1], counts[1], first[2], first[3], first[4], first[5], affine, turn,
                            orientation)
        out[_ISOTROPY], out[_EDGE_ANGLE], out[_COUNTED] = orientation_summary(orientation[0])
    if mi_final:
        pose = result[:3].copy()
    if method == METHOD_EDGE:
        reported = final_edge
    elif method == METHOD_AUTO and not mi_final:
        # the MI check's stencil centre was the final pose: its histogram is still in the scratch
        mi = np.empty(1)
        mutual_information(hist[:1], yes, mi)  # type: ignore[arg-type]  # a numba boolean, typed on purpose
        reported = mi[0] - 1.0
    else:
        # the reported MI (normalised) optimum's value, and where MI's ascent began (the edge optimum): an ascent
        # that ended lower than it began did not settle (out[mi_at_edge]; one histogram more in the same call)
        scratch_poses[0, :] = pose
        scratch_poses[1, :] = edge_pose
        _evaluate(fin, counts[finest], scratch_poses, np.int64(2 if mi_final else 1), mi_id, yes, hist, sums, values)
        reported = values[0] - 1.0
        if mi_final:
            out[_MI_AT_EDGE] = values[1] - 1.0
    # a weak match is checked for precision: the optima of two independent halves of the pixels must agree
    # (of what is reported: MI's optimum where auto reports it, whose halves agree where the edges' scatter on the
    # low-dose frames MI places better; the edges' otherwise)
    if check_precision and not no_match and final_edge < split_below:
        halves = np.empty((2, 3))
        half_metric = mi_id if mi_final else edge_id
        half_rotates = mi_rotates if mi_final else rotate
        out[_SPLIT_MM], out[_SPLIT_DEG] = _split_spread(
            fin, counts[finest], spacings[finest], pose, half_metric, split_iterations, r_eff, half_rotates,
            theta_limit, normalised if mi_final else no, max_step, hist, result, halves, split_block)
        if rotate and not half_rotates:  # the rotation reported is the edges': their halves' spread, in degrees
            out[_SPLIT_DEG] = _split_spread(fin, counts[finest], spacings[finest], pose, edge_id, split_iterations,
                                            r_eff, rotate, theta_limit, no, max_step, hist, result, halves,
                                            split_block)[1]
    out[_DX] = pose[0]
    out[_DY] = pose[1]
    out[_THETA] = pose[2]
    out[_SCORE] = score
    out[_BEST] = best_score
    out[_AMBIGUITY] = ambiguity
    out[_RUNNER_X] = runner[0]
    out[_RUNNER_Y] = runner[1]
    out[_ROTATE] = 1.0 if rotate else 0.0
    out[_FINAL_EDGE] = final_edge
    out[_REPORTED] = reported
    out[_N_RANKED] = kept
    out[_N_RECORDS] = n_records
    out[_NO_MATCH] = 1.0 if no_match else 0.0
    out[_UNSUPPORTED] = 1.0 if unsupported else 0.0
    out[_MI_FINAL] = 1.0 if mi_final else 0.0
