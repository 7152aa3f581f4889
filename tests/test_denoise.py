"""A noisy frame is registered from its smoothed pixels (``_program.DENOISE_*``), and only a noisy one.

Low-dose MV frames (5 % quantum noise) against a DRR were the held-out open fields' worst pairs: the edge
features are gradients, which amplify white noise (``python -m bench.held_out``, open fields, low dose: median
error 0.249 mm before, 0.135 mm after, over seeds 11, 21 and 31).
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import replace

import numpy as np
import portalign
import pytest
from portalign.field import NO_FIELD
from portalign.registration import _program, _quality
from portalign.registration._frame import denoised_frame

from tests.synthetic import anatomy, moved, mv_portal

SHAPE = (256, 256)


def _pair(dx: float, dy: float, noise: float, seed: int, reference_noise: float = 0.0):  # type: ignore[no-untyped-def]
    base = anatomy(384, seed=seed)
    open_beam = np.ones(SHAPE)
    if reference_noise:
        ref = portalign.Image.from_array(mv_portal(moved(base, 0, 0, 0, shape=SHAPE), open_beam,
                                                   noise=reference_noise, seed=seed + 100),
                                         pixel_spacing_mm=1.0, kind="portal")
    else:
        ref = portalign.Image.from_array(moved(base, 0, 0, 0, shape=SHAPE), pixel_spacing_mm=1.0, kind="drr")
    frame = portalign.Image.from_array(mv_portal(moved(base, dx, dy, 0, shape=SHAPE), open_beam, noise=noise,
                                                 seed=seed), pixel_spacing_mm=1.0, kind="portal")
    return ref, frame


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_noisy_frame_against_a_drr_is_smoothed_and_lands_on_the_shift(seed):
    dx, dy = 3.3, -2.1
    ref, frame = _pair(dx, dy, 0.05, seed)
    result = portalign.register(ref, frame, backend="cpu")
    assert result.ok, result.reason
    record = result.details["denoised"]
    assert record is not None and record["sigma_mm"] == _program.DENOISE_SIGMA_MM
    assert record["reference_smoothed"] is False  # a DRR: the frame alone
    assert record["contrast_to_noise"] < _program.DENOISE_BELOW_CNR
    assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) <= 0.25


def test_a_smoothed_frame_against_a_noisy_drr_states_the_references_noise_in_its_rotation_uncertainty():
    """A noisy frame matched smoothed against a reference left as it is: the reference's own noise, shared by the split
    halves and not smoothed, enters the rotation's uncertainty (``_quality.REFERENCE_NOISE_ARC`` working pixels over
    the reference's contrast over noise, at the lever arm). An independent trial's DRRs with 1.5-3 % noise: frames
    matched smoothed 0.37-0.49 deg off at the median, 67-81 % within two uncertainties before (session note 46). A
    noise-free DRR adds next to nothing (its contrast over noise in the thousands, or infinite)."""
    from portalign.registration._quality import reference_contrast_to_noise, rotation_uncertainty_deg

    base = anatomy(384, seed=4)
    clean = portalign.Image.from_array(moved(base, 0, 0, 0, shape=SHAPE), pixel_spacing_mm=1.0, kind="drr")
    rng = np.random.default_rng(7)
    noisy = portalign.Image.from_array(clean.pixels + rng.normal(0.0, 0.004 * float(np.ptp(clean.pixels)), SHAPE),
                                       pixel_spacing_mm=1.0, kind="drr")
    frame = portalign.Image.from_array(mv_portal(moved(base, 2.0, -1.0, 1.0, shape=SHAPE), np.ones(SHAPE), noise=0.03,
                                                 seed=4), pixel_spacing_mm=1.0, kind="portal")
    results = {}
    for name, ref in (("clean", clean), ("noisy", noisy)):
        prepared = portalign.prepare_reference(ref, backend="cpu")
        result = prepared.register(frame)
        assert result.ok and result.rotation_deg is not None, result.reason
        assert result.details["denoised"] is not None and result.details["denoised"]["reference_smoothed"] is False
        plan = prepared.plan_for(frame.shape, frame.spacing_mm, frame.beam_axis_px)
        contrast = reference_contrast_to_noise(plan.levels[plan.refine_levels[-1]])
        d = result.details
        arc = 0.0 if contrast == math.inf else _quality.REFERENCE_NOISE_ARC * d["working_spacing_mm"] / contrast
        assert d["rotation_uncertainty_deg"] == pytest.approx(rotation_uncertainty_deg(
            d["rotation_support_mm"], d["working_spacing_mm"], d["split_half_deg"], d["edge_mi_rotation_gap_deg"], arc))
        results[name] = (contrast, d)
    assert results["clean"][0] > 1000.0  # a noise-free DRR: next to nothing (25 / 1000 of a working pixel)
    assert results["noisy"][0] < 300.0, results["noisy"][0]
    noisy_d = results["noisy"][1]
    without = rotation_uncertainty_deg(noisy_d["rotation_support_mm"], noisy_d["working_spacing_mm"],
                                       noisy_d["split_half_deg"], noisy_d["edge_mi_rotation_gap_deg"])
    assert noisy_d["rotation_uncertainty_deg"] > without * 1.05


@pytest.mark.parametrize("seed", [1, 2])
def test_a_smoothed_frame_is_checked_for_precision_on_uncoupled_halves(seed):
    """Smoothing raises the edge score without adding information: the split-half check runs whatever the score.

    Its halves are the two colours of a checkerboard of squares three smoothing sigmas wide (alternate pixels of a
    smoothed frame share their noise). The checkerboard's halves hold about half the pixels each, and refined
    alone they land within the check's limit here (a precise frame), in the compiled program and in the eager steps.
    """
    from dataclasses import replace

    from portalign.backends import cpu_backend
    from portalign.registration import _search_program

    ref, frame = _pair(3.3, -2.1, 0.02, seed)
    compiled = portalign.register(ref, frame, backend="cpu")
    assert compiled.details["denoised"] is not None and compiled.ok
    assert compiled.details["edge_score"] >= _search_program.SPLIT_HALF_BELOW_SCORE  # smoothed: a strong score...
    assert compiled.details["split_half_mm"] is not None  # ...still checked
    assert compiled.details["split_half_mm"] < _program.SPLIT_HALF_MAX_MM
    eager = portalign.register(ref, frame, backend=replace(cpu_backend(), compiled_program=False))
    assert eager.details["split_half_mm"] == pytest.approx(compiled.details["split_half_mm"], abs=1e-9)
    assert eager.details["split_half_deg"] == pytest.approx(compiled.details["split_half_deg"], abs=1e-9, nan_ok=True)


def test_checkerboard_halves_split_the_pixels_by_square():
    """The compiled split-half's checkerboard: each half holds the pixels of one colour of ``block``-pixel squares."""
    from portalign.kernels.cpu import program

    rows = np.repeat(np.arange(12, dtype=np.int32), 10)
    cols = np.tile(np.arange(10, dtype=np.int32), 12)
    colour = (rows // 3 + cols // 3) % 2
    captured = []

    def fake_refine(metric, half_rows, half_cols, half, *rest):  # type: ignore[no-untyped-def]
        captured.append((half_rows[:half].copy(), half_cols[:half].copy()))

    # the plain Python function behind the compiled one, its refine swapped for one that records the half
    py_newton_half = program._newton_half.py_func
    globals_ = dict(py_newton_half.__globals__, refine=fake_refine, _steps=lambda *a: None)
    plain = types.FunctionType(py_newton_half.__code__, globals_)
    level = (rows, cols) + (None,) * 7
    for first in (0, 1):
        plain(level, first, rows.size, None, None, 0, 1, 1.0, False, 0.0, False, 0.05, 0.1, None, None, 3)
        got_rows, got_cols = captured[-1]
        assert got_rows.size == int((colour == first).sum()) > 0
        assert np.all((got_rows // 3 + got_cols // 3) % 2 == first)


def test_smoothing_recovers_low_dose_frames_the_raw_edges_cannot_match(monkeypatch):
    """Six frames at 6 % noise: smoothed, every one is ok within 0.3 mm; raw, their edges are lost in the noise."""
    outcomes: dict[bool, list] = {True: [], False: []}
    for seed in range(1, 7):
        ref, frame = _pair(2.4, 1.7, 0.06, seed)
        for on in (True, False):
            monkeypatch.setattr(_program, "DENOISE", on)
            result = portalign.register(ref, frame, backend="cpu")
            assert (result.details["denoised"] is not None) == on
            error = None if result.dx_mm is None else math.hypot(result.dx_mm - 2.4, result.dy_mm - 1.7)
            outcomes[on].append((result.ok, error, result.reason))
    assert all(ok and error <= 0.3 for ok, error, _ in outcomes[True]), outcomes[True]
    # raw: refused (never a wrong answer), the reason naming the weak edge correlation
    assert sum(ok for ok, _, _ in outcomes[False]) <= 2, outcomes[False]
    assert all(ok or "edge correlation" in reason for ok, _, reason in outcomes[False]), outcomes[False]


def _jaws() -> np.ndarray:
    """Beam fraction through 156 x 176 mm jaws (2 % outside, 2 mm penumbra) on the 1 mm ``SHAPE`` grid."""
    from scipy import ndimage

    jaws = np.full(SHAPE, 0.02)
    jaws[40:216, 50:206] = 1.0
    return ndimage.gaussian_filter(jaws, 2.0)


def _jaws_pair(dx: float, dy: float, noise: float, seed: int):  # type: ignore[no-untyped-def]
    """A DRR without a field, and a frame through :func:`_jaws` with ``noise``."""
    base = anatomy(384, seed=seed)
    ref = portalign.Image.from_array(moved(base, 0, 0, 0, shape=SHAPE), pixel_spacing_mm=1.0, kind="drr")
    frame = portalign.Image.from_array(mv_portal(moved(base, dx, dy, 0, shape=SHAPE), _jaws(), noise=noise, seed=seed),
                                       pixel_spacing_mm=1.0, kind="portal")
    return ref, frame


@pytest.mark.parametrize("through_jaws", [False, True])
def test_a_frame_too_noisy_for_its_contrast_is_smoothed_before_it_is_refused(monkeypatch, through_jaws):
    """15 % noise: the frame's contrast on the search level is under 12x its noise (7-12x), more than noise alone gives.

    Before, such a frame was refused as it was taken ("too little structure", or "blank (beam off?)" without a field),
    never smoothed: held-out low-dose DRR pairs through jaws, a collimator and MLC from the TotalSegmentator CT were
    refused so, and smoothed were ok within 0.05-0.62 mm (``python -m bench.held_out --ct
    ../shared/data/real/totalsegmentator/example_ct.nii.gz``, seeds 3, 4, 6: 8 of 240 more ok, none more than 2 mm
    off). Smoothed, most frames here land within 0.5 mm, and none is ok further off (through the jaws, at 12 %, two
    of four are refused as imprecise: their edges, which a DRR's pair reports, place them 1.3-1.5 mm apart on two
    halves of their pixels); unsmoothed the same frames are refused, naming why.
    """
    dx, dy = 3.3, -2.1
    if through_jaws:
        pairs = [_jaws_pair(dx, dy, 0.12, seed) for seed in (1, 2, 3, 4)]
    else:
        pairs = [_pair(dx, dy, 0.15, seed) for seed in (1, 2, 3)]
    oks = 0
    for ref, frame in pairs:
        result = portalign.register(ref, frame, backend="cpu")
        assert result.details["denoised"]["sigma_mm"] == _program.DENOISE_SIGMA_MM
        assert result.field_detected == through_jaws
        if result.ok:
            oks += 1
            assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) <= 0.5
        else:
            assert result.reason.startswith("imprecise: two halves of the usable pixels"), result.reason
    assert oks >= 2
    monkeypatch.setattr(_program, "TOO_LITTLE_STRUCTURE", ())  # the previous rule: such a frame is not smoothed
    refused = [portalign.register(ref, frame, backend="cpu") for ref, frame in pairs]
    where = "inside the field" if through_jaws else "in the frame"
    low = [r for r in refused if r.reason.startswith(f"too little structure {where}: contrast is ")]
    assert len(low) >= 2, [r.reason for r in refused]
    assert all(r.details["denoised"] is None and r.dx_mm is None and not r.ok for r in low)


def test_a_frame_still_too_noisy_once_smoothed_says_it_was_smoothed(monkeypatch):
    """The reason of a frame refused for its contrast after the smoothing names it, and the frame as it was taken."""
    monkeypatch.setattr(_quality, "MIN_CONTRAST_TO_NOISE", 1e6)  # no frame passes, smoothed or not
    ref, frame = _jaws_pair(3.3, -2.1, 0.15, 1)
    result = portalign.register(ref, frame, backend="cpu")
    assert not result.ok and result.dx_mm is None and result.rotation_deg is None
    record = result.details["denoised"]
    assert record is not None
    assert result.reason.startswith("too little structure inside the field: contrast is "), result.reason
    assert result.reason.endswith(f", after its pixels were smoothed by 1 mm (the frame as taken: "
                                  f"{record['contrast_to_noise']:.1f}x the noise at its finest level)"), result.reason


@pytest.mark.parametrize("through_jaws", [False, True])
def test_a_frame_of_nothing_but_noise_is_refused_as_such_and_not_smoothed(through_jaws):
    """Flat fields of 5 % noise: white noise alone spans about 5 of its sigmas (4.9-5.4 measured), nothing to smooth for."""
    ref, _ = _pair(0.0, 0.0, 0.0, 1)
    aperture = _jaws() if through_jaws else np.ones(SHAPE)
    for seed in (1, 2):
        pixels = 1000.0 * aperture * (1.0 + 0.05 * np.random.default_rng(seed).standard_normal(SHAPE))
        frame = portalign.Image.from_array(pixels, pixel_spacing_mm=1.0, kind="portal")
        result = portalign.register(ref, frame, backend="cpu")
        assert not result.ok and result.dx_mm is None and result.details["denoised"] is None
        # nothing was measured: no "rotation not estimated (translation only)" either (a new user's trial)
        assert not any("translation only" in w for w in result.warnings), result.warnings
        if through_jaws:
            assert result.reason.startswith("nothing but noise inside the field: contrast is "), result.reason
            assert result.reason.endswith("(noise alone gives about 5x; at least 12x needed): too low a dose for the "
                                          "anatomy in it, or none; use a longer exposure or average frames")
        else:
            assert result.reason.startswith("frame is blank (beam off?): contrast is "), result.reason
            assert result.reason.endswith("x the noise, which noise alone gives (about 5x): no image in it; check the "
                                          "exposure and that the beam reached the detector"), result.reason


def test_a_frame_as_noisy_as_its_portal_reference_is_not_smoothed_alone(monkeypatch):
    monkeypatch.setattr(_program, "SMOOTH_PAIR", False)
    ref, frame = _pair(3.3, -2.1, 0.05, 4, reference_noise=0.05)
    result = portalign.register(ref, frame, backend="cpu")
    assert result.details["denoised"] is None
    assert result.details["contrast_to_noise"] < _program.DENOISE_BELOW_CNR  # noisy, but no noisier than the reference


def test_a_noisy_frame_and_an_as_noisy_portal_reference_are_smoothed_together(monkeypatch):
    """5 % noise on both images: their edges are lost in it (edge correlation 0.007-0.013, refused); smoothed alike,
    every pair lands within 0.15 mm. Held-out portal pairs from the TotalSegmentator CT (seeds 5 and 3) were refused
    so, 11 and 12 of 40 ok before, 25 and 26 after, every ok one within 0.65 mm."""
    dx, dy = 3.3, -2.1
    pairs = [_pair(dx, dy, 0.05, seed, reference_noise=0.05) for seed in (1, 2, 3, 4)]
    reference = portalign.prepare_reference(pairs[0][0], backend="cpu")
    for ref, frame in pairs:
        result = portalign.register(ref, frame, backend="cpu")
        assert result.ok, result.reason
        assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) <= 0.15
        record = result.details["denoised"]
        assert record["reference_smoothed"] is True and record["sigma_mm"] == _program.DENOISE_SIGMA_MM
        assert record["contrast_to_noise"] < _program.DENOISE_BELOW_CNR  # the frame's own, as taken
    # one prepared reference makes its smoothed twin once, and never a twin of the twin
    first = reference.register(pairs[0][1])
    twin = reference.smoothed_twin(_program.DENOISE_SIGMA_MM)
    assert first.ok and reference.register(pairs[0][1]).dx_mm == first.dx_mm
    assert reference.smoothed_twin(2.0) is twin and twin._smoothed_of is reference and twin._smoothed is None
    assert twin.field is reference.field and twin.image.spacing_mm == reference.image.spacing_mm
    assert float(np.std(twin.image.pixels)) < float(np.std(reference.image.pixels))  # smoothed
    assert first.reference_uid == (reference.image.info.sop_instance_uid or None)  # the reference's (an array's: null)
    monkeypatch.setattr(_program, "SMOOTH_PAIR", False)  # as taken: refused, never a wrong answer
    for ref, frame in pairs:
        result = portalign.register(ref, frame, backend="cpu")
        assert not result.ok and result.reason.startswith("no match: edge correlation "), result.reason


def test_a_clean_frame_against_a_noisy_reference_portal_image_is_registered_smoothed_alike(monkeypatch):
    """A new user's trial: a clean frame against a reference portal image with 10 % noise was refused ("no match: edge
    correlation 0.01-0.03"), nothing naming the noisy reference; smoothed alike, each lands within 0.25 mm."""
    dx, dy = 3.3, -2.1
    pairs = [_pair(dx, dy, 0.0, seed, reference_noise=0.1) for seed in (1, 2, 3)]
    for ref, frame in pairs:
        result = portalign.register(ref, frame, backend="cpu")
        assert result.ok, result.reason
        assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) <= 0.25
        assert result.details["denoised"]["reference_smoothed"] is True
        assert result.details["denoised"]["contrast_to_noise"] > _program.DENOISE_BELOW_CNR  # the frame is clean
    monkeypatch.setattr(_program, "SMOOTH_PAIR", False)
    for ref, frame in pairs:
        result = portalign.register(ref, frame, backend="cpu")
        assert not result.ok and result.reason.startswith("no match: edge correlation "), result.reason


