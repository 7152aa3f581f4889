"""Frame quality before any matching: usable area, contrast over noise, saturation, cleanliness."""

from __future__ import annotations

import math

import numpy as np
from portalign.kernels.cpu.refine import STENCIL_3D, rotation_lever_arm
from portalign.kernels.cpu.statistics import clean_window, second_difference_mad

from ..field import FieldEstimate, clear_dead_lines, field_size_mm
from ..image import Image
from ._plan import FramePlan, Level
from ._refine import evaluate

__all__ = ["assess_frame", "reference_contrast_to_noise", "rotation_radius", "rotation_support_mm",
           "rotation_uncertainty_deg", "shift_uncertainty_mm", "view_parallax_mm", "rigidity_mm", "is_clean",
           "MIN_USABLE_PIXELS",
           "MIN_ROTATION_SUPPORT_MM", "TOO_LITTLE_STRUCTURE"]

#: A MAD of second differences over this factor is the white-noise sigma (1.4826 sqrt(6)): a Gaussian's MAD is
#: 0.6745 sigma, and a second difference of white noise has variance 6 sigma^2 (a constant: no call a frame).
MAD_TO_SIGMA = 1.4826 / math.sqrt(6.0)
#: Contrast (robust range) / noise below which a frame has "too little structure".
MIN_CONTRAST_TO_NOISE = 12.0
#: Fewest usable pixels at the finest level (a 20 x 20 patch): less cannot be trusted.
MIN_USABLE_PIXELS = 400
#: At native resolution (nothing finer exists) a small radiation field needs at least this many usable pixels (8 x 8).
SMALL_FIELD_MIN_PIXELS = 64
#: Fewer usable pixels than this on the search level or the finest working level and nothing was measured: the
#: result's ``dx_mm`` and ``dy_mm`` are ``None`` (a search over a handful of pixels lands anywhere: a 16x16 frame
#: reported -26 mm).
MIN_MEASURED_PIXELS = 16
#: Contrast / noise at the finest level above which a frame is "clean" and refined on finer levels too.
CLEAN_CONTRAST_TO_NOISE = 1000.0
#: About this many second differences estimate the fine-level noise.
NOISE_SAMPLES = 6000
#: Rotation is estimated only when the match's rotation lever arm (see :func:`rotation_support_mm`) reaches this.
#: Under it a rotation moves the matched structure by a fraction of a working pixel, and what was reported was
#: mostly noise: a new user's 40 mm MLC field (lever arm 12.4 mm) came back 0.38 deg where the truth was 1.97, ok; a
#: synthetic 48 mm field (15.3 mm) 1.37 deg off; a TotalSegmentator MLC pair (11.7 mm) 0.94 deg off. Over 500
#: held-out pairs (thorax seeds 11, 12, 14 and 31, TotalSegmentator seeds 3-6) every other ok pair had 21 mm or more.
#: (8 mm before: a ball bearing or a cone's edge, whose radial gradients pin no rotation, gives about 0.)
MIN_ROTATION_SUPPORT_MM = 18.0
#: The rotation's standard uncertainty (:func:`rotation_uncertainty_deg`) takes its error as an arc of this share of
#: the working pixel at the rotation lever arm. Calibrated on the 91 ok portal-reference pairs of an independent trial
#: (its own renderer on the real CTs: collimator-turned MLC fields, oblique gantries, low dose, binned detectors,
#: dead lines; lever arms 18-46 mm, working pixels 1.05 and 1.57 mm): the errors' arcs were 0.09 mm at the median,
#: 0.42 at the 95th percentile. At 0.2, 83 % of those rotations lay within one uncertainty of the truth and 97 % within
#: two (the largest 2.4); neither the split-half spread nor the lever arm alone foretold which were 0.5-1 deg off.
ROTATION_ARC_SHARE = 0.2
#: A frame matched against a DRR that is noisy itself (its contrast over noise ``c`` as taken:
#: :func:`reference_contrast_to_noise`, finite; a smoothed twin's, ``SMOOTH_PAIR``, read on the DRR it was made from): the
#: DRR's own noise, in neither of the split halves (they share the reference), misplaces the matched structure by an arc
#: of this many working pixels over ``c`` at the rotation lever arm (a term of :func:`rotation_uncertainty_deg`). An
#: independent trial's DRR pairs with rotation (session note 46: its DRRs carried 0.5-3 % noise, ``c`` 31-840): frames
#: matched smoothed, whose errors grew with ``1 / c`` (correlation 0.46), were 81 % (1.5 %) and 67 % (3 %) within two
#: uncertainties, those with their DRR smoothed alike too 62 %; rendered without noise the same 92 pairs were 0.07 deg
#: off at the median and 97 % within one. At 25, trial46's 92 (fitted) 72 % within one and 98 % within two (87 % within
#: two before); trial45's 85, not fitted, 73 % and 93 % (83 % at session 45's head). A noise-free DRR (the usual one:
#: ``c`` in the thousands, or infinite) adds next to nothing: 25 / 1400 of a working pixel. Reference portal images are
#: left out: their noise is in ``ROTATION_ARC_SHARE``'s calibration (trial46's: 83 % within one and 100 % within two
#: without the term), and their contrast over noise, a few times to a few tens (MV anatomy), would make the term tens of
#: degrees.
REFERENCE_NOISE_ARC = 25.0
_DEGREES = 180.0 / math.pi
#: The shift's standard uncertainty (:func:`shift_uncertainty_mm`) takes the error of placing the matched structure as
#: this share of the working pixel (an RMS over both axes). Calibrated on the 227 ok pairs of ``python -m
#: bench.held_out`` seeds 11 and 31 (thorax CT) and 3 and 5 (TotalSegmentator CT): DRR and portal references, jaws,
#: turned collimators, MLC fields, open fields, low dose and dead lines, working pixels 0.52 and 1.05 mm. At 0.15,
#: with the two terms below, 81 % of the 454 axis errors lay within one uncertainty and 98 % within two (3.3 the
#: largest); without them 59 % and 90 %.
SHIFT_ERROR_SHARE = 0.15
#: RMS depth (mm) from the isocentre plane of the structures that place a match, as it acts on the shift measured. A
#: couch shift ``d`` across the beam moves anatomy at depth ``z`` (towards the source) by ``d SAD / (SAD - z)`` on the
#: isocentre plane (the projection's magnification), so the shift measured is ``d`` magnified by the matched structures'
#: mean depth, which one view does not show; a shift along the beam changes the magnification of structure off the
#: axis alike. The error therefore grows with the shift: on ``bench.held_out`` (thorax CT seeds 101, 303 and 404, shifts
#: up to 5, 12 and 10 mm; 206 ok pairs) the axis errors' RMS was 0.125 mm for shifts under 3 mm and 0.255 mm for shifts
#: of 9-20 mm, and 94.7 % lay within two of the uncertainty without this term (86 % for shifts over 9 mm). With it, at
#: 30 mm (``SAD`` 1000 mm: 3 % of the shift, radial), 85 % within one and 98.3 % within two (the TotalSegmentator CT,
#: seeds 202 and 505, 108 ok pairs: 74 % and 95.8 %, from 67 % and 91.7 %). Session note 35.
PARALLAX_DEPTH_MM = 30.0
#: RMS depth (mm) off the isocentre plane of the anatomy that places a match, as it acts where the two beams are an
#: angle ``b`` apart: anatomy at depth ``z`` moves across the beam by ``z b`` against the isocentre, along the image
#: axis that turns with the gantry, so the shift measured is off by the matched anatomy's mean depth times ``b`` (one
#: axis: the term is not shared between ``dx`` and ``dy``). An independent trial (thorax and TotalSegmentator CTs,
#: gantries 0-330, frames 1-3 deg off their references with honest headers; 22 pairs): the errors over the angle were
#: 8-78 mm, RMS 43. Over ``MAX_VIEW_PARALLAX_MM`` the match is not ok (``portalign.registration._program``).
VIEW_PARALLAX_DEPTH_MM = 45.0
#: Where no rotation was estimated (the structure does not constrain it, ``MIN_ROTATION_SUPPORT_MM``, or the user asked
#: for translation only), the patient's turn was not measured, yet it moves the shift: the shift's uncertainty takes a
#: turn of this standard deviation (deg) at the usable pixels' RMS radius about the beam axis
#: (``details["rotation_radius_mm"]``). The independent trial's five ok pairs without a rotation (MLC fields, turns of
#: 0.45-1.26 deg, none measured) lay 0.38-0.98 mm off at 0.74-2.39 of the uncertainty stated without it, three beyond
#: two; the turned structure's shift there was 31-77 mm times the turn, about the RMS radius (47-51 mm), more than the
#: centroid's distance (28-30 mm) that a pure translation fit would give. 1 deg is the order of immobilised patients'
#: in-plane setup rotations and the standard deviation of the trial's and ``bench.held_out``'s turns (uniform within
#: +-1.5 deg: 0.87); a cone at the beam axis (radius ~8 mm) gains 0.14 mm.
UNESTIMATED_TURN_DEG = 1.0
#: The usable pixels' spatial halves (above and below their median row; left and right of their median column), each
#: refined for translation alone from the whole's pose (``_refine.spatial_halves``), agree where the two images differ
#: by one rigid in-plane motion. They part where they do not: a shift across a diverging beam moves anatomy at
#: different depths by different amounts (a lateral abdomen, 14 mm: 1.2 and 2.5 mm apart), a pitch or roll one view
#: cannot see (0.6-2 deg: up to 2.8 mm), a shift along the beam magnifies an open field's anatomy (6 mm: 0.6 mm); the
#: whole's optimum lies somewhere between, and those pairs lay 0.6-2.6 mm off at 3-7 of the uncertainty stated
#: without this term. The shift's uncertainty takes ``RIGIDITY_SHARE`` of the larger distance less
#: ``RIGIDITY_NOISE_SHARE`` working pixels (what noise and uneven structure alone part halves by: their median
#: distance is 0.4 of one), at most ``RIGIDITY_MAX_MM`` (further, a half with too little structure of its own says
#: more than the pair's geometry: MLC islands and small fields, 3-13 mm apart, their errors 0.1-0.5 mm), taken whole
#: on each axis. Calibrated on two adversarial trials' 486 ok pairs (trial52 and trial53, session note 52: thorax and
#: TotalSegmentator CTs, jaws, MLC, open fields, cones, shifts to 15 mm, pitch and roll to 2 deg): radial errors
#: beyond two uncertainties 5.1 % -> 1.6 %, beyond three 1.6 % -> 0 %, the median uncertainty 1.01 times what it was;
#: axis errors within two 98.3 % -> 99.5 % (the largest 6.2 -> 3.4 u), rotations 97.3 % -> 98.5 % (5.5 -> 2.6 u). Held
#: out from the fit, the generator's seed 5151 (237 ok): axes 98.7 % -> 99.6 % within two (3.1 -> 2.4 u), rotations
#: 97.0 % -> 99.6 % (5.8 -> 2.9 u), the median uncertainty 1.003 times. Two portal images of one field add the
#: field's inner and outer halves (``depth_mm``: the edges stay with the beam, and their penumbra's tail past the band
#: pulls the outer half where the anatomy inside is faint; trial54 mlc-23, 2.2 mm off at 0.63 mm stated, parted 2.4
#: mm), with the same share and cap: the 165 ok portal pairs of trials 52-54, axes within two 98.8 % -> 99.4 %, the
#: median uncertainty the same (session note 53).
RIGIDITY_SHARE = 0.5
RIGIDITY_NOISE_SHARE = 0.25
RIGIDITY_MAX_MM = 1.5
#: A term of this much or more (mm) is said in the result's warnings as well: 20 of the two trials' 490 ok pairs, the
#: five 1.3-2.6 mm off among them (and 15 of 0.05-0.8 mm).
RIGIDITY_WARN_MM = 0.5
#: Halves whose optima lie more than this far apart (mm: rows, columns or the field's depth halves) refuse the match:
#: no one shift describes both, and half of it is beyond ``RIGIDITY_MAX_MM`` of any. A hostile campaign's portal pairs
#: with one axis's ImagePlanePixelSpacing 6 % off, or both 3 % off, parted by 3.2-4.3 mm and were ok 4.7-7.8 mm off;
#: an independent trial's frame 9 deg from its reference's gantry (its header without one) by 2.8 mm, 11 mm off. The
#: ok pairs of two trials (trial56, trial57: 315) parted by at most 3.4 mm (2-3.5 deg patient rolls, 0.7-1.6 mm off).
RIGIDITY_REFUSE_MM = 3.0
#: A stream's frames share the measurement of the last frame checked while their shift stays within this (mm) of
#: its: the halves' parting follows the pair's geometry and the shift, and the check (four refinements on the
#: finest level) would double a cine frame's time.
RIGIDITY_RECHECK_MM = 2.0
#: Source-to-axis distance (mm) taken where an image does not state its ``RadiationMachineSAD`` (an array).
DEFAULT_SAD_MM = 1000.0
#: How the reason begins where too few of the frame's pixels are usable (``_program`` adds to it).
TOO_LITTLE_USABLE = "too little of the frame is usable"
#: Contrast / noise on the search level that noise alone reaches: white noise's robust range is about 5 of its sigmas
#: (4.9-5.4 measured on flat frames of 5 % noise, 256 x 256 and 1024 x 768). Below it a frame shows nothing but noise
#: (blank where no field was found); above it, yet under ``MIN_CONTRAST_TO_NOISE``, it shows too little structure for
#: its noise, and a noisy frame is smoothed and tried again before it is refused so (``_program.DENOISE``).
NOISE_ONLY_CONTRAST = 6.5
#: How the reason begins where a frame shows structure, too little for its noise (one of these).
TOO_LITTLE_STRUCTURE = ("too little structure inside the field", "too little structure in the frame")
#: Fraction of field pixels at the detector's maximum that makes a frame saturated.
MAX_SATURATED_FRACTION = 0.02


