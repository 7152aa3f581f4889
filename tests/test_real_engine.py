"""The engine on real data: Winston-Lutz ball-bearing shifts and MV-vs-DRR pairs rendered from a real CT."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import portalign
import pytest
from portalign.dicom import read_rt_image

from tests.wl import REAL, bb_centroid_mm, wl_files

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present (a user's clone); real-data tests skipped"),
]

THORAX = REAL / "itkelastix" / "thorax_ct_phase00"


@pytest.fixture(scope="module")
def wl_sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wl")
    return {name: wl_files(name, tmp) for name in ("cardinal", "lat3mm", "lng3mm", "vrt3mm")}


@pytest.mark.parametrize("shifted", ["lat3mm", "lng3mm", "vrt3mm"])
@pytest.mark.parametrize("gantry", [0, 90, 180, 270])
def test_winston_lutz_ball_bearing_move(wl_sets, shifted, gantry):
    """cardinal (reference) vs a 3 mm couch shift at the same gantry angle: the BB moves, the field does not.

    The engine must report the BB's displacement (measured independently from BB centroids), not zero,
    within 0.3 mm.
    """
    ref_path, frame_path = wl_sets["cardinal"][gantry], wl_sets[shifted][gantry]
    result = portalign.register(read_rt_image(ref_path), read_rt_image(frame_path), backend="cpu")
    before, after = bb_centroid_mm(ref_path), bb_centroid_mm(frame_path)
    assert result.ok, result.reason
    assert result.field_detected
    assert abs(result.dx_mm - (after[0] - before[0])) <= 0.3
    assert abs(result.dy_mm - (after[1] - before[1])) <= 0.3


def test_winston_lutz_moves_along_the_couch_axis(wl_sets):
    """The 3 mm lateral move shows at gantry 0 (+x) and 180 (-x), not at 90/270 (the beam is along it)."""
    moves = {g: portalign.register(read_rt_image(wl_sets["cardinal"][g]), read_rt_image(wl_sets["lat3mm"][g]), backend="cpu")
             for g in (0, 90, 180, 270)}
    assert 2.5 < moves[0].dx_mm < 3.5 and -3.5 < moves[180].dx_mm < -2.5
    assert abs(moves[90].dx_mm) < 0.3 and abs(moves[270].dx_mm) < 0.3


@pytest.fixture(scope="module")
def thorax_ct():
    if not THORAX.is_dir():
        pytest.skip("thorax CT not present")
    from portalign.ct import read_ct_series

    return read_ct_series(THORAX).downsampled(2)


# displacements up to +-8 mm and +-3 deg, small out-of-plane tilts, a field fixed to the imager
REALISTIC = [
    ((4.9, 4.9), 0.1, (0.0, 0.0), 0, (-60.0, 70.0, -80.0, 55.0)),
    ((-1.5, -7.3), -2.7, (0.5, -0.5), 0, (-70.0, 60.0, -60.0, 60.0)),
    ((-4.2, -1.0), 2.8, (0.0, 0.0), 90, (-60.0, 60.0, -60.0, 60.0)),
    ((6.1, -7.0), 1.1, (-0.5, 0.3), 90, (-50.0, 70.0, -70.0, 50.0)),
    ((7.5, 2.0), -1.5, (0.3, 0.3), 0, (-80.0, 50.0, -50.0, 70.0)),
]


@pytest.fixture(scope="module")
def realistic_pairs(thorax_ct):
    """The REALISTIC pairs rendered once for the three methods' tests (a render takes ~2 s, a registration ~0.1 s)."""
    from portalign.simulate import render_pair

    return [render_pair(thorax_ct, shift_mm=shift, rotation_deg=theta, out_of_plane_deg=tilt, gantry_deg=gantry,
                        sid_mm=1500.0, detector_shape=(384, 512), detector_spacing_mm=0.784, field_mm=field,
                        noise=0.02, seed=i)
            for i, (shift, theta, tilt, gantry, field) in enumerate(REALISTIC)]


@pytest.mark.slow
@pytest.mark.parametrize("method,max_rotation_error", [("auto", 0.5), ("edge", 0.5), ("mi", 1.0)])
def test_mv_frames_against_drr_from_real_ct(realistic_pairs, method, max_rotation_error):
    """Realistic MV portal frames (noise, fixed field, small out-of-plane tilt) against kV DRRs of a real thorax CT.

    The truth holds at the isocentre plane; anatomy off that plane shows parallax, so the tolerance is that
    of a careful registration: median <= 0.5 mm, every case <= 1.1 mm, every result ok. Rotation: 0.5 deg
    for edges (auto, edge); mutual information alone is looser on rotation in lateral thorax views (measured
    0.7 deg at gantry 90), hence 1.0 deg for ``mi``.
    """
    errors = []
    for i, (ref, frame, truth) in enumerate(realistic_pairs):
        result = portalign.register(ref, frame, portalign.RegistrationOptions(method=method), backend="cpu")
        assert result.ok, (i, result.reason)
        errors.append(math.hypot(result.dx_mm - truth["dx_mm"], result.dy_mm - truth["dy_mm"]))
        assert abs(result.rotation_deg - truth["rotation_deg"]) <= max_rotation_error, i
    assert max(errors) <= 1.1, errors
    assert float(np.median(errors)) <= 0.5, errors


def test_real_drr_against_itself_shifted():
    """The Eclipse DRR of a RANDO pelvis against a copy moved by a known sub-pixel shift."""
    from scipy import ndimage

    path = next((REAL / "slicerrt" / "eclipse_prostate_rando").glob("RI*.dcm"))
    ref = read_rt_image(path)
    spacing = ref.spacing_mm[0]
    shifted = ndimage.shift(ref.pixels.astype(np.float64), (-2.3 / spacing, 3.7 / spacing), order=3, mode="nearest")
    frame = portalign.Image(shifted.astype(np.float32), ref.spacing_mm, ref.beam_axis_px, ref.info)
    result = portalign.register(ref, frame, backend="cpu")
    assert result.ok, result.reason
    assert abs(result.dx_mm - 3.7) <= 0.1 and abs(result.dy_mm + 2.3) <= 0.1
    assert Path(path).name.startswith("RI")


def test_reference_portal_image_with_the_same_field(thorax_ct):
    """MV reference portal image and MV frame share the field (4 mm penumbra): the penumbra must not hold the match at 0.

    The band around the field edge is widened to the penumbra measured on the reference; with the fixed
    3 mm band this pair came out at (2.4, 0.6) mm for a (3, 2) mm move.
    """
    from portalign.simulate import render_drr

    geometry = dict(sid_mm=1500.0, detector_shape=(384, 512), detector_spacing_mm=0.784, energy="mv",
                    field_mm=(-50.0, 50.0, -50.0, 50.0), penumbra_mm=4.0)
    ref = render_drr(thorax_ct, noise=0.01, seed=1, **geometry)
    frame = render_drr(thorax_ct, noise=0.01, seed=2, couch_shift_mm=(3.0, -2.0, 0.0), **geometry)
    reference = portalign.prepare_reference(ref, backend="cpu")
    assert reference.field_margin_mm > 4.0
    result = reference.register(frame)
    assert result.ok and result.field_detected
    assert math.hypot(result.dx_mm - 3.0, result.dy_mm - 2.0) <= 0.6