def test_a_pair_refused_once_smoothed_too_keeps_its_reason_and_says_it_was_smoothed():
    """10 % noise on both images: refused as taken and smoothed; the reason is the pair's as taken."""
    ref, frame = _pair(3.3, -2.1, 0.1, 1, reference_noise=0.1)
    result = portalign.register(ref, frame, backend="cpu")
    assert not result.ok and result.dx_mm is None
    assert result.reason.startswith("no match: edge correlation "), result.reason
    assert result.details["denoised"] is None
    notes = [w for w in result.warnings if w.startswith("registered again with both images smoothed by 1 mm")]
    assert len(notes) == 1 and "and refused so too: no match: edge correlation " in notes[0], result.warnings


def test_a_clean_frame_is_left_as_it_is():
    ref, frame = _pair(3.3, -2.1, 0.0, 5)
    result = portalign.register(ref, frame, backend="cpu")
    assert result.ok and result.details["denoised"] is None


def test_dead_lines_keep_their_values_and_stay_out_of_their_neighbours():
    rng = np.random.default_rng(0)
    pixels = (1000.0 + rng.normal(0.0, 20.0, (64, 80))).astype(np.float32)
    pixels[20:22, :] = 0.0  # two dead rows
    pixels[:, 50] = 0.0  # a dead column
    frame = portalign.Image.from_array(pixels, pixel_spacing_mm=0.5, kind="portal")
    # dead lines as the field detection reports them: lines of its level (here 2 detector pixels each)
    field = replace(NO_FIELD, dead_rows=(10,), dead_cols=(25,), level_shape=(32, 40))
    out = denoised_frame(frame, field, 2, 1.0)
    assert out.pixels.shape == pixels.shape and out.spacing_mm == frame.spacing_mm
    assert out.info is frame.info and out.beam_axis_px == frame.beam_axis_px
    assert np.array_equal(out.pixels[20:22], pixels[20:22]) and np.array_equal(out.pixels[:, 50:52], pixels[:, 50:52])
    live = np.ones(pixels.shape, dtype=bool)
    live[20:22] = False
    live[:, 50:52] = False
    # the dead lines' zeros are not smeared into their neighbours, and the noise is smoothed away
    assert abs(float(out.pixels[live].mean()) - 1000.0) < 2.0 and float(out.pixels[live].min()) > 950.0
    assert float(out.pixels[live].std()) < 0.3 * float(pixels[live].std())


