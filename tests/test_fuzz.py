"""Seeded mutation fuzzing of the RT Image reader and of the registration after it.

Mutants of the shipped sample (the ``portalign demo`` phantom pair at a small size,
also as a cine and a float-pixel file) and of real RT Images from
``../shared/data/real`` (skipped with a reason when absent) are made by byte flips,
truncation, tag deletion, garbage values, value-multiplicity changes, huge sizes,
odd bit depths, NaN float pixels and damaged transfer syntaxes. Each mutant is
read with :func:`portalign.read_rt_image` and registered against a good reference
(for the large real files only read: registering 1280x1280 frames hundreds of
times does not fit CI's time). Every mutant must give a result or a
``PortalignError``: no other exception, no hang (a generous per-mutant alarm is a
hang detector, not a speed test) and bounded memory (tracemalloc peak below
``MEMORY_PER_FILE_BYTE`` times the file size plus ``MEMORY_FLOOR``).

``PORTALIGN_FUZZ_SEED=N`` runs another seed; the ``slow`` variant runs more mutants.
The six escapes reported in issue 11 are tests of their own at the end.
"""

from __future__ import annotations

import io
import os
import re
import signal
import struct
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import portalign
import pytest
from dicom_factory import make_rt_image, to_bytes, with_float_pixels
from portalign._pydicom_compat import write_dataset
from portalign.cli import main
from portalign.demo import make_demo_pair
from portalign.demo import write_rt_image as write_demo_image
from portalign.dicom import read_dataset, read_rt_image, read_rt_image_frames
from portalign.errors import GeometryError, PortalignError, PortalImageError
from portalign.image import check_registration_size
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import ExplicitVRLittleEndian

SEED = int(os.environ.get("PORTALIGN_FUZZ_SEED", "20261130"))
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
#: tracemalloc peak allowed per mutant: this many times the file's size, plus the floor
#: (the reader holds the bytes, the dataset, the decoded array and float copies; the
#: registration builds a plan for a new frame geometry).
MEMORY_PER_FILE_BYTE = 64
MEMORY_FLOOR = 48 * 2**20
#: A mutant still running after this many seconds has hung (a normal one takes well under 1 s).
HANG_S = 120

# real RT Images: (path under real/, register mutants against the unmutated file?)
REAL_FILES = [
    ("rtkit/simple_phantom_case/RI1.3.6.1.4.1.2452.6.2101074594.1310358496.1108690583.272421029.dcm", True),
    ("slicerrt/eclipse_prostate_rando/RI.1.2.246.352.71.3.2088656855.2381134.20110921150951.dcm", True),
    # no transfer syntax in its meta; read only: its 20 mm Winston-Lutz field is too small to prepare as a
    # reference today (issue 11, small fields)
    ("pylinac/wl_demo_as500/gantry0.dcm", False),
    ("pylinac/vmat/DRGS_open.dcm", False),  # negative-signal encoding
    ("pylinac/planar_imaging/leeds_kv.dcm", False),
    ("pylinac/picket_fence/Elekta_iView_PF_pickets_near_edges.dcm", False),
    ("pylinac/wl_shift_truebeam/cardinal/wl-3-30-18_card-002.dcm", False),
]

# tags whose values the fuzzer damages, with their VR
TARGETS = [
    "RTImageSID", "RadiationMachineSAD", "ImagePlanePixelSpacing", "PixelSpacing", "RTImagePosition",
    "XRayImageReceptorTranslation", "RTImageOrientation", "XRayImageReceptorAngle", "GantryAngle",
    "BeamLimitingDeviceAngle", "PatientSupportAngle", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
    "PixelIntensityRelationshipSign", "Modality", "LeafJawPositions", "TransferSyntaxUID", "ImageType",
]
GARBAGE_TEXT = [b"nan", b"NaN", b"inf", b"-inf", b"1e308", b"-1e308", b"0", b"-0", b"-1", b"1e-300", b"abc", b"",
                b"\0\0", b"1\\2\\3", b"0.4\\0.4\\0.4", b"99999999", b"2147483647", b"+", b"1e", b"0x10", b" \\ ",
                b"1.2.3.4", b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99"]
ODD_US = [0, 1, 2, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 64, 65535]
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}


# ---------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------


@dataclass
class Sample:
    name: str
    data: bytes  # as shipped or as found
    explicit: bytes  # the same dataset re-encoded as Explicit VR Little Endian (tag-level mutations work on it)
    reference: portalign.Reference | None  # registered against, or None: read only


def _explicit(data: bytes) -> bytes:
    ds = read_dataset(data)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # real files carry UIDs that pydicom warns about when writing them again
        warnings.simplefilter("ignore")
        write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> list[Sample]:
    """The demo phantom pair at 96x128 pixels, as the demo writes it, plus a cine and a float-pixel frame."""
    folder = tmp_path_factory.mktemp("fuzz")
    reference_image, frame_image, _ = make_demo_pair(detector_shape=(96, 128), detector_spacing_mm=3.136)
    ref_bytes = write_demo_image(reference_image, folder / "ref.dcm", label="DRR", image_type="DRR").read_bytes()
    frame_bytes = write_demo_image(frame_image, folder / "frame.dcm", label="MV", image_type="PORTAL").read_bytes()
    reference = portalign.prepare_reference(read_rt_image(ref_bytes))
    spacing = frame_image.spacing_mm[0] * 1.5  # at the imager, SID 1500 / SAD 1000
    cine = to_bytes(make_rt_image(np.stack([frame_image.pixels] * 3), spacing=spacing, gantry=[0.0, 0.5, 1.0]))
    floats = with_float_pixels(make_rt_image(frame_image.pixels, spacing=spacing, position="centre"), frame_image.pixels)
    float_bytes = to_bytes(floats)
    samples = [Sample(name, data, _explicit(data), reference)
               for name, data in (("demo-frame", frame_bytes), ("demo-cine", cine), ("demo-float", float_bytes))]
    _warm_up(samples)
    return samples


def _warm_up(samples: list[Sample]) -> None:
    # compile every kernel the registrations need before the hang alarm runs (a first JIT takes tens of seconds)
    for sample in samples:
        if sample.reference is not None:
            _register(sample.reference, read_rt_image(sample.data))


@pytest.fixture(scope="module")
def real() -> list[Sample]:
    if not REAL.is_dir():
        pytest.skip(f"real RT Images not found at {REAL} (a user's clone); real-data mutants skipped")
    samples = []
    for relative, register in REAL_FILES:
        data = (REAL / relative).read_bytes()
        reference = portalign.prepare_reference(read_rt_image(data)) if register else None
        samples.append(Sample(Path(relative).name, data, _explicit(data), reference))
    _warm_up(samples)
    return samples


# ---------------------------------------------------------------------------
# mutations (on the encoded bytes, as a damaged file arrives)
# ---------------------------------------------------------------------------


