"""The `jsonl` dataset task: malformed rows name file and line (or are skipped and counted), deterministic
splits and sampling, alphabet from the file, and a hand-written answer comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entropy_rl.tasks import make_task
from entropy_rl.tasks.jsonl import parse_number, verify


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) for a in range(10) for b in range(10)]
BAD = {
    "invalid JSON": '{"prompt": "1+1=", "answer": ',
    "expected a JSON object, got list": '["1+1=", "2"]',
    "missing key 'answer'": '{"prompt": "1+1="}',
    "missing key 'prompt'": '{"answer": "2"}',
    "'answer' must be a string, got int": '{"prompt": "1+1=", "answer": 2}',
    "'prompt' must be a string, got NoneType": '{"prompt": null, "answer": "2"}',
    "empty prompt": '{"prompt": "  ", "answer": "2"}',
}


@pytest.mark.parametrize("reason, line", list(BAD.items()))
def test_a_bad_row_names_file_and_line(tmp_path: Path, reason: str, line: str) -> None:
    path = write(tmp_path / "d.jsonl", GOOD[:5] + [""] + [line] + GOOD[5:])  # blank line 6 still counts
    with pytest.raises(ValueError) as info:
        make_task("jsonl", path=str(path))
    assert f"{path}:7:" in str(info.value) and reason in str(info.value) and "skip_bad_rows" in str(info.value)


def test_non_utf8_line_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join(GOOD[:3]) + "\n").encode() + b'{"prompt": "\xff", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:4: bad line: not UTF-8"):
        make_task("jsonl", path=str(path))


def test_skip_bad_rows_counts_and_warns(tmp_path: Path) -> None:
    lines = GOOD[:50] + list(BAD.values()) + GOOD[50:]
    path = write(tmp_path / "d.jsonl", lines)
    with pytest.warns(UserWarning, match=r"skipped 7 malformed line\(s\).*lines 51, 52, 53, 54, 55, \.\.\."):
        task = make_task("jsonl", path=str(path), skip_bad_rows=True)
    assert task.bad_rows == 7 and task.bad_lines == list(range(51, 58))
    assert sum(len(p) for p in task.pools.values()) == 100


def test_splits_are_deterministic_disjoint_and_sized(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", GOOD)
    task = make_task("jsonl", path=str(path), eval_fraction=0.3)
    train, eval_ = ({p.prompt for p in task.pools[s]} for s in ("train", "eval"))
    assert not train & eval_ and len(train | eval_) == 100 and 15 <= len(eval_) <= 45
    shuffled = write(tmp_path / "e.jsonl", GOOD[::-1])  # split depends on the prompt, not the row order
    assert {p.prompt for p in make_task("jsonl", path=str(shuffled), eval_fraction=0.3).pools["eval"]} == eval_
    a = task.prompts("train", 20, seed=3)
    assert a == task.prompts("train", 20, seed=3) and a != task.prompts("train", 20, seed=4)
    assert len({p.prompt for p in a}) == 20 and {p.prompt for p in a} <= train
    many = task.prompts("eval", 3 * len(eval_), seed=0)  # more than the split holds: cycles
    assert len(many) == 3 * len(eval_) and {p.prompt for p in many} == eval_
    with pytest.raises(ValueError, match="'eval' split .* is empty .*eval_fraction=0.0"):
        make_task("jsonl", path=str(path), eval_fraction=0.0).prompts("eval", 1, seed=0)


def test_alphabet_and_reward(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [json.dumps({"prompt": "Wie viel ist ½+½?", "answer": " 1.0 ", "src": "x"})])
    task = make_task("jsonl", path=str(path), eval_fraction=0.0)
    assert set(task.alphabet) == set("Wie viel ist ½+½?") | set(" 1.0 ")
    p = task.prompts("train", 1, seed=0)[0]
    assert p.data["extra"] == {"src": "x"}
    assert task.reward(p, "1").score == 1.0 and task.reward(p, "+01.000").score == 1.0
    assert [task.reward(p, c).reason for c in ("", "2", "1e0", "١", "x" * 300)] == [
        "empty", "wrong_value", "wrong_value", "wrong_value", "too_long"]
    exact = make_task("jsonl", path=str(path), eval_fraction=0.0, numeric=False)
    assert exact.reward(p, "1").score == 0.0 and exact.reward(p, "1.0").score == 1.0
    assert verify("abc", " abc\n").score == 1.0
    assert [parse_number(t) for t in ("-0.0", "+03.50", ".5", "1e5", "nan", "-", "1.2.3")] == [
        "0", "3.5", "0.5", None, None, None, None]


def test_missing_file_and_parquet(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_task("jsonl", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="path is required"):
        make_task("jsonl")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "d.parquet").write_bytes(b"PAR1")
        with pytest.raises(ImportError, match="pip install pyarrow"):
            make_task("jsonl", path=str(tmp_path / "d.parquet"))
        return
    pq.write_table(pa.table({"prompt": ["1+1=", "2+2=", ""], "answer": ["2", "4", "0"]}), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"d.parquet:3: bad row: empty prompt"):
        make_task("jsonl", path=str(tmp_path / "d.parquet"))
    with pytest.warns(UserWarning):
        assert make_task("jsonl", path=str(tmp_path / "d.parquet"), skip_bad_rows=True).bad_rows == 1


@pytest.mark.parametrize("depth", [40, 100_000], ids=["deeper-than-MAX_DEPTH", "RecursionError-deep"])
def test_a_deeply_nested_row_is_a_bad_row_and_skippable(tmp_path: Path, depth: int) -> None:
    deep = '{"prompt": "1+1=", "answer": "2", "x": ' + "[" * depth + "]" * depth + "}"
    path = write(tmp_path / "d.jsonl", GOOD[:3] + [deep] + GOOD[3:])
    with pytest.raises(ValueError, match=r"d.jsonl:4: bad line: nested deeper than 32 levels \(set skip_bad_rows"):
        make_task("jsonl", path=str(path))
    with pytest.warns(UserWarning, match=r"skipped 1 malformed line\(s\).*lines 4\)"):
        assert make_task("jsonl", path=str(path), skip_bad_rows=True).bad_lines == [4]


QA = [json.dumps({"question": f"{a}*{b}=", "solution": str(a * b), "id": a}) for a in range(10) for b in range(10)]


def test_field_mapping_and_a_hint_that_names_it(tmp_path: Path) -> None:
    path = write(tmp_path / "qa.jsonl", QA)
    with pytest.raises(ValueError, match=r"qa.jsonl:1: bad line: missing key 'prompt' \(the row has 'question': "
                                         r"set task.params.prompt_field: question\)"):
        make_task("jsonl", path=str(path))
    with pytest.raises(ValueError, match=r"missing key 'answer' \(the row has 'solution': set task.params.answer_field"):
        make_task("jsonl", path=str(path), prompt_field="question")
    # skip_bad_rows skips every row: the error still says what to set
    with pytest.raises(ValueError, match="no valid rows; the first: .*qa.jsonl:1: .*prompt_field: question"), \
            pytest.warns(UserWarning):
        make_task("jsonl", path=str(path), skip_bad_rows=True)
    task = make_task("jsonl", path=str(path), prompt_field="question", answer_field="solution", eval_fraction=0.0)
    p = task.prompts("train", 1, seed=0)[0]
    assert p.prompt.endswith("=") and p.data["extra"].keys() == {"id"} and p.data["source"].startswith(f"{path}:")
    assert task.reward(p, p.answer).score == 1.0
    odd = write(tmp_path / "odd.jsonl", [json.dumps({"q": "1+1=", "a": "2"})])
    with pytest.raises(ValueError, match=r"missing key 'prompt' \(row keys: 'q', 'a'\) \(map another key with "
                                         r"task.params.prompt_field, or set skip_bad_rows"):
        make_task("jsonl", path=str(odd))
    with pytest.raises(ValueError, match="two different non-empty keys"):
        make_task("jsonl", path=str(path), prompt_field="question", answer_field="question")


def jsonl_config(path: Path, *extra: str) -> list[str]:
    return ["task.name=jsonl", f"task.params={{path: '{path}'}}", *extra]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task.params.eval_fraction=1.0"], r"task.params: jsonl: the 'train' split .* is empty \(eval_fraction=1.0"),
        (["task.params.eval_fraction=0.0"], r"task.params: jsonl: the 'eval' split .* is empty \(eval_fraction=0.0"),
        (["task.params.eval_fraction=0.0", "train.eval_every=10", "sft.enabled=false"], "'eval' split .* is empty"),
    ],
    ids=["all-eval", "no-eval-with-eval-on", "no-eval-with-sft-off"],
)
def test_an_empty_split_that_the_run_needs_fails_validation(tmp_path: Path, overrides: list[str], message: str) -> None:
    from entropy_rl.train.config import ConfigError, load_config

    path = write(tmp_path / "d.jsonl", GOOD)
    with pytest.raises(ConfigError, match=message):
        load_config(None, jsonl_config(path, *overrides))
    # without evaluation and SFT an empty eval split is fine
    load_config(None, jsonl_config(path, "task.params.eval_fraction=0.0", "train.eval_every=0", "sft.enabled=false"))


def test_prompts_longer_than_the_context_are_named_before_training(tmp_path: Path) -> None:
    """20,000-character prompts used to reach generation (and try to allocate 25.6 GB)."""
    from entropy_rl.train.config import ConfigError, load_config

    long_row = json.dumps({"prompt": "1+" * 10_000 + "1=", "answer": "10001"})
    path = write(tmp_path / "d.jsonl", GOOD[:7] + [long_row] + GOOD[7:])
    with pytest.raises(ConfigError, match=r"d.jsonl:8: prompt \+ max\(rollout.max_new_tokens, SFT answer \+ EOS\) is "
                                          r"20,018 tokens \(prompt 20,002\), more than the model's context of 64 positions "
                                          r"\(1 of 101 checked prompts"):
        load_config(None, jsonl_config(path, "task.params.eval_fraction=0.3"))
    fits = load_config(None, jsonl_config(path, "task.params.eval_fraction=0.3", "model.max_position_embeddings=20100"))
    assert fits.model.max_position_embeddings == 20100
