"""Float64 reference versions of the kernels: slow, obvious code that the CPU and GPU kernels are tested against."""

from . import correlation, edge, field, gradient, mask, mutual_information, peaks, projection, pyramid, refine, statistics, warp

__all__ = [
    "correlation", "edge", "field", "gradient", "mask", "mutual_information", "peaks", "projection", "pyramid", "refine",
    "statistics", "warp",
]
