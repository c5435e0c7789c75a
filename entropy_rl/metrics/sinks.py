"""Where metrics go: a `MetricSink` Protocol, JSONL (the default), a one-line console, TensorBoard / W&B.

JSONL is what the tests, golden-metric checks and reports read: offline, diffable, and robust to a killed
run (each line is flushed and fsync'd, so a kill loses at most a partial last line, which `read_jsonl`
skips with a warning). TensorBoard and W&B are optional extras imported only when their sink is built.
Sinks that can show tables (W&B) also implement `TableSink.log_table`; `MultiSink` forwards tables to them.
`append_jsonl` / `truncate_jsonl` serve JSONL files of arbitrary records (completions.jsonl).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import IO, Any, Mapping, Protocol, Sequence, runtime_checkable

__all__ = ["JsonlSink", "MetricSink", "MultiSink", "StdoutSink", "TableSink", "TensorBoardSink", "WandbSink",
           "append_jsonl", "read_jsonl", "truncate_jsonl"]

# JSON has no NaN/Infinity; we write them as these strings and read them back as floats.
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@runtime_checkable
class MetricSink(Protocol):
    """Anything that takes one flat dict of metrics per step."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record the metrics of one step (keys as in `entropy_rl.metrics.names`)."""
        ...

    def close(self) -> None:
        """Flush and release resources; the sink is unusable afterwards."""
        ...


