"""Peak memory and time of log-prob + entropy from hidden states and the LM head, forward + backward, one process.

For each vocabulary size V and token count T, four ways of computing per-token tempered log-probs and entropies
from hidden states [T, d] and an LM-head weight [V, d], then a backward of sum(g_logp * logp + g_H * H) with
random per-token upstream gradients (as an RL loss gives) into the hidden states and the weight:

  (a) naive    logits = hidden @ W.T, fp32 log_softmax / temperature, gather, entropy = -sum p log p
  (b) chunked  the same logits, then a 128-row loop of log_softmax + gather + entropy, as TRL's
               `selective_log_softmax` / `entropy_from_logits` do without Triton (upcast to fp32 here, as (a))
  (c) liger    Liger-Kernel's fused linear cross-entropy (log-prob only: it has no entropy output; temperature
               folded into the hidden states); GPU only, skipped with the reason otherwise
  (d) ours     `entropy_rl.core.lm_head_stats` (tiles of chunk_tokens x chunk_vocab, recomputing backward)

Peak memory is the largest total of bytes allocated by the call above what was live before it (the inputs),
forward and backward together, returned gradients included: on CUDA `torch.cuda.max_memory_allocated`, on CPU
the allocator's own alloc/free events recorded by `torch.profiler` (profile_memory=True), replayed in order.
Each case runs once for the memory (also the warm-up) and `--repeat` times for the time (median, no profiler);
on CPU the speed ratios use process CPU time (single-threaded, so it is the work done; wall time on a shared
machine mostly measures the other processes), on CUDA wall time.

    python benchmarks/entropy_kernel.py                      # CPU: scaled-down shapes; CUDA: the issue's grid, bf16
    python benchmarks/entropy_kernel.py --shapes 32000x1024 151936x8192 --hidden 896 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from entropy_rl.core.lm_head_stats import DEFAULT_CHUNK_TOKENS, default_chunk_vocab, lm_head_stats

TAU = 0.9
CPU_SHAPES = ["32000x512", "32000x1024", "151936x256"]
GPU_SHAPES = [f"{v}x{t}" for v in (32000, 151936) for t in (1024, 4096, 8192)]

Stats = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor | None]]
METHODS = ("naive", "chunked", "liger", "ours")


def naive(hidden: Tensor, weight: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(a): whole [T, V] logits, fp32 log-softmax, gather and entropy under plain autograd."""
    logp_all = torch.log_softmax((hidden @ weight.T).float() / TAU, dim=-1)
    return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def chunked(hidden: Tensor, weight: Tensor, tokens: Tensor, rows: int = 128) -> tuple[Tensor, Tensor]:
    """(b): whole logits (as a model returns them), then 128 rows at a time through log-softmax and entropy."""
    logits = hidden @ weight.T
    logps, ents = [], []
    for z, tok in zip(logits.split(rows), tokens.split(rows)):
        lp = torch.log_softmax(z.float() / TAU, dim=-1)
        logps.append(lp.gather(-1, tok.unsqueeze(-1)).squeeze(-1))
        ents.append(-(lp.exp() * lp).sum(-1))
    return torch.cat(logps), torch.cat(ents)


