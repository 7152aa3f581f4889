"""CPU kernels (numba ``@njit``); ``KERNELS`` is the set a backend hands to the optimiser (and to the DRR renderer).

Every kernel here has a twin of the same name and arguments in
``portalign.kernels.gpu`` and a float64 version in ``portalign.kernels.reference``,
except ``search_program`` (a frame's search and refinement as one compiled call,
whose steps the GPU backend runs one kernel at a time:
``portalign.registration._search_program.search_eager``, the same numbers) and
``frame_pyramid``, ``frame_levels`` and ``levels_and_surfaces`` (the frame's pyramid and value check, and its
levels with their statistics, each in one call, the last with the global search's surfaces beside them; the GPU
runs ``downsample2``, ``prepare_level``, the statistics kernels and ``coarse_search`` one by one), and
``intensity_polish`` (the last least-squares polish of two portal images in near-perfect agreement: host work on
every backend, the frame's level copied to the host once).
"""

from types import SimpleNamespace

# first, before any kernel is defined: numba's cache stamps every kernel here with the whole set's fingerprint
from ._cache import KERNEL_DIR as _KERNEL_DIR  # noqa: F401
from .correlation import coarse_search, coarse_surfaces, correlation_window, feature_spectrum
from .edge import gradient_correlation, matched_orientation
from .gradient import gradient_row_sums, orientation_features
from .intensity import intensity_polish
from .level import frame_levels, levels_and_surfaces, prepare_level
from .mask import erode_box, masked_range, pixel_list, threshold_mask
from .mutual_information import joint_histograms, mutual_information, quantize
from .peaks import search_peaks
from .program import search_program
from .projection import project_cone_beam, project_cone_beam_poses
from .pyramid import downsample2, downsample2_mask, frame_pyramid
from .refine import refine
from .statistics import rms_radius, second_difference_mad
from .warp import warp_bilinear

__all__ = [
    "CPU_ONLY",
    "KERNELS",
    "coarse_search",
    "coarse_surfaces",
    "correlation_window",
    "downsample2",
    "downsample2_mask",
    "erode_box",
    "feature_spectrum",
    "frame_levels",
    "frame_pyramid",
    "gradient_correlation",
    "gradient_row_sums",
    "intensity_polish",
    "joint_histograms",
    "levels_and_surfaces",
    "masked_range",
    "matched_orientation",
    "mutual_information",
    "orientation_features",
    "pixel_list",
    "prepare_level",
    "project_cone_beam",
    "project_cone_beam_poses",
    "quantize",
    "refine",
    "rms_radius",
    "search_peaks",
    "search_program",
    "second_difference_mad",
    "threshold_mask",
    "warp_bilinear",
]

KERNELS = SimpleNamespace(**{name: globals()[name] for name in __all__ if name not in ("KERNELS", "CPU_ONLY")})
#: Kernels with no GPU twin: the compiled whole-stage program (the GPU backend runs its steps one by one) and the
#: intensity polish (run on the host for every backend).
CPU_ONLY = ("search_program", "frame_pyramid", "frame_levels", "levels_and_surfaces", "coarse_surfaces",
            "intensity_polish")
