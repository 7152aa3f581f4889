"""Device functions shared by the CUDA kernels: arithmetic that the compiler may not fuse.

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

__all__ = ["mul_rn", "add_rn", "fmul_rn", "fadd_rn"]

if config.ENABLE_CUDASIM:
    # Plain Python under the simulator: kernels are Python there, numpy scalars round
    # every operation anyway, and a simulated device function costs a swap of its
    # module's ``cuda`` global per call.

    def mul_rn(a, b):  # noqa: D103 - documented with the device branch
        return a * b

    def add_rn(a, b):  # noqa: D103
        return a + b

    def fmul_rn(a, b):  # noqa: D103
        return a * b

    def fadd_rn(a, b):  # noqa: D103
        return a + b

else:  # pragma: no cover - needs a CUDA device
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def mul_rn(a, b):
        """Return the float64 product ``a * b``, rounded once, never fused into an FMA."""
        return libdevice.dmul_rn(a, b)

    @cuda.jit(device=True)
    def add_rn(a, b):
        """Return the float64 sum ``a + b``, rounded once, never fused into an FMA."""
        return libdevice.dadd_rn(a, b)

    @cuda.jit(device=True)
    def fmul_rn(a, b):
        """Return the float32 product ``a * b``, rounded once, never fused into an FMA."""
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True)
    def fadd_rn(a, b):
        """Return the float32 sum ``a + b``, rounded once, never fused into an FMA."""
        return libdevice.fadd_rn(a, b)


# Device functions that call ``cuda.*`` (barriers, thread indices) live in the module of
# the kernel that calls them, never here: the simulator swaps a module's ``cuda`` global
# while one of its device functions runs and restores it when that call returns, which
# races with other simulated threads still inside a function of the same module.
