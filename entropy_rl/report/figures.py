"""The report's figures: one function per figure, each drawing from `RunData` and saving a PNG.

Every function takes the runs, the output directory and the `ReportOptions`, and returns a `Figure` record: the
file it wrote (None when there was nothing to draw), a caption with the numbers shown, notes about runs it had to
skip or fits it would not draw, and optionally a table. Curves along training are drawn raw and faint with an
exponential moving average over them (`ema`, scipy.signal.lfilter), the smoothing named in the legend.
Matplotlib runs on the Agg backend (no window is ever opened); figures are closed after saving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from entropy_rl.metrics.dynamics import LAW_CONFIDENCE, pearson  # noqa: E402
from entropy_rl.report.data import (  # noqa: E402
    D_ACTUAL,
    H,
    R,
    LawFit,
    RunData,
    law_fits,
    law_points,
    paired,
    pass_keys,
    pass_story,
    series,
)

__all__ = ["Figure", "FIGURES", "ReportOptions", "ema", "smoothing_span"]

DPI = 110
NATS = "nats"
AUTO_SMOOTH_MIN_POINTS = 30  # shorter series are drawn raw (with markers): a moving average would hide them
AUTO_SMOOTH_POINTS_PER_SPAN = 20  # auto span: one twentieth of the series, at least 3


@dataclass(frozen=True)
class ReportOptions:
    """How the figures are drawn.

    Attributes:
        smooth: EMA span in logged points for curves along training: None = automatic (`smoothing_span`), 0 or 1
            = raw curves only.
        pool_law: fit R = -a exp(H) + b once per group of runs with the same model and task (pooled points),
            instead of once per run.
    """

    smooth: int | None = None
    pool_law: bool = False


@dataclass
class Figure:
    """One figure of the page.

    Attributes:
        title: section heading.
        png: the PNG written, or None when nothing could be drawn.
        caption: what the figure shows, with its numbers (plain text; escaped by the page).
        notes: runs or data that were skipped and why, fits that were not drawn and why (plain text).
        table: (header, rows) of plain-text cells shown under the figure, or None.
    """

    title: str
    png: Path | None = None
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None  # (header, rows) of plain text shown under the figure


def mpl_text(label: str) -> str:
    """A label safe for matplotlib: `$` would start mathtext, a leading `_` hides a legend entry."""
    label = label.replace("$", r"\$")
    return " " + label if label.startswith("_") else label


def colors(n: int) -> list:
    """n distinguishable colours (tab10 up to 10, tab20 beyond, cycling)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def fmt_r(r: float | None) -> str:
    """Pearson r as text ('n/a' when undefined)."""
    return "n/a" if r is None else f"{r:+.3f}"


def run_legend(fig, ax, entries: list[tuple[str, object]], ls: str = "-", marker: str | None = None,
               loc: str = "best") -> None:
    """Legend of run colours: inside `ax` (at `loc`) for up to 6 runs, else below the figure in columns."""
    if not entries:
        return
    handles = [Line2D([], [], color=c, ls=ls, marker=marker, label=mpl_text(label)) for label, c in entries]
    if len(handles) <= 6:
        ax.add_artist(ax.legend(handles=handles, fontsize=8, framealpha=0.8, loc=loc))
    else:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)


def style_legend(ax, entries: list[tuple[str, dict]], loc: str = "lower right") -> None:
    """Legend of line styles drawn in black (e.g. first vs last eval), independent of the run colours."""
    handles = [Line2D([], [], label=label, **{"color": "black", **style}) for label, style in entries]
    ax.add_artist(ax.legend(handles=handles, fontsize=8, framealpha=0.8, loc=loc))


