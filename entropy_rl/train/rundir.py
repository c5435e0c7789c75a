"""Run directories: the marker that identifies one, the lock that keeps a second process out, safe reuse.

A directory is a run directory when the toolkit created it: it holds MARKER (`.entropy-rl-run.json`, JSON with
a format version and the kind of output, "train" or "sft"). Only such a directory is reused, resumed or
cleared, and clearing removes only the entries the toolkit writes (`ENTRIES[kind]`, plus files the marker
records), never anything else. A non-empty directory without the marker is refused, whatever the flags;
so are the filesystem root, the home directory, the current directory and its parents.

While a process uses a run directory it holds an exclusive `fcntl.flock` on LOCK inside it; a second process
fails at once, before it changes anything, with a message naming the holder (pid and command line). The kernel
drops the lock when the holder exits, however it exits, so a killed run never leaves a stale lock; a child the
holder forks (a `fork` reward worker) closes its copy at once, so an orphaned child cannot keep the lock. flock is
advisory and, on some network filesystems, not enforced across machines.

Entry point: `open_run_dir(path, kind, resume, overwrite)`, which returns the held lock (a context manager).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from entropy_rl.train.config import ConfigError

MARKER = ".entropy-rl-run.json"
LOCK = ".entropy-rl.lock"
MARKER_FORMAT = "entropy-rl run directory"
MARKER_VERSION = 1

# Every top-level entry the toolkit writes into a run directory of each kind: what --overwrite removes (the
# marker included; LOCK is kept, see `clear_run_dir`). Add a new output here when the code starts writing it.
ENTRIES: dict[str, tuple[str, ...]] = {
    "train": (
        "config.yaml", "metrics.jsonl", "metrics.jsonl.tmp", "checkpoints", "sft", "sft_metrics.jsonl",
        "sft_metrics.jsonl.tmp", "completions.jsonl", "completions.jsonl.tmp", "token_entropy", "report", "tb",
        "wandb", "eval", "attention_entropy.jsonl", "attention_entropy.jsonl.tmp", MARKER,
    ),
    # `entropy-rl sft --out DIR`: the model files themselves are recorded in the marker's "files" when written.
    "sft": ("config.yaml", "sft_metrics.jsonl", "sft_metrics.jsonl.tmp", "checkpoints", "COMPLETE", "eval", MARKER),
}
# Entries whose content means the run has made progress that starting over would lose (rows, checkpoints).
PROGRESS = ("metrics.jsonl", "sft_metrics.jsonl", "checkpoints", "sft")


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (one line saying why; nothing was changed)."""


# ---------------------------------------------------------------- where a run may go


def dangerous_reason(path: Path) -> str | None:
    """Why `path` must never be a run directory (the root, home, the current directory or a parent), or None."""
    target = Path(path).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "it is the filesystem root"
    if target == Path.home().resolve():
        return "it is your home directory"
    if target == cwd:
        return "it is the current directory"
    if target in cwd.parents:
        return "it contains the current directory"
    return None


def check_target(path: Path) -> None:
    """Refuse a dangerous path, a path that is a file, and a path under a file.

    Raises:
        RunDirError: naming the offending path.
    """
    why = dangerous_reason(path)
    if why:
        raise RunDirError(f"refusing to use '{path}' as a run directory: {why}; give a directory of its own, "
                          "e.g. runs/NAME")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory '{path}' is a file, not a directory")
    for parent in path.parents:  # nearest existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"cannot create run directory '{path}': '{parent}' is a file, not a directory")
            break


# ---------------------------------------------------------------- the marker


def read_marker(path: Path) -> dict | None:
    """The marker of run directory `path`, or None if it has none.

    Raises:
        RunDirError: a marker exists but is not one this toolkit wrote (unreadable, wrong format or version).
    """
    marker = path / MARKER
    if not marker.exists():
        return None
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"'{marker}' is unreadable ({type(e).__name__}); not touching '{path}'") from None
    files = doc.get("files", []) if isinstance(doc, dict) else None
    if (not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT or doc.get("kind") not in ENTRIES
            or not isinstance(files, list) or not all(_plain_name(f) for f in files)):
        raise RunDirError(f"'{marker}' is not an entropy-rl run marker; not touching '{path}'")
    if doc.get("version") != MARKER_VERSION:
        raise RunDirError(f"'{marker}' has version {doc.get('version')!r}; this entropy-rl reads version "
                          f"{MARKER_VERSION}; not touching '{path}'")
    return doc


def _plain_name(name: object) -> bool:
    """A single path component: recorded files can only name entries directly inside the run directory."""
    return isinstance(name, str) and name not in ("", ".", "..", LOCK) and "/" not in name and "\0" not in name


def write_marker(path: Path, kind: str, files: list[str] | tuple[str, ...] = ()) -> None:
    """Atomically write the marker of a `kind` run directory; `files` are extra top-level entries it owns."""
    assert kind in ENTRIES and all(_plain_name(f) for f in files), (kind, files)
    doc = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "kind": kind, "files": sorted(set(files))}
    tmp = path / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path / MARKER)


def record_files(path: Path, kind: str, files: list[str]) -> None:
    """Add `files` (names directly in `path`) to what the marker says the toolkit owns."""
    known = (read_marker(path) or {}).get("files", [])
    write_marker(path, kind, [*known, *files])


