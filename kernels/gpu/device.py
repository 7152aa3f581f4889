"""Device functions shared by the CUDA kernels: uncontracted arithmetic and block reductions.

Why uncontracted products and sums: NVVM contracts ``a * b + c`` into one
fused multiply-add unless fast-math is off *and* contraction is disabled, and
numba passes no ``-fma=0``. A fused result differs from the CPU's two roundings
in the last bit, and a last bit is enough to move ``int(x * 256)`` (the
joint-histogram sub-pixel weight) or a boundary test ``x < ref_cols - 1``. The
``*_rn`` intrinsics are never fused (CUDA C Programming Guide, "Intrinsic
Functions"), so positions computed with them equal the CPU's bit for bit.

Why explicit casts in every kernel (``float(v)`` of a float32 pixel): under
numba's simulator the kernel body is plain Python, where NumPy 2 keeps
``0.5 * float32`` in float32 (NEP 50), while compiled numba code, on the CPU
and the GPU alike, promotes it to float64. Casting says which one is meant and
makes the simulator, the device and the CPU kernels compute the same thing.
"""

from __future__ import annotations

from numba import config, cuda

__all__ = ["mul_rn", "add_rn", "fmul_rn", "fadd_rn", "tree_sum"]

if config.ENABLE_CUDASIM:  # pure Python: numpy scalars round every operation anyway

    @cuda.jit(device=True)
    def mul_rn(a, b):  # noqa: D103 - documented with the device branch
        return a * b

    @cuda.jit(device=True)
    def add_rn(a, b):  # noqa: D103
        return a + b

    @cuda.jit(device=True)
    def fmul_rn(a, b):  # noqa: D103
        return a * b

    @cuda.jit(device=True)
    def fadd_rn(a, b):  # noqa: D103
        return a + b

else:  # pragma: no cover - needs a CUDA device
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def mul_rn(a, b):
        """Return the float64 product ``a * b``, rounded once, never fused into an FMA."""
        return libdevice.dmul_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def add_rn(a, b):
        """Return the float64 sum ``a + b``, rounded once, never fused into an FMA."""
        return libdevice.dadd_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def fmul_rn(a, b):
        """Return the float32 product ``a * b``, rounded once, never fused into an FMA."""
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def fadd_rn(a, b):
        """Return the float32 sum ``a + b``, rounded once, never fused into an FMA."""
        return libdevice.fadd_rn(a, b)


@cuda.jit(device=True)
def tree_sum(buf, t, n):  # pragma: no cover - compiled
    """Sum ``buf[0:n]`` into ``buf[0]`` by a pairwise tree; every thread of the block must call it.

    The pairing depends only on ``n``, so a float64 result is the same on every
    run (deterministic) whatever the order in which threads finish; integer
    sums are exact in any order. The caller writes ``buf[t]`` (``t`` its thread
    index) before the call; the function synchronises first and last.
    """
    cuda.syncthreads()
    s = 1
    while s < n:
        if t % (2 * s) == 0 and t + s < n:
            buf[t] = buf[t] + buf[t + s]
        s *= 2
        cuda.syncthreads()
