"""Field placement: delivered field edges against the planned aperture, separately from the anatomy."""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import portalign
import pytest
from dicom_factory import make_rt_image, write_rt_image
from portalign import Image, RegistrationResult, fieldcheck
from portalign.ct import CTVolume
from portalign.dicom import read_rt_image
from portalign.errors import GeometryError, PortalignError, PortalImageError
from portalign.fieldcheck import field_placement, measure_field, planned_field
from portalign.simulate import render_drr
from pydicom.dataset import Dataset
from scipy.special import erf

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
WL = REAL / "pylinac" / "wl_shift_truebeam"

SPACING = 0.5  # mm at the isocentre


def field_image(edges, *, collimator_deg=0.0, shape=(240, 260), penumbra_mm=3.0, anatomy=True, noise=0.01, seed=0,
                planned=None, offset=50.0):
    """A portal image with a rectangular field ``(x1, x2, y1, y2)`` in the field frame (image turned by -coll).

    ``offset`` is a detector floor added everywhere (the 50 % line is measured above it).
    """
    rows, cols = shape
    y, x = np.indices(shape, dtype=np.float64)
    x = (x - (cols - 1) / 2.0) * SPACING
    y = (y - (rows - 1) / 2.0) * SPACING
    a = math.radians(-collimator_deg)  # field frame -> image: R(a); image -> field frame: R(-a)
    u = math.cos(a) * x + math.sin(a) * y
    v = -math.sin(a) * x + math.cos(a) * y
    scale = penumbra_mm / (2.0 * 0.8416) * math.sqrt(2.0)
    x1, x2, y1, y2 = edges
    aperture = 0.25 * (erf((u - x1) / scale) - erf((u - x2) / scale)) * (erf((v - y1) / scale) - erf((v - y2) / scale))
    fluence = 0.02 + 0.98 * aperture
    if anatomy:  # a few soft blobs and a dark bead, fixed to the patient
        for cx, cy, r, depth in [(-6, 3, 3, 0.3), (6, -4, 4, 0.15), (2, 5, 2, 0.45)]:
            fluence *= 1.0 - depth * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    pixels = 1000.0 * fluence + offset
    if noise:
        pixels += noise * 1000.0 * np.random.default_rng(seed).standard_normal(shape)
    extra = {}
    if planned is not None:
        px1, px2, py1, py2 = planned
        extra["planned_jaws_mm"] = {"x1": px1, "x2": px2, "y1": py1, "y2": py2}
    return Image.from_array(pixels, pixel_spacing_mm=SPACING, kind="portal", collimator_deg=collimator_deg,
                            extra=extra)


PLANNED = (-30.0, 30.0, -25.0, 25.0)


def test_measure_field_finds_the_50_percent_edges():
    edges = measure_field(field_image((-30.0, 32.5, -24.0, 21.0)))
    assert [edges.x1, edges.x2, edges.y1, edges.y2] == pytest.approx([-30.0, 32.5, -24.0, 21.0], abs=0.1)
    assert edges.centre_mm == pytest.approx((1.25, -1.5), abs=0.1)
    assert edges.threshold == pytest.approx(50.0 + 0.5 * 1000.0, rel=0.02)
    assert edges.profiles >= 3


def test_shifted_aperture_is_reported_against_the_planned_jaws():
    reference = field_image(PLANNED, planned=PLANNED, seed=1)
    delivered = (-28.5, 30.5, -25.8, 24.2)  # centre +1.0 in x, -0.8 in y; 1 mm narrower in x
    frame = field_image(delivered, seed=2)
    report = field_placement(reference, frame, tolerance_mm=1.0)
    assert report["planned_source"] == "reference jaws"
    assert report["centre_shift_mm"] == pytest.approx([1.0, -0.8], abs=0.1)
    expected = {k: d - p for k, d, p in zip(("x1", "x2", "y1", "y2"), delivered, PLANNED, strict=True)}
    assert report["edge_errors_mm"] == pytest.approx(expected, abs=0.1)
    assert report["size_errors_mm"] == pytest.approx({"x": -1.0, "y": 0.0}, abs=0.15)
    assert report["within_tolerance"] is False and report["max_edge_error_mm"] == pytest.approx(1.5, abs=0.1)
    json.dumps(report)


