"""Images with their geometry at the isocentre plane.

An :class:`Image` is what every other part of portalign works on: pixels plus
the two facts needed to turn a pixel into millimetres at the isocentre plane.

Coordinate contract (DESIGN.md): x runs along increasing column, y along
increasing row, in millimetres at the isocentre plane, origin on the beam axis.
A pixel centre ``(col, row)`` sits at::

    x_mm = (col - beam_axis_px[0]) * spacing_mm[1]
    y_mm = (row - beam_axis_px[1]) * spacing_mm[0]

DICOM quirks are resolved in :mod:`portalign.dicom` before an ``Image`` exists;
nothing after this point reads a tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from portalign.kernels.cpu.pyramid import MAX_PIXEL_MAGNITUDE

from .errors import GeometryError, PixelValuesError, PortalImageError

__all__ = ["Image", "ImageInfo", "as_image", "beam_kind", "check_registration_size", "declared_kind"]


@dataclass(frozen=True)
class ImageInfo:
    """Where an image came from and how it was taken; all optional.

    Attributes
    ----------
    source : str
        File name or a short description (``"array"``); used in error messages.
    modality : str
        ``RTIMAGE``, ``CT``... or ``""`` for arrays.
    kind : str
        ``"portal"`` (an MV/kV image through the beam), ``"drr"`` (rendered from CT)
        or ``""`` when unknown. Field detection defaults depend on it.
    sop_instance_uid, frame_of_reference_uid, series_instance_uid : str
        DICOM identity of the source, so that a result can be traced to its images.
    frame_index : int
        Frame number (0-based) inside a multi-frame RT Image.
    gantry_deg, collimator_deg, couch_deg : float or None
        IEC 61217 angles of the beam that took the image.
    sid_mm, sad_mm : float or None
        Source-to-imager and source-to-axis distances.
    imager_spacing_mm : tuple of float or None
        Pixel spacing (row, col) at the imager plane, before scaling to the isocentre.
    patient_position : str
        ``HFS``, ``FFS``, ``HFP``, ``FFP``... or ``""``.
    extra : dict
        Anything else a loader wants to keep (planned jaw/MLC aperture, labels...).
    """

    source: str = "array"
    modality: str = ""
    kind: str = ""
    sop_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    series_instance_uid: str = ""
    frame_index: int = 0
    gantry_deg: float | None = None
    collimator_deg: float | None = None
    couch_deg: float | None = None
    sid_mm: float | None = None
    sad_mm: float | None = None
    imager_spacing_mm: tuple[float, float] | None = None
    patient_position: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def beam_kind(info: ImageInfo) -> str:
    """Say what took the image, from its kind and KVP: ``"DRR"``, ``"kV image (120 kVp)"``, ``"portal image (6 MV)"``.

    Varian writes a treatment beam's energy as KVP (6000 for 6 MV): a KVP of 1000 or more is an MV beam. Without a
    KVP an RT Image Label that names kV (``"KV"``, ``"kV image"``) says a kV image; otherwise the energy is unknown.
    """
    kvp = info.extra.get("kvp")
    if info.kind == "drr":
        return "DRR"
    if kvp is not None and kvp < 1000:
        return f"kV image ({kvp:g} kVp)"
    label = str(info.extra.get("rt_image_label") or "")
    if kvp is None and info.kind == "portal" and re.search(r"(?<![A-Za-z0-9])kV(?![A-Za-z0-9])", label, re.IGNORECASE):
        return f"kV image (no KVP recorded; RT Image Label {label!r})"
    if info.kind == "portal":
        return f"portal image ({kvp / 1000:g} MV)" if kvp else "portal image"
    return "image"


@dataclass(frozen=True, eq=False)
class Image:
    """Pixels with their spacing and beam-axis position at the isocentre plane.

    Parameters
    ----------
    pixels : numpy.ndarray
        2-D float32 array, C-contiguous, finite. For portal images a higher value
        means more radiation reached the imager (loaders apply the DICOM intensity
        sign); registration metrics do not depend on the sign.
    spacing_mm : tuple of float
        ``(row_spacing, col_spacing)``: millimetres at the isocentre plane between
        pixel centres along y (rows) and x (columns).
    beam_axis_px : tuple of float
        ``(col, row)`` of the beam axis in pixel coordinates (may be fractional,
        may lie outside the image).
    info : ImageInfo
        Provenance and acquisition geometry.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float]
    beam_axis_px: tuple[float, float]
    info: ImageInfo = field(default_factory=ImageInfo)

    def __post_init__(self) -> None:
        name = self.info.source
        pixels = self.pixels
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 2:
            raise PortalImageError(f"{name}: pixels must be a 2-D array, got {_describe(pixels)}")
        _refuse_too_small(pixels.shape, name)
        if pixels.dtype != np.float32 or not pixels.flags.c_contiguous:
            object.__setattr__(self, "pixels", np.ascontiguousarray(pixels, dtype=np.float32))
        try:
            sy, sx = (float(s) for s in self.spacing_mm)
        except OverflowError:  # an integer beyond any float (10**400)
            raise GeometryError(f"{name}: pixel spacing must be a positive number of mm, got a number beyond any "
                                "float") from None
        for value, axis in ((sy, "row"), (sx, "column")):
            if not np.isfinite(value) or value <= 0 or value > MAX_SPACING_MM:
                raise GeometryError(f"{name}: {axis} pixel spacing must be a positive number of mm (at most "
                                    f"{MAX_SPACING_MM:g}), got {value!r}")
        object.__setattr__(self, "spacing_mm", (sy, sx))
        try:
            cx, cy = (float(c) for c in self.beam_axis_px)
        except OverflowError:
            raise GeometryError(f"{name}: beam axis position must be finite, got a number beyond any float") from None
        if not (np.isfinite(cx) and np.isfinite(cy)):
            raise GeometryError(f"{name}: beam axis position must be finite, got {self.beam_axis_px!r}")
        rows, cols = pixels.shape
        off_x, off_y = (cx - (cols - 1) / 2.0) * sx, (cy - (rows - 1) / 2.0) * sy  # (no abs(): no call a frame)
        if not (-MAX_AXIS_OFFSET_MM <= off_x <= MAX_AXIS_OFFSET_MM and -MAX_AXIS_OFFSET_MM <= off_y <= MAX_AXIS_OFFSET_MM):
            # beyond any panel's offset: its mm overflow the search's arithmetic (a hostile upload: 1e154 pixels)
            raise GeometryError(f"{name}: beam axis position ({cx:g}, {cy:g}) px lies more than "
                                f"{MAX_AXIS_OFFSET_MM / 1000:g} m from the image's centre at the isocentre plane; give "
                                "the column and row of the beam axis in the image's pixels")
        object.__setattr__(self, "beam_axis_px", (cx, cy))

    @classmethod
    def _derived(cls, pixels: np.ndarray, like: Image) -> Image:
        """Return an image of ``like``'s geometry and header with new ``pixels`` (float32, C-contiguous, its shape).

        For pixels derived from a checked image on the per-frame path (a frame's smoothed copy): ``like`` was
        validated, and what makes ``pixels`` valid is the caller's; no check is repeated.
        """
        image = object.__new__(cls)
        object.__setattr__(image, "pixels", pixels)
        object.__setattr__(image, "spacing_mm", like.spacing_mm)
        object.__setattr__(image, "beam_axis_px", like.beam_axis_px)
        object.__setattr__(image, "info", like.info)
        return image

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the pixel array."""
        return self.pixels.shape  # type: ignore[return-value]

    @property
    def extent_mm(self) -> tuple[float, float]:
        """Height and width of the image at the isocentre plane, in mm."""
        return self.shape[0] * self.spacing_mm[0], self.shape[1] * self.spacing_mm[1]

    def pixel_to_mm(self, col: np.ndarray | float, row: np.ndarray | float) -> tuple[Any, Any]:
        """Convert pixel coordinates to ``(x_mm, y_mm)`` at the isocentre plane."""
        return (
            (np.asarray(col) - self.beam_axis_px[0]) * self.spacing_mm[1],
            (np.asarray(row) - self.beam_axis_px[1]) * self.spacing_mm[0],
        )

    def mm_to_pixel(self, x_mm: np.ndarray | float, y_mm: np.ndarray | float) -> tuple[Any, Any]:
        """Convert ``(x_mm, y_mm)`` at the isocentre plane to ``(col, row)``."""
        return (
            np.asarray(x_mm) / self.spacing_mm[1] + self.beam_axis_px[0],
            np.asarray(y_mm) / self.spacing_mm[0] + self.beam_axis_px[1],
        )

    def with_pixels(self, pixels: np.ndarray) -> Image:
        """Return a copy with other pixels of the same shape (same geometry)."""
        if pixels.shape != self.shape:
            raise PortalImageError(f"{self.info.source}: new pixels are {pixels.shape}, image is {self.shape}")
        return replace(self, pixels=pixels)

    @classmethod
    def from_array(
        cls,
        array: Any,
        *,
        pixel_spacing_mm: float | tuple[float, float],
        beam_axis_px: tuple[float, float] | None = None,
        name: str = "array",
        **info: Any,
    ) -> Image:
        """Build an image from an array with explicit geometry.

        Parameters
        ----------
        array : array_like
            2-D pixel values (any real dtype); must be finite and not constant.
        pixel_spacing_mm : float or (float, float)
            Spacing at the isocentre plane; one number for square pixels, else
            ``(row_spacing, col_spacing)``.
        beam_axis_px : (float, float), optional
            ``(col, row)`` of the beam axis; the image centre by default.
        name : str
            Name used in error messages.
        **info
            Further :class:`ImageInfo` fields (``kind="portal"``, ``gantry_deg=90``...).

        Returns
        -------
        Image
        """
        if np.issubdtype(getattr(array, "dtype", np.dtype(np.float64)), np.integer):
            # integer values: their step of 1 is the finest contrast they can show (registration's noise floor)
            info["extra"] = {"quantization_step": 1.0, **(info.get("extra") or {})}
        pixels = check_pixels(array, name)
        spacing = _two_numbers(pixel_spacing_mm, one_for_both=True)
        if spacing is None:
            raise GeometryError(f"{name}: pixel_spacing_mm must be one number or (row, col) in mm, got "
                                f"{_short(pixel_spacing_mm)}")
        if beam_axis_px is None:
            beam_axis_px = ((pixels.shape[1] - 1) / 2.0, (pixels.shape[0] - 1) / 2.0)
        else:
            axis = _two_numbers(beam_axis_px, one_for_both=False)
            if axis is None:
                raise GeometryError(f"{name}: beam_axis_px must be (column, row) in pixels, got {_short(beam_axis_px)}")
            beam_axis_px = axis
        return cls(pixels, spacing, beam_axis_px, ImageInfo(source=name, **info))  # type: ignore[arg-type]


#: Largest pixel spacing (mm at the isocentre plane) an image may state: a metre a pixel is no image of a patient.
MAX_SPACING_MM = 1000.0
#: Farthest the beam axis may lie from an image's centre (mm at the isocentre plane): panels offset by a few hundred mm.
MAX_AXIS_OFFSET_MM = 10000.0


def _short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters (a hostile value may hold a 400-digit integer)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _two_numbers(value: Any, *, one_for_both: bool) -> tuple[float, float] | None:
    """Return ``value`` as two floats (one number twice where ``one_for_both``); None where it is not that.

    A string, ``None``, a pair holding one, or a length other than two is not (the caller names its keyword);
    finiteness and range are :class:`Image`'s checks.
    """
    try:
        values = ([float(value)] * 2 if one_for_both and np.ndim(value) == 0
                  else [float(v) for v in value])
    except (TypeError, ValueError, OverflowError):
        return None
    return (values[0], values[1]) if len(values) == 2 else None


def check_pixels(array: Any, name: str) -> np.ndarray:
    """Validate raw pixel values and return them as a C-contiguous float32 array.

    Raises
    ------
    PortalImageError
        When the array is not 2-D, is empty, holds NaN/inf or is constant.
    """
    try:
        pixels = np.asarray(array)
    except Exception as exc:  # pragma: no cover - numpy raises many kinds
        raise PortalImageError(f"{name}: cannot be read as an array ({exc})") from exc
    if pixels.ndim != 2:
        raise PortalImageError(f"{name}: expected a 2-D image, got an array of shape {pixels.shape}")
    if pixels.size == 0:
        raise PortalImageError(f"{name}: image is empty")
    if not (np.issubdtype(pixels.dtype, np.number) or pixels.dtype == bool) or np.iscomplexobj(pixels):
        raise PortalImageError(f"{name}: pixels must be real numbers, got dtype {pixels.dtype}")
    _refuse_too_small(pixels.shape, name)  # before the values: a 1x1 image is too small, not "constant"
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    _refuse_unusable_values(pixels, name)
    return pixels


def _refuse_too_small(shape: tuple[int, ...], name: str) -> None:
    """Raise :class:`PortalImageError` for an image under 8 pixels along either axis."""
    if shape[0] < 8 or shape[1] < 8:
        raise PortalImageError(f"{name}: image is {shape[0]}x{shape[1]} pixels; at least 8x8 is needed")


def _refuse_unusable_values(pixels: np.ndarray, name: str) -> None:
    """Raise :class:`PixelValuesError` for NaN, infinite, huge (beyond ``MAX_PIXEL_MAGNITUDE``) or constant pixels."""
    lo, hi = float(pixels.min()), float(pixels.max())  # NaN when any pixel is NaN
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PixelValuesError(_not_finite_message(name, pixels))
    if max(-lo, hi) > MAX_PIXEL_MAGNITUDE:
        raise PixelValuesError(_huge_pixel_message(name, pixels))
    if lo == hi:
        raise PixelValuesError(f"{name}: all pixels have the same value ({lo:g}); nothing to register")


def _not_finite_message(name: str, pixels: np.ndarray) -> str:
    """Return the one-line error for pixels that are NaN or infinite: how many, and where the first one is."""
    bad = ~np.isfinite(pixels)
    count = int(bad.sum())
    first = np.unravel_index(int(np.argmax(bad)), pixels.shape)
    return (f"{name}: {count} pixel{'s are' if count != 1 else ' is'} NaN or infinite (the first at row {first[0]}, "
            f"column {first[1]}): the pixel data is damaged; export the image again")


def _huge_pixel_message(name: str, pixels: np.ndarray) -> str:
    """Return the one-line error for a pixel whose magnitude no detector gives (beyond ``MAX_PIXEL_MAGNITUDE``)."""
    worst = np.unravel_index(int(np.argmax(np.abs(pixels))), pixels.shape)
    return (f"{name}: pixel value {pixels[worst]:g} at row {worst[0]}, column {worst[1]} is beyond "
            f"+-{MAX_PIXEL_MAGNITUDE:g}, no detector's value: the pixel data is damaged; export the image again")


def check_frame_pixels(frame: Image) -> None:
    """Raise :class:`PortalImageError` when an image's pixels are unusable (NaN, infinite, huge, constant).

    A magnitude beyond ``MAX_PIXEL_MAGNITUDE`` (1e30) is no detector's value: a damaged file (float pixels of
    1e38). It would overflow the pyramid's box sums.
    """
    _refuse_unusable_values(frame.pixels, frame.info.source)


#: ``ImageInfo.extra`` key of a multi-frame file's frame 0 read because no frame was named (the reader sets it to the
#: file's frame count; the registration says that only frame 0 was registered).
FIRST_OF_FRAMES = "first_of_frames"


#: Registration resamples the reference onto the frame's pixel grid; it may make at most this many
#: times as many pixels as the larger of the two images has.
MAX_RESAMPLING_GROWTH = 16
#: The search range (max shift + margin) may span at most this many times the frame's larger side, in pixels.
MAX_SEARCH_SPAN = 4
#: Largest side (mm at the isocentre plane) of an image registered: the largest treatment field is 400 mm there,
#: an imager at SID 1500 mm covers about 300 mm, and a DRR of a whole body's width about 600 mm. A side beyond it is
#: a spacing tag off by a factor (a fuzzer's reference of 800 x 800 pixels "at 10 mm": 8 m wide, resampled onto the
#: frame's grid, took 724 MiB from a 14 kB file).
MAX_SIDE_MM = 1000.0
#: Pixels longer one way than the other by more than this are no imager's (square; a binned readout's at most 2:1).
PIXEL_ASPECT_LIMIT = 3.0
#: The global search pads the frame by the search range on every side, in pixels of its finer spacing: that grid may
#: hold at most this many times the pixels of the larger image (or of ``SEARCH_GRID_FLOOR``, whichever is more). A
#: fuzzed 12 kB file of 8 x 640 pixels at 10 x 0.01 mm passed the span check and asked for 1.98 GiB of spectra.
MAX_SEARCH_GROWTH = 4
SEARCH_GRID_FLOOR = 1 << 18
#: An image more pixels long one way than the other by more than this is refused: no imager reads out such a strip
#: (real files here: at most 3:1, a DRR of 256 x 85), and its pyramid cannot reduce it. A pyramid level halves both
#: sides and stops at 16 pixels across the shorter one, so a strip keeps its length at the global search's level:
#: a fuzzed 66 kB frame of 8 x 4096 pixels (970 mm wide, under MAX_SIDE_MM) searched at its own pixels, 150 MiB of
#: rotated spectra, and 32 x 4096 took 111 MiB, 40 times a normal frame's 3.4 MiB. At 8:1 the global search's level
#: is at most 512 pixels long.
IMAGE_ASPECT_LIMIT = 8.0


def check_registration_size(reference: Image, frame: Image, *, max_shift_mm: float) -> None:
    """Refuse a pair whose registration would allocate far more than the two images' own size.

    The registration resamples the reference onto the frame's pixel spacing and
    searches shifts up to ``max_shift_mm`` (plus a 5 mm margin) in frame pixels.
    A frame with a (damaged or mistyped) spacing far finer than the reference's
    would make the resampled reference, or the search window, thousands of times
    larger than either image: this check refuses it before anything is allocated.

    Parameters
    ----------
    reference, frame : Image
        The prepared reference's image and the frame to register.
    max_shift_mm : float
        The largest shift searched (``RegistrationOptions.max_shift_mm``).

    Raises
    ------
    GeometryError
        Naming the image and its spacing, when either is over :data:`MAX_SIDE_MM` across at the isocentre; naming
        the frame, both spacings and the fix, when the resampled reference
        would exceed :data:`MAX_RESAMPLING_GROWTH` times the larger image's
        pixel count, or the search range would exceed :data:`MAX_SEARCH_SPAN`
        times the frame's larger side; naming the image and its Rows and Columns when it is more than
        :data:`IMAGE_ASPECT_LIMIT` times more pixels long one way than the other.
    """
    name = frame.info.source
    (ref_rows, ref_cols), (rows, cols) = reference.shape, frame.shape
    for role, image in (("reference", reference), ("frame", frame)):
        side = max(image.shape[0] * image.spacing_mm[0], image.shape[1] * image.spacing_mm[1])
        if side > MAX_SIDE_MM:
            low, high = min(image.spacing_mm), max(image.spacing_mm)
            # pixels far longer one way than the other are the likelier fault (a mutated 0.336 x 3.36 mm): named
            shape = (f"; its pixels are {high / low:.1f} times longer one way than the other, which no portal imager's "
                     "are; check its ImagePlanePixelSpacing (3002,0011) or PixelSpacing (0028,0030)"
                     if high > PIXEL_ASPECT_LIMIT * low else "")
            raise GeometryError(
                f"{image.info.source}: the {role} is {image.shape[0]} x {image.shape[1]} pixels of "
                f"{image.spacing_mm[0]:.4g} x {image.spacing_mm[1]:.4g} mm at the isocentre, {side:.4g} mm across: "
                f"no beam's image is over {MAX_SIDE_MM:g} mm wide there{shape}; its spacing (ImagePlanePixelSpacing, "
                "RTImageSID, RadiationMachineSAD) is wrong: check it with portalign info, or pass pixel_spacing_mm=")
    sy, sx = frame.spacing_mm
    # the reference's extent in frame pixels (Python floats: nothing overflows, nothing is allocated)
    resampled = (ref_rows * reference.spacing_mm[0] / sy) * (ref_cols * reference.spacing_mm[1] / sx)
    allowed = MAX_RESAMPLING_GROWTH * max(ref_rows * ref_cols, rows * cols)
    if resampled > allowed:
        ratio = min(reference.spacing_mm) / min(sy, sx)
        raise GeometryError(
            f"{name}: pixel spacing {min(sy, sx):.4g} mm is {ratio:.3g} times finer than the reference's "
            f"{min(reference.spacing_mm):.4g} mm; registering would resample the reference to {resampled:.3g} pixels "
            f"(over {MAX_RESAMPLING_GROWTH} times the larger image); check the frame's spacing tags or pass pixel_spacing_mm="
        )
    span = (float(max_shift_mm) + 5.0) / min(sy, sx)
    if span > MAX_SEARCH_SPAN * max(rows, cols):
        raise GeometryError(
            f"{name}: a search range of {max_shift_mm:g} mm is {span:.3g} pixels at {min(sy, sx):.4g} mm, over "
            f"{MAX_SEARCH_SPAN} times the frame's {max(rows, cols)} pixels; "
            "check the frame's spacing or pass a smaller max_shift_mm="
        )
    # both axes are padded by the span at the finer spacing: a spacing far finer along one axis than the other
    # (10 x 0.01 mm) pads the coarse one by thousands of pixels it does not have
    grid = (rows + 2.0 * span) * (cols + 2.0 * span)
    if grid > MAX_SEARCH_GROWTH * max(ref_rows * ref_cols, rows * cols, SEARCH_GRID_FLOOR):
        fix = ("detector pixels are square or nearly so: check the frame's spacing tags (ImagePlanePixelSpacing, "
               "PixelSpacing) or pass pixel_spacing_mm=" if max(sy, sx) > 2.0 * min(sy, sx)
               else "pass a smaller max_shift_mm= (or check the frame's spacing tags)")
        raise GeometryError(
            f"{name}: pixel spacing {sy:.4g} x {sx:.4g} mm (rows x columns): a search of +-{max_shift_mm:g} mm pads "
            f"its {rows} x {cols} pixels by {span:.0f} on every side, {grid:.3g} pixels (over {MAX_SEARCH_GROWTH} "
            f"times the larger image); {fix}"
        )
    for role, image in (("reference", reference), ("frame", frame)):
        short, long = min(image.shape), max(image.shape)
        if long > IMAGE_ASPECT_LIMIT * short:
            raise GeometryError(
                f"{image.info.source}: the {role} is {image.shape[0]} x {image.shape[1]} pixels, {long / max(short, 1):.0f} "
                f"times longer one way than the other: no imager reads out such a strip, and its search would take far "
                f"more memory than its pixels (at most {IMAGE_ASPECT_LIMIT:g}:1 is registered); crop it less tightly, or "
                "check its Rows (0028,0010) and Columns (0028,0011)")


def declared_kind(image: Image, kind: str | None, said_by: str) -> tuple[Image, str]:
    """Return ``image`` as the ``kind`` of reference its user declared, and the note to give with its results.

    ``kind`` (``"drr"`` or ``"portal"``; None: the image as read) says what a file cannot (an array, raw pixels) or
    overrides its header; the note (``""`` where the header said nothing, or the same) names the header's kind and
    ``said_by`` (``--reference-kind`` in the CLI, ``?kind=drr`` over HTTP).
    """
    if kind is None or image.info.kind == kind:
        return image, ""
    note = (f"{image.info.source}: registered as a {kind} reference ({said_by}), not as the {image.info.kind} its "
            "header describes" if image.info.kind else "")
    return replace(image, info=replace(image.info, kind=kind)), note


def as_image(obj: Any, *, name: str = "image", pixel_spacing_mm: float | tuple[float, float] | None = None) -> Image:
    """Accept an :class:`Image`, a DICOM path/dataset or an array and return an :class:`Image`.

    Arrays need ``pixel_spacing_mm``; files and datasets go through
    :func:`portalign.dicom.read_rt_image`.
    """
    if isinstance(obj, Image):
        return obj
    if obj is None:
        raise PortalImageError(f"{name}: no image given (None)")
    if isinstance(obj, np.ndarray):
        if pixel_spacing_mm is None:
            raise GeometryError(f"{name}: a numpy array has no geometry; pass pixel_spacing_mm=")
        return Image.from_array(obj, pixel_spacing_mm=pixel_spacing_mm, name=name)
    from .dicom import read_rt_image  # DICOM is only needed when files come in

    return read_rt_image(obj, pixel_spacing_mm=pixel_spacing_mm)


def _describe(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    return f"shape {shape}" if shape is not None else type(obj).__name__
