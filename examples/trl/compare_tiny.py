"""Our trainer vs the TRL adapter on the same tiny CPU setup, seed and prompts: entropy and reward per step.

    python examples/trl/compare_tiny.py --method clip_cov --steps 20 --out /tmp/trl_vs_ours

1. Warm start (cached in OUT/warm): a tiny Qwen2 model SFT'd on 1-digit addition to ~30% sampled accuracy,
   exactly as the test suite's `warm_model_dir`.
2. Ours: `entropy_rl.train.loop.train` from the warm model (OUT/ours/metrics.jsonl).
3. TRL: `EntropyRLGRPOTrainer` from the same model with the same prompts in the same order (the problems our
   trainer draws at steps 1..N, unshuffled), group size, length, temperature, optimizer (AdamW, constant lr,
   the same clipping) and method (OUT/trl/trainer_state.json).
4. Prints entropy/token_mean and reward/mean of both per step (markdown).

The two runs share every setting but not their random streams, so their samples differ. With --same-samples
both reseed torch right before each step's generation (seed * 7919 + step) and TRL's shuffle of the generation
batch is switched off (a patch of this script only), so identical policies draw identical samples: the curves
then stay equal until floating-point differences (TRL adds 1e-4 to the group std, we 1e-6; batched kernels)
change a sample. See docs/LOG.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

P, G, T = 8, 8, 6  # prompts per step, group size, max new tokens
TASK = ["task.name=arithmetic", "task.params={ops: '+', max_digits: 1}"]
MODEL = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
         "model.intermediate_size=64"]


def warm_start(out: Path, seed: int) -> Path:
    """OUT/warm: the SFT'd tiny model (built once)."""
    import torch

    from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model, save_pretrained
    from entropy_rl.tasks import make_task
    from entropy_rl.train.config import load_config
    from entropy_rl.train.loop import rollout_sampling
    from entropy_rl.train.sft import run_sft

    path = out / "warm"
    if (path / "config.json").is_file():
        return path
    cfg = load_config(None, TASK + MODEL + ["sft.max_steps=300", "sft.eval_every=50", "sft.batch_size=64",
                                            "sft.eval_problems=64", "sft.lr=0.003", "sft.target_accuracy=0.3",
                                            f"rollout.max_new_tokens={T}"])
    task = make_task(cfg.task.name, **cfg.task.params)
    tok = build_char_tokenizer(task.alphabet)
    spec = TinyModelSpec(**{k: getattr(cfg.model, k) for k in TinyModelSpec.__dataclass_fields__})
    model = build_tiny_model(spec, tok, seed=seed)
    torch.manual_seed(seed)
    run_sft(model, tok, task, cfg.sft, rollout_sampling(cfg), seed, lambda step, m: None)
    save_pretrained(model, tok, path)
    return path


def overrides(warm: Path, method: str, params: dict[str, Any], steps: int, seed: int, lr: float) -> list[str]:
    """Our trainer's config: the tiny setup, no SFT (the warm model is the start), no eval, no probe."""
    return TASK + [f"model.path={warm}", "sft.enabled=false", f"rollout.prompts_per_step={P}",
                   f"rollout.group_size={G}", f"rollout.max_new_tokens={T}", f"optim.lr={lr}", f"train.steps={steps}",
                   f"train.seed={seed}", "train.eval_every=0", "train.save_every=0", "train.dynamics_every=0",
                   "train.sinks=[jsonl]", "train.threads=1", "train.log_completions_every=0",
                   f"algorithm.method={method}", f"algorithm.method_params={json.dumps(params)}"]


def reseeding(fn: Any, seed: int) -> Any:
    """`fn` that first seeds torch with seed * 7919 + k at its k-th call (k = 1, 2, ...): one call per step."""
    import torch

    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        torch.manual_seed(seed * 7919 + calls[0])
        return fn(*args, **kwargs)

    return wrapped


