"""Read RT Images (portal images, DRRs) from DICOM into clean :class:`~portalign.image.Image` objects.

This module is the only place in portalign that reads DICOM tags. Every quirk of
real files is resolved here, so that everything downstream sees pixels, a pixel
spacing at the isocentre plane and the beam axis in pixels.

Geometry conventions (DICOM PS3.3 C.8.8.2, IEC 61217)
-----------------------------------------------------
Pixel spacing
    ``ImagePlanePixelSpacing`` (3002,0011) is ``[row spacing, column spacing]`` in mm
    at the imager plane. The isocentre-plane spacing is that value times
    ``RadiationMachineSAD / RTImageSID`` (the magnification of an object at the
    isocentre is SID / SAD). ``PixelSpacing`` is used when the RT tag is absent. An
    explicit ``pixel_spacing_mm=`` is taken as already at the isocentre and wins.
Beam axis
    ``RTImagePosition`` (3002,0012) is the ``(x, y)`` position in mm, at the imager
    plane, of the centre of the first transmitted pixel, in the RT Image plane
    coordinate system: x to the right along a row, y *up*. With the default
    ``RTImageOrientation`` ``[1, 0, 0, 0, -1, 0]`` rows run towards -y, so the beam
    axis (plane origin) is at ``col = -x / col_spacing`` and ``row = +y / row_spacing``
    (other orientations are solved as a 2x2 system).
    Without a position the receptor translation ``XRayImageReceptorTranslation``
    (3002,000D) is used: it is the position of the receptor origin (taken to be the
    centre of the pixel array) in the IEC GANTRY system, whose x and y are parallel
    to the RT Image plane's x and y. A receptor moved by ``+t`` mm therefore sees the
    beam axis at ``-t`` in its own frame: ``col = centre_col - tx / col_spacing`` and,
    y being up, ``row = centre_row + ty / row_spacing``. Without either, the image
    centre. Real Varian files cannot discriminate the sign (TrueBeam translations are
    below 0.03 mm and come with an ``RTImagePosition``; aS500 files have ``(0, 0)``),
    so the sign follows the standard's definition.
Planned field aperture
    Jaw positions in the RT Image ``ExposureSequence`` are in mm at the isocentre in
    the IEC BEAM LIMITING DEVICE system (``X1 < X2`` along x_b, ``Y1 < Y2`` along y_b,
    +y_b towards the gantry). They are stored unchanged as
    ``extra["planned_jaws_iec_mm"]``. ``extra["planned_jaws_mm"]`` gives the same
    rectangle with the axis directions of the portalign image frame (x along
    columns, y along rows, i.e. *down*), before collimator rotation:
    ``x1 = X1, x2 = X2, y1 = -Y2, y2 = -Y1``; it is the field in the image when the
    collimator is at 0. ``extra["planned_field_corners_mm"]`` are the four corners in
    the image frame with the collimator rotation applied (IEC 61217: a positive
    collimator angle turns the field counter-clockwise in the beam's eye view, in
    which the RT Image is seen with y up).
Intensity
    Rescale slope/intercept are applied first. Portal images are then made
    "higher = more radiation reached the imager": ``PixelIntensityRelationshipSign``
    (0028,1041) of -1 inverts the values as ``hi - v``, ``hi`` being the largest value
    the stored bits can represent after rescaling (one offset for every frame of a
    file, values stay >= 0). A portal image whose rescaled values are all <= 0 and
    that has no sign tag (Varian aS500/IDU20 files: ``RescaleIntercept -16384`` and
    stored values ``16383 - signal``) is negated. ``PhotometricInterpretation`` is a
    display instruction and is ignored (``PALETTE COLOR``, whose values index a colour table, is refused).
    ``invert=True/False`` overrides all of this.
    What was done is recorded in ``extra["intensity_sign_applied"]`` (``+1`` kept,
    ``-1`` inverted) and ``extra["intensity_sign_reason"]``.

Validation (no file can break the reader)
-----------------------------------------
Every tag that decides geometry, size or intensity is checked for value
multiplicity, finiteness and a physical range before it is used, and a tag that
is present but unusable is refused with a one-line :class:`GeometryError` or
:class:`PortalImageError` naming the file, the tag and the fix; it is never
dropped silently nor replaced by a default. A tag that is absent (or empty) is
unknown: ``None``, or the documented fallback. The ranges:

* ``RTImageSID``, ``RadiationMachineSAD`` (and the CR/DX distances): one value,
  100-10,000 mm; their ratio SID/SAD (the magnification) 0.95-5 (an imager lies at or beyond the
  isocentre; a DRR's plane at it: 1, and 0.999 is seen in real exports). Override with
  ``sid_mm=`` / ``sad_mm=``; an override replaces the tag, which is then not read.
* ``ImagePlanePixelSpacing`` / ``PixelSpacing`` / ``ImagerPixelSpacing``: one or
  two values, each 0.01-10 mm; the spacing at the isocentre 0.005-10 mm. Override
  with ``pixel_spacing_mm=``.
* ``RTImagePosition``: two values, ``XRayImageReceptorTranslation``: two or three
  (the standard has three), ``RTImageOrientation``: six; all finite, positions
  within +-10,000 mm, direction cosines within +-1.
* ``GantryAngle``, ``BeamLimitingDeviceAngle``, ``PatientSupportAngle``,
  ``XRayImageReceptorAngle`` (top level and ``ExposureSequence`` items): one
  finite value within +-360 deg. An angle that is present but invalid (``nan``,
  text, several values, out of range) is an error, not ``None`` and never 0: a
  wrong angle would silently mismatch views and couch corrections; ``None``
  means only that the file does not say.
* ``Rows``, ``Columns`` 1-65,535, ``NumberOfFrames`` >= 1, ``SamplesPerPixel`` 1,
  ``BitsAllocated`` 1, 8, 16, 32 or 64, ``1 <= BitsStored <= BitsAllocated``,
  ``HighBit`` below ``BitsAllocated``,
  ``PixelRepresentation`` 0 or 1, ``RescaleSlope`` finite and not 0,
  ``RescaleIntercept`` finite, ``PixelIntensityRelationshipSign`` +1 or -1.
* The transfer syntax must be a DICOM transfer syntax.

Allocation is bounded by the file before anything is decoded: uncompressed
pixel data must hold ``Rows x Columns x NumberOfFrames x BitsAllocated / 8``
bytes (so the decoded array is never larger than the data read; more, beyond
the byte that pads it to an even length, is refused too: the size tags then
do not describe the pixels stored), and compressed pixel data may expand at most
:data:`MAX_COMPRESSION_RATIO` times (at least one fragment per frame).
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RTImageStorage,
)
from pydicom.valuerep import PersonName

from ._pydicom_compat import apply_modality_lut, decode_pixels, decoder_available, read_encoding
from .errors import GeometryError, ImagePathError, PortalImageError
from .image import FIRST_OF_FRAMES, Image, ImageInfo, check_pixels

__all__ = ["DicomSource", "tag_label", "read_dataset", "read_plan_isocenter", "read_rt_image", "read_rt_image_frames", "describe",
           "replaced_tags"]

DicomSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Dataset
"""What the readers accept: a path, the bytes of a file, a binary file object or a dataset."""

# Projection images other than RT Images: accepted only when their spacing at the
# isocentre can be known (ImagerPixelSpacing + SID + SAD, or pixel_spacing_mm=).
_PROJECTION_MODALITIES = frozenset({"CR", "DX", "XA", "RF"})
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
# ImageType value 3 (C.8.8.2.1): these say explicitly that the image is not a DRR.
_NON_DRR_IMAGE_TYPES = frozenset({"PORTAL", "SIMULATOR", "RADIOGRAPH", "BLANK", "FLUENCE"})

#: Physical ranges of the geometry tags and of the keyword overrides (see the module notes).
DISTANCE_RANGE_MM = (100.0, 10000.0)
MAGNIFICATION_RANGE = (0.95, 5.0)
SPACING_RANGE_MM = (0.01, 10.0)
ISOCENTRE_SPACING_RANGE_MM = (0.005, 10.0)
POSITION_LIMIT_MM = 10000.0
ANGLE_LIMIT_DEG = 360.0
#: Largest Rows / Columns (the US value range).
MAX_SIDE = 65535
#: Most pixels a frame may have: an EPID has up to a few million (aS1200: 1280 x 1280), a port film digitised at
#: 0.1 mm about 15 million. A fuzz campaign's consistent 16000 x 16000 8-bit file (256 MB) took 4 GB to register: the
#: float copies and pyramid of a frame are some 16 bytes a pixel.
MAX_FRAME_PIXELS = 40_000_000
#: Fewest pixels along either side of a frame (``Image`` refuses fewer: nothing to register).
MIN_SIDE = 8
#: Most frames read from one file at once (:func:`read_rt_image_frames`): 11 minutes of cine at 30 frames a second.
MAX_FRAMES = 20_000
#: Compressed pixel data (and a deflated dataset) may decode to at most this many times its own size. Lossless
#: compression of a detector's noisy 16-bit pixels gains 2-4 times; 50 leaves room for flat images and refuses a
#: few kilobytes that claim hundreds of megabytes.
MAX_COMPRESSION_RATIO = 50
#: A deflated dataset may inflate, and compressed pixel data decode, to this many bytes whatever its ratio (a
#: 2048 x 2048 image of 32-bit pixels): lossy JPEG 2000 of real portal images reached 60-65 times (a fourth fuzz
#: campaign, refused then as "the image size tags are wrong").
_INFLATE_FLOOR_BYTES = 16 << 20
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: DICOM tags named in error messages.
_TAGS = {
    "ApplicatorOpening": "(300A,0433)",
    "ApplicatorOpeningX": "(300A,0434)",
    "ApplicatorOpeningY": "(300A,0435)",
    "RTImageSID": "(3002,0026)",
    "RadiationMachineSAD": "(3002,0022)",
    "DistanceSourceToDetector": "(0018,1110)",
    "DistanceSourceToIsocenter": "(0018,9402)",
    "ImagePlanePixelSpacing": "(3002,0011)",
    "PixelSpacing": "(0028,0030)",
    "PhotometricInterpretation": "(0028,0004)",
    "ImagerPixelSpacing": "(0018,1164)",
    "RTImagePosition": "(3002,0012)",
    "RTImageOrientation": "(3002,0010)",
    "XRayImageReceptorTranslation": "(3002,000D)",
    "XRayImageReceptorAngle": "(3002,000E)",
    "TableTopEccentricAngle": "(300A,0125)",
    "GantryAngle": "(300A,011E)",
    "BeamLimitingDeviceAngle": "(300A,0120)",
    "PatientSupportAngle": "(300A,0122)",
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
    "NumberOfFrames": "(0028,0008)",
    "SamplesPerPixel": "(0028,0002)",
    "BitsAllocated": "(0028,0100)",
    "BitsStored": "(0028,0101)",
    "HighBit": "(0028,0102)",
    "PixelRepresentation": "(0028,0103)",
    "RescaleSlope": "(0028,1053)",
    "RescaleIntercept": "(0028,1052)",
    "PixelIntensityRelationshipSign": "(0028,1041)",
    "LeafJawPositions": "(300A,011C)",
    "TransferSyntaxUID": "(0002,0010)",
}


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def read_dataset(source: DicomSource, *, require_pixels: bool = False) -> Dataset:
    """Read a DICOM file robustly and return its dataset.

    Files without a preamble or file meta information are read with ``force=True``;
    a missing (0002,0010) TransferSyntaxUID is filled in from the encoding pydicom
    detected while reading (Implicit VR Little Endian for the pylinac/MOSAIQ files
    that lack it), so that the pixel data can be decoded. A dataset passed in is
    returned as the same object, with the transfer syntax filled in if it was missing.

    Parameters
    ----------
    source : str, os.PathLike, bytes, file-like or pydicom.Dataset
        The file to read.
    require_pixels : bool
        Raise when the dataset has no pixel data (RT Plan, RT Struct...).

    Returns
    -------
    pydicom.Dataset

    Raises
    ------
    PortalImageError
        ``"<name>: not a DICOM file"``, ``"<name>: no such file"``,
        ``"<name>: has no pixel data (Modality RTPLAN)"``...
    """
    name = _source_name(source)
    with _recording_warnings():
        return _read_dataset(source, name, require_pixels=require_pixels)


def read_plan_isocenter(source: DicomSource, *, beam_number: int | None = None) -> tuple[float, float, float]:
    """Return the planned isocentre ``(x, y, z)`` (DICOM patient coordinates, mm) of an RT Plan.

    The isocentre is the ``IsocenterPosition`` of the first control point of
    each beam (``BeamSequence``; ``IonBeamSequence`` for ion plans).

    Parameters
    ----------
    source : DicomSource
        The RT Plan.
    beam_number : int, optional
        Take this beam's isocentre (``BeamNumber``); without it every beam must
        share one isocentre.

    Returns
    -------
    tuple of float

    Raises
    ------
    PortalImageError
        Not an RT Plan, no beam (or not the one asked for), a beam without an
        isocentre, or beams with different isocentres and no ``beam_number``.
    """
    name = _source_name(source)
    ds = read_dataset(source)
    if _text(ds, "Modality") != "RTPLAN":
        raise PortalImageError(f"{name}: not an RT Plan (Modality {_text(ds, 'Modality') or 'missing'}); "
                               "pass the plan the frames were taken with, or --isocenter-mm")
    beams = _sequence(ds, "BeamSequence") or _sequence(ds, "IonBeamSequence")
    if beam_number is not None:
        beams = [b for b in beams if _int(b, "BeamNumber") == int(beam_number)]
    if not beams:
        which = f"no beam number {beam_number}" if beam_number is not None else "no BeamSequence"
        raise PortalImageError(f"{name}: the RT Plan has {which}; pass --isocenter-mm")
    found: list[tuple[float, float, float]] = []
    for beam in beams:
        points = _sequence(beam, "ControlPointSequence") or _sequence(beam, "IonControlPointSequence")
        position = _floats(points[0], "IsocenterPosition", minimum=3) if points else None
        if position is None:
            raise PortalImageError(f"{name}: beam {_int(beam, 'BeamNumber')} has no IsocenterPosition in its first "
                                   "control point; pass --isocenter-mm")
        found.append((float(position[0]), float(position[1]), float(position[2])))
    if any(max(abs(a - b) for a, b in zip(p, found[0], strict=True)) > 0.01 for p in found[1:]):
        raise PortalImageError(f"{name}: the plan's beams have {len(set(found))} different isocentres; "
                               "pass beam_number= (--beam-number) or --isocenter-mm")
    return found[0]


def read_rt_image(
    source: DicomSource,
    *,
    frame: int | None = None,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    sid_mm: float | None = None,
    sad_mm: float | None = None,
    invert: bool | None = None,
) -> Image:
    """Read one RT Image (portal image or DRR) as an :class:`Image`.

    Parameters
    ----------
    source : str, os.PathLike, bytes, file-like or pydicom.Dataset
        An RT Image (Modality RTIMAGE). CR/DX/XA/RF projection images are accepted
        when their spacing at the isocentre can be known (``ImagerPixelSpacing``,
        SID and SAD from tags or keywords, or ``pixel_spacing_mm``).
    frame : int, optional
        0-based frame of a multi-frame image; frame 0 by default. Use
        :func:`read_rt_image_frames` to read every frame of a cine file.
    pixel_spacing_mm : float or (float, float), optional
        Pixel spacing *at the isocentre plane* (one number, or ``(row, col)``);
        overrides the spacing tags and makes SID/SAD optional.
    sid_mm, sad_mm : float, optional
        Source-to-imager and source-to-axis distances; override ``RTImageSID`` and
        ``RadiationMachineSAD`` (and supply them when the file lacks them).
    invert : bool, optional
        Force (``True``) or forbid (``False``) inverting the intensities; by default
        the DICOM intensity sign decides (see the module notes).

    Returns
    -------
    Image
        Float32 pixels, spacing in mm at the isocentre plane, beam axis in pixels,
        and the acquisition facts in ``info`` (planned aperture, plan references and
        the decisions taken in ``info.extra``).

    Raises
    ------
    PortalImageError
        Unreadable file, no pixel data, not a projection image, undecodable
        (compressed without a plugin) or unusable (NaN, constant) pixels.
    GeometryError
        Spacing, SID or SAD unknown and not supplied, or not positive.
    """
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, (int, np.integer))):
        raise PortalImageError(f"{_source_name(source)}: frame must be an integer, got {frame!r}")
    options = _Options(pixel_spacing_mm=pixel_spacing_mm, sid_mm=sid_mm, sad_mm=sad_mm, invert=invert)
    image = _load(source, options, frame=0 if frame is None else int(frame), every_frame=False)[0]
    held = image.info.extra.get("number_of_frames", 1)
    if frame is None and isinstance(held, int) and held > 1:
        # frame 0 of a cine taken because none was named: the registration says so (a new user's 2-frame file was
        # registered as its frame 0 by the API, a batch, a stream and the CLI without a word)
        image.info.extra[FIRST_OF_FRAMES] = held
    return image


def read_rt_image_frames(
    source: DicomSource,
    *,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    sid_mm: float | None = None,
    sad_mm: float | None = None,
    invert: bool | None = None,
) -> list[Image]:
    """Read every frame of an RT Image (a cine EPID acquisition) as a list of images.

    Parameters
    ----------
    source : str, os.PathLike, bytes, file-like or pydicom.Dataset
        A single- or multi-frame RT Image.
    pixel_spacing_mm, sid_mm, sad_mm, invert
        As for :func:`read_rt_image`.

    Returns
    -------
    list of Image
        One image per frame, ``info.frame_index`` set (0-based). Gantry angle and
        planned aperture come from the ``ExposureSequence`` item that references
        the frame, when there is one. One intensity decision applies to all frames.
    """
    options = _Options(pixel_spacing_mm=pixel_spacing_mm, sid_mm=sid_mm, sad_mm=sad_mm, invert=invert)
    return _load(source, options, frame=None, every_frame=True)


def describe(image_or_path: Image | DicomSource, **options: Any) -> dict[str, Any]:
    """Summarise an image's geometry and provenance as a JSON-ready dict.

    Used by ``portalign info FILE --json``.

    Parameters
    ----------
    image_or_path : Image or DICOM source
        An image already read, or anything :func:`read_rt_image` accepts.
    **options
        Passed to :func:`read_rt_image` when a file is given (``sid_mm=``...).

    Returns
    -------
    dict
        ``source, modality, kind, rows, cols, frames, frame_index,
        imager_spacing_mm, isocentre_spacing_mm, sid_mm, sad_mm, magnification,
        beam_axis_px, beam_axis_source, gantry_deg, collimator_deg, couch_deg,
        patient_position, acquisition_date, kvp, sop_instance_uid, series_instance_uid,
        frame_of_reference_uid, referenced_rt_plan_uid, referenced_beam_number,
        rt_image_label, manufacturer, model, planned_jaws_mm, planned_jaws_iec_mm,
        planned_field_corners_mm, planned_mlc, planned_applicator, transfer_syntax,
        transfer_syntax_name, transfer_syntax_assumed, intensity_sign_applied,
        intensity_sign_reason, rescale_slope, rescale_intercept,
        photometric_interpretation, notes, dicom_warnings``; lists instead of
        tuples, ``None`` where unknown.
    """
    image = image_or_path if isinstance(image_or_path, Image) else read_rt_image(image_or_path, **options)
    info = image.info
    extra = info.extra
    sid, sad = info.sid_mm, info.sad_mm
    return {
        "source": info.source,
        "modality": info.modality,
        "kind": info.kind,
        "rows": int(image.shape[0]),
        "cols": int(image.shape[1]),
        "frames": int(extra.get("number_of_frames", 1)),
        "frame_index": int(info.frame_index),
        "imager_spacing_mm": _jsonable(info.imager_spacing_mm),
        "isocentre_spacing_mm": _jsonable(image.spacing_mm),
        "sid_mm": sid,
        "sad_mm": sad,
        "magnification": (sid / sad) if sid and sad else None,
        "beam_axis_px": _jsonable(image.beam_axis_px),
        "beam_axis_source": extra.get("beam_axis_source"),
        "gantry_deg": info.gantry_deg,
        "collimator_deg": info.collimator_deg,
        "couch_deg": info.couch_deg,
        "patient_position": info.patient_position or None,
        "acquisition_date": extra.get("acquisition_date"),
        "kvp": extra.get("kvp"),
        "sop_instance_uid": info.sop_instance_uid or None,
        "series_instance_uid": info.series_instance_uid or None,
        "frame_of_reference_uid": info.frame_of_reference_uid or None,
        "referenced_rt_plan_uid": extra.get("referenced_rt_plan_uid"),
        "referenced_beam_number": extra.get("referenced_beam_number"),
        "rt_image_label": extra.get("rt_image_label"),
        "manufacturer": _printable(extra["manufacturer"], 64) if extra.get("manufacturer") else None,
        "model": _printable(extra["model"], 64) if extra.get("model") else None,
        "planned_jaws_mm": _jsonable(extra.get("planned_jaws_mm")),
        "planned_jaws_iec_mm": _jsonable(extra.get("planned_jaws_iec_mm")),
        "planned_field_corners_mm": _jsonable(extra.get("planned_field_corners_mm")),
        "planned_mlc": _jsonable(extra.get("planned_mlc")),
        "planned_applicator": _jsonable(extra.get("planned_applicator")),
        "transfer_syntax": extra.get("transfer_syntax"),
        "transfer_syntax_name": extra.get("transfer_syntax_name"),
        "transfer_syntax_assumed": extra.get("transfer_syntax_assumed"),
        "intensity_sign_applied": extra.get("intensity_sign_applied"),
        "intensity_sign_reason": extra.get("intensity_sign_reason"),
        "rescale_slope": extra.get("rescale_slope"),
        "rescale_intercept": extra.get("rescale_intercept"),
        "photometric_interpretation": extra.get("photometric_interpretation"),
        "notes": list(extra.get("notes", [])),
        "dicom_warnings": list(extra.get("dicom_warnings", [])),
    }


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    pixel_spacing_mm: float | tuple[float, float] | None
    sid_mm: float | None
    sad_mm: float | None
    invert: bool | None


@contextmanager
def _recording_warnings() -> Iterator[list[warnings.WarningMessage]]:
    # pydicom warns about odd values while it parses elements lazily; a loader
    # must not turn a curious header into a crash (tests run with warnings as
    # errors), so the warnings are collected and reported in info.extra instead.
    # catch_warnings is process-wide: a warning raised by another thread during
    # this window is recorded here rather than shown.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _source_name(source: Any) -> str:
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)
        return Path(filename).name if isinstance(filename, str) and filename else "dataset"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        # a file name is printed in one-line messages: control characters (a newline, a terminal escape) escaped
        return _printable(path.name or str(source) or "(empty path)", 200)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return _printable(Path(name).name or name, 200)
    return "<stream>"


#: What a file that is not DICOM at all is told (the two kinds of input the engine reads).
_NOT_DICOM = "not a DICOM file (expected a DICOM RT Image)"


def _read_bytes(source: Any, name: str) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        if not os.fspath(source):
            raise ImagePathError("an empty path was given for a DICOM file; give the file's path")
        path = Path(source)
        shown = _printable(str(path), 200)
        where = "" if shown == name else f" ({shown})"  # the name first, as every message; the path as given too
        try:  # a name too long for the system, a folder without search permission: errors of the path
            exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
        except OSError as exc:
            raise ImagePathError(f"{name}: cannot be read{where} ({exc.strerror or exc}); check the path") from exc
        if not exists:
            if path.is_symlink():  # a link to nothing, or a loop of links: the link is there, its file is not
                raise ImagePathError(f"{name}: is a symbolic link to no file (a broken link, or a loop of links)"
                                     f"{where}; give the file itself")
            raise ImagePathError(f"{name}: no such file{where}; check the path")
        if is_dir:
            raise ImagePathError(f"{name}: is a directory{where}, not a DICOM file")
        if not is_file:  # a FIFO would block for ever, /dev/zero never end
            raise ImagePathError(f"{name}: is not a regular file{where} (a device, pipe or socket); give a DICOM "
                                   "file")
        try:
            with path.open("rb") as handle:
                # no more than the size the file had when opened: a file that grows meanwhile is not read for ever
                size = os.fstat(handle.fileno()).st_size
                return handle.read(size)
        except OSError as exc:
            raise PortalImageError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    read = getattr(source, "read", None)
    if read is None:
        raise PortalImageError(
            f"{name}: cannot read DICOM from a {type(source).__name__}; pass a path, bytes, a binary file or a Dataset"
        )
    try:
        data = read()
    except Exception as exc:
        raise PortalImageError(f"{name}: cannot be read ({_one_line(exc)})") from exc
    if isinstance(data, str):
        raise PortalImageError(f"{name}: file object is open in text mode; open it with 'rb'")
    return bytes(data)


#: Modalities whose files carry an image: without pixel data such a file was most likely cut short.
_IMAGE_MODALITIES = frozenset({"RTIMAGE", "CR", "DX", "RG", "RF", "XA", "OT", "CT", "MR"})


def _read_dataset(source: Any, name: str, *, require_pixels: bool) -> Dataset:
    size = None
    if isinstance(source, Dataset):
        ds = source
    else:
        data = _read_bytes(source, name)
        size = len(data)
        ds = _parse(data, name)
        if isinstance(source, (str, os.PathLike)):
            ds.filename = os.fspath(source)
        elif isinstance(getattr(source, "name", None), str):
            ds.filename = source.name  # keeps the name when the dataset is passed on
    _ensure_transfer_syntax(ds, name)
    if require_pixels and not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        modality = _printable(_text(ds, "Modality"), 32) or "unknown"
        if modality in _IMAGE_MODALITIES and size is not None:
            # an image's header without its pixels: a file cut short (a copy or a transfer that stopped)
            raise PortalImageError(f"{name}: has no pixel data (Modality {modality}): an image file of {size:,} bytes "
                                   "that ends before its pixels, most likely cut short; copy or export it again")
        raise PortalImageError(f"{name}: has no pixel data (Modality {modality})")
    return ds


#: Media Storage Directory Storage (PS3.4): a DICOMDIR's MediaStorageSOPClassUID.
DICOMDIR_CLASS_UID = "1.2.840.10008.1.3.10"


def _media_storage_class(ds: Dataset) -> str:
    """Return the file meta's MediaStorageSOPClassUID (``""`` where there is none or it cannot be read)."""
    try:
        return str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip(" \0")
    except Exception:  # noqa: BLE001 - a file meta that cannot be read: the checks after this say what is wrong
        return ""


