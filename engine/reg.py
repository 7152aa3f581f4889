"""DICOM Spatial Registration (REG) objects from portalign results.

A treatment-management or review system imports a registration as a Spatial
Registration Storage object (SOP Class 1.2.840.10008.5.1.4.1.1.66.1, Modality
REG). :func:`write_spatial_registration` writes one for a 2-D result
(:class:`~portalign.result.RegistrationResult`) or a 3-D couch correction
(:class:`~portalign.couch.CouchShift`).

What the matrix means
---------------------
The object's Frame of Reference is the reference image's. Its
``RegistrationSequence`` has two items:

1. the reference image(s): their Frame of Reference, identity matrix;
2. the frame(s): their Frame of Reference and a RIGID 4x4
   ``FrameOfReferenceTransformationMatrix`` ``T`` (row-major) that takes a point
   in the frame's patient coordinates to the reference's (DICOM PS3.3
   C.20.2.1.1: it maps the item's RCS into the registered RCS).

Both are DICOM patient coordinates (LPS, mm). The frame's coordinates are the
*nominal* ones: a point the frame shows at room position ``r`` (IEC couch axes,
isocentre at 0) has the patient coordinates the plan gives to that room
position, ``iso + M^T r`` (``M``: LPS to couch axes for the patient position,
:data:`portalign.couch.PATIENT_TO_IEC`; ``iso``: the planned isocentre in
patient coordinates). The patient's actual motion is rigid,
``r -> R3 r + D`` about the isocentre, so the anatomy at reference point
``a`` is seen at ``b = iso + M^T (R3 M (a - iso) + D)`` and::

    T(b) = a = iso + M^T R3^T (M (b - iso) - D)

For a pure translation the matrix's translation column is the couch
correction in patient coordinates. ``R3`` and ``D``:

2-D result (one view)
    The 2-D rigid transform is embedded in the imaging plane through the
    isocentre: ``D = dx ex + dy ey`` and ``R3`` is the rotation by
    ``rotation_deg`` about the beam direction ``b = ex x ey`` (right-handed; it
    turns ``ex`` towards ``ey``, as the 2-D contract does), with ``ex``, ``ey``, ``b``
    from :func:`portalign.couch.image_axes` for the frame's gantry, couch and
    receptor angles. The component along the beam is unknown from one view and
    is 0.
3-D couch correction
    ``D`` = (lateral, longitudinal, vertical); ``R3 = Rz(yaw) Ry(roll) Rx(pitch)``
    with the estimated rotations, 0 for those the views could not determine.

Identity
    ``ReferencedImageSequence`` of each item lists the SOP instances (RT Image
    Storage unless ``extra["sop_class_uid"]`` says otherwise; ``ReferencedFrameNumber``
    for frames of a multi-frame image). When the reference and the frame share one
    Frame of Reference UID (portal images and DRRs of one plan usually do), the
    image references are what tell the two items apart. Study, patient and
    isocentre come from keyword arguments, else ``info.extra``
    (``study_instance_uid``, ``patient_id``, ``patient_name``, ``isocentre_mm`` or
    ``isocenter_position_mm``); a missing study gets a new UID and a missing
    isocentre is taken as the patient-coordinate origin (``ContentDescription``
    then says "with assumptions"; the returned dataset's ``portalign_warnings``
    lists them; see ``docs/conventions.md``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import re
import threading
import warnings as _warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    RTImageStorage,
    SpatialRegistrationStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from . import __version__
from ._pydicom_compat import write_dataset
from .couch import CouchShift, image_axes, patient_matrix
from .errors import GeometryError, PortalignError
from .image import Image
from .result import RegistrationResult

__all__ = ["check_registration_inputs", "registration_matrix", "rigid_motion", "write_spatial_registration",
           "SPATIAL_REGISTRATION_STORAGE"]

class _QuietInvalidUIDs(logging.Filter):
    """Drop pydicom's "Invalid value for VR UI" log records while this thread builds a REG (reported once instead)."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(self.local, "on", False) and "Invalid value for VR UI" in record.getMessage())


_QUIET = _QuietInvalidUIDs()
logging.getLogger("pydicom").addFilter(_QUIET)

#: SOP Class UID of Spatial Registration Storage.
SPATIAL_REGISTRATION_STORAGE = str(SpatialRegistrationStorage)

