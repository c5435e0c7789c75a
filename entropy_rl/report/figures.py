"""The report's figures: one function per figure, each drawing from `RunData` and saving a PNG.

Every function returns a `Figure` record: the file it wrote (None when there was nothing to draw), a caption
with the numbers shown, and notes about runs it had to skip. Matplotlib runs on the Agg backend (no window
is ever opened); figures are closed after saving.
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

from entropy_rl.metrics.dynamics import pearson  # noqa: E402
from entropy_rl.report.data import D_ACTUAL, H, R, RunData, law_fit, paired, pass_keys, pass_story, series  # noqa: E402

__all__ = ["Figure", "FIGURES"]

DPI = 110
NATS = "nats"


@dataclass
class Figure:
    """One figure of the page.

    Attributes:
        title: section heading.
        png: the PNG written, or None when nothing could be drawn.
        caption: what the figure shows, with its numbers (plain text; escaped by the page).
        notes: runs or data that were skipped and why (plain text).
    """

    title: str
    png: Path | None = None
    caption: str = ""
    notes: list[str] = field(default_factory=list)


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


def run_legend(fig, ax, entries: list[tuple[str, object]], ls: str = "-", marker: str | None = None) -> None:
    """Legend of run colours: inside `ax` for up to 6 runs, else below the figure in columns."""
    if not entries:
        return
    handles = [Line2D([], [], color=c, ls=ls, marker=marker, label=mpl_text(label)) for label, c in entries]
    if len(handles) <= 6:
        ax.add_artist(ax.legend(handles=handles, fontsize=8, framealpha=0.8, loc="best"))
    else:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)


def style_legend(ax, entries: list[tuple[str, dict]], loc: str = "lower right") -> None:
    """Legend of line styles drawn in black (e.g. first vs last eval), independent of the run colours."""
    handles = [Line2D([], [], label=label, **{"color": "black", **style}) for label, style in entries]
    ax.add_artist(ax.legend(handles=handles, fontsize=8, framealpha=0.8, loc=loc))


def integer_steps(ax) -> None:
    """Integer ticks on a step axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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


def fig_entropy_reward(runs: list[RunData], out: Path) -> Figure:
    """1. entropy/token_mean and reward/mean vs step, runs overlaid."""
    f = Figure("Entropy and reward", notes=missing(runs, (H,)))
    have = [(run.label, run, c) for run, c in zip(runs, colors(len(runs))) if series(run.rows, H)[0]]
    if not have:
        return f
    fig, axes = new_figure(12, 4.2, len(have), cols=2)
    ax1, ax2 = axes[0]
    for _, run, c in have:
        marker = "." if len(run.rows) < 30 else None
        ax1.plot(*series(run.rows, H), color=c, lw=1.4, marker=marker)
        ax2.plot(*series(run.rows, R), color=c, lw=1.4, marker=marker)
    ax1.set(xlabel="step", ylabel=f"entropy/token_mean ({NATS})", title="Policy entropy (pre-update pass)")
    ax2.set(xlabel="step", ylabel="reward/mean (reward units)", title="Mean reward of the rollout batch")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        integer_steps(ax)
    run_legend(fig, ax1, [(label, c) for label, _, c in have])
    f.png = save(fig, out / "fig1_entropy_reward.png")
    f.caption = "Token-mean entropy (nats) and mean reward per training step."
    return f


def fig_quantiles(runs: list[RunData], out: Path) -> Figure:
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


def fig_dh_scatter(runs: list[RunData], out: Path) -> Figure:
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


def fig_covariance(runs: list[RunData], out: Path) -> Figure:
    """4. dynamics/cov_logp_adv vs step, runs overlaid."""
    key = "dynamics/cov_logp_adv"
    f = Figure("Covariance of log-probability and advantage", notes=missing(runs, (key,)))
    have = [(run, c) for run, c in zip(runs, colors(len(runs))) if series(run.rows, key)[0]]
    if not have:
        return f
    fig, axes = new_figure(12, 4, len(have))
    ax = axes[0][0]
    for run, c in have:
        ax.plot(*series(run.rows, key), color=c, lw=1.3, marker="." if len(run.rows) < 30 else None)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="step", ylabel=f"cov_logp_adv ({NATS} × adv. units)",
           title="Cov(log π(a), A) over response tokens (> 0 predicts falling entropy)")
    ax.grid(alpha=0.3)
    integer_steps(ax)
    run_legend(fig, ax, [(run.label, c) for run, c in have])
    f.png = save(fig, out / "fig4_covariance.png")
    f.caption = f"{key}: population covariance of token log-probability and advantage per step (pre-update pass)."
    return f


def fig_law(runs: list[RunData], out: Path) -> Figure:
    """5. (entropy, reward) scatter with the per-run fit R = -a exp(H) + b, its R^2 and ceiling b - a."""
    f = Figure("Entropy–performance law R = −a·exp(H) + b")
    entries, captions = [], []
    fig, axes = new_figure(11, 5.5, len(runs))
    ax = axes[0][0]
    for run, c in zip(runs, colors(len(runs))):
        hs, rs = paired(run.rows, H, R)
        if not hs:
            f.notes.append(f"{run.label}: no entropy/reward logged; skipped")
            continue
        ax.scatter(hs, rs, s=12, color=c, alpha=0.6)
        law = law_fit(run.rows)
        label = run.label
        if law is None:
            f.notes.append(f"{run.label}: fit undetermined ({len(hs)} points; needs 3+ with varying entropy); points only")
        else:
            lo, hi = min(hs), max(hs)
            xs = [lo + (hi - lo) * i / 100 for i in range(101)]
            ax.plot(xs, [-law["a"] * math.exp(h) + law["b"] for h in xs], color=c, lw=1.8)
            ax.axhline(law["ceiling"], color=c, ls="--", lw=1)
            label += f": R² = {law['r2']:.3f}, ceiling = {law['ceiling']:.3f}"
            captions.append(f"{run.label}: a = {law['a']:.4g}, b = {law['b']:.4g}, R² = {law['r2']:.3f}, "
                            f"ceiling b − a = {law['ceiling']:.3f} ({law['n']:.0f} steps)")
        entries.append((label, c))
    if not entries:
        plt.close(fig)
        return f
    ax.set(xlabel=f"entropy/token_mean H ({NATS})", ylabel="reward/mean R (reward units)",
           title="Fit of R = −a·exp(H) + b over all steps; dashed: predicted ceiling b − a (R at H = 0)")
    ax.grid(alpha=0.3)
    run_legend(fig, ax, entries, marker="o")
    f.png = save(fig, out / "fig5_entropy_law.png")
    f.caption = "; ".join(captions) if captions else "No run had a determined fit (points only)."
    return f


def fig_pass_at_k(runs: list[RunData], out: Path) -> Figure:
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


def fig_token_hist(runs: list[RunData], out: Path) -> Figure:
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
