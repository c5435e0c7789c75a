"""Run directories: only a marked directory is reused or cleared, only the toolkit's entries are removed,
dangerous targets are refused, a failed start does not block the rerun, and a lock keeps a second process out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_rl import cli
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train import loop
from entropy_rl.train.config import save_config
from entropy_rl.train.loop import train
from entropy_rl.train.rundir import LOCK, MARKER, RunDirError, RunLock, dangerous_reason, open_run_dir


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (directories map to None) with its bytes: 'nothing changed' is equality."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def user_folder(path: Path) -> Path:
    """A folder a user cares about that happens to have a config.yaml (the old code rmtree'd it on --overwrite)."""
    (path / "src").mkdir(parents=True)
    (path / "config.yaml").write_text("model: mine\n")
    (path / "src" / "important.py").write_text("print('irreplaceable')\n")
    (path / "notes.md").write_text("three weeks of notes\n")
    return path


@pytest.mark.parametrize("contents", ["config.yaml, src/, notes", "notes only"])
@pytest.mark.parametrize("mode", ["fresh", "overwrite", "resume"])
def test_a_folder_that_is_not_a_run_is_never_written_or_deleted(tiny_config, tmp_path: Path, contents: str, mode: str) -> None:
    folder = tmp_path / "mine"
    if contents == "notes only":
        folder.mkdir()
        (folder / "notes.md").write_text("notes\n")
    else:
        user_folder(folder)
    before = snapshot(folder)
    with pytest.raises(RunDirError, match="is not an entropy-rl run directory") as info:
        train(tiny_config("train.steps=1"), folder, resume=mode == "resume", overwrite=mode == "overwrite", progress=False)
    assert "--overwrite" not in str(info.value)  # the old message suggested the flag that deleted the folder
    assert snapshot(folder) == before


def test_overwrite_removes_only_what_the_toolkit_wrote(tiny_config, run_dir: Path, capsys) -> None:
    train(tiny_config("train.steps=2", "train.save_every=1"), run_dir, progress=False)
    (run_dir / "notes.md").write_text("my analysis of this run\n")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "fig.png").write_bytes(b"png")
    train(tiny_config("train.steps=1"), run_dir, overwrite=True, progress=False)
    assert (run_dir / "notes.md").read_text() == "my analysis of this run\n" and (run_dir / "plots" / "fig.png").is_file()
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]  # the new run only
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000001"]
    assert "kept 2 entries" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["home", "cwd", "parent of cwd"])