@pytest.mark.parametrize("name", ["EPID-PF-LR.dcm", "AS1200_PF.dcm", "AS500_PF.dcm"])
@pytest.mark.parametrize("shift", [(2.0, -3.0), (-4.0, 1.0)])
def test_picket_fence_is_never_a_confident_wrong_shift(name, shift):
    """MLC picket fences repeat every 10-15 mm: a shift by one period matches as well as the truth.

    The engine must say so (ambiguous, not ok) rather than report either optimum as trustworthy.
    """
    from scipy import ndimage

    image = read_rt_image(REAL / "pylinac" / "picket_fence" / name)
    spacing = image.spacing_mm[0]
    dy, dx = shift
    moved = ndimage.shift(image.pixels.astype(np.float64), (dy / spacing, dx / spacing), order=1, mode="nearest")
    frame = portalign.Image(moved.astype(np.float32), image.spacing_mm, image.beam_axis_px, image.info)
    result = portalign.register(image, frame, backend="cpu")
    error = math.hypot(result.dx_mm - dx, result.dy_mm - dy)
    assert not (result.ok and error > 0.5), (result.dx_mm, result.dy_mm, result.reason)
    assert not result.ok and "ambiguous" in result.reason


# low-dose MV frames at oblique gantry angles: precise enough to be trusted, or not ok (never ok and far off)
LOW_DOSE = [
    ((5.0, -3.0), 1.5, (0.5, -0.5), 30, 0.05),
    ((-6.0, 4.0), -2.0, (-0.5, 0.5), 135, 0.05),
    ((3.0, 6.0), 2.5, (0.3, 0.0), 200, 0.05),
    ((-4.0, -5.0), -1.0, (0.0, 0.8), 315, 0.05),
]


@pytest.mark.slow
def test_low_dose_oblique_frames_are_never_confidently_wrong(thorax_ct):
    from portalign.simulate import render_pair

    outcomes = []
    for k, (shift, rotation, tilt, gantry, noise) in enumerate(LOW_DOSE):
        ref, frame, _ = render_pair(thorax_ct, shift_mm=shift, rotation_deg=rotation, out_of_plane_deg=tilt,
                                    gantry_deg=gantry, detector_shape=(384, 512), detector_spacing_mm=0.784,
                                    field_mm=(-60.0, 60.0, -48.0, 48.0), noise=noise, seed=k)
        result = portalign.register(ref, frame, backend="cpu")
        # not measured (null) only on a result that is not ok: a frame found unusable, or no match
        assert result.dx_mm is not None or not result.ok
        error = math.nan if result.dx_mm is None else math.hypot(result.dx_mm - shift[0], result.dy_mm - shift[1])
        outcomes.append((result.ok, round(error, 2), result.reason[:40]))
        if result.ok:
            # the held-out bar is 2 mm; smoothed (``_program.DENOISE``) ok results here stay well inside it (0.16-0.26
            # mm on the full-resolution CT; 0.27-0.96 mm from the raw frames)
            assert error <= 0.6, outcomes
            assert result.details["denoised"] is not None, outcomes  # 5 % noise against a DRR: smoothed
        else:  # a weak match says why (imprecise halves, no match, MI against edges, too little structure)
            assert result.reason and "\n" not in result.reason, outcomes
    assert sum(ok for ok, _, _ in outcomes) >= 2, outcomes


@pytest.fixture(scope="module")
def held_out_ct():
    if not THORAX.is_dir():
        pytest.skip("thorax CT not present")
    from portalign.ct import read_ct_series

    from bench.cases import DRR_CT_DOWNSAMPLE

    return read_ct_series(THORAX).downsampled(DRR_CT_DOWNSAMPLE)


@pytest.mark.slow
def test_a_cone_on_soft_anatomy_matched_by_chance_is_refused(held_out_ct):
    """Pair 66 of ``python -m bench.held_out --seed 11``: a 20-40 mm cone at gantry 90 over soft tissue.

    Its edge correlation (0.095 over 996 pixels, 2.1 standard deviations of chance) passed the score floor
    and every other check, and the shift was 2.3 mm off with ok=true. The significance test refuses it.
    """
    from bench.held_out import render_pairs

    (pair,) = render_pairs(held_out_ct, 11, 67, only=[66])
    assert pair.kind == "cone" and pair.dead_lines and not pair.portal_reference
    result = portalign.register(pair.reference, pair.frame, backend="cpu")
    assert not result.ok
    assert result.reason.startswith("no match: edge correlation") and "within chance" in result.reason
    assert result.details["match_significance"] < 3.5 and result.details["matched_pixels"] > 500


@pytest.mark.slow
def test_held_out_kinds_are_never_confidently_wrong(held_out_ct):
    """Ten pairs of ``bench.held_out`` (seed 5): jaws, collimator-turned jaws, MLC, cones and open fields, DRR
    and portal references, oblique gantries, low dose and dead lines: every ok result within 1 mm, most ok."""
    from bench.held_out import render_pairs

    oks = 0
    within = []  # each ok rotation's error in its stated standard uncertainties
    axes = []  # each ok shift's errors along dx and dy in its stated standard uncertainty
    for pair in render_pairs(held_out_ct, 5, 10):
        result = portalign.register(pair.reference, pair.frame, backend="cpu")
        assert result.dx_mm is not None or not result.ok
        error = math.nan if result.dx_mm is None else math.hypot(result.dx_mm - pair.dx_mm, result.dy_mm - pair.dy_mm)
        uncertainty = result.details.get("rotation_uncertainty_deg")
        assert (uncertainty is None) == (result.rotation_deg is None)  # stated exactly where a rotation is
        if result.ok:
            oks += 1
            assert error < 1.0, (pair.label, error)
            assert result.details["match_significance"] >= 3.5
            spread = result.details["shift_uncertainty_mm"]
            assert 0.05 < spread < 0.5, (pair.label, spread)
            axes += [abs(result.dx_mm - pair.dx_mm) / spread, abs(result.dy_mm - pair.dy_mm) / spread]
            if uncertainty is not None:
                assert 0.1 < uncertainty < 1.0, (pair.label, uncertainty)
                within.append(abs(result.rotation_deg - pair.rotation_deg) / uncertainty)
    assert oks >= 6
    # measured: 7 of 8 within one uncertainty, the other at 1.09 (a collimator-turned portal pair, dead lines)
    assert len(within) >= 6 and max(within) <= 2.0 and sum(w <= 1.0 for w in within) >= 0.6 * len(within), within
    # measured: 15 of 16 axis errors within one uncertainty, the other at 1.03
    assert max(axes) <= 2.0 and sum(a <= 1.0 for a in axes) >= 0.6 * len(axes), axes


