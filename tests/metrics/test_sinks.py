"""Tests for entropy_rl.metrics.sinks: JSONL round-trip and kill-safety, the console line, optional extras."""

from __future__ import annotations

import io
import json
import math
import sys
import types

import pytest
import torch

from entropy_rl.metrics.sinks import (JsonlSink, MetricSink, MultiSink, StdoutSink, TableSink, TensorBoardSink, WandbSink,
                                      append_jsonl, read_jsonl, truncate_jsonl)


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # parent is created
    sink = JsonlSink(path)
    sink.log(0, {"reward/mean": 0.25, "entropy/token_mean": torch.tensor(0.5), "train/tokens": 128})
    sink.log(1, {"reward/mean": float("nan"), "policy/grad_norm": float("inf"), "adv/mean": -float("inf")})
    sink.close()
    sink.close()  # idempotent
    lines = path.read_text().splitlines()
    # keys sorted, non-finite as strings, step included
    assert lines[0] == '{"entropy/token_mean": 0.5, "reward/mean": 0.25, "step": 0, "train/tokens": 128}'
    assert json.loads(lines[1]) == {"adv/mean": "-inf", "policy/grad_norm": "inf", "reward/mean": "nan", "step": 1}
    recs = read_jsonl(path)
    assert recs[0] == {"entropy/token_mean": 0.5, "reward/mean": 0.25, "step": 0, "train/tokens": 128}
    assert math.isnan(recs[1]["reward/mean"])
    assert recs[1]["policy/grad_norm"] == math.inf and recs[1]["adv/mean"] == -math.inf
    with pytest.raises(ValueError, match="closed"):
        sink.log(2, {})


def test_jsonl_rejects_non_numbers(tmp_path):
    sink = JsonlSink(tmp_path / "m.jsonl")
    with pytest.raises(TypeError, match="policy/lr"):
        sink.log(0, {"policy/lr": "fast"})
    sink.close()


