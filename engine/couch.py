"""Couch correction from two or more portal views of one setup.

Each 2-D registration (``dx_mm``, ``dy_mm`` at the isocentre plane, x along
columns, y along rows) of a view is the projection of the patient's 3-D
displacement ``d`` onto that view's image plane: ``(dx, dy) = P d``. Stacking
the 2x3 matrices ``P`` of two or more views that are not parallel gives an
over-determined linear system; its least-squares solution is the 3-D
displacement, its residuals say whether the views agree, and the couch
correction is ``-d``.

Frames (IEC 61217; also ``docs/conventions.md``)
------------------------------------------------
Displacements are in the IEC PATIENT SUPPORT frame ``(X, Y, Z)`` = (lateral,
longitudinal, vertical): +X to the right of an observer at the foot of the
couch facing the gantry, +Y towards the gantry, +Z up. A couch shift of
``(lat, lng, vrt)`` moves the patient by that vector. At couch angle 0 this is
the IEC FIXED frame; a couch turned by ``theta_s`` (right-handed about Z,
counter-clockwise seen from above) maps support vectors to fixed ones with
``Rz(theta_s)``.

The gantry turns right-handed about Y (the source, above the couch at 0, is on
the +X side at 90). The IEC GANTRY axes in fixed coordinates are::

    Xg = (cos g, 0, -sin g)      Yg = (0, 1, 0)      Zg = (sin g, 0, cos g)  (towards the source)

The RT Image plane is the IEC X-RAY IMAGE RECEPTOR plane (DICOM PS3.3
C.8.8.2): a sub-frame of the *gantry*, turned by ``XRayImageReceptorAngle``
(counter-clockwise seen from the source), **not** by the collimator. Image +x
(increasing column) is the receptor x axis, image +y (increasing row) is
receptor -y (rows run down, with the gantry at the top of the image), as in
:mod:`portalign.simulate` and :mod:`portalign.dicom`. With the receptor angle
``phi``::

    ex = cos(phi) Xg + sin(phi) Yg        image +x
    ey = sin(phi) Xg - cos(phi) Yg        image +y
    b  = ex x ey = -Zg                    beam direction, source to isocentre

so ``P = [ex; ey]`` (in support coordinates). At phi = 0, couch 0: ``dx = lat
cos g - vrt sin g`` and ``dy = -lng`` (the formula in :mod:`portalign.simulate`).
The collimator angle is therefore ignored by default; a vendor whose exported
images turn with the collimator can be handled with
``image_follows_collimator=True`` (the collimator angle is then added to the
receptor angle, same sense).

``P`` does not depend on the patient position: the couch moves the patient in
couch axes whatever way the patient lies. The patient position only names the
directions (HFS: +X = patient left, +Y = superior, +Z = anterior; FFS: right,
inferior, anterior; HFP: right, superior, posterior; FFP: left, inferior,
posterior) and converts to DICOM patient (LPS) coordinates.

Rotations
---------
Each view's in-plane rotation ``theta`` (turning +x towards +y, i.e.
right-handed about the beam direction ``b``) is, to first order, the
component of the patient's 3-D rotation vector ``w`` along the beam:
``theta = b . w``. Least squares over the views gives the components of ``w``
that the beam directions span. Coplanar views (couch 0) span X and Z only:
pitch (about X) and couch rotation / yaw (about Z) are estimated, roll (about
Y, i.e. about the gantry axis) is not observable from in-plane rotations and
is reported as ``None``. For a 0/90 pair at couch 0 this reduces to
``yaw = -theta(0)``, ``pitch = -theta(90)``. The estimate is first order: for
rotations of a few degrees the error is below 0.1 degree.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import __version__
from ._cli_options import (
    add_geometry_arguments,
    add_invert_argument,
    add_mismatch_arguments,
    as_flags,
    command_error,
    export_reg,
    geometry_keywords,
    mismatch_options,
    patient_position_argument,
    plus_minus,
    shown,
)
from .errors import GeometryError, PortalignError
from .fieldcheck import EXIT_OUT_OF_TOLERANCE  # one exit status for "outside an action level", fieldcheck's
from .image import Image, as_image
from .options import RegistrationOptions
from .result import RegistrationResult
from .tolerance import ToleranceTable, tolerance_from_flags

__all__ = [
    "AXES",
    "DEFAULT_MAX_RESIDUAL_MM",
    "DEFAULT_MIN_SEPARATION_DEG",
    "PATIENT_DIRECTIONS",
    "PATIENT_TO_IEC",
    "CouchShift",
    "View",
    "add_arguments",
    "beam_direction",
    "image_axes",
    "patient_matrix",
    "projection_matrix",
    "register_views",
    "run",
    "solve_couch_shift",
]

#: Couch axes, in the order of every 3-vector here.
AXES = ("lateral", "longitudinal", "vertical")
#: A view whose 2-D result is further than this from the 3-D solution makes the result not ``ok``.
DEFAULT_MAX_RESIDUAL_MM = 1.0
#: Views whose image planes are closer than this (for two views: gantry angles this close,
#: or this close to 180 degrees apart) cannot resolve the displacement along the beam.
DEFAULT_MIN_SEPARATION_DEG = 10.0

#: IEC patient-support axes (X, Y, Z) as rows of DICOM patient (LPS: +x left, +y posterior,
#: +z superior) components: ``iec = M @ lps``.
PATIENT_TO_IEC: dict[str, tuple[tuple[int, int, int], ...]] = {
    "HFS": ((1, 0, 0), (0, 0, 1), (0, -1, 0)),
    "FFS": ((-1, 0, 0), (0, 0, -1), (0, -1, 0)),
    "HFP": ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
    "FFP": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
}

#: What a positive lateral / longitudinal / vertical displacement means for the patient.
PATIENT_DIRECTIONS: dict[str, dict[str, str]] = {
    "HFS": {"lateral": "patient left", "longitudinal": "superior", "vertical": "anterior"},
    "FFS": {"lateral": "patient right", "longitudinal": "inferior", "vertical": "anterior"},
    "HFP": {"lateral": "patient right", "longitudinal": "superior", "vertical": "posterior"},
    "FFP": {"lateral": "patient left", "longitudinal": "inferior", "vertical": "posterior"},
}

_TOLERANCE_AXES = {"lat": "lateral", "lng": "longitudinal", "vrt": "vertical"}
# A rotation component is reported when its axis lies this close to the span of the beam directions.
_OBSERVABLE = 0.05


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def image_axes(gantry_deg: float, *, couch_deg: float = 0.0, image_rotation_deg: float = 0.0) -> np.ndarray:
    """Return image +x, image +y and the beam direction as unit vectors in couch axes.

    Parameters
    ----------
    gantry_deg : float
        IEC 61217 gantry angle.
    couch_deg : float
        IEC 61217 patient support angle (right-handed about the vertical).
    image_rotation_deg : float
        Rotation of the image axes in the gantry frame, counter-clockwise seen
        from the source (the X-ray image receptor angle).

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` float64, rows ``ex``, ``ey``, ``b`` in (lateral, longitudinal,
        vertical) components; ``b = ex x ey`` points from the source to the isocentre.
    """
    g = math.radians(_finite(gantry_deg, "gantry_deg"))
    phi = math.radians(_finite(image_rotation_deg, "image_rotation_deg"))
    s = math.radians(_finite(couch_deg, "couch_deg"))
    xg = np.array([math.cos(g), 0.0, -math.sin(g)])
    yg = np.array([0.0, 1.0, 0.0])
    ex = math.cos(phi) * xg + math.sin(phi) * yg
    ey = math.sin(phi) * xg - math.cos(phi) * yg
    # fixed -> support coordinates: v_s = Rz(s)^T v_f
    to_support = np.array([[math.cos(s), math.sin(s), 0.0], [-math.sin(s), math.cos(s), 0.0], [0.0, 0.0, 1.0]])
    ex, ey = to_support @ ex, to_support @ ey
    return np.stack([ex, ey, np.cross(ex, ey)])


def projection_matrix(gantry_deg: float, *, couch_deg: float = 0.0, image_rotation_deg: float = 0.0) -> np.ndarray:
    """Return ``P`` (2x3): couch-axes displacement (lat, lng, vrt) to image ``(dx, dy)`` in mm.

    Parameters
    ----------
    gantry_deg, couch_deg, image_rotation_deg : float
        As for :func:`image_axes`.

    Returns
    -------
    numpy.ndarray
        ``[[ex], [ey]]``; at couch 0 and no image rotation
        ``[[cos g, 0, -sin g], [0, -1, 0]]``.
    """
    return image_axes(gantry_deg, couch_deg=couch_deg, image_rotation_deg=image_rotation_deg)[:2].copy()


def beam_direction(gantry_deg: float, *, couch_deg: float = 0.0) -> np.ndarray:
    """Return the unit vector from the source towards the isocentre, in couch axes."""
    return image_axes(gantry_deg, couch_deg=couch_deg)[2].copy()


def patient_matrix(patient_position: str) -> np.ndarray:
    """Return ``M`` with ``couch_axes = M @ lps`` for a patient position (HFS, FFS, HFP, FFP).

    Raises
    ------
    GeometryError
        For other positions (decubitus, sitting) or an empty one.
    """
    key = _position(patient_position)
    if key not in PATIENT_TO_IEC:
        raise GeometryError(f"patient position {patient_position or '(none)'!r} is not supported; "
                            f"use one of {', '.join(PATIENT_TO_IEC)}")
    return np.array(PATIENT_TO_IEC[key], dtype=np.float64)


# ---------------------------------------------------------------------------
# views and results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """One view's 2-D registration with the geometry needed to place it in 3-D.

    Attributes
    ----------
    gantry_deg : float
        Gantry angle of the view.
    dx_mm, dy_mm : float or None
        2-D displacement at the isocentre plane (the registration contract); ``None`` when the 2-D
        registration measured nothing (a couch correction then refuses, naming the view).
    rotation_deg : float or None
        In-plane rotation of the 2-D result; ``None`` when it was not estimated
        (pitch, roll and yaw that need it are then not estimated either).
    ok : bool
        Whether the 2-D result is trusted; ``reason`` says why not.
    reason : str
    couch_deg : float
        Patient support angle of the view.
    image_rotation_deg : float
        Rotation of the image axes in the gantry frame (receptor angle, plus the
        collimator angle when the vendor's images follow the collimator).
    label : str
        Name of the view in reports (the frame's file name).
    warnings : tuple of str
    rotation_uncertainty_deg : float or None
        Standard uncertainty of ``rotation_deg`` (the result's ``details["rotation_uncertainty_deg"]``); ``None``
        where unknown.
    shift_uncertainty_mm : float or None
        Standard uncertainty of each of ``dx_mm`` and ``dy_mm`` (the result's ``details["shift_uncertainty_mm"]``);
        ``None`` where unknown.
    """

    gantry_deg: float
    dx_mm: float | None
    dy_mm: float | None
    rotation_deg: float | None = 0.0
    ok: bool = True
    reason: str = ""
    couch_deg: float = 0.0
    image_rotation_deg: float = 0.0
    label: str = ""
    warnings: tuple[str, ...] = ()
    rotation_uncertainty_deg: float | None = None
    shift_uncertainty_mm: float | None = None

    @classmethod
    def from_result(
        cls,
        result: RegistrationResult,
        frame: Image,
        *,
        reference: Image | None = None,
        image_follows_collimator: bool = False,
    ) -> View:
        """Combine a registration result with the frame's geometry.

        Parameters
        ----------
        result : RegistrationResult
        frame : Image
            The registered frame; its gantry, couch, collimator and receptor angles
            are used (the reference's when the frame lacks them).
        reference : Image, optional
            The reference; its angles are compared with the frame's.
        image_follows_collimator : bool
            Treat the image axes as turned with the collimator (see the module notes).

        Returns
        -------
        View

        Raises
        ------
        GeometryError
            When neither image has a gantry angle.
        """
        warnings: list[str] = []
        name = frame.info.source
        gantry = _angle_of(frame, reference, "gantry_deg", warnings)
        if gantry is None:
            raise GeometryError(f"{name}: no gantry angle in the frame or its reference; "
                                "a couch correction needs the gantry angle of every view")
        couch = _angle_of(frame, reference, "couch_deg", warnings) or 0.0
        rotation = float(frame.info.extra.get("receptor_angle_deg") or 0.0)
        if image_follows_collimator:
            rotation += _angle_of(frame, reference, "collimator_deg", warnings) or 0.0
        return cls(
            gantry_deg=gantry,
            dx_mm=None if result.dx_mm is None else float(result.dx_mm),
            dy_mm=None if result.dy_mm is None else float(result.dy_mm),
            rotation_deg=None if result.rotation_deg is None else float(result.rotation_deg),
            ok=bool(result.ok),
            reason=result.reason,
            couch_deg=couch,
            image_rotation_deg=rotation,
            label=name,
            warnings=tuple(warnings),
            rotation_uncertainty_deg=(None if result.rotation_deg is None
                                      else (result.details or {}).get("rotation_uncertainty_deg")),
            shift_uncertainty_mm=None if result.dx_mm is None else (result.details or {}).get("shift_uncertainty_mm"),
        )


@dataclass(frozen=True)
class CouchShift:
    """3-D displacement of the patient from two or more views, and the couch correction.

    Attributes
    ----------
    lateral_mm, longitudinal_mm, vertical_mm : float
        Displacement of the patient from the planned position, IEC couch axes.
    couch_correction : dict
        ``{"lateral", "longitudinal", "vertical"}`` in mm: the couch move that
        undoes the displacement (its negative).
    rotation_deg : dict
        ``{"pitch", "roll", "yaw"}``: estimated right-handed rotations of the
        patient about IEC X, Y and Z (degrees); ``None`` where the views' beam
        directions do not determine it (roll, for coplanar views).
    rotation_correction_deg : dict
        The negatives of ``rotation_deg``.
    uncertainty_mm : dict
        ``{"lateral", "longitudinal", "vertical"}``: the standard uncertainty of each axis of the displacement (mm),
        propagated from the views' 2-D uncertainties through the same least squares, ``sqrt(diag(P S P^T))`` with
        ``P`` the pseudo-inverse of the projection rows and ``S`` the views' variances (``None`` where a view's is
        unknown), times ``uncertainty_scale``.
    uncertainty_scale : float or None
        The Birge ratio ``max(1, sqrt(chi^2 / dof))`` of the views' residuals in their uncertainties (``dof``: two
        values a view less the three unknowns), which ``uncertainty_mm`` is multiplied by: views that disagree more
        than their uncertainties allow carry what the model leaves out (Birge, Phys. Rev. 40, 207 (1932); the
        Particle Data Group's scale factor). ``None`` where no view's uncertainty is known or nothing is left over
        (two views measure four values for three unknowns: one degree of freedom).
    rotation_uncertainty_deg : dict
        ``{"pitch", "roll", "yaw"}``: the standard uncertainty of each estimated rotation (degrees), propagated from
        the views' in-plane uncertainties through the same least squares (``None`` where the rotation, or a view's
        uncertainty, is unknown).
    views : list of dict
        Per view: ``label, gantry_deg, couch_deg, image_rotation_deg, dx_mm, dy_mm,
        rotation_deg, predicted_dx_mm, predicted_dy_mm, residual_mm, ok, reason``.
    condition : float
        Condition number of the stacked projection matrix (1.41 for a 0/90 pair).
    separation_deg : float
        Equivalent angle between the views' image planes (90 for 0/90).
    ok : bool
        All views ok and every residual at most ``max_residual_mm``.
    reason : str
        Why not ``ok``.
    max_residual_mm : float
    patient_position : str
        ``""`` when unknown.
    patient_directions : dict or None
        What positive lateral/longitudinal/vertical mean for this patient.
    patient_displacement_lps_mm : list of float or None
        The displacement in DICOM patient coordinates (L, P, S).
    within_tolerance : dict
        Axis -> within the action level (``None``: not measurable, or the correction is not ``ok``); empty
        without a table.
    all_within_tolerance : bool or None
        False when any checked axis is outside; ``None`` without a table or when not ``ok``.
    tolerance : dict or None
        The table used.
    warnings : list of str
    version : str
    """

    lateral_mm: float
    longitudinal_mm: float
    vertical_mm: float
    couch_correction: dict[str, float]
    rotation_deg: dict[str, float | None]
    rotation_correction_deg: dict[str, float | None]
    views: list[dict[str, Any]]
    condition: float
    separation_deg: float
    ok: bool
    reason: str = ""
    max_residual_mm: float = DEFAULT_MAX_RESIDUAL_MM
    patient_position: str = ""
    patient_directions: dict[str, str] | None = None
    patient_displacement_lps_mm: list[float] | None = None
    within_tolerance: dict[str, bool | None] = field(default_factory=dict)
    all_within_tolerance: bool | None = None
    tolerance: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    version: str = __version__
    rotation_uncertainty_deg: dict[str, float | None] = field(default_factory=dict)
    uncertainty_mm: dict[str, float | None] = field(default_factory=dict)
    uncertainty_scale: float | None = None

    @property
    def displacement_mm(self) -> np.ndarray:
        """``(lateral, longitudinal, vertical)`` as a float64 array."""
        return np.array([self.lateral_mm, self.longitudinal_mm, self.vertical_mm])

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict (``patient_position`` null when not known).

        Its ``units`` entry gives the unit of each value whose key does not end in one (``couch_correction``: mm).
        """
        out = asdict(self)
        out["patient_position"] = self.patient_position or None
        out["units"] = {"couch_correction": "mm"}
        return out

    def as_json(self, **kwargs: Any) -> str:
        """Return the result as one JSON object."""
        return json.dumps(self.as_dict(), **kwargs)


# ---------------------------------------------------------------------------
# solving
# ---------------------------------------------------------------------------


#: A Birge ratio (``CouchShift.uncertainty_scale``) this large or more is said in the warnings.
UNCERTAINTY_SCALE_WARN = 2.0


def solve_couch_shift(
    views: Sequence[View],
    *,
    patient_position: str = "",
    tolerance: ToleranceTable | None = None,
    max_residual_mm: float = DEFAULT_MAX_RESIDUAL_MM,
    min_separation_deg: float = DEFAULT_MIN_SEPARATION_DEG,
) -> CouchShift:
    """Combine the 2-D results of two or more views into a 3-D displacement.

    Parameters
    ----------
    views : sequence of View
        At least two, not all parallel (gantry angles 0 and 180 see the same plane).
    patient_position : str
        ``HFS``, ``FFS``, ``HFP``, ``FFP`` or ``""`` (unknown: couch axes only).
    tolerance : ToleranceTable, optional
        Action levels to check the result against.
    max_residual_mm : float
        Largest accepted disagreement between a view and the 3-D solution.
    min_separation_deg : float
        Smallest accepted angle between the views' image planes.

    Returns
    -------
    CouchShift

    Raises
    ------
    GeometryError
        Fewer than two views, non-finite values, or views too close to parallel.
    """
    views = list(views)
    if len(views) < 2:
        raise GeometryError(f"a couch correction needs at least two views at different gantry angles; got {len(views)}")
    if not (math.isfinite(max_residual_mm) and max_residual_mm > 0):
        raise GeometryError(f"max_residual_mm must be a positive number of mm, got {max_residual_mm!r}")
    if not (math.isfinite(min_separation_deg) and 0 < min_separation_deg <= 90):
        raise GeometryError(f"min_separation_deg must be within (0, 90], got {min_separation_deg!r}")
    rows, measured, beams = [], [], []
    for i, view in enumerate(views):
        values = (view.dx_mm, view.dy_mm, view.rotation_deg)
        if values[0] is None or values[1] is None:
            raise GeometryError(f"view {view.label or i}: its 2-D registration measured no shift "
                                f"({view.reason or 'nothing usable in the frame'}); a couch correction needs every view")
        if not all(v is None or math.isfinite(v) for v in values):
            raise GeometryError(f"view {view.label or i}: non-finite registration result {values!r}")
        axes = image_axes(view.gantry_deg, couch_deg=view.couch_deg, image_rotation_deg=view.image_rotation_deg)
        rows.append(axes[:2])
        beams.append(axes[2])
        measured.append((view.dx_mm, view.dy_mm))
    a = np.concatenate(rows)
    m = np.concatenate([np.asarray(v, dtype=np.float64) for v in measured])

    singular = np.linalg.svd(a, compute_uv=False)
    # For two views whose planes are alpha apart the smallest singular value is sqrt(1 - |cos alpha|).
    separation = math.degrees(math.acos(max(0.0, min(1.0, 1.0 - singular[-1] ** 2))))
    if separation < min_separation_deg - 1e-9:
        gantries = ", ".join(_deg(v.gantry_deg) for v in views)
        # a pair that is not one view (its reference at another gantry) is the likelier mistake: named first
        unpaired = [f"{v.label or i}: {v.reason}" for i, v in enumerate(views)
                    if v.reason.startswith(("different views", "different patients"))]
        first = (f"view {unpaired[0].split(' (tolerance ')[0]}; and " if unpaired else "")
        raise GeometryError(
            f"{first}views at gantry {gantries} are parallel or nearly so (their image planes are {separation:.1f} deg "
            f"apart, at least {min_separation_deg:g} needed): the displacement along the beam cannot be "
            "resolved; add a view at a gantry angle at least that far from the others (e.g. 0 and 90)")
    condition = float(singular[0] / singular[-1])
    d, *_ = np.linalg.lstsq(a, m, rcond=None)
    # each view's dx and dy carry its standard uncertainty: propagated through the same least squares (d = P m)
    spreads = [view.shift_uncertainty_mm for view in views]
    uncertainty: dict[str, float | None] = dict.fromkeys(AXES)
    scale = None
    if all(u is not None and math.isfinite(u) for u in spreads):
        weights = np.repeat(np.asarray(spreads, dtype=np.float64), 2)
        solve = np.linalg.pinv(a)
        uncertainty = {axis: float(np.sqrt(((solve[k] * weights) ** 2).sum())) for k, axis in enumerate(AXES)}
        # views that disagree by more than their uncertainties allow: what the model leaves out (an out-of-plane
        # rotation, roll not estimated, a view's own error) is in the residuals, and the uncertainties are scaled by
        # the Birge ratio sqrt(chi^2 / dof), never down (a trial: longitudinal -1.46 +- 0.22 mm, 2.5 of them off)
        dof = a.shape[0] - a.shape[1]
        if dof >= 1 and np.all(weights > 0):
            scale = max(1.0, math.sqrt(float(((((m - a @ d) / weights) ** 2).sum()) / dof)))
            uncertainty = {axis: value * scale for axis, value in uncertainty.items()}
    predicted = (a @ d).reshape(-1, 2)

    # only views whose in-plane rotation was measured constrain the 3-D rotation
    rotated = [i for i, v in enumerate(views) if v.rotation_deg is not None]
    rotation, rotation_uncertainty = _rotation_estimate(
        np.array(beams)[rotated].reshape(-1, 3), np.array([views[i].rotation_deg for i in rotated], dtype=np.float64),
        np.array([np.nan if views[i].rotation_uncertainty_deg is None else views[i].rotation_uncertainty_deg
                  for i in rotated], dtype=np.float64))
    unmeasured = [v.label or f"view {i}" for i, v in enumerate(views) if v.rotation_deg is None]

    reasons: list[str] = []
    warnings: list[str] = []
    view_rows: list[dict[str, Any]] = []
    residuals = [float(math.hypot(v.dx_mm - predicted[i, 0], v.dy_mm - predicted[i, 1])) for i, v in enumerate(views)]
    # two views share one axis and split their disagreement evenly: neither can be named as the one that is off (a
    # trial: the sound gantry-0 view was named beside the one whose header was wrong); said once, of both
    pair = len(views) == 2 and min(residuals) > max_residual_mm
    if pair:
        reasons.append(f"the two views (gantry {_deg(views[0].gantry_deg)} and {_deg(views[1].gantry_deg)}) disagree "
                       f"by {sum(residuals):.2f} mm where both see the patient (each {max(residuals):.2f} mm from the "
                       f"3-D solution, more than {max_residual_mm:g} mm): one of them is off, and two views cannot say "
                       "which (a third view can)")
    for i, view in enumerate(views):
        residual = residuals[i]
        label = view.label or f"view {i}"
        if not view.ok:
            reasons.append(f"{label} (gantry {_deg(view.gantry_deg)}): {view.reason or '2-D registration not ok'}")
        if residual > max_residual_mm and not pair:
            reasons.append(f"{label} (gantry {_deg(view.gantry_deg)}) disagrees with the others by {residual:.2f} mm "
                           f"(more than {max_residual_mm:g} mm)")
        warnings.extend(f"{label}: {w}" for w in view.warnings)
        view_rows.append({
            "label": view.label,
            "gantry_deg": view.gantry_deg,
            "couch_deg": view.couch_deg,
            "image_rotation_deg": view.image_rotation_deg,
            "dx_mm": view.dx_mm,
            "dy_mm": view.dy_mm,
            "rotation_deg": view.rotation_deg,
            "rotation_uncertainty_deg": view.rotation_uncertainty_deg,
            "shift_uncertainty_mm": view.shift_uncertainty_mm,
            "predicted_dx_mm": float(predicted[i, 0]),
            "predicted_dy_mm": float(predicted[i, 1]),
            "residual_mm": residual,
            "ok": view.ok,
            "reason": view.reason,
        })
    if scale is not None and scale >= UNCERTAINTY_SCALE_WARN:
        warnings.append(f"the views disagree by {scale:.1f} times what their uncertainties allow (Birge ratio): the "
                        "displacement's uncertainties are scaled by it; something the views do not share moved "
                        "(a rotation out of a view's plane, a view's own error)")
    if unmeasured:
        missing = [k for k, v in rotation.items() if v is None]
        warnings.append(f"in-plane rotation not estimated for {', '.join(unmeasured)}: "
                        f"{', '.join(missing) or 'no rotation'} not estimated from the remaining views")
    elif rotation["roll"] is None:
        warnings.append("roll (rotation about the longitudinal axis) is not observable from the in-plane rotations "
                        "of these views; not estimated")

    position = _position(patient_position)
    directions = PATIENT_DIRECTIONS.get(position)
    lps = (patient_matrix(position).T @ d).tolist() if position in PATIENT_TO_IEC else None
    if position and position not in PATIENT_TO_IEC:
        warnings.append(f"patient position {position!r} is not one of {', '.join(PATIENT_TO_IEC)}: "
                        "couch axes only")

    within: dict[str, bool | None] = {}
    all_within: bool | None = None
    if tolerance is not None:
        measured_values: dict[str, float | None] = {
            key: float(d[AXES.index(axis)]) for key, axis in _TOLERANCE_AXES.items()
        }
        measured_values["vec"] = float(np.linalg.norm(d))
        # the largest in-plane rotation is known only when every view measured one
        measured_values["rot"] = None if unmeasured else max(abs(v.rotation_deg or 0.0) for v in views)
        measured_values.update({k: rotation[k] for k in ("pitch", "roll", "yaw")})
        within = tolerance.check(measured_values)
        all_within = not any(flag is False for flag in within.values())
        if reasons:  # a correction that is not ok is checked against no action level: "within" would reassure
            within = dict.fromkeys(within)
            all_within = None

    return CouchShift(
        lateral_mm=float(d[0]),
        longitudinal_mm=float(d[1]),
        vertical_mm=float(d[2]),
        couch_correction={axis: float(-d[i]) + 0.0 for i, axis in enumerate(AXES)},
        rotation_deg=rotation,
        rotation_correction_deg={k: (None if v is None else -v + 0.0) for k, v in rotation.items()},
        rotation_uncertainty_deg=rotation_uncertainty,
        uncertainty_mm=uncertainty,
        uncertainty_scale=scale,
        views=view_rows,
        condition=condition,
        separation_deg=separation,
        ok=not reasons,
        reason="; ".join(reasons),
        max_residual_mm=float(max_residual_mm),
        patient_position=position,
        patient_directions=dict(directions) if directions else None,
        patient_displacement_lps_mm=lps,
        within_tolerance=within,
        all_within_tolerance=all_within,
        tolerance=tolerance.as_dict() if tolerance is not None else None,
        warnings=warnings,
    )


def _rotation_estimate(beams: np.ndarray, thetas: np.ndarray, sigmas: np.ndarray | None = None,
                       ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """First-order rotation vector from in-plane rotations (``theta_v = b_v . w``), and its standard uncertainties.

    ``w`` is the least-squares solution on the directions the beams span, ``w = V diag(1/s) U^T theta`` (SVD of
    the beams); an axis outside them is ``None``. Independent view uncertainties ``sigma_v`` propagate linearly:
    ``u_k = sqrt(sum_v (M_kv sigma_v)^2)`` with ``M = V diag(1/s) U^T``; ``None`` where a view's is unknown (NaN).
    """
    none: dict[str, float | None] = {"pitch": None, "roll": None, "yaw": None}
    if len(thetas) == 0:  # no view measured a rotation: none can be estimated
        return none, dict(none)
    u, s, vt = np.linalg.svd(beams, full_matrices=False)
    # Directions the beams span well enough: singular values of a pair 10 deg apart or more.
    keep = s > math.sqrt(1.0 - math.cos(math.radians(DEFAULT_MIN_SEPARATION_DEG)))
    basis = vt[keep]
    solve = basis.T @ (u[:, keep] / s[keep]).T if basis.size else np.zeros((3, len(thetas)))  # M, 3 x views
    w = solve @ thetas
    spread = (np.sqrt(((solve * sigmas) ** 2).sum(axis=1)) if sigmas is not None and np.all(np.isfinite(sigmas))
              else None)
    out: dict[str, float | None] = {}
    uncertainty: dict[str, float | None] = {}
    for k, name in enumerate(("pitch", "roll", "yaw")):
        axis = np.eye(3)[k]
        outside = axis - basis.T @ (basis @ axis) if basis.size else axis
        observable = np.linalg.norm(outside) < _OBSERVABLE
        out[name] = float(w[k]) + 0.0 if observable else None
        uncertainty[name] = float(spread[k]) if observable and spread is not None else None
    return out, uncertainty


def register_views(
    pairs: Iterable[tuple[Any, Any]],
    options: RegistrationOptions | None = None,
    *,
    backend: str = "auto",
    patient_position: str | None = None,
    tolerance: ToleranceTable | None = None,
    max_residual_mm: float = DEFAULT_MAX_RESIDUAL_MM,
    min_separation_deg: float = DEFAULT_MIN_SEPARATION_DEG,
    image_follows_collimator: bool = False,
) -> tuple[CouchShift, list[RegistrationResult]]:
    """Register each (reference, frame) pair and combine the views into a couch correction.

    Parameters
    ----------
    pairs : iterable of (reference, frame)
        Images, DICOM paths or datasets; one pair per gantry angle.
    options : RegistrationOptions, optional
        Used for every pair.
    backend : {"auto", "cpu", "gpu"}
    patient_position : str, optional
        Overrides the frames' ``PatientPosition``.
    tolerance : ToleranceTable, optional
    max_residual_mm, min_separation_deg : float
        As for :func:`solve_couch_shift`.
    image_follows_collimator : bool
        See :meth:`View.from_result`.

    Returns
    -------
    couch : CouchShift
    results : list of RegistrationResult
        The 2-D results, in the order of ``pairs``.
    """
    from . import register

    views: list[View] = []
    results: list[RegistrationResult] = []
    positions: list[str] = []
    patients: dict[str, str] = {}  # PatientID -> the first image carrying it
    for i, pair in enumerate(pairs):
        try:
            reference, frame = pair
        except (TypeError, ValueError):
            raise GeometryError(f"pair {i}: expected (reference, frame), got {pair!r}") from None
        reference = as_image(reference, name=f"reference {i}")
        frame = as_image(frame, name=f"frame {i}")
        result = register(reference, frame, options, backend=backend)
        results.append(result)
        views.append(View.from_result(result, frame, reference=reference,
                                      image_follows_collimator=image_follows_collimator))
        positions.append(_position(frame.info.patient_position or reference.info.patient_position))
        for image in (reference, frame):
            patient = image.info.extra.get("patient_id")
            if patient and str(patient).strip():
                patients.setdefault(str(patient).strip(), image.info.source)
    extra_warnings: list[str] = []
    if patient_position is None:
        known = sorted({p for p in positions if p})
        patient_position = known[0] if len(known) == 1 else ""
        if len(known) > 1:
            extra_warnings.append(f"the images disagree on the patient position ({', '.join(known)}); "
                                  "pass patient_position=")
    couch = solve_couch_shift(views, patient_position=patient_position, tolerance=tolerance,
                              max_residual_mm=max_residual_mm, min_separation_deg=min_separation_deg)
    if len(patients) > 1:
        # each pair's own images were compared (register); two pairs of two patients were combined into one couch
        # move with nothing said (a hostile campaign: PatientID PORTALIGN-DEMO in one pair, OTHER in the other, ok)
        named = ", ".join(f"{pid!r} ({source})" for pid, source in patients.items())
        text = f"the views are of different patients: PatientID {named}"
        if options is not None and options.allow_patient_mismatch:
            extra_warnings.append(f"{text}; combined as asked (allow_patient_mismatch)")
        else:
            from dataclasses import replace

            couch = replace(couch, ok=False, reason=(
                f"{text}; views of two patients make no couch move. If this is intended (a phantom, files anonymised "
                "differently), set allow_patient_mismatch=True (--allow-patient-mismatch)"))
    if extra_warnings:
        couch = _with_warnings(couch, extra_warnings)
    return couch, results


def _with_warnings(couch: CouchShift, warnings: list[str]) -> CouchShift:
    from dataclasses import replace

    return replace(couch, warnings=[*couch.warnings, *warnings])


def _angle_of(frame: Image, reference: Image | None, attribute: str, warnings: list[str]) -> float | None:
    value = getattr(frame.info, attribute)
    other = getattr(reference.info, attribute) if reference is not None else None
    if value is None:
        value = other
    elif other is not None and abs(_wrap(float(value) - float(other))) > 1.0:
        warnings.append(f"{attribute} of the frame ({value:g}) and of its reference ({other:g}) differ; "
                        "the frame's is used")
    return None if value is None else float(value)


def _rotation_text(value: float | None, spread: float | None = None) -> str:
    """Return a view's in-plane rotation (deg) as the couch report prints it, with its uncertainty where known."""
    return "not estimated" if value is None else f"{shown(value):+5.2f}{plus_minus(spread)}"


def _deg(angle: float) -> str:
    """Format an angle for messages: 89.9967 -> '90', 0.0066 -> '0'."""
    return f"{round(float(angle), 1) + 0.0:g}"


def _wrap(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


def _finite(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} must be a number of degrees, got {value!r}") from None
    if not math.isfinite(number):
        raise GeometryError(f"{name} must be a finite number of degrees, got {value!r}")
    return number


def _position(value: str | None) -> str:
    return (value or "").strip().upper()


# ---------------------------------------------------------------------------
# command line: portalign couch
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign couch`` arguments to a parser."""
    parser.add_argument("--pair", nargs=2, action="append", metavar=("REF", "FRAME"), required=True,
                        help="reference and frame of one view (repeat for each gantry angle; two or more)")
    parser.add_argument("--patient-position", default=None, metavar="POS", type=patient_position_argument,
                        help="HFS, FFS, HFP or FFP (default: the frames' PatientPosition)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tolerance", default=None, metavar="SPEC",
                       help="action levels, e.g. lat=2,lng=2,vrt=2,rot=1 (mm, degrees; default: none checked)")
    group.add_argument("--tolerance-file", default=None, metavar="TOML",
                       help="action levels from a TOML file (default: none checked)")
    parser.add_argument("--max-residual-mm", type=float, default=DEFAULT_MAX_RESIDUAL_MM, metavar="MM",
                        help="largest accepted disagreement of a view with the 3-D solution (mm)")
    parser.add_argument("--image-follows-collimator", action="store_true",
                        help="the images turn with the collimator (vendor-specific; DICOM says they do not)")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpu", "gpu"),
                        help="compute backend (auto: the GPU when one works here, else the CPU)")
    add_mismatch_arguments(parser)
    add_invert_argument(parser)
    add_geometry_arguments(parser)
    parser.add_argument("--reg-out", default=None, metavar="PATH",
                        help="also write a DICOM Spatial Registration (REG) object of the 3-D result (default: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.epilog = ("exit status: 0 when a result was printed, ok or not, within the action levels given (if any);\n"
                     "3 when the measured correction is outside one (--tolerance, --tolerance-file: act on it), as\n"
                     "fieldcheck; 2 when an input could not be used or --reg-out not written (the error names it)")


def run(args: argparse.Namespace) -> int:
    """Run ``portalign couch``; return its exit status.

    0 on a result (ok or not) within any action levels given, ``EXIT_OUT_OF_TOLERANCE`` (3) on an ok result outside
    them, 2 with a one-line error on unusable input or a REG that could not be written.
    """
    try:
        tolerance = tolerance_from_flags(args.tolerance, args.tolerance_file)
        from .dicom import read_rt_image

        given = geometry_keywords(args)
        pairs = [(read_rt_image(ref, **given), read_rt_image(frame, **given)) for ref, frame in args.pair]
        if args.reg_out:  # what the REG needs of the images, before any registration (not after the result)
            from .reg import check_registration_inputs

            check_registration_inputs([p[0] for p in pairs], [p[1] for p in pairs], args.patient_position)
        options = mismatch_options(args)
        couch, _ = register_views(
            pairs,
            options,
            backend=args.backend,
            patient_position=args.patient_position,
            tolerance=tolerance,
            max_residual_mm=args.max_residual_mm,
            image_follows_collimator=args.image_follows_collimator,
        )
    except PortalignError as exc:
        return command_error("couch", args, exc)
    export = None
    if args.reg_out:
        from .reg import write_spatial_registration

        export = export_reg("couch", args, couch.ok, couch.reason, lambda: write_spatial_registration(
            args.reg_out, couch, [p[0] for p in pairs], [p[1] for p in pairs], patient_position=args.patient_position))
    # the result is shown whatever happens to the REG file: a failed export never hides a measurement
    if args.json:
        payload = _flagged(couch.as_dict(), getattr(args, "subparser", None))
        if export is not None:  # what became of --reg-out, in the object a script reads
            payload.update(export.fields)
        print(json.dumps(payload))
    else:
        print(_text_report(couch, getattr(args, "subparser", None)))
    # a measured correction beyond an action level calls for action: a status a script can test (as fieldcheck's)
    status = EXIT_OUT_OF_TOLERANCE if couch.ok and couch.all_within_tolerance is False else 0
    if export is None:
        return status
    export.emit()
    return export.status or status


def _flagged(payload: dict[str, Any], parser: Any) -> dict[str, Any]:
    """``payload`` (:meth:`CouchShift.as_dict`) with the engine's keywords in its reasons and warnings named as flags."""
    payload["reason"] = as_flags(payload["reason"], parser)
    payload["warnings"] = [as_flags(w, parser) for w in payload["warnings"]]
    for view in payload["views"]:
        view["reason"] = as_flags(view["reason"], parser)
    return payload


def _text_report(couch: CouchShift, parser: Any = None) -> str:
    """Return the command's text report, the engine's keywords in its reasons named as ``parser``'s flags."""
    lines = []
    if not couch.ok:  # first, before any number (a trial read "correction -2.75 mm" above a NOT OK further down)
        lines.append(f"NOT OK: {couch.reason}; do not apply the correction below")
    names = couch.patient_directions or {}
    for axis in AXES:
        value = getattr(couch, f"{axis}_mm")
        hint = f"  (+ = {names[axis]})" if axis in names else ""
        spread = plus_minus((couch.uncertainty_mm or {}).get(axis))
        lines.append(f"{axis:>13}: {shown(value):+7.2f}{spread} mm   "
                     f"correction {shown(couch.couch_correction[axis]):+7.2f} mm{hint}"
                     f"{'' if couch.ok else '  (not ok)'}")
    for name, value in couch.rotation_deg.items():
        spread = plus_minus((couch.rotation_uncertainty_deg or {}).get(name))
        lines.append(f"{name:>13}: " + ("not estimated" if value is None else f"{shown(value):+7.2f}{spread} deg"))
    for view in couch.views:
        gantry = round(float(view["gantry_deg"]), 1) % 360.0 + 0.0  # 359.996 is gantry 0.0, as the reasons say
        spread = plus_minus(view.get("shift_uncertainty_mm"))
        lines.append(f"  gantry {gantry:6.1f}: dx {shown(view['dx_mm']):+6.2f}{spread} "
                     f"dy {shown(view['dy_mm']):+6.2f}{spread} "
                     f"rot {_rotation_text(view['rotation_deg'], view.get('rotation_uncertainty_deg'))}  "
                     f"residual {view['residual_mm']:.2f} mm"
                     f"{'' if view['ok'] else '  NOT OK: ' + view['reason']}  {view['label']}")
    if couch.within_tolerance:
        flags = ", ".join(f"{k} {'within' if v else ('not estimated' if v is None else 'OUTSIDE')}"
                          for k, v in couch.within_tolerance.items())
        lines.append(f"tolerance: {flags}")
    outside = [k for k, v in (couch.within_tolerance or {}).items() if v is False]
    if couch.ok and outside:  # the shift is measured (ok) and calls for the correction: not a bare "ok" after OUTSIDE
        lines.append(f"ok (measured); OUTSIDE tolerance on {', '.join(outside)}: apply the correction")
    else:
        lines.append("ok" if couch.ok else f"NOT OK: {couch.reason}")
    lines.extend(f"warning: {w}" for w in couch.warnings)
    return as_flags("\n".join(lines), parser)