@pytest.mark.slow
def test_a_weak_low_dose_edge_match_reports_the_mutual_information_optimum(held_out_ct, monkeypatch):
    """Pair 53 of ``python -m bench.held_out --seed 12``: collimator-turned jaws, gantry 225, a portal reference,
    5 % quantum noise in the frame. Its raw gradients are noise-dominated (edge score 0.07): the edge optimum is
    1.6 mm off, the mutual-information optimum refined from it 0.1 mm; ``auto`` reports the latter and says so
    (checked with the smoothing of noisy frames off). Smoothed (``_program.DENOISE``, the default) its edges
    match at 0.47 and their optimum is 0.25 mm off; ``auto`` reports MI's, 0.17 mm off, ok."""
    from portalign.registration import _program

    from bench.held_out import render_pairs

    (pair,) = render_pairs(held_out_ct, 12, 54, only=[53])
    assert pair.low_dose and pair.portal_reference and pair.kind == "collimator"
    edge_options = portalign.RegistrationOptions(method="edge")
    auto = portalign.register(pair.reference, pair.frame, backend="cpu")
    edge = portalign.register(pair.reference, pair.frame, edge_options, backend="cpu")
    assert auto.details["denoised"] is not None and edge.details["denoised"] is not None
    assert auto.ok and auto.details["final_metric"] == "mi" and auto.details["edge_score"] > 0.3
    assert math.hypot(auto.dx_mm - pair.dx_mm, auto.dy_mm - pair.dy_mm) < 0.25
    assert math.hypot(edge.dx_mm - pair.dx_mm, edge.dy_mm - pair.dy_mm) < 0.4
    monkeypatch.setattr(_program, "DENOISE", False)
    auto = portalign.register(pair.reference, pair.frame, backend="cpu")
    edge = portalign.register(pair.reference, pair.frame, edge_options, backend="cpu")
    assert auto.details["final_metric"] == "mi" and edge.details["final_metric"] == "edge"
    assert auto.details["edge_score"] < 0.2 and auto.details["final_metric_why"] == "weak edge match"
    assert math.hypot(auto.dx_mm - pair.dx_mm, auto.dy_mm - pair.dy_mm) < 0.4
    assert math.hypot(edge.dx_mm - pair.dx_mm, edge.dy_mm - pair.dy_mm) > 1.0


@pytest.mark.slow
def test_two_portal_images_report_the_mutual_information_optimum(held_out_ct):
    """Pairs 13 and 55 of ``python -m bench.held_out --seed 21``: collimator-turned jaws at gantry 225 and an MLC field
    at gantry 315, a portal reference of the same beam. Their intensities match up to noise, so ``auto`` reports the MI
    optimum: 0.02 and 0.06 mm off, where the edge optima are 0.34 and 0.09 mm off (pair 55's was 0.37 mm off before
    the edge ascent took back the jumps that measured worse, 2026-12-03)."""
    from bench.held_out import render_pairs

    for pair in render_pairs(held_out_ct, 21, 56, only=[13, 55]):
        assert pair.portal_reference and pair.kind in ("collimator", "mlc") and not pair.low_dose
        auto = portalign.register(pair.reference, pair.frame, backend="cpu")
        edge = portalign.register(pair.reference, pair.frame, portalign.RegistrationOptions(method="edge"),
                                  backend="cpu")
        assert auto.ok and edge.ok, (auto.reason, edge.reason)
        assert auto.details["final_metric"] == "mi" and auto.details["final_metric_why"] == "portal reference"
        # a moderate edge match (0.37-0.39) over the whole frame: MI places the rotation too (the truth is 0 at
        # these oblique gantries: MI's is the nearer)
        assert auto.details["edge_score"] < 0.6 and auto.details["mi_check_mm"][2] == auto.rotation_deg
        assert abs(auto.rotation_deg) < abs(edge.rotation_deg)
        auto_error = math.hypot(auto.dx_mm - pair.dx_mm, auto.dy_mm - pair.dy_mm)
        edge_error = math.hypot(edge.dx_mm - pair.dx_mm, edge.dy_mm - pair.dy_mm)
        assert auto_error < 0.1 and auto_error < edge_error, (pair.index, auto_error, edge_error)
        if pair.index == 13:
            assert edge_error > 0.3, edge_error


def test_alike_images_are_portal_images_of_one_kind_of_beam():
    from portalign.image import ImageInfo
    from portalign.registration._program import alike_images

    def info(kind, kvp=None, label=""):
        return ImageInfo(kind=kind, extra={"rt_image_label": label} if kvp is None else {"kvp": kvp})

    assert alike_images(info("portal", 6000), info("portal", 6000))
    assert alike_images(info("portal"), info("portal", 6000))  # an unknown energy is not held against them
    assert not alike_images(info("portal", 120), info("portal", 6000))  # a kV image and an MV one
    assert not alike_images(info("drr"), info("portal"))
    assert not alike_images(info("portal"), info(""))  # an array of unknown kind
    assert not alike_images(info("portal", label="KV"), info("portal", 6000))  # kV by its label, no KVP
    assert alike_images(info("portal", label="KV"), info("portal", 120))


TRUNK = REAL / "totalsegmentator" / "example_ct.nii.gz"


@pytest.fixture(scope="module")
def trunk_ct():
    """The TotalSegmentator example CT (3 mm voxels: weak anatomy in its DRRs), read as ``bench.held_out`` reads it."""
    if not TRUNK.is_file():
        pytest.skip("TotalSegmentator example CT not present")
    from bench.held_out import read_ct

    return read_ct(TRUNK)


def test_held_out_limits_scale_the_same_draws(held_out_ct):
    """``--max-shift-mm`` and ``--max-turn-deg`` scale each pair's draws: the kinds, apertures and noise stay."""
    from bench.held_out import render_pairs

    plain = list(render_pairs(held_out_ct, 11, 9, only=[0, 8]))
    wide = list(render_pairs(held_out_ct, 11, 9, only=[0, 8], max_shift_mm=10.0, max_turn_deg=3.0))
    for a, b in zip(plain, wide, strict=True):
        assert (a.kind, a.gantry_deg, a.low_dose) == (b.kind, b.gantry_deg, b.low_dose)
        assert (b.dx_mm, b.dy_mm, b.rotation_deg) == pytest.approx((2 * a.dx_mm, 2 * a.dy_mm, 2 * a.rotation_deg))
        assert abs(a.rotation_deg) > 0.01  # gantry 0: a turn was drawn


@pytest.mark.slow
def test_portal_pairs_of_weak_anatomy_are_registered_smoothed_alike(trunk_ct, monkeypatch):
    """Pairs 3, 13 and 33 of ``python -m bench.held_out --ct .../example_ct.nii.gz --seed 5``: collimator-turned jaws
    at oblique gantries, a reference portal image as noisy (1.5 %) as the frame. Their edges match within chance
    (0.05) as taken, refused; with both images smoothed alike (``_program.SMOOTH_PAIR``) each is ok within 0.5 mm."""
    from portalign.registration import _program

    from bench.held_out import render_pairs

    pairs = list(render_pairs(trunk_ct, 5, 34, only=[3, 13, 33]))
    for pair in pairs:
        assert pair.portal_reference and pair.kind == "collimator"
        result = portalign.register(pair.reference, pair.frame, backend="cpu")
        assert result.ok, (pair.label, result.reason)
        assert math.hypot(result.dx_mm - pair.dx_mm, result.dy_mm - pair.dy_mm) < 0.5
        assert result.details["denoised"]["reference_smoothed"] is True
    monkeypatch.setattr(_program, "SMOOTH_PAIR", False)
    for pair in pairs:
        result = portalign.register(pair.reference, pair.frame, backend="cpu")
        assert not result.ok and result.reason.startswith("no match: edge correlation"), result.reason


