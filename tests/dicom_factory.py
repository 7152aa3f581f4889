"""Build small, valid RT Image datasets in memory for tests.

Any test module can make a DICOM input with::

    from dicom_factory import make_rt_image, to_bytes, write_rt_image

    ds = make_rt_image(pixels, spacing=0.4, sid=1500.0, sad=1000.0, position="centre")
    path = write_rt_image(ds, tmp_path / "portal.dcm")

Datasets are Explicit VR Little Endian with proper file meta information, uint16
pixels, Modality RTIMAGE, RT Image Storage SOP class and fresh UIDs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from portalign._pydicom_compat import write_dataset
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, RTImageStorage, generate_uid
from pydicom.valuerep import DSfloat

__all__ = ["make_rt_image", "to_bytes", "write_rt_image", "ds_value"]


def ds_value(value: float) -> DSfloat:
    """A DS (decimal string) value formatted to fit the 16-character DICOM limit."""
    return DSfloat(float(value), auto_format=True)


def make_rt_image(
    pixels: Any,
    *,
    spacing: float | tuple[float, float] | None = 0.4,
    sid: float | None = 1500.0,
    sad: float | None = 1000.0,
    position: tuple[float, float] | str | None = None,
    gantry: float | Sequence[float] | None = 0.0,
    frames: int | None = None,
    **tags: Any,
) -> Dataset:
    """Return an RT Image dataset holding ``pixels``.

    Parameters
    ----------
    pixels : array_like
        ``(rows, cols)`` or ``(frames, rows, cols)``. Integers in 0..65535 are stored
        as they are. Anything else (floats, negative values) is mapped linearly onto
        0..65535 and ``RescaleSlope``/``RescaleIntercept`` are set so that the
        rescaled values reproduce the input to within ``(max - min) / 65535``.
    spacing : float or (row, col), optional
        ImagePlanePixelSpacing (3002,0011) in mm at the imager; ``None`` omits it.
    sid, sad : float, optional
        RTImageSID (3002,0026) and RadiationMachineSAD (3002,0022); ``None`` omits.
    position : (x, y), "centre" or None
        RTImagePosition (3002,0012) in mm at the imager (x right, y up, centre of
        the first pixel). ``"centre"`` puts the beam axis at the array centre;
        ``None`` omits the tag (readers then use the image centre as well).
    gantry : float or sequence of float, optional
        GantryAngle (300A,011E). A sequence gives one angle per frame, written as
        ExposureSequence items with ReferencedFrameNumber 1..n (the top-level
        GantryAngle is the first). ``None`` omits it.
    frames : int, optional
        Number of frames. ``None``: 2-D pixels give a single-frame image and 3-D
        pixels a multi-frame one. With 2-D pixels and ``frames=n`` the image is
        repeated n times; with 3-D pixels it must equal ``len(pixels)``.
    **tags
        Further attributes by pydicom keyword (``PixelIntensityRelationshipSign=-1``,
        ``PatientPosition="HFS"``, ``ExposureSequence=[...]``). ``None`` deletes the
        attribute. Applied last, so they override everything above.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` set; write it with :func:`write_rt_image` or
        :func:`to_bytes`.
    """
    array = np.asarray(pixels)
    if array.ndim == 2:
        if frames is not None:
            array = np.repeat(array[np.newaxis], int(frames), axis=0)
    elif array.ndim == 3:
        if frames is not None and int(frames) != array.shape[0]:
            raise ValueError(f"frames={frames} but pixels hold {array.shape[0]} frames")
    else:
        raise ValueError(f"pixels must be 2-D or 3-D, got shape {array.shape}")
    stored, slope, intercept = _to_uint16(array)
    n_frames = stored.shape[0] if stored.ndim == 3 else 1
    rows, cols = stored.shape[-2:]

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = RTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "RTIMAGE"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "PORTAL"]
    ds.ConversionType = "DI"
    ds.PatientName = "Synthetic^Portal"
    ds.PatientID = "PORTALIGN-TEST"
    ds.RTImageLabel = "synthetic"
    ds.RTImagePlane = "NORMAL"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleIntercept = ds_value(intercept)
        ds.RescaleSlope = ds_value(slope)
        ds.RescaleType = "US"
    if spacing is not None:
        row_spacing, col_spacing = (spacing, spacing) if np.ndim(spacing) == 0 else spacing  # type: ignore[misc]
        ds.ImagePlanePixelSpacing = [ds_value(row_spacing), ds_value(col_spacing)]
    if sid is not None:
        ds.RTImageSID = ds_value(sid)
    if sad is not None:
        ds.RadiationMachineSAD = ds_value(sad)
    if position is not None:
        if isinstance(position, str):
            if position != "centre" or spacing is None:
                raise ValueError("position must be (x, y), 'centre' (with a spacing) or None")
            row_spacing, col_spacing = (spacing, spacing) if np.ndim(spacing) == 0 else spacing  # type: ignore[misc]
            position = (-(cols - 1) / 2.0 * col_spacing, (rows - 1) / 2.0 * row_spacing)
        ds.RTImagePosition = [ds_value(position[0]), ds_value(position[1])]
        ds.RTImageOrientation = [1, 0, 0, 0, -1, 0]
    if gantry is not None:
        angles = [float(gantry)] if np.ndim(gantry) == 0 else [float(g) for g in gantry]  # type: ignore[union-attr]
        ds.GantryAngle = ds_value(angles[0])
        if len(angles) > 1:
            if len(angles) != n_frames:
                raise ValueError(f"{len(angles)} gantry angles for {n_frames} frames")
            items = []
            for number, angle in enumerate(angles, start=1):
                item = Dataset()
                item.ReferencedFrameNumber = number
                item.GantryAngle = ds_value(angle)
                items.append(item)
            ds.ExposureSequence = items
    if n_frames > 1 or frames is not None:
        ds.NumberOfFrames = n_frames
        ds.FrameIncrementPointer = Tag("ExposureSequence")
    ds.PixelData = stored.astype("<u2").tobytes()
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def with_float_pixels(ds: Dataset, values: np.ndarray) -> Dataset:
    """Return ``ds`` (from :func:`make_rt_image`) holding ``values`` as Float Pixel Data (7FE0,0008) instead.

    float32, BitsAllocated 32; the tags of integer pixels (BitsStored, HighBit, PixelRepresentation) and the
    rescale (RescaleSlope, RescaleIntercept, RescaleType) are removed. Modified in place.
    """
    del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return ds


def to_bytes(ds: Dataset, *, file_format: bool = True) -> bytes:
    """Encode a dataset as a DICOM file (``file_format=False``: bare dataset, no preamble/meta)."""
    buffer = io.BytesIO()
    if file_format:
        write_dataset(buffer, ds)
    else:
        bare = Dataset()
        bare.update(ds)
        write_dataset(buffer, bare, file_format=False, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def write_rt_image(ds: Dataset, path: str | Path, *, file_format: bool = True) -> Path:
    """Write a dataset to ``path`` (see :func:`to_bytes`) and return the path."""
    path = Path(path)
    path.write_bytes(to_bytes(ds, file_format=file_format))
    return path


def _to_uint16(array: np.ndarray) -> tuple[np.ndarray, float | None, float | None]:
    if array.dtype == bool:
        return array.astype(np.uint16), None, None
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"pixels must be numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("pixels must be finite; build NaN/inf cases by hand (FloatPixelData)")
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 65535 and np.array_equal(values, np.round(values)):
        return values.astype(np.uint16), None, None
    slope = (high - low) / 65535.0 if high > low else 1.0
    stored = np.round((values - low) / slope).clip(0, 65535).astype(np.uint16)
    return stored, slope, low
