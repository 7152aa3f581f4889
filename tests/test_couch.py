"""Couch correction from several views: projection maths, simulated setups, real Winston-Lutz shifts, CLI."""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import portalign
import pytest
from dicom_factory import make_rt_image, write_rt_image
from portalign import Image, RegistrationResult
from portalign.cli import main
from portalign.couch import (
    PATIENT_DIRECTIONS,
    CouchShift,
    View,
    _text_report,
    image_axes,
    patient_matrix,
    projection_matrix,
    register_views,
    solve_couch_shift,
)
from portalign.ct import CTVolume, read_ct_series
from portalign.dicom import read_rt_image
from portalign.errors import GeometryError
from portalign.simulate import render_drr
from portalign.tolerance import ToleranceError, load_tolerance, parse_tolerance, tolerance_from_flags
from scipy import ndimage

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
THORAX = REAL / "itkelastix" / "thorax_ct_phase00"
WL = REAL / "pylinac" / "wl_shift_truebeam"

# Small detector: 128 x 128 pixels of 3 mm at SID 1500 = 2 mm at the isocentre.
GEOMETRY = {"detector_shape": (128, 128), "detector_spacing_mm": 3.0, "sad_mm": 1000.0, "sid_mm": 1500.0}


def views_for(shift, gantries, *, rotations=None, **extra):
    """Views whose 2-D results are the exact projections of a 3-D shift."""
    shift = np.asarray(shift, dtype=float)
    out = []
    for i, g in enumerate(gantries):
        dx, dy = projection_matrix(g, **extra) @ shift
        theta = 0.0 if rotations is None else rotations[i]
        out.append(View(gantry_deg=g, dx_mm=float(dx), dy_mm=float(dy), rotation_deg=theta, label=f"G{g}",
                        couch_deg=extra.get("couch_deg", 0.0), image_rotation_deg=extra.get("image_rotation_deg", 0.0)))
    return out


# ---------------------------------------------------------------------------
# projection maths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gantry", "expected"),
    [
        # simulate.py's table for HFS: image +x is patient left / posterior / right / anterior at 0 / 90 / 180 / 270
        # (= IEC +X / -Z / -X / +Z in couch axes), image +y is inferior (-Y) at every angle.
        (0.0, [[1, 0, 0], [0, -1, 0]]),
        (90.0, [[0, 0, -1], [0, -1, 0]]),
        (180.0, [[-1, 0, 0], [0, -1, 0]]),
        (270.0, [[0, 0, 1], [0, -1, 0]]),
        (45.0, [[math.sqrt(0.5), 0, -math.sqrt(0.5)], [0, -1, 0]]),
    ],
)
def test_projection_matrix_at_cardinal_angles(gantry, expected):
    np.testing.assert_allclose(projection_matrix(gantry), expected, atol=1e-12)


def test_image_axes_are_right_handed_with_the_beam_towards_the_isocentre():
    for gantry, couch, phi in [(0, 0, 0), (37, 0, 0), (90, 20, 0), (200, -15, 7)]:
        ex, ey, b = image_axes(gantry, couch_deg=couch, image_rotation_deg=phi)
        np.testing.assert_allclose(np.cross(ex, ey), b, atol=1e-12)
        np.testing.assert_allclose([ex @ ex, ey @ ey, ex @ ey], [1, 1, 0], atol=1e-12)
    # gantry 0: the source is above the couch, so the beam points down (-Z)
    np.testing.assert_allclose(image_axes(0)[2], [0, 0, -1], atol=1e-12)
    # gantry 90: the source is on the +X side, so the beam points towards -X
    np.testing.assert_allclose(image_axes(90)[2], [-1, 0, 0], atol=1e-12)


def test_couch_angle_and_receptor_angle_turn_the_projection():
    # Couch turned 90 deg (right-handed about Z): the couch's lateral axis points along fixed +Y (towards the
    # gantry), which is image -y at gantry 0; the couch's longitudinal axis points along fixed -X (image -x).
    np.testing.assert_allclose(projection_matrix(0, couch_deg=90), [[0, -1, 0], [-1, 0, 0]], atol=1e-12)
    # Receptor turned 90 deg counter-clockwise seen from the source: its x axis is gantry +Y.
    np.testing.assert_allclose(projection_matrix(0, image_rotation_deg=90), [[0, 1, 0], [1, 0, 0]], atol=1e-12)