def _parse(data: bytes, name: str) -> Dataset:
    if not data:
        raise PortalImageError(f"{name}: is empty (0 bytes); not a DICOM file")
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    _check_sequence_items(data, name)
    _check_inflated_size(data, name)  # reads the file meta group only (microseconds) unless it says deflate
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        # No preamble / file meta (MOSAIQ exports, raw datasets): read what is there.
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            if has_preamble:  # "DICM" at byte 128: a DICOM file, damaged, not something else
                raise PortalImageError(f"{name}: damaged DICOM file (it has the DICM preamble, but its elements cannot "
                                       f"be read: {_one_line(exc)})") from exc
            raise PortalImageError(f"{name}: {_NOT_DICOM}") from exc
    except RecursionError as exc:  # sequences inside sequences, hundreds deep: no RT Image nests so
        raise PortalImageError(f"{name}: damaged DICOM file (its sequences nest deeper than the reader's recursion "
                               "limit; an RT Image nests a few levels)") from exc
    except Exception as exc:
        if has_preamble:
            # pydicom gives the byte offset in hexadecimal without saying so ("file position B13A")
            said = re.sub(r"\bfile position ([0-9A-Fa-f]+)\b", r"byte 0x\1", _one_line(exc))
            raise PortalImageError(f"{name}: damaged DICOM file ({said}); copy or export it again") from exc
        raise PortalImageError(f"{name}: {_NOT_DICOM}") from exc
    if _media_storage_class(ds) == DICOMDIR_CLASS_UID:  # a media directory: it lists files, holds no image
        raise PortalImageError(f"{name}: is a DICOMDIR (a media directory, PS3.10: it lists the files of a disc or "
                               "folder and holds no image); pass one of the RT Image files it lists (in the folders "
                               "beside it)")
    if not _looks_like_dicom(ds):
        if has_preamble:  # "DICM" at byte 128: a DICOM file whose elements stop being readable early
            before = _header_before_pixels(data)
            if before:  # everything up to the pixel data reads: the pixel data is what is damaged
                raise PortalImageError(f"{name}: damaged DICOM file (its {before} elements before the pixel data read, "
                                       "but PixelData (7FE0,0010) cannot: its fragments or their end, the sequence "
                                       "delimiter (FFFE,E0DD), are damaged or missing); copy or export it again")
            raise PortalImageError(f"{name}: damaged DICOM file (it has the DICM preamble, but {_elements_read(ds)}: an "
                                   "element's value representation or length is damaged); copy or export it again")
        raise PortalImageError(f"{name}: {_NOT_DICOM}")
    return ds


