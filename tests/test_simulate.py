"""Simulated DRRs and portal frames: kernel vs float64 reference, IEC geometry, the render_pair contract."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from portalign._pydicom_compat import write_dataset
from portalign.ct import CTVolume, read_ct_series
from portalign.errors import GeometryError, PortalImageError
from portalign.kernels.cpu.projection import project_cone_beam
from portalign.kernels.reference import projection as reference
from portalign.simulate import ATTENUATION, attenuation_from_hu, render_drr, render_pair
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTImageStorage, generate_uid

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
THORAX_CT = REAL_DATA / "itkelastix" / "thorax_ct_phase00"

# Small, fast beam: 128 x 128 pixels of 0.6 mm at SID 1500 -> 0.4 mm at the isocentre (+-25.6 mm).
SMALL_BEAM = dict(detector_shape=(128, 128), detector_spacing_mm=0.6, sad_mm=1000.0, sid_mm=1500.0)
BEAD_SPACING = (1.2, 1.0, 1.1)  # (z, y, x), deliberately anisotropic
BEAD_SHAPE = (56, 64, 60)


# ---------------------------------------------------------------------------------------------- helpers


def bead_phantom(offsets_mm: list[tuple[float, float, float]], *, position: str = "HFS") -> CTVolume:
    """Water box (with an air rim) holding Gaussian 'bone' beads at DICOM (x, y, z) offsets from its centre."""
    nz, ny, nx = BEAD_SHAPE
    sz, sy, sx = BEAD_SPACING
    origin = (-40.0, 25.0, 100.0)  # arbitrary: geometry must not depend on where the CT grid sits
    z = origin[2] + np.arange(nz) * sz
    y = origin[1] + np.arange(ny) * sy
    x = origin[0] + np.arange(nx) * sx
    hu = np.full(BEAD_SHAPE, -1000.0)
    hu[3:-3, 3:-3, 3:-3] = 0.0
    centre = (x[0] + x[-1]) / 2, (y[0] + y[-1]) / 2, (z[0] + z[-1]) / 2
    for dx, dy, dz in offsets_mm:
        r2 = ((z[:, None, None] - centre[2] - dz) ** 2 + (y[None, :, None] - centre[1] - dy) ** 2
              + (x[None, None, :] - centre[0] - dx) ** 2)
        hu += 2500.0 * np.exp(-r2 / (2 * 2.0**2))
    return CTVolume(hu=hu, spacing_mm=BEAD_SPACING, origin_mm=origin, patient_position=position)


def attenuation_image(image) -> np.ndarray:
    """Line integral of attenuation: the DRR itself, or -log(transmission) of a portal frame."""
    pixels = image.pixels.astype(np.float64)
    return pixels if image.info.kind == "drr" else -np.log(pixels)


def bead_centroid(image, background, near_mm: tuple[float, float], radius_mm: float = 8.0) -> np.ndarray:
    """Centroid (x, y) in mm of the beads' own attenuation (image minus a bead-free render) near a point."""
    signal = attenuation_image(image) - attenuation_image(background)
    rows, cols = np.indices(signal.shape)
    x, y = image.pixel_to_mm(cols, rows)
    weight = np.where((x - near_mm[0]) ** 2 + (y - near_mm[1]) ** 2 < radius_mm**2, signal, 0.0)
    assert weight.sum() > 0, f"no bead signal near {near_mm}"
    return np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()