def test_patient_matrix_names_the_directions():
    # HFS: IEC +X = patient left (+L), +Y = superior (+S), +Z = anterior (-P)
    d = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(patient_matrix("HFS").T @ d, [1.0, -3.0, 2.0])
    np.testing.assert_allclose(patient_matrix("ffs").T @ d, [-1.0, -3.0, -2.0])
    for position, m in [(p, patient_matrix(p)) for p in ("HFS", "FFS", "HFP", "FFP")]:
        np.testing.assert_allclose(m @ m.T, np.eye(3))
        assert round(np.linalg.det(m)) == 1, position
    with pytest.raises(GeometryError, match="'HFDL' is not supported"):
        patient_matrix("HFDL")


# ---------------------------------------------------------------------------
# solving
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gantries", "condition"),
    [
        ((0, 90), math.sqrt(2)),
        ((0, 45), None),
        ((90, 0, 270, 180), math.sqrt(2)),
        ((30, 300), math.sqrt(2)),
        ((10, 170), None),
    ],
)
def test_exact_projections_give_the_shift_back(gantries, condition):
    shift = np.array([2.5, -1.25, 4.0])
    couch = solve_couch_shift(views_for(shift, gantries), patient_position="HFS")
    unknown = solve_couch_shift(views_for(shift, gantries))
    assert unknown.as_dict()["patient_position"] is None and couch.as_dict()["patient_position"] == "HFS"
    np.testing.assert_allclose(couch.displacement_mm, shift, atol=1e-9)
    assert couch.couch_correction == pytest.approx({"lateral": -2.5, "longitudinal": 1.25, "vertical": -4.0})
    assert couch.ok and couch.reason == ""
    assert max(v["residual_mm"] for v in couch.views) < 1e-9
    if condition is not None:
        assert couch.condition == pytest.approx(condition)
    assert couch.patient_directions == PATIENT_DIRECTIONS["HFS"]
    np.testing.assert_allclose(couch.patient_displacement_lps_mm, [2.5, -4.0, -1.25], atol=1e-9)


def test_couch_angle_views_are_combined_in_couch_axes():
    shift = np.array([-1.0, 3.0, 2.0])
    views = views_for(shift, (0,), couch_deg=0) + views_for(shift, (90,), couch_deg=0) + \
        views_for(shift, (90,), couch_deg=90)
    couch = solve_couch_shift(views)
    np.testing.assert_allclose(couch.displacement_mm, shift, atol=1e-9)


@pytest.mark.parametrize("gantries", [(0, 180), (90, 270), (0, 5), (0, 0)])
def test_parallel_views_are_rejected(gantries):
    with pytest.raises(GeometryError, match=r"parallel or nearly so .* add a view"):
        solve_couch_shift(views_for([1, 2, 3], gantries))


def test_one_view_is_not_enough():
    with pytest.raises(GeometryError, match="at least two views"):
        solve_couch_shift(views_for([1, 2, 3], (0,)))


def test_views_that_disagree_are_reported():
    views = views_for([1.0, 2.0, 3.0], (0, 90))
    # the longitudinal shift is seen by both views (dy = -lng); make them disagree by 3 mm
    views[1] = View(gantry_deg=90, dx_mm=views[1].dx_mm, dy_mm=views[1].dy_mm + 3.0, label="G90")
    couch = solve_couch_shift(views, max_residual_mm=1.0)
    assert not couch.ok
    # two views: neither is named as the one that is off (a trial: the sound view was blamed beside the wrong one)
    assert couch.reason == ("the two views (gantry 0 and 90) disagree by 3.00 mm where both see the patient (each "
                            "1.50 mm from the 3-D solution, more than 1 mm): one of them is off, and two views cannot "
                            "say which (a third view can)")
    assert [v["residual_mm"] for v in couch.views] == pytest.approx([1.5, 1.5])
    assert couch.longitudinal_mm == pytest.approx(2.0 - 1.5)
    # three views: each view over the limit is named by its own residual (where the least squares puts it)
    views = views_for([1.0, 2.0, 3.0], (0, 90, 45))
    views[1] = View(gantry_deg=90, dx_mm=views[1].dx_mm + 4.0, dy_mm=views[1].dy_mm, label="G90")
    couch = solve_couch_shift(views, max_residual_mm=1.0)
    assert not couch.ok and "disagrees with the others by" in couch.reason and "two views" not in couch.reason


def test_a_view_that_is_not_ok_makes_the_result_not_ok():
    views = views_for([1.0, 2.0, 3.0], (0, 90))
    views[0] = View(gantry_deg=0, dx_mm=views[0].dx_mm, dy_mm=views[0].dy_mm, ok=False, reason="ambiguous",
                    label="G0")
    couch = solve_couch_shift(views)
    assert not couch.ok
    assert couch.reason == "G0 (gantry 0): ambiguous"


