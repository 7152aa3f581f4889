"""Backend selection: ``auto``, ``cpu`` or ``gpu``, chosen once per prepared reference.

``auto`` falls back to the CPU and records why; an explicit ``gpu`` that cannot
run raises :class:`BackendUnavailableError` naming what is missing.
"""

from __future__ import annotations

from ..errors import BackendUnavailableError
from ._base import Backend
from ._cpu import cpu_backend
from ._gpu import gpu_backend

__all__ = ["select_backend", "BACKENDS"]

BACKENDS = ("auto", "cpu", "gpu")


def select_backend(name: str = "auto") -> Backend:
    """Return the backend called ``name`` (``auto``, ``cpu`` or ``gpu``).

    Raises
    ------
    BackendUnavailableError
        For ``gpu`` when CuPy, numba.cuda or a CUDA device is missing, and for an
        unknown name.
    """
    if name == "cpu":
        return cpu_backend()
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        # the CUDA simulator (tests) only when asked for by name: `auto` must never pick it
        return gpu_backend(allow_simulator=(name == "gpu"))
    except BackendUnavailableError as exc:
        if name == "gpu":
            raise
        return cpu_backend(str(exc))
