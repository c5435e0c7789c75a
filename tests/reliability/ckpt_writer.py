"""Fork server for tests/reliability/test_crash_safety.py: imports torch once, then forks writers to be SIGKILLed.

Usage: python ckpt_writer.py RUN_DIR. Builds a tiny model and a trainer_state like the loop's (AdamW state,
LambdaLR, RNG state), saves step 0, prints "ready <seconds per save>". Then, per stdin line:
  "go"   fork a writer that saves checkpoints forever (step = latest + 1, every third save re-saves the same
         step to exercise the swap path); print "pid <pid>";
  "reap" wait for the last writer (the test has SIGKILLed it); print "reaped <signal number or -exit code>";
  "quit" exit.
The embedding entry [0, 0] is set to the step number before each save, so the test can check that the model
and trainer_state of a checkpoint belong together.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.train import checkpoint as ckpt


def main(run_dir: Path) -> None:
    torch.set_num_threads(1)  # no intra-op thread pool: forking a process with one is not safe
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64), tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[3, 4, 5]])).logits.sum().backward()
    opt.step()  # so the optimizer state holds exp_avg / exp_avg_sq tensors, as in a real checkpoint
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def state(step: int) -> dict:
        return {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": ckpt.rng_state(), "skipped_total": 0, "method_state": None}

    def save(step: int) -> None:
        with torch.no_grad():
            model.model.embed_tokens.weight[0, 0] = float(step)
        ckpt.save_checkpoint(run_dir, step, model, tok, state(step), keep=2)

    t0 = time.perf_counter()
    for _ in range(3):
        save(0)
    print(f"ready {(time.perf_counter() - t0) / 3:.4f}", flush=True)
    child = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "go":
            child = os.fork()
            if child == 0:
                try:
                    latest = ckpt.latest_checkpoint(run_dir)
                    step = int(latest.name.split("_")[1]) + 1 if latest else 0
                    i = 0
                    while True:
                        save(step)
                        i += 1
                        if i % 3:
                            step += 1
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
            print(f"pid {child}", flush=True)
        elif cmd == "reap":
            _, status = os.waitpid(child, 0)
            code = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
            print(f"reaped {code}", flush=True)
        elif cmd == "quit":
            return


if __name__ == "__main__":
    main(Path(sys.argv[1]))
