"""Global translation search by FFT cross-correlation of edge features (numpy FFT, CPU).

The coarse search must find the pose with no initial guess over a capture
range of tens of millimetres and several degrees. Evaluating a metric pose by
pose over that range is thousands of evaluations; a cross-correlation does all
translations of one rotation at once in ``O(N log N)``. The reference side of
each candidate rotation is transformed at preparation time, so a frame costs
one forward FFT plus one product and inverse FFT per candidate rotation.

With complex doubled-angle features ``z`` (see :mod:`.gradient`) the surface::

    c(t) = Re sum_x z_f(x) conj(z_r(x - t)) = Re IFFT( FFT(z_f) * conj(FFT(z_r)) )(t)

peaks at the translation ``t`` that carries reference edges onto frame edges
(frame = reference moved by ``+t``). Inputs are zero-padded so that the
circular wrap-around never reaches the searched translations. Single precision
is plenty for locating a peak and halves the FFT time.

:func:`coarse_search` is the whole per-frame global search as one compiled call:
the frame's spectrum, every rotation's window of the surface, their
normalisation and the peak search (:mod:`.peaks`). Its FFTs are pocketfft, the
library behind ``scipy.fft``, called from numba through rocket-fft (which makes
``scipy.fft`` usable in ``@njit`` code); no Python runs between the steps.
"""

from __future__ import annotations

import numpy as np

try:
    import rocket_fft  # noqa: F401  (registers scipy.fft for numba's nopython mode)
except ImportError as exc:  # a --no-deps install (a GPU machine without network) that did not carry its wheel
    if exc.name not in (None, "rocket_fft"):  # rocket-fft is there; something it imports (numba, say) is not
        raise
    raise ImportError("portalign needs rocket-fft (scipy.fft inside numba-compiled code, the CPU global search): "
                      "pip install 'rocket-fft>=0.4.1,<0.5'") from exc
import scipy.fft
from numba import njit
from scipy import fft as sp_fft

from .peaks import search_peaks

__all__ = ["FFT_WORKERS", "feature_spectrum", "correlation_window", "coarse_search", "coarse_surfaces"]

#: Threads of every FFT in the compiled per-frame kernels (rocket-fft), whatever the frame's thread count. Its
#: transforms at some lengths round differently on one worker than on several (a 250 x 320 complex64 ``fft2``: up to
#: 1.7e-4 on unit-variance data; 375 x 480 and 500 x 640 alike; 125 x 160, 192 x 256, 240 x 320 not), and the count
#: it uses is capped by the cores the process may run on: a result would follow the machine, the thread policy, the
#: load and the thread tuner (poses 1.9e-5 mm / 2.5e-5 deg apart on a jaw-field pair, 2026-12-05). One worker gives
#: the same numbers on any of them. The two-level frame's surfaces already ran on one (a task beside the other level,
#: ``level.levels_and_surfaces``); other frames' searches lose nothing measurable (2026-12-05, two trial pairs on
#: two threads: 6.95 / 31.0 ms a frame with one FFT worker against 6.92 / 31.5 with two). The reference's spectra
#: (``feature_spectrum``, scipy's own pocketfft) give the same numbers on any worker count: they use all cores.
FFT_WORKERS = 1


def feature_spectrum(re: np.ndarray, im: np.ndarray, padded_shape: tuple[int, int], offset: int) -> np.ndarray:
    """Return the 2-D FFT (complex64) of ``re + i*im`` placed at ``(offset, offset)`` in zeros of ``padded_shape``."""
    z = np.zeros(padded_shape, dtype=np.complex64)
    z[offset : offset + re.shape[0], offset : offset + re.shape[1]].real = re
    z[offset : offset + re.shape[0], offset : offset + re.shape[1]].imag = im
    return sp_fft.fft2(z, workers=-1)


def correlation_window(frame_spectrum: np.ndarray, ref_spectra_conj: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                       out: np.ndarray) -> None:
    """Write ``Re IFFT2(F * conj(R_k))`` at the searched translations into ``out[k]``.

    Parameters
    ----------
    frame_spectrum : complex64[P, Q]
    ref_spectra_conj : complex64[K, P, Q]
        Conjugated reference spectra, one per candidate rotation.
    rows, cols : int[M], int[N]
        Surface rows / columns of the searched translations (``ty % P``, ``tx % Q``).
    out : float32[K, M, N]
        ``out[k, i, j]`` is the correlation at translation ``(tx, ty)`` with ``cols[j] = tx % Q``,
        ``rows[i] = ty % P``.

    The 2-D inverse transform is pruned to the window: the inverse FFT along the columns for every
    row, then along the rows only for the window's columns (``N / Q`` of the second pass's work).
    """
    product = ref_spectra_conj * frame_spectrum[None, :, :]
    half = sp_fft.ifft(product, axis=2, overwrite_x=True, workers=-1)[:, :, cols]
    out[...] = sp_fft.ifft(half, axis=1, overwrite_x=True, workers=-1)[:, rows, :].real


