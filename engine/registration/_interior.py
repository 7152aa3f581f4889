"""The anatomy deep inside a fixed aperture, and where it places the frame.

A portal pair through one aperture fixed to the beam: the reference is ``A(x) T(x)`` and the frame ``A(x) T(x - t)``,
``A`` the aperture's transmission (the field and its penumbra) and ``T`` the patient's, moved by ``t``. A match at
the aperture's own position can be placed by ``A``'s edges alone, whatever ``t`` is. In the log domain the two
factors add, ``log A`` is flat more than a few penumbra widths inside the field, and what is left there after a
high-pass is the patient's anatomy only. Its cross-correlation (masked, normalised) over shifts near the match says
whether the anatomy agrees with it.

The penumbra is fitted as the field mask blurred by a Gaussian (least squares, the reference alone); the deep
interior lies ``INTERIOR_PENUMBRA_SIGMAS`` penumbra widths and ``INTERIOR_EXTRA_MM`` further inside the field edge,
in both images. The masked normalised cross-correlation follows Padfield, "Masked object registration in the
Fourier domain", IEEE Trans. Image Process. 21 (2012) 2706-2718: six FFT correlations give every shift's overlap
sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from portalign.kernels.cpu.peaks import parabola_offset
from scipy import fft as sfft
from scipy import ndimage

from ..field import FieldEstimate, field_pixels
from ..image import Image
from ._plan import pose_affines

__all__ = ["InteriorModel", "interior_surface", "reference_spectra", "InteriorMatch"]

#: Working grid (mm): the images are block-averaged to about this pixel. At 0.8 (a 0.49 mm detector binned 2 x 2)
#: a frame cost a quarter as much, but two of last session's corpus traps passed and a sound pair was refused: the
#: narrowed leaves' steps, read at 1 mm, fell under ``INTERIOR_STRONG_STEP``.
INTERIOR_PIXEL_MM = 0.6
#: Smoothing (Gaussian sigma, mm) before the log, against the detector's noise.
INTERIOR_SMOOTH_MM = 1.0
#: High-pass (Gaussian sigma, mm, normalised over the field's flat interior): what is left is anatomy, not the
#: slow fall of the beam profile or of the patient's thickness.
INTERIOR_HIGHPASS_MM = 4.0
#: Penumbra widths (fitted Gaussian sigma) inside the field edge where the aperture's log transmission is flat
#: (Phi(-3) = 0.13 %: under any anatomy's contrast), and a further margin for the smoothing and the match's own
#: displacement of the frame's aperture.
INTERIOR_PENUMBRA_SIGMAS = 3.0
INTERIOR_EXTRA_MM = 2.0
#: A step in log transmission at least this high (a transmission ratio of exp(-0.5) = 0.61 or less across it) is
#: taken for the aperture's: MV anatomy inside a field (lung against mediastinum, bone) steps less.
INTERIOR_STRONG_STEP = 0.5
#: ...unless it lies wholly more than this (mm) further inside the field than where such steps are first counted (2
#: penumbra sigmas): an island (a Winston-Lutz ball bearing, a fiducial marker, a dense bone) moves with the patient.
#: Leaves closed or narrowed inside a field, and blocks, reach in from its edge. A step wholly within that band is the
#: field edge's own penumbra (a real one has wider tails than its fitted Gaussian: a TrueBeam Winston-Lutz field's
#: read as a ring of steps 2 sigma inside its edge, which took 50 of its 120 mm^2 of deep interior).
INTERIOR_ISLAND_MM = 1.0
#: A hole inside the field that transmits more than this share of the field's median is the patient's (a ball
#: bearing: 50-75 % at MV), not a block's (a few %, as the leaves): it is part of the field.
INTERIOR_HOLE_TRANSMISSION = 0.25
#: Penumbra sigmas (mm) tried in the fit.
INTERIOR_SIGMAS_MM = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5)
#: Shifts (mm) of the frame's anatomy from the match that the surface covers.
INTERIOR_SEARCH_MM = 7.0
#: A shift is scored where the two deep regions overlap in at least this share of the unshifted overlap.
INTERIOR_MIN_OVERLAP = 0.5
#: The surface's runner-up is its best shift at least this far (mm) from the peak.
INTERIOR_DISTINCT_MM = 2.0
#: Fewer deep-interior pixels (working grid) in both images at the match than this and there is nothing to correlate.
INTERIOR_MIN_PIXELS = 30


@dataclass(frozen=True)
class InteriorMatch:
    """The deep interior's correlation surface, summarised.

    Attributes
    ----------
    pixels : int
        Deep-interior pixels (working grid) in both images at the match.
    area_mm2 : float
        Their area (mm^2).
    penumbra_sigma_mm : float
        The fitted penumbra (Gaussian sigma, mm).
    margin_mm : float
        How far inside the field edge the deep interior starts (mm).
    correlation_at_match : float
        Normalised cross-correlation of the two log residuals at the match.
    correlation_peak : float
        The surface's maximum.
    offset_mm : (float, float)
        Where the peak lies from the match, (column, row) of the reference grid in mm.
    anatomy_pose : (float, float)
        ``(dx_mm, dy_mm)`` of the pose the anatomy alone places (the match moved by ``offset_mm``).
    at_limit : bool
        The peak lies at the edge of the shifts scored (the search range, or half the overlap left in a small
        interior): the anatomy lies at least that far from the match, in that direction.
    runner_up : float
        The surface's maximum more than ``INTERIOR_DISTINCT_MM`` from its peak (NaN where no shift that far was
        scored): how much better the anatomy fits where it places the frame than anywhere else.
    contrast : float
        The anatomy's contrast there: the root mean square of the log residual over the two deep regions' overlap
        at the match, the smaller of the two images' (log units: 0.1 is a 10 % variation of transmission).
    """

    pixels: int
    area_mm2: float
    penumbra_sigma_mm: float
    margin_mm: float
    correlation_at_match: float
    correlation_peak: float
    offset_mm: tuple[float, float]
    anatomy_pose: tuple[float, float]
    at_limit: bool = False
    runner_up: float = math.nan
    contrast: float = math.nan

    @property
    def offset_norm_mm(self) -> float:
        """Distance (mm) of the surface's peak from the match."""
        return math.hypot(*self.offset_mm)