def rotation(theta_deg: float) -> np.ndarray:
    t = math.radians(theta_deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


# ---------------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize(
    "source, origin, col, row",
    [
        # oblique rays, some missing the volume
        ((3.0, -40.0, 4.0), (-2.0, 30.0, -3.0), (0.1, 0.05, 0.8), (0.9, 0.0, -0.1)),
        # rays with exactly zero z and x components (slab branch for parallel rays), source inside the volume
        ((2.0, 3.0, 4.0), (2.0, 50.0, -6.0), (0.0, 0.0, 1.3), (0.0, 0.0, 0.0)),
        # along-x rays, pixels on both sides of the volume
        ((3.0, 2.5, -60.0), (-4.0, -3.0, 60.0), (0.0, 1.1, 0.0), (1.3, 0.0, 0.0)),
    ],
)
def test_kernel_matches_float64_reference(source, origin, col, row):
    rng = np.random.default_rng(7)
    volume = rng.random((5, 6, 7)).astype(np.float32)
    spacing = np.array([1.5, 1.0, 1.2])
    args = [np.array(v, dtype=np.float64) for v in (source, origin, col, row)]
    fast = np.full((12, 10), -1.0, dtype=np.float32)
    slow = np.full((12, 10), -1.0)
    project_cone_beam(volume, spacing, *args, 0.37, fast)
    reference.project_cone_beam(volume, spacing, *args, 0.37, slow)
    assert (slow > 0).any()
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4 * slow.max())


def test_kernel_integral_of_uniform_block_is_the_chord_length():
    volume = np.ones((30, 30, 30), dtype=np.float32)  # box of voxel centres: 29 mm on each side
    spacing = np.ones(3)
    out = np.zeros((3, 3), dtype=np.float32)
    # Source straight above the box centre; pixels on a line through the centre along x.
    project_cone_beam(volume, spacing, np.array([14.5, -500.0, 14.5]), np.array([14.5, 500.0, 4.5]),
                      np.array([0.0, 0.0, 10.0]), np.array([0.0, 0.0, 0.0]), 0.05, out)
    for c, x_end in enumerate((4.5, 14.5, 24.5)):
        cos = 1000.0 / math.hypot(1000.0, x_end - 14.5)
        assert out[0, c] == pytest.approx(29.0 / cos, abs=0.06)  # midpoint rule: within one step


# ---------------------------------------------------------------------------------------------- physics


def test_attenuation_model_bone_is_strong_at_kv_weak_at_mv():
    hu = np.array([-1000.0, -500.0, 0.0, 1000.0, 1935.0])
    kv, mv = attenuation_from_hu(hu, "kv"), attenuation_from_hu(hu, "mv")
    assert kv[0] == 0 and mv[0] == 0
    assert kv[2] == pytest.approx(ATTENUATION["kv"].mu_water_per_mm)
    assert kv[1] == pytest.approx(kv[2] / 2) and mv[1] == pytest.approx(mv[2] / 2)
    np.testing.assert_allclose(kv[3] / kv[2], 2.0, rtol=1e-5)  # at the CT energy mu is linear in HU
    assert 1.3 < mv[3] / mv[2] < 1.5  # Compton only: bone barely stands out
    assert kv[4] / kv[2] > 1.5 * mv[4] / mv[2]


def test_mv_field_edges_are_fixed_to_the_beam_and_transmission_is_low_outside():
    field = (-12.0, 8.0, -4.0, 16.0)  # x1, x2, y1, y2 in the beam-limiting-device frame
    kw = dict(SMALL_BEAM, energy="mv", penumbra_mm=3.0)
    air = CTVolume(hu=np.full((8, 8, 8), -1000.0), spacing_mm=(2.0, 2.0, 2.0))
    image = render_drr(air, field_mm=field, **kw)  # nothing attenuates: the pixels are the jaw map
    col, row = image.mm_to_pixel(-2.0, -6.0)  # the field centre
    assert image.pixels[round(row), round(col)] == pytest.approx(1.0, abs=1e-3)
    assert image.pixels[0, 0] == pytest.approx(0.02, abs=1e-3)
    # 50 % edges: x at x1 and x2; image y at -y2 (top, Y2 towards the gantry) and -y1.
    half = (1 + 0.02) / 2
    profile_x = image.pixels[round(row)]
    x, _ = image.pixel_to_mm(np.arange(128), 0)
    assert np.interp(half, profile_x[:64], x[:64]) == pytest.approx(-12.0, abs=0.05)
    assert np.interp(half, profile_x[64:][::-1], x[64:][::-1]) == pytest.approx(8.0, abs=0.05)
    profile_y = image.pixels[:, round(col)]
    _, y = image.pixel_to_mm(0, np.arange(128))
    assert np.interp(half, profile_y[:64], y[:64]) == pytest.approx(-16.0, abs=0.05)
    assert np.interp(half, profile_y[64:][::-1], y[64:][::-1]) == pytest.approx(4.0, abs=0.05)
    # With a patient that moves, the jaw map (collimated / open) stays where it was.
    phantom = bead_phantom([(5.0, 0.0, 3.0)])
    moved = dict(kw, couch_shift_mm=(7.0, -5.0, 3.0), patient_rotation_deg=(1.0, 2.0, 3.0))
    jaws = render_drr(phantom, field_mm=field, **moved).pixels / render_drr(phantom, **moved).pixels
    np.testing.assert_allclose(jaws, image.pixels, rtol=1e-5)


