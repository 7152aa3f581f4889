"""Field placement: where the radiation field was delivered, against where it was planned.

The anatomy match (:mod:`portalign.registration`) excludes the field edge on
purpose: the aperture is fixed to the gantry, the patient is not. This module
measures the aperture itself, so that a field placement error (jaws, EPID or
collimator calibration) is reported separately from the patient displacement.

Planned field (the aperture compared)
    The jaw positions that :mod:`portalign.dicom` reads from the RT Image
    ``ExposureSequence`` (``info.extra["planned_jaws_mm"]``: x1, x2, y1, y2 in mm
    at the isocentre, image-frame axis directions before collimator rotation),
    from the reference image, else from the frame. When the same item carries an
    MLC (``planned_mlc``), the aperture is the bounding rectangle of the open leaf
    pairs inside the jaws (``"reference MLC"``). When the header has neither, the
    field detected in the reference portal image (same method as below; a DRR
    reference has no field and gives an error). In ``auto`` mode, a delivered
    field that lies inside the header's jaws by more than the tolerance on every
    side is shaped by something the header does not record (an MLC or a cone
    missing from the RT Image, as in Winston-Lutz images taken with a 20 mm
    MLC field or an SRS cone inside 30 mm jaws): the jaws are not the aperture,
    and the reference portal image's own field is compared instead, which the
    report says (``aperture_note``); with a DRR reference that is an error, since
    nothing recorded says what the aperture should be.
Delivered field
    Detected in the frame. A rough mask (Otsu's threshold, largest bright
    component, holes filled) locates the field and checks that it is brighter
    than its surroundings. Each edge is then the 50 % line, found on profiles
    perpendicular to the edge (up to 10 mm either side, at most 40 % of the
    field size) through the central 80 % of the opposite side: a profile's own
    out-of-field floor (median of its outer half) and in-field level (median of
    its inner half) give its threshold ``floor + 0.5 (in-field - floor)``, i.e.
    50 % of the local in-field level above the detector's floor (for a zero
    floor exactly 50 % of the in-field level), and the crossing is linearly
    interpolated. Local levels keep anatomy and the field's own slope away from
    the edge from moving it; profiles through a BB (no clean step) are dropped,
    and the edge is the median over profiles. A second pass centres the
    profiles on the first estimate.
Frame of the edges
    The field frame is the image frame turned by ``-collimator`` (IEC: a
    positive collimator angle turns the field counter-clockwise in the beam's
    eye view, whose y is up; image rows run down): ``(x, y)_image = R(-c) (u, v)``.
    ``x1 < x2`` along ``u``, ``y1 < y2`` along ``v``; at collimator 0 they are the
    image axes. Centre shifts are reported in the image frame, mm at the
    isocentre plane, like registration results. Only rectangular (jaw-defined)
    fields are modelled; for an MLC-shaped field the edges are those of its
    bounding rectangle.
Exit status of ``portalign fieldcheck``
    0: every edge within tolerance; 3 (``EXIT_OUT_OF_TOLERANCE``): an edge is
    outside tolerance; 2: unusable input or no planned aperture to compare with.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from ._cli_options import add_geometry_arguments, add_invert_argument, command_error, geometry_keywords, shown
from .errors import PortalignError, PortalImageError
from .field import likely_inverted
from .image import Image, as_image
from .result import RegistrationResult

__all__ = [
    "EXIT_OUT_OF_TOLERANCE",
    "FieldEdges",
    "PLANNED_SOURCES",
    "add_arguments",
    "field_placement",
    "measure_field",
    "planned_field",
    "run",
]

#: ``planned=`` choices of :func:`field_placement`.
PLANNED_SOURCES = ("auto", "jaws", "reference")
#: Exit status of ``portalign fieldcheck`` when an edge is outside tolerance (0 within, 2 unusable input).
EXIT_OUT_OF_TOLERANCE = 3
#: A leaf pair closer than this (mm) is closed: it lets no field through.
_CLOSED_LEAF_GAP_MM = 0.5
_EDGES = ("x1", "x2", "y1", "y2")
#: Profiles run this far on each side of the rough edge (mm), at most 40 % of the field size.
_PROFILE_HALF_LENGTH_MM = 10.0
#: The floor is measured outside a band this wide around the rough field (mm).
_FLOOR_MARGIN_MM = 10.0


@dataclass(frozen=True)
class FieldEdges:
    """A rectangular field in its own frame (the image frame turned by ``angle_deg``).

    Attributes
    ----------
    x1, x2, y1, y2 : float
        Edge positions in mm at the isocentre plane, relative to the beam axis.
    angle_deg : float
        Rotation of the field frame in the image, from +x towards +y
        (``-collimator_deg``).
    source : str
        ``"reference jaws"``, ``"frame jaws"``, ``"reference field"`` or
        ``"detected"``.
    in_field_level, floor_level, threshold : float or None
        Detection levels (``None`` for planned jaws).
    profiles : int
        Profiles that found an edge (0 for planned jaws).
    """

    x1: float
    x2: float
    y1: float
    y2: float
    angle_deg: float = 0.0
    source: str = "detected"
    in_field_level: float | None = None
    floor_level: float | None = None
    threshold: float | None = None
    profiles: int = 0

    @property
    def centre_mm(self) -> tuple[float, float]:
        """Field centre ``(x, y)`` in the image frame, mm."""
        u, v = 0.5 * (self.x1 + self.x2), 0.5 * (self.y1 + self.y2)
        x, y = _rotate(np.array([u, v]), self.angle_deg)
        return float(x), float(y)

    @property
    def size_mm(self) -> tuple[float, float]:
        """Field width along ``u`` and height along ``v``, mm."""
        return self.x2 - self.x1, self.y2 - self.y1

    def corners_mm(self) -> list[tuple[float, float]]:
        """Corners ``(x1, y1), (x2, y1), (x2, y2), (x1, y2)`` in the image frame, mm."""
        corners = [(self.x1, self.y1), (self.x2, self.y1), (self.x2, self.y2), (self.x1, self.y2)]
        return [tuple(float(v) for v in _rotate(np.array(c), self.angle_deg)) for c in corners]  # type: ignore[misc]

    def edges(self) -> dict[str, float]:
        """Return ``{"x1", "x2", "y1", "y2"}`` in mm."""
        return {"x1": self.x1, "x2": self.x2, "y1": self.y1, "y2": self.y2}


def _round_field(image: Image, edges: FieldEdges) -> FieldEdges:
    """Re-measure a round (cone) field: its centroid and equal-area diameter above the 50 % level.

    Edge profiles across a circle away from its centre meet the edge early (a chord is shorter than the
    diameter), so the rectangle :func:`measure_field` reports is too small for a cone. The pixels above
    the 50 % threshold, in the largest connected part, give the area ``A`` and centroid; the field is
    reported as the square ``centre +- sqrt(A / pi)`` in the field frame, comparable with a cone's opening.
    """
    if edges.threshold is None:
        return edges
    above = np.asarray(image.pixels) > edges.threshold
    labels, count = ndimage.label(above)
    if count == 0:
        return edges
    sizes = np.bincount(labels.ravel())[1:]
    part = labels == 1 + int(np.argmax(sizes))
    rows, cols = np.nonzero(part)
    x, y = image.pixel_to_mm(cols.mean(), rows.mean())
    sy, sx = image.spacing_mm
    radius = math.sqrt(part.sum() * sx * sy / math.pi)
    u, v = _rotate(np.array([x, y]), -edges.angle_deg)
    return replace(edges, x1=float(u - radius), x2=float(u + radius), y1=float(v - radius), y2=float(v + radius),
                   source="detected (round: centroid and equal-area diameter)")


def measure_field(image: Image, *, angle_deg: float = 0.0, smoothing_mm: float = 0.5) -> FieldEdges:
    """Detect a rectangular radiation field and its 50 % edges in a portal image.

    Parameters
    ----------
    image : Image
        A portal image (higher = more radiation, as :mod:`portalign.dicom` delivers).
    angle_deg : float
        Orientation of the field frame in the image (``-collimator_deg``).
    smoothing_mm : float
        Gaussian smoothing (standard deviation) before the edges are located.

    Returns
    -------
    FieldEdges

    Raises
    ------
    PortalImageError
        No field edge (the field covers the imager, or the image has no
        bright region surrounded by a dark one), or the field touches the
        image border.
    """
    name = image.info.source
    sy, sx = image.spacing_mm
    pixels = image.pixels.astype(np.float64)
    if smoothing_mm > 0:
        pixels = ndimage.gaussian_filter(pixels, (smoothing_mm / sy, smoothing_mm / sx), mode="nearest")

    try:
        mask, rough_threshold = _rough_field(pixels, name)
    except PortalImageError as exc:
        if likely_inverted(image):  # its field darker than its surroundings: the values are stored inverted
            raise PortalImageError(f"{exc}; the image looks inverted (its field is darker than its surroundings): "
                                   "try --invert") from None
        raise
    rows, cols = np.nonzero(mask)
    if rows.min() == 0 or cols.min() == 0 or rows.max() == mask.shape[0] - 1 or cols.max() == mask.shape[1] - 1:
        raise PortalImageError(f"{name}: the radiation field reaches the image border, so its edges cannot all be "
                               "measured; use an image with the whole field on the imager")
    extent = min(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    # Box filters are separable: fast erosion/dilation with large footprints.
    shrink = 2 * max(1, int(0.25 * extent)) + 1
    inner = ndimage.minimum_filter(mask, size=shrink, mode="constant", cval=False)
    if not inner.any():
        inner = mask
    # Dark objects in the field (a BB, bone) are left out of the in-field level.
    inside = pixels[inner]
    level = float(np.median(inside[inside > rough_threshold])) if (inside > rough_threshold).any() else float(
        np.median(inside))
    margin = (2 * int(math.ceil(_FLOOR_MARGIN_MM / sy)) + 1, 2 * int(math.ceil(_FLOOR_MARGIN_MM / sx)) + 1)
    grown = ndimage.maximum_filter(mask, size=margin, mode="constant", cval=False)
    floor = float(np.median(pixels[~grown])) if (~grown).any() else float(pixels.min())
    if not level > floor:
        raise PortalImageError(f"{name}: the field is not brighter than its surroundings (in-field {level:g}, "
                               f"outside {floor:g}); is this a portal image?")
    # Rough edges in the field frame from the mask's pixel centres.
    x, y = image.pixel_to_mm(cols, rows)
    u, v = _rotate(np.stack([x, y]), -angle_deg)
    rough = {"x1": float(u.min()), "x2": float(u.max()), "y1": float(v.min()), "y2": float(v.max())}
    min_contrast = 0.25 * (level - floor)
    found: dict[str, float] = {}
    levels, floors, thresholds, counts = [], [], [], []
    for edge in _EDGES:
        # Two passes: the second centres the profiles on the first estimate, so that the plateau and
        # floor parts of every profile are clear of the penumbra.
        first = _edge_position(pixels, image, rough, edge, rough[edge], angle_deg, min_contrast)
        second = _edge_position(pixels, image, rough, edge, first[0], angle_deg, min_contrast) \
            if first[0] is not None else first
        position, count, edge_level, edge_floor = second
        if position is None:
            raise PortalImageError(f"{name}: the {edge} edge of the field was not found at the 50 % level; "
                                   "the field edge may be too blurred or too close to the border")
        found[edge] = position
        levels.append(edge_level)
        floors.append(edge_floor)
        thresholds.append(edge_floor + 0.5 * (edge_level - edge_floor))
        counts.append(count)
    return FieldEdges(found["x1"], found["x2"], found["y1"], found["y2"], angle_deg=float(angle_deg),
                      source="detected", in_field_level=float(np.median(levels)), floor_level=float(np.median(floors)),
                      threshold=float(np.median(thresholds)), profiles=int(min(counts)))


def planned_field(reference: Image, frame: Image | None = None, *, planned: str = "auto") -> FieldEdges:
    """Return the planned field: jaw positions from the images' headers, else the reference's detected field.

    Parameters
    ----------
    reference : Image
    frame : Image, optional
        Its jaws are used when the reference has none.
    planned : {"auto", "jaws", "reference"}
        ``jaws``: only header jaws (error without them); ``reference``: only the
        field detected in the reference image; ``auto``: the applicator (an SRS cone's diameter, an
        applicator's opening) when the header has one, else the MLC inside the jaws, else the jaws, else
        the reference.

    Returns
    -------
    FieldEdges

    Raises
    ------
    PortalImageError
        When the chosen source has no field.
    """
    if planned not in PLANNED_SOURCES:
        raise PortalignError(f"planned must be one of {', '.join(PLANNED_SOURCES)}; got {planned!r}")
    if planned in ("auto", "jaws"):
        for image, label in ((reference, "reference"), (frame, "frame")):
            if image is None:
                continue
            applicator = image.info.extra.get("planned_applicator") if planned == "auto" else None
            if applicator:
                # a cone or applicator limits the field inside the jaws: its symmetric opening about the beam axis
                # (a circle's edges along the field axes are its bounding square's)
                half_w, half_h = 0.5 * float(applicator["width_mm"]), 0.5 * float(applicator["height_mm"])
                shape = "cone" if applicator["shape"] == "SYM_CIRCULAR" else "applicator"
                ident = f" {applicator['id']}" if applicator.get("id") else ""
                return FieldEdges(-half_w, half_w, -half_h, half_h, angle_deg=-float(image.info.collimator_deg or 0.0),
                                  source=f"{label} {shape}{ident}")
            jaws = image.info.extra.get("planned_jaws_mm") or {}
            if all(key in jaws for key in _EDGES):
                angle = -float(image.info.collimator_deg or 0.0)
                x1, x2, y1, y2 = (float(jaws[key]) for key in _EDGES)
                mlc = _mlc_aperture(image.info.extra.get("planned_mlc"), (x1, x2, y1, y2)) \
                    if planned == "auto" else None
                if mlc is not None:
                    return FieldEdges(*mlc, angle_deg=angle, source=f"{label} MLC")
                return FieldEdges(x1, x2, y1, y2, angle_deg=angle, source=f"{label} jaws")
        if planned == "jaws":
            names = reference.info.source + (f" and {frame.info.source}" if frame is not None else "")
            raise PortalImageError(f"{names}: no planned jaw positions (X and Y) in the header; "
                                   "use planned='reference' to compare with the reference image's field")
    if reference.info.kind == "drr":
        raise PortalImageError(f"{reference.info.source}: no planned field: the images have no jaw positions and "
                               "the reference is a DRR (it shows no field); use a reference with planned jaws "
                               "(RT Image ExposureSequence) or a reference portal image")
    angle = -float(reference.info.collimator_deg or 0.0)
    try:
        edges = measure_field(reference, angle_deg=angle)
    except PortalImageError as exc:
        raise PortalImageError(f"no planned field: the images have no jaw positions and the reference has no "
                               f"measurable field ({exc})") from None
    return FieldEdges(edges.x1, edges.x2, edges.y1, edges.y2, angle_deg=angle, source="reference field",
                      in_field_level=edges.in_field_level, floor_level=edges.floor_level,
                      threshold=edges.threshold, profiles=edges.profiles)


def field_placement(
    reference_image: Any,
    frame_image: Any,
    *,
    result: RegistrationResult | None = None,
    planned: str = "auto",
    tolerance_mm: float = 2.0,
    pixel_spacing_mm: Any = None,
    allow_view_mismatch: bool = False,
) -> dict[str, Any]:
    """Compare the delivered field in a frame with the planned field.

    Parameters
    ----------
    reference_image, frame_image : Image, path or pydicom.Dataset
        The reference (DRR or reference portal image) and the portal frame.
    result : RegistrationResult, optional
        The anatomy registration of the same pair; when given, the anatomy
        displacement relative to the delivered field is reported too.
    planned : {"auto", "jaws", "reference"}
        Where the planned field comes from (:func:`planned_field`).
    tolerance_mm : float
        An edge further than this from its planned position is outside tolerance.
    pixel_spacing_mm : float or (float, float), optional
        For array inputs.
    allow_view_mismatch : bool
        Compare a frame whose collimator angle differs from that of the reference its plan is taken from (beyond
        the registration's view tolerance, 3 deg): refused otherwise, since the jaws' edges would be named along
        another beam's axes. Gantry and couch angles that differ are compared all the same (the aperture is the
        beam's), with ``view_note``.

    Returns
    -------
    dict
        ``planned_source`` (``"reference jaws"``, ``"frame jaws"``, ``"reference MLC"``, ``"frame MLC"`` or
        ``"reference field"``), ``aperture`` (what was compared, in words), ``aperture_note`` (why the
        header's jaws were not compared, else None), ``view_note`` (where the two images' beams differ: gantry,
        collimator or couch angle, source-axis distance; else None), ``collimator_deg, planned_mm, delivered_mm`` (edges
        ``x1, x2, y1, y2`` in the field frame), ``planned_centre_mm,
        delivered_centre_mm, centre_shift_mm`` (image frame ``[x, y]``),
        ``edge_errors_mm`` (delivered - planned per edge), ``size_errors_mm``
        (``x``, ``y``), ``max_edge_error_mm, tolerance_mm, within_tolerance,
        in_field_level, floor_level, threshold, profiles, reference, frame`` and,
        with ``result``, ``anatomy_shift_mm`` and ``anatomy_relative_to_field_mm``
        (anatomy shift minus field centre shift; ``None`` where the match measured nothing) and the match's
        verdict, ``anatomy_ok`` and ``anatomy_reason``.

    Raises
    ------
    PortalImageError
        No field in the frame, or no planned field; a plan taken from a reference at another collimator angle
        (unless ``allow_view_mismatch``).
    """
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and 0 < tolerance_mm <= 100):
        raise PortalignError(f"tolerance_mm must be a positive number of mm, at most 100, got {tolerance_mm!r}")
    reference = as_image(reference_image, name="reference", pixel_spacing_mm=pixel_spacing_mm)
    frame = as_image(frame_image, name="frame", pixel_spacing_mm=pixel_spacing_mm)
    plan = planned_field(reference, frame, planned=planned)
    delivered = measure_field(frame, angle_deg=plan.angle_deg)
    if " cone" in plan.source:
        delivered = _round_field(frame, delivered)
    note = ""
    if planned == "auto" and plan.source.endswith("jaws"):
        inside = [delivered.x1 - plan.x1, plan.x2 - delivered.x2, delivered.y1 - plan.y1, plan.y2 - delivered.y2]
        if min(inside) > tolerance_mm:
            jaws = ", ".join(f"{edge} {getattr(plan, edge):+.1f}" for edge in _EDGES)
            note = (f"the header's jaws ({jaws} mm) do not define the delivered field: it lies {min(inside):.1f}-"
                    f"{max(inside):.1f} mm inside them on every side, shaped by an MLC or cone that the RT Image "
                    "does not record")
            if reference.info.kind == "drr":
                # the field described is the frame's: its file is named first, the DRR as what cannot be compared with
                raise PortalImageError(f"{frame.info.source}: {note}; the reference ({reference.info.source}) is a DRR, "
                                       "with no recorded aperture to compare with: use a reference portal image "
                                       "(--planned reference) or compare with the jaws anyway (--planned jaws)")
            plan = planned_field(reference, frame, planned="reference")
            note += "; compared with the reference image's field instead"
    if plan.source.startswith("reference") and not allow_view_mismatch:
        _same_collimator(reference, frame)
    errors = {edge: getattr(delivered, edge) - getattr(plan, edge) for edge in _EDGES}
    view_note = _view_note(reference, frame)
    planned_centre, delivered_centre = plan.centre_mm, delivered.centre_mm
    shift = [delivered_centre[0] - planned_centre[0], delivered_centre[1] - planned_centre[1]]
    worst = max(abs(e) for e in errors.values())
    out: dict[str, Any] = {
        "reference": reference.info.source,
        "frame": frame.info.source,
        "planned_source": plan.source,
        "aperture": _APERTURE_NAMES.get(plan.source.split(" ", 1)[1], plan.source),
        "aperture_note": note or None,
        "view_note": view_note or None,
        "collimator_deg": -plan.angle_deg + 0.0,
        "planned_mm": plan.edges(),
        "delivered_mm": delivered.edges(),
        "planned_centre_mm": list(planned_centre),
        "delivered_centre_mm": list(delivered_centre),
        "centre_shift_mm": shift,
        "edge_errors_mm": errors,
        "size_errors_mm": {"x": errors["x2"] - errors["x1"], "y": errors["y2"] - errors["y1"]},
        "max_edge_error_mm": worst,
        "tolerance_mm": float(tolerance_mm),
        "within_tolerance": worst <= tolerance_mm,
        "in_field_level": delivered.in_field_level,
        "floor_level": delivered.floor_level,
        "threshold": delivered.threshold,
        "profiles": delivered.profiles,
        # two frames in one report: name them (at collimator 90 the edges' x is the image's y)
        "axes": {
            "collimator": ["planned_mm", "delivered_mm", "edge_errors_mm", "size_errors_mm"],
            "image": ["planned_centre_mm", "delivered_centre_mm", "centre_shift_mm", "anatomy_shift_mm",
                      "anatomy_relative_to_field_mm"],
            "note": "collimator axes: the jaws' x1/x2 and y1/y2, turned with the collimator (IEC 61217 beam limiting "
                    "device); image axes: x along the columns, y along the rows, mm from the beam axis at the "
                    "isocentre plane",
        },
    }
    if result is not None:
        # the anatomy match's own verdict goes with it: a refused match is said to be one, a null shift is null
        out["anatomy_ok"] = bool(result.ok)
        out["anatomy_reason"] = result.reason
        measured = result.dx_mm is not None and result.dy_mm is not None
        out["anatomy_shift_mm"] = [float(result.dx_mm), float(result.dy_mm)] if measured else None
        out["anatomy_relative_to_field_mm"] = ([float(result.dx_mm) - shift[0], float(result.dy_mm) - shift[1]]
                                               if measured else None)
    out["axes"]["image"] = [key for key in out["axes"]["image"] if key in out]  # the keys this report has
    return out


def _same_collimator(reference: Image, frame: Image) -> None:
    """Refuse a plan taken from a reference whose collimator angle is not the frame's (both recorded).

    The planned edges are named along the reference's collimator axes: the frame's field, turned with its own
    collimator, would have its jaws compared with others (a new user's trial: collimator 0 against 90 was within
    tolerance, its x1 the frame's Y jaw).
    """
    from .options import RegistrationOptions
    from .registration._views import angle_difference_deg

    ref_angle, frame_angle = reference.info.collimator_deg, frame.info.collimator_deg
    if ref_angle is None or frame_angle is None:
        return
    tolerance = RegistrationOptions().view_tolerance_deg
    if angle_difference_deg(ref_angle, frame_angle) <= tolerance:
        return
    def named(image: Image, role: str) -> str:
        return role if image.info.source in ("", "array") else f"{role} ({image.info.source})"

    raise PortalImageError(
        f"{named(frame, 'the frame')} is at collimator angle {frame_angle:g} deg, but {named(reference, 'the reference')}, "
        f"which the plan is taken from, at {ref_angle:g} deg (tolerance {tolerance:g} deg): its jaws would be compared "
        "with another beam's; compare the frame with a reference of its own beam, or pass --allow-view-mismatch to "
        "compare the field all the same")


def _view_note(reference: Image, frame: Image) -> str:
    """Say where the two images' beams differ (IEC 61217 angles beyond ``view_tolerance_deg``, source-axis distance).

    The aperture is the beam's, so a field is compared across gantry angles all the same (a field-size check at
    several gantry angles is one): the note says so, and that another beam's plan would not apply. ``""``: the views
    agree, or what differs is not recorded.
    """
    from .options import RegistrationOptions
    from .registration._views import compare_views

    # (two patients' images: the views are compared all the same, which a registration would refuse before them)
    reason, record, _ = compare_views(reference.info, frame.info, RegistrationOptions(allow_patient_mismatch=True))
    if not record["mismatch"]:
        return ""
    differ = reason.split(" (tolerance ", 1)[0].removeprefix("different views: ")
    return (f"the two images were taken along different beams ({differ}): the frame's field is compared with that "
            "plan all the same; if the frame belongs to another beam, its own plan applies")


#: ``aperture`` of the report, by the second word of ``planned_source``.
_APERTURE_NAMES = {
    "jaws": "planned jaws",
    "MLC": "planned MLC aperture (bounding rectangle of the open leaf pairs, inside the jaws)",
    "field": "the reference image's radiation field",
}


def _mlc_aperture(devices: Any, jaws: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
    """Bounding rectangle (image-axis x1, x2, y1, y2 before collimator rotation) of the open leaves inside the jaws.

    ``devices`` is ``info.extra["planned_mlc"]``: per MLC, the leaf positions (bank A then bank B, mm at the
    isocentre in the IEC beam-limiting-device frame) and the leaf boundaries. ``MLCX`` leaves travel along
    x and are stacked along IEC y; ``MLCY`` the other way. A pair is open when its banks are more than
    ``_CLOSED_LEAF_GAP_MM`` apart within the jaws. IEC ``y`` points up in the image (``y_image = -y_iec``).
    Returns None without a usable MLC (no boundaries, no open pair).
    """
    if not devices:
        return None
    x1, x2, y1, y2 = jaws
    # IEC frame of the jaws: y flipped back
    box = [x1, x2, -y2, -y1]
    found = False
    for device in devices:
        positions = device.get("leaf_positions_mm")
        boundaries = device.get("leaf_boundaries_mm")
        kind = str(device.get("type", "")).upper()
        if not positions or not boundaries or kind not in ("MLCX", "MLCY"):
            continue
        n = len(positions) // 2
        if len(positions) != 2 * n or len(boundaries) != n + 1:  # the reader notes and drops such a table too
            continue
        bank_a, bank_b = np.asarray(positions[:n], float), np.asarray(positions[n:], float)
        edges = np.asarray(boundaries, float)
        travel, stack = (0, 2) if kind == "MLCX" else (2, 0)
        lo_t, hi_t = box[travel], box[travel + 1]
        lo_s, hi_s = box[stack], box[stack + 1]
        within = (edges[1:] > lo_s) & (edges[:-1] < hi_s)
        gap = np.minimum(bank_b, hi_t) - np.maximum(bank_a, lo_t)
        open_pairs = within & (gap > _CLOSED_LEAF_GAP_MM)
        if not open_pairs.any():
            continue
        found = True
        box[travel] = max(lo_t, float(bank_a[open_pairs].min()))
        box[travel + 1] = min(hi_t, float(bank_b[open_pairs].max()))
        box[stack] = max(lo_s, float(edges[:-1][open_pairs].min()))
        box[stack + 1] = min(hi_s, float(edges[1:][open_pairs].max()))
    if not found:
        return None
    return box[0], box[1], -box[3], -box[2]


# ---------------------------------------------------------------------------
# detection helpers
# ---------------------------------------------------------------------------


def _rotate(points: np.ndarray, angle_deg: float) -> np.ndarray:
    """``R(angle) @ points`` with ``R = [[cos, -sin], [sin, cos]]`` (x towards y)."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s], [s, c]]) @ points


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight = hist / hist.sum()
    omega = np.cumsum(weight)
    mu = np.cumsum(weight * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between[~np.isfinite(between)] = 0.0
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _rough_field(pixels: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    threshold = _otsu(pixels)
    bright = pixels > threshold
    labels, count = ndimage.label(bright)
    if count == 0:
        raise PortalImageError(f"{name}: no radiation field found (no bright region)")
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, count + 1))
    if sizes.max() < 0.6 * sizes.sum():
        # a field is one bright region; scattered bright specks are noise or anatomy
        raise PortalImageError(f"{name}: no radiation field edge found (no single bright field on a dark surround)")
    mask = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    if mask.mean() > 0.95 or border.mean() > 0.4:
        # no dark surround: no field edge (or a field larger than the imager)
        raise PortalImageError(f"{name}: no radiation field edge found (the field may be larger than the imager)")
    return mask, threshold


def _edge_position(pixels: np.ndarray, image: Image, rough: dict[str, float], edge: str, centre: float,
                   angle_deg: float, min_contrast: float) -> tuple[float | None, int, float, float]:
    """Median 50 % crossing of profiles across one edge, in field-frame mm.

    Every profile runs from outside to inside across the edge. Its own floor (median of the outer
    half) and in-field level (median of the inner half) set its 50 % threshold, so that anatomy
    or a sloping field away from the edge does not move the edge.

    Returns
    -------
    position, profiles used, median in-field level, median floor
    """
    along_u = edge in ("x1", "x2")
    low, high = ("x1", "x2") if along_u else ("y1", "y2")
    across_lo, across_hi = ("y1", "y2") if along_u else ("x1", "x2")
    size = rough[high] - rough[low]
    half = min(_PROFILE_HALF_LENGTH_MM, 0.4 * size)
    step = 0.25 * min(image.spacing_mm)
    spacing_across = max(image.spacing_mm)
    a0, a1 = rough[across_lo], rough[across_hi]
    span = a1 - a0
    count = int(min(61, max(3, 0.8 * span / spacing_across)))
    across = np.linspace(a0 + 0.1 * span, a1 - 0.1 * span, count)
    s = np.arange(-half, half + 0.5 * step, step)
    inward = 1.0 if edge in ("x1", "y1") else -1.0  # profile runs from outside to inside
    positions = centre + inward * s
    # field-frame sample points (u, v) for every profile, then image pixels
    if along_u:
        u = np.broadcast_to(positions[None, :], (count, s.size))
        v = np.broadcast_to(across[:, None], (count, s.size))
    else:
        u = np.broadcast_to(across[:, None], (count, s.size))
        v = np.broadcast_to(positions[None, :], (count, s.size))
    x, y = _rotate(np.stack([u.ravel(), v.ravel()]), angle_deg)
    col, row = image.mm_to_pixel(x, y)
    values = ndimage.map_coordinates(pixels, [row, col], order=1, mode="nearest").reshape(count, s.size)
    levels = np.median(values[:, s >= 0.5 * half], axis=1)
    floors = np.median(values[:, s <= -0.5 * half], axis=1)
    crossings, used = [], []
    for profile, level, floor in zip(values, levels, floors, strict=True):
        if level - floor < min_contrast:
            continue  # a BB or a dense bone on this profile: no clean step
        threshold = floor + 0.5 * (level - floor)
        above = profile >= threshold
        changes = np.flatnonzero(~above[:-1] & above[1:])  # outside (below) -> inside (above)
        if changes.size == 0:
            continue
        i = changes[np.argmin(np.abs(s[changes]))]  # the rising crossing nearest the centre
        f0, f1 = profile[i], profile[i + 1]
        t = (threshold - f0) / (f1 - f0)
        crossings.append(positions[i] + inward * t * step)
        used.append((level, floor))
    if len(crossings) < 3:
        return None, len(crossings), 0.0, 0.0
    used_levels = np.array(used)
    return (float(np.median(crossings)), len(crossings), float(np.median(used_levels[:, 0])),
            float(np.median(used_levels[:, 1])))


# ---------------------------------------------------------------------------
# command line: portalign fieldcheck
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign fieldcheck`` arguments to a parser."""
    parser.add_argument("reference", help="reference image (DRR or reference portal image), DICOM")
    parser.add_argument("frame", help="portal frame, DICOM")
    parser.add_argument("--planned", choices=PLANNED_SOURCES, default="auto",
                        help="aperture compared: 'jaws' the header's jaws only; 'reference' the field detected in "
                             "the reference portal image; 'auto' (default) the header's MLC inside the jaws, else "
                             "the jaws, else the reference's field, and the reference's field when the delivered "
                             "field lies inside the jaws on every side (an MLC or cone the header does not record)")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, metavar="MM",
                        help="largest accepted edge error, mm (default 2)")
    parser.epilog = (f"exit status: 0 every edge within tolerance; {EXIT_OUT_OF_TOLERANCE} an edge outside "
                     "tolerance; 2 unusable input or no planned aperture to compare with")
    parser.add_argument("--with-anatomy", action="store_true",
                        help="also register the anatomy and report it relative to the delivered field")
    parser.add_argument("--allow-view-mismatch", action="store_true",
                        help="compare a frame whose collimator angle differs from the reference's (refused by "
                             "default: the jaws' edges would be named along another beam's axes); gantry and couch "
                             "angles that differ are compared with a note either way")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_invert_argument(parser)
    add_geometry_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``portalign fieldcheck``: 0 within tolerance, 3 outside it, 2 with a one-line error on unusable input."""
    try:
        from . import register
        from .dicom import read_rt_image

        keywords = geometry_keywords(args)
        reference, frame = read_rt_image(args.reference, **keywords), read_rt_image(args.frame, **keywords)
        result = register(reference, frame) if args.with_anatomy else None
        report = field_placement(reference, frame, result=result, planned=args.planned,
                                 tolerance_mm=args.tolerance_mm, allow_view_mismatch=args.allow_view_mismatch)
    except PortalignError as exc:
        # the reader's hints name its keywords (pass sid_mm=, tolerance_mm): the flags here are --sid-mm & co.
        return command_error("fieldcheck", args, exc)
    status = 0 if report["within_tolerance"] else EXIT_OUT_OF_TOLERANCE
    if args.json:
        print(json.dumps(report))
        return status
    shift = report["centre_shift_mm"]
    print(f"aperture compared: {report['aperture']} (planned from {report['planned_source']}), "
          f"collimator {shown(report['collimator_deg'], 1):g} deg")
    if report["aperture_note"]:
        print(f"note: {report['aperture_note']}")
    if report["view_note"]:
        print(f"note: {report['view_note']}")
    print(f"field centre shift (image axes): x {shown(shift[0]):+.2f} mm, y {shown(shift[1]):+.2f} mm")
    print("edge errors (collimator axes): "
          + ", ".join(f"{k} {shown(v):+.2f}" for k, v in report["edge_errors_mm"].items()) + " mm")
    if "anatomy_ok" in report:
        rel = report["anatomy_relative_to_field_mm"]
        verdict = "" if report["anatomy_ok"] else f"   NOT OK ({report['anatomy_reason']})"
        if rel is None:
            print(f"anatomy relative to the field: not measured{verdict}")
        else:
            print(f"anatomy relative to the field (image axes): x {shown(rel[0]):+.2f} mm, y {shown(rel[1]):+.2f} mm"
                  f"{verdict}")
    print("within tolerance" if report["within_tolerance"] else
          f"OUTSIDE tolerance: an edge is {report['max_edge_error_mm']:.2f} mm off (> {report['tolerance_mm']:g})")
    return status