#: A frame whose field (its plan's size class, mm) is under this and shows nothing but noise is told its field holds
#: too little anatomy as well as that the dose may be too low.
SMALL_FIELD_ANATOMY_MM = 30.0


def assess_frame(backend, frame: Image, plan: FramePlan, field: FieldEstimate,  # type: ignore[no-untyped-def]
             frame_stats: dict, measured: tuple[float, float] | None = None) -> str:
    """Return why the frame cannot be trusted before any matching ("" when it can).

    ``frame_stats`` receives ``contrast_to_noise`` (robust contrast over white-noise sigma at the finest level).
    ``measured``: the finest level's second-difference ``(MAD, count)`` when the level stage measured it already.
    """
    finest = plan.levels[plan.refine_levels[-1]]
    coarse = plan.levels[plan.coarse.level]
    # at the detector's own pixels nothing finer exists: a small field is judged on what it can hold (an image
    # that is small without a field, a crop, still needs MIN_USABLE_PIXELS)
    needed = SMALL_FIELD_MIN_PIXELS if finest.index == 0 and field.detected else MIN_USABLE_PIXELS
    if coarse.usable < MIN_MEASURED_PIXELS or finest.usable < needed:
        if field.detected and field.mask is not None:
            size = field_size_mm(field, plan.levels[plan.field_level].spacing)
            band = finest.erosion_px * min(finest.spacing)
            return (f"{TOO_LITTLE_USABLE}: {frame.info.source}'s radiation field is {size:.1f} mm "
                    f"across and a {band:.1f} mm field-edge band is left out on each side, leaving "
                    f"{finest.usable} pixels of {min(finest.spacing):.2f} mm (at least {needed} needed): "
                    "too small a field to register")
        return (f"{TOO_LITTLE_USABLE}: {finest.usable} pixels of {min(finest.spacing):.2f} mm "
                f"(at least {needed} needed): {frame.info.source} is too small to register")
    measured_noise = _noise_sigma(backend, finest, measured)
    # no noise finer than the stored values' own step is measurable: a MAD of 0 (more than half the second
    # differences exactly 0: a clipped plateau, a flat region of integer data) is that step's rounding noise
    extra = frame.info.extra  # (a frame without either key, a float array, makes no call here: cProfile's count)
    quantum = quantization_sigma(frame) if "quantization_step" in extra else 0.0
    noise = quantum if quantum > measured_noise else measured_noise
    lo, hi = coarse.range
    contrast = hi - lo
    # box averaging from the finest to the coarse level divides white noise by 2 per level
    coarse_noise = noise / 2 ** (plan.coarse.level - finest.index)
    # the frame's own measure, as measured (what the smoothing decisions read): the floor only refuses a flat frame
    plan_stats = {"contrast_to_noise": contrast / (1e-30 if 1e-30 > measured_noise else measured_noise)}
    frame_stats.update(plan_stats)
    if contrast < MIN_CONTRAST_TO_NOISE * coarse_noise or contrast <= 0:
        ratio = contrast / max(coarse_noise, 1e-30)
        if contrast <= 0 and measured_noise <= 0 and field.detected:  # not one value differs: no field shows that (a trial)
            return (f"the region taken for the radiation field has constant pixels (no noise, no structure: a saturated "
                    f"or dead detector block, or padding), so it is not a field; check {frame.info.source}, or use "
                    "--field none (field='none') to match the whole image")
        if quantum > measured_noise and ratio < MIN_CONTRAST_TO_NOISE:
            # the floor decided: what varies is under a few steps of the stored values
            return _flat_reason(frame, contrast, quantum * _SQRT_12)
        if ratio < NOISE_ONLY_CONTRAST:
            if not field.detected:
                return (f"frame is blank (beam off?): contrast is {ratio:.1f}x the noise, which noise alone gives "
                        "(about 5x): no image in it; check the exposure and that the beam reached the detector")
            # a small field (a cone) at a usual dose holds too little anatomy: more dose is not what it needs (a new
            # user's trial: a 12 mm cone told to use a longer exposure)
            small = plan.field_mm is not None and plan.field_mm < SMALL_FIELD_ANATOMY_MM
            why = (f"a {field_size_mm(field, plan.levels[plan.field_level].spacing):.0f} mm field holds too little "
                   "anatomy for this noise: image the setup through a larger field, or with a longer exposure" if small else
                   "too low a dose for the anatomy in it, or none; use a longer exposure or average frames")
            return (f"nothing but noise inside the field: contrast is {ratio:.1f}x the noise on the search level "
                    f"(noise alone gives about 5x; at least {MIN_CONTRAST_TO_NOISE:g}x needed): {why}")
        where = TOO_LITTLE_STRUCTURE[0] if field.detected else TOO_LITTLE_STRUCTURE[1]
        return f"{where}: contrast is {ratio:.1f}x the noise on the search level (at least {MIN_CONTRAST_TO_NOISE:g}x needed)"
    saturation = extra["saturation_value"] if "saturation_value" in extra else None
    if saturation is not None:
        # this frame's field-detection level: on the host twin when its levels were made ready there
        source = plan.host if plan.host_stage and plan.host is not None else plan
        img = backend.to_host(source.levels[plan.field_level].image)
        # a box mean equals the maximum code only where all pixels under it are saturated
        # detector lines left out of the match (hot ones at the maximum among them) are not what is matched: a
        # trial's frames with a saturated strip of 14-21 hot lines, left out, were refused as 3 % saturated
        fraction = float(clear_dead_lines(img >= saturation, field).mean())
        if fraction > MAX_SATURATED_FRACTION:
            return f"frame is saturated: {fraction:.0%} of its pixels are at the detector maximum ({saturation:g})"
    return ""


