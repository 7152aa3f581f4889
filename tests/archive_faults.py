"""Task bodies that fail on purpose, importable by Dask worker processes (tests/ is on their sys.path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def die_once_then_register(task: Any, marker_dir: str, **kwargs: Any) -> dict[str, Any]:
    """Kill this worker process the first time a beam is seen (marker file per beam), then register normally."""
    from portalign.archive import register_beam

    marker = Path(marker_dir) / f"{task.beam_id}.died"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-task, as with an OOM kill or a lost node
    return register_beam(task, **kwargs)


def raise_once_then_register(task: Any, marker_dir: str, **kwargs: Any) -> dict[str, Any]:
    """Raise the first time a beam is seen (a transient failure inside the task), then register normally."""
    from portalign.archive import register_beam

    marker = Path(marker_dir) / f"{task.beam_id}.raised"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        raise OSError(f"transient failure reading {task.reference['path']}")
    return register_beam(task, **kwargs)
