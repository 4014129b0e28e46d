import pytest
from transformers import AutoTokenizer

from meddpo.generation.chat_format import ChatTemplateError, render_chat_prompt, training_prompt

SYSTEM = "Answer with care and suggest a clinician when in doubt."
QUESTION = "What are the symptoms of gout ?"


def test_mistral_style_template_gets_system_text_in_the_user_turn(tiny_mistral):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mistral)
    # the template really refuses a system role ...
    with pytest.raises(Exception, match="no system role"):
        tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}], tokenize=False
        )
    rendered = render_chat_prompt(tokenizer, SYSTEM, QUESTION)
    # ... so the system text goes into the first (and only) user turn
    assert rendered.system_in_user_turn
    assert rendered.text == f"<s>[INST] {SYSTEM}\n\n{QUESTION} [/INST]"


def test_chatml_template_keeps_the_system_role(tiny_qwen):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    rendered = render_chat_prompt(tokenizer, SYSTEM, QUESTION)
    assert not rendered.system_in_user_turn
    assert rendered.text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}")
    assert rendered.text.endswith("<|im_start|>assistant\n")


def test_template_that_silently_drops_system_is_caught(tiny_qwen):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}<|im_start|>assistant\n"
    )
    rendered = render_chat_prompt(tokenizer, SYSTEM, QUESTION)
    assert rendered.system_in_user_turn and SYSTEM in rendered.text


def test_no_template_is_an_error_not_a_made_up_format(tiny_qwen):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat_prompt(tokenizer, SYSTEM, QUESTION, model_name="m")


def test_training_prompt_layout():
    assert (
        training_prompt("Be careful.\n", "What is gout ?") == "Be careful.\n\nUser question:\nWhat is gout ?"
    )