def test_anatomy_is_reported_apart_from_the_field():
    reference = field_image(PLANNED, planned=PLANNED)
    frame = field_image(PLANNED, seed=3)
    result = RegistrationResult(dx_mm=2.0, dy_mm=-1.0, rotation_deg=0.0, ok=True)
    report = field_placement(reference, frame, result=result)
    assert report["centre_shift_mm"] == pytest.approx([0.0, 0.0], abs=0.1)
    assert report["anatomy_relative_to_field_mm"] == pytest.approx([2.0, -1.0], abs=0.1)
    assert report["within_tolerance"] is True
    assert report["anatomy_ok"] is True and report["anatomy_reason"] == ""


def test_anatomy_not_measured_or_refused_is_said():
    reference = field_image(PLANNED, planned=PLANNED)
    frame = field_image(PLANNED, seed=3)
    nothing = RegistrationResult(dx_mm=None, dy_mm=None, rotation_deg=None, ok=False,
                                 reason="too little of the frame is usable: 0 pixels")
    report = field_placement(reference, frame, result=nothing)
    assert report["anatomy_shift_mm"] is None and report["anatomy_relative_to_field_mm"] is None
    assert report["anatomy_ok"] is False and report["anatomy_reason"].startswith("too little")
    refused = RegistrationResult(dx_mm=0.3, dy_mm=-0.9, rotation_deg=None, ok=False, reason="ambiguous")
    assert field_placement(reference, frame, result=refused)["anatomy_ok"] is False


def _jaw_exposure(jaws_iec) -> Dataset:
    """An ExposureSequence item with asymmetric X and Y jaws ``(X1, X2, Y1, Y2)`` in mm (IEC)."""
    exposure = Dataset()
    devices = []
    for kind, pair in (("ASYMX", jaws_iec[:2]), ("ASYMY", jaws_iec[2:])):
        device = Dataset()
        device.RTBeamLimitingDeviceType = kind
        device.NumberOfLeafJawPairs = 1
        device.LeafJawPositions = list(pair)
        devices.append(device)
    exposure.BeamLimitingDeviceSequence = devices
    return exposure


def test_collimator_rotation_from_dicom_jaws(tmp_path):
    collimator = 30.0
    jaws_iec = (-40.0, 35.0, -20.0, 30.0)  # X1, X2, Y1, Y2 (Y2 towards the gantry = up in the image)
    planned_image_frame = (jaws_iec[0], jaws_iec[1], -jaws_iec[3], -jaws_iec[2])
    delivered = (planned_image_frame[0] + 1.0, planned_image_frame[1] + 1.0,
                 planned_image_frame[2] - 0.5, planned_image_frame[3] - 0.5)
    frame_image = field_image(delivered, collimator_deg=collimator, shape=(300, 300))
    exposure = _jaw_exposure(jaws_iec)
    # 0.75 mm at the imager = 0.5 mm at the isocentre (SID 1500, SAD 1000)
    ds = make_rt_image(frame_image.pixels, spacing=0.75, position="centre", BeamLimitingDeviceAngle=collimator,
                       ExposureSequence=[exposure])
    frame = read_rt_image(write_rt_image(ds, tmp_path / "frame.dcm"))
    assert frame.spacing_mm == pytest.approx((SPACING, SPACING))

    plan = planned_field(frame, frame)
    # the planned rectangle, turned our way, has the corners portalign.dicom computes from the header
    np.testing.assert_allclose(sorted(plan.corners_mm()), sorted(frame.info.extra["planned_field_corners_mm"]),
                               atol=1e-9)
    report = field_placement(frame, frame)
    assert report["collimator_deg"] == pytest.approx(collimator)
    assert report["edge_errors_mm"] == pytest.approx({"x1": 1.0, "x2": 1.0, "y1": -0.5, "y2": -0.5}, abs=0.12)
    a = math.radians(-collimator)
    expected_shift = [math.cos(a) * 1.0 - math.sin(a) * -0.5, math.sin(a) * 1.0 + math.cos(a) * -0.5]
    assert report["centre_shift_mm"] == pytest.approx(expected_shift, abs=0.1)