def integer_steps(ax) -> None:
    """Integer ticks on a step axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def smoothing_span(n_points: int, requested: int | None) -> int:
    """The EMA span for a series of n points: `requested` if given, else automatic (1 = no smoothing below
    AUTO_SMOOTH_MIN_POINTS points, else n / AUTO_SMOOTH_POINTS_PER_SPAN, at least 3)."""
    if requested is not None:
        return max(1, requested)
    if n_points < AUTO_SMOOTH_MIN_POINTS:
        return 1
    return max(3, round(n_points / AUTO_SMOOTH_POINTS_PER_SPAN))


def ema(values: list[float], span: int) -> list[float]:
    """Exponential moving average y_t = alpha x_t + (1 - alpha) y_(t-1), alpha = 2 / (span + 1), started at the
    first value (no pull towards 0); span 1 returns the values. Computed by scipy.signal.lfilter."""
    if span <= 1 or not values:
        return list(values)
    import numpy as np
    from scipy.signal import lfilter

    alpha = 2.0 / (span + 1.0)
    x = np.asarray(values, dtype=np.float64)
    y, _ = lfilter([alpha], [1.0, alpha - 1.0], x, zi=[(1.0 - alpha) * x[0]])
    return [float(v) for v in y]


def smoothing_label(span: int) -> str:
    """The legend text of the smoothed curves."""
    return f"EMA, span {span} steps (α = {2 / (span + 1):.2f})"


def plot_smoothed(ax, xs: list[float], ys: list[float], color, span: int) -> None:
    """The raw series faint and thin, its EMA over it; with span 1 the raw series alone (markers if short)."""
    if span <= 1:
        ax.plot(xs, ys, color=color, lw=1.4, marker="." if len(xs) < AUTO_SMOOTH_MIN_POINTS else None)
        return
    ax.plot(xs, ys, color=color, lw=0.8, alpha=0.25)
    ax.plot(xs, ema(ys, span), color=color, lw=1.6)


def smoothing_legend(ax, span: int, loc: str = "upper right") -> str:
    """Legend entries for raw vs smoothed lines (none when nothing was smoothed); returns the caption sentence."""
    if span <= 1:
        return " Curves are raw (not smoothed)."
    style_legend(ax, [("raw (faint)", {"lw": 0.8, "alpha": 0.35}), (smoothing_label(span), {"lw": 1.6})], loc=loc)
    return (f" Faint: the raw values per step; solid: their exponential moving average over a span of {span} "
            "logged steps (alpha = 2 / (span + 1)).")


def new_figure(w: float, h: float, n_runs: int, rows: int = 1, cols: int = 1, **kw):
    """A constrained-layout figure, taller when a run legend will sit below it."""
    extra = 0.0 if n_runs <= 6 else 0.22 * math.ceil(n_runs / 4) + 0.2
    return plt.subplots(rows, cols, figsize=(w, h + extra), layout="constrained", squeeze=False, **kw)


def save(fig, path: Path) -> Path:
    """Save `fig` as PNG at DPI and close it."""
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def grid(n: int, panel_w: float = 4.2, panel_h: float = 3.0, sharey: bool = True):
    """A figure with n panels (up to 4 per row; one wide panel for a single run); returns (fig, the n axes)."""
    cols = min(4, n)
    rows = math.ceil(n / cols)
    width = 10.0 if n == 1 else max(8.0, panel_w * cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, panel_h * rows + 0.6), squeeze=False, sharey=sharey,
                             layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def missing(runs: list[RunData], keys: tuple[str, ...]) -> list[str]:
    """Notes for the runs that lack every one of `keys`."""
    return [f"{run.label}: no {' / '.join(keys)} logged; skipped" for run in runs
            if not any(series(run.rows, k)[0] for k in keys)]


def fig_entropy_reward(runs: list[RunData], out: Path, opts: ReportOptions) -> Figure:
    """1. entropy/token_mean and reward/mean vs step, runs overlaid, raw faint with an EMA over it."""
    f = Figure("Entropy and reward", notes=missing(runs, (H,)))
    have = [(run.label, run, c) for run, c in zip(runs, colors(len(runs))) if series(run.rows, H)[0]]
    if not have:
        return f
    fig, axes = new_figure(12, 4.2, len(have), cols=2)
    ax1, ax2 = axes[0]
    span = smoothing_span(max(len(series(run.rows, H)[0]) for _, run, _ in have), opts.smooth)  # one for all runs
    for _, run, c in have:
        for ax, key in ((ax1, H), (ax2, R)):
            plot_smoothed(ax, *series(run.rows, key), c, span)
    ax1.set(xlabel="step", ylabel=f"entropy/token_mean ({NATS})", title="Policy entropy (pre-update pass)")
    ax2.set(xlabel="step", ylabel="reward/mean (reward units)", title="Mean reward of the rollout batch")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        integer_steps(ax)
    run_legend(fig, ax1, [(label, c) for label, _, c in have])
    smoothing = smoothing_legend(ax2, span)
    f.png = save(fig, out / "fig1_entropy_reward.png")
    f.caption = "Token-mean entropy (nats) and mean reward per training step." + smoothing
    return f


def fig_quantiles(runs: list[RunData], out: Path, opts: ReportOptions) -> Figure:
    """2. entropy quantile bands per run: p10-p90 shaded, p50 line, token mean dashed."""
    keys = ("entropy/p10", "entropy/p50", "entropy/p90")
    f = Figure("Entropy quantiles", notes=missing(runs, keys))
    have = [run for run in runs if series(run.rows, "entropy/p50")[0]]
    if not have:
        return f
    fig, axes = grid(len(have))
    for run, ax in zip(have, axes):
        rows = [r for r in run.rows if all(k in r for k in keys)]
        steps = [r["step"] for r in rows]
        ax.fill_between(steps, [r["entropy/p10"] for r in rows], [r["entropy/p90"] for r in rows],
                        color="tab:blue", alpha=0.25, lw=0, label="p10–p90")
        ax.plot(steps, [r["entropy/p50"] for r in rows], color="tab:blue", lw=1.5, label="p50 (median)")
        ax.plot(*series(run.rows, H), color="black", lw=1.0, ls="--", label="token mean")
        ax.set(xlabel="step", title=mpl_text(run.label))
        ax.grid(alpha=0.3)
        integer_steps(ax)
    for i in range(0, len(axes), 4):
        axes[i].set_ylabel(f"token entropy ({NATS})")
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("Distribution of per-token entropy over response tokens")
    f.png = save(fig, out / "fig2_entropy_quantiles.png")
    f.caption = "Shaded: 10th–90th percentile of per-token entropy (nats); line: median; dashed: token mean."
    return f


def fig_dh_scatter(runs: list[RunData], out: Path, opts: ReportOptions) -> Figure:
    """3. dH_pred, dH_pred_lin and dH_identity vs dH_actual, pooled over runs, Pearson r in the titles."""
    f = Figure("Predicted vs actual entropy change")
    panels = (("dynamics/dH_pred", "dH_pred: ∇H · Δθ"), ("dynamics/dH_pred_lin", "dH_pred_lin: H(z + JΔθ) − H(z)"),
              ("dynamics/dH_identity", "dH_identity: −Cov(log π, Δz)"))
    for key, _ in panels:
        f.notes += [f"{run.label}: no probed steps with {key} and {D_ACTUAL}; skipped"
                    for run in runs if not paired(run.rows, key, D_ACTUAL)[0]]
    drawn = [(run.label, c) for run, c in zip(runs, colors(len(runs)))
             if any(paired(run.rows, key, D_ACTUAL)[0] for key, _ in panels)]
    if not drawn:
        return f
    fig, axes = new_figure(15, 5, len(drawn), cols=len(panels))
    captions = []
    for ax, (key, name) in zip(axes[0], panels):
        xs_all, ys_all = [], []
        for run, c in zip(runs, colors(len(runs))):
            xs, ys = paired(run.rows, key, D_ACTUAL)
            ax.scatter(xs, ys, s=14, color=c, alpha=0.75)
            xs_all += xs
            ys_all += ys
        r = pearson(xs_all, ys_all) if xs_all else None
        if xs_all:
            lo, hi = min(xs_all + ys_all), max(xs_all + ys_all)
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", ls="--", lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(xlabel=f"{key} ({NATS})", ylabel=f"{D_ACTUAL} ({NATS})",
               title=f"{name}\nPearson r = {fmt_r(r)} (n = {len(xs_all)} probed steps)")
        ax.grid(alpha=0.3)
        style_legend(ax, [("y = x", {"ls": "--", "color": "grey"})])
        captions.append(f"{key} vs {D_ACTUAL}: Pearson r = {fmt_r(r)} over {len(xs_all)} probed steps")
    run_legend(fig, axes[0][0], drawn, ls="none", marker="o")
    f.png = save(fig, out / "fig3_dH_scatter.png")
    f.caption = ("Pooled over all runs: " + "; ".join(captions) +
                 ". Per-run correlations are in the headline table. Dashed: y = x.")
    return f


def fig_covariance(runs: list[RunData], out: Path, opts: ReportOptions) -> Figure:
    """4. dynamics/cov_logp_adv vs step, runs overlaid, raw faint with an EMA over it."""
    key = "dynamics/cov_logp_adv"
    f = Figure("Covariance of log-probability and advantage", notes=missing(runs, (key,)))
    have = [(run, c) for run, c in zip(runs, colors(len(runs))) if series(run.rows, key)[0]]
    if not have:
        return f
    fig, axes = new_figure(12, 4, len(have))
    ax = axes[0][0]
    span = smoothing_span(max(len(series(run.rows, key)[0]) for run, _ in have), opts.smooth)  # one for all runs
    for run, c in have:
        plot_smoothed(ax, *series(run.rows, key), c, span)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="step", ylabel=f"cov_logp_adv ({NATS} × adv. units)",
           title="Cov(log π(a), A) over response tokens (> 0 predicts falling entropy)")
    ax.grid(alpha=0.3)
    integer_steps(ax)
    run_legend(fig, ax, [(run.label, c) for run, c in have])
    smoothing = smoothing_legend(ax, span, loc="lower right")
    f.png = save(fig, out / "fig4_covariance.png")
    f.caption = (f"{key}: population covariance of token log-probability and advantage per step (pre-update pass)."
                 + smoothing)
    return f


def fmt_fit(v: float) -> str:
    """A fitted number for the law table (4 significant digits)."""
    return f"{v:.4g}"


def law_table(fits: list[LawFit]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the law-fit table: one row per fit, its status in words."""
    pct = f"{LAW_CONFIDENCE:.0%}"
    header = ["fit", "runs", "points", "a (accuracy)", "b (accuracy)", "R²", "ceiling b − a (accuracy)",
              f"{pct} CI of the ceiling", "status"]
    rows = []
    for lf in fits:
        f = lf.fit
        nums = ["-"] * 5 if f is None else [fmt_fit(f["a"]), fmt_fit(f["b"]), f"{f['r2']:.3f}", f"{f['ceiling']:.3f}",
                                            f"[{f['ceiling_low']:.3f}, {f['ceiling_high']:.3f}]"]
        status = "no curve drawn: " + "; ".join(lf.problems) if lf.problems else "ok"
        rows.append([lf.name, str(len(lf.runs)), str(len(lf.points)), *nums, status])
    return header, rows