def _flat_reason(frame: Image, contrast: float, step: float) -> str:
    """Why a frame whose contrast is a few rounding steps of its stored values is refused (its plateau named)."""
    pixels = frame.pixels
    top, bottom = float(pixels.max()), float(pixels.min())
    high, low = float((pixels == top).mean()), float((pixels == bottom).mean())
    if max(high, low) < 0.5:
        plateau = "its values hardly vary"
    elif high >= low:
        plateau = f"{high:.0%} of its pixels hold its largest value {top:g} (saturated or clipped there)"
    else:
        plateau = f"{low:.0%} of its pixels hold its smallest value {bottom:g} (no signal, or clipped there)"
    return (f"frame shows no structure: {plateau}; its contrast on the search level is {contrast:.3g}, under "
            f"{MIN_CONTRAST_TO_NOISE:g}x the rounding noise of its stored values (step {step:g}): nothing to register "
            f"in {frame.info.source}; check the exposure and that the frame shows the treated region")


_SQRT_12 = math.sqrt(12.0)


def quantization_sigma(image: Image) -> float:
    """Return the rounding noise (sigma, in the image's pixel units) of its stored values: ``step / sqrt(12)``.

    The step is ``info.extra["quantization_step"]``: the DICOM Rescale Slope (0028,1053) of a file's integer Stored
    Values (Pixel Data; 1 under a Modality LUT), 1 for an integer array (:meth:`Image.from_array`); 0 where the
    values are not known to be quantized (Float Pixel Data, a float array, a rendered DRR). A uniform rounding error of
    one step has variance ``step^2 / 12`` (Widrow and Kollar, *Quantization Noise*, 2008, ch. 4): no contrast
    smaller than that is measured, whatever a MAD of 0 says.
    """
    extra = image.info.extra
    # (written without helper calls: a frame's count of Python calls is budgeted, tests/test_engine.py)
    step = extra["quantization_step"] if "quantization_step" in extra else None
    if step is None:
        return 0.0
    try:
        step = float(step)
    except (TypeError, ValueError):
        return 0.0
    if step < 0.0:
        step = -step
    return step / _SQRT_12 if step < math.inf else 0.0  # NaN and inf: not a step