@pytest.fixture(scope="module")
def water_box() -> CTVolume:
    rng = np.random.default_rng(3)
    hu = np.full((40, 40, 40), -1000.0, dtype=np.float32)
    hu[4:36, 6:34, 4:36] = 0.0
    zz, yy, xx = np.indices(hu.shape)
    for _ in range(25):
        c = rng.uniform(8, 32, 3)
        hu[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 4.0] = 1200.0
    return CTVolume(hu, (5.0, 5.0, 5.0), (-97.5, -97.5, -97.5), "HFS", "water box")


def test_simulated_portal_field_matches_its_jaws(water_box):
    # render_drr's field_mm is (x1, x2, y1, y2) in the beam-limiting-device frame: image y spans (-y2, -y1),
    # exactly what portalign.dicom stores as planned_jaws_mm = (X1, X2, -Y2, -Y1).
    geometry = {"detector_shape": (160, 160), "detector_spacing_mm": 1.5}
    jaws = (-50.0, 40.0, -30.0, 45.0)
    planned = {"x1": jaws[0], "x2": jaws[1], "y1": -jaws[3], "y2": -jaws[2]}
    drr = render_drr(water_box, **geometry)
    drr = Image(drr.pixels, drr.spacing_mm, drr.beam_axis_px, replace(drr.info, extra={"planned_jaws_mm": planned}))
    reference_portal = render_drr(water_box, energy="mv", field_mm=jaws, **geometry)
    frame = render_drr(water_box, energy="mv", field_mm=(jaws[0] + 2.0, jaws[1] + 2.0, jaws[2] - 1.0, jaws[3] - 1.0),
                       couch_shift_mm=(3.0, 0.0, 0.0), **geometry)
    by_jaws = field_placement(drr, frame)
    by_reference = field_placement(reference_portal, frame)
    assert by_jaws["planned_source"] == "reference jaws"
    assert by_reference["planned_source"] == "reference field"
    for report in (by_jaws, by_reference):
        # jaws moved +2 in x (IEC X) and -1 in IEC Y, i.e. +1 in image y (rows run away from the gantry)
        assert report["centre_shift_mm"] == pytest.approx([2.0, 1.0], abs=0.15)
    # the patient moved 3 mm laterally (image +x at gantry 0), the field 2 mm: 1 mm relative to the field
    result = portalign.register(drr, frame)
    report = field_placement(drr, frame, result=result)
    assert result.dx_mm == pytest.approx(3.0, abs=0.3)
    assert report["anatomy_relative_to_field_mm"][0] == pytest.approx(1.0, abs=0.3)


def test_errors_name_the_problem():
    no_field = Image.from_array(np.random.default_rng(0).random((64, 64)) + 1.0, pixel_spacing_mm=1.0)
    reference = field_image(PLANNED, planned=PLANNED)
    with pytest.raises(PortalImageError, match="no radiation field edge found"):
        field_placement(reference, no_field)
    too_big = field_image((-30.0, 200.0, -25.0, 25.0))
    with pytest.raises(PortalImageError, match="reaches the image border"):
        field_placement(reference, too_big)
    drr = Image.from_array(np.random.default_rng(1).random((64, 64)), pixel_spacing_mm=1.0, kind="drr")
    with pytest.raises(PortalImageError, match="no planned field: .* the reference is a DRR"):
        field_placement(drr, field_image(PLANNED))
    assert field_placement(drr, reference)["planned_source"] == "frame jaws"
    with pytest.raises(PortalImageError, match="no planned jaw positions"):
        field_placement(field_image(PLANNED), field_image(PLANNED), planned="jaws")
    with pytest.raises(PortalignError, match="planned must be one of"):
        field_placement(reference, reference, planned="mlc")