def test_rotations_from_the_in_plane_rotations():
    pitch, yaw = 1.5, -2.0
    # first order: theta(view) = beam . w; at 0/90 that is -yaw and -pitch
    couch = solve_couch_shift(views_for([0, 0, 0], (0, 90), rotations=[-yaw, -pitch]))
    assert couch.rotation_deg["pitch"] == pytest.approx(pitch)
    assert couch.rotation_deg["yaw"] == pytest.approx(yaw)
    assert couch.rotation_deg["roll"] is None
    assert couch.rotation_correction_deg == {"pitch": pytest.approx(-pitch), "roll": None, "yaw": pytest.approx(-yaw)}
    assert any("roll" in w and "not observable" in w for w in couch.warnings)

    # a third view with the couch turned 90 deg looks along the couch's longitudinal axis: roll is observable
    w = np.array([0.7, -1.1, 0.4])
    views = []
    for gantry, couch_deg in [(0, 0), (90, 0), (90, 90)]:
        beam = image_axes(gantry, couch_deg=couch_deg)[2]
        views.append(View(gantry_deg=gantry, couch_deg=couch_deg, dx_mm=0.0, dy_mm=0.0, rotation_deg=float(beam @ w)))
    estimate = solve_couch_shift(views).rotation_deg
    assert [estimate["pitch"], estimate["roll"], estimate["yaw"]] == pytest.approx(w.tolist())


def test_the_rotations_uncertainties_are_the_views_propagated():
    """pitch, roll and yaw carry the views' in-plane standard uncertainties through the same least squares: the
    spread of the estimates over views drawn with those uncertainties (Monte Carlo, numpy's own draws) matches."""
    w = np.array([0.7, -1.1, 0.4])
    layout = [(0, 0, 0.2), (90, 0, 0.4), (90, 90, 0.3), (45, 0, 0.5)]  # gantry, couch, uncertainty (deg)
    beams = np.array([image_axes(g, couch_deg=c)[2] for g, c, _ in layout])
    sigma = np.array([u for *_, u in layout])

    def solved(noise):
        return solve_couch_shift([View(gantry_deg=g, couch_deg=c, dx_mm=0.0, dy_mm=0.0, label=f"G{g}C{c}",
                                       rotation_deg=float(b @ w + e), rotation_uncertainty_deg=u)
                                  for (g, c, u), b, e in zip(layout, beams, noise, strict=True)])

    stated = solved(np.zeros(len(layout))).rotation_uncertainty_deg
    draws = np.random.default_rng(7).standard_normal((1000, len(layout))) * sigma
    estimates = np.array([[solved(e).rotation_deg[k] for k in ("pitch", "roll", "yaw")] for e in draws])
    assert estimates.mean(axis=0) == pytest.approx(w, abs=0.05)
    assert [stated["pitch"], stated["roll"], stated["yaw"]] == pytest.approx(estimates.std(axis=0), rel=0.1)
    # a view without an uncertainty: none is claimed; a rotation not estimated has none either
    views = views_for([1.0, -2.5, 0.5], (0, 90), rotations=[0.4, -1.2])
    assert solve_couch_shift(views).rotation_uncertainty_deg == {"pitch": None, "roll": None, "yaw": None}
    views = [replace(v, rotation_uncertainty_deg=0.3) for v in views]
    couch = solve_couch_shift(views)
    assert couch.rotation_uncertainty_deg["roll"] is None  # not observable from two coplanar views
    assert couch.rotation_uncertainty_deg["pitch"] == pytest.approx(0.3) == couch.rotation_uncertainty_deg["yaw"]
    text = _text_report(couch).splitlines()
    assert any(re.fullmatch(r" +yaw: +[-+]0\.40 ± 0\.30 deg", line) for line in text), text
    assert any(re.fullmatch(r" +roll: not estimated", line) for line in text), text


