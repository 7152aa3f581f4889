"""Radiation-field split of a small image in one compiled call (numba, CPU; run on the host by every backend).

The steps (``kernels/reference/field.py`` is the same with numpy and scipy.ndimage):

1. Otsu's threshold over a 128-bin histogram between the image's minimum and maximum, and its
   effectiveness (between-class over total variance: 1 for two flat levels); when the central 99 % of
   the pixels fall in fewer than ``OTSU_SPAN`` bins (a few outlier pixels stretched the histogram), and
   the pixels beyond the central bins' values widened by their range on each side are single pixels
   (no two 4-neighbours: a cone a few pixels across is a field, not an outlier), the histogram spans
   that window instead (outliers in the end bins), so one hot pixel cannot hide the field;
2. the side of the threshold that covers less of the image border is the field (bright or dark);
3. tests: effectiveness, the outside's share of the border, the field's share of the image, its
   pixel count, and one aperture: the largest 4-connected part must hold nearly all of the field;
4. holes filled: background parts (4-connected) that do not reach the border are field (bone in
   MV, a ball bearing); the bounding box of the result.

The field-detection level is a few thousand pixels: this is microseconds compiled, against
about 150 Python calls with numpy and scipy.ndimage. Thresholds are arguments (numba freezes globals).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .mask import quantile_bins
from .statistics import bin_counts, bin_of, insertion_sort, median, min_max

__all__ = ["split_field", "three_level_split", "dead_lines", "dead_band", "end_segment", "largest_disc_diameter",
           "penumbra_extent", "line_noise", "floor_and_extremes", "outer_line_noise", "line_means", "screened_lines",
           "interlaced", "line_candidates", "OTSU_BINS", "NOT_A_FIELD", "FLAT", "FIELD"]

OTSU_BINS = 128
#: Bins of ``OTSU_BINS`` the central 99 % of the values must span; fewer (outliers stretched the histogram):
#: the histogram is taken again over the central bins' values widened by their range, values beyond it in the
#: end bins, up to ``OTSU_PASSES`` times.
OTSU_SPAN = 16
OTSU_PASSES = 3
#: :func:`three_level_split`'s outcome where none was made (:func:`detect_front`).
NO_THREE_LEVELS = (-1.0, 0.0, True, 0.0, 0, 0.0, 0)
#: Result codes of :func:`split_field`.
FLAT = 0
NOT_A_FIELD = 1
FIELD = 2


@njit(cache=True, nogil=True)
def _root(parent: np.ndarray, r: int) -> int:  # pragma: no cover
    """Return the root of run ``r`` in the union-find forest ``parent`` (paths halved on the way)."""
    while parent[r] != r:
        parent[r] = parent[parent[r]]
        r = parent[r]
    return r


@njit(cache=True, nogil=True)
def _parts(mask: np.ndarray, want: int) -> tuple:  # pragma: no cover
    """Label the 4-connected parts of the pixels ``mask == want`` by their runs along the rows.

    Each row's runs of wanted pixels are listed (row-major); a run is joined (union-find) with every run of the row
    above whose columns it shares, found by walking both rows' runs in step. Parts are numbered from 1 in raster
    order of their first pixel (a part's first run in the list holds it), as ``scipy.ndimage.label`` numbers them.
    The work follows the runs, not the pixels: a field and its outside are a few runs a row.

    Returns
    -------
    tuple
        ``(rows_of, starts, stops, part_of, sizes)``: each run's row, first and last column, part (1..count) as
        int64[n_runs], and each part's pixel count, int64[count].
    """
    rows, cols = mask.shape
    n_runs = 0
    for i in range(rows):
        inside = False
        for j in range(cols):
            here = mask[i, j] == want
            n_runs += here and not inside
            inside = here
    rows_of = np.empty(n_runs, dtype=np.int64)
    starts = np.empty(n_runs, dtype=np.int64)
    stops = np.empty(n_runs, dtype=np.int64)
    first = np.empty(rows + 1, dtype=np.int64)  # row i's runs: first[i] .. first[i + 1] - 1
    k = 0
    for i in range(rows):
        first[i] = k
        j = 0
        while j < cols:
            if mask[i, j] != want:
                j += 1
                continue
            rows_of[k] = i
            starts[k] = j
            while j < cols and mask[i, j] == want:
                j += 1
            stops[k] = j - 1
            k += 1
    first[rows] = k
    parent = np.arange(n_runs)
    for i in range(1, rows):
        a, a_end = first[i - 1], first[i]
        b, b_end = first[i], first[i + 1]
        while a < a_end and b < b_end:
            if starts[a] <= stops[b] and starts[b] <= stops[a]:  # they share a column
                ra, rb = _root(parent, a), _root(parent, b)
                if ra != rb:
                    if ra < rb:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
            if stops[a] < stops[b]:
                a += 1
            else:
                b += 1
    label = np.zeros(n_runs, dtype=np.int64)
    part_of = np.empty(n_runs, dtype=np.int64)
    sizes = np.zeros(n_runs + 1, dtype=np.int64)
    count = 0
    for r in range(n_runs):
        root = _root(parent, r)
        if label[root] == 0:
            count += 1
            label[root] = count
        part_of[r] = label[root]
        sizes[label[root]] += stops[r] - starts[r] + 1
    return rows_of, starts, stops, part_of, sizes[1:count + 1]


@njit(cache=True, nogil=True)
def _bin(v: float, lo: float, width: float, bins: int) -> int:  # pragma: no cover
    """Histogram bin of ``v``; values beyond the histogram go to its end bins (clamped before the integer cast)."""
    return bin_of(v, lo, width, bins - 1.0)


@njit(cache=True, nogil=True)
def _isolated_beyond(values: np.ndarray, lo: float, hi: float) -> bool:  # pragma: no cover
    """Whether no two 4-neighbours both lie outside ``[lo, hi]`` (the values beyond it are single pixels)."""
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            if lo <= v <= hi:
                continue
            if j + 1 < cols and not (lo <= values[i, j + 1] <= hi):
                return False
            if i + 1 < rows and not (lo <= values[i + 1, j] <= hi):
                return False
    return True


@njit(cache=True, nogil=True)
def split_field(values: np.ndarray, min_effectiveness: float, min_border_outside: float, area_low: float,
                area_high: float, min_pixels: int, min_largest_part: float, mask_out: np.ndarray,
                box_out: np.ndarray) -> tuple:  # pragma: no cover
    """Split ``values`` into field and outside; return ``(code, threshold, effectiveness, field_is_bright)``.

    Parameters
    ----------
    values : float64[rows, cols]
        The field-detection level (dead detector lines already bridged).
    min_effectiveness, min_border_outside, area_low, area_high, min_pixels, min_largest_part
        The tests of step 3 (see ``portalign.field``).
    mask_out : uint8[rows, cols]
        The field, holes filled (written when the code is ``FIELD``).
    box_out : float64[4]
        ``(col_min, col_max, row_min, row_max)`` of the field (written when the code is ``FIELD``).

    Returns
    -------
    tuple
        ``code``: ``FLAT`` (a constant image), ``NOT_A_FIELD`` (no clean split: effectiveness is set) or
        ``FIELD``.
    """
    rows, cols = values.shape
    lo = values[0, 0]
    hi = values[0, 0]
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    if not (hi > lo and np.isfinite(lo) and np.isfinite(hi)):  # constant (or not finite: refused upstream)
        return FLAT, 0.0, 0.0, True
    bins = OTSU_BINS
    n = rows * cols
    hist = np.zeros(bins, dtype=np.int64)
    flat = values.ravel()
    for attempt in range(OTSU_PASSES):
        width = (hi - lo) / bins
        hist[:] = bin_counts(flat, lo, width, bins)
        # a few outlier pixels (one hot pixel of 1e6 among values of 0-800) squeeze the image into a few bins:
        # then the histogram spans the values of the central bins, widened by their own range on each side
        b_low, b_high = quantile_bins(hist, 0, 0.005 * n, 0.995 * n)
        if b_low < 0 or b_high < 0 or b_high - b_low >= OTSU_SPAN or attempt == OTSU_PASSES - 1:
            break
        w_lo = np.inf
        w_hi = -np.inf
        for i in range(rows):
            for j in range(cols):
                v = values[i, j]
                b = _bin(v, lo, width, bins)
                if b_low <= b <= b_high:
                    w_lo = min(w_lo, v)
                    w_hi = max(w_hi, v)
        if not w_hi > w_lo:
            break
        new_lo = max(lo, w_lo - (w_hi - w_lo))
        new_hi = min(hi, w_hi + (w_hi - w_lo))
        if (new_lo == lo and new_hi == hi) or not _isolated_beyond(values, new_lo, new_hi):
            break  # a region beyond the window (a cone a few pixels across) is a field, not an outlier
        lo = new_lo
        hi = new_hi
    centres = np.empty(bins)
    weight = np.empty(bins)
    for b in range(bins):
        centres[b] = 0.5 * ((lo + width * b) + (lo + width * (b + 1)))
        weight[b] = hist[b] / n
    omega = 0.0
    mu = 0.0
    mu_total = 0.0
    for b in range(bins):
        mu_total += weight[b] * centres[b]
    best = 0
    best_between = -1.0
    for b in range(bins - 1):
        omega += weight[b]
        mu += weight[b] * centres[b]
        denom = omega * (1.0 - omega)
        between = (mu_total * omega - mu) ** 2 / denom if denom > 0.0 else 0.0
        if between > best_between:
            best_between = between
            best = b
    total = 0.0
    for b in range(bins):
        total += weight[b] * (centres[b] - mu_total) ** 2
    effectiveness = best_between / total if total > 0.0 else 0.0
    threshold = lo + width * (best + 1)
    # the field is the side that covers less of the border
    on_border = 0
    border = 0
    for j in range(cols):
        on_border += (values[0, j] > threshold) + (values[rows - 1, j] > threshold)
        border += 2
    for i in range(1, rows - 1):
        on_border += (values[i, 0] > threshold) + (values[i, cols - 1] > threshold)
        border += 2
    bright_on_border = on_border / border
    field_is_bright = bright_on_border < 0.5
    outside_on_border = 1.0 - bright_on_border if field_is_bright else bright_on_border
    count = 0
    for i in range(rows):
        for j in range(cols):
            inside = (values[i, j] > threshold) == field_is_bright
            mask_out[i, j] = 1 if inside else 0
            count += 1 if inside else 0
    area = count / n
    if (effectiveness < min_effectiveness or outside_on_border < min_border_outside
            or not (area_low <= area <= area_high) or count < min_pixels):
        return NOT_A_FIELD, threshold, effectiveness, field_is_bright
    rows_of, starts, stops, part_of, sizes = _parts(mask_out, 1)
    if sizes.size > 1:
        largest = 0
        for k in range(sizes.size):
            if sizes[k] > sizes[largest]:
                largest = k
        if sizes[largest] < min_largest_part * count:
            return NOT_A_FIELD, threshold, effectiveness, field_is_bright
        mask_out[:, :] = 0
        for r in range(part_of.shape[0]):
            if part_of[r] == largest + 1:
                mask_out[rows_of[r], starts[r]:stops[r] + 1] = 1
    # holes: background reached from the border (4-connected) is outside, the rest is field
    rows_of, starts, stops, part_of, sizes = _parts(mask_out, 0)
    outside = np.zeros(sizes.size + 1, dtype=np.bool_)
    for r in range(part_of.shape[0]):
        if rows_of[r] == 0 or rows_of[r] == rows - 1 or starts[r] == 0 or stops[r] == cols - 1:
            outside[part_of[r]] = True
    mask_out[:, :] = 1
    for r in range(part_of.shape[0]):
        if outside[part_of[r]]:
            mask_out[rows_of[r], starts[r]:stops[r] + 1] = 0
    r0, r1, c0, c1 = _mask_box(mask_out)
    box_out[0] = c0
    box_out[1] = c1
    box_out[2] = r0
    box_out[3] = r1
    return FIELD, threshold, effectiveness, field_is_bright


@njit(cache=True, nogil=True)
def _beyond(low: float, high: float, outer_1: float, outer_2: float, threshold: float) -> bool:  # pragma: no cover
    """Whether ``low``..``high`` all lie beyond both outer values on one side, the farthest by over ``threshold``."""
    top, bottom = max(outer_1, outer_2), min(outer_1, outer_2)
    return (low > top and high - top > threshold) or (high < bottom and bottom - low > threshold)


@njit(cache=True, nogil=True)
def _silent(low: float, high: float, outer_1: float, outer_2: float, threshold: float, lowest: float,
            highest: float) -> bool:  # pragma: no cover
    """Whether a pixel can show no dead (or hot) line.

    The band and both outer values read one value, or the band reads the image's ``lowest`` (``highest``) value and
    both outer values lie within ``threshold`` of it. A clipped region (the zero outside of a portal-dosimetry
    image's field, and the few quanta of its scatter tail above the zero) reads what a dead line reads: a line can be
    judged only where its neighbours stand clear of that.
    """
    if low != high:
        return False
    if outer_1 == low and outer_2 == low:
        return True
    if low == lowest:
        return max(outer_1, outer_2) - lowest <= threshold
    if low == highest:
        return highest - min(outer_1, outer_2) <= threshold
    return False


@njit(cache=True, nogil=True)
def _sharp_means(means: np.ndarray, first: int, last: int) -> bool:  # pragma: no cover
    """Whether a band of three or more rows reads at its ends at least half its mean depth beyond the rows outside.

    One or two rows: always. A readout fault starts and stops at a line (part-way over one reduced row at most);
    a field, or a wide object, has a penumbra.
    """
    if last - first < 2:
        return True
    top = max(means[first - 1], means[last + 1])
    bottom = min(means[first - 1], means[last + 1])
    above = means[first] > top
    total = 0.0
    for r in range(first, last + 1):
        total += means[r] - top if above else bottom - means[r]
    depth = total / (last - first + 1)
    edge_first = means[first] - top if above else bottom - means[first]
    edge_last = means[last] - top if above else bottom - means[last]
    return min(edge_first, edge_last) >= 0.5 * depth


@njit(cache=True, nogil=True)
def line_noise(work: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Return the line-to-line noise of each column of ``work`` (``(cols,)``, its units).

    1.4826 times the median absolute difference between rows 1, 5, 9, ... and the rows before them, over
    blocks of ``max(4, cols // 16)`` columns (each block's value for its columns): the noise where the
    column is, which is several times smaller outside a radiation field than inside it. Floored at 0.0001
    of the range of the row means (a flat or integer-valued region has no spread of differences; a mean
    over a row is not moved far by one extreme pixel), plus 1e-12 of the image's range. Pairs that both read the
    image's lowest (or highest) value are clipped and left out: where most of a block is a dosimetry image's zero
    outside, its median was zero, and anatomy's rows inside a small field passed for dead lines.
    """
    rows, cols = work.shape
    block = max(4, cols // 16)
    pairs = (rows - 1 + 3) // 4  # rows 1, 5, 9, ... against rows 0, 4, 8, ...
    floor, lowest, highest = floor_and_extremes(work)
    noise = np.empty(cols)
    line = np.empty(pairs * block)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        n = 0
        for i in range(1, rows, 4):
            for j in range(start, stop):
                a, b = work[i, j], work[i - 1, j]
                if a == b and (a == lowest or a == highest):
                    continue  # clipped: no noise there to measure
                line[n] = abs(a - b)
                n += 1
        value = (1.4826 * median(line[:n]) if n > 0 else 0.0) + floor
        for j in range(start, stop):
            noise[j] = value
    return noise


@njit(cache=True, nogil=True)
def floor_and_extremes(work: np.ndarray) -> tuple:  # pragma: no cover
    """Return ``(floor, lowest, highest)`` of ``work`` in one pass.

    ``floor`` is :func:`line_noise`'s: 0.0001 of the range of the row means, plus 1e-12 of the image's range;
    ``lowest`` and ``highest`` are the image's extremes, the values a clipped region reads.
    """
    rows, cols = work.shape
    low = np.inf
    high = -np.inf
    lowest = np.inf
    highest = -np.inf
    for i in range(rows):
        total = 0.0
        for j in range(cols):
            value = work[i, j]
            total += value
            lowest = min(lowest, value)
            highest = max(highest, value)
        mean = total / cols
        low = min(low, mean)
        high = max(high, mean)
    return 1e-4 * (high - low) + 1e-12 * ((highest - lowest) + 1.0), lowest, highest


#: The noise sigmas a band must lie beyond its outside rows by, on the reduced pixels, where the caller confirms it
#: on the detector's own pixels (``dead_lines(confirmed=True)``).
CONFIRMED_CONTRAST = 1.0
#: Half the block of columns (less one) over which :func:`outer_line_noise` takes its median.
OUTER_NOISE_HALF_WINDOW = 4
#: A pixel where a band and both its outside rows read exactly the same value (a clipped, constant region: the zero
#: outside of a portal-dosimetry image's field), or the band reads the clipped value and its outside rows are within
#: the threshold of it (the field's scatter tail), can show no dead line (``_silent``), and is left out of the share;
#: at least this many pixels, and this share of the line, must be left to judge it by (a single dead row through a
#: dosimetry image's 30 mm field, 78 % of whose pixels are exactly zero, was never found: a fifth of its rows dead put
#: it 12 mm off, ok).
#: Only a band that reads the clipped value itself wherever it stands out is judged so (a dead line reads the zero,
#: a hot one the saturated value): else a hard-edged field over a constant outside was a "block" of hot rows (its
#: outside pixels silent, all its own beyond the rows outside it), and a Winston-Lutz ball bearing's middle column a
#: dead one, over the few unclipped rows of a saturated aS500 image.
LIVE_MIN_PIXELS = 4
LIVE_MIN_SHARE = 0.02
#: Widest band screened so where the caller confirms on the detector's pixels (``confirmed``), whatever it reads.
SCREEN_WIDTH = 2
#: A band that spikes over too little of its whole length is still a dead (or hot) line where it spikes over the share
#: asked of a whole line along a stretch from one end of the line whose judged pixels number at least this share of
#: the line's length (:func:`end_segment`): a flat panel's line driver or data line broken part-way leaves the line dead
#: from the break to its far end, and a panel read out from both sides in halves loses half a line (an independent
#: trial's half-length lines, 2026-12-05: none named; six of 25 frames refused, one matched 1.22 mm off). Of the
#: length, not of the judged pixels: a block of constant value at a saturated image's edge, its only judged pixels,
#: was no line. A stretch in the middle of a line alone is not taken (a straight wire inside a field is not a line).
SEGMENT_MIN_SHARE = 0.4
#: Widest band judged so (a broken line, or one a box reduction spread over two): a block of sound lines between a hot
#: line and one hot over half its length lies beyond both along that half (an independent trial: 38 sound rows between
#: a hot band and a half-hot row were taken for a dead block), and a readout module's block fails whole.
SEGMENT_MAX_WIDTH = 2
#: Fewest judged pixels such a stretch holds where its lines are judged on the detector's own pixels (a quarter of a
#: 512 x 384 panel's shorter side; a half line of any panel holds 192 or more): a small DRR's CT-slice lines spike
#: part-way along its 128-pixel lines (a window of a 256 x 85 DRR was refused as striped, 3 of 42 columns).
SEGMENT_MIN_PIXELS = 96


@njit(cache=True, nogil=True)
def end_segment(spiking: np.ndarray, judged: np.ndarray, share: float, least: float) -> bool:  # pragma: no cover
    """Whether a stretch of a line from either of its ends spikes over ``share`` of its judged pixels.

    ``spiking`` and ``judged`` (bool[n]): the line's pixels that lie beyond its neighbours, and those it is judged by
    (every spiking pixel is judged). True where the pixels from the first one (or from the last one) on to some pixel
    hold at least ``least`` judged pixels, ``share`` of them or more spiking (the callers' ``least``: of
    ``SEGMENT_MIN_SHARE`` and ``SEGMENT_MIN_PIXELS``; ``share``: the whole line's).
    """
    n = spiking.shape[0]
    for direction in range(2):
        count = 0
        spikes = 0
        for k in range(n):
            j = k if direction == 0 else n - 1 - k
            if judged[j]:
                count += 1
                if spiking[j]:
                    spikes += 1
            if count >= least and spikes >= share * count:
                return True
    return False


@njit(cache=True, nogil=True)
def outer_line_noise(work: np.ndarray, before: int, after: int, half_window: int, floor: float,  # pragma: no cover
                     lowest: float = np.inf, highest: float = -np.inf) -> np.ndarray:
    """Return the noise at each column of a band from how far its two outside rows ``before`` and ``after`` differ.

    ``1.4826 / sqrt(2)`` times the median of ``|work[before, j] - work[after, j]|`` over each block of
    ``2 half_window + 1`` columns (the block's value for its columns), plus ``floor``: the noise where the band is,
    at the signal there (two rows that differ by noise alone differ by sqrt(2) sigmas). :func:`line_noise` takes
    each block of columns over every row: a dead column through a field's faint outside (2 % of the dose, as little
    noise) was judged against the field's noise, and went unseen where the field covered under 80 % of it. Where
    the outside rows differ by more than noise (an edge between them, steep anatomy) this is larger, and the
    callers take the smaller of the two. Pairs that both read ``lowest`` or ``highest`` (the image's
    :func:`floor_and_extremes`: clipped) are left out, as in :func:`line_noise`; a block of nothing else has
    ``floor``.
    """
    cols = work.shape[1]
    block = 2 * half_window + 1
    out = np.empty(cols)
    window = np.empty(block)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        n = 0
        for k in range(start, stop):
            a, b = work[before, k], work[after, k]
            if a == b and (a == lowest or a == highest):
                continue
            window[n] = abs(a - b)
            n += 1
        value = (1.4826 / math.sqrt(2.0) * _small_median(window, n) if n > 0 else 0.0) + floor
        for k in range(start, stop):
            out[k] = value
    return out


@njit(cache=True, nogil=True)
def _small_median(values: np.ndarray, n: int) -> float:  # pragma: no cover
    """``np.median(values[:n])`` (``n >= 1``, finite values) of a few dozen values, sorting them in place.

    An insertion sort: a block of :func:`outer_line_noise` (33 values) in a third of a microsecond, where
    ``np.median``'s copy and selection took 1.4 (it ran 16 times a line, for every line a band was tried at).
    """
    insertion_sort(values, n)
    half = n // 2
    return values[half] if n % 2 == 1 else (values[half - 1] + values[half]) / 2


@njit(cache=True, nogil=True)
def _screen(means: np.ndarray, contrast: float, max_width: int) -> tuple:  # pragma: no cover
    """Return ``(starts, widths)`` of the bands of 1 to ``max_width`` lines whose ``means`` spike (``dead_lines``' screen).

    Every line of a band lies beyond both lines outside it, on one side, the farthest by more than ``contrast`` times
    the profile's noise; a band of three or more is sharp (:func:`_sharp_means`).
    """
    rows = means.shape[0]
    diffs = np.empty(rows - 1)
    for i in range(rows - 1):
        diffs[i] = abs(means[i + 1] - means[i])
    curvature = np.empty(rows - 2)
    for i in range(rows - 2):
        curvature[i] = abs(means[i + 2] - 2.0 * means[i + 1] + means[i])
    # the smaller of the first and (scaled to agree on white noise: sqrt(6) against sqrt(2) sigma) second differences'
    # spread: where the means rise steadily across the lines (a turned collimator's field) the first differences are
    # that slope, and a dead column through such a field's corner was screened out
    profile_noise = 1.4826 * min(median(diffs), median(curvature) / math.sqrt(3.0)) \
        + 1e-12 * ((means.max() - means.min()) + 1.0)
    threshold = contrast * profile_noise  # a screen: dead_lines' pixel test (or the caller's) decides
    # every band that passes the screen; a band that no longer lies beyond the row before it cannot by growing
    starts = []
    widths = []
    for i in range(1, rows - 1):
        low = high = means[i]
        for width in range(1, max_width + 1):
            last = i + width - 1
            if last + 1 > rows - 1:
                break
            low, high = min(low, means[last]), max(high, means[last])
            if not (low > means[i - 1] or high < means[i - 1]):
                break
            if _beyond(low, high, means[i - 1], means[last + 1], threshold) and _sharp_means(means, i, last):
                starts.append(i)
                widths.append(width)
    return starts, widths


@njit(cache=True, nogil=True)
def line_means(work: np.ndarray) -> tuple:  # pragma: no cover
    """Return the means of ``work``'s rows and of its columns (``(rows,)``, ``(cols,)``), in one pass (any float dtype)."""
    rows, cols = work.shape
    row_means = np.zeros(rows)
    col_means = np.zeros(cols)
    for i in range(rows):
        total = 0.0
        for j in range(cols):
            value = float(work[i, j])
            total += value
            col_means[j] += value
        row_means[i] = total / cols
    return row_means, col_means / rows


@njit(cache=True, nogil=True)
def interlaced(means: np.ndarray, contrast: float, share: float) -> bool:  # pragma: no cover
    """Whether line ``means`` alternate, line by line, far beyond their own steps (``portalign.field``'s rule).

    The second differences (each line against the mean of its two neighbours) alternate in sign over ``share`` of
    the lines, and their median magnitude is ``contrast`` times the spread (1.4826 x the median) of the steps
    between lines of one parity (two apart): anatomy and noise alternate by chance (half the lines), with second
    differences the size of those steps or less. Lines whose second difference is exactly zero (a clipped region's:
    a dosimetry image's zero outside, dead or not) are left out; at least 16 pairs of others must be there.
    """
    n = means.shape[0]
    if n < 4:
        return False
    curvature = np.empty(n - 2)
    for i in range(n - 2):
        curvature[i] = means[i + 1] - 0.5 * (means[i] + means[i + 2])
    pairs = 0
    alternating = 0
    for i in range(n - 3):
        if curvature[i] != 0.0 and curvature[i + 1] != 0.0:
            pairs += 1
            alternating += np.sign(curvature[i + 1]) * np.sign(curvature[i]) < 0
    if pairs < 16 or alternating < share * pairs:  # (most images: no median needed; this runs on every frame)
        return False
    shown_steps = np.empty(n - 2)
    shown_curvature = np.empty(n - 2)
    shown = 0
    for i in range(n - 2):
        if curvature[i] != 0.0:
            shown_steps[shown] = abs(means[i + 2] - means[i])
            shown_curvature[shown] = abs(curvature[i])
            shown += 1
    spread = 1.4826 * median(shown_steps[:shown]) + 1e-12 * ((means.max() - means.min()) + 1.0)
    return median(shown_curvature[:shown]) > contrast * spread


@njit(cache=True, nogil=True)
def line_candidates(row_means: np.ndarray, col_means: np.ndarray, contrast: float, max_width: int,
                    interlace_contrast: float, interlace_share: float, min_share: float, strong_contrast: float,
                    row_lines: np.ndarray, col_lines: np.ndarray) -> tuple:  # pragma: no cover
    """Screen a detector's line means for dead and hot lines; return ``(n_rows, n_cols, rows_alternate, cols_alternate, found)``.

    The lines taken up go to ``row_lines[:n_rows]`` and ``col_lines[:n_cols]`` (int64 buffers as long as the means: no
    array is returned, whose boxing would cost the caller's per-frame path Python-level calls). Where some axis's means
    alternate (:func:`interlaced`), or its lines that spike (:func:`screened_lines` at ``contrast``) fall in more
    separate bands than ``min_share`` of its lines (0: any band at all), a striped image's, every line that spikes is
    taken up; otherwise only those that spike by ``strong_contrast`` (a dead or hot line's mean against its
    neighbours'; a rendering's CT slices and anatomy's edges stay far below). ``found``: some line is taken up, or some
    axis alternates.
    """
    rows = screened_lines(row_means, contrast, max_width)
    cols = screened_lines(col_means, contrast, max_width)
    rows_interlaced = interlaced(row_means, interlace_contrast, interlace_share)
    cols_interlaced = interlaced(col_means, interlace_contrast, interlace_share)
    striped = (rows_interlaced or cols_interlaced or _bands(rows) > min_share * row_means.shape[0]
               or _bands(cols) > min_share * col_means.shape[0])
    if not striped:
        rows = screened_lines(row_means, strong_contrast, max_width) if rows.shape[0] else rows
        cols = screened_lines(col_means, strong_contrast, max_width) if cols.shape[0] else cols
    row_lines[:rows.shape[0]] = rows
    col_lines[:cols.shape[0]] = cols
    found = striped or rows.shape[0] > 0 or cols.shape[0] > 0
    return rows.shape[0], cols.shape[0], rows_interlaced, cols_interlaced, found


@njit(cache=True, nogil=True)
def _bands(lines: np.ndarray) -> int:  # pragma: no cover
    """Return how many runs of consecutive indices the sorted ``lines`` make."""
    count = 0
    for i in range(lines.shape[0]):
        if i == 0 or lines[i] != lines[i - 1] + 1:
            count += 1
    return count


@njit(cache=True, nogil=True)
def screened_lines(means: np.ndarray, contrast: float, max_width: int) -> np.ndarray:  # pragma: no cover
    """Return the lines (sorted) of every band of ``means`` that :func:`dead_lines`' screen takes up."""
    taken = np.zeros(means.shape[0], dtype=np.bool_)
    if means.shape[0] < 5:
        return np.nonzero(taken)[0].astype(np.int64)
    starts, widths = _screen(means, contrast, max_width)
    for c in range(len(starts)):
        for r in range(starts[c], starts[c] + widths[c]):
            taken[r] = True
    return np.nonzero(taken)[0].astype(np.int64)


@njit(cache=True, nogil=True)
def dead_lines(work: np.ndarray, contrast: float, share: float, max_width: int,  # pragma: no cover
               confirmed: bool = False) -> np.ndarray:
    """Return the rows of ``work`` that read far off their neighbours along most of their length (dead/hot lines).

    A band of one to ``max_width`` adjacent rows (a dead detector line, two that a box reduction spread over
    two rows, or a dead readout module's block) qualifies in two passes. First the row means: every row of the
    band lies beyond both rows outside it, on one side, and the farthest by more than ``contrast`` times the
    profile's noise (1.4826 MAD of the mean differences, or of the second differences over sqrt(3) where that is
    less: a profile that rises steadily). This is a screen: a box reduction leaves a band's
    edge rows part-way, and a line's mean mixes the field with the faint outside. A band of three or more rows
    must also be sharp there (:func:`_sharp_means`). Every band that passes is a candidate (a band's first row
    alone can pass against a second dead row). Then pixel by pixel (first whether it lies beyond them at all,
    before the noise is worked out: most candidates fail that): over at least ``share`` of its pixels every
    row of the band lies beyond both outside rows, on one side, the farthest by more than ``contrast`` times
    noise at its column: the smaller of the image's line-to-line noise there (:func:`line_noise`) and the outside
    rows' own difference about it (:func:`outer_line_noise`: a dead line crossing a field reads far off its
    neighbours inside it, and off the faint dose outside it by less, but by as many of the outside's smaller
    noise). Pixels that can show no line (:func:`_silent`: clipped, as a dosimetry image's zero outside) are left
    out of that share where the band reads the clipped value itself wherever it stands out (``LIVE_MIN_PIXELS``).
    A band of up to ``SEGMENT_MAX_WIDTH`` lines that spikes over too little of its whole length passes where it
    spikes over ``share`` of a stretch from one end of the line whose judged pixels number ``SEGMENT_MIN_SHARE`` of
    its length, and ``SEGMENT_MIN_PIXELS`` unless ``confirmed`` (:func:`end_segment`: a line dead from a break to its
    far end, half a line of a panel read out in halves).
    Returned: the rows of every candidate that passes, sorted. ``confirmed``: the caller confirms each band
    on the detector's own pixels, so the second pixel pass asks ``CONFIRMED_CONTRAST`` (one) noise sigma, not
    ``contrast`` (a single dead detector line is an eighth of a reduced line at a factor of 8: where anatomy's
    gradients are steep, its dip in the faint outside of a field was within five of their line-to-line spreads),
    and a band of up to ``SCREEN_WIDTH`` lines leaves the clipped pixels out whatever it reads.

    The rule of ``portalign.field``'s dead-line screening, compiled; ``kernels/reference/field.py`` is its
    numpy twin. ``portalign.field`` confirms each band on the detector's own pixels (bands wider than two
    lines must start and stop sharply).
    """
    rows, cols = work.shape
    bad = np.empty(0, dtype=np.int64)
    if rows < 5:
        return bad
    means = np.empty(rows)
    for i in range(rows):
        total = 0.0
        for j in range(cols):
            total += work[i, j]
        means[i] = total / cols
    starts, widths = _screen(means, contrast, max_width)
    if len(starts) == 0:
        return bad
    noise = np.empty(0)  # worked out for the first band that lies beyond its outside rows at all
    floor, lowest, highest = 0.0, np.inf, -np.inf  # (floor_and_extremes, for the first band examined)
    taken = np.zeros(rows, dtype=np.bool_)
    spikes = np.zeros(cols, dtype=np.bool_)  # each pixel of the band examined: spiking, and judged
    judged = np.zeros(cols, dtype=np.bool_)
    least = max(LIVE_MIN_PIXELS, LIVE_MIN_SHARE * cols)  # judged pixels a band needs, and a stretch from an end
    segment_least = max(least, SEGMENT_MIN_SHARE * cols, 0.0 if confirmed else SEGMENT_MIN_PIXELS)
    for c in range(len(starts)):
        i = starts[c]
        last = i + widths[c] - 1
        # first without the noise (a cheap pass that most candidates fail: a field's rows, an MLC leaf's, anatomy),
        # then by ``contrast`` noise sigmas
        for threshold_pass in range(2):
            if threshold_pass == 1:
                if noise.shape[0] == 0:
                    noise = line_noise(work)
                local = outer_line_noise(work, i - 1, last + 1, OUTER_NOISE_HALF_WINDOW, floor, lowest, highest)
            elif lowest > highest:
                floor, lowest, highest = floor_and_extremes(work)
            spiking = 0
            silent = 0
            unclipped = 0  # spiking pixels where the band does not read one clipped value
            for j in range(cols):
                low = high = work[i, j]
                for r in range(i + 1, last + 1):
                    low, high = min(low, work[r, j]), max(high, work[r, j])
                threshold = 0.0 if threshold_pass == 0 else (CONFIRMED_CONTRAST if confirmed else contrast) \
                    * min(noise[j], local[j])
                spikes[j] = _beyond(low, high, work[i - 1, j], work[last + 1, j], threshold)
                judged[j] = True
                if spikes[j]:
                    spiking += 1
                    unclipped += not (low == high and (low == lowest or low == highest))
                elif _silent(low, high, work[i - 1, j], work[last + 1, j],
                             np.inf if threshold_pass == 0 else threshold, lowest, highest):
                    silent += 1  # (the first pass does not know the noise: any band at a clipped value is silent)
                    judged[j] = False
            if unclipped > 0 and not (confirmed and last - i < SCREEN_WIDTH):
                # only a band at the clipped value itself wherever it stands out (a dead line reads zero, a hot one
                # saturates) is judged by the pixels that can show it: a round object's middle line (a Winston-Lutz
                # ball bearing's) dips below its neighbours over the few unclipped rows of a small field as well.
                # Where the detector's own pixels confirm, a line or two is screened so all the same: a box reduction
                # leaves a dead line part-way (half a reduced line's value at a factor of 2)
                silent = 0
                judged[:] = True
            live = cols - silent
            if live < least or (spiking < share * live and not (
                    last - i < SEGMENT_MAX_WIDTH and end_segment(spikes, judged, share, segment_least))):
                spiking = 0
                break
        if spiking > 0:
            for r in range(i, last + 1):
                taken[r] = True
    return np.nonzero(taken)[0].astype(np.int64)


@njit(cache=True, nogil=True)
def detect_front(small: np.ndarray, contrast: float, share: float, max_share: float,  # pragma: no cover
                 min_effectiveness: float, min_border_outside: float, area_low: float, area_high: float, min_pixels: int,
                 min_largest_part: float, mask_out: np.ndarray, box_out: np.ndarray, three_bins: int,
                 confirmed: bool = False) -> tuple:
    """Field detection's usual case in one call: no dead line in ``small``, then :func:`split_field`.

    ``small`` (any float dtype) is taken as float64, as ``portalign.field.detect_field`` takes it. Returns
    ``(dead, code, threshold, effectiveness, field_is_bright, three)``: with ``dead`` true some row or column
    qualified as a dead line and nothing else was done (the caller confirms it on the detector's own
    pixels and bridges it: rare, and done in Python). Bands of up to ``max_share`` of the lines (two at
    least) are looked for. ``three`` is :func:`three_level_split` over ``three_bins`` bins with the field found
    (code ``FIELD``), else ``NO_THREE_LEVELS``: whether the field found is only the top level of a wider one.
    """
    values = np.empty(small.shape)
    for i in range(small.shape[0]):
        for j in range(small.shape[1]):
            values[i, j] = small[i, j]
    rows, cols = small.shape
    if dead_lines(values, contrast, share, max(2, int(max_share * rows)), confirmed).shape[0] > 0 or \
            dead_lines(np.ascontiguousarray(values.T), contrast, share, max(2, int(max_share * cols)),
                       confirmed).shape[0] > 0:
        return True, NOT_A_FIELD, 0.0, 0.0, True, NO_THREE_LEVELS
    code, threshold, effectiveness, bright = split_field(values, min_effectiveness, min_border_outside, area_low,
                                                         area_high, min_pixels, min_largest_part, mask_out, box_out)
    if code != FIELD:
        return False, code, threshold, effectiveness, bright, NO_THREE_LEVELS
    return False, code, threshold, effectiveness, bright, three_level_split(values, three_bins, mask_out)


@njit(cache=True, nogil=True)
def _central_range(flat: np.ndarray, tail: float) -> tuple:  # pragma: no cover
    """Return the values below which ``tail`` and above which ``tail`` of ``flat`` lie, to 1/4096 of its range."""
    lo, hi = min_max(flat)
    if not hi > lo:
        return lo, hi
    fine = 4096
    width = (hi - lo) / fine
    hist = bin_counts(flat, lo, width, fine)
    cut = tail * flat.size
    below = 0
    first = 0
    for b in range(fine):
        below += hist[b]
        if below > cut:
            first = b
            break
    above = 0
    last = fine - 1
    for b in range(fine - 1, -1, -1):
        above += hist[b]
        if above > cut:
            last = b
            break
    return lo + width * first, lo + width * (last + 1)


@njit(cache=True, nogil=True)
def three_level_split(values: np.ndarray, bins: int, found: np.ndarray) -> tuple:  # pragma: no cover
    """Otsu's split of ``values`` into three levels, and what the field would be if the outside is an extreme one.

    The histogram spans the 0.1-99.9th percentiles (``bins`` bins; values beyond them in the end bins) and the pair
    of thresholds with the largest between-class variance is taken (N. Otsu, IEEE Trans. Syst. Man Cybern. 9(1),
    1979, whose criterion extends to several thresholds). The outside is the extreme level that covers more of the
    image's border; the field is the two others. ``found`` (uint8, any shape) is a field found already: its pixels
    are counted (the caller compares the two fields without another call).

    Returns
    -------
    tuple
        ``(effectiveness, threshold, field_is_bright, outside_on_border, field_count, separation, found_count)``: the
        share of the variance between the levels (-1 for a constant image); the threshold between the outside and the
        field; the outside's share of the border; the field's pixel count; the distance between the mean of the
        outside and that of the middle level, in standard deviations of the outside; and the pixels of ``found``.
    """
    found_count = 0
    for v in found.ravel():
        found_count += v != 0
    rows, cols = values.shape
    flat = values.ravel()
    lo, hi = _central_range(flat, 0.001)
    if not hi > lo:
        return -1.0, 0.0, True, 0.0, 0, 0.0, found_count
    width = (hi - lo) / bins
    hist = bin_counts(flat, lo, width, bins).astype(np.float64)
    n = flat.size
    w = np.empty(bins)
    m = np.empty(bins)
    cw = 0.0
    cm = 0.0
    for b in range(bins):
        cw += hist[b] / n
        cm += hist[b] / n * (lo + width * (b + 0.5))
        w[b] = cw
        m[b] = cm
    mt = m[bins - 1]
    total = 0.0
    for b in range(bins):
        total += hist[b] / n * (lo + width * (b + 0.5) - mt) ** 2
    best = -1.0
    bi = 0
    bj = 1
    for i in range(bins - 2):
        w0 = w[i]
        if w0 <= 1e-12:
            continue
        t0 = m[i] ** 2 / w0
        for j in range(i + 1, bins - 1):
            w1 = w[j] - w0
            w2 = 1.0 - w[j]
            if w1 <= 1e-12 or w2 <= 1e-12:
                continue
            between = t0 + (m[j] - m[i]) ** 2 / w1 + (mt - m[j]) ** 2 / w2 - mt * mt
            if between > best:
                best = between
                bi = i
                bj = j
    if best < 0.0 or total <= 0.0:
        return -1.0, 0.0, True, 0.0, 0, 0.0, found_count
    low = lo + width * (bi + 1)
    high = lo + width * (bj + 1)
    dark = 0
    bright = 0
    border = 0
    for k in range(2 * (rows + cols) - 4):
        if k < cols:
            v = values[0, k]
        elif k < 2 * cols:
            v = values[rows - 1, k - cols]
        elif k < 2 * cols + rows - 2:
            v = values[k - 2 * cols + 1, 0]
        else:
            v = values[k - 2 * cols - rows + 3, cols - 1]
        dark += v < low
        bright += v >= high
        border += 1
    field_is_bright = dark >= bright
    threshold = low if field_is_bright else high
    count = 0
    s_out = 0.0
    s2_out = 0.0
    n_out = 0
    s_mid = 0.0
    n_mid = 0
    for v in flat:
        if (v >= threshold) == field_is_bright:
            count += 1
        else:
            s_out += v
            s2_out += v * v
            n_out += 1
        if low <= v < high:
            s_mid += v
            n_mid += 1
    if n_out < 2 or n_mid == 0:
        return best / total, threshold, field_is_bright, 0.0, count, 0.0, found_count
    mean_out = s_out / n_out
    spread = np.sqrt(max(s2_out / n_out - mean_out * mean_out, 0.0))
    separation = abs(s_mid / n_mid - mean_out) / spread if spread > 0.0 else np.inf
    return (best / total, threshold, field_is_bright, (dark if field_is_bright else bright) / border, count,
            separation, found_count)


@njit(cache=True, nogil=True)
def _band_pixel_silent(low: float, high: float, outer_1: float, outer_2: float, threshold: float, lowest: float,
                       highest: float, stuck: float) -> bool:  # pragma: no cover
    """Whether a pixel of a band (its ``low`` and ``high`` over the band's lines) can show no dead line.

    :func:`_silent`, and a band stuck at ``stuck`` (every pixel of it that value; NaN: not stuck) whose outer values
    do not both stand clear of it by ``threshold`` on one side (a dead line's zero against a field's faint outside).
    """
    if low != high:
        return False
    if outer_1 == low and outer_2 == low:
        return True
    if low == lowest and max(outer_1, outer_2) - lowest <= threshold:
        return True
    if low == highest and highest - min(outer_1, outer_2) <= threshold:
        return True
    if low == stuck:  # False for NaN
        clear = ((outer_1 - stuck > threshold and outer_2 - stuck > threshold)
                 or (stuck - outer_1 > threshold and stuck - outer_2 > threshold))
        return not clear
    return False


@njit(cache=True, nogil=True)
def _band_sharp(work: np.ndarray, first: int, last: int, spiking: np.ndarray, wide: bool, edge_step: float,
                block_sharp: float) -> bool:  # pragma: no cover
    """Whether the band ``work[first:last + 1]`` starts and stops at a detector line, over the pixels ``spiking``.

    Depths are mean distances from the nearer of the two lines just outside the band; the image steps less outside
    the band (the smaller of its two outer steps) than ``edge_step`` times the band's median depth, and a ``wide``
    band's first and last lines are at least ``block_sharp`` times as deep as its median line.
    """
    rows, cols = work.shape
    n = 0
    band_total = 0.0
    before_total = 0.0
    for j in range(cols):
        if spiking[j]:
            n += 1
            before_total += work[first - 1, j]
            for r in range(first, last + 1):
                band_total += work[r, j]
    width = last - first + 1
    if n == 0:
        return False
    brighter = band_total / (n * width) > before_total / n
    depth = np.empty(width)
    for r in range(first, last + 1):
        total = 0.0
        for j in range(cols):
            if spiking[j]:
                outer = (max(work[first - 1, j], work[last + 1, j]) if brighter
                         else min(work[first - 1, j], work[last + 1, j]))
                total += abs(work[r, j] - outer)
        depth[r - first] = total / n
    middle = median(depth)
    if middle <= 0.0:
        return False
    step_before = np.inf
    step_after = np.inf
    if first >= 2:
        total = 0.0
        for j in range(cols):
            if spiking[j]:
                total += abs(work[first - 1, j] - work[first - 2, j])
        step_before = total / n
    if last + 2 < rows:
        total = 0.0
        for j in range(cols):
            if spiking[j]:
                total += abs(work[last + 1, j] - work[last + 2, j])
        step_after = total / n
    if min(step_before, step_after) > edge_step * middle:
        return False
    return (not wide) or min(depth[0], depth[width - 1]) >= block_sharp * middle


@njit(cache=True, nogil=True)
def _judged_pixels(work: np.ndarray, outer_1: int, outer_2: int, standing: np.ndarray, low: np.ndarray,
                   high: np.ndarray, threshold: np.ndarray, lowest: float, highest: float, stuck: float,
                   judged: np.ndarray) -> int:  # pragma: no cover
    """Mark in ``judged`` and count the pixels a band is judged by, between outside lines ``outer_1`` and ``outer_2``.

    Every pixel where the band stands out somewhere it is not clipped (at the image's extremes or its stuck value);
    otherwise those ``standing`` out and those that are not silent (:func:`_band_pixel_silent`). (:func:`dead_band`.)
    """
    cols = work.shape[1]
    for j in range(cols):
        if standing[j] and not (low[j] == high[j] and (low[j] == lowest or low[j] == highest or low[j] == stuck)):
            judged[:] = True
            return cols
    count = 0
    for j in range(cols):
        judged[j] = standing[j] or not _band_pixel_silent(low[j], high[j], work[outer_1, j], work[outer_2, j],
                                                          threshold[j], lowest, highest, stuck)
        if judged[j]:
            count += 1
    return count


@njit(cache=True, nogil=True)
def dead_band(work: np.ndarray, start: int, stop: int, noise: np.ndarray, max_width: int, contrast: float,
              share: float, band_max: int, half_window: int, edge_step: float, block_sharp: float,
              least: float) -> tuple:  # pragma: no cover
    """Return ``(first, last)`` of a band of 1 to ``max_width`` dead detector lines starting in ``work[start:stop]``.

    ``(-1, -1)`` where none does. The rule of ``portalign.field._bridge_dead_lines``' confirmation, one compiled
    call (``kernels/reference/field.py``'s ``dead_band`` is the same in numpy, line by line): over at least ``share``
    of their judged pixels (at least ``least``; pixels that can show nothing, :func:`_band_pixel_silent`, are not
    judged unless the band stands out where it is not clipped) the band's lines all lie beyond the two lines just
    outside it, on one side, by more than ``contrast`` times the noise there (the smaller of ``noise``, ``(cols,)``,
    and :func:`outer_line_noise` of the two outside lines). A band of up to ``band_max`` lines must have outside
    lines that differ from each other by less than half its spike there; a wider one must start and stop sharply
    (:func:`_band_sharp`, ``edge_step`` and ``block_sharp``). A band of up to ``SEGMENT_MAX_WIDTH`` lines may meet
    each share along a stretch from one end of the lines instead, whose judged pixels number ``SEGMENT_MIN_SHARE`` of
    the length and ``SEGMENT_MIN_PIXELS`` (:func:`end_segment`). The widest band at the first line that starts one.

    Parameters
    ----------
    work : float64[rows, cols]
        Detector lines (rows) of the image or a segment of them.
    start, stop : int
        The lines a band may start at (``start`` at least 1).
    noise : float64[cols]
    max_width : int
    """
    rows, cols = work.shape
    floor, lowest, highest = floor_and_extremes(work)
    low = np.empty(cols)
    high = np.empty(cols)
    threshold = np.empty(cols)
    beyond = np.empty(cols, dtype=np.bool_)
    spiking = np.empty(cols, dtype=np.bool_)
    judged = np.empty(cols, dtype=np.bool_)
    segment_least = max(least, SEGMENT_MIN_SHARE * cols, SEGMENT_MIN_PIXELS)  # judged pixels of a stretch from an end
    for first in range(max(start, 1), min(stop, rows - 1)):
        for j in range(cols):
            low[j] = work[first, j]
            high[j] = work[first, j]
        widest_first = -1
        widest_last = -1
        for width in range(1, max_width + 1):
            last = first + width - 1
            if last + 1 >= rows:
                break
            outer = outer_line_noise(work, first - 1, last + 1, half_window, floor, lowest, highest)
            band_low = np.inf
            band_high = -np.inf
            for j in range(cols):
                threshold[j] = contrast * min(noise[j], outer[j])
                low[j] = min(low[j], work[last, j])
                high[j] = max(high[j], work[last, j])
                band_low = min(band_low, low[j])
                band_high = max(band_high, high[j])
            # a stuck band: every pixel of it reads one value while the lines about it vary
            stuck = np.nan
            if band_low == band_high:
                for j in range(cols):
                    if work[first - 1, j] != low[0]:
                        stuck = low[0]
                        break
            # against the line before it
            n_beyond = 0
            for j in range(cols):
                before = work[first - 1, j]
                beyond[j] = low[j] - before > threshold[j] or before - high[j] > threshold[j]
                if beyond[j]:
                    n_beyond += 1
            count = _judged_pixels(work, first - 1, first - 1, beyond, low, high, threshold, lowest, highest, stuck,
                                   judged)
            if count < least or (n_beyond < share * count and not (
                    width <= SEGMENT_MAX_WIDTH and end_segment(beyond, judged, share, segment_least))):
                break  # the band no longer lies beyond the line before it: wider bands cannot either
            # and against the line after it
            n_spiking = 0
            for j in range(cols):
                before = work[first - 1, j]
                after = work[last + 1, j]
                spiking[j] = low[j] - max(before, after) > threshold[j] or min(before, after) - high[j] > threshold[j]
            count = _judged_pixels(work, first - 1, last + 1, spiking, low, high, threshold, lowest, highest, stuck,
                                   judged)
            for j in range(cols):
                if spiking[j] and width <= band_max:
                    before = work[first - 1, j]
                    after = work[last + 1, j]
                    up = low[j] - max(before, after) > threshold[j]
                    spike = low[j] - max(before, after) if up else min(before, after) - high[j]
                    spiking[j] = abs(before - after) < 0.5 * spike
                if spiking[j]:
                    n_spiking += 1
            if count < least or (n_spiking < share * count and not (
                    width <= SEGMENT_MAX_WIDTH and end_segment(spiking, judged, share, segment_least))):
                continue
            if not _band_sharp(work, first, last, spiking, width > band_max, edge_step, block_sharp):
                continue
            widest_first = first
            widest_last = last
        if widest_first >= 0:
            return widest_first, widest_last
    return -1, -1


@njit(cache=True, nogil=True)
def _lower_envelope(f: np.ndarray, n: int, h: float, out: np.ndarray, v: np.ndarray, z: np.ndarray) -> None:  # pragma: no cover
    """``out[q] = min_p ((h (q - p))^2 + f[p])`` for ``q < n``: the lower envelope of parabolas.

    Felzenszwalb and Huttenlocher, "Distance transforms of sampled functions", Theory of Computing 8 (2012),
    algorithm 1, with a grid step ``h``; ``f`` holds ``inf`` where no source is. ``v`` (int) and ``z`` are scratch
    of ``n`` and ``n + 1``.
    """
    k = -1
    for q in range(n):
        if f[q] == np.inf:
            continue
        if k < 0:
            k = 0
            v[0] = q
            z[0] = -np.inf
            z[1] = np.inf
            continue
        while True:
            p = v[k]
            s = ((f[q] + (h * q) * (h * q)) - (f[p] + (h * p) * (h * p))) / (2.0 * h * h * (q - p))
            if s <= z[k]:
                k -= 1
                if k < 0:
                    break
            else:
                break
        k += 1
        v[k] = q
        z[k] = s if k > 0 else -np.inf
        z[k + 1] = np.inf
    if k < 0:
        for q in range(n):
            out[q] = np.inf
        return
    j = 0
    for q in range(n):
        while z[j + 1] < q:
            j += 1
        d = h * (q - v[j])
        out[q] = d * d + f[v[j]]


@njit(cache=True, nogil=True)
def largest_disc_diameter(mask: np.ndarray, spacing_row: float, spacing_col: float) -> float:  # pragma: no cover
    """Diameter (in the spacing's units) of the largest disc inside the nonzero pixels of ``mask``.

    Twice the largest Euclidean distance from a mask pixel to the nearest pixel outside it, the image beyond the
    border counting as outside (what ``scipy.ndimage.distance_transform_edt`` of the mask padded by one gives):
    the exact squared distance transform, one pass of :func:`_lower_envelope` along each axis. 0 for an empty mask.
    """
    rows, cols = mask.shape
    pr, pc = rows + 2, cols + 2  # padded by one pixel of outside on each side
    column = np.empty(pr)
    envelope = np.empty(max(pr, pc))
    v = np.empty(max(pr, pc), dtype=np.int64)
    z = np.empty(max(pr, pc) + 1)
    along_rows = np.empty((pr, pc))
    for c in range(pc):
        for r in range(pr):
            inside = 1 <= r <= rows and 1 <= c <= cols and mask[r - 1, c - 1] != 0
            column[r] = np.inf if inside else 0.0
        _lower_envelope(column, pr, spacing_row, envelope, v, z)
        for r in range(pr):
            along_rows[r, c] = envelope[r]
    best = 0.0
    line = np.empty(pc)
    for r in range(pr):
        for c in range(pc):
            line[c] = along_rows[r, c]
        _lower_envelope(line, pc, spacing_col, envelope, v, z)
        for c in range(pc):
            best = max(best, envelope[c])
    return 2.0 * math.sqrt(best)


@njit(cache=True, nogil=True)
def _mask_box(mask: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """Return ``(row_min, row_max, col_min, col_max)`` of the nonzero pixels of ``mask``; ``row_max`` -1 when none."""
    rows, cols = mask.shape
    r0, r1, c0, c1 = rows, -1, cols, -1
    for r in range(rows):
        for c in range(cols):
            if mask[r, c] != 0:
                r0 = min(r0, r)
                r1 = max(r1, r)
                c0 = min(c0, c)
                c1 = max(c1, c)
    return r0, r1, c0, c1


@njit(cache=True, nogil=True)
def _inside_depth(mask: np.ndarray, spacing: float) -> tuple:  # pragma: no cover - compiled
    """Distance (spacing's units) from each pixel to the nearest pixel where ``mask`` is 0; 0 outside the mask.

    The exact Euclidean distance transform, the image's border not counting as outside:
    ``scipy.ndimage.distance_transform_edt(mask) * spacing``; ``inf`` everywhere in a mask without a zero. Returns
    ``(depth, row_min, row_max, col_min, col_max)``: float64[rows, cols] and the mask's bounding box
    (:func:`_mask_box`), outside which the depth is 0.

    Worked out on the box widened by one pixel (where the image has it) only: the nearest zero of a pixel inside it
    is never beyond that ring of zeros (moving a point outside onto the box, coordinate by coordinate, brings it
    nearer). Along each column the squared distance to the nearest zero is found by two sweeps (a binary mask's
    first pass of the lower envelope), then one pass of :func:`_lower_envelope` along each row (Felzenszwalb and
    Huttenlocher, "Distance transforms of sampled functions", Theory of Computing 8 (2012)). The squared distances
    are small whole numbers, exact in float64: the same numbers as the envelope taken on the whole image.
    """
    rows, cols = mask.shape
    depth = np.zeros((rows, cols))
    r0, r1, c0, c1 = _mask_box(mask)
    if r1 < 0:
        return depth, r0, r1, c0, c1
    top, bottom = max(r0 - 1, 0), min(r1 + 1, rows - 1)
    left, right = max(c0 - 1, 0), min(c1 + 1, cols - 1)
    h = bottom - top + 1
    w = right - left + 1
    along = np.empty((h, w))
    for c in range(w):
        last = -1
        for r in range(h):  # down the column: rows since the last zero above (inf before the first)
            if mask[top + r, left + c] == 0:
                last = r
                along[r, c] = 0.0
            else:
                along[r, c] = float(r - last) if last >= 0 else np.inf
        last = -1
        for r in range(h - 1, -1, -1):  # and up: rows to the next zero below, where nearer
            if mask[top + r, left + c] == 0:
                last = r
            elif last >= 0 and float(last - r) < along[r, c]:
                along[r, c] = float(last - r)
        for r in range(h):
            along[r, c] = along[r, c] * along[r, c]
    envelope = np.empty(w)
    v = np.empty(w, dtype=np.int64)
    z = np.empty(w + 1)
    for r in range(h):
        _lower_envelope(along[r], w, 1.0, envelope, v, z)
        for c in range(w):
            depth[top + r, left + c] = math.sqrt(envelope[c]) * spacing
    return depth, r0, r1, c0, c1


@njit(cache=True, nogil=True)
def _central_gradient(values: np.ndarray, r: int, c: int) -> float:  # pragma: no cover - compiled
    """``hypot`` of ``numpy.gradient(values)`` at ``(r, c)``: central differences, one-sided at the border."""
    rows, cols = values.shape
    f64 = np.float64  # the differences in float64 whatever the image's type (numpy.gradient of its float64 copy)
    if r == 0:
        gy = f64(values[1, c]) - f64(values[0, c])
    elif r == rows - 1:
        gy = f64(values[r, c]) - f64(values[r - 1, c])
    else:
        gy = (f64(values[r + 1, c]) - f64(values[r - 1, c])) / 2.0
    if c == 0:
        gx = f64(values[r, 1]) - f64(values[r, 0])
    elif c == cols - 1:
        gx = f64(values[r, c]) - f64(values[r, c - 1])
    else:
        gx = (f64(values[r, c + 1]) - f64(values[r, c - 1])) / 2.0
    return math.hypot(gx, gy)


@njit(cache=True, nogil=True)
def penumbra_extent(image: np.ndarray, mask: np.ndarray, spacing: float, reach: float,
                    ring_median: bool = False) -> float:  # pragma: no cover - compiled
    """How far inside a field's edge (from the mask's border, in ``spacing``'s units) its penumbra still shows.

    ``portalign.field.penumbra_extent_mm``'s rule, compiled: the depth of each field pixel (:func:`_inside_depth`),
    the gradient magnitude of ``image`` (``numpy.gradient``'s differences), the interior's median magnitude
    (pixels deeper than ``reach``; with fewer than 16 of them, deeper than half the largest depth), then the
    deepest ring ``(k s, (k + 1) s]`` of ``s = spacing``, ``k s < reach``, with 4 or more pixels whose mean
    magnitude (``ring_median``: median magnitude) is three times that median: the extent is its outer depth (0 when
    none). A ring's median is blind to anatomy's few strong edges that lift its mean (a penumbra's ring is steep
    all round); the mean is the rule a reference portal image's band has been measured by. ``image`` is 2-D (any
    real type, read as float64) with at least 2 pixels on each axis, ``mask`` its field (nonzero inside); the same
    number as ``kernels.reference.field.penumbra_extent``.
    """
    depth, r0, r1, c0, c1 = _inside_depth(mask, spacing)  # (0 outside the mask's box: no pixel there counts)
    deepest = 0.0
    interior = 0
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            d = depth[r, c]
            deepest = max(deepest, d)
            if d > reach:
                interior += 1
    cut = reach if interior >= 16 else 0.5 * deepest
    size = (r1 - r0 + 1) * (c1 - c0 + 1) if r1 >= r0 else 0
    chosen = np.empty(size)
    n = 0
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            if depth[r, c] > cut:
                chosen[n] = _central_gradient(image, r, c)
                n += 1
    baseline = median(chosen[:n]) if n > 0 else 0.0
    steps = int(math.ceil(reach / spacing))
    sums = np.zeros(steps)
    counts = np.zeros(steps, dtype=np.int64)
    ring_of = np.empty(size, dtype=np.int64)  # (ring_median) each ring pixel's ring and magnitude
    magnitudes = np.empty(size)
    listed = 0
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            d = depth[r, c]
            if not d > 0.0 or d > steps * spacing + spacing:
                continue
            k0 = int(d / spacing)
            for k in range(max(k0 - 1, 0), min(k0 + 2, steps)):  # the ring (k s, k s + s] that holds d, exactly
                start = k * spacing
                if d > start and d <= start + spacing:
                    magnitude = _central_gradient(image, r, c)
                    sums[k] += magnitude
                    counts[k] += 1
                    ring_of[listed] = k
                    magnitudes[listed] = magnitude
                    listed += 1
                    break
    extent = 0.0
    values = np.empty(listed)
    for k in range(steps):
        if counts[k] < 4:
            continue
        if ring_median:
            n = 0
            for i in range(listed):
                if ring_of[i] == k:
                    values[n] = magnitudes[i]
                    n += 1
            level = median(values[:n])
        else:
            level = sums[k] / counts[k]
        if level >= 3.0 * baseline:
            extent = k * spacing + spacing
    return extent
