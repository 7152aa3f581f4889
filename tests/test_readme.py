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


def test_six_dof_snippet_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """The 2D/3D section's snippet: the phantom's known 6-DOF motion comes back (0.5 mm, 0.3 deg), and what it prints
    matches the numbers its comments show."""
    section = _text().split("## Six degrees of freedom", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    result = namespace["result"]
    assert result.ok, result.reason
    found = [result.lateral_mm, result.longitudinal_mm, result.vertical_mm]
    assert found == pytest.approx([3.0, -2.0, 1.5], abs=0.5)
    assert [result.pitch_deg, result.roll_deg, result.yaw_deg] == pytest.approx([1.0, 0.0, -1.5], abs=0.3)
    first = capsys.readouterr().out.splitlines()[0].split()
    shown = re.search(r"# True ([-\d. ]+)\n", snippet).group(1).split()
    assert first[0] == "True" and [float(v) for v in first[1:]] == pytest.approx([float(v) for v in shown], abs=0.015)