def test_a_small_field_of_nothing_but_noise_is_told_its_field_holds_too_little():
    """A new user's trial: a 12 mm cone frame at a usual dose was told "too low a dose ...; use a longer exposure". A
    small field's noise-only verdict names the field's size and that it holds too little anatomy, then the dose."""
    from scipy import ndimage

    ref = portalign.Image.from_array(moved(anatomy(384, seed=3), 0, 0, 0, shape=SHAPE), pixel_spacing_mm=0.5,
                                     kind="drr")
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    cone = ndimage.gaussian_filter(np.where(np.hypot(xx - 127.5, yy - 127.5) * 0.5 < 12.0, 1.0, 0.02), 2.0)
    pixels = 1000.0 * cone * (1.0 + 0.05 * np.random.default_rng(4).standard_normal(SHAPE))
    result = portalign.register(ref, portalign.Image.from_array(pixels, pixel_spacing_mm=0.5, kind="portal"),
                                backend="cpu")
    assert not result.ok and result.dx_mm is None
    assert result.reason.startswith("nothing but noise inside the field: contrast is "), result.reason
    assert result.reason.endswith("mm field holds too little anatomy for this noise: image the setup through a larger "
                                  "field, or with a longer exposure"), result.reason


def test_the_field_interior_is_smoothed_over_itself_and_keeps_the_penumbra_out():
    """A noisy frame through a field: smoothed whole, the dark outside spread 3 sigma into the usable interior (a
    gradient fixed to the beam, which a DRR lacks: still frames through 20-28 mm fields were ok with rotations 1.9-4.2
    deg off). Given the usable pixels of a level (the field less its band), those are smoothed over themselves: flat,
    no ramp towards the edge; the rest as before."""
    rng = np.random.default_rng(1)
    rows, cols = 64, 80
    pixels = np.full((rows, cols), 20.0)
    pixels[16:48, 20:60] = 1000.0  # a sharp 16 x 20 mm field at 0.5 mm pixels
    pixels = (pixels + rng.normal(0.0, 10.0, pixels.shape)).astype(np.float32)
    frame = portalign.Image.from_array(pixels, pixel_spacing_mm=0.5, kind="portal")
    usable = np.zeros((32, 40), dtype=np.uint8)
    usable[10:22, 12:28] = 1  # a level of 2 detector pixels: the field less 2 mm (4 detector pixels) on every side
    whole = denoised_frame(frame, NO_FIELD, 2, 1.0).pixels
    inside = denoised_frame(frame, NO_FIELD, 2, 1.0, usable, 2).pixels
    core = np.zeros(pixels.shape, dtype=bool)
    core[20:44, 24:56] = True
    rim = core & ~np.pad(np.ones((16, 24), dtype=bool), ((24, 24), (28, 28)))  # the core's outer 4 pixels
    assert float(whole[rim].min()) < 985.0  # the outside's 20 pulled in by the smoothing (2 sigma from the edge)
    assert abs(float(inside[core].mean()) - 1000.0) < 1.5 and float(inside[core].min()) > 990.0
    assert float(inside[core].std()) < 0.35 * float(pixels[core].std())
    assert np.array_equal(inside[~core], whole[~core])  # outside the usable pixels: smoothed as before