def test_mv_noise_is_seeded_and_has_the_requested_relative_level():
    air = CTVolume(hu=np.full((8, 8, 8), -1000.0), spacing_mm=(2.0, 2.0, 2.0))
    a = render_drr(air, energy="mv", noise=0.05, seed=3, **SMALL_BEAM)
    b = render_drr(air, energy="mv", noise=0.05, seed=3, **SMALL_BEAM)
    c = render_drr(air, energy="mv", noise=0.05, seed=4, **SMALL_BEAM)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert not np.array_equal(a.pixels, c.pixels)
    assert a.pixels.std() == pytest.approx(0.05, rel=0.05)


def test_image_geometry_and_info():
    image = render_drr(bead_phantom([]), gantry_deg=90.0, energy="mv", **dict(SMALL_BEAM, detector_shape=(96, 128)))
    assert image.shape == (96, 128)
    assert image.spacing_mm == pytest.approx((0.4, 0.4))
    assert image.beam_axis_px == (63.5, 47.5)
    assert image.pixels.dtype == np.float32
    info = image.info
    assert (info.kind, info.gantry_deg, info.sid_mm, info.sad_mm, info.patient_position) == ("portal", 90.0, 1500.0,
                                                                                            1000.0, "HFS")
    assert info.imager_spacing_mm == (0.6, 0.6)
    assert render_drr(bead_phantom([]), **SMALL_BEAM).info.kind == "drr"


def test_bad_geometry_is_refused_with_the_fix():
    ct = bead_phantom([])
    with pytest.raises(GeometryError, match="energy"):
        render_drr(ct, energy="xray", **SMALL_BEAM)
    with pytest.raises(GeometryError, match="energy='mv'"):
        render_drr(ct, field_mm=(-5, 5, -5, 5), **SMALL_BEAM)
    with pytest.raises(GeometryError, match="patient_position="):
        render_drr(CTVolume(hu=ct.hu, spacing_mm=ct.spacing_mm, patient_position=""), **SMALL_BEAM)
    with pytest.raises(GeometryError, match="sad_mm"):
        render_drr(ct, **dict(SMALL_BEAM, sid_mm=900.0))


# ---------------------------------------------------------------------------------------------- IEC geometry


# Bead offsets in DICOM patient coordinates (LPS: +x left, +y posterior, +z superior), all in the
# isocentre plane of the beam, and where the anatomy must appear in the image (x, y) in mm.
@pytest.mark.parametrize(
    "gantry, offset, expected",
    [
        (0.0, (12.0, 0.0, 0.0), (12.0, 0.0)),  # G0 (AP): patient left is +x
        (0.0, (0.0, 0.0, 12.0), (0.0, -12.0)),  # superior is -y (towards the gantry, top of the image)
        (90.0, (0.0, 12.0, 0.0), (12.0, 0.0)),  # G90 (left lateral): posterior is +x
        (90.0, (0.0, 0.0, -12.0), (0.0, 12.0)),  # inferior is +y
        (180.0, (12.0, 0.0, 0.0), (-12.0, 0.0)),  # G180 (PA): patient left is -x
        (270.0, (0.0, 12.0, 0.0), (-12.0, 0.0)),  # G270 (right lateral): posterior is -x
    ],
)
def test_image_axes_for_hfs(gantry, offset, expected):
    background = render_drr(bead_phantom([]), gantry_deg=gantry, **SMALL_BEAM)
    image = render_drr(bead_phantom([offset]), gantry_deg=gantry, **SMALL_BEAM)
    np.testing.assert_allclose(bead_centroid(image, background, expected), expected, atol=0.02)


