"""The reference's next-token distributions on disk, computed once per model file, corpus, context and top-k.

One folder per key under the cache (quality/<digest>/): key.json (what it is the reference of, written by the
parent), manifest.json (the vocabulary size, the corpus's token count), tokens.npy (the corpus as the reference
tokenized it: every test model decodes these very tokens, as llama-perplexity's --kl-divergence reads them from its
base file), and one chunk-NNNNN.npz per finished chunk (the compact reference of its scored positions,
qwenbench.quality.CompactReference). A chunk is written aside and renamed, so an interrupted reference keeps every
chunk it finished and the next run goes on from there; asking for more chunks extends the folder, fewer reads a
prefix of it. Any change to the key (another file, an edited corpus, another context, top-k or llama.cpp) is
another folder: never a stale reference.

With top-k 512 a scored token costs about 4 KB (Qwen's 151,936-token vocabulary in full, as float32 and int32, 1.2 MB).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .paths import cache_dir, read_json, write_json
from .quality import CompactReference

FORMAT = 1  # the folder's layout: a change makes every older folder another key


@dataclass(frozen=True)
class ReferenceKey:
    """What a reference's distributions depend on."""

    model_sha256: str
    corpus_sha256: str
    n_ctx: int
    top_k: int
    llama_cpp: str  # llama-cpp-python's version: another llama.cpp computes other logits

    @property
    def digest(self) -> str:
        text = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def reference_folder(key: ReferenceKey) -> Path:
    return cache_dir() / "quality" / key.digest


class ReferenceCache:
    """One reference's folder: written by the child that computes it, read by the children that score against it
    and by the parent that decides whether to compute it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        """{} when the reference has not been tokenized yet."""
        return read_json(self.manifest_path)

    def describe(self, key: ReferenceKey, what: dict[str, Any]) -> None:
        """key.json: the key and what the parent knows of the reference (its file, the corpus's name)."""
        if not write_json(self.folder / "key.json", {**asdict(key), **what}):
            raise OSError(f"cannot write {self.folder / 'key.json'}")

    def start(self, tokens: list[int], n_vocab: int, n_ctx: int) -> None:
        """The corpus's tokens and the manifest, before any chunk: a folder with a manifest has its tokens."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _save(self.folder / "tokens.npy", lambda handle: np.save(handle, np.asarray(tokens, dtype=np.int32)))
        if not write_json(self.manifest_path, {"n_vocab": n_vocab, "n_tokens": len(tokens), "n_ctx": n_ctx,
                                               "chunks_available": len(tokens) // n_ctx}):
            raise OSError(f"cannot write {self.manifest_path}")

    def tokens(self) -> np.ndarray:
        return np.load(self.folder / "tokens.npy")

    def _chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:05d}.npz"

    def write_chunk(self, index: int, reference: CompactReference) -> None:
        _save(self._chunk_path(index), lambda handle: np.savez(
            handle, top_ids=reference.top_ids, top_logprobs=reference.top_logprobs, tail_mass=reference.tail_mass,
            target_logprob=reference.target_logprob))

    def read_chunk(self, index: int) -> CompactReference:
        with np.load(self._chunk_path(index)) as data:
            return CompactReference(data["top_ids"], data["top_logprobs"], data["tail_mass"], data["target_logprob"])

    def chunks_done(self) -> int:
        """How many chunks from the first are on disk (a reference is computed in order)."""
        if not self.manifest():
            return 0
        done = 0
        while self._chunk_path(done).exists():
            done += 1
        return done


def _save(path: Path, write: Any) -> None:
    """Write through a file beside `path`, then rename: a reader never sees half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        write(handle)
    os.replace(temporary, path)