def test_with_field_none_dead_lines_are_still_found_and_a_noisy_frame_still_smoothed():
    """A new user's trial: with ``--field none`` two dead rows of pylinac's leeds_kv.dcm (a window moved 7 rows and
    -5 columns, 6 % noise) were matched as anatomy, with no warning, and their zeros raised the frame's contrast
    over noise from 48.9 to 194.8, so that the frame was not smoothed."""
    from tests.field_sets import REAL

    path = REAL / "pylinac" / "planar_imaging" / "leeds_kv.dcm"
    if not path.is_file():
        pytest.skip(f"{path} not present (../shared/data/real)")
    image = portalign.read_rt_image(path)
    pixels, spacing, m = image.pixels.astype(np.float64), image.spacing_mm, 20
    rows, cols = pixels.shape[0] - 2 * m, pixels.shape[1] - 2 * m
    ref = pixels[m:m + rows, m:m + cols]
    prepared = portalign.prepare_reference(portalign.Image.from_array(ref, pixel_spacing_mm=spacing, kind="portal"),
                                           portalign.RegistrationOptions(field="none"), backend="cpu")
    noise = np.random.default_rng(0).normal(0.0, 0.06 * float(np.ptp(ref)), (rows, cols))
    window = pixels[m + 7:m + 7 + rows, m - 5:m - 5 + cols] + noise
    results = []
    for dead in (False, True):
        frame = window.copy()
        if dead:
            frame[int(rows * 0.45):int(rows * 0.45) + 2, :] = 0.0
        results.append(prepared.register(portalign.Image.from_array(frame, pixel_spacing_mm=spacing, kind="portal")))
    clean, dead = results
    assert any("2 dead detector row(s)" in w for w in dead.warnings), dead.warnings
    assert not any("dead detector" in w for w in clean.warnings)
    assert clean.details["denoised"] is not None and dead.details["denoised"] is not None
    ratio = dead.details["denoised"]["contrast_to_noise"] / clean.details["denoised"]["contrast_to_noise"]
    assert 0.9 < ratio < 1.1, ratio  # the dead rows' zeros no longer count as contrast
    for result in results:
        assert result.ok and math.hypot(result.dx_mm - 5 * spacing[1], result.dy_mm + 7 * spacing[0]) <= 0.1


