"""Whether the reference and the frame show the same view of the patient, and any common region at all.

A 2-D registration compares two projections. It is only meaningful when both were
taken along the same beam: the same gantry angle (IEC 61217 GANTRY), the same
collimator (BEAM LIMITING DEVICE) and patient support (couch) angles, and the same
source position (source-axis distance; the source-imager distance does not matter
once the pixel spacing is scaled to the isocentre plane, since an anatomy point at
depth ``z`` is magnified by ``SAD / (SAD - z)`` there, whatever the SID). A
gantry-0 reference against a gantry-90 frame returns *a* shift, and a confident one
would be wrong; so a mismatch makes the result not ``ok`` unless the caller says the
mismatch is intended (``RegistrationOptions(allow_view_mismatch=True)``,
``--allow-view-mismatch``).

Angles that an image does not carry (``None``: arrays, files without the tag) are
not compared, but every angle is recorded in the result (``details["view"]``); a gantry
angle that one image records and the other does not is a warning.
"""

from __future__ import annotations

import math
from typing import Any

from ..dicom import tag_label
from ..image import Image, ImageInfo
from ..options import RegistrationOptions

__all__ = ["angle_difference_deg", "beam_angle_deg", "compare_views", "common_region", "extent_box", "grid_extent",
           "with_view_reason"]

#: Angles compared, with the name a physicist uses for each (IEC 61217).
VIEW_ANGLES = (("gantry_deg", "gantry"), ("collimator_deg", "collimator"), ("couch_deg", "couch (patient support)"))
#: The RT Image attribute each view quantity is read from (an ``ImageInfo`` field to its DICOM keyword).
VIEW_TAGS = {"gantry_deg": "GantryAngle", "collimator_deg": "BeamLimitingDeviceAngle",
             "couch_deg": "PatientSupportAngle", "sad_mm": "RadiationMachineSAD"}
#: The view angles read into ``ImageInfo.extra`` (absent: not turned), by their mismatch names, and their attributes.
EXTRA_VIEW_TAGS = {"receptor_deg": "XRayImageReceptorAngle", "eccentric_deg": "TableTopEccentricAngle"}
#: Relative difference of the source-axis distances beyond which the views differ (1000 vs 980 mm is 2 %).
SAD_TOLERANCE = 0.02


def angle_difference_deg(a: float, b: float) -> float:
    """Return the smallest absolute difference of two angles in degrees (359 and 1 are 2 apart)."""
    return abs((float(a) - float(b) + 180.0) % 360.0 - 180.0)


