"""Reference for the field split (numpy and scipy.ndimage): same arguments and outputs as the CPU kernel.

:func:`portalign.kernels.cpu.field.split_field` describes the steps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["split_field", "three_level_split", "dead_lines", "dead_band", "band_silent_pixels", "penumbra_extent"]

FLAT, NOT_A_FIELD, FIELD = 0, 1, 2


def split_field(values: np.ndarray, min_effectiveness: float, min_border_outside: float, area_low: float,
                area_high: float, min_pixels: int, min_largest_part: float, mask_out: np.ndarray,
                box_out: np.ndarray) -> tuple:
    """Split ``values`` into field and outside; return ``(code, threshold, effectiveness, field_is_bright)``."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return FLAT, 0.0, 0.0, True
    lo, hi = _histogram_bounds(values, lo, hi)
    threshold, effectiveness = _otsu(values, lo, hi)
    bright = values > threshold
    border = np.concatenate([bright[0, :], bright[-1, :], bright[1:-1, 0], bright[1:-1, -1]])
    bright_on_border = float(border.mean())
    field_is_bright = bright_on_border < 0.5
    field = bright if field_is_bright else ~bright
    outside_on_border = 1.0 - bright_on_border if field_is_bright else bright_on_border
    area = float(field.mean())
    if (effectiveness < min_effectiveness or outside_on_border < min_border_outside
            or not area_low <= area <= area_high or field.sum() < min_pixels):
        return NOT_A_FIELD, threshold, effectiveness, field_is_bright
    labels, count = ndimage.label(field)
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.max() < min_largest_part * sizes.sum():
            return NOT_A_FIELD, threshold, effectiveness, field_is_bright
        field = labels == (int(np.argmax(sizes)) + 1)
    field = _fill_holes(field)
    mask_out[...] = field
    rows = np.flatnonzero(field.any(axis=1))
    cols = np.flatnonzero(field.any(axis=0))
    box_out[:] = (cols[0], cols[-1], rows[0], rows[-1])
    return FIELD, threshold, effectiveness, field_is_bright


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the parts of the background that do not reach the image border (one labelling pass)."""
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask
    reaches_border = np.zeros(count + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        reaches_border[edge] = True
    reaches_border[0] = True  # label 0 is the mask itself
    return mask | ~reaches_border[background]


def _bin_index(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Histogram bin of each value (``bins`` between ``lo`` and ``hi``; beyond them the end bins)."""
    width = (hi - lo) / bins
    return np.clip((values - lo) / width, 0.0, bins - 1.0).astype(np.intp)  # clamped before the cast


def _histogram_bounds(values: np.ndarray, lo: float, hi: float, bins: int = 128, span: int = 16,
                      passes: int = 3) -> tuple[float, float]:
    """Return the Otsu histogram's bounds: ``(lo, hi)``, narrowed where the central 99 % fill fewer than ``span`` bins."""
    n = values.size
    for attempt in range(passes):
        index = _bin_index(values, lo, hi, bins)
        running = np.cumsum(np.bincount(index.ravel(), minlength=bins))
        past_low = np.flatnonzero(running > 0.005 * n)
        past_high = np.flatnonzero(running >= 0.995 * n)
        if not past_low.size or not past_high.size or past_high[0] - past_low[0] >= span or attempt == passes - 1:
            break
        central = values[(index >= past_low[0]) & (index <= past_high[0])]
        w_lo, w_hi = float(central.min()), float(central.max())
        if not w_hi > w_lo:
            break
        new = (max(lo, w_lo - (w_hi - w_lo)), min(hi, w_hi + (w_hi - w_lo)))
        beyond = (values < new[0]) | (values > new[1])
        touching = (beyond[:, 1:] & beyond[:, :-1]).any() or (beyond[1:, :] & beyond[:-1, :]).any()
        if new == (lo, hi) or touching:  # a region beyond the window is a field, not an outlier
            break
        lo, hi = new
    return lo, hi


def _otsu(values: np.ndarray, lo: float, hi: float, bins: int = 128) -> tuple[float, float]:
    """Return Otsu's threshold and its effectiveness (between-class / total variance)."""
    width = (hi - lo) / bins
    index = _bin_index(values, lo, hi, bins)
    hist = np.bincount(index.ravel(), minlength=bins)
    edges = lo + width * np.arange(bins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight = hist.astype(np.float64) / hist.sum()
    omega = np.cumsum(weight)
    mu = np.cumsum(weight * centres)
    mu_total = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_total * omega - mu) ** 2 / (omega * (1.0 - omega))
    between[~np.isfinite(between)] = 0.0
    best = int(np.argmax(between[:-1]))
    total = float((weight * (centres - mu_total) ** 2).sum())
    effectiveness = float(between[best] / total) if total > 0 else 0.0
    return float(edges[best + 1]), effectiveness


