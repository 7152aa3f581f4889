"""Registration options: one frozen dataclass, validated once at the public boundary."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import OptionValueError

__all__ = ["RegistrationOptions", "METHODS", "FIELD_MODES", "MIRROR_CHECKS", "APERTURE_CHECKS"]

#: ``mi``: mutual information (partial-volume joint histogram) refines the pose.
#: ``edge``: gradient-orientation correlation refines it (robust when intensities do not correspond).
#: ``auto``: edges refine the pose and mutual information cross-checks it (the two optima must agree within
#: ``agreement_mm``); on a weak edge match (edge score below 0.2: a noisy, low-dose frame, whose gradients
#: noise dominates) the MI optimum, refined from the edge one, is reported and the edge optimum is its check
#: (``details["final_metric"]`` says which); for two portal images of one kind of beam over a usable region of 20 mm
#: RMS radius or more, whose intensities match, the MI optimum too (its rotation on a moderate edge match over nearly
#: the whole frame, else the edges'; ``details["final_metric_why"]``: ``"portal reference"``).
METHODS = ("auto", "mi", "edge")

#: ``auto``: detect the radiation field in portal images (and arrays), not in DRRs.
#: ``detect``: always try; ``none``: never (the whole image is anatomy).
FIELD_MODES = ("auto", "detect", "none")
#: When a frame is also registered mirrored (``RegistrationOptions.mirror_check``).
MIRROR_CHECKS = ("first", "always", "never")
#: What becomes of a portal pair's match at its fixed aperture's own position that no deep interior confirmed
#: (``RegistrationOptions.aperture_check``).
APERTURE_CHECKS = ("strict", "warn")


#: The numeric fields of :class:`RegistrationOptions` (each must be finite).
_NUMBERS = ("max_shift_mm", "max_rotation_deg", "field_margin_mm", "bins", "finest_spacing_mm", "coarse_spacing_mm",
            "rotation_step_deg", "candidates", "ambiguity_ratio", "min_score", "agreement_mm", "view_tolerance_deg")
#: Upper bounds of the fields that size the search's buffers (the FFT grid grows with the shift range and the
#: edge band): far beyond any setup error or penumbra, and a bound on what one request can allocate.
_LARGEST = {"max_shift_mm": 500.0, "field_margin_mm": 100.0, "agreement_mm": 100.0, "candidates": 64}


@dataclass(frozen=True)
class RegistrationOptions:
    """How a frame is registered against a reference.

    Attributes
    ----------
    method : {"auto", "mi", "edge"}
        Similarity used for the refinement (the global search always uses edges).
    max_shift_mm : float
        Capture range for the translation; the search covers a little more, and an
        optimum beyond this range is reported as not ``ok``.
    max_rotation_deg : float
        Capture range for the in-plane rotation.
    estimate_rotation : bool
        False fixes the rotation at 0 (translation only).
    field : {"auto", "detect", "none"}
        Radiation-field detection (see ``FIELD_MODES``).
    field_margin_mm : float
        Width of the band around the field edge that is excluded from the anatomy
        match, on each side of the 50 % line (covers the penumbra). The least band:
        a penumbra measured deeper widens it (a reference portal image's own; against a
        DRR, a frame field's own of 30 mm or more), up to 10 mm; a small field caps it
        at 0.18 x its size.
    bins : int
        Intensity bins per image of the joint histogram.
    normalised_mi : bool
        Use normalised mutual information (Studholme) instead of plain MI.
    finest_spacing_mm : float
        The finest pyramid level used has at least this pixel spacing (the native
        one if it is coarser); finer is slower and, past the image's sharpness,
        no more accurate.
    coarse_spacing_mm : float
        Pixel spacing of the global search level (made finer for small fields).
    rotation_step_deg : float
        Spacing of the candidate rotations in the global search.
    candidates : int
        Distinct global-search optima carried into refinement (8, the most the search's
        buffers hold; 3 before 2026-12-06); each is scored on the first refinement level,
        the best there wins and the runner-up decides whether the match is ambiguous. On a
        small usable region the search level's own order is unreliable: two MLC openings
        at gantry 35 had their true optimum sixth there, and the best of three kept was ok
        26 mm off (trial52 oblique-00).
    ambiguity_ratio : float
        A runner-up optimum more than 2 mm away whose score reaches this fraction of
        the best makes the result not ``ok`` (ambiguous).
    min_score : float
        Edge-correlation score below which a match is not trusted.
    agreement_mm : float
        ``auto`` only: largest allowed distance (mm) between the edge and the MI optimum; against a DRR,
        where the edges' optimum is reported, 1 mm more (``registration._program.DRR_MI_ALLOWANCE_MM``: a
        kV DRR's intensities and an MV frame's do not correspond one to one).
    view_tolerance_deg : float
        Largest difference (degrees, wrap-around aware: 359 and 1 are 2 apart) between the
        reference's and the frame's gantry, collimator and patient support (couch) angles,
        IEC 61217; beyond it the two images show different views and the result is not ``ok``.
        Angles that either image lacks are not compared.
    allow_view_mismatch : bool
        Register views that differ (angles beyond ``view_tolerance_deg``, different
        source-axis distance) as if they matched, when that is intended; the differences
        are still recorded in ``details["view"]`` and ``warnings``.
    allow_patient_mismatch : bool
        Register images whose PatientID (0010,0020) differs (both present), when that is intended
        (a phantom imaged under two names, files anonymised differently); without it such a
        result is not ``ok``. Recorded in ``details["view"]`` and ``warnings`` either way.
    mirror_check : {"first", "always", "never"}
        Register an ``ok`` frame also flipped left-right, up-down and both (turned 180 deg):
        when one of those matches the reference clearly better, the frame is likely mirrored
        (the imager's orientation, an export setting) and the result is not ``ok``. ``first``:
        the first frame of each frame geometry (a mirrored panel mirrors every frame), with three
        lighter registrations (edge only, one candidate, rotation held: 23 -> 35 ms for a one-shot
        1024 x 768 registration); ``always``: every frame; ``never``: none (symmetric anatomy that
        matches as well mirrored). ``details["mirror_check"]`` gives the scores.
    aperture_check : {"strict", "warn"}
        Two portal images through one aperture fixed to the beam (a reference portal image and a frame through the
        same field) whose match sits at the aperture's own position (within 2 mm of no shift, the field not moved):
        the aperture's edges, not the patient, may have placed it. Where at least 100 mm^2 of the field lies far
        enough inside its edges, the anatomy there confirms or refuses the match (``details["interior_check"]``).
        Where less does (a cone, a narrow or split field), nothing in the images can confirm it: ``strict`` refuses
        the match (not ``ok``: register such frames against a DRR); ``warn`` keeps it ``ok`` with a warning unless
        the aperture alone matches the frame about as well as the reference does. Where no part of the field lies
        that far inside (a small cone with a soft edge), ``strict`` also refuses matches away from the aperture's
        position: every pixel matched lies in the penumbra, which stays with the beam. On a held-out set of cone portal
        pairs the match sat at the cone within 0.8 mm whether the patient had moved 0 or 5.8 mm (session note 19);
        ``warn`` left 14 of 22 of those that moved 2-6 mm ``ok``.
    fine_polish : bool
        Two portal images of one beam in near-perfect agreement (edge correlation 0.75 or more: a phantom imaged
        twice, windows of one image) get their intensities fitted on their own pixels, or MI's translation
        followed down finer levels (``details["fine_polish"]``; 0.014 -> 0.001 mm on windows of real images, at
        about 2x such a frame's time: 17 -> 39 ms for 680 x 920). False keeps the working levels' pose (a cine
        loop that needs every frame within its frame interval).
    """

    method: str = "auto"
    max_shift_mm: float = 20.0
    max_rotation_deg: float = 5.0
    estimate_rotation: bool = True
    field: str = "auto"
    field_margin_mm: float = 3.0
    bins: int = 32
    normalised_mi: bool = False
    finest_spacing_mm: float = 1.0
    coarse_spacing_mm: float = 4.0
    rotation_step_deg: float = 2.0
    candidates: int = 8
    ambiguity_ratio: float = 0.92
    min_score: float = 0.05
    agreement_mm: float = 1.5
    view_tolerance_deg: float = 3.0
    allow_view_mismatch: bool = False
    allow_patient_mismatch: bool = False
    mirror_check: str = "first"
    aperture_check: str = "strict"
    fine_polish: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OptionValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.field not in FIELD_MODES:
            raise OptionValueError(f"field must be one of {', '.join(FIELD_MODES)}; got {self.field!r}")
        if self.mirror_check not in MIRROR_CHECKS:
            raise OptionValueError(f"mirror_check must be one of {', '.join(MIRROR_CHECKS)}; got {self.mirror_check!r}")
        if self.aperture_check not in APERTURE_CHECKS:
            raise OptionValueError(f"aperture_check must be one of {', '.join(APERTURE_CHECKS)}; got "
                                 f"{self.aperture_check!r}")
        # every number finite first: NaN passes every comparison below (a NaN field margin reached the pyramid's
        # sizing as "cannot convert float NaN to integer"), and an infinite one sizes an allocation by itself
        for name in _NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise OptionValueError(f"{name} must be a finite number; got {value!r}")
        for name, limit in _LARGEST.items():
            if getattr(self, name) > limit:
                raise OptionValueError(f"{name} must be at most {limit:g}; got {getattr(self, name)!r}")
        if not 0 < self.ambiguity_ratio <= 1:
            raise OptionValueError(f"ambiguity_ratio must be within 0..1 (a share of the best score); got "
                                 f"{self.ambiguity_ratio!r}")
        if not -1 <= self.min_score <= 1:
            raise OptionValueError(f"min_score must be within -1..1 (an edge correlation); got {self.min_score!r}")
        positive = {
            "max_shift_mm": self.max_shift_mm,
            "finest_spacing_mm": self.finest_spacing_mm,
            "coarse_spacing_mm": self.coarse_spacing_mm,
            "rotation_step_deg": self.rotation_step_deg,
            "agreement_mm": self.agreement_mm,
            "view_tolerance_deg": self.view_tolerance_deg,
        }
        for name, value in positive.items():
            if not value > 0:
                raise OptionValueError(f"{name} must be positive; got {value!r}")
        if not 0 <= self.max_rotation_deg <= 45:
            raise OptionValueError(f"max_rotation_deg must be within 0..45; got {self.max_rotation_deg!r}")
        if self.field_margin_mm < 0:
            raise OptionValueError(f"field_margin_mm must not be negative; got {self.field_margin_mm!r}")
        if not 8 <= self.bins <= 256:
            raise OptionValueError(f"bins must be within 8..256; got {self.bins!r}")
        if self.candidates < 1:
            raise OptionValueError(f"candidates must be at least 1; got {self.candidates!r}")

    def as_dict(self) -> dict[str, Any]:
        """Return the options as a plain dict (JSON-ready)."""
        return asdict(self)

    def replace(self, **changes: Any) -> RegistrationOptions:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)
