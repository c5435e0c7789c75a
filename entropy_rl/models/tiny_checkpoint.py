"""Tiny random-init Hugging Face checkpoints (Qwen2 or Llama) with a locally trained byte-level BPE tokenizer.

What the tests and the README's "Bring your own model and data" use in place of a real checkpoint: a
directory `load_pretrained` (and `model.path=`) reads exactly as it reads Qwen2.5 or Llama 3, with a
tokenizer that has multi-character tokens, special tokens and a ChatML chat template, built in about a second
on CPU with nothing downloaded.

    python -c "from entropy_rl.models import save_tiny_checkpoint; save_tiny_checkpoint('tiny-qwen2')"
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config

from entropy_rl.models.build import save_pretrained

EOS, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"

# ChatML, as Qwen2.5 uses it (without its default system prompt and tool calls).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text for the BPE merges: math-flavoured, so numbers, LaTeX commands and answer markers get tokens.
CORPUS = [
    "What is 12 + 30? Put the final answer in \\boxed{}.",
    "The answer is \\boxed{42}. Answer: 42",
    "Natalia sold 48 clips in April and half as many in May. 48 / 2 = 24. 48 + 24 = 72\n#### 72",
    "Compute \\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}, so the answer is \\boxed{\\frac{5}{6}}.",
    "Solve x^2 - 5x + 6 = 0: the roots are x = 2 and x = 3.",
    "You are a helpful assistant. Think step by step, then give the final answer.",
    "system user assistant question solution problem the of and is in to a",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
]


def train_bpe_tokenizer(
    texts: Iterable[str] = CORPUS, vocab_size: int = 512, pad_token: bool = True, chat_template: str | None = CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 / Qwen style) on `texts`, with special tokens and a chat template.

    Every byte has a token (any text encodes; decoding round-trips); merges add multi-character tokens.

    Args:
        texts: training text (a few sentences suffice; the result is deterministic for the same texts).
        vocab_size: target vocabulary size, the 256 bytes and the special tokens included.
        pad_token: add a `<|pad|>` token; without it the tokenizer has no pad token (as many base checkpoints),
            and `load_pretrained` sets pad = eos.
        chat_template: Jinja chat template saved with the tokenizer (None: no template; prompts stay plain text).

    Returns:
        A `PreTrainedTokenizerFast` with eos `<|endoftext|>` (`<|im_start|>` / `<|im_end|>` are special tokens).
    """
    specials = [EOS, IM_START, IM_END] + ([PAD] if pad_token else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD if pad_token else None,
                                   chat_template=chat_template)


ARCHS = ("qwen2", "llama")


def build_tiny_hf_model(arch: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden_size: int = 64,
                        num_layers: int = 2, max_position_embeddings: int = 512) -> PreTrainedModel:
    """A random-init Qwen2ForCausalLM or LlamaForCausalLM sized for `tokenizer` (4 heads, 2 key/value heads).

    Args:
        arch: "qwen2" or "llama".
        tokenizer: sets the vocabulary size and the pad / eos ids.
        seed: initialisation seed (the caller's RNG stream is left untouched).
        hidden_size: model width (divisible by 4).
        num_layers: decoder layers.
        max_position_embeddings: longest prompt + response in tokens.

    Returns:
        The model in fp32 with sdpa attention.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}'; valid: {', '.join(ARCHS)}")
    config_cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    cfg = config_cls(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                     num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=max_position_embeddings, tie_word_embeddings=arch == "qwen2",
                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")


def save_tiny_checkpoint(out: str | Path, arch: str = "qwen2", pad_token: bool = True,
                         chat_template: str | None = CHAT_TEMPLATE, seed: int = 0) -> Path:
    """Write a tiny random-init checkpoint directory (config, safetensors weights, tokenizer files) to `out`.

    Args:
        out: directory to create (files in it are overwritten).
        arch: "qwen2" or "llama".
        pad_token: whether the tokenizer has a pad token (see `train_bpe_tokenizer`).
        chat_template: the tokenizer's chat template (None for none).
        seed: weight initialisation seed.

    Returns:
        The directory, ready for `load_pretrained(out)` or `entropy-rl train ... model.path=out`.
    """
    tokenizer = train_bpe_tokenizer(pad_token=pad_token, chat_template=chat_template)
    model = build_tiny_hf_model(arch, tokenizer, seed=seed)
    save_pretrained(model, tokenizer, out)
    return Path(out)
