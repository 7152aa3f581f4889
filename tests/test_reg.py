"""DICOM Spatial Registration objects: written, read back, the matrix reproduces the reported motion."""

from __future__ import annotations

import datetime
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import make_rt_image, write_rt_image
from portalign import Image, ImageInfo, RegistrationResult
from portalign.couch import View, image_axes, patient_matrix, projection_matrix, solve_couch_shift
from portalign.dicom import read_rt_image
from portalign.errors import GeometryError, PortalignError
from portalign.reg import SPATIAL_REGISTRATION_STORAGE, registration_matrix, write_spatial_registration
from pydicom.uid import UID, RTImageStorage, generate_uid

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
WL = REAL / "pylinac" / "wl_shift_truebeam"


def make_image(gantry, *, position="HFS", for_uid="1.2.3.4", series="1.2.3.5", **extra):
    info = ImageInfo(source=f"G{gantry}.dcm", modality="RTIMAGE", kind="portal", sop_instance_uid=generate_uid(),
                     frame_of_reference_uid=for_uid, series_instance_uid=series, gantry_deg=float(gantry),
                     collimator_deg=0.0, couch_deg=0.0, patient_position=position, extra=dict(extra))
    pixels = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    return Image(pixels, (1.0, 1.0), (7.5, 7.5), info)


def rotation_vector(q):
    """Axis x angle (degrees) of a 3x3 rotation."""
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(q) - 1.0) / 2.0))))
    axis = np.array([q[2, 1] - q[1, 2], q[0, 2] - q[2, 0], q[1, 0] - q[0, 1]])
    return axis / np.linalg.norm(axis) * angle if angle > 1e-9 else np.zeros(3)


def matrix_of(item):
    values = item.MatrixRegistrationSequence[0].MatrixSequence[0].FrameOfReferenceTransformationMatrix
    return np.array([float(v) for v in values]).reshape(4, 4)