def _beyond(band: np.ndarray, outer_1: np.ndarray, outer_2: np.ndarray, threshold: float) -> np.ndarray:
    """Where every row of ``band`` (rows x n) lies beyond both outer rows on one side, the farthest by over ``threshold``."""
    low, high = band.min(axis=0), band.max(axis=0)
    top, bottom = np.maximum(outer_1, outer_2), np.minimum(outer_1, outer_2)
    return ((low > top) & (high - top > threshold)) | ((high < bottom) & (bottom - low > threshold))  # type: ignore[no-any-return]


def _sharp_means(means: np.ndarray, first: int, last: int) -> bool:
    """Whether a band of 3+ rows reads at its ends at least half its mean depth beyond the outside rows (CPU kernel)."""
    if last - first < 2:
        return True
    outer = (means[first - 1], means[last + 1])
    band = means[first:last + 1]
    depth = band - max(outer) if band[0] > max(outer) else min(outer) - band
    return bool(min(depth[0], depth[-1]) >= 0.5 * depth.mean())


def dead_lines(work: np.ndarray, contrast: float, share: float, max_width: int, confirmed: bool = False) -> np.ndarray:
    """Return the rows of ``work`` in bands of 1 to ``max_width`` lines spiking away from their neighbours (CPU kernel's rule)."""
    work = np.asarray(work, dtype=np.float64)
    rows = work.shape[0]
    if rows < 5:
        return np.empty(0, dtype=np.int64)
    means = work.mean(axis=1)
    # the smaller of the first and (scaled to agree on white noise) second differences' spread: a field whose means
    # rise steadily across the lines (a turned collimator) leaves the second ones at the noise
    profile_noise = 1.4826 * min(float(np.median(np.abs(np.diff(means)))),
                                 float(np.median(np.abs(np.diff(means, 2)))) / np.sqrt(3.0)) \
        + 1e-12 * (float(np.ptp(means)) + 1.0)
    threshold = contrast * profile_noise  # a screen: the pixel test below decides
    bands = []  # every band that passes the screen
    for i in range(1, rows - 1):
        for width in range(1, min(max_width, rows - 1 - i) + 1):
            band = means[i:i + width, None]
            if not (band.min() > means[i - 1] or band.max() < means[i - 1]):
                break
            if _beyond(band, means[i - 1], means[i + width], threshold)[0] and _sharp_means(means, i, i + width - 1):
                bands.append((i, width))
    if not bands:
        return np.empty(0, dtype=np.int64)
    noise = line_noise(work)
    least = max(LIVE_MIN_PIXELS, LIVE_MIN_SHARE * work.shape[1])  # judged pixels a band needs, and a stretch from an end
    segment_least = max(least, SEGMENT_MIN_SHARE * work.shape[1], 0.0 if confirmed else SEGMENT_MIN_PIXELS)
    bad = []
    for i, width in bands:
        local = outer_line_noise(work, i - 1, i + width, OUTER_NOISE_HALF_WINDOW, _noise_floor(work),
                                 float(work.min()), float(work.max()))
        threshold = (CONFIRMED_CONTRAST if confirmed else contrast) * np.minimum(noise, local)
        band = work[i:i + width]
        spiking = _beyond(band, work[i - 1], work[i + width], threshold)
        live = spiking | ~silent_pixels(band, work[i - 1], work[i + width], threshold, work.min(), work.max())
        low, high = band.min(axis=0), band.max(axis=0)
        clipped = (low == high) & ((low == work.min()) | (low == work.max()))
        # only a band at the clipped value itself leaves the clipped pixels out (a line or two screened for the
        # detector's pixels to confirm: whatever it reads)
        if (spiking & ~clipped).any() and not (confirmed and width <= SCREEN_WIDTH):
            live[:] = True
        count = int(live.sum())
        if count >= least and (spiking.sum() >= share * count or (
                width <= SEGMENT_MAX_WIDTH and end_segment(spiking, live, share, segment_least))):
            bad.extend(range(i, i + width))
    return np.asarray(sorted(set(bad)), dtype=np.int64)


