"""Interactive sessions on the terminal, as llama.cpp's old ``main`` ran them.

- ``ferrollm chat``, ``ferrollm run -ins`` (or ``-cnv``, ``-cml``): a chat. Each line the user
  types is a user message rendered with the model's chat template; ``-p`` is the system
  message. llama.cpp's ``-ins`` wrapped lines in Alpaca's ``### Instruction:`` markers whatever
  the model; its successor ``-cnv``, like this, uses the file's own template.
- ``ferrollm run -i``: a text continued in turns. The model writes until a reverse prompt
  (``-r``) appears, its end-of-text token, or ``-n`` tokens; then the user's line (with a
  newline, between ``--in-prefix`` and ``--in-suffix``) is appended and the model goes on.
  ``--interactive-first`` waits for the user before the model writes.

In both, a line ending in a backslash continues on the next line; Ctrl-C while the model
writes gives the turn to the user at once (llama.cpp's interjection), and at the prompt, like
end of input (Ctrl-D) or ``/exit``, ends the session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ferrollm.llama import Llama

_EXIT = ("/exit", "/quit")


def read_user(prompt: str) -> str | None:
    """One input from the user: lines joined while they end in a backslash; None at the end."""
    lines = []
    while True:
        try:
            line = input(prompt if not lines else "")
        except EOFError:
            print()
            return "\n".join(lines) if lines else None
        if not line.endswith("\\"):
            return "\n".join([*lines, line])
        lines.append(line[:-1])


def chat(llm: Llama, system: str | None, sampling: dict[str, Any]) -> int:
    messages = [{"role": "system", "content": system}] if system else []
    print(
        "ferrollm: chat: type a message (end a line with \\ to go on; Ctrl-C stops an answer); Ctrl-D or /exit "
        "quits", file=sys.stderr,
    )  # fmt: skip
    while (line := read_user("> ")) is not None and line.strip() not in _EXIT:
        messages.append({"role": "user", "content": line})
        answer = ""
        stream = llm.create_chat_completion(messages, stream=True, **sampling)
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice["delta"].get("content", "")
                answer += piece
                print(piece, end="\n" if choice["finish_reason"] else "", flush=True)
        except KeyboardInterrupt:
            _interjected(stream)
        messages.append({"role": "assistant", "content": answer.strip()})
    return 0


def continuation(
    llm: Llama,
    prompt: str,
    reverse_prompts: Sequence[str],
    sampling: dict[str, Any],
    first: bool = False,
    in_prefix: str = "",
    in_suffix: str = "",
) -> int:
    print("ferrollm: interactive: the model writes, then you (Ctrl-C: your turn now; end a line with \\ to go on); "
          "Ctrl-D quits", file=sys.stderr)  # fmt: skip
    text = prompt
    print(prompt, end="", flush=True)
    if not first:
        text += _write(llm, text, reverse_prompts, sampling)
    while True:
        print(in_prefix, end="", flush=True)
        line = read_user("")
        if line is None or line.strip() in _EXIT:
            return 0
        print(in_suffix, end="", flush=True)
        text += f"{in_prefix}{line}\n{in_suffix}"
        text += _write(llm, text, reverse_prompts, sampling)


def _write(llm: Llama, text: str, reverse_prompts: Sequence[str], sampling: dict[str, Any]) -> str:
    """The model's turn: its text, printed as it comes, up to and including a reverse prompt.
    At the end of text, the first reverse prompt is added (as llama.cpp does), so that the
    user answers in the expected place."""
    out = ""
    stream = llm.create_completion(text, stream=True, **sampling)
    try:
        for chunk in stream:
            choice = chunk["choices"][0]
            out += choice["text"]
            print(choice["text"], end="", flush=True)
            tail = out[-(len(choice["text"]) + max(map(len, reverse_prompts), default=0)) :]
            if any(r in tail for r in reverse_prompts):
                stream.close()
                return out
            if choice["finish_reason"] == "stop" and reverse_prompts:  # end of text
                print("\n" + reverse_prompts[0], end="", flush=True)
                return out + "\n" + reverse_prompts[0]
    except KeyboardInterrupt:
        _interjected(stream)
        return out
    print(flush=True)  # the user's line starts on its own line; the text goes on where it stopped
    return out


def _interjected(stream: Iterator[dict]) -> None:
    """Ctrl-C while the model writes hands the turn to the user (llama.cpp's interjection)
    instead of ending the session; the model keeps what it wrote. Ctrl-C at the prompt ends."""
    stream.close()
    print(flush=True)
