"""write_report on fake runs: a self-contained page with 7 embedded figures, numbers that match the data,
the step-0 eval of the warm start, escaped untrusted text (completions above all), and notes instead of
failures when metrics are missing."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from entropy_rl.metrics.dynamics import fit_entropy_performance_law, pearson
from entropy_rl.metrics.sinks import append_jsonl, read_jsonl
from entropy_rl.report import default_labels, write_report
from entropy_rl.report.cli import cmd_report
from entropy_rl.report.data import HEADLINE_COLUMNS, load_run, pass_story
from entropy_rl.report.page import MAX_COMPLETIONS_PER_STEP, fmt, markdown_table_to_html

from conftest import WARM_START_EVAL, fake_completions  # tests/report/conftest.py (the rootdir-relative module)

IMG = '<img src="data:image/png;base64,'


def pairs(run: Path, kx: str, ky: str) -> tuple[list[float], list[float]]:
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if kx in r and ky in r]
    return [r[kx] for r in rows], [r[ky] for r in rows]


def eval_law_pairs(run: Path) -> tuple[list[float], list[float]]:
    """(H, eval/accuracy) by hand: the eval at step s with the entropy logged at step s + 1 (the same policy), the
    last eval with its own step's."""
    rows = read_jsonl(run / "metrics.jsonl")
    h = {r["step"]: r["entropy/token_mean"] for r in rows if "entropy/token_mean" in r}
    evals = [r for r in rows if "eval/accuracy" in r]
    return [h.get(r["step"] + 1, h.get(r["step"])) for r in evals], [r["eval/accuracy"] for r in evals]


def table_row(html: str, label: str) -> str:
    """The headline-table row of a run (the second table row carrying its label)."""
    rows = re.findall(r"<tr><td class=\"l\">" + re.escape(label) + r"</td>.*?</tr>", html)
    return next(r for r in rows if "<code>" not in r)  # skip the config table's row


