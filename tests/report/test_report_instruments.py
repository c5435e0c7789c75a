"""The report's instrument sections (report/instruments.py): the pass@k curves of `entropy-rl eval` results
against the warm start with the crossover k; left out when no run has the data; noted per run otherwise."""

from __future__ import annotations

import re
from pathlib import Path

from entropy_rl.metrics import passk
from entropy_rl.metrics.sinks import append_jsonl, read_jsonl
from entropy_rl.report import write_report
from entropy_rl.report.data import load_run
from entropy_rl.report.instruments import passk_rows
from entropy_rl.train.evaluate import EvalSamples, write_result

IMG = '<img src="data:image/png;base64,'
SETTINGS = {"model_sha256": "0" * 64, "task": "countdown", "task_params": {}, "problems": 4, "samples": 8,
            "ks": [1, 2, 4, 8], "seed": 0, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16,
            "top_h": None}


def store(folder: Path, curve: dict[int, float], role: str, step: int | None = None, **changes) -> Path:
    """Write a result file with the given pass@k curve through the toolkit's writer."""
    settings = {**SETTINGS, **changes}
    metrics = {"eval/accuracy": curve[1], **{f"eval/pass@{k}": v for k, v in curve.items()},
               **{f"eval/maj@{k}": v for k, v in curve.items() if k > 1}}
    samples = EvalSamples(8, [[True] * 2 + [False] * 6] * 4, [["1"] * 8] * 4)
    return write_result(folder, settings, metrics, samples, {"model_dir": str(folder.parent / "model"), "role": role,
                                                             "step": step})


BASE = {1: 0.30, 2: 0.45, 4: 0.62, 8: 0.80}


def test_passk_curves_with_crossover(two_runs: list[Path], tmp_path: Path) -> None:
    a, b = two_runs
    store(a / "eval", {1: 0.55, 2: 0.60, 4: 0.64, 8: 0.70}, "checkpoint", 100, model_sha256="a" * 64)  # older
    store(a / "eval", {1: 0.50, 2: 0.55, 4: 0.60, 8: 0.66}, "checkpoint", 300, model_sha256="b" * 64)
    store(a / "eval", BASE, "warm start")
    store(b / "eval", {1: 0.40, 2: 0.55, 4: 0.70, 8: 0.85}, "checkpoint", 300, model_sha256="c" * 64)
    base_dir = tmp_path / "ws" / "eval"  # b's base comes from --base
    store(base_dir, BASE, "warm start")
    runs = [load_run(a, "A"), load_run(b, "B")]
    notes: list[str] = []
    rows = passk_rows(runs, [], notes)
    assert [r.label for r in rows] == ["A", "B"] and rows[0].step == 300  # the newest checkpoint's result
    assert rows[0].crossover == 4  # 0.62 >= 0.60 at k = 4, not at k = 2 (0.45 < 0.55)
    assert rows[1].base is None and rows[1].crossover is None and "B: no warm-start result" in notes[0]
    rows = passk_rows(runs, [tmp_path / "ws"], [])
    assert rows[1].base == BASE and rows[1].crossover is None  # B stays above the base up to k = 8
    html = write_report(two_runs, tmp_path / "out", labels=["A", "B"], base_dirs=[tmp_path / "ws"]).read_text()
    assert html.count(IMG) == 8 and (tmp_path / "out" / "fig_passk_curves.png").stat().st_size > 5_000
    assert "<h2>pass@k curves against the warm start</h2>" in html
    assert "A (step 300): crossover at k = 4: base pass@4 0.620 &gt;= run 0.600" in html
    assert "B (step 300): no crossover: the run stays above the base up to k = 8 (0.850 vs 0.800)" in html


def test_passk_section_is_left_out_without_results_and_notes_runs_without(two_runs: list[Path], tmp_path: Path) -> None:
    html = write_report(two_runs, tmp_path / "out").read_text()
    assert "pass@k curves against the warm start" not in html and html.count(IMG) == 7
    store(two_runs[0] / "eval", BASE, "checkpoint", 10)
    (two_runs[1] / "eval").mkdir()
    (two_runs[1] / "eval" / "passk_bogus.json").write_text("{}")
    html = write_report(two_runs, tmp_path / "out", labels=["A", "B"]).read_text()
    assert html.count(IMG) == 8
    assert "B: no pass@k result of a checkpoint" in html and "passk_bogus.json: skipped" in html
    write_report([two_runs[1]], tmp_path / "out")
    assert not (tmp_path / "out" / "fig_passk_curves.png").exists()  # stale instrument figure removed


