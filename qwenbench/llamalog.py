"""What llama.cpp says about its memory when it loads a model and makes a context.

Its log names every buffer it allocates (`CPU_REPACK model buffer size = 204.75 MiB`,
`CUDA0 KV buffer size = ...`): the measured side of the memory model, kept per machine to
calibrate what formulas cannot know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size\s*=\s*([\d.]+) MiB")
MIB = 1 << 20


@dataclass(frozen=True)
class LlamaBuffers:
    """Bytes per buffer name; model buffers of the load, the largest KV/compute/output of any context."""

    model: dict[str, int] = field(default_factory=dict)
    kv: dict[str, int] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"model": self.model, "kv": self.kv, "compute": self.compute, "output": self.output}


def parse_buffers(log_text: str) -> LlamaBuffers:
    buffers = LlamaBuffers()
    for name, kind, size in _BUFFER.findall(log_text):
        target = {"model": buffers.model, "KV": buffers.kv, "compute": buffers.compute,
                  "output": buffers.output}[kind]
        value = round(float(size) * MIB)
        # one model load; contexts come and go one at a time, so their peak is their largest
        target[name] = target.get(name, 0) + value if kind == "model" else max(target.get(name, 0), value)
    return buffers


def rpc_devices_used(buffers: LlamaBuffers) -> set[str]:
    """The RPC endpoints llama.cpp put model weights on: its RPC buffers are named `RPC<i>[HOST:PORT]`."""
    return {name[name.index("[") + 1:-1] for name in buffers.model if name.startswith("RPC") and "[" in name}


def workers_without_weights(endpoints: tuple[str, ...], buffers: LlamaBuffers) -> list[str]:
    """The RPC workers among `endpoints` that llama.cpp's log shows no model weights on."""
    used = rpc_devices_used(buffers)
    return [endpoint for endpoint in endpoints if endpoint not in used]
