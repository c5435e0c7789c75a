"""`entropy-rl report RUN_DIR [RUN_DIR ...] [--out DIR] [--labels a,b] [--summary FILE] [--pool-law] [--smooth N]
[--base DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def default_out(run_dirs: list[Path]) -> Path:
    """RUN_DIR/report for one run (LOG_report beside a verl LOG.jsonl), else <common parent>/report."""
    if len(run_dirs) == 1:
        return run_dirs[0].with_name(run_dirs[0].stem + "_report") if run_dirs[0].is_file() else run_dirs[0] / "report"
    parents = [d.resolve().parts for d in run_dirs]
    common = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return Path(*common) / "report" if common else Path("report")


def cmd_report(args: argparse.Namespace) -> int:
    """Write report.html (+ PNGs) for the given run directories and print its path."""
    from entropy_rl.report import write_report
    from entropy_rl.report.external_verl import is_verl_log
    from entropy_rl.report.trl_log import is_trl_run

    run_dirs = [Path(d) for d in args.run_dirs]
    for d in run_dirs:
        if not (d / "metrics.jsonl").is_file() and not is_verl_log(d) and not is_trl_run(d):
            raise FileNotFoundError(f"{d}: no metrics.jsonl (not a run directory?), not a verl file-logger JSONL, "
                                    "nor a TRL output directory with trainer_state.json")
    labels = [s.strip() for s in args.labels.split(",")] if getattr(args, "labels", None) else None
    if labels is not None and len(labels) != len(run_dirs):
        raise SystemExit(f"entropy-rl report: --labels has {len(labels)} names for {len(run_dirs)} run directories")
    summary = Path(args.summary).read_text(encoding="utf-8") if getattr(args, "summary", None) else None
    out = Path(args.out) if args.out else default_out(run_dirs)
    base = [Path(d) for d in getattr(args, "base", None) or []]
    print(write_report(run_dirs, out, labels=labels, summary_md=summary, pool_law=getattr(args, "pool_law", False),
                       smooth=getattr(args, "smooth", None), base_dirs=base))
    return 0
