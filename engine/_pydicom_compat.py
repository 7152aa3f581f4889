"""The few pydicom calls whose spelling differs between pydicom 2.4 and 3.x.

portalign supports ``pydicom>=2.4``: pylinac, the field's most used QA library,
pins ``pydicom<3``, and physicists install both side by side. pydicom 3 moved
pixel decoding to :mod:`pydicom.pixels` (``pixel_array(ds, index=)``,
``get_decoder``), renamed ``dcmwrite``'s ``write_like_original`` to
``enforce_file_format`` and replaced ``Dataset.read_implicit_vr`` /
``read_little_endian`` by ``original_encoding``; pydicom 2.4 has only the older
spellings and needs ``is_implicit_VR`` / ``is_little_endian`` set before writing.
Everything else in portalign calls the functions here, never those spellings.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

__all__ = ["PYDICOM_MAJOR", "apply_modality_lut", "decode_pixels", "decoder_available", "read_encoding",
           "write_dataset"]

#: Major version of the installed pydicom (2 or 3).
PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

_get_decoder: Any = None
_pixel_array: Any = None
if PYDICOM_MAJOR >= 3:
    from pydicom.pixels import apply_modality_lut
    from pydicom.pixels import get_decoder as _get_decoder
    from pydicom.pixels import pixel_array as _pixel_array
else:  # pragma: no cover - pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut  # type: ignore[no-redef]


def decode_pixels(ds: Dataset, *, index: int | None) -> np.ndarray:
    """Decode the pixel data of ``ds``: every frame (``index=None``) or one frame.

    pydicom 3 decodes only the frame asked for; pydicom 2.4 decodes them all and
    the frame is taken from the result (the allocation is then the size of the
    pixel data, which the caller has checked against the file).

    Raises
    ------
    Exception
        Whatever pydicom raises for undecodable data; the caller names the file.
    """
    if _pixel_array is not None:
        return _pixel_array(ds, index=index)
    array = ds.pixel_array  # pragma: no cover - pydicom 2.4
    if index is None:  # pragma: no cover
        return array
    frames = int(ds.get("NumberOfFrames", 1) or 1)  # pragma: no cover
    return array[index] if frames > 1 and array.ndim == 3 else array  # pragma: no cover


def decoder_available(transfer_syntax: UID) -> bool:
    """Return whether an installed pixel-data decoder handles ``transfer_syntax``."""
    try:
        if _get_decoder is not None:
            return bool(_get_decoder(transfer_syntax).is_available)
        from pydicom import config  # pragma: no cover - pydicom 2.4

        return any(  # pragma: no cover
            handler.supports_transfer_syntax(transfer_syntax) and handler.is_available()
            for handler in config.pixel_data_handlers
        )
    except Exception:
        return False


def read_encoding(ds: Dataset) -> tuple[bool | None, bool | None]:
    """Return ``(implicit_vr, little_endian)`` as pydicom found them while reading (None when unknown)."""
    encoding = getattr(ds, "original_encoding", None)  # pydicom 3
    if isinstance(encoding, tuple) and len(encoding) == 2:
        return encoding[0], encoding[1]
    return getattr(ds, "read_implicit_vr", None), getattr(ds, "read_little_endian", None)  # pydicom 2.4


def write_dataset(target: str | BinaryIO | Any, ds: Dataset, *, file_format: bool = True,
                  implicit_vr: bool | None = None, little_endian: bool | None = None) -> None:
    """Write ``ds`` to a path or binary file object with either pydicom.

    Parameters
    ----------
    target : str, os.PathLike or binary file object
        Where to write.
    ds : pydicom.Dataset
        With ``file_meta`` (``TransferSyntaxUID``) when ``file_format`` is true.
    file_format : bool
        Write a conformant DICOM file (preamble, file meta, the meta's transfer
        syntax); false writes the bare dataset in ``implicit_vr`` / ``little_endian``.
    implicit_vr, little_endian : bool, optional
        Encoding of a bare dataset (``file_format=False``).
    """
    if PYDICOM_MAJOR >= 3:
        if file_format:
            pydicom.dcmwrite(target, ds, enforce_file_format=True)
        else:
            pydicom.dcmwrite(target, ds, implicit_vr=implicit_vr, little_endian=little_endian)
        return
    # pydicom 2.4: the encoding is read from the dataset's attributes  # pragma: no cover
    if file_format:  # pragma: no cover
        syntax = UID(str(ds.file_meta.TransferSyntaxUID))
        ds.is_implicit_VR = syntax.is_implicit_VR
        ds.is_little_endian = syntax.is_little_endian
        pydicom.dcmwrite(target, ds, write_like_original=False)
    else:  # pragma: no cover
        ds.is_implicit_VR = True if implicit_vr is None else implicit_vr
        ds.is_little_endian = True if little_endian is None else little_endian
        pydicom.dcmwrite(target, ds, write_like_original=True)
