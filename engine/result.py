"""The result of a 2-D registration.

Contract (DESIGN.md): an anatomy point at ``(x, y)`` in the reference appears in
the frame at ``R(theta) (x, y) + (dx, dy)``, millimetres at the isocentre plane,
x along columns, y along rows, origin on the beam axis. ``dx_mm``, ``dy_mm`` and
``rotation_deg`` are the patient's displacement as the imager sees it; the
correction is its inverse (:meth:`RegistrationResult.correction`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from . import __version__

__all__ = ["RegistrationResult"]


@dataclass(frozen=True)
class RegistrationResult:
    """Displacement of the frame's anatomy relative to the reference, and how far to trust it.

    Attributes
    ----------
    dx_mm, dy_mm : float or None
        Translation at the isocentre plane (x along columns, y along rows); ``None`` (JSON ``null``) when
        nothing was measured (``ok`` is then false and ``reason`` says why: fewer than 16 usable pixels to
        search, a blank or noise-only frame, a field seen only as a sliver at the image's edge, a match that a
        check found placed by something other than the anatomy).
    rotation_deg : float or None
        In-plane rotation turning +x towards +y: clockwise as the image is displayed (rows running down),
        right-handed about the beam direction, source to isocentre (``docs/conventions.md``); ``None`` (JSON
        ``null``) when it was not estimated (``estimate_rotation=False``, or a usable
        region too small to support it): the translation was then found with the
        rotation held at 0, and ``warnings`` says why.
    ok : bool
        False when the match must not be trusted; ``reason`` says why.
    reason : str
        Empty when ``ok``.
    score : float or None
        Similarity at the optimum: the edge correlation (-1..1, 1 = every edge
        matched) for ``edge``, normalised MI - 1 (0..1) for ``mi`` and ``auto``;
        ``None`` when nothing could be scored (too few usable pixels: ``reason`` says why). A match withheld as
        no measurement (``dx_mm`` ``None``: no match, no common anatomy) keeps the score it measured.
    method, backend : str
        What ran.
    elapsed_ms : float
        Wall time of the registration of this frame (loading excluded).
    ambiguity : float or None
        Score of the best distinct runner-up optimum over the winner's (0 = the global search found no distinct
        rival, 1 = a tie); ``None`` (JSON ``null``) where no rivals were compared: ``candidates=1``, no optimum
        found, nothing measured.
    field_detected : bool
        Whether a radiation field was found in the frame (and its edge excluded).
    field_box_mm : list of float or None
        ``[x_min, x_max, y_min, y_max]`` of the detected field at the isocentre plane.
    frame_uid, reference_uid : str or None
        SOP Instance UIDs of the inputs; ``None`` (JSON ``null``) where an input has none (an array, a
        file without the tag).
    frame_index : int
        Frame number inside a multi-frame input.
    warnings : list of str
        Things worth knowing that do not make the result untrustworthy.
    details : dict
        Diagnostics (per-stage scores, levels, candidates).
    version : str
        portalign version that produced the result.
    """

    dx_mm: float | None
    dy_mm: float | None
    rotation_deg: float | None
    ok: bool
    reason: str = ""
    score: float | None = 0.0
    method: str = ""
    backend: str = ""
    elapsed_ms: float = 0.0
    ambiguity: float | None = None
    field_detected: bool = False
    field_box_mm: list[float] | None = None
    frame_uid: str | None = None
    reference_uid: str | None = None
    frame_index: int = 0
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    @property
    def rotation_estimated(self) -> bool:
        """Whether ``rotation_deg`` was measured (False: not estimated, ``None``)."""
        return self.rotation_deg is not None

    def correction(self, *, even_if_not_ok: bool = False) -> tuple[float | None, float | None, float | None]:
        """Return ``(dx_mm, dy_mm, rotation_deg)`` that moves the anatomy back onto the reference.

        The inverse of ``p -> R p + d`` is ``p -> R^T p - R^T d``. When the rotation
        was not estimated the translation was found with the rotation held at 0, so
        the correction is the plain negated translation and its rotation is ``None``. Nothing measured
        (``dx_mm`` ``None``): ``(None, None, None)``.

        Parameters
        ----------
        even_if_not_ok : bool
            A result that is not ok (``reason`` says why: mismatched views, an ambiguous match) keeps the shift it
            measured, for review, but is no correction to apply: ``(None, None, None)`` unless this is True (a new
            user's gantry-90 frame against a gantry-0 DRR, refused, had a correction that looked usable).
        """
        if self.dx_mm is None or self.dy_mm is None or not (self.ok or even_if_not_ok):
            return (None, None, None)
        if self.rotation_deg is None:
            return (-self.dx_mm + 0.0, -self.dy_mm + 0.0, None)
        t = math.radians(self.rotation_deg)
        c, s = math.cos(t), math.sin(t)
        return (-(c * self.dx_mm + s * self.dy_mm), -(-s * self.dx_mm + c * self.dy_mm), -self.rotation_deg)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict.

        A non-finite number anywhere in it (a diagnostic's ``inf``) is ``None``, so that strict JSON readers (and
        the service's responses) take every result.
        """
        return _finite(asdict(self))

    def as_json(self, **kwargs: Any) -> str:
        """Return the result as one JSON object."""
        return json.dumps(self.as_dict(), default=_json_default, **kwargs)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (``inf``, ``nan``) in its dicts, lists and tuples replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    ndim = getattr(value, "ndim", None)
    if ndim == 0 and hasattr(value, "item"):  # a numpy scalar in details
        return _finite(value.item())
    if ndim and hasattr(value, "tolist"):  # a numpy array
        return _finite(value.tolist())
    return value


def _json_default(obj: Any) -> Any:
    # numpy scalars in details
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
