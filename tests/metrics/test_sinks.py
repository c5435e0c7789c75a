"""Tests for entropy_rl.metrics.sinks: JSONL round-trip and kill-safety, the console line, optional extras."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest
import torch

from entropy_rl.metrics.sinks import JsonlSink, MetricSink, MultiSink, StdoutSink, TensorBoardSink, WandbSink, read_jsonl


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
