"""The per-frame program: one frame against a prepared reference, stage by stage.

1. Pyramid of the frame (2x2 box means), field detection on a small level,
   field-edge band removed from the masks of every level used (``_frame``).
2. Quality of the frame before any matching (``_quality``).
3. Global search at the coarse level (``_search``): FFT cross-correlation of
   doubled-angle edge features for every candidate rotation; the best few
   distinct optima become candidates, ranked on the first refinement level by
   edge correlation (a score whose zero means "no match", so the runner-up
   measures ambiguity).
4. Refinement level by level (``_refine``), the MI cross-check, then the checks
   that decide ``ok``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..field import NO_FIELD, field_size_mm, find_field
from ..image import Image
from ..result import RegistrationResult
from ._frame import frame_mask
from ._plan import FramePlan, wants_field
from ._quality import MIN_ROTATION_SUPPORT_MM, MIN_USABLE_PIXELS, assess_frame, is_clean, rotation_radius, rotation_support_mm
from ._refine import edge_score, evaluate, mi_score, newton, split_half_spread
from ._search import COARSE_RECHECK_RATIO, DISTINCT_MM, Candidate, global_search
from ._views import common_region, compare_views

if TYPE_CHECKING:  # the program is handed a Reference; it never builds one
    from ._reference import Reference

__all__ = ["register_frame"]

#: Newton iterations per refinement level (coarsest first); the finest gets the last entry.
ITERATIONS = (3, 3, 4)
#: Global-search optima scoring below this fraction of the best are not refined.
CANDIDATE_FLOOR = 0.5
#: Convergence (largest jump, in steps) on intermediate levels and on the finest one.
COARSE_TOLERANCE = 0.1
FINE_TOLERANCE = 0.02
#: A runner-up scoring at least this fraction of the winner is refined further before it counts.
RECHECK_RATIO = 0.75
#: Newton iterations a close runner-up gets to show whether it is a rival or a shoulder of the winner.
RECHECK_ITERATIONS = 2
#: A final edge score below this gets the split-half precision check (strong matches are precise).
SPLIT_HALF_BELOW_SCORE = 0.4
#: The two halves' optima may lie at most this far apart (about twice the full estimate's standard error).
SPLIT_HALF_MAX_MM = 1.0
SPLIT_HALF_MAX_DEG = 1.0
#: Below this RMS radius (mm) of the usable pixels around the beam axis, rotation is not estimated.
MIN_ROTATION_RADIUS_MM = 10.0
#: A frame field (with a reference that has none, e.g. a DRR) smaller than this (mm) and than this share of the
#: region the plan was sized for gets a plan sized for the field (pyramid, edge band).
SMALL_FIELD_MM = 80.0
SMALL_FIELD_SHARE = 0.5


@dataclass(frozen=True)
class _SmallField:
    """The frame's field is small and the plan was sized for the whole image: register on a plan for the field."""

    size_mm: float


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
    with reference.lane(frame.shape, frame.spacing_mm, frame.beam_axis_px) as plan, backend.frame_scope(plan.stream):
        result = _register(reference, plan, frame, start)
    if isinstance(result, _SmallField):  # a DRR reference and a small (cone, SRS) field: a plan sized for it
        with reference.lane(frame.shape, frame.spacing_mm, frame.beam_axis_px, result.size_mm) as plan, \
                backend.frame_scope(plan.stream):
            result = _register(reference, plan, frame, start)
    return result