def test_the_displacement_s_uncertainties_are_the_views_propagated():
    """Each axis of the 3-D displacement carries the views' 2-D standard uncertainties through the least squares: the
    spread of the solutions over views drawn with them (Monte Carlo) matches what is stated."""
    shift = np.array([1.0, -2.5, 0.5])
    layout = [(0, 0.1), (90, 0.2), (45, 0.3)]  # gantry, uncertainty of each of dx and dy (mm)
    exact = views_for(shift, [g for g, _ in layout])

    def solved(noise):
        return solve_couch_shift([replace(v, dx_mm=v.dx_mm + e[0], dy_mm=v.dy_mm + e[1], shift_uncertainty_mm=u)
                                  for v, (_, u), e in zip(exact, layout, noise, strict=True)], max_residual_mm=10.0)

    stated = solved(np.zeros((3, 2))).uncertainty_mm
    sigma = np.array([u for _, u in layout])[:, None]
    draws = np.random.default_rng(11).standard_normal((1000, 3, 2)) * sigma
    solutions = np.array([solved(e).displacement_mm for e in draws])
    assert solutions.mean(axis=0) == pytest.approx(shift, abs=0.02)
    assert [stated[axis] for axis in ("lateral", "longitudinal", "vertical")] == pytest.approx(
        solutions.std(axis=0), rel=0.1)
    # a view without one: no uncertainty is claimed; the text shows it where known
    assert solve_couch_shift(exact).uncertainty_mm == dict.fromkeys(("lateral", "longitudinal", "vertical"))
    text = _text_report(solved(np.zeros((3, 2))))
    assert re.search(rf"longitudinal: +-2\.50 ± {stated['longitudinal']:.2f} mm   correction +\+2\.50 mm", text), text
    assert re.search(r"gantry +0\.0: dx +[-+]\d\.\d\d ± 0\.10 dy +[-+]\d\.\d\d ± 0\.10 rot", text), text  # each view's


def test_tolerance_table_per_axis():
    tolerance = parse_tolerance("lat=2,lng=2,vrt=2,rot=1,roll=1")
    couch = solve_couch_shift(views_for([1.0, -2.5, 0.5], (0, 90), rotations=[0.4, -1.2]), tolerance=tolerance)
    assert couch.within_tolerance == {"lat": True, "lng": False, "vrt": True, "rot": False, "roll": None}
    assert couch.all_within_tolerance is False
    assert couch.tolerance["limits"]["lat"] == 2.0
    relaxed = solve_couch_shift(views_for([1.0, -1.5, 0.5], (0, 90)), tolerance=parse_tolerance("lat=2,lng=2"))
    assert relaxed.all_within_tolerance is True
    assert solve_couch_shift(views_for([1, 1, 1], (0, 90))).all_within_tolerance is None


def test_result_is_json_ready():
    couch = solve_couch_shift(views_for([1, 2, 3], (0, 90)), patient_position="FFP")
    data = json.loads(couch.as_json())
    for key in ("lateral_mm", "longitudinal_mm", "vertical_mm", "couch_correction", "views", "ok", "condition"):
        assert key in data
    assert data["patient_directions"]["lateral"] == "patient left"
    assert isinstance(couch, CouchShift)
    # the one value whose key names no unit says it in "units"; the correction undoes the displacement, in mm
    assert data["units"] == {"couch_correction": "mm"}
    assert [data["couch_correction"][axis] for axis in ("lateral", "longitudinal", "vertical")] == pytest.approx(
        [-data["lateral_mm"], -data["longitudinal_mm"], -data["vertical_mm"]])


# ---------------------------------------------------------------------------
# simulated setups: render, register with portalign, combine
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct() -> CTVolume:
    if THORAX.is_dir():
        return read_ct_series(THORAX).downsampled(4)
    # Without the real CT: a water box with bone beads (asymmetric, so every view has structure).
    rng = np.random.default_rng(7)
    hu = np.full((50, 40, 50), -1000.0, dtype=np.float32)  # z, y, x at 4 mm
    hu[5:45, 5:35, 5:45] = 0.0
    zz, yy, xx = np.indices(hu.shape)
    for _ in range(40):
        cz, cy, cx = rng.uniform(8, 42), rng.uniform(8, 32), rng.uniform(8, 42)
        hu[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(1.0, 4.0)] = 1500.0
    return CTVolume(hu, (4.0, 4.0, 4.0), (-98.0, -78.0, -98.0), "HFS", "bead phantom")


def _simulated_views(ct, shift, gantries, position, rotation=(0.0, 0.0, 0.0)):
    views = []
    for gantry in gantries:
        reference = render_drr(ct, gantry_deg=gantry, patient_position=position, **GEOMETRY)
        frame = render_drr(ct, gantry_deg=gantry, patient_position=position, couch_shift_mm=shift,
                           patient_rotation_deg=rotation, **GEOMETRY)
        result = portalign.register(reference, frame)
        views.append(View.from_result(result, frame, reference=reference))
    return views


