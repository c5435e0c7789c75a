"""`jsonl`: a task from a local dataset file of rows {"prompt": str, "answer": str} (JSONL, or parquet).

Config example: `task: {name: jsonl, params: {path: data/train.jsonl, eval_fraction: 0.1}}`.

Rows: "prompt" a non-empty string, "answer" a string (the SFT target, compared with the completion); other
keys are kept in `Problem.data["extra"]`. A malformed row (invalid JSON, not an object, a missing key, a
wrong type, an empty prompt) raises ValueError naming the file and the 1-based line (row for parquet);
with `skip_bad_rows` it is skipped and counted in `task.bad_rows`, and one warning gives the count and the
first line numbers. Parquet needs pyarrow (`pip install pyarrow`).

Splits: a row is in "eval" iff a stable hash of its prompt (blake2b, not the per-process `hash()`),
mapped to [0, 1), is below `eval_fraction`: deterministic, disjoint, independent of row order.
`prompts(split, n, seed)` samples distinct rows from the split with a seeded RNG (cycling through fresh
shuffles when n exceeds the split size).

Verifier (hand-written, never eval): completion and answer are stripped ("" -> "empty", more than
MAX_CHARS -> "too_long"); equal strings -> "ok"; otherwise, with `numeric` (default on), both are parsed as
plain decimal numbers (optional sign, ASCII digits, at most one '.', nothing else) and compared exactly,
so "2.50" == "2.5" and "-0" == "0"; else "wrong_value". The alphabet is every character in the file's
prompts and answers, so the char tokenizer can encode every prompt and target.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from entropy_rl.tasks.base import SPLITS, TASKS, Problem, RewardResult, fail, ok

MAX_CHARS = 256  # completion length cap after strip (the answer may be longer; then only equality can match)
MAX_NUMBER_CHARS = 64  # longest numeric literal normalised as a number
_SHOWN_BAD_LINES = 5  # line numbers listed in the skip warning


@dataclass(frozen=True)
class Params:
    path: str = ""  # local .jsonl (or .parquet) file of {"prompt": str, "answer": str} rows
    eval_fraction: float = 0.1  # share of prompts (by hash) in the eval split
    skip_bad_rows: bool = False  # skip and count malformed rows instead of raising
    numeric: bool = True  # also compare answers as decimal numbers ("2.50" == "2.5")

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("jsonl: params.path is required (a local .jsonl or .parquet file)")
        if not 0.0 <= self.eval_fraction <= 1.0:
            raise ValueError(f"jsonl: eval_fraction must be in [0, 1], got {self.eval_fraction}")


def parse_number(text: str) -> str | None:
    """Canonical text of a plain decimal number, or None if `text` is not one.

    Accepts an optional sign, ASCII digits and at most one '.', nothing else (no exponent, no unicode
    digits, no "nan"/"inf"), at most MAX_NUMBER_CHARS characters. Canonical form: no '+', no leading zeros,
    no trailing fractional zeros, no "-0": "+03.50" -> "3.5", "-0.0" -> "0", ".5" -> "0.5". Two numbers
    are equal iff their canonical texts are (pure string work: no float rounding, no big-int parsing).
    """
    if not text or len(text) > MAX_NUMBER_CHARS:
        return None
    sign = "-" if text[0] == "-" else ""
    body = text[1:] if text[0] in "+-" else text
    whole, _, frac = body.partition(".")
    if not (whole or frac) or any(not "0" <= c <= "9" for c in whole + frac):
        return None
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    if whole == "0" and not frac:
        sign = ""
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def verify(completion: str, answer: str, numeric: bool = True) -> RewardResult:
    """Compare `completion` with the reference `answer` (rules in the module docstring); never raises."""
    text = completion.strip()
    if not text:
        return fail("empty")
    if len(text) > MAX_CHARS:
        return fail("too_long")
    ref = answer.strip()
    if text == ref:
        return ok(text)
    if numeric:
        a = parse_number(text)
        if a is not None:
            return ok(a) if a == parse_number(ref) else fail("wrong_value", a)
    return fail("wrong_value", text)


def eval_score(prompt: str) -> float:
    """Stable hash of `prompt` mapped to [0, 1); the row is in "eval" iff this is < eval_fraction."""
    digest = hashlib.blake2b(f"jsonl|{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(1-based line number, decoded row or None, error or None) per non-blank line."""
    for i, raw in enumerate(path.read_bytes().split(b"\n")):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i + 1, None, f"not UTF-8 ({e.reason} at byte {e.start})"
            continue
        if not line.strip():
            continue
        try:
            yield i + 1, json.loads(line), None
        except json.JSONDecodeError as e:
            yield i + 1, None, f"invalid JSON ({e.msg} at column {e.colno})"


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"jsonl: reading the parquet file '{path}' needs pyarrow: pip install pyarrow") from e
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield i + 1, row, None


