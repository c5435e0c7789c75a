"""The report's law fit (eval accuracy vs the entropy of the evaluated policy, per run or pooled per model and task,
with the ceiling's CI, a warning instead of a curve when the fit means nothing), its smoothed curves (EMA over the
faint raw series, named in the legend), the step-0 eval points and the plain column names."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from entropy_rl.metrics.dynamics import fit_entropy_performance_law
from entropy_rl.metrics.sinks import JsonlSink, read_jsonl
from entropy_rl.report import figures, write_report
from entropy_rl.report.cli import cmd_report
from entropy_rl.report.data import RunData, law_fits, law_group, law_points, load_run
from entropy_rl.report.figures import ema, smoothing_span

from conftest import WARM_START_EVAL  # tests/report/conftest.py


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The matplotlib figures the report saves, by file name, kept open for inspection (`save` still writes them)."""
    figs: dict[str, object] = {}

    def keep(fig, path: Path) -> Path:
        figs[path.name] = fig
        fig.savefig(path, dpi=figures.DPI, format="png")
        return path

    monkeypatch.setattr(figures, "save", keep)
    yield figs
    for fig in figs.values():
        figures.plt.close(fig)


def rows_run(label: str, rows: list[dict]) -> RunData:
    return RunData(Path(label), label, rows, {})


# ---- which points are fitted ----


def test_each_eval_is_paired_with_the_entropy_of_the_policy_it_evaluated() -> None:
    rows = [{"step": 0, "eval/accuracy": 0.2},  # the warm start: its entropy is step 1's pre-update pass
            {"step": 1, "entropy/token_mean": 0.9}, {"step": 2, "entropy/token_mean": 0.8, "eval/accuracy": 0.3},
            {"step": 3, "entropy/token_mean": 0.7}, {"step": 4, "entropy/token_mean": 0.6, "eval/accuracy": 0.5}]
    pts = law_points(rows_run("r", rows))
    # step 0 -> H of step 1; step 2 -> H of step 3 (after step 2's update); step 4 is the last: its own step's H
    assert [(p.step, p.h, p.r) for p in pts] == [(0, 0.9, 0.2), (2, 0.7, 0.3), (4, 0.6, 0.5)]
    assert law_points(rows_run("none", [{"step": 1, "entropy/token_mean": 0.9, "reward/mean": 0.5}])) == []


def test_pooled_fits_group_runs_by_model_and_task(make_fake_run, tmp_path: Path) -> None:
    dirs = [make_fake_run(tmp_path / "a", seed=0), make_fake_run(tmp_path / "b", seed=1),
            make_fake_run(tmp_path / "c", seed=2, task="arithmetic")]
    runs = [load_run(d, d.name) for d in dirs]
    assert law_group(runs[0].config) == "tiny model 32/2/?/?/?, task countdown"
    assert law_group({}) == "model and task not recorded"
    assert law_group({"model": {"path": "/x/Qwen2.5-0.5B"}, "task": {"name": "math", "params": {"k": 1}}}) == (
        'model Qwen2.5-0.5B, task math {"k": 1}')
    per_run = law_fits(runs)
    assert [f.name for f in per_run] == ["a", "b", "c"] and all(len(f.points) == 7 for f in per_run)
    pooled = law_fits(runs, pool=True)
    assert [(f.name, f.runs, len(f.points)) for f in pooled] == [
        ("pooled: tiny model 32/2/?/?/?, task countdown", ["a", "b"], 14),
        ("pooled: tiny model 32/2/?/?/?, task arithmetic", ["c"], 7)]
    both = law_points(runs[0]) + law_points(runs[1])
    assert pooled[0].fit == fit_entropy_performance_law([p.h for p in both], [p.r for p in both])


# ---- what the page shows ----


def law_table_rows(html: str) -> list[list[str]]:
    section = html[html.index("<h2>Entropy–performance law"):]
    table = section[:section.index("</table>")]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table) if "<td" in row]


