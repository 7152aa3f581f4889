"""Header-only index of an archive: what every file is, and why a file is not used.

Each file is read with ``pydicom.dcmread(stop_before_pixels=True, specific_tags=...)``:
only the attributes listed in :data:`HEADER_TAGS` are parsed and the pixel data is
never loaded. Whether the pixel data is all there is checked from the length in
its element header against the bytes left in the file (native pixel data) or
from the sequence delimiter at the end of the file (encapsulated pixel data), so a
truncated copy is caught here and not on a worker.

Classification (DICOM PS3.3 C.8.8.2, RT Image Module)
------------------------------------------------------
``reference``
    An RT Image whose ``ImageType`` value 3 is ``DRR`` (``reference_kind="drr"``),
    or a portal image marked as the reference of its beam: ``ImageType`` holding
    ``REFERENCE`` or an ``RTImageLabel`` / ``RTImageDescription`` / ``RTImageName``
    holding the word ``REFERENCE`` (``reference_kind="portal"``).
``frame``
    Any other RT Image (``ImageType`` value 3 ``PORTAL``, a single or a multi-frame
    cine acquisition): registered against its beam's reference.
``plan``
    An RT Plan (Modality ``RTPLAN``): indexed, not registered.
``other``
    DICOM that is neither (CT, RT Struct, REG...).
``not_dicom``, ``unreadable``, ``truncated``
    The file cannot be used; ``reason`` says why.
``duplicate`` (set later by the pairing)
    Same SOP Instance UID as a file listed before it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["HEADER_TAGS", "INDEX_COLUMNS", "index_file", "index_files", "list_files"]

#: The attributes parsed from each file's header; nothing else is read.
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "ImageType", "PatientID", "PatientName", "PatientPosition",
    "StudyInstanceUID", "SeriesInstanceUID", "ReferencedRTPlanSequence", "ReferencedBeamNumber",
    "GantryAngle", "PatientSupportAngle", "BeamLimitingDeviceAngle", "XRayImageReceptorAngle",
    "FractionNumber", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "ContentDate", "ContentTime", "StudyDate",
    "StudyTime", "InstanceCreationDate", "InstanceCreationTime", "Rows", "Columns", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames", "RTImageLabel", "RTImageName", "RTImageDescription", "RTPlanLabel",
]

#: Columns of ``index.parquet``, in order.
INDEX_COLUMNS = [
    "path", "size_bytes", "category", "reference_kind", "modality", "image_type", "sop_instance_uid",
    "patient_id", "patient_position", "plan_uid", "beam_number", "gantry_deg", "couch_deg", "collimator_deg",
    "receptor_angle_deg", "fraction_number", "date", "time", "fraction", "number_of_frames", "rows", "cols",
    "label", "fate", "reason",
]

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, FloatPixelData, DoubleFloatPixelData
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}
_RT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.1"
_RT_PLAN_STORAGE = {"1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"}  # RT Plan, RT Ion Plan
_REFERENCE_WORD = re.compile(r"(?<![A-Z0-9])REF(ERENCE)?(?![A-Z0-9])")
_DRR_WORD = re.compile(r"(?<![A-Z0-9])DRR(?![A-Z0-9])")


def list_files(sources: Iterable[str | os.PathLike[str]], *, exclude: str | os.PathLike[str] | None = None) -> list[str]:
    """Return every file under the sources, sorted, without duplicates.

    Parameters
    ----------
    sources : iterable of path
        Files and folders (walked recursively; symbolic links to files and to folders are followed, a folder
        reached twice, by a link or a link loop, is walked once). Entries that are not regular files (a FIFO, a
        device, a socket, a link to nothing) are listed too: :func:`index_file` says why each is not read, and
        nothing under a source goes unsaid (a new user's linked patient folders and FIFO were left out of the
        index without a word, and Σ/σ counted fewer patients than there were).
    exclude : path, optional
        A folder whose files are left out (the run's own output folder when it
        lies inside a source).

    Returns
    -------
    list of str
        Absolute paths, sorted.

    Raises
    ------
    FileNotFoundError
        For a source that does not exist.
    """
    skip = os.path.realpath(exclude) if exclude is not None else None
    found: set[str] = set()
    walked: set[str] = set()  # the folders' real paths: a link back up (a loop) or a second link is walked once
    for source in sources:
        root = os.path.abspath(os.fspath(source))
        if not os.path.isdir(root):
            if not os.path.lexists(root):
                raise FileNotFoundError(root)
            found.add(root)  # a file, or something that is not one: its row says which
            continue
        for folder, dirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if (skip is not None and (real == skip or real.startswith(skip + os.sep))) or real in walked:
                dirs[:] = []
                continue
            walked.add(real)
            dirs.sort()
            for name in files:
                found.add(os.path.join(folder, name))
    return sorted(found)


def index_files(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Index several files (one :func:`index_file` row each, in order); the unit of work of a Dask index task."""
    return [index_file(path) for path in paths]


