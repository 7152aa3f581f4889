"""Mismatched views and values that were not measured (issue 11, items 3 and 4).

A reference and a frame of different views (gantry, collimator, couch angle, source-axis
distance) must not give an ``ok`` shift; a rotation that was not estimated is ``None`` in
the result, ``null`` in JSON, "not estimated" in every text and in ``couch``, never 0.

Pairs are synthetic: smooth random anatomy of 160 x 160 pixels at 1 mm, the frame moved by
a known (dx, dy) with ``scipy.ndimage.shift``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import portalign
import pytest
from portalign.couch import View, _text_report, solve_couch_shift
from portalign.registration._views import angle_difference_deg
from portalign.result import RegistrationResult
from portalign.stream import HoldTolerance
from portalign.tolerance import parse_tolerance
from scipy import ndimage
from synthetic import anatomy, moved

SIZE = 160
DX_MM, DY_MM = 2.0, -1.5
TOL_MM = 0.1


@pytest.fixture(scope="module")
def pixels() -> tuple[np.ndarray, np.ndarray]:
    ref = anatomy(SIZE, seed=11)
    return ref, ndimage.shift(ref, (DY_MM, DX_MM), order=3, mode="nearest")


def _pair(pixels: tuple[np.ndarray, np.ndarray], ref_info: dict[str, Any], frame_info: dict[str, Any],
          **options: Any) -> RegistrationResult:
    ref = portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0, name="ref.dcm", **ref_info)
    frame = portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.0, name="frame.dcm", **frame_info)
    return portalign.register(ref, frame, portalign.RegistrationOptions(**options), backend="cpu")


def _assert_shift(result: RegistrationResult) -> None:
    assert result.ok, result.reason
    assert result.dx_mm == pytest.approx(DX_MM, abs=TOL_MM)
    assert result.dy_mm == pytest.approx(DY_MM, abs=TOL_MM)


@pytest.mark.parametrize("frame_gantry", [90.0, 180.0])
def test_other_gantry_angle_is_not_ok_and_names_both_values_and_the_override(pixels, frame_gantry: float) -> None:
    result = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": frame_gantry})
    assert result.ok is False
    assert "gantry angle 0 deg in the reference (ref.dcm)" in result.reason
    assert f"{frame_gantry:g} deg in the frame (frame.dcm)" in result.reason
    assert "allow_view_mismatch=True" in result.reason
    # the tag to check, and the likelier fix before the override (a new user's trial found only the override)
    assert "check that the reference is this frame's beam (GantryAngle (300A,011E) in both headers)" in result.reason
    assert result.details["view"]["mismatch"] == ["gantry_deg"]


def test_gantry_angles_across_zero_are_the_same_view(pixels) -> None:
    result = _pair(pixels, {"gantry_deg": 359.5}, {"gantry_deg": 0.5})
    _assert_shift(result)
    assert result.details["view"]["reference"]["gantry_deg"] == 359.5
    assert result.details["view"]["frame"]["gantry_deg"] == 0.5


def test_allow_view_mismatch_registers_and_warns(pixels) -> None:
    result = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 90.0}, allow_view_mismatch=True)
    _assert_shift(result)
    assert any("views differ" in w and "allow_view_mismatch" in w for w in result.warnings), result.warnings
    assert result.details["view"]["allowed"] is True


@pytest.mark.parametrize(("key", "ref_value", "frame_value", "phrase", "tolerance", "tag"), [
    ("collimator_deg", 0.0, 30.0, "collimator angle 0 deg", "(tolerance 3 deg for angles)",
     "BeamLimitingDeviceAngle (300A,0120)"),
    ("couch_deg", 350.0, 10.0, "couch (patient support) angle 350 deg", "(tolerance 3 deg for angles)",
     "PatientSupportAngle (300A,0122)"),
    # a distance's tolerance is not given in degrees (a new user's trial found "(tolerance 3 deg)" here)
    ("sad_mm", 1000.0, 800.0, "source-axis distance 1000 mm", "(tolerance 2% for source-axis distances)",
     "RadiationMachineSAD (3002,0022)"),
])
def test_other_collimator_couch_or_sad_is_not_ok(pixels, key: str, ref_value: float, frame_value: float,
                                                 phrase: str, tolerance: str, tag: str) -> None:
    result = _pair(pixels, {"gantry_deg": 0.0, key: ref_value}, {"gantry_deg": 0.0, key: frame_value})
    assert result.ok is False and phrase in result.reason, result.reason
    assert tolerance in result.reason, result.reason
    assert f"({tag} in both headers)" in result.reason, result.reason
    assert result.details["view"]["mismatch"] == [key]
    # a refused match is no measurement to vouch for: no uncertainty is stated (a new user's trial saw "± 0.18 mm"
    # beside "NOT OK (ambiguous ...)"); the same pair allowed states them
    assert result.details["shift_uncertainty_mm"] is None and result.details["rotation_uncertainty_deg"] is None
    allowed = _pair(pixels, {"gantry_deg": 0.0, key: ref_value}, {"gantry_deg": 0.0, key: frame_value},
                    allow_view_mismatch=True)
    assert allowed.ok and allowed.details["shift_uncertainty_mm"] > 0


def test_unknown_angles_are_recorded_not_compared(pixels) -> None:
    result = _pair(pixels, {"gantry_deg": None, "collimator_deg": 10.0}, {"gantry_deg": 90.0})
    _assert_shift(result)
    view = result.details["view"]
    assert view["reference"]["gantry_deg"] is None and view["frame"]["gantry_deg"] == 90.0
    assert view["reference"]["collimator_deg"] == 10.0 and view["frame"]["collimator_deg"] is None
    assert view["mismatch"] == []
    # a gantry angle only one image records: the check that was skipped is said (a trial's frame without
    # GantryAngle was ok with nothing said); a collimator or couch angle one lacks is common and only recorded
    assert ("the reference (ref.dcm) records no gantry angle (GantryAngle (300A,011E)): the two views' gantry angles "
            "were not compared") in result.warnings
    assert not [w for w in result.warnings if "collimator" in w]
    other = _pair(pixels, {"gantry_deg": 0.0}, {})
    assert any(w.startswith("the frame (frame.dcm) records no gantry angle") for w in other.warnings)
    assert not [w for w in _pair(pixels, {}, {}).warnings if "gantry" in w]  # arrays: neither has one
    # two DICOM files (a SOPInstanceUID) with no gantry angle: nothing compared the views, and that is said (rendered
    # pairs 3-4 deg apart with no angle were ok up to 3 mm off)
    files = _pair(pixels, {"sop_instance_uid": "1.2.3.4"}, {"sop_instance_uid": "1.2.3.5"})
    _assert_shift(files)
    assert [w for w in files.warnings if w.startswith("neither the reference (ref.dcm) nor the frame (frame.dcm) records a "
                                                      "gantry angle (GantryAngle (300A,011E)): the views were not compared")]


def test_view_tolerance_is_an_option(pixels) -> None:
    assert _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 1.0}).ok
    narrow = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 1.0}, view_tolerance_deg=0.5)
    assert not narrow.ok and "tolerance 0.5 deg" in narrow.reason


def test_beams_apart_within_the_tolerance_widen_the_uncertainty_and_are_said(pixels) -> None:
    """An independent trial: frames 1.5-3 deg off their references' gantry (honest headers, within the 3 deg
    tolerance) were ok 0.9-3.2 mm off at 4-11 of their stated uncertainty: anatomy at different depths moves apart
    across the beam by its depth times the angle. The angle is measured, said, and in the uncertainty."""
    same = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 0.0})
    apart = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 1.0})
    assert same.details["beam_angle_deg"] == 0.0 and apart.details["beam_angle_deg"] == pytest.approx(1.0)
    # the added term, whole on each axis: V b (V = VIEW_PARALLAX_DEPTH_MM, 45 mm)
    extra = (45.0 * math.radians(1.0)) ** 2
    assert apart.ok and apart.details["shift_uncertainty_mm"] ** 2 == pytest.approx(
        same.details["shift_uncertainty_mm"] ** 2 + extra, rel=0.05)
    assert any(w.startswith("the frame's beam is 1.0 deg from the reference's") for w in apart.warnings), apart.warnings
    assert not any("frame's beam is" in w for w in same.warnings)
    # 45 mm times the angle over 1 mm (from 1.27 deg): not ok, the measured shift kept for review
    far = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 2.5})
    assert not far.ok and far.dx_mm is not None
    assert far.reason.startswith("the frame's beam is 2.5 deg from the reference's (gantry and couch angles; within "
                                 "the 3 deg view tolerance, yet): anatomy 45 mm off the isocentre plane (a usual depth) "
                                 "has moved 2.0 mm across the beam"), far.reason
    # a couch turn takes a lateral beam away from its reference's too; a collimator turn does not (the beam stays)
    couch = _pair(pixels, {"gantry_deg": 90.0, "couch_deg": 0.0}, {"gantry_deg": 90.0, "couch_deg": 0.8})
    assert couch.details["beam_angle_deg"] == pytest.approx(0.8) and couch.ok
    turned = _pair(pixels, {"gantry_deg": 0.0, "collimator_deg": 0.0}, {"gantry_deg": 0.0, "collimator_deg": 2.0})
    assert turned.details["beam_angle_deg"] == 0.0
    # a mismatch allowed by the caller (the headers are wrong, the views one): no term, no such warning
    allowed = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 90.0}, allow_view_mismatch=True)
    assert allowed.details["beam_angle_deg"] == pytest.approx(90.0)
    assert allowed.details["shift_uncertainty_mm"] == pytest.approx(same.details["shift_uncertainty_mm"], rel=0.05)


def test_angle_difference_wraps_around() -> None:
    assert angle_difference_deg(359.0, 1.0) == pytest.approx(2.0)
    assert angle_difference_deg(0.0, 180.0) == pytest.approx(180.0)
    assert angle_difference_deg(-90.0, 270.0) == pytest.approx(0.0)


def test_images_without_common_region_get_no_common_anatomy(pixels) -> None:
    ref = portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0, name="ref")
    # the frame's beam axis 400 pixels left of it: its anatomy lies 400..560 mm from the axis, the reference's -80..80
    frame = portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.0, name="frame", beam_axis_px=(-400.0, 79.5))
    result = portalign.register(ref, frame, backend="cpu")
    assert result.ok is False
    assert result.reason.startswith("no common anatomy"), result.reason
    assert "x -80..80" in result.reason and "x 400..560" in result.reason
    # nothing was measured over an empty overlap: its scores (0, MI's -1) and precision (a split-half spread of 0, a
    # perfect precision) are null, never 0 (a new user's mutated frames: a flipped RTImageOrientation)
    for key in ("edge_score", "edge_score_all_edges", "edge_score_selection", "match_significance", "split_half_mm",
                "split_half_deg", "mi_at_edge_optimum", "rotation_support_mm", "final_metric"):
        assert result.details[key] is None, (key, result.details[key])
    assert result.score is None and result.details["matched_pixels"] > 0


def test_a_frame_without_noise_has_no_contrast_over_noise() -> None:
    """Blocks of constant pixels (a new user's checkerboard frame) show no noise at all: the contrast over noise the
    decisions divide by the noise floor (1e30) is no measurement, and is null (it read 2.7e30)."""
    blocks = np.kron(np.random.default_rng(4).uniform(0.0, 1000.0, (16, 16)), np.ones((16, 16)))
    image = portalign.Image.from_array(blocks, pixel_spacing_mm=1.0)
    result = portalign.register(image, portalign.Image.from_array(np.roll(blocks, 3, axis=1), pixel_spacing_mm=1.0),
                                backend="cpu")
    assert "contrast_to_noise" in result.details and result.details["contrast_to_noise"] is None
    assert json.loads(result.as_json())["details"]["contrast_to_noise"] is None


# ---------------------------------------------------------------------------------------------
# not measured is None
# ---------------------------------------------------------------------------------------------


def test_rotation_not_estimated_is_none_and_null(pixels) -> None:
    result = _pair(pixels, {}, {}, estimate_rotation=False)
    _assert_shift(result)
    assert result.rotation_deg is None and result.rotation_estimated is False
    assert json.loads(result.as_json())["rotation_deg"] is None
    dx, dy, rotation = result.correction()
    assert (dx, dy) == pytest.approx((-result.dx_mm, -result.dy_mm)) and rotation is None


def test_small_usable_region_leaves_rotation_not_estimated() -> None:
    # 40 x 40 pixels at 0.5 mm: the usable pixels lie within ~8 mm RMS of the axis, too close to pin a rotation
    ref = anatomy(SIZE, seed=5)[60:100, 60:100]
    frame = ndimage.shift(ref, (1.0, -2.0), order=3, mode="nearest")
    options = portalign.RegistrationOptions(field="none", max_shift_mm=3)
    result = portalign.register(portalign.Image.from_array(ref, pixel_spacing_mm=0.5),
                                portalign.Image.from_array(frame, pixel_spacing_mm=0.5), options, backend="cpu")
    assert result.rotation_deg is None
    assert any("rotation not estimated" in w for w in result.warnings), result.warnings
    assert (result.dx_mm, result.dy_mm) == pytest.approx((-1.0, 0.5), abs=0.1)


def test_a_result_that_is_not_ok_is_no_correction() -> None:
    """A gantry-90 frame against a gantry-0 DRR is refused but keeps its measured shift for review: its correction
    looked usable to a new user. None unless asked for explicitly."""
    refused = RegistrationResult(dx_mm=4.0, dy_mm=-2.7, rotation_deg=1.5, ok=False, reason="gantry angles differ")
    assert refused.correction() == (None, None, None)
    assert refused.correction(even_if_not_ok=True) == pytest.approx(
        RegistrationResult(dx_mm=4.0, dy_mm=-2.7, rotation_deg=1.5, ok=True).correction())


def test_correction_with_a_rotation_is_the_inverse_pose() -> None:
    result = RegistrationResult(dx_mm=1.0, dy_mm=0.0, rotation_deg=90.0, ok=True)
    dx, dy, rotation = result.correction()
    # p -> R p + d inverted: R^T (p - d); R^T d = (0, -1) for d = (1, 0) and 90 deg
    assert (dx, dy, rotation) == pytest.approx((0.0, 1.0, -90.0), abs=1e-12)


def test_couch_with_a_view_whose_rotation_was_not_estimated() -> None:
    views = [
        View(gantry_deg=0.0, dx_mm=1.0, dy_mm=-2.0, rotation_deg=0.8, label="g0"),
        View(gantry_deg=90.0, dx_mm=0.5, dy_mm=-2.0, rotation_deg=None, label="g90"),
    ]
    couch = solve_couch_shift(views, tolerance=parse_tolerance("lat=2,lng=2,vrt=2,rot=1,pitch=1,yaw=1"))
    # gantry 0 looks along the vertical: its in-plane rotation is the yaw (-theta); pitch needed the gantry-90 view
    assert couch.rotation_deg["yaw"] == pytest.approx(-0.8, abs=1e-9)
    assert couch.rotation_deg["pitch"] is None
    assert couch.within_tolerance["rot"] is None and couch.within_tolerance["pitch"] is None
    assert couch.within_tolerance["yaw"] is True
    assert any("rotation not estimated for g90" in w for w in couch.warnings)
    text = _text_report(couch)
    assert "pitch: not estimated" in text and "rot not estimated" in text
    assert "rot within" not in text and "pitch within" not in text
    assert json.loads(couch.as_json())["views"][1]["rotation_deg"] is None


def test_couch_text_shows_a_gantry_just_under_360_as_0() -> None:
    """A new user's trial: a view at gantry 359.996 deg was printed "gantry  360.0" beside reasons saying 0 deg."""
    views = [View(gantry_deg=359.996, dx_mm=1.0, dy_mm=-2.0, rotation_deg=0.0, label="g0"),
             View(gantry_deg=90.0, dx_mm=0.5, dy_mm=-2.0, rotation_deg=0.0, label="g90")]
    text = _text_report(solve_couch_shift(views))
    assert "  gantry    0.0: dx" in text and "gantry  360.0" not in text, text
    assert "  gantry   90.0: dx" in text


def test_hold_tolerance_skips_a_rotation_not_estimated() -> None:
    result = RegistrationResult(dx_mm=5.0, dy_mm=0.0, rotation_deg=None, ok=True)
    assert HoldTolerance().exceeded(result) == ["dx +5.00 mm beyond ±3 mm"]


def test_no_rotation_is_nan_free_in_the_overlay_pose(pixels) -> None:
    from portalign.overlay import reference_on_frame_grid

    ref = portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0)
    frame = portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.0)
    result = RegistrationResult(dx_mm=DX_MM, dy_mm=DY_MM, rotation_deg=None, ok=True)
    moved = reference_on_frame_grid(ref, frame, result)
    inside = np.isfinite(moved)
    assert inside.mean() > 0.9
    assert float(np.abs(moved[inside] - frame.pixels[inside]).mean()) < 0.02 * float(np.ptp(frame.pixels))
    assert math.isfinite(float(moved[inside].sum()))