def test_law_table_curve_and_ceiling_ci(two_runs: list[Path], tmp_path: Path, drawn) -> None:
    html = write_report(two_runs, tmp_path / "out", labels=["A", "B"]).read_text()
    rows = law_table_rows(html)
    assert [r[0] for r in rows] == ["A", "B"]
    for run, row in zip(two_runs, rows):
        pts = law_points(load_run(run, "x"))
        fit = fit_entropy_performance_law([p.h for p in pts], [p.r for p in pts])
        assert fit["a"] > 0 and fit["r2"] > 0.9  # the fake runs follow the law
        assert row == ["A" if run == two_runs[0] else "B", "1", "7", f"{fit['a']:.4g}", f"{fit['b']:.4g}",
                       f"{fit['r2']:.3f}", f"{fit['ceiling']:.3f}",
                       f"[{fit['ceiling_low']:.3f}, {fit['ceiling_high']:.3f}]", "ok"]
    ax = drawn["fig5_entropy_law.png"].axes[0]
    assert ax.get_xlim()[0] < 0.0  # the axis reaches past H = 0, where the ceiling sits
    bars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 2  # one ceiling with its CI per fitted run
    fit_a = fit_entropy_performance_law(*zip(*[(p.h, p.r) for p in law_points(load_run(two_runs[0], "A"))]))
    marker = bars[0].lines[0]
    assert marker.get_xdata()[0] == 0.0 and marker.get_ydata()[0] == pytest.approx(fit_a["ceiling"])
    stars = [c for c in ax.collections if len(c.get_offsets()) == 1]  # the step-0 eval of each run, starred
    assert [tuple(c.get_offsets()[0]) for c in stars][0][1] == pytest.approx(WARM_START_EVAL["eval/accuracy"])


def test_meaningless_fits_get_a_visible_warning_instead_of_a_curve(make_fake_run, tmp_path: Path, drawn) -> None:
    few = make_fake_run(tmp_path / "few", eval_every=10)  # evals at 0, 10, 20, 30: 4 points
    rising = tmp_path / "rising"  # accuracy rises with entropy: a < 0
    rising.mkdir()
    sink = JsonlSink(rising / "metrics.jsonl")
    for step in range(1, 13):
        h = 1.0 - 0.05 * step
        sink.log(step, {"entropy/token_mean": h, "reward/mean": 0.5, "eval/accuracy": 0.2 + 0.5 * h})
    sink.close()
    html = write_report([few, rising], tmp_path / "out").read_text()
    assert "few: no fitted curve: only 4 points (a fit needs 5+)" in html
    assert re.search(r"rising: no fitted curve: a = -[0-9.]+ &lt; 0: R rises with entropy here", html)
    assert html.count('class="note"') >= 2  # shown as warnings on the page
    rows = law_table_rows(html)
    assert rows[0][-1].startswith("no curve drawn: only 4 points") and rows[1][-1].startswith("no curve drawn: a = -")
    ax = drawn["fig5_entropy_law.png"].axes[0]
    assert not ax.lines and not ax.containers  # no fitted curve, no ceiling
    assert "⚠ few: no fitted curve" in ax.texts[0].get_text()  # the warning is on the figure itself
    rows = [r for r in re.findall(r'<tr><td class="l">rising</td>.*?</tr>', html) if "<code>" not in r]
    headline = re.findall(r"<td>(.*?)</td>", rows[0])  # the headline table's row (then the law table's)
    assert headline[-2] == "-"  # law_ceiling: no ceiling from a flagged fit


