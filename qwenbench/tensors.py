"""Tensor tables: every tensor of a GGUF with its ggml type and shape, and the bytes that follow."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_LAYER = re.compile(r"^blk\.(\d+)\.")
_EXPERTS = re.compile(r"^blk\.\d+\.ffn_(up|down|gate|gate_up)_(ch|)exps\.")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor. `shape` is in ggml order (ne[0] = row length, the contiguous dimension)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.ggml_type).name

    @property
    def n_bytes(self) -> int:
        block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        if self.shape[0] % block_elems:
            raise ValueError(f"{self.name}: row of {self.shape[0]} is not a multiple of the "
                             f"{self.type_name} block ({block_elems})")
        return self.n_elements // block_elems * block_bytes

    @property
    def layer(self) -> int | None:
        match = _LAYER.match(self.name)
        return int(match.group(1)) if match else None

    @property
    def is_expert(self) -> bool:
        return _EXPERTS.match(self.name) is not None


@dataclass(frozen=True)
class TensorTable:
    """A model file's tensors in file order."""

    tensors: tuple[TensorInfo, ...]

    @property
    def n_bytes(self) -> int:
        """Tensor bytes, what llama.cpp calls the model size (header and padding excluded)."""
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def type_histogram(self) -> dict[str, int]:
        """How many tensors of each ggml type: a quick fingerprint of a quant mix."""
        counts: dict[str, int] = {}
        for tensor in self.tensors:
            counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
        return dict(sorted(counts.items()))

    def n_params_active(self, n_expert: int, n_expert_used: int) -> int:
        """Parameters one token touches: all dense ones plus n_used/n_expert of the experts'."""
        if n_expert <= 0:
            return self.n_params
        expert = sum(t.n_elements for t in self.tensors if t.is_expert)
        return self.n_params - expert + expert * n_expert_used // n_expert
