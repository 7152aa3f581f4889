"""Unusable input: a clean error naming the input and the fix, never a traceback.

Every case is checked twice:

* the Python API (``portalign.register`` on paths or arrays, ``Image.from_array``)
  raises the documented exception class (``PortalImageError`` or
  ``GeometryError``) with a message that names the input;
* ``portalign register --json`` exits with status 2 and prints exactly one line on
  stderr, ``portalign register: error: <file>: ...``, and on stdout one JSON object with ``ok: false`` and that message
  (a caller parsing stdout is never left with nothing);

with the bad file in the reference slot and in the frame slot. A few cases run
as a real ``python -m portalign.cli`` process to see what a user's terminal sees.
The last group are gaps these tests found (CLI messages naming API keywords, a
text file named .npy, unchecked reference pixels, a tiny frame marked ok), kept
as regression tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import portalign
import pytest
from dicom_factory import make_rt_image, to_bytes, write_rt_image
from portalign import Image, ImageInfo
from portalign._pydicom_compat import write_dataset
from portalign.backends import select_backend
from portalign.cli import main
from portalign.errors import (
    BackendUnavailableError,
    GeometryError,
    PortalignError,
    PortalImageError,
    ReferencePreparationError,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTPlanStorage, generate_uid
from scipy import ndimage
from synthetic import anatomy

SIZE = 128
ISO = {"spacing": 1.0, "sid": 1000.0, "sad": 1000.0, "position": "centre"}
ROLES = ("reference", "frame")


@dataclass(frozen=True)
class Good:
    """A valid pair, as files and as arrays (1 mm pixels)."""

    ref_dcm: Path
    frame_dcm: Path
    ref_array: np.ndarray
    frame_array: np.ndarray


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    folder = tmp_path_factory.mktemp("good_pair")
    ref = anatomy(SIZE, seed=4)
    frame = ndimage.shift(ref, (1.0, 2.0), order=3, mode="nearest")
    return Good(
        write_rt_image(make_rt_image(ref, **ISO), folder / "good_reference.dcm"),
        write_rt_image(make_rt_image(frame, **ISO), folder / "good_frame.dcm"),
        ref.astype(np.float32),
        frame.astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------
# the bad files
# ---------------------------------------------------------------------------------------------


def _pixels() -> np.ndarray:
    return anatomy(64, seed=9)


def _text(folder: Path) -> Path:
    path = folder / "notes.dcm"
    path.write_text("Patient: PHANTOM\nShift: 3 mm left\n")
    return path


def _empty(folder: Path) -> Path:
    path = folder / "empty.dcm"
    path.write_bytes(b"")
    return path


def _random_bytes(folder: Path) -> Path:
    path = folder / "noise.dcm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _truncated_pixels(folder: Path) -> Path:
    data = to_bytes(make_rt_image(_pixels(), **ISO))
    path = folder / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])  # header intact, half the pixel data gone
    return path


def _cut_before_pixels(folder: Path) -> Path:
    """An RT Image cut short after its header, before the pixel data element (a copy that stopped)."""
    data = to_bytes(make_rt_image(_pixels(), **ISO))
    path = folder / "cut_before_pixels.dcm"
    path.write_bytes(data[: data.rindex(b"\xe0\x7f\x10\x00")])  # up to the (7FE0,0010) PixelData tag
    return path


def _truncated_header(folder: Path) -> Path:
    data = to_bytes(make_rt_image(_pixels(), **ISO))
    path = folder / "truncated_header.dcm"
    path.write_bytes(data[:200])  # preamble, "DICM", part of the file meta
    return path


def _rt_plan(folder: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTPlanStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = RTPlanStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTPLAN"
    ds.RTPlanLabel = "PELVIS"
    path = folder / "plan.dcm"
    write_dataset(path, ds)
    return path


def _ct_slice(folder: Path) -> Path:
    return write_rt_image(make_rt_image(_pixels(), **ISO, Modality="CT"), folder / "ct_slice.dcm")


def _no_spacing(folder: Path) -> Path:
    return write_rt_image(make_rt_image(_pixels(), **{**ISO, "spacing": None, "position": None}),
                          folder / "no_spacing.dcm")


def _no_sid(folder: Path) -> Path:
    return write_rt_image(make_rt_image(_pixels(), **{**ISO, "sid": None}), folder / "no_sid.dcm")


def _constant_dcm(folder: Path) -> Path:
    return write_rt_image(make_rt_image(np.full((64, 64), 1200, dtype=np.uint16), **ISO), folder / "flat.dcm")


def _tiny_dcm(folder: Path) -> Path:
    return write_rt_image(make_rt_image(_pixels()[:4, :4], **ISO), folder / "tiny.dcm")


def _missing_dcm(folder: Path) -> Path:
    return folder / "never_written.dcm"


def _directory(folder: Path) -> Path:
    path = folder / "series_folder"
    path.mkdir()
    return path


def _npy(name: str, array: np.ndarray) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        np.save(path, array)
        return path

    return write


def _with_nan() -> np.ndarray:
    array = _pixels().astype(np.float32)
    array[10, 20] = np.nan
    return array


def _with_inf() -> np.ndarray:
    array = _pixels().astype(np.float32)
    array[5, 5] = np.inf
    return array


def _text_npy(folder: Path) -> Path:
    path = folder / "not_an_array.npy"
    path.write_text("1 2 3\n4 5 6\n")
    return path


def _huge_header_npy(folder: Path) -> Path:
    """A .npy whose header declares 100000 x 100000 float32 (37 GiB) over 1 kB of data: refused from the header."""
    path = folder / "huge_header.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)})
        handle.write(np.zeros(256, np.float32).tobytes())
    return path


def _missing_npy(folder: Path) -> Path:
    return folder / "never_saved.npy"


@dataclass(frozen=True)
class Case:
    """One unusable input.

    ``error`` is the exception the Python API raises for it (``None`` where only the
    CLI reads such a file); ``message`` is a regular expression both messages match.
    """

    id: str
    make: Callable[[Path], Path]
    error: type[PortalignError] | None
    message: str
    cli_args: tuple[str, ...] = ()


SPACING = ("--pixel-spacing-mm", "1")

CASES = [
    Case("text", _text, PortalImageError, r"not a DICOM file"),
    Case("empty", _empty, PortalImageError, r"empty .*not a DICOM file"),
    Case("random-bytes", _random_bytes, PortalImageError, r"not a DICOM file"),
    Case("truncated-pixels", _truncated_pixels, PortalImageError, r"PixelData has \d+ bytes but .* the file is truncated"),
    Case("truncated-header", _truncated_header, PortalImageError, r"(not a|damaged) DICOM file"),
    Case("cut-before-pixels", _cut_before_pixels, PortalImageError,
         r"has no pixel data \(Modality RTIMAGE\): an image file of [\d,]+ bytes that ends before its pixels, most "
         r"likely cut short; copy or export it again"),
    Case("rt-plan", _rt_plan, PortalImageError, r"no pixel data \(Modality RTPLAN\)"),
    Case("ct-slice", _ct_slice, PortalImageError, r"Modality CT is not a projection image"),
    Case("no-spacing", _no_spacing, GeometryError, r"ImagePlanePixelSpacing.*(pixel_spacing_mm=|--pixel-spacing-mm)"),
    Case("no-sid", _no_sid, GeometryError, r"RTImageSID.*(sid_mm=|--sid-mm)"),
    Case("constant-dcm", _constant_dcm, PortalImageError, r"same value"),
    Case("tiny-dcm", _tiny_dcm, PortalImageError, r"4x4 .*8x8"),
    Case("missing-dcm", _missing_dcm, PortalImageError, r"no such file"),
    Case("directory", _directory, PortalImageError, r"is a directory"),
    Case("nan-npy", _npy("nan.npy", _with_nan()), PortalImageError, r"NaN or infinite", SPACING),
    Case("inf-npy", _npy("inf.npy", _with_inf()), PortalImageError, r"NaN or infinite", SPACING),
    Case("constant-npy", _npy("flat.npy", np.full((64, 64), 3.5, np.float32)), PortalImageError, r"same value",
         SPACING),
    Case("3d-npy", _npy("stack.npy", np.stack([_pixels()] * 3)), PortalImageError, r"2-D .*\(3, 64, 64\)", SPACING),
    Case("1d-npy", _npy("profile.npy", _pixels()[32]), PortalImageError, r"2-D .*\(64,\)", SPACING),
    Case("empty-npy", _npy("nothing.npy", np.zeros((0, 0), np.float32)), PortalImageError, r"empty", SPACING),
    Case("tiny-npy", _npy("tiny.npy", _pixels()[:4, :4]), PortalImageError, r"4x4 .*8x8", SPACING),
    # one pixel is too small an image before it is a constant one
    Case("one-pixel-npy", _npy("one.npy", _pixels()[:1, :1]), PortalImageError, r"1x1 .*8x8", SPACING),
    Case("complex-npy", _npy("complex.npy", _pixels().astype(np.complex64)), PortalImageError, r"real numbers",
         SPACING),
    Case("text-npy", _text_npy, None, r"not a \.npy file", SPACING),
    # a header that declares far more than the file holds is refused before anything is allocated
    Case("huge-header-npy", _huge_header_npy, None,
         r"header declares a 100000 x 100000 float32 array \(40,000,000,000 bytes\) but the file holds 1,024 bytes "
         r"of data: the file is truncated or damaged; save it again \(numpy\.save\)", SPACING),
    Case("missing-npy", _missing_npy, None, r"(?i)no such file", SPACING),
    # a .npy has no geometry: the Python API says the same for arrays (test_api_array_without_spacing)
    Case("npy-without-spacing", _npy("no_geometry.npy", _pixels()), None, r"no geometry; pass --pixel-spacing-mm"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_input")
    return {case.id: case.make(folder) for case in CASES}


def _argv(case: Case, bad: Path, role: str, good: Good) -> list[str]:
    ref, frame = (bad, good.frame_dcm) if role == "reference" else (good.ref_dcm, bad)
    return ["register", str(ref), str(frame), "--json", *case.cli_args]


def assert_one_line_error(err: str, name: str, message: str) -> str:
    """Check the CLI's stderr: one line, ``portalign register: error:`` (or ``info``), naming ``name``; return it."""
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"expected exactly one line on stderr, got {err!r}"
    line = err.rstrip("\n")
    assert re.match(r"portalign (register|info): error: ", line), line
    assert name in line, f"the error does not name {name!r}: {line}"
    assert re.search(message, line), f"{message!r} not in {line!r}"
    return line


