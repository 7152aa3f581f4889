"""The per-frame program: one frame against a prepared reference, stage by stage.

1. Pyramid of the frame (2x2 box means), field detection on a small level,
   field-edge band removed from the masks of every level used (``_frame``).
2. Quality of the frame before any matching (``_quality``).
3. Search and refinement (``_search_program``): the global search at the coarse level
   (``_search``: FFT cross-correlation of doubled-angle edge features for every candidate
   rotation; the best few distinct optima become candidates), their ranking on the first
   refinement level by edge correlation (a score whose zero means "no match", so the
   runner-up measures ambiguity), the Newton ascent level by level (``_refine``), the
   rotation lever arm, the MI cross-check and the split-half precision check. On the CPU
   this stage is one compiled call; the GPU runs its steps one kernel-set call at a time.
4. The checks that decide ``ok``, and the result.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from portalign.kernels.cpu.edge import INVALID_FEATURE, sampled_edge_score
from portalign.kernels.cpu.field import line_candidates, line_means, penumbra_extent
from portalign.kernels.cpu.gradient import gradient_limit
from portalign.kernels.cpu.mask import erode_box
from portalign.kernels.cpu.pyramid import PYRAMID_SLOTS
from portalign.kernels.cpu.refine import pose_affines_into

from ..backends import NO_CUDA_DEVICE, Backend, cpu_backend, single_threaded
from ..field import (
    BAND_NOTE,
    DEAD_LINE_MAX_SHARE,
    FIELD_DOUBT_ADVICE,
    LINE_SCREEN,
    NO_FIELD,
    NO_FIELD_EDGE,
    PLANNED_COVERS,
    SHADOW_SHARE,
    SLIVER_NOTE,
    STRONG_LINE_CONTRAST,
    FieldEstimate,
    border_shadow,
    box_at_border,
    core_extent_px,
    core_sides_fine_mm,
    core_sides_mm,
    dead_lines_only,
    field_centre_mm,
    field_size_mm,
    find_field,
    line_screen,
    mask_core_box,
    screened,
)
from ..image import FIRST_OF_FRAMES, Image, ImageInfo, beam_kind, check_frame_pixels
from ..options import RegistrationOptions
from ..result import RegistrationResult
from ._frame import (
    LEVEL_SLOTS,
    bridge_lines,
    bridged_frame,
    dead_detector_lines,
    denoised_frame,
    faulty_lines,
    field_depths,
    frame_levels,
    frame_mask,
    pad_pixel_list,
    part_lines_said,
)
from ._interior import INTERIOR_EXTRA_MM, INTERIOR_MIN_PIXELS, INTERIOR_PENUMBRA_SIGMAS, InteriorMatch
from ._plan import MAX_FIELD_MARGIN_MM, MAX_MARGIN_FRACTION, PENUMBRA_REACH_MM, FramePlan, Level, wants_field
from ._quality import (
    MIN_MEASURED_PIXELS,
    MIN_ROTATION_SUPPORT_MM,
    MIN_USABLE_PIXELS,
    NOISE_ONLY_CONTRAST,
    NOISE_SAMPLES,
    REFERENCE_NOISE_ARC,
    RIGIDITY_RECHECK_MM,
    RIGIDITY_REFUSE_MM,
    RIGIDITY_WARN_MM,
    TOO_LITTLE_STRUCTURE,
    TOO_LITTLE_USABLE,
    VIEW_PARALLAX_DEPTH_MM,
    assess_frame,
    is_clean,
    reference_contrast_to_noise,
    reference_search_contrast,
    rigidity_mm,
    rotation_radius,
    rotation_uncertainty_deg,
    shift_uncertainty_mm,
    unestimated_turn_mm,
    view_parallax_mm,
)
from ._refine import edge_score, newton, peak_curvatures, spatial_halves
from ._scale import scale_profile, scale_verdict
from ._scale import scale_reason as scale_reason_text
from ._search import DISTINCT_MM, coarse_peaks, global_search
from ._search_program import ITERATIONS, MI_TOLERANCE, WEAK_EDGE_SCORE, search_compiled, search_eager
from ._views import beam_angle_deg, common_region, compare_views

if TYPE_CHECKING:  # the program is handed a Reference; it never builds one
    from ._reference import Reference

__all__ = ["register_frame"]

#: The two halves' optima may lie at most this far apart (about twice the full estimate's standard error).
SPLIT_HALF_MAX_MM = 1.0
#: Where ``auto`` reports the MI optimum, its ascent from the edge optimum must not end lower than it began: more than
#: this (normalised MI - 1) and more than MI_DOWNHILL_SHARE of its value at the start. A 2 %-noise portal pair reported
#: MI's optimum 2.0 mm off, ok: NMI - 1 fell 0.143 -> 0.126 (12 %), and both MI halves, started there, agreed.
#: ``bench.held_out`` seeds 11 and 31, TotalSegmentator 3 and 5: no ok pair fell more than 0.0017 (0.6 %); MI's
#: partial-volume ripple is 0.0015-0.0028 along a line. Only where the match is weak enough for the split-half check
#: (whose MI halves start at the ascent's end): on strong clean edges MI drifts (windows of pylinac's pipspro.dcm
#: fell 0.0155, 4 %, and lie 0.012 mm from the truth), and the edges, not the halves, vouch for the match.
MI_DOWNHILL = 0.005
MI_DOWNHILL_SHARE = 0.03
#: Least significance of the final edge correlation: ``r sqrt(n / 2)`` for ``n`` matched pixels (about two
#: pixels per independent sample: a gradient spans three). Unrelated images correlate with a standard
#: deviation of ``1 / sqrt(n / 2)``, and the best of the search's many poses reached 2.8 of those in
#: ``python -m bench.held_out --pairs 80`` (cones on soft anatomy, low dose); every right answer there had 3.9
#: or more. A small field with little structure inside can reach the score floor by chance; not this.
MIN_MATCH_SIGNIFICANCE = 3.5
#: Least lead of the best optimum over a distinct runner-up, in the same units: ``significance * (1 - ambiguity)``
#: (the two scores' difference over the chance spread of one). Below it chance may have chosen between them, whatever
#: the ratio (``ambiguity_ratio`` bounds the ratio alone). A new user's trial found frames with a blurred stripe that
#: the reference lacks across a 30 mm field at 1.5 % noise (``tests/test_frame_only_structure.py``) matched 5.6-6.5 mm off with
#: ok=true: edge scores 0.10-0.11, significance 4.0-4.6, a runner-up 3-6 mm away at 51-89 % of the best (leads
#: 0.4-2.3). The same frames without the stripe scored within chance and were refused. Every ok pair of
#: ``bench.held_out`` (seeds 11 and 31, 160 pairs) and ``bench.field_sets`` leads by 3 or more.
MIN_RIVAL_LEAD = 2.5
SPLIT_HALF_MAX_DEG = 1.0
#: A match is checked for a peak (``_refine.peak_curvatures``) where the frame is matched whole against a reference
#: field (``field_missing``) or a rival scores this share of the best: where a ridge or a masked-away edge is likely.
PEAK_CHECK_AMBIGUITY = 0.8
#: ...and where the frame was matched smoothed (``DENOISE``, ``SMOOTH_PAIR``): smoothing takes away the fine structure
#: (small anatomy, grain, a few hot pixels) and what is left can be a ramp, a field's glow running off the window,
#: whose match falls away along one way only. A TrueBeam Winston-Lutz window at 3 % noise (``bench.real_windows``
#: seed 9, ``3mm_lat-003.dcm`` at (501, 742) moved (11, 11) px) was smoothed, matched the glow beside the field, and
#: came back ok 1.32 mm off at 9.6 of its stated uncertainties (three noise draws of five); as taken, each draw is
#: right or refused. Checked, it is refused; over three sweeps of 504 real windows and 80 held-out pairs the check
#: refused two other smoothed matches (0.12 and 0.18 mm off, their matched edges one way: isotropy 0.04 and 0.08)
#: and no other (session note 36).
PEAK_CHECK_SMOOTHED = True
#: The reported metric must fall by this share of its value over 1.5 pixels in every direction from the optimum. Over
#: 691 ok matches (three held-out sets and a sweep of real crops, session note 30) the weakest fall was 2.1 %; a flat
#: open-field window with one field edge, matched whole against its reference's masked field and ok 17.6 mm off,
#: fell by -0.66 % (a saddle).
MIN_PEAK_FALL = 0.005
#: The edges matched at the optimum must run in more than one direction: the smaller eigenvalue of their structure
#: tensor at least this share of the larger (``_refine.matched_isotropy``). Below it the match fixes no shift along
#: them, and the border of the overlap (the frame's edges finding nothing off the reference) pulls the optimum toward
#: no shift along them: a 30 % window of an Oncentra RT Image showing one full-width line (0.000) was ok 9.2 mm off,
#: and with 3-8 % noise added ok 1.2 mm off (0.005-0.009). Measured on the first refinement level, over 518 ok
#: matches (64 held-out rendered pairs of every aperture, 57 field sets, 1008 real windows of seeds 5 and 7; session
#: note 32) the lowest other was 0.007, right (a window of MLC pickets with their ends, now refused), then 0.016.
MIN_MATCHED_ISOTROPY = 0.01
#: Below this RMS radius (mm) of the usable pixels around the beam axis, rotation is not estimated.
MIN_ROTATION_RADIUS_MM = 10.0
#: A frame field (with a reference that has none, e.g. a DRR) smaller than this (mm) and than this share of the
#: region the plan was sized for gets a plan sized for the field (pyramid, edge band).
SMALL_FIELD_MM = 80.0
SMALL_FIELD_SHARE = 0.5
#: A frame field (with a reference that has none) at least this size (mm; a small field's plan's size class) has its
#: own penumbra measured and its edge band widened to it (``_frame_band_mm``); a smaller one (a cone, an SRS field)
#: keeps the band its plan was sized with.
BAND_MIN_FIELD_MM = 30.0
#: ...and its penumbra counts as wide when it shows in at least this many rings of the field level's pixel.
PENUMBRA_MIN_RINGS = 3
#: ``auto`` reports the MI optimum of two portal images (``alike_images``) when their usable pixels lie this far (RMS,
#: mm) from the beam axis or further. On the TrueBeam Winston-Lutz pairs (20 mm field, RMS radius 5.4 mm) the MI
#: optimum lies 0.15 mm off pylinac's ball bearing, the edge one 0.003 mm (``tests/test_pylinac.py``); the held-out
#: portal-reference pairs with jaws, MLC and open fields lie at 30-95 mm and gain (``_search_program.SETTINGS_ALIKE``).
ALIKE_MIN_RADIUS_MM = 20.0
#: Beams further apart than this (deg; within the view tolerance) are warned of: anatomy at different depths has
#: moved apart across the beam (``details["beam_angle_deg"]``; the shift's uncertainty takes it at every angle).
VIEW_PARALLAX_WARN_DEG = 0.5
#: ...and where ``VIEW_PARALLAX_DEPTH_MM`` times the angle (``view_parallax_mm``) exceeds this (mm: 1.27 deg), the
#: match is not ok: the shift measured depends on which anatomy placed it by more than a setup tolerance's share (an
#: independent trial's frames 2-3 deg off were 1.3-3.3 mm off, ok).
MAX_VIEW_PARALLAX_MM = 1.0
#: ...or when the frame's field lies this far (mm) or more from where the reference's lies (``field_moved_mm``): the
#: field moved with the content (a window of one image moved over it), so the beam's profile did too and does not
#: pull MI. Low-dose (3 % noise) windows of the TrueBeam Winston-Lutz images (``python -m bench.field_sets``) went
#: from the edges' 0.12-0.19 mm to MI's 0.004-0.036 mm. A small field that stayed put (the real Winston-Lutz pairs:
#: the aperture is fixed to the beam, the ball bearing moves) keeps the edges, and no intensity fit either: the fit
#: moved those pairs 0.011-0.012 mm towards the fixed profile.
FIELD_MOVED_MM = 1.0
#: Two portal images (``alike_images``) whose reported optimum is MI's and whose edges agree nearly perfectly at the
#: working level (edge correlation ``FINE_POLISH_MIN_EDGE`` or more): that optimum's translation is followed down to
#: the finer levels of ``FramePlan.fine_polish_levels`` (a portal reference's, those of at most
#: ``_reference.FINE_POLISH_MAX_PIXELS``) while each still agrees as well at the pose reached (its structure shared,
#: not its noise), the rotation held. The working levels (about 1 mm) set every verdict; the finer ones only move
#: the reported pose, by at most ``FINE_POLISH_MAX_MOVE_PX`` working-level pixels (more and it is not the same
#: optimum: kept as found). ``details["fine_polish"]`` says what was done. Measured (``python -m bench.field_sets``:
#: windows of real EPID and kV images, with 3 % noise on each or a dead line): open fields 0.024 -> 0.014 mm median
#: (the noisy windows agree at 0.63-0.76 on level 1 and mostly stay), 2.3x the frame's time (10 against 4.4 ms on a
#: 680 x 920 pair; its own pixels, level 0, took 32 ms for 0.008 mm). Two portal images with their own 2 % noise on
#: soft anatomy agree at 0.9 on the working level and 0.57 on the next: polished anyway they got worse (mean 0.012 ->
#: 0.020 mm), so the finer level's own agreement decides. Rendered MV portal pairs with a 3-D motion
#: (``bench.portal_pairs``, 0.28-0.54 on the working level) got worse too (0.131 -> 0.23 mm) and are not polished.
#: A rotation polished too went 0.48 mm / 0.18 deg astray on a phantom with repeated structure (QC-3): held.
FINE_POLISH = True
FINE_POLISH_MIN_EDGE = 0.75
FINE_POLISH_MAX_MOVE_PX = 0.25
#: A finer level is prepared (mask, range, features: the whole level) for its agreement only when a screen of it
#: (``kernels.cpu.edge.sampled_edge_score``: one of its pixels under each of the finest working level's usable pixels,
#: at the pose reached) reaches ``FINE_POLISH_MIN_EDGE`` less this. Two arrays of one image with independent noise
#: (``bench/gpu_latency.py``'s 1024 x 768 pair) agree at 0.50 on their own pixels and were never polished, yet paid
#: that level's preparation and score every frame: 36 of a 57 ms frame on this 2-core machine (``listed_range`` of
#: 782,852 pixels alone 17 ms). The screen reads the full score to within a few hundredths (``tests/test_edge.py``);
#: the margin keeps every frame whose full score could reach the threshold on the full path.
FINE_POLISH_SCREEN_MARGIN = 0.15
#: ...on at most this many pixels (every k-th of the working level's list).
FINE_POLISH_SCREEN_PIXELS = 8192
#: First (the MI levels above are the fallback), two portal images of one beam in near-perfect agreement (edge
#: correlation ``FINE_POLISH_MIN_EDGE`` or more on the working level and on the fitted one) have their intensities
#: fitted on ``FramePlan.intensity_level`` (their own pixels up to ``_reference.INTENSITY_MAX_PIXELS``): least squares
#: of the translation with a gain and an offset (``kernels.cpu.intensity``, Gauss-Newton, Huber weights), and of the
#: rotation where the frame's is estimated (kept within a quarter of a working pixel at the RMS radius: a window of
#: leeds_kv.dcm whose edge rotation lay 0.09 deg off went 0.100 -> 0.0001 mm). MI's quadratic-model stencil halves a
#: sharp peak's remaining offset per step and works on levels of 0.5-1 mm; the least squares meet two copies of one
#: image at their true shift exactly. Kept when it converged, its intensities correlate at
#: ``INTENSITY_MIN_CORRELATION`` or more at the pose reached, and the move stays within ``FINE_POLISH_MAX_MOVE_PX``.
#: ``auto`` only: ``method="edge"`` / ``"mi"`` report their own metric's optimum.
#: ``INTENSITY_SMALL``: also where ``auto`` reports the edges of two portal images (a usable region under
#: ``ALIKE_MIN_RADIUS_MM``: small fields, cones), on their working level. Measured (``python -m bench.field_sets``,
#: windows of real EPID and kV images moved by whole pixels, with noisy and dead-line variants): open fields median
#: 0.014 -> 0.0009 mm, small fields 0.007 -> 0.004 mm (TrueBeam Winston-Lutz windows 0.007 -> 0.0000 mm, with a dead
#: line 0.02-0.04 -> 0.004 mm; the noisy ones agree at 0.63-0.78 and keep MI's or the edges' pose); the field-masked
#: SimpleITK peer 0.002 / 0.003 mm. Two images of unknown kind (arrays) are tried too: rendered 26 / 15 mm cone pairs
#: (their own noise in each) went 0.009 / 0.014 -> 0.001 mm on two of six and kept 0.006-0.007 mm on four, the noise
#: floor of the ~1,900 pixels inside the cone's edge margin. Held-out
#: pairs (``bench.held_out --seed 11``) and rendered MV portal pairs with a 3-D motion (``bench.portal_pairs``: 0.134
#: mm) are unchanged: their images agree at 0.28-0.54, not 0.75. Cost on a 680 x 920 pair: 15-23 -> 30-40 ms a frame
#: (level 0 made ready for the frame, at most ``INTENSITY_MAX_VISITED`` pixels visited per pass, 3-5 passes; the MI
#: levels it replaces cost 7 ms); ``RegistrationOptions.fine_polish=False`` turns all of it off.
INTENSITY_POLISH = True
INTENSITY_SMALL = True
INTENSITY_ITERATIONS = 10
#: Converged when a step moves the translation less than this many pixels of the fitted level.
INTENSITY_TOLERANCE_PX = 0.001
INTENSITY_MIN_CORRELATION = 0.9
#: ...over the inliers (residual within ``kernels.cpu.intensity.INLIER_K`` RMS), which must be at least this share of
#: the pixels compared (a dead detector line is a few per cent of a field's).
INTENSITY_MIN_INLIERS = 0.9
#: Every k-th usable pixel is visited so that at most this many are (a 680 x 920 image's level 0: every 4th).
INTENSITY_MAX_VISITED = 150_000
#: A noisy frame (contrast over noise at the finest working level below ``DENOISE_BELOW_CNR``: a low-dose or
#: short-cine MV frame) that is ``DENOISE_NOISIER`` times noisier than the reference (relative to each one's
#: contrast; a DRR has no noise) is registered again after a Gaussian smoothing of its own pixels of
#: ``DENOISE_SIGMA_MM`` (at the isocentre plane; dead detector lines are left out of the smoothing and keep their
#: values, so that they are found and left out again). The doubled-angle edge features are gradients, which
#: amplify white noise; the smoothing keeps anatomy of a few millimetres. A frame about as noisy as its portal
#: reference is left as it is: smoothing one of two alike images made the pair unlike (normal-dose portal pairs,
#: 0.09 -> 0.23 mm on some). Measured so (the frame's contrast is its coarse level's), pairs of equal noise
#: (1.5 % both) gave ratios of 1.0-2.1 and low-dose frames (5 %) against such references 4.6-6.5
#: (``python -m bench.held_out`` seeds 11 and 31, every portal reference). A small usable region (RMS radius
#: below ``DENOISE_MIN_RADIUS_MM``: a cone) is left as it is too: smoothed, three thorax cones that were refused
#: came back ok, one 1.7 mm off. ``details["denoised"]`` records it. Measured: see the README (noisy frames).
DENOISE = True
DENOISE_BELOW_CNR = 100.0
DENOISE_SIGMA_MM = 1.0
DENOISE_NOISIER = 3.0
DENOISE_MIN_RADIUS_MM = ALIKE_MIN_RADIUS_MM
#: Dead detector lines crossing this share of a small field (under ``SMALL_FIELD_MM``: a cone, a Winston-Lutz field)
#: refuse the match. What is left of the field is a few slivers, and the global search matched them wrongly with
#: good scores: a 20 mm Winston-Lutz field cut by 16 dead columns came back 9.4 mm off with ok=true, a 30 mm one cut by
#: 40 saturated rows 5.8 mm off, a 26 mm cone cut by 12 rows (6 mm) 1.8 mm off (a new user's trial). Two to four dead
#: rows across the 26 mm cone (8-12 % of it) are matched within 0.1 mm (``tests/test_fields.py``).
DEAD_LINES_MAX_FIELD_SHARE = 0.15
#: A frame in which no radiation field was found, matched against a reference that shows one, is refused below this
#: final edge score: its whole image (its own field edge and outside included) met the reference's field, and a weak
#: match of that is no measurement. A 30 mm field cut in two by a blurred stripe the reference lacks (1.5 % noise) was
#: found no field and matched 11 mm off, ok, at 0.055 (``tests/test_frame_only_structure.py``). Frames whose field
#: dead lines or a partial band hid from the detection and that matched right scored 0.23-0.64 (``bench.field_sets``,
#: a new user's trial).
FIELD_MISSING_BELOW_EDGE = WEAK_EDGE_SCORE
_BAND_NOTE = f"{NO_FIELD_EDGE}: {BAND_NOTE}"
#: An image whose only "field" runs off it as a sliver (``field.SLIVER_MAX_WIDTH_MM``): refused, whichever image it is.
#: Neither the sliver (a penumbra tail cut by the border) nor the whole image (that tail still in it, and little else
#: in a window beside a field) places the match: matched whole, real windows with such slivers came back ok 1.5-4.8 mm
#: off where the sliver's own match had been 2.5-5.5 mm off (``bench.real_windows`` seeds 5, 7 and 9; session note 34).
_SLIVER_NOTE = f"{NO_FIELD_EDGE}: {SLIVER_NOTE}"
_COVERS_NOTE = f"{NO_FIELD_EDGE}: {PLANNED_COVERS}"
#: A frame's field under this share of the reference's (largest inscribed discs) is named as such where too little of
#: the frame is usable (``_field_shrunk``).
FIELD_SHRUNK_SHARE = 0.5
#: Degrees per radian and radians per degree (``math.degrees``/``math.radians`` without the call: the same numbers).
_DEGREES = 180.0 / math.pi
_RADIANS = math.pi / 180.0


#: A noisy frame (contrast over noise under ``DENOISE_BELOW_CNR``) against a reference portal image about as noisy
#: (the pair ``DENOISE`` leaves as it is: smoothing one of two alike images makes them unlike), or a noisy reference
#: portal image against a cleaner frame (``_pair_noisy``), that is refused for what noise does to edges
#: (``SMOOTH_PAIR_REASONS``) is registered again with both images smoothed alike, by ``DENOISE_SIGMA_MM``
#: (``Reference.smoothed_twin``, made once). The smoothed pass is checked as a smoothed frame is (split halves on a
#: checkerboard, whatever its score), and its result is kept where it is ok; otherwise the refusal as taken stands, the
#: smoothed pass's reason among its warnings. A small usable region (a cone) is left as it is. Held-out portal pairs
#: from the TotalSegmentator CT (3 mm voxels: weak anatomy, whose edges the 1.5 % noise of both images buries):
#: see the README (noisy frames). A new user's trial: a clean frame against a reference portal image with 10-20 %
#: noise was refused ("no match"), and smoothed alike is ok within 0.18 mm.
SMOOTH_PAIR = True
SMOOTH_PAIR_REASONS = ("no match: edge correlation", "ambiguous:", "imprecise:",
                       "edge and mutual-information optima disagree", *TOO_LITTLE_STRUCTURE)
#: ...but not against a reference portal image that shows nothing but noise on the search level (its contrast over
#: noise measured as a frame's, ``_quality.reference_search_contrast``, under ``_quality.NOISE_ONLY_CONTRAST``: what
#: the frame is refused for as "nothing but noise"). Smoothed, its noise becomes structure that the frame's smoothed
#: noise shares by chance, and the checks that count pixels as independent read it as a match. An independent trial
#: (trial45 portalref-11: a 3 % low-dose frame, 6.7x its noise on the search level, against a reference portal image
#: with 6 % noise, 3.2x, through an L-shaped MLC field) came back ok 13.8 mm off. The references of the 123 other
#: smoothed pairs that trial and the next (trial46) kept ok (0.02-1.33 mm off) showed 8.0x or more, those of real
#: windows smoothed and kept ok (``bench.real_windows --seed 9``) 6.6x or more; the three real windows the rule
#: refuses there (5.8x and less) were refused before too. A pair that smoothing did not rescue is refused as before,
#: sooner.
REFERENCE_NOISE_ONLY_CONTRAST = NOISE_ONLY_CONTRAST


@dataclass(frozen=True)
class _SmoothedPair:
    """A noisy pair refused as taken (``SMOOTH_PAIR``): register ``frame``, smoothed, against the smoothed twin.

    ``field`` and ``field_factor`` are what :func:`~portalign.registration._frame.denoised_frame` reads (the frame's
    dead lines); the frame is smoothed only where the pass is made (not for the mirror check's own registrations).
    """

    result: RegistrationResult
    frame: Image
    field: FieldEstimate
    field_factor: int
    record: dict


@dataclass(frozen=True)
class _Replan:
    """The frame's own field asks for another plan than the one it met (a DRR reference: the reference has no field).

    ``field_mm``: the frame's field is small and the plan was sized for the whole image, so a plan sized for the
    field (None: the whole image). ``band_mm``: the frame's penumbra reaches deeper than the plan's edge band, so a
    plan whose band takes it out (None: ``field_margin_mm``).
    """

    field_mm: float | None
    band_mm: float | None


#: The angle between two views' beams and its parallax (deg, mm: ``beam_angle_deg``, ``view_parallax_mm``), by the views'
#: (reference gantry, frame gantry, reference couch, frame couch) angles (deg); cleared at ``_BEAM_ANGLES_KEPT`` entries.
_BEAM_ANGLES: dict[tuple, tuple[float | None, float]] = {}
_BEAM_ANGLES_KEPT = 4096


def _beam_angle_of(key: tuple, reference_view: dict, frame_view: dict) -> tuple[float | None, float]:
    """Return (and keep in ``_BEAM_ANGLES`` under ``key``) two views' beam angle (deg; None unknown) and parallax (mm)."""
    angle = beam_angle_deg(reference_view, frame_view)
    if len(_BEAM_ANGLES) >= _BEAM_ANGLES_KEPT:
        _BEAM_ANGLES.clear()
    kept = _BEAM_ANGLES[key] = (angle, view_parallax_mm(angle) if angle is not None else 0.0)
    return kept


def _frame_band_mm(reference: Reference, small: np.ndarray, field: FieldEstimate,
                   spacing_mm: tuple[float, float], min_rings: int = PENUMBRA_MIN_RINGS) -> float | None:
    """Return how deep (mm) the frame's own penumbra reaches into its field when deeper than the reference's band.

    Against a DRR (no field on the reference: its band is ``field_margin_mm``) the frame's penumbra is structure
    the reference lacks: its gradients, left in the usable pixels, pull the match (an independent trial's C-shaped
    MLC field with a 3.7 mm 20-80 % penumbra was ok 1.74 mm off at 4 u with the 3 mm band). The extent is
    :func:`~portalign.field.penumbra_extent_mm` on the frame's field-detection level ``small`` (dead lines
    bridged first, as on a reference), whole rings of that level's pixel (``spacing_mm``: row, column; mm), at
    most ``MAX_FIELD_MARGIN_MM``; each ring judged by its median. None when it reaches no deeper than the
    reference's band (the plan's own band then stays). A small field's plan (``BAND_MIN_FIELD_MM`` and up) caps
    the band at ``MAX_MARGIN_FRACTION`` of its size class; a larger field's is not capped by its inscribed disc:
    an independent trial's C-shaped MLC field (narrow arms) was 1.74 mm off at 4 u with the band so capped
    (3.6 mm) and 0.33 mm off at 0.8 u with its 5.4 mm. ``min_rings``: the rings a penumbra must show in to count
    (``PENUMBRA_MIN_RINGS``; 1 for a long narrow field, ``_elongated``, whose every interior pixel lies near an edge:
    an 18-20 mm strip's 2 mm (sigma) penumbra read two rings, 4.2 mm, and its 3 mm band left the frames 2.8-3.6 mm off).
    """
    if field.dead_rows or field.dead_cols:  # a dead line across the edge is no penumbra
        small = bridge_lines(small, field.dead_rows, field.dead_cols)
    ring = spacing_mm[0] if spacing_mm[0] < spacing_mm[1] else spacing_mm[1]  # min(), written out: per-frame code
    # penumbra_extent_mm's kernel, directly, with each ring's median: an MV frame's anatomy inside its field has
    # a few strong edges, which lift a ring's mean over three times the interior's median at any depth (a synthetic
    # 60 mm field with a sharp edge read 9 mm by the mean)
    return _band_of_extent(reference, penumbra_extent(small, field.mask, ring, PENUMBRA_REACH_MM, True), ring,
                           min_rings)


def _capped_band(band_mm: float | None, cap_field_mm: float | None) -> float | None:
    """Return ``band_mm`` capped at ``MAX_MARGIN_FRACTION`` of a small field's size ``cap_field_mm`` (None: no cap).

    A small field's interior is kept (a cone's, a BB's: what it has to match on); the cap is rounded as a plan's key.
    """
    if band_mm is not None and cap_field_mm is not None and band_mm > MAX_MARGIN_FRACTION * cap_field_mm:
        return round(MAX_MARGIN_FRACTION * cap_field_mm, 6)
    return band_mm


def _band_of_extent(reference: Reference, extent: float, ring: float, min_rings: int) -> float | None:
    """Return :func:`_frame_band_mm`'s band (mm; None: the reference's stays) of a penumbra reaching ``extent`` mm.

    ``ring``: the rings' width (mm, the field-detection level's finer pixel). Any edge shows in the first two rings
    (numpy.gradient's central differences reach a pixel past it): a penumbra is wide only when it shows in a third (a
    low-dose 80 mm field with a sharp edge read two rings, 4 mm at 2 mm pixels, and the 4 mm band cost its MI match
    0.2 mm); ``min_rings`` is 1 for a long narrow field (:func:`_frame_band_mm`).
    """
    if extent <= reference.field_margin_mm or extent < min_rings * ring * (1.0 - 1e-9):
        return None
    return round(extent if extent < MAX_FIELD_MARGIN_MM else MAX_FIELD_MARGIN_MM, 6)  # (a plan's key)


#: A small field (under ``BAND_MIN_FIELD_MM`` across) whose area is at least this many times its largest inscribed disc's
#: is long and narrow (an MLC strip; a square is 1.27, a cone 1): its penumbra is measured and cut out whole, as a large
#: field's (``_frame_band_mm``), since its length keeps an interior to match on. With the band sized for a compact field
#: (3 mm) a strip 18-20 mm tall with a 2 mm (sigma) penumbra, matched against a DRR, left the penumbra's gradients in
#: the usable pixels: frames with no motion at all were ok 2.8 and 3.6 mm off (``tests/test_real_engine.py``). Over
#: 160 rendered strips 12-28 mm wide and 60-150 mm long (penumbra 1-3 mm, any angle; DRR and portal references; two
#: CTs, four seeds; session note 45) ok results went 52 -> 68, the largest ok error 20.2 -> 1.46 mm (ok results over
#: 2 mm 2 -> 0, over 1 mm 5 -> 6); on the 48 ok both ways the median 0.35 -> 0.24 mm. With a noisy frame's field
#: interior smoothed over itself too (``_frame.denoised_frame``): 66 ok, over 1 mm 3.
ELONGATED_FIELD_RATIO = 3.0


#: The frame's field (inside less outside, over inside plus outside, at the field-detection level: -1..1) must stand
#: out at least this much for the reference's view of it to be compared (``_reference_shows_field``)...
FIELD_CONTRAST_MIN = 0.2
#: ...and the reference shows it where its own contrast there has the frame's sign and at least this share of its size.
FIELD_SHOWN_SHARE = 0.5


def _reference_shows_field(image: Image, frame: Image, field: FieldEstimate, factor: int) -> dict[str, float] | None:
    """Whether a reference portal image whose field was not found shows the frame's field all the same.

    The field's contrast (median inside, the field eroded by one pixel of the field-detection level, against median in
    a ring two to four of those pixels outside it: ``(inside - ring) / (|inside| + |ring|)``) is read in the frame and,
    at the same places in mm from each image's beam axis, in the reference (nearest pixel). Returns both contrasts
    (``{"frame": ..., "reference": ...}``) where the frame's stands out (``FIELD_CONTRAST_MIN``) and the reference's has
    its sign and ``FIELD_SHOWN_SHARE`` of its size or more: one aperture in both, its edges left out of the frame only.
    An independent trial's cones 10-12 mm across through portal references (their field not found) were ok at the
    aperture's own position 3.2-6.0 mm off. None otherwise (an open reference, another aperture, nothing to compare).
    """
    from scipy import ndimage

    mask = np.asarray(field.mask, dtype=bool)
    inside = ndimage.binary_erosion(mask, iterations=1)
    if not inside.any():
        inside = mask
    ring = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=2)
    if not ring.any():
        return None

    def contrast(img: Image, rows: np.ndarray, cols: np.ndarray, ring_rows: np.ndarray, ring_cols: np.ndarray) -> float:
        pix = img.pixels
        a = float(np.median(pix[rows, cols]))
        b = float(np.median(pix[ring_rows, ring_cols]))
        return (a - b) / (abs(a) + abs(b)) if abs(a) + abs(b) > 0 else 0.0

    fr, fc, fk = _at_pixels(frame, frame, inside, factor)
    gr, gc, gk = _at_pixels(frame, frame, ring, factor)
    rr, rc, rk = _at_pixels(image, frame, inside, factor)
    qr, qc, qk = _at_pixels(image, frame, ring, factor)
    if min(fk.sum(), gk.sum(), rk.sum(), qk.sum()) < 4:
        return None
    own = contrast(frame, fr[fk], fc[fk], gr[gk], gc[gk])
    theirs = contrast(image, rr[rk], rc[rk], qr[qk], qc[qk])
    if abs(own) < FIELD_CONTRAST_MIN or own * theirs <= 0.0 or abs(theirs) < FIELD_SHOWN_SHARE * abs(own):
        return None
    return {"frame": round(own, 4), "reference": round(theirs, 4)}