def progress(path: Path) -> list[str]:
    """Entries showing the run made progress (non-empty metrics files, checkpoints); [] for a failed start."""
    found = []
    for name in PROGRESS:
        p = path / name
        if (p.is_file() and p.stat().st_size > 0) or (p.is_dir() and any(p.iterdir())):
            found.append(name)
    return found


def clear_run_dir(path: Path, kind: str) -> list[str]:
    """Remove the toolkit's entries (ENTRIES[kind] and the marker's recorded files) from run directory `path`.

    LOCK stays: the caller holds it, and deleting a held lock file would let a third process lock a new one.
    Returns the names of the entries that were kept because the toolkit did not write them.
    """
    marker = read_marker(path)
    owned = set(ENTRIES[kind]) | set(marker["files"] if marker else ())
    owned.discard(MARKER)  # last: a kill mid-clear leaves a marked directory, which can be cleared again
    for name in sorted(owned):
        p = path / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    (path / MARKER).unlink(missing_ok=True)
    return sorted(n for n in os.listdir(path) if n != LOCK)


# ---------------------------------------------------------------- the lock


class RunLock:
    """An exclusive flock on RUN_DIR/LOCK, held until `release` (or process exit). Use as a context manager."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        _HELD.add(self)

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock `run_dir` (creating LOCK if needed) without waiting; then write our pid and command into LOCK.

        Raises:
            RunDirError: another process holds the lock (its pid and command are in the message).
        """
        lock = run_dir / LOCK
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # no O_TRUNC: the holder's info stays
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(lock)
            os.close(fd)
            raise RunDirError(f"run directory '{run_dir}' is in use by another process ({holder}); nothing was "
                              "changed: wait for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)[:500]})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        return cls(lock, fd)

    def release(self) -> None:
        """Drop the lock (idempotent). The holder info is cleared first, so a stale pid is never reported."""
        if self._fd is None:
            return
        _HELD.discard(self)
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# Locks this process holds. A forked child shares their open file descriptions, and an flock lives as long as
# any descriptor of it: the child closes its copies (without LOCK_UN, which would unlock the parent's too).
_HELD: set[RunLock] = set()


def _close_inherited_locks() -> None:
    for lock in list(_HELD):
        if lock._fd is not None:
            os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _describe_holder(lock: Path) -> str:
    """'pid N: COMMAND' from the lock file, or what is known when the holder has not written it yet."""
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return "pid unknown"
    return f"pid {info['pid']}: {info.get('command') or '?'}"


# ---------------------------------------------------------------- the entry point


def open_run_dir(path: Path, kind: str, resume: bool, overwrite: bool,
                 log: Callable[[str], None] = print) -> RunLock:
    """Check, lock and prepare run directory `path` for a `kind` run; returns the held lock.

    - a new or empty directory is created and marked;
    - a non-empty directory without the marker (or with another kind's) is refused, never written into;
    - a marked directory: `resume` keeps it; `overwrite` clears the toolkit's entries (other files stay);
      neither: a run that made no progress (a failed start) is cleared and started again, one with metrics or
      checkpoints is refused, pointing at --resume / --overwrite.
    Dangerous targets (root, home, the current directory and its parents) and paths under a file are refused
    first. Every refusal happens before anything is written (the lock is released again).

    Raises:
        RunDirError: the directory cannot be used (why, in one line).
        FileExistsError: it holds a run with progress and neither `resume` nor `overwrite` was given.
    """
    path = Path(path)
    check_target(path)
    if path.is_dir():
        _check_owned(path, kind, overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create run directory '{path}': {e.strerror or e}") from None
    lock = RunLock.acquire(path)
    try:
        marker = _check_owned(path, kind, overwrite)  # again, now that no one else can change it
        if marker is not None and not resume:
            done = progress(path)
            if done and not overwrite:
                raise FileExistsError(f"run directory '{path}' already holds a run ({', '.join(done)}); pass "
                                      "--resume to continue it or --overwrite to replace it")
            kept = clear_run_dir(path, kind)
            if not done:
                log(f"'{path}' holds a start that made no progress; starting again")
            if kept:
                log(f"kept {len(kept)} entries in '{path}' that entropy-rl did not write: {', '.join(kept[:5])}")
        if read_marker(path) is None:
            write_marker(path, kind)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_owned(path: Path, kind: str, overwrite: bool) -> dict | None:
    """The marker of existing directory `path`; refuse one that is neither empty nor a `kind` run directory."""
    marker = read_marker(path)
    if marker is None:
        entries = sorted(n for n in os.listdir(path) if n != LOCK)
        if entries:
            what = "an entropy-rl run directory" if kind == "train" else "an entropy-rl SFT output directory"
            raise RunDirError(
                f"'{path}' is not empty ({len(entries)} entries, e.g. '{entries[0]}') and is not {what} (it has "
                f"no {MARKER}), so nothing is written there{' or deleted' if overwrite else ''}: choose a new or "
                "empty directory" + (" (a run directory of an entropy-rl older than the marker also lacks it; move "
                                     "it away yourself)" if "config.yaml" in entries else ""))
        return None
    if marker["kind"] != kind:
        raise RunDirError(f"'{path}' holds an entropy-rl {marker['kind']} output, not a {kind} run; choose "
                          "another directory")
    return marker
