"""Per-token statistics of a softmax policy from one chunked pass over the vocabulary.

`token_stats` gives, for every response token, the tempered log-prob of the sampled token, the tempered
full-vocabulary entropy (only when asked for, with or without gradient) and any declared features, working on
at most `chunk_tokens` tokens at a time, so the fp32 `[B, T, V]` tensors of the naive path (tempered logits,
log-softmax, probabilities) never exist at once. The input is either logits `[B, T, V]` or hidden states
`[B, T, d]` plus the LM-head weight `[V, d]`; the second form never builds the logits of more than one chunk.

Hidden states + weight without features go through the kernel `core.lm_head_stats`: tiles of `chunk_tokens`
tokens x `chunk_vocab` vocabulary entries, an online logsumexp across the vocabulary chunks, and a custom backward
that recomputes each tile's logits, so the peak (forward and backward) is a few `[chunk_tokens, chunk_vocab]` fp32
tiles plus the `[N, d]` and `[V, d]` gradients. Features need each chunk's whole logits, so with features (and
for a logits input) the path below is used instead.

Memory of that path: without gradient the peak is a few `[chunk, V]` fp32 tensors. With gradient each chunk runs
under `torch.utils.checkpoint`: autograd keeps only the chunk's inputs and recomputes the chunk in the backward
(one extra chunk forward, for the hidden-state form including its `[chunk, d] x [d, V]` matmul), so the
backward's peak is also one chunk. What stays: a logits input gets a full `[B, T, V]` gradient (in the logits'
dtype, which the model's own backward needs anyway), assembled from the chunks' gradients, which autograd holds
until all are done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from entropy_rl.core.entropy import entropy_from_logp
from entropy_rl.core.lm_head_stats import DEFAULT_CHUNK_TOKENS, lm_head_stats

ChunkFeature = Callable[[Tensor, Tensor, float | Tensor], Tensor]
"""A per-chunk feature: (logits [n, V] raw, tokens [n] int64, temperature float or [n, 1] fp32) -> [n] fp32."""

WantEntropy = bool | Literal["grad", "nograd"]


@dataclass(frozen=True)
class TokenStats:
    """What `token_stats` computed, aligned on the `[B, T]` token grid (0 where the mask is 0).

    Attributes:
        logp: [B, T] fp32 tempered log-prob of each token.
        entropy: [B, T] fp32 tempered full-vocabulary entropy in nats, or None when not asked for.
        features: {name: [B, T]} the declared features.
    """

    logp: Tensor
    entropy: Tensor | None
    features: dict[str, Tensor]


def token_stats(
    logits_or_hidden: Tensor,
    tokens: Tensor,
    temperature: float | Tensor,
    *,
    lm_head_weight: Tensor | None = None,
    lm_head_bias: Tensor | None = None,
    want_entropy: WantEntropy = True,
    features: Mapping[str, ChunkFeature] | None = None,
    mask: Tensor | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    chunk_vocab: int | None = None,
) -> TokenStats:
    """Tempered log-probs, entropies and features of `tokens`, `chunk_tokens` tokens at a time.

    Per token the distribution is softmax(z / tau) with z the raw logits and tau its temperature; values equal
    `token_logprobs` / `token_entropy` on the full logits (same formula, same fp32 arithmetic per token; the
    hidden-state kernel path to fp32 rounding, as it sums over vocabulary chunks in another order).
    Tokens where `mask` is 0 are skipped: they read 0 and get no gradient.

    Args:
        logits_or_hidden: [B, T, V] logits (any float dtype), or [B, T, d] hidden states when
            `lm_head_weight` is given; position t scores tokens[:, t].
        tokens: [B, T] int64 token ids.
        temperature: tau > 0, a float or a [B, T] tensor (per-token sampling temperature).
        lm_head_weight: [V, d] output-embedding weight; logits are hidden @ weight.T (+ bias) per chunk (no logit
            soft-capping or scaling: pass logits for models that have them). Without features this runs the
            `lm_head_stats` kernel; a weight tied to the input embedding gets both gradients in its one `.grad`.
        lm_head_bias: [V] LM-head bias, with `lm_head_weight` only; None for heads without one.
        want_entropy: False: no entropy. True: entropy under the ambient grad mode, like logp. "grad": with
            gradient (grad mode must be on). "nograd": detached, at no extra autograd memory.
        features: {name: fn} computed per chunk on the raw logits [n, V], tokens [n] and temperature (the float,
            or [n, 1] fp32 for a tensor temperature), under the ambient grad mode; each returns [n].
        mask: [B, T], nonzero on the tokens to compute; None computes all.
        chunk_tokens: the most tokens whose logits are processed at once.
        chunk_vocab: vocabulary entries per kernel tile (the `lm_head_stats` path only; the other path takes
            whole rows of V); None: the kernel's per-device default.

    Returns:
        TokenStats with logp [B, T] fp32, entropy [B, T] fp32 or None, features {name: [B, T]}.

    Raises:
        ValueError: on inconsistent shapes, a bad `want_entropy`, `chunk_tokens` < 1 or a temperature <= 0.
    """
    features = dict(features or {})
    check_args(logits_or_hidden, tokens, temperature, lm_head_weight, want_entropy, mask, chunk_tokens)
    if lm_head_bias is not None and (lm_head_weight is None or lm_head_bias.shape != lm_head_weight.shape[:1]):
        raise ValueError(f"lm_head_bias must be [V] and come with lm_head_weight, got {tuple(lm_head_bias.shape)}")
    B, T = tokens.shape
    if B * T == 0:
        empty = torch.zeros(B, T, dtype=torch.float32, device=tokens.device)
        return TokenStats(empty, empty.clone() if want_entropy else None, {k: empty.clone() for k in features})
    if lm_head_weight is not None and not features:
        return kernel_stats(
            logits_or_hidden,
            tokens,
            temperature,
            lm_head_weight,
            lm_head_bias,
            want_entropy,
            mask,
            chunk_tokens,
            chunk_vocab,
        )
    # tiles of whole rows (or of one row's positions when T > chunk_tokens): split views, no [B*T, V] reshape copy
    rows, cols = max(1, chunk_tokens // T), min(T, chunk_tokens)
    recompute = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (logits_or_hidden, lm_head_weight)
    )
    grid: list[list[TokenStats]] = []
    for r0, x_rows in zip(range(0, B, rows), logits_or_hidden.split(rows, dim=0)):
        line = []
        for c0, x in zip(range(0, T, cols), x_rows.split(cols, dim=1)):
            nb, nt = x.shape[:2]
            window = (slice(r0, r0 + nb), slice(c0, c0 + nt))
            tile_tau = temperature[window] if isinstance(temperature, Tensor) else temperature
            tile_mask = None if mask is None else mask[window]
            args = (x, tokens[window], tile_tau, lm_head_weight, lm_head_bias, want_entropy, features, tile_mask)
            # with gradient, autograd keeps only the tile's inputs and recomputes the tile in the backward
            line.append(checkpoint(tile_stats, *args, use_reentrant=False) if recompute else tile_stats(*args))
        grid.append(line)

    def stitch(parts: list[list[Tensor]]) -> Tensor:
        return torch.cat([torch.cat(line, dim=1) for line in parts], dim=0)

    return TokenStats(
        logp=stitch([[tile.logp for tile in line] for line in grid]),
        entropy=stitch([[tile.entropy for tile in line if tile.entropy is not None] for line in grid])
        if want_entropy
        else None,
        features={name: stitch([[tile.features[name] for tile in line] for line in grid]) for name in features},
    )


def check_args(
    x: Tensor,
    tokens: Tensor,
    temperature: float | Tensor,
    weight: Tensor | None,
    want_entropy: WantEntropy,
    mask: Tensor | None,
    chunk_tokens: int,
) -> None:
    """Raise a one-line ValueError on inconsistent shapes or settings of `token_stats`."""
    if tokens.dim() != 2 or x.dim() != 3 or x.shape[:2] != tokens.shape:
        raise ValueError(
            f"expected logits/hidden [B, T, *] and tokens [B, T], got {tuple(x.shape)} and {tuple(tokens.shape)}"
        )
    if weight is not None and (weight.dim() != 2 or weight.shape[1] != x.shape[2]):
        raise ValueError(f"lm_head_weight must be [V, d] with d = {x.shape[2]}, got {tuple(weight.shape)}")
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(f"mask must be [B, T] = {tuple(tokens.shape)}, got {tuple(mask.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if want_entropy not in (True, False, "grad", "nograd"):
        raise ValueError(f"want_entropy must be True, False, 'grad' or 'nograd', got {want_entropy!r}")
    if want_entropy == "grad" and not torch.is_grad_enabled():
        raise ValueError("want_entropy='grad' asks for an entropy with gradient, but grad mode is off")
    if isinstance(temperature, Tensor):
        if temperature.shape != tokens.shape:
            raise ValueError(
                f"a tensor temperature must be [B, T] = {tuple(tokens.shape)}, got {tuple(temperature.shape)}"
            )
        used = temperature if mask is None else temperature[mask != 0]
        if not bool((used > 0).all()):
            raise ValueError("temperature must be > 0 on every computed token")
    elif not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def kernel_stats(
    hidden: Tensor,
    tokens: Tensor,
    temperature: float | Tensor,
    weight: Tensor,
    bias: Tensor | None,
    want_entropy: WantEntropy,
    mask: Tensor | None,
    chunk_tokens: int,
    chunk_vocab: int | None,
) -> TokenStats:
    """`token_stats` of hidden [B, T, d] + weight [V, d] by `lm_head_stats` on the kept tokens, no features."""
    B, T, d = hidden.shape
    flat, tok = hidden.reshape(B * T, d), tokens.reshape(-1)
    tau = temperature.reshape(-1) if isinstance(temperature, Tensor) else temperature
    keep = None if mask is None else mask.reshape(-1).nonzero().squeeze(1)  # [k] kept positions
    if keep is not None and keep.numel() < tok.numel():
        flat, tok = flat.index_select(0, keep), tok.index_select(0, keep)
        tau = tau.index_select(0, keep) if isinstance(tau, Tensor) else tau
    else:
        keep = None  # all kept: no gather
    logp, entropy = lm_head_stats(
        flat,
        weight,
        tok,
        tau,
        bias=bias,
        entropy=bool(want_entropy),
        chunk_tokens=chunk_tokens,
        chunk_vocab=chunk_vocab,
    )
    if want_entropy == "nograd" and entropy is not None:
        entropy = entropy.detach()  # its backward term is then skipped

    def place(v: Tensor) -> Tensor:  # [k] -> [B, T] fp32, 0 off the mask
        v = v.float()
        return (v if keep is None else v.new_zeros(B * T).index_copy(0, keep, v)).reshape(B, T)

    return TokenStats(place(logp), None if entropy is None else place(entropy), {})


def tile_stats(
    x: Tensor,
    tokens: Tensor,
    temperature: float | Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    want_entropy: WantEntropy,
    features: Mapping[str, ChunkFeature],
    mask: Tensor | None,
) -> TokenStats:
    """`token_stats` of one tile (checkpointed with gradient): x [nb, nt, V or d], tokens [nb, nt] -> TokenStats of
    [nb, nt] tensors."""
    nb, nt = tokens.shape
    flat = x.reshape(nb * nt, x.shape[-1])  # a copy of this tile at most
    tok = tokens.reshape(-1)
    tau = temperature if not isinstance(temperature, Tensor) else temperature.reshape(-1, 1).float()
    keep = None
    if mask is not None:
        keep = mask.reshape(-1).nonzero().squeeze(1)  # [k] kept positions
        if keep.numel() == tok.numel():
            keep = None  # all kept: no gather
        else:
            flat, tok = flat.index_select(0, keep), tok.index_select(0, keep)
            tau = tau if not isinstance(tau, Tensor) else tau.index_select(0, keep)
    logits = flat if weight is None else torch.nn.functional.linear(flat, weight, bias)  # [k, V]
    logp_all = torch.log_softmax(logits.float() / tau, dim=-1)  # [k, V] fp32
    logp = logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1)  # [k]
    entropy = None
    if want_entropy == "nograd" or (want_entropy and not torch.is_grad_enabled()):
        with torch.no_grad():
            entropy = entropy_from_logp(logp_all.detach())
    elif want_entropy:
        # its own graph from the logits: sharing logp_all would sum both gradients before the log-softmax backward,
        # equal in exact arithmetic but not bit-identical to the recorded runs (e.g. entropy_bonus moves ~1e-7)
        entropy = entropy_from_logp(torch.log_softmax(logits.float() / tau, dim=-1))
    feats = {name: fn(logits, tok, tau) for name, fn in features.items()}

    def place(v: Tensor) -> Tensor:  # [k] -> [nb, nt], 0 off the mask
        full = v if keep is None else v.new_zeros(nb * nt).index_copy(0, keep, v)
        return full.reshape(nb, nt)

    return TokenStats(place(logp), None if entropy is None else place(entropy), {k: place(v) for k, v in feats.items()})