def _normalised_convolution(pixels: np.ndarray, live_rows: np.ndarray, live_cols: np.ndarray, taps_rows: np.ndarray,
                            taps_cols: np.ndarray) -> np.ndarray:
    """float64 numpy reference of ``smooth_separable``: along rows then columns, dead lines weightless, edges extended."""
    rows, cols = pixels.shape
    hr, hc = len(taps_rows) // 2, len(taps_cols) // 2
    r_index = np.clip(np.arange(rows)[:, None] + np.arange(-hr, hr + 1)[None, :], 0, rows - 1)  # (rows, taps)
    weights = taps_rows[None, :] * live_rows[r_index]
    along_rows = np.einsum("it,itj->ij", weights, pixels.astype(np.float64)[r_index]) / weights.sum(axis=1)[:, None]
    c_index = np.clip(np.arange(cols)[:, None] + np.arange(-hc, hc + 1)[None, :], 0, cols - 1)  # (cols, taps)
    weights = taps_cols[None, :] * live_cols[c_index]
    out = np.einsum("jt,ijt->ij", weights, along_rows[:, c_index]) / weights.sum(axis=1)[None, :]
    dead = ~live_rows.astype(bool)[:, None] | ~live_cols.astype(bool)[None, :]
    return np.where(dead, pixels, out)