def _header_before_pixels(data: bytes) -> int:
    """Return how many elements read when the pixel data is left out (0 where even those do not read)."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        return len(header) if _looks_like_dicom(header) else 0
    except Exception:  # noqa: BLE001 - a header that does not read either: the caller says what did
        return 0


def _elements_read(ds: Dataset) -> str:
    """Say how far a dataset could be read: ``only 1 element(s) could be read, the last (0008,0008)``."""
    try:
        tags = list(ds.keys())
    except Exception:  # noqa: BLE001 - a dataset that cannot even list its tags
        tags = []
    if not tags:
        return "no element could be read"
    last = tags[-1]
    return f"only {len(tags)} element(s) could be read, the last ({last.group:04X},{last.element:04X})"


def _check_inflated_size(data: bytes, name: str) -> None:
    """Refuse a deflated dataset that would inflate beyond :data:`MAX_COMPRESSION_RATIO` times its file (a zip bomb).

    pydicom inflates the whole dataset before anything can be checked: 490 KB of zeros took 1 GiB. The file meta
    group (:func:`_file_meta_end`: with or without a preamble or a group length, however long) ends where the raw
    deflate stream starts; when its transfer syntax is deflate, the stream is inflated here up to the bound and no
    further.
    """
    import zlib

    syntax, end = _file_meta_end(data)
    if syntax != _DEFLATED:
        return
    stream = memoryview(data)[end:]  # not a copy of the file
    limit = max(MAX_COMPRESSION_RATIO * len(data), _INFLATE_FLOOR_BYTES)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(stream, limit + 1)
    except zlib.error:
        return  # not a valid stream: pydicom reports it as damaged
    if len(inflated) > limit:
        raise PortalImageError(
            f"{name}: its deflated dataset would inflate to more than {limit:,} bytes ({MAX_COMPRESSION_RATIO} times "
            f"the file's {len(data):,}); refused as damaged or hostile"
        )
    _check_sequence_items(inflated, name)  # items hidden in the deflated stream are counted too


#: Value representations whose explicit-VR length takes four bytes (after two reserved ones), PS3.5 7.1.2.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


def _file_meta_end(data: bytes) -> tuple[str, int]:
    """Return the file meta group's transfer syntax UID ("" if none) and the offset where the dataset starts.

    The group (0002,xxxx) follows the preamble when there is one, else starts the file; it is explicit VR little
    endian (PS3.10 7.1), read here element by element as pydicom reads it (an implicit-VR element, as some writers
    make, is read as one), so a missing or wrong group length does not change where it ends.
    """
    offset = 132 if len(data) >= 132 and data[128:132] == b"DICM" else 0
    syntax = ""
    while offset + 8 <= len(data) and data[offset:offset + 2] == b"\x02\x00":
        element = int.from_bytes(data[offset + 2:offset + 4], "little")
        vr = data[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            length, value_at = int.from_bytes(data[offset + 8:offset + 12], "little"), offset + 12
        elif vr.isalpha() and vr.isupper():
            length, value_at = int.from_bytes(data[offset + 6:offset + 8], "little"), offset + 8
        else:  # implicit VR: a four-byte length after the tag
            length, value_at = int.from_bytes(data[offset + 4:offset + 8], "little"), offset + 8
        if length == 0xFFFFFFFF:
            break  # an undefined length has no place in the meta group: pydicom decides
        if element == 0x0010:
            syntax = data[value_at:value_at + length].decode("ascii", "replace").strip("\0 ")
        offset = value_at + length
    return syntax, offset


#: Most sequence items a header may hold before its pixel data. An RT Image has a few (exposures, beam limiting
#: devices, referenced plans); each item pydicom reads costs about 1.4 KB of memory, so a file of a million tiny items
#: (28 MB) took 1.4 GB to read.
MAX_SEQUENCE_ITEMS = 10_000


def _check_sequence_items(data: bytes, name: str) -> None:
    """Refuse a header with more than :data:`MAX_SEQUENCE_ITEMS` sequence items before pydicom reads them.

    Items are counted by their tag (FFFE,E000), in either byte order, before the last pixel data tag (an
    encapsulated image's fragments are items too, and are not counted; the last one, so that a tag's bytes placed
    early cannot hide the items after them). The big-endian tag is looked for only in a file without the
    little-endian one: each search crosses the pixels. :func:`_check_inflated_size` counts the items of a deflated
    dataset in what it inflates.
    """
    if len(data) < 8 * MAX_SEQUENCE_ITEMS:
        return  # fewer bytes cannot hold that many items
    pixels = data.rfind(b"\xe0\x7f\x10\x00")
    if pixels < 0:
        pixels = data.rfind(b"\x7f\xe0\x00\x10")
    end = pixels if pixels > 0 else len(data)
    items = data.count(b"\xfe\xff\x00\xe0", 0, end) + data.count(b"\xff\xfe\xe0\x00", 0, end)
    if items > MAX_SEQUENCE_ITEMS:
        raise PortalImageError(
            f"{name}: its header holds {items:,} sequence items (an RT Image has a few; at most {MAX_SEQUENCE_ITEMS:,} "
            "are read); refused as damaged or hostile"
        )


def _looks_like_dicom(ds: Dataset) -> bool:
    # force=True "reads" any bytes; a real dataset has at least one of these.
    try:
        keys = ds.keys()
    except Exception:
        return False
    wanted = {0x00080016, 0x00080018, 0x00080060, 0x00280010, 0x7FE00010}
    return any(int(tag) in wanted for tag in keys)


def _ensure_transfer_syntax(ds: Dataset, name: str) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    given = _get(meta, "TransferSyntaxUID")
    if given:
        if not _is_transfer_syntax(given):
            raise PortalImageError(
                f"{name}: TransferSyntaxUID (0002,0010) {_shown(str(given))} in the file meta is not a DICOM transfer "
                "syntax; the file is damaged (rewrite it with a standard one, e.g. 1.2.840.10008.1.2.1)"
            )
        return
    # Files without (0002,0010): use the encoding pydicom detected while parsing
    # (implicit VR little endian for all the pylinac/MOSAIQ files that need this).
    implicit, little = read_encoding(ds)
    if little is False:
        uid = ExplicitVRBigEndian
    elif implicit is False:
        uid = ExplicitVRLittleEndian
    else:
        uid = ImplicitVRLittleEndian
    meta.TransferSyntaxUID = uid
    # Remember that it was guessed (describe() reports it).
    ds._portalign_assumed_transfer_syntax = True  # type: ignore[attr-defined]


def _is_transfer_syntax(value: Any) -> bool:
    # pydicom raises "UID is not a transfer syntax" from is_compressed & co. for
    # anything else (and ValueError for private UIDs): decide here, once.
    try:
        return bool(UID(str(value).strip().rstrip("\0")).is_transfer_syntax)
    except Exception:
        return False


def _transfer_syntax(ds: Dataset) -> UID:
    return UID(str(_get(ds.file_meta, "TransferSyntaxUID") or ImplicitVRLittleEndian).strip().rstrip("\0"))


# ---------------------------------------------------------------------------
# tag access that never raises
# ---------------------------------------------------------------------------


def _get(ds: Dataset, keyword: str) -> Any:
    """Value of a keyword, or None when absent, empty or unparseable."""
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        return value if value.strip() else None
    if hasattr(value, "__len__"):
        try:
            if len(value) == 0:
                return None
        except TypeError:
            pass
    return value


def _text(ds: Dataset, keyword: str) -> str:
    """Return the element's value as text; a multi-valued one joined with backslashes (DICOM's own separator).

    A person name is one value, although pydicom's ``PersonName`` iterates over its characters: joined
    character by character, ``ANON`` had become four values in the REG file's PatientName.
    """
    value = _get(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, (str, bytes, PersonName))
    ):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _float(ds: Dataset, keyword: str) -> float | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"):
            value = list(value)[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _kvp(ds: Dataset, exposure: Dataset | None, notes: list[str]) -> float | None:
    r"""Return the beam's KVP (the top level's, else the first ExposureSequence item's); a nonsense one is a note.

    A KVP only names the beam (kV or MV: :func:`portalign.image.beam_kind`): a value that is not one positive number
    (a fuzzer's -1500 read as "kV image (-1500 kVp)", ``120\6000`` as 120) is not used, and ``notes`` says so.
    """
    for where, source in (("KVP (0018,0060)", ds), ("the ExposureSequence item's KVP (0018,0060)", exposure)):
        if source is None:
            continue
        raw = _get(source, "KVP")
        if raw is None:
            continue
        many = not isinstance(raw, (str, bytes)) and hasattr(raw, "__iter__") and len(list(raw)) > 1
        value = _float(source, "KVP")
        if value is None or value <= 0 or many:
            notes.append(f"{where} is {_shown(raw)}, not one positive peak voltage: not used (the beam's energy is "
                         "not named from it)")
            continue
        return value
    return None


def _floats(ds: Dataset, keyword: str, minimum: int = 1) -> list[float] | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    try:
        items = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    if len(numbers) < minimum or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def _int(ds: Dataset, keyword: str) -> int | None:
    number = _float(ds, keyword)
    return None if number is None else int(round(number))


# ---------------------------------------------------------------------------
# validated tag access: present but unusable is an error, absent is None
# ---------------------------------------------------------------------------


def tag_label(keyword: str) -> str:
    """Return a tag as messages name it: ``"GantryAngle (300A,011E)"``.

    The keyword alone where its number is not listed in ``_TAGS``.
    """
    tag = _TAGS.get(keyword)
    return f"{keyword} {tag}" if tag else keyword


def escaped(text: str) -> str:
    """Return ``text`` (a tag's value, a file name) with its control characters escaped as Python writes them.

    A newline or a terminal escape from a file is shown, not acted on (a colour escape in a UID coloured a terminal).
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _printable(text: str, limit: int = 60) -> str:
    """Return ``text`` from a file fit for a one-line message: control characters escaped, at most ``limit`` long.

    A tag value holding a newline (or a length that swallowed the header's binary) split the error over lines.
    """
    text = escaped(text[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    else:
        text = repr(value) if isinstance(value, (str, bytes)) else str(value)
    return _printable(text)


def _present(ds: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` is in ``ds`` at all (empty or not; False where even that cannot be told)."""
    try:
        return keyword in ds
    except Exception:  # noqa: BLE001 - a damaged dataset: as absent
        return False


def _checked(
    ds: Dataset | None,
    keyword: str,
    name: str,
    *,
    counts: tuple[int, ...] | None,
    low: float,
    high: float,
    fix: str,
    what: str,
    error: type[Exception] = GeometryError,
    integer: bool = False,
) -> list[float] | None:
    """Return the validated numeric values of ``keyword``; None when the tag is absent or empty.

    Raises ``error`` naming the file, the tag and ``fix`` when the tag is present
    but cannot be parsed, has a value multiplicity other than ``counts`` (any
    count when None), or holds a value that is not finite, not in
    ``[low, high]`` or (``integer``) not a whole number.
    """
    if ds is None:
        return None
    label = tag_label(keyword)
    if not _present(ds, keyword):
        return None
    try:
        value = ds[keyword].value
    except Exception as exc:
        raise error(f"{name}: {label} cannot be read ({_one_line(exc)}); {fix}") from None
    if value is None:
        return None
    if isinstance(value, bytes):  # unknown VR: the raw bytes of a string value
        value = value.decode("latin-1").strip(" \0").split("\\")
    if isinstance(value, str):
        value = value.split("\\")
    items = list(value) if hasattr(value, "__iter__") else [value]
    if all((isinstance(v, str) and not v.strip()) or v is None for v in items):
        return None  # an empty (type 2) attribute: unknown
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise error(f"{name}: {label} is {_shown(value)}, not a number; {fix}") from None
    if counts is not None and len(numbers) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise error(
            f"{name}: {label} has {len(numbers)} values {_shown(value)}; it must have {wanted}; {fix}"
        )
    for number in numbers:
        if not math.isfinite(number) or not low <= number <= high or (integer and number != int(number)):
            kind = "a whole number" if integer else "a finite number"
            raise error(f"{name}: {label} is {_shown(value)}; {what} must be {kind} from {low:g} to {high:g}; {fix}")
    return numbers


def _checked_one(ds: Dataset | None, keyword: str, name: str, **kwargs: Any) -> float | None:
    values = _checked(ds, keyword, name, counts=(1,), **kwargs)
    return None if values is None else values[0]


def _checked_int(ds: Dataset | None, keyword: str, name: str, low: int, high: int, *, fix: str = "the file is damaged",
                 what: str = "it") -> int | None:
    value = _checked_one(ds, keyword, name, low=low, high=high, fix=fix, what=what, error=PortalImageError, integer=True)
    return None if value is None else int(value)


def _checked_angle(ds: Dataset | None, keyword: str, name: str) -> float | None:
    return _checked_one(ds, keyword, name, low=-ANGLE_LIMIT_DEG, high=ANGLE_LIMIT_DEG,
                        fix="correct or remove the tag", what="an angle in degrees")


def _sequence_unreadable(ds: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` is present with a value that is not a sequence of items (damaged, or of another VR)."""
    try:
        if keyword not in ds:
            return False
        value = ds[keyword].value
    except Exception:  # noqa: BLE001 - a value the parser cannot read
        return True
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return False
    try:
        return len(value) > 0 and not any(isinstance(item, Dataset) for item in value)
    except TypeError:
        return True


def _sequence(ds: Dataset, keyword: str) -> list[Dataset]:
    value = _get(ds, keyword)
    if value is None:
        return []
    try:
        return [item for item in value if isinstance(item, Dataset)]
    except TypeError:
        return []


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


@dataclass
class _Geometry:
    spacing_mm: tuple[float, float]
    imager_spacing_mm: tuple[float, float] | None
    sid_mm: float | None
    sad_mm: float | None
    beam_axis_px: tuple[float, float]
    beam_axis_source: str
    spacing_source: str
    notes: list[str] = field(default_factory=list)


def _load(source: Any, options: _Options, *, frame: int | None, every_frame: bool) -> list[Image]:
    name = _source_name(source)
    with _recording_warnings() as caught:
        ds = _read_dataset(source, name, require_pixels=True)
        modality = _modality(ds, name)
        rows, cols, n_frames = _pixel_layout(ds, name, every_frame=every_frame)
        if frame is not None and not every_frame:
            if frame < 0 or frame >= n_frames:
                raise PortalImageError(
                    f"{name}: has {n_frames} frame{'s' if n_frames != 1 else ''}; frame={frame} is out of range "
                    f"({'only 0' if n_frames == 1 else f'0 to {n_frames - 1}'}, 0-based)"
                )
        geometry = _geometry(ds, name, modality, (rows, cols), options)
        if not _text(ds, "Modality"):  # taken as an RT Image from its other attributes: said, not silent
            geometry.notes.append(_modality_note(ds))
        kind = _kind(ds, modality, geometry.sid_mm, geometry.sad_mm)

        if every_frame:
            stack = _decode(ds, name, index=None)
            if stack.shape[-2:] != (rows, cols) or (stack.ndim == 3 and len(stack) != n_frames):
                raise PortalImageError(f"{name}: pixel data decoded to {stack.shape}, the header says {n_frames} x "
                                       f"{rows} x {cols}; the size tags are wrong")
            frames = list(stack) if stack.ndim == 3 else [stack]
            indices = list(range(len(frames)))
        else:
            index = frame or 0
            frames = [_decode(ds, name, index=index if n_frames > 1 else None)]
            if frames[0].shape != (rows, cols):
                raise PortalImageError(f"{name}: frame {index} decoded to {frames[0].shape}, the header says {rows} x "
                                       f"{cols}; the size tags are wrong")
            indices = [index]
        stored = _check_bits_stored(ds, name, geometry.notes)
        if stored:  # cut to BitsStored by this reader (pydicom 2.4 keeps them)
            frames = [np.bitwise_and(f, (1 << stored) - 1, dtype=f.dtype) for f in frames]
        padding = _padding_note(ds, frames)
        if padding:
            geometry.notes.append(padding)
        try:  # a damaged sequence raises from pydicom's parser as it is first read (a fuzzer's: OSError)
            modality_lut = ds.get("ModalityLUTSequence")
        except Exception as exc:  # noqa: BLE001 - any parser failure: the tag is damaged
            raise PortalImageError(f"{name}: ModalityLUTSequence (0028,3000) cannot be read ({_one_line(exc)}): the "
                                   "tag is damaged, and the stored values cannot be mapped without it; export the "
                                   "image again") from exc
        if modality_lut:  # a lookup table instead of a linear rescale (PS3.3 C.11.1)
            slope, intercept = 1.0, 0.0
            pixels = [check_pixels(_modality_lut(raw, ds, name), name) for raw in frames]
            geometry.notes.append(_lut_note(ds))
        else:
            slope, intercept = _rescale_tags(ds, name)
            pixels = [check_pixels(_rescale(raw, slope, intercept, name), name) for raw in frames]
        sign, reason, offset = _intensity_sign(ds, name, kind, pixels, slope, intercept, options.invert)
        if sign < 0:  # in place where the array is this reader's own copy, not the decoded one (no second image)
            pixels = [np.subtract(offset, p, out=None if any(p is raw for raw in frames) else p, dtype=np.float32)
                      for p in pixels]

        common = _common_extra(ds, name, geometry, n_frames, slope, intercept, sign, reason)
        if "PixelData" in ds:
            # integer Stored Values: one step of them is the finest difference the pixels can show (the rescale's
            # slope; a Modality LUT's entries are integers). Float Pixel Data has no such step
            common["quantization_step"] = abs(float(slope))
        if kind == "portal" and sign > 0:
            # the detector's largest code: pixels there are saturated (checked by the optimiser)
            common["saturation_value"] = _representable_max(ds, pixels, slope, intercept)
        infos = [_frame_info(ds, name, modality, kind, geometry, index, n_frames, common) for index in indices]
    messages = sorted({_header_note(_one_line(w.message), ds) for w in caught})
    images = []
    for p, info in zip(pixels, infos, strict=True):
        if messages:
            info.extra["dicom_warnings"] = messages
        images.append(Image(p, geometry.spacing_mm, geometry.beam_axis_px, info))
    return images


def _pixel_layout(ds: Dataset, name: str, *, every_frame: bool) -> tuple[int, int, int]:
    """Validate the image size tags against the pixel data before anything is decoded.

    Returns ``(rows, cols, frames)``. The decoded array can then never be larger
    than the pixel data read from the file (uncompressed), or than
    :data:`MAX_COMPRESSION_RATIO` times it (compressed).
    """
    rows = _checked_int(ds, "Rows", name, 1, MAX_SIDE)
    cols = _checked_int(ds, "Columns", name, 1, MAX_SIDE)
    if rows is None or cols is None:
        raise PortalImageError(f"{name}: has no Rows/Columns; the pixel data cannot be shaped")
    if rows * cols > MAX_FRAME_PIXELS:
        raise PortalImageError(
            f"{name}: Rows x Columns (0028,0010 x 0028,0011) is {rows} x {cols}, {rows * cols / 1e6:.0f} million pixels a "
            f"frame, more than the {MAX_FRAME_PIXELS / 1e6:.0f} million of any imager or film digitiser (an aS1200 has "
            "1.6 million); registering it would take many gigabytes: resample the image to its imager's pixels, or "
            "check the size tags")
    samples = _checked_int(ds, "SamplesPerPixel", name, 1, 4) or 1
    if samples != 1:
        raise PortalImageError(f"{name}: is a colour image (SamplesPerPixel {samples}); portal images are greyscale")
    try:  # a damaged element (an unknown or binary VR) is a damaged file, named, not pydicom's exception
        photometric = ds.get("PhotometricInterpretation", "") or ""
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on it
        raise PortalImageError(f"{name}: {tag_label('PhotometricInterpretation')} cannot be read ({_one_line(exc)}); the "
                               "file is damaged (a greyscale RT Image has MONOCHROME1 or MONOCHROME2 there)") from None
    if isinstance(photometric, bytes):
        photometric = photometric.decode("latin-1")
    photometric = str(photometric).strip(" \0").upper()
    if not photometric:  # the decoder needs it, and said "pixel data cannot be decoded ... damaged" (a fuzz campaign)
        raise PortalImageError(
            f"{name}: PhotometricInterpretation (0028,0004) is missing or empty; the pixel data cannot be read without "
            "it: a greyscale RT Image has MONOCHROME2 (higher values brighter) or MONOCHROME1 there: correct the tag, "
            "or export the image again")
    if photometric == "PALETTE COLOR":  # one sample a pixel, but an index into a colour table: not a signal
        raise PortalImageError(
            f"{name}: is a palette-colour image (PhotometricInterpretation (0028,0004) PALETTE COLOR): its values index "
            "a colour table, not the radiation that reached the imager; portal images are MONOCHROME1 or MONOCHROME2")
    if photometric.startswith(("RGB", "YBR", "HSV", "ARGB", "CMYK")):  # colour, with one sample: the decoder broadcast
        raise PortalImageError(                                           # one plane against three (a fuzz campaign)
            f"{name}: PhotometricInterpretation (0028,0004) {_printable(photometric, 16)} is a colour model but "
            "SamplesPerPixel (0028,0002) is 1; a greyscale RT Image has MONOCHROME1 or MONOCHROME2 there: correct the "
            "tag")
    frames = _checked_int(ds, "NumberOfFrames", name, 1, 2**31 - 1)
    if frames is None and _present(ds, "NumberOfFrames"):  # the decoder reads it as int(''): say so, naming it
        raise PortalImageError(f"{name}: NumberOfFrames (0028,0008) is present but empty; a single frame has 1 there "
                               "or no such tag; the file is damaged")
    frames = frames or 1
    if rows < MIN_SIDE or cols < MIN_SIDE:
        # every frame would be refused so (Image): say it before decoding; a cine of 30 million 1 x 1 frames of one bit
        # (3.75 MB) took 5.8 GB and 37 s to be told so, a frame at a time (a hostile campaign)
        raise PortalImageError(f"{name}: image is {rows}x{cols} pixels (Rows, Columns (0028,0010), (0028,0011)); at "
                               f"least {MIN_SIDE}x{MIN_SIDE} is needed")
    if every_frame and frames > MAX_FRAMES:
        # each frame read becomes an image of its own (float32 pixels and a header): 150,000 frames of 8 x 8 (9.6 MB)
        # kept a watched folder busy for 4.7 minutes and wrote 95 MB of errors
        raise PortalImageError(
            f"{name}: NumberOfFrames (0028,0008) is {frames}, more than the {MAX_FRAMES} frames portalign reads from one "
            f"file ({MAX_FRAMES // 30 // 60} minutes of cine at 30 frames a second); split the acquisition, or read its "
            "frames one at a time (read_rt_image(path, frame=k), a stream)")
    keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
    if keyword == "PixelData":
        bits = _checked_int(ds, "BitsAllocated", name, 1, 64)
        if bits not in (1, 8, 16, 32, 64):
            shown = "absent" if bits is None else str(bits)
            raise PortalImageError(
                f"{name}: BitsAllocated (0028,0100) is {shown}; pixel data needs 1, 8, 16, 32 or 64; the file is damaged"
            )
        stored = _checked_int(ds, "BitsStored", name, 1, bits, what="BitsStored (at most BitsAllocated)")
        if stored is None:
            raise PortalImageError(f"{name}: has no BitsStored (0028,0101); the pixel values cannot be read")
        # pydicom does not use HighBit; a value outside the allocated bits still says the header is damaged
        _checked_int(ds, "HighBit", name, 0, bits - 1, what="HighBit (below BitsAllocated)")
        if _checked_int(ds, "PixelRepresentation", name, 0, 1, what="PixelRepresentation (0 unsigned, 1 signed)") is None:
            said = ("PixelRepresentation (0028,0103) is present but empty" if _present(ds, "PixelRepresentation")
                    else "has no PixelRepresentation (0028,0103)")
            raise PortalImageError(f"{name}: {said}; the pixel values cannot be read (0 unsigned, 1 signed)")
    else:
        bits = 32 if keyword == "FloatPixelData" else 64
        given = _checked_int(ds, "BitsAllocated", name, 1, 64)
        if given is not None and given != bits:
            raise PortalImageError(f"{name}: BitsAllocated (0028,0100) is {given} but {keyword} holds {bits}-bit floats; "
                                   "the file is damaged")
    try:
        length = len(ds[keyword].value or b"")
    except Exception as exc:
        raise PortalImageError(f"{name}: {keyword} cannot be read ({_one_line(exc)}); the file is damaged") from None
    # Python integers: nothing overflows and nothing is allocated here.
    expected = (rows * cols * frames * bits + 7) // 8
    if keyword == "PixelData" and _transfer_syntax(ds).is_compressed:
        wanted = (rows * cols * (frames if every_frame else 1) * bits + 7) // 8
        if frames * 8 > length:
            raise PortalImageError(
                f"{name}: NumberOfFrames (0028,0008) is {frames} but the compressed pixel data has only {length} bytes "
                "(at least one 8-byte fragment per frame); the file is damaged"
            )
        if wanted > max(MAX_COMPRESSION_RATIO * length, _INFLATE_FLOOR_BYTES):
            raise PortalImageError(
                f"{name}: Rows x Columns x BitsAllocated ({rows} x {cols} x {bits}) would decode {length:,} bytes of "
                f"compressed pixel data into {wanted:,} bytes (over {MAX_COMPRESSION_RATIO} times, and over "
                f"{_INFLATE_FLOOR_BYTES >> 20} MiB); the image size tags are wrong"
            )
        claimed = _codestream_size(ds[keyword].value)
        if claimed is not None and claimed != (rows, cols):
            # a decoder sizes its output from the codestream's own header, not from Rows/Columns: a few kilobytes
            # claiming 12000 x 12000 were decoded (275 MiB) before the shapes were compared
            raise PortalImageError(
                f"{name}: the compressed pixel data's own header says {claimed[0]} x {claimed[1]} pixels but Rows x "
                f"Columns say {rows} x {cols}; the file is damaged"
            )
    elif length < expected:
        raise PortalImageError(
            f"{name}: {keyword} has {length} bytes but Rows x Columns x NumberOfFrames x BitsAllocated/8 "
            f"({rows} x {cols} x {frames} x {bits}/8) needs {expected}; the file is truncated or its size tags are wrong"
        )
    elif length * 8 >= rows * cols * (frames + 1) * bits:
        # a whole frame or more beyond what the header describes: decoders would make up frames from it
        raise PortalImageError(
            f"{name}: {keyword} has {length} bytes, at least one frame more than Rows x Columns x NumberOfFrames x "
            f"BitsAllocated/8 ({rows} x {cols} x {frames} x {bits}/8) = {expected}; the size tags are wrong"
        )
    elif length > expected + 1:
        # less than a frame more, beyond the one byte that pads it to an even length: Rows or Columns smaller than the
        # image stored (a trial's Rows 384 -> 200 was read as the top 200 rows, ok; its Columns 512 -> 500 sheared)
        raise PortalImageError(
            f"{name}: {keyword} has {length} bytes, {length - expected} more than Rows x Columns x NumberOfFrames x "
            f"BitsAllocated/8 ({rows} x {cols} x {frames} x {bits}/8) = {expected}: the size tags do not describe the "
            "pixels stored; the file is damaged"
        )
    return rows, cols, frames


#: JPEG start-of-frame markers (SOF0-SOF15 less DHT C4, JPG C8, DAC CC; JPEG-LS SOF55 F7).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def _codestream_size(encapsulated: bytes, search: int = 1 << 16) -> tuple[int, int] | None:
    """Return ``(rows, cols)`` that the first JPEG / JPEG-LS / JPEG 2000 codestream in ``encapsulated`` declares.

    Reads the frame header a decoder sizes its output from: a JPEG SOF marker segment (height, width) or a
    JPEG 2000 SIZ segment (image extent less offset), found in the first ``search`` bytes of the pixel data.
    None when neither is found (RLE, an unknown codec, a damaged stream: the decoder reports those).
    """
    head = bytes(encapsulated[:search])
    at = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ
    if at >= 0 and at + 28 <= len(head):
        x, y, x0, y0 = (int.from_bytes(head[at + 8 + 4 * k: at + 12 + 4 * k], "big") for k in range(4))
        return (y - y0, x - x0) if y > y0 and x > x0 else None
    at = head.find(b"\xff\xd8")  # JPEG: SOI, then marker segments up to the frame header
    if at < 0:
        return None
    pos = at + 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(head[pos + 2: pos + 4], "big")
        if marker in _SOF_MARKERS:
            if pos + 9 > len(head):
                return None
            return int.from_bytes(head[pos + 5: pos + 7], "big"), int.from_bytes(head[pos + 7: pos + 9], "big")
        if marker == 0xDA or length < 2:  # start of scan before a frame header, or a broken length
            return None
        pos += 2 + length
    return None


#: Rescaled pixels all within this of 0 are refused: their differences' squares underflow 32-bit floats (a slope of
#: 1e-20 on 16-bit values still registered, 1e-25 did not).
MIN_RESCALED_REACH = 1e-18


def _rescale_tags(ds: Dataset, name: str) -> tuple[float, float]:
    """Return ``(slope, intercept)``: validated, 1 and 0 when absent."""
    fix = "correct or remove the tag"
    slope = _checked_one(ds, "RescaleSlope", name, low=-1e30, high=1e30, fix=fix, what="the slope",
                         error=PortalImageError)
    if slope == 0.0:
        raise PortalImageError(f"{name}: RescaleSlope (0028,1053) is 0, which maps every pixel to one value; {fix}")
    intercept = _checked_one(ds, "RescaleIntercept", name, low=-1e30, high=1e30, fix=fix, what="the intercept",
                             error=PortalImageError)
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _modality_note(ds: Dataset) -> str:
    """Return the note of a file whose Modality is missing or blank (NUL bytes, spaces): :func:`_modality` took it as RTIMAGE."""
    what = "blank (empty, spaces or NUL bytes)" if "Modality" in ds else "missing"
    why = ("its SOP Class (RT Image Storage)" if _text(ds, "SOPClassUID") == RTImageStorage
           else "its RT Image attributes (ImagePlanePixelSpacing, RTImageSID)")
    return f"Modality (0008,0060) {what}: read as an RT Image (RTIMAGE) from {why}"


def _modality(ds: Dataset, name: str) -> str:
    modality = _text(ds, "Modality").upper()
    if not modality:
        sop_class = _text(ds, "SOPClassUID")
        if sop_class == RTImageStorage or "ImagePlanePixelSpacing" in ds or "RTImageSID" in ds:
            return "RTIMAGE"
        raise PortalImageError(f"{name}: has no Modality (0008,0060); expected an RT Image (RTIMAGE)")
    if modality == "RTIMAGE" or modality in _PROJECTION_MODALITIES:
        return modality
    raise PortalImageError(
        f"{name}: Modality {_printable(modality, 32)} is not a projection image; portalign reads RT Images "
        "(RTIMAGE, or CR/DX/XA/RF with a known pixel spacing)"
    )


#: Pixel-module attributes the decoders read as one value each (PS3.3 C.7.6.3: VM 1).
_SINGLE_VALUED_PIXEL_TAGS = ("PhotometricInterpretation", "NumberOfFrames", "SamplesPerPixel", "PlanarConfiguration",
                             "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "Rows", "Columns")


def _check_pixel_module(ds: Dataset, name: str) -> None:
    """Refuse, naming the tag, what would make a decoder fail with a message about Python types."""
    for keyword in _SINGLE_VALUED_PIXEL_TAGS:
        try:
            element = ds.data_element(keyword)
            value = None if element is None else element.value
        except Exception:  # noqa: BLE001 - an element that cannot even be parsed: the decoder's message says so
            continue
        if value is not None and not isinstance(value, (str, bytes, int, float)):
            tag = f"({element.tag.group:04X},{element.tag.element:04X})"
            raise PortalImageError(f"{name}: {keyword} {tag} has {len(value)} values {_shown(value)}; it must have 1; "
                                   "the file is damaged")
    element = ds.data_element("PixelData") if "PixelData" in ds else None  # a missing one is reported elsewhere
    if element is not None and not isinstance(element.value, (bytes, bytearray, memoryview)):
        raise PortalImageError(f"{name}: PixelData (7FE0,0010) is held as {element.VR} text, not OB/OW bytes; the "
                               "file is damaged")


def _decode(ds: Dataset, name: str, *, index: int | None) -> np.ndarray:
    transfer_syntax = _transfer_syntax(ds)
    _check_pixel_module(ds, name)
    try:
        with warnings.catch_warnings(record=True) as decoding:
            warnings.simplefilter("always")
            array = decode_pixels(ds, index=index)
    except Exception as exc:
        if transfer_syntax.is_compressed and not decoder_available(transfer_syntax):
            raise PortalImageError(
                f"{name}: pixel data is compressed as {transfer_syntax.name} ({transfer_syntax}) and no installed "
                f"decoder handles it; {_install_hint(transfer_syntax)}"
            ) from exc
        raise PortalImageError(f"{name}: pixel data cannot be decoded ({_one_line(exc)}); its PixelData (7FE0,0010) is "
                               f"damaged or not {transfer_syntax.name} as the header says: copy or export it "
                               "again") from exc
    for caught in decoding:
        excess = _RLE_EXCESS.search(str(caught.message))
        if excess and int(excess.group(1)) - int(excess.group(2)) > RLE_MAX_EXCESS_BYTES:
            # a fuzzer's 20 bytes changed inside an RLE stream decoded without an error, 678 bytes too long a
            # segment: the rows after the damage came out displaced, and the frame matched 1.45 mm off, ok
            raise PortalImageError(
                f"{name}: its RLE pixel data decodes to {excess.group(1)} bytes a segment where {excess.group(2)} are "
                "expected: the compressed PixelData (7FE0,0010) is damaged (the pixels after the damage are "
                "displaced); copy or export it again")
        # the others stay what they were: recorded by the reader's own catch (info.extra["dicom_warnings"])
        warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)
    if array.ndim not in (2, 3):
        raise PortalImageError(f"{name}: pixel data has shape {array.shape}; expected rows x columns")
    return array


#: pydicom's warning (2.4 and 3.x) where an RLE segment decodes longer than Rows x Columns bytes.
_RLE_EXCESS = re.compile(r"non-conformant padding - (\d+) vs\. (\d+) bytes")
#: An RLE segment decoded longer than expected by at most this many bytes is an encoder's even-length padding, which
#: the decoder drops (PS3.5 G.3.1 pads the encoded segment, not the decoded one, but some encoders pad both); more is a
#: damaged stream.
RLE_MAX_EXCESS_BYTES = 1


def _install_hint(transfer_syntax: UID) -> str:
    uid = str(transfer_syntax)
    if uid.startswith("1.2.840.10008.1.2.4.9") or uid.startswith("1.2.840.10008.1.2.4.20"):
        return "pip install pylibjpeg pylibjpeg-openjpeg"  # JPEG 2000 and HTJ2K
    if (
        uid.startswith("1.2.840.10008.1.2.4.5")
        or uid.startswith("1.2.840.10008.1.2.4.7")
        or uid.startswith("1.2.840.10008.1.2.4.8")
    ):
        return "pip install pylibjpeg pylibjpeg-libjpeg"  # JPEG, JPEG lossless, JPEG-LS
    return "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg (or python-gdcm)"


#: Pixels rescaled at a time (float64, then rounded into the float32 image): 2 MiB of scratch, whatever the image.
_RESCALE_BLOCK = 1 << 18
#: Distinct steps float32 resolves within a power of two (its 23-bit fraction).
FLOAT32_LEVELS = float(1 << 23)
#: A native image whose stored values use bits above BitsStored in more than this share of its pixels is refused: a
#: BitsStored smaller than the data (cut to it, the values wrap). Below it they are overlay bits (the retired overlay
#: planes in the pixel data, PS3.5 8.1.2), cut off as DICOM says, and noted.
BITS_ABOVE_STORED_MAX_SHARE = 0.05


def _check_bits_stored(ds: Dataset, name: str, notes: list[str]) -> int:
    """Refuse (or note) native unsigned pixel data whose values use bits above BitsStored (0028,0101).

    pydicom 3 keeps the low BitsStored bits, as DICOM says: a BitsStored of 12 on 14-bit data read a detector's
    16383 as 4095, wrapping every value above (a fourth fuzz campaign); pydicom 2.4 keeps every bit. No copy: a view
    of the pixel bytes. Returns BitsStored where a few pixels (overlay bits) were noted: the caller cuts the values
    to it, so that both read the same values; 0 where nothing is to be cut.
    """
    if _transfer_syntax(ds).is_compressed or "PixelData" not in ds or _int(ds, "PixelRepresentation") != 0:
        return 0
    bits, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    if bits not in (8, 16, 32) or stored is None or not 1 <= stored < bits:
        return 0
    try:
        data = ds.PixelData
        little = read_encoding(ds)[1] is not False
        count = len(data) // (bits // 8)
        raw = np.frombuffer(data, dtype=np.dtype(f"{'<' if little else '>'}u{bits // 8}"), count=count)
    except Exception:  # noqa: BLE001 - undecodable pixel data is the decoder's to report
        return 0
    if raw.size == 0 or int(raw.max()) >> stored == 0:
        return 0
    share = float(np.count_nonzero(raw >> stored)) / raw.size
    said = (f"stored pixel values reach {int(raw.max())}, beyond BitsStored (0028,0101) {stored} (at most "
            f"{(1 << stored) - 1})")
    if share > BITS_ABOVE_STORED_MAX_SHARE:
        raise PortalImageError(f"{name}: {said} in {100 * share:.0f} % of the pixels: cut to {stored} bits they would "
                               "wrap; correct BitsStored and HighBit (0028,0102) to the data's depth")
    notes.append(f"{said} in {100 * share:.1f} % of the pixels: those bits (overlay planes) are not read, as DICOM says")
    return stored


def _padding_note(ds: Dataset, frames: Sequence[np.ndarray]) -> str:
    """Say how many stored pixels hold PixelPaddingValue (0028,0120), which are matched like the others; ``""`` if none.

    A padded border (a fuzz campaign's 65535) was refused as "saturated", with no word of the padding: portalign
    does not mask padding, so the note says what the pixels are.
    """
    raw = _get(ds, "PixelPaddingValue")
    if isinstance(raw, (bytes, bytearray)):  # its VR (US or SS) left undecided: two little-endian bytes
        value: float | None = float(int.from_bytes(bytes(raw[:2]), "little",
                                                   signed=_int(ds, "PixelRepresentation") == 1))
    else:  # a number, or several (the first); None where absent or unusable: nothing is padded by it
        value = _float(ds, "PixelPaddingValue")
    if value is None:
        return ""
    padded = sum(int(np.count_nonzero(f == value)) for f in frames)
    if not padded:
        return ""
    total = sum(f.size for f in frames)
    return (f"PixelPaddingValue (0028,0120) {value:g}: {100 * padded / total:.1f} % of the stored pixels are padding, "
            "matched as image (portalign does not mask it); a result refused as saturated or with too little structure "
            "may be the padding's")


def _modality_lut(raw: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """Return ``raw`` through the file's Modality LUT (0028,3000), as float32 (pydicom's ``apply_modality_lut``)."""
    try:
        mapped = apply_modality_lut(raw, ds)
    except Exception as exc:  # noqa: BLE001 - a damaged table fails in many ways inside pydicom
        raise PortalImageError(f"{name}: ModalityLUTSequence (0028,3000) cannot be applied ({_one_line(exc)}); correct "
                               "or remove it") from None
    if mapped.shape != raw.shape:
        raise PortalImageError(f"{name}: ModalityLUTSequence (0028,3000) mapped the pixels to shape {mapped.shape}; "
                               "correct or remove it")
    return np.ascontiguousarray(mapped, dtype=np.float32)


def _lut_note(ds: Dataset) -> str:
    """Say that the Modality LUT was applied, and that a rescale beside it (which DICOM forbids) was not."""
    both = "RescaleSlope" in ds or "RescaleIntercept" in ds
    return ("ModalityLUTSequence (0028,3000) applied to the stored values" +
            ("; RescaleSlope/RescaleIntercept (0028,1053/1052) not applied (DICOM allows one or the other)" if both
             else ""))


def _rescale(raw: np.ndarray, slope: float, intercept: float, name: str = "image") -> np.ndarray:
    """Return ``raw * slope + intercept`` (float64 arithmetic) as float32, computed a block of rows at a time.

    The same numbers as one float64 array rounded to float32 afterwards, without the float64 copy of the
    whole image: for a 1-bit image (unpacked to a byte a pixel) that copy was 64 times the pixel data read.

    Raises
    ------
    PortalImageError
        Where the rescaled values lie so far from 0 that float32 (24-bit significand) cannot tell one stored level
        from the next: the image's levels would merge (a fourth fuzz campaign: RescaleIntercept 1e9 turned 906 grey
        levels into 25, and 1e12 into "all pixels have the same value").
    """
    if slope == 1.0 and intercept == 0.0:
        return raw
    if raw.size and abs(intercept) > FLOAT32_LEVELS * abs(slope) / 2:  # else no stored value can reach that far
        low, high = float(raw.min()), float(raw.max())
        reach = max(abs(low * slope + intercept), abs(high * slope + intercept))
        step = reach / FLOAT32_LEVELS  # float32's spacing near the largest magnitude (within a factor of 2)
        if step > abs(slope) and np.isfinite(step):
            raise PortalImageError(
                f"{name}: RescaleIntercept (0028,1052) {intercept:g} with RescaleSlope (0028,1053) {slope:g} puts the "
                f"pixels near {reach:.3g}, where 32-bit floats keep steps of about {step:.3g}, coarser than one stored "
                "level: the image's grey levels would merge; correct or remove the tag")
    if raw.size and abs(intercept) < MIN_RESCALED_REACH:
        reach = max(abs(float(raw.min())), abs(float(raw.max()))) * abs(slope) + abs(intercept)
        if 0.0 < reach < MIN_RESCALED_REACH:  # a fuzz campaign's 1e-30: "no match ... a wrong scale in one header"
            raise PortalImageError(
                f"{name}: RescaleSlope (0028,1053) {slope:g} puts every pixel within {reach:.3g} of 0, too small for "
                "32-bit floats to hold the image's differences (a portal dosimetry image's slope is about 1e-4); "
                "correct or remove the tag")
    out = np.empty(raw.shape, dtype=np.float32)
    flat_raw, flat_out = raw.reshape(-1), out.reshape(-1)
    for start in range(0, flat_raw.size, _RESCALE_BLOCK):
        block = flat_raw[start:start + _RESCALE_BLOCK].astype(np.float64)
        block *= slope
        block += intercept
        flat_out[start:start + _RESCALE_BLOCK] = block
    return out


def _intensity_sign(
    ds: Dataset,
    name: str,
    kind: str,
    pixels: Sequence[np.ndarray],
    slope: float,
    intercept: float,
    invert: bool | None,
) -> tuple[int, str, float]:
    """Return (sign, reason, offset): inverted pixels are ``offset - value``."""
    if invert is not None:
        sign, reason = (-1, "invert=True") if invert else (1, "invert=False")
    else:
        fix = "correct the tag or pass invert=True / invert=False (--invert / --no-invert)"
        tag = _checked_int(ds, "PixelIntensityRelationshipSign", name, -1, 1, fix=fix, what="the sign (+1 or -1)")
        if tag == 0:
            raise PortalImageError(f"{name}: PixelIntensityRelationshipSign (0028,1041) is 0; it must be +1 or -1; {fix}")
        if tag == -1:
            sign, reason = -1, "PixelIntensityRelationshipSign -1"
        elif tag == 1:
            sign, reason = 1, "PixelIntensityRelationshipSign +1"
        elif kind == "portal" and max(float(p.max()) for p in pixels) <= 0.0:
            # Intensity cannot be negative: values that are all <= 0 after rescale
            # encode "less signal = higher value" (Varian aS500/IDU20 files store
            # 16383 - signal with RescaleIntercept -16384).
            return -1, "rescaled values are all <= 0 (negative-signal encoding); negated", 0.0
        else:
            sign, reason = 1, "no PixelIntensityRelationshipSign; values kept"
    if sign > 0:
        return 1, reason, 0.0
    return -1, reason, _representable_max(ds, pixels, slope, intercept)


def _representable_max(ds: Dataset, pixels: Sequence[np.ndarray], slope: float, intercept: float) -> float:
    data_max = max(float(p.max()) for p in pixels)
    bits = _int(ds, "BitsStored")
    if "PixelData" not in ds or not bits or bits > 32:
        return max(data_max, 0.0)
    if _int(ds, "PixelRepresentation") == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    return max(slope * low + intercept, slope * high + intercept, data_max)


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def _override(value: Any, what: str, name: str, low: float, high: float) -> float:
    """Check a keyword override (``sid_mm=``...): a finite number of mm in ``[low, high]``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise GeometryError(f"{name}: {what} must be a positive number of mm, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise GeometryError(f"{name}: {what} must be a positive number of mm, got {value!r}")
    if not low <= number <= high:
        raise GeometryError(f"{name}: {what}={number:g} mm is outside the physical range {low:g}-{high:g} mm")
    return number


def _spacing_pair(value: Any, what: str, name: str) -> tuple[float, float]:
    low, high = ISOCENTRE_SPACING_RANGE_MM
    if np.ndim(value) == 0:
        number = _override(value, what, name, low, high)
        return number, number
    items = list(value)
    if len(items) != 2:
        raise GeometryError(f"{name}: {what} must be one number or (row, col), got {value!r}")
    return _override(items[0], what, name, low, high), _override(items[1], what, name, low, high)


def _distance(ds: Dataset, keyword: str, name: str, override: float | None, option: str) -> float | None:
    low, high = DISTANCE_RANGE_MM
    if override is not None:
        return _override(override, option, name, low, high)
    return _checked_one(ds, keyword, name, low=low, high=high, what="a distance in mm",
                        fix=f"correct the tag or pass {option}=")


def _geometry(ds: Dataset, name: str, modality: str, shape: tuple[int, int], options: _Options) -> _Geometry:
    rt = modality == "RTIMAGE"
    notes: list[str] = []

    # Imager-plane spacing [row, col] from the tags (the first one present wins).
    spacing_tags = ("ImagePlanePixelSpacing", "PixelSpacing") if rt else ("ImagerPixelSpacing",)
    imager: tuple[float, float] | None = None
    spacing_source = ""
    for keyword in spacing_tags:
        try:
            values = _checked(ds, keyword, name, counts=(1, 2), low=SPACING_RANGE_MM[0], high=SPACING_RANGE_MM[1],
                              what="pixel spacing", fix="correct the tag or pass pixel_spacing_mm= (mm at the isocentre)")
        except GeometryError as exc:
            if options.pixel_spacing_mm is None:
                raise
            notes.append(f"{keyword} not used ({str(exc).split(': ', 1)[-1].split(';')[0]}); pixel_spacing_mm given")
            values = None
        if values is not None:
            imager, spacing_source = (values[0], values[-1]), keyword  # a lone value: square pixels
            if len(values) == 1 and options.pixel_spacing_mm is None:  # said, not silent (a new user's trial)
                notes.append(f"{tag_label(keyword)} holds one value ({values[0]:g} mm): read as square pixels (the "
                             "standard has two, row and column spacing)")
            break

    sid_keyword = "RTImageSID" if rt else "DistanceSourceToDetector"
    sad_keyword = "RadiationMachineSAD" if rt else "DistanceSourceToIsocenter"
    sid = _distance(ds, sid_keyword, name, options.sid_mm, "sid_mm")
    sad = _distance(ds, sad_keyword, name, options.sad_mm, "sad_mm")
    # a keyword given for a tag the file has replaces it: said, never silently (a wrong header is why it is given)
    for keyword, given, option in ((sid_keyword, options.sid_mm, "sid_mm"), (sad_keyword, options.sad_mm, "sad_mm")):
        if given is not None and keyword in ds:
            notes.append(f"{tag_label(keyword)} {_printable(str(ds[keyword].value), 40)} {_REPLACED} "
                         f"{option}={float(given):g}")
    if options.pixel_spacing_mm is not None and imager is not None:
        notes.append(f"{tag_label(spacing_source)} {imager[0]:g}/{imager[1]:g} mm at the imager {_REPLACED} "
                     f"pixel_spacing_mm={options.pixel_spacing_mm} at the isocentre")
    if sid is not None and sad is not None and not MAGNIFICATION_RANGE[0] <= sid / sad <= MAGNIFICATION_RANGE[1]:
        raise GeometryError(
            f"{name}: source-imager distance {sid:g} mm ({'sid_mm' if options.sid_mm is not None else tag_label(sid_keyword)}) "
            f"over source-axis distance {sad:g} mm ({'sad_mm' if options.sad_mm is not None else tag_label(sad_keyword)}) "
            f"is a magnification of {sid / sad:.3g}, outside {MAGNIFICATION_RANGE[0]:g}-{MAGNIFICATION_RANGE[1]:g}"
            f"{' (an imager nearer the source than the isocentre)' if sid < sad else ''}; "
            "correct the tags or pass sid_mm= and sad_mm="
        )

    if options.pixel_spacing_mm is not None:
        spacing = _spacing_pair(options.pixel_spacing_mm, "pixel_spacing_mm", name)
        spacing_source = "pixel_spacing_mm"
        if imager is None and sid and sad:
            imager = (spacing[0] * sid / sad, spacing[1] * sid / sad)
    else:
        if imager is None:
            wanted = (
                "ImagePlanePixelSpacing (3002,0011) or PixelSpacing (0028,0030)"
                if rt
                else f"ImagerPixelSpacing (0018,1164) ({modality} image)"
            )
            raise GeometryError(f"{name}: has no {wanted}; pass pixel_spacing_mm= (mm at the isocentre)")
        if sid is None:
            raise GeometryError(f"{name}: has no {tag_label(sid_keyword)}; pass sid_mm=")
        if sad is None:
            raise GeometryError(f"{name}: has no {tag_label(sad_keyword)}; pass sad_mm=")
        # Objects at the isocentre are magnified by SID/SAD on the imager.
        spacing = (imager[0] * sad / sid, imager[1] * sad / sid)
        low, high = ISOCENTRE_SPACING_RANGE_MM
        if not all(low <= s <= high for s in spacing):
            raise GeometryError(
                f"{name}: pixel spacing at the isocentre {spacing[0]:.4g} x {spacing[1]:.4g} mm ({spacing_source} x "
                f"SAD/SID) is outside {low:g}-{high:g} mm; correct the tags or pass pixel_spacing_mm="
            )

    beam_axis, beam_axis_source = (
        _beam_axis(ds, name, shape, imager, notes) if rt else (_centre(shape), "image centre")
    )
    return _Geometry(
        spacing_mm=spacing,
        imager_spacing_mm=imager,
        sid_mm=sid,
        sad_mm=sad,
        beam_axis_px=beam_axis,
        beam_axis_source=beam_axis_source,
        spacing_source=spacing_source,
        notes=notes,
    )


def _centre(shape: tuple[int, int]) -> tuple[float, float]:
    return (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0


#: How far RTImageOrientation's direction cosines may be from unit length, and from a right angle (their cosine).
ORIENTATION_TOLERANCE = 1e-3


def _plane_matrix(ds: Dataset, name: str, imager: tuple[float, float], notes: list[str]) -> np.ndarray:
    """Matrix taking (d_col, d_row) in pixels to (dx, dy) in mm in the RT Image plane."""
    orientation = _checked(ds, "RTImageOrientation", name, counts=(6,), low=-1.0 - 1e-6, high=1.0 + 1e-6,
                           what="a direction cosine", fix="correct or remove the tag")
    if orientation is None:
        orientation = list(_DEFAULT_ORIENTATION)
    # two unit vectors at right angles (PS3.3 C.8.8.2): a fuzzer's 0.9 for 1 moved the beam axis 8 pixels and the
    # registration reported an ok shift 15 mm off
    # ...in the image receptor's plane (z components 0: PS3.3 C.8.8.2.1.1 gives them in the IEC X-RAY IMAGE RECEPTOR
    # system, whose z is the beam's): a tilted pair [1,0,0, 0,-0.8,0.6] moved the axis and gave an ok shift 25 mm off
    row_3d, col_3d = np.array(orientation[0:3]), np.array(orientation[3:6])
    lengths = (float(np.linalg.norm(row_3d)), float(np.linalg.norm(col_3d)))
    cosine, tilt = float(row_3d @ col_3d), max(abs(float(row_3d[2])), abs(float(col_3d[2])))
    if max(abs(lengths[0] - 1.0), abs(lengths[1] - 1.0), abs(cosine), tilt) > ORIENTATION_TOLERANCE:
        raise GeometryError(
            f"{name}: RTImageOrientation (3002,0010) is {_shown(orientation)}: its row and column direction cosines "
            f"must be two unit vectors at right angles in the imager's plane (lengths {lengths[0]:.4g} and "
            f"{lengths[1]:.4g}, cosine between them {cosine:.4g}, z components {float(row_3d[2]):.4g} and "
            f"{float(col_3d[2]):.4g}); the pixel positions it gives would move the beam axis; correct or remove the "
            "tag")
    row_dir = np.array(orientation[0:2])  # direction of increasing column index
    col_dir = np.array(orientation[3:5])  # direction of increasing row index
    matrix = np.column_stack([row_dir * imager[1], col_dir * imager[0]])
    if abs(np.linalg.det(matrix)) < 1e-9 * imager[0] * imager[1]:
        notes.append(f"RTImageOrientation {orientation} is degenerate in the image plane; default used")
        matrix = np.array([[imager[1], 0.0], [0.0, -imager[0]]])
    return matrix


def _beam_axis(
    ds: Dataset, name: str, shape: tuple[int, int], imager: tuple[float, float] | None, notes: list[str]
) -> tuple[tuple[float, float], str]:
    limits = {"low": -POSITION_LIMIT_MM, "high": POSITION_LIMIT_MM, "what": "a position in mm",
              "fix": "correct or remove the tag"}
    position = _checked(ds, "RTImagePosition", name, counts=(2,), **limits)  # type: ignore[arg-type]
    translation = _checked(ds, "XRayImageReceptorTranslation", name, counts=(2, 3), **limits)  # type: ignore[arg-type]
    if imager is None:
        if position is not None or translation is not None:
            notes.append("imager-plane pixel spacing unknown: RTImagePosition/receptor translation not used")
        return _centre(shape), "image centre"
    matrix = _plane_matrix(ds, name, imager, notes)
    if position is not None:
        # The beam axis is the plane origin: solve position + M @ (c, r) = 0.
        col, row = np.linalg.solve(matrix, -np.asarray(position[:2]))
        return (float(col), float(row)), "RTImagePosition"
    if translation is not None:
        # Receptor origin (array centre) sits at +t in the gantry system, so the
        # beam axis is at -t in the receptor's own plane coordinates.
        d_col, d_row = np.linalg.solve(matrix, -np.asarray(translation[:2]))
        centre = _centre(shape)
        return (centre[0] + float(d_col), centre[1] + float(d_row)), "XRayImageReceptorTranslation"
    return _centre(shape), "image centre"


# ---------------------------------------------------------------------------
# image kind, angles, planned aperture
# ---------------------------------------------------------------------------


def _kind(ds: Dataset, modality: str, sid: float | None, sad: float | None) -> str:
    image_type = [v.upper() for v in _text(ds, "ImageType").split("\\")]
    if "DRR" in image_type:
        return "drr"
    # ImageType value 3 says PORTAL (etc.) explicitly: trust it over the heuristics
    # below (MOSAIQ exports of EPID images are DERIVED, WSD, and may have SID == SAD).
    if len(image_type) >= 3 and image_type[2] in _NON_DRR_IMAGE_TYPES:
        return "portal" if modality == "RTIMAGE" or image_type[2] == "PORTAL" else ""
    labels = " ".join(_text(ds, k) for k in ("RTImageLabel", "RTImageName", "RTImageDescription")).upper()
    if re.search(r"(?<![A-Z0-9])DRR(?![A-Z0-9])", labels):
        return "drr"
    conversion = _text(ds, "ConversionType").upper()
    if (
        conversion == "WSD"
        and image_type[:1] == ["DERIVED"]
        and sid is not None
        and sad is not None
        and math.isclose(sid, sad, rel_tol=1e-6)
    ):
        return "drr"
    return "portal" if modality == "RTIMAGE" else ""


def _exposure_item(ds: Dataset, index: int, n_frames: int) -> tuple[Dataset | None, bool]:
    """ExposureSequence item for a frame, and whether it was matched to that frame."""
    items = _sequence(ds, "ExposureSequence")
    if not items:
        return None, False
    if n_frames > 1:
        for item in items:
            if _int(item, "ReferencedFrameNumber") == index + 1:
                return item, True
        if len(items) == n_frames:
            return items[index], True
    return items[0], False


def _angle(ds: Dataset, name: str, item: Dataset | None, specific: bool, keyword: str) -> float | None:
    # Both places are validated even when one of them is used: a damaged value is never skipped silently.
    item_value = _checked_angle(item, keyword, name) if item is not None else None
    top = _checked_angle(ds, keyword, name)
    if specific and item_value is not None:
        return item_value
    return top if top is not None else item_value


def _aperture(item: Dataset | None, collimator_deg: float | None, name: str, notes: list[str]) -> dict[str, Any]:
    """Return the planned aperture of an ExposureSequence ``item``; a jaw item not used is said in ``notes``."""
    if item is None:
        return {}
    jaws_iec: dict[str, float] = {}
    mlc: list[dict[str, Any]] = []
    limits = {"counts": None, "low": -POSITION_LIMIT_MM, "high": POSITION_LIMIT_MM,
              "what": "a jaw or leaf position in mm", "fix": "correct or remove the ExposureSequence item"}
    for device in _sequence(item, "BeamLimitingDeviceSequence"):
        kind = _text(device, "RTBeamLimitingDeviceType").upper()
        positions = _checked(device, "LeafJawPositions", name, **limits)  # type: ignore[arg-type]
        if positions is None:
            continue
        axis = "x1" if kind in ("X", "ASYMX") else "y1" if kind in ("Y", "ASYMY") else ""
        if axis and len(positions) == 2 and axis not in jaws_iec and positions[0] <= positions[1]:
            jaws_iec[axis], jaws_iec[axis[0] + "2"] = positions
        elif axis:
            why = (f"{len(positions)} LeafJawPositions (300A,011C), 2 expected" if len(positions) != 2
                   else f"a second {kind} jaw item" if axis in jaws_iec
                   else f"LeafJawPositions (300A,011C) {positions[0]:g}, {positions[1]:g} reversed (jaw 1 beyond jaw 2)")
            notes.append(f"ExposureSequence: an RTBeamLimitingDeviceType {kind} item with {why}: not used (the "
                         "planned jaws are then unknown on that axis)")
        elif kind in ("MLCX", "MLCY"):
            boundaries = _checked(device, "LeafPositionBoundaries", name, **limits)  # type: ignore[arg-type]
            pairs = _int(device, "NumberOfLeafJawPairs")
            why = _mlc_inconsistency(positions, boundaries, pairs)
            if why:  # a leaf table that does not add up is no aperture (fieldcheck broadcast it into a traceback)
                notes.append(f"ExposureSequence: an RTBeamLimitingDeviceType {kind} item with {why}: not used (the "
                             "planned MLC aperture is then unknown)")
                continue
            mlc.append(
                {
                    "type": kind,
                    "number_of_pairs": len(positions) // 2,
                    # bank A (x1/y1 side) first, then bank B, mm at the isocentre,
                    # IEC beam-limiting-device frame, as in DICOM
                    "leaf_positions_mm": positions,
                    "leaf_boundaries_mm": boundaries,
                    "source_to_device_mm": _float(device, "SourceToBeamLimitingDeviceDistance"),
                }
            )
    extra: dict[str, Any] = {}
    applicator = _applicator(item, name)
    if applicator:
        extra["planned_applicator"] = applicator
    if jaws_iec:
        extra["planned_jaws_iec_mm"] = dict(jaws_iec)
        jaws: dict[str, float] = {}
        if "x1" in jaws_iec:
            jaws["x1"], jaws["x2"] = jaws_iec["x1"], jaws_iec["x2"]
        if "y1" in jaws_iec:
            # IEC y_b points to the gantry, which is up in the RT Image; image rows go down.
            jaws["y1"], jaws["y2"] = -jaws_iec["y2"], -jaws_iec["y1"]
        extra["planned_jaws_mm"] = jaws
        if "x1" in jaws_iec and "y1" in jaws_iec:
            theta = math.radians(collimator_deg or 0.0)
            cos, sin = math.cos(theta), math.sin(theta)
            corners = []
            for bx, by in (
                (jaws_iec["x1"], jaws_iec["y1"]),
                (jaws_iec["x2"], jaws_iec["y1"]),
                (jaws_iec["x2"], jaws_iec["y2"]),
                (jaws_iec["x1"], jaws_iec["y2"]),
            ):
                # counter-clockwise in the beam's eye view (y up), then y flipped to rows
                gx, gy = bx * cos - by * sin, bx * sin + by * cos
                corners.append((gx, -gy))
            extra["planned_field_corners_mm"] = corners
    if mlc:
        extra["planned_mlc"] = mlc
    return extra


def _mlc_inconsistency(positions: list[float], boundaries: list[float] | None, pairs: int | None) -> str:
    """Say what does not add up in an MLC item's leaf table; ``""`` when it is consistent.

    DICOM (C.8.8.14 / C.8.8.25): LeafJawPositions (300A,011C) holds 2 x NumberOfLeafJawPairs (300A,00BC) values,
    bank A then bank B; LeafPositionBoundaries (300A,00BE), where given, NumberOfLeafJawPairs + 1 increasing values
    (a pair whose banks meet or cross is closed, as fieldcheck reads it).
    """
    if len(positions) % 2:
        return f"an odd number of LeafJawPositions (300A,011C), {len(positions)}"
    n = len(positions) // 2
    if pairs is not None and pairs != n:
        return (f"{len(positions)} LeafJawPositions (300A,011C) for NumberOfLeafJawPairs (300A,00BC) {pairs} "
                f"({2 * pairs} expected)")
    if boundaries is not None:
        if len(boundaries) != n + 1:
            return (f"{len(boundaries)} LeafPositionBoundaries (300A,00BE) for {n} leaf pairs ({n + 1} expected)")
        if any(b >= a for a, b in zip(boundaries[1:], boundaries[:-1], strict=True)):
            return "LeafPositionBoundaries (300A,00BE) that do not increase"
    return ""


#: Applicator aperture shapes (DICOM ApplicatorApertureShape, 300A,0432) portalign can compare a field with.
APPLICATOR_SHAPES = ("SYM_CIRCULAR", "SYM_SQUARE", "SYM_RECTANGLE")


def _applicator(item: Dataset, name: str) -> dict[str, Any]:
    """Return the exposure's applicator (an SRS cone, an electron or photon applicator) with a symmetric aperture, or {}.

    From the ApplicatorSequence's first item with an ApplicatorGeometrySequence: the shape
    (``SYM_CIRCULAR``, ``SYM_SQUARE``, ``SYM_RECTANGLE``) and the opening in mm (the diameter of a circular
    aperture, the side of a square one, ``ApplicatorOpeningX/Y`` of a rectangle), taken as the nominal
    field size at the isocentre, as cones are labelled. An opening that is present but unusable is an
    error naming the tag, like the jaws'.
    """
    limits = {"counts": (1,), "low": 0.5, "high": 1000.0, "what": "an applicator opening in mm",
              "fix": "correct or remove the ApplicatorSequence item"}
    for app in _sequence(item, "ApplicatorSequence"):
        for geometry in _sequence(app, "ApplicatorGeometrySequence"):
            shape = _text(geometry, "ApplicatorApertureShape").upper()
            if shape not in APPLICATOR_SHAPES:
                continue
            if shape == "SYM_RECTANGLE":
                x = _checked(geometry, "ApplicatorOpeningX", name, **limits)  # type: ignore[arg-type]
                y = _checked(geometry, "ApplicatorOpeningY", name, **limits)  # type: ignore[arg-type]
                if x is None or y is None:
                    continue
                width, height = x[0], y[0]
            else:
                opening = _checked(geometry, "ApplicatorOpening", name, **limits)  # type: ignore[arg-type]
                if opening is None:
                    continue
                width = height = opening[0]
            return {"id": _text(app, "ApplicatorID"), "type": _text(app, "ApplicatorType"), "shape": shape,
                    "width_mm": width, "height_mm": height}
    return {}


def _common_extra(
    ds: Dataset,
    name: str,
    geometry: _Geometry,
    n_frames: int,
    slope: float,
    intercept: float,
    sign: int,
    reason: str,
) -> dict[str, Any]:
    transfer_syntax = _transfer_syntax(ds)
    extra: dict[str, Any] = {
        "number_of_frames": n_frames,
        "transfer_syntax": str(transfer_syntax),
        "transfer_syntax_name": transfer_syntax.name,
        "transfer_syntax_assumed": bool(getattr(ds, "_portalign_assumed_transfer_syntax", False)),
        "intensity_sign_applied": sign,
        "intensity_sign_reason": reason,
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "photometric_interpretation": _text(ds, "PhotometricInterpretation"),
        "spacing_source": geometry.spacing_source,
        "beam_axis_source": geometry.beam_axis_source,
        "magnification": (geometry.sid_mm / geometry.sad_mm) if geometry.sid_mm and geometry.sad_mm else None,
        "rt_image_label": _text(ds, "RTImageLabel"),
        "image_type": _text(ds, "ImageType"),
        "conversion_type": _text(ds, "ConversionType"),
        "notes": list(geometry.notes),
    }
    for keyword, key in (("StudyInstanceUID", "study_instance_uid"), ("SOPClassUID", "sop_class_uid"),
                         ("PatientID", "patient_id"), ("PatientName", "patient_name"), ("Manufacturer", "manufacturer"),
                         ("ManufacturerModelName", "model")):
        value = _text(ds, keyword)
        if value:
            extra[key] = value
    # when the image was taken (the review picture shows it) and with which beam: a kVp means a kV image
    for keyword in ("AcquisitionDate", "ContentDate", "InstanceCreationDate", "StudyDate"):
        if _text(ds, keyword):
            extra["acquisition_date"] = _text(ds, keyword)
            extra["acquisition_time"] = _text(ds, keyword.replace("Date", "Time")) or None
            break
    exposures = _sequence(ds, "ExposureSequence")
    # the sequence's faults, said once for the file (every frame's notes start from these)
    if not exposures and _sequence_unreadable(ds, "ExposureSequence"):  # said, not taken for absent (a fuzzer's)
        extra["notes"].append("ExposureSequence (3002,0030) is present but cannot be read as a sequence: its planned "
                              "jaws, per-frame gantry angles and KVP are not used")
    if n_frames > 1:  # items naming one frame twice: matched first-wins, and said (a fuzzer's 2, 2, 3)
        named = [_int(item, "ReferencedFrameNumber") for item in exposures]
        counts = Counter(n for n in named if n is not None)
        repeated = sorted(n for n, count in counts.items() if count > 1)
        if repeated:
            extra["notes"].append(f"ExposureSequence (3002,0030): items name frame(s) {', '.join(map(str, repeated))} "
                                  f"more than once (ReferencedFrameNumber {named}): each frame takes the first item "
                                  "that names it; its per-frame gantry angle and aperture may be another frame's")
    kvp = _kvp(ds, exposures[0] if exposures else None, extra["notes"])
    if kvp is not None:
        extra["kvp"] = kvp
    isocentre = _floats(ds, "IsocenterPosition", minimum=3)
    if isocentre is not None:
        extra["isocenter_position_mm"] = isocentre
    elif _get(ds, "IsocenterPosition") is not None:  # present but not three finite numbers: said, not dropped unsaid
        extra["notes"].append(f"IsocenterPosition (300A,012C) is {_shown(_get(ds, 'IsocenterPosition'))}, not three "
                              "finite numbers (mm): not used (a REG written from it takes the isocentre as unknown)")
    orientation = _floats(ds, "RTImageOrientation", minimum=6)
    if orientation is not None:
        extra["rt_image_orientation"] = orientation
    beam = _int(ds, "ReferencedBeamNumber")
    if beam is not None:
        extra["referenced_beam_number"] = beam
    plans = _sequence(ds, "ReferencedRTPlanSequence")
    if plans:
        plan_uid = _text(plans[0], "ReferencedSOPInstanceUID")
        if plan_uid:
            extra["referenced_rt_plan_uid"] = plan_uid
    translation = _floats(ds, "XRayImageReceptorTranslation", minimum=2)
    if translation is not None:
        extra["receptor_translation_mm"] = translation
    receptor_angle = _checked_angle(ds, "XRayImageReceptorAngle", name)
    if receptor_angle is not None:
        extra["receptor_angle_deg"] = receptor_angle
    # the table top turned about its eccentric axis (IEC 61217): the patient's turn adds to the support's
    eccentric = _checked_angle(ds, "TableTopEccentricAngle", name)
    if eccentric is not None:
        extra["table_top_eccentric_deg"] = eccentric
    return extra


def _frame_info(
    ds: Dataset,
    name: str,
    modality: str,
    kind: str,
    geometry: _Geometry,
    index: int,
    n_frames: int,
    common: dict[str, Any],
) -> ImageInfo:
    item, specific = _exposure_item(ds, index, n_frames)
    collimator = _angle(ds, name, item, specific, "BeamLimitingDeviceAngle")
    extra = dict(common)
    extra["notes"] = list(common["notes"])
    extra.update(_aperture(item, collimator, name, extra["notes"]))
    if item is not None:
        # the top level and the frame's ExposureSequence item naming two angles: one is used, and the contradiction
        # is said (a hostile campaign's item at gantry 90 under a top-level 0 was registered as 0, nothing said)
        said = []
        for keyword in ("GantryAngle", "BeamLimitingDeviceAngle", "PatientSupportAngle"):
            top, own = _checked_angle(ds, keyword, name), _checked_angle(item, keyword, name)
            if top is not None and own is not None and abs((top - own + 180.0) % 360.0 - 180.0) > 1.0:
                used = own if specific else top
                said.append(f"{name}: {tag_label(keyword)} is {top:g} deg at the top level but {own:g} deg in the "
                            f"ExposureSequence item of this frame; {used:g} deg is used: the header contradicts "
                            "itself (check the export)")
        if said:
            extra["notes"].extend(said)
            extra["header_contradictions"] = said
    return ImageInfo(
        source=name,
        modality=modality,
        kind=kind,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        frame_index=index,
        gantry_deg=_angle(ds, name, item, specific, "GantryAngle"),
        collimator_deg=collimator,
        couch_deg=_angle(ds, name, item, specific, "PatientSupportAngle"),
        sid_mm=geometry.sid_mm,
        sad_mm=geometry.sad_mm,
        imager_spacing_mm=geometry.imager_spacing_mm,
        patient_position=_text(ds, "PatientPosition"),
        extra=extra,
    )


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


#: How a geometry note says that a keyword replaced a tag the file has (:func:`replaced_tags` finds them).
_REPLACED = "of the file replaced by"


def replaced_tags(info: Any) -> list[str]:
    """Return the notes of an image's ``info`` that say a geometry keyword replaced a tag the file has.

    ``sid_mm=``, ``sad_mm=`` and ``pixel_spacing_mm=`` fill tags a file lacks; given for one it has, they replace
    its value, and the reader says so in ``info.extra["notes"]`` (e.g. ``RadiationMachineSAD (3002,0022) 1000
    of the file replaced by sad_mm=900``).
    """
    return [note for note in info.extra.get("notes", []) if _REPLACED in note]


def _header_note(message: str, ds: Dataset | None = None) -> str:
    """Say a warning of pydicom's about a header value as what it means for the user, naming the attribute.

    pydicom's messages give the value or its length but not the tag; the top level of ``ds`` is searched for the
    elements they fit (a value warned about inside a sequence stays unnamed).
    """
    found = re.fullmatch(r"Invalid value for VR UI: '(.*)'\.?", message)
    if found:
        named = _elements_where(ds, lambda element: element.VR == "UI" and str(element.value) == found.group(1))
        return (f"{named}UID '{found.group(1)}' is not a valid DICOM UID (digits and dots; a vendor's hexadecimal id?): "
                "kept as this image's identity; a DICOM REG written from it gets valid UIDs of its own")
    found = re.fullmatch(r"The value length \((\d+)\) exceeds the maximum length of (\d+) allowed for VR (\w\w)\.?",
                         message)
    if found:
        length, vr = int(found.group(1)), found.group(3)
        named = _elements_where(ds, lambda element: element.VR == vr and isinstance(element.value, str)
                                and len(element.value) == length)
        return f"{named}{message}"
    return message


def _elements_where(ds: Dataset | None, fits: Any) -> str:
    """``"Keyword (gggg,eeee): "`` of the top-level elements of ``ds`` that ``fits``, or ``""`` when none or no ``ds``."""
    if ds is None:
        return ""
    names = []
    # elements converted here for the first time would warn again (said once already): quiet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for element in ds:
                if element.VR not in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") and fits(element):
                    names.append(f"{element.keyword or 'private tag'} "
                                 f"({element.tag.group:04X},{element.tag.element:04X})")
        except Exception:  # noqa: BLE001 - a name for a note; a damaged element elsewhere must not cost the image
            return ""
    return f"{', '.join(names[:3])}: " if names else ""


def _one_line(exc: Any) -> str:
    text = [t.strip() for t in str(exc).strip().splitlines() if t.strip()]
    line = text[0] if text else type(exc).__name__
    if line.endswith(":") and len(text) > 1:  # "raised by all available plugins:" and the reason on the next line
        line = f"{line} {text[1]}"
    line = line.split(" Please see <", 1)[0]  # pydicom's link to the standard
    # a decoder's repr of its input ("<_io.BytesIO object at 0x7f3a...>") says nothing to a reader and differs per run
    line = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the compressed frame", line)
    return line if len(line) <= 200 else line[:197] + "..."


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value