def assert_json_error(out: str, line: str) -> None:
    """``--json``'s stdout on an error: one JSON object, ``ok`` false, the stderr line's message, nothing measured."""
    assert out.endswith("\n") and out.count("\n") == 1, out
    payload = json.loads(out)
    assert payload["ok"] is False and payload["error"] and payload["detail"] == re.sub(r"^portalign \w+: error: ", "", line)
    assert payload["dx_mm"] is None and payload["dy_mm"] is None and payload["rotation_deg"] is None


# ---------------------------------------------------------------------------------------------
# CLI, in process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_one_line_error(capsys: pytest.CaptureFixture[str], case: Case, role: str, good: Good,
                            bad_files: dict[str, Path]) -> None:
    bad = bad_files[case.id]
    status = main(_argv(case, bad, role, good))
    out, err = capsys.readouterr()
    assert status == 2
    line = assert_one_line_error(err, bad.name, case.message)
    assert_json_error(out, line)


def test_cli_error_names_the_path_where_reference_and_frame_share_a_file_name(
        capsys: pytest.CaptureFixture[str], good: Good, tmp_path: Path) -> None:
    """A reading error names the file; a reference and a frame of one name (two sessions' exports) named it twice over,
    so the path as given is named then (a new user's trial: a truncated copy of a Winston-Lutz image)."""
    bad = _truncated_pixels(tmp_path)
    same = tmp_path / "frames" / good.ref_dcm.name
    same.parent.mkdir()
    same.write_bytes(bad.read_bytes())
    assert main(["register", str(good.ref_dcm), str(same)]) == 2
    line = assert_one_line_error(capsys.readouterr().err, str(same), r"PixelData has \d+ bytes but")
    assert line.startswith(f"portalign register: error: {same}: PixelData has")
    # of two different names, the file's name alone, as before
    assert main(["register", str(good.ref_dcm), str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"portalign register: error: {bad.name}: PixelData has")


# ---------------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------------

API_CASES = [c for c in CASES if c.error is not None]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_error(case: Case, role: str, good: Good, bad_files: dict[str, Path]) -> None:
    bad = bad_files[case.id]
    assert case.error is not None
    if bad.suffix == ".npy":
        # arrays are named by their role in portalign.register ...
        array = np.load(bad)
        pair = (array, good.frame_array) if role == "reference" else (good.ref_array, array)
        with pytest.raises(case.error, match=case.message) as info:
            portalign.register(*pair, pixel_spacing_mm=1.0)
        assert str(info.value).startswith(f"{role}: ")
        # ... and by the name given to Image.from_array
        with pytest.raises(case.error, match=case.message) as info:
            Image.from_array(array, pixel_spacing_mm=1.0, name=bad.name)
        assert str(info.value).startswith(f"{bad.name}: ")
    else:
        pair = (bad, good.frame_dcm) if role == "reference" else (good.ref_dcm, bad)
        with pytest.raises(case.error, match=case.message) as info:
            portalign.register(*pair)
        assert str(info.value).startswith(f"{bad.name}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("role", ROLES)
def test_api_array_without_spacing(role: str, good: Good) -> None:
    prepared = portalign.prepare_reference(Image.from_array(good.ref_array, pixel_spacing_mm=1.0))
    with pytest.raises(GeometryError, match=rf"^{role}: a numpy array has no geometry; pass pixel_spacing_mm="):
        if role == "reference":
            portalign.register(good.ref_array, good.frame_array)
        else:
            prepared.register(good.frame_array)


def _block(a: np.ndarray, value: float) -> np.ndarray:
    """``a`` with the 2x2 block at rows 4-5, columns 6-7 set to ``value``."""
    out = np.array(a, dtype=np.float32)
    out[4:6, 6:8] = value
    return out


def _raw_image(pixels: np.ndarray, source: str) -> Image:
    """An Image built directly (no check_pixels): what a frame grabber integration may hand over."""
    rows, cols = pixels.shape
    return Image(pixels.astype(np.float32), (1.0, 1.0), ((cols - 1) / 2, (rows - 1) / 2), ImageInfo(source=source))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        pytest.param(lambda a: np.where(np.arange(a.size).reshape(a.shape) == 77, np.nan, a),
                     r"1 pixel is NaN or infinite \(the first at row \d+, column \d+\): the pixel data is damaged; "
                     r"export the image again$", id="nan"),
        pytest.param(lambda a: np.where(np.arange(a.size).reshape(a.shape) == 77, -np.inf, a), r"1 pixel is NaN or infinite",
                     id="inf"),
        pytest.param(lambda a: np.zeros_like(a), r"same value", id="constant"),
        pytest.param(lambda a: np.where(np.arange(a.size).reshape(a.shape) == 77, 1e38, a),
                     r"pixel value 1e\+38 at row \d+, column \d+ is beyond \+-1e\+30, no detector's value: the pixel "
                     r"data is damaged; export the image again$", id="huge"),
        # a 2x2 block of 1e38: its box sum overflows float32 (this raised ZeroDivisionError from the level stage)
        pytest.param(lambda a: _block(a, 3e38), r"pixel value 3e\+38 at row 4, column 6 is beyond", id="overflowing block"),
        pytest.param(lambda a: _block(a, -1e31), r"pixel value -1e\+31 at row 4, column 6 is beyond", id="huge negative"),
    ],
)
def test_reference_register_checks_frame_pixels(pixels: Callable[[np.ndarray], np.ndarray], message: str,
                                                good: Good) -> None:
    prepared = portalign.prepare_reference(Image.from_array(good.ref_array, pixel_spacing_mm=1.0))
    frame = _raw_image(pixels(good.frame_array), "epid_frame_0017")
    with pytest.raises(PortalImageError, match=rf"^epid_frame_0017: .*{message}"):
        prepared.register(frame)


