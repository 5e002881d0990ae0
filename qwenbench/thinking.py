"""Qwen3's thinking in streamed text: `<think>...</think>` arrives in pieces, split anywhere by the tokenizer's
boundaries, and must be told apart from the answer a user sees (chat shows it apart; bench-serve times the
first visible token after it)."""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """Feed streamed text; get back (kind, text) pieces, kind "think" or "text", tags removed. A tag cut across
    two pieces is held back until it is whole."""

    def __init__(self) -> None:
        self.thinking = False
        self._pending = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        rest = self._pending + text
        self._pending = ""
        pieces: list[tuple[str, str]] = []
        while rest:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            at = rest.find(tag)
            if at < 0:
                keep = _partial_tag_suffix(rest, tag)
                body, self._pending = rest[:len(rest) - keep], rest[len(rest) - keep:]
                if body:
                    pieces.append(("think" if self.thinking else "text", body))
                break
            if at:
                pieces.append(("think" if self.thinking else "text", rest[:at]))
            self.thinking = not self.thinking
            rest = rest[at + len(tag):]
        return pieces

    def flush(self) -> list[tuple[str, str]]:
        """What is held back at the end of a reply (a '<' that began no tag)."""
        pending, self._pending = self._pending, ""
        return [("think" if self.thinking else "text", pending)] if pending else []


def _partial_tag_suffix(text: str, tag: str) -> int:
    """How many trailing characters of text could begin `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0
