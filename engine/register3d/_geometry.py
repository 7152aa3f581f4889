"""Geometry of 2D/3D registration: rigid poses, views and what a set of views can measure.

Frames (DESIGN.md, :mod:`portalign.couch`): room points ``q`` and displacements
are in IEC 61217 patient-support axes (lateral X, longitudinal Y, vertical Z),
mm from the isocentre. A pose is the patient's rigid displacement ``(R, t)``:
the anatomy point ``p`` of the plan is found at ``R p + t`` with
``R = Rz(yaw) Ry(roll) Rx(pitch)`` (right-handed, degrees). A room point ``q``
therefore shows the plan's anatomy at ``p = R^T (q - t)``, which is in DICOM
patient coordinates (LPS) ``iso + M^T p`` (``M``: :func:`portalign.couch.patient_matrix`).
Rendering a DRR of the displaced patient is rendering the planned CT with the
source and detector moved by the inverse motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..couch import image_axes
from ..errors import GeometryError
from ..image import Image
from ..simulate import cast_plane_mm

#: Parameter order of a pose vector: translations (mm) then rotations (deg).
PARAMETERS = ("lateral", "longitudinal", "vertical", "pitch", "roll", "yaw")
#: An axis counts as measured when it lies this close (sine of the angle) to the span of what the views see.
OBSERVABLE = 0.05
#: Views whose beam directions are closer than this cannot resolve the displacement along the beam.
MIN_SEPARATION_DEG = 10.0


def axis_rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Return the right-handed rotation by ``angle_deg`` about the unit vector ``axis`` (Rodrigues)."""
    a = math.radians(angle_deg)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(a) * k + (1.0 - math.cos(a)) * (k @ k)


def rotation_matrix(pitch_deg: float, roll_deg: float, yaw_deg: float) -> np.ndarray:
    """Return ``Rz(yaw) Ry(roll) Rx(pitch)`` (IEC X, Y, Z; right-handed; degrees)."""
    x, y, z = np.eye(3)
    return axis_rotation(z, yaw_deg) @ axis_rotation(y, roll_deg) @ axis_rotation(x, pitch_deg)


def euler_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """Return ``(pitch, roll, yaw)`` in degrees of ``R = Rz(yaw) Ry(roll) Rx(pitch)`` (``|roll| < 90``)."""
    roll = -math.asin(max(-1.0, min(1.0, float(rotation[2, 0]))))
    pitch = math.atan2(float(rotation[2, 1]), float(rotation[2, 2]))
    yaw = math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))
    return math.degrees(pitch), math.degrees(roll), math.degrees(yaw)


