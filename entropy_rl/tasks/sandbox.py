"""Run user reward functions with a per-call timeout and exception capture: `run_reward` / `RewardSandbox`.

A user reward function `fn(problem, completion)` returns a bool or a number in [0, 1] (or a full
`RewardResult`). It is the user's own code, imported by path (see `python_fn.py`); this module never
evaluates model text. It runs in a persistent worker process, one per function:

    trainer --(problem, completion)--> pipe --> worker: fn(problem, completion) --> pipe --> RewardResult

- an exception in `fn` (or a bad return value, or the worker dying) -> score 0, reason "error"; the first
  `MAX_LOGGED_ERRORS` tracebacks are logged (`logging`, logger "entropy_rl.tasks.sandbox"), later ones are
  only counted (`RewardSandbox.errors`);
- no answer within `timeout_s` -> the worker is SIGKILLed and restarted, score 0, reason "timeout";
- the run always continues. "error" and "timeout" are not format errors (`RewardResult.format_error` is
  False): they are the verifier's failures, not the model's.

Why a process and not a thread: a thread cannot be interrupted in Python, so a hung thread (`while True:
pass`) would be abandoned yet keep burning a core and holding the GIL, slowing the trainer for the rest of
the run; a process is killed and its CPU and memory are freed. The price is a pipe round trip per call
(~0.1 ms, measured in tests/reliability/test_reward_sandbox.py) and a worker restart after each timeout.

Start method: "forkserver" by default (where the platform has it; else "spawn"). The fork server is a
fresh single-threaded interpreter started once (~1 s: it preloads this module, hence torch via the
package), and each worker is forked from it (~20 ms), so a restart after a timeout is cheap, and it is
safe in a trainer that already runs torch thread pools or CUDA, where plain "fork" can deadlock the child.
"spawn" is as safe but pays the ~1.5 s interpreter start on every restart. With both, the function must be
importable (module level, pickled by name), which functions loaded by import path always are. "fork" also
accepts closures and lambdas (fine in tests and in processes that have not started threads). The worker's
startup is waited for outside the per-call timeout.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

from entropy_rl.tasks.base import Problem, RewardResult

log = logging.getLogger(__name__)

MAX_LOGGED_ERRORS = 5  # tracebacks logged per sandbox; the rest are counted
STARTUP_TIMEOUT_S = 60.0  # a worker that does not report ready within this is an error (import hang)

RewardFn = Callable[[Problem, str], Any]
START_METHODS = ("forkserver", "spawn", "fork")
DEFAULT_START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def to_result(value: Any, completion: str) -> RewardResult:
    """Turn what a user function returned into a RewardResult.

    Accepts a RewardResult (as is), a bool, or a finite real number in [0, 1] (1 -> reason "ok", else
    "wrong_value"; the answer is the stripped completion, so distinct-answer metrics work).

    Raises:
        TypeError, ValueError: anything else (the sandbox reports it as reason "error").
    """
    if isinstance(value, RewardResult):
        return value
    if isinstance(value, bool):
        score = float(value)
    elif isinstance(value, (int, float)):
        score = float(value)
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ValueError(f"reward function returned {value!r}; expected a number in [0, 1]")
    else:
        raise TypeError(f"reward function returned {type(value).__name__} {value!r:.80}; expected bool, "
                        f"a number in [0, 1] or a RewardResult")
    return RewardResult(score, "ok" if score >= 1.0 else "wrong_value", completion.strip())


def _worker(fn: RewardFn, conn: Connection) -> None:
    """Worker loop: answer ("ok", RewardResult) or ("error", traceback text) per request; exit on EOF."""
    conn.send(("ready", None))
    while True:
        try:
            problem, completion = conn.recv()
        except (EOFError, OSError):  # the trainer exited or was killed: go away with it
            return
        try:
            reply: tuple[str, Any] = ("ok", to_result(fn(problem, completion), completion))
        except BaseException:  # noqa: BLE001 - user code: report everything, including SystemExit
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable RewardResult.answer
            conn.send(("error", traceback.format_exc()))


class RewardSandbox:
    """A persistent worker process running one reward function with a per-call timeout.

    Args:
        fn: `fn(problem, completion) -> bool | float | RewardResult`; importable at module level for "spawn".
        timeout_s: wall-clock limit per call, seconds (> 0).
        start_method: "forkserver" (default; safe with torch/CUDA, cheap restarts), "spawn" or "fork" (also
            takes closures; unsafe once the process runs threads).
        name: label for log messages (default: the function's qualified name).

    Attributes:
        calls, errors, timeouts: counters over the sandbox's lifetime.
    """

    def __init__(self, fn: RewardFn, timeout_s: float = 2.0, start_method: str = DEFAULT_START_METHOD,
                 name: str | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"reward sandbox: timeout_s must be > 0, got {timeout_s}")
        if start_method not in START_METHODS:
            raise ValueError(f"reward sandbox: start_method must be one of {START_METHODS}, got '{start_method}'")
        self.fn, self.timeout_s = fn, float(timeout_s)
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":  # workers fork from a server that has already imported this module
            self.ctx.set_forkserver_preload([__name__])
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.calls = self.errors = self.timeouts = 0
        self._proc: Any = None
        self._conn: Connection | None = None

    # ---- worker lifecycle ----
    def _start(self) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker, args=(self.fn, child), daemon=True, name=f"reward:{self.name}")
        proc.start()
        child.close()  # so the parent sees EOF if the worker dies
        if not parent.poll(STARTUP_TIMEOUT_S):
            proc.kill()
            raise RuntimeError(f"reward function {self.name}: worker did not start within {STARTUP_TIMEOUT_S} s")
        try:
            parent.recv()  # "ready"
        except EOFError:
            proc.join()
            raise RuntimeError(f"reward function {self.name}: worker died at startup (exit code {proc.exitcode}); "
                               f"with start_method '{self.ctx.get_start_method()}' the function must be importable at module level") from None
        self._proc, self._conn = proc, parent

    def close(self) -> None:
        """Stop the worker (a later call starts a new one)."""
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        self._proc = self._conn = None

    def __del__(self) -> None:  # best effort; the worker is a daemon and also exits on EOF
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ---- calls ----
    def __call__(self, problem: Problem, completion: str) -> RewardResult:
        """Score one completion; never raises for anything `fn` does (see the module docstring)."""
        self.calls += 1
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self._start()
        assert self._conn is not None
        try:
            self._conn.send((problem, completion))
        except (BrokenPipeError, OSError, EOFError):
            return self._error(f"worker died before the call (exit code {self._proc.exitcode})", restart=True)
        if not self._conn.poll(self.timeout_s):
            self.timeouts += 1
            self.close()  # SIGKILL: the only way to stop a hung CPU-bound call; restarted on the next call
            if self.timeouts <= MAX_LOGGED_ERRORS:
                log.warning("reward function %s timed out after %.3g s (timeout %d; score 0, reason 'timeout')%s",
                            self.name, self.timeout_s, self.timeouts,
                            "; further timeouts are counted, not logged" if self.timeouts == MAX_LOGGED_ERRORS else "")
            return RewardResult(0.0, "timeout", None)
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):  # e.g. os._exit or a segfault in fn
            return self._error(f"worker died during the call (exit code {self._proc.exitcode})", restart=True)
        if kind == "error":
            return self._error(payload)
        return payload

    def _error(self, detail: str, restart: bool = False) -> RewardResult:
        self.errors += 1
        if restart:
            self.close()
        if self.errors <= MAX_LOGGED_ERRORS:
            log.warning("reward function %s raised (error %d; score 0, reason 'error'):\n%s%s", self.name,
                        self.errors, detail.rstrip(),
                        "\nfurther errors are counted, not logged" if self.errors == MAX_LOGGED_ERRORS else "")
        return RewardResult(0.0, "error", None)


_SANDBOXES: dict[tuple[Any, float, str], RewardSandbox] = {}


def run_reward(fn: RewardFn, problem: Problem, completion: str, timeout_s: float = 2.0,
               start_method: str = DEFAULT_START_METHOD) -> RewardResult:
    """Score `completion` with user function `fn` in a sandbox: exceptions -> "error", hangs -> "timeout".

    One persistent `RewardSandbox` (worker process) is kept per (fn, timeout_s, start_method), so repeated
    calls cost a pipe round trip, not a process start.

    Args:
        fn: `fn(problem, completion) -> bool | float in [0, 1] | RewardResult`.
        problem: the problem the completion answers (pickled to the worker).
        completion: model text (EOS removed).
        timeout_s: per-call wall-clock limit in seconds.
        start_method: multiprocessing start method of the worker ("forkserver", "spawn" or "fork").

    Returns:
        The function's RewardResult, or score 0.0 with reason "error" / "timeout". Never raises for
        anything `fn` does; raises RuntimeError only if a worker cannot be started at all.
    """
    key = (fn, float(timeout_s), start_method)
    sandbox = _SANDBOXES.get(key)
    if sandbox is None:
        sandbox = _SANDBOXES[key] = RewardSandbox(fn, timeout_s, start_method)
    return sandbox(problem, completion)


def measure_overhead(sandbox: RewardSandbox, problem: Problem, n: int = 200) -> float:
    """Mean seconds per call of `sandbox` over `n` calls (after one warm-up call that starts the worker)."""
    sandbox(problem, "")
    t0 = time.perf_counter()
    for _ in range(n):
        sandbox(problem, "")
    return (time.perf_counter() - t0) / n
