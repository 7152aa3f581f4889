"""6-DOF 2D/3D registration: known rigid motions recovered from frames rendered from a CT.

The frames are simulated MV portal images (``energy="mv"``: transmitted
fraction, weak bone contrast, collimated by jaws, with quantum noise) while
the engine renders kV DRRs (line integrals, strong bone): the two attenuation
models differ, so a test cannot pass by comparing a model with itself.

Accuracy asserted (issue 12): translations within 0.5 mm and rotations within
0.3 deg for motions up to 8 mm / 3 deg. The real-CT tests use the thorax CT of
``../shared/data/real/itkelastix/thorax_ct_phase00`` at half its in-plane
resolution and 160x120 detectors, and skip when it is absent; the phantom
tests need nothing outside the repository.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from portalign.ct import CTVolume, read_ct_series
from portalign.errors import GeometryError, PortalImageError
from portalign.image import Image
from portalign.kernels import cpu
from portalign.kernels.reference import projection as ref_projection
from portalign.register3d import (
    PARAMETERS,
    Register3DOptions,
    euler_angles,
    prepare_ct,
    register_3d,
    rotation_matrix,
)
from portalign.simulate import render_drr

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
THORAX = REAL / "itkelastix" / "thorax_ct_phase00"

TRANSLATION_TOL_MM = 0.5
ROTATION_TOL_DEG = 0.3
DETECTOR = dict(detector_shape=(120, 160), detector_spacing_mm=0.392 * 1024 / 160)
FIELD = (-100.0, 100.0, -80.0, 80.0)
PHANTOM_FIELD = (-70.0, 70.0, -70.0, 70.0)


def _frames(ct, iso, gantries, translation, rotation, *, position=None, field=FIELD, seed=0, detector=None,
            couches=None):
    couches = couches or [0.0] * len(gantries)
    return [render_drr(ct, gantry_deg=g, couch_deg=c, isocentre_mm=tuple(iso), energy="mv",
                       couch_shift_mm=translation, patient_rotation_deg=rotation, field_mm=field, noise=0.01,
                       seed=seed + i, patient_position=position, **(detector or DETECTOR))
            for i, (g, c) in enumerate(zip(gantries, couches, strict=True))]


def _assert_recovered(result, translation, rotation, *, only=PARAMETERS):
    truth = dict(zip(PARAMETERS, [*translation, *rotation], strict=True))
    found = {"lateral": result.lateral_mm, "longitudinal": result.longitudinal_mm, "vertical": result.vertical_mm,
             "pitch": result.pitch_deg, "roll": result.roll_deg, "yaw": result.yaw_deg}
    errors = {k: found[k] - truth[k] for k in only}
    for k, err in errors.items():
        limit = TRANSLATION_TOL_MM if k in PARAMETERS[:3] else ROTATION_TOL_DEG
        assert abs(err) <= limit, f"{k}: found {found[k]:.3f}, truth {truth[k]:.3f} (errors {errors})"


# --------------------------------------------------------------------------------------------- kernels


POSE_CASES = [  # (source, origin, col step, row step) of tests/test_gpu.py, one pose each, plus a shifted copy
    ((3.0, -40.0, 4.0), (-2.0, 30.0, -3.0), (0.1, 0.05, 0.8), (0.9, 0.0, -0.1)),
    ((2.0, 3.0, 4.0), (2.0, 50.0, -6.0), (0.0, 0.0, 1.3), (0.0, 0.0, 0.0)),
    ((3.0, 2.5, -60.0), (-4.0, -3.0, 60.0), (0.0, 1.1, 0.0), (1.3, 0.0, 0.0)),
    ((4.0, -38.0, 5.5), (-1.0, 31.0, -2.0), (0.1, 0.0, 0.8), (0.8, 0.1, -0.1)),
]


def pose_geometry():
    return [np.ascontiguousarray(np.array([case[i] for case in POSE_CASES], dtype=np.float64)) for i in range(4)]


def test_multi_pose_projector_matches_the_float64_reference_and_the_single_pose_kernel():
    volume = np.random.default_rng(7).random((5, 6, 7)).astype(np.float32)
    spacing = np.array([1.5, 1.0, 1.2])
    geometry = pose_geometry()
    out = np.full((4, 9, 8), -1.0, dtype=np.float32)
    cpu.project_cone_beam_poses(volume, spacing, *geometry, 0.37, out)
    exact = np.full((4, 9, 8), -1.0)
    ref_projection.project_cone_beam_poses(volume, spacing, *geometry, 0.37, exact)
    assert (exact > 0).any() and (exact == 0).any()  # some rays hit, some miss
    assert_allclose(out, exact, rtol=1e-5, atol=1e-5 * exact.max())
    for p in range(4):  # pose p is the single-pose kernel with that geometry, bit for bit
        single = np.empty((9, 8), dtype=np.float32)
        cpu.project_cone_beam(volume, spacing, *(g[p] for g in geometry), 0.37, single)
        assert_array_equal(out[p], single)


# -------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("angles", [(2.0, -1.5, 2.5), (-3.0, 3.0, 0.5), (0.0, 0.0, -7.0)])
def test_euler_angles_invert_rotation_matrix_and_follow_the_design_convention(angles):
    r = rotation_matrix(*angles)
    assert_allclose(euler_angles(r), angles, atol=1e-12)
    assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    # a pure yaw turns +X (lateral) towards +Y (longitudinal): right-handed about the vertical
    assert rotation_matrix(0, 0, 10.0)[1, 0] > 0 and rotation_matrix(10.0, 0, 0)[2, 1] > 0


def test_view_geometry_honours_couch_and_receptor_angles_and_one_view_observability():
    from portalign.couch import image_axes
    from portalign.register3d._geometry import ViewGeometry, measured_axes

    frame = Image.from_array(np.random.default_rng(1).random((16, 16)), pixel_spacing_mm=1.0, gantry_deg=45.0,
                             couch_deg=90.0, sid_mm=1500.0, sad_mm=1000.0, extra={"receptor_angle_deg": 5.0})
    view = ViewGeometry.of(frame)
    assert_allclose(view.axes, image_axes(45.0, couch_deg=90.0, image_rotation_deg=5.0))
    source, origin, col, row = view.detector_grid(-3.0, 2.0, 0.5, 0.25)
    assert_allclose(source, -1000.0 * view.axes[2])
    # the rays run through the imager's points (SID 1500) and on to the cast plane, 2 SADs from the source
    imager = 500.0 * view.axes[2] + 1.5 * (-3.0 * view.axes[0] + 2.0 * view.axes[1])
    assert_allclose(origin - source, (imager - source) * 2000.0 / 1500.0)
    assert_allclose(np.linalg.norm(col), 0.5 * 2.0) and assert_allclose(np.linalg.norm(row), 0.25 * 2.0)
    # one oblique view at couch 0: only the longitudinal translation lies in its image plane
    oblique = ViewGeometry.of(Image.from_array(frame.pixels, pixel_spacing_mm=1.0, gantry_deg=45.0, sid_mm=1500.0,
                                               sad_mm=1000.0))
    basis, reasons = measured_axes([oblique])
    assert basis.shape == (6, 3) and set(reasons) == {"lateral", "vertical", "pitch", "roll", "yaw"}
    assert measured_axes([oblique, view])[1] == {}


# ------------------------------------------------------------------------------------ phantom (always)


def blob_phantom(spacing_mm: float = 3.0, seed: int = 3) -> CTVolume:
    """A water cylinder holding 60 bone and 12 air ellipsoids at random places: no periodic structure.

    Its outline stays outside :data:`PHANTOM_FIELD` in every view, so edges of the anatomy, not of the
    body, drive the match (a long cylinder's outline alone cannot fix the longitudinal shift).
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = int(200 / spacing_mm), int(200 / spacing_mm), int(260 / spacing_mm)
    z, y, x = np.meshgrid(*((np.arange(n) - (n - 1) / 2) * spacing_mm for n in (nz, ny, nx)), indexing="ij")
    hu = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    hu[(x / 125) ** 2 + (y / 95) ** 2 < 1] = 20.0
    for count, value in ((60, 1200.0), (12, -700.0)):
        for _ in range(count):
            c = rng.uniform([-80, -55, -85], [80, 55, 85])
            r = rng.uniform(6, 22, size=3)
            hu[((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1] = value
    origin = (float(x.min()), float(y.min()), float(z.min()))
    return CTVolume(hu=hu, spacing_mm=(spacing_mm,) * 3, origin_mm=origin, patient_position="HFS", source="blobs")


@pytest.fixture(scope="module")
def phantom():
    ct = blob_phantom()
    return ct, np.array(ct.centre_mm), prepare_ct(ct, isocenter_mm=ct.centre_mm, backend="cpu")


def test_phantom_two_views_recover_a_known_6dof_motion(phantom):
    ct, iso, prepared = phantom
    translation, rotation = (4.0, -6.0, 3.0), (1.5, -2.0, 2.5)
    result = prepared.register(_frames(ct, iso, [0.0, 90.0], translation, rotation, field=PHANTOM_FIELD))
    assert result.ok, result.reason
    _assert_recovered(result, translation, rotation)
    assert result.not_estimated == {} and result.backend == "cpu" and result.elapsed_ms > 0
    # each translation's standard uncertainty from the views' 2-D precision: views 90 deg apart see each axis well
    assert set(result.translation_uncertainty_mm) == {"lateral", "longitudinal", "vertical"}
    assert all(0 < u < 0.5 for u in result.translation_uncertainty_mm.values()), result.translation_uncertainty_mm
    assert [v["gantry_deg"] for v in result.views] == [0.0, 90.0]
    assert all(v["ok"] and v["residual_mm"] < 0.5 for v in result.views)
    # the corrections undo the motion: R^T (R p + t) + c6 = p, and the 4-DOF one is -t
    r = rotation_matrix(result.pitch_deg, result.roll_deg, result.yaw_deg)
    six = result.couch_correction_6dof
    back = rotation_matrix(six["pitch"], six["roll"], six["yaw"])
    assert_allclose(back, r.T, atol=1e-12)
    t = np.array([result.lateral_mm, result.longitudinal_mm, result.vertical_mm])
    assert_allclose([six["lateral"], six["longitudinal"], six["vertical"]], -r.T @ t, atol=1e-9)
    assert_allclose(list(result.couch_correction_3dof.values()), -t, atol=1e-12)
    assert result.rotations_not_corrected_deg == result.rotation_deg
    # the 4-DOF one undoes the yaw, then brings the isocentre's anatomy back: what is left is pitch and roll alone
    four = result.couch_correction_4dof
    assert list(four) == ["lateral", "longitudinal", "vertical", "yaw"] and four["yaw"] == -result.yaw_deg
    q = rotation_matrix(0.0, 0.0, four["yaw"])
    assert_allclose(q @ r, rotation_matrix(result.pitch_deg, result.roll_deg, 0.0), atol=1e-12)
    assert_allclose(q @ t + [four["lateral"], four["longitudinal"], four["vertical"]], 0.0, atol=1e-9)
    as_json = json.loads(result.as_json())
    assert as_json["pitch_deg"] == pytest.approx(result.pitch_deg) and as_json["ok"] is True
    # the corrections' keys name no unit: "units" gives them, every key of each correction (mm and deg)
    assert set(as_json["units"]["couch_correction_3dof"]) == {"lateral", "longitudinal", "vertical"}
    for name in ("couch_correction_6dof", "couch_correction_4dof", "couch_correction_3dof"):
        units = as_json["units"][name]
        assert set(as_json[name]) == set(units)  # no unit for a key the correction lacks (a physicist's trial)
        assert {units[k] for k in as_json[name]} <= {"mm", "deg"} and units.get("yaw", "deg") == "deg"
        assert units["lateral"] == "mm"


def test_a_2d_start_that_measured_nothing_is_left_out_of_the_start(phantom, monkeypatch):
    """A view whose 2-D start was refused with a null shift (a wrong scale, no match) gave numpy's lstsq a None: a
    traceback. The start now takes the views that measured; the search refines every view from there."""
    from dataclasses import replace as dc_replace

    import portalign

    ct, iso, prepared = phantom
    translation, rotation = (2.0, -3.0, 1.0), (0.0, 0.0, 0.0)
    real_register = portalign.register
    calls = []

    def first_view_measures_nothing(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_register(*args, **kwargs)
        calls.append(result)
        if len(calls) == 1:
            return dc_replace(result, ok=False, reason="no match: made up by the test", dx_mm=None, dy_mm=None,
                              rotation_deg=None)
        return result

    monkeypatch.setattr(portalign, "register", first_view_measures_nothing)
    result = prepared.register(_frames(ct, iso, [0.0, 90.0], translation, rotation, field=PHANTOM_FIELD))
    assert len(calls) == 4  # each view's 2-D start, then each view's residual check at the result
    assert result.views[0]["initial_dx_mm"] is None and result.views[1]["initial_dx_mm"] is not None
    assert any("the 2-D start was not ok (no match: made up by the test); refined anyway" in w for w in result.warnings)
    # the second view's start and the 3-D search still recover the motion
    assert result.ok, result.reason
    _assert_recovered(result, translation, rotation)


def test_a_residual_check_that_measured_nothing_is_not_ok_and_says_so(phantom, monkeypatch):
    """The 2-D check at the 3-D result may measure no shift (a null): the view is not ok, its residual null and
    "not measured" in the text, never a traceback from math.hypot(None, None)."""
    from dataclasses import replace as dc_replace

    import portalign
    from portalign.register3d._cli import text_report

    ct, iso, prepared = phantom
    real_register = portalign.register
    calls = []

    def third_call_measures_nothing(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_register(*args, **kwargs)
        calls.append(result)
        if len(calls) == 3:  # the first view's residual check
            return dc_replace(result, ok=False, reason="different scales: made up by the test", dx_mm=None,
                              dy_mm=None, rotation_deg=None)
        return result

    monkeypatch.setattr(portalign, "register", third_call_measures_nothing)
    result = prepared.register(_frames(ct, iso, [0.0, 90.0], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), field=PHANTOM_FIELD))
    assert not result.ok
    first = result.views[0]
    assert first["residual_mm"] is None and first["residual_dx_mm"] is None and not first["ok"]
    assert first["reason"] == "the 2-D check at the result measured no residual (different scales: made up by the test)"
    assert "residual not measured" in text_report(result)
    assert result.views[1]["ok"] and result.views[1]["residual_mm"] < 0.5


def test_phantom_one_view_reports_only_what_it_constrains(phantom):
    ct, iso, prepared = phantom
    translation, rotation = (3.0, -4.0, 5.0), (0.0, 0.0, 2.0)
    result = prepared.register(_frames(ct, iso, [0.0], translation, rotation, field=PHANTOM_FIELD))
    assert result.vertical_mm is None and result.pitch_deg is None and result.roll_deg is None
    assert set(result.not_estimated) == {"vertical", "pitch", "roll"}
    assert "one view (gantry 0" in result.not_estimated["vertical"] and "along the beam" in result.not_estimated[
        "vertical"]
    assert result.couch_correction_4dof["vertical"] is None and result.couch_correction_6dof["pitch"] is None
    assert result.couch_correction_3dof["vertical"] is None
    # the yaw one view measures is undone by the 4-DOF correction; the lateral and longitudinal follow it
    assert result.couch_correction_4dof["yaw"] == -result.yaw_deg and result.couch_correction_4dof["lateral"] is not None
    _assert_recovered(result, translation, rotation, only=("lateral", "longitudinal", "yaw"))
    assert json.loads(result.as_json())["roll_deg"] is None
    assert any("not estimated" in w for w in result.warnings)
    # what one view reports is biased by the turns it cannot see: said (a physicist's trial: 0.8 mm, 0.3 deg off)
    assert any(w.startswith("pitch and roll not estimated and held at 0: a patient turned about those axes")
               for w in result.warnings), result.warnings
    # ...and in the stated uncertainty: a 1 deg turn about the lateral (pitch) or longitudinal (roll) axis moves anatomy
    # 30 mm deep by 0.52 mm along the other (a trial: one view, longitudinal 0.81 mm off with 0.3 mm stated)
    u = result.translation_uncertainty_mm
    assert u["vertical"] is None and u["lateral"] > 0.52 and u["longitudinal"] > 0.52, u


def test_views_close_to_parallel_are_not_ok_and_give_no_correction(phantom):
    """A physicist's trial: views 15 deg apart gave vertical 0.31 mm for 1.50, ok (the 10-degree rule let them in).
    The displacement along the beams is resolved to about u / sin(15 deg): over 1 mm, not ok; and a result that is not
    ok carries no couch correction (the 2-D API's ``correction()`` is None then too), its measurement kept."""
    ct, iso, prepared = phantom
    result = prepared.register(_frames(ct, iso, [0.0, 15.0], (2.0, -1.0, 1.5), (0.0, 0.0, 0.0), field=PHANTOM_FIELD))
    assert not result.ok
    assert "the views at gantry 0, 15 are at most 15 deg apart: they resolve the vertical to" in result.reason
    assert result.translation_uncertainty_mm["vertical"] > 1.0 > result.translation_uncertainty_mm["lateral"]
    assert result.vertical_mm is not None  # measured, for review
    for correction in (result.couch_correction_6dof, result.couch_correction_4dof, result.couch_correction_3dof):
        assert correction and all(v is None for v in correction.values()), correction
    from portalign.register3d._cli import text_report

    text = text_report(result)
    assert text.splitlines()[0].startswith("NOT OK: ") and "correction (translation only) n/a" in text


def test_phantom_non_coplanar_views_honour_the_couch_angle(phantom):
    # a non-coplanar setup: the lateral view taken with the couch turned 30 degrees (patient-support axes
    # stay the frame of the result); the couch angle of each RT Image places its view
    ct, iso, prepared = phantom
    translation, rotation = (-3.0, 4.0, 2.0), (1.0, 2.0, -1.5)
    frames = _frames(ct, iso, [0.0, 90.0], translation, rotation, field=PHANTOM_FIELD, couches=[0.0, 30.0])
    assert frames[1].info.couch_deg == 30.0
    result = prepared.register(frames)
    assert result.ok, result.reason
    _assert_recovered(result, translation, rotation)
    assert [v["couch_deg"] for v in result.views] == [0.0, 30.0]
    # the same frames with their couch angle dropped describe another beam: the match no longer holds
    flat = [frames[0], replace(frames[1], info=replace(frames[1].info, couch_deg=0.0))]
    wrong = prepared.register(flat)
    found = np.array([wrong.lateral_mm, wrong.longitudinal_mm, wrong.vertical_mm], dtype=float)
    assert not wrong.ok or np.abs(found - translation).max() > 1.0


def test_tolerance_table_gets_the_rotation_axes(phantom):
    from portalign.tolerance import parse_tolerance

    ct, iso, prepared = phantom
    frames = _frames(ct, iso, [0.0, 90.0], (1.0, 0.0, 0.0), (0.0, 2.0, 0.0), field=PHANTOM_FIELD)
    result = prepared.register(frames, tolerance=parse_tolerance("lat=2,lng=2,vrt=2,pitch=1,roll=1,yaw=1"))
    assert result.within_tolerance == {"lat": True, "lng": True, "vrt": True, "pitch": True, "roll": False,
                                       "yaw": True}
    assert result.all_within_tolerance is False


# ------------------------------------------------------------------------------------------ bad inputs


def test_frames_without_geometry_are_refused_with_the_fix(phantom):
    ct, iso, prepared = phantom
    frame = Image.from_array(np.random.default_rng(0).random((64, 64)), pixel_spacing_mm=1.0, name="bare.dcm",
                             gantry_deg=0.0)
    with pytest.raises(GeometryError, match=r"bare.dcm: the frame has no RTImageSID, RadiationMachineSAD; .*sid_mm="):
        prepared.register([frame])


def test_parallel_views_are_refused(phantom):
    ct, iso, prepared = phantom
    frames = _frames(ct, iso, [0.0, 180.0], (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match=r"gantry 0, 180 are parallel views .* add a frame at a gantry angle"):
        prepared.register(frames)


@pytest.mark.parametrize("iso, match", [
    ((0.0, 0.0, 500.0), r"isocentre \(0, 0, 500\) mm is outside the CT \(x -127.5..127.5, .*\(--isocenter-mm"),
    ((1.0, 2.0), r"isocenter_mm must be three finite numbers"),
])
def test_isocentre_outside_the_ct_is_refused(phantom, iso, match):
    ct, _, _ = phantom
    with pytest.raises(GeometryError, match=match):
        prepare_ct(ct, isocenter_mm=iso, backend="cpu")


def test_top_level_register_3d_is_the_register3d_one(phantom):
    import portalign

    ct, iso, _ = phantom
    frames = _frames(ct, iso, [0.0], (1.0, 2.0, 0.0), (0.0, 0.0, 0.0), field=PHANTOM_FIELD)
    result = portalign.register_3d(ct, frames, isocenter_mm=iso, backend="cpu")
    assert abs(result.lateral_mm - 1.0) <= TRANSLATION_TOL_MM and result.vertical_mm is None


def test_unknown_patient_position_and_missing_isocentre_are_refused(phantom):
    ct, iso, _ = phantom
    with pytest.raises(GeometryError, match=r"patient position 'SITTING' is not supported; pass patient_position="):
        prepare_ct(ct, isocenter_mm=iso, patient_position="SITTING", backend="cpu")
    with pytest.raises(GeometryError, match=r"register_3d needs isocenter_mm="):
        register_3d(ct, [], backend="cpu")
    with pytest.raises(PortalImageError, match=r"at least one frame"):
        register_3d(ct, [], isocenter_mm=iso, backend="cpu")


def test_options_are_validated():
    with pytest.raises(GeometryError, match=r"field_margin_mm must be a non-negative number"):
        Register3DOptions(field_margin_mm=-1.0)


# ------------------------------------------------------------------------------------------------- CLI


def _write_ct_series(ct: CTVolume, folder: Path, *, orientation=(1, 0, 0, 0, 1, 0)) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series, frame_of_reference, study = generate_uid(), generate_uid(), generate_uid()
    stored = np.clip(np.round(ct.hu + 1024.0), 0, 65535).astype(np.uint16)
    sz, sy, sx = ct.spacing_mm
    for k in range(ct.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientPosition, ds.PatientID = "CT", ct.patient_position, "PHANTOM"
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.StudyInstanceUID = series, frame_of_reference, study
        ds.ImagePositionPatient = [ct.origin_mm[0], ct.origin_mm[1], ct.origin_mm[2] + k * sz]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [sy, sx]
        ds.Rows, ds.Columns = ct.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def cli_case(tmp_path_factory, phantom):
    from portalign.demo import write_rt_image

    ct, iso, _ = phantom
    root = tmp_path_factory.mktemp("register3d")
    _write_ct_series(ct, root / "ct")
    read_back = read_ct_series(root / "ct")
    iso = np.array(read_back.centre_mm)
    translation, rotation = (2.0, 3.0, -4.0), (-1.0, 1.0, 2.0)
    paths = []
    for frame in _frames(read_back, iso, [0.0, 90.0], translation, rotation, field=PHANTOM_FIELD):
        paths.append(write_rt_image(frame, root / f"g{frame.info.gantry_deg:g}.dcm", label="frame", image_type="PORTAL"))
    return root, iso, paths, translation, rotation


def test_cli_register3d_json_and_reg_out(cli_case, capsys):
    import pydicom
    from portalign.cli import main

    root, iso, paths, translation, rotation = cli_case
    reg = root / "reg.dcm"
    status = main(["register3d", str(root / "ct"), *map(str, paths), "--isocenter-mm", ",".join(map(str, iso)),
                   "--backend", "cpu", "--json", "--reg-out", str(reg)])
    out, err = capsys.readouterr()
    assert status == 0, err
    result = json.loads(out)
    assert result["ok"] is True, result["reason"]
    found = [result[f"{k}_mm"] for k in ("lateral", "longitudinal", "vertical")]
    assert_allclose(found, translation, atol=TRANSLATION_TOL_MM)
    assert_allclose([result[f"{k}_deg"] for k in ("pitch", "roll", "yaw")], rotation, atol=ROTATION_TOL_DEG)
    ds = pydicom.dcmread(reg)
    assert ds.Modality == "REG" and len(ds.RegistrationSequence) == 2
    item = ds.RegistrationSequence[1]
    matrix = np.array(item.MatrixRegistrationSequence[0].MatrixSequence[0].FrameOfReferenceTransformationMatrix,
                      dtype=float).reshape(4, 4)
    # the matrix takes the frame's nominal patient coordinates back to the CT's: b = iso + R (a - iso) + t (HFS)
    m = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)
    r = rotation_matrix(result["pitch_deg"], result["roll_deg"], result["yaw_deg"])
    t = np.array(found)
    a = iso + np.array([30.0, -20.0, 10.0])
    b = iso + m.T @ (r @ (m @ (a - iso)) + t)
    assert_allclose(matrix[:3, :3] @ b + matrix[:3, 3], a, atol=1e-3)
    referenced = ds.RegistrationSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # a CT slice of the series

    # a REG that cannot be written: one line naming the flag, after the result (which still stands)
    blocked = root / "no_such_folder" / "reg.dcm"
    status = main(["register3d", str(root / "ct"), *map(str, paths), "--isocenter-mm", ",".join(map(str, iso)),
                   "--backend", "cpu", "--json", "--reg-out", str(blocked)])
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert status == 2 and payload["ok"] is True and not blocked.exists()
    assert payload["reg"] is None and payload["reg_not_written"] in err  # said in the JSON too
    assert err.startswith(f"portalign register3d: error: --reg-out {blocked}: not written:") and "\n" not in err.strip()


def test_cli_register3d_text_and_errors(cli_case, capsys, tmp_path):
    from portalign.cli import main

    root, iso, paths, _, _ = cli_case
    assert main(["register3d", str(root / "ct"), str(paths[0]), "--isocenter-mm", ",".join(map(str, iso)),
                 "--backend", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "vertical: not estimated" in text and "pitch: not estimated" in text and "yaw:" in text

    # one view: a REG matrix cannot say "not measured", so none is written; the result is still printed
    reg = tmp_path / "one_view_reg.dcm"
    assert main(["register3d", str(root / "ct"), str(paths[0]), "--isocenter-mm", ",".join(map(str, iso)),
                 "--backend", "cpu", "--json", "--reg-out", str(reg)]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["vertical_mm"] is None and not reg.exists()
    assert err.startswith("portalign register3d: error: --reg-out") and "did not measure vertical_mm" in err
    assert "pitch_deg" in err and "another gantry angle" in err and "\n" not in err.strip()

    assert main(["register3d", str(root / "ct"), str(paths[0]), "--isocenter-mm", "0,0,900"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("portalign register3d: error:") and "outside the CT" in err and "\n" not in err
    # with --json, unusable input is a JSON object on stdout too
    assert main(["register3d", str(root / "ct"), str(paths[0]), "--isocenter-mm", "0,0,900", "--json"]) == 2
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert payload["ok"] is False and "outside the CT" in payload["detail"] and payload["detail"] in err

    assert main(["register3d", str(root / "ct"), str(paths[0])]) == 2
    assert "pass --isocenter-mm" in capsys.readouterr().err

    assert main(["register3d", str(root / "ct"), str(paths[0]), "--isocenter-mm", "1,2"]) == 2
    assert "expected three numbers X,Y,Z" in capsys.readouterr().err

    oblique = CTVolume(hu=np.full((4, 8, 8), 0.0, dtype=np.float32), spacing_mm=(2.0, 2.0, 2.0))
    _write_ct_series(oblique, tmp_path / "oblique", orientation=(0.98, 0.199, 0, -0.199, 0.98, 0))
    assert main(["register3d", str(tmp_path / "oblique"), str(paths[0]), "--isocenter-mm", "0,0,0"]) == 2
    assert "is not axial" in capsys.readouterr().err


def test_cli_register3d_isocentre_from_the_plan(cli_case, capsys, tmp_path):
    from portalign.cli import main
    from portalign.dicom import read_plan_isocenter
    from pydicom.dataset import Dataset

    root, iso, paths, translation, _ = cli_case
    plan = Dataset()
    plan.Modality = "RTPLAN"
    plan.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    plan.SOPInstanceUID = "1.2.3.4"
    beams = []
    for number in (1, 2):
        beam, point = Dataset(), Dataset()
        beam.BeamNumber = number
        point.IsocenterPosition = [f"{v:.4f}" for v in iso]
        beam.ControlPointSequence = [point]
        beams.append(beam)
    plan.BeamSequence = beams
    plan_path = tmp_path / "plan.dcm"
    plan.save_as(plan_path, implicit_vr=True, little_endian=True)
    assert_allclose(read_plan_isocenter(plan_path), iso, atol=1e-3)
    assert main(["register3d", str(root / "ct"), *map(str, paths), "--plan", str(plan_path), "--json",
                 "--backend", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["lateral_mm"] == pytest.approx(translation[0], abs=TRANSLATION_TOL_MM)
    plan.BeamSequence[1].ControlPointSequence[0].IsocenterPosition = [0, 0, 50]
    plan.save_as(plan_path, implicit_vr=True, little_endian=True)
    with pytest.raises(PortalImageError, match=r"2 different isocentres; pass beam_number= \(--beam-number\) or "
                                               r"--isocenter-mm$"):
        read_plan_isocenter(plan_path)
    # the command line names its own flag, and takes it (a new user was told of a beam option it did not have)
    assert main(["register3d", str(root / "ct"), *map(str, paths), "--plan", str(plan_path), "--json",
                 "--backend", "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith("different isocentres; pass --beam-number or --isocenter-mm")
    assert main(["register3d", str(root / "ct"), *map(str, paths), "--plan", str(plan_path), "--beam-number", "1",
                 "--json", "--backend", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["lateral_mm"] == pytest.approx(translation[0], abs=TRANSLATION_TOL_MM)
    # --beam-number without --plan names what is missing (a new user got an IsocenterPosition error instead)
    assert main(["register3d", str(root / "ct"), *map(str, paths), "--beam-number", "1", "--backend", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--beam-number 1 chooses a beam of --plan's RT Plan, and no --plan was given" in err, err


# ------------------------------------------------------------------------------------------ thorax CT


@pytest.fixture(scope="module")
def thorax():
    if not THORAX.is_dir():
        pytest.skip(f"thorax CT not found at {THORAX} (../shared/data/real, see SOURCES.md)")
    ct = read_ct_series(THORAX).downsampled((1, 2, 2))
    iso = np.array(ct.centre_mm) + np.array([0.0, 20.0, 0.0])
    return ct, iso


@pytest.mark.real_data
@pytest.mark.parametrize("position, gantries, translation, rotation", [
    ("HFS", [0.0, 90.0], (3.0, -5.0, 4.0), (2.0, -1.5, 2.5)),
    ("FFS", [0.0, 90.0], (-6.0, 2.5, -3.0), (-2.5, 3.0, -1.0)),
    ("HFS", [0.0, 45.0, 270.0], (8.0, -2.0, -5.0), (-1.0, 2.0, -3.0)),
    ("HFS", [315.0, 45.0], (-2.0, 7.5, 1.5), (3.0, 1.0, 1.5)),
    ("HFS", [0.0, 90.0], (-7.0, 6.0, 8.0), (-3.0, -3.0, 3.0)),
])
def test_thorax_known_6dof_motions(thorax, position, gantries, translation, rotation):
    ct, iso = thorax
    frames = _frames(ct, iso, gantries, translation, rotation, position=position, seed=11)
    result = register_3d(ct, frames, isocenter_mm=iso, patient_position=position, backend="cpu")
    assert result.ok, result.reason
    assert result.patient_position == position and len(result.views) == len(gantries)
    _assert_recovered(result, translation, rotation)


@pytest.mark.real_data
def test_thorax_one_lateral_view_constrains_longitudinal_vertical_and_pitch(thorax):
    ct, iso = thorax
    translation, rotation = (0.0, 4.0, -3.0), (2.0, 0.0, 0.0)
    frames = _frames(ct, iso, [90.0], translation, rotation)
    result = register_3d(ct, frames, isocenter_mm=iso, backend="cpu")
    assert result.lateral_mm is None and result.roll_deg is None and result.yaw_deg is None
    assert "gantry 90" in result.not_estimated["lateral"]
    _assert_recovered(result, translation, rotation, only=("longitudinal", "vertical", "pitch"))


@pytest.mark.real_data
def test_thorax_small_field(thorax):
    """A 100 x 80 mm field: fewer structures, the same accuracy.

    The 160x120 test detector is given 0.83 mm pixels (at the isocentre) here, so that the field spans as
    many pixels as a real imager's 0.39 mm pixels give it; with the 1.67 mm pixels of the other tests pitch
    comes out 0.30 deg off.
    """
    ct, iso = thorax
    translation, rotation = (2.0, 3.0, -2.0), (1.0, -1.0, 1.5)
    frames = _frames(ct, iso, [0.0, 90.0], translation, rotation, field=(-50.0, 50.0, -40.0, 40.0),
                     detector=dict(detector_shape=(120, 160), detector_spacing_mm=0.392 * 512 / 160))
    result = register_3d(ct, frames, isocenter_mm=iso, backend="cpu")
    assert result.ok, result.reason
    _assert_recovered(result, translation, rotation)


@pytest.mark.real_data
@pytest.mark.parametrize("offset_mm, reason", [
    ((0.0, 0.0, 60.0), r"residual \d+\.\d\d mm \(more than 1 mm\)"),  # beyond the search range: no good match
    ((40.0, 0.0, 0.0), r"the result lies outside the search range \(20 mm, 6 deg\)"),  # found, but out of range
])
def test_thorax_wrong_isocentre_is_never_a_confident_answer(thorax, offset_mm, reason):
    ct, iso = thorax
    frames = _frames(ct, iso, [0.0, 90.0], (1.0, 2.0, 0.0), (0.0, 0.0, 0.0))
    result = register_3d(ct, frames, isocenter_mm=iso + np.array(offset_mm), backend="cpu")
    assert not result.ok
    assert re.search(reason, result.reason), result.reason


def test_a_result_that_is_not_ok_says_so_before_its_numbers():
    """A new user's trial: a full "6-DOF correction: lateral +17.08 ..." line came before the NOT OK line."""
    from types import SimpleNamespace

    from portalign.register3d._cli import text_report

    axes = {"lateral": 17.08, "longitudinal": -3.0, "vertical": 2.0}
    result = SimpleNamespace(
        ok=False, reason="gantry 0: no match", patient_directions={}, elapsed_ms=12.0, backend="cpu", warnings=[],
        couch_correction_3dof={k: -v for k, v in axes.items()}, pitch_deg=None, roll_deg=None, yaw_deg=0.5,
        couch_correction_4dof={**{k: -v for k, v in axes.items()}, "yaw": -0.5},
        couch_correction_6dof={**{k: -v for k, v in axes.items()}, "pitch": None, "roll": None, "yaw": -0.5},
        views=[], within_tolerance={}, **{f"{k}_mm": v for k, v in axes.items()})
    lines = text_report(result).splitlines()
    assert lines[0] == "NOT OK: gantry 0: no match (the values below are not a correction to apply)"
    assert lines[-1].startswith("NOT OK (the reason is on the first line)")  # said once (a long reason was printed twice)
    assert sum("gantry 0: no match" in line for line in lines) == 1
    result.ok = True
    assert text_report(result).splitlines()[0].strip().startswith("lateral:")


def test_a_missing_isocentre_is_said_as_what_the_frames_lack():
    """A single frame without IsocenterPosition was told "the frames do not all carry one IsocenterPosition" (a new
    user's trial): each case now says what the frames lack, and both ways to give the isocentre."""
    import argparse

    from portalign.register3d._cli import _isocenter

    def frame(iso):  # type: ignore[no-untyped-def]
        extra = {} if iso is None else {"isocenter_position_mm": iso}
        return Image.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), pixel_spacing_mm=1.0, extra=extra)

    args = argparse.Namespace(isocenter_mm=None, plan=None, beam_number=None, frames=["f1.dcm", "f2.dcm"])
    cases = [([frame(None)], "f1.dcm: carries no IsocenterPosition (300A,012C); pass --isocenter-mm X,Y,Z"),
             ([frame(None), frame(None)], "f1.dcm: none of the 2 frames carries an IsocenterPosition (300A,012C); pass"),
             ([frame((0, 0, 0)), frame(None)], "f1.dcm: only 1 of the 2 frames carry an IsocenterPosition (300A,012C)"),
             ([frame((0, 0, 0)), frame((0, 0, 50))], "f1.dcm: the frames carry 2 different IsocenterPositions")]
    for frames, message in cases:
        with pytest.raises(GeometryError, match=re.escape(message)) as error:
            _isocenter(args, frames)
        assert str(error.value).endswith("or --plan RTPLAN")
    assert _isocenter(args, [frame((1, 2, 3)), frame((1, 2, 3))]) == (1.0, 2.0, 3.0)


def test_a_ct_with_slices_far_apart_is_refused_naming_its_spacing():
    """The rtkit phantom's 5 slices 75 mm apart were accepted, and every view refused with a correlation that did not
    point at the CT (a new user's trial): its spacing is named before anything is rendered."""
    hu = np.full((5, 32, 32), -1000.0, dtype=np.float32)
    hu[:, 8:24, 8:24] = 40.0
    coarse = CTVolume(hu=hu, spacing_mm=(75.0, 1.0, 1.0), origin_mm=(-16.0, -16.0, -150.0), patient_position="HFS",
                      source="phantom_ct")
    with pytest.raises(GeometryError, match=re.escape("phantom_ct: voxels 75 mm apart along z (between slices), more "
                                                      "than 10 mm: rendered views of it would show only what lies on "
                                                      "its 5 slices; use the planning CT itself")):
        prepare_ct(coarse, isocenter_mm=(0.0, 0.0, 0.0), backend="cpu")
    fine = CTVolume(hu=np.repeat(hu, 15, axis=0), spacing_mm=(5.0, 1.0, 1.0), origin_mm=(-16.0, -16.0, -150.0),
                    patient_position="HFS", source="phantom_ct")
    assert prepare_ct(fine, isocenter_mm=(0.0, 0.0, -100.0), backend="cpu").ct is fine


def test_the_imprecision_reason_names_one_view_or_the_views_apart():
    """The reason a translation known to worse than 1 mm gives: of views close to parallel, their angle; of one view
    (its 2-D precision and the turns it cannot see), the view, never "0 deg apart"."""
    from types import SimpleNamespace

    from portalign.couch import image_axes
    from portalign.register3d._search import _imprecise

    def view(gantry):  # type: ignore[no-untyped-def]
        return SimpleNamespace(geometry=SimpleNamespace(gantry_deg=gantry, axes=image_axes(gantry)))

    assert _imprecise([view(0.0), view(90.0)], {"lateral": 0.2, "longitudinal": 0.2, "vertical": 0.2}, 1.0) == []
    (one,) = _imprecise([view(0.0)], {"lateral": 1.2, "longitudinal": 0.5, "vertical": None}, 1.0)
    assert one.startswith("the one view (gantry 0) resolves the lateral to 1.20 mm only") and "apart" not in one
    (two,) = _imprecise([view(0.0), view(15.0)], {"lateral": 0.2, "longitudinal": 0.1, "vertical": 1.1}, 1.0)
    assert two.startswith("the views at gantry 0, 15 are at most 15 deg apart: they resolve the vertical to 1.10 mm")
