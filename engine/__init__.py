"""portalign: real-time registration of radiotherapy portal images.

Prepare a reference once, register many frames against it::

    import portalign
    ref = portalign.prepare_reference(portalign.read_rt_image("drr.dcm"))
    result = ref.register(portalign.read_rt_image("epid.dcm"))
    print(result.dx_mm, result.dy_mm, result.rotation_deg, result.ok, result.reason)

or in one call, ``portalign.register(reference_image, frame_image)``; many frames at
once with ``portalign.register_batch(ref, frames)``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from .backend import Backend, select_backend
from .errors import (
    BackendUnavailableError,
    GeometryError,
    PortalignError,
    PortalImageError,
    ReferencePreparationError,
)
from .gpu import BatchError, register_batch
from .image import Image, ImageInfo, as_image
from .options import RegistrationOptions
from .reference import Reference, prepare_reference
from .result import RegistrationResult

__all__ = [
    "__version__",
    "Backend",
    "BackendUnavailableError",
    "BatchError",
    "GeometryError",
    "Image",
    "ImageInfo",
    "PortalImageError",
    "PortalignError",
    "ReferencePreparationError",
    "Reference",
    "RegistrationOptions",
    "RegistrationResult",
    "prepare_reference",
    "read_rt_image",
    "register",
    "register_3d",
    "register_batch",
    "select_backend",
]


def register_3d(ct: Any, frames: Any, **kwargs: Any) -> Any:
    """Register frames of one setup against the planning CT in 6 DOF (see :func:`portalign.register3d.register_3d`)."""
    from .register3d import register_3d as _register_3d

    return _register_3d(ct, frames, **kwargs)


def read_rt_image(source: Any, **kwargs: Any) -> Image:
    """Read a DICOM RT Image into an :class:`Image` (see :func:`portalign.dicom.read_rt_image`)."""
    from .dicom import read_rt_image as _read

    return _read(source, **kwargs)


def register(
    reference: Any,
    frame: Any,
    options: RegistrationOptions | None = None,
    *,
    backend: str = "auto",
    pixel_spacing_mm: Any = None,
) -> RegistrationResult:
    """Register one frame against one reference (prepares the reference each call).

    Parameters
    ----------
    reference : Reference, Image, path, pydicom.Dataset or numpy.ndarray
        A prepared :class:`Reference` is used as it is.
    frame : Image, path, pydicom.Dataset or numpy.ndarray
    options : RegistrationOptions, optional
    backend : {"auto", "cpu", "gpu"}
    pixel_spacing_mm : float or (float, float), optional
        Isocentre-plane spacing for array inputs.

    Returns
    -------
    RegistrationResult
    """
    if not isinstance(reference, Reference):
        ref_image = as_image(reference, name="reference", pixel_spacing_mm=pixel_spacing_mm)
        reference = prepare_reference(ref_image, options, backend=backend)
    return reference.register(frame, pixel_spacing_mm=pixel_spacing_mm)