def test_image_rejects_3d_pixels() -> None:
    with pytest.raises(PortalImageError, match=r"^cine_stack: pixels must be a 2-D array, got shape \(3, 16, 16\)"):
        Image(np.ones((3, 16, 16), np.float32), (1.0, 1.0), (8.0, 8.0), ImageInfo(source="cine_stack"))


@pytest.mark.parametrize("spacing", [0.0, -1.0, float("nan")])
def test_api_bad_pixel_spacing(spacing: float, good: Good) -> None:
    with pytest.raises(GeometryError, match=r"^reference: row pixel spacing must be a positive number of mm"):
        portalign.register(good.ref_array, good.frame_array, pixel_spacing_mm=spacing)


@pytest.mark.parametrize(("keywords", "message"), [
    ({"pixel_spacing_mm": "abc"}, r"pixel_spacing_mm must be one number or \(row, col\) in mm, got 'abc'$"),
    ({"pixel_spacing_mm": (1.0, None)}, r"pixel_spacing_mm must be one number or \(row, col\) in mm, got \(1\.0, None\)$"),
    ({"pixel_spacing_mm": 1.0, "beam_axis_px": "ab"}, r"beam_axis_px must be \(column, row\) in pixels, got 'ab'$"),
    ({"pixel_spacing_mm": 1.0, "beam_axis_px": (1, 2, 3)}, r"beam_axis_px must be \(column, row\) in pixels"),
])
def test_api_geometry_that_is_no_number_is_a_geometry_error(keywords: dict, message: str) -> None:
    # session 25's fuzz: a string spacing escaped as a bare ValueError ("could not convert string to float")
    with pytest.raises(GeometryError, match=rf"^epid_frame: {message}"):
        Image.from_array(np.random.default_rng(0).random((64, 64)), name="epid_frame", **keywords)


