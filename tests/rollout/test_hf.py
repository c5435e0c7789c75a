"""HF rollout: masks end at the first EOS, and sampling log-probs equal the trainer's re-scored log-probs
(left padding and position ids handled identically in generate and in the training forward)."""

import pytest
import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout.hf import SamplingParams, encode_prompts, generate, response_mask_from_ids, sampled_logprobs, shared_prefill
from entropy_rl.train.forward import score_in_chunks


def test_response_mask_includes_first_eos_only() -> None:
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8]])  # eos = 1
    mask, truncated = response_mask_from_ids(ids, eos_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True]


def test_sampling_logprobs_match_rescoring_with_left_padding() -> None:
    tok = build_char_tokenizer("0123456789+-*>: ")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=0)
    torch.manual_seed(0)
    prompts = ["1 2>3:", "12 3 4>99:", "5>5:", "1 2 3 4 5>15:"]  # different lengths -> left padding
    batch = generate(model, tok, prompts, SamplingParams(temperature=0.7, max_new_tokens=6))
    logp, entropy, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], 0.7, 0)
    m = batch.response_mask.bool()
    assert torch.allclose(batch.sampling_logp[m], logp[m], atol=1e-4)
    assert (entropy[m] > 0).all()
    assert len(batch.texts) == 4 and all(isinstance(t, str) for t in batch.texts)


def test_sampled_logprobs_step_by_step_equal_the_stacked_computation() -> None:
    """One [B, V] step at a time gives bit-for-bit the log-probs of the former [B, T, V] stack, -inf scores included."""
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(3, 11, generator=g) * 3 for _ in range(5)]
    for s in scores:
        s[:, :4] = float("-inf")  # top-k filtered
    tokens = torch.randint(4, 11, (3, 5), generator=g)
    stacked = torch.log_softmax(torch.stack(scores, dim=1).float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(sampled_logprobs(tuple(scores), tokens), stacked)


def embedding_calls(model) -> tuple[list[tuple[int, ...]], object]:
    """Record the [batch, tokens] shape of every forward pass through the model's input embedding."""
    shapes: list[tuple[int, ...]] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    return shapes, handle


def test_shared_prefill_samples_exactly_what_per_row_prefill_samples() -> None:
    """Prefilling each prompt once and repeating its cache to the group gives the same tokens and log-probs as
    prefilling every row (same seed), and those log-probs are the trainer's; the prompt is prefilled once."""
    tok = build_char_tokenizer("0123456789+-*>: ")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=0)
    prompts = ["1 2>3:", "12 3 4>99:", "5", "1 2 3 4 5>15:"]  # different lengths (one of 1 token) -> left padding
    sampling = SamplingParams(temperature=0.7, top_k=12, top_p=0.9, max_new_tokens=6)
    G = 3
    batches = {}
    for share in (False, True):
        shapes, handle = embedding_calls(model)
        torch.manual_seed(0)
        batches[share] = generate(model, tok, prompts, sampling, group_size=G, share_prefill=share)
        handle.remove()
        P = batches[share].prompt_ids.shape[1]
        assert shapes[0] == ((4, P - 1) if share else (4 * G, P))  # prefill: 4 prompts once, or all 12 rows
        assert shapes[1] == ((4 * G, 1) if share else (4 * G, 1))  # then one token per row and step
    shared, per_row = batches[True], batches[False]
    assert shared.group_index.tolist() == [i // G for i in range(4 * G)]
    assert torch.equal(shared.prompt_ids, per_row.prompt_ids) and torch.equal(shared.response_ids, per_row.response_ids)
    assert torch.equal(shared.response_mask, per_row.response_mask)
    assert torch.allclose(shared.sampling_logp, per_row.sampling_logp, atol=1e-6, rtol=0)
    assert torch.equal(shared.prompt_ids[0], shared.prompt_ids[G - 1]) and not torch.equal(shared.prompt_ids[0], shared.prompt_ids[G])
    logp, _, _ = score_in_chunks(model, shared.input_ids, shared.attention_mask, shared.prompt_ids.shape[1], 0.7, 0)
    m = shared.response_mask.bool()
    # top-k / top-p truncation makes the sampled log-prob larger than the trainer's untruncated one, never smaller
    assert (shared.sampling_logp[m] >= logp[m] - 1e-5).all()


def test_shared_prefill_matches_rescoring_without_truncation() -> None:
    tok = build_char_tokenizer("0123456789+-*>: ")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=1)
    torch.manual_seed(3)
    batch = generate(model, tok, ["1 2>3:", "12 3 4>99:"], SamplingParams(temperature=1.3, max_new_tokens=8),
                     group_size=4, share_prefill=True)
    logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], 1.3, 0)
    m = batch.response_mask.bool()
    assert m.sum() > 8 and torch.allclose(batch.sampling_logp[m], logp[m], atol=1e-5)


def test_no_shared_prefill_for_single_rows_or_one_token_prompts() -> None:
    """group_size 1 has nothing to share; prompts of one token leave nothing to prefill before the last token."""
    tok = build_char_tokenizer("0123456789+-*>: ")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=0)
    sampling = SamplingParams(max_new_tokens=3)
    for prompts, G in ((["1 2>3:", "5>"], 1), (["1", "5"], 3)):
        shapes, handle = embedding_calls(model)
        torch.manual_seed(0)
        shared = generate(model, tok, prompts, sampling, group_size=G, share_prefill=True)
        handle.remove()
        torch.manual_seed(0)
        plain = generate(model, tok, prompts, sampling, group_size=G)
        assert shapes[0] == (2 * G, shared.prompt_ids.shape[1])  # every row prefilled: no shared cache
        assert torch.equal(shared.response_ids, plain.response_ids)