def test_only_comparable_bases_count(two_runs: list[Path], tmp_path: Path) -> None:
    run = two_runs[0]
    store(run / "eval", {1: 0.5, 2: 0.55, 4: 0.6, 8: 0.65}, "checkpoint", 30, model_sha256="a" * 64)
    store(run / "eval", BASE, "warm start", seed=7)  # another seed: another problem draw, not comparable
    [row] = passk_rows([load_run(run, "A")], [], [])
    assert row.base is None
    store(run / "eval", {1: 0.1, 2: 0.2, 4: 0.3, 8: 0.9}, "warm start", ks=[1, 2, 4, 8], samples=8)
    [row] = passk_rows([load_run(run, "A")], [], [])
    assert row.base == {1: 0.1, 2: 0.2, 4: 0.3, 8: 0.9} and row.crossover == 8
    assert len(re.findall(r"passk_[0-9a-f]{16}\.json", " ".join(p.name for p in (run / "eval").iterdir()))) == 3
    assert passk.load_results(run / "eval")[0]["format"] == passk.RESULT_FORMAT


def add_diversity(run: Path) -> list[dict]:
    """Rewrite a fake run's metrics.jsonl with diversity/* on every RL step (falling as the policy sharpens)."""
    rows = read_jsonl(run / "metrics.jsonl")
    for r in rows:
        if r["step"] >= 1:
            r["diversity/vendi"] = 1.0 + 3.0 / r["step"]
            r["diversity/answer_entropy"] = 1.2 / r["step"] ** 0.5
    (run / "metrics.jsonl").unlink()
    append_jsonl(run / "metrics.jsonl", rows)
    return [r for r in rows if r["step"] >= 1]


def test_diversity_section(two_runs: list[Path], tmp_path: Path) -> None:
    html = write_report(two_runs, tmp_path / "out").read_text()
    assert "Diversity of each group" not in html  # no run logged it: no section
    rows = add_diversity(two_runs[0])
    html = write_report(two_runs, tmp_path / "out", labels=["A", "B"]).read_text()
    assert "<h2>Diversity of each group&#x27;s responses</h2>" in html and html.count(IMG) == 8
    assert (tmp_path / "out" / "fig_diversity.png").stat().st_size > 5_000
    first = sum(r["diversity/vendi"] for r in rows[:10]) / 10
    last = sum(r["diversity/vendi"] for r in rows[-10:]) / 10
    assert f"A diversity/vendi: {first:.3f} -&gt; {last:.3f} (first vs last 10 steps)" in html
    assert "B: no diversity/vendi / diversity/answer_entropy logged; skipped" in html


def add_attention(run: Path, steps=(2, 30), layers: int = 4, heads: int = 3) -> dict[int, list[list[float]]]:
    """Write attention_entropy.jsonl: entropy falling with depth and with the step."""
    data = {s: [[round(2.0 - 0.3 * layer - 0.01 * s + 0.05 * head, 6) for head in range(heads)] for layer in range(layers)]
            for s in steps}
    append_jsonl(run / "attention_entropy.jsonl", [{"step": s, "entropy": m} for s, m in data.items()])
    return data


def test_attention_heatmap_section(two_runs: list[Path], tmp_path: Path) -> None:
    from entropy_rl.report.instruments import ATTENTION_FILE
    from entropy_rl.train.attention_probe import ATTENTION_FILE as WRITTEN

    assert ATTENTION_FILE == WRITTEN  # the report reads the file the trainer writes
    html = write_report(two_runs, tmp_path / "out").read_text()
    assert "Attention entropy per layer and head" not in html
    data = add_attention(two_runs[0])
    append_jsonl(two_runs[0] / "attention_entropy.jsonl", [{"step": 40, "entropy": [[1.0], [1.0, 2.0]]}])  # ragged
    html = write_report(two_runs, tmp_path / "out", labels=["A", "B"]).read_text()
    assert "<h2>Attention entropy per layer and head</h2>" in html and html.count(IMG) == 8
    assert (tmp_path / "out" / "fig_attention_entropy.png").stat().st_size > 5_000
    first = sum(v for row in data[2] for v in row) / 12
    last = sum(v for row in data[30] for v in row) / 12
    # the lowest head at the last step: layer 3, head 0 (2.0 - 0.9 - 0.3 + 0 = 0.8)
    assert f"A: mean {first:.3f} nats at step 2, {last:.3f} at step 30; lowest head at step 30: layer 3 head 0, 0.800" in html
    assert "A: attention_entropy.jsonl: 1 malformed lines skipped" in html
    assert "B: no attention_entropy.jsonl (train.attention_entropy_every = 0); skipped" in html
