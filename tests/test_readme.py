"""The README: the extras in its first screen, and its Python snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _text() -> str:
    if not README.is_file():
        pytest.skip("README.md is not beside tests/ (installed package without the source tree)")
    return README.read_text(encoding="utf-8")


def test_first_screen_names_every_extra() -> None:
    first_screen = "\n".join(_text().splitlines()[:30])
    for extra in ("service", "overlay", "gpu-cuda12", "gpu-cuda13", "bench", "archive"):
        assert f'"portalign[{extra}]"' in first_screen, extra


def test_the_two_commands_are_kept() -> None:
    text = _text()
    assert "pip install . && portalign demo" in text
    assert 'pip install ".[test]" && python -m pytest' in text


def test_python_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from portalign.demo import DEMO_TRUTH, make_demo_pair, write_rt_image

    section = _text().split("## Python API", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    # the folder `portalign demo --out .` leaves: the same names
    reference, frame, _ = make_demo_pair()
    write_rt_image(reference, tmp_path / "reference_drr.dcm", label="DRR", image_type="DRR")
    write_rt_image(frame, tmp_path / "portal_frame.dcm", label="MV portal", image_type="PORTAL")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    result = namespace["result"]
    assert result.ok, result.reason
    assert result.dx_mm == pytest.approx(DEMO_TRUTH["dx_mm"], abs=1.0)
    assert result.dy_mm == pytest.approx(DEMO_TRUTH["dy_mm"], abs=1.0)
    assert namespace["one"].rotation_deg is None
    assert len(namespace["results"]) == 2