@pytest.mark.slow
def test_a_smoothed_frame_against_a_drr_reports_its_edges(trunk_ct, monkeypatch):
    """Pairs 2 and 62 of the same CT, seed 4: collimator-turned jaws at gantry 90 and 270, a DRR reference, 5 % noise.
    Smoothed, their edges still match weakly (0.15-0.18): weak anatomy. MI on a DRR's intensities (another spectrum)
    was 1.2-1.65 mm and 1.3-1.5 deg off, ok; the edges' optimum, now reported, is within 0.8 mm."""
    from portalign.registration import _search_program

    from bench.held_out import render_pairs

    pairs = list(render_pairs(trunk_ct, 4, 63, only=[2, 62]))
    for pair in pairs:
        assert not pair.portal_reference and pair.low_dose and pair.gantry_deg in (90.0, 270.0)
        result = portalign.register(pair.reference, pair.frame, backend="cpu")
        assert result.details["denoised"] is not None and result.details["edge_score"] < 0.2
        assert result.details["final_metric"] == "edge"
        assert result.ok and math.hypot(result.dx_mm - pair.dx_mm, result.dy_mm - pair.dy_mm) < 0.8
    # the previous rule, MI on any weak edge match: ok, and further off
    monkeypatch.setattr(_search_program, "SMOOTHED_WEAK_EDGE_SCORE", _search_program.WEAK_EDGE_SCORE)
    for pair in pairs:
        result = portalign.register(pair.reference, pair.frame, backend="cpu")
        assert result.details["final_metric"] == "mi"
        assert math.hypot(result.dx_mm - pair.dx_mm, result.dy_mm - pair.dy_mm) > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [5, 21])
def test_mi_off_a_drrs_sound_edge_match_is_allowed_more_and_stated(trunk_ct, monkeypatch, seed):
    """Pair 10 of ``python -m bench.held_out --ct .../example_ct.nii.gz`` at seeds 5 and 21: jaws at gantry 90, a kV
    DRR reference, dead detector lines. The edges' optimum lies within 0.3 mm of the truth, MI's 1.8-2.0 mm off (a kV
    DRR's intensities and an MV frame's do not correspond one to one): at 1.57-1.83 mm apart they were refused as
    disagreeing (``agreement_mm`` 1.5). Against a DRR the tolerance is ``DRR_MI_ALLOWANCE_MM`` more: ok, the gap in
    the stated uncertainty (its half on each axis at least); without the allowance, refused as before."""
    from portalign.registration import _program

    from bench.held_out import render_pairs

    (pair,) = render_pairs(trunk_ct, seed, 11, only=[10])
    assert not pair.portal_reference and pair.kind == "jaws" and pair.dead_lines and pair.gantry_deg == 90.0
    result = portalign.register(pair.reference, pair.frame, backend="cpu")
    assert result.ok, result.reason
    gap = result.details["edge_mi_gap_mm"]
    assert 1.5 < gap < 1.5 + _program.DRR_MI_ALLOWANCE_MM
    assert math.hypot(result.dx_mm - pair.dx_mm, result.dy_mm - pair.dy_mm) < 0.4
    assert result.details["shift_uncertainty_mm"] >= gap / 2
    monkeypatch.setattr(_program, "DRR_MI_ALLOWANCE_MM", 0.0)
    refused = portalign.register(pair.reference, pair.frame, backend="cpu")
    assert not refused.ok
    assert refused.reason.startswith(f"edge and mutual-information optima disagree by {gap:.2f} mm (agreement_mm=1.5, ")


@pytest.mark.slow
@pytest.mark.parametrize("height_mm,centre_mm", [(20.0, -5.0), (18.0, -7.0)])
def test_a_narrow_mlc_strip_against_a_drr_is_not_pulled_by_its_penumbra(held_out_ct, height_mm, centre_mm):
    """An MLC strip 140 mm long and 18-20 mm tall (2 mm sigma penumbra) over the thorax, the patient not moved at all.

    Sized for a compact small field (its inscribed disc, 18-20 mm: a 3 mm band), the strip kept its penumbra's
    gradients in the usable pixels, which the DRR lacks, and they pulled the match: ok at dy -2.8 and -3.6 mm with
    rotations of 2.0 and 1.8 deg. A long narrow field has its own penumbra measured and cut out whole
    (``_program._elongated``): measured (-0.02, -0.17) and (0.12, -0.54) mm.
    """
    from portalign.simulate import render_drr

    from bench.held_out import GRID, _apply, _edge

    reference = render_drr(held_out_ct, gantry_deg=0.0, energy="kv", **GRID)
    frame = render_drr(held_out_ct, gantry_deg=0.0, energy="mv", noise=0.015, seed=33, **GRID)
    x, y = frame.pixel_to_mm(np.arange(frame.shape[1])[None, :], np.arange(frame.shape[0])[:, None])
    frame = _apply(frame, _edge(height_mm / 2 - np.abs(y - centre_mm)) * _edge(70.0 - np.abs(x)), 0.0, False)
    result = portalign.register(reference, frame, backend="cpu")
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm, result.dy_mm) < 0.8, (result.dx_mm, result.dy_mm)
    assert result.rotation_deg is None or abs(result.rotation_deg) < 1.0


@pytest.mark.slow
def test_a_rotation_the_coarse_level_put_several_steps_off_is_found_where_the_ascent_runs(held_out_ct, monkeypatch):
    """An independent trial (trial50 couch-04): a 44 x 63 mm field turned by the collimator (165.5 deg) over the lateral
    thorax, an MV frame against a kV DRR, the patient turned -0.5 deg. The global search's coarse level put the
    rotation at -5.5 deg; the first refinement level's optimum lies near -0.5 deg, but the ascent's three steps of at
    most 0.5 deg stopped at -4.0 deg: ok, 1.9 mm off (at 0.57 mm stated). The searched rotations are now scored on the
    first refinement level before the ascent (``_search_program.rotation_scan``): it starts from the best of them."""
    from dataclasses import replace

    from portalign.simulate import _axis_rotation, _beam_axes, _euler_angles, render_drr

    geometry = {"detector_shape": (384, 512), "detector_spacing_mm": 0.784, "sid_mm": 1607.0}
    ex, ey, towards = _beam_axes(90.0, 0.0)
    turn = _euler_angles(_axis_rotation(-towards, math.radians(-0.503)))
    shift = (-3.675, -2.671, -1.582)
    frame = render_drr(held_out_ct, gantry_deg=90.0, energy="mv", couch_shift_mm=shift, patient_rotation_deg=tuple(turn),
                       **geometry)
    reference = render_drr(held_out_ct, gantry_deg=90.0, energy="kv", **geometry)
    reference = replace(reference, info=replace(reference.info, collimator_deg=165.5))
    frame = _through_jaws(frame, (-42.66, 26.99, -57.84, 31.39), 165.5, seed=50204)
    result = portalign.register(reference, frame, backend="cpu")
    assert result.details["candidates"][0]["rotation_deg"] < -4.0  # the coarse level's rotation, as in the trial
    assert result.ok, result.reason
    error = math.hypot(result.dx_mm - float(np.dot(shift, ex)), result.dy_mm - float(np.dot(shift, ey)))
    assert error < 0.3, (result.dx_mm, result.dy_mm, result.rotation_deg)  # 1.90 mm before
    assert abs(result.rotation_deg + 0.503) < 0.6, result.rotation_deg  # -4.03 deg before
    # the eager path (the GPU's, Python between the kernels) scans the same poses and starts from the same one
    from portalign.registration import _program, _search_program

    monkeypatch.setattr(_program, "search_compiled", _search_program.search_eager)
    eager = portalign.register(reference, frame, backend="cpu")
    assert (eager.dx_mm, eager.dy_mm, eager.rotation_deg) == (result.dx_mm, result.dy_mm, result.rotation_deg)