def test_couch_keeps_working_and_reports_a_mismatched_pair(pixels) -> None:
    from portalign.couch import register_views

    def image(values: np.ndarray, gantry: float, name: str) -> portalign.Image:
        return portalign.Image.from_array(values, pixel_spacing_mm=1.0, name=name, gantry_deg=gantry)

    good = [(image(pixels[0], 0.0, "ref0"), image(pixels[1], 0.0, "frame0")),
            (image(pixels[0], 90.0, "ref90"), image(pixels[1], 90.0, "frame90"))]
    couch, results = register_views(good, backend="cpu")
    assert couch.ok, couch.reason
    assert all(r.ok for r in results)
    # gantry 0: image x is lateral, image y (rows, down) is -longitudinal
    assert (couch.lateral_mm, couch.longitudinal_mm) == pytest.approx((DX_MM, -DY_MM), abs=TOL_MM)
    mismatched = [good[0], (image(pixels[0], 0.0, "ref0b"), image(pixels[1], 90.0, "frame90b"))]
    couch, _ = register_views(mismatched, backend="cpu")
    assert not couch.ok and "frame90b (gantry 90): different views: gantry angle 0 deg" in couch.reason
    # the command's text names the flag, not the keyword (a new user's trial read "set allow_view_mismatch=True")
    from portalign.cli import build_parser
    from portalign.couch import _text_report

    couch_parser = build_parser()._subparsers._group_actions[0].choices["couch"]
    text = _text_report(couch, couch_parser)
    assert "--allow-view-mismatch" in text and "allow_view_mismatch" not in text
    # a result that is not ok says so first, before any correction (a trial read "correction -2.75 mm" first)
    first, *rest = text.splitlines()
    assert first.startswith("NOT OK: frame90b (gantry 90): different views") and first.endswith(
        "; do not apply the correction below")
    assert all(line.endswith("(not ok)") for line in rest if "correction" in line)
    couch, _ = register_views(mismatched, portalign.RegistrationOptions(allow_view_mismatch=True), backend="cpu")
    assert "different views" not in couch.reason


