"""pass@k curves: the --k grid, the crossover k, result files (validity, comparability) and eval_metrics on
hand-computed samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entropy_rl.metrics import passk
from entropy_rl.metrics.dynamics import pass_at_k
from entropy_rl.train.evaluate import EvalSamples, eval_metrics


@pytest.mark.parametrize("text, expected", [
    ("1,2,4,...,256", [1, 2, 4, 8, 16, 32, 64, 128, 256]),
    ("1,...,100", [1, 2, 4, 8, 16, 32, 64, 100]),  # doublings below 100, then 100
    ("3", [3]),
    (" 1, 5 ,7", [1, 5, 7]),
    ("1,...,2", [1, 2]),  # nothing to fill
])  # fmt: skip
def test_parse_ks(text, expected) -> None:
    assert passk.parse_ks(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0,1", "integer in"), ("1,x", "integer in"), ("2,1", "ascending"), ("1,1", "ascending"),
    ("...,4", "between two values"), ("1,...", "between two values"), ("1,...,...,8", "between two values"),
    ("1,2097152", "integer in"),
])  # fmt: skip
def test_parse_ks_rejects(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        passk.parse_ks(text)


def test_crossover_k_is_the_first_k_where_the_base_catches_up() -> None:
    base = {1: 0.20, 2: 0.35, 4: 0.60, 8: 0.80}
    run = {1: 0.40, 2: 0.50, 4: 0.60, 8: 0.70}
    assert passk.crossover_k(base, run) == 4  # equal at k = 4 counts (>=)
    assert passk.crossover_k(base, {1: 0.4, 2: 0.5, 4: 0.61, 8: 0.81}) is None  # the run stays above
    assert passk.crossover_k({1: 0.5}, {1: 0.4}) == 1  # RL already lost at pass@1
    assert passk.crossover_k({1: 0.5, 16: 1.0}, {2: 0.4, 8: 0.9}) is None  # no shared k
    assert passk.crossover_k({1: 0.1, 2: 0.9, 4: 0.2}, {1: 0.5, 2: 0.6, 4: 0.7}) == 2  # the first, not a later one
    assert passk.describe_crossover(base, run) == "crossover at k = 4: base pass@4 0.600 >= run 0.600"
    assert passk.describe_crossover({1: 0.1, 8: 0.5}, {1: 0.2, 8: 0.6}) == (
        "no crossover: the run stays above the base up to k = 8 (0.600 vs 0.500)")


def test_eval_metrics_on_hand_computed_samples() -> None:
    # problem 0: 1 of 4 correct; problem 1: 3 of 4 correct; problem 2: none
    s = EvalSamples(4, [[False, True, False, False], [True, True, False, True], [False] * 4],
                    [["2", "1", "2", None], ["7", "7", "8", "7"], [None] * 4])
    out = eval_metrics(s, [1, 2, 4])
    assert out["eval/accuracy"] == 4 / 12
    # pass@1 = mean c/n = (1/4 + 3/4 + 0) / 3; pass@2: 1 - C(3,2)/C(4,2) = 1/2 and 1 - C(1,2)/C(4,2) = 1 -> (1/2 + 1 + 0) / 3
    assert out["eval/pass@1"] == pytest.approx((0.25 + 0.75) / 3)
    assert out["eval/pass@2"] == pytest.approx(1.5 / 3)
    assert out["eval/pass@4"] == pytest.approx(2 / 3)
    # maj@2: p0 "2" (first seen of a tie) wrong, p1 "7" right, p2 no answer -> 1/3; maj@4: p0 "2" wrong, p1 "7" right
    assert out["eval/maj@2"] == pytest.approx(1 / 3) and out["eval/maj@4"] == pytest.approx(1 / 3)
    assert list(out) == ["eval/accuracy", "eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/maj@2", "eval/maj@4"]
    assert eval_metrics(s) == out  # the default grid for n = 4 is 1, 2, 4
    assert out["eval/pass@2"] == pytest.approx(sum(pass_at_k(4, c, 2) for c in s.counts) / 3)
    with pytest.raises(ValueError, match="needs at least 8 samples"):
        eval_metrics(s, [1, 8])


def result(settings: dict, curve: dict[int, float], **info) -> dict:
    return {"format": passk.RESULT_FORMAT, "version": passk.RESULT_VERSION, "settings": settings,
            "pass_at_k": {str(k): v for k, v in curve.items()}, **info}


def write(folder: Path, doc: dict, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name if name else passk.result_path(folder, doc["settings"])
    path.write_text(json.dumps(doc))
    return path


SETTINGS = {"model_sha256": "a" * 64, "task": "countdown", "task_params": {}, "problems": 8, "samples": 4,
            "ks": [1, 2, 4], "seed": 0, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16,
            "top_h": None}


def test_results_are_read_back_and_bad_files_skipped(tmp_path: Path) -> None:
    good = write(tmp_path, result(SETTINGS, {1: 0.5, 2: 0.6, 4: 0.7}, created="2026-11-30T10:00:00"))
    assert good.name == f"passk_{passk.settings_key(SETTINGS)}.json" and len(good.stem) == len("passk_") + 16
    write(tmp_path, result({**SETTINGS, "seed": 1}, {1: 0.5}), name="passk_0000000000000000.json")  # renamed
    write(tmp_path, result({**SETTINGS, "seed": 2}, {1: float("nan")}))  # non-finite curve
    (tmp_path / "passk_garbage.json").write_text("{not json")
    notes: list[str] = []
    found = passk.load_results(tmp_path, notes)
    assert [r["path"] for r in found] == [str(good)]
    assert passk.curve(found[0]) == {1: 0.5, 2: 0.6, 4: 0.7}
    assert len(notes) == 3 and any("JSONDecodeError" in n for n in notes)
    assert passk.load_results(tmp_path / "missing") == []


def test_comparable_ignores_the_model_and_the_grid_only() -> None:
    a = result(SETTINGS, {1: 0.5})
    assert passk.comparable(a, result({**SETTINGS, "model_sha256": "b" * 64, "ks": [1, 2], "samples": 2}, {1: 0.4}))
    for key, value in (("seed", 1), ("temperature", 0.7), ("problems", 16), ("task_params", {"n": 4}), ("top_h", 0.5)):
        assert not passk.comparable(a, result({**SETTINGS, key: value}, {1: 0.5})), key


def test_run_result_and_warm_start_discovery(tmp_path: Path) -> None:
    run, sft = tmp_path / "run", tmp_path / "sft_out"
    write(run / "eval", result(SETTINGS, {1: 0.5}, role="checkpoint", step=100, created="1"))
    newest = write(run / "eval", result({**SETTINGS, "seed": 3}, {1: 0.6}, role="checkpoint", step=300, created="2"))
    own_ws = write(run / "eval", result({**SETTINGS, "model_sha256": "c" * 64}, {1: 0.3}, role="warm start", created="3"))
    shared_ws = write(sft / "eval", result({**SETTINGS, "model_sha256": "d" * 64, "seed": 3}, {1: 0.2}, role="warm start"))
    results = passk.load_results(run / "eval")
    assert passk.run_result(results)["path"] == str(newest)  # the newest checkpoint's result
    bases = passk.warm_start_results(run, {"model": {"path": str(sft)}})
    assert sorted(b["path"] for b in bases) == sorted([str(own_ws), str(shared_ws)])
    assert passk.matching_base(passk.run_result(results), bases)["path"] == str(shared_ws)  # seed 3 matches seed 3
    assert passk.matching_base(result({**SETTINGS, "seed": 9}, {1: 0.1}), bases) is None
    assert passk.run_result([]) is None
