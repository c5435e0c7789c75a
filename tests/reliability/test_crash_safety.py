"""Crash safety: SIGKILL checkpoint writers, a training run and an SFT warm start at random moments; every kill
must leave a loadable latest checkpoint whose checksums verify, and `entropy-rl train --resume` must finish the
run with one metrics row per step.

Numbers from these tests are quoted in docs/reliability.md (run with `-s` to see them).
"""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models import load_pretrained
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import load_config, save_config
from entropy_rl.train.loop import train

HERE = Path(__file__).resolve().parent
KILL_TRIALS = 30
HIDDEN = (".tmp_", ".old_", ".del_")
hf_logging.disable_progress_bar()  # one "Loading weights" bar per load is noise


def hidden_entries(run_dir: Path) -> set[str]:
    root = ckpt.checkpoint_dir(run_dir)
    return {p.name for p in root.iterdir() if p.name.startswith(HIDDEN)} if root.is_dir() else set()


def assert_loads(c: Path) -> int:
    """Fully load checkpoint `c` (model + trainer state) and check both belong to the step in its name."""
    step = int(c.name.split("_")[1])
    ckpt.verify_checkpoint(c)  # manifest, file set and sha256 of every file
    model, _ = load_pretrained(c / "model")
    state = ckpt.load_trainer_state(c)
    assert state["step"] == step, c
    assert model.model.embed_tokens.weight[0, 0].item() == float(step), f"{c}: weights of another step"
    assert {"optimizer", "scheduler", "rng"} <= set(state) and state["optimizer"]["state"], c
    return step


def test_sigkill_during_checkpoint_writes_never_leaves_a_bad_latest(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = subprocess.Popen([sys.executable, str(HERE / "ckpt_writer.py"), str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1)
    rng = random.Random(0)
    counts = {"mid_write": 0, "mid_swap": 0, "mid_prune": 0, "between": 0}
    try:
        line = server.stdout.readline()
        assert line.startswith("ready"), line
        save_s = float(line.split()[1])
        last_step, stale_before = 0, set()
        for trial in range(KILL_TRIALS):
            server.stdin.write("go\n")
            pid = int(server.stdout.readline().split()[1])
            # Delays spread over ~0-3 saves, so kills land in every phase of save_checkpoint (tmp write,
            # fsync, swap renames, prune), not just between saves.
            time.sleep(rng.uniform(0.0, 3.0 * save_s))
            subprocess.run(["kill", "-9", str(pid)], check=True)
            server.stdin.write("reap\n")
            assert server.stdout.readline().split() == ["reaped", str(signal.SIGKILL)], "writer died on its own"

            hidden = hidden_entries(run_dir)
            kinds = {n[:5] for n in hidden - stale_before}
            counts["mid_write" if ".tmp_" in kinds else "mid_swap" if ".old_" in kinds else
                   "mid_prune" if ".del_" in kinds else "between"] += 1
            latest = ckpt.latest_checkpoint(run_dir)
            assert latest is not None
            for c in ckpt.list_checkpoints(run_dir):  # no half-written dir is ever listed
                assert_loads(c)
            step = assert_loads(latest)
            assert step >= last_step - 1, "latest checkpoint went backwards"  # -1: a killed same-step swap
            if step > last_step:  # this writer completed a save, so its first save cleaned the older leftovers
                assert not (stale_before & hidden), f"stale dirs not cleaned: {stale_before & hidden}"
            last_step, stale_before = max(step, last_step), hidden
        server.stdin.write("quit\n")
        server.wait(timeout=30)
    finally:
        server.kill()
        server.wait()
    # One more save in this process cleans every leftover (or restores an interrupted swap) and loads.
    model, tok = load_pretrained(ckpt.latest_checkpoint(run_dir) / "model")
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(run_dir))
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 0] = float(last_step + 1)
    ckpt.save_checkpoint(run_dir, last_step + 1, model, tok, {**state, "step": last_step + 1})
    assert hidden_entries(run_dir) == set()
    assert assert_loads(ckpt.latest_checkpoint(run_dir)) == last_step + 1
    print(f"\n[crash-safety] {KILL_TRIALS} SIGKILLs, one save = {save_s * 1e3:.0f} ms, kill phases {counts}, "
          f"last step {last_step}")
    assert counts["mid_write"] >= KILL_TRIALS // 4, counts  # the test really hits writes in progress


def test_recover_interrupted_restores_a_half_swapped_resave(tmp_path: Path) -> None:
    """A kill between the two renames of a same-step re-save leaves only `.old_step_N_<pid>`: it is restored."""
    root = ckpt.checkpoint_dir(tmp_path)
    old = root / ".old_step_000004_999999999"  # pid that cannot exist (> pid_max)
    old.mkdir(parents=True)
    (old / ckpt.COMPLETE).write_text("4")
    (root / ".tmp_step_000005_999999999").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) is None  # hidden entries are never listed
    ckpt.recover_interrupted(tmp_path)
    assert [p.name for p in root.iterdir()] == ["step_000004"]


def test_recover_interrupted_leaves_a_live_writer_alone(tmp_path: Path) -> None:
    root = ckpt.checkpoint_dir(tmp_path)
    live = root / f".tmp_step_000001_{1}"  # pid 1 is always alive
    live.mkdir(parents=True)
    ckpt.recover_interrupted(tmp_path)
    assert live.is_dir()


