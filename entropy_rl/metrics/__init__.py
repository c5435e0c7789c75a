"""Metrics: entropy statistics and dynamics (`dynamics`), every key's definition (`names`), sinks (`sinks`).

Imports torch, the standard library and `entropy_rl.core` only; TensorBoard and W&B are imported lazily by
their sinks, scipy by the law fit.
"""

from entropy_rl.metrics.dynamics import (
    cov_logp_adv,
    distinct_answers,
    entropy_stats,
    fit_entropy_performance_law,
    law_fit_problems,
    mean_pass_at_k,
    pass_at_k,
    quantiles,
)
from entropy_rl.metrics.sinks import (
    JsonlSink,
    MetricSink,
    MultiSink,
    StdoutSink,
    TensorBoardSink,
    WandbSink,
    read_jsonl,
)

# `names` is loaded on first use so that `python -m entropy_rl.metrics.names` does not import it twice.
_NAMES_EXPORTS = ("METRICS", "PATTERNS", "describe", "is_known", "render_markdown")


def __getattr__(attr: str):  # noqa: ANN202 - PEP 562 module attribute hook
    if attr in _NAMES_EXPORTS:
        from entropy_rl.metrics import names

        return getattr(names, attr)
    raise AttributeError(f"module 'entropy_rl.metrics' has no attribute {attr!r}")


__all__ = [
    "METRICS",
    "PATTERNS",
    "JsonlSink",
    "MetricSink",
    "MultiSink",
    "StdoutSink",
    "TensorBoardSink",
    "WandbSink",
    "cov_logp_adv",
    "describe",
    "distinct_answers",
    "entropy_stats",
    "fit_entropy_performance_law",
    "is_known",
    "law_fit_problems",
    "mean_pass_at_k",
    "pass_at_k",
    "quantiles",
    "read_jsonl",
    "render_markdown",
]