def _through_jaws(frame, jaws_mm, collimator_deg, *, seed, penumbra_mm=2.0, blur_mm=0.6, noise=0.015, leaves=None):
    """An MV frame as the independent trials' generator makes it: through jaws ``(x1, x2, y1, y2)`` mm (IEC beam-limiting
    device axes, turned by ``collimator_deg``) with an erf penumbra of ``penumbra_mm`` (sigma), 2 % transmission,
    blurred by ``blur_mm`` and with Poisson-like noise of ``noise`` (seeded). ``leaves``: ``(width_mm, first_mm,
    [(left_mm, right_mm), ...])``, an MLC's leaf pairs inside the jaws (each pair's opening from ``first_mm + k width``
    along y, closed where ``right <= left``), the leaf ends' steps smoothed by 0.5 mm."""
    from dataclasses import replace

    from scipy import ndimage, special

    x, y = frame.pixel_to_mm(np.arange(frame.shape[1])[None, :], np.arange(frame.shape[0])[:, None])
    turned = math.radians(collimator_deg)
    bx, by = math.cos(turned) * x - math.sin(turned) * y, -math.sin(turned) * x - math.cos(turned) * y

    def edge(d: np.ndarray) -> np.ndarray:
        return 0.5 * special.erfc(-d / (math.sqrt(2.0) * penumbra_mm))

    x1, x2, y1, y2 = jaws_mm
    beam = edge(bx - x1) * edge(x2 - bx) * edge(by - y1) * edge(y2 - by)
    if leaves is not None:
        width, first, pairs = leaves
        pairs = np.asarray(pairs, dtype=np.float64)
        leaf = np.floor((by - first) / width).astype(int)
        inside = (leaf >= 0) & (leaf < len(pairs))
        chosen = pairs[np.clip(leaf, 0, len(pairs) - 1)]
        left, right = chosen[..., 0], chosen[..., 1]
        opening = np.where(right > left, edge(bx - left) * edge(right - bx), 0.0)
        beam = ndimage.gaussian_filter(np.where(inside, opening, 0.0) * beam,
                                       (0.5 / frame.spacing_mm[0], 0.5 / frame.spacing_mm[1]), mode="nearest")
    pixels = ndimage.gaussian_filter(frame.pixels.astype(np.float64) * (0.02 + 0.98 * beam),
                                     blur_mm / frame.spacing_mm[0], mode="nearest")
    pixels += noise * np.sqrt(np.maximum(pixels, 0.0)) * np.random.default_rng(seed).standard_normal(pixels.shape)
    return replace(frame, pixels=np.maximum(pixels, 0.0).astype(np.float32),
                   info=replace(frame.info, collimator_deg=collimator_deg))


def _offset_render(ct, *, shape, pitch_mm, sid_mm, axis_offset_px, **kw):
    """``render_drr`` onto a panel whose beam axis lies ``axis_offset_px`` (columns, rows) from its centre: rendered
    larger with the axis at the centre, then cropped (the trial47-51 generator's panels)."""
    from dataclasses import replace

    from portalign.simulate import render_drr

    (rows, cols), (dc, dr) = shape, axis_offset_px
    image = render_drr(ct, sad_mm=1000.0, sid_mm=sid_mm, detector_shape=(rows + 2 * abs(dr), cols + 2 * abs(dc)),
                       detector_spacing_mm=pitch_mm, **kw)
    top, left = abs(dr) - dr, abs(dc) - dc
    cx, cy = image.beam_axis_px
    return replace(image, pixels=np.ascontiguousarray(image.pixels[top:top + rows, left:left + cols]),
                   beam_axis_px=(cx - left, cy - top))


@pytest.mark.slow
def test_a_rotation_the_search_level_cannot_judge_is_judged_on_the_first_refinement_level(held_out_ct, monkeypatch):
    """An independent trial (trial51 combo-18): an L-shaped MLC field (75 x 80 mm, collimator -109.6 deg) over the
    thorax at gantry 0, couch 10, an MV frame (1024 x 1024 at 0.4 mm, 3.8 % noise, a hot half row) against a kV DRR
    (384 x 512 at 0.784 mm), the patient turned -2.77 deg. The rotation's lever arm was measured on the 4 mm search
    level at the first refinement level's optimum (-2.05 deg), which is not a maximum there (the Schur complement of
    its stencil's Hessian is positive): it read 0, the rotation was not estimated, and the shift was ok 1.90 mm off at
    0.51 mm stated. Such an untold lever arm (``LEVER_ARM_UNTOLD``) is now measured on the first refinement level:
    19.9 mm, the rotation estimated, 0.64 mm off."""
    from dataclasses import replace

    from portalign.simulate import _axis_rotation, _beam_axes, _euler_angles
    from scipy import ndimage, special

    ex, ey, towards = _beam_axes(0.0, 10.0)
    turn = _euler_angles(_axis_rotation(-towards, -2.771294383979291))
    shift = (7.051206285843088, 3.30616486298952, -3.5432222010343817)
    views = {"gantry_deg": 0.0, "couch_deg": 10.0, "isocentre_mm": tuple(float(v) for v in held_out_ct.centre_mm)}
    frame = _offset_render(held_out_ct, shape=(1024, 1024), pitch_mm=(0.4, 0.4), sid_mm=1600.0,
                           axis_offset_px=(65, -27), energy="mv", couch_shift_mm=shift, patient_rotation_deg=turn,
                           **views)
    blur = 1.0785183135005063
    reference = _offset_render(held_out_ct, shape=(384, 512), pitch_mm=(0.784, 0.784), sid_mm=1661.0,
                               axis_offset_px=(44, -25), energy="kv", blur_mm=blur, **views)
    reference = replace(reference, info=replace(reference.info, collimator_deg=-109.6))
    x, y = frame.pixel_to_mm(np.arange(frame.shape[1])[None, :], np.arange(frame.shape[0])[:, None])
    turned = math.radians(-109.6)  # beam-limiting-device axes turned by the collimator (IEC)
    bx, by = math.cos(turned) * x - math.sin(turned) * y, -math.sin(turned) * x - math.cos(turned) * y

    def edge(d: np.ndarray) -> np.ndarray:  # the trial's 3.06 mm (sigma) penumbra
        return 0.5 * special.erfc(-d / (math.sqrt(2.0) * 3.061713581567324))

    # the L: eight 5 mm leaf pairs from -40 mm open to 42.9 mm, the next eight to -18.7 mm; jaws X -37.1..47.9, Y +-41
    left, right = -32.08370096233923, np.where(by < 0.0, 42.92174031387478, -18.658099967309653)
    leaves = np.where((by >= -40.0) & (by < 40.0), edge(bx - left) * edge(right - bx), 0.0)
    jaws = edge(bx + 37.08370096233923) * edge(47.92174031387478 - bx) * edge(by + 41.0) * edge(41.0 - by)
    beam = ndimage.gaussian_filter(leaves * jaws, 0.5 / frame.spacing_mm[0], mode="nearest")  # the leaf ends' blur
    pixels = ndimage.gaussian_filter(frame.pixels.astype(np.float64) * (0.02 + 0.98 * beam), blur / frame.spacing_mm[0],
                                     mode="nearest")
    pixels += 0.038407623240685335 * np.sqrt(np.maximum(pixels, 0.0)) * np.random.default_rng(51298).standard_normal(
        pixels.shape)
    pixels = np.maximum(pixels, 0.0)
    pixels[422, :512] = 1.5 * np.percentile(pixels, 99.9)  # a hot detector row over half its length
    frame = replace(frame, pixels=pixels.astype(np.float32), info=replace(frame.info, collimator_deg=-109.6))
    result = portalign.register(reference, frame, backend="cpu")
    assert result.ok, result.reason
    assert result.details["rotation_support_mm"] >= 18.0  # 0 before: untold on the search level
    error = math.hypot(result.dx_mm - float(np.dot(shift, ex)), result.dy_mm - float(np.dot(shift, ey)))
    assert error < 1.0, (result.dx_mm, result.dy_mm, result.rotation_deg)  # 1.90 mm before
    assert result.rotation_deg is not None and abs(result.rotation_deg + 2.771) < 1.0, result.rotation_deg
    # the eager path (the GPU's) measures the lever arm on the same levels and reports the same match
    from portalign.registration import _program, _search_program

    monkeypatch.setattr(_program, "search_compiled", _search_program.search_eager)
    eager = portalign.register(reference, frame, backend="cpu")
    assert eager.details["rotation_support_mm"] == pytest.approx(result.details["rotation_support_mm"], rel=1e-9)
    assert (eager.dx_mm, eager.dy_mm, eager.rotation_deg) == (result.dx_mm, result.dy_mm, result.rotation_deg)


