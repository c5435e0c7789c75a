"""Completions per second of our trainer and of TRL's `GRPOTrainer` on the same work, in one process, side by side.

The same random-init tiny Qwen2 (the CPU demo's shape: hidden 128, 4 layers, character tokenizer), the same
prompts in the same order (countdown, the problems our trainer draws at steps 1..N), the same reward (the task's
verifier), group size G, completion length, temperature, AdamW (constant lr, clip 1.0), one optimizer step per
rollout batch of P x G completions (one mini-batch, one micro-batch, one pass), token-mean loss with a 0.2 clip
(our `ppo_clip`, TRL's `loss_type="dapo"`), no KL, no reference model. TRL runs with
`use_cpu=True, bf16=False, use_vllm=False`. Not the same: our trainer also runs its pre-update scoring pass
(old log-probs and H_old before the update, on every step; TRL skips old log-probs when generation and the
optimizer step are aligned) and logs its metrics; the dynamics probe is off (TRL has none).

Each trainer runs `--steps` steps; the first is warm-up and dropped. Step times: ours from its `timing/*`
metrics, TRL's from a callback (on_step_begin -> on_step_end), both read from one clock: `--clock cpu` (default)
is this process's CPU time (`time.process_time`, which other jobs on a busy machine disturb far less than wall
time; with 1 torch thread it is the work done), `--clock wall` is `time.perf_counter`. Prints completions/s of
both, the ratio, and our step split (generation / scoring forward / update = forward + backward + optimizer step
/ other).

    python benchmarks/vs_trl.py [--steps 6] [--prompts 16] [--group 8] [--tokens 16] [--threads 1] [--clock cpu]
                                [--engine-params '{share_prefill: false}']
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

TASK = ["task.name=countdown"]


def overrides(model_dir: Path, a: argparse.Namespace) -> list[str]:
    """Our trainer's config for the benchmark (no SFT, eval, checkpoints, probe or completion log)."""
    return TASK + [f"model.path={model_dir}", "sft.enabled=false", f"rollout.prompts_per_step={a.prompts}",
                   f"rollout.group_size={a.group}", f"rollout.max_new_tokens={a.tokens}", "optim.lr=2e-4",
                   "optim.warmup_steps=0", f"train.steps={a.steps}", "train.seed=0", "train.eval_every=0",
                   "train.save_every=0", "train.dynamics_every=0", "train.sinks=[jsonl]", f"train.threads={a.threads}",
                   "train.log_completions_every=0", "algorithm.method=ppo_clip", "algorithm.loss_agg_mode=token-mean",
                   "algorithm.kl_coef=0.0", "optim.mini_batches=1", "optim.epochs=1", "optim.micro_batch_size=0",
                   f"rollout.engine_params={a.engine_params}"]


class CpuClock:
    """Stands in for the `time` module in `entropy_rl.train.loop`, whose `timed` reads `time.perf_counter`."""

    perf_counter = staticmethod(time.process_time)


def build_model(out: Path, a: argparse.Namespace) -> Path:
    """OUT/model: the demo-shaped random-init model and its tokenizer, saved once."""
    from entropy_rl.models import save_pretrained
    from entropy_rl.tasks import make_task
    from entropy_rl.train.config import load_config
    from entropy_rl.train.loop import initial_model

    cfg = load_config("configs/demo_cpu.yaml", TASK)
    model, tok = initial_model(cfg, make_task(cfg.task.name, **cfg.task.params))
    save_pretrained(model, tok, out / "model")
    return out / "model"


def run_ours(out: Path, model_dir: Path, a: argparse.Namespace) -> list[dict[str, float]]:
    """Our trainer; its per-step metrics rows (steps 1..N)."""
    import entropy_rl.train.loop as loop
    from entropy_rl.metrics.sinks import read_jsonl
    from entropy_rl.train.config import load_config

    if a.clock == "cpu":
        loop.time = CpuClock  # type: ignore[assignment]  (this process only: the step timers read CPU time)
    loop.train(load_config("configs/demo_cpu.yaml", overrides(model_dir, a)), out / "ours", progress=False)
    return [r for r in read_jsonl(out / "ours" / "metrics.jsonl") if r.get("step", 0) >= 1]