def beam_angle_deg(reference: dict[str, Any], frame: dict[str, Any]) -> float | None:
    """Return the angle (degrees) between two images' beam directions in the patient, from their IEC 61217 angles.

    ``reference`` and ``frame`` are :func:`compare_views`' records (``gantry_deg``, ``couch_deg``; a couch angle
    not recorded is 0). The beam of gantry ``g`` and couch ``s`` runs along ``(-cos s sin g, sin s sin g, -cos g)``
    in patient-support axes (:func:`portalign.couch.image_axes`), so
    ``cos(angle) = sin g1 sin g2 cos(s1 - s2) + cos g1 cos g2``. The collimator turns the image about the beam and
    does not count. ``None`` where either image records no gantry angle.
    """
    g1, g2 = reference["gantry_deg"], frame["gantry_deg"]
    if g1 is None or g2 is None:
        return None
    s1, s2 = reference["couch_deg"] or 0.0, frame["couch_deg"] or 0.0
    a, b, c = math.radians(g1), math.radians(g2), math.radians(s1 - s2)
    cosine = math.sin(a) * math.sin(b) * math.cos(c) + math.cos(a) * math.cos(b)
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def compare_views(reference: ImageInfo, frame: ImageInfo, options: RegistrationOptions) -> tuple[str, dict[str, Any], list[str]]:
    """Compare the acquisition geometry of a reference and a frame.

    Parameters
    ----------
    reference, frame : ImageInfo
        Their IEC 61217 gantry, collimator and couch angles (degrees) and
        source-axis distances (mm); ``None`` where unknown.
    options : RegistrationOptions
        ``view_tolerance_deg``, ``allow_view_mismatch`` and ``allow_patient_mismatch``.

    Returns
    -------
    reason : str
        Why the views (or the patients: PatientID, when both images carry one) differ, naming both
        values and the override; ``""`` when they match, when nothing can be compared, or when the
        mismatch is allowed.
    record : dict
        ``{"reference": {...}, "frame": {...}, "mismatch": [...], "allowed": bool}``:
        every angle and SAD of both images (``None`` where unknown) and the names
        of the quantities that differ.
    warnings : list of str
        A mismatch that was allowed; a gantry angle that only one of the images records.
    """
    # attribute by attribute (no loops of getattr): this runs for every frame
    ref_angles = (reference.gantry_deg, reference.collimator_deg, reference.couch_deg)
    frame_angles = (frame.gantry_deg, frame.collimator_deg, frame.couch_deg)
    record: dict[str, Any] = {
        "reference": {"gantry_deg": ref_angles[0], "collimator_deg": ref_angles[1], "couch_deg": ref_angles[2],
                      "sad_mm": reference.sad_mm},
        "frame": {"gantry_deg": frame_angles[0], "collimator_deg": frame_angles[1], "couch_deg": frame_angles[2],
                  "sad_mm": frame.sad_mm},
        "mismatch": [],
        "allowed": bool(options.allow_view_mismatch),
    }
    # two patients' images: not a setup error either (both IDs present: arrays and anonymised files have none)
    # membership and indexing, not .get: this runs for every frame (its calls are counted)
    ref_extra, frame_extra = reference.extra, frame.extra
    ref_id = ref_extra["patient_id"] if "patient_id" in ref_extra else None
    frame_id = frame_extra["patient_id"] if "patient_id" in frame_extra else None
    record["reference"]["patient_id"] = ref_id
    record["frame"]["patient_id"] = frame_id
    if ref_id and frame_id and ref_id.strip() != frame_id.strip():
        record["patient_mismatch"] = True
        text = (f"different patients: PatientID {ref_id!r} in the reference ({reference.source}) but {frame_id!r} in "
                f"the frame ({frame.source})")
        if not options.allow_patient_mismatch:
            return (f"{text}; a match of two patients' images is not a setup error. If this is intended (a phantom, "
                    "files anonymised differently), set allow_patient_mismatch=True (--allow-patient-mismatch)",
                    record, [])
        patient_warning = [f"{text}; registered as asked (allow_patient_mismatch)"]
    else:
        patient_warning = []
    # a DRR given as the frame and a portal image as the reference: the arguments swapped (register REFERENCE FRAME). A
    # DRR is rendered from the planning CT, never taken through the beam; measured this way, the shift's sign is
    # reversed (a new user's trial: ok at (-3.2, -2.0) mm for (+3.0, +2.0), nothing said)
    if frame.kind == "drr" and reference.kind == "portal":
        record["swapped"] = True
        return (f"the arguments look swapped: the frame ({frame.source}) is a DRR and the reference ({reference.source}) "
                "a portal image; a DRR is the reference, rendered from the planning CT, and a shift measured the other "
                "way round has its sign reversed: give the reference first, then the frame (portalign register "
                "REFERENCE FRAME)", record, patient_warning)
    phrases = []
    tolerance = options.view_tolerance_deg
    for (key, label), ref_value, frame_value in zip(VIEW_ANGLES, ref_angles, frame_angles, strict=True):
        if ref_value is None or frame_value is None:
            continue
        apart = (ref_value - frame_value + 180.0) % 360.0 - 180.0  # angle_difference_deg, inline (no abs(): no call)
        if apart > tolerance or apart < -tolerance:
            record["mismatch"].append(key)
            phrases.append(f"{label} angle {angle_text(ref_value)} deg in the reference ({reference.source}) but "
                           f"{angle_text(frame_value)} deg in the frame ({frame.source})")
    # the imager turned about the beam (XRayImageReceptorAngle; absent: not turned) in one image and not the other: its
    # image axes are not the other's (a hostile campaign's frame at 90 against a reference without one made couch
    # combine its shift along the wrong axes, ok: vertical -2.58 for +4.09 mm)
    # ...and the table top turned about its eccentric axis in one only (TableTopEccentricAngle; absent: not turned):
    # the patient turned about the vertical as by the couch angle (the campaign's 90 deg was never read)
    for key, label, record_key in (("receptor_angle_deg", "imager (receptor)", "receptor_deg"),
                                   ("table_top_eccentric_deg", "table top eccentric", "eccentric_deg")):
        if key in ref_extra or key in frame_extra:
            ref_turn = float(ref_extra.get(key) or 0.0)
            frame_turn = float(frame_extra.get(key) or 0.0)
            if angle_difference_deg(ref_turn, frame_turn) > tolerance:
                record["mismatch"].append(record_key)
                phrases.append(f"{label} angle {angle_text(ref_turn)} deg in the reference ({reference.source}) but "
                               f"{angle_text(frame_turn)} deg in the frame ({frame.source})")
    ref_sad, frame_sad = reference.sad_mm, frame.sad_mm
    if ref_sad and frame_sad and abs(ref_sad - frame_sad) > SAD_TOLERANCE * max(ref_sad, frame_sad):
        record["mismatch"].append("sad_mm")
        phrases.append(f"source-axis distance {ref_sad:g} mm in the reference ({reference.source}) but "
                       f"{frame_sad:g} mm in the frame ({frame.source})")
    # one image names its gantry angle and the other does not: the most telling view check was skipped (a trial's
    # frame without GantryAngle was ok with nothing said); said, not refused (arrays and some exports carry none)
    if (ref_angles[0] is None) != (frame_angles[0] is None):
        which, where = ("frame", frame.source) if frame_angles[0] is None else ("reference", reference.source)
        patient_warning = [*patient_warning, f"the {which} ({where}) records no gantry angle (GantryAngle "
                           "(300A,011E)): the two views' gantry angles were not compared"]
    # neither names its gantry angle (DICOM files, which carry a SOPInstanceUID: an export that drops the beam's
    # attributes; arrays carry none, and their caller knows the views): nothing tells a frame taken at another angle,
    # whose shift is off by the anatomy's depth times the angle (rendered pairs 3-4 deg apart with no angle in their
    # headers were ok up to 3.0 mm off, and the images could not tell them from sound noisy pairs: session note 45)
    elif ref_angles[0] is None and (reference.sop_instance_uid or frame.sop_instance_uid):
        patient_warning = [*patient_warning, f"neither the reference ({reference.source}) nor the frame ({frame.source}) "
                           "records a gantry angle (GantryAngle (300A,011E)): the views were not compared, and a frame "
                           "taken a few degrees from its reference's beam gives a shift off by the anatomy's depth times "
                           "the angle (3 mm at 3 deg), which the match cannot tell"]
    # one image states where its beam axis lies and the other does not (taken at its centre): a panel offset, or a
    # cropped export, moves the shift by as much, and the pixels cannot tell (a hostile campaign: the handed open-field
    # frame without its RTImagePosition was ok 3.3 mm off, nothing said)
    ref_axis = ref_extra["beam_axis_source"] if "beam_axis_source" in ref_extra else None
    frame_axis = frame_extra["beam_axis_source"] if "beam_axis_source" in frame_extra else None
    if ref_axis != frame_axis and "image centre" in (ref_axis, frame_axis) and None not in (ref_axis, frame_axis):
        which, where, stated = (("frame", frame.source, ref_axis) if frame_axis == "image centre"
                                else ("reference", reference.source, frame_axis))
        patient_warning = [*patient_warning, f"the {which} ({where}) does not state where its beam axis lies "
                           f"(RTImagePosition (3002,0012), XRayImageReceptorTranslation (3002,000D)), so it is taken at "
                           f"its centre, while the other image states it ({stated}): an imager offset or a cropped export "
                           "moves the shift by as much, which the images cannot show"]
    for extra in (ref_extra, frame_extra):  # a header naming two angles for one view (rare: no call otherwise)
        if "header_contradictions" in extra:
            patient_warning = [*patient_warning, *extra["header_contradictions"]]
    if not phrases:
        return "", record, patient_warning
    text = "; ".join(phrases)
    if options.allow_view_mismatch:
        return "", record, [*patient_warning, f"the views differ ({text}); registered as asked (allow_view_mismatch)"]
    limits = []
    if len(phrases) > (1 if "sad_mm" in record["mismatch"] else 0):
        limits.append(f"{options.view_tolerance_deg:g} deg for angles")
    if "sad_mm" in record["mismatch"]:
        limits.append(f"{SAD_TOLERANCE:.0%} for source-axis distances")
    # (the tags and the likelier fix named: a new user's trial found only the override offered)
    named = ", ".join(tag_label(VIEW_TAGS[key] if key in VIEW_TAGS else EXTRA_VIEW_TAGS[key]) for key in record["mismatch"])
    reason = (f"different views: {text} (tolerance {' and '.join(limits)}); a 2-D match of different "
              f"views is not a setup error: check that the reference is this frame's beam ({named} in both headers). "
              "If this is intended, set allow_view_mismatch=True (--allow-view-mismatch)")
    return reason, record, patient_warning


