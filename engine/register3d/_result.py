"""The 6-DOF result of a 2D/3D registration and the couch corrections that undo it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import __version__


@dataclass(frozen=True)
class Register3DResult:
    """The patient's rigid displacement from the planned position, from frames against the planning CT.

    Axes and convention (DESIGN.md): IEC 61217 patient-support axes; an anatomy
    point ``p`` (mm from the isocentre) of the plan is found at ``R p + t``,
    ``t = (lateral, longitudinal, vertical)``, ``R = Rz(yaw) Ry(roll) Rx(pitch)``,
    right-handed, degrees. A value the views cannot constrain is ``None`` and
    ``not_estimated`` gives the reason.

    Attributes
    ----------
    lateral_mm, longitudinal_mm, vertical_mm : float or None
        Translation ``t`` (mm).
    pitch_deg, roll_deg, yaw_deg : float or None
        Rotations about IEC X (lateral), Y (longitudinal) and Z (vertical).
    not_estimated : dict of str to str
        Parameter name (``lateral`` ... ``yaw``) -> why it is not reported.
    translation_uncertainty_mm : dict of str to float or None
        ``lateral``, ``longitudinal``, ``vertical`` -> standard uncertainty (mm) propagated from the views' 2-D
        precision through their projections (``None`` where not estimated); over
        ``Register3DOptions.max_translation_uncertainty_mm`` the result is not ok.
    couch_correction_6dof : dict of str to float or None
        For a 6-DOF couch: rotate the patient about the isocentre by ``pitch``,
        ``roll``, ``yaw`` (the Euler angles of ``R^T``), then translate by
        ``lateral``, ``longitudinal``, ``vertical`` (``-R^T t``); this returns
        every anatomy point to its planned position.
    couch_correction_4dof : dict of str to float or None
        For a couch that translates and turns about the vertical (IEC Z, the
        couch angle): rotate the patient about the isocentre by ``yaw`` (``-yaw``
        of the displacement), then translate by ``lateral``, ``longitudinal``,
        ``vertical`` (``-Rz(-yaw) t``: the anatomy at the isocentre returns to it).
        As ``R = Rz(yaw) Ry(roll) Rx(pitch)``, what it leaves is exactly
        ``Ry(roll) Rx(pitch)``: the measured pitch and roll. A yaw that was not
        estimated is ``None`` there, and the translation is then the 3-DOF one.
    couch_correction_3dof : dict of str to float or None
        For a couch that only translates: ``-t`` (the anatomy at the isocentre
        returns to it); the rotations stay as ``rotations_not_corrected_deg`` says.
        The three corrections' values are all ``None`` when the result is not ``ok`` (as
        ``RegistrationResult.correction()``): the measurement stays in the values above, for review.
    rotations_not_corrected_deg : dict of str to float or None
        ``pitch``, ``roll``, ``yaw`` left after the translation-only (3-DOF)
        correction: the measured rotations.
    views : list of dict
        Per frame: ``label, gantry_deg, couch_deg``, the 2-D engine's start
        (``initial_dx_mm``, ``initial_dy_mm``, ``initial_rotation_deg``,
        ``initial_ok``; a rotation the 2-D engine did not estimate is ``None``),
        ``score`` (gradient correlation of ``-log(frame)`` with the DRR at the
        result, -1..1), and the residual: the 2-D engine's
        shift and rotation of the frame against the DRR rendered at the result
        (``residual_dx_mm``, ``residual_dy_mm``, ``residual_rotation_deg``,
        ``residual_mm``; ``residual_check_ok`` and ``residual_check_reason``:
        the 2-D engine's own verdict on that match, reported, not required; ``shift_uncertainty_mm``:
        that match's 2-D standard uncertainty, which ``translation_uncertainty_mm`` propagates),
        ``ok``, ``reason``.
    score : float
        Mean of the views' scores at the result.
    iterations : int
        Pose batches rendered by the search (all levels).
    renders : int
        DRRs (poses x views) rendered by the search.
    ok : bool
        False when the result is not trustworthy; ``reason`` says why.
    reason : str
    elapsed_ms : float
        Registration time, CT preparation excluded (``prepare_ms``).
    prepare_ms : float
        Time the CT's preparation took (paid once per CT).
    backend : str
        Where the rays were cast.
    patient_position : str
    patient_directions : dict or None
        What positive lateral, longitudinal and vertical mean for this patient.
    within_tolerance : dict
        Axis -> within the action level (``None``: not measured); empty without a table.
    all_within_tolerance : bool or None
    warnings : list of str
    version : str
    """

    lateral_mm: float | None
    longitudinal_mm: float | None
    vertical_mm: float | None
    pitch_deg: float | None
    roll_deg: float | None
    yaw_deg: float | None
    not_estimated: dict[str, str]
    couch_correction_6dof: dict[str, float | None]
    couch_correction_4dof: dict[str, float | None]
    couch_correction_3dof: dict[str, float | None]
    rotations_not_corrected_deg: dict[str, float | None]
    views: list[dict[str, Any]]
    score: float
    iterations: int
    renders: int
    ok: bool
    reason: str = ""
    elapsed_ms: float = 0.0
    prepare_ms: float = 0.0
    backend: str = ""
    patient_position: str = ""
    patient_directions: dict[str, str] | None = None
    within_tolerance: dict[str, bool | None] = field(default_factory=dict)
    all_within_tolerance: bool | None = None
    warnings: list[str] = field(default_factory=list)
    translation_uncertainty_mm: dict[str, float | None] = field(default_factory=dict)
    version: str = __version__

    @property
    def translation_mm(self) -> np.ndarray:
        """``(lateral, longitudinal, vertical)``; NaN where not estimated."""
        return np.array([np.nan if v is None else v for v in (self.lateral_mm, self.longitudinal_mm,
                                                              self.vertical_mm)])

    @property
    def rotation_deg(self) -> dict[str, float | None]:
        """``{"pitch", "roll", "yaw"}`` in degrees (``None`` where not estimated)."""
        return {"pitch": self.pitch_deg, "roll": self.roll_deg, "yaw": self.yaw_deg}

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict (``None`` for what was not measured).

        Its ``units`` entry gives the unit of each value whose key does not end in one: the couch corrections'
        translations in mm and turns in degrees.
        """
        out = asdict(self)
        correction = {"lateral": "mm", "longitudinal": "mm", "vertical": "mm", "pitch": "deg", "roll": "deg",
                      "yaw": "deg"}
        # each correction's own keys (the 4-DOF one has no pitch or roll, the 3-DOF one no turn)
        out["units"] = {name: {key: correction[key] for key in out[name]}
                        for name in ("couch_correction_6dof", "couch_correction_4dof", "couch_correction_3dof")}
        return out

    def as_json(self, **kwargs: Any) -> str:
        """Return the result as one JSON object."""
        return json.dumps(self.as_dict(), **kwargs)