# SOP classes of the images a REG may reference, by modality (RT Image when unknown).
_SOP_CLASS_BY_MODALITY = {
    "RTIMAGE": str(RTImageStorage),
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "RF": "1.2.840.10008.5.1.4.1.1.12.2",
}
# DICOM CID 7100 (Registration Method): the images' content aligned them.
_REGISTRATION_TYPE = ("125024", "DCM", "Image Content-based Alignment")


def rigid_motion(result_or_couch: RegistrationResult | CouchShift, frame: Image | None = None) -> tuple[
        np.ndarray, np.ndarray]:
    """Return the patient's rigid motion ``(R3, D)`` in couch axes (mm), about the isocentre.

    Parameters
    ----------
    result_or_couch : RegistrationResult or CouchShift
    frame : Image
        The registered frame (its gantry, couch and receptor angles); needed for
        a 2-D result.

    Returns
    -------
    R3 : numpy.ndarray
        3x3 rotation.
    D : numpy.ndarray
        Translation (lateral, longitudinal, vertical).

    Raises
    ------
    GeometryError
        A 2-D result without a frame or without a gantry angle.
    """
    if isinstance(result_or_couch, CouchShift):
        angles = result_or_couch.rotation_deg
        pitch, roll, yaw = (float(angles.get(k) or 0.0) for k in ("pitch", "roll", "yaw"))
        rotation = _axis_rotation(np.eye(3)[2], yaw) @ _axis_rotation(np.eye(3)[1], roll) @ _axis_rotation(
            np.eye(3)[0], pitch)
        return rotation, result_or_couch.displacement_mm
    if not isinstance(result_or_couch, RegistrationResult):
        raise PortalignError(f"expected a RegistrationResult or a CouchShift, got {type(result_or_couch).__name__}")
    if frame is None:
        raise GeometryError("a 2-D result needs its frame image to be placed in 3-D (gantry angle)")
    info = frame.info
    if info.gantry_deg is None:
        raise GeometryError(f"{info.source}: no gantry angle; the 2-D registration cannot be placed in 3-D")
    ex, ey, beam = image_axes(info.gantry_deg, couch_deg=info.couch_deg or 0.0,
                              image_rotation_deg=float(info.extra.get("receptor_angle_deg") or 0.0))
    r = result_or_couch
    if r.dx_mm is None or r.dy_mm is None:
        raise PortalignError(f"{info.source}: the registration measured no shift ({r.reason}); there is no "
                             "registration to write")
    # a rotation that was not estimated contributes none (the translation was found with it held at 0)
    return _axis_rotation(beam, r.rotation_deg or 0.0), r.dx_mm * ex + r.dy_mm * ey


