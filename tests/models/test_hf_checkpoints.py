"""Any local Hugging Face checkpoint as the policy, on tiny random-init Qwen2 and Llama checkpoints with a
byte-level BPE tokenizer: loading, chat-template prompts through the rollout, tokenizers without a pad token,
clear errors for incomplete directories, fp32 scoring of bf16 weights, gradient checkpointing."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from entropy_rl.models import enable_gradient_checkpointing, load_pretrained
from entropy_rl.rollout.hf import SamplingParams, generate
from entropy_rl.tasks.chat import ChatPrompt, format_prompt
from entropy_rl.train.forward import response_logits, score_in_chunks, score_responses

ARCHS = ["qwen2", "llama"]
PROMPTS = [ChatPrompt("What is 12 + 30?", "You are a helpful assistant."), ChatPrompt("Solve x^2 - 5x + 6 = 0."),
           ChatPrompt("1 + 1?", "Think step by step, then give the final answer.")]  # different lengths


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_loads_with_multi_character_tokens_and_a_chat_template(hf_checkpoint, arch: str) -> None:
    model, tok = load_pretrained(hf_checkpoint(arch))
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    text = "Compute \\frac{1}{2} + 48, so the answer is \\boxed{42}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text) / 2 and tok.decode(ids) == text  # merges, and an exact round trip
    rendered = format_prompt(tok, PROMPTS[0])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert rendered.endswith("<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay single tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_rollout_of_chat_prompts_matches_rescoring(hf_checkpoint, arch: str) -> None:
    model, tok = load_pretrained(hf_checkpoint(arch))
    torch.manual_seed(0)
    batch = generate(model, tok, PROMPTS, SamplingParams(temperature=0.8, max_new_tokens=8))
    expected = tok([format_prompt(tok, p) for p in PROMPTS], add_special_tokens=False)["input_ids"]
    for row, mask, ids in zip(batch.prompt_ids, batch.prompt_mask, expected):
        assert row[mask.bool()].tolist() == ids  # the rendered chat prompt, left-padded
    logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], 0.8, 0)
    m = batch.response_mask.bool()
    torch.testing.assert_close(batch.sampling_logp[m], logp[m], atol=1e-4, rtol=0)


def test_a_tokenizer_without_pad_token_gets_eos_with_a_log_line(hf_checkpoint, caplog) -> None:
    path = hf_checkpoint("llama", pad_token=False)
    assert json.loads((path / "tokenizer_config.json").read_text()).get("pad_token") is None
    with caplog.at_level(logging.WARNING, logger="entropy_rl.models.build"):
        model, tok = load_pretrained(path)
    assert tok.pad_token_id == tok.eos_token_id is not None
    assert f"tokenizer at '{path}' has no pad token; using its eos token '<|endoftext|>' as pad" in caplog.text
    torch.manual_seed(0)
    batch = generate(model, tok, PROMPTS, SamplingParams(max_new_tokens=6))  # pads = eos, masked after the first
    assert batch.prompt_mask.sum(1).tolist() == [len(tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"])
                                                 for p in PROMPTS]


def test_incomplete_checkpoint_directories_are_named(hf_checkpoint, tmp_path: Path) -> None:
    src = hf_checkpoint("qwen2")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match=f"checkpoint directory '{tmp_path}' has no tokenizer files"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"checkpoint directory '{tmp_path}' has no config.json"):
        load_pretrained(tmp_path)


def test_bf16_weights_are_scored_in_fp32(hf_checkpoint) -> None:
    model, tok = load_pretrained(hf_checkpoint("qwen2"), dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    enc = tok([format_prompt(tok, p) for p in PROMPTS], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, attn, P = enc["input_ids"], enc["attention_mask"], 4  # score the last tokens as a "response"
    with torch.no_grad():
        logp, entropy, _ = score_responses(model, ids, attn, ids.shape[1] - P, 0.7)
        logits = response_logits(model, ids, attn, ids.shape[1] - P)  # bf16 [B, T, V]
    assert logits.dtype == torch.bfloat16 and logp.dtype == entropy.dtype == torch.float32
    def entropy_in(dtype: torch.dtype) -> torch.Tensor:  # the same bf16 logits, math in `dtype`
        z = logits.to(dtype) / 0.7
        return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1).double()

    exact = entropy_in(torch.float64)
    torch.testing.assert_close(entropy.double(), exact, atol=1e-5, rtol=0)
    assert (entropy_in(torch.bfloat16) - exact).abs().max() > 1e-3  # what a missing fp32 cast would cost


def test_gradient_checkpointing_leaves_gradients_unchanged(hf_checkpoint) -> None:
    grads = []
    for checkpointing in (False, True):
        model, tok = load_pretrained(hf_checkpoint("llama"))
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        name = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
        assert getattr(model, name) == checkpointing
        enc = tok([format_prompt(tok, p) for p in PROMPTS], return_tensors="pt", padding=True, add_special_tokens=False)
        logp, entropy, _ = score_responses(model, enc["input_ids"], enc["attention_mask"], 3, 1.0)
        (logp.sum() + entropy.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_a_bf16_checkpointed_run_keeps_both_across_resume(hf_checkpoint, tmp_path: Path, monkeypatch) -> None:
    from entropy_rl.train import loop
    from entropy_rl.train.checkpoint import latest_checkpoint
    from entropy_rl.train.config import load_config

    rows = [json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) for a in range(5) for b in range(4)]
    (tmp_path / "math.jsonl").write_text("\n".join(rows) + "\n")
    seen = []  # the policy's parameter dtypes each time the loop enables checkpointing

    def spy(model) -> None:
        seen.append({p.dtype for p in model.parameters()})
        enable_gradient_checkpointing(model)

    monkeypatch.setattr(loop, "enable_gradient_checkpointing", spy)

    def cfg(steps: int):  # noqa: ANN202
        return load_config(None, [
            f"model.path={hf_checkpoint('llama')}", "model.dtype=bfloat16", "model.gradient_checkpointing=true",
            "task.name=math", f"task.params={{path: {tmp_path / 'math.jsonl'}, start_method: fork}}", "sft.enabled=false",
            "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4", f"train.steps={steps}",
            "train.eval_every=0", "train.save_every=1", "train.sinks=[jsonl]", "train.threads=1"])

    loop.train(cfg(2), tmp_path / "run", progress=False)
    shutil.rmtree(latest_checkpoint(tmp_path / "run"))  # resume from step 1
    result = loop.train(cfg(2), tmp_path / "run", resume=True, progress=False)
    assert seen == [{torch.bfloat16}, {torch.bfloat16}]  # the resumed policy is bf16 again, and checkpointed
    assert result.final_metrics["entropy/token_mean"] > 0 and "reward/format_error_rate" in result.final_metrics


def test_config_validation_names_checkpoint_and_template_problems(hf_checkpoint, tmp_path: Path) -> None:
    from entropy_rl.models import save_tiny_checkpoint
    from entropy_rl.train.config import ConfigError, load_config

    (tmp_path / "math.jsonl").write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    task = ["task.name=math", f"task.params={{path: {tmp_path / 'math.jsonl'}, system_prompt: Be brief., eval_fraction: 0}}",
            "sft.enabled=false", "train.eval_every=0"]
    no_system = save_tiny_checkpoint(tmp_path / "gemma_like", "llama", chat_template=(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"))
    with pytest.raises(ConfigError, match=r"task\.params: the tokenizer's chat template cannot render a system\+user "
                                          r"conversation: .*System role not supported; set the task's system_prompt"):
        load_config(None, [f"model.path={no_system}", *task])
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(hf_checkpoint("qwen2") / "config.json", bare / "config.json")
    with pytest.raises(ConfigError, match=f"model.path: .*checkpoint directory '{bare}' has no tokenizer files"):
        load_config(None, [f"model.path={bare}", *task])
