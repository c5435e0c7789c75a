"""Peak memory of per-token scoring: the naive full-logits path against `core.token_stats`, CPU.

Each case runs in its own process and reports the growth of its peak resident memory over what it held before
the call (inputs included there): log-probs and entropies of B*T tokens at vocabulary V, without gradient and
with a backward through both. glibc keeps freed blocks under its mmap threshold, so the script sets
MALLOC_MMAP_THRESHOLD_ for the children and RSS follows the live tensors.

    python benchmarks/token_stats_memory.py [--tokens 2048] [--vocab 32000] [--chunk 256]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys

import torch

from entropy_rl.core.entropy import token_entropy, token_logprobs
from entropy_rl.core.token_stats import token_stats

CASES = {  # name: (path, input form, gradient)
    "naive, no grad": ("naive", "logits", False),
    "token_stats logits, no grad": ("chunked", "logits", False),
    "token_stats hidden+W, no grad": ("chunked", "hidden", False),
    "naive, grad": ("naive", "logits", True),
    "token_stats logits, grad": ("chunked", "logits", True),
    "token_stats hidden+W, grad": ("chunked", "hidden", True),
}
HIDDEN = 64  # d of the hidden-state form


def resident_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(name: str, tokens_n: int, vocab: int, chunk: int) -> float:
    """Peak RSS growth (MiB) of one scoring call of case `name`, in this process."""
    path, form, grad = CASES[name]
    torch.manual_seed(0)
    hidden = torch.randn(1, tokens_n, HIDDEN, requires_grad=grad)
    weight = (0.1 * torch.randn(vocab, HIDDEN)).requires_grad_(grad)
    tokens = torch.randint(vocab, (1, tokens_n))
    with torch.set_grad_enabled(grad):
        logits = hidden @ weight.T if form == "logits" else None  # [1, B*T, V], held before the measurement
        before = resident_mib()
        if path == "naive":
            logp, entropy = token_logprobs(logits, tokens, 0.9), token_entropy(logits, 0.9)
        else:
            x, w = (logits, None) if form == "logits" else (hidden, weight)
            stats = token_stats(x, tokens, 0.9, lm_head_weight=w, chunk_tokens=chunk)
            logp, entropy = stats.logp, stats.entropy
        if grad:
            (logp + entropy).sum().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="B*T scored tokens")
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--chunk", type=int, default=256, help="token_stats chunk_tokens")
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case:
        print(run_case(args.case, args.tokens, args.vocab, args.chunk))
        return
    full, chunk = args.tokens * args.vocab * 4 / 2**20, args.chunk * args.vocab * 4 / 2**20
    print(f"B*T = {args.tokens}, V = {args.vocab}: one [B*T, V] fp32 = {full:.0f} MiB, one [chunk, V] = {chunk:.0f} MiB")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    for name in CASES:
        cmd = [sys.executable, __file__, "--case", name, "--tokens", str(args.tokens), "--vocab", str(args.vocab),
               "--chunk", str(args.chunk)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
        print(f"  {name:32s} peak RSS growth {float(out):8.1f} MiB")


if __name__ == "__main__":
    main()
