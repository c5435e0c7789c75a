"""report.html renders in headless Chromium (offline) into a non-blank screenshot, with its warnings visible.
Skipped without chromium (Debian: apt-get install -y chromium)."""

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


def note_pixels(png: Path) -> int:
    """Pixels of the warning colour (#fff4e0: page notes and the warning box on the law figure)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(png)[..., :3]
    return int((np.abs(img - np.array([255, 244, 224]) / 255).max(axis=-1) < 0.02).sum())


def test_a_meaningless_law_fit_shows_a_warning_in_the_browser(two_runs: list[Path], make_fake_run,
                                                              tmp_path: Path) -> None:
    clean = screenshot(write_report(two_runs, tmp_path / "clean"), tmp_path / "clean.png", height=8000)
    few = make_fake_run(tmp_path / "few", eval_every=10)  # 4 evals: too few points for the law fit
    flagged = screenshot(write_report([few], tmp_path / "flagged"), tmp_path / "flagged.png", height=8000)
    # nothing skipped and every fit drawn: only stray anti-aliased pixels of the faint orange curves (754 measured)
    assert note_pixels(clean) < 5_000
    assert note_pixels(flagged) > 20_000  # the note under the figure and the box on it (36268 measured)
