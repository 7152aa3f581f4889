"""Coarse-to-fine search for the rigid pose of one frame against a prepared reference.

1. Pyramid of the frame (2x2 box means), field detection on a small level,
   field-edge band removed from the masks of every level used.
2. Global search at the coarse level: FFT cross-correlation of doubled-angle
   edge features for every candidate rotation (no initial guess needed); the
   best few distinct optima become candidates.
3. Refinement level by level with a quadratic-model Newton step: each
   iteration evaluates the metric at 10 poses in one kernel call (the centre,
   +-1 step on each axis and the three mixed pairs), fits the full quadratic
   and jumps to its optimum. Steps are one pixel of the level, so the
   partial-volume ripple of MI (period one pixel) adds the same amount to every
   sample of a translation axis and does not bias the fit. The candidates are
   ranked on the first refinement level by edge correlation, a score whose
   zero means "no match", so the runner-up measures ambiguity.
4. Checks that decide ``ok``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .errors import PortalImageError
from .field import NO_FIELD, FieldEstimate, detect_field, sample_mask
from .image import Image
from .reference import FramePlan, Level, Reference, edge_features, wants_field
from .result import RegistrationResult

__all__ = ["register_frame"]

#: Quadratic-model stencil in units of one step: centre, +-each axis, the three mixed pairs.
STENCIL_3D = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 1, 0], [1, 0, 1], [0, 1, 1]],
    dtype=np.float64,
)
STENCIL_2D = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [1, 1, 0]], dtype=np.float64)
#: Largest Newton jump, in steps, per iteration.
MAX_JUMP = 1.5
#: Newton iterations per refinement level (coarsest first); the finest gets the last entry.
ITERATIONS = (3, 3, 4)
#: Global-search optima scoring below this fraction of the best are not refined.
CANDIDATE_FLOOR = 0.5
#: Convergence (largest jump, in steps) on intermediate levels and on the finest one.
COARSE_TOLERANCE = 0.1
FINE_TOLERANCE = 0.02
#: Candidates closer than this (mm) are the same optimum (a broad peak, not an ambiguity).
DISTINCT_MM = 3.0
#: A runner-up scoring at least this fraction of the winner is refined further before it counts.
RECHECK_RATIO = 0.75
#: Newton iterations a close runner-up gets to show whether it is a rival or a shoulder of the winner.
RECHECK_ITERATIONS = 2
#: Most global-search optima carried into refinement (near-ties beyond ``candidates``).
MAX_CANDIDATES = 8
#: A runner-up whose global-search peak reaches this fraction of the best peak is refined too.
COARSE_RECHECK_RATIO = 0.85
#: Largest rotation step of the quadratic stencil (radians): small fields constrain rotation weakly.
MAX_ROTATION_STEP = math.radians(0.5)
#: Below this RMS radius (mm) of the usable pixels around the beam axis, rotation is not estimated.
MIN_ROTATION_RADIUS_MM = 10.0
#: Contrast (robust range) / noise below which a frame has "too little structure".
MIN_CONTRAST_TO_NOISE = 12.0
#: Fewest usable pixels at the finest level (a 20 x 20 patch): less cannot be trusted.
MIN_USABLE_PIXELS = 400
#: Contrast / noise at the finest level above which a frame is "clean" and refined on finer levels too.
CLEAN_CONTRAST_TO_NOISE = 1000.0
#: About this many second differences estimate the fine-level noise.
NOISE_SAMPLES = 6000
#: Fraction of field pixels at the detector's maximum that makes a frame saturated.
MAX_SATURATED_FRACTION = 0.02


@dataclass
class _Candidate:
    pose: np.ndarray  # dx_mm, dy_mm, theta_rad
    score: float
    coarse_ratio: float = 1.0  # global-search peak over the best global-search peak


def register_frame(reference: Reference, frame: Image) -> RegistrationResult:
    """Register ``frame`` against a prepared ``reference``.

    Parameters
    ----------
    reference : Reference
    frame : Image

    Returns
    -------
    RegistrationResult
        Never raises for a frame that is a valid image; an untrustworthy match is
        returned with ``ok=False`` and a ``reason``.
    """
    start = time.perf_counter()
    backend = reference.backend
    # a lane of the plan for this geometry: buffers no other frame is using, and their stream
    with reference.lane(frame.shape, frame.spacing_mm, frame.beam_axis_px) as plan, backend.on_stream(plan.stream):
        result = _register(reference, plan, frame)
    elapsed = (time.perf_counter() - start) * 1e3
    return _replace(result, elapsed_ms=elapsed)


def _register(reference: Reference, plan: FramePlan, frame: Image) -> RegistrationResult:
    backend, opts = reference.backend, reference.options
    k = backend.kernels
    levels = plan.levels
    # 1. pyramid -------------------------------------------------------------------------------
    level0 = levels[0]
    level0.image = backend.upload(frame.pixels, level0.image, plan.staging)
    for index in range(1, plan.pyramid_depth + 1):
        k.downsample2(levels[index - 1].image, levels[index].image)
    small = backend.to_host(levels[plan.field_level].image)
    field = detect_field(small) if wants_field(opts, frame) else NO_FIELD
    used = sorted(set(plan.refine_levels) | {plan.coarse.level})
    for index in used:
        _frame_mask(backend, levels[index], field, plan.field_level, opts.bins)
    warnings: list[str] = []
    frame_stats: dict = {}
    quality = _quality(backend, frame, plan, field, frame_stats)
    # 2. global search ---------------------------------------------------------------------------
    r_eff = _rotation_radius(backend, levels[plan.refine_levels[0]])
    rotate = opts.estimate_rotation
    if rotate and r_eff < MIN_ROTATION_RADIUS_MM:
        rotate = False
        warnings.append(
            f"usable region too small to estimate rotation (RMS radius {r_eff:.1f} mm < "
            f"{MIN_ROTATION_RADIUS_MM:g} mm): rotation fixed at 0"
        )
    coarse_level = levels[plan.coarse.level]
    candidates = _global_search(backend, plan, coarse_level, opts.candidates, rotate)
    # 3. refinement -------------------------------------------------------------------------------
    details: dict = {"levels": [], "candidates": []}
    method = opts.method
    first = plan.refine_levels[0]
    if not candidates:  # no finite correlation at all: nothing to refine
        candidates = [_Candidate(np.zeros(3), 0.0)]
        quality = quality or "no match: the global search found no optimum"
    # optima of the global search far below the best cannot come near it after refinement: not worth a stencil
    candidates = [c for c in candidates if c.score >= CANDIDATE_FLOOR * candidates[0].score]
    only_level = len(plan.refine_levels) == 1
    first_tolerance = FINE_TOLERANCE if only_level else COARSE_TOLERANCE
    # rank the global search's optima by their edge score where it put them (one pose each: cheap and
    # fair, none refined yet); the best is then refined fully
    start_scores = _evaluate(backend, plan, levels[first], np.array([c.pose for c in candidates]), "edge")
    order = np.argsort(-start_scores, kind="stable")
    top = max(candidates[0].score, 1e-30)
    ranked = [_Candidate(candidates[i].pose, float(start_scores[i]), candidates[i].score / top) for i in order]
    pose, score = _newton(backend, plan, levels[first], ranked[0].pose, "edge", ITERATIONS[0], r_eff, rotate, opts,
                          tolerance=first_tolerance)
    best = _Candidate(pose, max(score, ranked[0].score))
    ambiguity = 0.0
    runner_up = None
    for other in ranked[1:]:
        if ranked[0].score <= 0 or np.hypot(*(other.pose[:2] - best.pose[:2])) <= DISTINCT_MM:
            continue
        ratio = other.score / ranked[0].score  # both unrefined
        # thin periodic structure (an MLC picket fence, ribs) gives sharp peaks: one unrefined step off its
        # peak a true rival scores low, but the global search's peak values show the near-tie
        if ratio >= RECHECK_RATIO or other.coarse_ratio >= COARSE_RECHECK_RATIO:
            # a close call: refine the runner-up too; on a broad peak it walks onto the winner
            pose, score = _newton(backend, plan, levels[first], other.pose, "edge", RECHECK_ITERATIONS, r_eff, rotate,
                                  opts, tolerance=COARSE_TOLERANCE)
            other = _Candidate(pose, score)
            if np.hypot(*(other.pose[:2] - best.pose[:2])) <= DISTINCT_MM:
                continue
            if other.score > best.score:  # the global search's order was wrong
                best, other = other, best
            ratio = other.score / best.score if best.score > 0 else 1.0
        if ratio > ambiguity:
            ambiguity, runner_up = ratio, other
    details["candidates"] = [
        {"dx_mm": float(c.pose[0]), "dy_mm": float(c.pose[1]), "rotation_deg": math.degrees(c.pose[2]), "score": c.score}
        for c in ranked
    ]
    pose, score = best.pose, best.score
    later = plan.refine_levels[1:]
    for i, index in enumerate(later):
        is_finest = i == len(later) - 1
        metric = "mi" if method == "mi" else "edge"
        iterations = ITERATIONS[-1] if is_finest else ITERATIONS[min(i + 1, len(ITERATIONS) - 1)]
        pose, score = _newton(backend, plan, levels[index], pose, metric, iterations, r_eff, rotate, opts,
                              tolerance=FINE_TOLERANCE if is_finest else COARSE_TOLERANCE)
        details["levels"].append({"level": index, "metric": metric, "score": score})
    finest = levels[plan.refine_levels[-1]]
    if plan.polish_levels and not quality and _is_clean(backend, plan, field, frame_stats):
        # a clean frame carries detail finer than the working levels: follow it down
        for index in plan.polish_levels:
            _frame_mask(backend, levels[index], field, plan.field_level, opts.bins)
            if levels[index].usable < MIN_USABLE_PIXELS:
                break
            metric = "mi" if method == "mi" else "edge"
            pose, score = _newton(backend, plan, levels[index], pose, metric, ITERATIONS[-1], r_eff, rotate, opts,
                                  tolerance=FINE_TOLERANCE)
            details["levels"].append({"level": index, "metric": metric, "score": score, "polish": True})
            finest = levels[index]
            later = [*later, index]
    if method == "mi" and not later:
        # a single-level plan: the MI refinement still runs, on the only level there is
        pose, score = _newton(backend, plan, finest, pose, "mi", ITERATIONS[-1], r_eff, rotate, opts)
    mi_gap = None
    if method == "auto":
        # cross-check: the MI optimum next to the edge optimum must be the same place
        # one star stencil (diagonal curvature) places the MI optimum well enough for this check
        mi_pose = _newton(backend, plan, finest, pose, "mi", 1, r_eff, rotate, opts, star=True)[0]
        mi_gap = float(np.hypot(*(mi_pose[:2] - pose[:2])))
        details["mi_check_mm"] = [float(mi_pose[0]), float(mi_pose[1]), math.degrees(mi_pose[2])]
    if method == "mi":
        final_edge = _edge_score(backend, plan, finest, pose)
    else:
        final_edge = score  # the quadratic model's value at the final edge optimum
    if method == "edge":
        reported = final_edge
    elif method == "auto":
        # the MI check's stencil centre was the final pose: its histogram is still in the buffer
        k.mutual_information(plan.hist[:1], True, plan.mi_out[:1])
        reported = float(backend.to_host(plan.mi_out[:1])[0]) - 1.0
    else:
        reported = _mi_score(backend, plan, finest, pose, normalised=True) - 1.0
    # 4. trust -------------------------------------------------------------------------------------
    reason = ""
    max_rot = math.radians(opts.max_rotation_deg) if opts.estimate_rotation else 0.0
    if quality:
        reason = quality
    elif abs(pose[0]) > opts.max_shift_mm or abs(pose[1]) > opts.max_shift_mm:
        reason = (
            f"optimum at ({pose[0]:.1f}, {pose[1]:.1f}) mm is outside the search range of "
            f"+-{opts.max_shift_mm:g} mm (max_shift_mm)"
        )
    elif rotate and abs(pose[2]) > max_rot + 1e-9:
        reason = (
            f"optimum rotation {math.degrees(pose[2]):.2f} deg is outside the search range of "
            f"+-{opts.max_rotation_deg:g} deg (max_rotation_deg)"
        )
    elif final_edge < opts.min_score:
        reason = f"no match: edge correlation {final_edge:.3f} is below {opts.min_score:g}"
    elif ambiguity >= opts.ambiguity_ratio and runner_up is not None:
        reason = (
            f"ambiguous: a second optimum at ({runner_up.pose[0]:.1f}, {runner_up.pose[1]:.1f}) mm scores "
            f"{ambiguity:.0%} of the best"
        )
    elif mi_gap is not None and mi_gap > opts.agreement_mm:
        reason = (
            f"edge and mutual-information optima disagree by {mi_gap:.2f} mm (agreement_mm={opts.agreement_mm:g})"
        )
    details["edge_mi_gap_mm"] = mi_gap
    details["edge_score"] = final_edge
    details["edge_score_selection"] = best.score
    details["rotation_radius_mm"] = r_eff
    details.update(frame_stats)
    details["field_effectiveness"] = field.effectiveness
    box_mm = None
    if field.detected and field.box_px is not None:
        lvl = levels[plan.field_level]
        c0, c1, r0, r1 = field.box_px
        box_mm = [
            (c0 - lvl.frame_axis[0]) * lvl.spacing[1],
            (c1 - lvl.frame_axis[0]) * lvl.spacing[1],
            (r0 - lvl.frame_axis[1]) * lvl.spacing[0],
            (r1 - lvl.frame_axis[1]) * lvl.spacing[0],
        ]
    if backend.fallback_reason:
        warnings.append(backend.fallback_reason)
    return RegistrationResult(
        dx_mm=float(pose[0]),
        dy_mm=float(pose[1]),
        rotation_deg=float(math.degrees(pose[2])),
        ok=not reason,
        reason=reason,
        score=float(reported),
        method=method,
        backend=backend.name,
        ambiguity=float(ambiguity),
        field_detected=field.detected,
        field_box_mm=box_mm,
        frame_uid=frame.info.sop_instance_uid,
        reference_uid=reference.image.info.sop_instance_uid,
        frame_index=frame.info.frame_index,
        warnings=warnings,
        details=details,
    )


# --- stages --------------------------------------------------------------------------------------


def _frame_mask(backend, level: Level, field: FieldEstimate, field_level: int, bins: int) -> None:  # type: ignore[no-untyped-def]
    """Usable pixels of a level: inside the field, away from its edge, off the border; then bins and features."""
    k = backend.kernels
    if field.detected and field.mask is not None:
        # level pixel i is level-0 pixel 2^L i + (2^L - 1)/2, i.e. field-level pixel (that - (2^F - 1)/2) / 2^F
        scale = 2.0 ** (level.index - field_level)
        offset = ((2.0**level.index - 1) / 2 - (2.0**field_level - 1) / 2) / 2.0**field_level
        level.mask[...] = backend.asarray(sample_mask(field.mask, scale, offset, level.shape).astype(np.uint8))
        k.erode_box(level.mask, level.erosion_px, level.scratch, level.eroded)
    else:
        level.mask[...] = 1
        k.erode_box(level.mask, 1, level.scratch, level.eroded)
    level.usable = int(k.pixel_list(level.eroded, level.pixel_rows, level.pixel_cols))
    lo, hi, _ = k.masked_range(level.image, level.eroded, 0.005, 0.995)
    level.range = (float(lo), float(hi))
    if hi <= lo:
        hi = lo + 1.0
    k.quantize(level.image, level.eroded, float(lo), float(hi), bins, level.bins)
    level.eps = edge_features(k, level.image, level.eroded, level.row_sums, level.feat_re, level.feat_im,
                              backend.to_host)


def _quality(backend, frame: Image, plan: FramePlan, field: FieldEstimate,  # type: ignore[no-untyped-def]
             frame_stats: dict) -> str:
    """Return why the frame cannot be trusted before any matching ("" when it can).

    ``frame_stats`` receives ``contrast_to_noise`` (robust contrast over white-noise sigma at the finest level).
    """
    finest = plan.levels[plan.refine_levels[-1]]
    coarse = plan.levels[plan.coarse.level]
    if coarse.usable < 16 or finest.usable < MIN_USABLE_PIXELS:
        return "too little of the frame is usable: the field (minus its edge band) is too small"
    noise = _noise_sigma(backend, finest)
    lo, hi = coarse.range
    contrast = hi - lo
    # box averaging from the finest to the coarse level divides white noise by 2 per level
    coarse_noise = noise / 2 ** (plan.coarse.level - finest.index)
    plan_stats = {"contrast_to_noise": contrast / max(noise, 1e-30)}
    frame_stats.update(plan_stats)
    if contrast < MIN_CONTRAST_TO_NOISE * coarse_noise or contrast <= 0:
        if not field.detected:
            return f"frame is blank (beam off?): contrast is {contrast / max(coarse_noise, 1e-30):.1f}x the noise"
        return f"too little structure inside the field: contrast is {contrast / max(coarse_noise, 1e-30):.1f}x the noise"
    saturation = frame.info.extra.get("saturation_value")
    if saturation is not None:
        img = backend.to_host(plan.levels[plan.field_level].image)
        # a box mean equals the maximum code only where all pixels under it are saturated
        fraction = float((img >= saturation).mean())
        if fraction > MAX_SATURATED_FRACTION:
            return f"frame is saturated: {fraction:.0%} of its pixels are at the detector maximum ({saturation:g})"
    return ""


def _noise_sigma(backend, level: Level) -> float:  # type: ignore[no-untyped-def]
    """Robust white-noise sigma from horizontal second differences (MAD), on every 4th row.

    A second difference cancels smooth anatomy (any linear trend) and keeps white
    noise with variance ``6 sigma^2``. Computed where the level lives (on a GPU:
    on the device; one number comes back).
    """
    xp = backend.xp
    img = level.image[::4].astype(xp.float64)
    mask = level.eroded[::4].astype(bool)
    both = mask[:, 2:] & mask[:, 1:-1] & mask[:, :-2]
    second = (img[:, 2:] - 2.0 * img[:, 1:-1] + img[:, :-2])[both]
    if second.size < 16:
        return 0.0
    return 1.4826 * _mad(xp, second) / math.sqrt(6.0)


def _mad(xp, values) -> float:  # type: ignore[no-untyped-def]
    """Median absolute deviation of a backend array, as a host float."""
    return float(xp.median(xp.abs(values - xp.median(values))))


def _is_clean(backend, plan: FramePlan, field: FieldEstimate, frame_stats: dict) -> bool:  # type: ignore[no-untyped-def]
    """Whether the frame is nearly noise-free (then a finer level still adds accuracy).

    Noise is measured where it is largest, on the frame's own pixels inside the field's bounding box;
    smooth anatomy hardly shows in second differences there.
    """
    level = plan.levels[0]
    img = level.image  # the frame where it lives: only the statistic comes back from a device
    rows, cols = img.shape
    r0, r1, c0, c1 = 0, rows, 0, cols
    if field.detected and field.box_px is not None:
        scale = 2.0 ** (plan.field_level - level.index)
        b = field.box_px
        c0, c1 = int(max(0, (b[0] + 1) * scale)), int(min(cols, b[1] * scale))
        r0, r1 = int(max(0, (b[2] + 1) * scale)), int(min(rows, b[3] * scale))
    row_step = max(1, (r1 - r0) * (c1 - c0) // NOISE_SAMPLES)
    xp = backend.xp
    patch = img[r0:r1:row_step, c0:c1].astype(xp.float64)
    second = (patch[:, 2:] - 2.0 * patch[:, 1:-1] + patch[:, :-2]).ravel()
    if second.size < 64:
        return False
    noise = 1.4826 * _mad(xp, second) / math.sqrt(6.0)
    lo, hi = plan.levels[plan.coarse.level].range
    ratio = (hi - lo) / max(noise, 1e-30)
    frame_stats["fine_contrast_to_noise"] = ratio
    return ratio >= CLEAN_CONTRAST_TO_NOISE


def _rotation_radius(backend, level: Level) -> float:  # type: ignore[no-untyped-def]
    """RMS distance (mm) of usable pixels from the beam axis: how far a rotation moves them."""
    xp = backend.xp
    rows, cols = xp.nonzero(level.eroded[::2, ::2])
    if rows.size == 0:
        return 50.0
    x = (cols * 2 - level.frame_axis[0]) * level.spacing[1]
    y = (rows * 2 - level.frame_axis[1]) * level.spacing[0]
    return max(float(xp.sqrt(xp.mean(x * x + y * y))), 5.0)


def _global_search(backend, plan: FramePlan, level: Level, n_candidates: int, rotate: bool) -> list[_Candidate]:  # type: ignore[no-untyped-def]
    """Best distinct (translation, rotation) optima of the edge cross-correlation (rotation 0 only if not ``rotate``)."""
    k = backend.kernels
    cs = plan.coarse
    xp = backend.xp
    frame_energy = float((level.feat_re.astype(xp.float64) ** 2 + level.feat_im.astype(xp.float64) ** 2).sum())
    spectrum = backend.asarray(k.feature_spectrum(level.feat_re, level.feat_im, cs.padded_shape, cs.margin_px))
    # translation only: just the surface of rotation 0
    chosen = slice(None) if rotate else slice(int(np.argmin(np.abs(cs.thetas))), int(np.argmin(np.abs(cs.thetas))) + 1)
    thetas = cs.thetas[chosen]
    k.correlation_surfaces(spectrum, cs.ref_spectra_conj[chosen], cs.surfaces[chosen])
    # only the searched window leaves the device: (K, 2m+1, 2m+1), index m = zero shift
    window = backend.to_host(cs.surfaces[chosen][:, cs.window_rows][:, :, cs.window_cols])
    norm = np.sqrt(np.maximum(frame_energy * cs.ref_energy[chosen], 1e-30))
    window = window / norm[:, None, None]
    m = cs.margin_px
    suppress = max(2, int(math.ceil(DISTINCT_MM / min(level.spacing))))
    work = window.copy()
    out: list[_Candidate] = []
    # the best n_candidates peaks, and beyond them any near-tie (periodic anatomy has many)
    while len(out) < MAX_CANDIDATES:
        kk, iy, ix = np.unravel_index(int(np.argmax(work)), work.shape)
        peak = float(work[kk, iy, ix])
        if not np.isfinite(peak) or (out and peak <= 0):
            break
        if len(out) >= n_candidates and peak < COARSE_RECHECK_RATIO * out[0].score:
            break
        centre = window[kk, iy, ix]
        fx = _parabola(window[kk, iy, ix - 1] if ix > 0 else None, centre, window[kk, iy, ix + 1] if ix < 2 * m else None)
        fy = _parabola(window[kk, iy - 1, ix] if iy > 0 else None, centre, window[kk, iy + 1, ix] if iy < 2 * m else None)
        ft = _parabola(window[kk - 1, iy, ix] if kk > 0 else None, centre,
                       window[kk + 1, iy, ix] if kk < len(thetas) - 1 else None)
        step = thetas[1] - thetas[0] if len(thetas) > 1 else 0.0
        pose = np.array([(ix - m + fx) * level.spacing[1], (iy - m + fy) * level.spacing[0], thetas[kk] + ft * step])
        out.append(_Candidate(pose, peak))
        work[:, max(0, iy - suppress): iy + suppress + 1, max(0, ix - suppress): ix + suppress + 1] = -np.inf
    return out


def _parabola(left: float | None, centre: float, right: float | None) -> float:
    """Offset (-0.5..0.5) of the vertex of the parabola through three equally spaced samples."""
    if left is None or right is None or not (np.isfinite(left) and np.isfinite(right)):
        return 0.0
    denom = left - 2.0 * centre + right
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def _evaluate(backend, plan: FramePlan, level: Level, poses: np.ndarray, metric: str, normalised: bool = False) -> np.ndarray:  # type: ignore[no-untyped-def]
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


def _edge_score(backend, plan: FramePlan, level: Level, pose: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    return float(_evaluate(backend, plan, level, pose[None, :], "edge")[0])


def _mi_score(backend, plan: FramePlan, level: Level, pose: np.ndarray, normalised: bool) -> float:  # type: ignore[no-untyped-def]
    return float(_evaluate(backend, plan, level, pose[None, :], "mi", normalised)[0])


def _newton(backend, plan: FramePlan, level: Level, pose: np.ndarray, metric: str, iterations: int,  # type: ignore[no-untyped-def]
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
        values = _evaluate(backend, plan, level, pose + points * step, metric, opts.normalised_mi)
        jump, predicted, cross = _quadratic_step(values, dims, cross)
        score = max(float(values[0]), predicted)
        pose = pose + np.concatenate([jump, np.zeros(3 - dims)]) * step
        pose[2] = float(np.clip(pose[2], -theta_limit, theta_limit))
        if np.max(np.abs(jump)) < tolerance:
            break
    return pose, score


def _quadratic_step(f: np.ndarray, dims: int, cross: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
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


def _replace(result: RegistrationResult, **changes) -> RegistrationResult:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(result, **changes)


def check_frame_pixels(frame: Image) -> None:
    """Raise :class:`PortalImageError` when an image's pixels are unusable (NaN, constant)."""
    pixels = frame.pixels
    lo, hi = float(pixels.min()), float(pixels.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PortalImageError(f"{frame.info.source}: pixels contain NaN or infinity")
    if lo == hi:
        raise PortalImageError(f"{frame.info.source}: all pixels have the same value ({lo:g}); nothing to register")
