"""Tiny random-init Qwen2 and Llama checkpoints with a locally trained byte-level BPE tokenizer (ChatML chat
template), built once per session: `hf_checkpoint(arch, pad_token=True)` -> directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from entropy_rl.models import save_tiny_checkpoint


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: hf_checkpoint("qwen2" | "llama", pad_token=True) -> a saved checkpoint dir (cached per session)."""
    made: dict[tuple[str, bool], Path] = {}

    def get(arch: str, pad_token: bool = True) -> Path:
        if (arch, pad_token) not in made:
            out = tmp_path_factory.mktemp(f"{arch}_{'pad' if pad_token else 'nopad'}")
            made[arch, pad_token] = save_tiny_checkpoint(out, arch, pad_token=pad_token)
        return made[arch, pad_token]

    return get