@pytest.mark.parametrize("mode", ["fresh", "overwrite", "resume"])
def test_dangerous_targets_are_refused(tiny_config, tmp_path: Path, monkeypatch, target: str, mode: str) -> None:
    """Home, the current directory and its parents are refused even when they look like a run (a fake home and
    a temporary cwd stand in for the real ones); the filesystem root is checked without touching it."""
    home, work = tmp_path / "home", tmp_path / "outer" / "work"
    work.mkdir(parents=True)
    user_folder(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    path = {"home": home, "cwd": Path("."), "parent of cwd": Path("..")}[target]
    (path / MARKER).write_text('{"format": "entropy-rl run directory", "version": 1, "kind": "train", "files": []}')
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(tmp_path)
    with pytest.raises(RunDirError, match="refusing to use"):
        train(tiny_config("train.steps=1"), path, resume=mode == "resume", overwrite=mode == "overwrite", progress=False)
    assert snapshot(tmp_path) == before
    assert dangerous_reason(Path("/")) == "it is the filesystem root"
    assert dangerous_reason(Path("~")) == "it is your home directory"
    assert dangerous_reason(work / "runs" / "a") is None


def test_run_dir_under_a_file_is_one_clear_line(tiny_config, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    save_config(tiny_config("train.steps=1"), cfg)
    (tmp_path / "afile").write_text("x")
    for run_dir, why in ((tmp_path / "afile" / "sub", "afile' is a file, not a directory"), (tmp_path / "afile", "is a file")):
        code = cli.main(["train", str(cfg), "--run-dir", str(run_dir), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and why in err and "Traceback" not in err and err.count("\n") == 1, err
    assert (tmp_path / "afile").read_text() == "x"


def test_a_failed_start_does_not_block_the_corrected_rerun(tiny_config, run_dir: Path, monkeypatch) -> None:
    def broken(cfg, task):
        raise OSError("model load failed")

    monkeypatch.setattr(loop, "initial_model", broken)
    with pytest.raises(OSError, match="model load failed"):
        train(tiny_config("train.steps=1", "train.sinks=[jsonl]"), run_dir, progress=False)
    assert {p.name for p in run_dir.iterdir()} == {MARKER, LOCK, "config.yaml"}
    monkeypatch.undo()
    train(tiny_config("train.steps=2"), run_dir, progress=False)  # another config, no --overwrite needed
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    with pytest.raises(FileExistsError, match="--resume"):  # but a run with progress is protected
        train(tiny_config("train.steps=2"), run_dir, progress=False)


HOLDER = ("import sys; from pathlib import Path; from entropy_rl.train.rundir import RunLock; "
          "lock = RunLock.acquire(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.readline()")


def test_a_second_process_on_a_locked_run_dir_fails_fast_and_changes_nothing(tiny_config, run_dir: Path) -> None:
    cfg = tiny_config("train.steps=2", "train.save_every=1")
    train(cfg, run_dir, progress=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_dir.parent)
        for mode in ("fresh", "resume", "overwrite"):
            with pytest.raises(RunDirError, match=rf"in use by another process \(pid {holder.pid}: -c {run_dir}\)"):
                train(cfg, run_dir, resume=mode == "resume", overwrite=mode == "overwrite", progress=False)
            assert snapshot(run_dir.parent) == before, mode
    finally:
        holder.communicate("\n", timeout=30)
    train(tiny_config("train.steps=3", "train.save_every=1"), run_dir, overwrite=True, progress=False)  # free again
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_the_lock_is_held_for_the_whole_run_and_released_on_error(tiny_config, run_dir: Path, monkeypatch) -> None:
    seen = []
    real = loop.build_policy

    def during_the_run(cfg, task, run_dir_, device, log):
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            RunLock.acquire(run_dir_)  # another open file description: flock conflicts even in this process
        seen.append("locked")
        return real(cfg, task, run_dir_, device, log)

    monkeypatch.setattr(loop, "build_policy", during_the_run)
    train(tiny_config("train.steps=1"), run_dir, progress=False)
    assert seen == ["locked"]
    with pytest.raises(Exception, match="config differs"):  # an error after locking releases the lock
        train(tiny_config("train.steps=1", "optim.lr=0.5"), run_dir, resume=True, progress=False)
    RunLock.acquire(run_dir).release()


def test_a_run_dir_of_another_kind_or_with_a_foreign_marker_is_refused(tmp_path: Path) -> None:
    sft_out = tmp_path / "sft_out"
    open_run_dir(sft_out, "sft", resume=False, overwrite=False).release()
    with pytest.raises(RunDirError, match="holds an entropy-rl sft output"):
        open_run_dir(sft_out, "train", resume=False, overwrite=True)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / MARKER).write_text('{"format": "entropy-rl run directory", "version": 1, "kind": "train", "files": ["../x"]}')
    with pytest.raises(RunDirError, match="not an entropy-rl run marker"):
        open_run_dir(odd, "train", resume=False, overwrite=True)


FORKER = """
import os, sys, time
from pathlib import Path
from entropy_rl.train.rundir import RunLock
lock = RunLock.acquire(Path(sys.argv[1]))
ready_r, ready_w = os.pipe()
child = os.fork()
if child == 0:  # at-fork handlers have run by now
    os.write(ready_w, b"x")
    time.sleep(120)
    os._exit(0)
os.read(ready_r, 1)
os.close(lock._fd)  # the holder's own descriptor goes, without an unlock: what its death does
print("closed", flush=True)
sys.stdin.readline()
print("child alive" if os.waitpid(child, os.WNOHANG) == (0, 0) else "child gone", flush=True)
os.kill(child, 9)
"""


def test_a_child_that_outlives_the_holder_does_not_keep_the_lock(tmp_path: Path) -> None:
    """A process forked by the trainer (a reward worker with start_method fork) shares the lock's file description;
    left behind by a killed trainer, it would keep the run locked. It closes its copy at fork."""
    proc = subprocess.Popen([sys.executable, "-c", FORKER, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "closed"
        RunLock.acquire(tmp_path).release()
        out, _ = proc.communicate("\n", timeout=60)
        assert out.strip() == "child alive"
    finally:
        proc.kill()
        proc.wait()