@pytest.mark.slow
def test_two_mlc_islands_whose_true_optimum_the_search_level_ranks_sixth_are_matched_there(held_out_ct):
    """An independent trial (trial52 oblique-00): two MLC openings (34 x 25 and 29 x 25 mm, leaf pairs closed between
    them) at gantry 35 over the thorax, an MV frame (384 x 512 at 0.784 mm, SID 1766) against a kV DRR (560 x 560 at
    0.5 mm, SID 1000). On the 3.6 mm search level the true optimum was the sixth peak; the three kept
    (``RegistrationOptions.candidates`` 3) lay 20-30 mm away, and the best of them was ok 26.4 mm off (edge 0.36). On
    the first refinement level the true optimum scores 0.47: with eight kept (the default now) it is ranked first."""
    from dataclasses import replace

    from portalign.simulate import _axis_rotation, _beam_axes, _euler_angles
    from scipy import ndimage, special

    ex, ey, towards = _beam_axes(35.0, 0.0)
    turn = _euler_angles(_axis_rotation(-towards, -0.8817452667715275))
    shift = (5.4241474645159204, 0.5855942916662831, 1.905423745341595)
    views = {"gantry_deg": 35.0, "couch_deg": 0.0, "isocentre_mm": tuple(float(v) for v in held_out_ct.centre_mm)}
    frame = _offset_render(held_out_ct, shape=(384, 512), pitch_mm=(0.784, 0.784), sid_mm=1766.0, axis_offset_px=(0, 0),
                           energy="mv", couch_shift_mm=shift, patient_rotation_deg=turn, **views)
    # a planning system's DRR at SID 1000: the same rays onto a plane at 1500 (whole patient), labelled at 1000
    reference = _offset_render(held_out_ct, shape=(560, 560), pitch_mm=(0.75, 0.75), sid_mm=1500.0,
                               axis_offset_px=(0, 0), energy="kv", blur_mm=0.6, **views)
    reference = replace(reference, info=replace(reference.info, sid_mm=1000.0, imager_spacing_mm=(0.5, 0.5)))
    x, y = frame.pixel_to_mm(np.arange(frame.shape[1])[None, :], np.arange(frame.shape[0])[:, None])
    bx, by = x, -y  # collimator 0: leaves along x, pairs stacked towards the gantry

    def edge(d: np.ndarray) -> np.ndarray:  # a 2 mm (sigma) penumbra
        return 0.5 * special.erfc(-d / (math.sqrt(2.0) * 2.0))

    lower = np.where((by >= -40.0) & (by < -15.0), edge(bx + 37.09291158817216) * edge(-3.1531114987444453 - bx), 0.0)
    upper = np.where((by >= 15.0) & (by < 40.0), edge(bx - 2.901866617046559) * edge(32.122636317732955 - bx), 0.0)
    jaws = edge(bx + 42.09291158817216) * edge(37.122636317732955 - bx) * edge(by + 41.0) * edge(41.0 - by)
    beam = ndimage.gaussian_filter((lower + upper) * jaws, 0.5 / frame.spacing_mm[0], mode="nearest")
    pixels = ndimage.gaussian_filter(frame.pixels.astype(np.float64) * (0.02 + 0.98 * beam), 0.6 / frame.spacing_mm[0],
                                     mode="nearest")
    pixels += 0.015 * np.sqrt(np.maximum(pixels, 0.0)) * np.random.default_rng(52180).standard_normal(pixels.shape)
    frame = replace(frame, pixels=np.maximum(pixels, 0.0).astype(np.float32))
    truth = (float(np.dot(shift, ex)), float(np.dot(shift, ey)))
    result = portalign.register(reference, frame, backend="cpu")
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm - truth[0], result.dy_mm - truth[1]) < 1.0, (result.dx_mm, result.dy_mm)
    # three kept, as before: the true optimum is not among them
    three = portalign.register(reference, frame, portalign.RegistrationOptions(candidates=3), backend="cpu")
    assert all(math.hypot(c["dx_mm"] - truth[0], c["dy_mm"] - truth[1]) > 10.0 for c in three.details["candidates"])


def _through_cone(image, radius_mm: float, noise: float, seed: int):
    """``image`` (an open MV render) through a cone of ``radius_mm`` (2 mm sigma penumbra, 2 % transmission), blurred
    0.6 mm, with quantum noise ``noise`` (the trial45 generator's)."""
    from dataclasses import replace

    from scipy import ndimage, special

    x, y = image.pixel_to_mm(np.arange(image.shape[1])[None, :], np.arange(image.shape[0])[:, None])
    beam = 0.5 * special.erfc(-(radius_mm - np.hypot(x, y)) / (math.sqrt(2.0) * 2.0))
    pixels = ndimage.gaussian_filter(image.pixels.astype(np.float64) * (0.02 + 0.98 * beam), 0.6 / image.spacing_mm[0],
                                     mode="nearest")
    pixels = pixels + noise * np.sqrt(np.maximum(pixels, 0.0)) * np.random.default_rng(seed).standard_normal(pixels.shape)
    return replace(image, pixels=np.maximum(pixels, 0.0).astype(np.float32))