def end_segment(spiking: np.ndarray, judged: np.ndarray, share: float, least: float) -> bool:
    """Whether the pixels from either end of a line on to some pixel hold ``least`` judged ones, ``share`` spiking."""
    for s, j in ((spiking, judged), (spiking[::-1], judged[::-1])):
        count = np.cumsum(j)
        spikes = np.cumsum(s & j)
        if np.any((count >= least) & (spikes >= share * count)):
            return True
    return False


#: The CPU kernel's ``SEGMENT_MIN_SHARE``, ``SEGMENT_MAX_WIDTH`` and ``SEGMENT_MIN_PIXELS``.
SEGMENT_MIN_SHARE = 0.4
SEGMENT_MAX_WIDTH = 2
SEGMENT_MIN_PIXELS = 96
#: The CPU kernel's ``CONFIRMED_CONTRAST``.
CONFIRMED_CONTRAST = 1.0
#: The CPU kernel's ``LIVE_MIN_PIXELS``, ``LIVE_MIN_SHARE`` and ``SCREEN_WIDTH``.
LIVE_MIN_PIXELS = 4
LIVE_MIN_SHARE = 0.02
SCREEN_WIDTH = 2


def silent_pixels(band: np.ndarray, outer_1: np.ndarray, outer_2: np.ndarray, threshold: np.ndarray, lowest: float,
                  highest: float) -> np.ndarray:
    """Where no line shows (the CPU kernel's ``_silent``).

    ``band`` (rows x n) and both outer rows at one value, or the band at the image's ``lowest`` (``highest``) value
    and both outer rows within ``threshold`` of it.
    """
    low, high = band.min(axis=0), band.max(axis=0)
    flat = low == high
    same = (outer_1 == low) & (outer_2 == low)
    floor = (low == lowest) & (np.maximum(outer_1, outer_2) - lowest <= threshold)
    ceiling = (low == highest) & (highest - np.minimum(outer_1, outer_2) <= threshold)
    return flat & (same | floor | ceiling)  # type: ignore[no-any-return]
#: Half the block (less one) of the median of ``outer_line_noise`` (the CPU kernel's ``OUTER_NOISE_HALF_WINDOW``).
OUTER_NOISE_HALF_WINDOW = 4


def _noise_floor(work: np.ndarray) -> float:
    """``line_noise``'s floor (the CPU kernel's ``floor_and_extremes``' first value)."""
    return 1e-4 * float(np.ptp(work.mean(axis=1))) + 1e-12 * (float(np.ptp(work)) + 1.0)


def outer_line_noise(work: np.ndarray, before: int, after: int, half_window: int, floor: float,
                     lowest: float = np.inf, highest: float = -np.inf) -> np.ndarray:
    """Return the noise at each column from the two outside rows' difference (the CPU kernel's ``outer_line_noise``)."""
    a, b = np.asarray(work[before], dtype=np.float64), np.asarray(work[after], dtype=np.float64)
    diff = np.abs(a - b)
    kept = ~((a == b) & ((a == lowest) | (a == highest)))  # clipped pairs carry no noise
    block = 2 * half_window + 1
    out = np.empty(diff.shape[0])
    for start in range(0, diff.shape[0], block):
        values = diff[start:start + block][kept[start:start + block]]
        out[start:start + block] = (1.4826 / np.sqrt(2.0) * float(np.median(values)) if values.size else 0.0) + floor
    return out


