"""Sampled-token log-prob and entropy straight from final hidden states and the LM-head weight, tile by tile.

For N tokens with hidden states h [N, d], head weight W [V, d] (and optional bias b [V]), temperature tau and
sampled tokens y, per token n:

    s = (h_n W^T + b) / tau      lse = logsumexp(s)      logp_n = s_y - lse      H_n = lse - sum_v p_v s_v

computed over tiles of `chunk_tokens` tokens x `chunk_vocab` vocabulary entries. The forward keeps, per token, a
running max m, S = sum exp(s - m) and A = sum exp(s - m)(s - m) across the vocabulary chunks (an online
logsumexp), so lse = m + log S and H = log S - A / S; it saves only lse and H ([N] each) beside the inputs.
The backward recomputes each tile's logits and forms dL/ds = g_logp (onehot(y) - p) - g_H p (log p + H) on the
tile (d logp / ds = onehot - p, dH/ds = -p (log p + H)), so no [N, V] tensor (logits, softmax or their
gradient) ever exists: peak memory is a few [chunk_tokens, chunk_vocab] fp32 tiles plus the [N, d] and [V, d]
gradients. The price is one extra logits matmul (the recompute): four matmuls of N x V x d against autograd's
three. No forward-mode AD (jvp) and no double backward.

Precision: the tile's logits come from the same `linear` in the inputs' dtype a model's LM head uses (bf16 in,
bf16 logits, fp32 accumulation inside the GEMM), then everything is fp32: softmax statistics, dL/ds, and the
sums across tiles of the hidden-state, weight and bias gradients. As autograd does for `logits.float()`, dL/ds is
cast to the inputs' dtype for the two gradient matmuls of each tile.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_TOKENS = 1024  # [1024, V] fp32 is 0.6 GiB at V = 152k (the whole-row path of token_stats)
CPU_CHUNK_VOCAB = 2048  # [1024, 2048] fp32 tiles (8 MiB): 10-30% less CPU time than 8192 here (docs/LOG.md)
ACCELERATOR_CHUNK_VOCAB = 8192  # 32 MiB tiles, so each elementwise kernel outlasts its launch (not measured yet)


def default_chunk_vocab(device: torch.device) -> int:
    """Vocabulary entries per tile when the caller gives none: small tiles on CPU, larger ones on accelerators."""
    return CPU_CHUNK_VOCAB if device.type == "cpu" else ACCELERATOR_CHUNK_VOCAB


def lm_head_stats(
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    temperature: float | Tensor,
    *,
    bias: Tensor | None = None,
    entropy: bool = True,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    chunk_vocab: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Tempered log-prob of each sampled token and tempered full-vocabulary entropy, without [N, V] tensors.

    Differentiable w.r.t. `hidden`, `weight` and `bias` (for any upstream gradients of both outputs); a weight
    shared with the input embedding gets both gradients summed into its one `.grad` by autograd as usual.

    Args:
        hidden: [N, d] final hidden states (the LM head's input), any float dtype.
        weight: [V, d] LM-head weight, same dtype and device as `hidden`.
        tokens: [N] int64 ids in [0, V).
        temperature: tau > 0, a float or an [N] tensor (per-token).
        bias: [V] LM-head bias or None.
        entropy: compute the entropy (False returns None and skips its arithmetic).
        chunk_tokens: tokens per tile.
        chunk_vocab: vocabulary entries per tile; None: `default_chunk_vocab(hidden.device)`.

    Returns:
        logp [N] and entropy [N] (or None), nats, fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: inconsistent shapes or dtypes, a temperature <= 0, chunk sizes < 1, or a token id outside [0, V).
    """
    N, V = tokens.shape[0], weight.shape[0]
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or tokens.shape != (N,):
        raise ValueError(
            f"expected hidden [N, d], weight [V, d], tokens [N], got {tuple(hidden.shape)}, {tuple(weight.shape)}, "
            f"{tuple(tokens.shape)}"
        )
    if hidden.shape[0] != N:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but tokens has {N}")
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(f"hidden, weight and bias must share one dtype, got {hidden.dtype} and {weight.dtype}")
    if bias is not None and bias.shape != (V,):
        raise ValueError(f"bias must be [V] = [{V}], got {tuple(bias.shape)}")
    if isinstance(temperature, Tensor) and temperature.shape != (N,):
        raise ValueError(f"a tensor temperature must be [N] = [{N}], got {tuple(temperature.shape)}")
    if not bool((torch.as_tensor(temperature) > 0).all()):
        raise ValueError("temperature must be > 0 on every token")
    chunk_vocab = default_chunk_vocab(hidden.device) if chunk_vocab is None else chunk_vocab
    if chunk_tokens < 1 or chunk_vocab < 1:
        raise ValueError(f"chunk_tokens and chunk_vocab must be >= 1, got {chunk_tokens} and {chunk_vocab}")
    if N and bool((tokens < 0).any() | (tokens >= V).any()):
        raise ValueError(f"token ids must lie in [0, {V}), got min {int(tokens.min())} and max {int(tokens.max())}")
    tau = temperature.to(accum_dtype(hidden.dtype)) if isinstance(temperature, Tensor) else float(temperature)
    logp, ent = LMHeadStats.apply(hidden, weight, bias, tokens, tau, entropy, chunk_tokens, chunk_vocab)
    return logp, ent if entropy else None


