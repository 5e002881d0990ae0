"""chat driven through a pseudo-terminal on a tiny synthetic model, as a user types; and the session it drives."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import subprocess
import termios
import time
from pathlib import Path

import pytest

from qwenbench.chat import ChatSession, ChatSettings
from qwenbench.thinking import ThinkSplitter

from .conftest import QWENBENCH, default_signals


def _own_terminal() -> None:
    """In the child: a session of its own with the pty as its controlling terminal, so ^C is SIGINT (with its
    default handler, whatever the shell that started the tests passed down)."""
    default_signals()
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A program on a pty: type into it, wait for what it prints."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
                                        preexec_fn=_own_terminal)
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.seen)
            if match:
                self.seen = self.seen[match.end():]
                return match.group(0)
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the program ended
                    break
        raise AssertionError(f"never saw {pattern!r}; the screen ends with: {self.seen[-500:]!r}")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        code = self.process.wait(timeout=60)
        os.close(self.master)
        return code


@pytest.fixture
def chat(tiny_dense: Path) -> Terminal:
    return Terminal([QWENBENCH, "chat", "--gguf", str(tiny_dense), "--max-tokens", "8", "--ctx", "2048"])


def test_a_conversation_in_the_terminal(chat: Terminal) -> None:
    chat.expect(r"synthetic weights")
    chat.expect(r">>> ")
    chat.type("hello\n")
    stats = chat.expect(r"(\d+) tokens, TTFT \d+ ms, [\d.]+ t/s \((\d+) prompt tokens\)")
    assert stats.startswith("8 tokens")  # the reply streamed, up to --max-tokens
    chat.expect(r">>> ")
    chat.type("/no_think\n")
    chat.expect(r"thinking off")
    chat.type('"""\nline one\nline two\n"""\n')
    second = chat.expect(r"\d+ tokens, TTFT \d+ ms, [\d.]+ t/s \((\d+) prompt tokens\)")
    # the history came along: the second prompt holds the first exchange too
    assert int(re.search(r"\((\d+) prompt", second).group(1)) > int(re.search(r"\((\d+) prompt", stats).group(1))
    chat.expect(r">>> ")
    chat.type("\x04")  # Ctrl-D
    assert chat.close() == 0


def test_ctrl_c_stops_a_reply_then_leaves(tiny_dense: Path) -> None:
    chat = Terminal([QWENBENCH, "chat", "--gguf", str(tiny_dense), "--max-tokens", "1900", "--ctx", "2048"])
    chat.expect(r">>> ")
    chat.type("tell me everything\n")
    chat.expect(r"SYNTH")  # streaming has begun
    chat.type("\x03")  # Ctrl-C: stop the reply, keep the session
    chat.expect(r"\[stopped\]")
    chat.expect(r"stopped\)")
    chat.expect(r">>> ")
    chat.type("\x03")  # Ctrl-C at the prompt: leave cleanly
    assert chat.close() == 0
    assert "Traceback" not in chat.seen


def test_session_template_thinking_switch_and_history(tiny_dense: Path) -> None:
    session = ChatSession(tiny_dense, ChatSettings(n_ctx=1024, n_threads=2, max_tokens=4), think=True)
    try:
        assert "<think>" not in session.render("hi").prompt
        assert session.command("/no_think") == "thinking off" and not session.think
        prompt = session.render("hi").prompt
        assert prompt.startswith("<|im_start|>user\nhi<|im_end|>") and "<think>\n\n</think>" in prompt
        pieces = list(session.reply("hi"))
        assert pieces and all(kind in ("think", "text") for kind, _ in pieces)
        assert session.last_stats is not None and session.last_stats.tokens == 4 and not session.last_stats.stopped
        assert [m["role"] for m in session.history] == ["user", "assistant"]
        assert session.command("/clear") == "history cleared" and session.history == []
        assert session.command("what /think means") is None
    finally:
        session.close()


def test_thinking_split_across_pieces() -> None:
    splitter = ThinkSplitter()
    pieces = [p for text in ("<th", "ink>plan", "ning</thi", "nk>\n\nAns", "wer <") for p in splitter.feed(text)]
    pieces += splitter.flush()
    assert "".join(t for k, t in pieces if k == "think") == "planning"
    assert "".join(t for k, t in pieces if k == "text") == "\n\nAnswer <"