def test_angles_are_written_within_0_to_360():
    from portalign.registration._views import angle_text

    # a couch at 359.984 deg is "0", never "360" (a new user read "couch 45.1 deg ... but 360 deg")
    assert [angle_text(a) for a in (359.987, 359.94, 0.04, -0.04, 90.0, -90.0)] == ["0", "359.9", "0", "0", "90", "270"]


def _with_patient(image: portalign.Image, patient_id: str | None) -> portalign.Image:
    from dataclasses import replace

    extra = dict(image.info.extra)
    if patient_id is not None:
        extra["patient_id"] = patient_id
    return replace(image, info=replace(image.info, extra=extra))


@pytest.mark.parametrize(("ref_id", "frame_id", "refused"), [
    ("PAT-1", "PAT-2", True),
    ("PAT-1", "PAT-1 ", False),  # DICOM pads values to an even length
    ("PAT-1", None, False),  # an array, or an anonymised file without the tag: nothing to compare
])
def test_images_of_two_patients_are_not_ok_unless_allowed(pixels, ref_id, frame_id, refused) -> None:
    """A new user's trial: a frame whose PatientID was another patient's registered ok, without a word."""
    ref = _with_patient(portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0, name="ref.dcm"), ref_id)
    frame = _with_patient(portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.0, name="frame.dcm"), frame_id)
    result = portalign.register(ref, frame, backend="cpu")
    assert result.details["view"]["reference"]["patient_id"] == ref_id
    assert result.details["view"]["frame"]["patient_id"] == frame_id
    if not refused:
        _assert_shift(result)
        return
    assert result.ok is False
    assert result.reason.startswith("different patients: PatientID 'PAT-1' in the reference (ref.dcm) but 'PAT-2' in "
                                    "the frame (frame.dcm)")
    assert result.reason.endswith("set allow_patient_mismatch=True (--allow-patient-mismatch)")
    allowed = portalign.register(ref, frame, portalign.RegistrationOptions(allow_patient_mismatch=True), backend="cpu")
    _assert_shift(allowed)
    assert any(w.startswith("different patients") and w.endswith("registered as asked (allow_patient_mismatch)")
               for w in allowed.warnings), allowed.warnings


