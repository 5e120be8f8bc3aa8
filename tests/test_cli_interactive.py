"""``ferrollm run -i`` / ``-ins`` and ``ferrollm chat`` on the embedded model, fed through stdin
as a user would type; each turn must equal the same request made through the Python API."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from ferrollm import Llama, demo_model_path

GREEDY = ["--temp", "0", "-n", "12", "--no-progress"]


def _cli(*args: str, stdin: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "ferrollm", "run", *args, *GREEDY],
        capture_output=True, text=True, input=stdin, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=512, verbose=False)  # the CLI's context for this model


def _complete(llm: Llama, text: str) -> str:
    return llm.create_completion(text, max_tokens=12, temperature=0)["choices"][0]["text"]


def _upto(text: str, reverse_prompt: str) -> str:
    assert reverse_prompt in text  # the greedy text this test relies on
    return text[: text.index(reverse_prompt) + len(reverse_prompt)]


def test_interactive_hands_over_at_the_reverse_prompt_and_continues_the_text(llm):
    prompt = "def add(a, b):"
    first = _upto(_complete(llm, prompt), "self.")
    second = _upto(_complete(llm, prompt + first + "x = 1\n"), "self.")
    run = _cli("-i", "-p", prompt, "-r", "self.", stdin="x = 1\n")
    # A pipe does not echo the user's line: the model's two turns follow each other, and the
    # end of input ends the line.
    assert run.stdout == prompt + first + second + "\n"


def test_interactive_first_waits_for_the_user(llm):
    run = _cli("--interactive-first", "--in-prefix", "# ", "--in-suffix", "def", stdin="sort a list\n")
    assert run.stdout == "# def" + _complete(llm, "# sort a list\ndef") + "\n# \n"
    assert run.stderr.count("generated") == 1


def test_instruct_mode_is_a_chat_with_the_prompt_as_system_message(llm):
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "sort a list"},
    ]
    answer = llm.create_chat_completion(messages, max_tokens=12, temperature=0)["choices"][0]["message"]
    run = _cli("-i", "-ins", "-p", "You write Python.", stdin="sort a list\n/exit\n")
    assert answer["content"] and answer["content"] in run.stdout
    assert run.stdout.startswith("> ") and run.stderr.count("generated") == 1


def test_a_line_ending_in_a_backslash_goes_on(llm):
    answer = llm.create_chat_completion(
        [{"role": "user", "content": "one\ntwo"}], max_tokens=12, temperature=0
    )
    run = _cli("-cnv", stdin="one\\\ntwo\n")
    assert answer["choices"][0]["message"]["content"] in run.stdout
    assert run.stderr.count("generated") == 1


def test_ctrl_c_while_the_model_writes_gives_the_user_the_turn():
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferrollm", "run", "-i", "-p", "import os", "-n", "-1", "--no-progress"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = proc.stdout.read(len("import os") + 1)  # the model has begun: it writes up to 512 tokens
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate("/exit\n", timeout=120)
    assert first.startswith("import os") and proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_run_without_a_prompt_or_a_session_says_what_it_needs():
    result = subprocess.run([sys.executable, "-m", "ferrollm", "run", "-n", "1"], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 1
    assert "run needs -p PROMPT, or -i (interactive) or -ins (chat)" in result.stderr
