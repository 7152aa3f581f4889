"""One pose contract for every method: conversions from each library's transform, and errors.

Contract (DESIGN.md): a reference point ``q`` (mm at the isocentre plane, x along
columns, y along rows, origin on the beam axis) appears in the frame at
``p = R(theta) q + d``. Libraries report other things:

* SimpleITK / elastix (frame = fixed, reference = moving) give the map
  ``T: frame point -> reference point`` in physical mm, about some centre of
  rotation: ``T(p) = R(phi) p + t``. Then ``theta = -phi`` and ``d = -R(theta) t``.
* OpenCV ECC (reference = template, frame = input) gives ``W``: reference *pixel*
  -> frame *pixel* about pixel ``(0, 0)``; it has to be moved to mm and to the
  beam axis first (:func:`affine_px_to_mm`).
* scikit-image gives the pixel shift that moves the frame onto the reference.

All of them go through :func:`pose_from_affine_mm`, which takes a 2x3 affine in
mm and its direction; the tests check each peer against a synthetic pair.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Pose", "pose_from_affine_mm", "affine_px_to_mm", "physical_origin", "pose_errors", "apply_pose"]


@dataclass(frozen=True)
class Pose:
    """A rigid 2-D displacement in the DESIGN.md contract.

    Attributes
    ----------
    dx_mm, dy_mm : float
        Translation at the isocentre plane (x along columns, y along rows).
    rotation_deg : float
        In-plane rotation, counter-clockwise from +x towards +y.
    """

    dx_mm: float
    dy_mm: float
    rotation_deg: float

    def as_dict(self) -> dict[str, float]:
        """Return the pose as a plain dict."""
        return asdict(self)


def pose_from_affine_mm(matrix: np.ndarray, offset: np.ndarray, direction: str) -> Pose:
    """Convert a 2-D affine map in mm (beam axis at the origin) to a contract :class:`Pose`.

    Parameters
    ----------
    matrix : array_like, shape (2, 2)
        Linear part (ideally a rotation).
    offset : array_like, shape (2,)
        Translation part, mm.
    direction : {"ref_to_frame", "frame_to_ref"}
        ``ref_to_frame``: ``p = M q + t`` maps a reference point to the frame
        (the contract itself). ``frame_to_ref``: ``q = M p + t`` maps a frame
        point to the reference (what an ITK fixed=frame / moving=reference
        registration returns).

    Returns
    -------
    Pose
    """
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 2)
    t = np.asarray(offset, dtype=np.float64).reshape(2)
    if direction == "frame_to_ref":
        # invert q = M p + t:  p = M^-1 q - M^-1 t
        m_inv = np.linalg.inv(m)
        m, t = m_inv, -m_inv @ t
    elif direction != "ref_to_frame":
        raise ValueError(f"direction must be 'ref_to_frame' or 'frame_to_ref', got {direction!r}")
    # nearest rotation angle of a (nearly) rotation matrix
    theta = math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
    return Pose(float(t[0]), float(t[1]), math.degrees(theta))


def affine_px_to_mm(
    matrix_px: np.ndarray,
    offset_px: np.ndarray,
    src_spacing: tuple[float, float],
    src_axis: tuple[float, float],
    dst_spacing: tuple[float, float],
    dst_axis: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Express a pixel affine ``dst_px = A src_px + b`` in mm about each image's beam axis.

    Parameters
    ----------
    matrix_px, offset_px : array_like
        ``A`` (2x2) and ``b`` (2,) acting on ``(col, row)`` pixel coordinates.
    src_spacing, dst_spacing : (row_mm, col_mm)
        Pixel spacing of the source and destination images.
    src_axis, dst_axis : (col, row)
        Beam axis of each image in pixels.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``M`` (2x2) and ``t`` (2,) with ``dst_mm = M src_mm + t``.
    """
    a = np.asarray(matrix_px, dtype=np.float64).reshape(2, 2)
    b = np.asarray(offset_px, dtype=np.float64).reshape(2)
    s_src = np.diag([src_spacing[1], src_spacing[0]])
    s_dst = np.diag([dst_spacing[1], dst_spacing[0]])
    a_src = np.asarray(src_axis, dtype=np.float64)
    a_dst = np.asarray(dst_axis, dtype=np.float64)
    # src_px = S_src^-1 src_mm + a_src ; dst_mm = S_dst (dst_px - a_dst)
    m = s_dst @ a @ np.linalg.inv(s_src)
    t = s_dst @ (a @ a_src + b - a_dst)
    return m, t


def physical_origin(spacing: tuple[float, float], beam_axis_px: tuple[float, float]) -> tuple[float, float]:
    """ITK ``(x, y)`` origin that puts the beam axis at physical ``(0, 0)``.

    ITK's index ``(i, j)`` is ``(col, row)`` for an array ``[row, col]``, and its
    physical point is ``origin + spacing * index`` with spacing ``(col_mm, row_mm)``.
    """
    return (-beam_axis_px[0] * spacing[1], -beam_axis_px[1] * spacing[0])


def apply_pose(pose: Pose, points_mm: np.ndarray) -> np.ndarray:
    """Map reference points ``(N, 2)`` (x, y in mm) to the frame: ``R(theta) q + d``."""
    t = math.radians(pose.rotation_deg)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return np.asarray(points_mm, dtype=np.float64) @ r.T + np.array([pose.dx_mm, pose.dy_mm])


def pose_errors(found: Pose, truth: Pose, *, landmark_ref_mm: tuple[float, float] | None = None,
                landmark_frame_mm: tuple[float, float] | None = None) -> tuple[float, float]:
    """Translation error (mm) and absolute rotation error (degrees) of ``found`` against ``truth``.

    With landmarks (a Winston-Lutz BB: its position in the reference and in the
    frame), the translation error is the distance between where ``found`` puts the
    reference landmark and where it really is in the frame, which does not depend
    on a rotation that the landmark cannot reveal.
    """
    rot_err = abs((found.rotation_deg - truth.rotation_deg + 180.0) % 360.0 - 180.0)
    if landmark_ref_mm is not None and landmark_frame_mm is not None:
        predicted = apply_pose(found, np.array([landmark_ref_mm]))[0]
        return float(np.hypot(*(predicted - np.asarray(landmark_frame_mm)))), rot_err
    return float(math.hypot(found.dx_mm - truth.dx_mm, found.dy_mm - truth.dy_mm)), rot_err
