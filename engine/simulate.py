"""Simulated images from CT: kV DRRs and MV portal frames with a known patient displacement.

These make realistic test pairs for the registration engine: render the
reference DRR at the planned position and the portal frame with the patient
moved by a known amount, then check that the registration finds it.

Geometry (IEC 61217, couch at 0 degrees)
----------------------------------------
The fixed frame has its origin at the isocentre: +X to the right of an observer
at the foot of the couch facing the gantry, +Y towards the gantry, +Z up. For a
head-first-supine (HFS) patient that is +X = patient left, +Y = superior,
+Z = anterior. The gantry turns about Y: at gantry angle ``g`` the source sits
at ``SAD * (sin g, 0, cos g)`` (above the patient at 0, at the patient's left
for HFS at 90) and the imager faces it at ``SID`` from the source. Each ray runs
from the source through an imager pixel and on through the whole CT
(``cast_plane_mm``): an image stated at the isocentre plane (``SID = SAD``, a
planning system's DRR) shows the anatomy beyond the isocentre too.

Image axes: beam's-eye view, as seen from the source, with the gantry (Y2 jaw)
at the top of the image, as Varian/IEC displays and the RT Image plane use:
image +x (increasing column) is the beam-limiting-device axis +Xb (the X2 jaw
side) and image +y (increasing row) is -Yb (towards the Y1 jaw, away from the
gantry). In IEC fixed coordinates::

    ex = (cos g, 0, -sin g)      image +x
    ey = (0, -1, 0)              image +y
    ex x ey = -(sin g, 0, cos g) the beam direction, source to isocentre

So for HFS:

===========  =======================  =====================  =============
gantry       image +x                 image +y               beam
===========  =======================  =====================  =============
0            patient left             inferior (feet)        AP
90           patient posterior        inferior               left lateral
180          patient right            inferior               PA
270          patient anterior         inferior               right lateral
===========  =======================  =====================  =============

Couch shifts ``(lateral, longitudinal, vertical)`` move the patient with the
couch by that vector along IEC +X, +Y, +Z (for HFS: towards the patient's
left, towards the head, upwards). An anatomy point in the isocentre plane
then moves in the image by::

    dx_mm = lateral * cos g - vertical * sin g
    dy_mm = -longitudinal

(+5 mm lateral is +5 mm in x at gantry 0; +5 mm vertical is -5 mm in x at
gantry 90; +5 mm longitudinal is -5 mm in y at every gantry angle). Points off
the isocentre plane move by that amount times their magnification
``SAD / (SAD - depth towards the source)``.

A patient support (couch) angle ``s`` turns the couch, and the patient with it,
about the vertical through the isocentre (right-handed about +Z): the beam axes
above are turned into patient-support coordinates, ``v_s = Rz(s)^T v_f``
(:func:`portalign.couch.image_axes`), and shifts and rotations of the patient
stay in patient-support axes.

Physics
-------
HU are turned into linear attenuation with a bilinear water/bone model
(:func:`attenuation_from_hu`): at or below 0 HU a mixture of air and water, above
it a mixture of water and cortical bone. The bone term is strong at kV
(photoelectric effect) and weak at MV (Compton scattering, which follows
electron density), so bone stands out in a DRR and barely in a portal image.
The ``"kv"`` output is the line integral (bone bright); the ``"mv"`` output is
the transmitted fraction ``exp(-integral)`` of an open beam (1 in air, bone
dark), collimated by the jaws and optionally blurred and noisy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import erf

from .backends import Backend, select_backend
from .ct import CTVolume
from .errors import GeometryError
from .image import Image, ImageInfo

__all__ = ["Attenuation", "ATTENUATION", "CAST_PLANE_SAD", "attenuation_from_hu", "cast_plane_mm", "render_drr", "render_pair"]


@dataclass(frozen=True)
class Attenuation:
    """Linear attenuation of water and cortical bone at one effective beam energy.

    Attributes
    ----------
    name : str
        ``"kv"`` or ``"mv"``.
    mu_water_per_mm, mu_bone_per_mm : float
        Linear attenuation coefficients in 1/mm.
    """

    name: str
    mu_water_per_mm: float
    mu_bone_per_mm: float


# NIST XCOM mass attenuation coefficients (cm^2/g): water 0.2059 and ICRU cortical bone
# (1.92 g/cm^3) 0.3148 at 60 keV, the effective energy of a 120 kVp CT/kV beam; 0.04942 and
# 0.04634 at 2 MeV, roughly the mean energy of a 6 MV beam. x 0.1 for 1/mm.
ATTENUATION: dict[str, Attenuation] = {
    "kv": Attenuation("kv", mu_water_per_mm=0.02059, mu_bone_per_mm=0.1 * 1.92 * 0.3148),
    "mv": Attenuation("mv", mu_water_per_mm=0.004942, mu_bone_per_mm=0.1 * 1.92 * 0.04634),
}

# The CT number of cortical bone at the CT's own energy (the "kv" entry): about 1935 HU.
_BONE_HU = 1000.0 * (ATTENUATION["kv"].mu_bone_per_mm / ATTENUATION["kv"].mu_water_per_mm - 1.0)

# Gaussian edge: the 20 %-80 % width of 0.5 * (1 + erf(u / (sigma sqrt 2))) is 1.683 sigma.
_PENUMBRA_PER_SIGMA = 2.0 * 0.8416
#: The rays are cast from the source to a plane this many SADs from it, or to the imager where that lies farther: the
#: same lines through the imager's pixels, integrated through the whole patient. An image stated at the isocentre plane
#: (RTImageSID = SAD: a planning system's DRR, a portal image scaled to the isocentre) has its pixels at the isocentre,
#: and casting to them stopped every ray there, half the patient rendered (an independent trial, SID = SAD = 1000 mm:
#: references that left out the anatomy beyond the isocentre). Nothing lies beyond a real imager (1.4-1.8 m from the
#: source): other images change by rounding only (the samples are anchored to the source).
CAST_PLANE_SAD = 2.0


def cast_plane_mm(sad_mm: float, sid_mm: float) -> float:
    """Return the distance from the source of the plane the rays are cast to (``CAST_PLANE_SAD``).

    Parameters
    ----------
    sad_mm, sid_mm : float
        Source-to-axis and source-to-imager distances (mm), ``0 < sad_mm <= sid_mm``.

    Returns
    -------
    float
        ``max(sid_mm, CAST_PLANE_SAD * sad_mm)`` (mm): the imager's plane, or one beyond the patient where the
        imager is nearer. A pixel at ``p`` mm from the beam axis on the imager is cast to ``p`` times this over
        ``sid_mm`` on that plane: the same ray.
    """
    return max(float(sid_mm), CAST_PLANE_SAD * float(sad_mm))


# IEC fixed axes (X, Y, Z) as rows of DICOM patient (LPS: left, posterior, superior) components,
# couch at 0 degrees: iec = M @ lps.
_PATIENT_TO_IEC = {
    "HFS": ((1, 0, 0), (0, 0, 1), (0, -1, 0)),
    "FFS": ((-1, 0, 0), (0, 0, -1), (0, -1, 0)),
    "HFP": ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
    "FFP": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
}


def attenuation_from_hu(hu: np.ndarray, energy: str = "kv") -> np.ndarray:
    """Convert Hounsfield units to linear attenuation (1/mm) at a beam energy.

    Bilinear water/bone model: at or below 0 HU the voxel is air and water,
    ``mu = mu_w (1 + HU/1000)`` (never below 0); above 0 HU it is water with a
    bone fraction ``f = HU / HU_bone`` (``HU_bone`` ~ 1935, cortical bone at the
    CT energy), ``mu = (1 - f) mu_w + f mu_bone``. At ``"kv"`` (the CT's own
    energy) this reproduces ``mu_w (1 + HU/1000)``; at ``"mv"`` the bone slope is
    about 0.41 of that.

    Parameters
    ----------
    hu : numpy.ndarray
        Hounsfield units, any shape.
    energy : {"kv", "mv"}
        Effective beam energy, a key of :data:`ATTENUATION`.

    Returns
    -------
    numpy.ndarray
        float32 attenuation in 1/mm, same shape.
    """
    model = _attenuation(energy)
    hu = np.asarray(hu, dtype=np.float32)
    mu_w, mu_b = np.float32(model.mu_water_per_mm), np.float32(model.mu_bone_per_mm)
    bone_fraction = np.maximum(hu, np.float32(0.0)) / np.float32(_BONE_HU)
    soft = mu_w * np.maximum(np.float32(1.0) + np.minimum(hu, np.float32(0.0)) / np.float32(1000.0), np.float32(0.0))
    return (soft + bone_fraction * (mu_b - mu_w)).astype(np.float32)


def render_drr(
    ct: CTVolume,
    *,
    gantry_deg: float = 0.0,
    couch_deg: float = 0.0,
    isocentre_mm: tuple[float, float, float] | None = None,
    sad_mm: float = 1000.0,
    sid_mm: float = 1500.0,
    detector_shape: tuple[int, int] = (768, 1024),
    detector_spacing_mm: float | tuple[float, float] = 0.392,
    energy: str = "kv",
    couch_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    patient_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    field_mm: tuple[float, float, float, float] | None = None,
    penumbra_mm: float = 4.0,
    jaw_transmission: float = 0.02,
    blur_mm: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
    step_mm: float | None = None,
    patient_position: str | None = None,
    backend: str | Backend = "cpu",
) -> Image:
    """Render a cone-beam DRR (``"kv"``) or a simulated portal image (``"mv"``) from a CT.

    Axis and sign conventions are in the module docstring.

    Parameters
    ----------
    ct : CTVolume
        The planning CT.
    gantry_deg : float
        IEC 61217 gantry angle.
    couch_deg : float
        IEC 61217 patient support angle (degrees, right-handed about the
        vertical): the view of a non-coplanar beam; recorded in the image.
    isocentre_mm : (float, float, float), optional
        ``(x, y, z)`` of the isocentre in the CT's DICOM patient coordinates;
        the centre of the volume by default.
    sad_mm, sid_mm : float
        Source-to-axis and source-to-imager distances.
    detector_shape : (int, int)
        ``(rows, cols)`` of the imager.
    detector_spacing_mm : float or (float, float)
        Pixel pitch at the imager, one number or ``(row, col)``. The returned
        image's spacing is this times ``SAD / SID``.
    energy : {"kv", "mv"}
        ``"kv"``: pixel = line integral of kV attenuation (bone bright).
        ``"mv"``: pixel = transmitted fraction of a 6 MV beam (1 in air, bone dark).
    couch_shift_mm : (float, float, float)
        ``(lateral, longitudinal, vertical)``: the patient moved with the couch
        along IEC +X, +Y, +Z.
    patient_rotation_deg : (float, float, float)
        Right-handed rotations of the patient about the IEC X (pitch), Y (roll)
        and Z (yaw) axes through the isocentre, applied in that order, before
        the couch shift: ``p' = Rz Ry Rx p + shift``.
    field_mm : (float, float, float, float), optional
        Jaw positions ``(x1, x2, y1, y2)`` at the isocentre plane in the
        beam-limiting-device frame (signed, ``x1 < x2``, ``y1 < y2``; image
        ``x`` in ``(x1, x2)`` and ``y`` in ``(-y2, -y1)``); fixed to the beam,
        so it does not move with the patient. ``"mv"`` only.
    penumbra_mm : float
        20 %-80 % width of the jaw edges (Gaussian edge) at the isocentre plane.
    jaw_transmission : float
        Fraction of the beam that passes through closed jaws.
    blur_mm : float
        Standard deviation of a Gaussian blur at the isocentre plane (focal
        spot and imager scatter); 0 for none.
    noise : float
        Quantum noise: relative standard deviation of an open-field pixel
        (variance proportional to the signal). For ``"kv"`` it is applied to
        the transmitted intensity before taking the logarithm.
    seed : int
        Seed of the noise generator; equal seeds give equal images.
    step_mm : float, optional
        Ray sampling step; half the smallest voxel spacing by default.
    patient_position : str, optional
        Overrides ``ct.patient_position`` (``HFS``, ``FFS``, ``HFP``, ``FFP``).
    backend : {"cpu", "gpu", "auto"} or Backend
        Where the rays are cast (``project_cone_beam`` of that backend). The
        default is the CPU, so that a rendered pair is the same on every
        machine; the GPU's line integrals agree with it to 1e-4 relative.

    Returns
    -------
    Image
        float32 pixels; spacing at the isocentre plane; the beam axis at the
        image centre.

    Raises
    ------
    GeometryError
        On inconsistent geometry or an unknown patient position.
    BackendUnavailableError
        For ``backend="gpu"`` without a usable GPU.
    """
    model = _attenuation(energy)
    rows, cols = _shape(detector_shape)
    pitch_row, pitch_col = _pair(detector_spacing_mm, "detector_spacing_mm")
    sad, sid = float(sad_mm), float(sid_mm)
    if not (np.isfinite(sad) and np.isfinite(sid) and 0 < sad <= sid):
        raise GeometryError(f"need 0 < sad_mm <= sid_mm, got sad_mm={sad_mm!r}, sid_mm={sid_mm!r}")
    if not (np.isfinite(noise) and noise >= 0):
        raise GeometryError(f"noise must be a non-negative relative standard deviation, got {noise!r}")
    if not (np.isfinite(blur_mm) and blur_mm >= 0):
        raise GeometryError(f"blur_mm must be a non-negative number of mm, got {blur_mm!r}")
    step = 0.5 * min(ct.spacing_mm) if step_mm is None else float(step_mm)
    if not (np.isfinite(step) and step > 0):
        raise GeometryError(f"step_mm must be a positive number of mm, got {step_mm!r}")
    if field_mm is not None and model.name != "mv":
        raise GeometryError("field_mm collimates a portal image: use it with energy='mv' (a DRR is not collimated)")
    position = (patient_position or ct.patient_position).strip().upper()
    if position not in _PATIENT_TO_IEC:
        raise GeometryError(f"{ct.source}: patient position {position or '(none)'!r} is not supported; "
                            f"pass patient_position= one of {', '.join(_PATIENT_TO_IEC)}")
    iso = np.array(ct.centre_mm if isocentre_mm is None else isocentre_mm, dtype=np.float64)
    shift = np.array(couch_shift_mm, dtype=np.float64)
    if iso.shape != (3,) or shift.shape != (3,) or not (np.isfinite(iso).all() and np.isfinite(shift).all()):
        raise GeometryError(f"isocentre_mm and couch_shift_mm must be three finite numbers, got {isocentre_mm!r}, "
                            f"{couch_shift_mm!r}")
    rotation = _euler_matrix(patient_rotation_deg)
    caster = backend if isinstance(backend, Backend) else select_backend(backend)

    # Attenuation volume, cropped to its non-zero voxels plus one voxel of zeros on every face:
    # the kernel's interpolant then fades to zero at the faces and rays skip the empty air.
    mu = attenuation_from_hu(ct.hu, model.name)
    spacing_zyx = np.array(ct.spacing_mm, dtype=np.float64)
    volume, origin_xyz = _crop_to_content(mu, np.array(ct.origin_mm), spacing_zyx)

    # Beam geometry in IEC fixed coordinates (isocentre at 0), then into the volume frame.
    if not np.isfinite(couch_deg):
        raise GeometryError(f"couch_deg must be a finite angle in degrees, got {couch_deg!r}")
    ex, ey, towards_source = _beam_axes(gantry_deg, couch_deg)
    c0, r0 = (cols - 1) / 2.0, (rows - 1) / 2.0
    source = sad * towards_source
    # the imager's pixels seen from the source on the cast plane (``cast_plane_mm``): the same rays, through the whole CT
    reach = cast_plane_mm(sad, sid) / sid
    pitch_col_cast, pitch_row_cast = reach * pitch_col, reach * pitch_row
    pixel00 = -(reach * sid - sad) * towards_source - c0 * pitch_col_cast * ex - r0 * pitch_row_cast * ey
    # A point q of the room shows the anatomy at lps = iso + M^T R^T (q - shift) (M: LPS -> IEC).
    m = np.array(_PATIENT_TO_IEC[position], dtype=np.float64)
    to_lps = m.T @ rotation.T
    offset = iso - to_lps @ shift - origin_xyz

    def point(q: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((to_lps @ q + offset)[::-1])  # (z, y, x) in the volume frame

    def vector(v: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((to_lps @ v)[::-1])

    integral = np.zeros((rows, cols), dtype=np.float32)
    if volume is not None:
        out = caster.xp.zeros((rows, cols), dtype=caster.xp.float32)
        caster.kernels.project_cone_beam(caster.asarray(volume), spacing_zyx, point(source), point(pixel00),
                                         vector(pitch_col_cast * ex), vector(pitch_row_cast * ey), step, out)
        integral = caster.to_host(out)

    spacing_iso = (pitch_row * sad / sid, pitch_col * sad / sid)
    if model.name == "kv":
        pixels = integral if blur_mm <= 0 else _blur(integral, blur_mm, spacing_iso)
        if noise > 0:
            transmitted = _add_quantum_noise(np.exp(-pixels.astype(np.float64)), noise, seed)
            pixels = -np.log(np.maximum(transmitted, 1e-6))
    else:
        intensity = np.exp(-integral.astype(np.float64))
        if field_mm is not None:
            intensity *= _jaw_transmission_map(rows, cols, spacing_iso, field_mm, penumbra_mm, jaw_transmission)
        if blur_mm > 0:
            intensity = _blur(intensity, blur_mm, spacing_iso)
        pixels = _add_quantum_noise(intensity, noise, seed) if noise > 0 else intensity

    info = ImageInfo(
        source=f"simulated {model.name} image of {ct.source}",
        modality="RTIMAGE",
        kind="drr" if model.name == "kv" else "portal",
        frame_of_reference_uid=ct.frame_of_reference_uid,
        gantry_deg=float(gantry_deg),
        collimator_deg=0.0,
        couch_deg=float(couch_deg),
        sid_mm=sid,
        sad_mm=sad,
        imager_spacing_mm=(pitch_row, pitch_col),
        patient_position=position,
        extra={
            "energy": model.name,
            "ct_series_instance_uid": ct.series_instance_uid,
            "isocentre_mm": tuple(float(v) for v in iso),
            "couch_shift_mm": tuple(float(v) for v in shift),
            "patient_rotation_deg": tuple(float(v) for v in patient_rotation_deg),
            "field_mm": None if field_mm is None else tuple(float(v) for v in field_mm),
            "noise": float(noise),
            "seed": int(seed),
            "backend": caster.name,
        },
    )
    return Image(np.ascontiguousarray(pixels, dtype=np.float32), spacing_iso, (c0, r0), info)


def render_pair(
    ct: CTVolume,
    *,
    shift_mm: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    out_of_plane_deg: tuple[float, float] = (0.0, 0.0),
    gantry_deg: float = 0.0,
    isocentre_mm: tuple[float, float, float] | None = None,
    sad_mm: float = 1000.0,
    sid_mm: float = 1500.0,
    detector_shape: tuple[int, int] = (768, 1024),
    detector_spacing_mm: float | tuple[float, float] = 0.392,
    reference_energy: str = "kv",
    frame_energy: str = "mv",
    field_mm: tuple[float, float, float, float] | None = None,
    penumbra_mm: float = 4.0,
    blur_mm: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
    step_mm: float | None = None,
    patient_position: str | None = None,
    backend: str | Backend = "cpu",
) -> tuple[Image, Image, dict[str, Any]]:
    """Render a reference DRR and a portal frame of the same beam with a known displacement.

    The frame is rendered with the patient moved rigidly in 3-D so that an
    anatomy point at ``(x, y)`` of the isocentre plane in the reference appears
    at ``R(theta) (x, y) + (dx, dy)`` in the frame (the DESIGN.md contract,
    ``R = [[cos, -sin], [sin, cos]]``, mm at the isocentre plane): a rotation by
    ``rotation_deg`` about the beam axis through the isocentre, then a
    translation perpendicular to the beam. The rotation holds at every depth;
    the translation is exact in the isocentre plane and scaled by the
    magnification ``SAD / (SAD - depth)`` elsewhere, as on a real machine.

    Parameters
    ----------
    ct : CTVolume
        The planning CT.
    shift_mm : (float, float)
        ``(dx, dy)`` image displacement in mm at the isocentre plane.
    rotation_deg : float
        In-plane rotation ``theta`` (from +x towards +y).
    out_of_plane_deg : (float, float)
        Extra right-handed rotations about the image x and y axes through the
        isocentre (applied first); they break the 2-D contract on purpose.
    gantry_deg, isocentre_mm, sad_mm, sid_mm, detector_shape, detector_spacing_mm, step_mm, patient_position
        Beam geometry shared by both images, as in :func:`render_drr`.
    backend : {"cpu", "gpu", "auto"} or Backend
        Where both images' rays are cast (see :func:`render_drr`).
    reference_energy, frame_energy : {"kv", "mv"}
        Energies of the reference and of the frame.
    field_mm, penumbra_mm, blur_mm, noise, seed
        Applied to the frame only (see :func:`render_drr`); the reference is
        noise-free and uncollimated.

    Returns
    -------
    reference : Image
        The reference at the planned position.
    frame : Image
        The displaced frame.
    truth : dict
        ``dx_mm``, ``dy_mm``, ``rotation_deg``, ``out_of_plane_deg``,
        ``gantry_deg`` and the 3-D motion that produced the frame:
        ``couch_shift_mm`` (IEC lateral, longitudinal, vertical) and
        ``patient_rotation_deg`` (as :func:`render_drr` takes them).
    """
    dx, dy = (float(v) for v in shift_mm)
    theta = float(rotation_deg)
    tilt_x, tilt_y = (float(v) for v in out_of_plane_deg)
    ex, ey, towards_source = _beam_axes(gantry_deg)
    # (ex, ey, beam) is right-handed, so a right-handed turn about the beam maps ex to cos ex + sin ey.
    rotation = _axis_rotation(-towards_source, theta) @ _axis_rotation(ey, tilt_y) @ _axis_rotation(ex, tilt_x)
    couch_shift = dx * ex + dy * ey
    angles = _euler_angles(rotation)

    geometry = dict(gantry_deg=gantry_deg, isocentre_mm=isocentre_mm, sad_mm=sad_mm, sid_mm=sid_mm,
                    detector_shape=detector_shape, detector_spacing_mm=detector_spacing_mm, step_mm=step_mm,
                    patient_position=patient_position,
                    backend=backend if isinstance(backend, Backend) else select_backend(backend))
    reference = render_drr(ct, energy=reference_energy, **geometry)  # type: ignore[arg-type]
    frame = render_drr(ct, energy=frame_energy, couch_shift_mm=tuple(couch_shift), patient_rotation_deg=angles,
                       field_mm=field_mm, penumbra_mm=penumbra_mm, blur_mm=blur_mm, noise=noise, seed=seed,
                       **geometry)  # type: ignore[arg-type]
    truth = {
        "dx_mm": dx,
        "dy_mm": dy,
        "rotation_deg": theta,
        "out_of_plane_deg": (tilt_x, tilt_y),
        "gantry_deg": float(gantry_deg),
        "couch_shift_mm": tuple(float(v) for v in couch_shift),
        "patient_rotation_deg": angles,
    }
    return reference, frame, truth


def _attenuation(energy: str) -> Attenuation:
    try:
        return ATTENUATION[str(energy).lower()]
    except KeyError:
        raise GeometryError(f"energy must be one of {', '.join(ATTENUATION)}, got {energy!r}") from None


def _shape(detector_shape: tuple[int, int]) -> tuple[int, int]:
    rows, cols = (int(n) for n in detector_shape)
    if rows < 8 or cols < 8 or (rows, cols) != tuple(detector_shape):
        raise GeometryError(
            f"detector_shape must be two integers (rows, cols), each at least 8, got {detector_shape!r}"
        )
    return rows, cols


def _pair(value: float | tuple[float, float], name: str) -> tuple[float, float]:
    pair = (float(value), float(value)) if np.ndim(value) == 0 else tuple(float(v) for v in value)  # type: ignore[arg-type,union-attr]
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        raise GeometryError(f"{name} must be one positive number or (row, col), got {value!r}")
    return pair  # type: ignore[return-value]


def _beam_axes(gantry_deg: float, couch_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image +x, image +y and the unit vector towards the source, in IEC patient-support coordinates.

    At couch 0 these are the IEC fixed coordinates; a couch angle ``s`` turns them by ``Rz(s)^T``. The same
    axes as the couch solver's (:func:`portalign.couch.image_axes`), whose third is the beam direction.
    """
    from .couch import image_axes

    ex, ey, beam = image_axes(gantry_deg, couch_deg=couch_deg)
    return ex, ey, -beam


