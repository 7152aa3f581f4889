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


def axis_statistics(groups: dict[Any, np.ndarray], *, min_fractions: int = 2, unit: str = "mm") -> dict[str, Any]:
    """Return the population statistics of one axis from each patient's per-fraction values.

    Parameters
    ----------
    groups : dict
        Patient id -> 1-D array of that patient's per-fraction setup errors.
    min_fractions : int
        Patients with fewer measured fractions are left out (at least 2: ``s_p``
        needs n - 1 > 0).
    unit : {"mm", "deg"}
        The values' unit, which the keys carry. Translations (``"mm"``) get the
        margin recipes too; rotations (``"deg"``) do not: van Herk's and Stroom's
        recipes are CTV-to-PTV margins for translations (van Herk et al. 2000,
        Stroom et al. 1999), and a margin in degrees has no meaning.

    Returns
    -------
    dict
        ``M_<unit>``, ``Sigma_<unit>``, ``sigma_<unit>`` (and for mm
        ``margin_van_herk_mm``, ``margin_stroom_mm``); ``None`` where not
        computable: no patient, or Σ and the margins with one patient.
        ``n_patients`` and ``n_fractions`` used.

    Raises
    ------
    ValueError
        ``min_fractions`` under 2, or ``unit`` not ``"mm"`` or ``"deg"``.
    """
    if min_fractions < 2:
        raise ValueError(f"min_fractions must be at least 2 (a patient's SD needs two fractions), got {min_fractions}")
    if unit not in ("mm", "deg"):
        raise ValueError(f"unit must be 'mm' (translations) or 'deg' (rotations), got {unit!r}")
    used = [np.asarray(v, dtype=np.float64) for v in groups.values() if len(v) >= min_fractions]
    mean_key, sys_key, random_key = f"M_{unit}", f"Sigma_{unit}", f"sigma_{unit}"
    out: dict[str, Any] = {mean_key: None, sys_key: None, random_key: None}
    margins = unit == "mm"
    if margins:
        out.update(margin_van_herk_mm=None, margin_stroom_mm=None)
    out.update(n_patients=len(used), n_fractions=int(sum(len(v) for v in used)))
    if not used:
        return out
    means = np.array([v.mean() for v in used])
    sds = np.array([v.std(ddof=1) for v in used])
    out[mean_key] = float(means.mean())
    out[random_key] = float(math.sqrt(float(np.mean(sds ** 2))))
    if len(used) >= 2:
        sigma_sys = float(means.std(ddof=1))
        out[sys_key] = sigma_sys
        if margins:
            out["margin_van_herk_mm"] = 2.5 * sigma_sys + 0.7 * out[random_key]
            out["margin_stroom_mm"] = 2.0 * sigma_sys + 0.7 * out[random_key]
    return out


def population_statistics(patient_ids: Sequence[Any], values: dict[str, Iterable[float | None]], *,
                          min_fractions: int = 2, unit: str = "mm") -> dict[str, dict[str, Any]]:
    """:func:`axis_statistics` for several axes at once.

    Parameters
    ----------
    patient_ids : sequence
        One id per fraction (row).
    values : dict
        Axis name -> per-fraction values in the same row order (``None`` where not measured).
    min_fractions : int
    unit : {"mm", "deg"}
        As :func:`axis_statistics`.

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
    return {axis: axis_statistics(per_patient(ids, list(vals)), min_fractions=min_fractions, unit=unit)
            for axis, vals in values.items()}


#: Above this relative standard error of Σ the population's margins are said to be indicative only.
SIGMA_MAX_RELATIVE_SE = 0.25


def sigma_relative_se(n_patients: int) -> float | None:
    """Return the relative standard error of a systematic error Σ estimated from ``n_patients`` patient means.

    For normally distributed patient means the sample SD's standard error is about ``Σ / sqrt(2 (n - 1))``
    (the large-sample approximation of the chi distribution's spread); None under two patients (no Σ).
    """
    return None if n_patients < 2 else 1.0 / math.sqrt(2.0 * (n_patients - 1))
