"""Render a report.html to a PNG with headless Chromium (for docs screenshots and the browser test).

    python -m entropy_rl.report.screenshot runs/compare/report/report.html docs/report.png [--height 4000]

Chromium is an optional system dependency (Debian: `apt-get install -y chromium`); nothing is fetched from
the network (the page is self-contained and background networking is disabled).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["find_chromium", "chromium_command", "screenshot"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in CANDIDATES:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    return None


def chromium_command(binary: str, html: Path, png: Path, profile: Path, width: int, height: int) -> list[str]:
    """The headless Chromium command line that screenshots `html` into `png`."""
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
            Path(html).resolve().as_uri()]


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4000, binary: str | None = None,
               timeout: float = 120.0) -> Path:
    """Screenshot the page `html` into `png` (width x height pixels) with headless Chromium.

    Raises:
        FileNotFoundError: if no Chromium binary is found or `html` does not exist.
        RuntimeError: if Chromium fails or writes no PNG (its stderr tail is included).
    """
    html, png = Path(html), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(html)
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary (Debian: apt-get install -y chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run(chromium_command(binary, html, png, Path(profile), width, height),
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium exited {proc.returncode}, no screenshot: {proc.stderr[-1500:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    """CLI: HTML PNG [--width W] [--height H]; prints the PNG path."""
    p = argparse.ArgumentParser(description="screenshot a report.html with headless Chromium")
    p.add_argument("html")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=4000)
    a = p.parse_args(argv)
    print(screenshot(Path(a.html), Path(a.png), a.width, a.height))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