def run_ours(out: Path, warm: Path, method: str, params: dict[str, Any], steps: int, seed: int, lr: float,
             same_samples: bool) -> list[dict]:
    import entropy_rl.rollout.hf as hf
    from entropy_rl.metrics.sinks import read_jsonl
    from entropy_rl.train.config import load_config
    from entropy_rl.train.loop import train

    if same_samples:
        hf.generate = reseeding(hf.generate, seed)  # what the `hf` rollout engine calls once per step

    train(load_config(None, overrides(warm, method, params, steps, seed, lr)), out / "ours", overwrite=True,
          progress=False)
    return [r for r in read_jsonl(out / "ours" / "metrics.jsonl") if r.get("step", 0) >= 1]


def run_trl(out: Path, warm: Path, method: str, params: dict[str, Any], steps: int, seed: int, lr: float,
            same_samples: bool) -> list[dict]:
    """The adapter on our trainer's prompts of steps 1..N in order (TRL's sampler unshuffled)."""
    import trl.trainer.grpo_trainer as grpo
    from datasets import Dataset
    from trl import GRPOConfig

    from entropy_rl.integrations.trl import EntropyRLGRPOTrainer
    from entropy_rl.models.build import load_pretrained
    from entropy_rl.report.data import load_run
    from entropy_rl.tasks import make_task
    from entropy_rl.train.batch import seed_for
    from entropy_rl.train.config import load_config

    cfg = load_config(None, overrides(warm, method, params, steps, seed, lr))
    task = make_task(cfg.task.name, **cfg.task.params)
    problems = [p for step in range(1, steps + 1)
                for p in task.prompts("train", P, seed=seed_for("prompts", seed, step))]
    data = Dataset.from_list([{"prompt": p.prompt, "index": i} for i, p in enumerate(problems)])

    def reward(prompts: list[str], completions: list[str], index: list[int], **kwargs: Any) -> list[float]:
        return [task.reward(problems[i], c).score for i, c in zip(index, completions)]

    o = cfg.optim
    args = GRPOConfig(output_dir=str(out / "trl"), use_cpu=True, bf16=False, use_vllm=False, seed=seed,
                      per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_generations=G,
                      max_completion_length=T, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                      top_k=cfg.rollout.top_k, max_steps=steps, learning_rate=o.lr, lr_scheduler_type="constant",
                      weight_decay=o.weight_decay, adam_beta1=o.betas[0], adam_beta2=o.betas[1],
                      max_grad_norm=o.grad_clip, shuffle_dataset=False, logging_steps=1, save_strategy="no",
                      report_to=[], dataloader_num_workers=0, loss_type="dapo")
    model, tok = load_pretrained(warm)
    tok.padding_side = "left"
    if same_samples:
        grpo.shuffle_sequence_dict = lambda batch: batch  # keep our trainer's row order
        EntropyRLGRPOTrainer._generate = reseeding(grpo.GRPOTrainer._generate, seed)
    trainer = EntropyRLGRPOTrainer(model=model, processing_class=tok, reward_funcs=reward, args=args,
                                   train_dataset=data, method=method, method_params=params)
    trainer.train()
    trainer.save_state()
    return load_run(out / "trl", "trl").rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="clip_cov")
    p.add_argument("--method-params", default="{}", help="JSON object")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--same-samples", action="store_true", help="reseed both before each generation (see above)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(1)
    out = Path(a.out) / (a.method + ("_same_samples" if a.same_samples else ""))
    params = json.loads(a.method_params)
    warm = warm_start(Path(a.out), a.seed)
    ours = run_ours(out, warm, a.method, params, a.steps, a.seed, a.lr, a.same_samples)
    theirs = run_trl(out, warm, a.method, params, a.steps, a.seed, a.lr, a.same_samples)
    print(f"| step | H ours | H TRL adapter | R ours | R TRL adapter |  ({a.method}, seed {a.seed}, lr {a.lr}"
          f"{', same samples' if a.same_samples else ''})")
    print("|---|---|---|---|---|")
    for r, s in zip(ours, theirs):
        print(f"| {r['step']} | {r['entropy/token_mean']:.4f} | {s['entropy/token_mean']:.4f} | "
              f"{r['reward/mean']:.3f} | {s['reward/mean']:.3f} |")


if __name__ == "__main__":
    main()
