"""Every aggregation mode against hand-computed values, and micro-batch invariance of the normalisers."""

import pytest
import torch

from entropy_rl import AGG_MODES, aggregate

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
