"""The planning CT prepared once for 2D/3D registration: attenuation volumes resident on the backend.

Preparation converts HU to linear attenuation with the DRR (kV, the CT's own
energy) model of :func:`portalign.simulate.attenuation_from_hu`, crops the
volume to the box of the patient (voxels above -800 HU, plus two voxels),
averages finer axes over blocks to about 2 mm (the fine level), pads one voxel
of zeros so that rays fade to zero at its faces, and keeps a coarse copy
averaged over 2x2x2 blocks for the first search level. Both copies
are uploaded to the backend once; per candidate pose only four 3-vectors of
geometry per view go to the kernel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Backend, select_backend
from ..couch import PATIENT_TO_IEC, patient_matrix
from ..ct import CTVolume
from ..errors import GeometryError
from ..simulate import attenuation_from_hu

#: Voxels are averaged in blocks (per axis, the nearest whole factor) to about this spacing for the
#: fine level: the search's detector grid is 2 mm at its finest, and a volume 4x smaller stays in the
#: CPU's caches (rays through a 512x512 CT cost several times more per sample).
FINE_SPACING_MM = 1.9
#: Largest voxel spacing (mm, any axis) a planning CT may have: DRRs cast through slices farther apart show only
#: what lies on the slices (a 5-slice phantom CT 75 mm apart gave "gradient correlation 0.012" refusals that did not
#: point at the CT; a new user's trial). Planning CTs have slices 1-5 mm apart.
MAX_CT_SPACING_MM = 10.0

# HU above which a voxel is patient (or couch) for the crop: lung is about -850..-500, air -1000.
_BODY_HU = -800.0
_CROP_MARGIN_VOXELS = 2
# Ray sampling step in units of the smallest voxel spacing (render_drr's default is 0.5; 0.75 costs a third
# less and moves no edge: the trilinear interpolant is still sampled more finely than its voxels).
_STEP_VOXELS = 0.75


@dataclass(frozen=True, eq=False)
class VolumeLevel:
    """One resolution of the attenuation volume, on the backend.

    Attributes
    ----------
    volume : array
        float32 ``[nz, ny, nx]`` attenuation (1/mm) on the backend.
    spacing_zyx : numpy.ndarray
        Voxel spacing (mm).
    origin_xyz : numpy.ndarray
        DICOM patient coordinates (mm) of voxel ``[0, 0, 0]``.
    step_mm : float
        Ray sampling step: 0.75 of the smallest voxel spacing.
    """

    volume: Any
    spacing_zyx: np.ndarray
    origin_xyz: np.ndarray
    step_mm: float


class PreparedCT:
    """A planning CT and isocentre prepared for many 2D/3D registrations.

    Build with :func:`portalign.register3d.prepare_ct`; register frames with
    :meth:`register`.

    Attributes
    ----------
    ct : CTVolume
        The CT as read.
    isocenter_mm : numpy.ndarray
        Planned isocentre in DICOM patient coordinates (mm).
    patient_position : str
        ``HFS``, ``FFS``, ``HFP`` or ``FFP``.
    backend : Backend
        Where the rays are cast.
    levels : dict of str to VolumeLevel
        ``"coarse"`` (2x2x2 block means of the fine one) and ``"fine"`` (the CT's grid, block-averaged
        along axes finer than :data:`FINE_SPACING_MM`).
    prepare_ms : float
        Time the preparation took.
    """

    def __init__(self, ct: CTVolume, *, isocenter_mm: Any, patient_position: str | None = None,
                 backend: str | Backend = "auto") -> None:
        started = time.perf_counter()
        if not isinstance(ct, CTVolume):
            raise GeometryError(f"prepare_ct needs a CTVolume (portalign.ct.read_ct_series), got {type(ct).__name__}")
        coarsest = max(ct.spacing_mm)
        if coarsest > MAX_CT_SPACING_MM:
            axis = ("z (between slices)", "y (between rows)", "x (between columns)")[ct.spacing_mm.index(coarsest)]
            raise GeometryError(f"{ct.source}: voxels {coarsest:g} mm apart along {axis}, more than "
                                f"{MAX_CT_SPACING_MM:g} mm: rendered views of it would show only what lies on its "
                                f"{ct.hu.shape[0]} slices; use the planning CT itself (slices 1-5 mm apart)")
        self.ct = ct
        self.isocenter_mm = _isocenter_inside(ct, isocenter_mm)
        position = (patient_position or ct.patient_position or "").strip().upper()
        if position not in PATIENT_TO_IEC:
            raise GeometryError(f"{ct.source}: patient position {position or '(none)'!r} is not supported; pass "
                                f"patient_position= (--patient-position) one of {', '.join(PATIENT_TO_IEC)}")
        self.patient_position = position
        self.patient_to_iec = patient_matrix(position)
        self.backend = backend if isinstance(backend, Backend) else select_backend(backend)
        cropped, origin = _crop_to_body(ct)
        spacing = np.array(ct.spacing_mm, dtype=np.float64)
        factors = tuple(max(1, int(FINE_SPACING_MM / s + 0.5)) for s in spacing)
        fine, origin, spacing = _block_mean(cropped, origin, spacing, factors)
        coarse, coarse_origin, coarse_spacing = _block_mean(fine, origin, spacing, (2, 2, 2))
        self.levels = {
            "coarse": self._level(coarse, coarse_spacing, coarse_origin),
            "fine": self._level(fine, spacing, origin),
        }
        self.prepare_ms = (time.perf_counter() - started) * 1e3

    def _level(self, volume: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> VolumeLevel:
        padded = np.pad(volume, 1)
        return VolumeLevel(self.backend.asarray(padded), spacing, origin - spacing[::-1],
                           _STEP_VOXELS * float(spacing.min()))

    def to_volume(self, level: VolumeLevel, poses: np.ndarray, source: np.ndarray, origin: np.ndarray,
                  col_step: np.ndarray, row_step: np.ndarray) -> tuple[np.ndarray, ...]:
        """Turn one view's room geometry into the volume frame for every pose.

        Parameters
        ----------
        level : VolumeLevel
        poses : numpy.ndarray
            ``[P, 6]`` pose vectors (lat, lng, vrt mm; pitch, roll, yaw deg).
        source, origin, col_step, row_step : numpy.ndarray
            Room positions (support axes, mm from the isocentre) from
            :meth:`ViewGeometry.detector_grid`.

        Returns
        -------
        tuple of numpy.ndarray
            Four ``[P, 3]`` float64 arrays ``(z, y, x)`` in mm in the volume frame:
            a room point ``q`` shows LPS ``iso + M^T R^T (q - t)``.
        """
        from ._geometry import rotation_matrix

        count = len(poses)
        to_lps = np.empty((count, 3, 3))
        offset = np.empty((count, 3))
        m_t = self.patient_to_iec.T
        base = self.isocenter_mm - level.origin_xyz
        for p, pose in enumerate(poses):  # a few dozen 3x3 products: not a hot loop
            a = m_t @ rotation_matrix(pose[3], pose[4], pose[5]).T
            to_lps[p] = a
            offset[p] = base - a @ pose[:3]

        def point(q: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray((np.einsum("pij,j->pi", to_lps, q) + offset)[:, ::-1])

        def vector(v: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.einsum("pij,j->pi", to_lps, v)[:, ::-1])

        return point(source), point(origin), vector(col_step), vector(row_step)

    def render(self, level: VolumeLevel, geometry: tuple[np.ndarray, ...], out: Any) -> Any:
        """Cast the rays of every pose in one kernel call into ``out`` ``[P, rows, cols]`` (backend array)."""
        be = self.backend
        be.kernels.project_cone_beam_poses(level.volume, level.spacing_zyx, *(be.asarray(g) for g in geometry),
                                           level.step_mm, out)
        return out

    def register(self, frames: Any, **kwargs: Any) -> Any:
        """Register frames of one setup against this CT; see :func:`portalign.register3d.register_3d`."""
        from ._search import register_prepared

        return register_prepared(self, frames, **kwargs)


def _isocenter_inside(ct: CTVolume, isocenter_mm: Any) -> np.ndarray:
    try:
        iso = np.asarray(isocenter_mm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        iso = np.zeros(0)
    if iso.shape != (3,) or not np.isfinite(iso).all():
        raise GeometryError(f"isocenter_mm must be three finite numbers (x, y, z in DICOM patient coordinates, mm), "
                            f"got {isocenter_mm!r}")
    nz, ny, nx = ct.shape
    sz, sy, sx = ct.spacing_mm
    low = np.array(ct.origin_mm)
    high = low + np.array([(nx - 1) * sx, (ny - 1) * sy, (nz - 1) * sz])
    if not ((iso >= low - 1e-6).all() and (iso <= high + 1e-6).all()):
        extent = ", ".join(f"{a} {lo:.1f}..{hi:.1f}" for a, lo, hi in zip("xyz", low, high, strict=True))
        raise GeometryError(f"{ct.source}: isocentre ({iso[0]:g}, {iso[1]:g}, {iso[2]:g}) mm is outside the CT "
                            f"({extent} mm); pass the planned isocentre in the CT's DICOM patient coordinates "
                            "(--isocenter-mm X,Y,Z, or --plan RTPLAN)")
    return iso


def _crop_to_body(ct: CTVolume) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation of the box of voxels above -800 HU (plus a margin); returns (volume, origin x, y, z)."""
    body = ct.hu > _BODY_HU
    lows, highs = [], []
    for axis in range(3):
        used = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        if used.size == 0:
            raise GeometryError(f"{ct.source}: no voxel above {_BODY_HU:g} HU: the CT shows no patient")
        lows.append(max(int(used[0]) - _CROP_MARGIN_VOXELS, 0))
        highs.append(min(int(used[-1]) + 1 + _CROP_MARGIN_VOXELS, ct.shape[axis]))
    block = attenuation_from_hu(ct.hu[lows[0]:highs[0], lows[1]:highs[1], lows[2]:highs[2]], "kv")
    spacing_xyz = np.array(ct.spacing_mm[::-1])
    return block, np.array(ct.origin_mm) + np.array(lows[::-1]) * spacing_xyz


def _block_mean(volume: np.ndarray, origin_xyz: np.ndarray, spacing_zyx: np.ndarray,
                factors: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average over blocks of ``factors`` (z, y, x) voxels; an axis is zero-padded to a multiple of its factor."""
    if all(f == 1 for f in factors):
        return volume, origin_xyz, spacing_zyx
    padded = np.pad(volume, [(0, -n % f) for n, f in zip(volume.shape, factors, strict=True)])
    nz, ny, nx = (n // f for n, f in zip(padded.shape, factors, strict=True))
    fz, fy, fx = factors
    blocks = padded.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5), dtype=np.float32)
    step = np.array(factors, dtype=np.float64)
    return blocks, origin_xyz + 0.5 * ((step - 1.0) * spacing_zyx)[::-1], step * spacing_zyx
