"""Six degrees of freedom: portal frames registered directly against the planning CT (2D/3D).

Prepare the CT once, register the frames of each setup::

    from portalign import register3d
    ct = register3d.prepare_ct(portalign.ct.read_ct_series("ct/"), isocenter_mm=(x, y, z))
    result = ct.register([frame_0, frame_90])
    result.lateral_mm, result.pitch_deg, result.couch_correction_6dof, result.ok

or in one call ``register3d.register_3d(ct, frames, isocenter_mm=...)``. The
result is the patient's displacement in IEC 61217 patient-support axes: an
anatomy point ``p`` (mm from the isocentre) of the plan is found at ``R p + t``,
``R = Rz(yaw) Ry(roll) Rx(pitch)`` (DESIGN.md). One frame gives the
displacement across its beam and the rotation about it (the rest is ``None``,
with the reason); two or more non-parallel frames give all six.

Method: :mod:`portalign.register3d._search` (2-D start, coarse-to-fine
quadratic-model search on DRRs rendered in batches of poses by
``project_cone_beam_poses``, a 2-D residual check per view).
"""

from __future__ import annotations

from typing import Any

from ..backends import Backend
from ..ct import CTVolume
from ..options import RegistrationOptions
from ..tolerance import ToleranceTable
from ._cli import add_arguments, run
from ._geometry import PARAMETERS, euler_angles, rotation_matrix
from ._result import Register3DResult
from ._search import Register3DOptions, SearchLevel
from ._volume import PreparedCT

__all__ = [
    "PARAMETERS",
    "PreparedCT",
    "Register3DOptions",
    "Register3DResult",
    "SearchLevel",
    "add_arguments",
    "euler_angles",
    "prepare_ct",
    "register_3d",
    "rotation_matrix",
    "run",
]


def prepare_ct(ct: CTVolume | str, *, isocenter_mm: Any, patient_position: str | None = None,
               backend: str | Backend = "auto") -> PreparedCT:
    """Prepare a planning CT for many 2D/3D registrations: attenuation volumes resident on the backend.

    Parameters
    ----------
    ct : CTVolume or str or Path
        The planning CT, or the folder of its axial DICOM series
        (:func:`portalign.ct.read_ct_series`).
    isocenter_mm : sequence of 3 float
        Planned isocentre ``(x, y, z)`` in the CT's DICOM patient coordinates (mm).
    patient_position : str, optional
        ``HFS``, ``FFS``, ``HFP`` or ``FFP``; the CT's ``PatientPosition`` by default.
    backend : {"auto", "cpu", "gpu"} or Backend
        Where rays are cast.

    Returns
    -------
    PreparedCT

    Raises
    ------
    GeometryError
        Isocentre outside the CT, unknown patient position, a CT without patient.
    PortalImageError
        A folder that is not one axial CT series (e.g. oblique slices).
    BackendUnavailableError
        ``backend="gpu"`` without a usable GPU.
    """
    if not isinstance(ct, CTVolume):
        from ..ct import read_ct_series

        ct = read_ct_series(ct)
    return PreparedCT(ct, isocenter_mm=isocenter_mm, patient_position=patient_position, backend=backend)


def register_3d(
    ct: CTVolume | PreparedCT | str,
    frames: Any,
    *,
    isocenter_mm: Any = None,
    patient_position: str | None = None,
    backend: str | Backend = "auto",
    options: Register3DOptions | None = None,
    registration_options: RegistrationOptions | None = None,
    tolerance: ToleranceTable | None = None,
) -> Register3DResult:
    """Register portal frames of one setup against the planning CT in six degrees of freedom.

    Parameters
    ----------
    ct : CTVolume, PreparedCT, str or Path
        The planning CT (prepared when it is not a :class:`PreparedCT` yet).
    frames : Image, path, or sequence of them
        RT Images with gantry angle, SID, SAD, pixel spacing and beam axis
        (``RTImagePosition``); the couch and receptor angles are honoured.
    isocenter_mm : sequence of 3 float
        Planned isocentre in DICOM patient coordinates (mm); needed unless ``ct`` is prepared.
    patient_position, backend
        As for :func:`prepare_ct`.
    options : Register3DOptions, optional
        Search levels, field margin, search range and acceptance limits.
    registration_options : RegistrationOptions, optional
        Options of the 2-D engine that starts the search and checks the result.
    tolerance : ToleranceTable, optional
        Action levels (lat, lng, vrt, vec, rot, pitch, roll, yaw) to check the result against.

    Returns
    -------
    Register3DResult

    Raises
    ------
    GeometryError
        Frames without geometry, parallel views, an isocentre outside the CT.
    """
    if not isinstance(ct, PreparedCT):
        if isocenter_mm is None:
            from ..errors import GeometryError

            raise GeometryError("register_3d needs isocenter_mm= (the planned isocentre in the CT's DICOM patient "
                                "coordinates, mm) unless the CT is already prepared")
        ct = prepare_ct(ct, isocenter_mm=isocenter_mm, patient_position=patient_position, backend=backend)
    return ct.register(frames, options=options, registration_options=registration_options, tolerance=tolerance)
