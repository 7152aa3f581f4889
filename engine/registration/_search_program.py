"""Stage 3 of the per-frame program: global search, candidate ranking, refinement, cross-checks.

Two ways to run the same steps:

* compiled (:func:`search_compiled`): one call of the backend's ``search_program``
  kernel (``portalign.kernels.cpu.program``), which makes every decision between
  the steps in compiled code: the CPU backend;
* eager (:func:`search_eager`): Python between the backend's kernels, one call per
  step (the GPU backend, whose levels are CUDA-graph replays, and numba's
  simulator).

They give the same numbers (``tests/test_program_kernels.py`` runs both on the
CPU kernels). The constants that steer the search live here, once, and reach
the compiled program as :data:`SETTINGS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from portalign.kernels.cpu.mutual_information import PV_ONE
from portalign.kernels.cpu.program import (
    MAX_RECORDS,
    METHOD_AUTO,
    METHOD_EDGE,
    METHOD_MI,
    OUT_NAMES,
    SETTING_NAMES,
    STAGE_LEVELS,
    scan_start_poses,
    scan_wanted,
)
from portalign.kernels.cpu.refine import MAX_STENCIL

from ..errors import PortalignError
from ._plan import FramePlan, Level
from ._quality import MIN_ROTATION_SUPPORT_MM, MIN_USABLE_PIXELS, rotation_support_mm
from ._refine import (
    MAX_ROTATION_STEP,
    SPLIT_HALF_ITERATIONS,
    edge_score,
    evaluate,
    matched_isotropy,
    mi_score,
    newton,
    split_half_spread,
)
from ._search import COARSE_RECHECK_RATIO, DISTINCT_MM, MAX_CANDIDATES, Candidate, global_search, lane_rotations

__all__ = ["SearchOutcome", "search_compiled", "search_eager", "program_scratch", "SETTINGS", "ITERATIONS"]

#: Newton iterations per refinement level (coarsest first); the finest gets the last entry.
ITERATIONS = (3, 3, 4)
#: Global-search optima scoring below this fraction of the best are not refined.
CANDIDATE_FLOOR = 0.5
#: Most searched rotations scored on the first refinement level before the best optimum's ascent
#: (:func:`rotation_scan`; one evaluation of these poses). A trial's 44 x 63 mm field turned by the collimator over a
#: lateral thorax (a kV DRR reference): the coarse level put the rotation at -5.65 deg, the first refinement level's
#: optimum lay at -0.6 deg, and the ascent's three steps of 0.5 deg stopped at -4.15 deg, ok, 1.76 mm off (its score
#: 0.76 against 0.91 at the truth).
ROTATION_SCAN = 9
#: ...and a scanned rotation replaces the start only where its edge score there is at least this much higher and this
#: many times as high (that trial's: 0.70 -> 0.91; noise scores no such gain: trial50's strips of two noisy portal
#: images rose 0.0002 -> 0.005 and 0.036 -> 0.038 at the search's limit, 8 deg, and one ended ok 10 mm off). Never for
#: two portal images (``alike``): their shared aperture's edges are in every score, and favour its own pose over the
#: anatomy's (a strip of two portal images, smoothed, 0.58 -> 0.69 at no turn, was then ok 2.3 mm off, pinned across
#: the strip, where the pass had been ambiguous).
ROTATION_SCAN_GAIN = 0.05
ROTATION_SCAN_RATIO = 1.1
#: Convergence (largest jump, in steps) on intermediate levels and on the finest one. Later stencils reuse the first
#: one's mixed terms, so convergence is linear, not quadratic: each tolerance leaves the result a little short of
#: the converged optimum. Measured against fully converged runs (30 iterations, tolerance 0.001) on 60 MV/DRR pairs
#: (``bench.cases.drr_cases``, seed 3; the finest working level has 1.6 mm pixels): 0.02 steps lay 0.0031 mm off at
#: the 90th percentile, 0.05 steps 0.0047 mm, 0.1 steps 0.015 mm (max 0.025-0.027 mm for all three: the iteration
#: budget), a tenth of the registration's own error on such pairs (0.15 mm). Held-out medians (``bench.held_out``,
#: 80 pairs) were the same: seed 11 0.110 mm at 0.02, 0.107 at 0.1; seed 21 0.113 at 0.05 and at 0.1; so were the
#: noise-free targets (``tests/test_engine.py``). 0.1 saves a 7-pose stencil on most frames: the latency benchmark's median
#: 2.32 ms (0.02) -> 2.07 ms (0.05) -> 1.82 ms (0.1).
COARSE_TOLERANCE = 0.1
FINE_TOLERANCE = 0.1
#: ...but 0.05 for a mutual-information refinement there (``auto``'s MI optimum of two portal images or of a weak edge
#: match, and ``method='mi'``): its partial-volume ripple slows convergence, and at 0.1 steps the portal pairs of
#: ``python -m bench.portal_pairs`` went 0.134 -> 0.144 mm (three of eight further off), the whole-pixel windows of
#: ``bench.field_sets`` up to 0.039 mm from 0.018.
MI_TOLERANCE = 0.05
#: A runner-up scoring at least this fraction of the winner is refined further before it counts.
RECHECK_RATIO = 0.75
#: Newton iterations a close runner-up gets to show whether it is a rival or a shoulder of the winner.
RECHECK_ITERATIONS = 2
#: A final edge score below this gets the split-half precision check (strong matches are precise).
SPLIT_HALF_BELOW_SCORE = 0.4
#: Below this final edge score ``auto`` reports the mutual-information optimum (refined fully from the edge one,
#: which becomes the cross-check): gradients of a noisy (low-dose) frame are noise-dominated, intensities less so.
#: ``python -m bench.held_out`` (seeds 11 and 12): low-dose pairs score 0.05-0.17 and their MI optima are off by a
#: median 0.24 mm against 0.46 mm for the edge optima; at normal dose (0.3-0.6) edges are better, 0.13 against 0.20.
WEAK_EDGE_SCORE = 0.2
#: Two portal images (``alike``) get the MI optimum unless the matched structure's rotation lever arm, when measured,
#: is below this (mm): a small structure in a large usable region (a 20 mm field seen whole in an inverted file, lever
#: arm 10.9 mm) is placed better by its edges (0.003 mm and 0.12 deg off) than by MI, which the flat regions' partial-
#: volume interpolation pulls (0.06 mm and 0.63 deg off). Held-out portal-reference pairs lie at 27-84 mm.
ALIKE_MIN_SUPPORT_MM = 20.0
#: ...whose rotation is MI's too on a moderate edge match (below this score: noisy MV anatomy; held-out portal pairs
#: score 0.30-0.45 and MI's rotation lowers their median error to 0.113 / 0.128 mm from 0.142 / 0.168) when most of
#: the frame lands on the reference (at least ALIKE_ROTATION_OVERLAP of its usable pixels). On strong clean edges
#: (a window of pylinac's pipspro.dcm against itself, 0.95) or a partial overlap (two windows sharing a quarter, 0.53)
#: MI's rotation drifted 0.40-0.46 deg; the edges' did not.
ALIKE_ROTATION_EDGE_SCORE = 0.6
#: Half, not 0.9 as before 2026-12-03. The MLC field of two portal images stays put while the anatomy moves a few mm,
#: so less of the frame's usable region lands on the reference's. The edges' rotation was then kept, although the
#: shared aperture and detector gain pull it towards 0. A trial's 94 mm MLC field (truth 1.09 deg): the edges' rotation
#: was 1.03 deg off, MI's 0.32. ``python -m bench.held_out``, rotation error of the ok pairs, mean (max), in deg:
#: thorax seed 11 0.120 (0.89) -> 0.101 (0.46), seed 31 0.153 (0.98) -> 0.120 (0.88); TotalSegmentator seed 5
#: 0.218 (1.65) -> 0.184 (0.54), seed 3 0.212 (0.92) -> 0.221 (0.98). ``bench.portal_pairs``: 0.135 -> 0.122 mm.
ALIKE_ROTATION_OVERLAP = 0.5

_VALUES = {
    "candidate_floor": CANDIDATE_FLOOR, "distinct_mm": DISTINCT_MM, "recheck_ratio": RECHECK_RATIO,
    "coarse_recheck_ratio": COARSE_RECHECK_RATIO, "recheck_iterations": RECHECK_ITERATIONS,
    "iterations_first": ITERATIONS[0], "iterations_middle": ITERATIONS[1], "iterations_last": ITERATIONS[2],
    "coarse_tolerance": COARSE_TOLERANCE, "fine_tolerance": FINE_TOLERANCE,
    "min_rotation_support_mm": MIN_ROTATION_SUPPORT_MM, "min_usable_pixels": MIN_USABLE_PIXELS,
    "split_half_below_score": SPLIT_HALF_BELOW_SCORE, "split_half_iterations": SPLIT_HALF_ITERATIONS,
    "max_rotation_step": MAX_ROTATION_STEP, "weak_edge_score": WEAK_EDGE_SCORE, "alike": 0.0,
    "alike_min_support_mm": ALIKE_MIN_SUPPORT_MM, "alike_rotation_edge_score": ALIKE_ROTATION_EDGE_SCORE,
    "alike_rotation_overlap": ALIKE_ROTATION_OVERLAP, "mi_tolerance": MI_TOLERANCE, "alike_below_edge": math.inf,
    "split_half_block": 0.0, "rotation_scan": ROTATION_SCAN, "rotation_scan_gain": ROTATION_SCAN_GAIN,
    "rotation_scan_ratio": ROTATION_SCAN_RATIO,
}
#: The constants above in the order the compiled program reads them (``SETTING_NAMES``).
SETTINGS = np.array([float(_VALUES[name]) for name in SETTING_NAMES])
#: The same for a pair of portal images (:func:`portalign.registration._program.alike_images`): ``auto`` reports the
#: mutual-information optimum whatever the edge score (its rotation only where ALIKE_ROTATION_EDGE_SCORE says; not
#: when the rotation lever arm is short: ALIKE_MIN_SUPPORT_MM).
#: Two images of the same beam and detector share their
#: intensities (up to noise and gain), which MI uses in full, low frequencies included; a DRR's do not (another
#: spectrum, no scatter, no noise), and there the edges are better. ``python -m bench.held_out`` portal-reference
#: pairs, median error of the ok ones: seed 21 0.190 -> 0.113 mm, seed 31 0.200 -> 0.128 mm (MI's rotation on the
#: moderate, whole-frame matches: ALIKE_ROTATION_EDGE_SCORE; the edges' elsewhere). DRR references with MI: 0.148 ->
#: 0.217 mm: they keep the edges.
SETTINGS_ALIKE = SETTINGS.copy()
SETTINGS_ALIKE[SETTING_NAMES.index("alike")] = 1.0
#: Two portal images of a small field that moved with their content (``_program.FIELD_MOVED_MM``) report MI only where
#: their edges match below this score (noise: low-dose windows of the TrueBeam Winston-Lutz images, edges 0.28-0.38,
#: 0.12-0.19 mm off, MI 0.004-0.036 mm); on a clean match the edges (and the intensity fit after them) place a few
#: hundred usable pixels better (aS500 windows: MI 0.014 mm, edges and the fit 0.000 mm).
ALIKE_SMALL_BELOW_EDGE = 0.75
SETTINGS_ALIKE_SMALL = SETTINGS_ALIKE.copy()
SETTINGS_ALIKE_SMALL[SETTING_NAMES.index("alike_below_edge")] = ALIKE_SMALL_BELOW_EDGE


def denoised_settings(settings: np.ndarray, block: int) -> np.ndarray:
    """Return ``settings`` for a frame registered from its smoothed pixels (``_program.DENOISE``).

    Its match is checked for precision whatever its edge score: smoothing raises the score without adding
    information (the raw frame matched weakly: that is why it was smoothed). The halves are the two colours of a
    checkerboard of ``block`` pixels (at least three smoothing sigmas): neighbouring pixels of a smoothed frame
    share their noise, so alternate ones would agree whatever the noise. A frame 1.2 mm and 2.1 deg off came back
    ok before (80 mm field, 3 % noise, ``tests/test_precision.py``).
    """
    out = settings.copy()
    out[SETTING_NAMES.index("split_half_below_score")] = math.inf
    out[SETTING_NAMES.index("split_half_block")] = float(block)
    if out[SETTING_NAMES.index("alike")] == 0.0:
        out[SETTING_NAMES.index("weak_edge_score")] = SMOOTHED_WEAK_EDGE_SCORE
    return out


#: A smoothed frame against an image it is not alike (a DRR) reports its edges' optimum however weak their match,
#: the MI optimum then the cross-check (two portal images keep MI: ``SETTINGS_ALIKE``). ``WEAK_EDGE_SCORE`` was set on
#: raw low-dose frames, whose gradients noise dominated; a smoothed frame whose edges still match weakly has weak
#: anatomy, not noise, and there a DRR's intensities, another spectrum's, pulled MI off: the TotalSegmentator CT's
#: low-dose DRR pairs (``python -m bench.held_out --ct ../shared/data/real/totalsegmentator/example_ct.nii.gz``, seeds
#: 3-6, 12 ok ones, most at the lateral gantries) were 0.05-1.65 mm off with MI (4 over 0.9 mm; its rotation up to
#: 2.3 deg off), 0.12-0.88 mm with the edges. No thorax-CT DRR pair reached it (seeds 11 and 31).
SMOOTHED_WEAK_EDGE_SCORE = -math.inf


def _weak_edge_score(alike: bool, split_block: int) -> float:
    """Return the edge score below which ``auto`` reports the MI optimum (the eager steps' twin of the settings')."""
    return SMOOTHED_WEAK_EDGE_SCORE if split_block and not alike else WEAK_EDGE_SCORE


_OUT = {name: i for i, name in enumerate(OUT_NAMES)}
_SCORE, _BEST, _AMBIGUITY, _RUNNER_X, _RUNNER_Y = (_OUT[k] for k in ("score", "best_score", "ambiguity", "runner_dx_mm",
                                                                     "runner_dy_mm"))
_ROTATE, _SUPPORT, _UNSUPPORTED, _N_RANKED, _N_RECORDS = (_OUT[k] for k in ("rotate", "rotation_support_mm",
                                                                            "rotation_unsupported", "n_ranked",
                                                                            "n_records"))
_MI_GAP, _MI_X, _MI_T, _FINAL_EDGE, _REPORTED = (_OUT[k] for k in ("mi_gap_mm", "mi_dx_mm", "mi_theta_rad",
                                                                   "final_edge", "reported"))
_SPLIT_MM, _SPLIT_DEG, _NO_MATCH, _MI_FINAL = (_OUT[k] for k in ("split_mm", "split_deg", "no_match", "mi_final"))
_MI_ROTATED = _OUT["mi_rotated"]
_MI_AT_EDGE = _OUT["mi_at_edge"]
_EDGE_T = _OUT["edge_theta_rad"]
_ISOTROPY = _OUT["matched_isotropy"]
_EDGE_ANGLE = _OUT["matched_edge_direction_deg"]
_COUNTED = _OUT["counted_edge_share"]
_METHODS = {"edge": METHOD_EDGE, "mi": METHOD_MI, "auto": METHOD_AUTO}


@dataclass
class SearchOutcome:
    """What stage 3 found for one frame (``None``: not measured)."""

    #: ``(dx_mm, dy_mm, theta_rad)``.
    pose: Any
    score: float
    best_score: float
    #: The ranked global-search optima, a list of ``[dx_mm, dy_mm, theta_rad, first-level edge score,
    #: global-search peak over the best peak]``.
    ranked: list
    ambiguity: float
    #: ``(dx_mm, dy_mm)`` of a distinct second optimum.
    runner_up: Any
    rotate: bool
    rotation_support_mm: float | None
    rotation_unsupported: bool
    levels: list[dict[str, Any]] = field(default_factory=list)
    mi_pose: np.ndarray | None = None
    mi_gap: float | None = None
    final_edge: float = 0.0
    reported: float = 0.0
    spread: tuple[float, float] | None = None
    no_match: bool = False
    #: The reported pose is the mutual-information optimum (``auto`` on a weak edge match), not the edge one.
    mi_final: bool = False
    #: The reported MI optimum's rotation is MI's own (else the edge optimum's, held).
    mi_rotated: bool = False
    #: Where the MI optimum is reported: normalised MI - 1 at the edge optimum its ascent began from (``reported`` is
    #: the same at the end), else ``None``.
    mi_at_edge: float | None = None
    #: The edge optimum's rotation (rad) before the MI optimum replaced it (``mi_final``), else the reported one's.
    edge_rotation: float | None = None
    #: ``(isotropy, direction_deg, counted_share)`` at the edge optimum (:func:`._refine.matched_isotropy`): how
    #: evenly the matched edges run in every direction, 0 (one way) to 1, the way most run, and the share of the frame's
    #: edge energy the score counts; each ``None`` where not measured.
    matched_orientation: tuple[float | None, float | None, float | None] = (None, None, None)


def _stage_levels(plan: FramePlan, polish: bool) -> list[Level]:
    """Coarse level, first refinement level, later levels, then (when refined) the polishing levels."""
    levels = plan.levels
    order = [plan.coarse.level, *plan.refine_levels]
    if polish:
        order += list(plan.polish_levels)
    return [levels[i] for i in order]


def _static_inputs(plan: FramePlan, polish: bool) -> tuple:
    """Return the program's per-lane inputs that stay the same from frame to frame (made on a lane's first frame)."""
    found = plan.program_inputs[polish] if polish in plan.program_inputs else None
    if found is None:
        stage = _stage_levels(plan, polish)
        if len(stage) > STAGE_LEVELS:
            raise PortalignError(f"a plan with {len(stage)} search levels: the compiled program takes {STAGE_LEVELS}")
        # padded to a fixed length with the coarse level (never read): one compiled program for every plan
        padded = [*stage, *[stage[0]] * (STAGE_LEVELS - len(stage))]
        levels = tuple((lv.pixel_rows, lv.pixel_cols, lv.feat_re, lv.feat_im, lv.ref_re, lv.ref_im, lv.bins,
                        lv.ref_bins, lv.geometry) for lv in padded)
        scratch = plan.program_scratch
        found = plan.program_inputs[polish] = (
            stage, levels, np.array([lv.spacing for lv in stage], dtype=np.float64),
            np.array([lv.index for lv in stage], dtype=np.int64), np.zeros(len(stage), dtype=np.int64),
            len(plan.refine_levels) - 1, len(plan.polish_levels) if polish else 0,
            lane_rotations(plan),
            (scratch["ranked"], scratch["records"], scratch["out"]))
    return found


def search_compiled(backend: Any, plan: FramePlan, opts: Any, rotate: bool, r_eff: float, check_precision: bool,
                    polish: bool, alike: bool = False, alike_small: bool = False, split_block: int = 0) -> SearchOutcome:
    """Run stage 3 as one call of the backend's compiled ``search_program``.

    ``alike``: see :data:`SETTINGS_ALIKE`; ``alike_small``: a small field that moved, :data:`SETTINGS_ALIKE_SMALL`;
    ``split_block`` > 0: a smoothed frame (:func:`denoised_settings`).
    """
    stage, levels, spacings, level_index, counts, n_later, n_polish, rotations, scratch = _static_inputs(plan, polish)
    for i, level in enumerate(stage):
        counts[i] = level.usable
    cs = plan.coarse
    spectra, energy, thetas, window = rotations[rotate]
    ranked, records, out = scratch
    # the level stage may have computed the windows already (``_frame.frame_levels``; ``_register`` clears the flag
    # before every frame's level stage)
    ready = plan.surfaces_ready
    settings = (SETTINGS_ALIKE_SMALL if alike_small else SETTINGS_ALIKE) if alike else SETTINGS
    if split_block:  # rare: a noisy frame's second pass
        settings = denoised_settings(settings, split_block)
    normalised = cs.normalised if rotate or not ready else cs.normalised[cs.zero_index:cs.zero_index + 1]
    backend.kernels.search_program(
        levels, counts, spacings, level_index, n_later, n_polish, spectra, energy, cs.window_rows, cs.window_cols,
        thetas, cs.padded_shape[0], cs.padded_shape[1], cs.margin_px, cs.suppress_px, window, cs.peak_poses,
        cs.peak_scores, ready, normalised, opts.candidates, _METHODS[opts.method],
        rotate, r_eff, (opts.max_rotation_deg + opts.rotation_step_deg) * (math.pi / 180.0), opts.normalised_mi,
        check_precision, polish, settings, backend.fft_workers(), plan.hist, ranked, records, out)
    o = out.tolist()  # NaN where not measured; Python floats and lists from here (no copies: few calls a frame)
    n_records = int(o[_N_RECORDS])
    levels_done = []
    for r in records[:n_records].tolist() if n_records else ():
        entry: dict[str, Any] = {"level": int(r[0]), "metric": "mi" if r[1] else "edge", "score": r[2]}
        if r[3]:
            entry["polish"] = True
        levels_done.append(entry)
    support, mi_gap, split = o[_SUPPORT], o[_MI_GAP], o[_SPLIT_MM]
    return SearchOutcome(
        pose=o[0:3],
        score=o[_SCORE],
        best_score=o[_BEST],
        ranked=ranked[:int(o[_N_RANKED])].tolist(),
        ambiguity=o[_AMBIGUITY],
        runner_up=None if o[_RUNNER_X] != o[_RUNNER_X] else o[_RUNNER_X:_RUNNER_Y + 1],
        rotate=o[_ROTATE] == 1.0,
        rotation_support_mm=None if support != support else support,
        rotation_unsupported=o[_UNSUPPORTED] == 1.0,
        levels=levels_done,
        mi_pose=None if mi_gap != mi_gap else o[_MI_X:_MI_T + 1],
        mi_gap=None if mi_gap != mi_gap else mi_gap,
        final_edge=o[_FINAL_EDGE],
        reported=o[_REPORTED],
        spread=None if split != split else (split, o[_SPLIT_DEG]),
        no_match=o[_NO_MATCH] == 1.0,
        mi_final=o[_MI_FINAL] == 1.0,
        mi_rotated=o[_MI_ROTATED] == 1.0,
        mi_at_edge=None if o[_MI_AT_EDGE] != o[_MI_AT_EDGE] else o[_MI_AT_EDGE],
        edge_rotation=None if o[_EDGE_T] != o[_EDGE_T] else o[_EDGE_T],
        matched_orientation=(None if o[_ISOTROPY] != o[_ISOTROPY] else o[_ISOTROPY],
                             None if o[_EDGE_ANGLE] != o[_EDGE_ANGLE] else o[_EDGE_ANGLE],
                             None if o[_COUNTED] != o[_COUNTED] else o[_COUNTED]),
    )


def rotation_scan(backend: Any, plan: FramePlan, level: Level, pose: np.ndarray, score: float
                  ) -> tuple[np.ndarray, float]:
    """Return where the best optimum's Newton ascent starts: its pose, or the pose of another searched rotation.

    Called where the start's rotation is more than one search step from no turn (``kernels.cpu.program.scan_wanted``:
    most frames are not scanned). The global search picks an optimum's rotation on its coarse level; the first
    refinement level can prefer another (fine structure the coarse level blurs away), several rotation steps off,
    which the ascent's steps of at most ``MAX_ROTATION_STEP`` cannot reach within its iterations. Each searched
    rotation more than one and a half of the search's steps from ``pose``'s (at most ``ROTATION_SCAN``, spread evenly
    over them; nearer ones the ascent reaches itself, and a start moved by their unrefined scores ended on lower peaks:
    held-out seed 50, a portal pair 0.04 -> 0.24 mm) is scored on ``level`` with the translation that keeps the usable
    pixels' centroid on the same reference point (a turn about the matched structure, not about the beam axis:
    ``kernels.cpu.program.scan_start_poses``, which the compiled program calls too); the best of them starts the ascent
    where it scores clearly above ``score``, ``pose``'s own edge score there (``ROTATION_SCAN_GAIN``,
    ``ROTATION_SCAN_RATIO``).

    Returns
    -------
    (pose, score) : (float64[3], float)
        The start and its edge score on ``level``.
    """
    usable = level.usable
    xp = backend.xp  # sums where the pixel lists live (a device's: two scalars come back, not the lists)
    rows_sum = int(xp.sum(level.pixel_rows[:usable], dtype=xp.int64))
    cols_sum = int(xp.sum(level.pixel_cols[:usable], dtype=xp.int64))
    poses = np.empty((ROTATION_SCAN, 3))
    n = scan_start_poses(rows_sum, cols_sum, usable, np.asarray(level.geometry, dtype=np.float64),
                         np.asarray(pose, dtype=np.float64), np.asarray(plan.coarse.thetas, dtype=np.float64),
                         ROTATION_SCAN, poses)
    if n == 0:
        return pose, score
    poses = poses[:n]
    values = evaluate(backend, plan, level, poses, "edge")
    best = int(np.argmax(values))
    value = float(values[best])
    if value >= score + ROTATION_SCAN_GAIN and value >= ROTATION_SCAN_RATIO * score:
        return poses[best], value
    return pose, score


def search_eager(backend: Any, plan: FramePlan, opts: Any, rotate: bool, r_eff: float, check_precision: bool,
                 polish: bool, alike: bool = False, alike_small: bool = False, split_block: int = 0) -> SearchOutcome:
    """Run stage 3 as Python between the backend's kernels (the same steps as the compiled program)."""
    k = backend.kernels
    levels = plan.levels
    method = opts.method
    first = plan.refine_levels[0]
    # a device lane whose levels the host made ready has searched there too (``_program._register``)
    candidates = (plan.host_candidates if plan.host_candidates is not None
                  else global_search(backend, plan, levels[plan.coarse.level], opts.candidates, rotate))
    no_match = not candidates
    if no_match:  # no finite correlation at all: nothing to refine
        candidates = [Candidate(np.zeros(3), 0.0)]
    # optima of the global search far below the best cannot come near it after refinement: not worth a stencil
    candidates = [c for c in candidates if c.score >= CANDIDATE_FLOOR * candidates[0].score][:MAX_CANDIDATES]
    only_level = len(plan.refine_levels) == 1
    first_tolerance = FINE_TOLERANCE if only_level else COARSE_TOLERANCE
    # rank the global search's optima by their edge score where it put them (one pose each: cheap and
    # fair, none refined yet); the best is then refined fully
    start_scores = evaluate(backend, plan, levels[first], np.array([c.pose for c in candidates]), "edge")
    order = np.argsort(-start_scores, kind="stable")
    top = max(candidates[0].score, 1e-30)
    ranked = [Candidate(candidates[i].pose, float(start_scores[i]), candidates[i].score / top) for i in order]
    start, start_score = ranked[0].pose, ranked[0].score
    if rotate and not alike and scan_wanted(float(start[2]), plan.coarse.thetas):
        # the searched rotations of the best optimum (a large turn the coarse level claims), scored where the ascent runs
        start, start_score = rotation_scan(backend, plan, levels[first], ranked[0].pose, ranked[0].score)
    pose, score = newton(backend, plan, levels[first], start, "edge", ITERATIONS[0], r_eff, rotate, opts,
                         tolerance=first_tolerance)
    best = Candidate(pose, max(score, start_score))
    ambiguity = 0.0
    runner_up = None
    for other in ranked[1:]:
        if np.hypot(*(other.pose[:2] - best.pose[:2])) <= DISTINCT_MM:
            continue
        # (the best's own start scored nothing, <= 0: every distinct rival is a close call, refined and compared)
        ratio = other.score / ranked[0].score if ranked[0].score > 0 else math.inf  # both unrefined
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
    pose, score = best.pose, best.score
    support = None
    unsupported = False
    if rotate:
        # a rotation the matched structure cannot pin (a ball bearing, a cone's circular edge) is not reported
        support = rotation_support_mm(backend, plan, levels[plan.coarse.level], pose, r_eff)
        if support < 0.0:  # untold on the search level: measured where the pose is the ascent's optimum
            support = max(rotation_support_mm(backend, plan, levels[first], pose, r_eff), 0.0)
        if support < MIN_ROTATION_SUPPORT_MM:
            rotate, unsupported = False, True
            pose, score = newton(backend, plan, levels[first], np.array([pose[0], pose[1], 0.0]), "edge",
                                 ITERATIONS[0], r_eff, False, opts, tolerance=first_tolerance)
    records: list[dict[str, Any]] = []
    later = plan.refine_levels[1:]
    metric = "mi" if method == "mi" else "edge"
    for i, index in enumerate(later):
        is_finest = i == len(later) - 1
        iterations = ITERATIONS[-1] if is_finest else ITERATIONS[min(i + 1, len(ITERATIONS) - 1)]
        finest_tolerance = MI_TOLERANCE if metric == "mi" else FINE_TOLERANCE
        pose, score = newton(backend, plan, levels[index], pose, metric, iterations, r_eff, rotate, opts,
                             tolerance=finest_tolerance if is_finest else COARSE_TOLERANCE)
        records.append({"level": index, "metric": metric, "score": score})
    finest = levels[plan.refine_levels[-1]]
    if polish and not no_match:
        # a clean frame carries detail finer than the working levels: follow it down
        for index in plan.polish_levels:
            if levels[index].usable < MIN_USABLE_PIXELS:
                break
            pose, score = newton(backend, plan, levels[index], pose, metric, ITERATIONS[-1], r_eff, rotate, opts,
                                 tolerance=MI_TOLERANCE if metric == "mi" else FINE_TOLERANCE)
            records.append({"level": index, "metric": metric, "score": score, "polish": True})
            finest = levels[index]
            later = [*later, index]
    if method == "mi" and not later:
        # a single-level plan: the MI refinement still runs, on the only level there is
        pose, score = newton(backend, plan, finest, pose, "mi", ITERATIONS[-1], r_eff, rotate, opts)
    mi_gap = mi_pose = None
    mi_rotated = False
    # a weak edge match (noise-dominated gradients: a low-dose frame) is placed more precisely by mutual
    # information on the intensities: refined fully from the edge optimum, which is then its cross-check
    # (a pair of portal images too, unless the rotation lever arm is short: see SETTINGS_ALIKE, ALIKE_MIN_SUPPORT_MM)
    alike_final = (alike and not (support is not None and support < ALIKE_MIN_SUPPORT_MM)
                   and not (alike_small and score >= ALIKE_SMALL_BELOW_EDGE))
    weak_edge = _weak_edge_score(alike, split_block)
    mi_final = method == "auto" and not no_match and (score < weak_edge or alike_final)
    if method == "auto":
        if mi_final:
            # MI places the rotation too on a weak edge match; two portal images on a moderate one over nearly the
            # whole frame (the edge optimum's joint histogram's mass: the share of usable pixels on the reference)
            mi_rotates = rotate and score < weak_edge
            if rotate and not mi_rotates and score < ALIKE_ROTATION_EDGE_SCORE:
                evaluate(backend, plan, finest, np.asarray(pose, dtype=np.float64)[None, :], "mi")
                mass = float(backend.to_host(plan.hist[:1]).sum())
                mi_rotates = mass >= ALIKE_ROTATION_OVERLAP * PV_ONE * max(finest.usable, 1)
            mi_pose = newton(backend, plan, finest, pose, "mi", ITERATIONS[-1], r_eff, mi_rotates, opts,
                             tolerance=MI_TOLERANCE)[0]
            mi_rotated = mi_rotates
        else:
            # cross-check: the MI optimum next to the edge optimum must be the same place. One 2-D star stencil
            # (diagonal curvature, the rotation held at the edge optimum's) places it well enough: its distance
            # is all the check reads
            mi_pose = newton(backend, plan, finest, pose, "mi", 1, r_eff, False, opts, star=True)[0]
        mi_gap = float(np.hypot(*(mi_pose[:2] - pose[:2])))
    final_edge = edge_score(backend, plan, finest, pose) if method == "mi" else score
    mi_at_edge = None
    edge_rotation = float(pose[2])
    # how evenly the edges matched at the edge optimum run in every direction (the aperture problem), on the first
    # refinement level (as the compiled program)
    orientation = (None, None, None) if no_match else matched_isotropy(backend, plan, levels[first], pose)
    if mi_final and mi_pose is not None:
        mi_at_edge = mi_score(backend, plan, finest, np.asarray(pose, dtype=np.float64), normalised=True) - 1.0
        pose = mi_pose.copy()
    if method == "edge":
        reported = final_edge
    elif method == "auto" and not mi_final:
        # the MI check's stencil centre was the final pose: its histogram is still in the buffer
        k.mutual_information(plan.hist[:1], True, plan.mi_out[:1])
        reported = float(backend.to_host(plan.mi_out[:1])[0]) - 1.0
    else:
        reported = mi_score(backend, plan, finest, pose, normalised=True) - 1.0
    # a weak match is checked for precision: the optima of two independent halves of the pixels must agree
    spread = None
    if check_precision and not no_match and (split_block or final_edge < SPLIT_HALF_BELOW_SCORE):
        # the precision of what is reported: MI's optimum where auto reports it (its halves agree where the edges'
        # scatter, on the low-dose frames that MI places better), the edges' otherwise
        if mi_final:
            spread = split_half_spread(backend, plan, finest, pose, r_eff, mi_rotated, opts, "mi", block=split_block)
            if rotate and not mi_rotated:  # the rotation reported is the edges': its halves' spread, in degrees
                spread = (spread[0], split_half_spread(backend, plan, finest, pose, r_eff, True, opts,
                                                       block=split_block)[1])
        else:
            spread = split_half_spread(backend, plan, finest, pose, r_eff, rotate, opts, block=split_block)
    return SearchOutcome(
        pose=np.asarray(pose, dtype=np.float64), score=float(score), best_score=float(best.score),
        ranked=[[*c.pose.tolist(), float(c.score), float(c.coarse_ratio)] for c in ranked],
        ambiguity=float(ambiguity), runner_up=None if runner_up is None else np.asarray(runner_up.pose[:2]),
        rotate=rotate, rotation_support_mm=support, rotation_unsupported=unsupported, levels=records, mi_pose=mi_pose,
        mi_gap=mi_gap, final_edge=float(final_edge), reported=float(reported), spread=spread, no_match=no_match,
        mi_final=mi_final,
        mi_rotated=mi_rotated,
        mi_at_edge=mi_at_edge,
        edge_rotation=edge_rotation,
        matched_orientation=orientation,
    )


def program_scratch() -> dict[str, np.ndarray]:
    """Host buffers the compiled program writes per frame (one set per lane)."""
    return {"ranked": np.zeros((MAX_CANDIDATES, 5)), "records": np.zeros((MAX_RECORDS, 4)),
            "out": np.zeros(len(OUT_NAMES))}


# the ranking scores every optimum, and the rotation scan its poses, in one stencil-sized evaluation
assert MAX_CANDIDATES <= MAX_STENCIL and ROTATION_SCAN <= MAX_STENCIL