@pytest.mark.parametrize("shape,sigmas", [((40, 57), (1.3, 2.2)), ((23, 9), (6.0, 0.8)), ((5, 70), (0.5, 11.0))])
def test_the_smoothing_kernel_is_the_normalised_convolution_it_documents(shape, sigmas):
    """The compiled smoothing (float32 sums, its column pass laid out row by row, since 2026-12-04)
    against a float64 reference: dead lines give no weight and keep their values; a kernel wider than the image
    reads the extended edge."""
    from portalign.kernels.cpu.pyramid import smooth_separable
    from portalign.registration._frame import _gaussian_taps

    rng = np.random.default_rng(sum(shape))
    pixels = rng.normal(500.0, 40.0, shape).astype(np.float32)
    live_rows = (rng.random(shape[0]) > 0.15).astype(np.uint8)
    live_cols = (rng.random(shape[1]) > 0.15).astype(np.uint8)
    live_rows[0] = live_cols[-1] = 0  # a dead line on the image's edge, which the extension reads
    taps_rows, taps_cols = _gaussian_taps(sigmas[0]), _gaussian_taps(sigmas[1])
    out = np.empty(shape, dtype=np.float32)
    smooth_separable(pixels, live_rows, live_cols, taps_rows, taps_cols, np.empty(shape, dtype=np.float32), out)
    expected = _normalised_convolution(pixels, live_rows, live_cols, taps_rows, taps_cols)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)
    assert np.array_equal(out[live_rows == 0], pixels[live_rows == 0])