def test_cli_fieldcheck(tmp_path, capsys):
    paths = []
    for name, edges in (("ref", PLANNED), ("frame", (-29.0, 31.0, -25.0, 25.0))):
        image = field_image(edges, noise=0.0)
        ds = make_rt_image(image.pixels, spacing=0.75, position="centre")
        paths.append(str(write_rt_image(ds, tmp_path / f"{name}.dcm")))
    # the subcommand's own parser (engine/cli.py wires it as "portalign fieldcheck")
    parser = argparse.ArgumentParser(prog="portalign fieldcheck")
    fieldcheck.add_arguments(parser)
    assert fieldcheck.run(parser.parse_args([*paths, "--planned", "reference", "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["centre_shift_mm"] == pytest.approx([1.0, 0.0], abs=0.1)
    assert "centre_shift_mm" in report["axes"]["image"] and "edge_errors_mm" in report["axes"]["collimator"]
    assert all(key in report for keys in (report["axes"]["image"], report["axes"]["collimator"]) for key in keys)
    assert fieldcheck.run(parser.parse_args(paths)) == 0
    out = capsys.readouterr().out
    assert re.search(r"field centre shift \(image axes\): x \+(0\.9[5-9]|1\.0[0-5]) mm", out), out
    assert "edge errors (collimator axes): x1 " in out
    assert fieldcheck.run(parser.parse_args([*paths, "--planned", "jaws"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no planned jaw positions" in err


@pytest.mark.real_data
def test_winston_lutz_field_stays_while_the_bb_moves():
    if not WL.is_dir():
        pytest.skip(f"real data not found at {WL}")
    reference = read_rt_image(WL / "cardinal" / "wl-3-30-18_card-002.dcm")  # gantry 0
    frame = read_rt_image(WL / "lat3mm" / "3mm_lat-002.dcm")  # after a 3 mm lateral couch move
    result = portalign.register(reference, frame)
    assert result.ok and result.dx_mm == pytest.approx(3.0, abs=0.35)

    report = field_placement(reference, frame, result=result, planned="reference")
    assert np.hypot(*report["centre_shift_mm"]) < 0.35
    assert max(abs(e) for e in report["edge_errors_mm"].values()) < 0.5
    assert report["anatomy_relative_to_field_mm"][0] == pytest.approx(result.dx_mm, abs=0.35)

    # The header's jaws are 30 x 30 mm but the delivered aperture is about 20 x 20 mm (an MLC or cone the RT
    # Image does not record): auto compares with the reference's field and says why.
    auto = field_placement(reference, frame)
    assert auto["planned_source"] == "reference field"
    assert auto["aperture"] == "the reference image's radiation field"
    assert "do not define the delivered field" in auto["aperture_note"] and "MLC or cone" in auto["aperture_note"]
    assert auto["within_tolerance"] and max(abs(e) for e in auto["edge_errors_mm"].values()) < 0.5
    # against the jaws, as asked: the size error shows it, the field centre is still on the planned centre
    by_jaws = field_placement(reference, frame, planned="jaws")
    assert by_jaws["planned_source"] == "reference jaws" and by_jaws["aperture_note"] is None
    assert not by_jaws["within_tolerance"]
    assert by_jaws["size_errors_mm"]["x"] == pytest.approx(-10.0, abs=1.0)
    assert by_jaws["size_errors_mm"]["y"] == pytest.approx(-10.0, abs=1.0)
    assert np.hypot(*by_jaws["centre_shift_mm"]) < 0.5


@pytest.mark.real_data
def test_cli_winston_lutz_exit_status(capsys):
    """0 within tolerance (the reference's field, with the note printed), 3 outside it (against the jaws)."""
    if not WL.is_dir():
        pytest.skip(f"real data not found at {WL}")
    paths = [str(WL / "cardinal" / "wl-3-30-18_card-002.dcm"), str(WL / "lat3mm" / "3mm_lat-002.dcm")]
    parser = argparse.ArgumentParser(prog="portalign fieldcheck")
    fieldcheck.add_arguments(parser)
    assert fieldcheck.run(parser.parse_args(paths)) == 0
    out = capsys.readouterr().out
    assert "aperture compared: the reference image's radiation field" in out and "MLC or cone" in out
    assert fieldcheck.run(parser.parse_args([*paths, "--planned", "jaws"])) == fieldcheck.EXIT_OUT_OF_TOLERANCE == 3
    assert "OUTSIDE tolerance" in capsys.readouterr().out
    assert fieldcheck.run(parser.parse_args([*paths, "--planned", "jaws", "--json"])) == 3
    assert json.loads(capsys.readouterr().out)["within_tolerance"] is False
    assert "exit status: 0 every edge within tolerance; 3 an edge outside tolerance" in parser.format_help()


@pytest.mark.real_data
def test_fieldcheck_says_when_the_two_images_are_of_different_beams(capsys):
    """Gantry 180 against 90: compared all the same (the aperture is the beam's), with a note naming both angles."""
    if not WL.is_dir():
        pytest.skip(f"real data not found at {WL}")
    reference = read_rt_image(WL / "cardinal" / "wl-3-30-18_card-000.dcm")  # gantry 180
    frame = read_rt_image(WL / "lat3mm" / "3mm_lat-001.dcm")  # gantry 90
    report = field_placement(reference, frame)
    assert report["view_note"].startswith("the two images were taken along different beams (gantry angle 180 deg in "
                                          "the reference (wl-3-30-18_card-000.dcm) but 90 deg in the frame")
    assert report["within_tolerance"]  # one aperture: its edges agree
    same = field_placement(read_rt_image(WL / "cardinal" / "wl-3-30-18_card-002.dcm"),
                           read_rt_image(WL / "lat3mm" / "3mm_lat-002.dcm"))
    assert same["view_note"] is None
    parser = argparse.ArgumentParser(prog="portalign fieldcheck")
    fieldcheck.add_arguments(parser)
    assert fieldcheck.run(parser.parse_args([str(WL / "cardinal" / "wl-3-30-18_card-000.dcm"),
                                             str(WL / "lat3mm" / "3mm_lat-001.dcm")])) == 0
    assert "note: the two images were taken along different beams (gantry angle 180 deg" in capsys.readouterr().out


def test_a_plan_from_a_reference_at_another_collimator_angle_is_refused_unless_allowed(capsys):
    """A new user's trial: a collimator-0 reference against a collimator-90 frame was within tolerance, its edges named
    along the reference's axes (the frame's x1 its Y jaw). Refused, naming both angles and the flag; allowed, compared
    with the note; a frame compared with its own header's jaws is not affected."""
    edges = (-40.0, 30.0, -25.0, 35.0)  # a rectangle: turned by 90 deg its jaws trade places
    reference = field_image(edges, collimator_deg=0.0, shape=(300, 300), seed=1)
    frame = field_image(edges, collimator_deg=90.0, shape=(300, 300), seed=2)
    with pytest.raises(PortalImageError, match=r"^the frame is at collimator angle 90 deg, but the reference, which the "
                                               r"plan is taken from, at 0 deg \(tolerance 3 deg\).*"
                                               r"pass --allow-view-mismatch"):
        field_placement(reference, frame)
    allowed = field_placement(reference, frame, allow_view_mismatch=True)
    assert allowed["view_note"].startswith("the two images were taken along different beams (collimator angle 0 deg")
    # within the tolerance (3 deg, the registration's): compared as one beam
    near = field_image(edges, collimator_deg=2.0, shape=(300, 300), seed=2)
    assert field_placement(reference, near)["within_tolerance"]


def _mlc(open_pairs, *, x1=-12.0, x2=8.0, pairs=40, width=5.0, kind="MLCX"):
    """An MLC of ``pairs`` leaves ``width`` mm wide centred on 0: pairs in ``open_pairs`` open from x1 to x2."""
    bank_a = [x1 if i in open_pairs else 0.0 for i in range(pairs)]
    bank_b = [x2 if i in open_pairs else 0.0 for i in range(pairs)]
    edges = [(-pairs / 2 + i) * width for i in range(pairs + 1)]
    return [{"type": kind, "number_of_pairs": pairs, "leaf_positions_mm": bank_a + bank_b,
             "leaf_boundaries_mm": edges, "source_to_device_mm": None}]


def test_mlc_aperture_inside_the_jaws_is_compared():
    """Jaws 60 x 50 mm, MLCX open from x -12 to +8 over IEC y -10..+15 (pairs 18-22): image y -15..+10."""
    mlc = _mlc(range(18, 23))
    reference = replace(field_image(PLANNED), info=replace(field_image(PLANNED).info, extra={
        "planned_jaws_mm": dict(zip(("x1", "x2", "y1", "y2"), PLANNED, strict=True)), "planned_mlc": mlc}))
    frame = field_image((-12.0, 8.0, -15.0, 10.0), seed=3)
    plan = planned_field(reference, frame)
    assert plan.source == "reference MLC"
    assert (plan.x1, plan.x2, plan.y1, plan.y2) == pytest.approx((-12.0, 8.0, -15.0, 10.0))
    report = field_placement(reference, frame)
    assert report["aperture"].startswith("planned MLC aperture") and report["aperture_note"] is None
    assert report["within_tolerance"] and report["max_edge_error_mm"] < 0.5
    # the jaws alone would put every edge far off
    assert not field_placement(reference, frame, planned="jaws")["within_tolerance"]


def test_mlc_leaves_beyond_the_jaws_are_clipped_and_closed_pairs_ignored():
    mlc = _mlc(range(0, 40), x1=-80.0, x2=80.0)  # every pair open past the jaws
    image = replace(field_image(PLANNED), info=replace(field_image(PLANNED).info, extra={
        "planned_jaws_mm": dict(zip(("x1", "x2", "y1", "y2"), PLANNED, strict=True)), "planned_mlc": mlc}))
    plan = planned_field(image)
    assert (plan.x1, plan.x2, plan.y1, plan.y2) == pytest.approx(PLANNED)
    closed = _mlc(())
    image = replace(image, info=replace(image.info, extra={**image.info.extra, "planned_mlc": closed}))
    assert planned_field(image).source == "reference jaws"


def test_field_inside_the_jaws_with_a_drr_reference_is_an_error():
    drr = Image.from_array(np.random.default_rng(0).normal(size=(240, 260)) + 10, pixel_spacing_mm=SPACING,
                           kind="drr", name="drr.dcm",
                           extra={"planned_jaws_mm": dict(zip(("x1", "x2", "y1", "y2"), PLANNED, strict=True))})
    frame = field_image((-20.0, 20.0, -15.0, 15.0))
    frame = replace(frame, info=replace(frame.info, source="frame.dcm"))
    # the field described is the frame's: its file is named first (it was the DRR's), the DRR as the reference
    with pytest.raises(PortalImageError, match=r"^frame\.dcm: the header's jaws .* do not define the delivered field.*"
                                               r"the reference \(drr\.dcm\) is a DRR.*--planned reference.*--planned jaws"):
        field_placement(drr, frame)


def _cone_frame(tmp_path, diameter_mm: float, opening_mm, centre_mm=(0.0, 0.0), jaws=(-15.0, 15.0, -15.0, 15.0)):
    """An RT Image of a round (cone) field of ``diameter_mm`` inside +-15 mm jaws; the header's cone opening."""
    rows, cols = 200, 200
    y, x = np.indices((rows, cols), dtype=np.float64)
    x = (x - (cols - 1) / 2.0) * SPACING - centre_mm[0]
    y = (y - (rows - 1) / 2.0) * SPACING - centre_mm[1]
    radius = np.hypot(x, y)
    pixels = 50.0 + 1000.0 * 0.5 * (1 + erf((diameter_mm / 2 - radius) / 1.2))
    exposure = _jaw_exposure(jaws)
    applicator = Dataset()
    applicator.ApplicatorID = f"SRS cone {opening_mm:g} mm"
    applicator.ApplicatorType = "STEREOTACTIC"
    geometry = Dataset()
    geometry.ApplicatorApertureShape = "SYM_CIRCULAR"
    geometry.ApplicatorOpening = opening_mm
    applicator.ApplicatorGeometrySequence = [geometry]
    exposure.ApplicatorSequence = [applicator]
    ds = make_rt_image(pixels, spacing=0.75, position="centre", ExposureSequence=[exposure])
    return read_rt_image(write_rt_image(ds, tmp_path / f"cone_{diameter_mm:g}_{opening_mm:g}.dcm"))


def test_an_srs_cone_is_compared_with_its_recorded_opening(tmp_path):
    # a 20 mm cone inside +-15 mm jaws: the cone, not the jaws, is the planned aperture
    frame = _cone_frame(tmp_path, 20.0, 20.0)
    assert frame.info.extra["planned_applicator"]["shape"] == "SYM_CIRCULAR"
    report = field_placement(frame, frame)
    assert report["planned_source"].startswith("reference cone")
    assert max(abs(e) for e in report["edge_errors_mm"].values()) < 0.3
    assert report["within_tolerance"] is True
    # the wrong cone (the header says 30 mm, 20 mm was delivered): every edge 5 mm in, outside tolerance
    wrong = _cone_frame(tmp_path, 20.0, 30.0)
    report = field_placement(wrong, wrong)
    assert report["edge_errors_mm"] == pytest.approx({"x1": 5.0, "x2": -5.0, "y1": 5.0, "y2": -5.0}, abs=0.3)
    assert report["within_tolerance"] is False
    # a cone delivered off the beam axis: the centre shift is measured
    moved = _cone_frame(tmp_path, 20.0, 20.0, centre_mm=(1.5, -1.0))
    assert field_placement(moved, moved)["centre_shift_mm"] == pytest.approx([1.5, -1.0], abs=0.15)


def test_an_unusable_applicator_opening_is_named(tmp_path):
    with pytest.raises(GeometryError, match=r"ApplicatorOpening \(300A,0433\)"):
        _cone_frame(tmp_path, 20.0, -4.0)


@pytest.mark.real_data
def test_an_inverted_image_without_its_field_says_try_invert(capsys):
    """pylinac's aS500 images are stored with the field dark: the error said only "no radiation field edge found"."""
    folder = REAL / "pylinac" / "wl_demo_as500"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    from portalign.cli import main

    status = main(["fieldcheck", str(folder / "gantry0.dcm"), str(folder / "gantry90.dcm")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "no radiation field edge found" in err and "the image looks inverted" in err and "try --invert" in err
    status = main(["fieldcheck", str(folder / "gantry0.dcm"), str(folder / "gantry90.dcm"), "--invert"])
    assert status in (0, 3), capsys.readouterr().err  # measured: within tolerance or outside it, not refused


def test_cli_json_error_is_json(tmp_path, capsys):
    """A new user's trial: `fieldcheck --json` on unusable input printed nothing on stdout (exit 2)."""
    from portalign.cli import main

    bad = tmp_path / "not_dicom.dcm"
    bad.write_text("not a DICOM file")
    assert main(["fieldcheck", str(bad), str(bad), "--json"]) == 2
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert payload["ok"] is False and payload["error"] != "" and "not_dicom.dcm" in payload["detail"]
    assert err.strip() == f"portalign fieldcheck: error: {payload['detail']}"
