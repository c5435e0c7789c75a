"""`math`: math word problems from local files, answers checked with math-verify in the reward sandbox.

Config example (needs `pip install 'entropy-rl[math]'`):

    task:
      name: math
      params: {path: data/gsm8k_train.jsonl, eval_path: data/gsm8k_test.jsonl, system_prompt: "You are ..."}

Files: JSONL (one JSON object per line), parquet (needs pyarrow), or a directory written by `datasets`'
`save_to_disk` (a Dataset, or a DatasetDict whose split names give the split). The question is read from
`question_field` and the reference from `answer_field`; left empty, the first of question / problem / prompt
and of answer / solution present in the row. A reference may be a bare answer ("72", "\\frac{1}{2}") or a
whole solution: its answer is extracted as from a completion (GSM8K's "#### 72", MATH's last \\boxed{}). A
malformed row (invalid JSON, missing or empty field, wrong type, unknown split) raises ValueError naming the
file and the 1-based line (row for parquet and datasets); with `skip_bad_rows` it is skipped, counted in
`task.bad_rows` and named in one warning.

Splits: with `eval_path`, `path` is the train split and `eval_path` the eval split. Otherwise a row's
`split_field` ("train"; "test" / "eval" / "validation" / "valid" / "dev" for eval) decides, and rows without
it are split by a stable hash of the question (`eval_fraction` of them in eval).

Prompt: the question, a newline and `instruction`, with `system_prompt`, as a `ChatPrompt`: the rollout
renders it with the tokenizer's chat template (`format_prompt`); a tokenizer without one (the char tokenizer)
sees the plain text `system_prompt + "\\n\\n" + user` (`chat_template: false` forces that text).

Reward: the completion's final answer is extracted here (hand-written string scanning, never evaluated;
`extract_answer`): the last complete `\\boxed{...}` (nested braces), an "Answer: ..." line or a GSM8K
"#### ..." line, whichever starts last. No answer -> score 0, reason "no_answer", a format error
(`reward/format_error_rate`); longer than MAX_ANSWER_CHARS -> "too_long". Otherwise the answer goes to
math-verify (`parse` + `verify` against the reference, `math_grader.py`) in a `RewardSandbox` worker with a
wall-clock limit of `timeout_s`: "ok" / "wrong_value", or "timeout" / "error" (verifier failures, not format
errors).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterator

from entropy_rl.tasks.chat import ChatPrompt
from entropy_rl.tasks.base import SPLITS, TASKS, Problem, RewardResult, fail
from entropy_rl.tasks.sandbox import DEFAULT_START_METHOD, START_METHODS, RewardSandbox

QUESTION_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "solution")
EVAL_SPLIT_NAMES = frozenset({"test", "eval", "validation", "valid", "dev"})
MAX_ANSWER_CHARS = 256  # a longer extracted answer is a format error ("too_long"), never sent to math-verify
DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_SHOWN_BAD_LINES = 5  # line numbers listed in the skip warning

# Patterns on untrusted text, each linear (no two adjacent repeats that can match the same characters); used
# through re.finditer, which caches them (the package's AST test bans compile calls in tasks/).
_BOXED = r"\\boxed\s*\{"
_ANSWER_LINE = r"(?im)^[ \t>*_#]*(?:final[ \t]+)?answer[ \t*_]*:(.*)$"
_GSM8K = r"(?m)####(.*)$"


@dataclass(frozen=True)
class Params:
    path: str = ""  # rows (all splits, or train only when eval_path is set): .jsonl, .parquet, or a save_to_disk dir
    eval_path: str = ""  # optional file of eval rows
    question_field: str = ""  # "" = the first of question / problem / prompt present in the row
    answer_field: str = ""  # "" = the first of answer / solution present in the row
    split_field: str = "split"  # row field naming its split (without eval_path); rows without it split by hash
    eval_fraction: float = 0.1  # share of the hash-split rows in eval
    instruction: str = DEFAULT_INSTRUCTION  # appended to each question on a new line ("" for none)
    system_prompt: str = ""  # system message of the chat ("" for none)
    chat_template: bool = True  # render with the tokenizer's chat template when it has one (false: plain text)
    timeout_s: float = 5.0  # wall-clock limit of one math-verify call, seconds (the worker is killed past it)
    skip_bad_rows: bool = False  # skip and count malformed rows instead of raising
    start_method: str = DEFAULT_START_METHOD  # reward worker start: forkserver | spawn | fork (see sandbox.py)

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("math: params.path is required (a local .jsonl / .parquet file or a save_to_disk dir)")
        if not 0.0 <= self.eval_fraction <= 1.0:
            raise ValueError(f"math: eval_fraction must be in [0, 1], got {self.eval_fraction}")
        if not self.timeout_s > 0:
            raise ValueError(f"math: timeout_s must be > 0, got {self.timeout_s}")
        if self.start_method not in START_METHODS:
            raise ValueError(f"math: start_method must be one of {START_METHODS}, got '{self.start_method}'")


# ---------------------------------------------------------------- answer extraction


def _clean(text: str) -> str:
    """Strip whitespace, markdown emphasis, `$` delimiters and a trailing period around an answer."""
    text = text.strip().strip("*_").strip().removesuffix(".").strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$").strip()
    return text.removesuffix(".").strip()


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(start, content) of the last `\\boxed{...}` whose braces close, with nested braces; one linear pass."""
    starts = [m.end() - 1 for m in re.finditer(_BOXED, text)]  # positions of the opening braces
    if not starts:
        return None
    closing: dict[int, int] = {}
    stack: list[int] = []
    for i in range(starts[0], len(text)):
        if text[i] == "{":
            stack.append(i)
        elif text[i] == "}" and stack:
            closing[stack.pop()] = i
    for brace in reversed(starts):
        end = closing.get(brace)
        content = text[brace + 1 : end].strip() if end is not None else ""
        if content:
            return brace, content
    return None