#: A shielded region along the image's border (``field.border_shadow``: at or under ``field.SHADOW_SHARE`` of the
#: image's 99th percentile, ``field.SHADOW_AREA`` of it), shielded in the other image too at this share of its places,
#: is one aperture's shadow (where ``field.find_field`` did not take it for a field's outside: the beam axis in it).
SHIELDED_AGREE = 0.8


def _shared_shielding(reference: Reference, frame: Image, small: np.ndarray, factor: int) -> dict[str, float] | None:
    """Whether two portal images whose fields were not found share a shielded region along the frame's border.

    A field larger than the panel with an edge crossing it leaves a shadow along the border that the field's detection
    does not take for the outside (it covers too little of the border), so both images are matched whole and the
    edge, fixed to the beam, pulls the match towards no shift: an independent trial's portal pairs through such fields
    were ok 2.5-3.9 mm off, at the aperture's own position (session note 45). Returns the shadow's share of the frame
    and the share of its places (mm from each image's beam axis, nearest pixel) shielded in the reference too; None
    where there is no such shadow or the reference does not share it. ``small``: the frame's field-detection level
    (``factor`` detector pixels a pixel); the reference's 99th percentile is read once, on its own such level.
    """
    found = border_shadow(small)
    if found is None:
        return None
    shadow = found[0]
    share = float(shadow.mean())
    image = reference.image
    row, col, keep = _at_pixels(image, frame, shadow, factor)
    if keep.sum() < 0.5 * keep.size:
        return None
    reference_top = reference._shielding_top
    if reference_top is None:  # once per reference
        from ..field import box_reduce
        from ._reference import FIELD_LEVEL_MAX_PIXELS

        reference_top = reference._shielding_top = float(
            np.percentile(box_reduce(image.pixels, FIELD_LEVEL_MAX_PIXELS)[0], 99.0))
    agree = float(np.mean(image.pixels[row[keep], col[keep]] <= SHADOW_SHARE * reference_top))
    if agree < SHIELDED_AGREE:
        return None
    return {"share": round(share, 4), "agree": round(agree, 4)}


