"""Checkpoints: model (safetensors) + tokenizer + trainer state (safetensors + JSON), atomic and checksummed.

Layout: RUN_DIR/checkpoints/step_000100/{model/, trainer_state.json, trainer_state.safetensors, COMPLETE}.
The trainer state (optimizer, scheduler, RNG and method state, step) is split into its tensors
(trainer_state.safetensors) and everything else (trainer_state.json, with references to those tensors):
neither format can run code when read, so resuming a run directory someone else wrote is safe (a pickle,
the format of `torch.save`, can). `COMPLETE` is a JSON manifest with the sha256 of every file of the
checkpoint; `load_latest` verifies it and falls back to the newest checkpoint that verifies, warning about
each one it skips.

A checkpoint is written into a temporary sibling directory, fsync'd, marked COMPLETE and renamed into place, so
a crash leaves either the previous checkpoint or the new one, never a half-written one that looks valid.
Leftovers of a killed writer (hidden `.tmp_*`, `.old_*`, `.del_*` siblings) are never listed and are cleaned by
the next save; a kill between the two renames of a same-step re-save is undone by restoring the old copy. Before
writing, the free disk space is checked, and a failed write raises an OSError naming the path and keeps the
earlier checkpoints. Crash safety is tested by SIGKILLing writers (tests/reliability/test_crash_safety.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from entropy_rl.models.build import DTYPES, save_pretrained
from entropy_rl.train.guard import NonFiniteWeightsError, non_finite_parameters

COMPLETE = "COMPLETE"
# What COMPLETE holds: {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": N, "sha256": {path: hex}}.
# Version 1 was the pickled trainer_state.pt with the step number as COMPLETE's only content: never read.
MANIFEST_FORMAT = "entropy-rl checkpoint"
MANIFEST_VERSION = 2
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"
OLD_STATE = "trainer_state.pt"
OLD_FORMAT = (f"written by an older entropy-rl in the pickle format ({OLD_STATE}), which is never loaded because "
              "unpickling a file can run code; start the run again (a new run directory, or --overwrite)")
_STEP_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (corrupt, incomplete, old format); the message is one line saying why."""


def checkpoint_dir(run_dir: Path) -> Path:
    """RUN_DIR/checkpoints."""
    return Path(run_dir) / "checkpoints"


def step_of(path: Path) -> int | None:
    """The step number of a `step_N` directory name (any number of digits), or None for other names."""
    tail = path.name[len(_STEP_PREFIX):] if path.name.startswith(_STEP_PREFIX) else ""
    return int(tail) if tail.isdigit() else None


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` and the directory itself (durability before the rename)."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


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


def dtype_name(model: torch.nn.Module) -> str:
    """The name (a key of models.build.DTYPES) of the model's parameter dtype, so a resume loads it unchanged."""
    dtype = next(model.parameters()).dtype
    return next(name for name, d in DTYPES.items() if d == dtype)


# ---------------------------------------------------------------- trainer state: safetensors + JSON

# JSON objects with one of these keys stand for a tensor, a tuple or a dict whose keys are not all strings.
_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], seen: dict[int, str], where: str) -> Any:
    """JSON-ready copy of `obj`; its tensors go to `tensors` (CPU, contiguous, own storage) under "t<i>" keys."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            t = obj.detach().cpu()
            if not t.is_contiguous() or t.storage_offset() or t.untyped_storage().nbytes() != t.nbytes:
                t = t.clone(memory_format=torch.contiguous_format)  # safetensors refuses views and shared storage
            seen[id(obj)] = key = f"t{len(tensors)}"
            tensors[key] = t
        return {_TENSOR: seen[id(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not obj.keys() & {_TENSOR, _TUPLE, _DICT}:
            return {k: _encode(v, tensors, seen, f"{where}.{k}") for k, v in obj.items()}
        return {_DICT: [[_encode(k, tensors, seen, f"{where} key"), _encode(v, tensors, seen, f"{where}[{k!r}]")]
                        for k, v in obj.items()]}
    raise TypeError(f"trainer state: cannot store a {type(obj).__name__} at '{where}' (tensors, numbers, strings, "
                    "None, lists, tuples and dicts only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_encode`. Raises KeyError for a tensor reference that the safetensors file lacks."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _TENSOR in obj:
        return tensors[obj[_TENSOR]]
    if _TUPLE in obj:
        return tuple(_decode(v, tensors) for v in obj[_TUPLE])
    if _DICT in obj:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in obj[_DICT]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict, torch.Tensor)):
        raise TypeError(f"a dict key of type {type(key).__name__}")
    return key


def write_trainer_state(state: dict[str, Any], directory: Path) -> None:
    """Write `state` as STATE_TENSORS (its tensors) + STATE_JSON (the rest, referencing them) in `directory`.

    Raises:
        TypeError: a value is not a tensor, number, string, None, list, tuple or dict.
    """
    tensors: dict[str, torch.Tensor] = {}
    doc = _encode(state, tensors, {}, "state")
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(doc))


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint (optimizer, scheduler, rng, step, method state); never unpickles.

    This reads the files as they are; `verify_checkpoint` (or `load_latest`, which calls it) checks them first.

    Raises:
        CheckpointError: the old pickle format, or missing / unreadable state files.
    """
    ckpt = Path(ckpt)
    if not (ckpt / STATE_JSON).is_file() and (ckpt / OLD_STATE).exists():
        raise CheckpointError(f"{ckpt}: {OLD_FORMAT}")
    try:
        tensors = load_file(str(ckpt / STATE_TENSORS))
        state = _decode(json.loads((ckpt / STATE_JSON).read_text()), tensors)
    except Exception as e:  # noqa: BLE001  any parse failure (safetensors' SafetensorError is a bare Exception)
        raise CheckpointError(f"trainer state of {ckpt} unreadable: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"trainer state of {ckpt} is not a mapping")
    return state


# ---------------------------------------------------------------- manifest (COMPLETE) and verification


def _files(directory: Path) -> list[str]:
    """Paths (relative, '/'-separated) of the regular files under `directory`, except COMPLETE, sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.relative_to(directory).as_posix() != COMPLETE)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(directory: Path, step: int) -> None:
    """Write COMPLETE: the format, the step and the sha256 of every other file under `directory`."""
    doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": step,
           "sha256": {name: sha256_file(directory / name) for name in _files(directory)}}
    (directory / COMPLETE).write_text(json.dumps(doc, indent=1, sort_keys=True))