def test_full_report_is_self_contained_with_seven_figures(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    page = write_report(two_runs, tmp_path / "out", labels=["A", "B"])
    assert page == tmp_path / "out" / "report.html" and page.is_file()
    html = page.read_text()
    assert html.count(IMG) >= 7
    assert not re.search(r"https?://", html), "external reference in the page"
    assert not re.search(r"<(link|script)\b", html)
    pngs = sorted((tmp_path / "out").glob("fig*.png"))
    assert len(pngs) == 7
    assert all(p.stat().st_size > 5_000 for p in pngs), [(p.name, p.stat().st_size) for p in pngs]
    assert 'class="note"' not in html  # nothing skipped
    assert capsys.readouterr().out == ""  # write_report prints nothing


def test_numbers_on_the_page_are_computed_from_the_metrics(two_runs: list[Path], tmp_path: Path) -> None:
    html = write_report(two_runs, tmp_path / "out", labels=["A", "B"]).read_text()
    for run, label in zip(two_runs, ["A", "B"]):
        row = table_row(html, label)
        for key in ("dynamics/dH_pred", "dynamics/dH_pred_lin", "dynamics/dH_identity", "dynamics/cov_logp_adv", "dynamics/steer_omega"):
            xs, ys = pairs(run, key, "dynamics/dH_actual")
            assert len(xs) == 15  # probed steps only (even steps)
            assert f"<td>{fmt(pearson(xs, ys))}</td>" in row, key
        hs, rs = eval_law_pairs(run)
        assert len(hs) == 7  # evals at steps 0, 5, ..., 30
        law = fit_entropy_performance_law(hs, rs)
        assert f"<td>{fmt(law['r2'])}</td>" in row and f"<td>{fmt(law['ceiling'])}</td>" in row
        hs, _ = pairs(run, "entropy/token_mean", "reward/mean")
        h_first, h_last = sum(hs[:10]) / 10, sum(hs[-10:]) / 10
        assert f"<td>{fmt(h_first)}</td>" in row and f"<td>{fmt(100 * (h_first - h_last) / h_first)}</td>" in row
        last_eval = [r for r in read_jsonl(run / "metrics.jsonl") if "eval/pass@8" in r][-1]
        assert f"<td>{fmt(last_eval['eval/pass@8'])}</td>" in row
    # the pooled correlation of the scatter figure is stated in its caption
    xs, ys = [], []
    for run in two_runs:
        x, y = pairs(run, "dynamics/dH_pred", "dynamics/dH_actual")
        xs, ys = xs + x, ys + y
    assert f"Pearson r = {pearson(xs, ys):+.3f} over 30 probed steps" in html


def test_untrusted_text_is_escaped(make_fake_run, tmp_path: Path) -> None:
    run = make_fake_run(tmp_path / "r", method_params={"note": "<img src=x onerror=alert(1)>"})
    summary = "| method | note |\n|---|---|\n| <script>x</script> | a \\| b & c |"
    html = write_report([run], tmp_path / "out", labels=["<script>alert(1)</script>"], summary_md=summary).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<td>a | b &amp; c</td>" in html


def test_missing_metrics_give_notes_not_errors(make_fake_run, tmp_path: Path) -> None:
    bare = make_fake_run(tmp_path / "bare", dynamics=False, evals=False, token_entropy=False)
    page = write_report([bare], tmp_path / "out")
    html = page.read_text()
    assert html.count(IMG) >= 2  # entropy/reward and quantiles still drawn; the law fit needs evals
    assert "bare: no eval/accuracy with an entropy logged (train.eval_every = 0?); not in the law fit" in html
    assert "no probed steps with dynamics/dH_pred" in html
    assert "no eval/pass@k logged" in html and "no token_entropy" in html
    assert html.count('class="note"') >= 4
    assert not (tmp_path / "out" / "fig3_dH_scatter.png").exists()
    html = write_report([tmp_path / "never_ran", bare], tmp_path / "out2").read_text()  # e.g. a failed compare run
    assert "never_ran: no metrics.jsonl" in html and html.count(IMG) >= 2


def test_mixed_runs_and_stale_pngs(two_runs: list[Path], make_fake_run, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_report(two_runs, out)
    bare = make_fake_run(tmp_path / "bare", dynamics=False, evals=False, token_entropy=False)
    html = write_report([*two_runs, bare], out).read_text()
    assert html.count(IMG) == 7 and "bare: no probed steps" in html
    write_report([bare], out)
    assert not (out / "fig7_token_entropy_hist.png").exists()  # stale figure removed


def test_default_labels_are_unique_parent_and_seed(tmp_path: Path) -> None:
    assert default_labels([tmp_path / "a" / "seed0", tmp_path / "b" / "seed0"]) == ["a/seed0", "b/seed0"]
    assert default_labels([tmp_path / "x" / "run", tmp_path / "y" / "run"]) == ["x/run", "y/run"]
    assert default_labels([tmp_path / "dyn60"]) == ["dyn60"]


def test_markdown_table_to_html() -> None:
    out = markdown_table_to_html("| m | x |\n|---|---:|\n| grpo | 0.5 ± 0.1 |\ntext <b>")
    assert '<th class="l">m</th><th>x</th>' in out
    assert '<td class="l">grpo</td><td>0.5 ± 0.1</td>' in out
    assert "---" not in out and "<p>text &lt;b&gt;</p>" in out


def test_cli_prints_only_the_path(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("| method | seeds |\n|---|---|\n| clip_cov | 2 |\n")
    args = argparse.Namespace(run_dirs=[str(d) for d in two_runs], out=str(tmp_path / "cli"), labels="x,y",
                              summary=str(summary))
    assert cmd_report(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "report.html")
    assert '<td class="l">clip_cov</td>' in (tmp_path / "cli" / "report.html").read_text()


def test_step_0_eval_is_shown_as_the_warm_start(two_runs: list[Path], tmp_path: Path) -> None:
    html = write_report(two_runs, tmp_path / "out", labels=["A", "B"]).read_text()
    start = WARM_START_EVAL["eval/pass@8"]
    for run, label in zip(two_runs, ["A", "B"]):
        rows = read_jsonl(run / "metrics.jsonl")
        assert rows[0]["step"] == 0 and "entropy/token_mean" not in rows[0]
        cells = re.findall(r"<td>(.*?)</td>", table_row(html, label))
        headline = dict(zip([key for key, *_ in HEADLINE_COLUMNS], cells))
        assert headline["steps"] == "30"  # RL steps; the step-0 eval row is not one
        assert headline["pass@8_start"] == fmt(start) and headline["pass@1_start"] == fmt(WARM_START_EVAL["eval/pass@1"])
        last = [r for r in rows if "eval/pass@8" in r][-1]
        assert headline["pass@8"] == fmt(last["eval/pass@8"])
        assert f"{label}: {pass_story(rows)}." in html
    assert f"pass@8 {start:.3f} at step 0 (warm start)" in html


def test_completions_are_shown_escaped(make_fake_run, tmp_path: Path) -> None:
    run = make_fake_run(tmp_path / "r", completions=False)
    hostile = fake_completions(1, n=1, completion="<script>alert(1)</script>")
    hostile[0]["tokens"] = ["<script>", "alert(1)", '"><img src=x onerror=alert(2)>', "</script>", "<eos>"]
    hostile[0]["entropy"] = [0.1, 0.2, 0.3, "nan", 0.5]
    hostile[0]["prompt"] = "<u>bold</u> & \"q\""
    text = fake_completions(30, n=1, completion="nan")  # a model may answer "nan": it stays text
    append_jsonl(run / "completions.jsonl", hostile + text)
    html = write_report([run], tmp_path / "out").read_text()
    assert not re.search(r"<(script|img src=x|u>)", html, re.IGNORECASE)
    assert "&lt;script&gt;" in html and "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;u&gt;bold&lt;/u&gt; &amp; &quot;q&quot;" in html
    assert '>n</span><span class="tok"' in html  # "nan" as three shaded tokens, not a float
    assert '<span class="tok" title="H = nan">&lt;/script&gt;</span>' in html  # a non-finite entropy: no shade


def test_completions_table_shows_first_and_last_logged_step(make_fake_run, tmp_path: Path) -> None:
    run = make_fake_run(tmp_path / "r", completions=False)
    records = [r for step in (1, 10, 20, 30) for r in fake_completions(step, n=20)]
    records[5]["tokens"] = "not a list"  # malformed records are skipped with a note, not a failure
    append_jsonl(run / "completions.jsonl", records)
    assert len(load_run(run, "r").completions) == 79
    html = write_report([run], tmp_path / "out").read_text()
    section = html[html.index("<h2>Sample completions</h2>"):]
    steps = re.findall(r"<tr><td>(\d+)</td>", section)
    assert steps == ["1"] * MAX_COMPLETIONS_PER_STEP + ["30"] * MAX_COMPLETIONS_PER_STEP
    assert "r: steps 1 and 30" in section and "completions.jsonl: 1 malformed records skipped" in html
    bare = make_fake_run(tmp_path / "bare", completions=False)
    assert "bare: no completions.jsonl" in write_report([bare], tmp_path / "out2").read_text()
