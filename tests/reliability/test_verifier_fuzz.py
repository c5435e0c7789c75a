"""Verifier fuzzing: 10,000 hypothesis-generated completions per verifier (countdown, arithmetic, jsonl) of
the nastiest kinds: huge numbers, deep nesting, unicode digits, control characters, operator soup, very
long strings. No exception may escape, the score is 0.0 or 1.0, and no call takes 100 ms.

The "no eval/exec/compile/__import__ anywhere in the package" AST scan is
tests/test_architecture.py::test_no_eval_exec_or_compile_in_the_package (and, stricter, attribute calls
such as ast.literal_eval in tests/tasks/test_tasks_no_eval.py); it is not repeated here.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entropy_rl.tasks import make_task
from entropy_rl.tasks.jsonl import verify as jsonl_verify

N_EXAMPLES = 10_000
MAX_CALL_S = 0.1
LONG = 200_000  # longest generated completion, characters

digits = st.text(alphabet="0123456789", min_size=1, max_size=40)
completions = st.one_of(
    st.text(max_size=80),  # anything, including surrogates and astral characters
    st.text(alphabet="0123456789+-*/() \t.", max_size=120),  # operator soup
    st.integers(min_value=-(10**600), max_value=10**600).map(str),  # huge numbers
    st.builds(lambda d, k: d * k, digits, st.integers(1, 200)),  # very long digit runs
    st.integers(1, 5_000).map(lambda d: "(" * d + "1" + ")" * d),  # deep nesting
    st.builds(lambda d, op: op.join(["(1"] * d) + ")" * d, st.integers(1, 2_000), st.sampled_from("+-*/")),
    st.integers(1, 5_000).map(lambda d: "(" * d),  # unbalanced
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=30),  # unicode digits: '٣', '૮', ...
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=30),  # control / format / spaces
    st.builds(lambda a, c, b: a + c + b, digits, st.characters(categories=["Cc", "Nd", "No"]), digits),
    st.builds(lambda s, k: s * k, st.text(min_size=1, max_size=8), st.integers(1, LONG // 8)),  # very long
    st.sampled_from(["", " ", "\n", "0", "-0", "00", "1e9", "inf", "nan", "NaN", "-", "--1", "1/0", "0/0",
                     "9999*9999*9999", "2**64", "1_000", "０", "¹", "\x00", "\ufeff1", "1\u200b+2"]),
)
SETTINGS = settings(max_examples=N_EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(task, problems, n: int = N_EXAMPLES) -> dict:
    """Run the verifier on `n` generated completions; returns stats (asserts inside)."""
    stats = {"calls": 0, "max_s": 0.0, "total_s": 0.0, "ok": 0}

    @settings(SETTINGS, max_examples=n)
    @given(problem=st.sampled_from(problems), completion=completions)
    def check(problem, completion: str) -> None:
        t0 = time.perf_counter()
        r = task.reward(problem, completion)  # an exception here fails the test with the example
        dt = time.perf_counter() - t0
        stats["calls"] += 1
        stats["max_s"] = max(stats["max_s"], dt)
        stats["total_s"] += dt
        stats["ok"] += r.reason == "ok"
        assert r.score in (0.0, 1.0) and isinstance(r.reason, str)
        assert dt < MAX_CALL_S, f"{dt * 1e3:.1f} ms on a {len(completion)}-char completion"

    t0 = time.perf_counter()
    check()
    stats["wall_s"] = time.perf_counter() - t0
    return stats


@pytest.mark.parametrize("name, params", [
    ("countdown", {"n_numbers": 4, "ops": "+-*/"}),
    ("arithmetic", {"max_digits": 6}),
])
def test_verifier_survives_10k_hostile_completions(name: str, params: dict) -> None:
    task = make_task(name, **params)
    problems = task.prompts("train", 20, seed=0)
    stats = fuzz(task, problems)
    assert stats["calls"] >= N_EXAMPLES
    # the reference answers still score 1 (the fuzzer did not break the verifier's state)
    assert all(task.reward(p, p.answer).score == 1.0 for p in problems)
    print(f"\n[fuzz] {name}: {stats['calls']} calls, max {stats['max_s'] * 1e3:.2f} ms/call, "
          f"verifier total {stats['total_s']:.2f} s, wall {stats['wall_s']:.1f} s")


def test_jsonl_verifier_survives_hostile_completions() -> None:
    class Stub:  # the jsonl task's reward without a file: same verify()
        def reward(self, problem, completion):
            return jsonl_verify(completion, problem)

    stats = fuzz(Stub(), ["12", "-3.5", "abc", "١٢", ""], n=3_000)  # fewer: same kind of parser, saves ~7 s
    print(f"\n[fuzz] jsonl: {stats['calls']} calls, max {stats['max_s'] * 1e3:.2f} ms/call, wall {stats['wall_s']:.1f} s")
