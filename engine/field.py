"""Radiation-field detection in portal images.

An MV portal frame is dominated by the field aperture: bright inside the jaws
or MLC, almost nothing outside (1-2 % transmission). The aperture is fixed to
the gantry, not to the patient, so its edge must not drive the anatomy match;
a plain correlation of the whole image finds the field and reports no shift.

Detection works on a small pyramid level: Otsu's threshold splits the pixels
into two classes; the class that occupies most of the image border is
"outside". A field is accepted only when the split is clean (Otsu's
effectiveness ``sigma_between^2 / sigma_total^2`` high, as for a two-level
image) and the outside really surrounds it; anatomy alone (a DRR, an open
frame larger than the imager) does not pass, nor does a split into many
pieces (stripes, bones): an aperture is one connected region. The result is a threshold and a
polarity that every pyramid level can apply, plus the field's bounding box.

No field edge in the image (:func:`find_field`): when the radiation field covers the whole
panel (phantom QA images, large fields, frames cropped inside the field), the clean two-class
split that remains is an object's outline, not an aperture. Two physical facts rule such a
split out before it can mask real anatomy: the planned aperture of the RT Image's Exposure
Sequence (jaws rotated by the collimator) contains the whole image, or the image's intensity
sign is known (higher = more radiation) and the "field" found is darker than its surroundings,
i.e. it attenuates the beam instead of letting it through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
from portalign.kernels.cpu.field import (
    FLAT,
    LIVE_MIN_PIXELS,
    LIVE_MIN_SHARE,
    NOT_A_FIELD,
    dead_band,
    dead_lines,
    detect_front,
    largest_disc_diameter,
    line_candidates,
    line_means,
    line_noise,
    penumbra_extent,
    split_field,
    three_level_split,
)
from scipy import ndimage

from .image import Image

__all__ = ["BAND_NOTE", "FieldEstimate", "box_reduce", "bridge_lines", "detect_field", "find_field", "field_centre_mm",
           "field_size_mm", "field_pixels", "box_at_border", "core_extent_px", "likely_inverted", "planned_aperture_covers",
           "penumbra_extent_mm", "sample_mask", "noise_ratio", "core_box_px", "mask_core_box", "core_sides_mm",
           "core_sides_fine_mm", "border_shadow", "clear_dead_lines", "NO_FIELD", "NO_FIELD_EDGE", "PLANNED_COVERS"]

#: Minimum Otsu effectiveness for a field/outside split.
MIN_EFFECTIVENESS = 0.72
#: The outside class must cover at least this fraction of the image border.
MIN_BORDER_OUTSIDE = 0.6
#: Field area as a fraction of the image (a 1 cm SRS cone on a 40 cm imager is 0.06 %).
FIELD_AREA = (0.0005, 0.95)
#: Share of the field pixels its largest connected part must hold.
MIN_LARGEST_PART = 0.9
#: ...unless the split is this clean and its side of the field is a few (2 to MULTI_PART_MAX) large openings, each at
#: least MULTI_PART_MIN_SHARE of it and together MULTI_PART_COVER: an MLC segment whose leaf pairs close across the
#: field splits it in two or more. Such a field was found nowhere, and two portal images of it were matched whole:
#: their shared aperture placed the match at no shift, ok, 2.3-4.7 mm from the patient's (a second trial, 5 of 50
#: pairs). Their splits scored 0.89-0.96 and their openings 3-85 %; over this project's real images every other
#: split leaves at most 2.5 % beside its largest region, and the open phantom images' score 0.82-0.83.
MULTI_PART_MIN_EFFECTIVENESS = 0.86
MULTI_PART_MIN_SHARE = 0.025
MULTI_PART_COVER = 0.95
MULTI_PART_MAX = 6
#: Openings that join when their gaps narrower than this (mm, isocentre plane) are closed are one field cut by a line
#: (a dead detector row or column, a wire): a leaf is 2.5-10 mm wide at the isocentre.
MULTI_PART_MIN_GAP_MM = 2.0
#: How the note of such a field begins.
MULTI_PART_NOTE = "the radiation field has"
#: A field holding two levels of its own (air beyond the patient's skin, or lung, beside tissue: a tangential or
#: lateral field) splits at its inner step, not at its edge, and the two-level split fails (an independent trial: of 35
#: portal pairs whose field was not found, effectiveness 0.60-0.84, 19 were matched whole, their shared aperture placing
#: them at no shift, 3-7 mm off, ok). Then a three-level split (Otsu's, extended to two thresholds) is tried: the extreme
#: level that covers the image's border is the outside, the two others the field. It must split the image cleanly (this
#: share of the variance between the levels: the trial's fields 0.85-0.96)...
THREE_LEVEL_MIN_EFFECTIVENESS = 0.85
#: ...and the outside must stand apart from the field's lower level by this many of its own standard deviations (the
#: shielded outside is a narrow peak of 1-3 % of the dose: the trial's fields 9.6-19.7, 7.1-7.2 cropped 20 pixels beyond
#: the field, this project's cones and Winston-Lutz fields 11-85; a kV phantom without a field (pylinac's leeds_kv)
#: 4.3-4.7, a picket-fence image 4.0).
THREE_LEVEL_MIN_SEPARATION = 6.0
#: Histogram bins of that split (its search is over every pair of thresholds: the square of this).
THREE_LEVEL_BINS = 64
#: Fewest pixels a detected field may have on the detection level.
MIN_FIELD_PIXELS = 12
#: A detector line is dead (or hot) when it spikes away from both neighbours by this many noise sigmas...
DEAD_LINE_CONTRAST = 5.0
#: ...over at least this share of its length; at most this share of all lines are separate bands (more is a
#: striped image, not a panel's faults).
DEAD_LINE_SHARE = 0.8
DEAD_LINE_MAX_SHARE = 0.05
#: Detector lines on each side of a candidate band whose line-to-line noise confirms it (``_bridge_dead_lines``; the
#: whole image's was read before: 5 ms of a 1280 x 1280 frame's transpose alone).
CONTEXT_LINES = 32
#: Half the window (detector pixels on each side) of the outside lines' difference that is a band's noise on the
#: detector's own pixels (``kernels.cpu.field.outer_line_noise``; 4 pixels on the field-detection level).
FULL_OUTER_NOISE_HALF_WINDOW = 16
#: Widest band of adjacent dead detector lines recognised by their spike alone (two adjacent dead lines are a known
#: fault of a panel's readout; a new user's trial found two of them through a 26 mm cone taken for anatomy: 17 mm
#: off, ok).
DEAD_BAND_MAX = 2
#: A wider band (a failed gate driver or readout module leaves a block of lines dead or saturated: a 128-line module
#: is a quarter of a 512-line panel, a panel read out in two halves loses one) is recognised up to this share of the
#: image's lines (a quarter before: blocks of 30-50 % were matched as anatomy, two of them 21-26 mm off, ok, in a probe
#: of 1,152 windows of real images; at a half, 657 ok against 632 and those two right), when it starts and stops
#: sharply: its first and last lines read at least ``DEAD_BLOCK_SHARP`` as far off as its middle ones. A readout
#: fault ends at a detector line; an object's image (MLC pickets, a wire, a couch rail, a field edge) is blurred by
#: the focal spot and the detector's scatter over several pixels. Before, three or more adjacent dead rows were
#: matched: refused as "no match" (zero rows), or taken for the field (hot rows: a cone 14.8 mm off, ok).
DEAD_BLOCK_MAX_SHARE = 0.5
DEAD_BLOCK_SHARP = 0.9
#: A band of any width must also stand out of the image beside it: outside the band the image steps (from each
#: outside line to the line beyond it) by less than this share of the band's depth on one side at least. The
#: flat bottom of a blurred MLC picket is two lines deep beside lines that slope into it.
DEAD_EDGE_STEP = 0.5
#: A radiation field (jaws, MLC, cone) surrounds its beam's central axis, or passes close to it (a half-beam
#: block puts the axis on its edge): a region found farther from the axis than this that also runs off the image
#: is the patient's outline or an object (the air beside a lateral view's body), not the field. An off-axis
#: opening inside the image (an MLC aperture of a single-isocentre plan) is still a field.
MAX_FIELD_AXIS_DISTANCE_MM = 40.0
#: Outside a radiation field the detector gets 1-3 % of the dose (jaw and MLC transmission, scatter), and its
#: quantum noise is a fraction of the field's: measured on this project's real portal images (TrueBeam
#: Winston-Lutz fields, aS500 fields, stored upright or inverted) the noise inside is 7.7 to 12 times the noise
#: outside (or the outside is flat). An attenuating object in an open beam leaves both sides with dose: the
#: planar-imaging phantoms' inside/outside noise ratios are 0.74 and 1.13. A region resting on an unestablished sign
#: (dark with the sign unknown, or bright only because the user inverted the values) whose inside is less than this
#: many times as noisy as its outside is likely such an object, and the match is refused with the way out
#: (``field='none'``). It is not simply dropped: electronic noise can even out a real inverted low-dose frame's
#: two sides, and a field taken for an object would let its fixed edges pull the match towards no shift.
MIN_FIELD_NOISE_RATIO = 1.5
#: ...but a region clearly quieter than its outside receives less radiation than it (quantum noise grows with the
#: dose; electronic noise evens the two sides out, towards 1, and never makes a field's inside the quieter): an
#: attenuating object, not the field, whatever the sign; it is matched with the rest of the image, as a region found
#: darker than its surroundings in an image of known sign is. Two adversarial trials' open fields over a lateral
#: abdomen (trial53 openbig-05 and -07: the patient's outline, 0.8 times as noisy) were refused as doubted; matched
#: whole they were 0.34 and 0.24 mm off. The planar phantom of the handed open-field pair, 1.07 times, stays doubted.
OBJECT_NOISE_RATIO = 0.9
#: A region found that crosses the image from side to side (at least BAND_MIN_SPAN of it) and is at most
#: BAND_MAX_WIDTH_MM across (isocentre plane) is a stripe (an object: a wire, a rail; a detector fault), not a
#: radiation field: no aperture a registration is made through is that narrow and that long. A new user's trial
#: darkened a band of leeds_kv.dcm (pylinac) with a Gaussian profile of 2-4 pixels: it was taken for a field 2.1-4.1
#: mm across and every such frame refused ("too little of the frame is usable ... radiation field is 2.1 mm across",
#: or "no common anatomy"); matched as an image without a field edge, each came within 0.11 mm.
BAND_MAX_WIDTH_MM = 8.0
BAND_MIN_SPAN = 0.9
#: ...or that is at least this many times as long as it is wide (a band of zeros across half the image).
BAND_MIN_ELONGATION = 8.0
#: How the note of such a band begins (after ``NO_FIELD_EDGE``); the registration refuses it where the reference shows a
#: field (what was left of a 30 mm field beside a dead block, 1.3 mm wide, was taken for a band and the whole frame
#: matched 18 mm off).
BAND_NOTE = "the region found is a band"
#: A field that runs off the image and shows no wider than this (mm, the largest disc inside its visible part; the
#: width below which a long region is a band, ``BAND_MAX_WIDTH_MM``) is a sliver of a field: a window that shows only
#: a corner or the penumbra tail of a field has no field edge whose place the image fixes (a tail is a ramp, alike
#: wherever it is cut), and the image's border cuts what it has. The registration refuses a pair where either image
#: shows one (``registration._program``). Real windows (``bench.real_windows``, seeds 7 and 9, session note 32): a
#: 30 % window of an aS500 Winston-Lutz image showing its field's edge as a 5.3 mm strip along the top, the frame
#: (moved 5 mm) none of it, matched whole against that strip 5.4 mm off, ok; a TrueBeam window with a 4.5 mm corner of
#: the field in both images 2.5 mm off, ok. Matched whole instead (``field='none'``), others of the kind came back ok
#: 1.5-4.8 mm off (session note 34): the tail is still in the image, and little else. A field that shows 9.6 mm of
#: its edge along a window's border is still matched by it (a noisy TrueBeam window: 0.18 mm off). No field that a
#: registration is made through shows less of itself: a cone lies inside the image.
SLIVER_MAX_WIDTH_MM = BAND_MAX_WIDTH_MM
#: How the note of such a sliver begins (after ``NO_FIELD_EDGE``).
SLIVER_NOTE = "the region found is a sliver of a field"
#: What such a doubt says after its numbers (once, where both images are doubted: ``_program``).
FIELD_DOUBT_ADVICE = ("likely an object (a phantom) in an open beam, as a field's outside is far quieter: "
                      "use --field none (field='none') if no aperture edge is in the image, --field detect for "
                      "a very low-dose field")
#: ...and one with less than this share of its surroundings' noise has constant pixels: a dead detector block or
#: padding (a new user's trial zeroed a quarter of pylinac's pipspro.dcm: "0.0x as noisy as its surroundings; likely an
#: object (a phantom)" named the wrong cause).
CONSTANT_FIELD_NOISE_RATIO = 0.05
#: Rows of the full image sampled for that noise comparison (second differences along each row).
NOISE_RATIO_ROWS = 64


@dataclass(frozen=True, eq=False)
class FieldEstimate:
    """Where the radiation field is, as a threshold every pyramid level can apply.

    Attributes
    ----------
    detected : bool
        False: no field edge in the image (the mask is the whole image).
    threshold : float
        Intensity separating field and outside.
    field_is_bright : bool
        True when the field is above the threshold (portal convention).
    box_px : tuple of float
        ``(col_min, col_max, row_min, row_max)`` at the level it was found on.
    effectiveness : float
        Otsu's between-class share of the variance (1 = two flat levels).
    mask : numpy.ndarray or None
        The field (holes filled) on the level it was found on.
    note : str
        Why no field edge was accepted although a field/outside split was found (``""`` when nothing field-like
        was there); with a field detected, what was set aside to find it (``SET_ASIDE_NOTE``: a block at the
        image's edge that the first split took), else ``""``.
    dead_rows, dead_cols : tuple of int
        Whole detector lines (rows, columns of the level it was found on) that read far off both
        neighbours: dead or hot lines, left out of the match.
    level_shape : tuple of int or None
        Shape of the level it was found on (set with dead lines).
    doubt : str
        Why the field found is likely an attenuating object instead (a region resting on an unestablished sign,
        as noisy as its surroundings): registration refuses the match unless ``field='detect'`` (``""``: none).
    detector_rows, detector_cols : tuple of int
        The dead lines' own detector rows and columns (the image's pixel indices), where they were confirmed on
        the detector's pixels (``()`` otherwise: then every detector line of ``dead_rows`` / ``dead_cols`` counts).
    striped : str
        Why the image's detector lines cannot be left out of the match (more than ``DEAD_LINE_MAX_SHARE`` of its
        lines dead or hot as separate bands, or over ``DEAD_BLOCK_MAX_SHARE`` of them in all: a striped image, not a
        panel's isolated faults), naming the lines; registration refuses it whatever ``field`` says (``""``: none).
    """

    detected: bool
    threshold: float = 0.0
    field_is_bright: bool = True
    box_px: tuple[float, float, float, float] | None = None
    effectiveness: float = 0.0
    mask: np.ndarray | None = None
    note: str = ""
    dead_rows: tuple[int, ...] = ()
    dead_cols: tuple[int, ...] = ()
    level_shape: tuple[int, int] | None = None
    doubt: str = ""
    detector_rows: tuple[int, ...] = ()
    detector_cols: tuple[int, ...] = ()
    striped: str = ""


NO_FIELD = FieldEstimate(detected=False)
#: Start of every note saying that the image shows no aperture edge.
NO_FIELD_EDGE = "no field edge in the image"
#: How the reason of :func:`planned_aperture_covers` begins (a frame whose header says that no field edge is in it).
PLANNED_COVERS = "the planned field"
#: Start of the note of a field found beside a region set aside (:func:`_field_beside`): a warning of the match.
SET_ASIDE_NOTE = "a region"


def find_field(image: Image, small: np.ndarray, *, thorough: bool = False,
               candidates: Candidates | None = None) -> FieldEstimate:
    """Find the radiation field of ``image`` on its small pyramid level, or say why there is no field edge.

    Parameters
    ----------
    image : Image
        The full image: its planned aperture (``info.extra["planned_field_corners_mm"]``, mm at the
        isocentre plane in the image frame) and its intensity sign (``info.extra["intensity_sign_reason"]``)
        are read.
    small : numpy.ndarray
        ``image`` box-reduced to a few thousand pixels (what :func:`detect_field` works on).
    thorough : bool
        Also look for dead lines on the detector's own lines (a reference, prepared once: see
        :func:`detect_field`).
    candidates : Candidates, optional
        What the screen of the detector's own line means took up already (a frame's, from its pyramid:
        :func:`line_screen`); with them the detector's lines are looked at as ``thorough`` does.

    Returns
    -------
    FieldEstimate
        ``detected=False`` with a ``note`` starting with ``"no field edge in the image"`` when the planned
        aperture covers the image or the only split found is an attenuating object.
    """
    covers = planned_aperture_covers(image)
    if covers:
        return replace(dead_lines_only(image, small, thorough=thorough, candidates=candidates),
                       note=f"{NO_FIELD_EDGE}: {covers}; the whole image is matched")
    # (every estimate made of ``field`` below keeps its dead lines and ``striped``)
    field = detect_field(small, image.pixels, thorough=thorough, candidates=candidates)
    if field.detected and field.note.startswith(MULTI_PART_NOTE) and _thin_split(image, field):
        # one field cut by thin lines (a dead line, a wire; or a closed leaf pair whose soft edges leave only a thin
        # dip below the threshold): still the field, with those lines left out as its edges, not openings. Dropped
        # before, it left two portal images of an MLC field with a closed pair to be matched whole, their shared
        # aperture placing them at no shift (an independent trial: 3.8-4.9 mm off, ok). Closing the lines instead put
        # a soft closed pair's edges back into the match (2-3 mm off, ok)
        field = replace(field, note="")
    box = field.box_px
    # every frame with a field comes here: the pixel test of _band_across_mm first, written out (no call per frame)
    if field.detected and box is not None and (
            box[1] - box[0] + 1 >= BAND_MIN_SPAN * small.shape[1] or box[3] - box[2] + 1 >= BAND_MIN_SPAN * small.shape[0]
            or box[1] - box[0] + 1 >= BAND_MIN_ELONGATION * (box[3] - box[2] + 1)
            or box[3] - box[2] + 1 >= BAND_MIN_ELONGATION * (box[1] - box[0] + 1)):
        width = _band_across_mm(image, small, field)
    else:
        width = None
    if width is not None:
        return _a_band(field, width)
    # the border test first: it is cheap, and the distance is only needed for a region that runs off the image
    if _touches_border(field):
        away = _distance_from_axis_mm(image, small, field)
        if away > MAX_FIELD_AXIS_DISTANCE_MM:
            beside = _field_beside(image, small, field)
            if beside is None:
                return _or_past_panel(image, small, _not_the_field(
                    field, f"the region found lies {away:.0f} mm from the beam axis, and a radiation field surrounds "
                           "its central axis, so it is the patient's outline or an object (air beside the body)"))
            field = replace(beside, note=f"{SET_ASIDE_NOTE} at the image's edge {away:.0f} mm from the beam axis (an "
                                         "object, a detector block) was set aside, and the radiation field found "
                                         "around the axis used")
        else:
            width = _oblique_band_mm(image, small, field)  # a wire or stripe across the image at an angle
            if width is not None:
                return _a_band(field, width)
        sliver = _border_sliver_mm(image, small, field)
        if sliver is not None:  # no field to match by, nor a whole image to match instead: the registration refuses
            return replace(NO_FIELD, effectiveness=field.effectiveness, **_lines_of(field),
                           note=f"{NO_FIELD_EDGE}: {SLIVER_NOTE} {sliver:.1f} mm wide at the image's edge (the rest of "
                                "it off the image)")
    if field.detected and not field.field_is_bright and _radiation_is_bright(image):
        return _or_past_panel(image, small, _not_the_field(
            field, "the region found is darker than its surroundings in an image whose higher values mean more "
                   "radiation, so it is an attenuating object (a phantom's outline), not the radiation field; or the "
                   "pixel values are inverted (check --invert: given wrongly, or needed)"))
    if field.detected and _sign_in_doubt(image, field):
        # an inverted image's field, or an object in an open beam? The dose hints, by its noise
        ratio = noise_ratio(image.pixels, field.mask)
        if ratio is not None and ratio < CONSTANT_FIELD_NOISE_RATIO:  # no noise at all: not an image of anything
            return replace(field, doubt=(
                f"{image.info.source}: the region taken for the radiation field has constant pixels (no noise at all: "
                "a dead detector block, or padding), so it is not a field; check the frame, or use --field none "
                "(field='none') to match the whole image, the block included"))
        if ratio is not None and ratio < OBJECT_NOISE_RATIO:
            return _or_past_panel(image, small, _not_the_field(
                field, f"the region found is {ratio:.1f}x as noisy as its surroundings: it receives less radiation "
                       "than they do, so it is an attenuating object in an open beam (a phantom, the patient's "
                       "outline), not the radiation field, whose inside receives more"))
        if ratio is not None and ratio < MIN_FIELD_NOISE_RATIO:
            return replace(field, doubt=(
                f"{image.info.source}: the region taken for the radiation field is {ratio:.1f}x as noisy as its "
                f"surroundings; {FIELD_DOUBT_ADVICE}"))
    return field if field.detected else _or_past_panel(image, small, field)


#: A pixel of a portal image's field-detection level at or under this share of the image's 99th percentile is
#: shielded, outside the radiation field (1-5 % transmission through jaws and leaves; the thickest anatomy of lateral
#: MV renders through the thorax and abdomen CTs, open fields, passed 12.5-15 % of their air).
SHADOW_SHARE = 0.08
#: A shielded region along the image's border (:func:`_field_past_the_panel`) covering this share of the image...
SHADOW_AREA = (0.02, 0.5)
#: ...in at most this many regions (a jaw or two on each side), the rest of the image one region holding this share of it.
SHADOW_MAX_PARTS = 4
SHADOW_FIELD_SHARE = 0.95
#: Note of a field found by its shadow (:func:`_field_past_the_panel`).
PAST_PANEL_NOTE = "the radiation field is larger than the panel"


def clear_dead_lines(mask: np.ndarray, field: FieldEstimate | None) -> np.ndarray:
    """Set ``field``'s dead detector lines (``dead_rows``, ``dead_cols``) False in ``mask`` of its level; return it.

    ``mask`` is changed in place where it has the shape of the level the lines were found on (``level_shape``).
    """
    if field is not None and (field.dead_rows or field.dead_cols) and field.level_shape == mask.shape:
        mask[list(field.dead_rows), :] = False
        mask[:, list(field.dead_cols)] = False
    return mask


def border_shadow(values: np.ndarray, field: FieldEstimate | None = None) -> tuple[np.ndarray, float] | None:
    """Return the shielded regions along an image's border and the level under which a pixel is shielded.

    ``values``: a portal image's field-detection level. Shielded: at or under ``SHADOW_SHARE`` of its 99th
    percentile; the regions kept are those touching the border, ``SHADOW_AREA`` of the image in all (None
    otherwise). ``field``'s dead detector lines (:func:`clear_dead_lines`) are not shadow. Read by
    :func:`_field_past_the_panel` and by the registration's shared-shadow check of two portal images.
    """
    top = float(np.percentile(values, 99.0))
    if not top > 0.0:
        return None
    threshold = SHADOW_SHARE * top
    labels, count = ndimage.label(clear_dead_lines(values <= threshold, field))
    if count == 0:
        return None
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    shadow = np.isin(labels, edge[edge > 0])
    if not SHADOW_AREA[0] <= float(shadow.mean()) <= SHADOW_AREA[1]:
        return None
    return shadow, threshold


def _or_past_panel(image: Image, small: np.ndarray, field: FieldEstimate) -> FieldEstimate:
    """Return ``field`` (none found), or a portal image's field larger than the panel (:func:`_field_past_the_panel`)."""
    if field.striped or image.info.kind != "portal":
        return field
    shadow = _field_past_the_panel(image, small, field)
    return field if shadow is None else shadow