@pytest.mark.parametrize(("seed", "half_mm", "aspect", "motion", "noise", "k"), [
    (510, 24.022, 1.2313, (3.406, 1.986, 1.443), 0.00998, 27),  # lever arm 15 mm: 1.37 deg off with an 8 mm limit
    (943, 29.576, 1.1491, (-1.529, -1.841, 1.452), 0.01505, 25),  # 22 mm: estimated
])
def test_a_small_portal_field_reports_a_rotation_only_where_its_lever_arm_pins_it(seed, half_mm, aspect, motion, noise,
                                                                                  k):
    """Two portal images through a 48-60 mm field fixed to the beam, the anatomy turned 1.4 deg: the rotation is
    reported within 0.5 deg, or not at all (``MIN_ROTATION_SUPPORT_MM``); the shift within 0.5 mm either way."""
    from portalign.registration._quality import MIN_ROTATION_SUPPORT_MM

    from tests.synthetic import anatomy, field_aperture, moved, mv_portal

    base = anatomy(384, seed=seed)
    aperture = field_aperture((256, 256), 1.0, half_mm, half_mm * aspect, transmission=0.03)
    reference = portalign.Image.from_array(
        mv_portal(moved(base, 0, 0, 0), aperture, noise=noise, seed=k + 100).astype(np.float32), pixel_spacing_mm=1.0,
        kind="portal")
    frame = portalign.Image.from_array(
        mv_portal(moved(base, *motion), aperture, noise=noise, seed=k + 200).astype(np.float32), pixel_spacing_mm=1.0,
        kind="portal")
    result = portalign.register(reference, frame, backend="cpu")
    assert result.ok, result.reason
    assert np.hypot(result.dx_mm - motion[0], result.dy_mm - motion[1]) < 0.5
    support = result.details["rotation_support_mm"]
    if support < MIN_ROTATION_SUPPORT_MM:
        assert result.rotation_deg is None
        assert any("does not constrain rotation" in w for w in result.warnings)
    else:
        assert abs(result.rotation_deg - motion[2]) < 0.5
        # its standard uncertainty: a fifth of the working pixel at the lever arm, the split-half spread's half with it,
        # and the spatial halves' term at the lever arm (``_quality.rigidity_mm``)
        split = result.details["split_half_deg"] or 0.0
        gap = result.details["edge_mi_rotation_gap_deg"] or 0.0  # where MI's rotation is reported: the edges' beside it
        parting = result.details["rigidity_check"]["term_mm"]
        expected = math.hypot(math.degrees(0.2 * result.details["working_spacing_mm"] / support), split / 2,
                              gap / math.sqrt(2), math.degrees(parting / support))
        assert result.details["rotation_uncertainty_deg"] == pytest.approx(expected, rel=1e-9)
        assert abs(result.rotation_deg - motion[2]) <= 2.0 * expected


@pytest.mark.parametrize("method", ["edge", "mi"])
def test_uncertainties_are_stated_for_auto_only(pixels, method: str) -> None:
    """auto's MI cross-check is a second estimate of the pose, part of its uncertainty; edge or mi alone has none, and
    the same formula without it held 80 % (edge) and 81 % (mi) of the axis errors within two on TotalSegmentator seed 3
    (auto: 96 %), the largest 4.3 and 14.9 times it: those methods state none (null, not a number too small)."""
    auto = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 0.0})
    alone = _pair(pixels, {"gantry_deg": 0.0}, {"gantry_deg": 0.0}, method=method)
    _assert_shift(auto)
    _assert_shift(alone)
    assert auto.details["shift_uncertainty_mm"] > 0 and auto.details["rotation_uncertainty_deg"] > 0
    assert alone.details["shift_uncertainty_mm"] is None and alone.details["rotation_uncertainty_deg"] is None


def test_the_uncertainty_formulas() -> None:
    """``u = sqrt((0.2 w / L)^2 + (s / 2)^2 + g^2 / 2)`` in degrees, worked by hand: 30 mm lever arm, 1 mm pixel; and
    the shift's, each axis, ``sqrt(((0.15 w)^2 + (s / 2)^2 + g^2 / 2) / 2)`` mm."""
    from portalign.registration._quality import rotation_uncertainty_deg, shift_uncertainty_mm

    assert rotation_uncertainty_deg(30.0, 1.0, None) == pytest.approx(0.381972, abs=1e-6)  # 0.2 / 30 rad
    assert rotation_uncertainty_deg(30.0, 1.0, 0.6) == pytest.approx(math.hypot(0.381972, 0.3), abs=1e-6)
    assert rotation_uncertainty_deg(60.0, 0.5, None) == pytest.approx(0.381972 / 4, abs=1e-6)
    # edge and MI rotations 0.5 deg apart, MI's reported: sqrt(0.381972^2 + 0.3^2 + 0.5^2 / 2)
    assert rotation_uncertainty_deg(30.0, 1.0, 0.6, 0.5) == pytest.approx(0.600752, abs=1e-6)
    # a noisy reference's own arc (mm at the lever arm) adds in quadrature: 0.3 mm at 30 mm is 0.572958 deg
    assert rotation_uncertainty_deg(30.0, 1.0, None, None, 0.3) == pytest.approx(math.hypot(0.381972, 0.572958),
                                                                                  abs=1e-6)
    # 1 mm pixel; halves 0.4 mm apart and the MI optimum 0.3 mm from the edges': sqrt((0.0225 + 0.04 + 0.045) / 2)
    assert shift_uncertainty_mm(1.0, None, None) == pytest.approx(0.15 / math.sqrt(2), abs=1e-9)
    assert shift_uncertainty_mm(1.0, 0.4, 0.3) == pytest.approx(0.231840, abs=1e-6)
    # the parallax of a 10 mm shift at SAD 1000 mm: 30 mm of depth, 0.3 mm radial: sqrt((0.0225 + 0.09) / 2)
    assert shift_uncertainty_mm(1.0, None, None, 10.0, 1000.0) == pytest.approx(0.237171, abs=1e-6)
    assert shift_uncertainty_mm(1.0, None, None, 10.0) == shift_uncertainty_mm(1.0, None, None, 10.0, 1000.0)
    assert shift_uncertainty_mm(1.0, None, None, 10.0, 1500.0) == pytest.approx(math.sqrt((0.0225 + 0.04) / 2))
    # a rotation known to 0.5 deg, measured on structure centred 40 mm from the axis: 0.349 mm radial, in quadrature
    turn = 40.0 * math.radians(0.5)
    assert shift_uncertainty_mm(1.0, None, None, 0.0, None, turn) == pytest.approx(
        math.sqrt((0.0225 + turn * turn) / 2), rel=1e-12)
    # the spatial halves' term (mm) is taken whole on each axis, and over the lever arm for the rotation: 0.5 mm beside
    # the 1 mm pixel's sqrt(0.0225 / 2); 0.3 mm at 30 mm is 0.572958 deg
    assert shift_uncertainty_mm(1.0, None, None, rigidity=0.5) == pytest.approx(math.sqrt(0.0225 / 2 + 0.25), rel=1e-12)
    assert rotation_uncertainty_deg(30.0, 1.0, None, rigidity=0.3) == pytest.approx(math.hypot(0.381972, 0.572958),
                                                                                    abs=1e-6)


