"""Exceptions raised by portalign.

Every error names the input it is about and, where there is one, the fix. The
CLI prints ``str(error)`` as its one-line message; services turn these into 4xx
answers. Anything else that escapes is a bug.
"""

from __future__ import annotations

__all__ = [
    "PortalignError",
    "PortalImageError",
    "GeometryError",
    "BackendUnavailableError",
    "ReferencePreparationError",
]


class PortalignError(Exception):
    """Base class of every error portalign raises on purpose."""


class PortalImageError(PortalignError, ValueError):
    """An input image (file or array) cannot be used: unreadable, not an image, bad pixels."""


class GeometryError(PortalignError, ValueError):
    """Image geometry is missing or inconsistent (spacing, SID, SAD, beam axis)."""


class BackendUnavailableError(PortalignError, RuntimeError):
    """An explicitly requested compute backend cannot run here."""


class ReferencePreparationError(PortalignError, ValueError):
    """A reference image cannot be prepared (no structure, wrong shape, ...)."""
