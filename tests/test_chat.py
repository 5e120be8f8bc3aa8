"""Chat templates: built-in formats, the file's Jinja template in a sandbox, Cerebrum's."""

from __future__ import annotations

import pytest
from ferrollm.text.chat import CEREBRUM_PREAMBLE, ChatTemplateError, JinjaTemplate, chat_formatter, render

MESSAGES = [
    {"role": "user", "content": "What is self-consistency decoding?"},
    {"role": "assistant", "content": "A technique.</s>"},
    {"role": "user", "content": "Why does self-consistency work?"},
]


def test_cerebrum_matches_the_model_card():
    prompt = render(chat_formatter("cerebrum", None), MESSAGES[:1], "<s>", "</s>")
    assert prompt.text == f"<s>{CEREBRUM_PREAMBLE}\nUser: What is self-consistency decoding?\nAI:"


def test_cerebrum_multi_turn_strips_eos():
    prompt = render(chat_formatter("cerebrum", None), MESSAGES, "<s>", "</s>")
    assert "</s>" not in prompt.text
    assert prompt.text.endswith("\nAI: A technique.\nUser: Why does self-consistency work?\nAI:")
    assert "\nUser:" in prompt.stop


def test_llama2_and_mistral_formats():
    sys_msgs = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    llama2 = render(chat_formatter("llama-2", None), sys_msgs, "<s>", "</s>").text
    assert llama2.startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is")
    assert "[/INST] A technique.</s></s><s>[INST] Why" in llama2
    mistral = render(chat_formatter("mistral-instruct", None), MESSAGES, "<s>", "</s>").text
    assert mistral.startswith("<s>[INST] What is") and mistral.endswith(
        "Why does self-consistency work? [/INST]"
    )


def test_chatml():
    prompt = render(chat_formatter("chatml", None), MESSAGES[:1], "<s>", "</s>")
    assert (
        prompt.text
        == "<|im_start|>user\nWhat is self-consistency decoding?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.stop == ["<|im_end|>"]


# A Mistral-style template as HF tokenizer_config files carry it.
MISTRAL_JINJA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_file_template_is_preferred_and_rendered():
    fmt = chat_formatter(None, MISTRAL_JINJA)
    text = render(fmt, [{"role": "user", "content": "hi"}], "<s>", "</s>").text
    assert text == "<s>[INST] hi [/INST]"


def test_template_errors_are_reported():
    fmt = chat_formatter(None, MISTRAL_JINJA)
    with pytest.raises(ChatTemplateError, match="must alternate"):
        render(fmt, [{"role": "assistant", "content": "x"}], "<s>", "</s>")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        JinjaTemplate("{% for %}")


def test_sandbox_blocks_python_internals():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        render(JinjaTemplate(evil), [{"role": "user", "content": "x"}], "", "")


def test_bad_messages_and_format():
    with pytest.raises(ChatTemplateError, match="no messages"):
        render(chat_formatter("chatml", None), [], "", "")
    with pytest.raises(ChatTemplateError, match="unknown role"):
        render(chat_formatter("chatml", None), [{"role": "wizard", "content": ""}], "", "")
    with pytest.raises(ChatTemplateError, match="unknown chat_format"):
        chat_formatter("nope", None)
