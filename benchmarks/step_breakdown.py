"""Share of RL step time in generation, verifier, scoring forward pass, update, dynamics probe and the rest.

Runs the CPU demo's RL loop (SFT skipped: step cost does not depend on what the model knows, except through
response lengths, which are capped) for a few steps in this process and prints each phase's share of the
summed step time, from the trainer's own `timing/*` metrics. The first step is dropped as warm-up.

    python benchmarks/step_breakdown.py [--steps 20] [overrides a.b=c ...]
"""

from __future__ import annotations

import argparse
import tempfile

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train.config import load_config
from entropy_rl.train.loop import train

PHASES = [("generation", "timing/generate_s"), ("verifier", "timing/reward_s"),
          ("scoring forward", "timing/score_s"), ("update", "timing/update_s"),
          ("dynamics probe", "timing/dynamics_s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(None, ["sft.enabled=false", f"train.steps={args.steps}", "train.eval_every=0",
                             "train.save_every=0", "train.sinks=[jsonl]", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, tmp, progress=False)
        rows = read_jsonl(f"{tmp}/metrics.jsonl")[1:]
    total = sum(r["timing/step_s"] for r in rows)
    print(f"{len(rows)} steps of {cfg.rollout.prompts_per_step} x {cfg.rollout.group_size} sequences, "
          f"{total / len(rows):.3f} s/step")
    accounted = 0.0
    for name, key in PHASES:
        t = sum(r[key] for r in rows)
        accounted += t
        print(f"  {name:<16} {100 * t / total:5.1f}%  ({t / len(rows):.3f} s/step)")
    print(f"  {'other':<16} {100 * (total - accounted) / total:5.1f}%  ({(total - accounted) / len(rows):.3f} s/step)")


if __name__ == "__main__":
    main()