def with_view_reason(error: Exception, reference: ImageInfo, frame: ImageInfo,
                     options: RegistrationOptions) -> Exception:
    """Return ``error`` (a reference that cannot be prepared for a frame) with the views' difference after it, if any.

    :func:`compare_views`' reason (another view, another patient, the images swapped) is what a registration of the
    two would have said first; an error about the reference alone (its field too small for the frame's geometry) hid
    it (a new user's trial: a frame at another gantry angle was told only of the reference's small field). The error's
    class and cause are kept; ``error`` itself where the headers show no difference.
    """
    reason, _, _ = compare_views(reference, frame, options)
    if not reason:
        return error
    added = type(error)(f"{error}; the frame is not of this reference's view either: {reason}")
    added.__cause__ = error
    return added


def common_region(reference: Image, frame: Image, frame_box_mm: list[float] | None,
                  boxes: tuple[list[float], list[float]] | None = None) -> str:
    """Return why the two images can have no anatomy in common, or ``""``.

    Both images are placed at the isocentre plane with their beam axes at the
    origin (the registration contract); the frame's footprint is its detected
    field when there is one, else the whole image. When the footprints do not
    overlap along x or y, no pose near the planned one can match anything.

    Parameters
    ----------
    reference, frame : Image
    frame_box_mm : list of float or None
        ``[x_min, x_max, y_min, y_max]`` of the frame's detected field (mm).
    boxes : (list of float, list of float), optional
        The reference's and the frame's image extents (mm, as ``frame_box_mm``) when already known (a
        plan holds them for its frame geometry).
    """
    ref_box, frame_extent = boxes if boxes is not None else (extent_box(reference), extent_box(frame))
    box = frame_box_mm if frame_box_mm is not None else frame_extent
    # min() and max() written out (b if b < a else a is min(a, b), NaN included): this runs for every frame
    overlap_x = (box[1] if box[1] < ref_box[1] else ref_box[1]) - (box[0] if box[0] > ref_box[0] else ref_box[0])
    overlap_y = (box[3] if box[3] < ref_box[3] else ref_box[3]) - (box[2] if box[2] > ref_box[2] else ref_box[2])
    if overlap_x > 0 and overlap_y > 0:
        return ""
    what = "field" if frame_box_mm is not None else "image"
    return (f"no common anatomy: at the isocentre plane the reference covers {_span(ref_box)} and the frame's {what} "
            f"{_span(box)} (mm from the beam axis); they do not overlap. Are these images of the same beam, and is "
            "the beam axis (RTImagePosition) of each right?")


