"""Float64 reference for the FFT cross-correlation search: explicit DFT matrices (slow, obvious).

Same arguments and outputs as :mod:`portalign.kernels.cpu.correlation`; the
discrete Fourier transforms are written out as matrix products
``W_P z W_Q`` with ``W_N[u, x] = exp(-2 pi i u x / N)``, so nothing depends on
an FFT library.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_spectrum", "correlation_window", "coarse_search"]


def _dft_matrix(n: int, sign: float) -> np.ndarray:
    k = np.arange(n)
    return np.exp(sign * 2j * np.pi * np.outer(k, k) / n)


def feature_spectrum(re: np.ndarray, im: np.ndarray, padded_shape: tuple[int, int], offset: int) -> np.ndarray:
    """Return the 2-D DFT of ``re + i*im`` placed at ``(offset, offset)`` in zeros of ``padded_shape``."""
    z = np.zeros(padded_shape, dtype=np.complex128)
    z[offset : offset + re.shape[0], offset : offset + re.shape[1]] = (
        np.asarray(re, dtype=np.float64) + 1j * np.asarray(im, dtype=np.float64)
    )
    return _dft_matrix(padded_shape[0], -1.0) @ z @ _dft_matrix(padded_shape[1], -1.0)


def correlation_window(frame_spectrum: np.ndarray, ref_spectra_conj: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                       out: np.ndarray) -> None:
    """Write ``Re IDFT2(F * conj(R_k))`` at ``rows`` x ``cols`` into ``out[k]`` (the whole surface, then the window)."""
    p, q = frame_spectrum.shape
    inv_p = _dft_matrix(p, 1.0) / p
    inv_q = _dft_matrix(q, 1.0) / q
    for k in range(ref_spectra_conj.shape[0]):
        surface = (inv_p @ (ref_spectra_conj[k] * frame_spectrum) @ inv_q).real
        out[k] = surface[np.ix_(np.asarray(rows), np.asarray(cols))]


def coarse_search(feat_re: np.ndarray, feat_im: np.ndarray, padded_rows: int, padded_cols: int, offset: int,
                  ref_spectra_conj: np.ndarray, ref_energy: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  thetas: np.ndarray, spacing_row: float, spacing_col: float, n_candidates: int, recheck_ratio: float,
                  suppress: int, window: np.ndarray, out_poses: np.ndarray, out_scores: np.ndarray,
                  workers: int = 1) -> int:
    """Run the global search written out: spectrum, window, normalisation, then the reference peak search."""
    from .peaks import search_peaks

    re = np.asarray(feat_re, dtype=np.float64)
    im = np.asarray(feat_im, dtype=np.float64)
    frame_energy = float((re**2 + im**2).sum())
    spectrum = feature_spectrum(re, im, (padded_rows, padded_cols), offset)
    correlation_window(spectrum, np.asarray(ref_spectra_conj, dtype=np.complex128), rows, cols, window)
    norm = np.sqrt(np.maximum(frame_energy * np.asarray(ref_energy, dtype=np.float64), 1e-30))
    return search_peaks(np.asarray(window, dtype=np.float64) / norm[:, None, None], thetas, spacing_row, spacing_col,
                        n_candidates, recheck_ratio, suppress, out_poses, out_scores)