def _at_pixels(image: Image, frame: Image, selected: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the (row, col) pixels of ``image`` at the places of ``selected``'s pixels and which lie inside it.

    ``selected`` is a mask on the frame's field-detection level (``factor`` detector pixels a pixel); each pixel's
    centre is placed in mm from the frame's beam axis (``Image.pixel_to_mm``) and found in ``image`` from its own
    (``Image.mm_to_pixel``), nearest pixel: the same place, fixed to the beam, in two images of one beam.
    """
    r, c = np.nonzero(selected)
    x, y = frame.pixel_to_mm((c + 0.5) * factor - 0.5, (r + 0.5) * factor - 0.5)
    col, row = image.mm_to_pixel(x, y)
    col, row = np.rint(col).astype(np.int64), np.rint(row).astype(np.int64)
    keep = (row >= 0) & (row < image.pixels.shape[0]) & (col >= 0) & (col < image.pixels.shape[1])
    return row, col, keep


def _shielding_refusal(shielded: dict[str, float]) -> str:
    """Return the refusal of a match of two portal images sharing a shielded region whose field was not found."""
    return (f"no match confirmed: both images show one shielded region along the frame's border ({shielded['share']:.0%} "
            f"of the frame, {shielded['agree']:.0%} of it shielded in the reference too: the shadow of a radiation "
            "field larger than the panel, its edge crossing the image), but no field was found in either, so that "
            "edge, fixed to the beam, was matched as anatomy and places the match where the aperture puts it; register "
            "the frame against a DRR, or set aperture_check='warn' (--aperture-check warn) to accept such a match with a "
            "warning")


def _unseen_field_refusal(image: Image, field_mm: float, shown: dict[str, float]) -> str:
    """Return the refusal of a match through one small aperture that the reference shows but whose field was not found."""
    return (f"no match confirmed: the reference ({image.info.source}) shows the frame's {field_mm:.0f} mm radiation field "
            f"too (its contrast there {shown['reference']:+.2f} against the frame's {shown['frame']:+.2f}), but its "
            "field was not found, so its edges and penumbra, fixed to the beam, were matched as anatomy: the match "
            f"sits where the aperture puts it whether or not the patient moved; {_UNCONFIRMED_ADVICE.split('; ', 1)[1]}")


def _elongated(field: FieldEstimate, field_mm: float | None, spacing_mm: tuple[float, float]) -> bool:
    """Whether a small field is long and narrow: ``ELONGATED_FIELD_RATIO`` times its inscribed disc's area or more.

    ``field_mm``: the diameter (mm) of the largest disc inside it; ``spacing_mm``: the (row, col) pixel of the level its
    mask ``field.mask`` was found on.
    """
    if field_mm is None or field.mask is None or field_mm <= 0.0:
        return False
    area = float(np.count_nonzero(field.mask)) * spacing_mm[0] * spacing_mm[1]
    return area >= ELONGATED_FIELD_RATIO * math.pi / 4.0 * field_mm * field_mm


def _field_shrunk(reference: Reference, field: FieldEstimate, spacing_mm: tuple[float, float]) -> str:
    """Return what a frame's field far smaller than the reference's says ("" otherwise), before the too-little reason.

    ``field``: the frame's, on the detection level of pixel spacing ``spacing_mm`` (row, column; mm). A new user's
    trial zeroed a block over most of a 20 mm Winston-Lutz field: "its radiation field is 3.6 mm across ... too small
    a field to register" named the field, not what covered it.
    """
    size, reference_size = field_size_mm(field, spacing_mm), reference.field_size_mm
    if size is None or reference_size is None or size >= FIELD_SHRUNK_SHARE * reference_size:
        return ""
    return (f"the frame's radiation field is {size:.1f} mm across where the reference's is {reference_size:.1f} mm: "
            "something the reference lacks likely covers most of it (a dead detector block, an object), or the frame "
            "shows another beam; ")


def _dead_lines_cut_small_field(field: FieldEstimate, spacing_mm: tuple[float, float], factor: int) -> str:
    """Return why dead detector lines leave too little of a small field to match ("" when they do not).

    ``field``: the frame's field estimate, its mask and dead lines on the detection level of pixel spacing
    ``spacing_mm`` (row, column; mm), ``factor`` detector pixels a side. The share is the field's area on dead
    detector lines: each detection-level line counts for the share of its ``factor`` detector lines that are dead
    (those the detector's own pixels confirmed, :func:`dead_detector_lines`). Before, a whole detection-level line
    counted for each: three dead rows of a 22 mm field (3 % of it) were called 17 % where they straddled two lines
    and refused, and accepted where they fell in one (a new user's trial).
    """
    size = field_size_mm(field, spacing_mm)
    if size is None or size >= SMALL_FIELD_MM or field.mask is None:
        return ""
    mask = np.asarray(field.mask, dtype=bool)
    total = int(mask.sum())
    if total == 0:
        return ""
    rows, cols = dead_detector_lines(field, factor)
    # each detection-level line's dead share, from the detector lines inside it
    row_share = np.bincount([r // factor for r in rows if r // factor < mask.shape[0]], minlength=mask.shape[0])
    col_share = np.bincount([c // factor for c in cols if c // factor < mask.shape[1]], minlength=mask.shape[1])
    row_share = np.minimum(row_share / factor, 1.0)  # (no longer than the mask: only its lines were counted)
    col_share = np.minimum(col_share / factor, 1.0)
    dead = 1.0 - (1.0 - row_share)[:, None] * (1.0 - col_share)[None, :]
    share = float((dead * mask).sum()) / total
    if share < DEAD_LINES_MAX_FIELD_SHARE:
        return ""
    return (f"dead detector lines cross {100 * share:.0f} % of the {size:.0f} mm radiation field "
            f"({len(rows)} detector row(s) and {len(cols)} column(s); "
            f"more than {100 * DEAD_LINES_MAX_FIELD_SHARE:.0f} %): what is left of the field cannot place the shift")


#: The key of a smoothed frame's record (``details["denoised"]`` less it) that carries the faulty lines of the frame as
#: taken (:func:`~portalign.registration._frame.faulty_lines`; None: none).
RAW_FRAME_LINES = "raw_frame_lines"


def _lines_warning(whose: str, record: dict, drr: bool = False) -> str:
    """Return the warning that names the faulty detector lines left out of the match: dead ones, and hot ones said so.

    ``drr``: a DRR's lines (no detector: a burned-in graphics line, or damage).
    """
    rows, cols = record["rows"], record["columns"]
    if drr:
        return (f"{whose}{len(rows)} row(s) and {len(cols)} column(s) that read far off their neighbours (a DRR's "
                "burned-in graphics line, or damage) left out of the match")
    hot = len(record["hot_rows"]) + len(record["hot_columns"])
    part = part_lines_said(record)
    if not hot:
        return f"{whose}{len(rows)} dead detector row(s) and {len(cols)} column(s) left out of the match{part}"
    kinds = f"{hot} hot, brighter than the lines beside them" + (f"; {len(rows) + len(cols) - hot} dead"
                                                                   if hot < len(rows) + len(cols) else "")
    return (f"{whose}{len(rows)} faulty detector row(s) and {len(cols)} column(s) left out of the match "
            f"({kinds}){part}")


def register_frame(reference: Reference, frame: Image, mirror_check: bool = True,
                   options: RegistrationOptions | None = None, _denoised: dict | None = None,
                   _smooth: bool | None = None) -> RegistrationResult:
    """Register ``frame`` against a prepared ``reference``.

    Parameters
    ----------
    reference : Reference
    frame : Image
    mirror_check : bool
        False: no mirror check (``RegistrationOptions.mirror_check``), no scale check (``_scale``) and no split-half
        precision check for this frame (the mirror check's own registrations of the flipped frame, whose edge scores
        alone it reads).
    options : RegistrationOptions, optional
        Per-frame options instead of the reference's (the check's lighter search); the fields that size the
        plans must be the reference's.
    _smooth : bool, optional
        The mirror check's: True smooths the frame's pixels (``DENOISE_SIGMA_MM``) before matching, False never does,
        None (default) smooths a noisy frame as ``DENOISE`` says.

    Returns
    -------
    RegistrationResult
        Never raises for a frame that is a valid image; an untrustworthy match is
        returned with ``ok=False`` and a ``reason``.
    """
    start = time.perf_counter()
    backend = reference.backend
    # a lane of the plan for this geometry (buffers no other frame is using, and their stream), taken and given
    # back without a context manager: this runs for every frame
    pool = base = reference.frame_pool(frame)
    if base.band_pool is not None:  # this geometry's frames asked for a wider band (their penumbra): its plan first
        pool = base.band_pool
    plan = pool.acquire(reference._lane_limit, backend)
    flips = None  # the mirror check's screen (``_screen_flips``), read while this frame's lane is held
    try:
        if not mirror_check:
            # the mirror check's copies (light options, once a geometry) are not the geometry's frames: their times
            # teach its thread tuner nothing, and they took its exploring turns (one copy of a one-shot on one
            # thread: 7 ms where the wide count takes 2)
            scope = backend.frame_scope(plan.stream)
        else:
            scope = plan.scope
            if scope is None:  # the lane's frame context (the CPU: its thread count; a device: its stream)
                scope = backend.frame_scope(plan.stream, plan.threads)
                if backend.scope_reusable:
                    plan.scope = scope
        with scope:  # its clock (the thread tuner's) starts here, after any wait for the lane
            result = _register(reference, plan, frame, start, options, _denoised, mirror_check, _smooth)
            # (the later frames of a geometry checked once: no call)
            if mirror_check and (not pool.mirror_checked or reference.options.mirror_check == "always"):
                flips = _screen_flips(reference, pool, plan, result)
    finally:
        pool.release(plan)
    # a DRR reference and a small (cone, SRS) field or a wide penumbra: a plan for it (the frame measures the same
    # field and penumbra there, so once; a second request would be a fault, and is met once more rather than lost)
    for _ in range(2):
        if type(result) is not _Replan:
            break
        pool = reference.frame_pool(frame, result.field_mm, result.band_mm)
        if result.field_mm is None:  # where the next frame of this geometry starts (it checks the band there)
            base.band_pool = None if result.band_mm is None else pool
        plan = pool.acquire(reference._lane_limit, backend)
        try:
            with backend.frame_scope(plan.stream, plan.threads):
                result = _register(reference, plan, frame, start, options, _denoised, mirror_check, _smooth)
                if mirror_check and (not pool.mirror_checked or reference.options.mirror_check == "always"):
                    flips = _screen_flips(reference, pool, plan, result)
        finally:
            pool.release(plan)
    if type(result) is _Replan:  # pragma: no cover - the frame's own measures are deterministic
        raise RuntimeError(f"{frame.info.source}: the frame's field asked for another plan three times ({result})")
    if type(result) is _SmoothedPair:  # rare: a noisy frame or reference portal image, refused as taken
        result = _smoothed_pair(reference, result, mirror_check, options, start)
    check = reference.options.mirror_check
    if mirror_check and check != "never" and result.ok and not (check == "first" and pool.mirror_checked):
        first = not pool.mirror_checked
        pool.mirror_checked = True
        result = _mirror_check(reference, frame, result, flips)  # first: a flipped frame is named as such
        if first and result.ok:
            pool.mirror_score = _mirror_score(result)
        result = replace(result, elapsed_ms=(time.perf_counter() - start) * 1e3)  # the check's time is the frame's
    elif mirror_check and check == "first" and result.ok and pool.mirror_score is not None:
        # a later frame of a checked geometry matching far worse than the one checked: checked too (rare). A hostile
        # campaign's mirrored frame after a sound one of the same geometry was ok 8.3 mm off (the check ran on the
        # first frame only). _mirror_score written out: no call a frame
        details = result.details
        score = details["edge_score_all_edges"] if "edge_score_all_edges" in details else None
        if score is None:
            score = details["edge_score"] if "edge_score" in details else None
        if score is not None and score < MIRROR_RECHECK_SHARE * pool.mirror_score:
            result = _mirror_check(reference, frame, result, None)
            result = replace(result, elapsed_ms=(time.perf_counter() - start) * 1e3)
    elif mirror_check and check != "never" and not result.ok and _flip_leads(flips):
        # rare: a refused match that a flip beats in the global search (a frame mirrored up-down matched its reference
        # 21 mm away, "outside the search range", with no word of a mirror: a new user's trial); the full check says
        # whether it is mirrored, the refusal's own reason kept after it
        checked = _mirror_check(reference, frame, result, flips)
        if checked.reason != result.reason and result.reason.startswith("different views") \
                and checked.reason.startswith(_FLIPPED):
            # the headers name two views and the pixels agree (an opposed beam's image is a mirrored one): the
            # headers' reason leads, with its fix (an independent trial, gantry 90 against 270: the reason led with
            # "flipped ... set --mirror-check never", advice that cannot make the pair ok)
            evidence = checked.reason[len(_FLIPPED):].split("):", 1)[0]
            checked = replace(checked, reason=f"{result.reason} (the pixels agree: {evidence}))")
        elif checked.reason != result.reason:
            checked = replace(checked, reason=f"{checked.reason} (as taken: {result.reason})")
        result = replace(checked, elapsed_ms=(time.perf_counter() - start) * 1e3)
    # a fixed aperture (a portal pair whose field stayed put) and a match at its own position: does the field alone
    # place it? (rare: a DRR's reference has no field; no call otherwise)
    if result.ok and mirror_check and reference.field.detected and result.field_detected and \
            reference._aperture is not False:
        moved = result.details["field_moved_mm"] if "field_moved_mm" in result.details else None
        # (not beyond APERTURE_NEAR_MM: the deep interior refused 4 of 129 sound pairs of a trial matched 2-6 mm away,
        # and no wrong one; session note 20)
        if moved is not None and moved < FIELD_MOVED_MM and math.hypot(result.dx_mm, result.dy_mm) <= APERTURE_NEAR_MM:
            result = _aperture_check(reference, frame, result)
        elif moved is not None and moved < FIELD_MOVED_MM and _no_deep_interior(reference, result):
            # a field with no deep interior at all, or none left once the match's shift is allowed for (a narrow
            # field): every pixel matched lies in its penumbra, which stays with the beam (over all labelled corpora,
            # the only two such ok matches away from the aperture were 1.2 and 4.5 mm off; trial51 portalref-12, a
            # 17 mm MLC strip matched 3.3 mm along it: across it 0.62 mm off and its turn 2.05 deg, at 0.085 stated)
            if reference.options.aperture_check == "strict":
                result = replace(result, ok=False, reason=f"no match confirmed: {_no_interior_finding(result)}; "
                                 f"{_NO_INTERIOR_ADVICE}", dx_mm=None, dy_mm=None, rotation_deg=None)
            else:
                result = replace(result, warnings=[*result.warnings, f"{_no_interior_finding(result)} (accepted: "
                                                   "aperture_check='warn')"])
    if not result.ok and mirror_check and _denoised is None:  # rare: a refused frame
        result = _striped_refusal(reference, frame, result)
    # an uncertainty is stated for an ok result's measured values only: a refused match (ambiguous, another patient or
    # view, imprecise) is no measurement to vouch for, and a pose that was not measured or nulled by a check has none
    if not result.ok or result.dx_mm is None or result.rotation_deg is None:
        details = result.details
        if not result.ok or result.dx_mm is None:
            details["shift_uncertainty_mm"] = None
        if not result.ok or result.rotation_deg is None:
            details["rotation_uncertainty_deg"] = None
    return result


#: A contrast over noise this large divided by the noise floor (1e-30): no noise was measurable (reported null).
_NO_NOISE_RATIO = 1e20
#: Refusals that say already what is wrong with the pair as a whole (not with the frame's pixels): no screen after them.
_NOT_THE_PIXELS = ("different views", "different patients", "no common anatomy")


def _striped_refusal(reference: Reference, frame: Image, result: RegistrationResult) -> RegistrationResult:
    """Screen a refused frame's own detector lines too (``find_field(thorough=True)``): a striped frame says so.

    Every frame's detector lines are screened by their means (``field.line_screen``, from the pyramid's pass), which
    takes up a striped image's lines and lines that spike strongly; its other dead lines are found on its
    field-detection level. A refused frame (rare) is screened as a reference is, on whatever
    spikes (``thorough``): lines whose means spike less, such as dead columns of a dosimetry image that differ from
    their neighbours inside a 30 mm field only, were refused for what their stripes did to the match ("nothing but
    noise"). Where they are too many to leave out (``FieldEstimate.striped``) the reason says so, and the pose is null
    (the optimum measured the stripes).
    """
    from ..field import box_reduce
    from ._reference import FIELD_LEVEL_MAX_PIXELS

    reason = result.reason
    if frame.info.kind == "drr" or reason.startswith(_NOT_THE_PIXELS) or "acquire the frame again" in reason:
        return result
    small, _ = box_reduce(frame.pixels, FIELD_LEVEL_MAX_PIXELS)
    screened = (find_field if wants_field(reference.options, frame) else dead_lines_only)(frame, small, thorough=True)
    if not screened.striped:
        return result
    return replace(result, reason=f"{frame.info.source}: {screened.striped}; acquire the frame again (as taken: {reason})",
                   dx_mm=None, dy_mm=None, rotation_deg=None)


def _pair_noisy(frame_contrast: float, level: Any) -> bool:
    """Whether a refused pair is smoothed alike (``SMOOTH_PAIR``): one image noisy, the reference not 3x cleaner.

    ``frame_contrast`` is the frame's contrast over noise at the finest working level (``level``), where the
    reference's is measured the same way. A noisy frame against a noise-free DRR was smoothed alone already
    (``DENOISE``); a noisy reference portal image against a clean frame is smoothed with it.
    """
    reference_contrast = reference_contrast_to_noise(level)
    return (min(frame_contrast, reference_contrast) < DENOISE_BELOW_CNR
            and reference_contrast < DENOISE_NOISIER * frame_contrast)


def _pair_noise_note(frame_contrast: float, plan: FramePlan) -> tuple[float, str]:
    """Return the reference's contrast over noise on the search level and why the pair is not smoothed ("" where it is).

    ``REFERENCE_NOISE_ONLY_CONTRAST`` (the ``SMOOTH_PAIR`` note). ``frame_contrast``: the frame's contrast over its
    noise at the finest working level (``frame_stats``); on the search level, ``2**k`` pixels coarser, its white noise
    is ``2**k`` times smaller (box averaging), its contrast the same (``_quality.assess_frame``), which the note
    states beside the reference's (``_quality.reference_search_contrast``, measured so too; ``inf`` for a noise-free
    one).
    """
    reference_c = reference_search_contrast(plan)
    if reference_c >= REFERENCE_NOISE_ONLY_CONTRAST:
        return reference_c, ""
    frame_c = frame_contrast * 2.0 ** (plan.coarse.level - plan.levels[plan.refine_levels[-1]].index)
    return reference_c, (f"the reference portal image shows nothing but noise: its contrast is {reference_c:.1f}x its "
                         f"noise on the search level (noise alone gives about 5x; at least "
                         f"{REFERENCE_NOISE_ONLY_CONTRAST:g}x needed; the frame's {frame_c:.1f}x), so smoothing both "
                         "cannot make a match of it; take the reference with more dose (or average its frames), or "
                         "through a field that holds more anatomy")


#: How the refusals of a fixed aperture's checks begin (``_aperture_check``, ``_no_interior_finding``): a match was
#: measured, and the aperture, not the patient, may have placed it.
_APERTURE_REFUSALS = ("no match confirmed:", "no match: the anatomy deep inside the field",
                      "no match: the radiation field's own shape")


def _smoothed_pair(reference: Reference, pair: _SmoothedPair, mirror_check: bool, options: RegistrationOptions | None,
                   start: float) -> RegistrationResult:
    """Register the smoothed frame against the smoothed reference; keep that result where it is ok (``SMOOTH_PAIR``).

    Refused so too, the frame as taken's refusal is kept with the smoothed pair's in a note; but where a fixed
    aperture's checks refused the smoothed pair's match (``_APERTURE_REFUSALS``), that reason leads and the frame as
    taken's is the note.
    """
    if not mirror_check:  # the mirror check's own registrations compare the frame as taken
        return pair.result
    sigma = pair.record["sigma_mm"]
    again = register_frame(reference.smoothed_twin(sigma),
                           denoised_frame(pair.frame, pair.field, pair.field_factor, sigma), mirror_check, options,
                           pair.record)
    elapsed = (time.perf_counter() - start) * 1e3
    if again.ok:
        return replace(again, elapsed_ms=elapsed, reference_uid=pair.result.reference_uid)
    if again.reason.startswith(_APERTURE_REFUSALS):
        # smoothed, the pair was matched, and the fixed aperture's checks refused that match: what the user must hear
        # first, not the frame as taken's "nothing matches ... another patient" (trial51 portalref-12: a 17 mm MLC strip)
        note = (f"as taken, before both images were smoothed by {sigma:g} mm (a noisy frame or reference portal image): "
                f"{pair.result.reason}")
        return replace(again, elapsed_ms=elapsed, reference_uid=pair.result.reference_uid,
                       warnings=[*again.warnings, note])
    note = (f"registered again with both images smoothed by {pair.record['sigma_mm']:g} mm (a noisy frame or reference "
            f"portal image), and refused so too: {again.reason}")
    return replace(pair.result, elapsed_ms=elapsed, warnings=[*pair.result.warnings, note])


#: An optimum beyond the search range (shift or rotation) matched with less than this edge correlation is called weak
#: in the reason: too little structure places such an optimum more often than anything else.
WEAK_RANGE_EDGE = 0.6
#: A portal pair's match within this of the aperture's own position (the field stayed put: no shift) is checked
#: against the aperture alone (``Reference.aperture_model``).
APERTURE_NEAR_MM = 2.0
#: ...and refused where the aperture alone matches the frame with at least this share of the match's own edge
#: correlation. An independent trial (its own renderer, a real thorax and pelvis CT) found two portal pairs matched
#: at the aperture's position, ok: an MLC field with leaf pairs closed inside it and a soft edge (2.8 mm sigma), 2.8
#: mm off; a 15 mm cone (2 mm sigma), 4.2 mm off. The aperture alone matched those frames at 0.66-0.72, the
#: reference at 0.54-0.66; over sound pairs (``bench.held_out``'s portal references, TrueBeam and aS500
#: Winston-Lutz sets) the aperture alone reached at most 0.45 of the reference's score.
APERTURE_MAX_SHARE = 0.8
#: ...a match whose edge correlation reaches this is not checked: what the aperture alone matched in that trial scored
#: 0.54-0.84 against the reference, Winston-Lutz pairs 0.97-1.0 (the check costs a second, edge-only registration, a
#: few times one of a small field's frames; a phantom or ball bearing imaged twice needs none).
APERTURE_CHECK_BELOW = 0.9


#: The deep-interior check (``_interior``) decides alone where the field's interior far from every aperture-strong
#: step covers at least this area (mm^2) in both images. Over a labelled corpus of portal pairs through a fixed
#: aperture (54 matched at the aperture's position 2-6 mm off, 87 sound; session note 19), from 100 mm^2 on the
#: anatomy there placed sound matches within 0.65 mm of themselves.
INTERIOR_MIN_AREA_MM2 = 100.0
#: ...a deep interior from this area up (a narrow MLC field, a large cone) may refuse a match but not pass it: the
#: aperture model's check follows. In that corpus interiors of 14-65 mm^2 placed the anatomy 0.1-0.73 mm from sound
#: matches and 1.2-3.5 mm from wrong ones. Under it (a small cone: none) the aperture model's check alone decides.
INTERIOR_REFUSE_AREA_MM2 = 10.0
#: ...a smaller one confirms a match only where its anatomy has at least this contrast (``InteriorMatch.contrast``, rms
#: of the log residual) and the surface's peak leads the best shift 2 mm or more from it (``InteriorMatch.runner_up``)
#: by at least ``INTERIOR_SMALL_LEAD``: something compact and dense that moves with the patient, a ball bearing or a
#: marker, placed it, which the little that the aperture leaves in the interior cannot outweigh. Winston-Lutz pairs:
#: contrast 0.061-0.166 and lead 0.59-0.63 on the real TrueBeam and aS500 sets, 0.048-0.144 and 0.33-1.04 on 40
#: synthetic ones (14-30 mm fields, 4-8 mm ball bearings), leads of 0.13-0.25 in a trial's 7-8 mm bearings 2 mm off
#: the centre of a 20 mm field; a held-out set of cone portal pairs over soft anatomy: contrast 0.005-0.023
#: (session note 20).
INTERIOR_SMALL_CONTRAST = 0.035
INTERIOR_SMALL_LEAD = 0.1
#: ...and refuses a match that the deep interior's anatomy places more than this far (mm) from itself: sound portal
#: pairs of that corpus came within 0.65 mm (of their 1.5 mm shifts and less); those matched at the aperture 2-6 mm
#: off, 1.5-5.9 mm.
INTERIOR_MAX_OFFSET_MM = 1.0


def _interior_details(found: InteriorMatch) -> dict[str, Any]:
    """``details["interior_check"]``: what the deep interior's correlation found (``InteriorMatch``)."""
    return {
        "area_mm2": round(float(found.area_mm2), 1), "penumbra_sigma_mm": float(found.penumbra_sigma_mm),
        "margin_mm": round(float(found.margin_mm), 2), "offset_mm": round(float(found.offset_norm_mm), 3),
        "correlation_at_match": round(float(found.correlation_at_match), 4),
        "correlation_peak": round(float(found.correlation_peak), 4),
        "correlation_runner_up": None if math.isnan(found.runner_up) else round(found.runner_up, 4),
        "contrast": round(float(found.contrast), 4),
        "anatomy_dx_mm": round(float(found.anatomy_pose[0]), 3),
        "anatomy_dy_mm": round(float(found.anatomy_pose[1]), 3), "at_search_limit": found.at_limit}


def _aperture_check(reference: Reference, frame: Image, result: RegistrationResult) -> RegistrationResult:
    """Return ``result``, not ok where the aperture, not the anatomy, placed the match.

    Where the field has a deep interior (``INTERIOR_*_AREA_MM2``), its anatomy (``_interior``) must place the frame
    within ``INTERIOR_MAX_OFFSET_MM`` of the match. Where it is small or none, nothing confirms the match:
    ``aperture_check="strict"`` refuses it (``UNCONFIRMED_REFUSAL``); ``"warn"`` keeps it ok with a warning
    (``UNCONFIRMED_AT_APERTURE``) unless the reference's aperture alone matches the frame about as well as the
    reference does (``APERTURE_*``, for matches under ``APERTURE_CHECK_BELOW``).
    """
    interior = reference.interior_model()
    small: InteriorMatch | None = None
    if interior is not None:
        start = time.perf_counter()
        pose = (result.dx_mm, result.dy_mm, math.radians(result.rotation_deg or 0.0))
        dead = result.details.get("dead_detector_lines")  # the frame's, bridged as the reference's are
        found = interior.match(frame if not dead else bridged_frame(frame, dead["rows"], dead["columns"]), pose)
        spent = (time.perf_counter() - start) * 1e3
        if found is not None and found.area_mm2 >= INTERIOR_REFUSE_AREA_MM2:
            result.details["interior_check"] = _interior_details(found)
            lead = found.correlation_peak - found.runner_up  # NaN where nothing 2 mm from the peak was scored
            compact = found.contrast >= INTERIOR_SMALL_CONTRAST and lead >= INTERIOR_SMALL_LEAD
            if found.offset_norm_mm <= INTERIOR_MAX_OFFSET_MM and (found.area_mm2 >= INTERIOR_MIN_AREA_MM2 or compact):
                return replace(result, elapsed_ms=result.elapsed_ms + spent)
            if found.offset_norm_mm > INTERIOR_MAX_OFFSET_MM:
                return _interior_refusal(result, found, spent)
            small = found
        result = replace(result, elapsed_ms=result.elapsed_ms + spent)
    if reference.options.aperture_check == "strict":  # nothing deep enough inside the field confirms the match
        reason = UNCONFIRMED_REFUSAL if small is None else _unconfirmed_small(small)
        return replace(result, ok=False, reason=reason, dx_mm=None, dy_mm=None, rotation_deg=None)
    model = reference.aperture_model()
    own = result.details.get("edge_score")
    if model is not None and own is not None and own < APERTURE_CHECK_BELOW:
        result = _aperture_model_check(result, model.register(frame), own)
    if result.ok:  # aperture_check="warn": nothing deep enough inside the field to read the anatomy from: say so
        result = replace(result, warnings=[*result.warnings, UNCONFIRMED_AT_APERTURE])
    return result


#: The warning of an ok match at a fixed aperture's own position that no deep interior confirmed (``_aperture_check``).
#: On a held-out set of portal pairs through cones, the matches at the cone's position were 0.0-0.8 mm from no shift
#: whether the patient had moved 0 or 5.8 mm (session note 19).
UNCONFIRMED_AT_APERTURE = (
    f"the match sits at the field's own position, and under {INTERIOR_MIN_AREA_MM2:g} mm^2 of the field lies far "
    "enough inside its edges (and those of leaves closed inside it) to confirm it by the anatomy (a cone, a narrow "
    "or split field): the field's edges, not the patient, may have placed it; compare the frame with a DRR")


#: The reason of such a match under ``aperture_check="strict"`` (the default): it carries no information about the
#: patient, so it is not reported (on that held-out set ``warn`` left 14 of 22 cone pairs whose patient moved 2-6 mm
#: ok; ``strict`` refused them all, and 40 of 42 sound ones).
_UNCONFIRMED_ADVICE = (
    "the field's edges place a match there whether or not the patient moved; register the frame against a DRR, or set "
    "aperture_check='warn' (--aperture-check warn) to accept such a match with a warning")
UNCONFIRMED_REFUSAL = (
    f"no match confirmed: the match sits at the field's own position, and under {INTERIOR_REFUSE_AREA_MM2:g} mm^2 of "
    "the field lies far enough inside its edges (and those of leaves closed inside it) to read the anatomy there (a "
    f"cone, a narrow or split field): {_UNCONFIRMED_ADVICE}")


def _no_deep_interior(reference: Reference, result: RegistrationResult) -> bool:
    """Whether no part of a fixed aperture's field lies deep enough inside its edges to read the anatomy at the match.

    None at all (``interior_model`` is None), or none left once the match's shift and turn are allowed for
    (``InteriorModel.deep_pixels`` under ``INTERIOR_MIN_PIXELS``: the frame's aperture shows that far into the
    reference's interior).
    """
    interior = reference.interior_model()
    if interior is None:
        return True
    pose = (result.dx_mm, result.dy_mm, math.radians(result.rotation_deg or 0.0))
    return interior.deep_pixels(pose) < INTERIOR_MIN_PIXELS


def _no_interior_finding(result: RegistrationResult) -> str:
    """Say why a match away from a fixed aperture whose field has no deep interior (at the match) is not confirmed."""
    return (f"the match lies {math.hypot(result.dx_mm, result.dy_mm):.1f} mm from the field's own position, and no "
            f"part of the field lies {INTERIOR_PENUMBRA_SIGMAS:g} penumbra widths + {INTERIOR_EXTRA_MM:g} mm inside its "
            "edges once that shift is allowed for (a small cone, a narrow or soft-edged field): every pixel matched "
            "lies in the penumbra, which stays with the beam, so the field's edges may have placed the match as much "
            "as the patient")


#: ...and what the refusal of such a match (``aperture_check="strict"``) advises.
_NO_INTERIOR_ADVICE = ("register the frame against a DRR, or set aperture_check='warn' (--aperture-check warn) to accept "
                       "such a match")


def _unconfirmed_small(found: InteriorMatch) -> str:
    """Return the refusal of a match at the aperture that a small deep interior agrees with but cannot confirm."""
    lead = found.correlation_peak - found.runner_up
    led = (f"a lead of {lead:.2f} over shifts 2 mm away against {INTERIOR_SMALL_LEAD:g}" if math.isfinite(lead) else
           "no shift 2 mm away to compare")
    return (f"no match confirmed: the match sits at the field's own position, and only {found.area_mm2:.0f} mm^2 of "
            "the field lies far enough inside its edges (and those of leaves closed inside it) to read the anatomy "
            f"there (at least {INTERIOR_MIN_AREA_MM2:g} needed, or a dense object: contrast {found.contrast:.3f} "
            f"against {INTERIOR_SMALL_CONTRAST:g}, {led}); it places the frame {found.offset_norm_mm:.1f} mm from the "
            f"match, which cannot confirm it: {_UNCONFIRMED_ADVICE}")


def _interior_refusal(result: RegistrationResult, found: InteriorMatch, spent: float) -> RegistrationResult:
    """Return ``result`` refused: the deep interior's anatomy places the frame elsewhere."""
    least, at = ("at least ", "toward") if found.at_limit else ("", "at")
    where = (f"{least}{found.offset_norm_mm:.1f} mm from the match ({at} dx {found.anatomy_pose[0]:+.1f}, dy "
             f"{found.anatomy_pose[1]:+.1f} mm; a rotation the match got wrong moves it too)")
    reason = (f"no match: the anatomy deep inside the field places the frame {where}, and the match sits at "
              "the field's own position: the aperture's edges (or leaves closed inside the field), not the anatomy, "
              "placed it; compare the frame with a DRR, or check it")
    return replace(result, ok=False, reason=reason, dx_mm=None, dy_mm=None, rotation_deg=None,
                   elapsed_ms=result.elapsed_ms + spent)


def _aperture_model_check(result: RegistrationResult, alone: RegistrationResult, own: float) -> RegistrationResult:
    """Return ``result``, not ok where the aperture model's match ``alone`` scores ``APERTURE_MAX_SHARE`` of ``own``."""
    score = alone.details.get("edge_score")
    result.details["aperture_alone_edge_score"] = score
    # the aperture's match must stand above chance itself: a 36 mm cone's model, its interior all but empty inside the
    # model's edge band, scored 1.000 on a handful of pixels against a correct match of 0.27 (a second trial)
    significant = (alone.details.get("match_significance") or 0.0) >= MIN_MATCH_SIGNIFICANCE
    if score is None or not significant or score < APERTURE_MAX_SHARE * own:
        return replace(result, elapsed_ms=result.elapsed_ms + alone.elapsed_ms)  # the check's time is the frame's
    reason = (f"no match: the radiation field's own shape matches the frame about as well as the reference does (edge "
              f"correlation {score:.2f} against {own:.2f}) at the field's own position: the anatomy inside the field "
              "does not place the match (a soft field edge, leaves closed inside the field, a small cone); compare "
              "the frame with a DRR, or check it")
    return replace(result, ok=False, reason=reason, dx_mm=None, dy_mm=None, rotation_deg=None,
                   elapsed_ms=result.elapsed_ms + alone.elapsed_ms)


#: A frame is taken for mirrored when a flipped copy of it matches the reference with an edge correlation higher
#: than the frame's own and the other copies' (the runner-up) by ``MIRROR_MIN_GAIN`` or more, and either
#: ``MIRROR_MIN_RATIO`` times the runner-up's or leaving at most ``MIRROR_MAX_RESIDUAL`` of its shortfall from 1.
#: Over the ok pairs of ``python -m bench.held_out --seed 11`` the flipped copies reached 0.08-0.78 times the
#: frame's own (median 0.22), and every mirrored frame was refused by the other checks already; a new user's trial
#: found mirrored frames that were not (a DRR against its own mirror image, ok at 0.31 where the flipped copy scores
#: 1.0; the demo frame mirrored, ok with the shift's sign reversed; pylinac's pipspro phantom turned 180 deg, ok at
#: 0.79 where the turned copy scores 0.95). A frame of a symmetric object matches about as well flipped: no gain, no
#: refusal.
MIRROR_MIN_GAIN = 0.05
MIRROR_MIN_RATIO = 1.25
MIRROR_MAX_RESIDUAL = 0.5
#: The mirror check's screen (:func:`_flip_peaks`): the copies are registered only where a flip's global-search peak
#: (rotation 0, the frame's coarse level) reaches ``MIRROR_SCREEN_RATIO`` of the frame's own. Flipping twice is no
#: flip, so a mirrored frame's screen reads its unmirrored twin's peaks swapped: it escapes the full check only where
#: the twin's own peak lies under 0.7 of a flip's, a frame that would look mirrored itself. Over the first frames of
#: ``bench.real_windows --seed 7`` and ``bench.held_out --seed 11`` (264 checks) the highest flip-over-own ratio was
#: 1.19 (a symmetric phantom) and 75 % lay under 0.7: those skip the three copies' registrations (``bench.latency``'s
#: one-shot 1024 x 768 registration 64.5 -> 38.9 ms; interleaved, 79 against 39 ms). Every mirrored frame that reached
#: the check (held-out pairs of seed 5 in three flips, windows of every real RT Image in three flips, the demo frame,
#: the real images of ``tests/test_mirror.py``: 34 in all) read 0.94 or more and was checked in full as before.
#: False: always register the copies.
MIRROR_SCREEN = True
MIRROR_SCREEN_RATIO = 0.7
#: The flips tried: ``(name, pixel slice)``; "turned 180 deg" is both.
_FLIPS = (("flipped left-right", (slice(None), slice(None, None, -1))),
          ("flipped up-down", (slice(None, None, -1), slice(None))),
          ("turned 180 deg", (slice(None, None, -1), slice(None, None, -1))))


#: The doubled-angle edge feature ``im`` (``2 gx gy / |g|^2``) of a flipped copy: negated by a flip of one axis, kept by
#: both (a half turn); ``re`` (``(gx^2 - gy^2) / |g|^2``) is kept by every flip.
_FLIP_IM_SIGN = {"flipped left-right": -1.0, "flipped up-down": -1.0, "turned 180 deg": 1.0}


def _flip_peaks(backend: Backend, plan: FramePlan) -> dict[str, float | None]:
    """Return the global search's best peak, rotation held at 0, of the frame as matched and of each flip (``_FLIPS``).

    Read from the frame's coarse-level edge features in ``plan`` (still this frame's: called while its lane is held),
    flipped as the pixels would be (``_FLIP_IM_SIGN``): one correlation surface each, a fraction of a millisecond,
    against a full light registration of a copy (6-8 ms on a 1024 x 768 frame). ``"own"``: the frame unflipped.
    None where the search found no finite peak.
    """
    if plan.host_candidates is not None and plan.host is not None:  # a device lane searched on its host twin
        backend, plan = _host_backend(), plan.host
    level = plan.levels[plan.coarse.level]
    xp = backend.xp
    peaks: dict[str, float | None] = {}
    for name, cut in (("own", None), *_FLIPS):
        re, im = level.feat_re, level.feat_im
        if cut is not None:
            re = xp.ascontiguousarray(re[cut])
            im = xp.ascontiguousarray(im[cut] * _FLIP_IM_SIGN[name])
        found = coarse_peaks(backend, plan, level, re, im, 1, False)
        peaks[name] = float(plan.coarse.peak_scores[0]) if found else None
    return peaks


def _screened_out(flips: dict[str, float | None] | None) -> bool:
    """Whether the screen's peaks (:func:`_flip_peaks`) leave the copies unregistered.

    So when each flip's peak lies under ``MIRROR_SCREEN_RATIO`` of the frame's own (``MIRROR_SCREEN`` on).
    """
    if not MIRROR_SCREEN or flips is None:
        return False
    own = flips["own"]
    if own is None or not own > 0.0:
        return False
    return all(peak is not None and peak < MIRROR_SCREEN_RATIO * own for name, peak in flips.items() if name != "own")


def _screen_flips(reference: Reference, pool: Any, plan: FramePlan, result: Any) -> dict[str, float | None] | None:
    """Return :func:`_flip_peaks` where ``register_frame``'s mirror check may run on ``result``; None otherwise.

    An ok result's check, or a refused one whose match was measured (:func:`_flip_leads` decides whether it is
    checked).
    """
    check = reference.options.mirror_check
    if (check == "never" or (check == "first" and pool.mirror_checked) or type(result) is not RegistrationResult
            or result.dx_mm is None):
        return None
    return _flip_peaks(reference.backend, plan)


def _flip_leads(flips: dict[str, float | None] | None) -> bool:
    """Whether a flip's global-search peak (:func:`_flip_peaks`) lies above the frame's own.

    A refused frame is then checked in full (``register_frame``).
    """
    if flips is None:
        return False
    own = flips["own"]
    return own is not None and own > 0.0 and any(
        peak is not None and peak > own for name, peak in flips.items() if name != "own")


#: ``mirror_check="first"``: a later frame of a geometry whose edge score falls under this share of the checked frame's
#: is put through the mirror check too (a hostile campaign's frame mirrored mid-stream fell from 0.69 to 0.47; the
#: scores of one geometry's sound frames vary by a few hundredths).
MIRROR_RECHECK_SHARE = 0.8


def _mirror_score(result: RegistrationResult) -> float | None:
    """Return the edge correlation the mirror check compares: all the frame's edges counted (``edge_score_all_edges``).

    A copy's score counts only the frame pixels over the reference's valid region: a flipped copy of a Winston-Lutz
    window matched its symmetric ball 12 mm from its field, leaving its worst-matched edges over the reference's
    masked-out surroundings, and outscored the frame itself (0.53-0.57 against 0.42-0.45; ``bench.real_windows``,
    five such right answers refused, session note 32). Counted over all of the frame's edges, it scored 0.41-0.43
    against the frame's 0.42-0.44: no gain, as a symmetric object should.
    """
    counted = result.details.get("edge_score_all_edges")
    return counted if counted is not None else result.details.get("edge_score")


#: How a flipped frame's refusal begins (``_mirror_check``).
_FLIPPED = "flipped: "


def _mirror_check(reference: Reference, frame: Image, result: RegistrationResult,
                  flips: dict[str, float | None] | None = None) -> RegistrationResult:
    """Register ``frame`` flipped (``_FLIPS``); return ``result``, not ok when a flipped copy matches clearly better.

    The copies keep the frame's geometry (its beam axis and plan): a flip about the image centre rather than the axis
    only adds a translation, which the search absorbs; the comparison reads the edge correlations alone. ``flips``:
    the screen's global-search peaks (:func:`_flip_peaks`); where no flip reaches ``MIRROR_SCREEN_RATIO`` of the
    frame's own, the copies are not registered (``details["mirror_check"]["screened_out"]``, their scores null).
    """
    own = _mirror_score(result)
    if _screened_out(flips):
        # no flip comes near the frame's own peak in the global search: the copies are not registered (not measured:
        # null scores), the screen's peaks say why
        details = dict(result.details)
        details["mirror_check"] = {"edge_score": own, "flipped_edge_scores": None, "flipped_smoothed": None,
                                   "own_edge_score_as_flipped": None, "screen_peaks": flips, "screened_out": True}
        return replace(result, details=details)
    scores: dict[str, float | None] = {}
    smoothed: dict[str, bool] = {}  # whether a copy's pixels were smoothed (``DENOISE``) before it was matched
    best_name, best = "", -1.0
    # the copies' edge scores are all the check reads: an edge-only search of the best candidate, its rotation held
    # at 0, without the MI cross-check (a held rotation only lowers a copy's score: the check errs towards "not
    # mirrored"); nor their split-half precision check (``register_frame``'s mirror_check=False). The three add about
    # 16 ms to a one-shot 1024 x 768 registration on two cores (42 ms in all, session note 34), and nothing to the
    # frames after the first of a geometry
    light = replace(reference.options, method="edge", candidates=1, estimate_rotation=False)
    for name, cut in _FLIPS:
        flipped = register_frame(reference, replace(frame, pixels=np.ascontiguousarray(frame.pixels[cut])),
                                 mirror_check=False, options=light)
        score = _mirror_score(flipped)
        significant = (flipped.details.get("match_significance") or 0.0) >= MIN_MATCH_SIGNIFICANCE
        scores[name] = score
        smoothed[name] = flipped.details.get("denoised") is not None
        if score is not None and significant and score > best:
            best_name, best = name, score
    details = dict(result.details)
    check: dict = {"edge_score": own, "flipped_edge_scores": scores, "flipped_smoothed": smoothed,
                   "own_edge_score_as_flipped": None, "screen_peaks": flips, "screened_out": False}
    details["mirror_check"] = check
    if own is None or not best_name:
        return replace(result, details=details)
    # like with like: a copy whose pixels were smoothed before it was matched (its raw match too noisy: a flip moves
    # the usable pixels about the beam axis, and with them the DENOISE call) scores far above a raw match of the same
    # pixels, and a frame matched smoothed (or with its reference) far above a raw copy. The frame is then matched
    # again as the best copy was (light, smoothed or not): a Winston-Lutz field at 3 % noise, raw 0.15, had its
    # copy flipped up-down refused as better at 0.81, smoothed; the frame smoothed alike scored 0.89
    alike = [v for k, v in scores.items() if k != best_name and v is not None and smoothed[k] == smoothed[best_name]]
    if (result.details.get("denoised") is not None) != smoothed[best_name]:
        again = register_frame(reference, frame, mirror_check=False, options=light, _smooth=smoothed[best_name])
        own = check["own_edge_score_as_flipped"] = _mirror_score(again)
        if own is None:  # the frame cannot be matched as the copy was: no comparison
            return replace(result, details=details)
    # against the frame's own score and the other flips' alike: an object symmetric under some flip matches about
    # as well under it, and noise then picks any of them (a Winston-Lutz field at low dose: 0.28 own, 0.32-0.38 flipped)
    runner = max([own, *alike])
    if not (best >= runner + MIRROR_MIN_GAIN
            and (best >= MIRROR_MIN_RATIO * runner or 1.0 - best <= MIRROR_MAX_RESIDUAL * (1.0 - runner))):
        return replace(result, details=details)
    # (another view too: a new user's frame taken at gantry 40 through a 20 mm field, its header saying 0, was refused
    # as mirrored, the view unnamed)
    reason = (f"{_FLIPPED}the frame matches the reference better {best_name} (edge correlation {best:.2f} against "
              f"{own:.2f}): the image is likely mirrored or turned (the imager's orientation or an export setting), "
              "or of another view than the reference's, whatever its header says")
    if reference.image.info.kind == frame.info.kind == "portal":
        # both images hold what is fixed to the beam: a graticule or tray symmetric about the axis matches a flipped
        # copy where the anatomy did not place the match (an independent trial: the unflipped optimum 2.2 mm off)
        reason += (", or both portal images hold a structure fixed to the beam (a graticule, a tray, the aperture) "
                   "that is symmetric under the flip while the anatomy is too weak to place the match")
    reason += "; check it, or, for anatomy that matches as well flipped, set mirror_check='never' (--mirror-check never)"
    return replace(result, ok=False, reason=reason, details=details)


def _sliver_reason(reference_note: str, frame_note: str) -> str:
    """Return the refusal of a pair where either image shows its field only as a sliver at its edge (``_SLIVER_NOTE``)."""
    widths = [f"{name} {note[len(_SLIVER_NOTE):].split(' mm')[0].strip()} mm wide"
              for name, note in (("the reference's", reference_note), ("the frame's", frame_note))
              if note.startswith(_SLIVER_NOTE)]
    which = " and ".join(w.split("'")[0] for w in widths)
    return (f"no match: {which} {'show' if len(widths) > 1 else 'shows'} the radiation field only as a sliver at the "
            f"image's edge ({', '.join(widths)}; the rest of it off the image): a penumbra cut by the border places "
            "no shift, nor does the little else a window beside a field holds; acquire the images with the field in "
            "view, or set field='none' (--field none) to match the whole images")


def _along_the_edges(direction_deg: float, pose: Any, runner_up: Any) -> bool:
    """Whether ``runner_up`` (dx, dy mm) lies from ``pose`` more along edges running at ``direction_deg`` than across."""
    radians = math.radians(direction_deg)
    ex, ey = runner_up[0] - pose[0], runner_up[1] - pose[1]
    along = math.cos(radians) * ex + math.sin(radians) * ey
    across = -math.sin(radians) * ex + math.cos(radians) * ey
    return abs(along) > abs(across)


def _one_directional_reason(isotropy: float, direction_deg: float, pose: Any) -> str:
    """Say that the matched edges all run one way (``direction_deg``): what the match measured across them, not along."""
    radians = math.radians(direction_deg)
    across = -math.sin(radians) * pose[0] + math.cos(radians) * pose[1]  # the shift along the edges' normal (mm)
    if direction_deg < 15.0 or direction_deg > 165.0:
        way, measured, unknown = "horizontally, along the image's rows,", f"dy = {pose[1]:+.2f} mm", "dx"
    elif 75.0 < direction_deg < 105.0:
        way, measured, unknown = "vertically, along the image's columns,", f"dx = {pose[0]:+.2f} mm", "dy"
    else:
        way = f"at {direction_deg:.0f} deg from the image's x axis,"
        measured, unknown = f"{across:+.2f} mm across them (at {(direction_deg + 90.0) % 180.0:.0f} deg)", "dx and dy"
    return (
        f"one-directional match: the edges that match all run {way} and edges running any other way weigh "
        f"{isotropy:.3f} of them (under {MIN_MATCHED_ISOTROPY:g}): the images fix the shift across them ({measured}) "
        f"but not along them, so {unknown} cannot be measured from this pair (straight lines or edges one way only: a "
        "single field edge, burned-in graphics, MLC pickets without their ends); check the pair, or register a region "
        "with structure in more than one direction"
    )


def _direction_text(along: tuple[float, float]) -> str:
    """Say a direction in the image: ``the image's x axis (columns)``, ``the image's y axis (rows)`` or ``N deg``."""
    angle = math.degrees(math.atan2(along[1], along[0])) % 180.0
    if angle < 15.0 or angle > 165.0:
        return "the image's x axis (columns)"
    if 75.0 < angle < 105.0:
        return "the image's y axis (rows)"
    return f"{angle:.0f} deg from the image's x axis"


def _pyramid_inputs(plan: FramePlan) -> tuple:
    """Return a lane's pyramid buffers (levels 1..depth, padded to ``PYRAMID_SLOTS - 1``), flag scratch and line means."""
    depth = plan.pyramid_depth
    buffers = [plan.levels[i].image for i in range(1, depth + 1)]
    buffers += [buffers[-1]] * (PYRAMID_SLOTS - 1 - depth)
    rows, cols = plan.levels[0].shape
    return (tuple(buffers), np.empty((plan.levels[1].image.shape[0], 2), np.int64), np.empty(rows), np.empty(cols),
            np.empty(rows, np.int64), np.empty(cols, np.int64))


def _host_twin(backend: Backend, plan: FramePlan, frame: Image) -> FramePlan | None:
    """Return the lane's host twin when this frame's level stage can run there as compiled calls, else None."""
    used = plan.used_levels
    if not 1 <= plan.pyramid_depth < PYRAMID_SLOTS or len(used) > LEVEL_SLOTS:
        return None
    if used[0] == 0 and not frame.pixels.flags.writeable:  # level 0's buffer type is the writable frame's
        return None
    return plan.host_twin(backend)


_HOST: list[Backend] = []


def _host_backend() -> Backend:
    """Return the CPU backend whose compiled calls make a device lane's levels ready on the host (made once)."""
    if not _HOST:
        _HOST.append(cpu_backend())
    return _HOST[0]


def _host_scope(host: FramePlan) -> Any:
    """Return the host twin's CPU context: one thread (made once per lane, entered once per compiled call).

    The level stage is about a millisecond of work: on an H200's 16-core Xeon host it took 1.4 ms on
    the CPU policy's 8 threads (the workers' wake-ups), and one core of this project's 2-core machine
    takes 0.6 ms. One thread also leaves the other cores to other lanes.
    """
    scope = host.scope
    if scope is None:
        scope = host.scope = _OneThread(_host_backend().frame_scope(None))
    return scope


class _OneThread:
    """A CPU frame scope entered with this thread's count held at one (``backends.single_threaded``)."""

    __slots__ = ("single", "scope")

    def __init__(self, scope: Any) -> None:
        self.single = single_threaded()
        self.scope = scope

    def __enter__(self) -> None:
        self.single.__enter__()
        self.scope.__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            self.scope.__exit__(*exc)
        finally:
            self.single.__exit__(*exc)


def _upload_finer(backend: Backend, plan: FramePlan, frame: Image, coarsest: int) -> None:
    """Put the frame and its levels up to ``coarsest`` on the device (a lane whose levels the host made ready)."""
    levels = plan.levels
    levels[0].image = backend.upload(frame.pixels, levels[0].image, plan.staging)
    for index in range(1, coarsest + 1):
        backend.kernels.downsample2(levels[index - 1].image, levels[index].image)


def _fine_polish(backend: Backend, plan: FramePlan, frame: Image, found: Any, field: Any, r_eff: float, opts: Any,
                 upload: bool, mi_levels: bool = True, fit_level: int | None = None,
                 fill: Callable[[Any], None] | None = None) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Fit two portal images' intensities, else follow their MI optimum down; return the pose and what was done.

    The intensity fit (``_intensity_polish``) runs first, on ``fit_level`` (``_intensity_fit_level``; None: no fit)
    when it is not coarser than the finest working level and its edges agree at the found pose. When it is not
    kept, ``mi_levels`` says whether MI's optimum is followed down ``FramePlan.fine_polish_levels`` (False: the
    edges' optimum was reported). The MI levels hold the rotation at the found one's; the intensity fit fits it too
    where the frame's rotation is estimated. A polished pose is kept when its translation lies within
    ``FINE_POLISH_MAX_MOVE_PX`` pixels of the finest working level from the found one. ``upload``: a device lane
    whose levels the host made ready puts the frame's finer levels on the device first. ``fill``: fills a level the
    plan left empty (``Reference.ensure_level_filled``).
    """
    levels = plan.levels
    start = np.asarray(found.pose, dtype=np.float64)
    finest = found.levels[-1]["level"] if found.levels else plan.refine_levels[-1]
    finer = [index for index in plan.fine_polish_levels if index < finest] if mi_levels else []
    last = fit_level if fit_level is not None and fit_level <= finest else None
    if not finer and last is None:
        return start, None
    if upload:
        _upload_finer(backend, plan, frame, max([*finer, last if last is not None else 0]))
    limit = FINE_POLISH_MAX_MOVE_PX * min(levels[finest].spacing)
    done: list[int] = []
    agreements: list[float] = []
    screens: list[float | None] = []
    intensity = None
    if last is not None:  # the intensity fit first: it needs no MI level on the way (measured: the same poses)
        level = levels[last]
        if fill is not None:  # the plan leaves the intensity level empty until a frame reaches it
            fill(level)
        agreement = math.nan  # not measured: the screen says the level cannot agree (no score listed)
        screened_out = False
        if last < finest:  # a working level has its mask and pixel list already
            screened_out = not _screen_passes(backend, frame, levels[finest], level, start, screens)
            if not screened_out:
                frame_mask(backend, level, field, plan.field_level, opts.bins)
        if not screened_out:
            agreement = edge_score(backend, plan, level, start) if level.usable >= MIN_USABLE_PIXELS else math.nan
            agreements.append(agreement)
        if agreement >= FINE_POLISH_MIN_EDGE:
            polished, intensity = _intensity_polish(backend, level, start, bool(found.rotate))
            # within a quarter of a working pixel of the found pose, for the rotation at the usable pixels' RMS radius
            if (polished is not None and math.hypot(polished[0] - start[0], polished[1] - start[1]) <= limit
                    and abs(polished[2] - start[2]) * r_eff <= limit):
                record = {"levels": [last], "edge_scores": agreements, "screened_edge_scores": screens, "kept": True,
                          "intensity": intensity, "moved_mm": math.hypot(polished[0] - start[0], polished[1] - start[1])}
                return polished, record
    # no fit (or not kept): MI's optimum followed down the finer levels while each agrees
    pose = start
    for index in finer:
        level = levels[index]
        if not _screen_passes(backend, frame, levels[finest], level, pose, screens):
            break  # not prepared: the screen says it cannot agree
        frame_mask(backend, level, field, plan.field_level, opts.bins)
        if level.usable < MIN_USABLE_PIXELS:
            break
        # the finer level must still agree: its edges shared, not its noise (independent noise fills fine levels)
        agreement = edge_score(backend, plan, level, pose)
        agreements.append(agreement)
        if not agreement >= FINE_POLISH_MIN_EDGE:
            break
        pose, _ = newton(backend, plan, level, pose, "mi", ITERATIONS[-1], r_eff, False, opts, tolerance=MI_TOLERANCE)
        done.append(index)
    moved = math.hypot(pose[0] - start[0], pose[1] - start[1])
    kept = bool(done) and moved <= limit
    record = {"levels": done, "edge_scores": agreements, "screened_edge_scores": screens,
              "moved_mm": moved if done else None, "kept": kept, "intensity": intensity}
    return (pose if kept else start), record


def _screen_passes(backend: Backend, frame: Image, working: Any, level: Any, pose: np.ndarray,
                   screens: list[float | None]) -> bool:
    """Return whether ``level`` could agree at ``pose`` (``FINE_POLISH_SCREEN_MARGIN``).

    Its screen (:func:`_screened_agreement`) is appended to ``screens`` (None where no pixel could be screened) and
    must reach ``FINE_POLISH_MIN_EDGE`` less the margin.
    """
    screen = _screened_agreement(backend, frame, working, level, pose)
    screens.append(screen if math.isfinite(screen) else None)
    return screen >= FINE_POLISH_MIN_EDGE - FINE_POLISH_SCREEN_MARGIN


def _screened_agreement(backend: Backend, frame: Image, working: Any, level: Any, pose: np.ndarray) -> float:
    """Estimate ``level``'s edge correlation at ``pose`` from the finest working level's usable pixels (NaN: none).

    ``kernels.cpu.edge.sampled_edge_score`` on the host (``FINE_POLISH_SCREEN_MARGIN``), on at most
    ``FINE_POLISH_SCREEN_PIXELS`` of the working level's list: level 0 is the frame's own pixels; a level above it and
    the working level's list come to the host (on a device, one copy each; the reference's features on ``level`` once
    per plan level). ``level`` is finer than ``working``.
    """
    if level.ref_features_host is None:
        level.ref_features_host = (backend.to_host(level.ref_re), backend.to_host(level.ref_im))
    usable = int(working.usable)
    if usable < 1:
        return math.nan
    step = -(-usable // FINE_POLISH_SCREEN_PIXELS)  # every step-th listed pixel: at most FINE_POLISH_SCREEN_PIXELS
    rows = np.ascontiguousarray(backend.to_host(working.pixel_rows[:usable])[::step])
    cols = np.ascontiguousarray(backend.to_host(working.pixel_cols[:usable])[::step])
    affine = np.empty((1, 2, 3))
    pose_affines_into(np.asarray(pose, dtype=np.float64)[None, :], 1, level.geometry, affine)
    low, high = working.range  # the working level's robust range: the limit only leaves out outliers' neighbours
    image = frame.pixels if level.index == 0 else backend.to_host(level.image)
    score, _ = sampled_edge_score(image, rows, cols, rows.shape[0], 1 << (working.index - level.index),
                                  gradient_limit(low, high), level.ref_features_host[0], level.ref_features_host[1],
                                  affine[0], math.cos(2.0 * pose[2]), math.sin(2.0 * pose[2]))
    return float(score)


def _intensity_fit_level(plan: FramePlan, opts: Any) -> int | None:
    """Return the level the intensity fit runs on for this plan and these options; None: no fit.

    ``auto``'s only: ``method="edge"`` / ``"mi"`` report their own metric's optimum.
    """
    return plan.intensity_level if INTENSITY_POLISH and opts.method == "auto" else None


def _intensity_polish(backend: Backend, level: Any, pose: np.ndarray,
                      rotate: bool) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Fit the frame's translation (and rotation), gain and offset on ``level`` by least squares from ``pose``.

    ``kernels.cpu.intensity``; the rotation with ``rotate`` only.

    Returns the pose reached (None when the fit did not converge, fit too few pixels, or its intensities agree
    less than ``INTENSITY_MIN_CORRELATION``: then MI's stays) and what the fit found. Host work on every backend: the
    frame's level and pixel list come to the host (on a device, one copy each).
    """
    from portalign.kernels.cpu.intensity import OUT_SIZE, intensity_polish

    if level.ref_gradient is None:  # central differences of the reference, made once per plan level
        ref = np.ascontiguousarray(level.ref_image, dtype=np.float32)
        gy, gx = np.gradient(ref)
        level.ref_image = ref
        level.ref_gradient = (np.ascontiguousarray(gx, dtype=np.float32), np.ascontiguousarray(gy, dtype=np.float32))
    usable = int(level.usable)
    rows = backend.to_host(level.pixel_rows[:usable])
    cols = backend.to_host(level.pixel_cols[:usable])
    image = backend.to_host(level.image)
    out = np.zeros(OUT_SIZE)
    intensity_polish(rows, cols, usable, image, level.ref_image, level.ref_gradient[0], level.ref_gradient[1],
                     level.ref_valid, np.asarray(level.geometry, dtype=np.float64), np.asarray(pose, dtype=np.float64),
                     INTENSITY_ITERATIONS, INTENSITY_TOLERANCE_PX * min(level.spacing),
                     max(1, -(-usable // INTENSITY_MAX_VISITED)), rotate, out)
    record = {"level": level.index, "iterations": int(out[6]), "converged": bool(out[7]), "pixels": int(out[5]),
              "correlation": float(out[8]) if out[5] else None, "inliers": float(out[9]) if out[5] else None,
              "gain": float(out[2]) if out[5] else None, "rotation_fitted": rotate}
    if not (out[5] and out[7] and out[8] >= INTENSITY_MIN_CORRELATION and out[9] >= INTENSITY_MIN_INLIERS):
        return None, record
    return np.array([out[0], out[1], out[10]]), record


#: Two portal images' fields whose widths and heights at the isocentre both differ by this share or more, the same
#: way, are refused as two scales (``field_scale_mismatch``): a field is fixed to the beam, and a patient's shift does not
#: change it. A new user's trial set a frame's RTImageSID from 1500 to 1000 mm: its 20 mm field measured 29.6 mm, and
#: the match was ok 1.8 mm off (+4.90 against +3.07 mm).
FIELD_SCALE_SHARE = 0.08
#: ...and by this many field-detection pixels or more (a box edge is placed to about one)
FIELD_SCALE_PIXELS = 2.5
#: ...with both axes' ratios within this of each other (a scale error is one factor; apertures that differ do not
#: keep their proportions)
FIELD_SCALE_AGREEMENT = 0.1
#: One axis's extent differing so (``FIELD_SCALE_SHARE`` and ``FIELD_SCALE_PIXELS``) while the other's ratio lies within
#: this of 1 is one spacing value's error (or one jaw's): refused too.
FIELD_ONE_AXIS_AGREEMENT = 0.03


def _box_extent_mm(box_mm: list[float], level_spacing: tuple[float, float]) -> tuple[float, float]:
    """Width and height (mm) a field's box ``[x0, x1, y0, y1]`` covers: its extreme pixel centres, plus one pixel.

    ``level_spacing`` is the ``(row, col)`` spacing of the field-detection level the box was found on; the
    reference's (:attr:`Reference.field_extent_mm`) is measured the same way.
    """
    return box_mm[1] - box_mm[0] + level_spacing[1], box_mm[3] - box_mm[2] + level_spacing[0]


def field_scale_mismatch(reference: Reference, box_mm: list[float], level_spacing: tuple[float, float],
                         frame_field: Any = None) -> str:
    """Say why two portal images' fields of different sizes are two scales; ``""`` when they agree.

    ``box_mm`` is the frame field's box ``[x0, x1, y0, y1]`` (mm from its beam axis, the extreme pixel centres of its
    field-detection level, whose ``level_spacing`` is given), its core's where ``frame_field`` has a mask; the
    reference's is :attr:`Reference.field_core_extent_mm`. The fields' cores are compared (``field.core_extent_px``: a
    detector line joined to a field is not its extent).
    A field that either image cuts off (its box at the image's border, ``field.box_at_border``: ``frame_field``'s and
    the reference's) is not compared: the image's size measured it there, not the aperture. An independent trial
    (trial53 geometry-31): a 127 mm panel (an aS1200 crop at SID 1687) under a 86 x 145 mm field was refused as a
    scale 0.79 times the reference's, whose larger panel held the whole field.
    """
    theirs = reference.field_core_extent_mm
    if theirs is None:
        return ""
    if any(box_at_border(reference.field)) or (frame_field is not None and any(box_at_border(frame_field))):
        return ""
    core = None if frame_field is None else core_extent_px(frame_field)
    width, height = (_box_extent_mm(box_mm, level_spacing) if core is None
                     else (core[0] * level_spacing[1], core[1] * level_spacing[0]))
    pixel = max(level_spacing[0], level_spacing[1], reference.field_pixel_mm)
    if theirs[0] <= 0 or theirs[1] <= 0:
        return ""
    ratios = [width / theirs[0], height / theirs[1]]
    apart = [abs(ours - ref) >= max(FIELD_SCALE_SHARE * ref, FIELD_SCALE_PIXELS * pixel)
             for ours, ref in ((width, theirs[0]), (height, theirs[1]))]
    if apart[0] != apart[1]:
        # one axis only: no scale error of a whole image does that, one spacing value (or one jaw) can (a fuzz
        # campaign's handed small field with its row spacing 10 % too large was ok 4.7 mm off)
        axis = 0 if apart[0] else 1
        if abs(ratios[1 - axis] - 1.0) > FIELD_ONE_AXIS_AGREEMENT:
            return ""  # the other axis differs too, under the threshold: not one spacing value's error
        name, value = (("x", "column spacing, its second") if axis == 0 else ("y", "row spacing, its first"))
        return (f"different scales along {name} only: the frame's radiation field is {width:.1f} x {height:.1f} mm at "
                f"the isocentre, the reference's {theirs[0]:.1f} x {theirs[1]:.1f} mm ({ratios[axis]:.2f} times along "
                f"{name}, {ratios[1 - axis]:.2f} across): one image's ImagePlanePixelSpacing (3002,0011) {value} value, "
                "is wrong (a field is fixed to the beam), or the images show different apertures (a jaw or leaf bank "
                "set otherwise); a shift measured across them is not the patient's. Check both headers (portalign "
                "info); if the apertures differ on purpose, set allow_view_mismatch=True (--allow-view-mismatch)"
                f"{_unknown_kind_hint(reference)}")
    if not apart[0]:
        return ""
    if (ratios[0] - 1.0) * (ratios[1] - 1.0) <= 0 or abs(ratios[0] - ratios[1]) > FIELD_SCALE_AGREEMENT:
        return ""
    return (f"different scales: the frame's radiation field is {width:.1f} x {height:.1f} mm at the isocentre, the "
            f"reference's {theirs[0]:.1f} x {theirs[1]:.1f} mm ({ratios[0]:.2f} and {ratios[1]:.2f} times): one image's "
            "RTImageSID (3002,0026), RadiationMachineSAD (3002,0022) or ImagePlanePixelSpacing (3002,0011) is wrong (a "
            "field is fixed to the beam), or the images show different apertures; a shift measured across two scales "
            "is not the patient's. Check both headers (portalign info); if the apertures differ on purpose, set "
            f"allow_view_mismatch=True (--allow-view-mismatch){_unknown_kind_hint(reference)}")


#: Two portal images' fields whose cores' sides lie this far apart (mm), each from its image's beam axis, on an image
#: axis, and as far from the shift measured there, are one aperture displaced against its content: an aperture is
#: fixed to the beam, so the patient's motion cannot move it, and the shift measured holds the displacement. A fuzz
#: campaign's mutated files (trial53 lines-23's frame with its RTImagePosition 10 mm off, or its rows wrapped by 50)
#: were ok 6-12 mm off. A field that moved with the content (the handed cases: one image seen through a window moved
#: by whole pixels, both files keeping one RTImagePosition) is the shift the window's convention asks for, and not
#: refused. The sides are placed to a fraction of a detector pixel (``field.core_sides_fine_mm``) where the
#: field-detection pixels leave a displacement possible (``FIELD_DISPLACED_PIXELS`` of them).
FIELD_DISPLACED_MM = 2.0
FIELD_DISPLACED_PIXELS = 0.5
#: Beam axes a header states (``info.extra["beam_axis_source"]``): only then is a displaced field a contradiction (an
#: array's axis is its caller's, an RT Image's without a position tag its centre).
_STATED_AXIS = ("RTImagePosition", "XRayImageReceptorTranslation")


def _sides_moved(ours: list[float | None], theirs: list[float | None], tolerance: float) -> list[float | None] | None:
    """Return the mean displacement ``(x, y)`` of the sides both lists place (None on an axis with none).

    None where an axis's two sides moved apart by more than ``tolerance`` (mm): another size, not one aperture
    displaced.
    """
    moved: list[float | None] = []
    for first in (0, 2):
        apart = [ours[k] - theirs[k] for k in (first, first + 1)  # type: ignore[operator]
                 if ours[k] is not None and theirs[k] is not None]
        if len(apart) == 2 and abs(apart[0] - apart[1]) > tolerance:
            return None
        moved.append(sum(apart) / len(apart) if apart else None)
    return moved


def field_displaced(reference: Reference, frame: Image, frame_field: Any, factor: int, shift_mm: tuple[float, float]
                    ) -> str:
    """Say why two portal images whose field moved apart from their content contradict their beam axes; else ``""``.

    The fields' cores (``field.core_sides_mm``: without a detector line joined to them; a field either image cuts off
    is not compared) are compared side by side, in mm from each image's beam axis as its header states it
    (``_STATED_AXIS``); ``factor``: the frame's field-detection level is that many times coarser than ``frame``. Where
    the field-detection pixels leave a displacement possible, the sides are placed again to a fraction of a detector
    pixel (``field.core_sides_fine_mm``). On an axis where both sides are compared they must move alike (a size change
    is the scale check's, :func:`field_scale_mismatch`). Refused where, on either axis, their mean displacement is
    beyond ``FIELD_DISPLACED_MM`` and as far from ``shift_mm`` (the match's ``(dx, dy)``): the field neither stayed
    with the beam nor moved with the content.
    """
    if (reference.image.info.extra.get("beam_axis_source") not in _STATED_AXIS
            or frame.info.extra.get("beam_axis_source") not in _STATED_AXIS):
        return ""
    theirs = reference.field_core_sides_mm
    ours = core_sides_mm(frame_field, factor, frame)
    if theirs is None or ours is None or None in theirs or None in ours:
        # a field either image cuts off: its core's other sides are not the aperture's either (a turned field's core
        # is where its columns hold a quarter of the fullest one's pixels, which the cut changes: trial53 geometry-31,
        # a 127 mm panel under a field turned 144 deg, placed its left side 3.4 mm off)
        return ""
    pixel = max(reference.field_pixel_mm, max(frame.spacing_mm) * factor)
    moved = _sides_moved(ours, theirs, pixel + FIELD_DISPLACED_MM)
    if moved is None or not any(m is not None and abs(m) > FIELD_DISPLACED_PIXELS * pixel for m in moved):
        return ""  # within what the field-detection pixels resolve: no finer look (the usual portal pair)
    fine_theirs = reference.field_core_sides_fine_mm
    fine_ours = core_sides_fine_mm(frame_field, factor, frame)
    if fine_theirs is None or fine_ours is None:
        return ""
    moved = _sides_moved(fine_ours, fine_theirs, FIELD_DISPLACED_MM)
    if moved is None or not any(m is not None and abs(m) > FIELD_DISPLACED_MM and abs(m - shift) > FIELD_DISPLACED_MM
                                for m, shift in zip(moved, shift_mm, strict=True)):
        return ""
    said = ", ".join(f"{m:+.1f} mm along {name}" for m, name in zip(moved, ("x", "y"), strict=True) if m is not None)
    return (f"the radiation field moved between the images, and not with their content: the frame's lies {said} from "
            f"where the reference's lies (each from its image's beam axis, as its header states it), the match "
            f"{shift_mm[0]:+.1f}, {shift_mm[1]:+.1f} mm; an aperture is fixed to the beam, so the patient's motion "
            "cannot move it, and a shift measured across it is not the patient's. One image's beam axis or scale is "
            "wrong (RTImagePosition (3002,0012), XRayImageReceptorTranslation (3002,000D), ImagePlanePixelSpacing "
            "(3002,0011)), its pixels are displaced (a damaged readout or export), the images show different "
            "apertures, or the match itself is wrong (structure the reference lacks, a stripe or an object, placed it): "
            "check both (portalign info); if the apertures differ on purpose, set allow_view_mismatch=True "
            "(--allow-view-mismatch)")


def _unknown_kind_hint(reference: Reference) -> str:
    """Return a hint for a reference of unknown kind (an array) in which a "field" was found: a DRR's body outline."""
    if reference.image.info.kind:
        return ""
    return (f"; {reference.image.info.source} is of unknown kind (an array): if it is a DRR, its body outline was "
            "taken for a radiation field: say so with kind='drr' (--reference-kind drr)")


def field_beyond_jaws(frame: Image, box_mm: list[float], level_spacing: tuple[float, float],
                      field: Any = None) -> str:
    """Say why a frame whose field is larger than its own planned jaws on both axes has a wrong scale; ``""`` if not.

    The jaws (``info.extra["planned_field_corners_mm"]``: mm at the isocentre, turned by the collimator, in image
    axes) bound the field, whatever shapes it inside them (an MLC, a cone): a field beyond them by
    ``FIELD_SCALE_SHARE`` and ``FIELD_SCALE_PIXELS`` on both axes was measured at too large a scale. A field smaller
    than its jaws is an MLC's or a cone's, or a scale too small: not told apart, not refused.

    The field's box ``box_mm`` (mm from the beam axis, extreme pixel centres of the detection level of
    ``level_spacing``) is compared with the jaws' box; where it lies beyond them and ``field`` (the frame's
    :class:`~portalign.field.FieldEstimate`) has a mask, its core (``field.core_extent_px``) is compared with the
    jaws' core by the same rule (:func:`_jaws_core_extent_mm`), and must lie beyond them too: a hot
    detector line joined to the field is not its extent (a frame through 80 x 80 mm jaws with a hot row and a hot
    column running 90 and 75 mm beyond them measured 140 x 130 mm by its box and was refused as a wrong scale).
    """
    corners = frame.info.extra["planned_field_corners_mm"]
    try:
        xs = [float(c[0]) for c in corners]
        ys = [float(c[1]) for c in corners]
    except (TypeError, ValueError, IndexError):
        return ""
    if len(xs) < 3 or not all(math.isfinite(v) for v in xs + ys):
        return ""
    jaw_width, jaw_height = max(xs) - min(xs), max(ys) - min(ys)
    width, height = _box_extent_mm(box_mm, level_spacing)
    pixel = max(level_spacing[0], level_spacing[1])
    if not _beyond_jaws(width, height, jaw_width, jaw_height, pixel):
        return ""
    # the box beyond the jaws (rare: a frame's field within its jaws makes no further call): is its core?
    core = None if field is None else core_extent_px(field)
    if core is not None:
        jaw_width, jaw_height = _jaws_core_extent_mm(tuple(zip(xs, ys, strict=True)))
        width, height = core[0] * level_spacing[1], core[1] * level_spacing[0]
        if not _beyond_jaws(width, height, jaw_width, jaw_height, pixel):
            return ""
    return (f"different scales: the frame's radiation field is {width:.1f} x {height:.1f} mm at the isocentre, larger "
            f"than its own planned jaws ({jaw_width:.1f} x {jaw_height:.1f} mm), which bound it: its RTImageSID "
            "(3002,0026), RadiationMachineSAD (3002,0022) or ImagePlanePixelSpacing (3002,0011) is wrong, or its "
            "ExposureSequence jaws are; a shift measured at a wrong scale is not the patient's. Check the header "
            "(portalign info); if it is right, set allow_view_mismatch=True (--allow-view-mismatch)")


def _beyond_jaws(width: float, height: float, jaw_width: float, jaw_height: float, pixel: float) -> bool:
    """Whether a field ``width`` x ``height`` (mm) lies beyond jaws ``jaw_width`` x ``jaw_height`` on both axes.

    By ``FIELD_SCALE_SHARE`` of the jaws and ``FIELD_SCALE_PIXELS`` field-detection pixels (``pixel`` mm) or more.
    """
    return all(jaws > 0 and ours - jaws >= max(FIELD_SCALE_SHARE * jaws, FIELD_SCALE_PIXELS * pixel)
               for ours, jaws in ((width, jaw_width), (height, jaw_height)))


#: Samples across the planned jaws' larger extent when their core is measured (:func:`_jaws_core_extent_mm`).
_JAWS_CORE_SAMPLES = 400


@functools.lru_cache(maxsize=64)
def _jaws_core_extent_mm(corners: tuple[tuple[float, float], ...]) -> tuple[float, float]:
    """Width and height (mm) of the core of the convex polygon ``corners`` (the planned jaws, turned, in image axes).

    The rule of ``field.core_extent_px`` (``field.mask_core_box``) on a grid ``_JAWS_CORE_SAMPLES`` samples across:
    the columns and rows holding at least ``field.CORE_LINE_SHARE`` of the fullest one's samples inside. Jaws not
    turned: their width and height; jaws turned by 45 degrees: 0.75 of their box's, as a field detected through them
    measures. Kept per jaw setting.
    """
    pts = np.asarray(corners, dtype=np.float64)
    x0, x1, y0, y1 = pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()
    step = max(x1 - x0, y1 - y0) / _JAWS_CORE_SAMPLES
    if step <= 0:
        return 0.0, 0.0
    xx = np.arange(x0 + step / 2, x1, step)[None, :]
    yy = np.arange(y0 + step / 2, y1, step)[:, None]
    # inside a convex polygon: on one side of every edge (either winding)
    sides = []
    for (ax, ay), (bx, by) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        sides.append((bx - ax) * (yy - ay) - (by - ay) * (xx - ax))
    inside = np.logical_and.reduce([s >= 0 for s in sides]) | np.logical_and.reduce([s <= 0 for s in sides])
    box = mask_core_box(inside)
    if box is None:
        return 0.0, 0.0
    return float((box[1] - box[0] + 1) * step), float((box[3] - box[2] + 1) * step)


def field_moved_mm(reference: Reference, plan: FramePlan, frame: Image, field: Any) -> float | None:
    """How far (mm) the frame's detected field's centroid lies from the reference's; None unless both have one.

    Both from their images' beam axes: a field that stays with the beam lies where it lay (a real set-up: the
    aperture is fixed to the beam, the patient moves).
    """
    if not field.detected or not reference.field.detected:
        return None
    ref_centre = reference.field_centre_mm
    frame_centre = field_centre_mm(field, 1 << plan.field_level, frame)
    if ref_centre is None or frame_centre is None:
        return None
    return math.hypot(frame_centre[0] - ref_centre[0], frame_centre[1] - ref_centre[1])


#: Against a DRR, where the edges' optimum is reported and MI's only checks it, the two may lie this much further apart
#: than ``agreement_mm``: a kV DRR's intensities and an MV frame's do not correspond one to one (bone takes a larger
#: share of a kV beam's attenuation), and over weak anatomy MI's optimum lies off the edges' on sound pairs. An
#: independent trial (trial56: 8 of its 98 pairs from the TotalSegmentator trunk CT, lateral and oblique gantries) and
#: five held-out seeds of that CT (5 pairs) were refused at gaps of 1.51-1.88 mm with the edges 0.03-0.41 mm from the
#: truth and MI 1.4-2.1 mm; the thorax CT's 240 held-out pairs had none. The gap still enters the stated uncertainty
#: whole (``_quality.shift_uncertainty_mm``: g / 2 on each axis); where MI's optimum is reported (a weak edge match,
#: two portal images) the tolerance is ``agreement_mm`` alone.
DRR_MI_ALLOWANCE_MM = 1.0


#: A reference whose edge features correlate with themselves displaced by ``DISTINCT_MM`` or more (within the search
#: range) at this share of their zero-displacement correlation or more repeats itself (an MLC picket fence: 0.8-0.9;
#: held-out anatomy stays below 0.4): each frame's optimum is then compared with the optima one period away on either
#: side. A new user's trial found a picket-fence image moved 4 rows and 6 columns ok at 15 mm (one picket) off: the
#: global search's coarse level had blurred the pickets, and no candidate lay near the truth.
PERIODIC_MIN_RATIO = 0.5
#: Most periods compared (the strongest self-correlation peaks, one of each +-pair: a lattice has two).
PERIODIC_MAX_PERIODS = 2


def reference_periods(backend: Backend, level: Any, max_shift_mm: float) -> list[tuple[float, float, float]]:
    """Return ``(dx_mm, dy_mm, ratio)`` of the displacements at which the reference's edges repeat on ``level``.

    The circular autocorrelation (FFT) of the doubled-angle edge features ``z`` on the level's grid, normalised by
    its value at zero displacement: ``Re sum z(x + p) conj z(x) / sum |z|^2``. Its local maxima at least ``DISTINCT_MM``
    and at most ``max_shift_mm`` (per axis) from zero, at ``PERIODIC_MIN_RATIO`` or more, strongest first, one of each
    symmetric pair, at most ``PERIODIC_MAX_PERIODS``. Computed once per level and kept on it.
    """
    found = level.ref_periods
    if found is None:
        from scipy import fft as sp_fft
        from scipy import ndimage

        re = np.asarray(backend.to_host(level.ref_re), dtype=np.float64)
        im = np.asarray(backend.to_host(level.ref_im), dtype=np.float64)
        z = np.where(re == INVALID_FEATURE, 0.0, re + 1j * im)
        workers = backend.frame_threads()  # scipy's pocketfft: the same numbers on any worker count
        power = np.abs(sp_fft.fft2(z, workers=workers)) ** 2
        auto = sp_fft.ifft2(power, workers=workers).real
        zero = auto[0, 0]
        found = []
        if zero > 0:
            auto = np.fft.fftshift(auto / zero)
            rows, cols = auto.shape
            sy, sx = level.spacing
            y_all = (np.arange(rows) - rows // 2) * sy
            x_all = (np.arange(cols) - cols // 2) * sx
            # the displacements within the search range with x >= 0 (one of each +-pair) form a window of the grid:
            # the tests below run on it alone, and the 3 x 3 maximum filter on it widened by a pixel (cut at the
            # grid's own border, where the filter's reflection is the whole grid's): the same peaks, in the same order
            r_in = np.nonzero(np.abs(y_all) <= max_shift_mm)[0]
            c_in = np.nonzero((x_all >= 0) & (np.abs(x_all) <= max_shift_mm))[0]
            order: list = []  # a search range under a pixel: no displacement to test
            if r_in.size and c_in.size:
                r0, r1, c0, c1 = int(r_in[0]), int(r_in[-1]) + 1, int(c_in[0]), int(c_in[-1]) + 1
                wr0, wr1, wc0, wc1 = max(r0 - 1, 0), min(r1 + 1, rows), max(c0 - 1, 0), min(c1 + 1, cols)
                local = ndimage.maximum_filter(auto[wr0:wr1, wc0:wc1], size=3)[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0]
                win = auto[r0:r1, c0:c1]
                yy = y_all[r0:r1, None]
                xx = x_all[None, c0:c1]
                inside = (np.hypot(xx, yy) >= DISTINCT_MM) & ((xx > 0) | ((xx == 0) & (yy > 0)))
                peaks = inside & (win >= PERIODIC_MIN_RATIO) & (win == local)
                order = sorted(zip(*np.nonzero(peaks), strict=True), key=lambda rc: -win[rc])
            for r, c in order:
                x, y = float(xx[0, c]), float(yy[r, 0])
                if all(math.hypot(x - a, y - b) > DISTINCT_MM for a, b, _ in found):
                    found.append((x, y, float(win[r, c])))
                if len(found) == PERIODIC_MAX_PERIODS:
                    break
        level.ref_periods = found
    return found


def _periodic_check(backend: Backend, plan: FramePlan, pose: np.ndarray, periods: list, r_eff: float,
                    opts: Any) -> dict[str, Any]:
    """Refine the edge optima one period either side of ``pose`` on the finest working level; the best against it.

    Returns the periods, the best rival's pose (mm) and its edge score over ``pose``'s (both evaluated there), with
    the rotation held at ``pose``'s. A rival that walks back within ``DISTINCT_MM`` of ``pose`` is no rival.
    """
    level = plan.levels[plan.refine_levels[-1]]
    pose = np.asarray(pose, dtype=np.float64)
    own = edge_score(backend, plan, level, pose)
    best, runner, period = 0.0, None, None
    for px, py, _ in periods:
        for sign in (1.0, -1.0):
            start = np.array([pose[0] + sign * px, pose[1] + sign * py, pose[2]])
            if max(abs(start[0]), abs(start[1])) > opts.max_shift_mm:
                continue
            other, _ = newton(backend, plan, level, start, "edge", PERIODIC_ITERATIONS, r_eff, False, opts,
                              tolerance=0.1)
            if math.hypot(other[0] - pose[0], other[1] - pose[1]) <= DISTINCT_MM:
                continue
            score = edge_score(backend, plan, level, other)
            ratio = score / own if own > 0 else math.inf
            if ratio > best:
                best, runner, period = ratio, other, (px, py)
    return {"periods_mm": [[p[0], p[1]] for p in periods], "self_correlation": [p[2] for p in periods],
            "ratio": best, "runner_up_mm": None if runner is None else [float(runner[0]), float(runner[1])],
            "period_mm": period}


#: Newton iterations each rival one period away gets.
PERIODIC_ITERATIONS = 3


def alike_images(reference: ImageInfo, frame: ImageInfo) -> bool:
    """Whether two images share their intensities: both portal images (kind ``"portal"``) of one kind of beam.

    Then ``auto`` reports the mutual-information optimum (``_search_program.SETTINGS_ALIKE`` gives the measurements).
    The beam is :func:`portalign.image.beam_kind`'s (a KVP of 1000 or more is an MV beam, Varian writing 6 MV as 6000;
    without a KVP an RT Image Label naming kV): a kV image and an MV one are not alike; an energy not recorded is not
    held against them. An unknown kind (an array without ``kind``) is not a portal image.
    """
    if reference.kind != "portal" or frame.kind != "portal":
        return False
    beams = [beam_kind(info) for info in (reference, frame)]  # "kV image (...)", "portal image (6 MV)", "portal image"
    classes = {"kV" if kind.startswith("kV") else "MV" for kind in beams if kind.startswith("kV") or "MV" in kind}
    return len(classes) <= 1  # one kind of beam, or an energy not recorded


def _copy_levels_in(backend: Backend, plan: FramePlan, host: FramePlan, used: list[int]) -> None:
    """Copy what the search reads of each used level from the host twin to the device lane (queued copies)."""
    for index in used:
        level, made = plan.levels[index], host.levels[index]
        level.stats[:] = made.stats
        level.usable, level.range, level.eps = made.usable, made.range, made.eps
        pad_pixel_list(backend, level, made.pixel_rows, made.pixel_cols)  # the padding goes in with the list
        count = level.listed
        for name in ("feat_re", "feat_im", "bins"):
            backend.copy_in(getattr(level, name), getattr(made, name))
        if count > 0:
            backend.copy_in(level.pixel_rows[:count], made.pixel_rows[:count])
            backend.copy_in(level.pixel_cols[:count], made.pixel_cols[:count])


def _rigidity_check(backend: Backend, plan: FramePlan, level: Level, pose: Any, r_eff: float, opts: Any,
                    metric: str, working_spacing_mm: float, depths: Any = None) -> dict:
    """Return the spatial halves' check of a match (``details["rigidity_check"]``) and keep it on ``plan``.

    ``_refine.spatial_halves`` on ``level`` (the finest working level) from ``pose``, with ``metric`` (the reported
    optimum's), and the field's inner and outer halves where ``depths`` are given (``_frame.field_depths``: two
    portal images with a field); its term of the shift's uncertainty is ``_quality.rigidity_mm``'s. The lane's later
    frames whose shift lies within ``RIGIDITY_RECHECK_MM`` of this one's share the record (``measured_here`` false;
    ``_register``).
    """
    dx, dy = float(pose[0]), float(pose[1])
    rows_mm, cols_mm, depth_mm = spatial_halves(backend, plan, level, pose, r_eff, opts, metric, depths)
    # the halves' optima's distances (mm), upper against lower, left against right, and the field's inner against its
    # outer half (null: not measured, no field in both images); the term they give the shift's uncertainty (mm, each
    # axis); the shift (mm) of the frame they were measured on
    record = {"rows_mm": rows_mm, "cols_mm": cols_mm, "depth_mm": depth_mm,
              "term_mm": rigidity_mm(rows_mm, cols_mm, working_spacing_mm, depth_mm),
              "shift_mm": [dx, dy], "measured_here": True}
    plan.rigidity = (dx, dy, {**record, "measured_here": False})
    return record


def _register(reference: Reference, plan: FramePlan, frame: Image, start: float,
              options: RegistrationOptions | None = None, denoised: dict | None = None,
              scale_check: bool = True, smooth: bool | None = None) -> RegistrationResult:
    backend, opts = reference.backend, (reference.options if options is None else options)
    k = backend.kernels
    levels = plan.levels
    # 1. pyramid -------------------------------------------------------------------------------
    level0 = levels[0]
    inputs = plan.program_inputs  # indexed after a membership test, not .get: per-frame code keeps its calls few
    front = inputs["pyramid"] if backend.compiled_program and "pyramid" in inputs else None
    if front is None and backend.compiled_program and 1 <= plan.pyramid_depth < PYRAMID_SLOTS:
        front = plan.program_inputs["pyramid"] = _pyramid_inputs(plan)
    # a device lane makes the frame's levels ready on its host twin with the CPU's compiled calls (the frame is
    # there already), then copies what the search reads to the device: two calls and a few copies instead of
    # ~30 launches and a dozen reads
    host = _host_twin(backend, plan, frame) if front is None and backend.host_level_stage else None
    plan.host_stage = host is not None
    plan.host_candidates = None
    if host is not None:
        inputs = host.program_inputs
        front = inputs["pyramid"] if "pyramid" in inputs else None
        if front is None:
            front = inputs["pyramid"] = _pyramid_inputs(host)
    if front is not None:
        # the CPU: the pyramid and the frame's value check in one compiled call, on the frame's own pixels
        buffers, row_flags, row_means, col_means, row_lines, col_lines = front
        if host is None:
            finite, varies = k.frame_pyramid(frame.pixels, buffers, plan.pyramid_depth, row_flags, row_means,
                                             col_means)
        else:
            with _host_scope(host):
                finite, varies = _host_backend().kernels.frame_pyramid(frame.pixels, buffers, plan.pyramid_depth,
                                                                       row_flags, row_means, col_means)
        if not finite or not varies:
            check_frame_pixels(frame)  # raises, naming the frame and what is wrong with its pixels
        (levels if host is None else host.levels)[0].image = frame.pixels
        # the detector's own lines screened (their means, from the pyramid's pass: ``field.line_screen``): a sound
        # panel leaves nothing. Lines scattered over a fine panel leave every reduced line alike: before, a fifth of an
        # open-field frame's rows hot was matched 0.78 mm off, ok, with no word, and 8 % of its rows dead were used
        # unnamed (``python -m bench.dead_lines --frame``); a few dead rows across a field were not seen at all
        n_rows, n_cols, rows_alternate, cols_alternate, striped = line_candidates(
            row_means, col_means, *LINE_SCREEN, DEAD_LINE_MAX_SHARE, STRONG_LINE_CONTRAST, row_lines, col_lines)
        lines = (screened(row_lines[:n_rows], col_lines[:n_cols], rows_alternate, cols_alternate)
                 if striped and frame.info.kind != "drr" else None)
    else:
        check_frame_pixels(frame)
        level0.image = backend.upload(frame.pixels, level0.image, plan.staging)
        for index in range(1, plan.pyramid_depth + 1):
            k.downsample2(levels[index - 1].image, levels[index].image)
        lines = line_screen(*line_means(frame.pixels)) if frame.info.kind != "drr" else None  # (the same screen)
    # the field-detection level on the host (the CPU's arrays are there already)
    small = ((levels if host is None else host.levels)[plan.field_level].image if front is not None
             else backend.to_host(levels[plan.field_level].image))
    if wants_field(opts, frame):
        field = find_field(frame, small, candidates=lines)
    elif opts.field == "none" and frame.info.kind != "drr":  # no field looked for: its dead lines still are
        field = dead_lines_only(frame, small, candidates=lines)
    else:
        field = NO_FIELD
    used = plan.used_levels
    # the CPU's level stage in one compiled call (below)
    compiled = host is None and front is not None and len(used) <= LEVEL_SLOTS and (
        used[0] != 0 or frame.pixels.flags.writeable)
    band = None  # the frame's penumbra, measured by the level stage: (level image, field mask, ring mm)
    if field.detected and not reference.field.detected and field.box_px is not None:
        # the frame's own field against a DRR (no field to measure on the reference): its size and its penumbra
        # choose the plan; a frame measures the same again on the plan it is sent to, so it is sent once
        field_mm = plan.field_mm
        sy, sx = levels[plan.field_level].spacing
        if field_mm is None:
            share = SMALL_FIELD_SHARE * plan.extent_mm
            limit = share if share < SMALL_FIELD_MM else SMALL_FIELD_MM  # min(), written out: per-frame code
            c0, c1, r0, r1 = field.box_px
            # the field's bounding box bounds its inscribed disc: only a small box pays for the distance transform
            if (c1 - c0 + 1) * sx < limit or (r1 - r0 + 1) * sy < limit:
                size = field_size_mm(field, (sy, sx))
                if size is not None and size < limit:
                    field_mm = size
        # (a smoothed frame's registration stays on the plan its frame as taken chose; a compact field under
        # BAND_MIN_FIELD_MM keeps the band sized for it: its interior, a cone's or a BB's, is what it has to match on,
        # and its penumbra measure would read the interior's anatomy; a long narrow one, an MLC strip, has its own
        # penumbra measured and cut out whole, its length left to match on: ``_elongated``)
        band_mm = plan.band_mm
        rings = 0  # the rings a penumbra must show in (0: the band is not measured)
        cap = None  # a small field's band is capped to keep its interior (MAX_MARGIN_FRACTION of its size)
        if denoised is None and (field_mm is None or field_mm >= BAND_MIN_FIELD_MM):
            rings, cap = PENUMBRA_MIN_RINGS, field_mm
        elif denoised is None and _elongated(field, field_mm, (sy, sx)):
            rings = 1
        if rings and compiled and field_mm == plan.field_mm and not (field.dead_rows or field.dead_cols):
            # measured beside the frame's levels (``_frame.frame_levels``' band: on two threads, in the level stage's
            # task that would otherwise wait for the global search's surfaces); a band that asks for another plan
            # sends the frame there after its levels (below), once per geometry
            band = (small, field.mask, sy if sy < sx else sx)
        elif rings:
            band_mm = _capped_band(_frame_band_mm(reference, small, field, (sy, sx), rings), cap)
        if field_mm != plan.field_mm or band_mm != plan.band_mm:
            return _Replan(field_mm, band_mm)  # type: ignore[return-value]
    measured = None
    plan.surfaces_ready = False  # only this frame's level stage may say the global search's surfaces are made
    # (a read-only frame, e.g. a service's buffer, cannot share the compiled stage's tuple type with the plan's
    # writable levels: when level 0 is used, its levels are made ready one call each)
    if host is not None:
        # a device lane: the same compiled call on the host twin, then the levels' buffers copied in
        with _host_scope(host):
            measured = frame_levels(_host_backend(), host, used, field, opts.bins, bool(plan.polish_levels),
                                    NOISE_SAMPLES, opts.estimate_rotation)
        _copy_levels_in(backend, plan, host, used)
    elif compiled:
        # the CPU: every used level and the frame's statistics in one compiled call
        measured = frame_levels(backend, plan, used, field, opts.bins, bool(plan.polish_levels), NOISE_SAMPLES,
                                opts.estimate_rotation, band)
        if band is not None:
            band_mm = _capped_band(_band_of_extent(reference, measured[7], band[2], rings), cap)
            if band_mm != plan.band_mm:
                return _Replan(field_mm, band_mm)  # type: ignore[return-value]
    else:
        for index in used:
            frame_mask(backend, levels[index], field, plan.field_level, opts.bins)
    view_reason, view_record, warnings = compare_views(reference.image.info, frame.info, opts)
    if field.note:
        warnings.append(field.note)
    if FIRST_OF_FRAMES in frame.info.extra:  # rare: a cine file given whole
        held = frame.info.extra[FIRST_OF_FRAMES]
        warnings.append(f"{frame.info.source} holds {held} frames; only frame 0 was registered: read another with "
                        f"frame=K (0 to {held - 1}), or every one with read_rt_image_frames (FrameStream.push_cine, "
                        "register_batch)")
    ref_info = reference.image.info
    itself_reason = ""
    if (frame.info.sop_instance_uid != "" and frame.info.sop_instance_uid == ref_info.sop_instance_uid
            and frame.info.frame_index == ref_info.frame_index):
        # a new user's trial dropped a copy of the reference into a watched folder: matched with itself at no shift,
        # ok, and nothing said; then ok with a warning, which a loop gating on ok took as the patient in position (a
        # fuzz campaign): the measurement is right, and says nothing of the patient, so it is not ok
        # (a smoothed pass's frame is not the pixels as taken: the pass as taken judged them, and said so)
        same = denoised is None and (frame.pixels.shape == reference.image.pixels.shape
                                     and bool(np.array_equal(frame.pixels, reference.image.pixels)))
        if same:
            itself_reason = (f"the frame is the reference image itself (the same SOP Instance UID, "
                             f"{frame.info.sop_instance_uid}, and the same pixels): its shift from itself says nothing "
                             "of the patient; register a frame acquired at this treatment")
        else:  # a trial's two pylinac images of two gantry angles shared one UID (a smoothed pass: the pass as taken
            # found them different, or it would have refused, not smoothed)
            warnings.append(f"the frame and the reference share one SOP Instance UID ({frame.info.sop_instance_uid}) "
                            "but their pixels differ: a UID reused for two images (an export or anonymisation "
                            "fault); a REG object or a journal cannot tell them apart")
    # a "field" likely to be an object in an open beam: refused unless field='detect' says to use it anyway
    doubt_reason = ""
    if reference.field.doubt or field.doubt:  # rare: no per-frame cost otherwise
        doubts = [d for d in (reference.field.doubt, field.doubt) if d]
        if len(doubts) == 2 and doubts[0].endswith(FIELD_DOUBT_ADVICE):  # the advice once, after both numbers
            doubts[0] = doubts[0][:-len(FIELD_DOUBT_ADVICE)].rstrip("; ")
        if opts.field == "detect":
            warnings.extend(doubts)
        else:
            doubt_reason = "; ".join(doubts)
    if field.striped:  # rare: too many dead lines to leave out, whatever field says
        doubt_reason = "; ".join(r for r in (f"{frame.info.source}: {field.striped}; acquire the frame again",
                                             doubt_reason) if r)
    # the reference shows a radiation field and the frame, looked for one, shows none, and its header does not say that
    # the planned field covers it (nor is it a doubted object): the frame's whole image, its field edge and outside
    # included, meets the reference's field (a weak match of that is refused below: FIELD_MISSING_BELOW_EDGE). A region
    # found and ruled out (off the axis, darker than around it) is no field either: a zero block at a 20 mm field's
    # image edge hid it at 1 % noise, and the whole frame matched 11 mm off, ok, at an edge correlation of 0.07
    # (a "field" found that is only a band, a stripe, counts as none: BAND_NOTE, refused whatever the score)
    band = field.note != "" and field.note.startswith(_BAND_NOTE)  # no call for a frame without a note
    field_missing = (reference.field.detected and not field.detected and not field.doubt
                     and (not field.note or not field.note.startswith(_COVERS_NOTE)) and wants_field(opts, frame))
    # the detector lines themselves (where the detector's pixels confirmed them: always for a frame with a field
    # looked for), not the field-detection level's lines they fall in
    frame_lines = reference_lines = None
    if field.dead_rows or field.dead_cols:
        # a smoothed frame's lines are its raw ones (kept raw, they would stand out against smoothed neighbours along
        # their whole length): the record made of the frame as taken, where it was
        raw = denoised.get(RAW_FRAME_LINES) if denoised is not None else None
        frame_lines = raw if raw is not None else faulty_lines(frame.pixels,
                                                                 *dead_detector_lines(field, 2 ** plan.field_level))
        warnings.append(_lines_warning("", frame_lines))
    reference_field = reference.field
    if reference_field.dead_rows or reference_field.dead_cols:  # rare: the reference's own, found when prepared
        # (a smoothed twin's lines are read on the reference as taken: see the frame's above)
        taken_reference = reference if reference._smoothed_of is None else reference._smoothed_of
        reference_lines = faulty_lines(taken_reference.image.pixels,
                                       *dead_detector_lines(reference_field, reference._field_factor))
        warnings.append(_lines_warning("the reference's ", reference_lines, reference.image.info.kind == "drr"))
    frame_stats: dict = {}
    quality = assess_frame(backend, frame, plan, field, frame_stats, None if measured is None else (measured[0], measured[1]))
    # the noisy frame, smoothed, and still so (TOO_LITTLE_STRUCTURE: a tuple of beginnings)
    if denoised is not None and quality.startswith(TOO_LITTLE_STRUCTURE):
        quality += (f", after its pixels were smoothed by {denoised['sigma_mm']:g} mm (the frame as taken: "
                    f"{denoised['contrast_to_noise']:.1f}x the noise at its finest level)")
    if quality and field.detected and reference.field.detected and quality.startswith(TOO_LITTLE_USABLE):  # rare
        quality = _field_shrunk(reference, field, levels[plan.field_level].spacing) + quality
    if not quality and (field.dead_rows or field.dead_cols) and field.detected:  # rare: dead lines in a field
        quality = _dead_lines_cut_small_field(field, levels[plan.field_level].spacing, 2 ** plan.field_level)
    r_eff, centroid_mm = rotation_radius(backend, levels[plan.refine_levels[0]],
                                         None if measured is None else (measured[2], measured[3], measured[6]))
    # a noisy frame: registered again from its smoothed pixels (DENOISE_*; no call for a frame that is not noisy)
    # (a frame whose contrast is too low for its noise is smoothed too: the smoothing is what such a frame needs)
    low_contrast = quality != "" and quality.startswith(TOO_LITTLE_STRUCTURE)
    # (not a striped frame: smoothing hides its stripes, which the match would still measure)
    # (``smooth``: the mirror check's comparison asks for a frame smoothed, or not, as a flipped copy was)
    if (denoised is None and not itself_reason and (not quality or low_contrast) and not field.striped
            and "contrast_to_noise" in frame_stats
            and (smooth if smooth is not None else (
                DENOISE and r_eff >= DENOISE_MIN_RADIUS_MM and frame_stats["contrast_to_noise"] < DENOISE_BELOW_CNR
                and reference_contrast_to_noise(levels[plan.refine_levels[-1]])
                >= DENOISE_NOISIER * frame_stats["contrast_to_noise"]))):
        # a field's interior (the field less its band, on the field-detection level: in its coarse pixels, whole
        # ones, the band's reach rounded up) smoothed over itself
        interior = None
        if field.detected and field.mask is not None:
            finest = levels[plan.refine_levels[-1]]
            reach = math.ceil((finest.erosion_px - 1) * min(finest.spacing) / min(levels[plan.field_level].spacing))
            # (``_reference._erode`` is this, a call more: the denoised frame's call count is held)
            interior = np.empty(field.mask.shape, dtype=np.uint8)
            erode_box(np.ascontiguousarray(field.mask, dtype=np.uint8), reach, np.empty_like(interior), interior)
        smoothed = denoised_frame(frame, field, 2 ** plan.field_level, DENOISE_SIGMA_MM, interior,
                                  2 ** plan.field_level)
        return _register(reference, plan, smoothed, start, options,
                         {"sigma_mm": DENOISE_SIGMA_MM, "contrast_to_noise": frame_stats["contrast_to_noise"],
                          "reference_smoothed": False, RAW_FRAME_LINES: frame_lines}, scale_check)
    rotate = opts.estimate_rotation
    if rotate and r_eff < MIN_ROTATION_RADIUS_MM:
        rotate = False
        warnings.append(
            f"usable region too small to estimate rotation (RMS radius {r_eff:.1f} mm < "
            f"{MIN_ROTATION_RADIUS_MM:g} mm): rotation not estimated (translation only: no turn is reported, and the "
            "shift's uncertainty allows for one)"
        )
    # a clean frame carries detail finer than the working levels: its polishing levels are made ready too
    polish = bool(plan.polish_levels) and not quality and denoised is None and is_clean(
        backend, plan, field, frame_stats, None if measured is None else (measured[4], measured[5]))
    if polish:
        if host is not None:  # the polishing levels are made ready on the device: the frame goes there now
            _upload_finer(backend, plan, frame, max(plan.polish_levels))
        for index in plan.polish_levels:
            frame_mask(backend, levels[index], field, plan.field_level, opts.bins)
            if levels[index].usable < MIN_USABLE_PIXELS:
                break
    # 2-3. global search, ranking, refinement and cross-checks: one compiled call on the CPU --------
    if host is not None and host.coarse is not plan.coarse:
        # the global search on the host twin too: the coarse level's features are there, and an FFT of this size is
        # host work (on a device a dozen small launches and a read; the compiled CPU call, one thread, ~0.3 ms)
        with _host_scope(host):
            plan.host_candidates = global_search(_host_backend(), host, host.levels[plan.coarse.level], opts.candidates,
                                                 rotate)
    search = search_compiled if backend.compiled_program else search_eager
    # two portal images share their intensities: MI reports, except on a small usable region, where the beam's own
    # profile (which stays with the machine) fills the intensities and the edges of what moved place it better
    # (the kinds compared here first: a frame against a DRR makes no call)
    ref_info, frame_info = reference.image.info, frame.info
    portal_pair = ref_info.kind == frame_info.kind == "portal" and alike_images(ref_info, frame_info)
    # two images of unknown kind (arrays) may share their intensities too: the intensity fit is tried where their
    # edges agree as two portal images' do, and kept only where their intensities then correlate (INTENSITY_*)
    unknown_pair = ref_info.kind == frame_info.kind == ""
    # where the field itself moved between the images (a window of one image moved over it, a panel offset not in
    # the headers) the beam's own profile moved with the content, and the intensities place a small field too
    moved = field_moved_mm(reference, plan, frame, field) if portal_pair or unknown_pair else None
    # ...and where the frame's small field was found but the reference's was not (a cone a few mm across), whether the
    # reference shows that field all the same: its aperture's edges and penumbra are then in what is matched (rare:
    # no call otherwise)
    unseen_field = (_reference_shows_field(reference.image, frame, field, 1 << plan.field_level)
                    if (portal_pair or unknown_pair) and field.detected and not reference.field.detected
                    and plan.field_mm is not None else None)
    # ...and where neither image's field was found, whether both show one shielded region (a field larger than the
    # panel, its edge crossing it): its edge, fixed to the beam, is then matched as anatomy (rare: no call otherwise)
    shielded = (_shared_shielding(reference, frame, small, 1 << plan.field_level)
                if portal_pair and not field.detected and not reference.field.detected else None)
    small_field = r_eff < ALIKE_MIN_RADIUS_MM and moved is not None
    alike_small = small_field and moved >= FIELD_MOVED_MM  # MI where the edges match weakly (SETTINGS_ALIKE_SMALL)
    alike = portal_pair and (r_eff >= ALIKE_MIN_RADIUS_MM or alike_small)
    # ...but where a small field stayed put the beam's profile, fixed to the beam, fills its intensities: edges only
    fixed_small = small_field and not alike_small
    # a smoothed frame: its precision is checked whatever its score, on halves its smoothing does not couple
    split_block = 0
    if denoised is not None:
        finest_spacing = levels[plan.refine_levels[-1]].spacing
        split_block = max(2, math.ceil(3.0 * denoised["sigma_mm"] / min(finest_spacing[0], finest_spacing[1])))
    # (the mirror check's copies, ``scale_check`` False, skip the split-half precision check: the check reads their edge
    # scores alone, and the halves' two extra ascents made a copy cost 1.5x a frame, a third of a one-shot registration)
    found = search(backend, plan, opts, rotate, r_eff, scale_check and not quality, polish, alike, alike_small,
                   split_block)
    if found.no_match:
        quality = quality or "no match: the global search found no optimum"
    searched_turns = rotate  # the global search's candidates carry a rotation only where it searched them
    rotate = found.rotate
    # too few usable pixels to search at all: nothing was measured (the reason says why), None, never a number
    finest_level = levels[plan.refine_levels[-1]]
    shift_measured = (levels[plan.coarse.level].usable >= MIN_MEASURED_PIXELS
                      and finest_level.usable >= MIN_MEASURED_PIXELS)  # no min(): a Python call
    lever_warning = ""
    if found.rotation_unsupported and shift_measured:
        lever_warning = (f"the image's structure does not constrain rotation (lever arm "
                         f"{found.rotation_support_mm:.1f} mm < {MIN_ROTATION_SUPPORT_MM:g} mm): rotation not "
                         "estimated (translation only)")
        warnings.append(lever_warning)
    pose, final_edge, ambiguity, mi_gap, spread = found.pose, found.final_edge, found.ambiguity, found.mi_gap, found.spread
    fine = None
    follow_mi = found.mi_final and alike  # two portal images' MI optimum, followed down the finer levels
    if (FINE_POLISH and opts.fine_polish and not quality and not found.no_match and shift_measured
            and found.final_edge >= FINE_POLISH_MIN_EDGE
            and (follow_mi or (INTENSITY_SMALL and (portal_pair or unknown_pair) and not fixed_small))):
        fit_level = _intensity_fit_level(plan, opts)  # (asked here: no call for a frame that cannot be polished)
        if follow_mi or fit_level is not None:
            pose, fine = _fine_polish(backend, plan, frame, found, field, r_eff, opts, host is not None and not polish,
                                      follow_mi, fit_level, reference.ensure_level_filled)
    runner_up = found.runner_up
    periodic = None
    if not quality and not found.no_match and shift_measured:
        working = levels[plan.refine_levels[-1]]
        periods = working.ref_periods  # found once per level (no call per frame once known)
        if periods is None:
            periods = reference_periods(backend, working, opts.max_shift_mm)
        if periods:  # a reference that repeats itself (pickets, leaves): its optimum one period away is tried too
            periodic = _periodic_check(backend, plan, pose, periods, r_eff, opts)
            if periodic["ratio"] > ambiguity:
                ambiguity, runner_up = periodic["ratio"], np.asarray(periodic["runner_up_mm"])
    # the quadratic model's peak can overshoot a perfect match by a hair: a correlation is at most 1
    final_edge = 1.0 if final_edge > 1.0 else final_edge  # min(final_edge, 1.0), NaN kept
    details: dict = {
        "levels": found.levels,
        # a search without rotation holds it at 0: not a measured angle (null)
        "candidates": [{"dx_mm": c[0], "dy_mm": c[1], "rotation_deg": c[2] * _DEGREES if searched_turns else None,
                        "score": c[3]}
                       for c in found.ranked],
    }
    if found.rotation_support_mm is not None:
        details["rotation_support_mm"] = found.rotation_support_mm
    if found.mi_pose is not None:
        # (dx mm, dy mm, rotation deg): the cross-check's 2-D stencil holds the rotation, which it does not estimate
        # (null); the MI optimum that auto reports on a weak edge match is refined in full, its rotation with it
        mi_rotation = float(found.mi_pose[2]) * _DEGREES if found.mi_final and found.mi_rotated else None
        details["mi_check_mm"] = [float(found.mi_pose[0]), float(found.mi_pose[1]), mi_rotation]
    # which optimum the result reports: auto reports the MI one on a weak (noise-dominated) edge match
    details["final_metric"] = "mi" if found.mi_final or opts.method == "mi" else "edge"
    # where auto reports the MI optimum: normalised MI - 1 at the edge optimum its ascent began from (the score is
    # the same at its end)
    details["mi_at_edge_optimum"] = found.mi_at_edge
    details["fine_polish"] = fine
    details["mirror_check"] = None  # set by register_frame when the check runs
    # why auto reported the MI optimum: two portal images share their intensities; a weak edge match is noise
    details["final_metric_why"] = (("weak edge match" if found.final_edge < WEAK_EDGE_SCORE else "portal reference")
                                   if found.mi_final else None)
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
    # how far the final edge correlation stands above chance, for the pixels it was measured on
    matched = int(levels[found.levels[-1]["level"] if found.levels else plan.refine_levels[0]].usable)
    significance = float(final_edge) * (matched / 2.0) ** 0.5  # (no call)
    # a different view, no overlap at all, or an unusable frame rule the match out before its score does
    # a doubted "field" comes before the quality verdicts about it ("too little structure inside the field")
    # images with no anatomy in common: the optimum found is not a measurement (null, like an empty frame's)
    apart = "" if view_reason else common_region(reference.image, frame, box_mm, plan.view_boxes)
    if apart and lever_warning:  # nothing in common was measured: a lever arm over it says nothing
        warnings.remove(lever_warning)
    # two portal images' fields (fixed to the beam: one aperture) of different sizes at the isocentre: one image's scale
    # is wrong, or the apertures differ (rare: no call unless both images have a field)
    scale_reason = ""
    if not view_reason and not apart and box_mm is not None and (portal_pair or unknown_pair) and reference.field.detected:
        scale_reason = field_scale_mismatch(reference, box_mm, levels[plan.field_level].spacing, field)
    elif not view_reason and not apart and box_mm is not None and "planned_field_corners_mm" in frame.info.extra:
        # (a DRR's reference has no field: the frame's own jaws bound its field, whatever shapes it inside them)
        scale_reason = field_beyond_jaws(frame, box_mm, levels[plan.field_level].spacing, field)
    if scale_reason and opts.allow_view_mismatch:
        warnings.append(f"{scale_reason}; registered as asked (allow_view_mismatch)")
        scale_reason = ""
    reason = itself_reason or view_reason or apart or scale_reason or doubt_reason or quality
    # a frame found unusable before any matching (blank, no structure in the field), or a match within chance: the
    # optimum found is not a measurement of anything (a noise frame's lay at -28 mm): the pose is null; nor is one
    # across two scales, whose millimetres are not the same (two views' optimum is kept for review: couch names them)
    guess = bool(quality) or bool(field.striped) or bool(scale_reason)  # a striped frame's optimum: its stripes
    max_rot = opts.max_rotation_deg * _RADIANS if opts.estimate_rotation else 0.0
    max_shift = opts.max_shift_mm
    # MI's ascent from the edge optimum ended lower than it began (MI_DOWNHILL), on a match whose precision MI's halves
    # check (started at that end, they agree wherever it is)
    fell = None if found.mi_at_edge is None else found.mi_at_edge - found.reported
    mi_downhill = (spread is not None and fell is not None and fell > MI_DOWNHILL
                   and fell > MI_DOWNHILL_SHARE * found.mi_at_edge)
    isotropy, edge_direction, counted_share = found.matched_orientation
    if reason:
        pass
    elif ((field.note != "" and field.note.startswith(_SLIVER_NOTE))
          or (reference.field.note != "" and reference.field.note.startswith(_SLIVER_NOTE))):
        reason = _sliver_reason(reference.field.note, field.note)
        guess = True
    elif final_edge < opts.min_score:  # before the range: a "match" at the search grid's corner is none at all
        reason = (f"no match: edge correlation {final_edge:.3f} is below {opts.min_score:g} (min_score): nothing in the "
                  "frame matches the reference; another patient, beam or view, a wrong scale in one header (RTImageSID, "
                  "RadiationMachineSAD, ImagePlanePixelSpacing), or too little structure for the noise")
        guess = True
    elif significance < MIN_MATCH_SIGNIFICANCE:
        reason = (
            f"no match: edge correlation {final_edge:.3f} over {matched} pixels is within chance (significance "
            f"{significance:.1f} < {MIN_MATCH_SIGNIFICANCE:g}): too little structure in the usable region"
        )
        guess = True
    elif field_missing and (band or final_edge < FIELD_MISSING_BELOW_EDGE):
        found_instead = (f" ({field.note[len(NO_FIELD_EDGE) + 2:].split(';')[0]})" if band
                         else f", and the whole frame matches weakly (edge correlation {final_edge:.3f})")
        reason = (
            f"no match: no radiation field was found in the frame, where the reference shows one{found_instead}: "
            "something the reference lacks may cut the frame's field (an object, a detector fault), or it shows "
            "another beam; check the frame, or set field='none' (--field none) to match the whole images"
        )
        guess = True
    elif pose[0] > max_shift or pose[0] < -max_shift or pose[1] > max_shift or pose[1] < -max_shift:
        # the optimum found, not the truth: far out, it is more often something the reference lacks than a shift
        # a weak match's optimum (an independent trial: small fields over soft tissue, 0.26) is placed by too little
        # structure more often than by anything the reference lacks
        weak = (f"the match is weak (edge correlation {final_edge:.2f}): too little structure in the usable region, "
                if final_edge < WEAK_RANGE_EDGE else "")
        reason = (
            f"optimum at ({pose[0]:.1f}, {pose[1]:.1f}) mm is outside the search range of "
            f"+-{opts.max_shift_mm:g} mm (max_shift_mm): no match within it; {weak}structure the reference lacks (an "
            "object, a stripe, a detector fault), another view, or a wrong scale in one header (RTImageSID, "
            "RadiationMachineSAD or ImagePlanePixelSpacing: compare them with portalign info) can put the best match "
            "there; if the shift is truly that large, raise max_shift_mm"
        )
    elif rotate and (pose[2] > max_rot + 1e-9 or pose[2] < -(max_rot + 1e-9)):
        # a weak match turned to the search's limit says little about the patient (an independent trial: -7 deg at
        # edge correlations of 0.06 and 0.54 where the truth was 0 and -1.1 deg)
        why = (f": the match is weak (edge correlation {final_edge:.2f}), and too little structure away from the beam "
               "axis to fix a rotation is more likely than a turn that large" if final_edge < WEAK_RANGE_EDGE
               else "; if the patient is truly turned that much, raise max_rotation_deg")
        reason = (
            f"optimum rotation {pose[2] * _DEGREES:.2f} deg is outside the search range of "
            f"+-{opts.max_rotation_deg:g} deg (max_rotation_deg){why}"
        )
    elif isotropy is not None and isotropy < MIN_MATCHED_ISOTROPY and not (
            ambiguity >= opts.ambiguity_ratio and runner_up is not None
            and not _along_the_edges(edge_direction, pose, runner_up)):
        # edges that all run one way; a rival along them is what such structure leaves, so this is said, not
        # "ambiguous" (with eight global-search optima kept such a rival is found more often); a rival across them (a
        # periodic structure's) is ambiguous below
        reason = _one_directional_reason(isotropy, edge_direction, pose)
        guess = True  # the optimum along the edges is not a measurement: the pose is null (its measured part is said)
    elif ambiguity >= opts.ambiguity_ratio and runner_up is not None:
        reason = (
            f"ambiguous: a second optimum at ({runner_up[0]:.1f}, {runner_up[1]:.1f}) mm scores "
            f"{ambiguity:.0%} of the best"
        )
        if periodic is not None and periodic["ratio"] == ambiguity:
            px, py = periodic["period_mm"]
            reason += (f" (the reference repeats itself every ({px:.1f}, {py:.1f}) mm: periodic structure, e.g. "
                       "MLC pickets or leaves, places no shift larger than half a period)")
    elif mi_gap is not None and mi_gap > opts.agreement_mm + (
            DRR_MI_ALLOWANCE_MM if (drr_checked := reference.image.info.kind == "drr" and not found.mi_final) else 0.0):
        allowance = f", {DRR_MI_ALLOWANCE_MM:g} mm more against a DRR, whose edges' optimum MI checks" if drr_checked else ""
        reason = (
            f"edge and mutual-information optima disagree by {mi_gap:.2f} mm (agreement_mm={opts.agreement_mm:g}"
            f"{allowance})"
        )
    elif mi_downhill:
        reason = (
            f"imprecise: mutual information fell from {found.mi_at_edge + 1:.4f} at the edge optimum to "
            f"{found.reported + 1:.4f} at the MI optimum its ascent reached (normalised): no settled optimum; noise "
            "or too little structure sets it"
        )
    elif spread is not None and spread[0] > SPLIT_HALF_MAX_MM:
        reason = (
            f"imprecise: two halves of the usable pixels give optima {spread[0]:.2f} mm apart (more than "
            f"{SPLIT_HALF_MAX_MM:g} mm): noise or too little structure sets this optimum"
        )
    elif runner_up is not None and significance * (1.0 - ambiguity) < MIN_RIVAL_LEAD:
        reason = (
            f"ambiguous: a second optimum at ({runner_up[0]:.1f}, {runner_up[1]:.1f}) mm scores {ambiguity:.0%} of the "
            f"best, within chance of it (a lead of {significance * (1.0 - ambiguity):.1f} chance spreads; "
            f"{MIN_RIVAL_LEAD:g} needed): too little structure to choose between them"
        )
    # an aperture whose field was not found in the reference (the two checks exclude each other: one needs the frame's
    # field found, the other neither image's)
    if (shielded is not None or unseen_field is not None) and not reason and shift_measured and not found.no_match:
        if shielded is not None:
            details["shared_shielding"] = shielded
            unconfirmed = _shielding_refusal(shielded)
        else:
            details["reference_field_unseen"] = unseen_field
            unconfirmed = _unseen_field_refusal(reference.image, plan.field_mm, unseen_field)
        if opts.aperture_check == "strict":
            reason = unconfirmed
            guess = True  # the aperture, not the anatomy, may have placed it: no measurement
        else:
            warnings.append(f"{unconfirmed} (accepted: aperture_check='warn')")
    # two portal images' one aperture, moved between them and not with their content (where nothing else refused the
    # match; rare: both images' fields found)
    if not reason and shift_measured and portal_pair and reference.field.detected and field.detected:
        displaced = field_displaced(reference, frame, field, 1 << plan.field_level, (float(pose[0]), float(pose[1])))
        if displaced and opts.allow_view_mismatch:
            warnings.append(f"{displaced}; registered as asked (allow_view_mismatch)")
        elif displaced:
            reason = displaced
            guess = True  # a shift across a displaced aperture: not the patient's
    # the anatomy's own size (``_scale``), where nothing else refused the match and no field told of its scale (the
    # geometry's first frames, until one confirms the stated scale; no call after that)
    scale = None
    if scale_check and not reason and not plan.scale_confirmed and not found.no_match and shift_measured:
        coarsest = levels[plan.refine_levels[0]]
        scales, profile = scale_profile(backend, plan, coarsest, pose)
        scale = scale_verdict(scales, profile, int(coarsest.usable))
        if scale["confirmed"]:
            plan.scale_confirmed = True
        elif scale["mismatch"] and opts.allow_view_mismatch:
            warnings.append(f"{scale_reason_text(scale)}; registered as asked (allow_view_mismatch)")
        elif scale["mismatch"]:
            reason = scale_reason_text(scale)
            guess = True  # millimetres of two scales measure nothing
    details["scale_check"] = scale
    # a match whose reported metric does not fall away from the optimum in some direction: a ridge (one straight edge)
    # or a saddle places nothing along it (no call unless a rival is close, the frame was matched whole against a
    # reference field, or it was matched smoothed)
    peak = None
    if (not reason and not found.no_match and shift_measured
            and (field_missing or (runner_up is not None and ambiguity >= PEAK_CHECK_AMBIGUITY)
                 or (PEAK_CHECK_SMOOTHED and denoised is not None))):
        metric = "mi" if found.mi_final or opts.method == "mi" else "edge"
        peak_level = levels[found.levels[-1]["level"]] if found.levels else finest_level
        weakest, strongest, along, value = peak_curvatures(backend, plan, peak_level, pose, metric)
        peak = {"metric": metric, "weakest_fall": weakest, "strongest_fall": strongest,
                "weakest_direction": [along[0], along[1]], "step_mm": 1.5 * min(peak_level.spacing)}
        if weakest < MIN_PEAK_FALL:
            name = "mutual information" if metric == "mi" else "edge correlation"
            reason = (
                f"no peak: the {name} {'falls by only' if weakest >= 0 else 'rises by'} {abs(weakest):.1%} over "
                f"{peak['step_mm']:.1f} mm from the optimum along "
                f"{_direction_text(along)} (a peak falls by {MIN_PEAK_FALL:.1%} or more in every direction): the "
                "images' structure does not fix the shift along it (one straight edge, a flat field"
                + (", the frame matched whole against the reference's field" if field_missing else "")
                + (", a smooth ramp such as a field's glow, which is what smoothing the noisy frame left"
                   if denoised is not None else "")
                + "); check the pair" + (", or set field='none' (--field none) to match the whole images"
                                         if field_missing else "")
            )
            guess = True  # the optimum along a ridge is not a measurement
    details["peak_check"] = peak
    # how evenly the edges matched at the edge optimum run in every direction (0: one way only) and the way most run
    details["matched_isotropy"] = isotropy
    details["matched_edge_direction_deg"] = edge_direction
    # the edge correlation with every usable frame pixel's edges counted, those over the reference's invalid region
    # as unmatched: what the mirror check compares (a flipped copy's optimum can leave its worst-matched edges there)
    details["edge_score_all_edges"] = (None if counted_share is None or final_edge != final_edge
                                       else final_edge * counted_share**0.5)
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
    # the halves are refined with the metric whose optimum is reported (MI where auto reports it)
    details["split_half_metric"] = None if spread is None else ("mi" if found.mi_final else "edge")
    details["edge_score"] = final_edge
    details["matched_pixels"] = matched
    details["match_significance"] = significance
    details["edge_score_selection"] = found.best_score
    details["rotation_radius_mm"] = r_eff
    # the frame's contrast over noise where noise was measurable (a frame with no noise at all, a constant or
    # synthetic one, has none: null, not the 1e30 the decisions divide by)
    details.update(frame_stats)
    if "contrast_to_noise" in details and details["contrast_to_noise"] >= _NO_NOISE_RATIO:
        details["contrast_to_noise"] = None
    if "fine_contrast_to_noise" in details and details["fine_contrast_to_noise"] >= _NO_NOISE_RATIO:
        details["fine_contrast_to_noise"] = None
    details["field_effectiveness"] = field.effectiveness
    # how far the frame's field lies from the reference's (mm; null unless both images show one)
    details["field_moved_mm"] = moved
    # a reference that repeats itself: the periods (mm), their self-correlation, and the best rival one period away
    details["periodic_check"] = periodic
    # a noisy frame registered from its smoothed pixels: the smoothing (mm) and the frame's own contrast over noise
    details["denoised"] = None if denoised is None else {k: v for k, v in denoised.items() if k != RAW_FRAME_LINES}
    # the faulty (dead or hot) detector rows and columns left out of the match, the frame's pixel indices, and which
    # of them are hot (null: none); the reference's, its own pixel indices
    details["dead_detector_lines"] = frame_lines
    details["reference_dead_detector_lines"] = reference_lines
    details["field_note"] = field.note or None
    details["reference_field_note"] = reference.field.note or None
    details["view"] = view_record
    # the angle between the two images' beams in the patient (deg; null where a gantry angle is not recorded): within
    # the view tolerance, yet structures at different depths moved apart across the beam by their depth times it
    # (once per pair of views: a cine's frames share theirs, and the trigonometry is a dozen calls a frame)
    ref_view, frame_view = view_record["reference"], view_record["frame"]
    view_key = (ref_view["gantry_deg"], frame_view["gantry_deg"], ref_view["couch_deg"], frame_view["couch_deg"])
    beam_angle, view_parallax = (_BEAM_ANGLES[view_key] if view_key in _BEAM_ANGLES
                                 else _beam_angle_of(view_key, ref_view, frame_view))
    details["beam_angle_deg"] = beam_angle
    if view_record["mismatch"]:  # beyond the tolerance and allowed: the caller says the views are one (headers wrong)
        beam_angle = None
    details["rotation_estimated"] = rotate
    # the finest pyramid level the optimum was refined on: its pixel (mm at the isocentre, the smaller of the two)
    working_spacing = finest_level.spacing
    details["working_spacing_mm"] = (working_spacing[0] if working_spacing[0] < working_spacing[1]
                                     else working_spacing[1])  # min(), written out: no call a frame
    # the field-edge band left out of the frame on that level (mm, whole pixels; its field's own where it has one)
    details["edge_band_mm"] = (finest_level.erosion_px - 1) * details["working_spacing_mm"] if field.detected else None
    details["backend_fallback"] = backend.fallback_reason or None  # why auto did not get the GPU
    # a machine without a GPU is no fault of the frame: recorded above, not warned on every result (a new user's
    # alerting on warnings fired on every frame); a GPU that is there but failed (a numpy/numba-cuda mismatch,
    # CuPy missing) is warned
    if backend.fallback_reason and not backend.fallback_reason.startswith(NO_CUDA_DEVICE):
        warnings.append(backend.fallback_reason)
    # images with no anatomy in common: the optimum found is not a measurement either, nor its score; NMI - 1 lies in
    # 0..1, and -1 is the MI of an empty joint histogram (no frame pixel landed on the reference)
    scored = not apart and (opts.method == "edge" or found.reported >= 0.0)
    nothing = not shift_measured  # too few usable pixels to search at all
    rivals_compared = ((opts.candidates > 1 or periodic is not None) and not found.no_match and shift_measured
                       and not apart and not guess)
    shift_measured = shift_measured and not apart and not guess
    if not shift_measured:
        details["rotation_estimated"] = rotate = False
        if lever_warning and lever_warning in warnings:  # nothing was measured: no "translation only" either (a trial)
            warnings.remove(lever_warning)
        details["candidates"] = []  # a search over nothing: its optima are not measurements either
        details["mi_check_mm"] = None
        details["edge_mi_gap_mm"] = None
        # (the frame's pixels at the optimum all off the reference: an edge correlation of exactly 0 and MI's -1)
        if nothing or apart or (final_edge == 0.0 and found.mi_at_edge is not None and found.mi_at_edge <= -1.0):
            # no usable pixels at all, or none over the reference (no anatomy in common: the search's scores are those
            # of an empty overlap, 0 and MI's -1): no score, no metric, no lever arm and no precision was measured
            # either (a new user's mutated frames: a flipped RTImageOrientation reported an edge score, a significance
            # and a split-half spread of 0, a perfect precision)
            scored = False
            for key in ("edge_score", "match_significance", "edge_score_selection", "rotation_support_mm",
                        "final_metric", "final_metric_why", "edge_score_all_edges", "split_half_mm", "split_half_deg",
                        "split_half_metric", "mi_at_edge_optimum", "matched_isotropy", "matched_edge_direction_deg"):
                details[key] = None
    # where auto reports MI's rotation: how far the edge optimum's lay from it (deg), a part of its uncertainty
    rotation_gap = (abs(float(found.mi_pose[2]) - found.edge_rotation) * _DEGREES
                    if rotate and found.mi_final and found.mi_rotated and found.mi_pose is not None
                    and found.edge_rotation is not None else None)
    details["edge_mi_rotation_gap_deg"] = rotation_gap
    # the estimated rotation's standard uncertainty (deg; null where it was not estimated). Stated for auto only: its
    # MI cross-check is a second estimate of the pose (the gap terms); edge or mi alone has none, and their errors ran
    # to 3-15 times the same formula's on held-out sets (session note 28)
    calibrated = opts.method == "auto"
    # (a frame matched against a DRR: the DRR's own noise, where it has any, as taken: a smoothed twin's is read on the
    # reference it was made from, on the same geometry's plan; found once per level, no call a frame after that. A
    # reference portal image's noise is in the calibration of ROTATION_ARC_SHARE already)
    reference_arc = 0.0
    if calibrated and rotate and ref_info.kind == "drr":
        taken = reference._smoothed_of if denoised is not None and denoised["reference_smoothed"] else None
        own_level = (finest_level if taken is None else
                     taken.frame_pool(frame, plan.field_mm, plan.band_mm).lanes[0].levels[plan.refine_levels[-1]])
        reference_contrast = own_level.ref_contrast_to_noise
        if reference_contrast is None:
            reference_contrast = reference_contrast_to_noise(own_level)
        if 0.0 < reference_contrast < math.inf:
            reference_arc = REFERENCE_NOISE_ARC * details["working_spacing_mm"] / reference_contrast
    # whether the images differ by one rigid motion: the spatial halves' optima (a frame's own, or a stream's last
    # checked frame's while the shift stays near it; not for the mirror check's copies)
    rigidity = None
    if calibrated and shift_measured and not reason and scale_check:
        kept = plan.rigidity  # (x, y of the shift checked, the record its later frames share): no call a frame
        if kept is not None and (pose[0] - kept[0]) ** 2 + (pose[1] - kept[1]) ** 2 <= RIGIDITY_RECHECK_MM ** 2:
            rigidity = kept[2]
        else:
            # two portal images with one field: its inner and outer halves too (the edges stay with the beam)
            depths = (field_depths(backend, finest_level, field, plan.field_level, levels[plan.field_level].spacing)
                      if field.detected and reference.field.detected else None)
            rigidity = _rigidity_check(backend, plan, finest_level, pose, r_eff, opts,
                                       "mi" if found.mi_final else "edge", details["working_spacing_mm"], depths)
    details["rigidity_check"] = rigidity
    if rigidity is not None and rigidity["term_mm"] >= RIGIDITY_WARN_MM:
        parting = rigidity["rows_mm"] if rigidity["rows_mm"] > rigidity["cols_mm"] else rigidity["cols_mm"]
        depth_parting = rigidity.get("depth_mm")
        if depth_parting is not None and depth_parting > parting:
            said = (f"the field's inner and outer halves place the match {depth_parting:.1f} mm apart: the field's "
                    "edges, which stay with the beam in both portal images, pull the match towards the field's own "
                    "position where the anatomy inside it is faint; the uncertainty includes it")
        else:
            said = (f"the image's halves place the match {parting:.1f} mm apart (upper against lower, left against "
                    "right): the images do not differ by one rigid motion (anatomy at different depths moved apart: a "
                    "large shift across the diverging beam, a pitch or roll that one view cannot see); the uncertainty "
                    "includes it")
        warnings.append(said + ("" if rigidity["measured_here"] else " (measured on an earlier frame at a shift within "
                                f"{RIGIDITY_RECHECK_MM:g} mm of this one)"))
        widest = max(parting, depth_parting or 0.0)
        if widest > RIGIDITY_REFUSE_MM and not reason:
            reason = (f"not one rigid motion: parts of the image place the match {widest:.1f} mm apart (more than "
                      f"{RIGIDITY_REFUSE_MM:g} mm), so no one shift describes the pair: a wrong scale in one header "
                      "(ImagePlanePixelSpacing (3002,0011), RTImageSID (3002,0026)), a view that is not the reference's "
                      "(a gantry angle, a patient's pitch or roll), or anatomy far off the isocentre plane moved across "
                      "the diverging beam; check both headers (portalign info), or register two views against the "
                      "planning CT (portalign register3d)")
    details["rotation_uncertainty_deg"] = (
        rotation_uncertainty_deg(found.rotation_support_mm, details["working_spacing_mm"], split_deg, rotation_gap,
                                 reference_arc, 0.0 if rigidity is None else rigidity["term_mm"])
        if calibrated and rotate and found.rotation_support_mm else None)
    # the usable pixels' centroid's distance from the beam axis (mm): the pose turns about the axis, so the shift
    # measured there is extrapolated to the axis through the rotation, whose uncertainty it carries
    # (null where no pixel was usable: no centroid, and the lever arm's 50 mm is a stand-in, not a measurement)
    details["rotation_offset_mm"] = centroid_mm if details["matched_pixels"] else None
    if not details["matched_pixels"]:
        details["rotation_radius_mm"] = None
    turn_u = details["rotation_uncertainty_deg"]
    if beam_angle is None:
        view_parallax = 0.0
    if view_parallax > MAX_VIEW_PARALLAX_MM and shift_measured and not reason:
        reason = (f"the frame's beam is {beam_angle:.1f} deg from the reference's (gantry and couch angles; within the "
                  f"{opts.view_tolerance_deg:g} deg view tolerance, yet): anatomy {VIEW_PARALLAX_DEPTH_MM:g} mm off the "
                  f"isocentre plane (a usual depth) has moved {view_parallax:.1f} mm across the beam against the "
                  f"isocentre's, more than {MAX_VIEW_PARALLAX_MM:g} mm, so the shift measured depends on which anatomy "
                  "placed it: take the frame at the reference's angle, or the reference at the frame's (a DRR rendered "
                  "at its gantry angle)")
    elif beam_angle is not None and beam_angle > VIEW_PARALLAX_WARN_DEG and shift_measured:
        warnings.append(f"the frame's beam is {beam_angle:.1f} deg from the reference's (gantry and couch angles): "
                        f"anatomy {VIEW_PARALLAX_DEPTH_MM:g} mm off the isocentre plane has moved {view_parallax:.1f} mm "
                        "across the beam against the isocentre's; the shift's uncertainty includes it")
    # the measured shift's standard uncertainty, each of dx and dy (mm; null where nothing was measured)
    details["shift_uncertainty_mm"] = (
        shift_uncertainty_mm(details["working_spacing_mm"], details["split_half_mm"], details["edge_mi_gap_mm"],
                             (float(pose[0]) * float(pose[0]) + float(pose[1]) * float(pose[1])) ** 0.5,
                             frame.info.sad_mm,
                             centroid_mm * turn_u / _DEGREES if turn_u is not None
                             else unestimated_turn_mm(None if rotate else details.get("rotation_radius_mm")),
                             beam_angle or 0.0, 0.0 if rigidity is None else rigidity["term_mm"])
        if calibrated and shift_measured else None)
    result = RegistrationResult(
        elapsed_ms=(time.perf_counter() - start) * 1e3,  # the frame's time, set once (no copy of the result)
        dx_mm=float(pose[0]) if shift_measured else None,
        dy_mm=float(pose[1]) if shift_measured else None,
        rotation_deg=float(pose[2] * _DEGREES) if rotate else None,  # not measured: None, never 0
        ok=not reason,
        reason=reason,
        # edge: the capped final edge correlation (a score is -1..1); the MI methods: NMI - 1 (0..1)
        score=float(final_edge if opts.method == "edge" else found.reported) if scored else None,
        method=opts.method,
        backend=backend.name,
        # measured only where the global search's optima were compared: none compared (one candidate asked for, no
        # optimum found, nothing to search) is null, never 0 (0 is "the search found no distinct rival")
        ambiguity=float(ambiguity) if rivals_compared else None,
        field_detected=field.detected,
        field_box_mm=box_mm,
        frame_uid=frame.info.sop_instance_uid or None,
        reference_uid=reference.image.info.sop_instance_uid or None,
        frame_index=frame.info.frame_index,
        warnings=warnings,
        details=details,
    )
    # a noisy frame or reference portal image, refused for what noise does to edges: both smoothed, again (SMOOTH_PAIR:
    # the pair DENOISE leaves as it is, the reference not 3x cleaner; no call unless refused so)
    if (DENOISE and SMOOTH_PAIR and reason and denoised is None and reason.startswith(SMOOTH_PAIR_REASONS)
            and reference._smoothed_of is None and r_eff >= DENOISE_MIN_RADIUS_MM
            and "contrast_to_noise" in frame_stats and _pair_noisy(frame_stats["contrast_to_noise"],
                                                                   levels[plan.refine_levels[-1]])):
        record = {"sigma_mm": DENOISE_SIGMA_MM, "contrast_to_noise": frame_stats["contrast_to_noise"],
                  "reference_smoothed": True,
                  "reference_contrast_to_noise": reference_contrast_to_noise(levels[plan.refine_levels[-1]]),
                  RAW_FRAME_LINES: frame_lines}
        record["reference_search_contrast"], pair_note = _pair_noise_note(frame_stats["contrast_to_noise"], plan)
        if pair_note:  # a reference of noise alone: smoothed, its noise and the frame's would make the match
            return replace(result, reason=f"{reason}; {pair_note}")
        return _SmoothedPair(result, frame, field, 2 ** plan.field_level, record)  # type: ignore[return-value]
    return result
