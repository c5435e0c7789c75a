"""Build a tiny Qwen2 causal LM from a config, or load / save a local Hugging Face checkpoint directory."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files any of which holds a tokenizer (fast tokenizers, sentencepiece, BPE / WordPiece vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture of a from-scratch Qwen2 model (the CPU demo default is about 0.8M parameters)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 64


def build_tiny_model(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A randomly initialised Qwen2ForCausalLM (sdpa attention, tied embeddings) sized for `tokenizer`.

    Initialisation is deterministic for a seed: the global RNG is forked so the caller's stream is untouched.
    """
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return model


def load_pretrained(
    path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local checkpoint directory (never from a hub).

    Args:
        path: directory holding config.json, weights (safetensors) and tokenizer files.
        dtype: parameter dtype name (float32, bfloat16, float16), or "saved": the dtype the weights were saved
            in (what resuming a run needs).
        attn_implementation: "sdpa", "eager" or "flash_attention_2".

    Returns:
        (model, tokenizer). A tokenizer without a pad token gets pad = eos, with a log line (padding positions
        are masked everywhere, so the choice of id does not matter; left padding is set by the rollout).

    Raises:
        FileNotFoundError: `path` is not a directory, or has no config.json or no tokenizer files (the message
            names the directory).
        ValueError: unknown dtype, or a tokenizer without an eos token.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model path '{path}' is not a local directory (hub downloads are not used)")
    if dtype not in DTYPES and dtype != "saved":
        raise ValueError(f"unknown dtype '{dtype}'. Valid: {', '.join(DTYPES)}, saved")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint directory '{path}' has no config.json: not a Hugging Face model directory")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES.get(dtype, "auto"), attn_implementation=attn_implementation, local_files_only=True
    )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at '{path}' has no eos token; generation could never stop")
    if tokenizer.pad_token_id is None:
        log.warning("tokenizer at '%s' has no pad token; using its eos token %r as pad (padding is masked)",
                    path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved in `path` exactly as saved.

    Pitfall: for a tokenizer saved as a plain `tokenizer.json` (our char-level one), `AutoTokenizer` next to a
    config.json with model_type qwen2 returns a Qwen2Tokenizer that replaces the saved pre-tokenizer with Qwen's
    byte-level one (spaces vanish). A generic saved class is therefore loaded as `PreTrainedTokenizerFast`.

    Raises:
        FileNotFoundError: `path` holds no tokenizer files (the message names the directory).
    """
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"checkpoint directory '{path}' has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
                                f"save the base model's tokenizer there: tokenizer.save_pretrained('{path}')")
    config_file = path / "tokenizer_config.json"
    saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if saved_class in GENERIC_TOKENIZER_CLASSES and (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Save model weights (safetensors) and tokenizer so `load_pretrained(path)` restores both."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint is noise in the step log
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of storing them.

    Saves activation memory (about one layer's worth is kept instead of all) for ~30% more compute per
    update; gradients are unchanged. Uses the non-reentrant torch checkpoint, which needs no grad on its inputs:
    the hook HF adds to make the embedding output require grad (for reentrant checkpointing of frozen, PEFT-style
    embeddings) is removed, because it calls `requires_grad_` inside the entropy probe's `torch.func.jvp`, which
    torch refuses. HF applies checkpointing in training mode only: the no-grad scoring passes and `generate`
    (eval mode, KV cache on) run as before.
    """
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # the name since transformers 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.disable_input_require_grads()
