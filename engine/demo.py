"""A self-contained sample pair: a pelvis-like phantom CT, its DRR and a displaced MV portal frame.

``portalign demo`` writes both as DICOM RT Images, registers them exactly as
``portalign register`` would, and prints the result beside the truth. Nothing
is downloaded and no patient data is shipped: the phantom is built here from
ellipses (soft tissue, pelvis, femoral heads, spine, bowel gas) and rendered
with :mod:`portalign.simulate`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from .ct import CTVolume
from .image import Image

__all__ = ["phantom_ct", "write_rt_image", "make_demo_pair", "DEMO_TRUTH"]

#: The displacement the demo frame is rendered with (DESIGN.md result contract).
DEMO_TRUTH = {"dx_mm": 4.2, "dy_mm": -2.7, "rotation_deg": 1.5}


def phantom_ct(spacing_mm: float = 2.0) -> CTVolume:
    """Return a pelvis-like phantom CT (HU) of about 300 x 220 x 200 mm, HFS, isocentre at its centre."""
    nx, ny, nz = int(300 / spacing_mm), int(220 / spacing_mm), int(200 / spacing_mm)
    z, y, x = np.meshgrid(
        (np.arange(nz) - (nz - 1) / 2) * spacing_mm,
        (np.arange(ny) - (ny - 1) / 2) * spacing_mm,
        (np.arange(nx) - (nx - 1) / 2) * spacing_mm,
        indexing="ij",
    )
    hu = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    hu[(x / 140) ** 2 + (y / 100) ** 2 < 1] = 20.0  # body (DICOM y points posterior)
    bone = 900.0
    # iliac wings: tilted ellipses that narrow towards the feet (-z)
    for side in (-1, 1):
        wing = ((x - side * (70 - 0.15 * z)) / 38) ** 2 + ((y - 20) / 18) ** 2 + ((z - 40) / 60) ** 2 < 1
        hu[wing] = bone
        hole = ((x - side * (70 - 0.15 * z)) / 26) ** 2 + ((y - 20) / 10) ** 2 + ((z - 40) / 48) ** 2 < 1
        hu[hole] = 250.0  # cancellous interior
        head = ((x - side * 85) / 22) ** 2 + ((y - 5) / 22) ** 2 + ((z + 55) / 22) ** 2 < 1
        hu[head] = bone
        shaft = ((x - side * 95) / 14) ** 2 + ((y - 5) / 14) ** 2 < 1
        hu[shaft & (z < -60)] = bone
        ramus = ((x - side * 35) / 12) ** 2 + ((y + 15) / 12) ** 2 + ((z + 75) / 25) ** 2 < 1
        hu[ramus] = bone
    # lumbar vertebrae and sacrum: a column of bodies with discs between them
    body = ((x / 20) ** 2 + ((y - 55) / 16) ** 2 < 1) & (np.mod(z + 200, 34) > 6)
    hu[body & (z > -20)] = 600.0
    spinous = (np.abs(x) < 5) & (y > 72) & (y < 92) & (np.mod(z + 200, 34) > 14)
    hu[spinous & (z > -20)] = bone
    # bowel gas pockets
    for cx, cy, cz, r in ((-30, -40, 30, 14), (35, -30, 60, 10), (10, -55, -10, 9)):
        hu[((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) < r * r] = -800.0
    return CTVolume(hu=hu, spacing_mm=(spacing_mm, spacing_mm, spacing_mm),
                    origin_mm=(float(x.min()), float(y.min()), float(z.min())), patient_position="HFS",
                    source="phantom")


def make_demo_pair(*, detector_shape: tuple[int, int] = (384, 512), detector_spacing_mm: float = 0.784,
                   seed: int = 0) -> tuple[Image, Image, dict[str, Any]]:
    """Render the demo reference DRR and the displaced MV frame (aS500-like imager at SID 1500 mm)."""
    from .simulate import render_pair

    ct = phantom_ct()
    reference, frame, truth = render_pair(
        ct,
        shift_mm=(DEMO_TRUTH["dx_mm"], DEMO_TRUTH["dy_mm"]),
        rotation_deg=DEMO_TRUTH["rotation_deg"],
        sid_mm=1500.0,
        detector_shape=detector_shape,
        detector_spacing_mm=detector_spacing_mm,
        field_mm=(-70.0, 70.0, -60.0, 60.0),
        noise=0.01,
        seed=seed,
    )
    return reference, frame, truth


def write_rt_image(image: Image, path: str | Path, *, label: str, image_type: str) -> Path:
    """Write ``image`` as a DICOM RT Image (16-bit, rescaled) that :func:`portalign.dicom.read_rt_image` reads back.

    The isocentre spacing is written as ImagePlanePixelSpacing at the imager
    (times SID / SAD) and the beam axis as RTImagePosition, so the geometry
    round-trips exactly.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    from ._pydicom_compat import write_dataset

    rt_image_storage = UID("1.2.840.10008.5.1.4.1.1.481.1")
    info = image.info
    sid = info.sid_mm or 1000.0
    sad = info.sad_mm or 1000.0
    scale = sid / sad
    sy, sx = image.spacing_mm[0] * scale, image.spacing_mm[1] * scale
    pixels = image.pixels.astype(np.float64)
    lo, hi = float(pixels.min()), float(pixels.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((pixels - lo) / slope).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = rt_image_storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = _dt.datetime.now()
    ds.SOPClassUID = rt_image_storage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = info.frame_of_reference_uid or generate_uid()
    ds.Modality = "RTIMAGE"
    ds.ImageType = ["DERIVED", "SECONDARY", image_type]
    ds.ConversionType = "WSD"
    ds.PatientName = "PHANTOM^DEMO"
    ds.PatientID = "PORTALIGN-DEMO"
    ds.PatientPosition = info.patient_position or "HFS"
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.RTImageLabel = label
    ds.RTImagePlane = "NORMAL"
    ds.RadiationMachineSAD = f"{sad:g}"
    ds.RTImageSID = f"{sid:g}"
    ds.ImagePlanePixelSpacing = [f"{sy:.10g}", f"{sx:.10g}"]
    cx, cy = image.beam_axis_px
    ds.RTImagePosition = [f"{-cx * sx:.10g}", f"{cy * sy:.10g}"]
    ds.GantryAngle = f"{info.gantry_deg or 0.0:g}"
    ds.BeamLimitingDeviceAngle = f"{info.collimator_deg or 0.0:g}"
    ds.PatientSupportAngle = f"{info.couch_deg or 0.0:g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:.10g}"
    ds.RescaleIntercept = f"{lo:.10g}"
    ds.PixelData = stored.tobytes()
    path = Path(path)
    write_dataset(path, ds)
    return path