def run_trl(out: Path, model_dir: Path, a: argparse.Namespace) -> list[float]:
    """TRL's GRPOTrainer on our trainer's prompts of steps 1..N in order; its step wall times (s)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from entropy_rl.models.build import load_pretrained
    from entropy_rl.tasks import make_task
    from entropy_rl.train.batch import seed_for

    task = make_task("countdown")
    problems = [p for step in range(1, a.steps + 1) for p in task.prompts("train", a.prompts, seed=seed_for("prompts", 0, step))]
    data = Dataset.from_list([{"prompt": p.prompt, "index": i} for i, p in enumerate(problems)])

    def reward(prompts: list[str], completions: list[str], index: list[int], **kwargs: Any) -> list[float]:
        return [task.reward(problems[i], c).score for i, c in zip(index, completions)]

    clock = time.process_time if a.clock == "cpu" else time.perf_counter

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.t0 = clock()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(clock() - self.t0)

    args = GRPOConfig(output_dir=str(out / "trl"), use_cpu=True, bf16=False, use_vllm=False, seed=0,
                      per_device_train_batch_size=a.prompts * a.group, gradient_accumulation_steps=1,
                      num_generations=a.group, max_completion_length=a.tokens, temperature=1.0, top_p=1.0,
                      top_k=0, max_steps=a.steps, learning_rate=2e-4, lr_scheduler_type="constant", weight_decay=0.0,
                      max_grad_norm=1.0, shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to=[],
                      dataloader_num_workers=0, loss_type="dapo", beta=0.0, num_iterations=1)
    model, tok = load_pretrained(model_dir)
    tok.padding_side = "left"
    timer = StepTimes()
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=reward, args=args, train_dataset=data,
                          callbacks=[timer])
    trainer.train()
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--order", default="ours,trl", help="which trainer runs first")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--engine-params", default="{}", help="our trainer's rollout.engine_params (YAML mapping), "
                        "e.g. '{share_prefill: false}'")
    a = parser.parse_args()
    if a.steps < 2:
        parser.error("--steps must be >= 2 (the first step is dropped as warm-up)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model_dir = build_model(out, a)
        results: dict[str, Any] = {}
        for name in a.order.split(","):
            results[name] = run_ours(out, model_dir, a) if name == "ours" else run_trl(out, model_dir, a)
    rows = results["ours"][1:]
    ours_s = statistics.mean(r["timing/step_s"] for r in rows)
    trl_s = statistics.mean(results["trl"][1:])
    n = a.prompts * a.group
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{n} completions/step (P={a.prompts} x G={a.group}, <= {a.tokens} tokens), {a.steps - 1} timed steps each, "
          f"{a.threads} thread(s), {a.clock} clock, order {a.order}, load average {load}")
    print(f"  ours: {ours_s:.3f} s/step, {n / ours_s:.1f} completions/s")
    print(f"  TRL:  {trl_s:.3f} s/step, {n / trl_s:.1f} completions/s")
    print(f"  ours / TRL: {trl_s / ours_s:.2f}x")
    split = {"generation": "timing/generate_s", "scoring forward": "timing/score_s",
             "update (fwd + bwd + step)": "timing/update_s"}
    parts = {k: statistics.mean(r[v] for r in rows) for k, v in split.items()}
    parts["other"] = ours_s - sum(parts.values())
    print("  our step: " + ", ".join(f"{k} {100 * v / ours_s:.1f}%" for k, v in parts.items())
          + f"; model compute {100 * (ours_s - parts['other']) / ours_s:.1f}%")


if __name__ == "__main__":
    main()
