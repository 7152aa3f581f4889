"""Frame quality before any matching: usable area, contrast over noise, saturation, cleanliness."""

from __future__ import annotations

import math

from ..field import FieldEstimate
from ..image import Image
from ._plan import FramePlan, Level

__all__ = ["assess_frame", "rotation_radius", "is_clean", "MIN_USABLE_PIXELS"]

#: Contrast (robust range) / noise below which a frame has "too little structure".
MIN_CONTRAST_TO_NOISE = 12.0
#: Fewest usable pixels at the finest level (a 20 x 20 patch): less cannot be trusted.
MIN_USABLE_PIXELS = 400
#: Contrast / noise at the finest level above which a frame is "clean" and refined on finer levels too.
CLEAN_CONTRAST_TO_NOISE = 1000.0
#: About this many second differences estimate the fine-level noise.
NOISE_SAMPLES = 6000
#: Fraction of field pixels at the detector's maximum that makes a frame saturated.
MAX_SATURATED_FRACTION = 0.02


def assess_frame(backend, frame: Image, plan: FramePlan, field: FieldEstimate,  # type: ignore[no-untyped-def]
             frame_stats: dict) -> str:
    """Return why the frame cannot be trusted before any matching ("" when it can).

    ``frame_stats`` receives ``contrast_to_noise`` (robust contrast over white-noise sigma at the finest level).
    """
    finest = plan.levels[plan.refine_levels[-1]]
    coarse = plan.levels[plan.coarse.level]
    if coarse.usable < 16 or finest.usable < MIN_USABLE_PIXELS:
        return "too little of the frame is usable: the field (minus its edge band) is too small"
    noise = _noise_sigma(backend, finest)
    lo, hi = coarse.range
    contrast = hi - lo
    # box averaging from the finest to the coarse level divides white noise by 2 per level
    coarse_noise = noise / 2 ** (plan.coarse.level - finest.index)
    plan_stats = {"contrast_to_noise": contrast / max(noise, 1e-30)}
    frame_stats.update(plan_stats)
    if contrast < MIN_CONTRAST_TO_NOISE * coarse_noise or contrast <= 0:
        if not field.detected:
            return f"frame is blank (beam off?): contrast is {contrast / max(coarse_noise, 1e-30):.1f}x the noise"
        return f"too little structure inside the field: contrast is {contrast / max(coarse_noise, 1e-30):.1f}x the noise"
    saturation = frame.info.extra.get("saturation_value")
    if saturation is not None:
        img = backend.to_host(plan.levels[plan.field_level].image)
        # a box mean equals the maximum code only where all pixels under it are saturated
        fraction = float((img >= saturation).mean())
        if fraction > MAX_SATURATED_FRACTION:
            return f"frame is saturated: {fraction:.0%} of its pixels are at the detector maximum ({saturation:g})"
    return ""


def _noise_sigma(backend, level: Level) -> float:  # type: ignore[no-untyped-def]
    """Robust white-noise sigma from horizontal second differences (MAD), on every 4th row of the usable pixels.

    A second difference cancels smooth anatomy (any linear trend) and keeps white
    noise with variance ``6 sigma^2``. Computed where the level lives; one number comes back.
    """
    rows, cols = level.shape
    mad, count = backend.kernels.second_difference_mad(level.image, level.eroded, 0, rows, 4, 0, cols, True)
    if count < 16:
        return 0.0
    return 1.4826 * float(mad) / math.sqrt(6.0)


def is_clean(backend, plan: FramePlan, field: FieldEstimate, frame_stats: dict) -> bool:  # type: ignore[no-untyped-def]
    """Whether the frame is nearly noise-free (then a finer level still adds accuracy).

    Noise is measured where it is largest, on the frame's own pixels inside the field's bounding box;
    smooth anatomy hardly shows in second differences there.
    """
    level = plan.levels[0]
    img = level.image  # the frame where it lives: only the statistic comes back from a device
    rows, cols = img.shape
    r0, r1, c0, c1 = 0, rows, 0, cols
    if field.detected and field.box_px is not None:
        scale = 2.0 ** (plan.field_level - level.index)
        b = field.box_px
        c0, c1 = int(max(0, (b[0] + 1) * scale)), int(min(cols, b[1] * scale))
        r0, r1 = int(max(0, (b[2] + 1) * scale)), int(min(rows, b[3] * scale))
    row_step = max(1, (r1 - r0) * (c1 - c0) // NOISE_SAMPLES)
    # unmasked: the image stands in for the mask argument
    mad, count = backend.kernels.second_difference_mad(img, img, r0, r1, row_step, c0, c1, False)
    if count < 64:
        return False
    noise = 1.4826 * float(mad) / math.sqrt(6.0)
    lo, hi = plan.levels[plan.coarse.level].range
    ratio = (hi - lo) / max(noise, 1e-30)
    frame_stats["fine_contrast_to_noise"] = ratio
    return ratio >= CLEAN_CONTRAST_TO_NOISE


def rotation_radius(backend, level: Level) -> float:  # type: ignore[no-untyped-def]
    """RMS distance (mm) of usable pixels from the beam axis: how far a rotation moves them."""
    rms, count = backend.kernels.rms_radius(level.eroded, level.frame_axis[0], level.frame_axis[1], level.spacing[0],
                                            level.spacing[1], 2)
    if count == 0:
        return 50.0
    return max(float(rms), 5.0)
