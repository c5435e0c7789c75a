"""token_stats against the naive full-logits path (values bit-exact, autograd gradients), per-token temperature,
masks, hidden states + LM-head weight, features, and a bound on the largest tensor it ever creates."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from entropy_rl.core.entropy import entropy_from_logp
from entropy_rl.core.policy_loss import get_policy_loss
from entropy_rl.core.token_stats import token_stats

B, T, V = 3, 7, 50


def naive(logits: torch.Tensor, tokens: torch.Tensor, tau: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unchunked reference: [B, T, V] fp32 log-softmax, gathered log-probs and entropies."""
    t = tau if isinstance(tau, float) else tau.unsqueeze(-1).float()
    logp_all = torch.log_softmax(logits.float() / t, dim=-1)
    return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy_from_logp(
        torch.log_softmax(logits.float() / t, -1)
    )


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g)).requires_grad_()
    tokens = torch.randint(V, (B, T), generator=g)
    per_token_tau = 0.5 + torch.rand(B, T, generator=g)  # [0.5, 1.5)
    return logits, tokens, per_token_tau


def logsumexp_feature(logits: torch.Tensor, tokens: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """A differentiable per-chunk feature that reads the temperature: logsumexp(z / tau), [n]."""
    return torch.logsumexp(logits.float() / tau, dim=-1)


@pytest.mark.parametrize("chunk", [1, 3, T, 2 * T + 1, 1000])  # inside a row, a whole row, several rows, all
@pytest.mark.parametrize("per_token", [False, True])
def test_values_and_gradients_equal_the_naive_path(chunk: int, per_token: bool) -> None:
    logits, tokens, tau_t = inputs()
    tau = tau_t if per_token else 0.7
    stats = token_stats(logits, tokens, tau, features={"lse": logsumexp_feature}, chunk_tokens=chunk)
    ref_logp, ref_h = naive(logits, tokens, tau)
    ref_lse = logsumexp_feature(logits, tokens, tau if isinstance(tau, float) else tau.unsqueeze(-1))
    assert torch.equal(stats.logp, ref_logp) and torch.equal(stats.entropy, ref_h)  # same fp32 arithmetic per token
    assert torch.equal(stats.features["lse"], ref_lse)
    w = torch.randn(3, B, T, generator=torch.Generator().manual_seed(9))
    (g,) = torch.autograd.grad((w[0] * stats.logp + w[1] * stats.entropy + w[2] * stats.features["lse"]).sum(), logits)
    (g_ref,) = torch.autograd.grad((w[0] * ref_logp + w[1] * ref_h + w[2] * ref_lse).sum(), logits)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-7)


def test_temperature_changes_the_distribution_by_hand() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [1/4, 3/4] at tau = 1
    stats = token_stats(logits, torch.tensor([[1]]), torch.tensor([[2.0]]))
    q = 3**0.5 / (1 + 3**0.5)  # tau = 2: softmax([0, log(3)/2])
    assert stats.logp.item() == pytest.approx(math.log(q), rel=1e-6)
    assert stats.entropy.item() == pytest.approx(-(q * math.log(q) + (1 - q) * math.log(1 - q)), rel=1e-6)


@pytest.mark.parametrize("chunk", [2, 8])
def test_masked_tokens_are_skipped_read_zero_and_get_no_gradient(chunk: int) -> None:
    logits, tokens, tau_t = inputs(1)
    mask = torch.ones(B, T)
    mask[0, 4:] = 0  # a short response
    mask[2, :] = 0  # an empty one
    tau_t = torch.where(mask.bool(), tau_t, torch.zeros_like(tau_t))  # 0 off the mask is allowed: never read
    stats = token_stats(logits, tokens, tau_t, mask=mask, features={"lse": logsumexp_feature}, chunk_tokens=chunk)
    ref_logp, ref_h = naive(logits, tokens, torch.where(mask.bool(), tau_t, torch.ones_like(tau_t)))
    on = mask.bool()
    for got, ref in ((stats.logp, ref_logp), (stats.entropy, ref_h)):
        assert torch.equal(got[on], ref[on]) and (got[~on] == 0).all()
    assert (stats.features["lse"][~on] == 0).all()
    (g,) = torch.autograd.grad((stats.logp + stats.entropy).sum(), logits)
    (g_ref,) = torch.autograd.grad(((ref_logp + ref_h) * mask).sum(), logits)
    assert (g[~on] == 0).all()
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-7)