def extent_box(image: Image) -> list[float]:
    """Return ``[x_min, x_max, y_min, y_max]`` (mm at the isocentre plane, from the beam axis) of an image's pixels."""
    return grid_extent(image.shape, image.spacing_mm, image.beam_axis_px)


def grid_extent(shape: tuple[int, int], spacing_mm: tuple[float, float], axis_px: tuple[float, float]) -> list[float]:
    """Return :func:`extent_box` of a pixel grid: ``shape`` (rows, cols), ``(row, col)`` spacing, beam axis (col, row)."""
    rows, cols = shape
    return [float((-0.5 - axis_px[0]) * spacing_mm[1]), float((cols - 0.5 - axis_px[0]) * spacing_mm[1]),
            float((-0.5 - axis_px[1]) * spacing_mm[0]), float((rows - 0.5 - axis_px[1]) * spacing_mm[0])]


def _span(box: list[float]) -> str:
    return f"x {box[0]:.0f}..{box[1]:.0f}, y {box[2]:.0f}..{box[3]:.0f}"


def angle_text(angle: float) -> str:
    """Return an IEC angle for people: 0.1 deg, within [0, 360) (359.987 is "0", not "360")."""
    value = round(float(angle) % 360.0, 1)
    return f"{(0.0 if value >= 360.0 else value) + 0.0:g}"
