"""Checkpoints: model (safetensors) + tokenizer + optimizer, scheduler, RNG and method state, written atomically.

Layout: RUN_DIR/checkpoints/step_000100/{model/, trainer_state.pt, COMPLETE}. A checkpoint is written into a
temporary sibling directory, fsync'd, marked COMPLETE and renamed into place, so a crash leaves either the
previous checkpoint or the new one, never a half-written one that looks valid. Leftovers of a killed writer
(hidden `.tmp_*`, `.old_*`, `.del_*` siblings) are never listed and are cleaned by the next save; a kill
between the two renames of a same-step re-save is undone by restoring the old copy. Before writing, the free
disk space is checked, and a failed write raises an OSError naming the path and keeps the earlier checkpoints.
Crash safety is tested by SIGKILLing writers (tests/reliability/test_crash_safety.py).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from entropy_rl.models.build import save_pretrained
from entropy_rl.train.guard import NonFiniteWeightsError, non_finite_parameters

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


# Hidden sibling prefixes of the checkpoints root: an in-progress write, a replaced same-step
# checkpoint during its swap, a pruned checkpoint being deleted. Each ends in "_<pid>" of its writer.
_TMP, _OLD, _DEL = ".tmp_", ".old_", ".del_"
# Pre-flight free-space check: require this multiple of the expected checkpoint size to be free.
FREE_SPACE_MARGIN = 2.0


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 probes without signalling)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner_pid(name: str) -> int | None:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def recover_interrupted(run_dir: Path) -> list[Path]:
    """Undo what a writer killed mid-save left behind; returns the paths removed or restored.

    - `.tmp_*` (a write that never reached its rename) and `.del_*` (a prune that never finished) are deleted;
    - `.old_step_N_*` (the previous copy of step N while it was being swapped for a re-save) is renamed back
      to `step_N` when no `step_N` exists, so a kill inside the swap never loses that checkpoint.
    Entries of a still-running writer (another live pid) are left alone. The caller must be the only writer
    of this run directory (the trainer is).
    """
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    touched = []
    for p in sorted(root.iterdir()):
        if not p.name.startswith((_TMP, _OLD, _DEL)):
            continue
        pid = _owner_pid(p.name)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if p.name.startswith(_OLD):
            final = root / p.name[len(_OLD):].rsplit("_", 1)[0]
            if not final.exists() and (p / COMPLETE).is_file():
                os.replace(p, final)
                touched.append(final)
                continue
        shutil.rmtree(p, ignore_errors=True)
        touched.append(p)
    return touched


def dir_size(path: Path) -> int:
    """Total bytes of the regular files under `path` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor nested in dicts/lists/tuples of `obj` (an estimate of its torch.save size)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_free_space(root: Path, needed: int, has_previous: bool = True) -> None:
    """Raise OSError(ENOSPC, filename=root) if fewer than `needed` bytes are free on `root`'s filesystem."""
    free = shutil.disk_usage(root).free
    if free < needed:
        kept = "the previous checkpoint is kept" if has_previous else "no checkpoint was written"
        raise OSError(
            errno.ENOSPC,
            f"not enough free disk space for a checkpoint: {_fmt_bytes(free)} free, {_fmt_bytes(needed)} required "
            f"(margin x expected checkpoint size); free some space or lower train.keep_checkpoints; {kept}",
            str(root),
        )


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    keep: int = 2,
    free_space_margin: float = FREE_SPACE_MARGIN,
    min_free_bytes: int = 0,
) -> Path:
    """Atomically write checkpoint `step` and prune all but the newest `keep`. Returns its directory.

    Before writing, leftovers of a killed earlier writer are cleaned (`recover_interrupted`) and free
    space is checked: at least max(min_free_bytes, free_space_margin x expected size) bytes, the expected
    size being that of the newest existing checkpoint, or for the first one the model parameters plus the
    tensors in `trainer_state`.

    Raises:
        OSError: not enough free space, or writing failed (e.g. ENOSPC mid-write). The errno is kept, the
            message names the checkpoint path, the partial write is removed and earlier checkpoints are kept.
        NonFiniteWeightsError: a parameter holds NaN or inf; nothing is written (a checkpoint every resume
            would crash on is worse than none).
    """
    bad = non_finite_parameters(model)
    if bad:
        raise NonFiniteWeightsError(f"refusing to write checkpoint step {step}: {len(bad)} parameter tensor(s) hold "
                                    f"NaN or inf (first: '{bad[0]}'); earlier checkpoints are kept")
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    recover_interrupted(run_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f"{_TMP}step_{step:06d}_{os.getpid()}"
    previous = latest_checkpoint(run_dir)
    expected = dir_size(previous) if previous is not None else (
        sum(p.numel() * p.element_size() for p in model.parameters()) + _tensor_bytes(trainer_state))
    check_free_space(root, max(min_free_bytes, int(free_space_margin * expected)), previous is not None)
    try:
        save_pretrained(model, tokenizer, tmp / "model")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / COMPLETE).write_text(str(step))
        fsync_tree(tmp)
    except BaseException as e:  # also KeyboardInterrupt and non-OSError writer errors: never leave tmp behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        hint = " (disk full)" if e.errno == errno.ENOSPC else ""
        kept = "the previous checkpoint is kept" if previous is not None else "no checkpoint was written"
        raise OSError(e.errno, f"could not write checkpoint{hint}: {e}; {kept}", str(final)) from e
    if final.exists():  # re-saving the same step (e.g. after resume): swap, never leave a gap
        old = root / f"{_OLD}step_{step:06d}_{os.getpid()}"  # a kill between the two renames: recover_interrupted
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)  # make the rename itself durable
    for stale in list_checkpoints(run_dir)[:-keep]:
        # Rename first (atomic), delete second: a kill mid-delete leaves a hidden .del_ dir, never a step_ dir
        # that still has its COMPLETE marker but has lost some files.
        doomed = root / f"{_DEL}{stale.name}_{os.getpid()}"
        os.replace(stale, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
