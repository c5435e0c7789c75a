"""report.html renders in headless Chromium (offline) into a non-blank screenshot. Skipped without chromium
(Debian: apt-get install -y chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from entropy_rl.report import write_report
from entropy_rl.report.screenshot import find_chromium, screenshot

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")


def test_report_renders_in_headless_chromium(two_runs: list[Path], tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    page = write_report(two_runs, tmp_path / "out", labels=["A", "B"])
    png = screenshot(page, tmp_path / "shot.png", width=1280, height=4000)
    img = mpimg.imread(png)[..., :3]  # float RGB in [0, 1]
    assert img.shape[:2] == (4000, 1280)
    assert img.var() > 0.01
    non_white = (img.min(axis=-1) < 0.95).mean()
    assert non_white > 0.05, non_white
