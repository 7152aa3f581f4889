"""CT volumes: read an axial DICOM CT series into Hounsfield units with its geometry.

A :class:`CTVolume` is what :mod:`portalign.simulate` renders DRRs and simulated
portal images from. Its array axes follow DICOM patient coordinates (LPS: +x to
the patient's left, +y posterior, +z superior): ``hu[k, j, i]`` is the voxel whose
centre lies at::

    x = origin_mm[0] + i * spacing_mm[2]
    y = origin_mm[1] + j * spacing_mm[1]
    z = origin_mm[2] + k * spacing_mm[0]

Series stored with flipped row/column directions are flipped on reading so that
this always holds; oblique or gantry-tilted series are refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GeometryError, PortalImageError

__all__ = ["CTVolume", "read_ct_series"]

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
_AXIS_TOLERANCE = 1e-3  # direction cosines this close to +-1/0 count as axis-aligned


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT volume in Hounsfield units on a regular, axis-aligned grid.

    Parameters
    ----------
    hu : numpy.ndarray
        float32 ``[z, y, x]`` Hounsfield units (at least 2 voxels on each axis).
    spacing_mm : tuple of float
        Voxel spacing ``(z, y, x)`` in mm.
    origin_mm : tuple of float
        ``(x, y, z)`` of the centre of voxel ``[0, 0, 0]`` in DICOM patient
        coordinates (mm).
    patient_position : str
        DICOM Patient Position (``HFS``, ``FFS``, ``HFP``, ``FFP``...) or ``""``
        when unknown.
    source : str
        Where the volume came from; used in error messages.
    series_instance_uid, frame_of_reference_uid : str
        DICOM identity of the series, passed on to rendered images.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    patient_position: str = "HFS"
    source: str = "array"
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""

    def __post_init__(self) -> None:
        name = self.source
        hu = np.asarray(self.hu)
        if hu.ndim != 3 or min(hu.shape) < 2:
            raise PortalImageError(
                f"{name}: a CT volume needs a 3-D array with at least 2 voxels per axis, got shape {hu.shape}"
            )
        if not np.issubdtype(hu.dtype, np.number) or np.iscomplexobj(hu):
            raise PortalImageError(f"{name}: CT values must be real numbers, got dtype {hu.dtype}")
        hu = np.ascontiguousarray(hu, dtype=np.float32)
        if not np.isfinite(hu).all():
            raise PortalImageError(f"{name}: CT volume holds NaN or infinite values")
        object.__setattr__(self, "hu", hu)
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"{name}: spacing_mm must be three positive numbers (z, y, x), got {self.spacing_mm!r}")
        origin = tuple(float(o) for o in self.origin_mm)
        if len(origin) != 3 or not all(np.isfinite(o) for o in origin):
            raise GeometryError(f"{name}: origin_mm must be three finite numbers (x, y, z), got {self.origin_mm!r}")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "patient_position", str(self.patient_position).strip().upper())

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` voxel counts."""
        return self.hu.shape  # type: ignore[return-value]

    @property
    def centre_mm(self) -> tuple[float, float, float]:
        """``(x, y, z)`` of the centre of the voxel grid in DICOM patient coordinates."""
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing_mm
        ox, oy, oz = self.origin_mm
        return ox + (nx - 1) * sx / 2.0, oy + (ny - 1) * sy / 2.0, oz + (nz - 1) * sz / 2.0

    def downsampled(self, factor: int | tuple[int, int, int]) -> CTVolume:
        """Return the volume averaged over blocks of ``factor`` voxels (faster rendering).

        Parameters
        ----------
        factor : int or (int, int, int)
            Block size, one number for all axes or ``(z, y, x)``. Voxels left over
            at the high end of an axis are dropped.

        Returns
        -------
        CTVolume
            Same patient position and identity; spacing multiplied by the factor
            and the origin moved to the centre of the first block.
        """
        factors: tuple[Any, ...] = (factor,) * 3 if np.ndim(factor) == 0 else tuple(factor)  # type: ignore[arg-type]
        if len(factors) != 3 or not all(int(f) == f and f >= 1 for f in factors):
            raise GeometryError(
                f"{self.source}: downsampling factor must be a positive integer or three, got {factor!r}"
            )
        fz, fy, fx = (int(f) for f in factors)
        if (fz, fy, fx) == (1, 1, 1):
            return self
        nz, ny, nx = (n // f for n, f in zip(self.shape, (fz, fy, fx), strict=True))
        if min(nz, ny, nx) < 2:
            raise GeometryError(
                f"{self.source}: a factor of {factor!r} leaves fewer than 2 voxels on an axis of {self.shape}"
            )
        blocks = self.hu[: nz * fz, : ny * fy, : nx * fx].reshape(nz, fz, ny, fy, nx, fx)
        hu = blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
        sz, sy, sx = self.spacing_mm
        ox, oy, oz = self.origin_mm
        return CTVolume(
            hu=hu,
            spacing_mm=(sz * fz, sy * fy, sx * fx),
            origin_mm=(ox + (fx - 1) * sx / 2.0, oy + (fy - 1) * sy / 2.0, oz + (fz - 1) * sz / 2.0),
            patient_position=self.patient_position,
            source=self.source,
            series_instance_uid=self.series_instance_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
        )


def read_ct_series(folder: str | Path, *, series_uid: str | None = None) -> CTVolume:
    """Read an axial CT series (one DICOM file per slice) from a folder.

    Files that are not DICOM, DICOM objects that are not CT images (RT
    structure sets, plans, doses next to the CT) and CT localizers (scouts)
    are skipped; the folder must then hold exactly one CT series, or
    ``series_uid`` must name one.

    Parameters
    ----------
    folder : str or Path
        Folder holding the slices (not searched recursively).
    series_uid : str, optional
        SeriesInstanceUID to read when the folder holds several CT series.

    Returns
    -------
    CTVolume
        Slices sorted by increasing z, values rescaled to Hounsfield units.

    Raises
    ------
    PortalImageError
        Empty folder, no CT slices, several series, slices that do not form a
        regular volume, or pixel data that cannot be decoded.
    """
    import pydicom  # DICOM is only needed here
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise PortalImageError(f"{folder}: no such folder; give the folder that holds the planning CT's slices (one "
                               "DICOM file per slice)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise PortalImageError(f"{folder}: folder is empty; expected one DICOM file per CT slice")

    headers: dict[str, list[tuple[Path, Any]]] = {}
    not_dicom: list[str] = []
    other: Counter[str] = Counter()
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            not_dicom.append(path.name)
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class == _ENHANCED_CT_STORAGE:
            raise PortalImageError(
                f"{path}: multi-frame (Enhanced) CT is not supported; export the series as one file per slice"
            )
        if sop_class != _CT_IMAGE_STORAGE and not (ds.get("Modality") == "CT" and "Rows" in ds):
            other[str(ds.get("Modality", "") or sop_class or "unknown")] += 1
            continue
        if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            other["CT localizer"] += 1  # a scout/topogram saved in the series is not a slice
            continue
        headers.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))

    if not headers:
        found = []
        if other:
            found.append("DICOM " + ", ".join(f"{m} x{n}" for m, n in sorted(other.items())))
        if not_dicom:
            found.append(f"{len(not_dicom)} non-DICOM file(s) such as {not_dicom[0]!r}")
        raise PortalImageError(f"{folder}: no CT image slices among {len(files)} file(s) ({'; '.join(found)}); "
                               "point read_ct_series at the folder of the CT series")
    if series_uid is not None:
        if series_uid not in headers:
            raise PortalImageError(
                f"{folder}: no CT series with SeriesInstanceUID {series_uid}; found {_list_series(headers)}"
            )
        slices = headers[series_uid]
    elif len(headers) > 1:
        raise PortalImageError(f"{folder}: holds {len(headers)} CT series ({_list_series(headers)}); "
                               "pass series_uid= to choose one")
    else:
        series_uid, slices = next(iter(headers.items()))
    return _assemble(folder, series_uid, slices)