def _header_end(data: bytes) -> int:
    """Offset of the pixel data element (explicit or implicit VR), or the file's length."""
    for tag in (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00"):
        position = data.find(tag)
        while position >= 0:
            if data[position + 4 : position + 6] in (b"OW", b"OB", b"OF"):
                return position
            if len(data) >= position + 8 and struct.unpack_from("<I", data, position + 4)[0] == len(data) - position - 8:
                return position  # implicit VR: the length runs to the end of the file
            position = data.find(tag, position + 1)
    return len(data)


def _elements(data: bytes, keyword: str) -> list[tuple[int, int, int]]:
    """``(start, value_start, value_end)`` of every short-VR occurrence of ``keyword`` (Explicit VR LE)."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)[:2].encode("ascii")
    if vr in _LONG_VRS:
        return []
    pattern = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    end, found, start = _header_end(data), [], data.find(pattern)
    while 0 <= start < end:
        length = struct.unpack_from("<H", data, start + 6)[0]
        found.append((start, start + 8, start + 8 + length))
        start = data.find(pattern, start + 1)
    return found


def _replace_value(data: bytes, element: tuple[int, int, int], value: bytes) -> bytes:
    start, value_start, value_end = element
    if len(value) % 2:
        value += b" "
    return data[: start + 6] + struct.pack("<H", len(value)) + value + data[value_end:]


def m_flip(sample: Sample, rng: np.random.Generator) -> tuple[bytes, str]:
    data = bytearray(sample.data)
    end = _header_end(sample.data)
    positions = [int(rng.integers(0, end if rng.random() < 0.7 else len(data))) for _ in range(int(rng.integers(1, 17)))]
    for p in positions:
        data[p] ^= int(rng.integers(1, 256))
    return bytes(data), f"flip {len(positions)} bytes"


def m_truncate(sample: Sample, rng: np.random.Generator) -> tuple[bytes, str]:
    end = _header_end(sample.data)
    cut = int(rng.integers(0, end)) if rng.random() < 0.5 else int(rng.integers(end, len(sample.data)))
    return sample.data[:cut], f"truncate at {cut} of {len(sample.data)}"


def _target(sample: Sample, rng: np.random.Generator) -> tuple[str, list[tuple[int, int, int]]]:
    present = [(k, found) for k in TARGETS if (found := _elements(sample.explicit, k))]
    keyword, found = present[int(rng.integers(0, len(present)))]
    return keyword, found


def m_delete(sample: Sample, rng: np.random.Generator) -> tuple[bytes, str]:
    keyword, found = _target(sample, rng)
    start, _, value_end = found[int(rng.integers(0, len(found)))]
    return sample.explicit[:start] + sample.explicit[value_end:], f"delete {keyword}"


def m_garbage(sample: Sample, rng: np.random.Generator) -> tuple[bytes, str]:
    keyword, found = _target(sample, rng)
    element = found[int(rng.integers(0, len(found)))]
    vr = dictionary_VR(tag_for_keyword(keyword))
    if vr in ("US", "SS", "US or SS"):
        count = int(rng.choice([0, 1, 1, 1, 2, 3]))  # value multiplicity too
        values = [int(rng.choice(ODD_US)) for _ in range(count)]
        return _replace_value(sample.explicit, element, struct.pack(f"<{count}H", *values)), f"{keyword} = {values}"
    value = GARBAGE_TEXT[int(rng.integers(0, len(GARBAGE_TEXT)))]
    return _replace_value(sample.explicit, element, value), f"{keyword} = {value!r}"


def m_huge(sample: Sample, rng: np.random.Generator) -> tuple[bytes, str]:
    choices = [("Rows", struct.pack("<H", 65535)), ("Columns", struct.pack("<H", 65535)),
               ("NumberOfFrames", b"2147483647"), ("NumberOfFrames", b"65536"), ("RTImageSID", b"1e308"),
               ("RadiationMachineSAD", b"1e308"), ("ImagePlanePixelSpacing", b"1e-300\\1e-300"),
               ("RadiationMachineSAD", b"1\\2\\3"), ("RTImageSID", b"1e-308")]
    data, done = sample.explicit, []
    for index in rng.permutation(len(choices))[: int(rng.integers(1, 4))]:
        keyword, value = choices[int(index)]
        found = _elements(data, keyword)
        if found:
            data = _replace_value(data, found[0], value)
            done.append(f"{keyword} = {value!r}")
    return data, "huge " + ", ".join(done)


def m_bits(sample: Sample, rng: np.random.Generator) -> tuple[bytes, str]:
    data, done = sample.explicit, []
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        found = _elements(data, keyword)
        if found and rng.random() < 0.6:
            value = int(rng.choice(ODD_US))
            data = _replace_value(data, found[0], struct.pack("<H", value))
            done.append(f"{keyword} = {value}")
    return data, "bits " + ", ".join(done)


def m_nan_pixels(sample: Sample, rng: np.random.Generator) -> tuple[bytes, str]:
    data = bytearray(sample.explicit)
    start = _header_end(sample.explicit) + 12
    if len(data) - start < 8:
        return m_garbage(sample, rng)
    count = int(rng.integers(1, 6))
    for _ in range(count):
        p = start + 4 * int(rng.integers(0, (len(data) - start) // 4))
        data[p : p + 4] = struct.pack("<f", float("nan") if rng.random() < 0.7 else float("inf"))
    return bytes(data), f"{count} NaN/inf pixels"


MUTATIONS: list[Callable[[Sample, np.random.Generator], tuple[bytes, str]]] = [
    m_flip, m_truncate, m_delete, m_garbage, m_garbage, m_huge, m_bits, m_nan_pixels,
]


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


class _HangError(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _HangError(f"still running after {HANG_S} s")


def _register(reference: portalign.Reference, image: portalign.Image) -> portalign.RegistrationResult:
    # Reference.register refuses a pair whose plan would outgrow the images before it allocates
    return reference.register(image)


def _fuzz(samples: list[Sample], count: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    outcomes = {"result": 0, "refused": 0}
    escapes, too_big = [], []
    previous = signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    try:
        for number in range(count):
            sample = samples[number % len(samples)]
            mutation = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
            data, what = mutation(sample, rng)
            if rng.random() < 0.25:  # sometimes byte flips on top
                data, more = m_flip(Sample(sample.name, data, data, None), rng)
                what += f"; {more}"
            label = f"#{number} {sample.name}: {what}"
            start_memory = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            signal.alarm(HANG_S)
            try:
                # a cine file is read whole (every frame), as a stream or watch folder reads it
                images = read_rt_image_frames(data) if "cine" in sample.name else [read_rt_image(data)]
                if sample.reference is not None:
                    _register(sample.reference, images[-1])
                outcomes["result"] += 1
            except PortalignError:
                outcomes["refused"] += 1
            except Exception as exc:  # noqa: BLE001 - the point of the test
                escapes.append(f"{label} -> {type(exc).__name__}: {str(exc)[:160]}")
            finally:
                signal.alarm(0)
            peak = tracemalloc.get_traced_memory()[1] - start_memory
            bound = MEMORY_PER_FILE_BYTE * len(data) + MEMORY_FLOOR
            if peak > bound:
                too_big.append(f"{label}: {peak / 2**20:.1f} MiB for a {len(data)}-byte file (bound {bound / 2**20:.1f})")
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGALRM, previous)
    assert not escapes, f"{len(escapes)} of {count} mutants (seed {seed}) escaped:\n" + "\n".join(escapes[:20])
    assert not too_big, f"{len(too_big)} mutants allocated beyond the bound:\n" + "\n".join(too_big[:20])
    return outcomes


def test_mutants_of_the_shipped_sample(shipped):
    outcomes = _fuzz(shipped, 240, SEED)
    # the mix is a real one: many mutants are refused, and some (pixel flips, harmless tags) still register
    assert outcomes["refused"] > 60 and outcomes["result"] > 20, outcomes


@pytest.mark.real_data
def test_mutants_of_real_rt_images(real):
    outcomes = _fuzz(real, 120, SEED + 1)
    assert outcomes["refused"] > 30 and outcomes["result"] > 10, outcomes


@pytest.mark.slow
def test_many_mutants(shipped, real):
    _fuzz(shipped, 800, SEED + 2)
    _fuzz(real, 300, SEED + 3)


def test_the_unmutated_samples_register(shipped):
    # the fuzz starts from good files: the demo frame registers ok against its reference
    result = _register(shipped[0].reference, read_rt_image(shipped[0].data))
    assert result.ok, result.reason
    assert all(read_rt_image(s.explicit).shape == (96, 128) for s in shipped)


# ---------------------------------------------------------------------------
# the six escapes of issue 11, each its own test: the reader, `info` and `register`
# ---------------------------------------------------------------------------


def _escape_file(tmp_path: Path, shipped: list[Sample], keyword: str, value: bytes) -> Path:
    data = _replace_value(shipped[0].explicit, _elements(shipped[0].explicit, keyword)[0], value)
    path = tmp_path / f"{keyword.lower()}.dcm"
    path.write_bytes(data)
    return path


def _cli_refuses(capsys, tmp_path: Path, shipped: list[Sample], path: Path, message: str) -> None:
    reference = tmp_path / "ref.dcm"
    reference.write_bytes(shipped[0].data)
    for argv in (["info", str(path)], ["register", str(reference), str(path)]):
        status = main(argv)
        out, err = capsys.readouterr()
        assert status == 2, (argv, out, err)
        assert out == "" and "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith(f"portalign {argv[0]}: error: {path.name}: "), err
        assert re.search(message, err), err


def test_escape_corrupt_transfer_syntax_uid(tmp_path, shipped, capsys):
    path = _escape_file(tmp_path, shipped, "TransferSyntaxUID", b"1.2.840.99999.1\0")
    with pytest.raises(PortalImageError, match=r"TransferSyntaxUID \(0002,0010\) '1\.2\.840\.99999\.1' in the file "
                                               r"meta is not a DICOM transfer syntax"):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, r"is not a DICOM transfer syntax; the file is damaged")


def test_escape_sad_with_three_values(tmp_path, shipped, capsys):
    path = _escape_file(tmp_path, shipped, "RadiationMachineSAD", b"1\\2\\3")
    with pytest.raises(GeometryError, match=r"RadiationMachineSAD \(3002,0022\) has 3 values \[1, 2, 3\]; it must "
                                            r"have 1; correct the tag or pass sad_mm=$"):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, r"has 3 values \[1, 2, 3\]; .* pass --sad-mm$")


def test_escape_sad_1e308(tmp_path, shipped, capsys):
    path = _escape_file(tmp_path, shipped, "RadiationMachineSAD", b"1e308")
    with pytest.raises(GeometryError, match=r"RadiationMachineSAD \(3002,0022\) is '?1e308'?; a distance in mm must "
                                            r"be a finite number from 100 to 10000"):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, r"RadiationMachineSAD .* pass --sad-mm$")


def test_escape_spacing_with_three_values(tmp_path, shipped, capsys):
    path = _escape_file(tmp_path, shipped, "ImagePlanePixelSpacing", b"0.4\\0.4\\0.4")
    with pytest.raises(GeometryError, match=r"ImagePlanePixelSpacing \(3002,0011\) has 3 values \[0\.4, 0\.4, 0\.4\]; "
                                            r"it must have 1 or 2; correct the tag or pass pixel_spacing_mm="):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, r"ImagePlanePixelSpacing .* pass --pixel-spacing-mm")
    # an explicit spacing is the fix the message names: with it the file reads
    assert read_rt_image(path, pixel_spacing_mm=2.0).spacing_mm == (2.0, 2.0)


def test_escape_position_with_three_values(tmp_path, shipped, capsys):
    path = _escape_file(tmp_path, shipped, "RTImagePosition", b"1\\2\\3")
    with pytest.raises(GeometryError, match=r"RTImagePosition \(3002,0012\) has 3 values \[1, 2, 3\]; it must have 2; "
                                            r"correct or remove the tag$"):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, r"RTImagePosition \(3002,0012\) has 3 values")


def test_escape_nan_gantry_angle_is_an_error_not_zero(tmp_path, shipped, capsys):
    # decided: an angle that is present but invalid is an error (a wrong angle would silently pass the
    # mismatched-view checks and tilt couch corrections); an absent angle is None, never 0
    path = _escape_file(tmp_path, shipped, "GantryAngle", b"nan")
    with pytest.raises(GeometryError, match=r"GantryAngle \(300A,011E\) is '?nan'?; an angle in degrees must be a "
                                            r"finite number from -360 to 360; correct or remove the tag$"):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, r"GantryAngle \(300A,011E\) is")
    data = shipped[0].explicit
    start, _, end = _elements(data, "GantryAngle")[0]
    assert read_rt_image(data[:start] + data[end:]).info.gantry_deg is None



# ---------------------------------------------------------------------------
# the registration's own allocations, bounded by the two images
# ---------------------------------------------------------------------------


def _flat(shape: tuple[int, int], spacing: float | tuple[float, float], name: str) -> portalign.Image:
    pixels = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    return portalign.Image.from_array(pixels, pixel_spacing_mm=spacing, name=name)


def test_a_frame_far_finer_than_its_reference_is_refused():
    reference = _flat((64, 64), 1.0, "drr")
    with pytest.raises(GeometryError, match=r"^frame: pixel spacing 0\.05 mm is 20 times finer than the reference's 1 mm; "
                                            r"registering would resample the reference to 1\.64e\+06 pixels"):
        check_registration_size(reference, _flat((64, 64), 0.05, "frame"), max_shift_mm=20.0)


def test_a_search_range_far_beyond_the_frame_is_refused():
    tiny = _flat((16, 16), 0.01, "frame")
    with pytest.raises(GeometryError, match=r"^frame: a search range of 20 mm is 2\.5e\+03 pixels at 0\.01 mm, over 4 "
                                            r"times the frame's 16 pixels; .* max_shift_mm=$"):
        check_registration_size(_flat((16, 16), 0.01, "drr"), tiny, max_shift_mm=20.0)


def test_real_pairs_pass_the_size_check():
    # an Eclipse DRR (512 x 512 at 0.98 mm) against a TrueBeam EPID frame (1280 x 1280 at 0.224 mm), and the reverse
    drr, epid = _flat((512, 512), 0.977, "drr"), _flat((1280, 1280), 0.224, "epid")
    check_registration_size(drr, epid, max_shift_mm=20.0)
    check_registration_size(epid, drr, max_shift_mm=20.0)


def test_cli_register_refuses_a_far_finer_frame_in_one_line(tmp_path, shipped, capsys):
    frame = tmp_path / "fine.dcm"
    data = shipped[0].explicit
    frame.write_bytes(_replace_value(data, _elements(data, "ImagePlanePixelSpacing")[0], b"0.02\\0.02"))
    reference = tmp_path / "ref.dcm"
    reference.write_bytes(shipped[0].data)
    status = main(["register", str(reference), str(frame)])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and err.count("\n") == 1, err
    assert re.search(r"^portalign register: error: fine\.dcm: pixel spacing 0\.01333 mm is \d+ times finer than the reference's "
                     r".* pass --pixel-spacing-mm$", err), err


# ---------------------------------------------------------------------------
# escapes this fuzz found, each its own test
# ---------------------------------------------------------------------------


def test_pixel_data_holding_more_frames_than_the_header_says_is_refused(shipped):
    # seed 20261130, mutant 31: a cine with Columns 128 -> 33 made pydicom 3 decode 11 frames where the header
    # said 3, and frame bookkeeping raised IndexError
    data = shipped[1].explicit
    damaged = _replace_value(data, _elements(data, "Columns")[0], struct.pack("<H", 33))
    message = (r"^<bytes>: PixelData has 73728 bytes, at least one frame more than Rows x Columns x NumberOfFrames x "
               r"BitsAllocated/8 \(96 x 33 x 3 x 16/8\) = 19008; the size tags are wrong$")
    with pytest.raises(PortalImageError, match=message):
        read_rt_image_frames(damaged)
    with pytest.raises(PortalImageError, match=message):
        read_rt_image(damaged)


@pytest.mark.parametrize(("keyword", "value", "shape", "excess"), [("Rows", 50, "50 x 128", 11776),
                                                                    ("Columns", 125, "96 x 125", 576)])
def test_pixel_data_holding_less_than_a_frame_more_than_the_header_says_is_refused(shipped, keyword, value, shape,
                                                                                     excess):
    # session 25's fuzz (seed 25011): Rows 384 -> 200 of a frame was read as its top 200 rows and registered ok (48 % of
    # the image dropped with no word), Columns 512 -> 500 as a sheared image refused for its "field"
    data = shipped[0].explicit
    damaged = _replace_value(data, _elements(data, keyword)[0], struct.pack("<H", value))
    stored = 96 * 128 * 2
    message = (rf"^<bytes>: PixelData has {stored} bytes, {excess} more than Rows x Columns x NumberOfFrames x "
               rf"BitsAllocated/8 \({shape} x 1 x 16/8\) = {stored - excess}: the size tags do not describe the pixels "
               r"stored; the file is damaged$")
    with pytest.raises(PortalImageError, match=message):
        read_rt_image(damaged)


# ---------------------------------------------------------------------------
# a second campaign (seeds 777, 4242, 90001, 31337, 5 and 7,100 mutants of its own): no escape, but small files
# that made large allocations, and tag text that split an error over lines
# ---------------------------------------------------------------------------


class _PeakMemory:
    """Trace Python allocations inside the ``with`` block; ``peak`` (bytes) is set when it ends."""

    peak = 0

    def __enter__(self) -> _PeakMemory:
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _jpeg_claiming(rows: int, cols: int) -> bytes:
    """The start of a baseline JPEG whose frame header (SOF0) declares ``rows x cols`` 8-bit pixels."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, rows, cols, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9) + sof + b"\xff\xda" + bytes(64)


def _j2k_claiming(rows: int, cols: int) -> bytes:
    """The start of a JPEG 2000 codestream whose SIZ segment declares ``rows x cols`` pixels."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, cols, rows, 0, 0, cols, rows, 0, 0, 1) + b"\x07\x01\x01"
    return b"\xff\x4f\xff\x51" + siz + bytes(64)


@pytest.mark.parametrize(("syntax", "stream"), [
    ("1.2.840.10008.1.2.4.50", _jpeg_claiming(12000, 12000)),
    ("1.2.840.10008.1.2.4.90", _j2k_claiming(12000, 12000)),
], ids=["jpeg-sof", "j2k-siz"])
def test_a_codestream_claiming_a_huge_image_is_refused_before_decoding(syntax, stream):
    """A few kilobytes whose codestream said 12000 x 12000 were decoded (275 MiB) before the shapes were compared."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = make_rt_image(np.zeros((96, 128), dtype=np.uint16))
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([stream + bytes(2048)])  # within the compression-ratio bound: the header check refuses
    ds["PixelData"].VR = "OB"
    data = to_bytes(ds)
    with _PeakMemory() as memory, pytest.raises(
            PortalImageError, match=r"^<bytes>: the compressed pixel data's own header says 12000 x 12000 pixels but "
                                    r"Rows x Columns say 96 x 128; the file is damaged$"):
        read_rt_image(data)
    assert memory.peak < 32 << 20, memory.peak


def _meta(layout: str, uid: bytes) -> tuple[bytes, bytes]:
    """A file meta group holding transfer syntax ``uid``, laid out as ``layout``: ``(preamble, group)``."""
    syntax = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(uid)) + uid
    if layout == "long":  # the transfer syntax beyond the first kilobyte: a long FileMetaInformationVersion first
        version = b"\x00\x01" + bytes(1198)
        syntax = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, len(version)) + version + syntax
    group = syntax if layout == "no group length" else (
        struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(syntax)) + syntax)
    return (b"" if layout == "no preamble" else bytes(128) + b"DICM"), group