def _last_line_match(pattern: str, text: str) -> tuple[int, str] | None:
    """(start, cleaned group 1) of the last match of regex `pattern` with a non-empty answer."""
    found = None
    for m in re.finditer(pattern, text):
        value = _clean(m.group(1))
        if value:
            found = (m.start(), value)
    return found


def extract_answer(text: str) -> str | None:
    """The final answer of a completion (or a reference solution), or None if it states none.

    Candidates: the last `\\boxed{...}` whose braces balance (nested braces kept, empty boxes skipped), the
    last "Answer: ..." / "Final answer: ..." line (markdown `**` and `$...$` stripped), the last GSM8K
    "#### ..." line. The candidate that starts last wins ("Answer: \\boxed{5}" gives "5"). Linear time.

    Args:
        text: untrusted model text (only scanned, never evaluated).

    Returns:
        The answer text, stripped; None when no candidate has a non-empty answer.
    """
    candidates = [c for c in (_last_boxed(text), _last_line_match(_ANSWER_LINE, text), _last_line_match(_GSM8K, text))
                  if c is not None]
    return max(candidates)[1] if candidates else None


# ---------------------------------------------------------------- data files


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(1-based line number, decoded row or None, error or None) per non-blank line."""
    for i, raw in enumerate(path.read_bytes().split(b"\n")):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i + 1, None, f"not UTF-8 ({e.reason} at byte {e.start})"
            continue
        if line.strip():
            try:
                yield i + 1, json.loads(line), None
            except json.JSONDecodeError as e:
                yield i + 1, None, f"invalid JSON ({e.msg} at column {e.colno})"


def _need(module: str, what: str) -> None:
    if find_spec(module) is None:
        raise ImportError(f"math: {what} needs {module}: pip install 'entropy-rl[math]'")


def _iter_rows(path: Path) -> Iterator[tuple[int, Any, str | None, str | None]]:
    """(1-based line/row number, row, error, split from a DatasetDict key or None) of a data file or dir."""
    if path.is_dir():
        _need("datasets", f"reading the save_to_disk directory '{path}'")
        import datasets

        loaded = datasets.load_from_disk(str(path))
        parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
        for split, ds in parts:
            for i, row in enumerate(ds):
                yield i + 1, row, None, split
    elif path.suffix == ".parquet":
        _need("pyarrow", f"reading the parquet file '{path}'")
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield i + 1, row, None, None
    else:
        for lineno, row, error in _iter_jsonl(path):
            yield lineno, row, error, None


def _field(row: dict, configured: str, defaults: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(field name, None) of the configured or first default field present, or (None, why not)."""
    names = (configured,) if configured else defaults
    for name in names:
        if name in row:
            return name, None
    return None, f"missing field {' / '.join(repr(n) for n in names)} (row fields: {', '.join(map(str, row)) or 'none'})"