def fig_law(runs: list[RunData], out: Path, opts: ReportOptions) -> Figure:
    """5. (entropy, eval accuracy) of each evaluated policy, with the fit R = -a exp(H) + b per run (or per pooled
    group of runs with the same model and task), its R^2, and the predicted ceiling b - a at H = 0 with its CI;
    a fit that means nothing gets a visible warning instead of a curve."""
    f = Figure("Entropy–performance law R = −a·exp(H) + b")
    for run in runs:
        if not law_points(run):
            f.notes.append(f"{run.label}: no eval/accuracy with an entropy logged (train.eval_every = 0?); "
                           "not in the law fit")
    fits = law_fits(runs, pool=opts.pool_law)
    if not fits:
        return f
    fig, axes = new_figure(11, 5.5, len(runs))
    ax = axes[0][0]
    run_color = dict(zip([run.label for run in runs], colors(len(runs))))
    entries = []
    for run in runs:
        pts = law_points(run)
        if not pts:
            continue
        c = run_color[run.label]
        ax.scatter([p.h for p in pts], [p.r for p in pts], s=16, color=c, alpha=0.7)
        start = [p for p in pts if p.step == 0]
        ax.scatter([p.h for p in start], [p.r for p in start], s=130, marker="*", color=c, edgecolor="black", zorder=3)
        entries.append((run.label, c))
    h_max = max(p.h for lf in fits for p in lf.points)
    warnings, captions = [], []
    pooled_styles = iter(["-", "--", "-.", ":"] * 10)
    lines = []
    for lf in fits:
        c = "black" if opts.pool_law else run_color[lf.runs[0]]
        if lf.problems:
            warnings.append(f"{lf.name}: no fitted curve: {'; '.join(lf.problems)}")
            continue
        law = lf.fit
        ls = next(pooled_styles) if opts.pool_law else "-"
        lo, hi = min(p.h for p in lf.points), max(p.h for p in lf.points)
        grid_in = [lo + (hi - lo) * i / 100 for i in range(101)]
        grid_out = [lo * i / 40 for i in range(41)]
        ax.plot(grid_in, [law["b"] - law["a"] * math.exp(h) for h in grid_in], color=c, lw=1.8, ls=ls)
        ax.plot(grid_out, [law["b"] - law["a"] * math.exp(h) for h in grid_out], color=c, lw=1.2, ls=":")
        err = [[law["ceiling"] - law["ceiling_low"]], [law["ceiling_high"] - law["ceiling"]]]
        ax.errorbar([0.0], [law["ceiling"]], yerr=err, fmt="D", color=c, ms=6, capsize=4, zorder=4)
        ci = f"[{law['ceiling_low']:.3f}, {law['ceiling_high']:.3f}]"
        lines.append((f"{lf.name}: R² = {law['r2']:.3f}, ceiling {law['ceiling']:.3f} {ci}", c, ls))
        captions.append(f"{lf.name}: a = {law['a']:.4g}, b = {law['b']:.4g}, R² = {law['r2']:.3f}, ceiling b − a = "
                        f"{law['ceiling']:.3f}, {LAW_CONFIDENCE:.0%} CI {ci} ({len(lf.points)} points)")
    f.notes += warnings
    if warnings:  # visible on the figure itself, not only under it
        ax.text(0.5, 0.02, "\n".join("⚠ " + mpl_text(w) for w in warnings), transform=ax.transAxes, fontsize=8,
                va="bottom", ha="center", wrap=True, bbox={"facecolor": "#fff4e0", "edgecolor": "#e69500", "alpha": 0.95},
                zorder=5)
    ax.set_xlim(left=-0.03 * h_max, right=1.05 * h_max)  # H = 0, where the ceiling sits, inside the frame
    ax.set(xlabel=f"entropy/token_mean of the evaluated policy H ({NATS})",
           ylabel="eval/accuracy R (fraction correct)",
           title=("Fit of R = −a·exp(H) + b " + ("pooled per model and task" if opts.pool_law else "per run") +
                  "; ◆ = predicted ceiling b − a at H = 0 with its CI"))
    ax.grid(alpha=0.3)
    run_legend(fig, ax, entries, ls="none", marker="o", loc="upper right")
    if lines:  # the data run from upper left (low H, high R) to lower right: the lower left is free
        handles = [Line2D([], [], color=c, ls=ls, lw=1.8, label=mpl_text(label)) for label, c, ls in lines]
        ax.add_artist(ax.legend(handles=handles, fontsize=7, framealpha=0.8, loc="lower left"))
    f.png = save(fig, out / "fig5_entropy_law.png")
    f.table = law_table(fits)
    f.caption = (("; ".join(captions) + ". ") if captions else "No fit could be drawn (see the warnings). ") + (
        "Points: eval/accuracy of each evaluated policy against its token-mean entropy (the pre-update entropy of "
        "the next step: the same parameters); star: the warm start (step 0). Least squares (scipy curve_fit); "
        f"the ceiling's {LAW_CONFIDENCE:.0%} CI is ceiling ± t(n − 2) × its standard error from curve_fit's "
        "covariance, which assumes independent residuals: points along training are not, so it is a lower bound "
        "on the uncertainty. Dotted: the fit extrapolated to H = 0. No curve is drawn for a fit with fewer than 5 "
        "points, a < 0 or R² < 0.1.")
    return f


