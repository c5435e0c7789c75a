"""GRPO with an entropy-rl method inside TRL, on GPUs: edit the paths, then

    accelerate launch --num_processes 8 --mixed_precision bf16 examples/trl/train_grpo.py \
        --model /models/Qwen2.5-Math-1.5B --data data/math_train.parquet --method clip_cov --out runs/trl_clip_cov
    entropy-rl report runs/trl_clip_cov

Data: a local JSONL or parquet file of rows {"prompt": str, "answer": str} (other names: --prompt-field,
--answer-field). Reward: 1 when the last \\boxed{...} of the completion equals the answer (as text, or as a
plain decimal number: "2.50" == "2.5"), else 0; install `entropy-rl[math]` and pass --math-verify to compare with
math-verify instead (LaTeX-aware). Models with a chat template get the prompt as a user message with Qwen2.5-Math's
instruction; others get the raw prompt followed by the instruction.

Every GRPOConfig field not exposed here keeps TRL's default; see docs/integrations.md for what the adapter
refuses and how TRL's batches map onto ours. Nothing here downloads: --model must be a local directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in `text` (braces balanced), or None. Plain string scanning."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the content of the assistant messages of a conversation."""
    if isinstance(completion, str):
        return completion
    parts = [m.get("content") for m in completion if isinstance(m, dict)]
    return "".join(p for p in parts if isinstance(p, str))


def make_reward(use_math_verify: bool):
    """The reward function TRL calls: (completions, answer, ...) -> [0.0 | 1.0] per completion."""
    from entropy_rl.tasks.jsonl import verify

    if use_math_verify:
        from math_verify import parse, verify as math_verify

    def boxed_accuracy(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
        scores = []
        for completion, ref in zip(completions, answer):
            boxed = last_boxed(completion_text(completion))
            if boxed is None:
                scores.append(0.0)
            elif use_math_verify:
                scores.append(float(math_verify(parse(f"${ref}$"), parse(f"${boxed}$"))))
            else:
                scores.append(float(verify(boxed, ref).score))
        return scores

    return boxed_accuracy


def load_rows(path: str, prompt_field: str, answer_field: str, chat: bool):
    """The local dataset as TRL wants it: a `prompt` (text, or a user message when `chat`) and an `answer` column."""
    from datasets import load_dataset

    kind = "parquet" if path.endswith(".parquet") else "json"
    data = load_dataset(kind, data_files=path, split="train")

    def to_prompt(row: dict[str, Any]) -> dict[str, Any]:
        text = f"{row[prompt_field]}\n{INSTRUCTION}"
        return {"prompt": [{"role": "user", "content": text}] if chat else text, "answer": str(row[answer_field])}

    return data.map(to_prompt, remove_columns=data.column_names)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local model directory (e.g. Qwen2.5-Math-1.5B)")
    p.add_argument("--data", required=True, help="local .jsonl or .parquet file of {prompt, answer} rows")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--method", default="clip_cov", help="entropy-rl method (`entropy-rl methods`)")
    p.add_argument("--method-params", default="{}", help="JSON object of the method's Params, e.g. "
                   '\'{"clip_ratio": 2e-4}\'')
    p.add_argument("--out", required=True, help="output directory (checkpoints, trainer_state.json)")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--per-device-batch", type=int, default=16, help="completions per micro-batch per GPU")
    p.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt (group size)")
    p.add_argument("--max-completion-length", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--loss-type", default="dapo",
                   help="picks the aggregation: dapo|bnpo -> token-mean, grpo, dr_grpo, luspo")
    p.add_argument("--beta", type=float, default=0.0, help="reference KL coefficient (loads a reference model if > 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--use-vllm", action="store_true", help="generate with vLLM (colocate mode; needs vllm installed)")
    p.add_argument("--math-verify", action="store_true", help="compare answers with math-verify (entropy-rl[math])")
    p.add_argument("--report-to", default="none", help="tensorboard, wandb, ... (TRL's report_to)")
    p.add_argument("--cpu", action="store_true", help="CPU smoke run in fp32 (tests use it with a tiny model)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Train and write OUT/trainer_state.json; returns OUT."""
    args = parse_args(argv)
    method_params = json.loads(args.method_params)
    if not isinstance(method_params, dict):
        raise SystemExit(f"--method-params must be a JSON object, got {args.method_params!r}")
    from trl import GRPOConfig

    from entropy_rl.integrations.trl import EntropyRLGRPOTrainer
    from entropy_rl.models.build import load_tokenizer

    tokenizer = load_tokenizer(Path(args.model))
    tokenizer.padding_side = "left"  # TRL pads prompts on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chat = getattr(tokenizer, "chat_template", None) is not None
    config = GRPOConfig(
        output_dir=args.out, max_steps=args.steps, learning_rate=args.lr, seed=args.seed,
        per_device_train_batch_size=args.per_device_batch, gradient_accumulation_steps=args.grad_accum,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
        temperature=args.temperature, loss_type=args.loss_type, beta=args.beta,
        use_vllm=args.use_vllm, vllm_mode="colocate", bf16=not args.cpu, use_cpu=args.cpu,
        gradient_checkpointing=not args.cpu, model_init_kwargs={"dtype": "float32" if args.cpu else "bfloat16"},
        logging_steps=1, save_steps=args.save_steps, report_to=args.report_to, dataloader_num_workers=0,
    )
    trainer = EntropyRLGRPOTrainer(
        model=args.model, reward_funcs=make_reward(args.math_verify), args=config, processing_class=tokenizer,
        train_dataset=load_rows(args.data, args.prompt_field, args.answer_field, chat),
        method=args.method, method_params=method_params,
    )
    trainer.train()
    trainer.save_state()  # OUT/trainer_state.json: `entropy-rl report OUT`
    if trainer.accelerator.is_main_process:
        print(f"done: entropy-rl report {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