def test_a_larger_shift_states_a_larger_uncertainty() -> None:
    """The same anatomy matched at two shifts: the parallax of the larger (anatomy off the isocentre plane magnifies a
    shift, by an amount one view does not show) widens its stated uncertainty by the formula's term, nothing else."""
    from portalign.registration._quality import shift_uncertainty_mm

    base = anatomy(256)
    reference = portalign.Image.from_array(moved(base, 0, 0, 0, shape=(160, 176)), pixel_spacing_mm=1.0, kind="drr")
    ref = portalign.prepare_reference(reference, backend="cpu")
    results = [ref.register(portalign.Image.from_array(moved(base, dx, 0.0, 0.0, shape=(160, 176)),
                                                       pixel_spacing_mm=1.0)) for dx in (1.0, 9.0)]
    for r, dx in zip(results, (1.0, 9.0), strict=True):
        assert r.ok and r.dx_mm == pytest.approx(dx, abs=0.3)
        d = r.details
        turn = (0.0 if d["rotation_uncertainty_deg"] is None
                else d["rotation_offset_mm"] * math.radians(d["rotation_uncertainty_deg"]))
        expected = shift_uncertainty_mm(d["working_spacing_mm"], d["split_half_mm"], d["edge_mi_gap_mm"],
                                        math.hypot(r.dx_mm, r.dy_mm), None, turn)
        assert d["shift_uncertainty_mm"] == pytest.approx(expected, rel=1e-12)
        still = shift_uncertainty_mm(d["working_spacing_mm"], d["split_half_mm"], d["edge_mi_gap_mm"], 0.0, None, turn)
        assert d["shift_uncertainty_mm"] > still
    assert results[1].details["shift_uncertainty_mm"] > results[0].details["shift_uncertainty_mm"] + 0.1


def test_structure_far_from_the_beam_axis_carries_the_rotations_uncertainty_into_the_shift() -> None:
    """The pose turns about the beam axis: where the matched structure lies far from it, the shift at the axis is
    extrapolated through the rotation, and the rotation's uncertainty enters the shift's (``R u_theta``, ``R`` the
    usable pixels' centroid's distance from the axis). Real windows so placed (``bench.real_windows``, window centres
    43-85 mm from the axis) were ok 0.99-1.01 mm off with their rotations 0.75-1.4 deg off, at up to 4.3 uncertainties;
    their errors correlated with R times the rotation's error (0.74)."""
    from portalign.registration._quality import shift_uncertainty_mm

    base = anatomy(256)
    pixels = {dx: moved(base, dx, -1.0, 0.0, shape=(160, 176)) for dx in (0.0, 2.0)}
    found = {}
    for name, axis in (("centred", (87.5, 79.5)), ("far", (87.5 - 60.0, 79.5 + 40.0))):
        reference = portalign.Image.from_array(pixels[0.0], pixel_spacing_mm=1.0, kind="drr", beam_axis_px=axis)
        frame = portalign.Image.from_array(pixels[2.0], pixel_spacing_mm=1.0, beam_axis_px=axis)
        found[name] = portalign.register(reference, frame, backend="cpu")
    for r in found.values():
        assert r.ok and r.rotation_deg is not None and r.details["rotation_uncertainty_deg"] is not None
    centred, far = found["centred"].details, found["far"].details
    assert centred["rotation_offset_mm"] < 5.0  # the usable pixels all round the axis
    assert far["rotation_offset_mm"] == pytest.approx(math.hypot(60.0, 40.0), rel=0.1)  # the frame's centre
    for r in found.values():
        d = r.details
        term = d["rotation_offset_mm"] * math.radians(d["rotation_uncertainty_deg"])
        expected = shift_uncertainty_mm(d["working_spacing_mm"], d["split_half_mm"], d["edge_mi_gap_mm"],
                                        math.hypot(r.dx_mm, r.dy_mm), None, term)
        assert d["shift_uncertainty_mm"] == pytest.approx(expected, rel=1e-12)
    assert far["rotation_offset_mm"] * math.radians(far["rotation_uncertainty_deg"]) > 0.1  # mm, radial
    assert far["shift_uncertainty_mm"] > 1.3 * centred["shift_uncertainty_mm"]


def test_parallel_views_name_a_pair_that_is_not_one_view_first(pixels) -> None:
    """A pair whose reference is another view was the likelier mistake than the angles (a new user's trial)."""
    from portalign.couch import register_views
    from portalign.errors import GeometryError

    def image(values: np.ndarray, gantry: float, name: str) -> portalign.Image:
        return portalign.Image.from_array(values, pixel_spacing_mm=1.0, name=name, gantry_deg=gantry)

    pairs = [(image(pixels[0], 0.0, "ref0"), image(pixels[1], 0.0, "frame0")),
             (image(pixels[0], 90.0, "ref90"), image(pixels[1], 0.0, "frame0b"))]
    with pytest.raises(GeometryError, match=r"^view frame0b: different views: gantry angle 90 deg in the reference "
                                            r"\(ref90\) but 0 deg in the frame \(frame0b\); and views at gantry 0, 0 "
                                            r"are parallel"):
        register_views(pairs, backend="cpu")


