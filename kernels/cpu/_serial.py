"""Serial twins of parallel kernels: the same source compiled without ``parallel=True``.

A kernel compiled with ``parallel=True`` starts a parallel region of numba's thread pool at each call.
Called from inside another parallel region (a task of :func:`portalign.kernels.cpu.level.levels_and_surfaces`)
it nests one: with numba's OpenMP layer that oversubscribes the cores, and a measured level stage took 9 ms
instead of 0.6. A serial twin runs the same Python function compiled without ``parallel=True``: its
``prange`` loops are plain loops on the calling thread, its arithmetic is the same, so are its numbers.
The twin has its own name (numba's on-disk cache is keyed by it); ``replace`` points names the kernel calls
at their own serial twins.
"""

from __future__ import annotations

import types
from typing import Any

from numba import njit

__all__ = ["serial_twin"]


def serial_twin(kernel: Any, name: str, **replace: Any) -> Any:
    """Return ``kernel``'s Python function compiled again, without ``parallel=True``, as ``name``.

    Parameters
    ----------
    kernel : numba dispatcher
        A kernel of this package (``@njit(parallel=True, ...)`` or one that calls such kernels).
    name : str
        The twin's name (its qualified name: numba's cache files are named after it).
    **replace
        Global names the kernel's body uses, mapped to what the twin calls instead (serial twins).

    Returns
    -------
    numba dispatcher
        Compiled lazily, cached on disk, ``nogil``; the kernel's ``fastmath`` setting is kept.
    """
    source = kernel.py_func
    names = source.__globals__ if not replace else {**source.__globals__, **replace}
    twin = types.FunctionType(source.__code__, names, name, source.__defaults__, source.__closure__)
    twin.__qualname__ = name
    twin.__module__ = source.__module__
    twin.__doc__ = source.__doc__
    twin.__kwdefaults__ = source.__kwdefaults__
    options: dict[str, Any] = {"cache": True, "nogil": True}
    fastmath = kernel.targetoptions.get("fastmath")
    if fastmath:
        options["fastmath"] = fastmath
    return njit(**options)(twin)