def _noise_sigma(backend, level: Level, measured: tuple[float, float] | None = None) -> float:  # type: ignore[no-untyped-def]
    """Robust white-noise sigma from horizontal second differences (MAD), on every 4th row of the usable pixels.

    A second difference cancels smooth anatomy (any linear trend) and keeps white
    noise with variance ``6 sigma^2``. Computed where the level lives; one number comes back. ``measured``: that
    ``(MAD, count)`` when the compiled level stage took it already.
    """
    if measured is None:
        rows, cols = level.shape
        measured = backend.kernels.second_difference_mad(level.image, level.eroded, 0, rows, 4, 0, cols, True)
    mad, count = measured
    if count < 16:
        return 0.0
    return MAD_TO_SIGMA * float(mad)


def is_clean(backend, plan: FramePlan, field: FieldEstimate, frame_stats: dict,  # type: ignore[no-untyped-def]
             measured: tuple[float, float] | None = None) -> bool:
    """Whether the frame is nearly noise-free (then a finer level still adds accuracy).

    Noise is measured where it is largest, on the frame's own pixels inside the field's bounding box;
    smooth anatomy hardly shows in second differences there. ``measured``: that ``(MAD, count)`` when the
    compiled level stage took it already (the same window).
    """
    if measured is None:
        measured = _clean_noise(backend, plan, field)
    mad, count = measured
    if count < 64:
        return False
    noise = MAD_TO_SIGMA * float(mad)
    lo, hi = plan.levels[plan.coarse.level].range
    ratio = (hi - lo) / (1e-30 if 1e-30 > noise else noise)  # max(noise, 1e-30), written out
    frame_stats["fine_contrast_to_noise"] = ratio
    return ratio >= CLEAN_CONTRAST_TO_NOISE