# ---------------------------------------------------------------------------------------------
# the fixes the messages suggest do work
# ---------------------------------------------------------------------------------------------


def test_missing_spacing_fixed_by_pixel_spacing_mm(capsys: pytest.CaptureFixture[str],
                                                   bad_files: dict[str, Path]) -> None:
    bad = bad_files["no-spacing"]
    image = portalign.read_rt_image(bad, pixel_spacing_mm=0.8)
    assert image.spacing_mm == (0.8, 0.8)
    assert main(["info", str(bad), "--json"]) == 2  # info has no override: still the one-line error
    _, err = capsys.readouterr()
    assert_one_line_error(err, bad.name, r"ImagePlanePixelSpacing")


def test_missing_sid_fixed_by_sid_mm(bad_files: dict[str, Path]) -> None:
    bad = bad_files["no-sid"]
    image = portalign.read_rt_image(bad, sid_mm=1500.0)
    # 1 mm at the imager, SID 1500, SAD 1000 (from the file): 2/3 mm at the isocentre
    assert image.spacing_mm == pytest.approx((1000.0 / 1500.0, 1000.0 / 1500.0))
    assert image.info.sid_mm == 1500.0


# ---------------------------------------------------------------------------------------------
# other unusable command lines
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--frame-index", "3"], r"has 1 frame; --frame-index 3 is out of range \(only 0, 0-based\)"),
        (["--sid-mm", "0"], r"--sid-mm must be a positive number of mm, got 0\.0$"),
        (["--pixel-spacing-mm", "-1"], r"--pixel-spacing-mm must be a positive number of mm, got -1\.0$"),
        (["--sad-mm", "5"], r"--sad-mm=5 mm is outside the physical range 100-10000 mm$"),
        (["--pixel-spacing-mm", "1e-4"], r"--pixel-spacing-mm=0\.0001 mm is outside the physical range 0\.005-10 mm$"),
    ],
    ids=["frame-index", "sid-zero", "negative-spacing", "sad-too-small", "spacing-too-small"],
)
def test_cli_bad_options(capsys: pytest.CaptureFixture[str], extra: list[str], message: str, good: Good) -> None:
    status = main(["register", str(good.ref_dcm), str(good.frame_dcm), "--json", *extra])
    out, err = capsys.readouterr()
    assert status == 2
    # the first file read that the option breaks is named
    name = good.frame_dcm.name if "--frame-index" in extra else good.ref_dcm.name
    assert_json_error(out, assert_one_line_error(err, name, message))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--field-margin-mm", "nan"], r"--field-margin-mm must be a finite number; got nan$"),
        (["--max-shift-mm", "inf"], r"--max-shift-mm must be a finite number; got inf$"),
        (["--max-shift-mm", "1e6"], r"--max-shift-mm must be at most 500; got 1000000\.0$"),
    ],
    ids=["nan-margin", "infinite-shift", "huge-shift"],
)
def test_cli_options_that_are_not_finite_or_too_large(capsys: pytest.CaptureFixture[str], extra: list[str], message: str,
                                                      good: Good) -> None:
    """A NaN margin went through every comparison and crashed in the pyramid's sizing (a traceback, exit 1)."""
    status = main(["register", str(good.ref_dcm), str(good.frame_dcm), *extra])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""  # no --json: nothing on stdout
    assert_one_line_error(err, extra[0], message)


