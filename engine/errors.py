"""Exceptions raised by portalign.

Every error names the input it is about and, where there is one, the fix. The
CLI prints ``str(error)`` as its one-line message; services turn these into 4xx
answers. Anything else that escapes is a bug.
"""

from __future__ import annotations

__all__ = [
    "PortalignError",
    "PortalImageError",
    "PixelValuesError",
    "ImagePathError",
    "GeometryError",
    "BackendUnavailableError",
    "ReferencePreparationError",
    "MissingDependencyError",
    "OptionValueError",
    "EXTRAS",
]

#: Optional dependency (top-level import name) -> the pyproject extra that installs it.
EXTRAS = {
    "fastapi": "service",
    "uvicorn": "service",
    "starlette": "service",
    "httpx": "service",
    "pynetdicom": "service",
    "matplotlib": "overlay",
    "SimpleITK": "bench",
    "itk": "bench",
    "cv2": "bench",
    "skimage": "bench",
    "cupy": "gpu-cuda12",
    "dask": "archive",
    "distributed": "archive",
    "pandas": "archive",
    "pyarrow": "archive",
}


class PortalignError(Exception):
    """Base class of every error portalign raises on purpose."""


class PortalImageError(PortalignError, ValueError):
    """An input image (file or array) cannot be used: unreadable, not an image, bad pixels."""


class PixelValuesError(PortalImageError):
    """An image was read, but its pixel values cannot be registered: NaN, infinite, huge or all one value."""


class ImagePathError(PortalImageError):
    """The path given for an image names no readable regular file: missing, a folder, a device or pipe, unreadable.

    A :class:`PortalImageError` (what is given cannot be used); the command line's ``--json`` calls it
    ``"invalid_path"``, not ``"invalid_image"``: the file was never read.
    """


class GeometryError(PortalignError, ValueError):
    """Image geometry is missing or inconsistent (spacing, SID, SAD, beam axis)."""


class BackendUnavailableError(PortalignError, RuntimeError):
    """An explicitly requested compute backend cannot run here."""


class ReferencePreparationError(PortalignError, ValueError):
    """A reference image cannot be prepared (no structure, wrong shape, ...)."""


class OptionValueError(PortalignError, ValueError):
    """An argument of a call is outside what it can take (``lanes=0``); the message names it and its range."""


class MissingDependencyError(PortalignError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    @classmethod
    def for_module(cls, module: str, what: str) -> MissingDependencyError:
        """Return the error for ``what`` (``"portalign serve"``) needing the missing ``module``.

        The message names the pip command: ``pip install "portalign[service]"``.
        """
        top = (module or "").split(".")[0]
        extra = EXTRAS.get(top)
        if extra == "gpu-cuda12":
            fix = 'pip install "portalign[gpu-cuda13]" (or "portalign[gpu-cuda12]" with a CUDA 12 driver)'
        elif extra:
            fix = f'pip install "portalign[{extra}]"'
        else:
            fix = f"pip install {top}" if top else "reinstall portalign"
        return cls(f"{what} needs {top or 'an optional dependency'}, which is not installed: {fix}")
