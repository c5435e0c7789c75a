"""The `math` task: answer extraction, math-verify equivalence in the reward sandbox (timeouts, threads),
data files (JSONL, parquet, save_to_disk) with bad rows named by file and line, splits and prompts."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from entropy_rl.tasks import make_task
from entropy_rl.tasks.chat import ChatPrompt
from entropy_rl.tasks.math import MAX_ANSWER_CHARS, extract_answer
from entropy_rl.tasks.math_grader import grade

from tiny_setup import import_extra  # noqa: E402  (tests/ is on sys.path via conftest)

import_extra("math_verify")


def write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


GSM8K = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"} for a in range(4) for b in range(5)]


def task_of(tmp_path: Path, rows: list | None = None, **params):
    return make_task("math", path=str(write(tmp_path / "d.jsonl", GSM8K if rows is None else rows)),
                     start_method="fork", **params)


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),  # nested braces kept
    ("first \\boxed{1}, finally \\boxed{2}", "2"),  # the last box
    ("\\boxed{3} and then \\boxed{\\frac{1", "3"),  # a truncated last box is skipped
    ("\\boxed{4} \\boxed{ }", "4"),  # so is an empty one
    ("\\boxed {9}", "9"),
    ("work\nAnswer: 5", "5"),
    ("**Final Answer:** $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("48 / 2 = 24\n#### 72", "72"),
    ("#### 1,000\n", "1,000"),
    ("Answer: \\boxed{7}", "7"),  # the box starts later than the line
    ("\\boxed{2}\nAnswer: 3", "3"),  # whichever starts last
    ("the answer is 5", None),
    ("", None),
    ("Answer:\n", None),
    ("\\boxed{", None),
    ("#### ", None),
])  # fmt: skip
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extraction_is_linear_on_hostile_text() -> None:
    t0 = time.perf_counter()
    assert extract_answer("\\boxed{" * 20_000) is None  # each box unclosed: quadratic if every start re-scanned
    assert extract_answer("{" * 100_000 + "\\boxed{1}" + "}" * 100_000) == "1"
    assert extract_answer("Answer:" * 20_000 + "\n####" * 20_000) == "Answer:" * 19_999  # an answer line's value
    assert extract_answer("Final answer" + " " * 50_000 + "*" * 50_000) is None  # no colon: no backtracking blow-up
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------- verification

@pytest.mark.parametrize("gold, answer, correct", [
    ("0.5", "1/2", True),
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\dfrac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("72", "72.0", True),
    ("1000", "1,000", True),
    ("x^2+2x", "2x+x^2", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
    ("3", "4", False),
    ("2", "2x", False),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
])  # fmt: skip
def test_math_verify_equivalence(gold: str, answer: str, correct: bool) -> None:
    from entropy_rl.tasks.base import Problem

    result = grade(Problem("q", "", {"gold": gold}), answer)
    assert (result.score, result.reason, result.answer) == ((1.0, "ok") if correct else (0.0, "wrong_value")) + (answer,)


def test_reward_extracts_then_verifies_in_the_sandbox(tmp_path: Path) -> None:
    task = task_of(tmp_path)
    problem = next(p for p in task.pools["train"] if p.data["gold"] == "3")
    assert task.reward(problem, problem.answer).score == 1.0  # the SFT target scores 1
    assert task.reward(problem, "1 + 2 = \\boxed{\\frac{6}{2}}").score == 1.0
    wrong = task.reward(problem, "Answer: 4")
    assert (wrong.score, wrong.reason, wrong.answer, wrong.format_error) == (0.0, "wrong_value", "4", False)
    missing = task.reward(problem, "it is 3")  # no extractable answer: a format error (reward/format_error_rate)
    assert (missing.reason, missing.format_error) == ("no_answer", True)
    assert task.reward(problem, "\\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}").reason == "too_long"
    assert task.sandbox.calls == 3  # format errors never reach the worker


def test_a_hanging_verify_times_out_and_the_next_call_works(tmp_path: Path) -> None:
    task = task_of(tmp_path, timeout_s=0.5)
    problem = next(p for p in task.pools["train"] if p.data["gold"] == "1")
    t0 = time.perf_counter()
    hung = task.reward(problem, "\\boxed{9^{9^{9^{9}}}}")  # sympy grinds on the tower (still busy after 5 s)
    assert (hung.reason, hung.format_error) == ("timeout", False)
    assert time.perf_counter() - t0 < 3.0
    assert task.reward(problem, "\\boxed{1}").score == 1.0  # the worker was killed and restarted
    assert task.sandbox.timeouts == 1


def test_reward_works_off_the_main_thread(tmp_path: Path) -> None:
    # math-verify's own timeout uses signal.alarm and raises ValueError outside the main thread; ours does not.
    task = task_of(tmp_path)
    problem = next(p for p in task.pools["train"] if p.data["gold"] == "2")
    out = []
    thread = threading.Thread(target=lambda: out.append(task.reward(problem, "\\boxed{2.0}")))
    thread.start()
    thread.join()
    assert out[0].score == 1.0


def test_missing_math_verify_says_which_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify -> ImportError
    monkeypatch.delitem(sys.modules, "entropy_rl.tasks.math_grader")
    with pytest.raises(ImportError, match=r"pip install 'entropy-rl\[math\]'"):
        task_of(tmp_path)


# ---------------------------------------------------------------- data files and prompts

def test_fields_are_found_or_configured_and_references_reduced_to_answers(tmp_path: Path) -> None:
    rows = [{"problem": "Halve 1.", "solution": "It is \\boxed{\\frac{1}{2}}.", "split": "test"},
            {"prompt": "Two plus two?", "answer": 4, "split": "train"},
            {"question": "Three?", "answer": "#### 3", "split": "train"}]
    task = task_of(tmp_path, rows)
    (halve,), train = task.pools["eval"], task.pools["train"]
    assert halve.data["gold"] == "\\frac{1}{2}" and halve.answer == rows[0]["solution"]
    assert [p.data["gold"] for p in train] == ["4", "3"]
    assert train[0].answer == "\\boxed{4}"  # a bare reference gets a box, so the SFT target is extractable
    custom = task_of(tmp_path, [{"q": "One?", "a": "1"}], question_field="q", answer_field="a", eval_fraction=0.0)
    assert custom.pools["train"][0].prompt.user.startswith("One?\n")


BAD_ROWS = {
    "invalid JSON": '{"question": "1+1?", "answer": ',
    "expected a JSON object, got list": '["1+1?", "2"]',
    "missing field 'question' / 'problem' / 'prompt' (row fields: answer)": {"answer": "2"},
    "missing field 'answer' / 'solution'": {"question": "1+1?"},
    "'answer' must be a string, got list": {"question": "1+1?", "answer": [2]},
    "empty 'question'": {"question": " ", "answer": "2"},
    "unknown 'split' 'holdout'": {"question": "1+1?", "answer": "2", "split": "holdout"},
}


@pytest.mark.parametrize("reason, row", list(BAD_ROWS.items()))
def test_a_bad_row_names_file_and_line(tmp_path: Path, reason: str, row) -> None:
    with pytest.raises(ValueError) as info:
        task_of(tmp_path, GSM8K[:3] + [""] + [row] + GSM8K[3:])  # the blank line 4 counts
    assert f"{tmp_path / 'd.jsonl'}:5: bad line:" in str(info.value) and reason in str(info.value)


def test_a_configured_field_missing_from_the_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"d\.jsonl:1: bad line: missing field 'query'"):
        task_of(tmp_path, question_field="query")


def test_skip_bad_rows_counts_and_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"skipped 2 malformed row\(s\) \(.*d\.jsonl:2, .*d\.jsonl:4\)"):
        task = task_of(tmp_path, [GSM8K[0], {"answer": "1"}, GSM8K[1], "{", GSM8K[2]], skip_bad_rows=True)
    assert task.bad_rows == 2 and sum(map(len, task.pools.values())) == 3


def test_splits_from_eval_file_split_field_or_hash(tmp_path: Path) -> None:
    eval_file = write(tmp_path / "e.jsonl", GSM8K[:2])
    task = task_of(tmp_path, [{**r, "split": "test"} for r in GSM8K[2:]], eval_path=str(eval_file))
    assert (len(task.pools["train"]), len(task.pools["eval"])) == (18, 2)  # the file decides, not the field
    hashed = task_of(tmp_path, GSM8K * 5, eval_fraction=0.5)
    assert 20 < len(hashed.pools["eval"]) < 80 and {p.prompt for p in hashed.pools["eval"]}.isdisjoint(
        {p.prompt for p in hashed.pools["train"]})
    assert hashed.prompts("train", 7, seed=3) == hashed.prompts("train", 7, seed=3)
    with pytest.raises(ValueError, match="'eval' split is empty"):
        task_of(tmp_path, eval_fraction=0.0).prompts("eval", 1, seed=0)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl' does not exist"):
        make_task("math", path=str(tmp_path / "nope.jsonl"))


def test_parquet_rows_and_bad_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(GSM8K), tmp_path / "d.parquet")
    task = make_task("math", path=str(tmp_path / "d.parquet"), start_method="fork")
    assert sum(map(len, task.pools.values())) == 20
    pq.write_table(pa.Table.from_pylist([{"question": "1+1?", "answer": "2"}, {"question": "", "answer": "3"}]),
                   tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet:2: bad row: empty 'question'"):
        make_task("math", path=str(tmp_path / "bad.parquet"))
    pq.write_table(pa.Table.from_pylist([{"text": "1+1?", "answer": "2"}]), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"cols\.parquet:1: bad row: missing field 'question' / 'problem' / 'prompt'"):
        make_task("math", path=str(tmp_path / "cols.parquet"))


def test_datasets_save_to_disk_dict_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K[:15]),
                               "test": datasets.Dataset.from_list(GSM8K[15:])})
    dd.save_to_disk(str(tmp_path / "ds"))
    task = make_task("math", path=str(tmp_path / "ds"), start_method="fork")
    assert (len(task.pools["train"]), len(task.pools["eval"])) == (15, 5)


def test_prompt_is_a_chat_prompt_with_a_plain_text_fallback(tmp_path: Path) -> None:
    task = task_of(tmp_path, system_prompt="Be brief.", instruction="Box it.")
    prompt = task.prompts("train", 1, seed=0)[0].prompt
    assert isinstance(prompt, ChatPrompt) and prompt.system == "Be brief." and prompt.user.endswith("?\nBox it.")
    assert str(prompt) == f"Be brief.\n\n{prompt.user}"  # what a tokenizer without a template sees
    assert set(str(prompt)) <= set(task.alphabet)  # the char tokenizer can encode it
    plain = task_of(tmp_path, system_prompt="Be brief.", instruction="Box it.", chat_template=False).prompts("train", 1, seed=0)[0].prompt
    assert type(plain) is str and plain == str(prompt)