@runtime_checkable
class TableSink(Protocol):
    """A sink that can also show a table of records (e.g. sampled completions) at a step."""

    def log_table(self, step: int, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Record a table under `key` at `step`; each row has one cell (str or number) per column."""
        ...


def _to_number(key: str, value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return float(value)  # float, numpy scalar, 0-dim tensor
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {key!r} is not a number: {value!r}") from e


def _encode(value: int | float) -> int | float | str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class JsonlSink:
    """One JSON object per step and line: `{"step": ..., key: value, ...}` with keys sorted.

    Appends, so a resumed run continues its file; a partial last line left by a killed run is cut off
    first (with a warning) so the new lines do not glue onto it. Each line is flushed and fsync'd before `log` returns.
    Non-finite floats are written as the JSON strings "nan", "inf", "-inf" (JSON has no literal for
    them; `null` would lose which one it was); `read_jsonl` turns them back into floats. Values are
    converted with `float()` (tensors, numpy scalars), ints and bools stay integers.

    Args:
        path: output file; parent directories are created.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_partial_tail(self.path)
        self._f: IO[str] | None = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one line for `step`.

        Args:
            step: training step; stored under "step" (overrides a "step" key in `metrics`).
            metrics: flat mapping of metric key to number.

        Raises:
            ValueError: if the sink is closed.
            TypeError: if a value is not a number.
        """
        if self._f is None:
            raise ValueError(f"JsonlSink({self.path}) is closed")
        record = {k: _encode(_to_number(k, v)) for k, v in metrics.items()}
        record["step"] = int(step)
        self._f.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._f is not None:
            self._f.close()
            self._f = None


def _truncate_partial_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1  # 0 when the only line is partial
        lineno = data.count(b"\n") + 1
        warnings.warn(f"{path}:{lineno}: dropping partial last line before appending", stacklevel=3)
        f.truncate(keep)


def _decode(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: _STR_TO_NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in obj.items()}


def read_jsonl(path: str | os.PathLike[str], decode_nonfinite: bool = True) -> list[dict[str, Any]]:
    """Read a metrics JSONL file written by `JsonlSink` back into a list of dicts (one per step).

    Blank lines are ignored. The strings "nan", "inf", "-inf" become floats again (unless
    `decode_nonfinite` is False: files of text records, where "nan" may be a model's answer). A corrupt last line
    (what a kill mid-write leaves) is skipped with a `warnings.warn` naming the file and line; a corrupt
    line anywhere else means the file was damaged or edited and raises.

    Args:
        path: JSONL file.
        decode_nonfinite: turn the string values "nan", "inf", "-inf" into floats.

    Returns:
        The records in file order.

    Raises:
        ValueError: for a corrupt line that is not the last non-blank line, naming file and 1-based line.
    """
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records: list[dict[str, Any]] = []
    for j, (lineno, line) in enumerate(numbered):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            if j == len(numbered) - 1:
                warnings.warn(f"{path}:{lineno}: skipping partial/corrupt last line ({e})", stacklevel=2)
                break
            raise ValueError(f"{path}:{lineno}: corrupt metrics line ({e})") from e
        records.append(_decode(obj) if decode_nonfinite else obj)
    return records


def _encode_value(value: Any) -> Any:
    if isinstance(value, float):
        return _encode(value)
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    return value


def append_jsonl(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Append records (JSON values: str, numbers, lists, ...) as one line each, flushed and fsync'd.

    A partial last line left by a killed writer is cut off first (with a warning). Non-finite floats, also
    inside lists, are written as the strings "nan", "inf", "-inf" (JSON has no literal for them).

    Args:
        path: output file; parent directories are created.
        records: the records, in order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _truncate_partial_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({k: _encode_value(v) for k, v in record.items()}, allow_nan=False, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: str | os.PathLike[str], last_step: int) -> None:
    """Keep the lines of a JSONL file whose "step" is <= last_step, byte for byte (a resume rewinds to its
    checkpoint). A partial or corrupt last line is dropped; the file is replaced atomically. No file: nothing.

    Args:
        path: JSONL file of records with an integer "step".
        last_step: the newest step to keep.

    Raises:
        ValueError: for a corrupt line that is not the last one (see `read_jsonl`).
    """
    path = Path(path)
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").split("\n") if ln.strip()]
    keep = []
    for record, line in zip(read_jsonl(path, decode_nonfinite=False), lines):  # records never outnumber lines
        if record.get("step", 0) <= last_step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    tmp.replace(path)


# (metric key, label, format) of the console line, in order.
_STDOUT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("reward/mean", "reward", ".3f"),
    ("entropy/token_mean", "entropy", ".3f"),
    ("dynamics/cov_logp_adv", "cov", ".2g"),
    ("policy/approx_kl", "kl", ".2g"),
    ("policy/clipfrac", "clip", ".3f"),
)


_PASS_KEY = re.compile(r"eval/pass@(\d+)")


class StdoutSink:
    """One nanochat-style line per step, e.g.
    `step 12/300 | reward 0.312 | entropy 0.214 | cov 0.0031 | kl 0.0012 | clip 0.021 | 1.42 s/step`.

    Fields come from reward/mean, entropy/token_mean, dynamics/cov_logp_adv, policy/approx_kl,
    policy/clipfrac, eval/pass@k (the smallest and largest k, on eval steps) and timing/step_s; missing ones
    are left out (the step-0 row of the warm start's eval prints `step 0/300 | pass@1 0.312 | pass@8 0.690`).
    cov and kl use two significant digits (they span orders of magnitude), the others fixed decimals.

    Args:
        total_steps: the run's step budget, shown as the denominator.
        stream: where to print; default `sys.stdout` (looked up at each call, so capture works).
    """

    def __init__(self, total_steps: int, stream: IO[str] | None = None) -> None:
        self.total_steps = total_steps
        self._stream = stream

    def format(self, step: int, metrics: Mapping[str, float]) -> str:
        """The line `log` prints, without newline.

        Args:
            step: training step.
            metrics: flat metrics of the step.

        Returns:
            The formatted line.
        """
        parts = [f"step {step}/{self.total_steps}"]
        for key, label, fmt in _STDOUT_FIELDS:
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):{fmt}}")
        ks = sorted(int(key[len("eval/pass@"):]) for key in metrics if _PASS_KEY.fullmatch(key))
        for k in dict.fromkeys([ks[0], ks[-1]] if ks else []):  # pass@1 (smallest k) and the largest k
            parts.append(f"pass@{k} {float(metrics[f'eval/pass@{k}']):.3f}")
        if "timing/step_s" in metrics:
            parts.append(f"{float(metrics['timing/step_s']):.2f} s/step")
        return " | ".join(parts)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Print the line for `step` and flush.

        Args:
            step: training step.
            metrics: flat metrics of the step.
        """
        stream = self._stream if self._stream is not None else sys.stdout
        print(self.format(step, metrics), file=stream, flush=True)

    def close(self) -> None:
        """Nothing to release."""


class TensorBoardSink:
    """Scalars to a TensorBoard event directory (extra: `pip install entropy-rl[tensorboard]`).

    Args:
        log_dir: event file directory.

    Raises:
        ImportError: if tensorboard is not installed, naming the pip extra.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "TensorBoardSink needs the tensorboard package: pip install entropy-rl[tensorboard]"
            ) from e
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Add one scalar per key at `step`.

        Args:
            step: training step (global_step).
            metrics: flat metrics of the step.
        """
        for key, value in metrics.items():
            self._writer.add_scalar(key, _to_number(key, value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the writer."""
        self._writer.close()


class WandbSink:
    """Metrics to Weights & Biases (extra: `pip install entropy-rl[wandb]`).

    Args:
        project: W&B project.
        name: run name.
        config: run config to record (e.g. the resolved training config as a dict).
        **init_kwargs: passed to `wandb.init` (mode="offline", dir=..., ...).

    Raises:
        ImportError: if wandb is not installed, naming the pip extra.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        **init_kwargs: Any,
    ) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError("WandbSink needs the wandb package: pip install entropy-rl[wandb]") from e
        self._wandb = wandb
        self._run = wandb.init(project=project, name=name, config=dict(config or {}), **init_kwargs)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log the metrics of `step`.

        Args:
            step: training step (W&B's step).
            metrics: flat metrics of the step.
        """
        self._run.log({k: _to_number(k, v) for k, v in metrics.items()}, step=step)

    def log_table(self, step: int, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log a `wandb.Table` under `key` at `step` (W&B shows one table version per logged step).

        Args:
            step: training step (W&B's step).
            key: the table's name, e.g. "completions".
            columns: column names.
            rows: one list of cells (str or number) per row.
        """
        self._run.log({key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)

    def close(self) -> None:
        """Finish the run."""
        self._run.finish()


class MultiSink:
    """Fan out to several sinks, in order.

    Args:
        sinks: the sinks.
    """

    def __init__(self, sinks: Sequence[MetricSink]) -> None:
        self.sinks = list(sinks)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log to every sink.

        Args:
            step: training step.
            metrics: flat metrics of the step.
        """
        for sink in self.sinks:
            sink.log(step, metrics)

    def log_table(self, step: int, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Forward a table to every sink that shows tables (`TableSink`); the others are skipped.

        Args:
            step: training step.
            key: the table's name.
            columns: column names.
            rows: one list of cells per row.
        """
        for sink in self.sinks:
            if isinstance(sink, TableSink):
                sink.log_table(step, key, columns, rows)

    def close(self) -> None:
        """Close every sink, even if one fails; the first error is re-raised afterwards.

        Raises:
            Exception: the first exception raised by a sink's close.
        """
        first: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - close the rest before reporting
                first = first or e
        if first is not None:
            raise first