class LMHeadStats(torch.autograd.Function):
    """The autograd Function behind `lm_head_stats`: saves the inputs and [N] statistics, recomputes tiles."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        tokens: Tensor,
        tau: float | Tensor,
        entropy: bool,
        chunk_tokens: int,
        chunk_vocab: int,
    ) -> tuple[Tensor, Tensor]:
        """Returns logp [N] fp32 and entropy [N] fp32 (an empty non-differentiable tensor when not asked for)."""
        logp, lse, ent = forward_tiles(hidden, weight, bias, tokens, tau, entropy, chunk_tokens, chunk_vocab)
        ctx.save_for_backward(hidden, weight, bias, tokens, tau if isinstance(tau, Tensor) else None, lse, ent)
        ctx.tau, ctx.chunks = (None if isinstance(tau, Tensor) else tau), (chunk_tokens, chunk_vocab)
        ctx.set_materialize_grads(False)  # an unused or detached output gets None, and its term is skipped
        if ent is None:
            ent = logp.new_empty(0)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None) -> tuple[Tensor | None, ...]:
        """Gradients for hidden, weight and bias; None for the other inputs."""
        hidden, weight, bias, tokens, tau_t, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_ent = g_ent if ent is not None else None  # no entropy computed: its output is a non-differentiable stub
        if g_logp is None and g_ent is None:
            return (None,) * 8
        tau = ctx.tau if tau_t is None else tau_t
        grads = backward_tiles(
            hidden, weight, bias, tokens, tau, lse, ent, g_logp, g_ent, (need_h, need_w, need_b), *ctx.chunks
        )
        return (*grads, None, None, None, None, None)


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics and gradient sums: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def tile_logits(h: Tensor, weight: Tensor, bias: Tensor | None, j0: int, j1: int, tau: float | Tensor) -> Tensor:
    """Tempered logits s = linear(h, W[j0:j1], b[j0:j1]).float() / tau of one tile, [n, j1 - j0], fresh.

    The same ops as the naive path on the model's logits (`logits.float() / tau`), so the same values.
    """
    z = F.linear(h, weight[j0:j1], None if bias is None else bias[j0:j1])
    s = z.to(accum_dtype(z.dtype))  # z itself when already fp32 / fp64: fresh either way, so in place is safe
    if isinstance(tau, Tensor):
        return s.div_(tau.unsqueeze(1))
    return s if tau == 1.0 else s.div_(tau)


def forward_tiles(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tokens: Tensor,
    tau: float | Tensor,
    entropy: bool,
    chunk_tokens: int,
    chunk_vocab: int,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """logp [N], lse [N] and entropy [N] (or None), fp32, by an online logsumexp over vocabulary chunks."""
    N, V = tokens.shape[0], weight.shape[0]
    acc_dtype, dev = accum_dtype(hidden.dtype), hidden.device
    logp, lse = torch.empty(N, dtype=acc_dtype, device=dev), torch.empty(N, dtype=acc_dtype, device=dev)
    ent = torch.empty(N, dtype=acc_dtype, device=dev) if entropy else None
    for i0 in range(0, N, chunk_tokens):
        i1 = min(i0 + chunk_tokens, N)
        h, tok = hidden[i0:i1], tokens[i0:i1]
        t = tau[i0:i1] if isinstance(tau, Tensor) else tau
        m = S = A = s_y = None  # running max, sum exp(s - m), sum exp(s - m)(s - m), target logit; all [n]
        for j0 in range(0, V, chunk_vocab):
            j1 = min(j0 + chunk_vocab, V)
            s = tile_logits(h, weight, bias, j0, j1, t)  # [n, w]
            here = (tok >= j0) & (tok < j1)
            picked = s.gather(1, (tok - j0).clamp(0, j1 - j0 - 1).unsqueeze(1)).squeeze(1)
            s_y = picked if s_y is None else torch.where(here, picked, s_y)
            m_new = s.amax(1) if m is None else torch.maximum(m, s.amax(1))
            e = s.sub_(m_new.unsqueeze(1)).exp()  # s now holds s - m_new
            S_c = e.sum(1)
            A_c = s.mul_(e).sum(1) if entropy else None
            if m is None:
                S, A = S_c, A_c
            else:  # move the running sums from base m to m_new: exp(s - m_new) = r exp(s - m), r = exp(m - m_new)
                r = torch.exp(m - m_new)
                if entropy:  # sum r exp(s - m) ((s - m) + (m - m_new)) = r (A + (m - m_new) S)
                    A = r * (A + (m - m_new) * S) + A_c
                S = r * S + S_c
            m = m_new
        assert m is not None and S is not None and s_y is not None  # V >= 1: the vocabulary loop ran
        log_S = S.log()
        lse[i0:i1] = m + log_S
        logp[i0:i1] = s_y - lse[i0:i1]
        if ent is not None and A is not None:
            ent[i0:i1] = log_S - A / S
    return logp, lse, ent


def backward_tiles(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tokens: Tensor,
    tau: float | Tensor,
    lse: Tensor,
    ent: Tensor | None,
    g_logp: Tensor | None,
    g_ent: Tensor | None,
    needs: tuple[bool, bool, bool],
    chunk_tokens: int,
    chunk_vocab: int,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (hidden [N, d], weight [V, d], bias [V] or None each) of sum(g_logp logp + g_ent H).

    Vocabulary chunks outside, token chunks inside: a weight chunk's gradient is summed over all tokens in an fp32
    [w, d] buffer, then written once; the hidden-state gradient is summed over vocabulary chunks in fp32 [N, d].
    """
    need_h, need_w, need_b = needs
    N, V = tokens.shape[0], weight.shape[0]
    dt, acc, dev = weight.dtype, accum_dtype(weight.dtype), weight.device
    inv_tau = 1.0 / tau if not isinstance(tau, Tensor) else tau.reciprocal()
    # per-token coefficients with 1/tau folded in: dL/dz = c_l (onehot - p) - c_h p (log p + H)
    c_l = None if g_logp is None else g_logp.to(acc) * inv_tau
    c_h = None if g_ent is None else g_ent.to(acc) * inv_tau
    f32 = dt == acc  # fp32 (or fp64) inputs: accumulate straight into the gradients
    grad_h = torch.zeros(hidden.shape, dtype=acc, device=dev) if need_h else None
    grad_w = torch.empty_like(weight) if need_w else None
    grad_b = torch.empty_like(bias) if need_b and bias is not None else None
    for j0 in range(0, V, chunk_vocab):
        j1 = min(j0 + chunk_vocab, V)
        w_c = weight[j0:j1]
        gw = None
        if grad_w is not None:  # fp32 weights accumulate in place into their gradient's rows
            gw = grad_w[j0:j1].zero_() if f32 else torch.zeros(j1 - j0, weight.shape[1], dtype=acc, device=dev)
        gb = torch.zeros(j1 - j0, dtype=acc, device=dev) if need_b else None
        for i0 in range(0, N, chunk_tokens):
            i1 = min(i0 + chunk_tokens, N)
            h, tok = hidden[i0:i1], tokens[i0:i1]
            t = tau[i0:i1] if isinstance(tau, Tensor) else tau
            logp = tile_logits(h, weight, bias, j0, j1, t).sub_(lse[i0:i1].unsqueeze(1))  # [n, w] log p
            p = logp.exp()
            if c_h is not None:  # -p (log p + H) c_h - p c_l
                coef = logp.add_(ent[i0:i1].unsqueeze(1)).mul_(c_h[i0:i1].unsqueeze(1))
                if c_l is not None:
                    coef.add_(c_l[i0:i1].unsqueeze(1))
                dz = p.mul_(coef).neg_()
            else:
                assert c_l is not None  # backward is only called with at least one output gradient
                dz = p.mul_(-c_l[i0:i1].unsqueeze(1))
            if c_l is not None:  # + c_l at the sampled token, when it lies in this vocabulary chunk
                rows = ((tok >= j0) & (tok < j1)).nonzero().squeeze(1)
                dz.index_put_((rows, tok[rows] - j0), c_l[i0:i1][rows], accumulate=True)
            dz_c = dz if f32 else dz.to(dt)
            if grad_h is not None:
                if f32:
                    grad_h[i0:i1].addmm_(dz, w_c)
                else:
                    grad_h[i0:i1] += dz_c @ w_c
            if gw is not None:
                if f32:
                    gw.addmm_(dz.T, h)
                else:
                    gw += dz_c.T @ h
            if gb is not None:
                gb += dz.sum(0)
        if grad_w is not None and gw is not None and not f32:
            grad_w[j0:j1] = gw
        if grad_b is not None and gb is not None:
            grad_b[j0:j1] = gb
    return (None if grad_h is None else grad_h.to(dt)), grad_w, grad_b
