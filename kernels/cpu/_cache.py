"""numba's on-disk cache for these kernels, keyed by the whole kernel set.

numba stamps each cached function with its own source file only (a content
hash since numba 0.66, the file's time and size before). A compiled kernel
embeds the kernels it calls, so after an edit of ``edge.py`` a cached caller in
an unchanged ``refine.py`` still holds the old edge score; the same happens
when portalign is installed again over an old install (``pip uninstall``
leaves ``__pycache__/*.nbi`` and ``*.nbc`` behind). That is how a CI run once
reported shifts 0.2 mm off with an old kernel inside a new program.

Here every kernel of this package is stamped with one fingerprint: the SHA-256
of all the package's source files together with the versions of Python,
numpy, numba and rocket-fft. Any change to any kernel, or to what they are
compiled against, recompiles them all once. The locations are numba's own
folders in another order: ``NUMBA_CACHE_DIR`` when set, else the user's cache
folder (numba's ``UserWideCacheLocator``: ``~/.cache/numba`` on Linux, a
sub-folder per source folder), else ``__pycache__`` beside the source where
the user's folder cannot be written. numba's default puts ``__pycache__`` first:
in an installed package that is ``site-packages/portalign/kernels/cpu``, which
``pip uninstall`` leaves behind, and the left-over folder then shadowed a later
``pip install -e .`` (``ImportError: cannot import name '__version__'``, a new
user's trial). Functions outside this package keep numba's usual behaviour.

This uses numba's cache-locator classes (``numba.core.caching``), which numba
does not document as public; if they are not found, numba's own stamps apply
and a reinstall may need the old ``__pycache__`` removed by hand (README).
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import metadata
from typing import Any

__all__ = ["kernel_fingerprint", "install_locators", "install_cuda_locators", "register_kernel_folder", "KERNEL_DIR"]

#: The folder whose ``*.py`` files make up the fingerprint (this package).
KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))

#: Folders whose kernels are stamped with their folder's fingerprint, and the fingerprint once computed.
_FOLDERS: dict[str, str | None] = {}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def kernel_fingerprint(folder: str = KERNEL_DIR) -> str:
    """Return the hex SHA-256 of a kernel folder's sources and the versions they are compiled with.

    Parameters
    ----------
    folder : str
        A folder of numba kernels (default: this package); every ``*.py`` file in it counts.

    Returns
    -------
    str
        64 hex digits; computed once per process and folder (the sources are read at the first call).
    """
    folder = os.path.abspath(folder)
    known = _FOLDERS.get(folder)
    if known is None:
        digest = hashlib.sha256()
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                digest.update(name.encode())
                with open(os.path.join(folder, name), "rb") as source:
                    digest.update(source.read())
        versions = [sys.version, _version("numpy"), _version("numba"), _version("rocket-fft"), _version("numba-cuda")]
        digest.update("\0".join(versions).encode())
        known = digest.hexdigest()
        if folder in _FOLDERS:
            _FOLDERS[folder] = known
    return known


def register_kernel_folder(folder: str) -> None:
    """Stamp the cached numba functions of every ``*.py`` file in ``folder`` with the folder's fingerprint.

    Call it before the folder's modules define their functions. This package registers itself.
    """
    _FOLDERS.setdefault(os.path.abspath(folder), None)


def _folder_of(py_file: str) -> str | None:
    try:
        folder = os.path.dirname(os.path.abspath(py_file))
    except (TypeError, ValueError):  # pragma: no cover - a placeholder name
        return None
    return folder if folder in _FOLDERS else None


def _stamped(base: type) -> type:
    """Return a subclass of numba locator ``base`` that serves only this package and stamps with the fingerprint."""

    class KernelSetLocator(base):  # type: ignore[misc, valid-type]
        def get_source_stamp(self) -> object:
            return ("portalign-kernel-set", kernel_fingerprint(os.path.dirname(os.path.abspath(self._py_file))))

        @classmethod
        def from_function(cls, py_func: object, py_file: str) -> object:
            if _folder_of(py_file) is None:
                return None
            return super().from_function(py_func, py_file)

    KernelSetLocator.__name__ = KernelSetLocator.__qualname__ = f"KernelSet{base.__name__.lstrip('_')}"
    return KernelSetLocator


def install_locators(caching: Any = None) -> bool:
    """Put the fingerprint-stamped locators first in a numba caching module's list (once per process and module).

    Parameters
    ----------
    caching : module, optional
        numba's ``numba.core.caching`` (the default: CPU ``@njit`` functions) or numba-cuda's
        ``numba.cuda.core.caching`` (``@cuda.jit`` kernels, see :func:`install_cuda_locators`): the same
        locator classes and ``CacheImpl._locator_classes`` list.

    Returns
    -------
    bool
        False where the module has no locator classes of the expected names (numba's own stamps then apply).
    """
    if caching is None:
        try:
            from numba.core import caching
        except ImportError:  # pragma: no cover - numba always has it
            return False
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    # the user's cache folder before the source's __pycache__: nothing is written inside an installed package
    names = (("UserProvidedCacheLocator", "_UserProvidedCacheLocator"), ("UserWideCacheLocator", "_UserWideCacheLocator"),
             ("InTreeCacheLocator", "_InTreeCacheLocator"))
    bases: list[Any] = [getattr(caching, a, None) or getattr(caching, b, None) for a, b in names]
    if impl is None or any(base is None for base in bases) or not isinstance(getattr(impl, "_locator_classes", None), list):
        return False
    current = impl._locator_classes
    if any(getattr(cls, "_portalign_kernel_set", False) for cls in current):
        return True
    ours = []
    for base in bases:
        locator = _stamped(base)
        locator._portalign_kernel_set = True  # type: ignore[attr-defined]
        ours.append(locator)
    impl._locator_classes = ours + list(current)
    return True


def install_cuda_locators() -> bool:
    """Stamp numba-cuda's cached kernels too: :func:`install_locators` on ``numba.cuda.core.caching``.

    numba-cuda caches ``@cuda.jit(cache=True)`` kernels with its own copy of numba's caching classes, whose stamp
    is the source file's modification time and size alone: after an upgrade that changes a device function in one
    file, a kernel in an unchanged file would load with the old one inside (the CPU kernels' 0.2 mm failure), and
    the cache would sit in the installed package's ``__pycache__``. Returns False where numba-cuda is absent or
    has other classes (numba's own CUDA target, the simulator: nothing to do or numba's list, already stamped).
    """
    try:
        from numba.cuda.core import caching
    except Exception:  # noqa: BLE001 - numba-cuda absent, or unusable here: its own behaviour stays
        return False
    return install_locators(caching)


register_kernel_folder(KERNEL_DIR)
install_locators()