@pytest.mark.parametrize(
    ("position", "gantries", "shift"),
    [
        ("HFS", (0, 90), (3.0, -2.0, 4.0)),
        ("FFS", (0, 45), (-2.5, 1.5, 3.0)),
        ("HFP", (270, 0), (-1.5, -2.5, 2.0)),
        ("FFS", (315, 45, 180), (2.0, 3.0, -2.5)),
    ],
)
def test_simulated_setup_recovers_the_3d_shift(ct, position, gantries, shift):
    couch = solve_couch_shift(_simulated_views(ct, shift, gantries, position), patient_position=position)
    np.testing.assert_allclose(couch.displacement_mm, shift, atol=0.8)
    assert couch.couch_correction["vertical"] == pytest.approx(-shift[2], abs=0.8)
    assert max(v["residual_mm"] for v in couch.views) < 0.8


def test_simulated_rotations_give_pitch_and_yaw(ct):
    pitch, yaw = 1.0, 1.5  # right-handed about IEC X and Z, as render_drr takes them
    couch = solve_couch_shift(_simulated_views(ct, (1.0, 2.0, -1.5), (0, 90), "HFS", rotation=(pitch, 0.0, yaw)))
    assert couch.rotation_deg["pitch"] == pytest.approx(pitch, abs=0.3)
    assert couch.rotation_deg["yaw"] == pytest.approx(yaw, abs=0.3)
    assert couch.rotation_deg["roll"] is None
    # Pitch is out of plane at gantry 0: anatomy above and below the isocentre slides along Y by depth x angle,
    # which the 2-D match reads as a longitudinal shift; lateral and vertical are not affected to first order.
    assert couch.lateral_mm == pytest.approx(1.0, abs=0.8)
    assert couch.vertical_mm == pytest.approx(-1.5, abs=0.8)


# ---------------------------------------------------------------------------
# real data: Winston-Lutz BB moved by 3 mm couch shifts (TrueBeam, aS1200)
# ---------------------------------------------------------------------------


def _by_gantry(paths):
    images = {}
    for path in paths:
        image = read_rt_image(path)
        images[round(image.info.gantry_deg) % 360] = image
    return images


def bb_centroid_mm(image):
    """Centroid of the dark BB inside the bright field, mm at the isocentre plane (image frame)."""
    pixels = image.pixels.astype(np.float64)
    field = pixels > 0.5 * np.percentile(pixels, 99.9)
    labels, n = ndimage.label(field)
    field = labels == 1 + int(np.argmax(ndimage.sum_labels(field, labels, np.arange(1, n + 1))))
    rows, cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
    margin = int(round(3.0 / image.spacing_mm[0]))  # 3 mm inside the field edge
    r0, c0 = rows[0] + margin, cols[0] + margin
    inner = pixels[r0:rows[-1] - margin + 1, c0:cols[-1] - margin + 1]
    plateau = np.median(inner)
    dark = inner < 0.5 * (plateau + inner.min())
    labels, n = ndimage.label(dark)
    bb = labels == 1 + int(np.argmax(ndimage.sum_labels(dark, labels, np.arange(1, n + 1))))
    weight = np.where(bb, plateau - inner, 0.0)
    rr, cc = np.indices(inner.shape)
    row = (weight * rr).sum() / weight.sum() + r0
    col = (weight * cc).sum() / weight.sum() + c0
    return image.pixel_to_mm(col, row)


@pytest.fixture(scope="module")
def wl_sets(tmp_path_factory):
    if not WL.is_dir():
        pytest.skip(f"real data not found at {WL}")
    sets = {"cardinal": _by_gantry(sorted((WL / "cardinal").glob("*.dcm"))),
            "lat3mm": _by_gantry(sorted((WL / "lat3mm").glob("*.dcm")))}
    folder = tmp_path_factory.mktemp("wl")
    for name in ("lng3mm", "vrt3mm"):
        with zipfile.ZipFile(WL / f"{name}.zip") as archive:
            archive.extractall(folder / name)
        sets[name] = _by_gantry(sorted((folder / name).rglob("*.dcm")))
    return sets


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize(("name", "axis"), [("lat3mm", 0), ("lng3mm", 1), ("vrt3mm", 2)])
def test_winston_lutz_couch_shift_matches_the_bb(wl_sets, name, axis):
    cardinal, moved = wl_sets["cardinal"], wl_sets[name]
    assert sorted(cardinal) == sorted(moved) == [0, 90, 180, 270]
    # Expected: the BB centroid moves in each view, combined with the same projection model.
    bb_views = []
    for gantry in sorted(cardinal):
        before, after = bb_centroid_mm(cardinal[gantry]), bb_centroid_mm(moved[gantry])
        bb_views.append(View(gantry_deg=moved[gantry].info.gantry_deg, dx_mm=float(after[0] - before[0]),
                             dy_mm=float(after[1] - before[1])))
    expected = solve_couch_shift(bb_views)
    # the BB analysis itself: about 3 mm along the moved axis, the four views consistent
    assert 2.5 < abs(expected.displacement_mm[axis]) < 3.5
    assert max(v["residual_mm"] for v in expected.views) < 0.2

    couch, results = register_views([(cardinal[g], moved[g]) for g in sorted(cardinal)])
    assert all(r.ok for r in results), [r.reason for r in results]
    np.testing.assert_allclose(couch.displacement_mm, expected.displacement_mm, atol=0.35)
    assert couch.ok
    assert max(v["residual_mm"] for v in couch.views) < 0.35


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def _write_view(ct, folder, gantry, shift, position, sid=1500.0):
    paths = []
    for label, kwargs in (("ref", {}), ("frame", {"couch_shift_mm": shift})):
        image = render_drr(ct, gantry_deg=gantry, patient_position=position, **GEOMETRY, **kwargs)
        ds = make_rt_image(image.pixels, spacing=GEOMETRY["detector_spacing_mm"], sid=sid, sad=1000.0,
                           position="centre", gantry=gantry, PatientPosition=position)
        paths.append(str(write_rt_image(ds, folder / f"{label}_{gantry}.dcm")))
    return paths