def _clean_noise(backend, plan: FramePlan, field: FieldEstimate) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Return the frame's own second-difference ``(MAD, count)`` inside the field's bounding box, unmasked."""
    level = plan.levels[0]
    img = level.image  # the frame where it lives: only the statistic comes back from a device
    has_box = field.detected and field.box_px is not None
    r0, r1, row_step, c0, c1 = clean_window(img.shape[0], img.shape[1], np.array(field.box_px if has_box else (0.0,) * 4),
                                            has_box, 2.0 ** (plan.field_level - level.index), NOISE_SAMPLES)
    # unmasked: the image stands in for the mask argument
    return backend.kernels.second_difference_mad(img, img, r0, r1, row_step, c0, c1, False)  # type: ignore[no-any-return]


def rotation_radius(backend, level: Level, measured: tuple[float, float, float] | None = None  # type: ignore[no-untyped-def]
                    ) -> tuple[float, float]:
    """RMS distance (mm) of usable pixels from the beam axis, how far a rotation moves them; and their centroid's.

    ``measured``: the kernel's ``(rms, count, centroid distance)`` when the compiled level stage took it already.
    The second value (mm, 0 where nothing is usable) is how far the shift measured on those pixels is extrapolated to
    the beam axis through the rotation (:func:`shift_uncertainty_mm`'s ``rotation_mm``).
    """
    if measured is None:
        measured = backend.kernels.rms_radius(level.eroded, level.frame_axis[0], level.frame_axis[1], level.spacing[0],
                                              level.spacing[1], 2)
    rms, count, offset = measured
    if count == 0:
        return 50.0, 0.0
    rms = float(rms)
    return (5.0 if 5.0 > rms else rms), float(offset)  # max(rms, 5.0), written out


def rotation_support_mm(backend, plan: FramePlan, level: Level, pose, r_eff: float) -> float:  # type: ignore[no-untyped-def]
    """How well the matched structure pins the rotation: its lever arm in mm (0 = not at all).

    The edge-correlation score is sampled on the 10-pose quadratic stencil around ``pose``
    (one pixel in x and y, a rotation that moves a pixel at the RMS radius ``r_eff`` by one pixel) and
    its Hessian ``H`` fitted (``H_ii = f+i + f-i - 2 f0``, ``H_ij = f+i+j - f+i - f+j + f0``). The curvature
    along rotation with the translation re-optimised is the Schur complement
    ``S = H_tt - H_tx H_xx^-1 H_xt`` (per rad^2); divided by the mean translation curvature (per mm^2)
    it is the squared distance from the rotation centre at which structure constrains rotation as
    firmly as translation: ``r = sqrt(S / mean(H_xx, H_yy))`` mm. A ball bearing or a circular cone
    edge (radial gradients: a rotation of them is a translation) gives about 0 whatever their size;
    edges at many orientations away from the centre give about their RMS radius. ``-1``
    (``kernels.cpu.refine.LEVER_ARM_UNTOLD``) where the level cannot tell: ``pose`` is not a maximum of its score there
    (the search then measures it on the first refinement level, where ``pose`` is the ascent's optimum).
    """
    h_t = min(level.spacing)
    h_r = h_t / max(r_eff, 5.0)
    step = np.array([level.spacing[1], level.spacing[0], h_r])
    values = evaluate(backend, plan, level, np.asarray(pose, dtype=np.float64) + STENCIL_3D * step, "edge")
    return float(rotation_lever_arm(values, step))


def rotation_uncertainty_deg(support_mm: float, working_spacing_mm: float, split_half_deg: float | None,
                             metric_gap_deg: float | None = None, reference_arc_mm: float = 0.0,
                             rigidity: float = 0.0) -> float:
    """Return the standard uncertainty (1 sd, deg) of an estimated in-plane rotation.

    A rotation is read from how structure at the lever arm ``L`` (:func:`rotation_support_mm`) moves: an error of
    ``a`` mm in placing that structure is a rotation error of ``a / L`` rad. The placement error is taken as
    ``ROTATION_ARC_SHARE`` of the working pixel (a bias the image's noise does not show: rendering, MLC leaves,
    the metric); where the split-half check ran, the noise's part, half the spread of its two halves' rotations
    (each half has twice the variance of the whole, their difference four times), is added in quadrature; and
    where ``auto`` reports mutual information's rotation, the gap ``g`` to the edge optimum's (two estimates of
    one rotation: their difference has twice the variance of one): ``u = sqrt((a / L)^2 + (s / 2)^2 + g^2 / 2)``.
    A noisy reference's own misplacement ``r`` (mm, ``reference_arc_mm``: ``REFERENCE_NOISE_ARC``) adds ``(r / L)^2``;
    the images' departure from one rigid motion ``m`` (mm, ``rigidity``: :func:`rigidity_mm`), which a rotation
    partly absorbs, adds ``(m / L)^2``.

    Parameters
    ----------
    support_mm : float
        The rotation lever arm (mm at the isocentre), at least ``MIN_ROTATION_SUPPORT_MM`` where rotation is estimated.
    working_spacing_mm : float
        The finest working level's pixel (mm at the isocentre).
    split_half_deg : float or None
        The two halves' rotations' spread (deg); ``None`` where the check did not run.
    metric_gap_deg : float or None
        The edge and MI optima's rotations' difference (deg) where MI's is reported; ``None`` elsewhere.
    reference_arc_mm : float
        How far (mm, 1 sd, at the lever arm) the reference's own noise may misplace the matched structure where
        neither the split halves nor a smoothing cover it (``REFERENCE_NOISE_ARC`` working pixels over the
        reference's contrast over noise); 0 for a noise-free reference.
    rigidity : float
        The spatial halves' term (mm, :func:`rigidity_mm`); 0 where they were not measured.

    Returns
    -------
    float
        Degrees. Over the calibration set (see ``ROTATION_ARC_SHARE``) the truth lay within ``u`` in 83 % of the
        pairs and within ``2 u`` in 97 %.
    """
    bias = _DEGREES * ROTATION_ARC_SHARE * working_spacing_mm / support_mm
    own = _DEGREES * reference_arc_mm / support_mm
    parting = _DEGREES * rigidity / support_mm
    noise = 0.0 if split_half_deg is None else 0.5 * split_half_deg
    gap2 = 0.0 if metric_gap_deg is None else 0.5 * metric_gap_deg * metric_gap_deg
    return (bias * bias + own * own + parting * parting + noise * noise + gap2) ** 0.5  # math.hypot, written out


def shift_uncertainty_mm(working_spacing_mm: float, split_half_mm: float | None, metric_gap_mm: float | None,
                         shift_mm: float = 0.0, sad_mm: float | None = None, rotation_mm: float = 0.0,
                         beam_angle_deg: float = 0.0, rigidity: float = 0.0) -> float:
    """Return the standard uncertainty (1 sd, mm, each of ``dx`` and ``dy``) of a measured shift.

    The RMS radial error ``r`` has four parts, added in quadrature: placing the structure, ``SHIFT_ERROR_SHARE`` of
    the working pixel (a bias the image's noise does not show); where the split-half check ran, its halves' optima's
    distance ``s`` over 2 (each half has twice the variance of the whole: their difference's mean square is 4 times
    the whole's); the distance ``g`` between the edge and mutual-information optima over the square root of 2
    (two estimates of one shift); and the parallax of the shift measured, ``|d| Z / SAD`` (``PARALLAX_DEPTH_MM``: the
    matched structures' depth off the isocentre plane, which one view does not show, magnifies the shift); and where a
    rotation was estimated, its uncertainty carried into the shift, ``R u_theta``: the pose turns about the beam axis,
    so a shift measured on structure whose centre lies ``R`` from the axis (``details["rotation_offset_mm"]``, the
    usable pixels' centroid) is extrapolated to the axis through the rotation, and a rotation error ``e`` moves it
    by ``R e``. Each axis carries ``r / sqrt(2)``; and where the two beams are an angle ``b`` apart (within the view
    tolerance: a frame taken at gantry 1 deg where its reference was rendered at 0), the anatomy at depth ``z`` moved
    across the beam by ``z b`` against the isocentre's, so the shift measured is off by the matched anatomy's depth
    times ``b`` along one axis, ``V b`` (``VIEW_PARALLAX_DEPTH_MM``; an independent trial's frames 1-3 deg off their
    references were 0.4-3.3 mm off, at up to 11 of the uncertainty stated without it), taken whole on each axis:
    ``u = sqrt(((k w)^2 + (s / 2)^2 + g^2 / 2 + (|d| Z / SAD)^2 + (R u_theta)^2) / 2 + (V b)^2 + m^2)``, with ``m``
    the images' departure from one rigid motion (:func:`rigidity_mm`), also taken whole on each axis.

    Parameters
    ----------
    working_spacing_mm : float
        The finest working level's pixel (mm at the isocentre).
    split_half_mm : float or None
        The split-half check's distance between its halves' optima (mm); ``None`` where it did not run.
    metric_gap_mm : float or None
        The edge and MI optima's distance (mm, ``details["edge_mi_gap_mm"]``); ``None`` where MI was not measured.
    shift_mm : float
        The length ``|d|`` of the shift measured (mm at the isocentre plane).
    sad_mm : float or None
        The beam's source-to-axis distance (mm); ``None``: ``DEFAULT_SAD_MM``.
    rotation_mm : float
        ``R u_theta`` (mm): the estimated rotation's standard uncertainty (rad) times the distance ``R`` (mm) of the
        usable pixels' centroid from the beam axis; where no rotation was estimated, the unmeasured turn's
        (``UNESTIMATED_TURN_DEG`` at the usable pixels' RMS radius: :func:`unestimated_turn_mm`).
    beam_angle_deg : float
        The angle between the reference's and the frame's beams (deg, ``details["beam_angle_deg"]``); 0 where unknown.
    rigidity : float
        ``m`` (mm): :func:`rigidity_mm` of the spatial halves' distances (``details["rigidity_check"]["term_mm"]``);
        0 where they were not measured.

    Returns
    -------
    float
        Millimetres at the isocentre plane. On the calibration sets (see ``SHIFT_ERROR_SHARE`` and
        ``PARALLAX_DEPTH_MM``) 85 % of the axis errors lay within ``u`` and 98 % within ``2 u``.
    """
    bias = SHIFT_ERROR_SHARE * working_spacing_mm
    noise = 0.0 if split_half_mm is None else 0.5 * split_half_mm
    gap2 = 0.0 if metric_gap_mm is None else 0.5 * metric_gap_mm * metric_gap_mm
    parallax = shift_mm * PARALLAX_DEPTH_MM / (sad_mm if sad_mm else DEFAULT_SAD_MM)
    view = VIEW_PARALLAX_DEPTH_MM * beam_angle_deg / _DEGREES  # view_parallax_mm, written out: per-frame code
    return ((bias * bias + noise * noise + gap2 + parallax * parallax + rotation_mm * rotation_mm) * 0.5
            + view * view + rigidity * rigidity) ** 0.5


def view_parallax_mm(beam_angle_deg: float) -> float:
    """Return how far (mm, 1 sd, along one image axis) beams ``beam_angle_deg`` apart move the shift measured.

    ``VIEW_PARALLAX_DEPTH_MM`` times the angle (rad): the matched anatomy's depth off the isocentre plane times the
    angle between the reference's and the frame's beams. The term of :func:`shift_uncertainty_mm`, and what the
    program refuses over ``MAX_VIEW_PARALLAX_MM``.
    """
    return VIEW_PARALLAX_DEPTH_MM * beam_angle_deg / _DEGREES


def rigidity_mm(rows_mm: float, cols_mm: float, working_spacing_mm: float, depth_mm: float | None = None) -> float:
    """Return the shift's uncertainty term (mm, each axis) for the spatial halves' distances.

    ``RIGIDITY_SHARE`` of the largest of ``rows_mm``, ``cols_mm`` and ``depth_mm`` (``_refine.spatial_halves``: the
    upper and lower halves' optima's distance, the left and right halves', the field's inner and outer halves'; ``None``:
    not measured) less ``RIGIDITY_NOISE_SHARE`` working pixels, at least 0, at most ``RIGIDITY_MAX_MM``: the
    ``rigidity`` of :func:`shift_uncertainty_mm`.
    """
    larger = rows_mm if rows_mm > cols_mm else cols_mm
    if depth_mm is not None and depth_mm > larger:
        larger = depth_mm
    return min(max(RIGIDITY_SHARE * (larger - RIGIDITY_NOISE_SHARE * working_spacing_mm), 0.0), RIGIDITY_MAX_MM)


def unestimated_turn_mm(rms_radius_mm: float | None) -> float:
    """Return how far (mm, 1 sd) a turn that was not estimated may move a shift measured on structure of that radius.

    ``rms_radius_mm`` is the usable pixels' RMS distance from the beam axis (``details["rotation_radius_mm"]``);
    the turn's standard deviation is ``UNESTIMATED_TURN_DEG``. The ``rotation_mm`` of :func:`shift_uncertainty_mm`
    where no rotation was estimated; 0 for an unknown radius.
    """
    return 0.0 if not rms_radius_mm else rms_radius_mm * UNESTIMATED_TURN_DEG / _DEGREES


def reference_search_contrast(plan: FramePlan) -> float:
    """Return the reference's contrast over noise on the search level, measured as a frame's is there (``assess_frame``).

    The robust range of the reference's pixels on the search level (``plan.coarse``; where they may be compared, less
    the level's field-edge band) over its white-noise sigma as measured on the finest working level, divided by 2 for
    each level between (box averaging). A finer level's own range holds the noise's (about 5 sigmas: white noise
    alone), so :func:`reference_contrast_to_noise` there does not tell a noise-only reference from one with anatomy;
    this does, as the frame's ``contrast is ...x the noise on the search level`` does. ``inf`` for a noise-free
    reference (a DRR). Rare (``_program``'s smoothed pairs): not kept.
    """
    finest = plan.levels[plan.refine_levels[-1]]
    fine_ratio = reference_contrast_to_noise(finest)
    if not 0.0 < fine_ratio < math.inf:
        return fine_ratio
    coarse = plan.levels[plan.coarse.level]
    fine_range, coarse_range = _reference_range(finest), _reference_range(coarse)
    if fine_range is None or coarse_range is None:  # too few pixels to tell (a strip of a field, eroded away)
        return math.inf
    noise = fine_range / fine_ratio / 2.0 ** (coarse.index - finest.index)
    return coarse_range / noise if noise > 0.0 else math.inf


#: Fewest of the reference's pixels (or second differences) on a level that tell its noise or its range.
_REFERENCE_MIN_SAMPLES = 64


def _comparable_reference(level: Level) -> tuple[np.ndarray, np.ndarray]:
    """Return the reference's pixels on ``level`` (float32) and where they may be compared less the level's band."""
    from scipy import ndimage

    valid = ndimage.binary_erosion(np.asarray(level.ref_valid, dtype=bool), iterations=max(level.erosion_px, 1))
    return np.asarray(level.ref_image, dtype=np.float32), valid


def _reference_range(level: Level) -> float | None:
    """Return the reference's robust range on ``level`` where it may be compared, less the level's field-edge band.

    None where fewer than ``_REFERENCE_MIN_SAMPLES`` pixels are left.
    """
    from ._reference import _robust_range

    image, valid = _comparable_reference(level)
    if int(valid.sum()) < _REFERENCE_MIN_SAMPLES:
        return None
    lo, hi = _robust_range(image[valid])
    return hi - lo


def reference_contrast_to_noise(level: Level) -> float:
    """Return the reference's robust contrast over its white-noise sigma on ``level`` (a frame's measure).

    Where the reference may be compared less the level's field-edge band (``Level.erosion_px``), as a frame's
    usable pixels: the robust range the MI bins take (``_reference._robust_range``) over the noise as
    :func:`_noise_sigma` measures a frame's (the MAD of horizontal second differences). ``inf`` for a
    noise-free reference (a DRR) or one with too few pixels to tell. Computed once per level and kept
    (``Level.ref_contrast_to_noise``).
    """
    if level.ref_contrast_to_noise is None:
        from ._reference import _robust_range

        image, valid = _comparable_reference(level)
        rows, cols = image.shape
        # the frame's statistic (every row here): the MAD of the second differences whose three pixels are valid
        mad, count = second_difference_mad(image, valid.view(np.uint8), 0, rows, 1, 0, cols, True)
        ratio = math.inf
        if count >= _REFERENCE_MIN_SAMPLES:
            noise = _noise_sigma(None, level, (mad, count))
            lo, hi = _robust_range(image[valid])
            ratio = math.inf if noise <= 0.0 else float(hi - lo) / noise
        level.ref_contrast_to_noise = ratio
    return level.ref_contrast_to_noise
