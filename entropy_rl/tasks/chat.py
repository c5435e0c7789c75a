"""Prompt text -> the string the model sees: the tokenizer's chat template for chat prompts, else the text.

A task that wants its prompts rendered as a conversation returns them as `ChatPrompt`s: a `str` (the
plain-text form, used by tokenizers without a chat template, by the char tokenizer's alphabet and by the
train/eval split hash) that also carries the user message and the system prompt. `format_prompt` is the one
place prompt text becomes model input; the rollout calls it right before tokenising:

    ChatPrompt(user, system) --format_prompt(tokenizer)--> apply_chat_template([system, user], generation prompt)
    plain str / no template  --format_prompt(tokenizer)--> unchanged

The rendered text already holds the template's special tokens (BOS, role markers), so it is tokenised with
`add_special_tokens=False`.
"""

from __future__ import annotations

from typing import Any


class ChatPrompt(str):
    """A prompt to be rendered with the tokenizer's chat template; as a `str` it is its plain-text fallback.

    The plain text is `system + "\\n\\n" + user` (just `user` without a system prompt). String operations
    (`+`, `strip`, ...) return plain `str`s: only the object itself carries the conversation.

    Attributes:
        user: the user message (the question and its instruction).
        system: the system prompt ("" for none).
    """

    user: str
    system: str

    def __new__(cls, user: str, system: str = "") -> ChatPrompt:
        obj = super().__new__(cls, f"{system}\n\n{user}" if system else user)
        obj.user, obj.system = user, system
        return obj

    def __getnewargs__(self) -> tuple[str, str]:  # pickling (reward workers get problems through a pipe)
        return self.user, self.system

    def messages(self) -> list[dict[str, str]]:
        """The conversation: an optional system message, then the user message."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.user}]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether `tokenizer` carries a chat template (a non-empty `chat_template`)."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, text: str) -> str:
    """The model input text for prompt `text`: a `ChatPrompt` rendered with the chat template, else `text`.

    Args:
        tokenizer: a Hugging Face tokenizer; its `chat_template` (if any) is used with
            `add_generation_prompt=True`, so the text ends where the assistant's reply starts.
        text: a plain prompt (returned as is) or a `ChatPrompt`.

    Returns:
        The text to tokenise (with `add_special_tokens=False`). A `ChatPrompt` given to a tokenizer without a
        chat template is returned as its plain-text form.

    Raises:
        ValueError: the chat template failed to render the conversation (the message names the roles and
            says how to switch the template or the system prompt off).
    """
    if not isinstance(text, ChatPrompt) or not has_chat_template(tokenizer):
        return str(text)
    messages = text.messages()
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2 errors, templates that raise ("System role not supported"), ...
        roles = "+".join(m["role"] for m in messages)
        raise ValueError(f"the tokenizer's chat template cannot render a {roles} conversation: "
                         f"{type(e).__name__}: {e}; set the task's system_prompt to '' or chat_template to false") from e
    if not isinstance(rendered, str):
        raise ValueError(f"the tokenizer's chat template rendered a {type(rendered).__name__}, expected text")
    return rendered