def registration_matrix(
    result_or_couch: RegistrationResult | CouchShift,
    frame: Image | None = None,
    *,
    patient_position: str,
    isocentre_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Return the 4x4 matrix taking frame patient coordinates to reference patient coordinates.

    Parameters
    ----------
    result_or_couch : RegistrationResult or CouchShift
    frame : Image, optional
        The frame, for a 2-D result.
    patient_position : str
        ``HFS``, ``FFS``, ``HFP`` or ``FFP``.
    isocentre_mm : sequence of 3 float
        Planned isocentre in DICOM patient coordinates.

    Returns
    -------
    numpy.ndarray
        ``[[Q, t], [0, 0, 0, 1]]`` with ``Q = M^T R3^T M`` and
        ``t = iso - Q iso - M^T R3^T D`` (module notes).
    """
    m = patient_matrix(patient_position)
    iso = np.asarray(isocentre_mm, dtype=np.float64)
    if iso.shape != (3,) or not np.isfinite(iso).all():
        raise GeometryError(f"isocentre_mm must be three finite numbers, got {isocentre_mm!r}")
    rotation, translation = rigid_motion(result_or_couch, frame)
    q = m.T @ rotation.T @ m
    out = np.eye(4)
    out[:3, :3] = q
    out[:3, 3] = iso - q @ iso - m.T @ rotation.T @ translation
    return out


def write_spatial_registration(
    path: str | os.PathLike[str] | BinaryIO | None,
    result_or_couch: RegistrationResult | CouchShift,
    reference_image: Image | Sequence[Image],
    frame_image: Image | Sequence[Image],
    *,
    patient_position: str | None = None,
    isocentre_mm: Sequence[float] | None = None,
    study_instance_uid: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    series_description: str = "portalign registration",
    content_label: str = "PORTALIGN",
    operator_name: str = "",
    when: _dt.datetime | None = None,
) -> Dataset:
    """Write a DICOM Spatial Registration object for a 2-D result or a couch correction.

    Parameters
    ----------
    path : str, os.PathLike, binary file object or None
        Where to write (Explicit VR Little Endian, with file meta information);
        ``None`` only builds the dataset.
    result_or_couch : RegistrationResult or CouchShift
    reference_image, frame_image : Image or sequence of Image
        The images that were registered (one each for a 2-D result; all
        references and all frames for a couch correction). Each must carry its
        ``sop_instance_uid`` (read from DICOM).
    patient_position : str, optional
        Overrides the images' ``PatientPosition`` (said in the dataset's ``portalign_warnings`` when they
        record another).
    isocentre_mm : sequence of 3 float, optional
        Planned isocentre in patient coordinates; else ``info.extra`` (see the
        module notes), else the origin (a warning).
    study_instance_uid, patient_id, patient_name : str, optional
        Else ``info.extra``; a new study UID and empty patient fields otherwise.
    series_description, content_label, operator_name : str
        Descriptive attributes.
    when : datetime, optional
        Content and instance creation time (now by default).

    Returns
    -------
    pydicom.Dataset
        The object written. ``ds.portalign_warnings`` lists what had to be assumed.

    Raises
    ------
    GeometryError
        Unknown patient position, no gantry angle (2-D result).
    PortalignError
        An image without a SOP Instance UID, or inputs of the wrong kind.
    """
    references = _images(reference_image, "reference_image")
    frames = _images(frame_image, "frame_image")
    if isinstance(result_or_couch, RegistrationResult) and len(frames) != 1:
        raise PortalignError(f"a 2-D result registers one frame; got {len(frames)} frame images")
    position = check_registration_inputs(references, frames, patient_position)
    warnings: list[str] = []
    everything = [*frames, *references]
    recorded = (_first(everything, lambda i: i.info.patient_position) or "").strip().upper()
    if patient_position and recorded and position != recorded:
        # the flag wins (a wrong header), but never silently: it reverses the translation's lateral and longitudinal
        # signs between head-first and feet-first
        warnings.append(f"patient position {position} as given (patient_position=), not the images' "
                        f"PatientPosition {recorded}")
    if isocentre_mm is None:
        isocentre_mm = _first(everything, lambda i: i.info.extra.get("isocentre_mm")
                              or i.info.extra.get("isocenter_position_mm"))
        if isocentre_mm is None:
            isocentre_mm = (0.0, 0.0, 0.0)
            warnings.append("isocentre position unknown: taken as the patient-coordinate origin "
                            "(rotations are about that point)")
    matrix = registration_matrix(result_or_couch, frames[0], patient_position=position, isocentre_mm=isocentre_mm)
    if isinstance(result_or_couch, RegistrationResult) and result_or_couch.rotation_deg is None:
        warnings.append("in-plane rotation not estimated: the matrix carries the translation only")
    if isinstance(result_or_couch, CouchShift):
        held = [axis for axis in ("pitch", "roll", "yaw") if result_or_couch.rotation_deg.get(axis) is None]
        if held:
            warnings.append(f"{', '.join(held)} not estimated: the matrix carries no rotation about "
                            f"{'that axis' if len(held) == 1 else 'those axes'}")

    study = study_instance_uid or _first(everything, lambda i: i.info.extra.get("study_instance_uid"))
    if not study:
        study = generate_uid()
        warnings.append("StudyInstanceUID of the images unknown: the REG object starts a new study")
    elif not _valid_uid(study):
        warnings.append(f"StudyInstanceUID {str(study)[:40]!r} of the images is not a valid DICOM UID: the REG object "
                        "starts a new study")
        study = generate_uid()
    pid = patient_id if patient_id is not None else _first(everything, lambda i: i.info.extra.get("patient_id"))
    pname = patient_name if patient_name is not None else _first(everything,
                                                                  lambda i: i.info.extra.get("patient_name"))
    if not pid:
        warnings.append("PatientID of the images unknown: left empty")

    now = when or _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    reference_for = references[0].info.frame_of_reference_uid or generate_uid()
    frame_for = frames[0].info.frame_of_reference_uid or reference_for
    if not references[0].info.frame_of_reference_uid:
        warnings.append("the reference image has no FrameOfReferenceUID: a new one was made")
    elif not _valid_uid(reference_for):
        warnings.append(f"the reference image's FrameOfReferenceUID {reference_for[:40]!r} is not a valid DICOM UID: "
                        "a new one was made")
        reference_for = generate_uid()
    if not _valid_uid(frame_for):
        warnings.append(f"the frame's FrameOfReferenceUID {frame_for[:40]!r} is not a valid DICOM UID: "
                        "the reference's is used")
        frame_for = reference_for
    # the images are referenced by the UIDs they carry, valid or not (a REG must point at them): say so once
    odd = sorted({uid for image in everything for uid in (image.info.sop_instance_uid, image.info.series_instance_uid)
                  if uid and not _valid_uid(uid)})
    if odd:
        warnings.append(f"{len(odd)} UID(s) of the images are not valid DICOM UIDs (e.g. {odd[0][:40]!r}); they are "
                        "referenced as they are")

    # pydicom warns and logs on every invalid UID it is given; the images' own are reported once above
    _QUIET.local.on = True
    try:
        with _warnings.catch_warnings():
            _warnings.filterwarnings("ignore", message=".*Invalid value for VR UI", category=UserWarning)
            ds = _build(result_or_couch, references, frames, everything, matrix, warnings, study, pid, pname, date,
                        time, reference_for, frame_for, series_description, content_label, operator_name)
            if path is not None:
                target = Path(path) if isinstance(path, (str, os.PathLike)) else path
                write_dataset(target, ds)
    finally:
        _QUIET.local.on = False
    object.__setattr__(ds, "portalign_warnings", warnings)
    return ds


#: A DICOM UID (PS3.5 9.1): numeric components without leading zeros, separated by dots; 64 characters at most.
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _valid_uid(value: Any) -> bool:
    """Whether ``value`` is a valid DICOM UID (checked here: pydicom's ``UID()`` itself warns on an invalid one)."""
    text = str(value)
    return len(text) <= 64 and _UID_PATTERN.fullmatch(text) is not None


def _build(result_or_couch: RegistrationResult | CouchShift, references: list[Image], frames: list[Image],
           everything: list[Image], matrix: np.ndarray, warnings: list[str], study: str, pid: Any, pname: Any,
           date: str, time: str, reference_for: str, frame_for: str, series_description: str, content_label: str,
           operator_name: str) -> Dataset:
    """Return the REG dataset (file meta included) for :func:`write_spatial_registration`."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SpatialRegistrationStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient and study (type 2 attributes present, possibly empty).
    ds.PatientName = pname or ""
    ds.PatientID = pid or ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # Series and equipment.
    ds.Modality = "REG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.Manufacturer = "portalign"
    ds.ManufacturerModelName = "portalign"
    ds.DeviceSerialNumber = "portalign"
    ds.SoftwareVersions = __version__
    ds.FrameOfReferenceUID = reference_for
    ds.PositionReferenceIndicator = ""
    # Spatial Registration module.
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.ContentLabel = content_label
    ds.ContentDescription = _description(result_or_couch, warnings)[:64]
    ds.ContentCreatorName = operator_name
    ds.RegistrationSequence = DicomSequence([
        _registration_item(reference_for, references, np.eye(4), "reference: identity"),
        _registration_item(frame_for, frames, matrix, _comment(result_or_couch)),
    ])
    ds.ReferencedSeriesSequence = _series_references(everything)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PORTALIGN_{__version__}"[:16]
    ds.file_meta = meta
    return ds


def _registration_item(frame_of_reference: str, images: list[Image], matrix: np.ndarray, comment: str) -> Dataset:
    item = Dataset()
    item.FrameOfReferenceUID = frame_of_reference
    item.ReferencedImageSequence = DicomSequence([_image_reference(image) for image in images])
    matrix_item = Dataset()
    matrix_item.FrameOfReferenceTransformationMatrixType = "RIGID"
    matrix_item.FrameOfReferenceTransformationMatrix = [_ds(v) for v in matrix.ravel()]
    registration = Dataset()
    registration.MatrixSequence = DicomSequence([matrix_item])
    registration.FrameOfReferenceTransformationComment = comment[:64]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _REGISTRATION_TYPE
    registration.RegistrationTypeCodeSequence = DicomSequence([code])
    item.MatrixRegistrationSequence = DicomSequence([registration])
    return item


def _image_reference(image: Image) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = _sop_class(image)
    ref.ReferencedSOPInstanceUID = image.info.sop_instance_uid
    if int(image.info.extra.get("number_of_frames", 1) or 1) > 1:
        ref.ReferencedFrameNumber = int(image.info.frame_index) + 1
    return ref


def _series_references(images: list[Image]) -> DicomSequence:
    """Build the Common Instance Reference module: every referenced instance, grouped by series."""
    by_series: dict[str, dict[str, str]] = {}
    for image in images:
        series = image.info.series_instance_uid
        if series:
            by_series.setdefault(series, {})[image.info.sop_instance_uid] = _sop_class(image)
    items = []
    for series, instances in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series
        refs = []
        for uid, sop_class in instances.items():
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = uid
            refs.append(ref)
        item.ReferencedInstanceSequence = DicomSequence(refs)
        items.append(item)
    return DicomSequence(items)


def _sop_class(image: Image) -> str:
    explicit = image.info.extra.get("sop_class_uid")
    if explicit:
        return str(explicit)
    return _SOP_CLASS_BY_MODALITY.get(image.info.modality.upper(), str(RTImageStorage))


def _comment(result_or_couch: RegistrationResult | CouchShift) -> str:
    # FrameOfReferenceTransformationComment is LO: 64 characters at most.
    if isinstance(result_or_couch, CouchShift):
        c = result_or_couch
        return f"portalign couch lat {c.lateral_mm:+.2f} lng {c.longitudinal_mm:+.2f} vrt {c.vertical_mm:+.2f} mm"
    r = result_or_couch
    rotation = "not estimated" if r.rotation_deg is None else f"{r.rotation_deg:+.2f} deg"
    return f"portalign 2-D dx {r.dx_mm:+.2f} dy {r.dy_mm:+.2f} mm rot {rotation}"


def _description(result_or_couch: RegistrationResult | CouchShift, warnings: list[str]) -> str:
    kind = "couch correction" if isinstance(result_or_couch, CouchShift) else "2-D portal registration"
    return f"portalign {kind}" + (" (with assumptions)" if warnings else "")


def check_registration_inputs(
    reference_image: Image | Sequence[Image],
    frame_image: Image | Sequence[Image],
    patient_position: str | None = None,
) -> str:
    """Check that a REG object can be written for these images; return the patient position it would use.

    What :func:`write_spatial_registration` needs of its images before any registration is made: a SOP Instance
    UID on every image (the REG references each) and a patient position (``patient_position``, else the images'
    ``PatientPosition``). The command line calls it before it registers, so that ``--reg`` / ``--reg-out`` fails at
    once rather than after a result was printed.

    Parameters
    ----------
    reference_image, frame_image : Image or sequence of Image
    patient_position : str, optional
        ``HFS``, ``FFS``, ``HFP`` or ``FFP``; overrides the images'.

    Returns
    -------
    str
        The patient position, upper case.

    Raises
    ------
    PortalignError
        An image without a SOP Instance UID.
    GeometryError
        No patient position given or recorded.
    """
    references = _images(reference_image, "reference_image")
    frames = _images(frame_image, "frame_image")
    for image, role in [*((i, "reference") for i in references), *((i, "frame") for i in frames)]:
        if not image.info.sop_instance_uid:
            raise PortalignError(f"{image.info.source}: the {role} image has no SOP Instance UID, so a REG object "
                                 "cannot reference it; register images read from DICOM files")
    recorded = (_first([*frames, *references], lambda i: i.info.patient_position) or "").strip().upper()
    position = (patient_position or recorded).strip().upper()
    if not position:
        raise GeometryError(f"{frames[0].info.source}: no PatientPosition in the images; pass patient_position= "
                            "(HFS, FFS, HFP or FFP) to place the registration in patient coordinates")
    return position


def _images(value: Image | Sequence[Image], name: str) -> list[Image]:
    images = [value] if isinstance(value, Image) else list(value)
    if not images or not all(isinstance(i, Image) for i in images):
        raise PortalignError(f"{name} must be an Image or a non-empty sequence of Images")
    return images


def _first(images: list[Image], get: Any) -> Any:
    for image in images:
        value = get(image)
        if value is not None and value != "":
            return value
    return None


def _axis_rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` about the unit vector ``axis`` (Rodrigues)."""
    a = math.radians(float(angle_deg))
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(a) * k + (1.0 - math.cos(a)) * (k @ k)


def _ds(value: float) -> DSfloat:
    # DS values are at most 16 characters; tiny round-off becomes an exact 0.
    number = float(value)
    if abs(number) < 1e-12:
        number = 0.0
    return DSfloat(number, auto_format=True)
