"""The numba CPU backend."""

from __future__ import annotations

import numpy as np

from ._base import Backend

__all__ = ["cpu_backend"]


def cpu_backend(fallback_reason: str = "") -> Backend:
    """Return the numba CPU backend."""
    from portalign.kernels import cpu

    return Backend(name="cpu", xp=np, kernels=cpu.KERNELS, fallback_reason=fallback_reason, device=_cpu_name())


def _cpu_name() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
