"""`format_prompt`: chat prompts go through the tokenizer's chat template, everything else stays plain text;
a template that cannot render is one clear error."""

from __future__ import annotations

import pickle

import pytest

from entropy_rl.models import build_char_tokenizer, train_bpe_tokenizer
from entropy_rl.tasks.chat import ChatPrompt, format_prompt


def test_chat_prompt_is_its_plain_text_and_pickles() -> None:
    p = ChatPrompt("What is 1 + 1?", "Be brief.")
    assert p == "Be brief.\n\nWhat is 1 + 1?" and ChatPrompt("Hi") == "Hi"
    q = pickle.loads(pickle.dumps(p))  # reward workers receive problems through a pipe
    assert type(q) is ChatPrompt and (q.user, q.system) == (p.user, p.system)
    assert p.messages() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 1?"}]


def test_templates_render_chat_prompts_only() -> None:
    tok = train_bpe_tokenizer()
    assert format_prompt(tok, ChatPrompt("2 + 2?")) == "<|im_start|>user\n2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tok, "2 + 2?") == "2 + 2?"  # plain tasks keep their exact text
    no_template = build_char_tokenizer("0123456789+? Bb.\n")
    assert format_prompt(no_template, ChatPrompt("2 + 2?", "Be brief.")) == "Be brief.\n\n2 + 2?"


def test_a_template_that_cannot_render_is_one_clear_error() -> None:
    tok = train_bpe_tokenizer(chat_template=(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"))  # as Gemma's template does
    assert format_prompt(tok, ChatPrompt("2 + 2?")) == "2 + 2?"
    with pytest.raises(ValueError, match=r"chat template cannot render a system\+user conversation: .*System role not "
                                         r"supported; set the task's system_prompt to '' or chat_template to false"):
        format_prompt(tok, ChatPrompt("2 + 2?", "Be brief."))
