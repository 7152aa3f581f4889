"""A department's portal-image archive in one command: re-register every frame on Dask, report setup errors.

``portalign archive SOURCE [SOURCE ...] --out DIR [--workers N | --scheduler ADDRESS] [--resume]``
or, in Python::

    import portalign.archive
    result = portalign.archive.run(["/data/portal"], "out", workers=8)
    print(result.summary["population"]["lateral"]["Sigma_mm"])

``files -> index (headers only) -> beams (one Dask task each: prepare the reference
once, register its frames) -> registrations / setups tables -> population
statistics (M, Σ, σ, van Herk and Stroom margins) -> report``. Needs the
``archive`` extra (``pip install "portalign[archive]"``: dask[distributed], pandas,
pyarrow; matplotlib for the plots).
"""

from __future__ import annotations

from ._index import index_file, list_files
from ._pair import BeamTask, pair_frames
from ._run import AXES, ArchiveError, ArchiveResult, run
from ._setups import circular_mean_deg, combine_fractions
from ._stats import axis_statistics, population_statistics, sigma_relative_se
from ._tasks import register_beam

__all__ = [
    "AXES",
    "ArchiveError",
    "ArchiveResult",
    "BeamTask",
    "axis_statistics",
    "circular_mean_deg",
    "combine_fractions",
    "index_file",
    "list_files",
    "pair_frames",
    "population_statistics",
    "register_beam",
    "run",
    "sigma_relative_se",
]
