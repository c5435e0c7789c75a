"""`entropy-rl report`: a self-contained HTML page (figures embedded as PNG data URIs) for one or more runs.

`write_report(run_dirs, out_dir)` reads each run's metrics.jsonl, config.yaml and token_entropy/*.json,
draws seven figures with matplotlib (Agg backend) into `out_dir`, plus the instruments some run has data for
(`report/instruments.py`: pass@k curves against the warm start), and writes `out_dir/report.html`. Curves along
training are smoothed (an EMA over the faint raw series); the entropy-performance law is fitted to eval accuracy
per run, or pooled over runs of one model and task (`pool_law`). Every
number on the page is computed from the logged metrics; a run missing some metrics still gets a page, with
a visible note where a figure or a run was skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_report"]


def write_report(run_dirs: list[Path], out_dir: Path, labels: list[str] | None = None,
                 summary_md: str | None = None, pool_law: bool = False, smooth: int | None = None,
                 base_dirs: list[Path] | None = None) -> Path:
    """Write report.html and its PNGs for the given runs.

    Args:
        run_dirs: run directories (each with metrics.jsonl; config.yaml and token_entropy/ optional).
        out_dir: where report.html and the fig*.png files go (created).
        labels: legend / table name of each run; default the run directories' names (made unique).
        summary_md: a markdown table (from `entropy-rl compare`) shown as an HTML table, if given.
        pool_law: fit R = -a exp(H) + b once per group of runs with the same model and task (their points pooled,
            as Cui et al. pool algorithms on one model) instead of once per run.
        smooth: EMA span (logged steps) of the curves along training; None = automatic, 0 = raw only.
        base_dirs: folders holding `entropy-rl eval` results of the base model (the warm start), besides the ones
            found from each run (report/instruments.py).

    Returns:
        The path of report.html.

    Raises:
        ValueError: if there are no runs, or labels and run_dirs differ in length.
    """
    from entropy_rl.report.data import load_run
    from entropy_rl.report.figures import FIGURES, ReportOptions
    from entropy_rl.report.instruments import instrument_figures
    from entropy_rl.report.page import render_page

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("write_report needs at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run directories")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("fig[0-9]_*.png"), *out_dir.glob("fig_*.png")]:  # a figure skipped this time must
        old.unlink()  # not leave a stale PNG behind
    runs = [load_run(d, label) for d, label in zip(run_dirs, labels or default_labels(run_dirs))]
    if smooth is not None and smooth < 0:
        raise ValueError(f"smooth must be >= 0 (0 = no smoothing), got {smooth}")
    opts = ReportOptions(smooth=smooth, pool_law=pool_law)
    figures = [draw(runs, out_dir, opts) for draw in FIGURES] + instrument_figures(runs, out_dir, base_dirs)
    page = out_dir / "report.html"
    page.write_text(render_page(runs, figures, summary_md), encoding="utf-8")
    return page


def default_labels(run_dirs: list[Path]) -> list[str]:
    """Directory names (parent/seedN for seed dirs), lengthened with parent names until they are unique (method/seed0, not seed0 twice)."""
    first = 2 if any(re.fullmatch(r"seed\d+", d.resolve().name) for d in run_dirs) else 1
    for depth in range(first, 6):
        labels = ["/".join(d.resolve().parts[-depth:]) for d in run_dirs]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]
