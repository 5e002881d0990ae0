"""Which files of a Hub repository hold a given quant: pure matching over the repo's file list.

Layouts differ (models.md): exact-case names in the root (Qwen, lmstudio-community), a `Qwen_`
prefix (bartowski), per-quant folders and split files `-00001-of-00005.gguf` (big models), and
"dynamic" mixes such as unsloth's `UD-Q4_K_XL` that must not be taken for the plain quant.
"""

from __future__ import annotations

import re
from collections import defaultdict

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_QUANT_TOKEN = re.compile(r"(?:^|[-_.])((?:UD-)?(?:I?Q\d_[A-Z0-9_]+|Q\d_\d|BF16|FP?16|FP?32|MXFP4(?:_MOE)?))$",
                          re.IGNORECASE)
# Qwen's own repos name the full-precision files `-fp16` (`qwen2.5-7b-instruct-fp16-00001-of-00004.gguf`): the
# F16 preset, as `-fp32` is F32
_ALIASES = {"FP16": "F16", "FP32": "F32"}


def _stem(path: str) -> tuple[str, int, int]:
    """(base name without split suffix and .gguf, part number, part count)."""
    name = path.rsplit("/", 1)[-1]
    split = _SPLIT.match(name)
    if split:
        return split.group("stem"), int(split.group("part")), int(split.group("count"))
    return name[: -len(".gguf")], 1, 1


def split_sibling(name: str, part: int) -> str | None:
    """The file name of another part of a split GGUF (llama.cpp's `-00001-of-00003.gguf`); None if not split."""
    split = _SPLIT.match(name)
    if not split:
        return None
    return f"{split.group('stem')}-{part:05d}-of-{split.group('count')}.gguf"


def quant_of(path: str) -> str | None:
    """The quant a GGUF path names (Q4_K_M, UD-Q4_K_XL, BF16 ...), upper-cased; None for other files."""
    if not path.lower().endswith(".gguf") or "mmproj" in path.lower():
        return None
    stem, _, _ = _stem(path)
    match = _QUANT_TOKEN.search(stem)
    if match:
        return _canonical(match.group(1))
    folder = path.rsplit("/", 2)[-2] if "/" in path else ""
    return _canonical(folder) if _QUANT_TOKEN.search("-" + folder) else None


def _canonical(token: str) -> str:
    upper = token.upper()
    return _ALIASES.get(upper, upper)


def files_for_quant(paths: list[str], quant: str) -> list[str] | None:
    """The file(s) of one quant, split parts in order (llama.cpp loads the first); None if absent or incomplete."""
    wanted = quant.upper()
    groups: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    for path in paths:
        if quant_of(path) != wanted:
            continue
        stem, part, count = _stem(path)
        folder = path.rsplit("/", 1)[0] if "/" in path else ""
        groups[(f"{folder}/{stem}", count)].append((part, path))
    complete = [sorted(parts) for (_, count), parts in groups.items()
                if sorted(p for p, _ in parts) == list(range(1, count + 1))]
    if not complete:
        return None
    # a single file beats a split copy of the same quant; then the shortest path (root before folders)
    best = min(complete, key=lambda parts: (len(parts), len(parts[0][1])))
    return [path for _, path in best]


def available_quants(paths: list[str]) -> list[str]:
    return sorted({q for q in (quant_of(p) for p in paths) if q})