def verify_checkpoint(ckpt: Path) -> None:
    """Check a checkpoint against its COMPLETE manifest: format, step, the exact file set and every sha256.

    Raises:
        CheckpointError: the first problem found (one line, naming the file).
    """
    ckpt = Path(ckpt)
    try:
        text = (ckpt / COMPLETE).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{COMPLETE} marker unreadable ({type(e).__name__})") from None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) and (ckpt / OLD_STATE).exists():
        raise CheckpointError(OLD_FORMAT)
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("sha256"), dict):
        raise CheckpointError(f"{COMPLETE} marker is not a checkpoint manifest (garbage or truncated)")
    if doc.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"unknown checkpoint format version {doc.get('version')!r} (this entropy-rl reads "
                              f"{MANIFEST_VERSION})")
    if doc.get("step") != step_of(ckpt):
        raise CheckpointError(f"{COMPLETE} says step {doc.get('step')!r} but the directory is {ckpt.name}")
    expected, present = doc["sha256"], set(_files(ckpt))
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing:
        raise CheckpointError(f"file missing: {', '.join(missing[:3])}")
    if extra:
        raise CheckpointError(f"file not written by entropy-rl: {', '.join(extra[:3])}")
    for name in sorted(expected):
        if sha256_file(ckpt / name) != expected[name]:
            raise CheckpointError(f"checksum mismatch in {name} (the file changed after it was written)")


def load_latest(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, with its trainer state; None if the run has no checkpoint at all.

    Every `step_N` directory is tried, newest first; one that fails (no COMPLETE marker, a checksum mismatch,
    a missing or extra file, an unreadable state, the old pickle format) is skipped with a warning naming the
    problem, and the next older one is tried.

    Args:
        run_dir: the run directory (checkpoints under RUN_DIR/checkpoints).
        warn: called with one line per skipped checkpoint.

    Raises:
        CheckpointError: checkpoints exist but none is usable (one line listing why, newest first).
    """
    root = checkpoint_dir(run_dir)
    candidates = sorted((p for p in root.glob(f"{_STEP_PREFIX}*") if step_of(p) is not None), key=step_of) \
        if root.is_dir() else []
    problems = []
    for c in reversed(candidates):
        try:
            if not (c / COMPLETE).is_file():
                raise CheckpointError(f"no {COMPLETE} marker")
            verify_checkpoint(c)
            state = load_trainer_state(c)
            if state.get("step") != step_of(c):
                raise CheckpointError(f"trainer state says step {state.get('step')!r}")
        except CheckpointError as e:
            problems.append(f"{c.name}: {e}")
            warn(f"checkpoint {c} is not usable: {e}; trying the previous one")
            continue
        return c, state
    if problems:
        raise CheckpointError(f"no usable checkpoint in {root} ({'; '.join(problems)}); "
                              "start again with --overwrite or restore a checkpoint")
    return None


# ---------------------------------------------------------------- writing, crash recovery, pruning

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
    of this run directory (the trainer is: it holds the run directory's lock, see train/rundir.py).
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
    """Bytes of every tensor nested in dicts/lists/tuples of `obj` (an estimate of its saved size)."""
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
    tensors in `trainer_state`. The files are hashed (sha256) into the COMPLETE manifest before the rename;
    this reads the checkpoint back once (from the page cache, typically).

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
    final = root / f"{_STEP_PREFIX}{step:06d}"
    tmp = root / f"{_TMP}{final.name}_{os.getpid()}"
    previous = latest_checkpoint(run_dir)
    expected = dir_size(previous) if previous is not None else (
        sum(p.numel() * p.element_size() for p in model.parameters()) + _tensor_bytes(trainer_state))
    check_free_space(root, max(min_free_bytes, int(free_space_margin * expected)), previous is not None)
    try:
        save_pretrained(model, tokenizer, tmp / "model")
        write_trainer_state(trainer_state, tmp)
        write_manifest(tmp, step)
        fsync_tree(tmp)
    except BaseException as e:  # also KeyboardInterrupt and non-OSError writer errors: never leave tmp behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        hint = " (disk full)" if e.errno == errno.ENOSPC else ""
        kept = "the previous checkpoint is kept" if previous is not None else "no checkpoint was written"
        raise OSError(e.errno, f"could not write checkpoint{hint}: {e}; {kept}", str(final)) from e
    if final.exists():  # re-saving the same step (e.g. after resume): swap, never leave a gap
        old = root / f"{_OLD}{final.name}_{os.getpid()}"  # a kill between the two renames: recover_interrupted
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
    """Checkpoints with a COMPLETE marker, oldest first (by step number: step_1000000 after step_999999)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_STEP_PREFIX}*") if step_of(p) is not None and (p / COMPLETE).is_file()]
    return sorted(found, key=step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest checkpoint with a COMPLETE marker, or None (`load_latest` also verifies its files)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
