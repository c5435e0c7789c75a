"""Checkpoints: model (safetensors) + tokenizer + optimizer, scheduler, RNG and method state, written atomically.

Layout: RUN_DIR/checkpoints/step_000100/{model/, trainer_state.pt, COMPLETE}. A checkpoint is written into a
temporary sibling directory, fsync'd, marked COMPLETE and renamed into place, so a crash leaves either the
previous checkpoint or the new one, never a half-written one that looks valid.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from entropy_rl.models.build import save_pretrained

COMPLETE = "COMPLETE"


def checkpoint_dir(run_dir: Path) -> Path:
    """RUN_DIR/checkpoints."""
    return Path(run_dir) / "checkpoints"


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` and the directory itself (durability before the rename)."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer draws from (torch CPU/CUDA, python)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: Any, tokenizer: Any, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Atomically write checkpoint `step` and prune all but the newest `keep`. Returns its directory."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_pretrained(model, tokenizer, tmp / "model")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / COMPLETE).write_text(str(step))
        fsync_tree(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"could not write checkpoint {final} ({e}); the previous checkpoint is kept") from e
    if final.exists():  # re-saving the same step (e.g. after resume): swap, never leave a gap
        old = root / f".old_step_{step:06d}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / COMPLETE).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """The trainer_state.pt dict of a checkpoint (optimizer, scheduler, rng, step, method state)."""
    return torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
