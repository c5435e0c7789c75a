"""HF rollout: masks end at the first EOS, and sampling log-probs equal the trainer's re-scored log-probs
(left padding and position ids handled identically in generate and in the training forward)."""

import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout.hf import SamplingParams, generate, response_mask_from_ids, sampled_logprobs
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