def line_noise(work: np.ndarray) -> np.ndarray:
    """Return each column's line-to-line noise, over blocks of columns (see the CPU kernel's ``line_noise``)."""
    work = np.asarray(work, dtype=np.float64)
    cols = work.shape[1]
    block = max(4, cols // 16)
    floor = _noise_floor(work)
    upper, lower = work[1::4], work[:-1:4][: work[1::4].shape[0]]
    diff = np.abs(upper - lower)
    kept = ~((upper == lower) & ((upper == work.min()) | (upper == work.max())))  # clipped pairs carry no noise
    noise = np.empty(cols)
    for start in range(0, cols, block):
        values = diff[:, start:start + block][kept[:, start:start + block]]
        noise[start:start + block] = (1.4826 * float(np.median(values)) if values.size else 0.0) + floor
    return noise


def three_level_split(values: np.ndarray, bins: int, found: np.ndarray) -> tuple:
    """Numpy twin of :func:`portalign.kernels.cpu.field.three_level_split` (same arguments and outputs)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    found_count = int(np.count_nonzero(found))
    lo, hi = flat.min(), flat.max()
    if not hi > lo:
        return -1.0, 0.0, True, 0.0, 0, 0.0, found_count
    fine = 4096  # the 0.1 and 99.9 % points, to 1/4096 of the range
    counts = np.bincount(np.clip(((flat - lo) / ((hi - lo) / fine)).astype(np.int64), 0, fine - 1), minlength=fine)
    cut = 0.001 * flat.size
    first = int(np.argmax(np.cumsum(counts) > cut))
    last = fine - 1 - int(np.argmax(np.cumsum(counts[::-1]) > cut))
    lo, hi = lo + (hi - lo) / fine * first, lo + (hi - lo) / fine * (last + 1)
    if not hi > lo:
        return -1.0, 0.0, True, 0.0, 0, 0.0, found_count
    width = (hi - lo) / bins
    hist = np.bincount(np.clip(((flat - lo) / width).astype(np.int64), 0, bins - 1), minlength=bins) / flat.size
    centres = lo + width * (np.arange(bins) + 0.5)
    w, m = np.cumsum(hist), np.cumsum(hist * centres)
    mt = m[-1]
    total = float(np.sum(hist * (centres - mt) ** 2))
    i, j = np.arange(bins - 2)[:, None], np.arange(bins - 1)[None, :]
    w0, w1, w2 = w[i], w[j] - w[i], 1.0 - w[j]
    valid = (j > i) & (w0 > 1e-12) & (w1 > 1e-12) & (w2 > 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(valid, m[i] ** 2 / w0 + (m[j] - m[i]) ** 2 / w1 + (mt - m[j]) ** 2 / w2 - mt * mt, -1.0)
    k = int(np.argmax(between))
    if between.flat[k] < 0.0 or total <= 0.0:
        return -1.0, 0.0, True, 0.0, 0, 0.0, found_count
    bi, bj = np.unravel_index(k, between.shape)
    low, high = lo + width * (bi + 1), lo + width * (bj + 1)
    border = np.concatenate((values[0], values[-1], values[1:-1, 0], values[1:-1, -1]))
    dark, bright = int(np.count_nonzero(border < low)), int(np.count_nonzero(border >= high))
    field_is_bright = dark >= bright
    threshold = low if field_is_bright else high
    inside = (flat >= threshold) == field_is_bright
    outside, middle = flat[~inside], flat[(flat >= low) & (flat < high)]
    effectiveness = float(between.flat[k] / total)
    if outside.size < 2 or middle.size == 0:
        return effectiveness, threshold, field_is_bright, 0.0, int(inside.sum()), 0.0, found_count
    spread = float(outside.std())
    separation = abs(middle.mean() - outside.mean()) / spread if spread > 0.0 else np.inf
    return (effectiveness, threshold, field_is_bright, (dark if field_is_bright else bright) / border.size,
            int(inside.sum()), float(separation), found_count)


def _extremes(work: np.ndarray) -> tuple[float, float, float]:
    """``(floor, lowest, highest)`` as the CPU kernel's ``floor_and_extremes``."""
    return _noise_floor(work), float(work.min()), float(work.max())


def band_silent_pixels(low: np.ndarray, high: np.ndarray, outer_1: np.ndarray, outer_2: np.ndarray,
                       threshold: np.ndarray, lowest: float, highest: float, stuck: float = math.nan) -> np.ndarray:
    """Where a band (its per-pixel ``low`` and ``high``) can show no dead line (the CPU kernel's ``_band_pixel_silent``).

    The band and both outer lines read one value, or the band reads the image's ``lowest`` (``highest``) value, a
    clipped one, and both outer lines lie within ``threshold`` of it, or the band is stuck at ``stuck`` (every pixel
    of it that value: NaN where it is not) and its outer lines do not both stand clear of it by ``threshold`` on one
    side (a dead line's zero against the faint outside of a field, whose noise takes it below zero too).
    """
    flat = low == high
    same = (outer_1 == low) & (outer_2 == low)
    floor = (low == lowest) & (np.maximum(outer_1, outer_2) - lowest <= threshold)
    ceiling = (low == highest) & (highest - np.minimum(outer_1, outer_2) <= threshold)
    clear = ((outer_1 - stuck > threshold) & (outer_2 - stuck > threshold)) | \
        ((stuck - outer_1 > threshold) & (stuck - outer_2 > threshold))
    held = (low == stuck) & ~clear
    return flat & (same | floor | ceiling | held)  # type: ignore[no-any-return]


def _band_sharp(work: np.ndarray, first: int, last: int, spiking: np.ndarray, wide: bool, edge_step: float,
                block_sharp: float) -> bool:
    """Whether the band starts and stops at a detector line (the CPU kernel's ``_band_sharp``)."""
    before, after = work[first - 1][spiking], work[last + 1][spiking]
    band = work[first:last + 1][:, spiking]
    outer = np.maximum(before, after) if band.mean() > before.mean() else np.minimum(before, after)
    depth = np.abs(band - outer).mean(axis=1)
    middle = float(np.median(depth))
    if middle <= 0:
        return False
    steps = [float(np.abs(before - work[first - 2][spiking]).mean()) if first >= 2 else np.inf,
             float(np.abs(after - work[last + 2][spiking]).mean()) if last + 2 < work.shape[0] else np.inf]
    if min(steps) > edge_step * middle:
        return False
    return not wide or min(depth[0], depth[-1]) >= block_sharp * middle


def dead_band(work: np.ndarray, start: int, stop: int, noise: np.ndarray, max_width: int, contrast: float,
              share: float, band_max: int, half_window: int, edge_step: float, block_sharp: float,
              least: float) -> tuple[int, int]:
    """``(first, last)`` of the first band of dead lines starting in ``work[start:stop]``, ``(-1, -1)`` for none.

    The CPU kernel's ``dead_band`` with numpy arrays, line by line (what ``portalign.field`` ran before it was
    compiled).
    """
    rows = work.shape[0]
    floor, lowest, highest = _extremes(work)
    segment_least = max(least, SEGMENT_MIN_SHARE * work.shape[1], SEGMENT_MIN_PIXELS)
    for first in range(max(start, 1), min(stop, rows - 1)):
        before = work[first - 1]
        low, high = work[first].copy(), work[first].copy()
        widest = None
        for width in range(1, max_width + 1):
            last = first + width - 1
            if last + 1 >= rows:
                break
            threshold = contrast * np.minimum(noise, outer_line_noise(work, first - 1, last + 1, half_window, floor,
                                                                       lowest, highest))
            np.minimum(low, work[last], out=low)
            np.maximum(high, work[last], out=high)
            stuck = float(low[0]) if low.min() == high.max() and bool(np.any(before != low[0])) else math.nan
            above, below = low - before > threshold, before - high > threshold
            beyond = above | below
            clipped = (low == high) & ((low == lowest) | (low == highest) | (low == stuck))
            whole = bool(np.any(beyond & ~clipped))
            judged = (beyond | ~band_silent_pixels(low, high, before, before, threshold, lowest, highest, stuck)
                      if not whole else np.ones(low.size, dtype=bool))
            count = int(np.count_nonzero(judged))
            if count < least or (np.count_nonzero(beyond) < share * count and not (
                    width <= SEGMENT_MAX_WIDTH
                    and end_segment(beyond, judged, share, segment_least))):
                break
            after = work[last + 1]
            up = (low - np.maximum(before, after) > threshold)
            down = (np.minimum(before, after) - high > threshold)
            whole = bool(np.any((up | down) & ~clipped))
            judged = (up | down | ~band_silent_pixels(low, high, before, after, threshold, lowest, highest, stuck)
                      if not whole else np.ones(low.size, dtype=bool))
            count = int(np.count_nonzero(judged))
            spiking = up | down
            if width <= band_max:
                spike = np.where(up, low - np.maximum(before, after), np.minimum(before, after) - high)
                spiking &= np.abs(before - after) < 0.5 * spike
            if count < least or (np.count_nonzero(spiking) < share * count and not (
                    width <= SEGMENT_MAX_WIDTH
                    and end_segment(spiking, judged, share, segment_least))):
                continue
            if not _band_sharp(work, first, last, spiking, width > band_max, edge_step, block_sharp):
                continue
            widest = (first, last)
        if widest is not None:
            return widest
    return -1, -1


def penumbra_extent(image: np.ndarray, mask: np.ndarray, spacing: float, reach: float, ring_median: bool = False) -> float:
    """Numpy and scipy.ndimage: ``kernels.cpu.field.penumbra_extent``'s rule, written as arrays."""
    values = np.asarray(image, dtype=np.float64)
    depth = ndimage.distance_transform_edt(mask) * spacing
    gy, gx = np.gradient(values)
    magnitude = np.hypot(gx, gy)
    interior = depth > reach
    if interior.sum() < 16:
        interior = depth > 0.5 * depth.max()
    baseline = float(np.median(magnitude[interior])) if interior.any() else 0.0
    extent = 0.0
    for start in np.arange(0.0, reach, spacing):
        ring = (depth > start) & (depth <= start + spacing)
        if ring.sum() >= 4 and (np.median(magnitude[ring]) if ring_median else magnitude[ring].mean()) >= 3.0 * baseline:
            extent = start + spacing
    return float(extent)
