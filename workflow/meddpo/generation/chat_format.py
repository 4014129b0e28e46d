"""Render a (system prompt, question) pair with the model's own chat template.

Some chat templates take a ``system`` message (Qwen2.5); others raise on it
(several revisions of Mistral-7B-Instruct-v0.2) or silently drop it. We try the
system role first; when the template refuses it or the rendered text does not
contain the system prompt, the system prompt is put at the top of the first
user turn instead. The result is always checked by rendering: the system text
must appear in the prompt. A tokenizer without a chat template is an error; we
never invent a text format of our own.
"""

from __future__ import annotations

from dataclasses import dataclass

from meddpo.errors import UserError


class ChatTemplateError(UserError):
    """The model's chat template cannot carry the prompt (names the model)."""


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    system_in_user_turn: bool  # True when the template refused a system role


def fold_system_into_user(system: str, user: str) -> str:
    """The first user turn for templates without a system role."""
    return f"{system.strip()}\n\n{user}" if system.strip() else user


def render_chat_prompt(tokenizer, system: str, user: str, *, model_name: str = "model") -> RenderedPrompt:
    """The generation prompt for one question, as text, ready to tokenize.

    The text already contains the template's special tokens (e.g. BOS), so it
    must be tokenized with ``add_special_tokens=False``.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{model_name}: the tokenizer has no chat template; refusing to guess a prompt format"
        )
    system = system or ""
    if system.strip():
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": user}],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:  # noqa: BLE001 - jinja's TemplateError and friends: the role is refused
            text = None
        if text is not None and system.strip() in text and user in text:
            return RenderedPrompt(text=text, system_in_user_turn=False)
    folded = fold_system_into_user(system, user)
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": folded}], tokenize=False, add_generation_prompt=True
        )
    except Exception as err:  # noqa: BLE001
        raise ChatTemplateError(f"{model_name}: chat template failed on a single user turn: {err}") from None
    if system.strip() not in text or user not in text:
        raise ChatTemplateError(f"{model_name}: chat template dropped the system prompt or the question")
    return RenderedPrompt(text=text, system_in_user_turn=True)


def render_conversation(
    tokenizer, messages: list[dict], *, model_name: str = "model", add_generation_prompt: bool = False
) -> str:
    """A whole conversation through the model's chat template.

    For checkpoints whose template builds its own task prompt from the messages
    and ends it where the verdict starts (the safety classifiers: their model
    cards call ``apply_chat_template(messages)`` with no generation prompt):
    nothing is added or folded here.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{model_name}: the tokenizer has no chat template; refusing to guess a prompt format"
        )
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as err:  # noqa: BLE001 - jinja's TemplateError and friends
        message = " ".join(str(err).split())
        raise ChatTemplateError(
            f"{model_name}: chat template failed on a user/assistant exchange: {message}"
        ) from None


def training_prompt(system: str, question: str) -> str:
    """The ``prompt`` column of a DPO row: system text, a blank line, then the question.

    This is the plain-text layout the existing Stage 2 DPO training code reads.
    """
    return f"{system.strip()}\n\nUser question:\n{question}"