@pytest.mark.parametrize(
    "position, offset, expected",
    [
        ("FFS", (12.0, 0.0, 0.0), (-12.0, 0.0)),  # feet first: patient left is on IEC -X
        ("FFS", (0.0, 0.0, 12.0), (0.0, 12.0)),  # and superior is away from the gantry
        ("HFP", (12.0, 0.0, 0.0), (-12.0, 0.0)),  # prone: left is on IEC -X
        ("FFP", (12.0, 0.0, 0.0), (12.0, 0.0)),
    ],
)
def test_image_axes_for_other_patient_positions(position, offset, expected):
    background = render_drr(bead_phantom([], position=position), **SMALL_BEAM)
    image = render_drr(bead_phantom([offset], position=position), **SMALL_BEAM)
    np.testing.assert_allclose(bead_centroid(image, background, expected), expected, atol=0.02)


# Couch shift (lateral, longitudinal, vertical) moves a bead at the isocentre by
# (lateral cos g - vertical sin g, -longitudinal) in the image.
@pytest.mark.parametrize(
    "gantry, shift, expected",
    [
        (0.0, (5.0, 0.0, 0.0), (5.0, 0.0)),
        (0.0, (0.0, 5.0, 0.0), (0.0, -5.0)),
        (0.0, (0.0, 0.0, 5.0), (0.0, 0.0)),  # along the beam: no motion at the isocentre
        (90.0, (0.0, 0.0, 5.0), (-5.0, 0.0)),
        (90.0, (5.0, 0.0, 0.0), (0.0, 0.0)),
        (90.0, (0.0, -3.0, 0.0), (0.0, 3.0)),
    ],
)
def test_couch_shift_moves_the_anatomy(gantry, shift, expected):
    kw = dict(SMALL_BEAM, gantry_deg=gantry, couch_shift_mm=shift)
    image = render_drr(bead_phantom([(0.0, 0.0, 0.0)]), **kw)
    background = render_drr(bead_phantom([]), **kw)
    np.testing.assert_allclose(bead_centroid(image, background, expected), expected, atol=0.02)


def test_couch_shift_is_magnified_off_the_isocentre_plane():
    # A bead 20 mm towards the source (anterior at G0) moves by 5 * SAD / (SAD - 20) in the image.
    kw = dict(SMALL_BEAM, couch_shift_mm=(5.0, 0.0, 0.0))
    image = render_drr(bead_phantom([(0.0, -20.0, 0.0)]), **kw)
    background = render_drr(bead_phantom([]), **kw)
    assert bead_centroid(image, background, (5.0, 0.0))[0] == pytest.approx(5.0 * 1000.0 / 980.0, abs=0.02)


# ---------------------------------------------------------------------------------------------- render_pair


@pytest.mark.parametrize(
    "gantry, shift, theta",
    [(0.0, (2.5, -1.7), 3.0), (0.0, (-4.0, 0.6), -6.0), (90.0, (1.2, 3.3), 2.0), (35.0, (0.0, 0.0), 4.0)],
)
def test_render_pair_moves_the_anatomy_as_the_contract_says(gantry, shift, theta):
    g = math.radians(gantry)
    in_plane = [(-11.0, 9.0), (10.0, 6.0), (3.0, -12.0)]  # (along image x, along superior) in mm
    # Image x is (cos g, 0, -sin g) in IEC; IEC (X, Z) = (left, anterior) = (x, -y) in DICOM for HFS.
    offsets = [(u * math.cos(g), u * math.sin(g), s) for u, s in in_plane]
    kw = dict(SMALL_BEAM, gantry_deg=gantry, shift_mm=shift, rotation_deg=theta)
    reference_img, frame, truth = render_pair(bead_phantom(offsets), **kw)
    reference_bg, frame_bg, _ = render_pair(bead_phantom([]), **kw)
    assert reference_img.info.kind == "drr" and frame.info.kind == "portal"
    assert (truth["dx_mm"], truth["dy_mm"], truth["rotation_deg"]) == (shift[0], shift[1], theta)
    for u, s in in_plane:
        p = bead_centroid(reference_img, reference_bg, (u, -s))
        np.testing.assert_allclose(p, (u, -s), atol=0.02)
        expected = rotation(theta) @ p + shift
        np.testing.assert_allclose(bead_centroid(frame, frame_bg, expected), expected, atol=0.05)


