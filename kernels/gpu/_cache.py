"""numba-cuda's on-disk cache for these kernels: stamped with the folder's fingerprint, kept out of the package.

Imported first by the package, before any kernel is defined: ``@cuda.jit(cache=True)`` picks its cache locator
when the kernel is defined. The folder is registered with :mod:`portalign.kernels.cpu._cache`, whose stamp is the
SHA-256 of every source file here with the versions of Python, numpy, numba, rocket-fft and numba-cuda, and
numba-cuda's locator list gets the stamped locators first (:func:`~portalign.kernels.cpu._cache.install_cuda_locators`):
a kernel whose device function changed in another file recompiles, and the cache goes to the user's cache folder
rather than the installed package's ``__pycache__``. Under the simulator, or without numba-cuda, nothing changes.
"""

from __future__ import annotations

import os

from ..cpu._cache import install_cuda_locators, register_kernel_folder

__all__ = ["GPU_KERNEL_DIR"]

#: This folder: every ``*.py`` file in it makes up the GPU kernels' fingerprint.
GPU_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))

register_kernel_folder(GPU_KERNEL_DIR)
install_cuda_locators()