#: Physical ranges of the CT geometry tags: (value multiplicity, low, high).
_CT_TAGS = {
    "PixelSpacing": ((2,), 0.01, 50.0),
    "ImagePositionPatient": ((3,), -1e5, 1e5),
    "ImageOrientationPatient": ((6,), -1.0 - 1e-6, 1.0 + 1e-6),
    "Rows": ((1,), 2, 65535),
    "Columns": ((1,), 2, 65535),
    "BitsAllocated": ((1,), 8, 64),
}
#: Compressed slices may decode to at most this many times their file's size.
_MAX_COMPRESSION_RATIO = 200


def _slice_header(path: Path, ds: Any) -> dict[str, Any]:
    """Validate one slice's geometry and size tags before anything is allocated for it.

    Every tag needed to place the slice must be present with its value
    multiplicity, finite and in a physical range; the pixel data the header
    promises must fit in the file (uncompressed) or in
    ``_MAX_COMPRESSION_RATIO`` times it (compressed).
    """
    header: dict[str, Any] = {}
    for keyword, (counts, low, high) in _CT_TAGS.items():
        try:
            value = ds[keyword].value if keyword in ds else None
        except Exception as exc:
            raise PortalImageError(f"{path}: CT slice {keyword} cannot be read ({exc}); the file is damaged") from None
        if value is None or value == "" or value == []:
            if keyword == "BitsAllocated":
                value = 16
            else:
                raise PortalImageError(f"{path}: CT slice has no {keyword}; it cannot be placed in the volume")
        items = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
        try:
            numbers = [float(v) for v in items]
        except (TypeError, ValueError):
            raise PortalImageError(f"{path}: CT slice {keyword} is {value!r}, not a number; the file is damaged") from None
        if len(numbers) not in counts:
            raise PortalImageError(f"{path}: CT slice {keyword} has {len(numbers)} values; it must have {counts[0]}")
        if not all(np.isfinite(v) and low <= v <= high for v in numbers):
            raise PortalImageError(f"{path}: CT slice {keyword} is {numbers}; each value must be a finite number "
                                   f"from {low:g} to {high:g}; the file is damaged")
        header[keyword] = numbers
    rows, cols, bits = int(header["Rows"][0]), int(header["Columns"][0]), int(header["BitsAllocated"][0])
    header["size"] = (rows, cols)
    needed = rows * cols * bits // 8  # Python integers: nothing overflows, nothing is allocated
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        compressed = bool(syntax is not None and syntax.is_compressed)
    except Exception:  # not a transfer syntax: decoding will say so
        compressed = False
    size = path.stat().st_size
    if needed > (_MAX_COMPRESSION_RATIO * size if compressed else size):
        raise PortalImageError(f"{path}: Rows x Columns x BitsAllocated ({rows} x {cols} x {bits}) needs {needed} bytes "
                               f"of pixel data but the file has {size}; the file is truncated or its size tags are wrong")
    return header