def test_hidden_states_with_lm_head_weight_equal_logits_input() -> None:
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(B, T, 16, generator=g).requires_grad_()
    weight = (0.5 * torch.randn(V, 16, generator=g)).requires_grad_()
    tokens = torch.randint(V, (B, T), generator=g)
    stats = token_stats(hidden, tokens, 0.8, lm_head_weight=weight, features={"lse": logsumexp_feature}, chunk_tokens=4)
    ref = token_stats(hidden @ weight.T, tokens, 0.8, features={"lse": logsumexp_feature}, chunk_tokens=B * T)
    for got, want in (
        (stats.logp, ref.logp),
        (stats.entropy, ref.entropy),
        (stats.features["lse"], ref.features["lse"]),
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # the chunked matmul may round differently
    loss = (stats.logp + stats.entropy).sum()
    ref_loss = (ref.logp + ref.entropy).sum()
    for got, want in zip(torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(ref_loss, (hidden, weight))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_entropy_modes() -> None:
    logits, tokens, _ = inputs()
    assert token_stats(logits, tokens, 1.0, want_entropy=False).entropy is None
    detached = token_stats(logits, tokens, 1.0, want_entropy="nograd")
    assert detached.logp.requires_grad and not detached.entropy.requires_grad
    assert token_stats(logits, tokens, 1.0, want_entropy="grad").entropy.requires_grad
    with torch.no_grad():
        assert not token_stats(logits, tokens, 1.0).entropy.requires_grad
        with pytest.raises(ValueError, match="grad mode is off"):
            token_stats(logits, tokens, 1.0, want_entropy="grad")


def test_bad_arguments_raise_one_line_errors() -> None:
    logits, tokens, tau_t = inputs()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_stats(logits, tokens, 0.0)
    with pytest.raises(ValueError, match="temperature must be > 0 on every computed token"):
        token_stats(logits, tokens, torch.where(tokens == tokens[0, 0], 0.0, 1.0))
    with pytest.raises(ValueError, match=r"temperature must be \[B, T\]"):
        token_stats(logits, tokens, tau_t[:, :1])
    with pytest.raises(ValueError, match="tokens"):
        token_stats(logits, tokens[:, :-1], 1.0)
    with pytest.raises(ValueError, match="lm_head_weight"):
        token_stats(logits, tokens, 1.0, lm_head_weight=torch.zeros(V, 3))
    with pytest.raises(ValueError, match="chunk_tokens"):
        token_stats(logits, tokens, 1.0, chunk_tokens=0)
    with pytest.raises(ValueError, match="want_entropy"):
        token_stats(logits, tokens, 1.0, want_entropy="yes")  # type: ignore[arg-type]


def test_empty_batch() -> None:
    stats = token_stats(
        torch.zeros(0, 5, V), torch.zeros(0, 5, dtype=torch.long), 1.0, features={"lse": logsumexp_feature}
    )
    assert stats.logp.shape == stats.entropy.shape == stats.features["lse"].shape == (0, 5)


def registered_features() -> list[tuple[str, str]]:
    import entropy_rl.methods  # noqa: F401  (registers the catalogue)
    from entropy_rl.core.policy_loss import POLICY_LOSSES

    return [
        (m, f)
        for m in POLICY_LOSSES.names()
        for f, _ in get_policy_loss(m).obj.old_features + get_policy_loss(m).obj.cur_features
    ]


@pytest.mark.parametrize("method,feature", registered_features())
def test_every_declared_method_feature_works_per_chunk(method: str, feature: str) -> None:
    """Computed chunk by chunk (float or per-token temperature) a method's feature equals it on whole logits."""
    entry = get_policy_loss(method)
    fn = dict(entry.obj.old_features + entry.obj.cur_features)[feature]
    p = entry.make_params()
    logits, tokens, tau_t = inputs(3)
    bound = {feature: lambda z, tok, tau: fn(z, tok, tau, p)}
    for tau in (0.7, tau_t):
        got = token_stats(logits, tokens, tau, features=bound, chunk_tokens=4).features[feature]
        whole = fn(logits, tokens, tau if isinstance(tau, float) else tau.unsqueeze(-1), p)
        assert got.shape == (B, T)
        torch.testing.assert_close(got, whole, rtol=1e-6, atol=1e-6)


class LargestAllocation(TorchDispatchMode):
    """Records the largest new tensor (in elements) any op returns inside the block, forward and backward; views
    (split, slices) share their input's memory and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.numel, self.op, self.ops = 0, "", set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            fresh = isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs
            if fresh and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out


PEAK_B, PEAK_T, PEAK_V, PEAK_D, CHUNK = 2, 128, 32_000, 16, 32  # B*T*V = 8.2M elements; chunk*V = 1.0M


def test_largest_tensor_is_one_chunk_not_the_batch() -> None:
    """At V = 32k, the biggest tensor token_stats creates (forward and backward, hidden-state input) is one chunk's
    [chunk, V], 8x smaller than the [B, T, V] the naive path creates; the same probe sees the naive one."""
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(PEAK_B, PEAK_T, PEAK_D, generator=g).requires_grad_()
    weight = (0.1 * torch.randn(PEAK_V, PEAK_D, generator=g)).requires_grad_()
    tokens = torch.randint(PEAK_V, (PEAK_B, PEAK_T), generator=g)
    bound = CHUNK * PEAK_V
    assert PEAK_B * PEAK_T * PEAK_V >= 8 * bound and PEAK_V * PEAK_D <= bound  # the weight's gradient fits too
    with LargestAllocation() as chunked:
        stats = token_stats(
            hidden,
            tokens,
            torch.full((PEAK_B, PEAK_T), 0.9),
            lm_head_weight=weight,
            features={"lse": logsumexp_feature},
            chunk_tokens=CHUNK,
        )
        (stats.logp + stats.entropy + stats.features["lse"]).sum().backward()
    assert chunked.numel <= bound, (chunked.numel, chunked.op)
    assert any("backward" in op for op in chunked.ops)  # the probe saw the backward pass too
    logits = (hidden @ weight.T).detach()  # [B, T, V], made outside the probes
    with LargestAllocation() as no_grad, torch.no_grad():
        token_stats(logits, tokens, 0.9, chunk_tokens=CHUNK)  # logits input: the same bound without grad
    assert no_grad.numel <= bound, (no_grad.numel, no_grad.op)
    with LargestAllocation() as unchunked, torch.no_grad():
        naive(logits, tokens, 0.9)
    assert unchunked.numel == PEAK_B * PEAK_T * PEAK_V


@pytest.mark.parametrize("form", ["hidden", "logits"])
def test_autograd_keeps_no_chunk_logits_between_forward_and_backward(form: str) -> None:
    """With gradient, each chunk is recomputed in the backward: what autograd saves beyond the inputs is tiny,
    where plain autograd would keep several [chunk, V] fp32 tensors per chunk (7 x B*T*V elements here)."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(PEAK_B, PEAK_T, PEAK_D, generator=g).requires_grad_()
    weight = (0.1 * torch.randn(PEAK_V, PEAK_D, generator=g)).requires_grad_()
    tokens = torch.randint(PEAK_V, (PEAK_B, PEAK_T), generator=g)
    x, w = (hidden, weight) if form == "hidden" else (hidden @ weight.T, None)
    inputs = {t.untyped_storage().data_ptr() for t in (hidden, weight, x)}
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in inputs:
            saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stats = token_stats(x, tokens, 0.9, lm_head_weight=w, features={"lse": logsumexp_feature}, chunk_tokens=CHUNK)
    assert sum(saved) <= PEAK_B * PEAK_T, sum(saved)  # token ids at most
    (stats.logp + stats.entropy + stats.features["lse"]).sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def hidden_inputs(seed: int = 6, d: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, d, generator=g).requires_grad_()
    weight = torch.randn(V, d, generator=g).requires_grad_()
    return hidden, weight, torch.randint(V, (B, T), generator=g)


def graph_nodes(t: torch.Tensor) -> set[str]:
    """Names of every autograd node behind `t`."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in seen:
            seen.add(type(node).__name__)
            todo += [n for n, _ in node.next_functions]
    return seen


@pytest.mark.parametrize("want", [True, "nograd", False])
def test_hidden_states_without_features_run_the_kernel(want: bool | str) -> None:
    """Hidden + weight and no features go through lm_head_stats (its backward node, bias included), equal to the
    naive path on the full logits off a mask, with a per-token temperature that is 0 off the mask."""
    hidden, weight, tokens = hidden_inputs()
    bias = torch.randn(V, generator=torch.Generator().manual_seed(7)).requires_grad_()
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    mask[2, :] = 0
    tau = torch.where(mask.bool(), 0.5 + torch.rand(B, T, generator=torch.Generator().manual_seed(8)), 0.0)
    stats = token_stats(hidden, tokens, tau, lm_head_weight=weight, lm_head_bias=bias, want_entropy=want, mask=mask,
                        chunk_tokens=4, chunk_vocab=16)
    assert "LMHeadStatsBackward" in graph_nodes(stats.logp)  # the kernel, not the checkpointed path
    assert (stats.entropy is None) == (want is False)
    assert stats.entropy is None or stats.entropy.requires_grad == (want is True)
    logits = torch.nn.functional.linear(hidden, weight, bias)
    ref_logp, ref_h = naive(logits, tokens, torch.where(mask.bool(), tau, 1.0))
    on = mask.bool()
    torch.testing.assert_close(stats.logp[on], ref_logp[on], rtol=1e-5, atol=1e-5)
    assert (stats.logp[~on] == 0).all()
    if want:
        torch.testing.assert_close(stats.entropy[on], ref_h[on], rtol=1e-5, atol=1e-5)
        assert (stats.entropy[~on] == 0).all()
    loss = (stats.logp + (stats.entropy if want is True else 0)).sum()
    ref_loss = ((ref_logp + (ref_h if want is True else 0)) * mask).sum()
    got = torch.autograd.grad(loss, (hidden, weight, bias))
    expected = torch.autograd.grad(ref_loss, (hidden, weight, bias))
    assert (got[0][~on] == 0).all()
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_tied_embedding_gets_both_gradients() -> None:
    """A weight that is both the input embedding and the LM head: its one .grad holds the embedding-lookup and
    the head gradients, as with the naive path."""
    g = torch.Generator().manual_seed(10)
    emb = torch.nn.Parameter(torch.randn(V, 16, generator=g))
    mix = torch.randn(16, 16, generator=g) / 4
    ids = torch.randint(V, (B, T + 1), generator=g)

    def grad_of(path: str) -> torch.Tensor:
        emb.grad = None
        hidden = torch.tanh(emb[ids[:, :-1]] @ mix)  # a one-layer "model" reading the same weight
        if path == "kernel":
            stats = token_stats(hidden, ids[:, 1:], 0.8, lm_head_weight=emb, chunk_tokens=5, chunk_vocab=16)
            loss = (stats.logp - 0.3 * stats.entropy).sum()
        else:
            logp, h = naive(hidden @ emb.T, ids[:, 1:], 0.8)
            loss = (logp - 0.3 * h).sum()
        loss.backward()
        return emb.grad.clone()

    kernel, reference = grad_of("kernel"), grad_of("naive")
    torch.testing.assert_close(kernel, reference, rtol=1e-5, atol=1e-5)
    emb.grad = None
    torch.tanh(emb[ids[:, :-1]] @ mix).sum().backward()
    assert (emb.grad - kernel).abs().max() > 1e-2  # the head's part is really in there


def test_kernel_largest_tensor_is_one_tile_and_autograd_keeps_no_logits() -> None:
    """Without features, hidden + weight at V = 32k: no tensor (forward or backward) beyond one [chunk, chunk_vocab]
    tile or the weight's gradient, and autograd saves only the inputs and [N] statistics."""
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(PEAK_B, PEAK_T, PEAK_D, generator=g).requires_grad_()
    weight = (0.1 * torch.randn(PEAK_V, PEAK_D, generator=g)).requires_grad_()
    tokens = torch.randint(PEAK_V, (PEAK_B, PEAK_T), generator=g)
    tile = 64 * 4096
    assert PEAK_B * PEAK_T * PEAK_V >= 16 * max(tile, PEAK_V * PEAK_D)
    inputs = {t.untyped_storage().data_ptr() for t in (hidden, weight)}
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in inputs:
            saved.append(t.numel())
        return t

    with LargestAllocation() as probe:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stats = token_stats(hidden, tokens, torch.full((PEAK_B, PEAK_T), 0.9), lm_head_weight=weight,
                                chunk_tokens=64, chunk_vocab=4096)
        (stats.logp + stats.entropy).sum().backward()
    assert probe.numel <= max(tile, PEAK_V * PEAK_D), (probe.numel, probe.op)
    assert any("backward" in op or "addmm" in op for op in probe.ops)
    assert sum(saved) <= 5 * PEAK_B * PEAK_T, sum(saved)  # tokens, temperature, lse, entropy: [N] each