def test_two_portal_images_of_different_scales_are_refused(pixels) -> None:
    """A frame whose RTImageSID was 1000 instead of 1500 mm (a trial) measured its 20 mm field as 29.6 mm and was ok
    1.8 mm off. A field is fixed to the beam: two portal images' fields of different sizes at the isocentre, by one
    factor on both axes, are two scales, and no shift between them is the patient's."""
    rows, cols = pixels[0].shape
    field = np.full((rows, cols), 0.1, np.float32)
    field[rows // 2 - 50: rows // 2 + 50, cols // 2 - 55: cols // 2 + 55] = 1.0  # fixed to the beam in both
    reference = portalign.Image.from_array(pixels[0] * field, pixel_spacing_mm=1.0, name="ref")
    frame = pixels[1] * field
    same = portalign.register(reference, portalign.Image.from_array(frame, pixel_spacing_mm=1.0, name="frame"),
                              backend="cpu")
    assert same.field_detected and not (same.reason or "").startswith("different scales")  # one scale: no word of it
    wrong = portalign.Image.from_array(frame, pixel_spacing_mm=1.5, name="frame")  # its spacing 1.5 times too large
    result = portalign.register(reference, wrong, backend="cpu")
    assert not result.ok and result.reason.startswith("different scales: the frame's radiation field is ")
    assert "(1.5" in result.reason and "RTImageSID (3002,0026)" in result.reason
    assert result.dx_mm is None and result.dy_mm is None  # millimetres of two scales measure nothing
    _registered_as_asked(reference, wrong, "different scales", "registered as asked (allow_view_mismatch)")


def _registered_as_asked(reference, frame, begins: str, ends: str) -> None:
    """With allow_view_mismatch the pair is not refused for its scales: a warning that begins and ends so says it."""
    allowed = portalign.register(reference, frame, portalign.RegistrationOptions(allow_view_mismatch=True),
                                 backend="cpu")
    assert not (allowed.reason or "").startswith("different scales")
    assert any(w.startswith(begins) and w.endswith(ends) for w in allowed.warnings), allowed.warnings


def _through_planned_jaws(pixels, sid: float, hot_lines: bool = False) -> portalign.Image:
    """The frame of ``pixels`` through jaws +-40 mm (1 mm pixels), an RT Image of 1.5 mm pixels at ``sid`` mm (SAD
    1000) whose ExposureSequence plans those jaws; with ``hot_lines``, a hot row from inside the field to 35 mm beyond
    it and a hot column pair from inside it to 30 mm beyond, both joined to the field."""
    from dicom_factory import make_rt_image
    from portalign.dicom import read_rt_image
    from pydicom.dataset import Dataset

    rows, cols = pixels[1].shape
    field = np.full((rows, cols), 0.1)
    field[rows // 2 - 40: rows // 2 + 40, cols // 2 - 40: cols // 2 + 40] = 1.0  # jaws +-40 mm at 1 mm pixels
    signal = (pixels[1] - pixels[1].min() + 1.0) * field  # attenuation-like: positive, the field above its outside
    counts = signal / signal.max() * 50000
    if hot_lines:
        counts[rows // 2 + 10, cols // 2 + 20: cols // 2 + 75] = 65000
        counts[rows // 2 - 70: rows // 2 - 20, cols // 2 - 12: cols // 2 - 10] = 65000
    exposure = Dataset()
    jaws = []
    for kind in ("ASYMX", "ASYMY"):
        device = Dataset()
        device.RTBeamLimitingDeviceType = kind
        device.NumberOfLeafJawPairs = 1
        device.LeafJawPositions = ["-40", "40"]
        jaws.append(device)
    exposure.BeamLimitingDeviceSequence = jaws
    exposure.BeamLimitingDeviceAngle = "0"
    return read_rt_image(make_rt_image(np.round(counts).astype(np.uint16), spacing=1.5, sid=sid, sad=1000.0,
                                       position="centre", ExposureSequence=[exposure]))


def test_a_frame_field_larger_than_its_own_jaws_is_a_wrong_scale(pixels) -> None:
    """A DRR reference has no field to compare with; the frame's own planned jaws bound its field. Measured beyond
    them on both axes (RTImageSID 1000 for 1500 mm: 1.5 times), the scale is wrong and no shift is the patient's."""
    reference = portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0, name="drr", kind="drr")
    right = portalign.register(reference, _through_planned_jaws(pixels, 1500.0), backend="cpu")
    assert right.field_detected, right.details["field_note"]
    assert not (right.reason or "").startswith("different scales")
    wrong = portalign.register(reference, _through_planned_jaws(pixels, 1000.0), backend="cpu")  # 1.5 mm at the iso
    assert not wrong.ok and wrong.reason.startswith("different scales: the frame's radiation field is ")
    assert "larger than its own planned jaws (80.0 x 80.0 mm)" in wrong.reason and wrong.dx_mm is None


def test_hot_lines_joined_to_a_field_are_not_beyond_its_jaws(pixels) -> None:
    """The twin of a portal pair's hot lines (test_scale_check): against a DRR the frame's field is compared with its
    own planned jaws, and a hot row and column joined to it made its box 115 x 110 mm through 80 x 80 mm jaws: the
    right frame was refused as a wrong scale. Its core (``field.core_extent_px``) is compared with the jaws': the frame
    registers, compared by its box it is refused, and the wrong scale with the same lines is still refused."""
    from portalign.registration import _program

    reference = portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0, name="drr", kind="drr")
    lined = _through_planned_jaws(pixels, 1500.0, hot_lines=True)
    result = portalign.register(reference, lined, backend="cpu")
    _assert_shift(result)
    with pytest.MonkeyPatch.context() as patch:  # compared by its box, the lines make the field larger than the jaws
        patch.setattr(_program, "core_extent_px", lambda field: None)
        boxed = portalign.register(reference, lined, backend="cpu")
    assert not boxed.ok and "larger than its own planned jaws (80.0 x 80.0 mm)" in boxed.reason, boxed.reason
    wrong = portalign.register(reference, _through_planned_jaws(pixels, 1000.0, hot_lines=True), backend="cpu")
    assert not wrong.ok and "larger than its own planned jaws (80.0 x 80.0 mm)" in wrong.reason, wrong.reason


@pytest.mark.parametrize("turn_deg", [0.0, 30.0, 45.0])
def test_turned_jaws_core_is_measured_by_the_fields_rule(turn_deg: float) -> None:
    """The planned jaws' core by the rule a detected field's core is measured by (columns and rows holding a quarter
    of the fullest one's): jaws not turned measure their width and height; a square turned by 45 degrees 0.75 of its
    box (the column through a corner holds a quarter of the diagonal's at three quarters of the half-diagonal)."""
    from portalign.registration._program import _jaws_core_extent_mm

    turn = np.radians(turn_deg)
    corners = tuple((40.0 * x * np.cos(turn) - 30.0 * y * np.sin(turn), 40.0 * x * np.sin(turn) + 30.0 * y * np.cos(turn))
                    for x, y in ((-1, -1), (1, -1), (1, 1), (-1, 1)))
    width, height = _jaws_core_extent_mm(corners)
    if turn_deg == 0.0:
        assert (width, height) == pytest.approx((80.0, 60.0), rel=0.01)
    elif turn_deg == 45.0:  # a rectangle's box is 70 sqrt 2 both ways; the quarter rule takes less than the box
        box = 70.0 * np.sqrt(2.0)
        assert box * 0.7 < width < box and box * 0.7 < height < box
    else:
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        assert width < max(xs) - min(xs) and height < max(ys) - min(ys)


@pytest.mark.parametrize("factor", [0.93, 1.07])
def test_anatomy_of_another_scale_is_refused_where_no_field_tells(pixels, factor: float) -> None:
    """A DRR against a frame with no field and no jaws in its header: only the anatomy has a size. A frame header's
    SID 1400 for 1500 mm (7 %) was matched 1.7 mm off, ok (a trial, session note 29); the anatomy's own scale check
    (``registration._scale``) finds the edges matching best at the other scale and refuses the pair."""
    reference = portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0, name="drr", kind="drr")
    right = portalign.register(reference, portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.0, name="frame"),
                               backend="cpu")
    _assert_shift(right)
    check = right.details["scale_check"]
    assert check["confirmed"] and not check["mismatch"] and check["best_scale"] == pytest.approx(1.0, abs=0.01)
    wrong = portalign.Image.from_array(pixels[1], pixel_spacing_mm=factor, name="frame")
    result = portalign.register(reference, wrong, backend="cpu")
    assert not result.ok and result.reason.startswith("different scales: the frame's anatomy measures about ")
    size = "smaller" if factor < 1 else "larger"
    assert f" % {size} than the reference's at the isocentre" in result.reason
    assert "RTImageSID" in result.reason and "--allow-view-mismatch" in result.reason
    assert result.dx_mm is None and result.dy_mm is None and result.rotation_deg is None
    # the scale it found: the frame's stated millimetres times it are the reference's (within a step, 2.5 %)
    assert result.details["scale_check"]["best_scale"] == pytest.approx(1.0 / factor, abs=0.025)
    _registered_as_asked(reference, wrong, "different scales: the frame's anatomy", "(allow_view_mismatch)")


def test_a_confirmed_scale_is_not_checked_again_for_the_geometry(pixels) -> None:
    """The scale is the headers': once a frame of a geometry confirms it, that geometry's later frames skip the
    check (``scale_check`` null: not measured for them); a frame of another geometry is checked."""
    reference = portalign.prepare_reference(
        portalign.Image.from_array(pixels[0], pixel_spacing_mm=1.0, name="drr", kind="drr"), backend="cpu")
    first = reference.register(portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.0, name="frame 1"))
    assert first.ok and first.details["scale_check"]["confirmed"]
    second = reference.register(portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.0, name="frame 2"))
    assert second.ok and second.details["scale_check"] is None
    assert (second.dx_mm, second.dy_mm) == (first.dx_mm, first.dy_mm)
    other = reference.register(portalign.Image.from_array(pixels[1], pixel_spacing_mm=1.07, name="frame 3"))
    assert not other.ok and other.details["scale_check"]["mismatch"]