def liger(hidden: Tensor, weight: Tensor, tokens: Tensor) -> tuple[Tensor, None]:
    """(c): Liger's fused linear cross-entropy, summed: -sum logp (no per-token values, no entropy)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(hidden / TAU, weight, tokens, reduction="sum")
    loss = out.loss if hasattr(out, "loss") else out[0] if isinstance(out, tuple) else out
    return -loss.reshape(1), None


def ours(chunk_tokens: int, chunk_vocab: int) -> Stats:
    """(d) with the given tile."""

    def run(hidden: Tensor, weight: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        return lm_head_stats(hidden, weight, tokens, TAU, chunk_tokens=chunk_tokens, chunk_vocab=chunk_vocab)

    return run


def liger_skip_reason(device: torch.device) -> str | None:
    """Why (c) cannot run here, or None."""
    if device.type != "cuda":
        return "Liger-Kernel's Triton kernels need a GPU"
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except ImportError:
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def step(fn: Stats, hidden: Tensor, weight: Tensor, tokens: Tensor, grads: Tensor) -> None:
    """Forward + backward of sum(g_logp logp + g_H H) into hidden.grad and weight.grad (None before)."""
    logp, ent = fn(hidden, weight, tokens)
    loss = (grads[0, : logp.numel()] * logp).sum() + (0 if ent is None else (grads[1] * ent).sum())
    loss.backward()


def peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Largest total of live bytes allocated inside `run` above what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = prof.profiler.kineto_results.events()
    events = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def seconds(
    run: Callable[[], None], reset: Callable[[], None], device: torch.device, repeat: int
) -> tuple[float, float]:
    """Median wall time and median process CPU time of `repeat` runs, each after `reset` (untimed)."""
    wall, cpu = [], []
    for _ in range(repeat):
        reset()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def measure(
    fn: Stats, hidden: Tensor, weight: Tensor, tokens: Tensor, grads: Tensor, repeat: int
) -> tuple[float, float, float]:
    """Peak MiB (first run, the warm-up), then median wall and CPU seconds of `repeat` runs of `step(fn, ...)`."""

    def run() -> None:
        step(fn, hidden, weight, tokens, grads)

    def reset() -> None:
        hidden.grad = weight.grad = None

    reset()
    mem = peak_bytes(run, hidden.device) / 2**20
    wall, cpu = seconds(run, reset, hidden.device, repeat)
    reset()
    return mem, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", help="VxT pairs (default: CPU " + " ".join(CPU_SHAPES) + "; CUDA V in "
                        "{32000, 151936} x T in {1024, 4096, 8192})")
    parser.add_argument("--hidden", type=int, default=896, help="d (896: Qwen2.5-0.5B)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS)
    parser.add_argument("--chunk-vocab", type=int, help="default: the kernel's for the device")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per case (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    args.chunk_vocab = args.chunk_vocab if args.chunk_vocab is not None else default_chunk_vocab(device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes or (GPU_SHAPES if cuda else CPU_SHAPES)]
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"device {name}; torch {torch.__version__}; dtype {dtype}; d = {args.hidden}; temperature {TAU}; "
          f"ours: tiles of {args.chunk_tokens} tokens x {args.chunk_vocab} vocab; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    how = "torch.cuda.max_memory_allocated" if cuda else "allocator events of torch.profiler(profile_memory)"
    print(f"peak: {how}"
          " above the inputs, the returned gradients included; 'above grads': peak minus the hidden + weight "
          f"gradients every method returns; time: median of {args.repeat} run(s) after the (memory) warm-up; speed "
          f"ratios = the other's {'wall' if cuda else 'CPU'} time / ours (>= 1.0: ours as fast or faster)")
    skip = liger_skip_reason(device)
    if skip and "liger" in args.methods:
        print(f"(c) liger skipped: {skip}")
    fns = {"naive": naive, "chunked": chunked, "liger": liger, "ours": ours(args.chunk_tokens, args.chunk_vocab)}
    print(f"{'V':>7} {'T':>5} | {'method':8} | {'peak MiB':>9} | {'above grads':>11} | {'wall s':>7} | "
          f"{'CPU s':>7}")
    for V, T in shapes:
        g = torch.Generator(device=device).manual_seed(args.seed)
        hidden = torch.randn(T, args.hidden, generator=g, device=device).to(dtype).requires_grad_()
        weight = (torch.randn(V, args.hidden, generator=g, device=device) / args.hidden**0.5).to(dtype)
        weight.requires_grad_()
        tokens = torch.randint(V, (T,), generator=g, device=device)
        grads = torch.randn(2, T, generator=g, device=device)
        floor = (hidden.numel() + weight.numel()) * hidden.element_size() / 2**20
        results: dict[str, tuple[float, float]] = {}  # method: (peak MiB, seconds used for the ratios)
        for label in args.methods:
            if label == "liger" and skip:
                continue
            mem, wall, cpu = measure(fns[label], hidden, weight, tokens, grads, args.repeat)
            results[label] = (mem, wall if cuda else cpu)
            print(f"{V:>7} {T:>5} | {label:8} | {mem:>9.1f} | {mem - floor:>11.1f} | {wall:>7.3f} | {cpu:>7.3f}",
                  flush=True)
        if "ours" in results:
            mem, sec = results["ours"]
            for other in ("naive", "chunked", "liger"):
                if other in results:
                    m, t = results[other]
                    above = (mem - floor) / (m - floor)
                    print(f"{'':>13} | ours/{other}: peak {mem / m:.3f}, above grads {above:.3f}, speed {t / sec:.2f}x"
                          + (" (log-prob only)" if other == "liger" else ""))


if __name__ == "__main__":
    main()