def _list_series(headers: dict[str, list[tuple[Path, Any]]]) -> str:
    return ", ".join(f"{uid or '<no SeriesInstanceUID>'}: {len(s)} slices" for uid, s in headers.items())


def _assemble(folder: Path, series_uid: str, slices: list[tuple[Path, Any]]) -> CTVolume:
    """Check that the slices form one regular axial volume and read their pixels."""
    import pydicom

    if len(slices) < 2:
        raise PortalImageError(f"{folder}: the CT series has {len(slices)} slice; at least 2 are needed for a volume")
    first_path, first = slices[0]
    headers = {path: _slice_header(path, ds) for path, ds in slices}
    rows, cols = headers[first_path]["size"]
    spacing = np.array(headers[first_path]["PixelSpacing"])  # (between rows, between columns)
    orientation = np.array(headers[first_path]["ImageOrientationPatient"])
    for path, _ in slices[1:]:
        header = headers[path]
        if header["size"] != (rows, cols):
            raise PortalImageError(f"{path}: slice is {header['size'][0]}x{header['size'][1]}, {first_path.name} is "
                                   f"{rows}x{cols}; the series mixes image sizes")
        if not np.allclose(header["PixelSpacing"], spacing, atol=1e-4):
            raise PortalImageError(
                f"{path}: PixelSpacing differs from {first_path.name}; the series mixes reconstructions"
            )
        if not np.allclose(header["ImageOrientationPatient"], orientation, atol=_AXIS_TOLERANCE):
            raise PortalImageError(f"{path}: ImageOrientationPatient differs from {first_path.name}")

    row_dir, col_dir = orientation[:3], orientation[3:]
    flip_cols, flip_rows = row_dir[0] < 0, col_dir[1] < 0
    if not (np.allclose(np.abs(row_dir), [1, 0, 0], atol=_AXIS_TOLERANCE)
            and np.allclose(np.abs(col_dir), [0, 1, 0], atol=_AXIS_TOLERANCE)):
        raise PortalImageError(f"{folder}: ImageOrientationPatient {orientation.tolist()} is not axial; "
                               "oblique CT series are not supported (resample to axial slices first)")

    positions = np.array([headers[path]["ImagePositionPatient"] for path, _ in slices])
    order = np.argsort(positions[:, 2], kind="stable")
    positions = positions[order]
    slices = [slices[i] for i in order]
    if np.ptp(positions[:, 0]) > 1e-2 or np.ptp(positions[:, 1]) > 1e-2:
        raise PortalImageError(f"{folder}: slice x/y positions vary along the series (gantry tilt?); "
                               "tilted CT series are not supported")
    gaps = np.diff(positions[:, 2])
    if gaps.min() <= 1e-3:
        k = int(np.argmin(gaps))
        raise PortalImageError(f"{folder}: {slices[k][0].name} and {slices[k + 1][0].name} are both at z = "
                               f"{positions[k, 2]:g} mm; remove the duplicate slice")
    dz = float(np.median(gaps))
    if np.abs(gaps - dz).max() > max(0.01 * dz, 1e-2):
        raise PortalImageError(f"{folder}: slice spacing varies from {gaps.min():g} to {gaps.max():g} mm "
                               "(missing slices?); a regular volume is needed")

    hu = np.empty((len(slices), rows, cols), dtype=np.float32)
    for k, (path, _) in enumerate(slices):
        ds = pydicom.dcmread(path)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many kinds for undecodable pixel data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise PortalImageError(f"{path}: cannot decode the pixel data (transfer syntax {syntax}: {exc}); "
                                   "install a pydicom pixel-data plugin such as pylibjpeg") from exc
        if pixels.shape != (rows, cols):
            raise PortalImageError(f"{path}: pixel data is {pixels.shape}, the header says {rows}x{cols}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        hu[k] = pixels.astype(np.float32) * slope + intercept

    x0, y0 = positions[0, 0], positions[0, 1]
    if flip_cols:  # x decreases along a row: store it increasing
        hu = hu[:, :, ::-1]
        x0 -= (cols - 1) * spacing[1]
    if flip_rows:
        hu = hu[:, ::-1, :]
        y0 -= (rows - 1) * spacing[0]
    return CTVolume(
        hu=np.ascontiguousarray(hu),
        spacing_mm=(dz, float(spacing[0]), float(spacing[1])),
        origin_mm=(float(x0), float(y0), float(positions[0, 2])),
        patient_position=str(first.get("PatientPosition", "") or ""),
        source=str(folder),
        series_instance_uid=series_uid,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
    )