def _axis_rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` about the unit vector ``axis`` (Rodrigues)."""
    a = math.radians(angle_deg)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(a) * k + (1.0 - math.cos(a)) * (k @ k)


def _euler_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """``Rz(c) Ry(b) Rx(a)`` for ``angles_deg = (a, b, c)`` about IEC X, Y, Z."""
    a, b, c = (float(v) for v in angles_deg)
    x, y, z = np.eye(3)
    return _axis_rotation(z, c) @ _axis_rotation(y, b) @ _axis_rotation(x, a)


def _euler_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`_euler_matrix` (for rotations with ``|b| < 90`` degrees)."""
    b = -math.asin(max(-1.0, min(1.0, rotation[2, 0])))
    a = math.atan2(rotation[2, 1], rotation[2, 2])
    c = math.atan2(rotation[1, 0], rotation[0, 0])
    return math.degrees(a), math.degrees(b), math.degrees(c)


def _crop_to_content(
    mu: np.ndarray, origin_xyz: np.ndarray, spacing_zyx: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Crop to the non-zero voxels and pad one zero voxel on each face; returns (volume, origin x, y, z)."""
    lows, highs = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        used = np.flatnonzero(mu.any(axis=others))
        if used.size == 0:
            return None, origin_xyz
        lows.append(int(used[0]))
        highs.append(int(used[-1]) + 1)
    block = mu[lows[0]:highs[0], lows[1]:highs[1], lows[2]:highs[2]]
    padded = np.pad(block, 1)
    origin = origin_xyz + (np.array(lows[::-1]) - 1) * spacing_zyx[::-1]
    return np.ascontiguousarray(padded, dtype=np.float32), origin


def _jaw_transmission_map(rows: int, cols: int, spacing_iso: tuple[float, float],
                          field_mm: tuple[float, float, float, float], penumbra_mm: float,
                          transmission: float) -> np.ndarray:
    """Beam intensity factor of the jaws at every pixel: 1 inside the field, ``transmission`` outside."""
    x1, x2, y1, y2 = (float(v) for v in field_mm)
    if not (x1 < x2 and y1 < y2):
        raise GeometryError(f"field_mm must be (x1, x2, y1, y2) with x1 < x2 and y1 < y2, got {field_mm!r}")
    if not (penumbra_mm > 0 and 0 <= transmission < 1):
        raise GeometryError(
            f"need penumbra_mm > 0 and 0 <= jaw_transmission < 1, got {penumbra_mm!r}, {transmission!r}"
        )
    scale = math.sqrt(2.0) * penumbra_mm / _PENUMBRA_PER_SIGMA
    x = (np.arange(cols) - (cols - 1) / 2.0) * spacing_iso[1]
    yb = -(np.arange(rows) - (rows - 1) / 2.0) * spacing_iso[0]  # image +y is -Yb
    open_x = 0.5 * (erf((x - x1) / scale) - erf((x - x2) / scale))
    open_y = 0.5 * (erf((yb - y1) / scale) - erf((yb - y2) / scale))
    return transmission + (1.0 - transmission) * np.outer(open_y, open_x)


def _blur(pixels: np.ndarray, sigma_mm: float, spacing_iso: tuple[float, float]) -> np.ndarray:
    return gaussian_filter(pixels, (sigma_mm / spacing_iso[0], sigma_mm / spacing_iso[1]), mode="nearest")


def _add_quantum_noise(intensity: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Poisson-like noise: an open-field pixel (intensity 1) gets relative standard deviation ``noise``.

    Gaussian with variance ``noise**2 * intensity`` (the large-count limit of
    Poisson statistics), clipped at zero.
    """
    rng = np.random.default_rng(seed)
    noisy = intensity + noise * np.sqrt(np.maximum(intensity, 0.0)) * rng.standard_normal(intensity.shape)
    return np.maximum(noisy, 0.0)
