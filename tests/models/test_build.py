"""Tiny model construction and the save / load round trip (model and tokenizer byte-identical in behaviour)."""

from pathlib import Path

import pytest
import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model, load_pretrained, save_pretrained

ALPHABET = "0123456789+-*/()>: ="


def test_char_tokenizer_round_trips_text() -> None:
    tok = build_char_tokenizer(ALPHABET)
    ids = tok("12 + (3)", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 and tok.decode(ids) == "12 + (3)"
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1


def test_demo_model_is_about_a_million_parameters_and_deterministic() -> None:
    tok = build_char_tokenizer(ALPHABET)
    a = build_tiny_model(TinyModelSpec(), tok, seed=0)
    b = build_tiny_model(TinyModelSpec(), tok, seed=0)
    assert 0.7e6 < sum(p.numel() for p in a.parameters()) < 1.2e6
    assert a.config.num_hidden_layers == 4 and a.config.hidden_size == 128
    assert a.config._attn_implementation == "sdpa"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_load_round_trip_keeps_tokenization_and_weights(tmp_path: Path) -> None:
    tok = build_char_tokenizer(ALPHABET)
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, 0)
    save_pretrained(model, tok, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model2, tok2 = load_pretrained(tmp_path)
    text = "3 5 7>22:"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]  # regression: AutoTokenizer dropped spaces
    x = tok([text], return_tensors="pt")
    torch.testing.assert_close(model(**x).logits, model2(**x).logits)


def test_load_rejects_non_directories(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        load_pretrained(tmp_path / "Qwen/Qwen2.5-0.5B")