def _block_mean(a: np.ndarray, fr: int, fc: int) -> np.ndarray:
    h, w = (a.shape[0] // fr) * fr, (a.shape[1] // fc) * fc
    return a[:h, :w].reshape(h // fr, fr, w // fc, fc).mean(axis=(1, 3))


def _transmission(a: np.ndarray, field_is_bright: bool, valid: np.ndarray | None = None) -> np.ndarray:
    """Return pixel values that rise with the transmission (a dark field's turned over below its 99.9th percentile)."""
    if not field_is_bright:  # a dark field: the values fall as the transmission rises
        top = np.nanpercentile(a if valid is None else a[valid], 99.9)
        a = top - a
    return a


class InteriorModel:
    """The reference side of the interior check: its crop, penumbra fit, deep region and log residual.

    Parameters
    ----------
    image : Image
        The reference (a portal image with a detected field).
    field : FieldEstimate
        Its field.

    Attributes
    ----------
    usable : bool
        False where the field leaves no deep interior (a small cone) or the image is not a transmission.
    """

    def __init__(self, image: Image, field: FieldEstimate) -> None:
        self.image = image
        self.field_is_bright = field.field_is_bright
        sr, sc = image.spacing_mm
        self.factor = (max(1, int(round(INTERIOR_PIXEL_MM / sr))), max(1, int(round(INTERIOR_PIXEL_MM / sc))))
        self.pix = (sr * self.factor[0], sc * self.factor[1])  # (row, col) mm of the working grid
        inside = field_pixels(image.pixels, field)  # holes kept: leaves closed inside the field have edges too
        rows, cols = np.nonzero(inside)
        self.usable = rows.size > 0
        if not self.usable:
            return
        # the crop: the field's box, the search range and the high-pass's reach around it
        pad = INTERIOR_SEARCH_MM + 3.0 * INTERIOR_HIGHPASS_MM
        r0 = max(0, int(rows.min() - pad / sr))
        c0 = max(0, int(cols.min() - pad / sc))
        fr, fc = self.factor
        r1 = min(image.shape[0], int(rows.max() + pad / sr) + 1)
        c1 = min(image.shape[1], int(cols.max() + pad / sc) + 1)
        r1 = r0 + ((r1 - r0) // fr) * fr
        c1 = c0 + ((c1 - c0) // fc) * fc
        self.box = (r0, r1, c0, c1)
        mask = _block_mean(inside[r0:r1, c0:c1].astype(np.float64), fr, fc) > 0.5
        ref = _transmission(_block_mean(image.pixels[r0:r1, c0:c1].astype(np.float64), fr, fc), self.field_is_bright)
        mask = _fill_transmitting_holes(mask, ref)
        self.mask = mask
        pr, pc = self.pix
        self.distance = (ndimage.distance_transform_edt(mask, sampling=(pr, pc))
                         - ndimage.distance_transform_edt(~mask, sampling=(pr, pc)))
        self.sigma = self._fit_penumbra(ref)
        self.margin = INTERIOR_PENUMBRA_SIGMAS * self.sigma + INTERIOR_EXTRA_MM
        self.level = float(np.median(ref[mask])) if mask.any() else 0.0
        if self.level > 0:
            # steps inside the field as strong as an aperture's (leaves closed or narrowed inside it, a block) are
            # kept as far away as the field's edge is
            self.distance = np.minimum(self.distance, self._strong_step_distance(ref))
        self.usable = self.level > 0 and bool(np.any(self.distance > self.margin))
        if self.usable:
            flat = self.distance > INTERIOR_PENUMBRA_SIGMAS * self.sigma
            # where the work is: every frame's flat region lies inside the reference's (``match``'s ``reach`` only
            # shrinks it), the residual is zero outside it and the correlation reads the deep region alone
            self.flat_box = _bounding_box(flat)
            self.smooth_box = _grown(self.flat_box, _gaussian_radius(INTERIOR_SMOOTH_MM, self.pix), flat.shape)
            self.residual = self._residual(ref, flat)
            self.deep = self.distance > self.margin
            self.deep_box = _bounding_box(self.deep)
            self.radius_px = (int(math.ceil(INTERIOR_SEARCH_MM / pr)), int(math.ceil(INTERIOR_SEARCH_MM / pc)))
            # the farthest the field reaches from the beam axis (mm): a rotation's largest displacement per radian
            ay, ax = image.beam_axis_px[1], image.beam_axis_px[0]
            self.radius_mm = float(np.max(np.hypot((rows - ay) * sr, (cols - ax) * sc)))
            d = _slices(self.deep_box)
            self._spectra = reference_spectra(self.residual[d], self.deep[d], self.radius_px)

    def _fit_penumbra(self, ref: np.ndarray) -> float:
        """Least-squares penumbra sigma (mm): ``ref ~ a + b G_sigma(mask)`` within 15 mm of the edge."""
        near = np.abs(self.distance) < 15.0
        values = ref[near]
        best, best_sigma = np.inf, INTERIOR_SIGMAS_MM[0]
        for sigma in INTERIOR_SIGMAS_MM:
            blurred = ndimage.gaussian_filter(self.mask.astype(np.float64), (sigma / self.pix[0], sigma / self.pix[1]))
            design = np.stack((np.ones(values.size), blurred[near]), axis=1)
            coef, *_ = np.linalg.lstsq(design, values, rcond=None)
            sse = float(np.sum((design @ coef - values) ** 2))
            if sse < best:
                best, best_sigma = sse, sigma
        return best_sigma

    def _strong_step_distance(self, ref: np.ndarray) -> np.ndarray:
        """Distance (mm) to the nearest step of at least ``INTERIOR_STRONG_STEP`` in log transmission.

        A Gaussian-blurred step of height ``h`` has a largest gradient of ``h / (sigma sqrt(2 pi))``: the log image,
        blurred by the fitted penumbra, is read as a step of ``|grad| sigma sqrt(2 pi)`` at each pixel.
        """
        pr, pc = self.pix
        log = np.log(np.maximum(ndimage.gaussian_filter(ref, (self.sigma / pr, self.sigma / pc)), 0.01 * self.level))
        gr, gc = np.gradient(log, pr, pc)
        step = np.hypot(gr, gc) * self.sigma * math.sqrt(2.0 * math.pi)
        # the field's own penumbra reads as a strong step up to ~1.3 sigma inside its edge: it is the field edge's
        counted = self.distance > 2.0 * self.sigma
        strong = (step > INTERIOR_STRONG_STEP) & counted
        # a step that nowhere comes near the field's edge is an island inside the field: a ball bearing, a marker, a
        # dense bone, which move with the patient; leaves and blocks reach the field's edge from outside it. A step
        # that nowhere goes further in is the field edge's own penumbra, wider than its fitted Gaussian (the edge
        # margin covers it). What a step reaches is read on the steps of half that height: a leaf pair closed inside
        # a field and blurred reads as strong only in fragments along its length
        labels, count = ndimage.label((step > 0.5 * INTERIOR_STRONG_STEP) & counted, structure=np.ones((3, 3), bool))
        if count:
            index = np.arange(1, count + 1)
            first = 2.0 * self.sigma + INTERIOR_ISLAND_MM
            nearest = np.asarray(ndimage.minimum(self.distance, labels, index))
            farthest = np.asarray(ndimage.maximum(self.distance, labels, index))
            aperture = np.concatenate(([False], (nearest <= first) & (farthest > first)))
            strong &= aperture[labels]
        if not strong.any():
            return np.full(ref.shape, np.inf)
        return ndimage.distance_transform_edt(~strong, sampling=(pr, pc))

    def _residual(self, transmission: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """Return the log transmission minus its local mean over ``flat`` (the anatomy's fine structure).

        ``flat`` lies inside ``flat_box``; the result is zero outside ``flat``. The filters run on boxes only, with the
        numbers of the whole grid: the smoothing on ``smooth_box`` (``flat_box`` grown by its kernel's reach, so
        every pixel of ``flat_box`` sees all its taps), the normalised high-pass on ``flat_box`` with zeros beyond it,
        which is what the whole grid holds there (the weight is zero outside ``flat``). A flat region that reaches the
        grid's edge (a field cut by the image's) is filtered over the whole grid, which reflects at that edge.
        """
        pr, pc = self.pix
        floor = 0.01 * self.level
        out = np.zeros(flat.shape)
        (r0, r1, c0, c1), (s0, s1, t0, t1) = self.flat_box, self.smooth_box
        beyond = "constant"  # zeros beyond the flat region's box: what the whole grid holds there
        if r0 == 0 or c0 == 0 or r1 == flat.shape[0] or c1 == flat.shape[1]:
            # a field cut by the image's edge: the whole grid, which reflects the values at that edge
            r0, r1, c0, c1 = 0, flat.shape[0], 0, flat.shape[1]
            s0, s1, t0, t1 = r0, r1, c0, c1
            beyond = "reflect"
        smooth = ndimage.gaussian_filter(np.nan_to_num(transmission[s0:s1, t0:t1], nan=self.level),
                                         (INTERIOR_SMOOTH_MM / pr, INTERIOR_SMOOTH_MM / pc), truncate=3.0)
        log = np.log(np.maximum(smooth[r0 - s0:r1 - s0, c0 - t0:c1 - t0], floor))
        weight = flat[r0:r1, c0:c1].astype(np.float64)
        sig = (INTERIOR_HIGHPASS_MM / pr, INTERIOR_HIGHPASS_MM / pc)
        low = (ndimage.gaussian_filter(log * weight, sig, truncate=3.0, mode=beyond)
               / np.maximum(ndimage.gaussian_filter(weight, sig, truncate=3.0, mode=beyond), 1e-6))
        out[r0:r1, c0:c1] = (log - low) * weight
        return out

    def frame_on_grid(self, frame: Image, pose: tuple[float, float, float],
                      region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Resample the frame onto the working grid, reference point ``q`` taken from where ``pose`` puts it.

        Parameters
        ----------
        region : (row0, row1, col0, col1), optional
            Working-grid box to resample (the rest is NaN); default the whole grid.

        Returns
        -------
        numpy.ndarray
            float64, the crop's working-grid shape; NaN where the frame has no pixel.
        """
        from portalign.kernels import cpu

        ref = self.image
        fr, fc = self.factor
        r0, r1, c0, c1 = self.box
        g0, g1, h0, h1 = region if region is not None else (0, (r1 - r0) // fr, 0, (c1 - c0) // fc)
        forward = pose_affines(np.array([pose]), frame.beam_axis_px, frame.spacing_mm, ref.beam_axis_px,
                               ref.spacing_mm)[0]
        square = np.vstack((forward, (0.0, 0.0, 1.0)))
        inverse = np.linalg.inv(square)  # reference pixel (col, row, 1) -> frame pixel
        # resampled pixel -> reference pixel
        shift = np.array([[1.0, 0.0, c0 + h0 * fc], [0.0, 1.0, r0 + g0 * fr], [0.0, 0.0, 1.0]])
        affine = np.ascontiguousarray((inverse @ shift)[:2])
        sampled = np.empty(((g1 - g0) * fr, (h1 - h0) * fc), dtype=np.float32)
        cpu.warp_bilinear(np.ascontiguousarray(frame.pixels, dtype=np.float32), affine, np.nan, sampled)
        if region is None:
            return _block_mean(sampled.astype(np.float64), fr, fc)
        out = np.full(((r1 - r0) // fr, (c1 - c0) // fc), np.nan)
        out[g0:g1, h0:h1] = _block_mean(sampled.astype(np.float64), fr, fc)
        return out

    def deep_pixels(self, pose: tuple[float, float, float]) -> int:
        """Return how many working-grid pixels of the deep interior remain at ``pose``, ``match``'s count before it.

        The frame's aperture, fixed to the beam, shows through the pose up to ``reach`` (the shift's length and the
        turn at the field's farthest point, mm) from the reference's: the deep interior lies ``margin + reach`` inside
        the field's edges. A narrow field matched a few mm from its own position keeps none (``match`` gives None there,
        under ``INTERIOR_MIN_PIXELS``): every pixel matched lies where the aperture's penumbra may show. No frame is
        read: a count over the reference's distance map.

        Parameters
        ----------
        pose : (dx_mm, dy_mm, theta_rad)
            The match (``pose_affines``' convention).
        """
        if not self.usable:
            return 0
        reach = math.hypot(pose[0], pose[1]) + abs(pose[2]) * self.radius_mm
        return int(np.count_nonzero(self.distance > self.margin + reach))

    def match(self, frame: Image, pose: tuple[float, float, float]) -> InteriorMatch | None:
        """Correlate the deep interiors of the reference and of ``frame`` sampled through ``pose``.

        Parameters
        ----------
        frame : Image
            The frame (same beam, same fixed aperture).
        pose : (dx_mm, dy_mm, theta_rad)
            The match (``pose_affines``' convention).

        Returns
        -------
        InteriorMatch or None
            None where the deep interior is empty in either image.
        """
        if not self.usable:
            return None
        # a bright field's transmission is the value itself: only the smoothing's box is read. A dark field's is
        # turned over below the whole crop's 99.9th percentile, which the whole crop gives
        sampled = self.frame_on_grid(frame, pose, self.smooth_box if self.field_is_bright else None)
        valid = np.isfinite(sampled)
        if not valid.any():
            return None
        transmission = _transmission(sampled, self.field_is_bright, valid)
        # the frame's aperture, fixed to the beam, shows through the pose at most ``reach`` from the reference's: its
        # edge distance is at least the reference's less that
        reach = math.hypot(pose[0], pose[1]) + abs(pose[2]) * self.radius_mm
        flat = (self.distance > INTERIOR_PENUMBRA_SIGMAS * self.sigma + reach) & valid
        frame_residual = self._residual(np.where(valid, transmission, np.nan), flat)
        deep_frame = (self.distance > self.margin + reach) & valid
        d = _slices(self.deep_box)  # both deep regions lie in it: the correlation's sums are the whole grid's
        surface, count = interior_surface(self.residual[d], self.deep[d], frame_residual[d], deep_frame[d],
                                          self.radius_px, self._spectra)
        radius = self.radius_px
        n0 = int(count[radius[0], radius[1]])
        if n0 < INTERIOR_MIN_PIXELS:
            return None
        overlap = self.deep & deep_frame
        contrast = float(min(np.sqrt(np.mean(self.residual[overlap] ** 2)),
                             np.sqrt(np.mean(frame_residual[overlap] ** 2))))
        surface = np.where(count >= INTERIOR_MIN_OVERLAP * n0, surface, np.nan)
        at_match = float(surface[radius[0], radius[1]])
        k = int(np.nanargmax(surface))
        i, j = divmod(k, surface.shape[1])
        peak = float(surface[i, j])
        near = surface[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
        at_limit = near.shape != (3, 3) or bool(np.isnan(near).any())
        # sub-pixel: the vertex of the parabola through the peak and its neighbours on each axis (the global search's)
        rows, cols = surface.shape
        di = i - radius[0] + parabola_offset(surface[i - 1, j] if i > 0 else 0.0, peak,
                                             surface[i + 1, j] if i < rows - 1 else 0.0, i > 0, i < rows - 1)
        dj = j - radius[1] + parabola_offset(surface[i, j - 1] if j > 0 else 0.0, peak,
                                             surface[i, j + 1] if j < cols - 1 else 0.0, j > 0, j < cols - 1)
        off = (dj * self.pix[1], di * self.pix[0])
        grid_r, grid_c = np.ogrid[0:rows, 0:cols]
        away = np.hypot((grid_r - i) * self.pix[0], (grid_c - j) * self.pix[1]) > INTERIOR_DISTINCT_MM
        others = surface[away & np.isfinite(surface)]
        runner_up = float(others.max()) if others.size else math.nan
        # the frame's anatomy at x + offset matches the reference's at x: the reference point x shows at frame point
        # R (x + offset) + d
        dx, dy, theta = pose
        c, s = math.cos(theta), math.sin(theta)
        anatomy = (dx + c * off[0] - s * off[1], dy + s * off[0] + c * off[1])
        return InteriorMatch(pixels=n0, area_mm2=n0 * self.pix[0] * self.pix[1], penumbra_sigma_mm=self.sigma,
                             margin_mm=self.margin, correlation_at_match=at_match, correlation_peak=peak,
                             offset_mm=off, anatomy_pose=anatomy, at_limit=at_limit, runner_up=runner_up,
                             contrast=contrast)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of the True pixels (half-open); an empty mask gives an empty box."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def _gaussian_radius(sigma_mm: float, pix: tuple[float, float]) -> tuple[int, int]:
    """Taps each side of ``ndimage.gaussian_filter``'s kernel (``truncate=3``) on each axis, plus one."""
    return (int(3.0 * sigma_mm / pix[0] + 0.5) + 1, int(3.0 * sigma_mm / pix[1] + 0.5) + 1)


def _grown(box: tuple[int, int, int, int], by: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    r0, r1, c0, c1 = box
    return (max(r0 - by[0], 0), min(r1 + by[0], shape[0]), max(c0 - by[1], 0), min(c1 + by[1], shape[1]))


def _slices(box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    return slice(box[0], box[1]), slice(box[2], box[3])


def _fill_transmitting_holes(mask: np.ndarray, transmission: np.ndarray) -> np.ndarray:
    """Return ``mask`` with its holes that transmit more than ``INTERIOR_HOLE_TRANSMISSION`` of the field filled.

    A hole enclosed by the field is a block on a tray, which transmits what the leaves do, or an object that moves
    with the patient and passes about half the beam (a Winston-Lutz ball bearing, found darker than the field's
    threshold): the first is an aperture's edge, the second anatomy.
    """
    filled = ndimage.binary_fill_holes(mask)
    holes, count = ndimage.label(filled & ~mask)
    if not count:
        return mask
    level = float(np.median(transmission[mask])) if mask.any() else 0.0
    if not level > 0:
        return mask
    median = np.asarray(ndimage.median(transmission, holes, np.arange(1, count + 1)))
    passes = np.concatenate(([False], median > INTERIOR_HOLE_TRANSMISSION * level))
    return mask | passes[holes]


def _correlate(a_hat: np.ndarray, b_hat: np.ndarray, shape: tuple[int, int], radius: tuple[int, int]) -> np.ndarray:
    """``sum_x a(x) b(x + s)`` for ``|s| <= radius`` from the two padded spectra (rows: s_row, columns: s_col)."""
    full = sfft.irfft2(np.conj(a_hat) * b_hat, s=shape)
    rr, rc = radius
    rows = np.r_[np.arange(shape[0] - rr, shape[0]), np.arange(0, rr + 1)]
    cols = np.r_[np.arange(shape[1] - rc, shape[1]), np.arange(0, rc + 1)]
    return full[np.ix_(rows, cols)]


def _padded_shape(shape: tuple[int, int], radius: tuple[int, int]) -> tuple[int, int]:
    return (sfft.next_fast_len(shape[0] + radius[0] + 1, real=True),
            sfft.next_fast_len(shape[1] + radius[1] + 1, real=True))


def reference_spectra(fixed: np.ndarray, fixed_mask: np.ndarray, radius: tuple[int, int]) -> dict[str, np.ndarray]:
    """Return the fixed image's three spectra of ``interior_surface`` (its mask, masked values, their squares)."""
    shape = _padded_shape(fixed.shape, radius)
    f = np.where(fixed_mask, fixed, 0.0)
    return {"mf": sfft.rfft2(fixed_mask.astype(np.float64), s=shape), "f": sfft.rfft2(f, s=shape),
            "ff": sfft.rfft2(f * f, s=shape)}


def interior_surface(fixed: np.ndarray, fixed_mask: np.ndarray, moving: np.ndarray, moving_mask: np.ndarray,
                     radius: tuple[int, int], fixed_spectra: dict[str, np.ndarray] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Masked normalised cross-correlation of ``moving`` shifted against ``fixed``, every shift within ``radius``.

    Parameters
    ----------
    fixed, moving : float64[H, W]
    fixed_mask, moving_mask : bool[H, W]
        The pixels each image contributes.
    radius : (int, int)
        Largest shift (rows, columns) in pixels.
    fixed_spectra : dict, optional
        ``reference_spectra(fixed, fixed_mask, radius)``, made once for many moving images.

    Returns
    -------
    surface : float64[2 radius_r + 1, 2 radius_c + 1]
        At ``[radius_r + s_r, radius_c + s_c]``: the correlation of ``fixed(x)`` with ``moving(x + s)`` over the
        pixels in both masks (NaN where either side is constant).
    count : float64, the same shape
        How many pixels each shift's correlation covers.

    Notes
    -----
    Padfield (2012), eq. 9-11: the overlap's count, sums and sums of squares for every shift from FFT correlations.
    """
    shape = _padded_shape(fixed.shape, radius)
    spectra = dict(fixed_spectra) if fixed_spectra is not None else reference_spectra(fixed, fixed_mask, radius)
    m = np.where(moving_mask, moving, 0.0)
    spectra.update({name: sfft.rfft2(a, s=shape) for name, a in
                    (("mm", moving_mask.astype(np.float64)), ("m", m), ("mmq", m * m))})
    count = np.rint(_correlate(spectra["mf"], spectra["mm"], shape, radius))
    sum_f = _correlate(spectra["f"], spectra["mm"], shape, radius)
    sum_m = _correlate(spectra["mf"], spectra["m"], shape, radius)
    sum_ff = _correlate(spectra["ff"], spectra["mm"], shape, radius)
    sum_mm = _correlate(spectra["mf"], spectra["mmq"], shape, radius)
    sum_fm = _correlate(spectra["f"], spectra["m"], shape, radius)
    n = np.maximum(count, 1.0)
    cov = sum_fm - sum_f * sum_m / n
    var_f = sum_ff - sum_f * sum_f / n
    var_m = sum_mm - sum_m * sum_m / n
    den = np.sqrt(np.maximum(var_f, 0.0) * np.maximum(var_m, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        surface = np.where((den > 1e-12 * max(float(np.max(den)), 1e-300)) & (count >= 2), cov / den, np.nan)
    return surface, count
