"""cure: candidate filter and critical-token choice by hand; stage 1 groups each prompt's originals with their
branches, each branch continues its original's prefix up to t* (prefix shared, out of the loss), every token's
sampling log-prob matches the trainer's; stage 2 is plain sampling of the same batch size."""

from dataclasses import replace

import torch

from entropy_rl.rollout import SamplingParams
from entropy_rl.rollout.hf import generate
from entropy_rl.rollout.strategies import make_strategy
from entropy_rl.rollout.strategies.cure import candidate_mask, critical_positions


class TwoCharTokenizer:
    """Stand-in decoding for the filter: ids 3 and 4 decode to two characters, id 5 to a space, 1 is special."""

    all_special_ids = (0, 1, 2)

    def decode(self, ids: list[int]) -> str:
        return {3: "ab", 4: " cd ", 5: " "}.get(ids[0], "x")


def test_candidates_skip_position_zero_special_short_and_masked_tokens(policy) -> None:
    model, tok = policy
    batch = generate(model, tok, ["1>2:", "3>4:"], SamplingParams(max_new_tokens=5))
    ids = torch.tensor([[3, 3, 4, 5, 1], [4, 6, 1, 3, 3]])  # row 1 ends at position 2 (EOS = 1)
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = replace(batch, response_ids=ids, response_mask=mask)
    got = candidate_mask(batch, TwoCharTokenizer(), min_chars=2)
    assert got.tolist() == [[False, True, True, False, False], [False, False, False, False, False]]
    assert candidate_mask(batch, TwoCharTokenizer(), min_chars=1)[1].tolist() == [False, True, False, False, False]


def test_critical_position_is_drawn_among_the_top_k_by_entropy() -> None:
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2], [0.3, 0.2, 0.1, 0.4, 0.9]])
    cand = torch.tensor([[False, True, True, True, True], [False, False, False, False, False]])
    assert critical_positions(entropy, cand, 1, "entropy").tolist() == [1, 0]  # argmax; none -> 0
    torch.manual_seed(0)
    draws = {critical_positions(entropy, cand, 2, "entropy")[0].item() for _ in range(50)}
    assert draws == {1, 3}  # the two highest-entropy candidates (0.9, 0.7), both drawn
    draws = {critical_positions(entropy, cand, 1, "random")[0].item() for _ in range(80)}
    assert draws == {1, 2, 3, 4}  # random mode ignores entropy and top_k


def test_stage_one_branches_share_prefixes_and_match_the_trainer(policy, engine, prompts, rescore) -> None:
    model, tok = policy
    G, n2, T = 2, 3, 8
    strategy = make_strategy("cure", {"branches": n2, "min_token_chars": 1, "critical_top_k": 3})
    torch.manual_seed(0)
    batch, metrics = strategy.generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=T), group_size=G, step=1)
    per = G * (1 + n2)
    assert batch.response_ids.shape == (len(prompts) * per, T) and not batch.train_shared_prefix
    assert batch.group_index.tolist() == [g for g in range(len(prompts)) for _ in range(per)]  # contiguous groups
    for g in range(len(prompts)):
        rows = range(g * per, (g + 1) * per)
        originals, branches = list(rows)[:G], list(rows)[G:]
        assert batch.shared_prefix_mask[originals].sum() == 0
        for j, b in enumerate(branches):
            o = originals[j // n2]
            L = int(batch.shared_prefix_mask[b].sum())  # t* of the original
            assert torch.equal(batch.response_ids[b, :L], batch.response_ids[o, :L])  # the prefix is the original's
            assert torch.equal(batch.sampling_logp[b, :L], batch.sampling_logp[o, :L])
            assert torch.equal(batch.prompt_ids[b], batch.prompt_ids[o])
            assert batch.loss_mask[b, :L].sum() == 0  # the prefix is trained once, in the original
    m = batch.response_mask.bool()
    assert torch.allclose(batch.sampling_logp[m], rescore(batch)[m], atol=1e-5)  # prefixes and continuations
    assert metrics["rollout/branches"] == len(prompts) * G * n2 and metrics["rollout/cure/stage"] == 1.0
    assert metrics["rollout/tokens_generated"] >= float(batch.loss_mask.sum())  # copies not counted, extra sampled
    assert metrics["rollout/scored_tokens"] == float(batch.response_mask[:: per].sum() + batch.response_mask[1:: per].sum())
    assert metrics["rollout/cure/no_critical_frac"] < 1


def test_without_candidates_branches_resample_from_the_prompt(policy, engine, prompts) -> None:
    """The official filter (text longer than one character) leaves nothing on a character tokenizer: t* = 0."""
    model, tok = policy
    torch.manual_seed(0)
    batch, metrics = make_strategy("cure").generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=6),
                                                    group_size=2, step=1)
    assert metrics["rollout/cure/no_critical_frac"] == 1.0 and batch.shared_prefix_mask.sum() == 0


def test_stage_two_is_plain_sampling_of_the_same_size(policy, engine, prompts) -> None:
    model, tok = policy
    torch.manual_seed(0)
    batch, metrics = make_strategy("cure", {"stage1_steps": 5}).generate(
        engine, model, tok, prompts, SamplingParams(max_new_tokens=6), group_size=2, step=6)
    assert batch.response_ids.shape[0] == len(prompts) * 2 * 4 and batch.shared_prefix_mask is None
    assert metrics["rollout/cure/stage"] == 2.0 and metrics["rollout/branches"] == 0
    assert metrics["rollout/tokens_generated"] == float(batch.response_mask.sum())


def test_bpe_checkpoint_with_chat_prompts(tmp_path) -> None:
    """A byte-level BPE tokenizer (multi-character tokens, special tokens, a ChatML template): the official filter
    (decoded text longer than one character) finds candidates, chat prompts are rendered once and branches keep
    their original's prompt ids, and every sampling log-prob matches the trainer's."""
    from entropy_rl.models import load_pretrained, save_tiny_checkpoint
    from entropy_rl.rollout import make_engine
    from entropy_rl.tasks.chat import ChatPrompt
    from entropy_rl.train.forward import score_in_chunks

    model, tok = load_pretrained(save_tiny_checkpoint(tmp_path / "qwen2"))
    prompts = [ChatPrompt("What is 12 + 30?", "Think step by step."), ChatPrompt("Compute 48 / 2.")]
    torch.manual_seed(0)
    batch, metrics = make_strategy("cure", {"branches": 2}).generate(
        make_engine("hf", model, tok), model, tok, prompts, SamplingParams(max_new_tokens=10), group_size=2, step=1)
    assert metrics["rollout/cure/no_critical_frac"] < 1 and batch.shared_prefix_mask.sum() > 0
    assert tok.decode(batch.prompt_ids[0][batch.prompt_mask[0].bool()]).startswith("<|im_start|>system")
    per = 2 * 3
    for g in range(2):
        rows = batch.prompt_ids[g * per : (g + 1) * per]
        assert (rows == rows[0]).all()  # originals and branches: one rendered prompt per group
    logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                 batch.temperature, 0, mask=batch.response_mask)
    m = batch.response_mask.bool()
    assert torch.allclose(batch.sampling_logp[m], logp[m], atol=1e-5)
