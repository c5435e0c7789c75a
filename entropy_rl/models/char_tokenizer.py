"""A character-level tokenizer built locally with `tokenizers` (no hub download), wrapped for transformers."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of `alphabet` plus <pad>=0, <eos>=1, <unk>=2; decoding concatenates characters.

    Args:
        alphabet: every character the task's prompts and answers can contain (duplicates ignored, order kept).

    Returns:
        A `PreTrainedTokenizerFast` that `save_pretrained` / `AutoTokenizer.from_pretrained` round-trip.
    """
    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("alphabet is empty")
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK] + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every char is a word
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
