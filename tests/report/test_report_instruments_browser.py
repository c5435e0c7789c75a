"""The instrument figures (report/instruments.py) render in headless Chromium: a page of only their sections, as
report.html embeds them, shows the plotted colours. Skipped without chromium (Debian: apt-get install -y chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from entropy_rl.report.data import load_run
from entropy_rl.report.instruments import instrument_figures
from entropy_rl.report.page import CSS, figure_section
from entropy_rl.report.screenshot import find_chromium, screenshot

from test_report_instruments import BASE, add_attention, add_diversity, store  # tests/report/ is on sys.path (rootdir-relative modules)

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")


def shot(figs, tmp_path: Path, name: str):
    import matplotlib.image as mpimg

    page = tmp_path / f"{name}.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>"
                    + "\n".join(figure_section(f) for f in figs) + "</body></html>", encoding="utf-8")
    return mpimg.imread(screenshot(page, tmp_path / f"{name}.png", width=1280, height=3000))[..., :3]


def coloured(img) -> float:
    """Fraction of pixels with a clearly coloured (not grey / black / white) value: plot lines and markers only."""
    return float(((img.max(axis=-1) - img.min(axis=-1)) > 0.3).mean())


def test_instrument_sections_render_in_headless_chromium(two_runs: list[Path], tmp_path: Path) -> None:
    a, b = two_runs
    store(a / "eval", {1: 0.50, 2: 0.55, 4: 0.60, 8: 0.66}, "checkpoint", 30, model_sha256="a" * 64)
    store(a / "eval", BASE, "warm start")
    store(b / "eval", {1: 0.40, 2: 0.55, 4: 0.70, 8: 0.85}, "checkpoint", 30, model_sha256="b" * 64)
    add_diversity(a)
    add_attention(b)
    (tmp_path / "out").mkdir()
    figs = instrument_figures([load_run(a, "A"), load_run(b, "B")], tmp_path / "out")
    assert [f.title for f in figs] == ["pass@k curves against the warm start", "Diversity of each group's responses",
                                       "Attention entropy per layer and head"]
    img = shot(figs, tmp_path, "instruments")
    assert img.shape[:2] == (3000, 1280) and img.var() > 0.005
    assert coloured(img) > 0.002, coloured(img)  # the run curves (tab10 colours) were drawn by the browser
    broken = [type(f)(f.title, tmp_path / "missing.png", f.caption) for f in figs]  # same text, no image data
    (tmp_path / "missing.png").write_bytes(b"not a png")
    assert coloured(shot(broken, tmp_path, "broken")) < coloured(img) / 5
