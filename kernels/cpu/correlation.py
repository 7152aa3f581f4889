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
is plenty for locating a peak and halves the FFT time; scipy's FFT uses both cores.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft

__all__ = ["feature_spectrum", "correlation_window"]


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
