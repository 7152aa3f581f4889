"""Population setup-error statistics: M, systematic error Σ, random error σ and PTV margins.

Definitions (van Herk, Semin Radiat Oncol 14:52-64, 2004; van Herk et al., IJROBP
47:1121-1135, 2000; Stroom et al., IJROBP 43:905-919, 1999), per axis, over the
patients with at least two fractions:

* ``m_p``: patient p's mean setup error over fractions;
* ``s_p``: patient p's standard deviation over fractions (n - 1 in the denominator);
* ``M = mean_p(m_p)``: the population (overall) mean;
* ``Σ = SD_p(m_p)`` (n - 1): the systematic error; ``None`` with fewer than two patients;
* ``σ = sqrt(mean_p(s_p²))``: the random error (root mean square of the s_p);
* van Herk margin ``2.5 Σ + 0.7 σ``; Stroom margin ``2 Σ + 0.7 σ``.

Patients are weighted equally, whatever their number of fractions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["axis_statistics", "per_patient", "population_statistics"]


def per_patient(patient_ids: Sequence[Any], values: Sequence[float | None]) -> dict[Any, np.ndarray]:
    """Group one axis's per-fraction values by patient, dropping ``None`` / NaN (not measured).

    Parameters
    ----------
    patient_ids : sequence
        One id per fraction.
    values : sequence of float or None
        The setup error of that fraction (mm or degrees).

    Returns
    -------
    dict
        Patient id -> float64 array of its measured values, in input order.
    """
    groups: dict[Any, list[float]] = defaultdict(list)
    for patient, value in zip(patient_ids, values, strict=True):
        if value is None:
            continue
        number = float(value)
        if math.isfinite(number):
            groups[patient].append(number)
    return {p: np.asarray(v, dtype=np.float64) for p, v in groups.items()}


def axis_statistics(groups: dict[Any, np.ndarray], *, min_fractions: int = 2) -> dict[str, Any]:
    """Return the population statistics of one axis from each patient's per-fraction values.

    Parameters
    ----------
    groups : dict
        Patient id -> 1-D array of that patient's per-fraction setup errors.
    min_fractions : int
        Patients with fewer measured fractions are left out (at least 2: ``s_p``
        needs n - 1 > 0).

    Returns
    -------
    dict
        ``M_mm``, ``Sigma_mm``, ``sigma_mm``, ``margin_van_herk_mm``,
        ``margin_stroom_mm`` (``None`` where not computable: no patient, or Σ with
        one patient), ``n_patients`` and ``n_fractions`` used. Units are those of
        the input (the ``_mm`` names are kept for rotations too).
    """
    if min_fractions < 2:
        raise ValueError(f"min_fractions must be at least 2 (a patient's SD needs two fractions), got {min_fractions}")
    used = [np.asarray(v, dtype=np.float64) for v in groups.values() if len(v) >= min_fractions]
    out: dict[str, Any] = {"M_mm": None, "Sigma_mm": None, "sigma_mm": None, "margin_van_herk_mm": None,
                           "margin_stroom_mm": None, "n_patients": len(used),
                           "n_fractions": int(sum(len(v) for v in used))}
    if not used:
        return out
    means = np.array([v.mean() for v in used])
    sds = np.array([v.std(ddof=1) for v in used])
    out["M_mm"] = float(means.mean())
    out["sigma_mm"] = float(math.sqrt(float(np.mean(sds ** 2))))
    if len(used) >= 2:
        sigma_sys = float(means.std(ddof=1))
        out["Sigma_mm"] = sigma_sys
        out["margin_van_herk_mm"] = 2.5 * sigma_sys + 0.7 * out["sigma_mm"]
        out["margin_stroom_mm"] = 2.0 * sigma_sys + 0.7 * out["sigma_mm"]
    return out


def population_statistics(patient_ids: Sequence[Any], values: dict[str, Iterable[float | None]], *,
                          min_fractions: int = 2) -> dict[str, dict[str, Any]]:
    """:func:`axis_statistics` for several axes at once.

    Parameters
    ----------
    patient_ids : sequence
        One id per fraction (row).
    values : dict
        Axis name -> per-fraction values in the same row order (``None`` where not measured).
    min_fractions : int

    Returns
    -------
    dict
        Axis name -> the dict of :func:`axis_statistics`.

    Examples
    --------
    >>> stats = population_statistics(["a", "a", "b", "b"], {"lateral": [1.0, 3.0, -1.0, -1.0]})
    >>> stats["lateral"]["M_mm"], round(stats["lateral"]["Sigma_mm"], 4), stats["lateral"]["sigma_mm"]
    (0.5, 2.1213, 1.0)
    """
    ids = list(patient_ids)
    return {axis: axis_statistics(per_patient(ids, list(vals)), min_fractions=min_fractions)
            for axis, vals in values.items()}