def _field_past_the_panel(image: Image, small: np.ndarray, field: FieldEstimate) -> FieldEstimate | None:
    """Return the field of a portal image whose field is larger than the panel, one or two of its edges crossing it.

    The field's split needs the outside along most of the image's border (``MIN_BORDER_OUTSIDE``), so such a field
    was not found: both images of a portal pair were matched whole, and the edge, fixed to the beam, pulled the match
    towards no shift (an independent trial: 2.5-3.9 mm off, ok; refused since, whatever the anatomy said: a later
    trial's clipped 273 x 374 and 281 x 296 mm fields, 0.07 and 0.58 mm off when accepted). The outside here is what
    a portal image cannot show inside a field: pixels at or under ``SHADOW_SHARE`` of the image's 99th percentile, in
    regions along the border (``SHADOW_AREA`` of the image in all), the beam axis in the field (a radiation field
    surrounds its central axis). ``small``: the field-detection level; dead detector lines found are kept and are not
    shadow. None where there is no such shadow. The image's sign need not be established (the real RT Images of
    ``../shared`` state none): an inverted image's field is the dark part, and holds the beam axis, which the outside
    found here may not.
    """
    values = np.asarray(small, dtype=np.float64)
    found = border_shadow(values, field)  # a dead line is dark along the whole image: not a shadow
    if found is None:
        return None
    shadow, threshold = found
    inside = ~shadow
    factor = _level_factor(image.shape[0], values.shape[0])
    r = int(round((image.beam_axis_px[1] - (factor - 1) / 2) / factor))
    c = int(round((image.beam_axis_px[0] - (factor - 1) / 2) / factor))
    if not (0 <= r < inside.shape[0] and 0 <= c < inside.shape[1] and inside[r, c]):
        return None
    part, parts = ndimage.label(inside)
    mask = part == part[r, c]
    if np.count_nonzero(shadow) and (ndimage.label(shadow)[1] > SHADOW_MAX_PARTS
                                     or np.count_nonzero(mask) < SHADOW_FIELD_SHARE * np.count_nonzero(inside)):
        # a field past the panel leaves one region, the jaws' shadows one along each side they cross: dark stripes
        # (a phantom's bars, a grid) leave the bright between them in pieces, none of them the field
        return None
    rows, cols = np.nonzero(mask)
    box = (float(cols.min()), float(cols.max()), float(rows.min()), float(rows.max()))
    return FieldEstimate(True, threshold, True, box, field.effectiveness, mask,
                         note=f"{PAST_PANEL_NOTE}: its edge crosses the image, the rest of it off the panel",
                         **{k: v for k, v in _lines_of(field).items() if k != "level_shape"},
                         level_shape=field.level_shape)