@pytest.mark.slow
def test_a_small_cone_that_the_reference_portal_image_shows_unfound_is_no_match(trunk_ct):
    """An independent trial (trial45 nv03var-01): a 12 mm cone through the abdomen at gantry 270 (the frame 0.6 deg
    off), a reference portal image through the same cone, whose field was not found (a bright region at the image's
    edge). Matched as anatomy, the cone's edges and penumbra placed the frame at the aperture's own position: ok at
    (-0.3, 0.1) mm for a truth of (-4.7, -3.9), at 0.1 mm stated. The reference shows the frame's field (contrast
    0.95 against 0.94): the match is not confirmed, and no pose is reported."""
    from portalign.simulate import render_drr

    geometry = {"detector_shape": (384, 512), "detector_spacing_mm": 0.784}
    frame = render_drr(trunk_ct, gantry_deg=270.0 - 0.5713, energy="mv", couch_shift_mm=(-1.752, 3.883, -4.744),
                       **geometry)
    reference = render_drr(trunk_ct, gantry_deg=270.0, energy="mv", **geometry)
    frame, reference = _through_cone(frame, 5.94, 0.015, 5001), _through_cone(reference, 5.94, 0.015, 5001 + 7919)
    result = portalign.register(reference, frame, backend="cpu")
    assert not result.ok and result.dx_mm is None, (result.dx_mm, result.dy_mm, result.reason)
    assert result.reason.startswith("no match confirmed: the reference") and "shows the frame's 11 mm radiation field" \
        in result.reason, result.reason
    shown = result.details["reference_field_unseen"]
    assert shown["frame"] > 0.5 and shown["reference"] > 0.5
    warned = portalign.register(reference, frame, portalign.RegistrationOptions(aperture_check="warn"), backend="cpu")
    assert any("shows the frame's 11 mm radiation field" in w and "accepted: aperture_check='warn'" in w
               for w in warned.warnings), warned.warnings


#: trial46 mlc-19's MLC: three islands of leaf pairs (2.5 mm leaves from -31.25 mm, collimator 21.5 deg), each row open
#: from ``left`` to ``right`` (mm along the leaves), every other row closed.
_ISLANDS = ((0, 6, -45.382, -16.822), (10, 16, 37.380, 52.658), (19, 25, -29.978, -14.921))


def _through_islands(image, noise: float, seed: int):
    """``image`` (an open MV render) through ``_ISLANDS`` (2 mm sigma penumbra across the leaves, the rows' steps
    softened 0.5 mm, 2 % transmission), blurred 0.6 mm, with quantum noise ``noise`` (the trial generator's)."""
    from dataclasses import replace

    from scipy import ndimage, special

    x, y = image.pixel_to_mm(np.arange(image.shape[1])[None, :], np.arange(image.shape[0])[:, None])
    a = math.radians(21.50440225995527)
    u, v = math.cos(a) * x + math.sin(a) * y, -math.sin(a) * x + math.cos(a) * y
    row = np.floor((v + 31.25) / 2.5)
    beam = np.zeros(np.broadcast(u, v).shape)
    for first, last, left, right in _ISLANDS:
        inside = (row >= first) & (row < last)
        edge = 0.5 * special.erfc(-(u - left) / (math.sqrt(2.0) * 2.0)) * 0.5 * special.erfc(
            -(right - u) / (math.sqrt(2.0) * 2.0))
        beam = np.where(inside, edge, beam)
    sp = image.spacing_mm[0]
    beam = ndimage.gaussian_filter(beam, 0.5 / sp, mode="nearest")
    pixels = ndimage.gaussian_filter(image.pixels.astype(np.float64) * (0.02 + 0.98 * beam), 0.6 / sp, mode="nearest")
    pixels = pixels + noise * np.sqrt(np.maximum(pixels, 0.0)) * np.random.default_rng(seed).standard_normal(pixels.shape)
    return replace(image, pixels=np.maximum(pixels, 0.0).astype(np.float32))


@pytest.mark.slow
def test_three_small_mlc_islands_whose_search_found_nothing_are_not_matched_unopposed(trunk_ct):
    """An independent trial (trial46 mlc-19): three MLC islands 15-29 mm across over the abdomen at gantry 200, a noisy
    frame (smoothed) against a reference portal image. Every optimum of the global search scored nothing where it lay
    (edge correlations -0.0002 to -0.05), so no rival was refined and compared ("no rival", ambiguity 0): the best,
    refined, was ok at (-7.2, 0.8) mm for a truth of (-4.0, -2.2), 4.4 mm off at 0.63 mm stated. Its rivals are now
    refined as close calls: one, refined near the truth, scores 61 % of it, and the match is ambiguous. With eight
    global-search optima kept (``RegistrationOptions.candidates``, 3 before), the first refinement level ranks another
    first, whose edge correlation is within chance: no match (either refusal: nothing ok unopposed)."""
    from portalign.simulate import _axis_rotation, _beam_axes, _euler_angles, render_drr

    geometry = {"detector_shape": (384, 512), "detector_spacing_mm": 0.784}
    _, _, towards = _beam_axes(200.0, 0.0)
    turn = _euler_angles(_axis_rotation(-towards, -0.9082870789646909))
    frame = render_drr(trunk_ct, gantry_deg=200.0, energy="mv", couch_shift_mm=(2.6912, 2.1642, -4.2508),
                       patient_rotation_deg=tuple(turn), **geometry)
    reference = render_drr(trunk_ct, gantry_deg=200.0, energy="mv", **geometry)
    frame, reference = _through_islands(frame, 0.015, 31091), _through_islands(reference, 0.015, 31091 + 7919)
    result = portalign.register(reference, frame, backend="cpu")
    error = None if result.dx_mm is None else math.hypot(result.dx_mm + 3.9827, result.dy_mm + 2.1642)
    assert not result.ok or error < 2.0, (result.dx_mm, result.dy_mm, result.reason)
    assert not result.ok and (result.ambiguity or result.reason.startswith("no match: edge correlation")), result.reason
    assert "within chance" in result.reason, result.reason
    three = portalign.register(reference, frame, portalign.RegistrationOptions(candidates=3), backend="cpu")
    assert three.ambiguity is not None and three.ambiguity > 0.0, three.ambiguity  # its rival refined and compared


