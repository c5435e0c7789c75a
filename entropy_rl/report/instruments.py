"""The report's instruments beyond the step curves: pass@k curves against the warm start (from `entropy-rl eval`
result files), the diversity of each group's responses, and the attention-entropy heatmap (layer x head).

Each figure here reads data a run has only when the user asked for it (an `entropy-rl eval --k` result, a config
switch) or only from a newer entropy-rl (diversity/*), so a section is left out of the page entirely when no run
has its data; a run without it, next to runs that have it, gets a note. Figures are written as fig_<name>.png
beside the numbered ones of `figures.py`.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

from entropy_rl.metrics import passk
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.report.data import RunData, _finite, series, window
from entropy_rl.report.figures import (Figure, MaxNLocator, colors, integer_steps, missing, mpl_text, new_figure, plt,
                                       run_legend, save, style_legend)

ATTENTION_FILE = "attention_entropy.jsonl"  # entropy_rl.train.attention_probe.ATTENTION_FILE (the report reads files only)

__all__ = ["instrument_figures", "PasskRow", "passk_rows", "DIVERSITY", "load_attention"]


class PasskRow:
    """One run's pass@k curve and the warm-start curve evaluated the same way (if any), for the figure and tests.

    Attributes:
        label: the run's label.
        run: {k: pass@k} of its newest evaluated checkpoint.
        step: that checkpoint's RL step.
        base: {k: pass@k} of the matching warm-start result, or None.
        base_name: where the base result was found (its model directory's name).
        crossover: `passk.crossover_k(base, run)`, None without a base or without a crossover.
    """

    def __init__(self, label: str, run: dict[int, float], step: Any, base: dict[str, Any] | None) -> None:
        self.label, self.run, self.step = label, run, step
        self.base = passk.curve(base) if base is not None else None
        self.base_key = passk.settings_key(base["settings"]) if base is not None else None
        self.base_name = "/".join(Path(str(base.get("model_dir", "warm start"))).parts[-2:]) if base is not None else ""
        self.crossover = passk.crossover_k(self.base, run) if self.base is not None else None


def base_results(run: RunData, base_dirs: list[Path]) -> list[dict[str, Any]]:
    """Warm-start results of a run (`passk.warm_start_results`) plus every result in the given base folders
    (each folder itself and its eval/)."""
    found = passk.warm_start_results(run.path, run.config) if run.path.is_dir() else []
    for d in base_dirs:
        found += passk.load_results(d) + passk.load_results(Path(d) / passk.EVAL_DIR)
    return found


def passk_rows(runs: list[RunData], base_dirs: list[Path], notes: list[str]) -> list[PasskRow]:
    """One PasskRow per run with a pass@k result file; runs without one get a note (only when some run has one)."""
    rows, missing = [], []
    for run in runs:
        results = passk.load_results(run.path / passk.EVAL_DIR, notes) if run.path.is_dir() else []
        own = passk.run_result(results)
        if own is None:
            missing.append(run.label)
            continue
        base = passk.matching_base(own, base_results(run, base_dirs))
        row = PasskRow(run.label, passk.curve(own), own.get("step"), base)
        if base is None:
            notes.append(f"{run.label}: no warm-start result evaluated the same way (entropy-rl eval RUN --warm-start "
                         "with the same --k, --problems, --seed and sampling, or --base DIR); no crossover")
        rows.append(row)
    if rows:
        notes += [f"{label}: no pass@k result of a checkpoint (entropy-rl eval RUN --k 1,2,4,...,256); skipped"
                  for label in missing]
    return rows


def fig_passk_curves(runs: list[RunData], out: Path, base_dirs: list[Path]) -> Figure | None:
    """pass@k vs k (log2 axis) of every run's final checkpoint with the warm start dashed, crossovers marked."""
    f = Figure("pass@k curves against the warm start")
    rows = passk_rows(runs, base_dirs, f.notes)
    if not rows:
        return None
    fig, axes = new_figure(11, 5.2, len(rows))
    ax = axes[0][0]
    drawn_bases: dict[str, str] = {}
    captions = []
    for row, c in zip(rows, colors(len(rows))):
        ks = list(row.run)
        ax.plot(ks, [row.run[k] for k in ks], color=c, marker="o", ms=4, lw=1.6)
        if row.base is not None and row.base_key not in drawn_bases:
            drawn_bases[row.base_key] = row.base_name
            bk = list(row.base)
            ax.plot(bk, [row.base[k] for k in bk], color="black", ls="--", marker="s", ms=3, lw=1.3, zorder=3)
        if row.crossover is not None:
            ax.plot([row.crossover], [row.run[row.crossover]], ls="none", marker="X", ms=11, color=c,
                    markeredgecolor="black", zorder=4)
        where = f"step {row.step}" if row.step is not None else "final"
        captions.append(f"{row.label} ({where}): " + (passk.describe_crossover(row.base, row.run) if row.base is not None
                                                        else "no matching warm-start result"))
    ax.set_xscale("log", base=2)
    ticks = sorted({k for row in rows for k in [*row.run, *(row.base or {})]})
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set(xlabel="k (samples per problem, log2 scale)", ylabel="pass@k (probability)",
           title="Unbiased pass@k of each run's last checkpoint vs the model RL started from")
    ax.grid(alpha=0.3)
    run_legend(fig, ax, [(row.label, c) for row, c in zip(rows, colors(len(rows)))])
    styles = [("run (last checkpoint)", {"ls": "-", "marker": "o"})]
    if drawn_bases:
        styles.append((mpl_text("warm start: " + ", ".join(sorted(set(drawn_bases.values())))),
                       {"ls": "--", "marker": "s"}))
        styles.append(("crossover k (base >= run)", {"ls": "none", "marker": "X", "ms": 9}))
    style_legend(ax, styles, loc="lower right")
    f.png = save(fig, out / "fig_passk_curves.png")
    f.caption = ("pass@k from `entropy-rl eval --k` result files (unbiased estimator, Chen et al. 2021), on one axis "
                 "with the warm start (dashed) evaluated on the same problems with the same sampling. Crossover k: the "
                 "smallest k at which the warm start's pass@k is at least the run's. " + "; ".join(captions) + ".")
    return f


DIVERSITY = (("diversity/vendi", "Vendi score of each group's responses", "effective distinct responses (count)"),
             ("diversity/answer_entropy", "Entropy of each group's final answers", "answer entropy (nats)"))


def fig_diversity(runs: list[RunData], out: Path) -> Figure | None:
    """diversity/vendi and diversity/answer_entropy vs step (means over prompt groups), runs overlaid."""
    keys = tuple(k for k, _, _ in DIVERSITY)
    have = [(run, c) for run, c in zip(runs, colors(len(runs))) if any(series(run.rows, k)[0] for k in keys)]
    if not have:
        return None
    f = Figure("Diversity of each group's responses", notes=missing(runs, keys))
    fig, axes = new_figure(12, 4.2, len(have), cols=2)
    captions = []
    for ax, (key, title, ylabel) in zip(axes[0], DIVERSITY):
        for run, c in have:
            steps, values = series(run.rows, key)
            ax.plot(steps, values, color=c, lw=1.3, marker="." if len(steps) < 30 else None)
            if values:
                n = window(len(values))
                captions.append(f"{run.label} {key}: {fmean(values[:n]):.3f} -> {fmean(values[-n:]):.3f} "
                                f"(first vs last {n} steps)")
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        integer_steps(ax)
    run_legend(fig, axes[0][0], [(run.label, c) for run, c in have])
    f.png = save(fig, out / "fig_diversity.png")
    f.caption = ("Means over the prompt groups of each rollout batch. Vendi score: the effective number of distinct "
                 "response texts (character 1-3-gram cosine similarity; 1 = all identical, G = nothing shared). Answer "
                 "entropy: of the parsed final answers, in nats (0 = all agree). " + "; ".join(captions) + ".")
    return f


def load_attention(run: RunData, notes: list[str]) -> dict[int, list[list[float]]]:
    """{step: [n_layers][n_heads] attention entropies (nats)} from the run's attention_entropy.jsonl; malformed lines
    (not a rectangular matrix of finite numbers) are skipped with a note."""
    path = run.path / ATTENTION_FILE
    if not path.is_file():
        return {}
    try:
        records = read_jsonl(path)
    except (OSError, ValueError) as e:
        notes.append(f"{run.label}: {ATTENTION_FILE} unreadable: {e}")
        return {}
    out: dict[int, list[list[float]]] = {}
    bad = 0
    for r in records:
        m = r.get("entropy") if isinstance(r, dict) else None
        ok = (isinstance(r.get("step"), int) and isinstance(m, list) and m and all(isinstance(row, list) for row in m)
              and len({len(row) for row in m}) == 1 and all(_finite(v) for row in m for v in row))
        if ok:
            out[r["step"]] = [[float(v) for v in row] for row in m]
        else:
            bad += 1
    if bad:
        notes.append(f"{run.label}: {ATTENTION_FILE}: {bad} malformed lines skipped")
    return out


def fig_attention(runs: list[RunData], out: Path) -> Figure | None:
    """Per run: heatmaps (layer x head) of the attention entropy at the first and the last logged step."""
    notes: list[str] = []
    have = [(run, data) for run in runs if (data := load_attention(run, notes))]
    if not have:
        return None
    f = Figure("Attention entropy per layer and head", notes=notes)
    f.notes += [f"{run.label}: no {ATTENTION_FILE} (train.attention_entropy_every = 0); skipped"
                for run in runs if run not in [r for r, _ in have]]
    panels = [(run, step, data[step]) for run, data in have for step in dict.fromkeys([min(data), max(data)])]
    values = [v for _, _, m in panels for row in m for v in row]
    lo, hi = min(values), max(values)
    cols = max(sum(1 for r, _, _ in panels if r is run) for run, _ in have)
    n_layers = max(len(m) for _, _, m in panels)
    fig, axes = plt.subplots(len(have), cols, figsize=(5.2 * cols + 1.2, 0.9 + min(8.0, 0.35 * n_layers + 1.6) * len(have)),
                             squeeze=False, layout="constrained")
    captions, image = [], None
    for i, (run, data) in enumerate(have):
        steps = list(dict.fromkeys([min(data), max(data)]))
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(steps):
                ax.set_visible(False)
                continue
            m = data[steps[j]]
            image = ax.imshow(m, aspect="auto", cmap="viridis", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
            ax.set(xlabel="head", ylabel="layer", title=mpl_text(f"{run.label}: step {steps[j]}"))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        first, last = data[steps[0]], data[steps[-1]]
        low_l, low_h = min(((layer, head) for layer in range(len(last)) for head in range(len(last[layer]))),
                           key=lambda p: last[p[0]][p[1]])
        captions.append(f"{run.label}: mean {fmean(v for row in first for v in row):.3f} nats at step {steps[0]}, "
                        f"{fmean(v for row in last for v in row):.3f} at step {steps[-1]}; lowest head at step "
                        f"{steps[-1]}: layer {low_l} head {low_h}, {last[low_l][low_h]:.3f}")
    fig.colorbar(image, ax=[ax for row in axes for ax in row if ax.get_visible()], label="attention entropy (nats)",
                 shrink=0.9)
    fig.suptitle("Mean entropy of each head's attention over the queries that predict response tokens")
    f.png = save(fig, out / "fig_attention_entropy.png")
    f.caption = ("From attention_entropy.jsonl (train.attention_entropy_every): per layer (rows) and head (columns), "
                 "the token mean of -sum a ln a of the attention weights, first and last logged step, one colour "
                 "scale. It describes how the network mixes its context, not the policy's next-token entropy "
                 "(docs/metrics.md). " + "; ".join(captions) + ".")
    return f


def instrument_figures(runs: list[RunData], out: Path, base_dirs: list[Path] | None = None) -> list[Figure]:
    """The instrument figures that some run has data for, in page order."""
    figs = [fig_passk_curves(runs, out, list(base_dirs or [])), fig_diversity(runs, out), fig_attention(runs, out)]
    return [f for f in figs if f is not None]