@pytest.mark.parametrize(("gantry", "position"), [(0.0, "HFS"), (90.0, "HFS"), (45.0, "FFS"), (270.0, "HFP")])
def test_2d_result_round_trips_and_the_matrix_reproduces_the_shift(tmp_path, gantry, position):
    iso = (12.0, -30.0, 95.0)
    reference = make_image(gantry, position=position, isocentre_mm=iso, study_instance_uid="1.2.3.9",
                           patient_id="P-1", patient_name="Phantom^Thorax")
    frame = make_image(gantry, position=position)
    result = RegistrationResult(dx_mm=2.5, dy_mm=-1.5, rotation_deg=1.2, ok=True)
    path = tmp_path / "reg.dcm"
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    written = write_spatial_registration(path, result, reference, frame, when=when)
    ds = pydicom.dcmread(path)

    assert ds.Modality == "REG"
    assert ds.SOPClassUID == SPATIAL_REGISTRATION_STORAGE == "1.2.840.10008.5.1.4.1.1.66.1"
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.SOPInstanceUID == written.SOPInstanceUID
    assert ds.StudyInstanceUID == "1.2.3.9" and ds.PatientID == "P-1" and str(ds.PatientName) == "Phantom^Thorax"
    assert ds.SeriesInstanceUID and ds.ContentDate == "20260102" and ds.ContentTime.startswith("030405")
    assert ds.FrameOfReferenceUID == reference.info.frame_of_reference_uid
    fixed, moving = ds.RegistrationSequence
    assert fixed.ReferencedImageSequence[0].ReferencedSOPInstanceUID == reference.info.sop_instance_uid
    assert moving.ReferencedImageSequence[0].ReferencedSOPInstanceUID == frame.info.sop_instance_uid
    assert moving.ReferencedImageSequence[0].ReferencedSOPClassUID == RTImageStorage
    assert moving.MatrixRegistrationSequence[0].MatrixSequence[0].FrameOfReferenceTransformationMatrixType == "RIGID"
    np.testing.assert_allclose(matrix_of(fixed), np.eye(4))
    referenced = {r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert referenced == {reference.info.sop_instance_uid, frame.info.sop_instance_uid}

    t = matrix_of(moving)
    np.testing.assert_allclose(t[3], [0, 0, 0, 1])
    q = t[:3, :3]
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(q) == pytest.approx(1.0)

    # The matrix maps the frame back onto the reference: its rotation is the reported one, undone, about the
    # beam axis (in patient coordinates).
    m = patient_matrix(position)
    ex, ey, beam = image_axes(gantry)
    np.testing.assert_allclose(rotation_vector(q), -result.rotation_deg * (m.T @ beam), atol=1e-6)

    # Points: an anatomy point at (x, y) of the reference's isocentre plane is seen in the frame at
    # R(theta) (x, y) + (dx, dy); T takes the second to the first.
    theta = math.radians(result.rotation_deg)
    rot2 = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    for x, y in [(0.0, 0.0), (40.0, -25.0), (-70.0, 10.0)]:
        seen = rot2 @ (x, y) + (result.dx_mm, result.dy_mm)
        a = np.asarray(iso) + m.T @ (x * ex + y * ey)
        b = np.asarray(iso) + m.T @ (seen[0] * ex + seen[1] * ey)
        np.testing.assert_allclose(t[:3, :3] @ b + t[:3, 3], a, atol=1e-6)


def test_pure_translation_matrix_is_the_couch_correction_in_patient_coordinates():
    result = RegistrationResult(dx_mm=3.0, dy_mm=-2.0, rotation_deg=0.0, ok=True)
    t = registration_matrix(result, make_image(0.0), patient_position="HFS", isocentre_mm=(5.0, 6.0, 7.0))
    np.testing.assert_allclose(t[:3, :3], np.eye(3))
    # gantry 0, HFS: dx = +3 is 3 mm towards the patient's left (+L); dy = -2 is 2 mm superior (+S)
    np.testing.assert_allclose(t[:3, 3], [-3.0, 0.0, -2.0], atol=1e-12)


def test_couch_correction_registers_every_view(tmp_path):
    shift = np.array([1.5, -2.0, 3.0])
    references = [make_image(g, isocentre_mm=(0.0, 0.0, 0.0)) for g in (0, 90)]
    frames = [make_image(g) for g in (0, 90)]
    views = [View(gantry_deg=g, dx_mm=float(p[0]), dy_mm=float(p[1]), rotation_deg=theta)
             for g, theta in ((0, -1.0), (90, 0.5)) for p in [projection_matrix(g) @ shift]]
    couch = solve_couch_shift(views, patient_position="HFS")
    ds = write_spatial_registration(tmp_path / "couch.dcm", couch, references, frames)
    back = pydicom.dcmread(tmp_path / "couch.dcm")
    fixed, moving = back.RegistrationSequence
    assert [r.ReferencedSOPInstanceUID for r in fixed.ReferencedImageSequence] == [
        i.info.sop_instance_uid for i in references]
    assert [r.ReferencedSOPInstanceUID for r in moving.ReferencedImageSequence] == [
        i.info.sop_instance_uid for i in frames]
    t = matrix_of(moving)
    # rotations: yaw = +1.0 (about IEC Z = patient -P for HFS), pitch = -0.5 (about IEC X = +L), undone
    m = patient_matrix("HFS")
    expected_w = m.T @ np.array([couch.rotation_deg["pitch"], 0.0, couch.rotation_deg["yaw"]])
    np.testing.assert_allclose(rotation_vector(t[:3, :3]), -expected_w, atol=0.01)
    # the isocentre itself moved by the shift; the matrix takes it back
    moved_iso = m.T @ shift
    np.testing.assert_allclose(t[:3, :3] @ moved_iso + t[:3, 3], [0, 0, 0], atol=1e-9)
    assert "couch" in back.RegistrationSequence[1].MatrixRegistrationSequence[0].FrameOfReferenceTransformationComment
    # views at gantry 0 and 90 see yaw and pitch in their image planes; roll (about the longitudinal axis) in neither
    assert couch.rotation_deg["roll"] is None
    assert ds.portalign_warnings == ["roll not estimated: the matrix carries no rotation about that axis",
                                     "StudyInstanceUID of the images unknown: the REG object starts a new study",
                                     "PatientID of the images unknown: left empty"]


def test_missing_facts_are_errors_or_recorded_assumptions(tmp_path):
    result = RegistrationResult(dx_mm=1.0, dy_mm=0.0, rotation_deg=0.0, ok=True)
    reference, frame = make_image(0, position=""), make_image(0, position="")
    with pytest.raises(GeometryError, match="no PatientPosition .* pass patient_position="):
        write_spatial_registration(None, result, reference, frame)
    ds = write_spatial_registration(None, result, reference, frame, patient_position="HFS")
    assert any("isocentre position unknown" in w for w in ds.portalign_warnings)
    assert "assumptions" in ds.ContentDescription

    anonymous = replace(frame, info=replace(frame.info, sop_instance_uid=""))
    with pytest.raises(PortalignError, match="frame image has no SOP Instance UID"):
        write_spatial_registration(None, result, reference, anonymous, patient_position="HFS")
    no_gantry = replace(frame, info=replace(frame.info, gantry_deg=None))
    with pytest.raises(GeometryError, match="no gantry angle"):
        write_spatial_registration(None, result, reference, no_gantry, patient_position="HFS")
    with pytest.raises(PortalignError, match="one frame"):
        write_spatial_registration(None, result, reference, [frame, frame], patient_position="HFS")


def test_written_from_dicom_inputs_references_their_uids(tmp_path):
    pixels = np.random.default_rng(1).random((32, 32)) * 1000
    paths = []
    for name in ("ref", "frame"):
        ds = make_rt_image(pixels, gantry=90.0, PatientPosition="FFS")
        paths.append(write_rt_image(ds, tmp_path / f"{name}.dcm"))
    reference, frame = read_rt_image(paths[0]), read_rt_image(paths[1])
    result = RegistrationResult(dx_mm=-0.7, dy_mm=1.1, rotation_deg=-0.3, ok=True)
    write_spatial_registration(tmp_path / "reg.dcm", result, reference, frame, isocentre_mm=(0, 0, 0))
    back = pydicom.dcmread(tmp_path / "reg.dcm")
    originals = [pydicom.dcmread(p) for p in paths]
    assert back.RegistrationSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == \
        originals[0].SOPInstanceUID
    assert back.RegistrationSequence[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == \
        originals[1].SOPInstanceUID
    assert back.FrameOfReferenceUID == back.RegistrationSequence[0].FrameOfReferenceUID == \
        originals[0].FrameOfReferenceUID
    assert back.RegistrationSequence[1].FrameOfReferenceUID == originals[1].FrameOfReferenceUID
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID in {o.SeriesInstanceUID for o in originals}


def test_patient_name_read_from_dicom_is_one_value_in_the_reg_file(tmp_path):
    """A person name is one value: it was joined character by character (``A\\N\\O\\N``, VM 4) on its way through."""
    pixels = np.random.default_rng(2).random((32, 32)) * 1000
    paths = []
    for name in ("ref", "frame"):
        ds = make_rt_image(pixels, gantry=0.0, PatientPosition="HFS", PatientName="Doe^Jane^M", PatientID="P-7")
        paths.append(write_rt_image(ds, tmp_path / f"{name}.dcm"))
    reference, frame = read_rt_image(paths[0]), read_rt_image(paths[1])
    assert reference.info.extra["patient_name"] == "Doe^Jane^M"
    result = RegistrationResult(dx_mm=0.5, dy_mm=-0.2, rotation_deg=None, ok=True)
    write_spatial_registration(tmp_path / "reg.dcm", result, reference, frame, isocentre_mm=(0, 0, 0))
    back = pydicom.dcmread(tmp_path / "reg.dcm")
    assert back["PatientName"].VM == 1 and str(back.PatientName) == "Doe^Jane^M"
    assert back.PatientID == "P-7"


@pytest.mark.real_data
def test_real_rt_images_can_be_registered_in_a_reg_object(tmp_path):
    if not WL.is_dir():
        pytest.skip(f"real data not found at {WL}")
    reference = read_rt_image(WL / "cardinal" / "wl-3-30-18_card-002.dcm")
    frame = read_rt_image(WL / "lat3mm" / "3mm_lat-002.dcm")
    result = RegistrationResult(dx_mm=3.0, dy_mm=0.0, rotation_deg=0.0, ok=True)
    ds = write_spatial_registration(tmp_path / "wl_reg.dcm", result, reference, frame, patient_position="HFS")
    back = pydicom.dcmread(tmp_path / "wl_reg.dcm")
    assert back.RegistrationSequence[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == \
        frame.info.sop_instance_uid
    # gantry 0 (0.0066 deg in this file), HFS: the frame shows the phantom 3 mm towards the patient's left;
    # the matrix moves it back
    np.testing.assert_allclose(matrix_of(back.RegistrationSequence[1])[:3, 3], [-3.0, 0.0, 0.0], atol=1e-3)
    assert ds.SOPInstanceUID == back.SOPInstanceUID


def test_invalid_uids_of_the_images_are_replaced_or_reported_never_printed(tmp_path, caplog):
    # a vendor's hexadecimal "UIDs" (seen on a public TrueBeam file): the REG gets valid study and frame-of-reference
    # UIDs of its own, references the images by the UIDs they carry, and says so once (no raw pydicom warnings)
    import warnings

    hex_uid = "63b4b5a1c0ffee0123456789abcdef"
    reference = make_image(0.0, for_uid=hex_uid, series=hex_uid + "01", study_instance_uid=hex_uid + "02",
                           isocentre_mm=(0.0, 0.0, 0.0), patient_id="P-1")
    frame = make_image(0.0, for_uid=hex_uid)
    result = RegistrationResult(dx_mm=1.0, dy_mm=-2.0, rotation_deg=None, ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = write_spatial_registration(tmp_path / "reg.dcm", result, reference, frame)
    assert not [w for w in caught if "UID" in str(w.message)], [str(w.message) for w in caught]
    assert "Invalid value for VR UI" not in caplog.text
    back = pydicom.dcmread(tmp_path / "reg.dcm")
    assert back.StudyInstanceUID != hex_uid + "02" and UID(back.StudyInstanceUID).is_valid
    assert UID(back.FrameOfReferenceUID).is_valid
    assert back.RegistrationSequence[1].FrameOfReferenceUID == back.FrameOfReferenceUID
    assert any("StudyInstanceUID" in w and "not a valid DICOM UID" in w for w in ds.portalign_warnings)
    assert any("FrameOfReferenceUID" in w for w in ds.portalign_warnings)
    assert any("referenced as they are" in w for w in ds.portalign_warnings)
    with warnings.catch_warnings():  # reading an invalid UID back makes pydicom warn (our writing did not)
        warnings.simplefilter("ignore")
        assert hex_uid + "01" in [item.SeriesInstanceUID for item in back.ReferencedSeriesSequence]


def test_a_patient_position_that_contradicts_the_images_is_said():
    """A new user's trial: --patient-position FFS on HFS images reversed the REG's translation without a word."""
    result = RegistrationResult(dx_mm=3.0, dy_mm=-2.0, rotation_deg=None, ok=True)
    reference, frame = make_image(0), make_image(0)
    given = write_spatial_registration(None, result, reference, frame, patient_position="FFS")
    assert "patient position FFS as given (patient_position=), not the images' PatientPosition HFS" in \
        given.portalign_warnings
    same = write_spatial_registration(None, result, reference, frame, patient_position="HFS")
    assert not any("as given" in w for w in same.portalign_warnings)
    # head first and feet first place the lateral and longitudinal shift with opposite signs
    assert not np.allclose(matrix_of(given.RegistrationSequence[1])[:3, 3], matrix_of(same.RegistrationSequence[1])[:3, 3])
