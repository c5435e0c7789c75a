"""Screenshot a report.html to a PNG with headless Chromium (docs figure).

    python scripts/screenshot_report.py runs/compare/report/report.html docs/report.png [--height 4000]
"""

from entropy_rl.report.screenshot import main

if __name__ == "__main__":
    raise SystemExit(main())
