"""Diversity metrics: the Vendi score on hand-computed similarity matrices (identical -> 1, orthogonal -> n, a 2x2
closed form), the character n-gram cosine similarity by hand, answer entropy in nats, the per-group means, and
(when the `vendi-score` package is installed) agreement with its `score_K`."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from entropy_rl.metrics.diversity import answer_entropy, group_diversity, ngram_similarity, vendi_score


def test_identical_items_score_1_and_orthogonal_items_score_n() -> None:
    for n in (1, 2, 5, 16):
        assert vendi_score(torch.ones(n, n)) == pytest.approx(1.0, abs=1e-9)
        assert vendi_score(torch.eye(n)) == pytest.approx(float(n), rel=1e-9)


def test_two_items_closed_form() -> None:
    # K = [[1, s], [s, 1]]: eigenvalues of K/2 are (1 + s)/2 and (1 - s)/2; s = 0.6 -> 0.8 and 0.2,
    # H = -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.500402..., VS = exp(H) = 1.649385...
    K = torch.tensor([[1.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert h == pytest.approx(0.500402, abs=1e-6)
    assert vendi_score(K) == pytest.approx(math.exp(h), rel=1e-12)
    assert vendi_score(K) == pytest.approx(1.649385, abs=1e-6)


def test_block_structure_counts_clusters() -> None:
    # two clusters of identical items (sizes 2 and 2): K/4 has eigenvalues 1/2, 1/2, 0, 0 -> VS = 2
    K = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2))
    assert vendi_score(K) == pytest.approx(2.0, rel=1e-12)
    # unequal clusters (3 and 1): eigenvalues 3/4 and 1/4 -> VS = exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7547...
    K = torch.block_diag(torch.ones(3, 3), torch.ones(1, 1))
    assert vendi_score(K) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-12)


def test_vendi_rejects_bad_matrices() -> None:
    with pytest.raises(ValueError, match="square"):
        vendi_score(torch.ones(2, 3))
    with pytest.raises(ValueError, match="square"):
        vendi_score(torch.ones(0, 0))
    with pytest.raises(ValueError, match="unit diagonal"):
        vendi_score(2 * torch.eye(3))


def test_ngram_similarity_by_hand() -> None:
    # "ab": {a, b, ab}; "ba": {a, b, ba}; shared a, b -> cos = 2 / (sqrt(3) sqrt(3)) = 2/3
    K = ngram_similarity(["ab", "ba"])
    assert K[0, 1].item() == pytest.approx(2 / 3, rel=1e-12) and K[1, 0] == K[0, 1]
    # "aa": {a: 2, aa: 1}; "a": {a: 1} -> cos = 2 / (sqrt(5) * 1)
    assert ngram_similarity(["aa", "a"])[0, 1].item() == pytest.approx(2 / math.sqrt(5), rel=1e-12)
    # disjoint characters: orthogonal, so a group of them scores its size
    K = ngram_similarity(["abc", "xyz", "123", "+-*"])
    assert torch.equal(K, torch.eye(4, dtype=torch.float64))
    assert vendi_score(K) == pytest.approx(4.0)
    assert vendi_score(ngram_similarity(["(1+2)*3"] * 8)) == pytest.approx(1.0)
    K = ngram_similarity(["", "", "ab"])  # empty texts: alike among themselves, unlike anything else
    assert K.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert vendi_score(K) == pytest.approx(math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))))


def test_vendi_is_between_1_and_n_on_random_texts() -> None:
    g = torch.Generator().manual_seed(0)
    alphabet = "0123456789+-*/() "
    for _ in range(20):
        n = int(torch.randint(1, 9, (1,), generator=g))
        texts = ["".join(alphabet[int(i)] for i in torch.randint(0, len(alphabet), (int(torch.randint(0, 12, (1,), generator=g)),), generator=g))
                 for _ in range(n)]
        vs = vendi_score(ngram_similarity(texts))
        assert 1.0 - 1e-9 <= vs <= n + 1e-9, (texts, vs)


def test_answer_entropy_in_nats() -> None:
    assert answer_entropy(["7", "7", "7"]) == 0.0
    assert answer_entropy(["1", "2"]) == pytest.approx(math.log(2))
    assert answer_entropy(["1", "2", "3", "4"]) == pytest.approx(math.log(4))
    # p = (2/3, 1/3): H = -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.636514...
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert expected == pytest.approx(0.636514, abs=1e-6)
    assert answer_entropy(["1", None, "1", "2"]) == pytest.approx(expected, rel=1e-12)  # None left out
    assert answer_entropy([None, None]) is None and answer_entropy([]) is None


def test_group_diversity_means_over_groups() -> None:
    texts = ["a", "a", "x", "y", "1", "1"]
    answers = ["5", "5", "5", "6", None, None]
    out = group_diversity(texts, answers, [0, 0, 1, 1, 2, 2])
    # vendi: group 0 identical (1), group 1 orthogonal (2), group 2 identical (1) -> 4/3
    assert out["diversity/vendi"] == pytest.approx(4 / 3)
    # answer entropy: group 0 -> 0, group 1 -> ln 2, group 2 has no parsed answer (skipped) -> ln(2) / 2
    assert out["diversity/answer_entropy"] == pytest.approx(math.log(2) / 2)
    shuffled = group_diversity([texts[i] for i in (5, 0, 3, 1, 2, 4)], [answers[i] for i in (5, 0, 3, 1, 2, 4)],
                               [2, 0, 1, 0, 1, 2])  # groups need not be contiguous
    assert shuffled == pytest.approx(out)
    assert group_diversity(["a"], [None], [0]) == {"diversity/vendi": 1.0}
    assert group_diversity([], [], []) == {}
    with pytest.raises(ValueError, match="differ in length"):
        group_diversity(["a"], [], [0])


def test_agrees_with_the_vendi_score_package() -> None:
    vendi = pytest.importorskip("vendi_score.vendi")
    texts = ["(1+2)*3", "(2+1)*3", "3*(1+2)", "9", "1+2+3+3", "(1+2)*3"]
    K = ngram_similarity(texts)
    assert vendi_score(K) == pytest.approx(float(vendi.score_K(K.numpy())), rel=1e-9)


def counter_cosine(a: str, b: str, n_max: int = 3) -> float:
    """The definition, written plainly: cosine of Counter-based character n-gram counts (empty texts aside)."""
    ca, cb = (Counter(t[i : i + n] for n in range(1, n_max + 1) for i in range(len(t) - n + 1)) for t in (a, b))
    dot = sum(v * cb[g] for g, v in ca.items())
    return dot / math.sqrt(sum(v * v for v in ca.values()) * sum(v * v for v in cb.values()))


def test_vectorised_similarity_matches_the_plain_definition() -> None:
    g = torch.Generator().manual_seed(1)
    alphabet = "ab+-é€😀\x00 12"  # multi-byte characters and NUL: code points, not bytes
    for n_max in (1, 2, 3):
        texts = ["".join(alphabet[int(i)] for i in torch.randint(0, len(alphabet), (int(torch.randint(1, 15, (1,), generator=g)),),
                                                                   generator=g)) for _ in range(7)]
        K = ngram_similarity(texts, n_max)
        for i in range(7):
            for j in range(7):
                assert K[i, j].item() == pytest.approx(counter_cosine(texts[i], texts[j], n_max), rel=1e-12, abs=1e-15)
    assert ngram_similarity(["\x00a", "a\x00"], 1)[0, 1].item() == pytest.approx(1.0)  # same unigrams
    assert ngram_similarity(["é", "\u00e9"], 3)[0, 1].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_max"):
        ngram_similarity(["a"], 4)