def _check_row(row: Any) -> str | None:
    """Why `row` is malformed, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for key in ("prompt", "answer"):
        if key not in row:
            return f"missing key '{key}'"
        if not isinstance(row[key], str):
            return f"'{key}' must be a string, got {type(row[key]).__name__}"
    if not row["prompt"].strip():
        return "empty prompt"
    return None


@TASKS.register("jsonl", Params)
class JsonlTask:
    """Prompts and reference answers from a local JSONL / parquet file; exact (or numeric) answer match.

    Attributes:
        bad_rows: malformed rows skipped (only with skip_bad_rows; otherwise the first one raises).
        bad_lines: their 1-based line (row) numbers.
    """

    name = "jsonl"

    def __init__(self, params: Params) -> None:
        self.params = params
        path = Path(params.path)
        if not path.is_file():
            raise FileNotFoundError(f"jsonl: dataset file '{path}' does not exist")
        rows = _iter_parquet(path) if path.suffix == ".parquet" else _iter_jsonl(path)
        where = "row" if path.suffix == ".parquet" else "line"
        self.bad_lines: list[int] = []
        self.pools: dict[str, list[Problem]] = {s: [] for s in SPLITS}
        chars: set[str] = set()
        for lineno, row, error in rows:
            error = error or _check_row(row)
            if error is not None:
                if not params.skip_bad_rows:
                    raise ValueError(f"{path}:{lineno}: bad {where}: {error} (set skip_bad_rows to skip such rows)")
                self.bad_lines.append(lineno)
                continue
            extra = {k: v for k, v in row.items() if k not in ("prompt", "answer")}
            problem = Problem(row["prompt"], row["answer"], {"answer": row["answer"], "extra": extra})
            split = "eval" if eval_score(row["prompt"]) < params.eval_fraction else "train"
            self.pools[split].append(problem)
            chars.update(row["prompt"], row["answer"])
        self.bad_rows = len(self.bad_lines)
        if self.bad_rows:
            shown = ", ".join(map(str, self.bad_lines[:_SHOWN_BAD_LINES]))
            more = ", ..." if self.bad_rows > _SHOWN_BAD_LINES else ""
            warnings.warn(f"jsonl: skipped {self.bad_rows} malformed {where}(s) of '{path}' ({where}s {shown}{more})",
                          stacklevel=2)
        if not chars:
            raise ValueError(f"jsonl: '{path}' has no valid rows")
        self.alphabet = "".join(sorted(chars))

    def prompts(self, split: str, n: int, seed: int) -> list[Problem]:
        """`n` problems of `split`, distinct while the split allows, deterministic in (split, n, seed).

        Raises:
            ValueError: unknown split, negative n, or n > 0 for an empty split (names eval_fraction).
        """
        if split not in SPLITS:
            raise ValueError(f"jsonl: split must be one of {SPLITS}, got '{split}'")
        if n < 0:
            raise ValueError(f"jsonl: n must be >= 0, got {n}")
        pool = self.pools[split]
        if n and not pool:
            raise ValueError(f"jsonl: the '{split}' split of '{self.params.path}' is empty "
                             f"(eval_fraction={self.params.eval_fraction}, {sum(map(len, self.pools.values()))} rows)")
        rng = random.Random(f"jsonl/{split}/{seed}")  # string seeds hash with sha512: stable across processes
        out: list[Problem] = []
        while len(out) < n:
            out += rng.sample(pool, min(len(pool), n - len(out)))
        return out

    def reward(self, problem: Problem, completion: str) -> RewardResult:
        """Compare `completion` with the row's answer; never raises."""
        return verify(completion, problem.data["answer"], self.params.numeric)
