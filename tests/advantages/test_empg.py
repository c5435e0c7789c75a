"""EMPG (methods.md §12): hand-computed cases of g, f, the next-step bonus and the final normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.advantage import compute_advantages

A = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantage of a group [1, 0]: +-0.70711


def test_one_step_per_response_scaling() -> None:
    # step entropies 0 and 1 -> Hn = [0, ~1]; g_raw = [1, e^-1]; mean = (1 + e^-1)/2; g = g_raw / mean
    ent = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    a = compute_advantages("empg", torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long),
                           mask=torch.ones(2, 2), old_entropy=ent, final_norm="none")
    e = math.exp(-1 / (1 + 1e-8))
    mean = (1 + e) / 2 + 1e-8
    expected = torch.tensor([[A / mean] * 2, [-A * e / mean] * 2])  # [1.0339, -0.3804]
    torch.testing.assert_close(a, expected)
    assert float(a[0, 0]) == pytest.approx(1.0339, abs=1e-4) and float(a[1, 0]) == pytest.approx(-0.3804, abs=1e-4)


def test_steps_and_future_clarity_bonus() -> None:
    # step_tokens = 2: response 0 steps H = [0, 1], response 1 steps H = [1, 1]; Hn = [[0, 1], [1, 1]]
    # g_raw = [[1, e], [e, e]] with e = exp(-1); mean = (1 + 3e)/4; f = g_raw (k_f = k = 1)
    # A'_00 = g00 A + zeta f01;  A'_01 = g01 A (last step: no bonus);  A'_10 = -g10 A + zeta f11;  A'_11 = -g11 A
    ent = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = compute_advantages("empg", torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long),
                           mask=torch.ones(2, 4), old_entropy=ent, step_tokens=2, final_norm="none")
    e = math.exp(-1 / (1 + 1e-8))
    mean = (1 + 3 * e) / 4 + 1e-8
    g0, ge = 1 / mean, e / mean
    s00, s01 = g0 * A + 0.1 * e, ge * A
    s10, s11 = -ge * A + 0.1 * e, -ge * A
    expected = torch.tensor([[s00, s00, s01, s01], [s10, s10, s11, s11]])
    torch.testing.assert_close(a, expected)
    assert s00 == pytest.approx(1.3813, abs=1e-3)


def test_partial_step_and_padding() -> None:
    # response 1 has 3 tokens: steps [t0, t1] and [t2]; its padding gets 0 and never counts as a step
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    ent = torch.tensor([[0.0, 0, 0, 0], [0.0, 0, 0, 50]])  # all steps have entropy 0 -> g = 1, f = 1
    a = compute_advantages("empg", torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long),
                           mask=mask, old_entropy=ent, step_tokens=2, final_norm="none", zeta=0.2)
    g = 1 / (1 + 1e-8)
    expected = torch.tensor([[g * A + 0.2] * 2 + [g * A] * 2, [-g * A + 0.2] * 2 + [-g * A, 0.0]])
    torch.testing.assert_close(a, expected)


@pytest.mark.parametrize("norm", ["mean", "mean_std"])
def test_final_normalisation(norm: str) -> None:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(6, 5)
    mask[2, 3:] = 0
    a = compute_advantages("empg", torch.tensor([1.0, 0, 1, 1, 0, 0]), torch.tensor([0, 0, 0, 1, 1, 1]),
                           mask=mask, old_entropy=torch.rand(6, 5, generator=g), step_tokens=2, final_norm=norm)
    vals = a[mask.bool()]
    assert abs(float(vals.mean())) < 1e-6
    if norm == "mean_std":
        assert float(vals.std()) == pytest.approx(1.0, abs=1e-4)  # unbiased, as verl's masked_whiten
    assert float(a[2, 3:].abs().sum()) == 0.0


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        compute_advantages("empg", torch.ones(2), torch.zeros(2, dtype=torch.long), mask=torch.ones(2, 2),
                           old_entropy=torch.ones(2, 2), final_norm="whiten")
