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
