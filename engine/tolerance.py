"""Action levels: how far the patient may be from the planned position before someone acts.

A :class:`ToleranceTable` holds one limit per axis. Translations are in mm in
the IEC 61217 patient-support (couch) axes, rotations in degrees:

=========  ====  ===========================================================
axis       unit  compared with
=========  ====  ===========================================================
``lat``    mm    ``|lateral_mm|`` (IEC X)
``lng``    mm    ``|longitudinal_mm|`` (IEC Y)
``vrt``    mm    ``|vertical_mm|`` (IEC Z)
``vec``    mm    length of the 3-D displacement
``rot``    deg   the largest ``|in-plane rotation|`` of any view
``pitch``  deg   ``|pitch|`` about IEC X, when it can be estimated
``roll``   deg   ``|roll|`` about IEC Y, when it can be estimated
``yaw``    deg   ``|couch rotation|`` about IEC Z, when it can be estimated
=========  ====  ===========================================================

A value is *within* tolerance when its magnitude is at most the limit (equal
counts as within: an action level is the first value that is not acceptable
plus nothing). Axes without a limit are not checked; a value that cannot be
measured (a rotation that the views do not determine) is reported as ``None``.

Tables come from a command-line string (:func:`parse_tolerance`,
``"lat=2,lng=2,vrt=2,rot=1"``, units optional: ``"lat=2mm,rot=1deg"``) or a TOML
file (:func:`load_tolerance`) with the same keys at the top level or in a
``[tolerance]`` table::

    [tolerance]
    lat = 2.0   # mm
    lng = 2.0
    vrt = 3.0
    rot = 1.0   # degrees
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PortalignError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (pyproject allows it)
    tomllib = None  # type: ignore[assignment]

__all__ = ["AXES", "ALIASES", "ToleranceError", "ToleranceTable", "parse_tolerance", "load_tolerance", "tolerance_from_flags"]

#: Axis name -> (unit, what it limits).
AXES: dict[str, tuple[str, str]] = {
    "lat": ("mm", "lateral couch translation (IEC X)"),
    "lng": ("mm", "longitudinal couch translation (IEC Y)"),
    "vrt": ("mm", "vertical couch translation (IEC Z)"),
    "vec": ("mm", "length of the 3-D displacement"),
    "rot": ("deg", "in-plane rotation of any view"),
    "pitch": ("deg", "rotation about IEC X"),
    "roll": ("deg", "rotation about IEC Y"),
    "yaw": ("deg", "couch rotation about IEC Z"),
}

#: Other names accepted for the axes.
ALIASES: dict[str, str] = {
    "lateral": "lat",
    "longitudinal": "lng",
    "long": "lng",
    "vertical": "vrt",
    "vert": "vrt",
    "vector": "vec",
    "rotation": "rot",
    "couch": "yaw",
}

_UNITS = {"mm": "mm", "deg": "deg", "degree": "deg", "degrees": "deg", "°": "deg"}
_NUMBER_UNIT = re.compile(r"^\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z°]*)\s*$")


class ToleranceError(PortalignError, ValueError):
    """A tolerance table cannot be read: unknown axis, bad number, unreadable file."""


@dataclass(frozen=True)
class ToleranceTable:
    """One action level per axis (mm for translations, degrees for rotations).

    Attributes
    ----------
    limits : dict of str to float
        Axis (a key of :data:`AXES`) to its limit, positive.
    source : str
        Where the table came from (``--tolerance``, a file name); used in messages.
    """

    limits: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        checked = {}
        for key, value in dict(self.limits).items():
            axis = _axis(key, self.source)
            checked[axis] = _limit(value, axis, self.source)
        object.__setattr__(self, "limits", checked)

    def check(self, values: Mapping[str, float | None]) -> dict[str, bool | None]:
        """Say for every axis with a limit whether its value is within it.

        Parameters
        ----------
        values : mapping of str to float or None
            Measured values by axis name (signed; the magnitude is compared).
            A missing or ``None`` value gives ``None`` (not measured).

        Returns
        -------
        dict of str to bool or None
            One entry per axis of the table, in :data:`AXES` order.
        """
        out: dict[str, bool | None] = {}
        for axis in AXES:
            if axis not in self.limits:
                continue
            value = values.get(axis)
            if value is None or not math.isfinite(float(value)):
                out[axis] = None
            else:
                out[axis] = abs(float(value)) <= self.limits[axis]
        return out

    def as_dict(self) -> dict[str, Any]:
        """Return ``{"source": ..., "limits": {axis: limit}, "units": {axis: unit}}``."""
        return {
            "source": self.source,
            "limits": dict(self.limits),
            "units": {axis: AXES[axis][0] for axis in self.limits},
        }

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "") -> ToleranceTable:
        """Build a table from ``{axis: limit}`` (aliases allowed, limits positive numbers)."""
        if not isinstance(mapping, Mapping):
            raise ToleranceError(f"{source or 'tolerance'}: expected axis = limit pairs, got {type(mapping).__name__}")
        limits: dict[str, float] = {}
        for key, value in mapping.items():
            axis = _axis(key, source)
            if axis in limits:
                raise ToleranceError(f"{source or 'tolerance'}: axis {axis!r} is given twice")
            limits[axis] = _limit(value, axis, source)
        return cls(limits, source)


def parse_tolerance(text: str, *, source: str = "--tolerance") -> ToleranceTable:
    """Parse ``"lat=2,lng=2,vrt=2,rot=1"`` into a table.

    Parameters
    ----------
    text : str
        Comma-separated ``axis=limit`` pairs. A limit may carry its unit
        (``2mm``, ``1deg``); a wrong unit is an error.
    source : str
        Name used in error messages.

    Returns
    -------
    ToleranceTable

    Raises
    ------
    ToleranceError
        Empty text, a pair without ``=``, an unknown axis, a limit that is not a
        positive number, a unit that does not fit the axis, an axis given twice.
    """
    if not isinstance(text, str) or not text.strip():
        raise ToleranceError(f"{source}: empty; give axis=limit pairs such as lat=2,lng=2,vrt=2,rot=1")
    limits: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ToleranceError(f"{source}: {item.strip()!r} is not axis=limit (for example lat=2)")
        key, _, value = item.partition("=")
        axis = _axis(key.strip(), source)
        if axis in limits:
            raise ToleranceError(f"{source}: axis {axis!r} is given twice")
        limits[axis] = _limit(_strip_unit(value, axis, source), axis, source)
    if not limits:
        raise ToleranceError(f"{source}: no axis=limit pairs in {text!r}")
    return ToleranceTable(limits, source)


def load_tolerance(path: str | Path) -> ToleranceTable:
    """Read a TOML tolerance file.

    Parameters
    ----------
    path : str or Path
        A TOML file with ``axis = limit`` keys at the top level or in a
        ``[tolerance]`` table (numbers; strings with units such as ``"2mm"``
        are accepted too).

    Returns
    -------
    ToleranceTable

    Raises
    ------
    ToleranceError
        Missing or unreadable file, invalid TOML, unknown keys or bad limits.
    """
    path = Path(path)
    name = path.name or str(path)
    if tomllib is None:  # pragma: no cover
        raise ToleranceError(f"{name}: reading TOML needs Python 3.11 or later; use --tolerance lat=2,... instead")
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ToleranceError(f"{path}: no such tolerance file; check the path") from None
    except OSError as exc:
        raise ToleranceError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ToleranceError(f"{name}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ToleranceError(f"{name}: not a TOML text file (not UTF-8 text); give a tolerance table such as "
                             "[tolerance] lat = 2.0, or --tolerance lat=2,...") from None
    table = data.get("tolerance", data) if isinstance(data.get("tolerance"), dict) else data
    if table is not data and len(data) > 1:
        others = sorted(k for k in data if k != "tolerance")
        raise ToleranceError(f"{name}: unexpected {', '.join(others)} next to [tolerance]; put the limits in it")
    if not table:
        raise ToleranceError(f"{name}: no limits; write axis = limit lines (lat = 2.0) or a [tolerance] table")
    values = {key: _strip_unit(value, _axis(key, name), name) if isinstance(value, str) else value
              for key, value in table.items()}
    return ToleranceTable.from_mapping(values, source=name)


def tolerance_from_flags(tolerance: str | None, tolerance_file: str | Path | None) -> ToleranceTable | None:
    """Return the action levels a command was given (``--tolerance`` or ``--tolerance-file``), or None.

    Raises
    ------
    ToleranceError
        When the text or the file is not a valid table.
    """
    if tolerance is not None:
        return parse_tolerance(tolerance)
    if tolerance_file is not None:
        try:
            return load_tolerance(tolerance_file)
        except ToleranceError as exc:  # the flag that named the file, for a command line's user
            raise ToleranceError(f"--tolerance-file {exc}") from None
    return None


def _axis(key: Any, source: str) -> str:
    name = str(key).strip().lower()
    name = ALIASES.get(name, name)
    if name not in AXES:
        raise ToleranceError(f"{source or 'tolerance'}: unknown axis {str(key)!r}; use {', '.join(AXES)}")
    return name


def _limit(value: Any, axis: str, source: str) -> float:
    unit = AXES[axis][0]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ToleranceError(f"{source or 'tolerance'}: {axis} must be a positive number of {unit}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ToleranceError(f"{source or 'tolerance'}: {axis} must be a positive number of {unit}, "
                             f"got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ToleranceError(f"{source or 'tolerance'}: {axis} must be a positive number of {unit}, got {value!r}")
    return number


def _strip_unit(value: str, axis: str, source: str) -> str:
    match = _NUMBER_UNIT.match(value)
    if match is None:
        return value.strip()  # _limit reports it as not a number
    number, unit = match.groups()
    if unit:
        wanted = AXES[axis][0]
        if _UNITS.get(unit.lower()) != wanted:
            raise ToleranceError(f"{source or 'tolerance'}: {axis} is in {wanted}, got the unit {unit!r}")
    return number
