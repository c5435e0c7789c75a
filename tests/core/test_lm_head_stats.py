"""The lm_head_stats kernel against the naive logits -> log_softmax path: gradcheck in fp64, values and gradients
in fp32 for any upstream gradients (float and per-token temperature, tiles that split the vocabulary unevenly,
bias), bf16 inputs, and its one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from entropy_rl.core.lm_head_stats import lm_head_stats

N, D, V = 37, 16, 101


def naive(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, tokens: torch.Tensor,
          tau: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full logits [N, V] in the inputs' dtype, then fp32 (fp64 for fp64) log-softmax: logp [N], entropy [N]."""
    z = F.linear(h, w, b)
    z = z.double() if z.dtype == torch.float64 else z.float()
    logp_all = torch.log_softmax(z / (tau if isinstance(tau, float) else tau.unsqueeze(1)), dim=-1)
    return logp_all.gather(1, tokens.unsqueeze(1)).squeeze(1), -(logp_all.exp() * logp_all).sum(-1)


def inputs(dtype: torch.dtype = torch.float32, bias: bool = False, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    w = torch.randn(V, D, generator=g).to(dtype).requires_grad_()  # logits ~ N(0, 16): peaked and flat rows
    b = torch.randn(V, generator=g).to(dtype).requires_grad_() if bias else None
    tokens = torch.randint(V, (N,), generator=g)
    tau = 0.5 + torch.rand(N, generator=g)  # [0.5, 1.5)
    return h, w, b, tokens, tau


def test_gradcheck_in_float64() -> None:
    """Both outputs against finite differences, w.r.t. hidden, weight and bias, tiles of 4 tokens x 3 entries."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    tokens = torch.tensor([0, 6, 3, 3, 1, 5])
    for tau in (1.0, 0.7, 0.5 + torch.rand(6, dtype=torch.float64, generator=g)):
        assert torch.autograd.gradcheck(
            lambda h, w, b, tau=tau: lm_head_stats(h, w, tokens, tau, bias=b, chunk_tokens=4, chunk_vocab=3), (h, w, b)
        )


@pytest.mark.parametrize("tau", [1.0, 0.7, "per-token"])
@pytest.mark.parametrize("chunks", [(8, 16), (5, 101), (1000, 1000), (37, 7)])  # (tokens, vocab) per tile
def test_values_and_gradients_equal_the_naive_path_fp32(tau: float | str, chunks: tuple[int, int]) -> None:
    h, w, b, tokens, tau_t = inputs(bias=True)
    t = tau_t if tau == "per-token" else tau
    logp, ent = lm_head_stats(h, w, tokens, t, bias=b, chunk_tokens=chunks[0], chunk_vocab=chunks[1])
    ref_logp, ref_ent = naive(h, w, b, tokens, t)
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    g_l, g_h = torch.randn(2, N, generator=torch.Generator().manual_seed(9))  # arbitrary upstream gradients
    got = torch.autograd.grad((g_l * logp + g_h * ent).sum(), (h, w, b))
    want = torch.autograd.grad((g_l * ref_logp + g_h * ref_ent).sum(), (h, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["logp", "entropy"])
def test_one_output_alone(which: str) -> None:
    """Only logp (entropy=False, no entropy arithmetic) or only the entropy used: the other term is skipped."""
    h, w, _, tokens, _ = inputs(seed=2)
    logp, ent = lm_head_stats(h, w, tokens, 0.9, entropy=which == "entropy", chunk_tokens=8, chunk_vocab=32)
    assert (ent is None) == (which == "logp")
    ref_logp, ref_ent = naive(h, w, None, tokens, 0.9)
    out, ref = (logp, ref_logp) if which == "logp" else (ent, ref_ent)
    for a, e in zip(torch.autograd.grad(out.sum(), (h, w)), torch.autograd.grad(ref.sum(), (h, w))):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_bf16_inputs_accumulate_in_fp32() -> None:
    """bf16 hidden and weight: the same bf16 logits as a bf16 LM head, fp32 statistics (values to fp32 tolerance
    of the naive path on those logits), fp32 sums of the gradient across tiles (bf16 gradients within bf16
    rounding of the naive path's, which sums over all of V inside one GEMM)."""
    h, w, b, tokens, tau = inputs(torch.bfloat16, bias=True, seed=3)
    logp, ent = lm_head_stats(h, w, tokens, tau, bias=b, chunk_tokens=8, chunk_vocab=16)
    assert logp.dtype == ent.dtype == torch.float32
    ref_logp, ref_ent = naive(h, w, b, tokens, tau)
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    g_l, g_h = torch.randn(2, N, generator=torch.Generator().manual_seed(9))
    got = torch.autograd.grad((g_l * logp + g_h * ent).sum(), (h, w, b))
    want = torch.autograd.grad((g_l * ref_logp + g_h * ref_ent).sum(), (h, w, b))
    for a, e in zip(got, want):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e.float(), rtol=2**-7, atol=2**-7 * e.float().abs().max().item())


def test_bf16_weight_gradient_is_summed_over_tiles_in_fp32() -> None:
    """512 one-token tiles each add -1/8 to every off-target weight-gradient entry: a bf16 running sum stalls near
    -32 (adding 1/8 to 32 is below half a bf16 ulp), the fp32 sum reaches the exact -64 (then rounds to bf16)."""
    n, v = 512, 8
    h = torch.ones(n, 4, dtype=torch.bfloat16)
    w = torch.zeros(v, 4, dtype=torch.bfloat16, requires_grad=True)  # uniform p = 1/8 on every token
    logp, _ = lm_head_stats(h, w, torch.zeros(n, dtype=torch.long), 1.0, entropy=False, chunk_tokens=1)
    (g,) = torch.autograd.grad(logp.sum(), w)
    assert (g[1:] == -64).all() and (g[0] == 448).all()


def test_bad_arguments_raise_one_line_errors() -> None:
    h, w, b, tokens, tau = inputs(bias=True)
    with pytest.raises(ValueError, match="expected hidden"):
        lm_head_stats(h, w[:, :3], tokens, 1.0)
    with pytest.raises(ValueError, match="rows"):
        lm_head_stats(h[:-1], w, tokens, 1.0)
    with pytest.raises(ValueError, match="one dtype"):
        lm_head_stats(h, w.double(), tokens, 1.0)
    with pytest.raises(ValueError, match="bias must be"):
        lm_head_stats(h, w, tokens, 1.0, bias=b[:-1])
    with pytest.raises(ValueError, match="temperature"):
        lm_head_stats(h, w, tokens, tau[:-1])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        lm_head_stats(h, w, tokens, torch.where(tokens == tokens[0], 0.0, 1.0))
    with pytest.raises(ValueError, match="chunk"):
        lm_head_stats(h, w, tokens, 1.0, chunk_vocab=0)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 101\)"):
        lm_head_stats(h, w, torch.where(tokens == tokens[0], V, tokens), 1.0)