@pytest.mark.parametrize("layout", ["usual", "no preamble", "no group length", "long"])
def test_a_deflate_bomb_is_refused_without_inflating_it(layout):
    """490 KB of deflated zeros inflated to 1 GiB inside pydicom before any check; the third campaign found three
    file meta layouts that the check did not read (no preamble, no group length, the UID after 1 KB): 2.2 GB."""
    import zlib

    from portalign.dicom import MAX_COMPRESSION_RATIO

    header = make_rt_image(np.zeros((8, 8), dtype=np.uint16))
    del header.PixelData
    rows, cols = 10000, 10000  # 200 MB of pixels declared; the file is about 200 KB
    header.Rows, header.Columns = rows, cols
    body = io.BytesIO()
    body.write(to_bytes(header, file_format=False))
    body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, rows * cols * 2))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(body.getvalue())
    zeros = bytes(1 << 20)
    for _ in range(rows * cols * 2 // len(zeros)):
        deflated += packer.compress(zeros)
    deflated += packer.flush()
    preamble, meta = _meta(layout, b"1.2.840.10008.1.2.1.99\x00")
    data = preamble + meta + deflated
    assert len(data) * MAX_COMPRESSION_RATIO < rows * cols * 2
    with _PeakMemory() as memory, pytest.raises(
            PortalImageError, match=r"^<bytes>: its deflated dataset would inflate to more than .* bytes \(50 times "
                                    r"the file's .*\); refused as damaged or hostile$"):
        read_rt_image(data)
    assert memory.peak < 64 << 20, memory.peak


def test_a_one_bit_image_with_a_rescale_slope_stays_within_its_bound():
    """1-bit pixels unpack to a byte each, and the rescale made a whole float64 copy: an 8 MB file of 8192 x 8192
    took 848 MiB (106 times); the float32 image itself is 32 times the packed bits, the rest now a block at a time."""
    rows = cols = 2048
    ds = make_rt_image(np.zeros((rows, cols), dtype=np.uint16))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    bits = np.random.default_rng(0).integers(0, 2, rows * cols).astype(np.uint8)
    ds.PixelData = np.packbits(bits, bitorder="little").tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, 1.0
    data = to_bytes(ds)
    with _PeakMemory() as memory:
        image = read_rt_image(data)
    peak = memory.peak
    assert image.pixels.dtype == np.float32 and set(np.unique(image.pixels)) <= {1.0, 3.0}
    image_bytes = rows * cols * 4
    assert peak < image_bytes + 12 * len(data) + (4 << 20), (peak, len(data))  # the image, its bits unpacked, a block
    assert peak < MEMORY_PER_FILE_BYTE * len(data) + MEMORY_FLOOR


@pytest.mark.parametrize(("keyword", "value"), [("Modality", b"CT\nINJECTED LINE"), ("GantryAngle", b"1\nPASSED"),
                                              ("RTImagePosition", b"-199.136\n148.96")])
def test_tag_text_with_a_newline_stays_on_one_line_of_the_error(keyword, value, capsys, tmp_path, shipped):
    data = shipped[0].explicit
    path = tmp_path / "bad.dcm"
    path.write_bytes(_replace_value(data, _elements(data, keyword)[0], value))
    with pytest.raises(PortalignError) as caught:
        read_rt_image(path)
    assert "\n" not in str(caught.value) and "\\n" in str(caught.value), str(caught.value)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err


# ---------------------------------------------------------------------------
# a third campaign (seeds 9001-9010, 3,000 mutants of new kinds and probes around them): a deflate bomb in file meta
# layouts the check did not read (above), a million sequence items, special files, messages that named Python types
# ---------------------------------------------------------------------------


def _with_items(n_items: int, *, deflated: bool = False) -> bytes:
    """An RT Image whose ExposureSequence holds ``n_items`` empty items (undefined lengths: 16 bytes each)."""
    ds = make_rt_image(np.arange(256, dtype=np.uint16).reshape(16, 16))
    plain = to_bytes(ds, file_format=False)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = (struct.pack("<HHI", 0x3002, 0x0030, 0xFFFFFFFF) + item * n_items  # implicit VR, as the body
                + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    at = plain.index(struct.pack("<HH", 0x7FE0, 0x0010))  # (3002,0030) sorts before the pixel data
    body = plain[:at] + sequence + plain[at:]
    if deflated:
        import zlib

        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = packer.compress(body) + packer.flush()
    uid = b"1.2.840.10008.1.2.1.99\x00" if deflated else b"1.2.840.10008.1.2\x00"
    preamble, meta = _meta("usual", uid)
    return preamble + meta + body


@pytest.mark.parametrize("deflated", [False, True], ids=["plain", "deflated"])
def test_a_header_of_a_million_sequence_items_is_refused_before_it_is_read(deflated):
    """A 28 MB file of a million tiny items took 1.4 GB (pydicom makes a dataset of each) for a 96 x 128 image."""
    from portalign.dicom import MAX_SEQUENCE_ITEMS

    few = read_rt_image(_with_items(20, deflated=deflated))  # a real RT Image's few items are read as ever
    assert few.shape == (16, 16)
    data = _with_items(MAX_SEQUENCE_ITEMS + 1000, deflated=deflated)
    with _PeakMemory() as memory, pytest.raises(
            PortalImageError, match=rf"^<bytes>: its header holds {MAX_SEQUENCE_ITEMS + 1000:,} sequence items \(an RT "
                                    r"Image has a few; at most 10,000 are read\); refused as damaged or hostile$"):
        read_rt_image(data)
    assert memory.peak < 8 * len(data) + (4 << 20), (memory.peak, len(data))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_special_files_are_refused_without_reading_them(tmp_path, capsys):
    """A FIFO hung for ever and /dev/zero was read until memory ran out: only regular files are read."""
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    link = tmp_path / "zero.dcm"
    link.symlink_to("/dev/zero")
    for path in (fifo, link):
        with pytest.raises(PortalImageError, match=rf"^{path.name}: is not a regular file \({re.escape(str(path))}\) "
                                                   r"\(a device, pipe or socket\); give a DICOM file$"):
            read_rt_image(path)
    with pytest.raises(PortalImageError, match="^an empty path was given for a DICOM file"):
        read_rt_image("")
    assert main(["info", str(fifo)]) == 2
    assert capsys.readouterr().err.strip() == (f"portalign info: error: fifo.dcm: is not a regular file ({fifo}) (a device, "
                                               "pipe or socket); give a DICOM file")
    assert main(["info", str(tmp_path)]) == 2  # the path as given too: "/tmp/x", not only "x"
    assert capsys.readouterr().err.strip() == (f"portalign info: error: {tmp_path.name}: is a directory ({tmp_path}), not "
                                               "a DICOM file")


def test_a_file_name_with_control_characters_stays_on_one_line(tmp_path, capsys):
    path = tmp_path / "new\nline\x1b[31m.dcm"
    path.write_bytes(b"not dicom at all")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "new\\nline\\x1b[31m.dcm" in err, err


@pytest.mark.parametrize(("keyword", "value", "message"), [
    ("PhotometricInterpretation", "MONOCHROME2\\RGB",
     r"PhotometricInterpretation \(0028,0004\) has 2 values \[MONOCHROME2, RGB\]; it must have 1"),
    ("NumberOfFrames", "1\\1", r"NumberOfFrames \(0028,0008\) has 2 values \[1, 1\]; it must have 1"),
])
def test_a_pixel_module_tag_with_several_values_is_named(keyword, value, message, tmp_path):
    """The decoder's own message named Python types ("unhashable type: 'MultiValue'"), not the tag."""
    ds = make_rt_image(np.zeros((16, 16), dtype=np.uint16))
    setattr(ds, keyword, value)
    with pytest.raises(PortalImageError, match=rf"^<bytes>: {message}; the file is damaged$"):
        read_rt_image(to_bytes(ds))


def test_a_tolerance_file_that_is_not_text_is_an_error_naming_it(tmp_path):
    from portalign.tolerance import ToleranceError, load_tolerance

    path = tmp_path / "latin.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ToleranceError, match=r"^latin\.toml: not a TOML text file \(not UTF-8 text\)"):
        load_tolerance(path)


# ---------------------------------------------------------------------------
# a third campaign (session 28: seeds 777001, 424242, 515151 of this module, and 2,172 mutants of sequences, VRs,
# bit layouts and pixel lengths): one escape at one line, and one small file that asked for 1.98 GiB
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("vr", [b"Cu", b"FD"], ids=["unknown-vr", "binary-vr"])
def test_a_photometric_interpretation_that_cannot_be_read_is_named(tmp_path, shipped, capsys, vr):
    """Seed 777001's mutant 63 (and 10 of the campaign's own): (0028,0004) with an unknown VR ('Cu') escaped as
    pydicom's NotImplementedError, with a binary one ('FD') as its BytesLengthException, from the reader, ``info``
    and ``register`` alike (the one lookup of the pixel module not guarded)."""
    data = shipped[0].explicit
    start, _, _ = _elements(data, "PhotometricInterpretation")[0]
    path = tmp_path / "photometric.dcm"
    path.write_bytes(data[: start + 4] + vr + data[start + 6 :])
    with pytest.raises(PortalImageError, match=r"PhotometricInterpretation \(0028,0004\) cannot be read \(.*\); the "
                                               r"file is damaged"):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, r"PhotometricInterpretation \(0028,0004\) cannot be read")


def _refused_before_allocating(reference: portalign.Image, frame: portalign.Image, message: str, peak_bytes: int) -> None:
    """The size check refuses the pair with ``message`` (a regular expression), and so does a registration of it,
    allocating under ``peak_bytes`` (Python's allocations) before it does."""
    with pytest.raises(GeometryError, match=message):
        check_registration_size(reference, frame, max_shift_mm=20.0)
    with _PeakMemory() as memory, pytest.raises(GeometryError, match=message):
        portalign.register(reference, frame, backend="cpu")
    assert memory.peak < peak_bytes, memory.peak


def test_a_spacing_far_finer_along_one_axis_is_refused_before_the_search_is_allocated():
    """A 12 kB file of 8 x 640 pixels at 10 x 0.01 mm (each within the reader's range) passed the span check: the
    search pads both axes by the span at the finer spacing, and it asked for (9, 5120, 5760) complex64, 1.98 GiB."""
    reference = _flat((128, 128), 1.0, "drr")
    frame = _flat((8, 640), (10.0, 0.01), "frame")
    _refused_before_allocating(reference, frame, r"^frame: pixel spacing 10 x 0\.01 mm \(rows x columns\): a search of "
                               r"\+-20 mm pads its 8 x 640 pixels by 2500 on every side, 2\.82e\+07 pixels .* detector "
                               r"pixels are square or nearly so", 64 << 20)
    # square pixels of a small crop, and a 2:1 binned detector, pass
    check_registration_size(reference, _flat((100, 100), 0.26, "crop"), max_shift_mm=20.0)
    check_registration_size(reference, _flat((384, 512), (0.78, 0.39), "binned"), max_shift_mm=20.0)


def test_a_strip_of_an_image_is_refused_before_its_search_is_allocated():
    """A fuzzed 66 kB frame of 8 x 4096 pixels, 970 mm wide (under the 1000 mm cap, square pixels, the search range
    within the span and grid checks), was searched at its own pixels (a pyramid stops at 16 pixels across): 150 MiB of
    rotated spectra for a result of "no structure"; 32 x 4096 took 111 MiB. A normal frame takes a few MiB."""
    reference = _flat((384, 512), 0.52, "drr")
    for shape in ((8, 4096), (4096, 32)):
        frame = _flat(shape, 0.237, "strip")
        _refused_before_allocating(reference, frame, rf"^strip: the frame is {shape[0]} x {shape[1]} pixels, "
                                   rf"{max(shape) // min(shape)} times longer one way than the other: no imager reads "
                                   r"out such a strip.*at most 8:1 is registered\); crop it less tightly, or check its "
                                   r"Rows \(0028,0010\) and Columns", 8 << 20)
    with pytest.raises(GeometryError, match=r"^drr: the reference is 16 x 400 pixels, 25 times longer"):
        check_registration_size(_flat((16, 400), 1.0, "drr"), _flat((384, 512), 0.52, "frame"), max_shift_mm=20.0)
    # the real files' most elongated image, a DRR of 256 x 85 pixels, and an 8:1 crop pass
    check_registration_size(_flat((256, 85), 1.0, "drr"), _flat((384, 512), 0.52, "frame"), max_shift_mm=20.0)
    check_registration_size(reference, _flat((64, 512), 0.52, "crop"), max_shift_mm=20.0)


def _nested_sequences(depth: int) -> bytes:
    """``depth`` ExposureSequences (3002,0030) each inside the last one's item, undefined lengths (Explicit VR LE)."""
    opened = (struct.pack("<HH", 0x3002, 0x0030) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
              + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    closed = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opened * depth + closed * depth


def test_sequences_nested_thousands_deep_are_named_so():
    """The campaign's deep nesting (900-9,000 levels) said "damaged DICOM file (maximum recursion depth exceeded while
    calling a Python object)"; five levels still read."""
    data = to_bytes(make_rt_image(np.arange(96 * 128, dtype=np.uint16).reshape(96, 128)))
    pixels = data.find(b"\xe0\x7f\x10\x00")
    assert read_rt_image(data[:pixels] + _nested_sequences(5) + data[pixels:]).shape == (96, 128)
    with pytest.raises(PortalImageError, match=r"^<bytes>: damaged DICOM file \(its sequences nest deeper than the "
                                               r"reader's recursion limit; an RT Image nests a few levels\)$"):
        read_rt_image(data[:pixels] + _nested_sequences(3000) + data[pixels:])


def test_pydicom_s_hexadecimal_file_position_is_said_to_be_one(monkeypatch):
    """pydicom says "No tag to read at file position B13A" (hexadecimal, unmarked): the error says byte 0xB13A."""
    import portalign.dicom

    def damaged(*args, **kwargs):
        raise OSError("No tag to read at file position B13A")

    monkeypatch.setattr(portalign.dicom.pydicom, "dcmread", damaged)
    with pytest.raises(PortalImageError, match=r"^<bytes>: damaged DICOM file \(No tag to read at byte 0xB13A\); copy or "
                                               r"export it again$"):
        read_rt_image(bytes(128) + b"DICM" + bytes(64))


@pytest.mark.parametrize(("keyword", "vr", "message"), [
    ("NumberOfFrames", "IS", r"NumberOfFrames \(0028,0008\) is present but empty; a single frame has 1 there or no such "
                             r"tag; the file is damaged"),
    ("PixelRepresentation", "LO", r"PixelRepresentation \(0028,0103\) is present but empty; the pixel values cannot be "
                                  r"read \(0 unsigned, 1 signed\)"),
])
def test_a_pixel_module_tag_present_but_empty_is_named(keyword, vr, message):
    """The campaign's NumberOfFrames '\\0' (pydicom reads '') reached the decoder's int(''): "pixel data cannot be
    decoded (invalid literal for int() with base 10: '')"; a PixelRepresentation whose VR was swapped to LO (read as
    '') was "has no PixelRepresentation". Both name the tag as it is."""
    from pydicom.tag import Tag

    ds = make_rt_image(np.arange(256, dtype=np.uint16).reshape(16, 16))
    tag = Tag(tag_for_keyword(keyword))
    if tag in ds:
        del ds[tag]
    ds.add_new(tag, vr, "")
    with pytest.raises(PortalImageError, match=rf"^<bytes>: {message}$"):
        read_rt_image(to_bytes(ds))


def test_a_dicom_file_whose_elements_stop_early_is_called_damaged_not_foreign(tmp_path, shipped, capsys):
    """The campaign's sweep gave ImageType (0008,0008) an unknown VR: pydicom read that one element and no more, and
    the file with its DICM preamble was called "not a DICOM file (expected a DICOM RT Image)"."""
    data = shipped[0].explicit
    assert data[128:132] == b"DICM"
    start, _, _ = _elements(data, "ImageType")[0]
    path = tmp_path / "imagetype.dcm"
    path.write_bytes(data[: start + 4] + b"Cu" + data[start + 6 :])
    message = (r"damaged DICOM file \(it has the DICM preamble, but only 1 element\(s\) could be read, the last "
               r"\(0008,0008\): an element's value representation or length is damaged\); copy or export it again")
    with pytest.raises(PortalImageError, match=rf"^imagetype\.dcm: {message}$"):
        read_rt_image(path)
    _cli_refuses(capsys, tmp_path, shipped, path, message)


def test_encapsulated_pixel_data_without_its_end_names_the_pixel_data(tmp_path):
    """An RLE file missing only its final sequence delimiter (a fourth campaign) was "no element could be read": every
    element before the pixel data reads, and the message now says that the pixel data is what is damaged."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = make_rt_image(np.zeros((16, 16), np.uint16))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    data = to_bytes(ds)
    assert data[-8:] == b"\xfe\xff\xdd\xe0" + bytes(4)  # the sequence delimiter (FFFE,E0DD), length 0
    path = tmp_path / "rle.dcm"
    path.write_bytes(data[:-8])
    from portalign._pydicom_compat import PYDICOM_MAJOR

    said = (r"damaged DICOM file \(its \d+ elements before the pixel data read, but PixelData \(7FE0,0010\) cannot: its "
            r"fragments or their end, the sequence delimiter \(FFFE,E0DD\), are damaged or missing\)"
            if PYDICOM_MAJOR >= 3 else  # pydicom 2.4 reads up to the pixel data and drops it
            r"has no pixel data \(Modality RTIMAGE\): an image file of [\d,]+ bytes that ends before its pixels, most "
            r"likely cut short")
    with pytest.raises(PortalImageError, match=rf"^rle\.dcm: {said}; copy or export it again$"):
        read_rt_image(path)


def _rle_literal(data: bytes) -> bytes:
    """One RLE segment (PS3.5 G.3) holding ``data`` as literal runs of at most 128 bytes, padded to an even length."""
    out = b"".join(bytes([len(data[i:i + 128]) - 1]) + data[i:i + 128] for i in range(0, len(data), 128))
    return out + b"\0" * (len(out) % 2)


@pytest.mark.parametrize("excess", [0, 1, 6])
def test_an_rle_segment_decoding_longer_than_its_image_is_damaged(tmp_path, excess):
    """A fuzzer's 20 bytes changed inside an RLE stream decoded with only pydicom's warning ("non-conformant padding -
    16806 vs. 16128 bytes"): the rows after the damage came out displaced and the frame matched 1.45 mm off, ok. One
    byte more is an encoder's even padding (read, the warning kept as a note); more is a damaged stream (refused)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    pixels = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 37) % 4000
    ds = make_rt_image(pixels)
    high, low = (pixels >> 8).astype(np.uint8).tobytes(), (pixels & 0xFF).astype(np.uint8).tobytes()
    first, second = _rle_literal(high + bytes(excess)), _rle_literal(low + bytes(excess))
    header = struct.pack("<16L", 2, 64, 64 + len(first), *([0] * 13))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([header + first + second])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "rle.dcm"
    path.write_bytes(to_bytes(ds))
    if excess <= 1:
        image = read_rt_image(path)
        np.testing.assert_array_equal(image.pixels, pixels.astype(np.float32))
        assert (excess == 1) == any("non-conformant padding" in w for w in image.info.extra.get("dicom_warnings", []))
        return
    with pytest.raises(PortalImageError, match=rf"^rle\.dcm: its RLE pixel data decodes to {384 + excess} bytes a "
                                               r"segment where 384 are expected: the compressed PixelData \(7FE0,0010\) "
                                               r"is damaged \(the pixels after the damage are displaced\); copy or export "
                                               r"it again$"):
        read_rt_image(path)


def test_a_decoder_s_object_address_is_not_quoted():
    """pillow said "cannot identify image file <_io.BytesIO object at 0x7f...>": an address, different every run."""
    from portalign.dicom import _one_line

    said = _one_line(ValueError("pillow: cannot identify image file <_io.BytesIO object at 0x7f3a2b9c1d50>"))
    assert said == "pillow: cannot identify image file the compressed frame"


# ---------------------------------------------------------------------------
# a third campaign (session 42: an independent fuzzer of its own, seeds 424242, 1337 and 777, 10,048 mutants and
# 2,100 extreme images): four escapes, one large allocation and silent values, each its own test
# ---------------------------------------------------------------------------


def test_a_damaged_modality_lut_sequence_is_refused_not_an_oserror(shipped):
    # pydicom's parser raised OSError ("No tag to read at file position 3A0") as the sequence was first read
    data = shipped[0].explicit
    before = _elements(data, "RTImageLabel")[0][0]  # (3002,0002): the first element after (0028,3000)
    garbage = b"-nan"
    element = struct.pack("<HH", 0x0028, 0x3000) + b"SQ\0\0" + struct.pack("<I", len(garbage)) + garbage
    damaged = data[:before] + element + data[before:]
    with pytest.raises(PortalImageError, match=r"^<bytes>: ModalityLUTSequence \(0028,3000\) cannot be read \(.*\): "
                                               r"the tag is damaged, and the stored values cannot be mapped without it"):
        read_rt_image(damaged)


def test_a_path_the_system_refuses_is_a_portalign_error():
    with pytest.raises(PortalImageError, match=r": cannot be read \(.*[Ff]ile name too long.*\); check the path$"):
        read_rt_image("x" * 300)


def _flat_at(value: float, slope: float, role: str, shipped: list[Sample]) -> bytes:
    """A 96 x 128 image of one stored value but for one pixel, rescaled by ``slope`` to ``value`` and beyond."""
    pixels = np.full((96, 128), 1000.0)
    pixels[40, 60] = 1001.0
    spacing = 3.136
    tags = {"ImageType": ["DERIVED", "SECONDARY", "DRR"]} if role == "reference" else {}
    ds = make_rt_image(pixels.astype(np.uint16), spacing=spacing, sid=1500.0, sad=1000.0, position="centre", **tags)
    ds.RescaleSlope, ds.RescaleIntercept = repr(slope), repr(value)
    return to_bytes(ds)


@pytest.mark.parametrize("role", ["frame", "reference"])
def test_a_flat_image_of_values_beyond_2_to_the_53_registers_without_dividing_by_zero(shipped, role):
    # a flat level's range was widened by 1.0, which at 1e16 changes nothing (lo + 1 == lo): ZeroDivisionError in
    # the quantisation, a traceback from `portalign register`
    flat = read_rt_image(_flat_at(1e16, 1e13, role, shipped))
    assert flat.pixels.min() >= 1e16
    if role == "frame":
        pair = (shipped[0].reference, flat)
    else:
        pair = (portalign.prepare_reference(flat), read_rt_image(shipped[0].data))
    try:
        result = pair[0].register(pair[1])
    except PortalignError:
        return  # refused with a message: allowed
    assert result.ok is False, result


def test_direction_cosines_that_are_not_unit_vectors_are_refused(shipped):
    # RTImageOrientation 0.9\0\0\0\-0.9\0 moved the beam axis 8 pixels: a registration ok 15 mm off
    data = shipped[0].explicit
    element = _elements(data, "RTImageOrientation")
    if not element:  # the demo writer leaves the default orientation out: write the tag
        ds = read_dataset(data)
        ds.RTImageOrientation = [0.9, 0.0, 0.0, 0.0, -0.9, 0.0]
        buffer = io.BytesIO()
        write_dataset(buffer, ds)
        damaged = buffer.getvalue()
    else:
        damaged = _replace_value(data, element[0], b"0.9\\0\\0\\0\\-0.9\\0")
    with pytest.raises(GeometryError, match=r"RTImageOrientation \(3002,0010\) is \[0\.9, 0\.0, 0\.0, 0\.0, -0\.9, 0\.0\]: "
                                            r"its row and column direction cosines must be two unit vectors at right "
                                            r"angles in the imager's plane \(lengths 0\.9 and 0\.9, cosine between "
                                            r"them 0, z components 0 and 0\)"):
        read_rt_image(damaged)
    # two unit vectors at right angles, but tilted out of the imager's plane: a trial's [1,0,0, 0,-0.8,0.6] moved the
    # axis and gave an ok shift 25 mm off; [1,0,0, 0,0,-1] (no in-plane column direction) was replaced silently
    for tilted in ([1.0, 0.0, 0.0, 0.0, -0.8, 0.6], [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]):
        ds = read_dataset(data)
        ds.RTImageOrientation = tilted
        buffer = io.BytesIO()
        write_dataset(buffer, ds)
        with pytest.raises(GeometryError, match=r"RTImageOrientation \(3002,0010\) .* in the imager's plane .* z "
                                                r"components 0 and (0\.6|-1)\)"):
            read_rt_image(buffer.getvalue())


def test_an_image_wider_than_any_beams_is_refused_before_its_resampling():
    # 800 x 800 pixels "at 6.7 mm": 5.3 m across; resampled onto a frame's grid it took 724 MiB from a 14 kB file
    wide, frame = _flat((800, 800), 6.667, "wide.dcm"), _flat((96, 128), 2.09, "frame.dcm")
    message = (r"^wide\.dcm: the reference is 800 x 800 pixels of 6\.667 x 6\.667 mm at the isocentre, 5334 mm across: "
               r"no beam's image is over 1000 mm wide there; its spacing .* pixel_spacing_mm=$")
    with pytest.raises(GeometryError, match=message):
        check_registration_size(wide, frame, max_shift_mm=20.0)
    with _PeakMemory() as memory, pytest.raises(GeometryError, match=message):
        portalign.register(wide, frame, backend="cpu")
    assert memory.peak < 64 * 2**20


def test_an_unreadable_exposure_sequence_is_said_not_taken_for_absent(shipped):
    data = shipped[1].explicit  # the cine: its per-frame gantry angles are in the ExposureSequence
    ds = read_dataset(data)
    assert [round(i.info.gantry_deg, 1) for i in read_rt_image_frames(data)] == [0.0, 0.5, 1.0]
    del ds.ExposureSequence
    ds.add_new(0x30020030, "LO", "garbage")
    buffer = io.BytesIO()
    write_dataset(buffer, ds)
    frames = read_rt_image_frames(buffer.getvalue())
    assert ("ExposureSequence (3002,0030) is present but cannot be read as a sequence: its planned jaws, per-frame "
            "gantry angles and KVP are not used") in frames[0].info.extra["notes"]


def test_a_non_finite_diagnostic_is_null_in_the_json():
    # details.periodic_check.ratio was inf: `register --json` printed "ratio": Infinity, which strict JSON refuses
    import json
    import math

    result = portalign.RegistrationResult(1.0, 2.0, None, True, details={
        "periodic_check": {"ratio": math.inf, "runner_up": [1.0, math.nan]}, "scale": np.float32("nan")})
    text = result.as_json()
    strict = json.loads(text, parse_constant=lambda constant: pytest.fail(f"non-standard JSON constant {constant}"))
    assert strict["details"] == {"periodic_check": {"ratio": None, "runner_up": [1.0, None]}, "scale": None}
    assert result.details["periodic_check"]["ratio"] == math.inf  # the object itself keeps its number


@pytest.mark.parametrize("kvp", ["-1500", "120\\6000", "0"])
def test_a_kvp_that_is_no_peak_voltage_is_a_note_not_a_beam(shipped, kvp):
    # KVP only names the beam: -1500 was "kV image (-1500 kVp)", 120\6000 a kV image of 120 kVp
    from portalign.image import beam_kind

    ds = read_dataset(shipped[0].explicit)
    ds.KVP = kvp
    buffer = io.BytesIO()
    write_dataset(buffer, ds)
    image = read_rt_image(buffer.getvalue())
    assert "kvp" not in image.info.extra and beam_kind(image.info) == "portal image"
    assert [n for n in image.info.extra["notes"] if n.startswith("KVP (0018,0060) is ") and
            n.endswith("not one positive peak voltage: not used (the beam's energy is not named from it)")]


def test_an_isocenter_position_that_is_no_point_is_a_note(shipped):
    # [nan, 0, 0] was dropped with nothing said (a REG then takes the isocentre as unknown)
    ds = read_dataset(shipped[0].explicit)
    ds.IsocenterPosition = ["1", "2"]  # two values where three are needed
    buffer = io.BytesIO()
    write_dataset(buffer, ds)
    image = read_rt_image(buffer.getvalue())
    assert "isocenter_position_mm" not in image.info.extra
    assert ("IsocenterPosition (300A,012C) is [1, 2], not three finite numbers (mm): not used (a REG written from it "
            "takes the isocentre as unknown)") in image.info.extra["notes"]


def test_exposure_items_naming_one_frame_twice_are_said(shipped):
    # a cine's items named frames 2, 2, 3: frame 1 took the first item (frame 2's angle), unsaid
    ds = read_dataset(shipped[1].explicit)
    assert len(ds.ExposureSequence) == 3
    ds.ExposureSequence[0].ReferencedFrameNumber = 2
    buffer = io.BytesIO()
    write_dataset(buffer, ds)
    frames = read_rt_image_frames(buffer.getvalue())
    note = ("ExposureSequence (3002,0030): items name frame(s) 2 more than once (ReferencedFrameNumber [2, 2, 3]): each "
            "frame takes the first item that names it; its per-frame gantry angle and aperture may be another frame's")
    assert all(note in frame.info.extra["notes"] for frame in frames)
    assert not [n for n in read_rt_image_frames(shipped[1].explicit)[0].info.extra["notes"] if "more than once" in n]
