"""Model and tokenizer construction: tiny Qwen2 models from a config, or any local Hugging Face checkpoint."""

from entropy_rl.models.build import (
    TinyModelSpec,
    build_tiny_model,
    enable_gradient_checkpointing,
    load_pretrained,
    save_pretrained,
)
from entropy_rl.models.char_tokenizer import build_char_tokenizer
from entropy_rl.models.tiny_checkpoint import save_tiny_checkpoint, train_bpe_tokenizer

__all__ = ["TinyModelSpec", "build_char_tokenizer", "build_tiny_model", "enable_gradient_checkpointing",
           "load_pretrained", "save_pretrained", "save_tiny_checkpoint", "train_bpe_tokenizer"]
