"""Countdown task: generation (determinism, split disjointness, reference answers) and the verifier."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_rl.core.registry import RegistryError
from entropy_rl.tasks import TASKS, CountdownParams, CountdownTask, make_task
from entropy_rl.tasks.countdown import verify

CONFIGS = [
    {},
    {"n_numbers": 4},
    {"n_numbers": 4, "ops": "+-*/"},
    {"n_numbers": 3, "ops": "+-*/", "max_number": 13, "max_target": 50},
]


# ---- verifier: correct answers ----
@pytest.mark.parametrize(
    "completion, numbers, target, ops",
    [
        ("3*5+7", [3, 5, 7], 22, "+-*"),
        ("7+5*3", [3, 5, 7], 22, "+-*"),  # different order, same value
        ("5*3+7", [3, 5, 7], 22, "+-*"),
        ("(3*5)+7", [3, 5, 7], 22, "+-*"),  # redundant parentheses are fine
        ("((7))+(5*(3))", [3, 5, 7], 22, "+-*"),
        ("3 * 5 + 7", [3, 5, 7], 22, "+-*"),  # inner spaces ignored
        ("  3*5+7 \n", [3, 5, 7], 22, "+-*"),  # surrounding whitespace stripped
        ("7-(5-3)", [3, 5, 7], 5, "+-*"),  # left-assoc respected: 7-5-3 would be -1
        ("3-5-7+20", [3, 5, 7, 20], 11, "+-*"),
        ("8/(3-8/3)", [3, 3, 8, 8], 24, "+-*/"),  # exact fractions: 3-8/3 = 1/3
        ("(1+1/2)*4", [1, 1, 2, 4], 6, "+-*/"),
        ("0*9+5", [0, 5, 9], 5, "+-*"),
        ("9-9", [9, 9], 0, "+-*"),
    ],
)
def test_correct(completion: str, numbers: list[int], target: int, ops: str) -> None:
    r = verify(completion, numbers, target, ops)
    assert (r.score, r.reason, r.format_error) == (1.0, "ok", False)
    assert r.answer == "".join(completion.split())


# ---- verifier: wrong but well-formed answers ----
@pytest.mark.parametrize(
    "completion, numbers, target, ops, reason",
    [
        ("3*5+8", [3, 5, 7], 22, "+-*", "wrong_numbers"),  # 8 not given
        ("3*5", [3, 5, 7], 15, "+-*", "wrong_numbers"),  # 7 unused
        ("3*5+7+7", [3, 5, 7], 29, "+-*", "wrong_numbers"),  # 7 used twice
        ("15+7", [3, 5, 7], 22, "+-*", "wrong_numbers"),  # digits merged
        ("3+5+7", [3, 5, 7], 22, "+-*", "wrong_value"),
        ("7/(5-5)", [5, 5, 7], 1, "+-*/", "division_by_zero"),
        ("(8-8)/(8-8)", [8, 8, 8, 8], 0, "+-*/", "division_by_zero"),
        ("5/2*2", [2, 2, 5], 4, "+-*/", "wrong_value"),  # 5 exactly, not floor(5/2)*2
    ],
)
def test_wrong(completion: str, numbers: list[int], target: int, ops: str, reason: str) -> None:
    r = verify(completion, numbers, target, ops)
    assert (r.score, r.reason, r.format_error) == (0.0, reason, False)
    expected_answer = None if reason == "wrong_numbers" else completion
    assert r.answer == expected_answer


# ---- verifier: malformed and adversarial input ----
ADVERSARIAL = [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("9**9**9", "parse_error"),  # '**' is not in the grammar
    ("__import__('os').system('ls')", "parse_error"),
    ("eval(1)", "parse_error"),
    ("x" * 10_000, "too_long"),
    ("".join(chr(1 + (i * 7919) % 1200) for i in range(10_000)), "too_long"),  # mixed garbage
    ("(" * 10_000, "too_long"),
    ("(" * 17 + "3*5+7" + ")" * 17, "too_deep"),
    ("(" * 30, "too_deep"),
    ("1" * 5000, "too_long"),
    ("12345+1", "number_too_large"),
    ("99999999999999999999", "number_too_large"),
    ("٣*٥+٧", "parse_error"),  # Arabic-Indic digits
    ("３*５+７", "parse_error"),  # full-width digits
    ("3²+7", "parse_error"),
    ("3*5+7\x00", "parse_error"),
    ("\x00", "parse_error"),
    ("3*\x075+7", "parse_error"),
    ("-3+5*7", "parse_error"),  # no unary minus
    ("3*5+", "parse_error"),
    ("(3*5+7", "parse_error"),
    ("3*5+7)", "parse_error"),
    ("()", "parse_error"),
    ("3 5 7", "parse_error"),
    ("03*5+7", "parse_error"),  # leading zero
    ("3*5+7=22", "parse_error"),
    ("3/5+7", "parse_error"),  # '/' not enabled in this task
    ("3.0*5+7", "parse_error"),
    ("1e3", "parse_error"),
]


@pytest.mark.parametrize("completion, reason", ADVERSARIAL)
def test_adversarial(completion: str, reason: str) -> None:
    t0 = time.perf_counter()
    r = verify(completion, [3, 5, 7], 22, "+-*")
    elapsed = time.perf_counter() - t0
    assert (r.score, r.reason, r.answer) == (0.0, reason, None)
    assert r.format_error
    assert elapsed < 0.1


def test_depth_at_limit_parses() -> None:
    # 16 levels is the cap, inclusive.
    assert verify("(" * 16 + "3*5+7" + ")" * 16, [3, 5, 7], 22).reason == "ok"


# ---- generation ----
@pytest.mark.parametrize("params", CONFIGS)
def test_reference_answers_verify(params: dict) -> None:
    task = make_task("countdown", **params)
    for split in ("train", "eval"):
        for p in task.prompts(split, 300, seed=0):
            r = task.reward(p, p.answer)
            assert r.score == 1.0, (p, r)
            nums, target = p.data["numbers"], p.data["target"]
            assert len(nums) == task.params.n_numbers and nums == sorted(nums)
            assert all(task.params.min_number <= x <= task.params.max_number for x in nums)
            assert isinstance(target, int) and 0 <= target <= task.params.max_target
            assert p.prompt == " ".join(map(str, nums)) + f">{target}:"


@pytest.mark.parametrize("params", CONFIGS)
def test_alphabet_covers_prompts_and_answers(params: dict) -> None:
    task = make_task("countdown", **params)
    used = {c for s in ("train", "eval") for p in task.prompts(s, 300, 1) for c in p.prompt + p.answer}
    assert used <= set(task.alphabet)
    assert len(set(task.alphabet)) == len(task.alphabet)


def test_division_alphabet() -> None:
    assert "/" not in CountdownTask().alphabet
    assert "/" in CountdownTask(CountdownParams(ops="+-*/")).alphabet


def test_deterministic() -> None:
    a = make_task("countdown").prompts("train", 200, seed=3)
    b = make_task("countdown").prompts("train", 200, seed=3)
    c = make_task("countdown").prompts("train", 200, seed=4)
    assert a == b
    assert [p.prompt for p in a] != [p.prompt for p in c]
    # A prefix property is not promised, but the same (split, n, seed) is.
    assert make_task("countdown").prompts("eval", 0, seed=0) == []


@pytest.mark.parametrize("params", CONFIGS[:2])
def test_train_eval_disjoint(params: dict) -> None:
    task = make_task("countdown", **params)
    train = {p.prompt for seed in range(3) for p in task.prompts("train", 400, seed)}
    evals = {p.prompt for seed in range(3) for p in task.prompts("eval", 400, seed)}
    assert train and evals and not train & evals


def test_distinct_within_split_when_space_allows() -> None:
    ps = make_task("countdown", n_numbers=4).prompts("eval", 200, seed=0)
    assert len({p.prompt for p in ps}) == 200


def test_bad_split_and_params() -> None:
    task = make_task("countdown")
    with pytest.raises(ValueError):
        task.prompts("test", 5, 0)
    with pytest.raises(ValueError):
        make_task("countdown", ops="+^")
    with pytest.raises(ValueError):
        make_task("countdown", n_numbers=1)
    with pytest.raises(ValueError):
        make_task("countdown", max_number=10_000)
    with pytest.raises(TypeError, match="did you mean 'n_numbers'"):
        make_task("countdown", n_number=3)
    with pytest.raises(RegistryError, match="countdown"):
        make_task("countdwn")
    assert "countdown" in TASKS.names()


# ---- property test ----
_EXPR_CHARS = "0123456789+-*/() "


@settings(max_examples=300, deadline=None)
@given(
    completion=st.one_of(st.text(max_size=80), st.text(alphabet=_EXPR_CHARS, max_size=80)),
    numbers=st.lists(st.integers(0, 20), min_size=2, max_size=4),
    target=st.integers(0, 100),
    ops=st.sampled_from(["+-*", "+-*/"]),
)
def test_verifier_never_raises(completion: str, numbers: list[int], target: int, ops: str) -> None:
    r = verify(completion, numbers, target, ops)
    assert r.score in (0.0, 1.0)
    assert (r.score == 1.0) == (r.reason == "ok")
    if r.format_error:
        assert r.answer is None