@njit(cache=True, nogil=True)
def coarse_search(feat_re: np.ndarray, feat_im: np.ndarray, padded_rows: int, padded_cols: int, offset: int,
                  ref_spectra_conj: np.ndarray, ref_energy: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  thetas: np.ndarray, spacing_row: float, spacing_col: float, n_candidates: int, recheck_ratio: float,
                  suppress: int, window: np.ndarray, out_poses: np.ndarray, out_scores: np.ndarray,
                  workers: int = 1) -> int:  # pragma: no cover
    """Run the global search of one frame level in one call; write its distinct optima, return how many.

    Parameters
    ----------
    feat_re, feat_im : float32[rows, cols]
        The frame level's edge features (zero where not usable).
    padded_rows, padded_cols, offset : int
        The zero-padded FFT grid and where the level sits in it (the search margin).
    ref_spectra_conj : complex64[K, P, Q]
        Conjugated reference spectra, one per candidate rotation.
    ref_energy : float64[K]
        Sum of the squared reference features of each rotation.
    rows, cols : int[M]
        Surface rows / columns of the searched translations (see :func:`correlation_window`).
    thetas : float64[K]
        Rotation (rad) of each reference spectrum.
    spacing_row, spacing_col, n_candidates, recheck_ratio, suppress
        As :func:`portalign.kernels.cpu.peaks.search_peaks`.
    window : float32[K, M, M]
        Overwritten with the raw (unnormalised) correlation window.
    out_poses : float64[max_candidates, 3]
    out_scores : float64[max_candidates]
        The optima, best first: ``(dx_mm, dy_mm, theta_rad)`` and the normalised correlation.
    workers : int
        Threads for the FFTs (the engine passes ``FFT_WORKERS``).

    Same numbers as ``feature_spectrum``, ``correlation_window``, the normalisation by
    ``sqrt(frame_energy * ref_energy[k])`` and ``search_peaks`` called one after another
    (:func:`coarse_surfaces`, then :func:`.peaks.search_peaks`).
    """
    normalised = np.empty(window.shape, dtype=np.float64)
    coarse_surfaces(feat_re, feat_im, padded_rows, padded_cols, offset, ref_spectra_conj, ref_energy, rows, cols, window,
                    normalised, workers)
    return search_peaks(normalised, thetas, spacing_row, spacing_col, n_candidates, recheck_ratio, suppress,
                        out_poses, out_scores)


@njit(cache=True, nogil=True)
def coarse_surfaces(feat_re: np.ndarray, feat_im: np.ndarray, padded_rows: int, padded_cols: int, offset: int,
                    ref_spectra_conj: np.ndarray, ref_energy: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                    window: np.ndarray, normalised: np.ndarray, workers: int = 1) -> None:  # pragma: no cover
    """Write every rotation's searched window of the correlation surface, raw and normalised (one thread).

    The FFT part of :func:`coarse_search` (its arguments, same names): the frame level's spectrum, each
    rotation's product with it, the inverse transform pruned to the window. ``window`` (float32[K, M, M])
    receives the raw correlation, ``normalised`` (float64[K, M, M]) the same over
    ``sqrt(frame_energy * ref_energy[k])``. Its loops run in order on the calling thread (the FFTs use
    ``workers`` threads): the CPU's level stage runs it as one task beside the frame's other levels
    (:func:`portalign.kernels.cpu.level.levels_and_surfaces`).
    """
    n_rows, n_cols = feat_re.shape
    frame_energy = 0.0
    z = np.zeros((padded_rows, padded_cols), dtype=np.complex64)
    for i in range(n_rows):
        for j in range(n_cols):
            re = feat_re[i, j]
            im = feat_im[i, j]
            frame_energy += np.float64(re) * np.float64(re) + np.float64(im) * np.float64(im)
            z[offset + i, offset + j] = complex(re, im)
    spectrum = scipy.fft.fft2(z, workers=workers)
    n_k = ref_spectra_conj.shape[0]
    product = np.empty(ref_spectra_conj.shape, dtype=np.complex64)
    for k in range(n_k):
        for u in range(padded_rows):
            for v in range(padded_cols):
                product[k, u, v] = ref_spectra_conj[k, u, v] * spectrum[u, v]
    # the inverse transform pruned to the window: along the columns for every row, then along the rows
    # only for the window's columns
    half = scipy.fft.ifft(product, axis=2, workers=workers)
    picked = np.empty((n_k, padded_rows, cols.shape[0]), dtype=np.complex64)
    for k in range(n_k):
        for u in range(padded_rows):
            for c in range(cols.shape[0]):
                picked[k, u, c] = half[k, u, cols[c]]
    surface = scipy.fft.ifft(picked, axis=1, workers=workers)
    for k in range(n_k):
        norm = np.sqrt(max(frame_energy * ref_energy[k], 1e-30))
        for r in range(rows.shape[0]):
            for c in range(cols.shape[0]):
                value = np.float32(surface[k, rows[r], c].real)
                window[k, r, c] = value
                normalised[k, r, c] = value / norm