def test_a_frame_that_is_the_reference_itself_is_said_to_be() -> None:
    """A new user's trial dropped a copy of the reference into a watched folder: ok at no shift, nothing said. Then
    ok with a warning, which a loop gating on ok takes as the patient in position (a fuzz campaign): not ok."""
    from tests.field_sets import FIELD_CASES, read

    if not FIELD_CASES.is_dir():
        pytest.skip("../shared/field-cases not present (a user's clone)")
    ref = read(FIELD_CASES / "small-field" / "ref_crop.dcm")
    frame = read(FIELD_CASES / "small-field" / "frame_shift_r+9_c-13.dcm")
    assert ref.info.sop_instance_uid and ref.info.sop_instance_uid != frame.info.sop_instance_uid
    itself = portalign.register(ref, read(FIELD_CASES / "small-field" / "ref_crop.dcm"), backend="cpu")
    assert not itself.ok and itself.correction() == (None, None, None)
    assert itself.reason == (f"the frame is the reference image itself (the same SOP Instance UID, "
                             f"{ref.info.sop_instance_uid}, and the same pixels): its shift from itself says nothing of "
                             "the patient; register a frame acquired at this treatment"), itself.reason
    assert itself.dx_mm == pytest.approx(0.0, abs=0.01) and itself.dy_mm == pytest.approx(0.0, abs=0.01)
    other = portalign.register(ref, frame, backend="cpu")
    assert not [w for w in other.warnings if "reference image itself" in w]
    # another image under the same UID (a trial's two pylinac files) is not called the reference itself
    from dataclasses import replace

    reused = replace(frame, info=replace(frame.info, sop_instance_uid=ref.info.sop_instance_uid))
    said = [w for w in portalign.register(ref, reused, backend="cpu").warnings if "SOP Instance UID" in w]
    assert said == [f"the frame and the reference share one SOP Instance UID ({ref.info.sop_instance_uid}) but their "
                    "pixels differ: a UID reused for two images (an export or anonymisation fault); a REG object or a "
                    "journal cannot tell them apart"]


def test_a_turn_that_was_not_estimated_is_part_of_the_shifts_uncertainty() -> None:
    """Translation only (``estimate_rotation=False``) of a frame turned 1 deg: the turn was not measured, yet it moves
    the shift. The stated uncertainty takes ``UNESTIMATED_TURN_DEG`` at the usable pixels' RMS radius
    (``_quality.unestimated_turn_mm``), and the error the turn left lies within two of it (an independent trial's
    MLC fields without a rotation: 0.38-0.98 mm off at up to 2.4 uncertainties stated without the term, 1.4 with)."""
    from portalign.registration._quality import UNESTIMATED_TURN_DEG, shift_uncertainty_mm, unestimated_turn_mm

    base = anatomy(256)
    reference = portalign.Image.from_array(moved(base, 0, 0, 0, shape=(160, 176)), pixel_spacing_mm=1.0, kind="drr")
    frame = portalign.Image.from_array(moved(base, 1.5, -1.0, 1.0, shape=(160, 176)), pixel_spacing_mm=1.0)
    result = portalign.register(reference, frame, portalign.RegistrationOptions(estimate_rotation=False), backend="cpu")
    d = result.details
    assert result.ok and result.rotation_deg is None and d["rotation_estimated"] is False
    assert d["rotation_uncertainty_deg"] is None and d["rotation_radius_mm"] > 30.0
    term = unestimated_turn_mm(d["rotation_radius_mm"])
    assert term == pytest.approx(d["rotation_radius_mm"] * math.radians(UNESTIMATED_TURN_DEG), rel=1e-12)
    # (the turn parts the spatial halves too, refined with no turn: their term is the measured side of the same turn)
    parting = d["rigidity_check"]["term_mm"]
    expected = shift_uncertainty_mm(d["working_spacing_mm"], d["split_half_mm"], d["edge_mi_gap_mm"],
                                    math.hypot(result.dx_mm, result.dy_mm), None, term, 0.0, parting)
    assert d["shift_uncertainty_mm"] == pytest.approx(expected, rel=1e-12)
    without = shift_uncertainty_mm(d["working_spacing_mm"], d["split_half_mm"], d["edge_mi_gap_mm"],
                                   math.hypot(result.dx_mm, result.dy_mm), None, 0.0, 0.0, parting)
    assert d["shift_uncertainty_mm"] > without + 0.2
    assert max(abs(result.dx_mm - 1.5), abs(result.dy_mm + 1.0)) < 2.0 * d["shift_uncertainty_mm"]
    assert unestimated_turn_mm(None) == 0.0


def test_a_drr_given_as_the_frame_against_a_portal_reference_is_called_swapped(pixels) -> None:
    """A new user's trial: ``portalign register FRAME.dcm DRR.dcm`` (the two arguments swapped) was ok at (-3.2, -2.0)
    mm for a shift of (+3.0, +2.0), nothing said. A DRR is never the frame: not ok, the reason names both files and
    the order; the right order registers as before."""
    swapped = _pair(pixels, {"kind": "portal", "gantry_deg": 0.0}, {"kind": "drr", "gantry_deg": 0.0})
    assert swapped.ok is False and swapped.details["view"]["swapped"] is True
    assert swapped.reason.startswith("the arguments look swapped: the frame (frame.dcm) is a DRR and the reference "
                                     "(ref.dcm) a portal image"), swapped.reason
    assert "REFERENCE FRAME" in swapped.reason
    right = _pair(pixels, {"kind": "drr", "gantry_deg": 0.0}, {"kind": "portal", "gantry_deg": 0.0})
    _assert_shift(right)
    assert "swapped" not in right.details["view"]


def test_one_image_without_a_stated_beam_axis_is_said():
    """A hostile campaign: one image of a pair stating its beam axis (RTImagePosition) and the other not (taken at its
    centre): an imager offset or a cropped export moves the shift by as much, and the pixels cannot show it. Said in
    the warnings (not refused: many exports state none); not where both state it, or neither, or for arrays."""
    from portalign import ImageInfo, RegistrationOptions
    from portalign.registration._views import compare_views

    def info(source, axis):
        return ImageInfo(source=source, gantry_deg=0.0, extra={} if axis is None else {"beam_axis_source": axis})

    reason, _, said = compare_views(info("ref.dcm", "RTImagePosition"), info("frame.dcm", "image centre"),
                                    RegistrationOptions())
    assert reason == ""
    assert [w for w in said if w.startswith("the frame (frame.dcm) does not state where its beam axis lies "
                                            "(RTImagePosition (3002,0012), XRayImageReceptorTranslation (3002,000D))")]
    _, _, said = compare_views(info("ref.dcm", "image centre"), info("frame.dcm", "XRayImageReceptorTranslation"),
                               RegistrationOptions())
    assert [w for w in said if w.startswith("the reference (ref.dcm) does not state where its beam axis lies")]
    for ref_axis, frame_axis in (("RTImagePosition", "XRayImageReceptorTranslation"), ("image centre", "image centre"),
                                 (None, "image centre"), ("RTImagePosition", "RTImagePosition")):
        _, _, said = compare_views(info("ref.dcm", ref_axis), info("frame.dcm", frame_axis), RegistrationOptions())
        assert not [w for w in said if "beam axis lies" in w], (ref_axis, frame_axis)


