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

from . import launch

__all__ = ["feature_spectrum", "correlation_window"]


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
