"""User reward functions for tests/reliability/test_reward_sandbox.py (module level: the spawned worker imports them)."""

from __future__ import annotations

import os
import subprocess
import time

from entropy_rl.tasks.base import RewardResult


def exact(problem, completion: str) -> bool:
    """1 if the completion equals the reference answer."""
    return completion.strip() == problem.answer


def raises(problem, completion: str) -> float:
    raise ZeroDivisionError("user bug")


def hangs(problem, completion: str) -> float:
    """CPU-bound hang (a thread could not be interrupted)."""
    while True:
        pass


def sleeps_on_request(problem, completion: str) -> float:
    """Hangs in a sleep when the completion is "hang", raises on "raise", else exact match."""
    if completion == "hang":
        time.sleep(3600)
    if completion == "raise":
        raise ValueError("bad input")
    return completion.strip() == problem.answer


def bad_return(problem, completion: str):
    return "yes"


def out_of_range(problem, completion: str) -> float:
    return 2.0


def dies(problem, completion: str) -> float:
    os._exit(3)


def constant(problem, completion: str) -> float:
    return 0.0


NOT_CALLABLE = 42


# ---- malformed results, slow unpickling, forked processes, memory (issue 15 item 12) ----
BAD_RESULTS = {  # completion -> what `returns_bad` returns; each must score 0 with reason "error"
    "nan": float("nan"),
    "inf": float("inf"),
    "none": None,
    "str": "yes",
    "big": 1e6,
    "negative": -0.5,
    "result_nan": RewardResult(float("nan"), "ok", "2"),
    "result_inf": RewardResult(float("-inf"), "ok", "2"),
    "result_big": RewardResult(1e6, "ok", "2"),
    "result_str_score": RewardResult("1", "ok", "2"),
    "result_none_score": RewardResult(None, "ok", "2"),
    "result_int_reason": RewardResult(1.0, 5, "2"),
    "result_list_answer": RewardResult(1.0, "ok", ["2"]),
    "result_huge_answer": RewardResult(1.0, "ok", "x" * 2_000_000),  # over the 1 MiB reply limit
}


def returns_bad(problem, completion: str):
    """Returns BAD_RESULTS[completion]."""
    return BAD_RESULTS[completion]


def number_from_completion(problem, completion: str) -> float:
    """The completion read as a number (for score_range tests)."""
    return float(completion)


UNPICKLE_SLEEP_S = 30.0


def _slow_float(x: float) -> float:
    time.sleep(UNPICKLE_SLEEP_S)
    return x


class SlowToUnpickle(float):
    """A float whose unpickling sleeps UNPICKLE_SLEEP_S (or could run any code): the trainer must never unpickle
    what a reward function returned."""

    def __reduce__(self):
        return (_slow_float, (float(self),))


def slow_to_unpickle(problem, completion: str) -> RewardResult:
    return RewardResult(SlowToUnpickle(1.0), "ok", completion)


def forks_sleepers(problem, completion: str) -> float:
    """Starts problem.data["n"] sleeping processes (an `os.fork` child and `sleep` subprocesses), appends
    "worker PID PARENT_PID" and "child PID" lines to problem.data["pid_file"], then hangs if the completion is
    "hang"."""
    with open(problem.data["pid_file"], "a") as f:
        f.write(f"worker {os.getpid()} {os.getppid()}\n")
        for i in range(problem.data["n"]):
            if i == 0:
                pid = os.fork()
                if pid == 0:
                    time.sleep(600)
                    os._exit(0)
            else:
                pid = subprocess.Popen(["sleep", "600"]).pid
            f.write(f"child {pid}\n")
    if completion == "hang":
        time.sleep(3600)
    return 1.0


def allocates(problem, completion: str) -> float:
    """Allocates and touches int(completion) MiB."""
    block = bytearray(int(completion) * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    return 1.0


def stalls_mid_reply(problem, completion: str) -> float:
    """Writes the start of a reply frame (a length of 100 bytes, then 1 byte) to the worker's sockets itself, then
    sleeps 20 s: the trainer must not wait past its timeout for the rest."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                os.write(int(fd), (100).to_bytes(4, "big") + b"{")
        except OSError:
            pass
    time.sleep(20)
    return 1.0