def test_render_pair_truth_reproduces_the_frame_with_render_drr():
    ct = bead_phantom([(4.0, 0.0, 6.0)])
    _, frame, truth = render_pair(ct, gantry_deg=90.0, shift_mm=(1.0, -2.0), rotation_deg=2.5, **SMALL_BEAM)
    again = render_drr(ct, gantry_deg=90.0, energy="mv", couch_shift_mm=truth["couch_shift_mm"],
                       patient_rotation_deg=truth["patient_rotation_deg"], **SMALL_BEAM)
    np.testing.assert_allclose(again.pixels, frame.pixels, rtol=1e-6)
    # At G90 image +x is IEC -Z (down) and image +y is IEC -Y.
    np.testing.assert_allclose(truth["couch_shift_mm"], (0.0, 2.0, -1.0), atol=1e-12)


def test_out_of_plane_rotation_tilts_the_anatomy_about_the_isocentre():
    kw = dict(SMALL_BEAM, out_of_plane_deg=(0.0, 4.0))  # about image y: tilts image x towards the source
    _, frame_bg, truth = render_pair(bead_phantom([]), **kw)
    assert truth["out_of_plane_deg"] == (0.0, 4.0)
    _, frame, _ = render_pair(bead_phantom([(0.0, 0.0, 0.0)]), **kw)
    np.testing.assert_allclose(bead_centroid(frame, frame_bg, (0.0, 0.0)), (0.0, 0.0), atol=0.02)
    # A bead 10 mm along image x turns 10 sin(4) mm towards the source (ey x ex points at the
    # source): foreshortened by cos(4), magnified by SAD / (SAD - depth).
    _, frame, _ = render_pair(bead_phantom([(10.0, 0.0, 0.0)]), **kw)
    depth = 10 * math.sin(math.radians(4))
    expected = (10 * math.cos(math.radians(4)) * 1000 / (1000 - depth), 0.0)
    np.testing.assert_allclose(bead_centroid(frame, frame_bg, expected), expected, atol=0.005)


# ---------------------------------------------------------------------------------------------- CT reading


def write_ct_slice(path: Path, z: float, pixels: np.ndarray, *, series: str = "1.2.826.0.1.3680043.9.1",
                   orientation=(1, 0, 0, 0, 1, 0), sop_class=CTImageStorage, modality: str = "CT") -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.9.2"
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [-5.0, -6.0, z]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [0.8, 0.7]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    write_dataset(path, ds)


def stored_values(k: int, rows: int = 6, cols: int = 5) -> np.ndarray:
    """Stored pixel values that encode slice k, row and column: HU = 2 * stored - 1024."""
    return 600 + 100 * k + 10 * np.arange(rows)[:, None] + np.arange(cols)[None, :]


def test_read_ct_series_sorts_slices_and_rescales(tmp_path):
    for name, k in zip("cabd", (2, 0, 1, 3), strict=True):  # file names not in z order
        write_ct_slice(tmp_path / f"{name}.dcm", -20.0 + 2.5 * k, stored_values(k))
    (tmp_path / "notes.txt").write_text("not DICOM")
    ct = read_ct_series(tmp_path)
    assert ct.shape == (4, 6, 5)
    assert ct.spacing_mm == pytest.approx((2.5, 0.8, 0.7))
    assert ct.origin_mm == pytest.approx((-5.0, -6.0, -20.0))
    assert ct.patient_position == "HFS"
    for k in range(4):
        np.testing.assert_array_equal(ct.hu[k], 2.0 * stored_values(k) - 1024)


