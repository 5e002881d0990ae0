"""A synthetic byte-level BPE tokenizer with Qwen's vocabulary size and special-token ids.

llama.cpp refuses a gpt2-style vocabulary without merges and needs every byte reachable, so the
vocabulary holds the 256 byte tokens, whole-word merges learned from a small built-in text (so a
chat prompt tokenizes to a realistic number of tokens), filler tokens up to Qwen's special-token
ids, and the special tokens themselves at their real ids.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

from gguf import TokenType

# Qwen2/Qwen3 special tokens and their ids (tokenizer_config.json added_tokens_decoder).
FIRST_SPECIAL_ID = 151643
SPECIAL_TOKENS: tuple[tuple[str, TokenType], ...] = (
    ("<|endoftext|>", TokenType.CONTROL),
    ("<|im_start|>", TokenType.CONTROL),
    ("<|im_end|>", TokenType.CONTROL),
    ("<|object_ref_start|>", TokenType.CONTROL),
    ("<|object_ref_end|>", TokenType.CONTROL),
    ("<|box_start|>", TokenType.CONTROL),
    ("<|box_end|>", TokenType.CONTROL),
    ("<|quad_start|>", TokenType.CONTROL),
    ("<|quad_end|>", TokenType.CONTROL),
    ("<|vision_start|>", TokenType.CONTROL),
    ("<|vision_end|>", TokenType.CONTROL),
    ("<|vision_pad|>", TokenType.CONTROL),
    ("<|image_pad|>", TokenType.CONTROL),
    ("<|video_pad|>", TokenType.CONTROL),
    ("<tool_call>", TokenType.USER_DEFINED),
    ("</tool_call>", TokenType.USER_DEFINED),
    ("<|fim_prefix|>", TokenType.USER_DEFINED),
    ("<|fim_middle|>", TokenType.USER_DEFINED),
    ("<|fim_suffix|>", TokenType.USER_DEFINED),
    ("<|fim_pad|>", TokenType.USER_DEFINED),
    ("<|repo_name|>", TokenType.USER_DEFINED),
    ("<|file_sep|>", TokenType.USER_DEFINED),
    ("<tool_response>", TokenType.USER_DEFINED),
    ("</tool_response>", TokenType.USER_DEFINED),
    ("<think>", TokenType.USER_DEFINED),
    ("</think>", TokenType.USER_DEFINED),
)
BOS_ID = FIRST_SPECIAL_ID  # <|endoftext|>, also the padding token; Qwen adds no BOS
EOS_ID = FIRST_SPECIAL_ID + 2  # <|im_end|>
EOS_OFFSET = EOS_ID - BOS_ID  # the same order in every Qwen vocabulary

# A Qwen3-style ChatML template with the thinking switch (enable_thinking=false adds an empty think block).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

# The user message of the TTFT test; the vocabulary learns its words so it tokenizes realistically.
TTFT_PROMPT = (
    "I am choosing a local language model for my laptop. It has a recent eight core processor, "
    "thirty two gigabytes of shared memory and an integrated graphics chip. I want to run a coding "
    "assistant and summarise long documents without sending anything to the cloud. Please compare a "
    "dense four billion parameter model with a mixture of experts model that has thirty billion "
    "parameters but only three billion active ones. Explain which one will generate text faster, "
    "which one needs more memory, how quantization changes both answers, and what you would pick "
    "for a machine like mine. Keep the answer short and practical, with numbers where you can."
)
_EXTRA_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello, how are you today? Thank you very much. "
    "What is the capital of France? Paris is the capital and largest city of France. "
    "def main():\n    print('hello world')\n    return 0\n"
)
_PRETOKENIZE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def _encode_piece(piece: str) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in piece.encode("utf-8"))


def _learn_merges(pieces: list[str]) -> list[str]:
    """Byte-pair merges learned until every piece is one token, so each seen word encodes as one."""
    words: dict[tuple[str, ...], int] = {}
    for piece in pieces:
        key = tuple(_encode_piece(piece))
        words[key] = words.get(key, 0) + 1
    merges: list[str] = []
    while True:
        pairs: dict[tuple[str, str], int] = {}
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(f"{best[0]} {best[1]}")
        joined = best[0] + best[1]
        merged: dict[tuple[str, ...], int] = {}
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        words = merged


@dataclass(frozen=True)
class SyntheticVocab:
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]


@lru_cache(maxsize=4)
def build_vocab(n_vocab: int, first_special_id: int = FIRST_SPECIAL_ID) -> SyntheticVocab:
    """A vocabulary of exactly n_vocab tokens with Qwen's special tokens at their real ids: from 151643 for
    Qwen2/Qwen3/Qwen3-Next, from 248044 for Qwen3.5's 248,320-token vocabulary (the same tokens, in the same order:
    <|endoftext|> 248044, <|im_start|> 248045, <|im_end|> 248046, ... <|vision_start|> 248053)."""
    n_regular = first_special_id
    if n_vocab < n_regular + len(SPECIAL_TOKENS):
        raise ValueError(f"n_vocab {n_vocab} is smaller than Qwen's special-token range")
    tokens = [_byte_to_unicode()[b] for b in range(256)]
    merges = _learn_merges(_PRETOKENIZE.findall(TTFT_PROMPT + " " + _EXTRA_TEXT))
    for merge in merges:
        joined = merge.replace(" ", "")
        if joined not in tokens:  # two merge paths can spell the same token
            tokens.append(joined)
    types = [int(TokenType.NORMAL)] * len(tokens)
    filler = n_regular - len(tokens)
    tokens.extend(f"[SYNTH{i}]" for i in range(len(tokens), len(tokens) + filler))
    types.extend([int(TokenType.NORMAL)] * filler)
    for text, token_type in SPECIAL_TOKENS:
        tokens.append(text)
        types.append(int(token_type))
    pad = n_vocab - len(tokens)
    tokens.extend(f"[PAD{i}]" for i in range(len(tokens), len(tokens) + pad))
    types.extend([int(TokenType.UNUSED)] * pad)
    return SyntheticVocab(tuple(tokens), tuple(types), tuple(merges))