def index_file(path: str) -> dict[str, Any]:
    """Read one file's header and classify it.

    pydicom's warnings about odd header values are kept off the console: an archive holds thousands of
    vendor files with non-conforming UIDs and lengths, and the registration's reader records them in each
    result's ``dicom_warnings``.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    dict
        A row with the keys of :data:`INDEX_COLUMNS`; values that the header does
        not hold are ``None``. ``fate`` and ``reason`` are filled in for files that
        cannot be used (``category`` ``not_dicom``, ``unreadable``, ``truncated``,
        ``other``); the pairing fills them in for the others.
    """
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        return _index_file(path)


def _index_file(path: str) -> dict[str, Any]:
    """:func:`index_file`, warnings left to the caller."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    row: dict[str, Any] = dict.fromkeys(INDEX_COLUMNS)
    row["path"] = path
    try:
        kind = os.stat(path).st_mode
    except OSError as exc:  # a link to nothing, a file removed since it was listed
        return _unusable(row, "unreadable", f"cannot be read: {_one_line(exc)}")
    if not stat.S_ISREG(kind):  # never opened: a FIFO would wait for a writer, a device never ends
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(kind) else "a device" if stat.S_ISCHR(kind) or stat.S_ISBLK(kind)
                else "a socket" if stat.S_ISSOCK(kind) else "not a regular file")
        return _unusable(row, "unreadable", f"{what}, not a file: not read")
    try:
        size = os.path.getsize(path)
        row["size_bytes"] = size
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            except InvalidDicomError:
                # No preamble / 'DICM': accept it only when a DICOM element stream parses.
                fp.seek(0)
                try:
                    ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS, force=True)
                except Exception:  # noqa: BLE001 (any parse failure of a file without DICM means: not DICOM)
                    ds = None
                if ds is None or not _looks_like_dicom(ds):
                    return _unusable(row, "not_dicom", "not a DICOM file (no DICM prefix and no DICOM elements)")
            missing = _missing_pixel_bytes(fp, ds, size)
    except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, struct.error, AttributeError) as exc:
        return _unusable(row, "unreadable", f"header cannot be read: {_one_line(exc)}")
    except Exception as exc:  # pydicom raises many kinds on garbage; the file is reported, never dropped
        return _unusable(row, "unreadable", f"header cannot be read: {type(exc).__name__}: {_one_line(exc)}")

    try:
        _fill(row, ds)
    except Exception as exc:  # a malformed value (bad DS, bad date): report the file, keep going
        return _unusable(row, "unreadable", f"header value cannot be parsed: {_one_line(exc)}")
    if missing:
        return _unusable(row, "truncated", missing)
    modality = row["modality"] or ""
    sop_class = _text(ds, "SOPClassUID")
    if not modality and not sop_class:  # a DICM prefix before garbage (a new user's) was "other: Modality (none)"
        return _unusable(row, "unreadable", "neither SOP Class UID (0008,0016) nor Modality (0008,0060) can be read: "
                                            "a damaged file, or no DICOM object")
    if modality == "RTPLAN" or sop_class in _RT_PLAN_STORAGE:
        row["category"] = "plan"
        row["fate"] = "indexed"
        row["reason"] = "RT Plan: indexed, not registered"
        return row
    if modality != "RTIMAGE":
        return _unusable(row, "other", f"Modality {modality or '(none)'}: not an RT Image or RT Plan", fate="skipped")
    if row["rows"] is None or row["cols"] is None:
        return _unusable(row, "other", "RT Image without Rows/Columns (no pixel data)", fate="skipped")
    reference_kind = _reference_kind(ds)
    row["category"] = "reference" if reference_kind else "frame"
    row["reference_kind"] = reference_kind
    return row


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _unusable(row: dict[str, Any], category: str, reason: str, *, fate: str = "skipped") -> dict[str, Any]:
    row["category"] = category
    row["fate"] = fate
    row["reason"] = reason
    return row


def _looks_like_dicom(ds: Any) -> bool:
    # force=True turns almost any bytes into a dataset: real DICOM has a few group 0008 / 0010 / 0028 elements.
    return any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows"))


def _missing_pixel_bytes(fp: Any, ds: Any, size: int) -> str:
    """Why the pixel data is incomplete, or ``""``: the file pointer sits on the pixel data element (if any)."""
    start = fp.tell()
    header = fp.read(8)
    if len(header) < 8:
        # No pixel data element before the end of the file: fine for a plan or a structure set, a cut file
        # for an image (its meta or its header says it is an RT Image, or it has Rows).
        meta = getattr(ds, "file_meta", None)
        classes = {_text(ds, "SOPClassUID"), _text(meta, "MediaStorageSOPClassUID") if meta is not None else ""}
        if _RT_IMAGE_STORAGE in classes or "Rows" in ds:
            return f"truncated: the file ends ({size} bytes) before its pixel data"
        return ""
    little = getattr(ds, "is_little_endian", None)
    little = True if little is None else bool(little)
    order = "<" if little else ">"
    group, element = struct.unpack(order + "HH", header[:4])
    tag = (group << 16) | element
    if tag not in _PIXEL_TAGS:
        return ""
    implicit = getattr(ds, "is_implicit_VR", None)
    if implicit is None:
        implicit = not (header[4:6].isalpha() and header[4:6].isupper())
    if implicit:
        (length,) = struct.unpack(order + "I", header[4:8])
        value_start = start + 8
    elif header[4:6] in _LONG_VRS:
        rest = fp.read(4)
        if len(rest) < 4:
            return f"truncated: the file ends inside the pixel data element header ({size} bytes)"
        (length,) = struct.unpack(order + "I", rest)
        value_start = start + 12
    else:
        (length,) = struct.unpack(order + "H", header[6:8])
        value_start = start + 8
    if length == 0xFFFFFFFF:
        # Encapsulated (compressed): the fragments end with a Sequence Delimitation Item (FFFE,E0DD).
        fp.seek(max(size - 8, 0))
        tail = fp.read(8)
        delimiter = struct.pack(order + "HH", 0xFFFE, 0xE0DD)
        if not tail.startswith(delimiter):
            return "truncated: encapsulated pixel data without its sequence delimiter at the end of the file"
        return ""
    available = size - value_start
    if available < length:
        return f"truncated: pixel data holds {available} of {length} bytes"
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if rows and cols and bits:
        expected = rows * cols * (_int(ds, "SamplesPerPixel") or 1) * (_int(ds, "NumberOfFrames") or 1) * bits // 8
        if length < expected:
            return f"truncated: pixel data holds {length} of the {expected} bytes its Rows, Columns and frames need"
    return ""


def _fill(row: dict[str, Any], ds: Any) -> None:
    row["modality"] = _text(ds, "Modality").upper() or None
    row["image_type"] = _text(ds, "ImageType") or None
    row["sop_instance_uid"] = _text(ds, "SOPInstanceUID") or None
    row["patient_id"] = _text(ds, "PatientID") or _text(ds, "PatientName") or None  # the name when the ID is empty
    row["patient_position"] = _text(ds, "PatientPosition").upper() or None
    plans = ds.get("ReferencedRTPlanSequence")
    if plans:
        row["plan_uid"] = _text(plans[0], "ReferencedSOPInstanceUID") or None
    if row["modality"] == "RTPLAN":
        row["plan_uid"] = row["sop_instance_uid"]
    row["beam_number"] = _int(ds, "ReferencedBeamNumber")
    row["gantry_deg"] = _float(ds, "GantryAngle")
    row["couch_deg"] = _float(ds, "PatientSupportAngle")
    row["collimator_deg"] = _float(ds, "BeamLimitingDeviceAngle")
    row["receptor_angle_deg"] = _float(ds, "XRayImageReceptorAngle")
    row["fraction_number"] = _int(ds, "FractionNumber")
    date, time = "", ""
    stamp = _text(ds, "AcquisitionDateTime")  # DT, YYYYMMDDHHMMSS...: the acquisition's, when given this way
    if len(stamp) >= 8 and not _text(ds, "AcquisitionDate"):
        date, time = stamp[:8], stamp[8:]
    for date_key, time_key in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                               ("InstanceCreationDate", "InstanceCreationTime"), ("StudyDate", "StudyTime")):
        if date:
            break
        date = _text(ds, date_key)
        if date:
            time = _text(ds, time_key)
    row["date"] = _iso_date(date) or None
    row["time"] = time or None
    # The fraction: Fraction Number (3002,0029) when present, otherwise the acquisition date.
    if row["fraction_number"] is not None:
        row["fraction"] = f"fraction {row['fraction_number']}"
    elif row["date"]:
        row["fraction"] = f"date {row['date']}"
    row["number_of_frames"] = _int(ds, "NumberOfFrames") or (1 if "Rows" in ds else None)
    row["rows"] = _int(ds, "Rows")
    row["cols"] = _int(ds, "Columns")
    label = _text(ds, "RTImageLabel") or _text(ds, "RTImageName") or _text(ds, "RTPlanLabel")
    row["label"] = label or None


def _reference_kind(ds: Any) -> str | None:
    image_type = [v.strip().upper() for v in _text(ds, "ImageType").split("\\")]
    labels = " ".join(_text(ds, k) for k in ("RTImageLabel", "RTImageName", "RTImageDescription")).upper()
    if len(image_type) >= 3 and image_type[2] == "DRR":
        return "drr"
    if len(image_type) >= 3 and image_type[2] in ("PORTAL", "SIMULATOR", "RADIOGRAPH"):
        if "REFERENCE" in image_type[3:] or _REFERENCE_WORD.search(labels):
            return "portal"
        return None
    if "DRR" in image_type or _DRR_WORD.search(labels):
        return "drr"
    if "REFERENCE" in image_type or _REFERENCE_WORD.search(labels):
        return "portal"
    return None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _float(ds: Any, keyword: str) -> float | None:
    text = _text(ds, keyword).split("\\")[0]
    if not text:
        return None
    number = float(text)
    return number if number == number else None


def _int(ds: Any, keyword: str) -> int | None:
    text = _text(ds, keyword).split("\\")[0]
    return int(float(text)) if text else None


def _iso_date(value: str) -> str:
    """``YYYYMMDD`` -> ``YYYY-MM-DD`` (checked); other strings as they are."""
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        return _dt.date(int(value[:4]), int(value[4:6]), int(value[6:])).isoformat()
    return value


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def iter_chunks(items: list[str], size: int) -> Iterator[list[str]]:
    """Split ``items`` into consecutive chunks of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start:start + size]

