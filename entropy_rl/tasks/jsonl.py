"""`jsonl`: a task from a local dataset file of rows {"prompt": str, "answer": str} (JSONL, or parquet).

Config example: `task: {name: jsonl, params: {path: data/train.jsonl, eval_fraction: 0.1}}`; for rows
that name their fields otherwise, map them: `params: {path: ..., prompt_field: question, answer_field: solution}`.

Rows: the prompt field a non-empty string, the answer field a string (the SFT target, compared with the
completion); other keys are kept in `Problem.data["extra"]`, and `Problem.data["source"]` is "file:line".
A malformed row (invalid JSON, not an object, a missing key, a wrong type, an empty prompt, nesting deeper
than MAX_DEPTH) raises ValueError naming the file and the 1-based line (row for parquet); with
`skip_bad_rows` it is skipped and counted in `task.bad_rows`, and one warning gives the count and the first
line numbers. When the configured field is missing but the row has a usual name for it (`question`,
`solution`, ...), the message says which `*_field` to set instead of suggesting `skip_bad_rows` (which
would skip every row). Parquet needs pyarrow (`pip install pyarrow`).

Prompt length: the trainer checks every row's prompt (in tokens) plus `rollout.max_new_tokens` against the
model's context before training (`train.config.check_context`), naming the first row that does not fit.

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

from entropy_rl.core.registry import brief
from entropy_rl.tasks.base import SPLITS, TASKS, Problem, RewardResult, fail, ok

MAX_DEPTH = 32  # deepest nesting of lists / objects in a row (deeper rows are malformed)
MAX_CHARS = 256  # completion length cap after strip (the answer may be longer; then only equality can match)
MAX_NUMBER_CHARS = 64  # longest numeric literal normalised as a number
_SHOWN_BAD_LINES = 5  # line numbers listed in the skip warning
# usual names of the two fields in public datasets, for the hint when the configured field is missing
LIKELY_FIELDS = {
    "prompt": ("question", "problem", "input", "query", "instruction", "text"),
    "answer": ("solution", "output", "target", "label", "response", "completion", "ground_truth", "final_answer"),
}


@dataclass(frozen=True)
class Params:
    path: str = ""  # local .jsonl (or .parquet) file of {"prompt": str, "answer": str} rows
    eval_fraction: float = 0.1  # share of prompts (by hash) in the eval split
    skip_bad_rows: bool = False  # skip and count malformed rows instead of raising
    numeric: bool = True  # also compare answers as decimal numbers ("2.50" == "2.5")
    prompt_field: str = "prompt"  # row key holding the prompt
    answer_field: str = "answer"  # row key holding the reference answer

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("jsonl: params.path is required (a local .jsonl or .parquet file)")
        if not 0.0 <= self.eval_fraction <= 1.0:
            raise ValueError(f"jsonl: eval_fraction must be in [0, 1], got {self.eval_fraction}")
        if not self.prompt_field or not self.answer_field or self.prompt_field == self.answer_field:
            raise ValueError(f"jsonl: prompt_field and answer_field must be two different non-empty keys, "
                             f"got '{self.prompt_field}' and '{self.answer_field}'")


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
        except RecursionError:
            yield i + 1, None, f"nested deeper than {MAX_DEPTH} levels"


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"jsonl: reading the parquet file '{path}' needs pyarrow: pip install pyarrow") from e
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield i + 1, row, None


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Levels of list / dict nesting in `value` (a scalar is 0), breadth-first without recursion; stops
    counting past `limit`."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, (list, dict))]
        if not level:
            break
        depth += 1
        level = [x for v in level for x in (v.values() if isinstance(v, dict) else v)]
    return depth


def _check_row(row: Any, p: Params) -> tuple[str, str] | None:
    """(why `row` is malformed, what to do about it), or None for a good row."""
    skip = "set skip_bad_rows to skip such rows"
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}", skip
    for role, key in (("prompt", p.prompt_field), ("answer", p.answer_field)):
        if key not in row:
            likely = [k for k in LIKELY_FIELDS[role] if k in row and k not in (p.prompt_field, p.answer_field)]
            if likely:
                return f"missing key '{key}'", f"the row has '{likely[0]}': set task.params.{role}_field: {likely[0]}"
            keys = ", ".join(brief(k) for k in list(row)[:8])
            return f"missing key '{key}' (row keys: {keys})", f"map another key with task.params.{role}_field, or {skip}"
        if not isinstance(row[key], str):
            return f"'{key}' must be a string, got {type(row[key]).__name__}", skip
    if not row[p.prompt_field].strip():
        return "empty prompt", skip
    if nesting_depth(row) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels", skip
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
        first_error = ""
        pf, af = params.prompt_field, params.answer_field
        for lineno, row, error in rows:
            bad = (error, "set skip_bad_rows to skip such rows") if error else _check_row(row, params)
            if bad is not None:
                message = f"{path}:{lineno}: bad {where}: {bad[0]} ({bad[1]})"
                if not params.skip_bad_rows:
                    raise ValueError(message)
                first_error = first_error or message
                self.bad_lines.append(lineno)
                continue
            prompt, answer = row[pf], row[af]
            extra = {k: v for k, v in row.items() if k not in (pf, af)}
            problem = Problem(prompt, answer, {"answer": answer, "extra": extra, "source": f"{path}:{lineno}"})
            split = "eval" if eval_score(prompt) < params.eval_fraction else "train"
            self.pools[split].append(problem)
            chars.update(prompt, answer)
        self.bad_rows = len(self.bad_lines)
        if self.bad_rows:
            shown = ", ".join(map(str, self.bad_lines[:_SHOWN_BAD_LINES]))
            more = ", ..." if self.bad_rows > _SHOWN_BAD_LINES else ""
            warnings.warn(f"jsonl: skipped {self.bad_rows} malformed {where}(s) of '{path}' ({where}s {shown}{more})",
                          stacklevel=2)
        if not chars:
            raise ValueError(f"jsonl: '{path}' has no valid rows" + (f"; the first: {first_error}" if first_error else ""))
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
            raise ValueError(f"jsonl: the '{split}' split of '{self.params.path}' is empty (eval_fraction="
                             f"{self.params.eval_fraction} puts all {sum(map(len, self.pools.values()))} rows in the other "
                             f"split; use an eval_fraction strictly between 0 and 1)")
        rng = random.Random(f"jsonl/{split}/{seed}")  # string seeds hash with sha512: stable across processes
        out: list[Problem] = []
        while len(out) < n:
            out += rng.sample(pool, min(len(pool), n - len(out)))
        return out

    def reward(self, problem: Problem, completion: str) -> RewardResult:
        """Compare `completion` with the row's answer; never raises."""
        return verify(completion, problem.data["answer"], self.params.numeric)
