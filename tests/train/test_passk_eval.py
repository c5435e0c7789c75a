"""`entropy-rl eval --k`: result files beside the run, the cache keyed by every setting (the weights by content),
the warm start's curve and the crossover k, and where results may be written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from entropy_rl.cli import main
from entropy_rl.metrics import passk
from entropy_rl.metrics.dynamics import pass_at_k
from entropy_rl.train.checkpoint import latest_checkpoint
from entropy_rl.train.evaluate import model_fingerprint, result_home
from entropy_rl.train.loop import train
from entropy_rl.train.rundir import clear_run_dir, write_marker

EVAL = ["--problems", "4", "--seed", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, warm_model_dir: Path) -> Path:
    """A 2-step run of the tiny model, checkpointed (module scope: trained once)."""
    from entropy_rl.train.config import load_config

    from tiny_setup import TINY

    run = tmp_path_factory.mktemp("passk") / "run"
    train(load_config(None, TINY + [f"model.path={warm_model_dir}", "train.steps=2", "optim.lr=0.05"]), run, progress=False)
    return run


def test_eval_writes_a_keyed_result_and_reuses_it(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["eval", str(run), "--k", "1,2,...,8", *EVAL]) == 0  # --samples defaults to the largest k
    first, err = capsys.readouterr()
    out = json.loads(first)
    assert list(out) == ["eval/accuracy", "eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/pass@8",
                         "eval/maj@2", "eval/maj@4", "eval/maj@8"]
    [path] = sorted((run / "eval").glob("passk_*.json"))
    assert f"wrote {path}" in err
    doc = json.loads(path.read_text())
    s = doc["settings"]
    assert path.name == f"passk_{passk.settings_key(s)}.json"
    assert s["samples"] == 8 and s["ks"] == [1, 2, 4, 8] and s["problems"] == 4 and s["seed"] == 1
    assert s["task"] == "arithmetic" and s["model_sha256"] == model_fingerprint(latest_checkpoint(run) / "model")
    assert doc["role"] == "checkpoint" and doc["step"] == 2
    counts = doc["correct_per_problem"]
    assert len(counts) == 4 and all(0 <= c <= 8 for c in counts)
    for k in (1, 2, 4, 8):  # the stored curve is the unbiased estimator of the stored counts
        assert doc["pass_at_k"][str(k)] == pytest.approx(sum(pass_at_k(8, c, k) for c in counts) / 4)
    mtime = path.stat().st_mtime_ns
    assert main(["eval", str(run), "--k", "1,2,4,8", *EVAL]) == 0  # the same settings, spelled out
    again, err = capsys.readouterr()
    assert json.loads(again) == out and f"reusing {path}" in err and path.stat().st_mtime_ns == mtime
    assert main(["eval", str(run), "--k", "1,2,4,8", *EVAL, "--temperature", "0.5"]) == 0  # another setting
    assert "wrote" in capsys.readouterr().err and len(list((run / "eval").glob("passk_*.json"))) == 2
    assert main(["eval", str(run), "--k", "1,2,4,8", *EVAL, "--no-cache"]) == 0  # recomputed, same numbers
    again, err = capsys.readouterr()
    assert json.loads(again) == out and "reusing" not in err
    clear_run_dir(run, "train")  # what --overwrite does: eval/ is the toolkit's entry and goes with the run
    assert not (run / "eval").exists()


def test_changed_weights_miss_the_cache(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["eval", str(run), "--samples", "2", *EVAL]) == 0
    capsys.readouterr()
    weights = latest_checkpoint(run) / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same content, new file: still a hit
    assert main(["eval", str(run), "--samples", "2", *EVAL]) == 0
    assert "reusing" in capsys.readouterr().err
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    assert main(["eval", str(run), "--samples", "2", *EVAL]) == 0
    assert "wrote" in capsys.readouterr().err and len(list((run / "eval").glob("passk_*.json"))) == 2


def test_warm_start_curve_and_crossover(trained: Path, tmp_path: Path, warm_model_dir: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    args = ["--k", "1,2,4,8", *EVAL]
    assert main(["eval", str(run), "--warm-start", *args]) == 0  # model.path: the unmarked warm model
    ws_out, err = capsys.readouterr()
    assert f"evaluating {warm_model_dir}" in err
    assert main(["eval", str(run), *args]) == 0
    run_out, err = capsys.readouterr()
    results = passk.load_results(run / "eval")
    ws = [r for r in results if r["role"] == "warm start"]
    assert len(ws) == 1 and ws[0]["settings"]["model_sha256"] == model_fingerprint(warm_model_dir)
    base = {k: json.loads(ws_out)[f"eval/pass@{k}"] for k in (1, 2, 4, 8)}
    mine = {k: json.loads(run_out)[f"eval/pass@{k}"] for k in (1, 2, 4, 8)}
    assert f"vs the warm start: {passk.describe_crossover(base, mine)}" in err
    assert main(["eval", str(run), "--k", "1,2,4,8", "--problems", "4", "--seed", "2"]) == 0  # another seed: no base
    assert "vs the warm start" not in capsys.readouterr().err
    assert main(["eval", str(warm_model_dir), "--warm-start"]) == 2
    assert "--warm-start needs a run directory" in capsys.readouterr().err


def test_where_results_go(trained: Path, tmp_path: Path, warm_model_dir: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt_model = latest_checkpoint(run) / "model"
    assert result_home(ckpt_model, None) == (run / "eval", "checkpoint", 2)
    assert result_home(ckpt_model, run) == (run / "eval", "checkpoint", 2)
    shutil.copytree(warm_model_dir, run / "sft" / "model")
    assert result_home(run / "sft" / "model", None) == (run / "eval", "warm start", None)
    sft_out = tmp_path / "sft_out"  # an `entropy-rl sft --out` directory: its own eval/
    shutil.copytree(warm_model_dir, sft_out)
    write_marker(sft_out, "sft")
    assert result_home(sft_out, None) == (sft_out / "eval", "warm start", None)
    assert result_home(warm_model_dir, None) == (None, "model", None)  # not the toolkit's: never written into
    assert model_fingerprint(sft_out) == model_fingerprint(warm_model_dir)  # the marker is not the model
    before = sorted(p.name for p in warm_model_dir.iterdir())
    assert main(["eval", str(warm_model_dir), "--task", "arithmetic", "--samples", "2", *EVAL]) == 0
    assert "pass --out DIR" in capsys.readouterr().err and sorted(p.name for p in warm_model_dir.iterdir()) == before
    assert main(["eval", str(warm_model_dir), "--task", "arithmetic", "--samples", "2", *EVAL,
                 "--out", str(tmp_path / "mine")]) == 0
    assert len(passk.load_results(tmp_path / "mine")) == 1 and "wrote" in capsys.readouterr().err


def test_bad_k_is_one_line(trained: Path, capsys) -> None:
    assert main(["eval", str(trained), "--k", "1,2,16", "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert "--k 16 needs at least 16 samples per problem; --samples is 8" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["eval", str(trained), "--k", "4,2"])
    assert "argument --k: k values must be strictly ascending" in capsys.readouterr().err


def test_device_defaults_to_the_runs_and_only_a_gpu_changes_the_key(trained: Path, warm_model_dir: Path, capsys) -> None:
    import torch

    from entropy_rl.train.evaluate import plan_passk_eval

    quiet = dict(ks=[1, 2], problems=2, log=lambda line: None)
    run_plan = plan_passk_eval(trained, **quiet)  # the run's train.device (cpu in the tiny config)
    assert run_plan.device == "cpu" and "device" not in run_plan.settings  # CPU results keep their keys
    assert plan_passk_eval(trained, device="cpu", **quiet).settings == run_plan.settings
    auto = plan_passk_eval(warm_model_dir, device=None, **quiet)  # a model directory: auto
    assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        gpu = plan_passk_eval(trained, device="cuda", **quiet)
        assert gpu.settings["device"] == "cuda" and passk.settings_key(gpu.settings) != passk.settings_key(run_plan.settings)
    else:
        assert main(["eval", str(trained), "--device", "cuda", *EVAL]) == 2
        err = capsys.readouterr().err.strip()
        assert "--device: cuda requested but no CUDA device is available" in err and len(err.splitlines()) == 1
