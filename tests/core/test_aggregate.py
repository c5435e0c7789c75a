"""Every aggregation mode against hand-computed values, and micro-batch invariance of the normalisers."""

import pytest
import torch

from entropy_rl import AGG_MODES, aggregate
from entropy_rl.core.aggregate import Aggregation, aggregation_weights

# loss  [[1, 2, 3],     mask [[1, 1, 0],
#        [4, 5, 6]]           [1, 1, 1]]
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_token_mean() -> None:
    # (1 + 2 + 4 + 5 + 6) / 5 tokens = 18 / 5
    assert aggregate(LOSS, MASK, "token-mean").item() == pytest.approx(3.6)


def test_seq_mean_token_mean() -> None:
    # seq 0: (1 + 2) / 2 = 1.5; seq 1: (4 + 5 + 6) / 3 = 5; mean = 3.25
    assert aggregate(LOSS, MASK, "seq-mean-token-mean").item() == pytest.approx(3.25)


def test_seq_mean_token_sum() -> None:
    # seq sums 3 and 15; mean = 9
    assert aggregate(LOSS, MASK, "seq-mean-token-sum").item() == pytest.approx(9.0)


def test_seq_mean_token_sum_norm() -> None:
    # (3 + 15) / (2 seqs * T=3) = 3; with norm_length 6: 18 / 12 = 1.5
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(3.0)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm", norm_length=6).item() == pytest.approx(1.5)


@pytest.mark.parametrize("mode, per_seq", [("seq-mean-token-mean", [1.5, 5.0]), ("seq-mean-token-sum", [3.0, 15.0]),
                                           ("seq-mean-token-sum-norm", [1.0, 5.0])])
def test_seq_means_count_an_empty_response(mode: str, per_seq: list[float]) -> None:
    # a third, fully masked response: the sequence mean divides by all 3 responses (verl 0.9.1's trainer:
    # global_batch_size = mini-batch size); num_seqs = 2 (non-empty ones) gives verl's stand-alone agg_loss default
    loss = torch.cat([LOSS, torch.full((1, 3), 7.0)])
    mask = torch.cat([MASK, torch.zeros(1, 3)])
    assert aggregate(loss, mask, mode).item() == pytest.approx(sum(per_seq) / 3)
    assert aggregate(loss, mask, mode, num_seqs=2).item() == pytest.approx(sum(per_seq) / 2)


def test_unknown_mode_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(LOSS, MASK, "mean")


def test_empty_mask_is_zero_not_nan() -> None:
    for mode in AGG_MODES:
        assert aggregate(LOSS, torch.zeros_like(MASK), mode).item() == 0.0


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("micro", [1, 2, 3, 6])
def test_micro_batches_sum_to_the_mini_batch_loss(mode: str, micro: int) -> None:
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    full = aggregate(loss, mask, mode)
    parts = sum(
        aggregate(loss[i : i + micro], mask[i : i + micro], mode, num_tokens=mask.sum(), num_seqs=6, norm_length=5)
        for i in range(0, 6, micro)
    )
    torch.testing.assert_close(parts, full)


def test_aggregation_weights_by_hand() -> None:
    # token-mean: 1/5 on each valid token; seq-mean-token-mean: 1/(2 * 2), 1/(3 * 2); seq-mean-token-sum: 1/2;
    # seq-mean-token-sum-norm with norm_length 6: 1/(2 * 6). Padding gets exactly 0.
    expected = {
        "token-mean": [[0.2, 0.2, 0.0], [0.2, 0.2, 0.2]],
        "seq-mean-token-mean": [[0.25, 0.25, 0.0], [1 / 6, 1 / 6, 1 / 6]],
        "seq-mean-token-sum": [[0.5, 0.5, 0.0], [0.5, 0.5, 0.5]],
        "seq-mean-token-sum-norm": [[1 / 12, 1 / 12, 0.0], [1 / 12, 1 / 12, 1 / 12]],
    }
    for mode, want in expected.items():
        torch.testing.assert_close(aggregation_weights(MASK, mode, norm_length=6), torch.tensor(want))


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("normalisers", [{}, {"num_tokens": 40.0, "num_seqs": 12, "norm_length": 9.0}])
def test_weighted_sum_equals_aggregate(mode: str, normalisers: dict) -> None:
    """aggregate(l) == (l * aggregation_weights).sum() for any l, with default and mini-batch normalisers."""
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(6, 5, generator=g) > 0.3).double()
    mask[2] = 0.0  # an empty sequence
    for _ in range(3):
        loss = torch.randn(6, 5, generator=g, dtype=torch.float64)
        w = aggregation_weights(mask, mode, **normalisers)
        torch.testing.assert_close((loss * w).sum(), aggregate(loss, mask, mode, **normalisers), rtol=1e-12, atol=1e-12)
        assert torch.all(w[mask == 0] == 0)
    agg = Aggregation(mode, **normalisers)
    torch.testing.assert_close(agg.weights(mask), aggregation_weights(mask, mode, **normalisers))
    assert torch.equal(agg.reduce(loss, mask), aggregate(loss, mask, mode, **normalisers))  # the trainer's call, bit for bit


def test_weights_of_an_empty_mask_are_zero_and_unknown_modes_fail() -> None:
    for mode in AGG_MODES:
        assert torch.all(aggregation_weights(torch.zeros_like(MASK), mode) == 0)
    with pytest.raises(ValueError, match="token-mean"):
        aggregation_weights(MASK, "mean")
    with pytest.raises(ValueError, match="token-mean"):
        Aggregation("mean")