@pytest.mark.parametrize(("keyword", "value", "message"), [
    ("field_margin_mm", float("nan"), "field_margin_mm must be a finite number"),
    ("min_score", float("nan"), "min_score must be a finite number"),
    ("bins", True, "bins must be a finite number"),
    ("ambiguity_ratio", 1.5, "ambiguity_ratio must be within 0..1"),
    ("min_score", 2.0, "min_score must be within -1..1"),
    ("candidates", 1000, "candidates must be at most 64"),
])
def test_options_refuse_non_finite_and_out_of_range_numbers(keyword: str, value: object, message: str) -> None:
    with pytest.raises(portalign.PortalignError, match=message):
        portalign.RegistrationOptions(**{keyword: value})


@pytest.mark.parametrize("repeat", ["-1", "1000000000"])
def test_cli_repeat_out_of_range(capsys: pytest.CaptureFixture[str], good: Good, repeat: str) -> None:
    """A negative count, or a billion (it ran on past any timeout with no output: a new user's trial), is refused."""
    status = main(["register", str(good.ref_dcm), str(good.frame_dcm), "--repeat", repeat])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert_one_line_error(err, "--repeat", rf"--repeat must be 0 to 10000 .*, got {repeat}")


def test_cli_overlay_in_missing_folder(capsys: pytest.CaptureFixture[str], good: Good, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--overlay needs matplotlib")
    target = tmp_path / "no_such_folder" / "review.png"
    status = main(["register", str(good.ref_dcm), str(good.frame_dcm), "--json", "--overlay", str(target)])
    out, err = capsys.readouterr()
    assert status == 2
    assert json.loads(out)["overlay"] is None  # the result is printed; the picture is the error
    assert_one_line_error(err, "review.png", r"(?i)no such file")


def _gpu_available() -> bool:
    try:
        select_backend("gpu")
    except BackendUnavailableError:
        return False
    return True


def test_cli_explicit_gpu_without_gpu(capsys: pytest.CaptureFixture[str], good: Good) -> None:
    if _gpu_available():
        pytest.skip("a GPU is available here: --backend gpu is usable")
    status = main(["register", str(good.ref_dcm), str(good.frame_dcm), "--json", "--backend", "gpu"])
    out, err = capsys.readouterr()
    assert status == 2
    with pytest.raises(BackendUnavailableError) as info:
        select_backend("gpu")
    assert_json_error(out, assert_one_line_error(err, "", re.escape(str(info.value))))
    assert json.loads(out)["error"] == "backend_unavailable"


#: A 12 x 12 pixel (12 mm) crop of the good frame, each with its beam axis at the crop centre.
SMALL_CROPS = {
    # around the beam axis: the true displacement is the good pair's (2, 1) mm
    "centre": (slice(SIZE // 2 - 6, SIZE // 2 + 6), slice(SIZE // 2 - 6, SIZE // 2 + 6)),
    # the top-left corner: the crop centre is 58 mm from the frame's beam axis, so the anatomy is
    # displaced by about (60, 59) mm, far outside max_shift_mm (20): no trustworthy answer exists
    "corner": (slice(0, 12), slice(0, 12)),
}


@pytest.fixture(scope="module")
def small_frames(tmp_path_factory: pytest.TempPathFactory, good: Good) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("small_frames")
    return {name: write_rt_image(make_rt_image(good.frame_array[crop], **ISO), folder / f"small_{name}.dcm")
            for name, crop in SMALL_CROPS.items()}


@pytest.mark.parametrize("where", [
    "centre",
    "corner",
])
def test_cli_small_frame_is_a_not_ok_result(capsys: pytest.CaptureFixture[str], good: Good,
                                            small_frames: dict[str, Path], where: str) -> None:
    """A 12 x 12 mm frame is a valid image: exit 0 with a result, ok=false because it is too small to trust."""
    status = main(["register", str(good.ref_dcm), str(small_frames[where]), "--json"])
    out, err = capsys.readouterr()
    assert status == 0 and err == ""
    payload = json.loads(out)
    assert payload["ok"] is False, payload
    assert "too small" in payload["reason"]


# ---------------------------------------------------------------------------------------------
# real processes
# ---------------------------------------------------------------------------------------------

SUBPROCESS_CASES = [("text", "reference"), ("no-sid", "frame"), ("nan-npy", "frame")]


@pytest.mark.parametrize(("case_id", "role"), SUBPROCESS_CASES, ids=[c for c, _ in SUBPROCESS_CASES])
def test_subprocess_one_line_error(case_id: str, role: str, good: Good, bad_files: dict[str, Path]) -> None:
    case = next(c for c in CASES if c.id == case_id)
    bad = bad_files[case_id]
    argv = [sys.executable, "-m", "portalign.cli", *_argv(case, bad, role, good)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    line = assert_one_line_error(proc.stderr, bad.name, case.message)
    assert_json_error(proc.stdout, line)


# ---------------------------------------------------------------------------------------------
# gaps found while writing these tests, now fixed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case_id", "flag"), [("no-sid", "--sid-mm"), ("no-spacing", "--pixel-spacing-mm")])
def test_cli_geometry_error_names_the_flag(capsys: pytest.CaptureFixture[str], case_id: str, flag: str,
                                           good: Good, bad_files: dict[str, Path]) -> None:
    bad = bad_files[case_id]
    assert main(["register", str(good.ref_dcm), str(bad)]) == 2
    _, err = capsys.readouterr()
    assert flag in assert_one_line_error(err, bad.name, "")


def test_cli_text_npy_does_not_suggest_unpickling(capsys: pytest.CaptureFixture[str], good: Good,
                                                  bad_files: dict[str, Path]) -> None:
    bad = bad_files["text-npy"]
    assert main(["register", str(bad), str(good.frame_dcm), *SPACING]) == 2
    _, err = capsys.readouterr()
    line = assert_one_line_error(err, bad.name, r"not a \.npy file")
    assert "pickle" not in line.lower()


def test_prepare_reference_rejects_nan_pixels(good: Good) -> None:
    pixels = good.ref_array.copy()
    pixels[3, 4] = np.nan
    with pytest.raises(PortalImageError, match=r"^drr_nan: "):
        portalign.prepare_reference(_raw_image(pixels, "drr_nan"))


def test_prepare_reference_rejects_constant_pixels(good: Good) -> None:
    with pytest.raises((PortalImageError, ReferencePreparationError), match=r"^drr_flat: "):
        prepared = portalign.prepare_reference(_raw_image(np.zeros((SIZE, SIZE)), "drr_flat"))
        prepared.register(good.frame_array, pixel_spacing_mm=1.0)


def test_api_none_frame_names_the_frame(good: Good) -> None:
    with pytest.raises(PortalImageError, match=r"^frame: "):
        portalign.register(good.ref_array, None, pixel_spacing_mm=1.0)


def test_reference_register_refuses_a_frame_that_would_outgrow_the_images_before_allocating():
    import tracemalloc

    from portalign import GeometryError

    rng = np.random.default_rng(0)
    base = rng.random((64, 64)).astype(np.float32)
    ref = portalign.prepare_reference(Image.from_array(base, pixel_spacing_mm=1.0), backend="cpu")
    tiny = Image.from_array(base, pixel_spacing_mm=0.001)  # a mistyped spacing: 1000x finer than the reference
    tracemalloc.start()
    try:
        with pytest.raises(GeometryError, match="times finer than the reference"):
            ref.register(tiny)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_plans_of_many_geometries_are_bounded():
    from portalign.registration import _reference

    rng = np.random.default_rng(1)
    base = ndimage.gaussian_filter(rng.random((96, 96)), 2).astype(np.float32)
    ref = portalign.prepare_reference(Image.from_array(base, pixel_spacing_mm=1.0), backend="cpu")
    for k in range(_reference.MAX_PLANS + 4):  # every frame with its own beam axis: a plan each
        frame = Image(base, (1.0, 1.0), (47.5 + 0.5 * k, 47.5))
        ref.register(frame)
    assert ref.lane_count() == _reference.MAX_PLANS


@pytest.mark.parametrize(("keywords", "message"), [
    ({"beam_axis_px": (1e154, 1e154)}, r"beam axis position \(1e\+154, 1e\+154\) px lies more than 10 m from"),
    ({"beam_axis_px": (1e308, 0.0)}, r"beam axis position .* lies more than 10 m from"),
    ({"beam_axis_px": (10**400, 0)}, r"beam_axis_px must be \(column, row\) in pixels, got \(1000.*\.\.\.$"),
    ({"pixel_spacing_mm": 10**400}, r"pixel_spacing_mm must be one number or \(row, col\) in mm"),
    ({"pixel_spacing_mm": 1e300}, r"row pixel spacing must be a positive number of mm \(at most 1000\)"),
])
def test_an_array_s_geometry_beyond_any_panel_is_refused(keywords: dict, message: str) -> None:
    """A hostile campaign's array (and HTTP upload, X-Beam-Axis-Px) with its beam axis 1e154 pixels away reached the
    search, whose arithmetic divided by zero (ZeroDivisionError, HTTP 500); 10**400 raised OverflowError."""
    pixels = np.random.default_rng(0).normal(100.0, 1.0, (64, 64))
    arguments = {"pixel_spacing_mm": 1.0, **keywords}
    with pytest.raises(GeometryError, match=message):
        Image.from_array(pixels, **arguments)
    assert Image.from_array(pixels, pixel_spacing_mm=1.0, beam_axis_px=(-500.0, 2000.0)).beam_axis_px == (-500.0, 2000.0)


def test_a_keyword_override_beyond_any_float_is_a_geometry_error(tmp_path: Path) -> None:
    """``read_rt_image(sid_mm=10**400)`` raised OverflowError from float(); it is a GeometryError naming the keyword."""
    pixels = np.random.default_rng(0).normal(1000.0, 10.0, (64, 64)).astype(np.uint16)
    path = write_rt_image(make_rt_image(pixels), tmp_path / "frame.dcm")
    with pytest.raises(GeometryError, match=r"frame\.dcm: sid_mm must be a positive number of mm, got '1000"):
        portalign.read_rt_image(path, sid_mm=10**400)


def test_a_cine_of_too_small_or_too_many_frames_is_refused_before_decoding(tmp_path: Path) -> None:
    """A hostile campaign's cines: 30 million 1 x 1 frames of one bit (3.75 MB) took 5.8 GB and 37 s to be told that
    an image of 1 x 1 pixels is refused; 150,000 frames of 8 x 8 kept ``watch --once`` busy for 4.7 minutes. Both are
    refused from their size tags now, before any frame is decoded."""
    from portalign.dicom import MAX_FRAMES, read_rt_image_frames

    tiny = make_rt_image(np.arange(16, dtype=np.uint16).reshape(4, 4) * 100, frames=3)
    with pytest.raises(PortalImageError, match=r"frames\.dcm: image is 4x4 pixels \(Rows, Columns .*at least 8x8"):
        read_rt_image_frames(write_rt_image(tiny, tmp_path / "frames.dcm"))
    many = make_rt_image(np.arange(64, dtype=np.uint16).reshape(8, 8) * 100, frames=MAX_FRAMES + 1)
    path = write_rt_image(many, tmp_path / "cine.dcm")
    with pytest.raises(PortalImageError, match=rf"cine\.dcm: NumberOfFrames \(0028,0008\) is {MAX_FRAMES + 1}, more "
                                               rf"than the {MAX_FRAMES} frames .* frame=k"):
        read_rt_image_frames(path)
    assert portalign.read_rt_image(path, frame=MAX_FRAMES).shape == (8, 8)  # one frame of it is read as ever