def test_the_smoothing_gives_the_same_numbers_on_one_thread_and_on_two():
    """Its float32 sums are each pixel's own, in a fixed order: the thread count cannot change a bit of them."""
    import numba
    from portalign.kernels.cpu.pyramid import smooth_separable
    from portalign.registration._frame import _gaussian_taps

    rng = np.random.default_rng(3)
    pixels = rng.normal(800.0, 30.0, (97, 131)).astype(np.float32)
    live_rows, live_cols = np.ones(97, np.uint8), np.ones(131, np.uint8)
    live_rows[40] = live_cols[7] = 0
    taps = _gaussian_taps(3.8)
    outs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS), 1):
            numba.set_num_threads(threads)
            out = np.empty_like(pixels)
            smooth_separable(pixels, live_rows, live_cols, taps, taps, np.empty_like(pixels), out)
            outs.append(out)
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(outs[0], other) for other in outs[1:])


SMOOTH_PAIR_REASONS = _program.SMOOTH_PAIR_REASONS
_NOISE_NOTE = re.compile(r"the reference portal image shows nothing but noise: its contrast is ([0-9.]+)x its noise on "
                         r"the search level \(noise alone gives about 5x; at least 6\.5x needed; the frame's "
                         r"([0-9.]+)x\), so smoothing both cannot make a match of it; take the reference with more dose "
                         r"\(or average its frames\), or through a field that holds more anatomy$")