def test_chunks_hold_whole_groups_and_bad_arguments_are_errors() -> None:
    tok = build_char_tokenizer("0123456789+-*>: ")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=0)
    sampling = SamplingParams(max_new_tokens=3)
    shapes, handle = embedding_calls(model)
    batch = generate(model, tok, ["1>", "22>", "333>"], sampling, batch_size=5, group_size=2, share_prefill=True)
    handle.remove()
    assert batch.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert [s for s in shapes if s[1] > 1] == [(2, 2), (1, 3)]  # 5 rows hold 2 groups: 2 prompts prefilled, then 1
    with pytest.raises(ValueError, match="group_size and batch_size must be >= 1"):
        generate(model, tok, ["1>"], sampling, group_size=0)
    with pytest.raises(ValueError, match="generate_kwargs may not set cache, temperature"):
        generate(model, tok, ["1>"], sampling, generate_kwargs={"temperature": 2.0, "cache": None})


def test_static_cache_samples_what_the_dynamic_cache_samples_with_and_without_shared_prefill() -> None:
    tok = build_char_tokenizer("0123456789+-*>: ")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=2)
    prompts = ["1 2>3:", "12 3 4>99:", "5>", "1 2 3 4 5>15:"]
    sampling = SamplingParams(temperature=0.8, max_new_tokens=7)
    torch.manual_seed(5)
    dynamic = generate(model, tok, prompts, sampling, group_size=3)
    for share in (False, True):
        torch.manual_seed(5)
        static = generate(model, tok, prompts, sampling, group_size=3, share_prefill=share, cache_implementation="static")
        assert torch.equal(static.response_ids, dynamic.response_ids)
        assert torch.allclose(static.sampling_logp, dynamic.sampling_logp, atol=1e-6, rtol=0)
    logp, _, _ = score_in_chunks(model, static.input_ids, static.attention_mask, static.prompt_ids.shape[1], 0.8, 0)
    m = static.response_mask.bool()
    assert torch.allclose(static.sampling_logp[m], logp[m], atol=1e-5)
    with pytest.raises(ValueError, match="cache_implementation must be one of dynamic, static, got 'offloaded'"):
        generate(model, tok, prompts, sampling, cache_implementation="offloaded")


def test_shared_prefill_cache_rows_hold_their_prompt() -> None:
    """Row i * G + g of the shared cache holds prompt i's keys and values, in a StaticCache when asked for one."""
    from transformers import StaticCache

    tok = build_char_tokenizer("0123456789+-*>: ")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64), tok, seed=0).eval()
    ids, mask = encode_prompts(tok, ["1 2>3:", "45>"], torch.device("cpu"))  # [2, 6]
    with torch.no_grad():
        dynamic = shared_prefill(model, ids, mask, repeats=3)
        static = shared_prefill(model, ids, mask, repeats=3, static_len=ids.shape[1] + 4)
        alone = shared_prefill(model, ids[1:], mask[1:], repeats=1)  # prompt 1 on its own
    assert isinstance(static, StaticCache) and int(static.get_seq_length()) == dynamic.get_seq_length() == 5
    for layer, static_layer, alone_layer in zip(dynamic.layers, static.layers, alone.layers):
        assert layer.keys.shape[0] == 6 and static_layer.keys.shape[2] == 10  # 2 prompts x 3 rows; 6 + 4 positions
        for g in range(3):
            assert torch.allclose(layer.keys[3 + g], alone_layer.keys[0], atol=1e-6)
            assert torch.allclose(layer.values[3 + g], alone_layer.values[0], atol=1e-6)
        assert torch.equal(static_layer.keys[:, :, :5], layer.keys) and torch.equal(static_layer.values[:, :, :5], layer.values)


def test_static_shared_prefill_falls_back_to_per_row_for_sliding_window_layers() -> None:
    """A sliding-window layer's cache is not copied into a static cache: every row is prefilled instead."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = build_char_tokenizer("0123456789+-*>: ")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, max_position_embeddings=64, use_sliding_window=True, sliding_window=3,
                      max_window_layers=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    ids, mask = encode_prompts(tok, ["1 2 3 4>3:", "45>"], torch.device("cpu"))
    with torch.no_grad():
        assert shared_prefill(model, ids, mask, repeats=2, static_len=ids.shape[1] + 4) is None
    sampling = SamplingParams(max_new_tokens=4)
    shapes, handle = embedding_calls(model)
    torch.manual_seed(1)
    a = generate(model, tok, ["1 2 3 4>3:", "45>"], sampling, group_size=2, share_prefill=True, cache_implementation="static")
    handle.remove()
    torch.manual_seed(1)
    b = generate(model, tok, ["1 2 3 4>3:", "45>"], sampling, group_size=2, cache_implementation="static")
    assert shapes[1] == (4, ids.shape[1])  # after the unused shared prefill, all 4 rows are prefilled
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.sampling_logp, b.sampling_logp)