def test_sigkilled_training_resumes_to_one_row_per_step(warm_model_dir: Path, tmp_path: Path) -> None:
    from tiny_setup import TINY

    steps = 30
    cfg_path = tmp_path / "tiny.yaml"
    cfg = load_config(None, TINY + [f"model.path={warm_model_dir}", f"train.steps={steps}", "train.save_every=1"])
    save_config(cfg, cfg_path)
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    rng = random.Random(1)
    partial_lines, kill_steps, step_times = 0, [], []

    def launch(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "entropy_rl", "train", *args, "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    cmds = [(str(cfg_path), "--run-dir", str(run_dir)), ("--resume", str(run_dir)), ("--resume", str(run_dir))]
    done = 0  # newest checkpointed step
    for args in cmds:
        proc = launch(*args)
        # Kill only after this process has checkpointed a new step (so every kill lands mid-run, after
        # startup), then after a random 0-2 step times (a step is ~50 ms here, most of it rollout and update, a
        # few ms the checkpoint write), so kills land mid-rollout, mid-update, mid-log or mid-save.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            latest = ckpt.latest_checkpoint(run_dir)
            if latest is not None and int(latest.name.split("_")[1]) > done:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-2000:]}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the median step so far: the first step after a (re)start is 2-4x slower (warm-up), and sleeping up
            # to twice its time let a resumed 30-step run finish before the kill
            step_s = statistics.median(r["timing/step_s"] for r in read_jsonl(metrics) if "timing/step_s" in r)
        step_times.append(step_s)
        time.sleep(rng.uniform(0.0, 2.0 * step_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = read_jsonl(metrics)  # must stay readable after every kill
        partial_lines += len(caught)
        kill_steps.append(len(rows))
        done = int(ckpt.latest_checkpoint(run_dir).name.split("_")[1])
        assert done < steps, "the run finished before the kill"

    t0 = time.perf_counter()
    final = launch("--resume", str(run_dir))
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-3000:]
    rows = read_jsonl(metrics)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert ckpt.latest_checkpoint(run_dir).name == f"step_{steps:06d}"
    assert hidden_entries(run_dir) == set()
    # Exact resume: the killed-and-resumed run logs what an uninterrupted run logs (wall-clock timings aside).
    train(cfg, tmp_path / "full", progress=False)
    untimed = lambda rs: [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rs]  # noqa: E731
    assert untimed(rows) == untimed(read_jsonl(tmp_path / "full" / "metrics.jsonl"))
    print(f"\n[crash-safety] training SIGKILLed {len(cmds)}x (rows at kill: {kill_steps}, partial last lines: "
          f"{partial_lines}, step time {1e3 * max(step_times):.0f} ms); resume finished in {time.perf_counter() - t0:.1f} s with steps 1..{steps}")


def test_sigkilled_sft_warm_start_resumes_without_repeating_steps(tmp_path: Path) -> None:
    """A kill during SFT used to restart SFT at step 0 on --resume and log its rows twice."""
    from tiny_setup import TINY

    cfg = load_config(None, TINY + ["sft.enabled=true", "sft.max_steps=40", "sft.eval_every=2", "sft.eval_problems=8",
                                    "sft.batch_size=16", "sft.target_accuracy=1.0", "train.steps=1"])
    cfg_path, run_dir = tmp_path / "sft.yaml", tmp_path / "run"
    save_config(cfg, cfg_path)
    sft_metrics = run_dir / "sft_metrics.jsonl"
    rng = random.Random(2)
    kills = []
    # 40 steps: with 20, a fast machine (CI, idle) sometimes finished SFT inside the 0-0.5 s before the second kill
    for args in [(str(cfg_path), "--run-dir", str(run_dir)), ("--resume", str(run_dir))]:
        proc = subprocess.Popen([sys.executable, "-m", "entropy_rl", "train", *args, "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = max((r["step"] for r in read_jsonl(sft_metrics)), default=0) if sft_metrics.exists() else 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # a new SFT checkpoint, then 0-1 more evaluations
            latest = ckpt.latest_checkpoint(run_dir / "sft")
            if latest is not None and ckpt.step_of(latest) > done:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-2000:]}"
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kills.append([r["step"] for r in read_jsonl(sft_metrics)][-1])
        assert not (run_dir / "sft" / ckpt.COMPLETE).exists(), "SFT finished before the kill"
    final = subprocess.run([sys.executable, "-m", "entropy_rl", "train", "--resume", str(run_dir), "--no-progress"],
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming the SFT warm start from" in final.stdout
    rows = read_jsonl(sft_metrics)
    assert [r["step"] for r in rows] == list(range(2, 41, 2))
    train(cfg, tmp_path / "full", progress=False)
    assert rows == read_jsonl(tmp_path / "full" / "sft_metrics.jsonl")  # no timings in SFT rows: all equal
    print(f"\n[crash-safety] SFT SIGKILLed {len(kills)}x (last logged SFT step at the kills: {kills}); resumed to "
          f"steps 2..40 once each, equal to an uninterrupted warm start")