def dead_lines_only(image: Image, small: np.ndarray, *, thorough: bool = False,
                    candidates: Candidates | None = None) -> FieldEstimate:
    """Return no field, with ``image``'s dead detector lines (for ``field="none"``: no field looked for).

    A dead line reads far off its neighbours whether or not the field is looked for: it is left out of the
    match (and its zeros out of the frame's contrast over noise) all the same. ``small`` as for
    :func:`find_field`. Before, with ``--field none`` two dead rows were matched as anatomy and raised a noisy
    frame's contrast over noise fourfold (a new user's trial: 48.9 -> 194.8 on leeds_kv at 6 % noise).
    """
    lines = _bridge_dead_lines(np.asarray(small, dtype=np.float64), image.pixels,
                               _detector_candidates(image.pixels) if thorough else candidates)
    if not lines.rows and not lines.cols and not lines.striped:
        return NO_FIELD
    return FieldEstimate(detected=False, level_shape=np.shape(small), **lines.found())


def _sign_in_doubt(image: Image, field: FieldEstimate) -> bool:
    """Whether the field found rests on a sign nobody established.

    A dark region of an image of unknown sign, or a bright one only because the user inverted the values (in a
    new user's trial ``info`` said "likely inverted", ``--invert`` turned a phantom's outline into a bright
    "field", and the shift came out 0.49 mm off, ok).
    """
    extra = image.info.extra
    reason = str((extra["intensity_sign_reason"] if "intensity_sign_reason" in extra else None) or "")
    if field.field_is_bright:
        return reason == "invert=True"
    return not _radiation_is_bright(image)