@pytest.mark.parametrize(("noise", "reference_noise"), [(0.0, 0.3), (0.02, 0.4)])
def test_a_reference_portal_image_of_noise_alone_is_not_smoothed(monkeypatch, noise, reference_noise):
    """A reference portal image that shows nothing but noise on the search level (the frame's own floor,
    ``_program.REFERENCE_NOISE_ONLY_CONTRAST``) is not smoothed and matched again: smoothed, its noise and the frame's
    become structure the two share by chance (an independent trial: a low-dose frame against a reference at 3.2x its
    noise, ok 13.8 mm off). The reason says how much each image shows and what to do."""
    for seed in (1, 2):
        ref, frame = _pair(3.3, -2.1, noise, seed, reference_noise=reference_noise)
        result = portalign.register(ref, frame, backend="cpu")
        assert not result.ok and result.dx_mm is None and result.details["denoised"] is None
        assert result.reason.startswith(SMOOTH_PAIR_REASONS), result.reason
        found = _NOISE_NOTE.search(result.reason)
        assert found is not None, result.reason
        reference_c, frame_c = float(found.group(1)), float(found.group(2))
        assert reference_c < _program.REFERENCE_NOISE_ONLY_CONTRAST < frame_c
        assert not any(w.startswith("registered again") for w in result.warnings), result.warnings
    # the rule off: smoothed, and refused so too (what the rule saves, and says better)
    monkeypatch.setattr(_program, "REFERENCE_NOISE_ONLY_CONTRAST", 0.0)
    result = portalign.register(ref, frame, backend="cpu")
    assert not result.ok and _NOISE_NOTE.search(result.reason) is None
    assert any(w.startswith("registered again with both images smoothed by 1 mm") for w in result.warnings)


def test_a_noisy_reference_that_shows_anatomy_is_still_smoothed_with_its_frame():
    """Both images at 20 % noise: the reference shows more than noise (its contrast over noise on the search level is
    recorded), so the pair is smoothed and matched again, and refused so too (no match): a refusal either way."""
    ref, frame = _pair(3.3, -2.1, 0.2, 1, reference_noise=0.2)
    result = portalign.register(ref, frame, backend="cpu")
    assert not result.ok and _NOISE_NOTE.search(result.reason) is None
    assert any(w.startswith("registered again with both images smoothed by 1 mm") for w in result.warnings)