def _text(value: Any, name: str) -> tuple[str | None, str | None]:
    """(stripped text, None) of a string or number field, or (None, why not)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None, f"'{name}' must be a string, got {type(value).__name__}"
    if not value.strip():
        return None, f"empty '{name}'"
    return value.strip(), None


def split_of_name(name: Any) -> str | None:
    """"train" or "eval" for a split name ("train"; test / eval / validation / valid / dev), else None."""
    value = str(name).strip().lower()
    return "train" if value == "train" else "eval" if value in EVAL_SPLIT_NAMES else None


def hash_split(question: str, eval_fraction: float) -> str:
    """"eval" iff a stable hash of `question` (blake2b, not the salted `hash()`) mapped to [0, 1) is below
    `eval_fraction`: deterministic, independent of row order."""
    digest = hashlib.blake2b(f"math|{question}".encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") / 2**64 < eval_fraction else "train"


# ---------------------------------------------------------------- the task


@TASKS.register("math", Params)
class MathTask:
    """Math problems from local files; answers extracted here and checked by math-verify in a sandbox worker.

    Attributes:
        pools: problems per split.
        bad_rows: malformed rows skipped (only with skip_bad_rows); bad_lines: their "file:line" labels.
        sandbox: the reward worker (its `errors` / `timeouts` counters).
    """

    name = "math"

    def __init__(self, params: Params) -> None:
        try:
            from entropy_rl.tasks.math_grader import grade
        except ImportError as e:
            raise ImportError(f"math: the verifier needs math-verify: pip install 'entropy-rl[math]' ({e})") from e

        self.params = params
        self.pools: dict[str, list[Problem]] = {s: [] for s in SPLITS}
        self.bad_lines: list[str] = []
        files = [(Path(params.path), "train" if params.eval_path else None)]
        if params.eval_path:
            files.append((Path(params.eval_path), "eval"))
        for path, split in files:
            self._load(path, split)
        self.bad_rows = len(self.bad_lines)
        if self.bad_rows:
            shown = ", ".join(self.bad_lines[:_SHOWN_BAD_LINES])
            more = ", ..." if self.bad_rows > _SHOWN_BAD_LINES else ""
            warnings.warn(f"math: skipped {self.bad_rows} malformed row(s) ({shown}{more})", stacklevel=2)
        if not any(self.pools.values()):
            raise ValueError(f"math: no valid rows in {', '.join(repr(str(p)) for p, _ in files)}")
        chars = {c for pool in self.pools.values() for p in pool for c in p.prompt + p.answer}
        self.alphabet = "".join(sorted(chars))
        self.sandbox = RewardSandbox(grade, params.timeout_s, params.start_method, name="math-verify")

    def _load(self, path: Path, file_split: str | None) -> None:
        """Read one data file into `pools`; `file_split` forces the split of all its rows."""
        if not path.exists():
            raise FileNotFoundError(f"math: dataset file '{path}' does not exist")
        where = "line" if path.is_file() and path.suffix != ".parquet" else "row"
        p = self.params
        for lineno, row, error, dict_split in _iter_rows(path):
            label = f"{path}:{lineno}" if dict_split is None else f"{path}[{dict_split}]:{lineno}"
            problem, split = None, None
            if error is None:
                problem, split, error = self._problem(row, file_split, dict_split, label)
            if error is not None:
                if not p.skip_bad_rows:
                    raise ValueError(f"{label}: bad {where}: {error} (set skip_bad_rows to skip such rows)")
                self.bad_lines.append(label)
                continue
            self.pools[split].append(problem)

    def _problem(self, row: Any, file_split: str | None, dict_split: str | None, source: str
                 ) -> tuple[Problem | None, str | None, str | None]:
        """(problem, split, None) from one row, or (None, None, why the row is malformed).

        The split is `file_split` (the file's role) if given, else the DatasetDict key, else the row's
        `split_field`, else the hash of the question. `source` ("file:line") goes to `Problem.data["source"]`
        (the context check names the row with it).
        """
        p = self.params
        if not isinstance(row, dict):
            return None, None, f"expected a JSON object, got {type(row).__name__}"
        fields = []
        for configured, defaults in ((p.question_field, QUESTION_FIELDS), (p.answer_field, ANSWER_FIELDS)):
            name, error = _field(row, configured, defaults)
            if error is None:
                value, error = _text(row[name], name)
            if error is not None:
                return None, None, error
            fields.append(value)
        question, reference = fields
        split, declared = file_split, None
        if split is None and dict_split is not None:
            split, declared = split_of_name(dict_split), f"split '{dict_split}'"
        elif split is None and row.get(p.split_field) is not None:
            split, declared = split_of_name(row[p.split_field]), f"'{p.split_field}' {row[p.split_field]!r}"
        if declared is not None and split is None:
            return None, None, f"unknown {declared}; expected train or one of {', '.join(sorted(EVAL_SPLIT_NAMES))}"
        split = split or hash_split(question, p.eval_fraction)
        extracted = extract_answer(reference)
        gold = extracted or reference
        user = f"{question}\n{p.instruction}" if p.instruction else question
        prompt = ChatPrompt(user, p.system_prompt)
        target = reference if extracted else f"\\boxed{{{gold}}}"  # the SFT target: it must score 1
        return Problem(prompt if p.chat_template else str(prompt), target, {"gold": gold, "source": source}), split, None

    def prompts(self, split: str, n: int, seed: int) -> list[Problem]:
        """`n` problems of `split`, distinct while the split allows, deterministic in (split, n, seed).

        Raises:
            ValueError: unknown split, negative n, or n > 0 for an empty split.
        """
        if split not in SPLITS:
            raise ValueError(f"math: split must be one of {SPLITS}, got '{split}'")
        if n < 0:
            raise ValueError(f"math: n must be >= 0, got {n}")
        pool = self.pools[split]
        if n and not pool:
            raise ValueError(f"math: the '{split}' split is empty ({sum(map(len, self.pools.values()))} rows in all; "
                             f"give eval_path, a split field, or eval_fraction > 0)")
        rng = random.Random(f"math/{split}/{seed}")  # string seeds hash with sha512: stable across processes
        out: list[Problem] = []
        while len(out) < n:
            out += rng.sample(pool, min(len(pool), n - len(out)))
        return out

    def reward(self, problem: Problem, completion: str) -> RewardResult:
        """Extract the final answer and verify it with math-verify in the sandbox; never raises."""
        answer = extract_answer(completion)
        if answer is None:
            return fail("no_answer")
        if len(answer) > MAX_ANSWER_CHARS:
            return fail("too_long")
        return self.sandbox(problem, answer)
