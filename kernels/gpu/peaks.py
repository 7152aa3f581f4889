"""Global-search peaks on the GPU backend: the CPU's compiled function, run on the host copy of the window.

The window is ``K x (2m+1)^2`` values (tens of KiB), the one array of the global
search that leaves the device; its peak search is sequential (best first, then
suppression) and takes microseconds on the host. Same name and arguments as
:func:`portalign.kernels.cpu.peaks.search_peaks`.
"""

from portalign.kernels.cpu.peaks import search_peaks

__all__ = ["search_peaks"]
