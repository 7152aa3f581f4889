"""Global translation search by FFT cross-correlation of edge features (cuFFT / scipy FFT).

Twin of :mod:`portalign.kernels.cpu.correlation` (the maths is there): single
precision spectra (complex64) and surfaces (float32). On a device the FFTs are
cuFFT through ``cupy.fft`` (plans cached by CuPy); under the simulator they are
``scipy.fft``, the CPU kernel's own FFT, so the results are identical there. On a
device the surfaces agree with the CPU's to float32 FFT rounding (about 1e-6 of
the surface's largest value), which moves a peak by far less than the parabolic
sub-pixel fit can resolve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from portalign.kernels.cpu.peaks import search_peaks

from . import launch

__all__ = ["feature_spectrum", "correlation_window", "coarse_search"]


def _fft() -> Any:
    """Return the FFT module that goes with the backend's arrays (``scipy.fft`` or ``cupy.fft``)."""
    if launch.simulator_enabled():
        from scipy import fft

        return fft
    import cupy

    return cupy.fft


def feature_spectrum(re: Any, im: Any, padded_shape: tuple[int, int], offset: int) -> Any:
    """Return the 2-D FFT (complex64) of ``re + i*im`` placed at ``(offset, offset)`` in zeros of ``padded_shape``."""
    xp = launch.array_module()
    z = xp.zeros(tuple(padded_shape), dtype=xp.complex64)
    z[offset : offset + re.shape[0], offset : offset + re.shape[1]].real = xp.asarray(re)
    z[offset : offset + re.shape[0], offset : offset + re.shape[1]].imag = xp.asarray(im)
    return _fft().fft2(z)


def correlation_window(frame_spectrum: Any, ref_spectra_conj: Any, rows: Any, cols: Any, out: Any) -> None:
    """Write ``Re IFFT2(F * conj(R_k))`` at the searched translations into ``out[k]`` (see the CPU twin)."""
    fft = _fft()
    product = ref_spectra_conj * frame_spectrum[None, :, :]
    half = fft.ifft(product, axis=2)[:, :, cols]
    out[...] = fft.ifft(half, axis=1)[:, rows, :].real


def coarse_search(feat_re: Any, feat_im: Any, padded_rows: int, padded_cols: int, offset: int, ref_spectra_conj: Any,
                  ref_energy: np.ndarray, rows: Any, cols: Any, thetas: np.ndarray, spacing_row: float,
                  spacing_col: float, n_candidates: int, recheck_ratio: float, suppress: int, window: Any,
                  out_poses: np.ndarray, out_scores: np.ndarray, workers: int = 1) -> int:
    """Run the global search of one frame level (see the CPU twin): spectra and window on the device, peaks on the host.

    The frame energy is summed on the device; the window (``K x (2m+1)^2`` float32) is the one array that
    comes back, for the sequential peak search.
    """
    xp = launch.array_module()
    re = xp.asarray(feat_re)
    im = xp.asarray(feat_im)
    frame_energy = float((re.astype(xp.float64) ** 2 + im.astype(xp.float64) ** 2).sum())
    spectrum = feature_spectrum(re, im, (padded_rows, padded_cols), offset)
    correlation_window(spectrum, ref_spectra_conj, rows, cols, window)
    host = launch.to_host(window)
    norm = np.sqrt(np.maximum(frame_energy * np.asarray(ref_energy, dtype=np.float64), 1e-30))
    return int(search_peaks(host / norm[:, None, None], thetas, spacing_row, spacing_col, n_candidates, recheck_ratio,
                            suppress, out_poses, out_scores))
