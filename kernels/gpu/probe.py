"""A tiny kernel compiled and run before the GPU backend is called available.

``cuda.is_available()`` only says that a driver answers. The first real kernel
compilation can still fail: numba-cuda 0.30.4 cannot compile with numpy 2.5
(``module 'numpy' has no attribute 'row_stack'``), a toolkit can miss NVVM. The
backend check compiles and launches this kernel once per process so that
``portalign backends`` and ``auto`` tell the truth.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import launch

__all__ = ["run_probe"]


@cuda.jit(cache=False)
def _affine_fill(out, a, b):  # pragma: no cover - compiled
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = a * i + b


def run_probe() -> None:
    """Compile, launch and check one kernel; raise ``RuntimeError`` (with the cause) when the result is wrong.

    Compilation errors propagate as numba raises them; the caller turns them into a reason.
    """
    xp = launch.array_module()
    out = xp.zeros(64, dtype=np.float32)
    launch.configured(_affine_fill, 1, 64)(launch.device_arg(out), np.float32(2.0), np.float32(1.0))
    got = launch.to_host(out)
    expected = 2.0 * np.arange(64, dtype=np.float32) + 1.0
    if not np.array_equal(got, expected):
        raise RuntimeError(f"probe kernel returned wrong values (first {got[:4].tolist()})")
