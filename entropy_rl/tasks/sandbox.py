"""Run user reward functions with a per-call timeout and exception capture: `run_reward` / `RewardSandbox`.

A user reward function `fn(problem, completion)` returns a bool or a number in the task's score range (default
[0, 1]), or a full `RewardResult`. It is the user's own code, imported by path (see `python_fn.py`); this module
never evaluates model text. It runs in a persistent worker process, one per function:

    trainer --(problem, completion) pickle--> pipe --> worker: fn(problem, completion)
    trainer <--length-prefixed JSON: [score, reason, answer] or the error text-- pipe <-- worker checks, converts

- an exception in `fn`, a result that is not a bool / number / RewardResult, a score that is not finite or is
  outside the score range, or the worker dying -> score 0, reason "error"; the first `MAX_LOGGED_ERRORS`
  tracebacks are logged (`logging`, logger "entropy_rl.tasks.sandbox"), later ones are only counted
  (`RewardSandbox.errors`);
- no answer within `timeout_s` -> the worker's whole process group is SIGKILLed and the worker restarted, score
  0, reason "timeout";
- the run always continues. "error" and "timeout" are not format errors (`RewardResult.format_error` is
  False): they are the verifier's failures, not the model's.

The worker checks and converts the result to plain JSON data inside the call, so everything `fn`'s objects can
run (`__float__`, `__str__`, `__reduce__`, ...) runs in the worker under the timeout; the trainer only parses
JSON (at most `MAX_REPLY_BYTES`), never unpickles what the function returned, and the whole reply must arrive
within `timeout_s` of the request (a reply that starts in time but stalls is a timeout too).

Process hygiene. The worker starts its own session (`os.setsid`), so it and everything `fn` forks share one
process group, and a timeout, `close()` or the trainer's exit (`atexit`) SIGKILLs the whole group. A small
reaper process, forked by the worker into the same group before the first call, SIGKILLs the group as soon as
the worker is gone (killed, crashed, `os._exit`) or the trainer is gone (even SIGKILLed, even while `fn` is
busy); it waits on a pidfd of the trainer (Linux >= 5.3), else polls it every `REAPER_POLL_S`. (The worker's
parent is not a reliable signal: under forkserver it is the fork server, which stays alive as long as any
worker does.) `memory_mb` caps the address space `fn` may add (RLIMIT_AS, Linux). What this does not isolate
(files, network, ...) is listed in docs/reliability.md.

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

import atexit
import json
import logging
import math
import multiprocessing as mp
import os
import select
import signal
import struct
import sys
import time
import traceback
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable

from entropy_rl.tasks.base import DEFAULT_SCORE_RANGE, Problem, RewardResult, validate_result

log = logging.getLogger(__name__)

MAX_LOGGED_ERRORS = 5  # tracebacks logged per sandbox; the rest are counted
STARTUP_TIMEOUT_S = 60.0  # a worker that does not report ready within this is an error (import hang)
MAX_REPLY_BYTES = 1 << 20  # a longer reply (e.g. a huge answer string) is an error
MAX_ERROR_CHARS = 20_000  # tail of a traceback sent back
REAPER_POLL_S = 0.1  # the reaper checks this often whether the worker or the trainer is gone
USE_PIDFD = hasattr(os, "pidfd_open")  # wait on the trainer's pidfd (Linux >= 5.3) rather than polling os.kill(pid, 0)

RewardFn = Callable[[Problem, str], Any]
START_METHODS = ("forkserver", "spawn", "fork")
DEFAULT_START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def to_result(value: Any, completion: str, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> RewardResult:
    """Turn what a user function returned into a plain, checked RewardResult.

    Accepts a RewardResult (checked by `validate_result`), a bool (True -> the top of `score_range`, reason "ok";
    False -> the bottom, reason "wrong_value") or a finite real number in `score_range` (the top -> "ok", else
    "wrong_value"; the answer is the stripped completion, so distinct-answer metrics work).

    Raises:
        TypeError, ValueError: anything else (the sandbox reports it as reason "error").
    """
    low, high = score_range
    if isinstance(value, RewardResult):
        return validate_result(value, score_range)
    if isinstance(value, bool):
        score = high if value else low
    elif isinstance(value, (int, float)):
        score = float(value)
        if not math.isfinite(score) or not low <= score <= high:
            raise ValueError(f"reward function returned {value!r}; expected a number in [{low}, {high}]")
    else:
        raise TypeError(f"reward function returned {type(value).__name__} {value!r:.80}; expected bool, "
                        f"a number in [{low}, {high}] or a RewardResult")
    return RewardResult(score, "ok" if score >= high else "wrong_value", completion.strip())


def _trainer_gone(trainer: int, poller: select.poll | None) -> bool:
    """Wait up to REAPER_POLL_S for process `trainer` to exit; whether it has (`poller` watches its pidfd)."""
    if poller is not None:
        return bool(poller.poll(REAPER_POLL_S * 1000))
    try:
        os.kill(trainer, 0)  # note: a dead trainer that its parent has not reaped yet (a zombie) still counts as alive
    except ProcessLookupError:
        return True
    except PermissionError:  # the pid now belongs to another user's process: ours is gone
        return True
    time.sleep(REAPER_POLL_S)
    return False


def _start_reaper(trainer: int) -> None:
    """Fork a process into the caller's (the worker's) process group that SIGKILLs the group once the worker or
    the trainer (pid `trainer`) is gone.

    It holds the group id, so the id cannot be reused while anything of the group lives, and it cleans up what
    `fn` forked however the worker ends (crash, `os._exit`, the trainer killed without a chance to clean up).
    """
    worker = os.getpid()
    if os.fork() != 0:
        return
    try:  # the reaper: no Python-level cleanup, no inherited pipes (the trainer must see EOF when the worker dies)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        poller = None
        if USE_PIDFD:
            try:
                pidfd = os.pidfd_open(trainer)
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
            except OSError:  # already gone (ProcessLookupError), or no pidfd support: poll with os.kill
                poller = None
        while os.getppid() == worker and not _trainer_gone(trainer, poller):
            pass
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)


def _cap_memory(memory_mb: int) -> None:
    """Limit the address space to its current size plus `memory_mb` MiB (RLIMIT_AS, soft and hard; Linux)."""
    import resource

    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = current + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _send_reply(conn: Connection, payload: dict[str, Any]) -> None:
    """Worker side: write `payload` as one frame, a 4-byte big-endian length then that many bytes of JSON."""
    data = json.dumps(payload).encode()
    if len(data) > MAX_REPLY_BYTES:
        data = json.dumps({"error": f"the reply is {len(data)} bytes, over the {MAX_REPLY_BYTES}-byte limit"}).encode()
    view = memoryview(struct.pack("!I", len(data)) + data)
    while view:
        view = view[os.write(conn.fileno(), view):]


def _read_reply(conn: Connection, deadline: float) -> bytes:
    """Trainer side: the JSON bytes of one frame, all of them read by `deadline` (`time.monotonic()` seconds).

    Raises:
        TimeoutError: the frame was not complete by the deadline.
        EOFError: the worker closed the pipe (it died).
        ValueError: a frame longer than MAX_REPLY_BYTES, or bytes after the frame (neither is something
            `_send_reply` writes).
    """
    fd = conn.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buf, need = b"", None  # need: 4 + the payload length, once the header is in
    while need is None or len(buf) < need:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError
        chunk = os.read(fd, 65536 if need is None else need - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
        if need is None and len(buf) >= 4:
            need = 4 + struct.unpack("!I", buf[:4])[0]
            if need - 4 > MAX_REPLY_BYTES:
                raise ValueError(f"a reply of {need - 4} bytes, over the {MAX_REPLY_BYTES}-byte limit")
    if len(buf) > need:
        raise ValueError(f"{len(buf) - need} unexpected bytes after the reply")
    return buf[4:]


def _worker(fn: RewardFn, conn: Connection, score_range: tuple[float, float], memory_mb: int, trainer: int) -> None:
    """Worker: answer each (problem, completion) with JSON `{"ok": [score, reason, answer]}` or `{"error": text}`.

    Exits on EOF (the trainer closed the pipe); its reaper kills it and its group when the trainer (pid `trainer`)
    is gone.
    """
    os.setsid()  # own session and process group: the trainer kills the group, with everything fn forks
    _start_reaper(trainer)
    if memory_mb:
        _cap_memory(memory_mb)
    _send_reply(conn, {"ready": True})
    while True:
        try:
            problem, completion = conn.recv()
        except (EOFError, OSError):  # the trainer exited or was killed: go away with it
            return
        try:
            r = to_result(fn(problem, completion), completion, score_range)
            reply: dict[str, Any] = {"ok": [r.score, r.reason, r.answer]}
        except BaseException:  # noqa: BLE001 - user code: report everything, including SystemExit and MemoryError
            reply = {"error": traceback.format_exc()[-MAX_ERROR_CHARS:]}
        _send_reply(conn, reply)


def _kill_group(pid: int) -> None:
    """SIGKILL process group `pid` (the worker's, after its setsid) and the process itself (before setsid)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_LIVE: weakref.WeakSet[RewardSandbox] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit, kill every sandbox's worker process group (what `fn` forked included)."""
    for sandbox in list(_LIVE):
        sandbox.close()


class RewardSandbox:
    """A persistent worker process running one reward function with a per-call timeout.

    Args:
        fn: `fn(problem, completion) -> bool | float | RewardResult`; importable at module level for "spawn".
        timeout_s: wall-clock limit per call, seconds (> 0).
        start_method: "forkserver" (default; safe with torch/CUDA, cheap restarts), "spawn" or "fork" (also
            takes closures; unsafe once the process runs threads).
        name: label for log messages (default: the function's qualified name).
        score_range: (low, high), inclusive range of allowed scores (default (0, 1)).
        memory_mb: cap on the address space `fn` may add to the worker, MiB (RLIMIT_AS; Linux); 0 = no cap.

    Attributes:
        calls, errors, timeouts: counters over the sandbox's lifetime.
    """

    def __init__(self, fn: RewardFn, timeout_s: float = 2.0, start_method: str = DEFAULT_START_METHOD,
                 name: str | None = None, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE,
                 memory_mb: int = 0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"reward sandbox: timeout_s must be > 0, got {timeout_s}")
        if start_method not in START_METHODS:
            raise ValueError(f"reward sandbox: start_method must be one of {START_METHODS}, got '{start_method}'")
        if memory_mb < 0 or (memory_mb and not sys.platform.startswith("linux")):
            raise ValueError(f"reward sandbox: memory_mb must be >= 0 (and > 0 only on Linux), got {memory_mb}")
        self.fn, self.timeout_s = fn, float(timeout_s)
        self.score_range, self.memory_mb = (float(score_range[0]), float(score_range[1])), int(memory_mb)
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":  # workers fork from a server that has already imported this module
            self.ctx.set_forkserver_preload([__name__])
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.calls = self.errors = self.timeouts = 0
        self._proc: Any = None
        self._conn: Connection | None = None
        _LIVE.add(self)

    # ---- worker lifecycle ----
    def _start(self) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker, args=(self.fn, child, self.score_range, self.memory_mb, os.getpid()),
                                daemon=True, name=f"reward:{self.name}")
        proc.start()
        child.close()  # so the parent sees EOF if the worker dies
        self._proc, self._conn = proc, parent
        try:
            _read_reply(parent, time.monotonic() + STARTUP_TIMEOUT_S)  # {"ready": true}
        except TimeoutError:
            self.close()
            raise RuntimeError(f"reward function {self.name}: worker did not start within {STARTUP_TIMEOUT_S} s") from None
        except (EOFError, OSError, ValueError):
            self.close()
            raise RuntimeError(f"reward function {self.name}: worker died at startup (exit code {proc.exitcode}); "
                               f"with start_method '{self.ctx.get_start_method()}' the function must be importable at module level") from None

    def close(self) -> None:
        """Kill the worker and everything in its process group (a later call starts a new worker)."""
        conn, proc = self._conn, self._proc
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.exitcode is None:  # not reaped yet, so its pid (= its group id) cannot have been reused
                _kill_group(proc.pid)
            proc.join()  # a worker that is already gone: its reaper kills the rest of its group

    def __del__(self) -> None:  # best effort; atexit and the worker's own checks also end it
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
        deadline = time.monotonic() + self.timeout_s
        try:
            self._conn.send((problem, completion))
        except (BrokenPipeError, OSError, EOFError):
            return self._error(f"worker died before the call (exit code {self._proc.exitcode})", restart=True)
        try:
            data = _read_reply(self._conn, deadline)
        except TimeoutError:
            self.timeouts += 1
            self.close()  # SIGKILL: the only way to stop a hung CPU-bound call; restarted on the next call
            if self.timeouts <= MAX_LOGGED_ERRORS:
                log.warning("reward function %s timed out after %.3g s (timeout %d; score 0, reason 'timeout')%s",
                            self.name, self.timeout_s, self.timeouts,
                            "; further timeouts are counted, not logged" if self.timeouts == MAX_LOGGED_ERRORS else "")
            return RewardResult(0.0, "timeout", None)
        except (EOFError, OSError, ValueError) as e:  # e.g. os._exit or a segfault in fn
            return self._error(f"worker died during the call (exit code {self._proc.exitcode}): {type(e).__name__} {e}",
                               restart=True)
        return self._parse(data)

    def _parse(self, data: bytes) -> RewardResult:
        """The worker's JSON reply -> a checked RewardResult, or an error result for anything malformed."""
        try:
            reply = json.loads(data)
            if "error" in reply:
                return self._error(str(reply["error"]))
            score, reason, answer = reply["ok"]
            return validate_result(RewardResult(score, reason, answer), self.score_range)
        except Exception as e:  # noqa: BLE001 - whatever the worker sent (e.g. fn wrote to the pipe itself)
            return self._error(f"malformed reply from the worker: {type(e).__name__}: {e}", restart=True)

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