def test_cli_couch_prints_the_correction(ct, tmp_path, capsys):
    shift = (2.0, -1.0, 3.0)
    pairs = [_write_view(ct, tmp_path, g, shift, "HFS") for g in (0, 90)]
    reg_path = tmp_path / "couch_reg.dcm"
    status = main(["couch", "--pair", *pairs[0], "--pair", *pairs[1], "--tolerance", "lat=1,lng=2,vrt=2,rot=1",
                   "--reg-out", str(reg_path), "--json"])
    assert status == 3  # measured, and outside an action level (as fieldcheck); the REG is written all the same
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert [data["lateral_mm"], data["longitudinal_mm"], data["vertical_mm"]] == pytest.approx(shift, abs=0.8)
    # a rotation the views did not estimate is not silently a 0 in the REG: it is said
    held = [axis for axis, value in data["rotation_deg"].items() if value is None]
    for axis in held:
        assert f"--reg-out {reg_path}:" in err and axis in err and "not estimated" in err
    assert data["couch_correction"]["lateral"] == pytest.approx(-data["lateral_mm"])
    # what became of --reg-out is in the object a script reads
    assert data["reg"] == str(reg_path) and data["reg_not_written"] is None and reg_path.is_file()
    assert all(any(axis in w for w in data["reg_warnings"]) for axis in held)
    assert data["within_tolerance"] == {"lat": False, "lng": True, "vrt": False, "rot": True}
    assert data["ok"] is True
    assert data["patient_position"] == "HFS"
    assert [v["gantry_deg"] for v in data["views"]] == [0.0, 90.0]
    assert all("residual_mm" in v for v in data["views"])
    assert reg_path.is_file()

    assert main(["couch", "--pair", *pairs[0], "--pair", *pairs[1]]) == 0
    text = capsys.readouterr().out
    assert "correction" in text and "vertical" in text and "(+ = anterior)" in text
    # out of tolerance: the verdict line says so, not a bare "ok" under "tolerance: lat OUTSIDE" (a new user's trial)
    assert main(["couch", "--pair", *pairs[0], "--pair", *pairs[1], "--tolerance", "lat=1,lng=2,vrt=2,rot=1"]) == 3
    lines = capsys.readouterr().out.splitlines()
    (verdict,) = [line for line in lines if line.startswith("ok")]
    assert verdict == "ok (measured); OUTSIDE tolerance on lat, vrt: apply the correction", lines