def test_read_jsonl_skips_partial_last_line_with_warning(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0, "reward/mean": 0.1}\n\n{"step": 1, "reward/mean": 0.2}\n{"step": 2, "rew')
    with pytest.warns(UserWarning, match=r"m\.jsonl:4"):
        recs = read_jsonl(path)
    assert [r["step"] for r in recs] == [0, 1]


def test_read_jsonl_corrupt_middle_line_raises_with_line_number(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:3"):
        read_jsonl(path)
    path.write_text('{"step": 0}\n[1, 2]\n{"step": 3}\n')  # valid JSON, but not an object
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        read_jsonl(path)


def test_jsonl_resume_after_kill_drops_partial_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "rew')  # killed mid-write
    with pytest.warns(UserWarning, match=r"m\.jsonl:2"):
        sink = JsonlSink(path)
    sink.log(1, {"reward/mean": 0.5})
    sink.close()
    assert read_jsonl(path) == [{"step": 0}, {"reward/mean": 0.5, "step": 1}]


def test_stdout_line_format(capsys):
    sink = StdoutSink(total_steps=300)
    metrics = {
        "reward/mean": 0.3121,
        "entropy/token_mean": 0.2139,
        "dynamics/cov_logp_adv": 0.00312,
        "policy/approx_kl": 0.001234,
        "policy/clipfrac": 0.0211,
        "timing/step_s": 1.4213,
        "policy/loss": 3.0,  # not on the console line
    }
    sink.log(12, metrics)
    out = capsys.readouterr().out
    assert out == "step 12/300 | reward 0.312 | entropy 0.214 | cov 0.0031 | kl 0.0012 | clip 0.021 | 1.42 s/step\n"
    # missing fields are skipped
    assert sink.format(3, {"entropy/token_mean": 1.0}) == "step 3/300 | entropy 1.000"
    buf = io.StringIO()
    StdoutSink(10, stream=buf).log(1, {"timing/step_s": 0.5})
    assert buf.getvalue() == "step 1/10 | 0.50 s/step\n"


class _Recorder:
    def __init__(self, fail_close: bool = False) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.closed = False
        self.fail_close = fail_close

    def log(self, step, metrics):
        self.logged.append((step, dict(metrics)))

    def close(self):
        self.closed = True
        if self.fail_close:
            raise RuntimeError("boom")


def test_multisink_fans_out_and_closes_all():
    a, b = _Recorder(fail_close=True), _Recorder()
    sink = MultiSink([a, b])
    assert isinstance(sink, MetricSink) and isinstance(a, MetricSink)
    sink.log(4, {"reward/mean": 1.0})
    assert a.logged == b.logged == [(4, {"reward/mean": 1.0})]
    with pytest.raises(RuntimeError, match="boom"):
        sink.close()
    assert a.closed and b.closed


def test_optional_sinks_name_their_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match=r"pip install entropy-rl\[wandb\]"):
        WandbSink(project="p")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install entropy-rl\[tensorboard\]"):
        TensorBoardSink(tmp_path)


def test_stdout_line_shows_evals_including_the_step_0_row():
    sink = StdoutSink(total_steps=300)
    evals = {"eval/accuracy": 0.3, "eval/pass@1": 0.3121, "eval/pass@2": 0.5, "eval/pass@8": 0.69, "timing/eval_s": 2.0}
    assert sink.format(0, evals) == "step 0/300 | pass@1 0.312 | pass@8 0.690"
    assert sink.format(50, {"reward/mean": 0.5, **evals, "timing/step_s": 1.0}) == \
        "step 50/300 | reward 0.500 | pass@1 0.312 | pass@8 0.690 | 1.00 s/step"
    assert sink.format(1, {"eval/pass@1": 0.25}) == "step 1/300 | pass@1 0.250"


def test_append_jsonl_keeps_text_and_writes_non_finite_numbers_as_strings(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"step": 1, "completion": "a"}\n{"step": 2, "comp')  # a killed writer's partial line
    with pytest.warns(UserWarning, match=r"c\.jsonl:2"):
        append_jsonl(path, [{"step": 2, "completion": "nan", "reward": math.nan, "entropy": [0.5, math.inf]}])
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    assert read_jsonl(path, decode_nonfinite=False) == [
        {"step": 1, "completion": "a"}, {"step": 2, "completion": "nan", "reward": "nan", "entropy": [0.5, "inf"]}]
    assert read_jsonl(path)[1]["completion"] != "nan"  # what the metrics decoding would do to a model's "nan"


def test_truncate_jsonl_keeps_earlier_lines_byte_for_byte(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = ['{"step": 1, "completion": "nan", "x": 1.0}', '{"step": 2, "completion": "é"}', '{"step": 3}']
    path.write_text("\n".join(lines) + '\n{"step": 4, "compl')
    with pytest.warns(UserWarning):
        truncate_jsonl(path, 2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    truncate_jsonl(tmp_path / "missing.jsonl", 0)  # nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


class _TableRecorder(_Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple] = []

    def log_table(self, step, key, columns, rows):
        self.tables.append((step, key, list(columns), [list(r) for r in rows]))


def test_multisink_forwards_tables_only_to_table_sinks():
    plain, tabled = _Recorder(), _TableRecorder()
    assert not isinstance(plain, TableSink) and isinstance(tabled, TableSink)
    sink = MultiSink([plain, tabled])
    assert isinstance(sink, TableSink)
    sink.log_table(3, "completions", ["a", "b"], [[1, "x"]])
    assert tabled.tables == [(3, "completions", ["a", "b"], [[1, "x"]])] and plain.logged == []


def test_wandb_sink_logs_metrics_and_tables(monkeypatch):
    calls = {}

    class Run:
        def __init__(self):
            self.logged = []

        def log(self, data, step):
            self.logged.append((step, data))

        def finish(self):
            calls["finished"] = True

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    run = Run()

    def init(**kwargs):
        calls["init"] = kwargs
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Table=Table))
    sink = WandbSink(project="p", config={"a": 1}, mode="offline")
    assert calls["init"] == {"project": "p", "name": None, "config": {"a": 1}, "mode": "offline"}
    sink.log(2, {"reward/mean": 0.5})
    sink.log_table(2, "completions", ("prompt", "completion"), [("1+1=", "<script>2</script>")])
    sink.close()
    assert run.logged[0] == (2, {"reward/mean": 0.5})
    step, data = run.logged[1]
    assert step == 2 and data["completions"].columns == ["prompt", "completion"]
    assert data["completions"].data == [["1+1=", "<script>2</script>"]]  # W&B renders table cells as text
    assert calls["finished"] and isinstance(sink, TableSink)
