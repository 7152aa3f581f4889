"""GPU kernels (numba.cuda, CuPy FFTs); ``KERNELS`` is the set the GPU backend hands to the optimiser.

Every kernel here is a Python function with the name, arguments and
output-buffer convention of its twin in ``portalign.kernels.cpu``; it launches
one or more CUDA kernels on the arrays it is given (CuPy arrays on a device,
numpy arrays under numba's simulator, ``NUMBA_ENABLE_CUDASIM=1``). Launch
settings live in :mod:`.launch`. Importing this package compiles nothing and
needs no device: kernels compile on first use.

Agreement with the CPU (asserted by ``tests/test_gpu.py``): bit-identical for
the pyramid, masks, erosion, quantisation, edge features, row sums, joint
histograms, ``pixel_list`` and ``masked_range``; ``mutual_information`` and
``gradient_correlation`` within 1e-9 relative (fixed-order float64 reductions,
deterministic run to run); ``warp_bilinear`` within one float32 ulp; the
single-precision FFT kernels within 1e-5 of the surface's largest value on a
device (cuFFT versus scipy's pocketfft) and identical under the simulator;
``project_cone_beam`` (the DRR ray caster) within 1e-4 relative, like the CPU
kernel against its float64 reference.
"""

from types import SimpleNamespace

# first, before any kernel is defined: numba-cuda's cache stamps every kernel here with the folder's fingerprint
from ._cache import GPU_KERNEL_DIR as _GPU_KERNEL_DIR  # noqa: F401
from .correlation import coarse_search, correlation_window, feature_spectrum
from .edge import gradient_correlation, matched_orientation
from .gradient import gradient_row_sums, orientation_features
from .level import prepare_level
from .mask import erode_box, masked_range, pixel_list, threshold_mask
from .mutual_information import joint_histograms, mutual_information, quantize
from .peaks import search_peaks
from .projection import project_cone_beam, project_cone_beam_poses
from .pyramid import downsample2, downsample2_mask
from .refine import refine
from .statistics import rms_radius, second_difference_mad
from .warp import warp_bilinear

__all__ = [
    "KERNELS",
    "coarse_search",
    "correlation_window",
    "downsample2",
    "downsample2_mask",
    "erode_box",
    "feature_spectrum",
    "gradient_correlation",
    "gradient_row_sums",
    "joint_histograms",
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
    "second_difference_mad",
    "threshold_mask",
    "warp_bilinear",
]

KERNELS = SimpleNamespace(**{name: globals()[name] for name in __all__ if name != "KERNELS"})