def test_cli_couch_takes_the_geometry_a_file_lacks(ct, tmp_path, capsys):
    # files without RTImageSID: the reader's error names --sid-mm, and couch accepts it
    pairs = [_write_view(ct, tmp_path, g, (1.0, 0.0, -1.0), "HFS", sid=None) for g in (0, 90)]
    assert main(["couch", "--pair", *pairs[0], "--pair", *pairs[1]]) == 2
    assert "--sid-mm" in capsys.readouterr().err
    assert main(["couch", "--pair", *pairs[0], "--pair", *pairs[1], "--sid-mm", "1500", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [data["lateral_mm"], data["vertical_mm"]] == pytest.approx([1.0, -1.0], abs=0.8)


def test_cli_couch_errors_are_one_line(ct, tmp_path, capsys):
    pair = _write_view(ct, tmp_path, 0, (1.0, 0.0, 0.0), "HFS")
    assert main(["couch", "--pair", *pair, "--pair", *pair]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "parallel" in err
    assert main(["couch", "--pair", *pair, "--pair", *pair, "--tolerance", "lat=2,height=3"]) == 2
    assert "unknown axis 'height'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# views from results, tolerance tables
# ---------------------------------------------------------------------------


def _image(**info):
    return Image.from_array(np.arange(256, dtype=float).reshape(16, 16), pixel_spacing_mm=1.0, name="frame.dcm",
                            **info)


def test_view_from_result_takes_the_geometry_of_the_images():
    result = RegistrationResult(dx_mm=1.0, dy_mm=-2.0, rotation_deg=0.5, ok=False, reason="low score")
    view = View.from_result(result, _image(gantry_deg=90.0, couch_deg=10.0, collimator_deg=30.0,
                                           extra={"receptor_angle_deg": 2.0}))
    assert (view.gantry_deg, view.couch_deg, view.image_rotation_deg) == (90.0, 10.0, 2.0)
    assert (view.dx_mm, view.dy_mm, view.rotation_deg, view.ok, view.reason) == (1.0, -2.0, 0.5, False, "low score")
    assert view.label == "frame.dcm"
    turned = View.from_result(result, _image(gantry_deg=90.0, collimator_deg=30.0), image_follows_collimator=True)
    assert turned.image_rotation_deg == 30.0
    # the reference supplies a missing angle; a disagreement is a warning
    assert View.from_result(result, _image(), reference=_image(gantry_deg=270.0)).gantry_deg == 270.0
    warned = View.from_result(result, _image(gantry_deg=0.0), reference=_image(gantry_deg=90.0))
    assert warned.gantry_deg == 0.0 and "gantry_deg of the frame (0) and of its reference (90) differ" in \
        warned.warnings[0]
    with pytest.raises(GeometryError, match="frame.dcm: no gantry angle"):
        View.from_result(result, _image(), reference=_image())


def test_parse_tolerance_accepts_units_and_aliases():
    table = parse_tolerance("lateral=2mm, lng=2.5 ,vrt = 3,rot=1deg,couch=0.5°")
    assert table.limits == {"lat": 2.0, "lng": 2.5, "vrt": 3.0, "rot": 1.0, "yaw": 0.5}
    assert table.check({"lat": -2.0, "lng": 2.6, "vrt": None, "rot": 0.2}) == {
        "lat": True, "lng": False, "vrt": None, "rot": True, "yaw": None}
    assert table.as_dict()["units"] == {"lat": "mm", "lng": "mm", "vrt": "mm", "rot": "deg", "yaw": "deg"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lat=2,height=3", "unknown axis 'height'; use lat, lng, vrt, vec, rot, pitch, roll, yaw"),
        ("lat=two", "lat must be a positive number of mm, got 'two'"),
        ("lat=-1", "lat must be a positive number of mm, got '-1'"),
        ("lat=0", "lat must be a positive number of mm"),
        ("rot=nan", "rot must be a positive number of deg"),
        ("rot=1mm", "rot is in deg, got the unit 'mm'"),
        ("lat=2,lateral=3", "axis 'lat' is given twice"),
        ("lat 2", "'lat 2' is not axis=limit"),
        ("  ", "empty"),
    ],
)
def test_parse_tolerance_errors_name_the_problem(text, message):
    with pytest.raises(ToleranceError, match=re.escape(message)):
        parse_tolerance(text)


def test_tolerance_files(tmp_path):
    table_file = tmp_path / "tol.toml"
    table_file.write_text("[tolerance]\nlat = 2.0\nlng = 2\nvrt = '3mm'\nrot = 1.0\n")
    assert load_tolerance(table_file).limits == {"lat": 2.0, "lng": 2.0, "vrt": 3.0, "rot": 1.0}
    flat = tmp_path / "flat.toml"
    flat.write_text("lat = 1.5\npitch = 2\n")
    loaded = load_tolerance(flat)
    assert loaded.limits == {"lat": 1.5, "pitch": 2.0} and loaded.source == "flat.toml"

    cases = {
        "bad.toml": ("lat = [1, 2", "bad.toml: not valid TOML"),
        "unknown.toml": ("[tolerance]\nlat = 1\nsag = 2\n", "unknown.toml: unknown axis 'sag'"),
        "bool.toml": ("lat = true\n", "lat must be a positive number of mm, got True"),
        "extra.toml": ("[tolerance]\nlat = 1\n[other]\nx = 1\n", "unexpected other next to [tolerance]"),
        "empty.toml": ("", "no limits"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ToleranceError, match=re.escape(message)):
            load_tolerance(tmp_path / name)
    with pytest.raises(ToleranceError, match=re.escape(f"{tmp_path / 'missing.toml'}: no such tolerance file; check")):
        load_tolerance(tmp_path / "missing.toml")
    # the command line names the flag and the path as given (a new user's trial saw only the file's name)
    with pytest.raises(ToleranceError, match=re.escape("--tolerance-file /nowhere/tol.toml: no such tolerance file")):
        tolerance_from_flags(None, "/nowhere/tol.toml")


def test_cli_reads_a_tolerance_file(ct, tmp_path, capsys):
    pairs = [_write_view(ct, tmp_path, g, (0.5, 0.5, 0.5), "FFS") for g in (0, 90)]
    tol = tmp_path / "tol.toml"
    tol.write_text("[tolerance]\nvec = 3\n")
    assert main(["couch", "--pair", *pairs[0], "--pair", *pairs[1], "--tolerance-file", str(tol), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["within_tolerance"] == {"vec": True} and data["all_within_tolerance"] is True
    assert data["patient_directions"]["lateral"] == "patient right"


def test_views_that_disagree_beyond_their_uncertainties_scale_them():
    """Out-of-plane rotations put a trial's longitudinal axis 2.5 stated uncertainties off: what the views do not share
    shows in their residuals, and the uncertainties are scaled by the Birge ratio sqrt(chi^2 / dof), never down."""
    shift = np.array([1.0, -2.5, 0.5])
    exact = [replace(v, shift_uncertainty_mm=0.1) for v in views_for(shift, (0, 90, 45))]
    agreeing = solve_couch_shift(exact)
    assert agreeing.uncertainty_scale == pytest.approx(1.0)  # no residual: not scaled down below the views'
    apart = list(exact)
    apart[2] = replace(apart[2], dx_mm=apart[2].dx_mm + 0.6)  # one view 0.6 mm off, six of its uncertainties
    couch = solve_couch_shift(apart)
    # chi^2 over 6 - 3 degrees of freedom, computed here from the fit's own residuals
    residuals = np.array([[v["dx_mm"] - v["predicted_dx_mm"], v["dy_mm"] - v["predicted_dy_mm"]] for v in couch.views])
    expected = math.sqrt((residuals ** 2).sum() / 0.1 ** 2 / 3)
    assert couch.uncertainty_scale == pytest.approx(expected) and expected > 2
    for axis in ("lateral", "longitudinal", "vertical"):
        assert couch.uncertainty_mm[axis] == pytest.approx(agreeing.uncertainty_mm[axis] * expected)
    assert any(w.startswith(f"the views disagree by {expected:.1f} times what their uncertainties allow") for w in
               couch.warnings)
    assert "uncertainty_scale" in couch.as_dict()
    # two views: four values, three unknowns: one degree of freedom, scaled too; none known: none claimed
    assert solve_couch_shift(exact[:2]).uncertainty_scale == pytest.approx(1.0)
    assert solve_couch_shift(views_for(shift, (0, 90))).uncertainty_scale is None


def test_cli_couch_json_errors_are_json_and_a_reg_without_patient_position_is_refused_first(ct, tmp_path, capsys,
                                                                                             monkeypatch):
    """A new user's trial: `couch --json` printed nothing on stdout for unusable input, and with --reg-out but no
    PatientPosition anywhere it printed "ok": true, exited 2 and said why on stderr only."""
    import portalign.couch

    pairs = [_write_view(ct, tmp_path, g, (1.0, 0.0, 0.0), "") for g in (0, 90)]

    def no_registration(*args, **kwargs):
        raise AssertionError("registered although the REG could not be written")

    monkeypatch.setattr(portalign.couch, "register_views", no_registration)
    reg_path = tmp_path / "couch_reg.dcm"
    status = main(["couch", "--pair", *pairs[0], "--pair", *pairs[1], "--reg-out", str(reg_path), "--json"])
    out, err = capsys.readouterr()
    assert status == 2 and not reg_path.exists()
    payload = json.loads(out)
    assert payload["ok"] is False and payload["error"] == "invalid_geometry"
    assert "no PatientPosition in the images; pass --patient-position" in payload["detail"]
    assert err.strip() == f"portalign couch: error: {payload['detail']}"
    status = main(["couch", "--pair", pairs[0][0], str(tmp_path / "missing.dcm"), "--json"])
    out, err = capsys.readouterr()
    assert status == 2 and json.loads(out)["ok"] is False and "missing.dcm" in json.loads(out)["detail"]
