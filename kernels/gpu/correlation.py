"""Global translation search by FFT cross-correlation of edge features (CuPy / numpy FFT).

Twin of :mod:`portalign.kernels.cpu.correlation`.

The FFTs are the array module's: cuFFT through ``cupy.fft`` on a device (plans
cached by CuPy), ``numpy.fft`` under the simulator, where the results are
therefore identical to the CPU's. The maths is in the CPU module.
"""

from __future__ import annotations

from typing import Any

from . import launch

__all__ = ["feature_spectrum", "correlation_surfaces"]


def feature_spectrum(re: Any, im: Any, padded_shape: tuple[int, int], offset: int) -> Any:
    """Return the 2-D FFT (complex128) of ``re + i*im`` placed at ``(offset, offset)`` in zeros of ``padded_shape``."""
    xp = launch.array_module()
    re = xp.asarray(re)
    im = xp.asarray(im)
    z = xp.zeros(tuple(padded_shape), dtype=xp.complex128)
    z[offset : offset + re.shape[0], offset : offset + re.shape[1]] = re + 1j * im
    return xp.fft.fft2(z)


def correlation_surfaces(frame_spectrum: Any, ref_spectra_conj: Any, out: Any) -> None:
    """Write ``Re IFFT(F * conj(R_k))`` for each candidate ``k`` into ``out[k]`` (float64).

    Parameters
    ----------
    frame_spectrum : complex128[P, Q]
    ref_spectra_conj : complex128[K, P, Q]
        Conjugated reference spectra, one per candidate rotation.
    out : float64[K, P, Q]
        ``out[k, ty % P, tx % Q]`` is the correlation at translation ``(tx, ty)`` pixels.
    """
    xp = launch.array_module()
    out[...] = xp.fft.ifft2(ref_spectra_conj * frame_spectrum[None, :, :], axes=(-2, -1)).real