@dataclass(frozen=True)
class ViewGeometry:
    """One frame's beam in the room, from its RT Image attributes.

    Attributes
    ----------
    label : str
        The frame's name (file) in messages.
    gantry_deg, couch_deg, receptor_deg : float
        IEC 61217 gantry and patient-support angles; X-ray image receptor angle.
    sad_mm, sid_mm : float
        Source-to-axis and source-to-imager distances.
    axes : numpy.ndarray
        ``(3, 3)`` rows image +x, image +y and the beam direction (source to
        isocentre) in patient-support axes (:func:`portalign.couch.image_axes`).
    """

    label: str
    gantry_deg: float
    couch_deg: float
    receptor_deg: float
    sad_mm: float
    sid_mm: float
    axes: np.ndarray

    @classmethod
    def of(cls, frame: Image) -> ViewGeometry:
        """Read a frame's geometry; :class:`GeometryError` names what is missing and the fix."""
        info = frame.info
        name = info.source
        missing = [tag for tag, value in (("GantryAngle", info.gantry_deg), ("RTImageSID", info.sid_mm),
                                          ("RadiationMachineSAD", info.sad_mm)) if value is None]
        if missing:
            raise GeometryError(f"{name}: the frame has no {', '.join(missing)}; a 2D/3D registration needs each "
                                "frame's gantry angle, SID and SAD (read RT Images with portalign.read_rt_image, "
                                "or pass gantry_deg=, sid_mm=, sad_mm= to Image.from_array)")
        sad, sid = float(info.sad_mm), float(info.sid_mm)  # type: ignore[arg-type]
        if not (math.isfinite(sad) and math.isfinite(sid) and 0 < sad <= sid):
            raise GeometryError(f"{name}: need 0 < SAD <= SID, got SAD {sad:g} mm, SID {sid:g} mm")
        couch = float(info.couch_deg or 0.0)
        receptor = float(info.extra.get("receptor_angle_deg") or 0.0)
        gantry = float(info.gantry_deg)  # type: ignore[arg-type]
        axes = image_axes(gantry, couch_deg=couch, image_rotation_deg=receptor)
        return cls(name, gantry, couch, receptor, sad, sid, axes)

    def detector_grid(self, x0_mm: float, y0_mm: float, step_x_mm: float, step_y_mm: float) -> tuple[
            np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return the room positions of the source and of a regular grid of detector points.

        Parameters
        ----------
        x0_mm, y0_mm : float
            Image coordinates (mm at the isocentre plane, DESIGN.md) of grid point ``[0, 0]``.
        step_x_mm, step_y_mm : float
            Grid steps at the isocentre plane along image +x (columns) and +y (rows).

        Returns
        -------
        source, origin, col_step, row_step : numpy.ndarray
            3-vectors in patient-support axes (mm from the isocentre), the
            detector points on the plane the rays are cast to (``simulate.cast_plane_mm``: the imager's, or
            one beyond the patient where the imager is nearer), isocentre-plane distances times its distance over SAD.
        """
        ex, ey, beam = self.axes
        # the imager's points as seen from the source on the plane the rays are cast to: the same rays, through the
        # whole CT where the image is stated at the isocentre plane (SID = SAD)
        plane = cast_plane_mm(self.sad_mm, self.sid_mm)
        scale = plane / self.sad_mm
        source = -self.sad_mm * beam
        origin = (plane - self.sad_mm) * beam + scale * (x0_mm * ex + y0_mm * ey)
        return source, origin, scale * step_x_mm * ex, scale * step_y_mm * ey


def pose_matrix(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(R, t)`` of a pose vector ``(lat, lng, vrt mm, pitch, roll, yaw deg)``."""
    return rotation_matrix(pose[3], pose[4], pose[5]), np.asarray(pose[:3], dtype=np.float64)


def measured_axes(views: list[ViewGeometry]) -> tuple[np.ndarray, dict[str, str]]:
    """Return the pose directions the views constrain and why the others are not estimated.

    One view sees the displacement across its beam and the rotation about it;
    two or more views whose beams are at least :data:`MIN_SEPARATION_DEG` apart
    see all six (the out-of-plane rotations of one view through the parallax of
    the anatomy in the others).

    Returns
    -------
    basis : numpy.ndarray
        ``(6, k)`` orthonormal columns spanning the searched pose directions
        (translations in mm and rotations in deg, as :data:`PARAMETERS`).
    not_estimated : dict
        Parameter name -> the reason it is not reported (empty for six DOF).
    """
    if len(views) >= 2:
        return np.eye(6), {}
    view = views[0]
    ex, ey, beam = view.axes
    basis = np.zeros((6, 3))
    basis[:3, 0], basis[:3, 1], basis[3:, 2] = ex, ey, beam
    where = f"one view (gantry {view.gantry_deg:g}, couch {view.couch_deg:g})"
    reasons = {}
    for k, name in enumerate(PARAMETERS):
        axis = np.eye(6)[k]
        if np.linalg.norm(axis - basis @ (basis.T @ axis)) >= OBSERVABLE:
            kind = "displacement along the beam" if k < 3 else "rotation about an axis across the beam"
            reasons[name] = f"{where} does not constrain the {kind}; add a view at another gantry angle"
    return basis, reasons


def check_not_parallel(views: list[ViewGeometry]) -> None:
    """Raise :class:`GeometryError` when two or more views all look along (nearly) one line."""
    if len(views) < 2:
        return
    beams = np.array([v.axes[2] for v in views])
    cross = [np.linalg.norm(np.cross(beams[0], b)) for b in beams[1:]]
    if max(cross) < math.sin(math.radians(MIN_SEPARATION_DEG)):
        angles = ", ".join(f"{v.gantry_deg:g}" for v in views)
        raise GeometryError(f"the frames at gantry {angles} are parallel views (beams less than "
                            f"{MIN_SEPARATION_DEG:g} deg apart): the displacement along the beam cannot be resolved; "
                            "add a frame at a gantry angle at least that far from the others (e.g. 0 and 90)")
