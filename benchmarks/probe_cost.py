"""CPU time of the entropy-dynamics probe against the rest of a demo step, on one real rollout batch.

Loads the demo's model (`--model`, e.g. a demo run's sft/model; default: the demo config's random-init model,
whose responses all run to the length cap), samples one batch of the demo's shape (16 prompts x 8 completions x
16 tokens, countdown), then times with `time.process_time` (process CPU time, so a busy machine disturbs it less
than wall time), median of `--repeats` after one warm-up each:
  - generation, the no-grad scoring pass, the update pass (forward + backward + AdamW step);
  - the scoring pass fused with the probe's gradient of H (`score_and_probe`), and the probe after the step
    (`measure_after_update`: the forward at the new weights and the JVP at theta_old).
The probe's marginal cost = (fused pass - scoring pass) + after-step part; its share is of the sum of all parts.

    python benchmarks/probe_cost.py [--model PATH] [--repeats 5] [--profile]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from entropy_rl.rollout import SamplingParams, make_engine
from entropy_rl.tasks import make_task
from entropy_rl.train.config import load_config
from entropy_rl.train.entropy_probe import measure_after_update, score_and_probe
from entropy_rl.train.forward import score_in_chunks, score_responses
from entropy_rl.train.loop import initial_model


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median process CPU time of `fn` over `repeats` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the demo's random-init model)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables of the probe's parts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("configs/demo_cpu.yaml", [f"model.path={args.model}"] if args.model else [])
    task = make_task(cfg.task.name, **cfg.task.params)
    model, tok = initial_model(cfg, task)
    model.train()
    problems = task.prompts("train", cfg.rollout.prompts_per_step, seed=1)
    sampling = SamplingParams(cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens)
    engine = make_engine("hf", model, tok)
    torch.manual_seed(0)

    def generate():  # noqa: ANN202
        return engine.generate([p.prompt for p in problems], sampling, group_size=cfg.rollout.group_size)

    batch = generate()
    ids, attn, P, mask = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], batch.response_mask
    B, tau = ids.shape[0], cfg.rollout.temperature
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)

    def update() -> None:
        logp, _, _ = score_responses(model, ids, attn, P, tau, want_entropy=False, mask=mask)
        (logp * mask).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    update()  # Adam has moments: dH_per_bonus is computed, as on every step after the first
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = score_and_probe(model, opt, ids, attn, P, tau, mask, mask, B)[1]

    def after_step() -> dict[str, float]:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(theta[n] + 1e-4 * torch.sign(theta[n]))
        out = measure_after_update(model, probe, ids, attn, P, tau, mask, B)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(theta[n])
        return out

    r = args.repeats
    parts = {
        "generation": cpu_seconds(generate, r),
        "scoring pass": cpu_seconds(lambda: score_in_chunks(model, ids, attn, P, tau, B, mask=mask), r),
        "update": cpu_seconds(update, r),
        "scoring + probe gradient": cpu_seconds(lambda: score_and_probe(model, opt, ids, attn, P, tau, mask, mask, B), r),
        "probe after the step": cpu_seconds(after_step, r),
    }
    probe_s = parts["scoring + probe gradient"] - parts["scoring pass"] + parts["probe after the step"]
    step_s = parts["generation"] + parts["scoring pass"] + parts["update"] + probe_s
    print(f"batch {tuple(ids.shape)} (prompt {P}), {int(mask.sum())} response tokens; CPU s, median of {r}, "
          f"{args.threads} thread(s)")
    for name, s in parts.items():
        print(f"  {name:<26} {s:.3f}")
    print(f"probe: {probe_s:.3f} s of a {step_s:.3f} s step = {100 * probe_s / step_s:.1f}% "
          f"(gradient {parts['scoring + probe gradient'] - parts['scoring pass']:.3f}, "
          f"after the step {parts['probe after the step']:.3f})")
    if args.profile:
        from torch.profiler import profile

        for name, fn in (("scoring + probe gradient", lambda: score_and_probe(model, opt, ids, attn, P, tau, mask, mask, B)),
                         ("probe after the step", after_step)):
            with profile() as prof:
                fn()
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