def fig_pass_at_k(runs: list[RunData], out: Path, opts: ReportOptions) -> Figure:
    """6. pass@k vs k at the first (dashed; step 0 = the warm start) and last (solid) eval, and pass@1 /
    pass@k_max vs step, with the step-0 eval of the warm start drawn as a star."""
    f = Figure("pass@k")
    have = []
    for run, c in zip(runs, colors(len(runs))):
        ks = pass_keys(run.rows)
        evals = [r for r in run.rows if any(key in r for _, key in ks)]
        if evals:
            have.append((run, c, ks, evals))
        else:
            f.notes.append(f"{run.label}: no eval/pass@k logged (train.eval_every = 0?); skipped")
    if not have:
        return f
    fig, axes = new_figure(12, 4.5, len(have), cols=2)
    ax1, ax2 = axes[0]
    kmaxes, captions = set(), []
    for run, c, ks, evals in have:
        chosen = [(evals[-1], "-")] if len(evals) == 1 else [(evals[0], "--"), (evals[-1], "-")]
        for row, ls in chosen:
            pts = [(k, row[key]) for k, key in ks if key in row]
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], color=c, ls=ls, marker="o", ms=4)
        kmax, keymax = ks[-1]
        kmaxes.add(kmax)
        ax2.plot(*series(evals, "eval/pass@1"), color=c, marker="o", ms=4)
        if kmax != 1:
            ax2.plot(*series(evals, keymax), color=c, ls=":", marker="s", ms=4)
        start = evals[0] if evals[0]["step"] == 0 else None
        if start is not None:  # the warm start: where RL began
            ys = [v for key in dict.fromkeys(("eval/pass@1", keymax)) for v in series([start], key)[1]]
            ax2.plot([0] * len(ys), ys, ls="none", marker="*", ms=13, color=c, markeredgecolor="black", zorder=3)
        story = pass_story(run.rows)
        if story:
            captions.append(f"{run.label}: {story}")
    ax1.set_xscale("log", base=2)
    ax1.set(xlabel="k (samples per problem)", ylabel="pass@k (probability)", title="pass@k vs k")
    ax2.set(xlabel="step", ylabel="pass@k (probability)", title="pass@k vs step")
    first = "step 0 (warm start)" if all(evals[0]["step"] == 0 for _, _, _, evals in have) else "first eval"
    style_legend(ax1, [(first, {"ls": "--", "marker": "o"}), ("last eval", {"ls": "-", "marker": "o"})])
    kname = "/".join(str(k) for k in sorted(kmaxes))
    starred = [("warm start (step 0)", {"ls": "none", "marker": "*", "ms": 11})] \
        if any(evals[0]["step"] == 0 for _, _, _, evals in have) else []
    style_legend(ax2, [("pass@1", {"ls": "-", "marker": "o"}), (f"pass@{kname}", {"ls": ":", "marker": "s"}), *starred])
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    integer_steps(ax2)
    run_legend(fig, ax1, [(run.label, c) for run, c, _, _ in have])
    f.png = save(fig, out / "fig6_pass_at_k.png")
    f.caption = ("Unbiased pass@k on the eval set (probability); the eval steps are the x values on the right; "
                 "step 0 is the policy RL starts from, before any update." + "".join(f" {c}." for c in captions))
    return f