@pytest.mark.slow
def test_a_large_shift_of_a_lateral_abdomen_across_the_diverging_beam_is_stated_with_its_parting(trunk_ct):
    """An independent trial (trial52 bigshift-16): the TotalSegmentator CT at gantry 270, moved 12.5 and 6.4 mm across
    the beam and 3.6 mm along it, turned 0.24 deg; an MV frame (768 x 1024 at 0.392 mm, SID 1619, 1.5 % noise) in
    jaws turned 23.6 deg, against a kV DRR (560 x 560 at 0.5 mm). Across a diverging beam, anatomy at different depths
    moves by different amounts (bowel gas off the midline, the skin's outline on it): no rigid motion matches, and the
    match was ok 2.58 mm off (the rotation 1.6 deg off) at 0.42 mm stated, six of it. Its spatial halves' optima part by
    1.2 and 2.5 mm (``_refine.spatial_halves``); the uncertainty takes them: each axis's error within two of it."""
    from dataclasses import replace

    from portalign.simulate import _axis_rotation, _beam_axes, _euler_angles

    ex, ey, towards = _beam_axes(270.0, 0.0)
    turn = _euler_angles(_axis_rotation(-towards, 0.24056627451552737))
    shift = (3.6436026441051337, -6.355334077580123, -12.45722072996508)
    views = {"gantry_deg": 270.0, "couch_deg": 0.0, "isocentre_mm": tuple(float(v) for v in trunk_ct.centre_mm)}
    frame = _offset_render(trunk_ct, shape=(768, 1024), pitch_mm=(0.392, 0.392), sid_mm=1619.0,
                           axis_offset_px=(11, 69), energy="mv", couch_shift_mm=shift, patient_rotation_deg=turn,
                           **views)
    # the planning system's DRR at SID 1000 (0.5 mm): rendered at 1500 with the same rays, then labelled
    reference = _offset_render(trunk_ct, shape=(560, 560), pitch_mm=(0.75, 0.75), sid_mm=1500.0, axis_offset_px=(0, 0),
                               energy="kv", blur_mm=0.6, **views)
    reference = replace(reference, info=replace(reference.info, sid_mm=1000.0, imager_spacing_mm=(0.5, 0.5),
                                                collimator_deg=23.6))
    frame = _through_jaws(frame, (-59.95581413156297, 109.23085676640889, -56.64111004687012, 72.51515387727098), 23.6,
                          seed=52251)
    result = portalign.register(reference, frame, backend="cpu")
    assert result.ok, result.reason
    errors = (result.dx_mm - float(np.dot(shift, ex)), result.dy_mm - float(np.dot(shift, ey)))
    check = result.details["rigidity_check"]
    assert max(check["rows_mm"], check["cols_mm"]) > 1.5 and check["term_mm"] > 0.6
    u = result.details["shift_uncertainty_mm"]
    assert u >= check["term_mm"]
    assert all(abs(e) <= 2.0 * u for e in errors), (errors, u)
    assert math.hypot(*errors) > 1.0  # the parallax is real: a rigid match cannot place it (0.42 mm stated before)


def test_a_faint_interior_that_fixed_field_edges_pull_is_stated_with_its_inner_and_outer_halves(trunk_ct):
    """An independent trial (trial54 mlc-23): two MV portal images of the TotalSegmentator CT at gantry 270 (384 x 512
    at 0.784 mm, SID 1581, 1.5 % noise) through a C-shaped MLC field (its arms 10 mm wide), the patient moved 2.35 mm
    and 2.50 mm across the beam and turned 1.44 deg. The anatomy inside is faint, and the penumbra the field-edge band
    leaves (2 mm sigma) stays with the beam in both images: it pulled the match 2.2 mm towards the field's own
    position, ok at 0.63 mm stated (3.5 of it). The field's inner half follows the anatomy, the outer half the edges:
    their optima part by over 2 mm (``_refine.spatial_halves``' depth halves), and the uncertainty takes it: each
    axis's error within two of it, and the warning says why."""
    from portalign.simulate import _axis_rotation, _beam_axes, _euler_angles

    ex, ey, towards = _beam_axes(270.0, 0.0)
    turn = _euler_angles(_axis_rotation(-towards, -1.4398763603238987))
    shift = (-3.56451984825965, -2.498379871399311, -2.352251705708426)
    views = {"gantry_deg": 270.0, "couch_deg": 0.0, "isocentre_mm": tuple(float(v) for v in trunk_ct.centre_mm)}
    panel = {"shape": (384, 512), "pitch_mm": (0.784, 0.784), "sid_mm": 1581.0, "axis_offset_px": (-26, 0)}
    c_shape = (2.5, -31.25, [(-44.50072408927477, 40.274747896479525)] * 4 + [(5.77488681755985, 40.274747896479525)] * 16
               + [(-44.50072408927477, 40.274747896479525)] * 5)
    jaws = (-49.50072408927477, 45.274747896479525, -32.25, 32.25)
    frame = _through_jaws(_offset_render(trunk_ct, energy="mv", couch_shift_mm=shift, patient_rotation_deg=turn,
                                         **panel, **views), jaws, 0.0, seed=54103, leaves=c_shape)
    reference = _through_jaws(_offset_render(trunk_ct, energy="mv", **panel, **views), jaws, 0.0, seed=54103 + 7919,
                              leaves=c_shape)
    result = portalign.register(reference, frame, backend="cpu")
    assert result.ok, result.reason
    errors = (result.dx_mm - float(np.dot(shift, ex)), result.dy_mm - float(np.dot(shift, ey)))
    assert math.hypot(*errors) > 1.5  # the pull is real: the edges place the match
    check = result.details["rigidity_check"]
    assert check["depth_mm"] > 1.5 > max(check["rows_mm"], check["cols_mm"])
    u = result.details["shift_uncertainty_mm"]
    assert u >= check["term_mm"] > 0.8
    assert all(abs(e) <= 2.0 * u for e in errors), (errors, u)
    said = [w for w in result.warnings if "inner and outer halves" in w]
    assert len(said) == 1 and f"{check['depth_mm']:.1f} mm apart" in said[0]


def test_a_turned_field_a_small_panel_cuts_off_is_not_taken_for_a_displaced_one(trunk_ct):
    """An independent trial (trial53 geometry-31): two MV portal images of the TotalSegmentator CT at gantry 325 through
    jaws turned 144.3 deg, the frame on a 127 mm panel (an aS1200 crop, 0.336 mm at SID 1687, its axis off centre) that
    cuts the field on three sides, the reference on a larger one (0.784 mm at SID 1607) that holds it whole, the
    patient moved 1.0 and 4.7 mm across the beam. A turned field's core (its columns holding a quarter of the fullest
    one's pixels) moves with the cut: its left side read 3.4 mm off, and the pair was refused as a field displaced
    against its content. A field either image cuts off is not compared (``_program.field_displaced``): ok, the shift
    within 0.5 mm."""
    from dataclasses import replace

    from portalign.simulate import _axis_rotation, _beam_axes, _euler_angles

    ex, ey, towards = _beam_axes(325.0, 0.0)
    turn = _euler_angles(_axis_rotation(-towards, -0.6519168075451691))
    shift = (-5.30190853712924, 4.712370923554155, 5.858280297751207)
    views = {"gantry_deg": 325.0, "couch_deg": 0.0, "isocentre_mm": tuple(float(v) for v in trunk_ct.centre_mm)}
    jaws = (-52.79073989882071, 33.9270557799581, -82.32709624568984, 62.89204112274102)
    frame = _through_jaws(_offset_render(trunk_ct, shape=(640, 640), pitch_mm=(0.336, 0.336), sid_mm=1687.0,
                                         axis_offset_px=(38, -29), energy="mv", couch_shift_mm=shift,
                                         patient_rotation_deg=turn, **views), jaws, 144.3, seed=53041)
    reference = _through_jaws(_offset_render(trunk_ct, shape=(384, 512), pitch_mm=(0.784, 0.784), sid_mm=1607.0,
                                             axis_offset_px=(0, 0), energy="mv", **views), jaws, 144.3, seed=53041 + 7919)

    def stated(image):  # as read from an RT Image whose RTImagePosition places the axis
        return replace(image, info=replace(image.info, kind="portal",
                                           extra={**image.info.extra, "beam_axis_source": "RTImagePosition"}))

    result = portalign.register(stated(reference), stated(frame), backend="cpu")
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm - float(np.dot(shift, ex)), result.dy_mm - float(np.dot(shift, ey))) < 0.5
