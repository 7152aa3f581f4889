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

from .backends import Backend, select_backend, set_thread_policy
from .errors import (
    BackendUnavailableError,
    GeometryError,
    ImagePathError,
    OptionValueError,
    PixelValuesError,
    PortalignError,
    PortalImageError,
    ReferencePreparationError,
)
from .image import Image, ImageInfo, as_image
from .options import RegistrationOptions
from .registration import BatchError, Reference, prepare_reference, prepare_reference_for, register_batch
from .result import RegistrationResult

__all__ = [
    "__version__",
    "Backend",
    "BackendUnavailableError",
    "BatchError",
    "GeometryError",
    "Image",
    "ImagePathError",
    "OptionValueError",
    "ImageInfo",
    "PixelValuesError",
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
    "set_thread_policy",
]


def register_3d(ct: Any, frames: Any, **kwargs: Any) -> Any:
    """Register frames of one setup against the planning CT in 6 DOF (see :func:`portalign.register3d.register_3d`)."""
    from .register3d import register_3d as _register_3d

    return _register_3d(ct, frames, **kwargs)


def read_rt_image(
    source: Any,
    *,
    frame: int | None = None,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    sid_mm: float | None = None,
    sad_mm: float | None = None,
    invert: bool | None = None,
) -> Image:
    """Read one DICOM RT Image (portal image or DRR) into an :class:`Image`.

    Parameters
    ----------
    source : str, os.PathLike, bytes, binary file object or pydicom.Dataset
        The file. CR/DX/XA/RF projection images are accepted when their spacing at
        the isocentre can be known.
    frame : int, optional
        0-based frame of a multi-frame (cine) image; the first by default.
    pixel_spacing_mm : float or (float, float), optional
        Pixel spacing *at the isocentre plane*, one number or ``(row, col)``, mm;
        overrides the spacing tags (and makes SID and SAD unnecessary).
    sid_mm, sad_mm : float, optional
        Source-imager and source-axis distances (mm) when the file lacks
        ``RTImageSID`` / ``RadiationMachineSAD``, or to override them.
    invert : bool, optional
        ``True`` inverts the pixel values, ``False`` never does; by default the
        DICOM ``PixelIntensityRelationshipSign`` decides (Elekta iView files are
        stored inverted without one: pass ``invert=True``).

    Returns
    -------
    Image
        Float32 pixels (higher = more radiation), spacing (mm) and beam axis
        (pixels) at the isocentre plane, the acquisition facts in ``info``.

    Raises
    ------
    PortalImageError
        Unreadable file, no pixel data; its subclass :class:`PixelValuesError` for pixels that cannot be
        registered (NaN, infinite, all one value).
    GeometryError
        Spacing, SID or SAD unknown and not supplied.

    See Also
    --------
    portalign.dicom.read_rt_image : the reader, with its conventions.
    """
    from .dicom import read_rt_image as _read

    return _read(source, frame=frame, pixel_spacing_mm=pixel_spacing_mm, sid_mm=sid_mm, sad_mm=sad_mm, invert=invert)


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
        With a prepared :class:`Reference`, its own options are used: other options given here raise
        :class:`PortalignError` (they were silently ignored: ``max_shift_mm=0.5`` let a 4.1 mm shift be ok).
    backend : {"auto", "cpu", "gpu"}
    pixel_spacing_mm : float or (float, float), optional
        Isocentre-plane spacing for array inputs.

    Returns
    -------
    RegistrationResult

    Raises
    ------
    PortalignError
        ``options`` differ from a prepared reference's; and as :meth:`Reference.register`.
    """
    if isinstance(reference, Reference) and options is not None and options != reference.options:
        differ = [f"{name}={getattr(options, name)!r}" for name in options.__dataclass_fields__
                  if getattr(options, name) != getattr(reference.options, name)]
        raise PortalignError(f"register: the reference was prepared with other options than those given here "
                             f"({', '.join(differ)}), and a prepared reference registers with its own; prepare it with "
                             "these (prepare_reference(image, options)), or leave options out")
    if not isinstance(reference, Reference):
        ref_image = as_image(reference, name="reference", pixel_spacing_mm=pixel_spacing_mm)
        reference = prepare_reference_for(ref_image, frame, options, backend=backend, pixel_spacing_mm=pixel_spacing_mm)
    return reference.register(frame, pixel_spacing_mm=pixel_spacing_mm)