def test_read_ct_series_stores_flipped_columns_along_plus_x(tmp_path):
    for k in range(3):
        write_ct_slice(tmp_path / f"{k}.dcm", 2.0 * k, stored_values(k), orientation=(-1, 0, 0, 0, 1, 0))
    ct = read_ct_series(tmp_path)
    assert ct.origin_mm == pytest.approx((-5.0 - 4 * 0.7, -6.0, 0.0))
    np.testing.assert_array_equal(ct.hu[1], (2.0 * stored_values(1) - 1024)[:, ::-1])


def test_read_ct_series_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PortalImageError, match="empty"):
        read_ct_series(empty)
    with pytest.raises(PortalImageError, match="no such folder"):
        read_ct_series(tmp_path / "missing")

    other = tmp_path / "other"
    other.mkdir()
    write_ct_slice(other / "ri.dcm", 0.0, stored_values(0), sop_class=RTImageStorage, modality="RTIMAGE")
    (other / "readme.txt").write_text("hello")
    with pytest.raises(PortalImageError, match=r"no CT image slices.*RTIMAGE x1.*non-DICOM"):
        read_ct_series(other)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k in range(2):
        write_ct_slice(mixed / f"a{k}.dcm", 2.0 * k, stored_values(k), series="1.2.3.1")
        write_ct_slice(mixed / f"b{k}.dcm", 2.0 * k, stored_values(k), series="1.2.3.2")
    with pytest.raises(PortalImageError, match="2 CT series.*series_uid="):
        read_ct_series(mixed)
    assert read_ct_series(mixed, series_uid="1.2.3.2").series_instance_uid == "1.2.3.2"

    gap = tmp_path / "gap"
    gap.mkdir()
    for k in (0, 1, 3):
        write_ct_slice(gap / f"{k}.dcm", 2.0 * k, stored_values(k))
    with pytest.raises(PortalImageError, match="missing slices"):
        read_ct_series(gap)


def test_downsampled_averages_blocks_and_keeps_geometry():
    hu = np.arange(4 * 6 * 9, dtype=np.float32).reshape(4, 6, 9)
    ct = CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 0.5), origin_mm=(10.0, 20.0, 30.0))
    small = ct.downsampled(2)
    assert small.shape == (2, 3, 4)
    assert small.spacing_mm == (4.0, 2.0, 1.0)
    assert small.origin_mm == (10.25, 20.5, 31.0)
    assert small.hu[0, 0, 0] == pytest.approx(hu[:2, :2, :2].mean())
    assert ct.downsampled(1) is ct
    with pytest.raises(GeometryError):
        ct.downsampled(0)


# ---------------------------------------------------------------------------------------------- real CT


@pytest.mark.real_data
@pytest.mark.skipif(not THORAX_CT.is_dir(), reason=f"real thorax CT not found at {THORAX_CT}")
def test_thorax_ct_kv_drr_and_mv_frame():
    ct = read_ct_series(THORAX_CT)
    assert ct.shape == (141, 512, 512) and ct.patient_position == "HFS"
    assert ct.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    small = ct.downsampled(4)
    beam = dict(detector_shape=(96, 128), detector_spacing_mm=2.4, sid_mm=1500.0)
    drr = render_drr(small, energy="kv", **beam)
    mv = render_drr(small, energy="mv", field_mm=(-100.0, 100.0, -70.0, 70.0), noise=0.01, **beam)
    # Bone path: the same rays through the bone voxels only.
    bone_only = CTVolume(hu=np.where(small.hu > 250, small.hu, -1000.0), spacing_mm=small.spacing_mm,
                         origin_mm=small.origin_mm, patient_position="HFS")
    bone = render_drr(bone_only, energy="kv", **beam).pixels
    for image in (drr, mv):
        assert np.isfinite(image.pixels).all() and image.pixels.std() > 0
    inside = np.s_[12:-12, 16:-16]  # within the jaws
    bony = bone[inside] > np.percentile(bone[inside], 90)
    assert drr.pixels[inside][bony].mean() > drr.pixels[inside].mean()  # bone bright in the DRR
    assert mv.pixels[inside][bony].mean() < mv.pixels[inside].mean()  # and dark in the portal image
    assert np.corrcoef(drr.pixels[inside].ravel(), bone[inside].ravel())[0, 1] > 0.5
    assert np.corrcoef(mv.pixels[inside].ravel(), bone[inside].ravel())[0, 1] < -0.3
    assert 0.0 < mv.pixels.min() and mv.pixels.max() < 1.1