def test_pool_law_from_the_cli_draws_one_fit_per_model_and_task(make_fake_run, tmp_path: Path, drawn) -> None:
    dirs = [make_fake_run(tmp_path / "a", seed=0), make_fake_run(tmp_path / "b", seed=1)]
    args = argparse.Namespace(run_dirs=[str(d) for d in dirs], out=str(tmp_path / "cli"), labels=None, summary=None,
                              pool_law=True, smooth=None)
    assert cmd_report(args) == 0
    html = (tmp_path / "cli" / "report.html").read_text()
    rows = law_table_rows(html)
    assert len(rows) == 1 and rows[0][:3] == ["pooled: tiny model 32/2/?/?/?, task countdown", "2", "14"]
    assert "pooled per model and task" in drawn["fig5_entropy_law.png"].axes[0].get_title()


# ---- smoothing ----


def test_ema_by_hand_and_the_automatic_span() -> None:
    # span 3: alpha = 2 / 4 = 0.5; y0 = x0 = 0, y1 = 0.5 * 1 + 0.5 * 0 = 0.5, y2 = 0.5 * 1 + 0.5 * 0.5 = 0.75
    assert ema([0.0, 1.0, 1.0], 3) == pytest.approx([0.0, 0.5, 0.75])
    assert ema([4.0, 4.0, 4.0], 7) == pytest.approx([4.0, 4.0, 4.0])  # starts at the first value, no pull to 0
    assert ema([1.0, 2.0], 1) == [1.0, 2.0]
    assert smoothing_span(29, None) == 1 and smoothing_span(30, None) == 3 and smoothing_span(300, None) == 15
    assert smoothing_span(300, 0) == 1 and smoothing_span(5, 4) == 4


def test_curves_are_smoothed_over_the_faint_raw_series(make_fake_run, tmp_path: Path, drawn) -> None:
    run = make_fake_run(tmp_path / "long", steps=120)
    html = write_report([run], tmp_path / "out").read_text()
    ax_h = drawn["fig1_entropy_reward.png"].axes[0]
    raw, smooth = ax_h.lines[:2]
    steps, hs = zip(*[(r["step"], r["entropy/token_mean"]) for r in read_jsonl(run / "metrics.jsonl")
                      if "entropy/token_mean" in r])
    span = smoothing_span(120, None)
    assert span == 6 and raw.get_alpha() == 0.25 and smooth.get_alpha() is None
    assert list(raw.get_ydata()) == pytest.approx(hs) and list(smooth.get_ydata()) == pytest.approx(ema(list(hs), 6))
    legend = [t.get_text() for lg in drawn["fig1_entropy_reward.png"].axes[1].artists for t in lg.get_texts()]
    assert legend == ["raw (faint)", "EMA, span 6 steps (α = 0.29)"]
    assert "exponential moving average over a span of 6 logged steps" in html
    write_report([run], tmp_path / "raw", smooth=0)
    assert len(drawn["fig1_entropy_reward.png"].axes[0].lines) == 1  # raw only


# ---- step 0 and column names ----


def test_the_step_0_eval_is_plotted(two_runs: list[Path], tmp_path: Path, drawn) -> None:
    write_report(two_runs, tmp_path / "out")
    ax = drawn["fig6_pass_at_k.png"].axes[1]  # pass@k vs step
    pass1 = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert all(ln.get_xdata()[0] == 0 for ln in pass1) and len(pass1) == 2
    assert pass1[0].get_ydata()[0] == WARM_START_EVAL["eval/pass@1"]
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 2 and all(list(ln.get_xdata()) == [0, 0] for ln in stars)


def test_headline_columns_have_plain_names_with_units_over_the_key(two_runs: list[Path], tmp_path: Path) -> None:
    html = write_report(two_runs, tmp_path / "out").read_text()
    assert ">entropy at start (nats)<br><code>H_first</code></th>" in html
    assert ">law ceiling b − a (accuracy)<br><code>law_ceiling</code></th>" in html
    assert ">RL steps<br><code>steps</code></th>" in html  # no unit, no brackets
    assert "Comparison summary (mean ± std" not in html


def test_smooth_must_not_be_negative(two_runs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        write_report(two_runs, tmp_path / "out", smooth=-1)
