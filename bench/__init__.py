"""portalign benchmarks: latency, throughput, memory and accuracy against peers, on the same pairs.

Run from the repository root (``bench/`` is not installed with the package)::

    python -m bench --quick --out results/bench
    python -m bench.latency

Modules: :mod:`bench.cases` (the pairs and their truth), :mod:`bench.peers`
(portalign, SimpleITK, elastix, OpenCV ECC, scikit-image behind one interface),
:mod:`bench.geometry` (every library's transform turned into the DESIGN.md
contract), :mod:`bench.measure` (time, memory, machine), :mod:`bench.runner`
(the run), :mod:`bench.report` (``results.json``, ``results.md``, PNGs) and
:mod:`bench.cli` (``python -m bench`` / ``portalign bench``).
"""

__all__: list[str] = []