def noise_ratio(pixels: np.ndarray, mask: np.ndarray | None) -> float | None:
    """Return the noise inside ``mask`` over the noise outside it, at the detector's own pixels (None: unknown).

    Parameters
    ----------
    pixels : numpy.ndarray
        The full image (rows, cols).
    mask : numpy.ndarray of bool or None
        The region on a box-reduced level of ``pixels`` (a power-of-two factor per axis).

    Notes
    -----
    Noise is the robust (median absolute deviation) spread of second differences along rows, which cancel
    smooth anatomy and keep white noise; :data:`NOISE_RATIO_ROWS` rows are sampled, and the pixels within two
    reduced pixels of the region's edge (its penumbra) are left out on both sides. None where either side
    has fewer than 500 such samples or shows no noise at all.
    """
    if mask is None or mask.ndim != 2 or min(mask.shape) < 8:
        return None
    rows, cols = pixels.shape
    factor = _level_factor(rows, mask.shape[0])
    inner = ndimage.binary_erosion(mask, iterations=2)
    outer = ndimage.binary_erosion(~mask, iterations=2, border_value=1)
    sampled = np.arange(0, rows, max(1, rows // NOISE_RATIO_ROWS))
    values = pixels[sampled].astype(np.float64)
    second = values[:, 2:] - 2.0 * values[:, 1:-1] + values[:, :-2]
    r = np.minimum(sampled // factor, mask.shape[0] - 1)
    c = np.minimum(np.arange(1, cols - 1) // factor, mask.shape[1] - 1)
    spreads = []
    for side in (inner, outer):
        chosen = second[side[r][:, c]]
        if chosen.size < 500:
            return None
        spreads.append(float(np.median(np.abs(chosen - np.median(chosen)))))
    if spreads[1] <= 0.0:
        return None if spreads[0] <= 0.0 else math.inf
    return spreads[0] / spreads[1]


def likely_inverted(image: Image, small: np.ndarray | None = None, field: FieldEstimate | None = None) -> bool | None:
    """Whether a portal image's values are likely inverted: its radiation field is darker than its surroundings.

    A portal image shows the field bright (more radiation reached the imager). A dark field means inverted
    values, unless the planned jaws cover the image (the dark region is then an object in the field, a phantom)
    or the dark region is as noisy as its surroundings (an object in an open beam: the detection's doubt).
    ``portalign info`` and ``fieldcheck`` say "try --invert" when it is. ``small`` (``box_reduce(pixels, 256)``)
    and ``field`` (``find_field`` on it) are made here unless the caller has them already.

    Returns
    -------
    bool or None
        True: a field darker than its surroundings; False: a field brighter than them; None: not judged, where no
        field edge is found either way (a field covering the image, a picket fence's narrow pickets: an Elekta
        iView picket fence, stored inverted, was said False) or the image is not a portal image.
    """
    if image.info.kind != "portal":
        return None
    if small is None:
        small, _ = box_reduce(image.pixels, 256)
    if field is None:
        field = find_field(image, small)  # as registration finds it: planned jaws and intensity sign taken into account
    if field.detected:
        return bool(not field.field_is_bright and not field.doubt)
    if planned_aperture_covers(image):
        return None  # the field covers the image: no edge to judge by
    found = detect_field(small)  # registration took a dark region for an object: it may be an inverted field
    if not found.detected:
        return None
    return bool(not found.field_is_bright and not field.doubt)


def planned_aperture_covers(image: Image) -> str:
    """Say whether the planned jaws contain the whole image (then no field edge can be in it); ``""`` if not.

    The aperture is the polygon ``info.extra["planned_field_corners_mm"]`` (the RT Image's Exposure
    Sequence jaws, turned by the collimator angle, mm at the isocentre plane relative to the beam axis).
    An image with a planned MLC (``planned_mlc``) is never said to be covered: its leaves may cut the
    field inside the jaws. Returns the reason, naming the jaws, when every image corner is inside.
    """
    extra = image.info.extra
    # membership tests, not .get: this runs for every frame
    corners = extra["planned_field_corners_mm"] if "planned_field_corners_mm" in extra else None
    if not corners or extra.get("planned_mlc") or len(corners) < 3:
        return ""
    polygon = np.asarray(corners, dtype=np.float64)
    if polygon.shape[1:] != (2,) or not np.all(np.isfinite(polygon)):
        return ""
    rows, cols = image.shape
    x, y = image.pixel_to_mm(np.array([-0.5, cols - 0.5, cols - 0.5, -0.5]), np.array([-0.5, -0.5, rows - 0.5, rows - 0.5]))
    if not all(_inside_convex(polygon, px, py) for px, py in zip(x, y, strict=True)):
        return ""
    jaws = extra.get("planned_jaws_mm") or {}
    named = ", ".join(f"{k} {jaws[k]:+.0f}" for k in ("x1", "x2", "y1", "y2") if k in jaws)
    return f"{PLANNED_COVERS} (jaws {named} mm) covers the whole image" if named else \
        f"{PLANNED_COVERS} covers the whole image"


def _inside_convex(polygon: np.ndarray, x: float, y: float) -> bool:
    """Whether ``(x, y)`` lies inside (or on) a convex polygon given in either winding order."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    cross = edges[:, 0] * (y - polygon[:, 1]) - edges[:, 1] * (x - polygon[:, 0])
    return bool(np.all(cross >= -1e-9) or np.all(cross <= 1e-9))


def _not_the_field(found: FieldEstimate, why: str) -> FieldEstimate:
    """No field edge: the region ``found`` is not the radiation field (``why``); its dead lines and statistics kept."""
    return replace(NO_FIELD, effectiveness=found.effectiveness, note=f"{NO_FIELD_EDGE}: {why}; the whole image is matched",
                   **_lines_of(found))


def _lines_of(field: FieldEstimate) -> dict[str, Any]:
    """Return ``field``'s dead-line attributes (what an estimate made of it keeps)."""
    return {"dead_rows": field.dead_rows, "dead_cols": field.dead_cols, "level_shape": field.level_shape,
            "detector_rows": field.detector_rows, "detector_cols": field.detector_cols, "striped": field.striped}


def _field_beside(image: Image, small: np.ndarray, rejected: FieldEstimate) -> FieldEstimate | None:
    """Find the radiation field once a region ``rejected`` (off the axis, running off the image) is set aside.

    Otsu's split takes the most extreme class: a block darker than the field (a dead or saturated detector area,
    a lead marker at the border) puts the field in with its surroundings. With the block's pixels given the median
    of the rest, the split is made again; the field it finds must pass the same tests as a first one (one region,
    clean, surrounded by its outside), hold the beam axis, and not be a band. None where no such field is there
    (an open frame: its object's outline alone). A new user's trial put dark blocks at the edge of aS500
    Winston-Lutz windows (a 20 mm field): the whole frame met the reference's field, 5.5-14 mm off, ok.
    """
    region = rejected.mask
    if region is None or region.shape != small.shape:
        return None
    # with the ring of pixels that the box reduction mixed from the region and its surroundings: left in, that ring
    # is an opening of its own to a three-level split
    region = ndimage.binary_dilation(region)
    rest = small[~region]
    if rest.size == 0:
        return None
    work = np.array(small, dtype=np.float64)
    work[region] = np.median(rest)
    found = _detect(work)
    if not found.detected or _distance_from_axis_mm(image, small, found) > 0.0:
        return None
    if _band_across_mm(image, small, found) is not None:
        return None
    return replace(found, **_lines_of(rejected))


def _a_band(found: FieldEstimate, width_mm: float) -> FieldEstimate:
    """No field edge: the region ``found`` is a band ``width_mm`` wide, a stripe (``BAND_*``, ``BAND_NOTE``)."""
    return _not_the_field(found, f"{BAND_NOTE} {width_mm:.1f} mm wide and far longer, and no aperture is that narrow "
                                 "and that long, so it is a stripe (an object, a detector fault)")


def _band_across_mm(image: Image, small: np.ndarray, field: FieldEstimate) -> float | None:
    """Width (mm) of a detected field that is a narrow band, across the image or long (``BAND_*``); None otherwise.

    ``small`` is ``image`` box-reduced by a whole factor (the field's level); the width is the bounding box's
    (``field.box_px``) across the band, in that level's pixels times its spacing. :func:`find_field` calls it only
    for a box that is a band by its pixels (the same rules, in level pixels: no call for the usual field).
    """
    if not field.detected or field.box_px is None:
        return None
    rows, cols = small.shape
    c0, c1, r0, r1 = field.box_px
    across, down = c1 - c0 + 1, r1 - r0 + 1
    factor = _level_factor(image.shape[0], rows)
    height, width = down * image.spacing_mm[0] * factor, across * image.spacing_mm[1] * factor
    if height <= BAND_MAX_WIDTH_MM and (across >= BAND_MIN_SPAN * cols or width >= BAND_MIN_ELONGATION * height):
        return float(height)
    if width <= BAND_MAX_WIDTH_MM and (down >= BAND_MIN_SPAN * rows or height >= BAND_MIN_ELONGATION * width):
        return float(width)
    return None


def _border_sliver_mm(image: Image, small: np.ndarray, field: FieldEstimate) -> float | None:
    """Width (mm) of a detected field that runs off the image and shows only a sliver of itself; None otherwise.

    The width is the diameter of the largest disc inside its visible part (:func:`field_size_mm`, on ``small``, the
    field's level); a sliver is narrower than ``SLIVER_MAX_WIDTH_MM``. :func:`find_field` calls it only for a field
    that touches the image's border.
    """
    if not _touches_border(field):
        return None
    factor = _level_factor(image.shape[0], small.shape[0])
    width = field_size_mm(field, (image.spacing_mm[0] * factor, image.spacing_mm[1] * factor))
    return None if width is None or width >= SLIVER_MAX_WIDTH_MM else float(width)


def _oblique_band_mm(image: Image, small: np.ndarray, field: FieldEstimate) -> float | None:
    """Width (mm) of a detected field that is a narrow band at any angle (``BAND_*``); None otherwise.

    For a region that runs off the image (a wire across it at an angle: its bounding box is not narrow). The width
    is the diameter of the largest disc inside the region (:func:`field_size_mm`), the length its area over that
    width. Only a region that fills less than half its bounding box is measured (one sum; a field fills most of it).
    """
    if not field.detected or field.mask is None or field.box_px is None:
        return None
    c0, c1, r0, r1 = field.box_px
    area = float(np.count_nonzero(field.mask))
    if area >= 0.5 * (c1 - c0 + 1) * (r1 - r0 + 1):
        return None
    factor = _level_factor(image.shape[0], small.shape[0])
    spacing = (image.spacing_mm[0] * factor, image.spacing_mm[1] * factor)
    width = field_size_mm(field, spacing)
    if width is None or width > BAND_MAX_WIDTH_MM or area * spacing[0] * spacing[1] < BAND_MIN_ELONGATION * width**2:
        return None
    return float(width)


def _distance_from_axis_mm(image: Image, small: np.ndarray, field: FieldEstimate) -> float:
    """Distance (mm, isocentre plane) from the beam axis to the nearest pixel of a detected field; 0 if it holds it.

    ``small`` is ``image`` box-reduced by a whole factor (the field's level). 0 as well without a field.
    """
    if not field.detected or field.mask is None:
        return 0.0
    factor = _level_factor(image.shape[0], small.shape[0])
    # level pixel i covers original pixels f i .. f i + f - 1: the axis at (axis - (f - 1) / 2) / f
    ax = (image.beam_axis_px[0] - (factor - 1) / 2) / factor
    ay = (image.beam_axis_px[1] - (factor - 1) / 2) / factor
    rows, cols = field.mask.shape
    r, c = int(round(ay)), int(round(ax))
    if 0 <= r < rows and 0 <= c < cols and field.mask[r, c]:
        return 0.0
    fr, fc = np.nonzero(field.mask)
    sy, sx = image.spacing_mm[0] * factor, image.spacing_mm[1] * factor
    return float(np.sqrt(((fr - ay) * sy) ** 2 + ((fc - ax) * sx) ** 2).min())


def _level_factor(image_rows: int, level_rows: int) -> int:
    """Pixels of the image per pixel of its box-reduced level (a power of two; the level's rows were floored)."""
    return max(1, 2 ** round(math.log2(max(image_rows / level_rows, 1.0))))


def _touches_border(field: FieldEstimate) -> bool:
    """Whether a detected field's bounding box reaches the edge of the image it was found on."""
    if not field.detected or field.box_px is None or field.mask is None:
        return False
    c0, c1, r0, r1 = field.box_px
    rows, cols = field.mask.shape
    return c0 <= 0 or r0 <= 0 or c1 >= cols - 1 or r1 >= rows - 1


def _radiation_is_bright(image: Image) -> bool:
    """Whether the loader established that higher values mean more radiation (a sign tag, a known encoding)."""
    extra = image.info.extra
    reason = str((extra["intensity_sign_reason"] if "intensity_sign_reason" in extra else None) or "")
    return bool(reason) and not reason.startswith("no PixelIntensityRelationshipSign")


def box_reduce(pixels: np.ndarray, max_pixels: int) -> tuple[np.ndarray, int]:
    """Box-average by powers of two until the larger side is at most ``max_pixels`` (field detection's small level).

    Returns the float64 image and the factor (pixels of ``pixels`` per pixel of the result, per axis). Stops
    before a side falls under 32 pixels.
    """
    img = pixels.astype(np.float64)
    factor = 1
    while max(img.shape) > max_pixels and min(img.shape) >= 32:
        r, c = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        img = 0.25 * (img[0:r:2, 0:c:2] + img[1:r:2, 0:c:2] + img[0:r:2, 1:c:2] + img[1:r:2, 1:c:2])
        factor *= 2
    return img, factor


def detect_field(image: np.ndarray, full: np.ndarray | None = None, *, thorough: bool = False,
                 candidates: Candidates | None = None) -> FieldEstimate:
    """Find the radiation field in a (small) image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float array, ideally a coarse pyramid level (a few thousand pixels).
    full : numpy.ndarray, optional
        The image at the detector's own pixels that ``image`` was box-reduced from: dead detector
        lines are confirmed there (one pixel wide).
    thorough : bool
        With ``full``, also screen the detector's own lines for dead ones (``_detector_candidates``), not
        only the reduced lines: a reference, prepared once. Dead lines scattered over a tenth of a fine
        panel's rows leave every reduced line of a factor of 8 as low as the next, and the reduced screen
        sees none (a new user's hostile reference, 40 % of its rows dead: matched as it was, 0.68 mm off, ok).
    candidates : Candidates, optional
        With ``full``: that screen's outcome, made already (:func:`line_screen` of a frame's line means).

    Returns
    -------
    FieldEstimate
        ``detected=False`` when no clean field/outside split exists. Dead detector lines found on the
        way are in ``dead_rows`` / ``dead_cols`` whether or not a field was found.
    """
    small = image if type(image) is np.ndarray else np.asarray(image)
    if small.dtype != np.float32:
        small = np.asarray(small, dtype=np.float64)
    # the usual case, no dead line, in one compiled call: this runs on every frame
    mask = np.empty(small.shape, dtype=np.uint8)
    box = np.zeros(4)
    dead, code, threshold, effectiveness, bright, three = detect_front(
        small, DEAD_LINE_CONTRAST, DEAD_LINE_SHARE, 0.0 if full is None else DEAD_BLOCK_MAX_SHARE,
        MIN_EFFECTIVENESS, MIN_BORDER_OUTSIDE, FIELD_AREA[0], FIELD_AREA[1],
        MIN_FIELD_PIXELS, MIN_LARGEST_PART, mask, box, THREE_LEVEL_BINS, full is not None)
    if full is None:
        candidates = None
    elif thorough:
        candidates = _detector_candidates(full)
    if not dead and not (candidates and (candidates.rows.size or candidates.cols.size or candidates.interlaced)):
        return _estimate(code, threshold, effectiveness, bright, mask, box, small, three)
    lines = _bridge_dead_lines(np.asarray(image, dtype=np.float64), full, candidates)
    found = _detect(lines.values)
    if lines.rows or lines.cols or lines.striped:
        found = replace(found, level_shape=lines.values.shape, **lines.found())
    return found


def _detect(values: np.ndarray) -> FieldEstimate:
    """Otsu split, border, area and one-aperture tests, holes filled (one compiled call: ``split_field``)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    mask = np.empty(values.shape, dtype=np.uint8)
    box = np.zeros(4)
    code, threshold, effectiveness, field_is_bright = split_field(
        values, MIN_EFFECTIVENESS, MIN_BORDER_OUTSIDE, FIELD_AREA[0], FIELD_AREA[1], MIN_FIELD_PIXELS,
        MIN_LARGEST_PART, mask, box)
    return _estimate(code, threshold, effectiveness, field_is_bright, mask, box, values)


def _estimate(code: int, threshold: float, effectiveness: float, field_is_bright: bool, mask: np.ndarray,
              box: np.ndarray, values: np.ndarray, three: tuple | None = None) -> FieldEstimate:
    """Return the :class:`FieldEstimate` of a ``split_field`` outcome (``mask``, uint8, is handed over: a fresh buffer).

    ``values`` is the image that was split: where the two-level split found no field, a three-level one is tried.
    ``three``: ``three_level_split`` of ``values`` with the field found, where ``detect_front`` made it already.
    """
    if code == FLAT:
        return NO_FIELD
    if code == NOT_A_FIELD:
        if effectiveness >= MULTI_PART_MIN_EFFECTIVENESS:  # rare: a clean split of a few large openings?
            parts = _openings(mask.view(np.bool_), threshold, effectiveness, field_is_bright)
            if parts is not None:
                return parts
        three = _three_levels(values)  # a field holding air or lung as well as tissue?
        if three is not None:
            return three
        return FieldEstimate(detected=False, effectiveness=float(effectiveness))
    found = FieldEstimate(True, float(threshold), bool(field_is_bright), (float(box[0]), float(box[1]), float(box[2]),
                          float(box[3])), float(effectiveness), mask.view(np.bool_))
    # air beyond the skin inside the field: the two levels' field may be its top level alone (one compiled call here)
    split = three if three is not None else three_level_split(values, THREE_LEVEL_BINS, mask)
    if split[4] >= 1.5 * split[6] and split[2] == field_is_bright:  # rare
        return _wider_field(values, found, split)
    return found


#: No field found yet (``three_level_split``'s ``found``).
_NOTHING = np.zeros((1, 1), dtype=np.uint8)


def _wider_field(values: np.ndarray, found: FieldEstimate, split: tuple) -> FieldEstimate:
    """Return the field of a three-level split (``split``) where it holds ``found``; else ``found``.

    A field whose brightest part is air (beyond the patient's skin) can split at the skin: the air is then taken for
    the field and the tissue beside it for the outside. Where a clean three-level split's field is one region, half as
    large again as ``found``, and holds nine tenths of it, that field is taken.
    """
    wider = _three_levels(values, split)
    # one region only: a block beside the field (a dead detector area, a marker) with the field would be two openings,
    # and a block at the image's edge is set aside by find_field instead
    if (wider is None or wider.mask is None or wider.note
            or np.count_nonzero(wider.mask & found.mask) < 0.9 * split[6]):
        return found
    return wider


def _three_levels(values: np.ndarray, split: tuple | None = None) -> FieldEstimate | None:
    """Return the field of a three-level split (``THREE_LEVEL_*``), or None where it is not a clean field.

    ``split`` is :func:`~portalign.kernels.cpu.field.three_level_split`'s outcome when made already. The outside is
    the extreme level covering more of the border; the tests of ``split_field`` (border, area, size, one region)
    apply, and a field of a few openings is ``_openings``'s.
    """
    effectiveness, threshold, field_is_bright, on_border, count, separation, _ = (
        split if split is not None else three_level_split(values, THREE_LEVEL_BINS, _NOTHING))
    if (effectiveness < THREE_LEVEL_MIN_EFFECTIVENESS or separation < THREE_LEVEL_MIN_SEPARATION
            or on_border < MIN_BORDER_OUTSIDE or count < MIN_FIELD_PIXELS
            or not FIELD_AREA[0] <= count / values.size <= FIELD_AREA[1]):
        return None
    inside = (values >= threshold) if field_is_bright else (values < threshold)
    labels, _ = ndimage.label(inside)
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < MIN_LARGEST_PART * count:
        return _openings(inside, threshold, effectiveness, bool(field_is_bright))
    return _field_of(ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1), threshold, bool(field_is_bright),
                     effectiveness)


def _field_of(mask: np.ndarray, threshold: float, field_is_bright: bool, effectiveness: float,
              note: str = "") -> FieldEstimate:
    """Return the detected field whose region is ``mask`` (bool, not empty), its box read from it."""
    r, c = np.nonzero(mask)
    return FieldEstimate(True, float(threshold), bool(field_is_bright),
                         (float(c.min()), float(c.max()), float(r.min()), float(r.max())), float(effectiveness), mask,
                         note=note)


def field_pixels(pixels: np.ndarray, field: FieldEstimate) -> np.ndarray:
    """Return where ``pixels`` (any level, or the detector's own) lie on the field's side of its threshold (bool)."""
    return (pixels > field.threshold) if field.field_is_bright else (pixels < field.threshold)


def _thin_split(image: Image, field: FieldEstimate) -> bool:
    """Whether a field of several openings is one field cut by thin lines (a dead row or column, a wire).

    At the detector's own pixels the openings, closed by a disc ``MULTI_PART_MIN_GAP_MM`` across (isocentre plane),
    join into one: what separates them is narrower than any leaf (a dead line through a 26 mm cone split it in four),
    or they meet through such a line.
    """
    inside = field_pixels(image.pixels, field)
    radius = max(1, int(round(0.5 * MULTI_PART_MIN_GAP_MM / min(image.spacing_mm))))
    disc = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    closed = ndimage.binary_closing(inside, structure=disc, border_value=0)
    labels, _ = ndimage.label(closed)
    sizes = np.bincount(labels.ravel())[1:]
    return int(np.count_nonzero(sizes >= MULTI_PART_MIN_SHARE * max(int(sizes.sum()), 1))) < 2


def _openings(inside: np.ndarray, threshold: float, effectiveness: float, field_is_bright: bool) -> FieldEstimate | None:
    """Return the field of an aperture of a few openings (``MULTI_PART_*``): their union; None if it is not one.

    ``inside`` is the field side of a clean split (``split_field``'s mask, every pixel past the threshold) that the
    one-region rule refused. Border, area and size are checked as ``split_field`` does; the openings' holes are
    filled (background reached from the border, 4-connected, is outside).
    """
    count = int(np.count_nonzero(inside))
    border = np.concatenate((inside[0], inside[-1], inside[1:-1, 0], inside[1:-1, -1]))
    if (count < MIN_FIELD_PIXELS or not FIELD_AREA[0] <= count / inside.size <= FIELD_AREA[1]
            or 1.0 - float(border.mean()) < MIN_BORDER_OUTSIDE):
        return None
    labels, _ = ndimage.label(inside)
    sizes = np.bincount(labels.ravel())[1:]
    large = np.flatnonzero(sizes >= MULTI_PART_MIN_SHARE * count)
    if not 2 <= large.size <= MULTI_PART_MAX or sizes[large].sum() < MULTI_PART_COVER * count:
        return None
    note = (f"{MULTI_PART_NOTE} {large.size} openings (leaf pairs closed across it, or blocks): their union is "
            "the field, and the edges of each are left out of the match")
    return _field_of(ndimage.binary_fill_holes(np.isin(labels, large + 1)), threshold, field_is_bright, effectiveness,
                     note)


def penumbra_extent_mm(image: np.ndarray, field: FieldEstimate, spacing_mm: float, *, reach_mm: float = 15.0) -> float:
    """How far inside the field edge (mm from the 50 % line) the penumbra still shows.

    The field's edge gradient fades into the anatomy over the penumbra's tail (an
    MV penumbra is 3-8 mm from 20 to 80 %). A band narrower than that leaves
    edge gradients that are identical in a reference portal image and a frame,
    and they pull the match towards no shift. The extent is the largest
    distance at which the mean gradient magnitude of the pixels at that depth
    is still three times that of the field's interior.
    """
    if not field.detected or field.mask is None or min(np.shape(image)) < 2:
        return 0.0
    # compiled (kernels.cpu.field.penumbra_extent; its numpy twin, kernels/reference/field.py, gives the same number):
    # a frame's band against a DRR is measured each frame (the numpy rule took about 10 ms a call, this 0.3-0.6)
    return float(penumbra_extent(image, field.mask, float(spacing_mm), float(reach_mm)))


def field_centre_mm(field: FieldEstimate, factor: int, image: Image) -> tuple[float, float] | None:
    """Centroid ``(x, y)`` mm of a detected field from ``image``'s beam axis (image axes); None if none was detected.

    ``factor``: the level the field was found on is ``factor`` times coarser than ``image`` (its pixel ``c`` covers
    the original pixels ``c * factor .. c * factor + factor - 1``).
    """
    if not field.detected or field.mask is None:
        return None
    rows, cols = np.nonzero(field.mask)
    if rows.size == 0:
        return None
    sy, sx = image.spacing_mm
    ax, ay = image.beam_axis_px
    centre = (factor - 1) / 2
    return ((float(cols.mean()) * factor + centre - ax) * sx, (float(rows.mean()) * factor + centre - ay) * sy)


def box_at_border(field: FieldEstimate) -> tuple[bool, bool]:
    """Whether a detected field's box reaches the image's border: ``(across columns, across rows)``.

    A field the image cuts off is measured by the image there, not by its aperture: its box's width (or height)
    is not the field's. ``(False, False)`` without a box, or without the shape of the level it was found on.
    """
    shape = field.mask.shape if field.mask is not None else field.level_shape
    if not field.detected or field.box_px is None or shape is None:
        return False, False
    c0, c1, r0, r1 = field.box_px
    return c0 < 0.5 or c1 > shape[1] - 1.5, r0 < 0.5 or r1 > shape[0] - 1.5


#: The columns (rows) of a field's core hold at least this share of the field's fullest column's (row's) pixels: a
#: hot or dead detector line's segment joined to the field, one to four pixels across however long, is not its extent.
CORE_LINE_SHARE = 0.25


def core_extent_px(field: FieldEstimate) -> tuple[int, int] | None:
    """Width and height (pixels of the level it was found on) of a detected field's core; None without a mask.

    Columns and rows each holding at least ``CORE_LINE_SHARE`` of the fullest one's field pixels: the box of the
    field without thin appendages. An independent trial (trial53 lines-23): a hot column over half the panel and a hot
    row across it, joined to a 90 x 138 mm field, made its box 107 x 159 mm, and the portal pair was refused as two
    scales (1.19 and 1.15 times); its core is the field's 90 x 138 mm.
    """
    box = core_box_px(field)
    return None if box is None else (box[1] - box[0] + 1, box[3] - box[2] + 1)


def core_box_px(field: FieldEstimate) -> tuple[int, int, int, int] | None:
    """``(col_min, col_max, row_min, row_max)`` (pixels of the level it was found on) of a detected field's core.

    The extreme columns and rows holding at least ``CORE_LINE_SHARE`` of the fullest one's field pixels (see
    :func:`core_extent_px`); None without a mask.
    """
    if not field.detected or field.mask is None:
        return None
    return mask_core_box(field.mask)


def mask_core_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(col_min, col_max, row_min, row_max)`` of a 2-D boolean ``mask``'s core; None where it is empty.

    The rule of :func:`core_extent_px`: the extreme columns and rows holding at least ``CORE_LINE_SHARE`` of the
    fullest one's pixels (a detected field's mask, or planned jaws drawn on a grid).
    """
    if not mask.any():
        return None
    columns, rows = mask.sum(axis=0), mask.sum(axis=1)
    wide = np.flatnonzero(columns >= CORE_LINE_SHARE * columns.max())
    tall = np.flatnonzero(rows >= CORE_LINE_SHARE * rows.max())
    return int(wide[0]), int(wide[-1]), int(tall[0]), int(tall[-1])


def core_sides_mm(field: FieldEstimate, factor: int, image: Image) -> list[float | None] | None:
    """Return the core's sides ``[x_min, x_max, y_min, y_max]`` (mm from ``image``'s beam axis, image axes).

    None without a core. Each side is its extreme pixels' centre (:func:`core_box_px`) on the level the field
    was found on, ``factor`` times coarser than ``image``; a side at the image's border is ``None`` (the image cut
    the field off there: the side is the image's, not the aperture's).
    """
    box = core_box_px(field)
    return None if box is None or field.mask is None else _box_sides_mm(box, field.mask.shape, factor, image)


def _box_sides_mm(box: tuple[int, int, int, int], shape: tuple[int, ...], factor: int,
                  image: Image) -> list[float | None]:
    """:func:`core_sides_mm` of the core box ``box`` (:func:`core_box_px`) on a field-detection level of ``shape``."""
    rows, cols = shape
    sy, sx = image.spacing_mm
    ax, ay = image.beam_axis_px
    centre = (factor - 1) / 2
    c0, c1, r0, r1 = box
    return [None if c0 == 0 else (c0 * factor + centre - ax) * sx,
            None if c1 == cols - 1 else (c1 * factor + centre - ax) * sx,
            None if r0 == 0 else (r0 * factor + centre - ay) * sy,
            None if r1 == rows - 1 else (r1 * factor + centre - ay) * sy]


def core_sides_fine_mm(field: FieldEstimate, factor: int, image: Image) -> list[float | None] | None:
    """Return :func:`core_sides_mm` with each side placed to a fraction of a detector pixel.

    Across each side, the mean profile of ``image``'s own pixels over the core's middle half (its rows for the x sides,
    its columns for the y sides), within two field-detection pixels of the coarse side, crosses halfway between its
    two ends: the penumbra's middle, whatever the two images' doses (the same aperture's jagged leaf ends bias both
    alike). A side without such a crossing keeps its coarse place.
    """
    box = core_box_px(field)
    if box is None or field.mask is None:
        return None
    coarse = _box_sides_mm(box, field.mask.shape, factor, image)
    pixels = image.pixels
    height, width = pixels.shape
    sy, sx = image.spacing_mm
    ax, ay = image.beam_axis_px
    c0, c1, r0, r1 = box
    reach = 2 * factor + 1
    out = list(coarse)
    for k, side, inward in ((0, c0, 1), (1, c1, -1), (2, r0, 1), (3, r1, -1)):
        if coarse[k] is None:
            continue
        across = (r0, r1) if k < 2 else (c0, c1)  # the core's extent along the side, its middle half used
        a = across[0] * factor + (across[1] - across[0] + 1) * factor // 4
        b = max(across[0] * factor + 3 * (across[1] - across[0] + 1) * factor // 4, a + 1)
        centre = side * factor + (factor - 1) / 2
        lo = max(int(centre - reach), 0)
        hi = min(int(centre + reach) + 1, width if k < 2 else height)
        if hi - lo < 3:
            continue
        block = pixels[a:b, lo:hi] if k < 2 else pixels[lo:hi, a:b].T
        place = _halfway(np.asarray(block, dtype=np.float64).mean(axis=0), inward)
        if place is not None:
            out[k] = (lo + place - (ax if k < 2 else ay)) * (sx if k < 2 else sy)
    return out


def _halfway(profile: np.ndarray, inward: int) -> float | None:
    """Where ``profile`` first crosses halfway between its ends, from the outside end (index, interpolated).

    ``inward`` is +1 where the field lies towards higher indices, -1 towards lower; None where the ends hardly
    differ or nothing crosses.
    """
    if inward < 0:
        place = _halfway(profile[::-1], 1)
        return None if place is None else len(profile) - 1 - place
    outside, inside = float(profile[0]), float(profile[-1])
    if abs(inside - outside) <= 1e-6 * (abs(inside) + abs(outside)) or not np.isfinite(inside - outside):
        return None
    half = 0.5 * (outside + inside)
    beyond = (profile - half) * (1.0 if inside > outside else -1.0) >= 0.0
    j = int(np.argmax(beyond))
    if not beyond[j] or j == 0:
        return None
    before, after = float(profile[j - 1]), float(profile[j])
    return j - 1 + (half - before) / (after - before) if after != before else float(j)


def field_size_mm(field: FieldEstimate, spacing_mm: tuple[float, float]) -> float | None:
    """Diameter (mm) of the largest disc inside a detected field; None when no field was detected.

    ``spacing_mm`` is the ``(row, col)`` pixel spacing of the level the field was found on. For a
    rectangular field it is the shorter side, for a cone its diameter, whatever the collimator angle
    (a bounding box would call a 45-degree-turned square field 1.4 times larger).
    """
    if not field.detected or field.mask is None:
        return None
    # twice the largest distance to the outside, the image's border outside too (compiled: the exact squared distance
    # transform of Felzenszwalb and Huttenlocher; scipy.ndimage.distance_transform_edt of the padded mask gives the
    # same number, and took 1-2 ms a call, a few calls a frame where a field holds dead lines or a sliver)
    mask = np.ascontiguousarray(field.mask, dtype=np.uint8)
    return float(largest_disc_diameter(mask, float(spacing_mm[0]), float(spacing_mm[1])))


class Candidates(NamedTuple):
    """The detector lines a reference's own screen takes up (:func:`_detector_candidates`), and an interlace found."""

    rows: np.ndarray
    cols: np.ndarray
    interlaced: str  # (``candidates[axis]``: the rows or columns, by position)


#: Alternating line means whose second differences stand this many times above the same-parity steps' spread are an
#: interlaced image: every other line dead (or the two fields of an interlaced readout misaligned). Each dead line's
#: neighbours are then dead too on both sides, so no line spikes alone and the dead-line screen sees none (a new
#: user's small-field reference with every other column dead had three live columns named dead, and was used).
INTERLACE_CONTRAST = 5.0
#: ...over at least this share of the lines (their second differences alternating in sign).
INTERLACE_SHARE = 0.8


def _detector_candidates(full: np.ndarray) -> Candidates:
    """Return the detector rows and columns of ``full`` whose means spike (candidates for :func:`_bridge_dead_lines`).

    The screen of :func:`~portalign.kernels.cpu.field.dead_lines` (``screened_lines``) over the detector's own
    line means (bands of up to ``DEAD_BAND_MAX``), in one pass over the pixels: 1-2 ms for a 1024 x 768 panel
    (the whole ``dead_lines``, with its transposed copy, took 6). :func:`_bridge_dead_lines` confirms each on
    the pixels about it, as it does those of the reduced lines. ``interlaced`` says which means alternate
    (:func:`~portalign.kernels.cpu.field.interlaced`; ``""``: none). A frame's line means come from its pyramid's
    first pass instead (:func:`line_screen`).
    """
    row_means, col_means = line_means(full)
    return line_screen(row_means, col_means, 0.0) or Candidates(np.empty(0, np.int64), np.empty(0, np.int64), "")


#: A line whose mean spikes this many times the line-mean profile's noise beyond both neighbours' is confirmed on the
#: detector's pixels whatever else the screen finds (:func:`line_screen`): a dead line across a field on a fine panel,
#: which its field-detection level (a quarter or an eighth of a reduced line) did not show. Measured: dead rows through
#: an 86 mm MLC field on a 512 x 384 panel spiked 50-200 times (a new user's trial, where the frame was refused as an
#: optimum 35 mm off, the lines unnamed); the rendered frames of ``python -m bench.latency`` and the 46 real RT Images
#: of ``../shared`` stay under 10 times, except small (85-column) and dosimetry images whose lines the field-detection
#: level names already.
STRONG_LINE_CONTRAST = 50.0
#: :func:`~portalign.kernels.cpu.field.line_candidates`' settings after the means (up to ``min_share``).
LINE_SCREEN = (DEAD_LINE_CONTRAST, DEAD_BAND_MAX, INTERLACE_CONTRAST, INTERLACE_SHARE)


def line_screen(row_means: np.ndarray, col_means: np.ndarray, min_share: float = DEAD_LINE_MAX_SHARE,
                strong_contrast: float = STRONG_LINE_CONTRAST) -> Candidates | None:
    """Return what the screen of a detector's line means takes up (:func:`_detector_candidates`), or None.

    Every line that spikes where they make a striped image (more than ``min_share`` of an axis's lines as separate
    bands, or alternating lines); otherwise only lines that spike by ``strong_contrast`` times the profile's noise;
    None where neither is there. A frame's detector lines are screened so (``_program`` calls the kernel itself, on its
    pyramid's means): its other dead lines are found on its field-detection level, each confirmed on the detector's
    pixels, whereas a DRR-like rendering's CT slices and a sound panel's anatomy leave a few lines that spike weakly on
    most frames, and confirming those cost a frame 700 Python-level calls.

    Parameters
    ----------
    row_means, col_means : float64[rows], float64[cols]
        The mean of each detector row and column.
    min_share : float
        0: whatever spikes (a reference's thorough screen).
    strong_contrast : float
        See ``STRONG_LINE_CONTRAST``.
    """
    row_lines, col_lines = np.empty(row_means.shape[0], np.int64), np.empty(col_means.shape[0], np.int64)
    n_rows, n_cols, rows_alternate, cols_alternate, found = line_candidates(
        row_means, col_means, *LINE_SCREEN, min_share, strong_contrast, row_lines, col_lines)
    return screened(row_lines[:n_rows], col_lines[:n_cols], rows_alternate, cols_alternate) if found else None


def screened(rows: np.ndarray, cols: np.ndarray, rows_alternate: bool, cols_alternate: bool) -> Candidates:
    """Return the :class:`Candidates` of a screen's outcome (:func:`~portalign.kernels.cpu.field.line_candidates`)."""
    said = [f"its detector {kind} alternate: every other one reads far off both neighbours"
            for kind, alternate in (("rows", rows_alternate), ("columns", cols_alternate)) if alternate]
    return Candidates(rows, cols, "; ".join(said))


class DeadLines(NamedTuple):
    """:func:`_bridge_dead_lines`' outcome: the bridged level, its dead rows and columns, their detector lines, why not."""

    values: np.ndarray
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    detector_rows: tuple[int, ...]
    detector_cols: tuple[int, ...]
    striped: str

    def found(self) -> dict[str, Any]:
        """Return the :class:`FieldEstimate` attributes these lines set."""
        return {"dead_rows": self.rows, "dead_cols": self.cols, "detector_rows": self.detector_rows,
                "detector_cols": self.detector_cols, "striped": self.striped}


def _bridge_dead_lines(values: np.ndarray, full: np.ndarray | None = None,
                       candidates: Candidates | None = None) -> DeadLines:
    """Replace bands of whole rows / columns that spike away from both neighbours by the lines either side.

    Returns the bridged image, the indices of the rows and of the columns replaced, their own detector lines
    (where ``full`` confirmed them), and why the lines cannot be left out (``""``: they can). ``candidates``
    (detector rows and columns, :func:`_detector_candidates`) are taken up beside those the reduced lines' screen
    finds. More than ``DEAD_LINE_MAX_SHARE`` of an axis's lines as
    separate bands, or over ``DEAD_BLOCK_MAX_SHARE`` of them in all, is a striped image (a failed readout, a
    corrupt or interlaced file), not a panel's isolated faults: nothing is bridged along that axis, and the
    reason names the bands (detector lines where ``full`` is given). Before, such an image was matched as it
    was, with no word: a fifth of a dosimetry image's rows dead put a 30 mm field's match 12 mm off, ok. ``full``, the
    image at the detector's own pixels that ``values`` was box-reduced from, confirms each band: a
    band of one or two dead lines has neighbours that agree with each other, whereas MLC pickets or a
    thin wire are several pixels wide; a wider band (a dead readout module) starts and stops sharply at a
    detector line (``kernels.cpu.field.dead_band``). Without ``full`` only bands of one or two lines are looked for.

    A dead (or hot) detector line reads far off its neighbours along its whole length, so Otsu's
    split would take it for a class of its own (on an inverted image a dead line at zero is the
    darkest thing there, and becomes "the field"). A band qualifies when, over at least
    ``DEAD_LINE_SHARE`` of its length, it lies beyond both lines outside it on one side by more
    than ``DEAD_LINE_CONTRAST`` times the noise there; a field edge is a step (one neighbour agrees)
    and anatomy does not run along a whole detector line. Only bands whose means spike away from both
    neighbours' means are examined pixel by pixel (a cheap first pass: this runs on every frame). With
    ``full`` the reduced lines only screen (by one noise sigma: a single dead line of a 1024 x 768 panel
    is an eighth of a reduced pixel) and the rule is applied on the detector's own lines, against the
    noise of the ``CONTEXT_LINES`` lines on each side of the band.
    """
    out = values
    found: list[tuple[int, ...]] = [(), ()]
    detector: list[tuple[int, ...]] = [(), ()]
    striped: list[str] = []
    for axis in (0, 1):
        work = out if axis == 0 else out.T
        max_width = DEAD_BAND_MAX if full is None else _widest_band(work.shape[0])
        detector_bands: list[tuple[int, int]] = []  # the bands confirmed, in detector lines (to name them)
        # the cheap mean-profile pass and the per-line test, compiled (this runs on every frame)
        # with the detector's own pixels each band is confirmed there: the reduced pixels only screen (one sigma)
        bad = [int(i) for i in dead_lines(np.ascontiguousarray(work), DEAD_LINE_CONTRAST, DEAD_LINE_SHARE, max_width,
                                          full is not None)]
        # the detector lines of the axis, and how many of them a reduced line holds
        lines = full.shape[axis] if full is not None else work.shape[0]
        factor = max(1, int(round(lines / work.shape[0])))
        if full is not None and candidates is not None and candidates[axis].size:
            # the detector lines screened (``thorough``): the reduced lines they fall in
            bad = sorted(set(bad) | {int(line) // factor for line in candidates[axis]
                                     if 1 <= int(line) // factor <= work.shape[0] - 2})
        if full is not None and bad:
            full_view = full if axis == 0 else full.T  # a view: only the lines about each band are read
            confirmed: set[int] = set()
            for first, last in _runs(bad):
                # the detector lines of the reduced lines found, and of the line before them (a box reduction
                # can leave little of a band's edge line in a reduced line): one band or several
                start, stop = max(first - 1, 0) * factor, (last + 1) * factor
                # the lines a band starting there may reach, with those dead_band reads about it
                lo, hi = max(start - 2, 0), min(stop + (stop - start + factor) + 2, lines)
                segment = np.ascontiguousarray(full_view[lo:hi], dtype=np.float64)
                # the line-to-line noise of the lines about the candidates (not of the candidates themselves)
                around = np.concatenate((full_view[max(start - CONTEXT_LINES, 0):start],
                                         full_view[stop:min(stop + CONTEXT_LINES, lines)])).astype(np.float64)
                noise = _line_noise(around) if around.shape[0] >= 8 else _line_noise(segment)
                at = start
                while at < stop:
                    band_first, band_last = dead_band(
                        segment, at - lo, stop - lo, noise, min(stop - at + factor, _widest_band(lines)),
                        DEAD_LINE_CONTRAST, DEAD_LINE_SHARE, DEAD_BAND_MAX, FULL_OUTER_NOISE_HALF_WINDOW, DEAD_EDGE_STEP,
                        DEAD_BLOCK_SHARP, max(LIVE_MIN_PIXELS, LIVE_MIN_SHARE * segment.shape[1]))
                    if band_first < 0:
                        break
                    first_line, last_line = band_first + lo, band_last + lo
                    detector_bands.append((first_line, last_line))
                    # every reduced line the detector lines fall in
                    confirmed.update(range(first_line // factor, min(last_line // factor, work.shape[0] - 2) + 1))
                    at = last_line + 1
            bad = sorted(i for i in confirmed if i >= 1)
        if not bad:
            continue
        # too many to leave out: counted on the detector's own lines where they were confirmed there (twenty
        # isolated dead rows of a 680-row panel are 3 % of it, and a fifth of an 85-row field-detection level)
        own = sorted({line for first, last in detector_bands for line in range(first, last + 1)})
        bands = _runs(own if full is not None else bad)
        dead = sum(last - first + 1 for first, last in bands)
        if len(bands) > DEAD_LINE_MAX_SHARE * lines or max(dead / lines, len(bad) / work.shape[0]) > DEAD_BLOCK_MAX_SHARE:
            striped.append(_striped_reason(axis, bands, dead, lines, full is not None))
            continue
        # a band of dead lines: straight across from the line before it to the line after it
        out = bridge_lines(out, bad, (), np.float64) if axis == 0 else bridge_lines(out, (), bad, np.float64)
        found[axis] = tuple(int(i) for i in bad)
        detector[axis] = tuple(own)
    if candidates is not None and candidates.interlaced:  # every other line: none stands out alone
        striped.append(f"{candidates.interlaced} (an interlaced or corrupt image), so they cannot be left out of the "
                       "match")
    return DeadLines(out, found[0], found[1], detector[0], detector[1], "; ".join(striped))


#: Bands named in a striped image's reason (the rest counted).
STRIPED_NAMED = 6


def _striped_reason(axis: int, bands: list[tuple[int, int]], dead: int, lines: int, detector: bool) -> str:
    """Say that ``bands`` (``(first, last)``, ``dead`` lines in all of ``lines``) are too many to leave out of a match."""
    kind = "rows" if axis == 0 else "columns"
    named = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in bands[:STRIPED_NAMED])
    more = f" and {len(bands) - STRIPED_NAMED} more" if len(bands) > STRIPED_NAMED else ""
    where = "detector" if detector else "field-detection level"
    return (f"{dead} of its {lines} {where} {kind} read far off both neighbours (dead or hot lines), in {len(bands)} "
            f"separate band(s) ({named}{more}): "
            "more than a detector's isolated faults (a failed readout, a corrupt or interlaced file), so they cannot "
            "be left out of the match")


def live_neighbours(size: int, lines: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Return ``(dead, before, after)``: the ``lines`` among ``size`` and the nearest live line either side of each.

    At the image's edge both are the one live line on its side. ``None`` where no line, or every line, is dead.
    """
    live = np.ones(size, dtype=bool)
    live[[line for line in lines if 0 <= line < size]] = False
    kept = np.flatnonzero(live)
    if kept.size == 0 or kept.size == live.size:
        return None
    dead = np.flatnonzero(~live)
    after = np.clip(np.searchsorted(kept, dead), 0, kept.size - 1)
    before = np.clip(np.searchsorted(kept, dead) - 1, 0, kept.size - 1)
    return dead, kept[before], kept[after]


def bridge_lines(pixels: np.ndarray, dead_rows: Any, dead_cols: Any, dtype: Any = np.float32) -> np.ndarray:
    """Return a copy of ``pixels`` (of ``dtype``) whose ``dead_rows`` and ``dead_cols`` are interpolated from the live lines.

    Each dead row's pixels are linearly interpolated, column by column, between the nearest live rows above and
    below it (the nearest one alone at the image's edge); then each dead column's between the nearest live columns.
    """
    out = np.array(pixels, dtype=dtype)
    for axis, lines in ((0, dead_rows), (1, dead_cols)):
        work = out if axis == 0 else out.T  # a view: rows of ``work`` are the lines along ``axis``
        found = live_neighbours(work.shape[0], lines)
        if found is None:
            continue
        dead, lo, hi = found
        span = np.where(hi > lo, hi - lo, 1).astype(out.dtype)
        weight = np.clip((dead - lo) / span, 0.0, 1.0)[:, None].astype(out.dtype)
        work[dead] = (1.0 - weight) * work[lo] + weight * work[hi]
    return out



def _widest_band(lines: int) -> int:
    """Widest band of dead lines looked for in an image of ``lines`` lines (``DEAD_BLOCK_MAX_SHARE``, two at least)."""
    return max(DEAD_BAND_MAX, int(DEAD_BLOCK_MAX_SHARE * lines))


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Return the runs of consecutive ``indices`` (sorted) as ``(first, last)`` pairs."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _line_noise(work: np.ndarray) -> np.ndarray:
    """Each column's line-to-line noise (``kernels.cpu.field.line_noise``: over blocks of columns, floored)."""
    return line_noise(np.ascontiguousarray(work, dtype=np.float64))  # type: ignore[no-any-return]


def sample_mask(mask: np.ndarray, factor: float, offset: float, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour sample of a small-level ``mask`` onto a grid of ``shape``.

    Pixel ``i`` of the target grid sits at ``i * factor + offset`` in the small
    level's pixel coordinates (both axes).
    """
    rows = np.clip(np.rint(np.arange(shape[0]) * factor + offset), 0, mask.shape[0] - 1).astype(np.intp)
    cols = np.clip(np.rint(np.arange(shape[1]) * factor + offset), 0, mask.shape[1] - 1).astype(np.intp)
    return mask[np.ix_(rows, cols)]
