"""Rows -> pandas tables with nullable types (so that a value not measured is null in Parquet, never 0 or NaN)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["to_frame", "write_parquet", "read_parquet"]

_FLOAT = "Float64"
_INT = "Int64"
_BOOL = "boolean"
_STR = "string"

#: Column types of every table written by the archive (a column not listed is a string).
COLUMN_TYPES: dict[str, str] = {
    **{name: _FLOAT for name in (
        "gantry_deg", "couch_deg", "collimator_deg", "receptor_angle_deg", "dx_mm", "dy_mm", "rotation_deg", "score",
        "read_ms", "register_ms", "lateral_mm", "longitudinal_mm", "vertical_mm", "pitch_deg", "roll_deg", "yaw_deg",
        "max_residual_mm", "separation_deg", "shift_uncertainty_mm", "rotation_uncertainty_deg")},
    **{name: _INT for name in (
        "size_bytes", "beam_number", "fraction_number", "number_of_frames", "rows", "cols", "frame_index",
        "fraction_ordinal", "n_views", "n_frames", "n_frames_not_ok")},
    "ok": _BOOL,
}


def to_frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """Return a DataFrame of ``rows`` with exactly ``columns``, typed by :data:`COLUMN_TYPES` (nullable dtypes)."""
    import pandas as pd

    data = {}
    for name in columns:
        values = [row.get(name) for row in rows]
        dtype = COLUMN_TYPES.get(name, _STR)
        if dtype == _STR:
            values = [None if v is None else str(v) for v in values]
        data[name] = pd.array(values, dtype=dtype)
    return pd.DataFrame(data, columns=columns)


def write_parquet(frame: Any, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame to Parquet atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_parquet(path: str | os.PathLike[str]) -> Any:
    """Read a table written by :func:`write_parquet` (nullable dtypes kept)."""
    import pandas as pd

    return pd.read_parquet(path)


def records(frame: Any) -> list[dict[str, Any]]:
    """DataFrame -> list of row dicts with ``None`` for nulls and plain Python scalars."""
    out = []
    columns = list(frame.columns)
    for values in frame.astype(object).itertuples(index=False, name=None):
        out.append({c: (None if _is_null(v) else (v.item() if hasattr(v, "item") else v))
                    for c, v in zip(columns, values, strict=True)})
    return out


def _is_null(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
