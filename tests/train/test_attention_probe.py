"""Attention-entropy monitor: the per-head reduction by hand, the hooked eager pass against a hand-computed model
(zero queries and keys: uniform attention, entropy ln(visible keys)) and against transformers' own
output_attentions, chunk invariance, the model's attention setting restored, and the trainer's logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from entropy_rl.metrics.attention import head_entropy, head_entropy_sum
from entropy_rl.metrics.names import is_known
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.train.attention_probe import attention_entropy, attention_metrics
from entropy_rl.train.forward import position_ids_from_mask
from entropy_rl.train.loop import train


def test_head_entropy_by_hand() -> None:
    # head 0: uniform over 2 keys -> ln 2, then one-hot -> 0; head 1: (0.5, 0.25, 0.25) -> 1.5 ln 2, then uniform over 4
    attn = torch.tensor([[[[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]],
                          [[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]]]])  # [1, 2, 2, 4]
    both = torch.tensor([[1, 1]])
    h = head_entropy(attn, both)
    assert h[0].item() == pytest.approx(math.log(2) / 2)
    assert h[1].item() == pytest.approx((1.5 * math.log(2) + math.log(4)) / 2)
    first = torch.tensor([[1, 0]])  # only the first query counts
    assert head_entropy(attn, first).tolist() == pytest.approx([math.log(2), 1.5 * math.log(2)])
    assert head_entropy_sum(attn, torch.zeros(1, 2)).tolist() == [0.0, 0.0]
    assert torch.isnan(head_entropy(attn, torch.zeros(1, 2))).all()
    with pytest.raises(ValueError, match="query_mask"):
        head_entropy(attn, torch.ones(2, 2))


def tiny(layers: int = 2, heads: int = 2):
    tok = build_char_tokenizer("0123456789+=")
    spec = TinyModelSpec(hidden_size=32, num_layers=layers, num_heads=heads, num_kv_heads=1, intermediate_size=64)
    return build_tiny_model(spec, tok, seed=0).eval(), tok


def batch(vocab: int, B: int = 3, P: int = 4, T: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, P + T), generator=g)
    attn = torch.ones(B, P + T, dtype=torch.long)
    attn[1, :2] = 0  # a left-padded prompt
    mask = torch.ones(B, T)
    mask[2, 3:] = 0  # a response that ended early
    return ids, attn, P, mask


def test_uniform_attention_gives_ln_of_visible_keys() -> None:
    model, _ = tiny()
    for layer in model.model.layers:  # q = k = 0 (weights and biases): every score 0, attention uniform
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            torch.nn.init.zeros_(proj.weight)
            if proj.bias is not None:
                torch.nn.init.zeros_(proj.bias)
    ids, attn, P, mask = batch(model.config.vocab_size)
    got = attention_entropy(model, ids, attn, P, mask, chunk=0)
    assert got.shape == (2, 2)
    # query at position P - 1 + t sees the real tokens up to it: row 1 has 2 pad tokens on the left
    expected, n = 0.0, 0
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                expected += math.log(P + t - (2 if b == 1 else 0))
                n += 1
    assert got.flatten().tolist() == pytest.approx([expected / n] * 4, rel=1e-5)


def test_matches_output_attentions_and_is_chunk_invariant() -> None:
    model, _ = tiny(layers=3, heads=4)
    assert model.config._attn_implementation == "sdpa"
    ids, attn, P, mask = batch(model.config.vocab_size, B=5, seed=1)
    got = attention_entropy(model, ids, attn, P, mask, chunk=2)
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass
    assert torch.allclose(attention_entropy(model, ids, attn, P, mask, chunk=0), got, rtol=1e-5, atol=1e-6)
    model.set_attn_implementation("eager")
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), output_attentions=True)
    queries = torch.zeros(5, ids.shape[1])
    queries[:, P - 1 : -1] = mask
    ref = torch.stack([head_entropy(a, queries) for a in out.attentions])  # transformers' own weights, [L, H]
    assert got.shape == (3, 4) and torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert (got > 0).all() and (got <= math.log(ids.shape[1]) + 1e-5).all()
    metrics = attention_metrics(got)
    assert list(metrics) == ["attention/entropy_l0", "attention/entropy_l1", "attention/entropy_l2"]
    assert metrics["attention/entropy_l1"] == pytest.approx(got[1].mean().item())
    assert all(is_known(k) for k in metrics)


def test_trainer_logs_attention_entropy_every_n_steps_without_changing_training(tiny_config, tmp_path: Path) -> None:
    train(tiny_config("train.steps=3"), tmp_path / "off", progress=False)
    train(tiny_config("train.steps=3", "train.attention_entropy_every=2"), tmp_path / "on", progress=False)
    off, on = read_jsonl(tmp_path / "off" / "metrics.jsonl"), read_jsonl(tmp_path / "on" / "metrics.jsonl")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("timing/", "attention/"))} for r in rows]  # noqa: E731
    assert strip(on) == strip(off)  # the extra pass draws no random numbers and changes no weights
    assert not any(k.startswith("attention/") for r in off for k in r)
    assert not (tmp_path / "off" / "attention_entropy.jsonl").exists()
    logged = [r["step"] for r in on if "attention/entropy_l0" in r]
    assert logged == [2]
    lines = [json.loads(line) for line in (tmp_path / "on" / "attention_entropy.jsonl").read_text().splitlines()]
    assert [d["step"] for d in lines] == [2]
    per_head = lines[0]["entropy"]
    assert len(per_head) == 2 and all(len(row) == 2 for row in per_head)  # TINY_MODEL: 2 layers x 2 heads
    row = on[1]
    assert row["attention/entropy_l1"] == pytest.approx(sum(per_head[1]) / 2, rel=1e-6)


def test_resume_rewinds_attention_entropy_jsonl(tiny_config, tmp_path: Path) -> None:
    import shutil

    from entropy_rl.train.checkpoint import latest_checkpoint

    cfg = tiny_config("train.steps=4", "train.save_every=2", "train.attention_entropy_every=1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full, progress=False)
    train(cfg, cut, progress=False)
    shutil.rmtree(latest_checkpoint(cut))  # killed after step 4 was logged but before its checkpoint
    train(cfg, cut, resume=True, progress=False)
    lines = lambda d: (d / "attention_entropy.jsonl").read_text().splitlines()  # noqa: E731
    assert [json.loads(x)["step"] for x in lines(cut)] == [1, 2, 3, 4]
    assert lines(cut) == lines(full)  # the same per-head values: same weights, same batches