def test_couch_refuses_views_of_different_patients_across_pairs(pixels) -> None:
    """Each pair's two images were compared, not the pairs with each other: a hostile campaign combined a pair of
    PatientID PORTALIGN-DEMO with a pair of OTHER into one couch move, ok, nothing said."""
    from portalign.couch import register_views

    def image(values: np.ndarray, gantry: float, name: str, patient: str) -> portalign.Image:
        return _with_patient(portalign.Image.from_array(values, pixel_spacing_mm=1.0, name=name, gantry_deg=gantry),
                             patient)

    pairs = [(image(pixels[0], 0.0, "ref0", "A"), image(pixels[1], 0.0, "frame0", "A")),
             (image(pixels[0], 90.0, "ref90", "B"), image(pixels[1], 90.0, "frame90", "B"))]
    couch, results = register_views(pairs, backend="cpu")
    assert all(r.ok for r in results)
    assert not couch.ok
    assert couch.reason.startswith("the views are of different patients: PatientID 'A' (ref0), 'B' (ref90); views of "
                                   "two patients make no couch move")
    allowed, _ = register_views(pairs, portalign.RegistrationOptions(allow_patient_mismatch=True), backend="cpu")
    assert allowed.ok and any(w.endswith("combined as asked (allow_patient_mismatch)") for w in allowed.warnings)
    same = [(image(pixels[0], 0.0, "ref0", "A"), image(pixels[1], 0.0, "frame0", "A")),
            (image(pixels[0], 90.0, "ref90", "A"), image(pixels[1], 90.0, "frame90", "A"))]
    assert register_views(same, backend="cpu")[0].ok


def test_an_imager_turned_in_one_image_only_is_a_different_view():
    """XRayImageReceptorAngle 90 in the frame and none in the reference (a hostile campaign): its image axes are not the
    reference's, and couch combined the shift along the wrong axes, ok (vertical -2.58 for +4.09 mm). Absent is not
    turned; within the view tolerance, or the same in both, is the same view."""
    from portalign import ImageInfo, RegistrationOptions
    from portalign.registration._views import compare_views

    def info(source, turn):
        return ImageInfo(source=source, gantry_deg=90.0, extra={} if turn is None else {"receptor_angle_deg": turn})

    reason, record, _ = compare_views(info("ref.dcm", None), info("frame.dcm", 90.0), RegistrationOptions())
    assert reason.startswith("different views: imager (receptor) angle 0 deg in the reference (ref.dcm) but 90 deg in "
                             "the frame (frame.dcm)") and "XRayImageReceptorAngle" in reason
    assert record["mismatch"] == ["receptor_deg"]
    for ref_turn, frame_turn in ((None, None), (None, 0.0), (90.0, 90.0), (359.0, 1.0)):
        assert compare_views(info("ref.dcm", ref_turn), info("frame.dcm", frame_turn), RegistrationOptions())[0] == ""
    assert compare_views(info("ref.dcm", None), info("frame.dcm", 90.0), RegistrationOptions(allow_view_mismatch=True))[0] == ""


def test_a_table_top_turned_eccentrically_in_one_image_only_is_a_different_view(tmp_path):
    """TableTopEccentricAngle was never read (a hostile campaign's 90 deg gave couch the same answer, ok); it is read
    from the RT Image and compared as the couch angle is (absent: not turned)."""
    from dicom_factory import make_rt_image, write_rt_image
    from portalign import ImageInfo, RegistrationOptions
    from portalign.registration._views import compare_views

    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 997) * 50
    path = write_rt_image(make_rt_image(pixels, TableTopEccentricAngle=90.0), tmp_path / "frame.dcm")
    frame = portalign.read_rt_image(path)
    assert frame.info.extra["table_top_eccentric_deg"] == 90.0
    reason, record, _ = compare_views(ImageInfo(source="ref.dcm", gantry_deg=0.0), frame.info, RegistrationOptions())
    assert reason.startswith("different views: table top eccentric angle 0 deg in the reference (ref.dcm) but 90 deg "
                             "in the frame (frame.dcm)") and "TableTopEccentricAngle (300A,0125)" in reason
    assert record["mismatch"] == ["eccentric_deg"]
    same = ImageInfo(source="ref.dcm", gantry_deg=0.0, extra={"table_top_eccentric_deg": 90.0})
    assert compare_views(same, frame.info, RegistrationOptions())[0] == ""


def test_a_header_naming_two_gantry_angles_is_said(tmp_path):
    """A hostile campaign's single frame with GantryAngle 0 at the top level and 90 in its ExposureSequence item was
    registered as gantry 0, nothing said. The contradiction is said with the angle used (in ``info``'s notes and the
    result's warnings)."""
    from dicom_factory import make_rt_image, write_rt_image
    from portalign import ImageInfo, RegistrationOptions
    from portalign.registration._views import compare_views
    from pydicom.dataset import Dataset

    item = Dataset()
    item.GantryAngle = 90.0
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 997) * 50
    frame = portalign.read_rt_image(write_rt_image(make_rt_image(pixels, gantry=0.0, ExposureSequence=[item]),
                                                   tmp_path / "frame.dcm"))
    said = ("frame.dcm: GantryAngle (300A,011E) is 0 deg at the top level but 90 deg in the ExposureSequence item of "
            "this frame; 0 deg is used: the header contradicts itself (check the export)")
    assert frame.info.gantry_deg == 0.0 and said in frame.info.extra["notes"]
    reason, _, warnings = compare_views(ImageInfo(source="ref.dcm", gantry_deg=0.0), frame.info, RegistrationOptions())
    assert reason == "" and said in warnings
    item.GantryAngle = 0.5  # within a degree: the same angle written twice
    agreeing = portalign.read_rt_image(write_rt_image(make_rt_image(pixels, gantry=0.0, ExposureSequence=[item]),
                                                      tmp_path / "agreeing.dcm"))
    assert "header_contradictions" not in agreeing.info.extra


def test_a_frame_that_is_the_reference_itself_is_said_to_be_on_a_smoothed_pass_too() -> None:
    """The demo's noisy MV frame against itself, the reference's header planning a field wider than the image: refused
    as taken, the pair is registered again smoothed (``_program.SMOOTH_PAIR``), whose pass compared its smoothed
    pixels with the reference's, found them different, and came back ok with "share one SOP Instance UID but their
    pixels differ" (a hostile campaign). The pass as taken judges the pixels."""
    from dataclasses import replace

    from portalign.demo import make_demo_pair

    _, frame, _ = make_demo_pair()
    frame = replace(frame, info=replace(frame.info, sop_instance_uid="1.2.826.0.1.3680043.8.498.1"))
    corners = [[-200.0, -200.0], [200.0, -200.0], [200.0, 200.0], [-200.0, 200.0]]
    wide = replace(frame, info=replace(frame.info, extra={**frame.info.extra, "planned_field_corners_mm": corners}))
    result = portalign.register(wide, frame, backend="cpu")
    assert not result.ok and result.reason.startswith("the frame is the reference image itself")
    assert not [w for w in result.warnings if "their pixels differ" in w]
    other = portalign.register(wide, replace(frame, pixels=frame.pixels + np.float32(1.0)), backend="cpu")
    assert [w for w in other.warnings if "but their pixels differ" in w]  # same UID, other pixels: said