def test_gpu_render_without_a_gpu_names_what_is_missing():
    from portalign.backends import gpu_status
    from portalign.errors import BackendUnavailableError

    if gpu_status()[0]:
        pytest.skip("a GPU backend is available here (or simulated): tests/test_gpu.py renders on it")
    with pytest.raises(BackendUnavailableError, match="no CUDA device|CuPy is not installed"):
        render_drr(bead_phantom([]), backend="gpu", **SMALL_BEAM)


@pytest.mark.parametrize(
    ("tag", "value", "message"),
    [
        ("PixelSpacing", "nan\\0.7", r"PixelSpacing is \[nan, 0\.7\]; each value must be a finite number"),
        ("PixelSpacing", "0.8\\0.7\\0.6", r"PixelSpacing has 3 values; it must have 2"),
        ("ImagePositionPatient", "1\\2", r"ImagePositionPatient has 2 values; it must have 3"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\1\\inf", r"ImageOrientationPatient is \[.*inf\]"),
        ("Rows", 60000, r"Rows x Columns x BitsAllocated \(60000 x 5 x 16\) needs 600000 bytes .* file has \d+"),
    ],
)
def test_read_ct_series_refuses_damaged_geometry_before_allocating(tmp_path, tag, value, message):
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    for k in range(2):
        write_ct_slice(tmp_path / f"s{k}.dcm", 2.0 * k, stored_values(k))
    path = tmp_path / "s1.dcm"
    ds = pydicom.dcmread(path)
    if isinstance(value, str):  # written as received, without pydicom's validation
        raw = value.encode("ascii") + b" " * (len(value) % 2)
        ds[tag_for_keyword(tag)] = RawDataElement(tag_for_keyword(tag), "DS", len(raw), raw, 0, False, True)
    else:
        setattr(ds, tag, value)
    write_dataset(path, ds)
    with pytest.raises(PortalImageError, match=r"s1\.dcm: CT slice " + message if tag != "Rows" else message):
        read_ct_series(tmp_path)


@pytest.mark.parametrize("energy", ["kv", "mv"])
def test_an_image_stated_at_the_isocentre_plane_is_rendered_through_the_whole_patient(energy):
    """SID = SAD (a planning system's DRR, a portal image scaled to the isocentre): the rays run through the whole CT,
    not to the isocentre plane and no farther (an independent trial's SID 1000 references held half the patient). The
    same rays at SID 1500 with the pitch scaled to the same isocentre pixels give the same image."""
    phantom = bead_phantom([(0.0, 0.0, 0.0), (10.0, 0.0, 15.0), (0.0, 20.0, -10.0)])  # one bead beyond the isocentre
    at_iso = render_drr(phantom, gantry_deg=0.0, energy=energy, detector_shape=(96, 96), detector_spacing_mm=0.5,
                        sad_mm=1000.0, sid_mm=1000.0)
    imager = render_drr(phantom, gantry_deg=0.0, energy=energy, detector_shape=(96, 96), detector_spacing_mm=0.75,
                        sad_mm=1000.0, sid_mm=1500.0)
    assert at_iso.spacing_mm == pytest.approx(imager.spacing_mm)
    assert at_iso.info.sid_mm == 1000.0 and imager.info.sid_mm == 1500.0
    np.testing.assert_allclose(attenuation_image(at_iso), attenuation_image(imager), rtol=1e-5, atol=1e-5)
    # the whole water box's chord (64 mm of water less the rim) is in the centre ray, not half of it
    water = ATTENUATION[energy].mu_water_per_mm
    centre = attenuation_image(at_iso)[48, 48]
    assert centre > 0.9 * water * (BEAD_SHAPE[1] - 6) * BEAD_SPACING[1]