def _register(reference: Reference, plan: FramePlan, frame: Image, start: float) -> RegistrationResult:
    backend, opts = reference.backend, reference.options
    k = backend.kernels
    levels = plan.levels
    # 1. pyramid -------------------------------------------------------------------------------
    level0 = levels[0]
    level0.image = backend.upload(frame.pixels, level0.image, plan.staging)
    for index in range(1, plan.pyramid_depth + 1):
        k.downsample2(levels[index - 1].image, levels[index].image)
    small = backend.to_host(levels[plan.field_level].image)
    field = find_field(frame, small) if wants_field(opts, frame) else NO_FIELD
    used = sorted(set(plan.refine_levels) | {plan.coarse.level})
    if field.detected and not reference.field.detected and plan.field_mm is None and field.box_px is not None:
        limit = min(SMALL_FIELD_MM, SMALL_FIELD_SHARE * plan.extent_mm)
        sy, sx = levels[plan.field_level].spacing
        c0, c1, r0, r1 = field.box_px
        # the field's bounding box bounds its inscribed disc: only a small box pays for the distance transform
        if min((c1 - c0 + 1) * sx, (r1 - r0 + 1) * sy) < limit:
            size = field_size_mm(field, (sy, sx))
            if size is not None and size < limit:
                return _SmallField(size)  # type: ignore[return-value]
    for index in used:
        frame_mask(backend, levels[index], field, plan.field_level, opts.bins)
    view_reason, view_record, warnings = compare_views(reference.image.info, frame.info, opts)
    if field.note:
        warnings.append(field.note)
    if field.dead_rows or field.dead_cols:
        warnings.append(f"{len(field.dead_rows)} dead detector row(s) and {len(field.dead_cols)} column(s) "
                        "left out of the match")
    frame_stats: dict = {}
    quality = assess_frame(backend, frame, plan, field, frame_stats)
    # 2. global search ---------------------------------------------------------------------------
    r_eff = rotation_radius(backend, levels[plan.refine_levels[0]])
    rotate = opts.estimate_rotation
    if rotate and r_eff < MIN_ROTATION_RADIUS_MM:
        rotate = False
        warnings.append(
            f"usable region too small to estimate rotation (RMS radius {r_eff:.1f} mm < "
            f"{MIN_ROTATION_RADIUS_MM:g} mm): rotation not estimated (translation only, rotation held at 0)"
        )
    coarse_level = levels[plan.coarse.level]
    candidates = global_search(backend, plan, coarse_level, opts.candidates, rotate)
    # 3. refinement -------------------------------------------------------------------------------
    details: dict = {"levels": [], "candidates": []}
    method = opts.method
    first = plan.refine_levels[0]
    if not candidates:  # no finite correlation at all: nothing to refine
        candidates = [Candidate(np.zeros(3), 0.0)]
        quality = quality or "no match: the global search found no optimum"
    # optima of the global search far below the best cannot come near it after refinement: not worth a stencil
    candidates = [c for c in candidates if c.score >= CANDIDATE_FLOOR * candidates[0].score]
    only_level = len(plan.refine_levels) == 1
    first_tolerance = FINE_TOLERANCE if only_level else COARSE_TOLERANCE
    # rank the global search's optima by their edge score where it put them (one pose each: cheap and
    # fair, none refined yet); the best is then refined fully
    start_scores = evaluate(backend, plan, levels[first], np.array([c.pose for c in candidates]), "edge")
    order = np.argsort(-start_scores, kind="stable")
    top = max(candidates[0].score, 1e-30)
    ranked = [Candidate(candidates[i].pose, float(start_scores[i]), candidates[i].score / top) for i in order]
    pose, score = newton(backend, plan, levels[first], ranked[0].pose, "edge", ITERATIONS[0], r_eff, rotate, opts,
                          tolerance=first_tolerance)
    best = Candidate(pose, max(score, ranked[0].score))
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
            pose, score = newton(backend, plan, levels[first], other.pose, "edge", RECHECK_ITERATIONS, r_eff, rotate,
                                  opts, tolerance=COARSE_TOLERANCE)
            other = Candidate(pose, score)
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
    if rotate:
        # a rotation the matched structure cannot pin (a ball bearing, a cone's circular edge) is not reported
        support = rotation_support_mm(backend, plan, levels[plan.coarse.level], pose, r_eff)
        details["rotation_support_mm"] = support
        if support < MIN_ROTATION_SUPPORT_MM:
            rotate = False
            warnings.append(f"the image's structure does not constrain rotation (lever arm {support:.1f} mm < "
                            f"{MIN_ROTATION_SUPPORT_MM:g} mm): rotation not estimated (translation only)")
            pose, score = newton(backend, plan, levels[first], np.array([pose[0], pose[1], 0.0]), "edge",
                                  ITERATIONS[0], r_eff, False, opts, tolerance=first_tolerance)
    later = plan.refine_levels[1:]
    for i, index in enumerate(later):
        is_finest = i == len(later) - 1
        metric = "mi" if method == "mi" else "edge"
        iterations = ITERATIONS[-1] if is_finest else ITERATIONS[min(i + 1, len(ITERATIONS) - 1)]
        pose, score = newton(backend, plan, levels[index], pose, metric, iterations, r_eff, rotate, opts,
                              tolerance=FINE_TOLERANCE if is_finest else COARSE_TOLERANCE)
        details["levels"].append({"level": index, "metric": metric, "score": score})
    finest = levels[plan.refine_levels[-1]]
    if plan.polish_levels and not quality and is_clean(backend, plan, field, frame_stats):
        # a clean frame carries detail finer than the working levels: follow it down
        for index in plan.polish_levels:
            frame_mask(backend, levels[index], field, plan.field_level, opts.bins)
            if levels[index].usable < MIN_USABLE_PIXELS:
                break
            metric = "mi" if method == "mi" else "edge"
            pose, score = newton(backend, plan, levels[index], pose, metric, ITERATIONS[-1], r_eff, rotate, opts,
                                  tolerance=FINE_TOLERANCE)
            details["levels"].append({"level": index, "metric": metric, "score": score, "polish": True})
            finest = levels[index]
            later = [*later, index]
    if method == "mi" and not later:
        # a single-level plan: the MI refinement still runs, on the only level there is
        pose, score = newton(backend, plan, finest, pose, "mi", ITERATIONS[-1], r_eff, rotate, opts)
    mi_gap = None
    if method == "auto":
        # cross-check: the MI optimum next to the edge optimum must be the same place
        # one star stencil (diagonal curvature) places the MI optimum well enough for this check
        mi_pose = newton(backend, plan, finest, pose, "mi", 1, r_eff, rotate, opts, star=True)[0]
        mi_gap = float(np.hypot(*(mi_pose[:2] - pose[:2])))
        details["mi_check_mm"] = [float(mi_pose[0]), float(mi_pose[1]), math.degrees(mi_pose[2])]
    if method == "mi":
        final_edge = edge_score(backend, plan, finest, pose)
    else:
        final_edge = score  # the quadratic model's value at the final edge optimum
    if method == "edge":
        reported = final_edge
    elif method == "auto":
        # the MI check's stencil centre was the final pose: its histogram is still in the buffer
        k.mutual_information(plan.hist[:1], True, plan.mi_out[:1])
        reported = float(backend.to_host(plan.mi_out[:1])[0]) - 1.0
    else:
        reported = mi_score(backend, plan, finest, pose, normalised=True) - 1.0
    # a weak match is checked for precision: the optima of two independent halves of the pixels must agree
    spread = None
    if not quality and final_edge < SPLIT_HALF_BELOW_SCORE:
        spread = split_half_spread(backend, plan, finest, pose, r_eff, rotate, opts)
    # 4. trust -------------------------------------------------------------------------------------
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
    # a different view, no overlap at all, or an unusable frame rule the match out before its score does
    reason = view_reason or common_region(reference.image, frame, box_mm) or quality
    max_rot = math.radians(opts.max_rotation_deg) if opts.estimate_rotation else 0.0
    if reason:
        pass
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
    elif spread is not None and spread[0] > SPLIT_HALF_MAX_MM:
        reason = (
            f"imprecise: two halves of the usable pixels give optima {spread[0]:.2f} mm apart (more than "
            f"{SPLIT_HALF_MAX_MM:g} mm): noise or too little structure sets this optimum"
        )
    split_deg = spread[1] if spread is not None and rotate else None
    if split_deg is not None and split_deg > SPLIT_HALF_MAX_DEG:
        # the translation holds (checked above), the rotation does not: it is not reported, never a noisy number
        rotate = False
        warnings.append(
            f"rotation not estimated: two halves of the usable pixels give rotations {split_deg:.2f} deg apart "
            f"(more than {SPLIT_HALF_MAX_DEG:g} deg): too little structure far from the beam axis for this noise"
        )
    details["edge_mi_gap_mm"] = mi_gap
    details["split_half_mm"] = None if spread is None else spread[0]
    details["split_half_deg"] = split_deg
    details["edge_score"] = final_edge
    details["edge_score_selection"] = best.score
    details["rotation_radius_mm"] = r_eff
    details.update(frame_stats)
    details["field_effectiveness"] = field.effectiveness
    details["field_note"] = field.note or None
    details["reference_field_note"] = reference.field.note or None
    details["view"] = view_record
    details["rotation_estimated"] = rotate
    if backend.fallback_reason:
        warnings.append(backend.fallback_reason)
    return RegistrationResult(
        elapsed_ms=(time.perf_counter() - start) * 1e3,  # the frame's time, set once (no copy of the result)
        dx_mm=float(pose[0]),
        dy_mm=float(pose[1]),
        rotation_deg=float(math.degrees(pose[2])) if rotate else None,  # not measured: None, never 0
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