def fig_token_hist(runs: list[RunData], out: Path, opts: ReportOptions) -> Figure:
    """7. per run: histogram of per-token entropy of the first vs the last saved batch."""
    f = Figure("Per-token entropy at the start and the end")
    have = []
    for run in runs:
        steps = sorted(s for s, v in run.token_entropy.items() if v)
        if steps:
            have.append((run, steps))
        else:
            f.notes.append(f"{run.label}: no token_entropy/step_*.json (older run); skipped")
    if not have:
        return f
    fig, axes = grid(len(have), panel_h=3.2, sharey=False)
    captions = []
    for (run, steps), ax in zip(have, axes):
        chosen = [steps[0]] if len(steps) == 1 else [steps[0], steps[-1]]
        top = max(max(run.token_entropy[s]) for s in chosen)
        bins = [top * i / 40 for i in range(41)] if top > 0 else 10
        for s, c in zip(chosen, ("tab:blue", "tab:red")):
            vals = run.token_entropy[s]
            mean = sum(vals) / len(vals)
            ax.hist(vals, bins=bins, color=c, alpha=0.45, label=f"step {s}: mean {mean:.3f} nats")
            captions.append(f"{run.label} step {s}: mean {mean:.3f} nats over {len(vals)} tokens")
        ax.set_yscale("log")
        ax.set(xlabel=f"token entropy ({NATS})", title=mpl_text(run.label))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        if len(steps) == 1:
            f.notes.append(f"{run.label}: only step {steps[0]} saved; no end histogram")
    for i in range(0, len(axes), 4):
        axes[i].set_ylabel("response tokens (log scale)")
    fig.suptitle("Histogram of response-token entropy: first (blue) vs last (red) saved step")
    f.png = save(fig, out / "fig7_token_entropy_hist.png")
    f.caption = "; ".join(captions) + "."
    return f


FIGURES = (fig_entropy_reward, fig_quantiles, fig_dh_scatter, fig_covariance, fig_law, fig_pass_at_k, fig_token_hist)
