"""What llama.cpp says about its memory when it loads a model and makes a context.

Its log names every buffer it allocates (`CPU_REPACK model buffer size = 204.75 MiB`,
`CUDA0 KV buffer size = ...`): the measured side of the memory model, kept per machine to
calibrate what formulas cannot know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BUFFER = re.compile(r"(\S+)\s+(model|KV|RS|compute|output) buffer size\s*=\s*([\d.]+) MiB")
_NEW_CONTEXT = "constructing llama_context"
MIB = 1 << 20


@dataclass(frozen=True)
class LlamaBuffers:
    """Bytes per buffer name; model buffers of the load, the largest KV/RS/compute/output of any context (RS: the
    recurrent states of a hybrid's linear-attention layers)."""

    model: dict[str, int] = field(default_factory=dict)
    kv: dict[str, int] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)
    rs: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"model": self.model, "kv": self.kv, "compute": self.compute, "output": self.output, "rs": self.rs}


def parse_buffers(log_text: str) -> LlamaBuffers:
    buffers = LlamaBuffers()
    # a context's memory may be several caches on one device (sliding-window and full KV caches, a hybrid's KV
    # cache and recurrent states): summed within the context; a context starts at its constructor's line, or at
    # memory allocated after the previous one reserved its compute buffer
    context: dict[str, dict[str, int]] = {"KV": {}, "RS": {}}
    reserved = False

    def close() -> None:
        for kind, target in (("KV", buffers.kv), ("RS", buffers.rs)):
            for name, value in context[kind].items():
                target[name] = max(target.get(name, 0), value)
            context[kind] = {}

    for line in log_text.splitlines():
        if _NEW_CONTEXT in line:
            close()
            reserved = False
            continue
        for name, kind, size in _BUFFER.findall(line):
            value = round(float(size) * MIB)
            if kind == "model":  # one model load
                buffers.model[name] = buffers.model.get(name, 0) + value
            elif kind in context:
                if reserved:
                    close()
                    reserved = False
                context[kind][name] = context[kind].get(name, 0) + value
            else:  # contexts come and go one at a time, so their peak is their largest
                reserved = reserved or kind == "compute"
                target = buffers.compute if kind == "compute" else buffers.output
                target[name] = max(target.get(name, 0), value)
    close()
    return buffers


def rpc_devices_used(buffers: LlamaBuffers) -> set[str]:
    """The RPC endpoints llama.cpp put model weights on: its RPC buffers are named `RPC<i>[HOST:PORT]`."""
    return {name[name.index("[") + 1:-1] for name in buffers.model if name.startswith("RPC") and "[" in name}


def workers_without_weights(endpoints: tuple[str, ...], buffers: LlamaBuffers) -> list[str]:
    """The RPC workers among `endpoints` that llama.cpp's log shows no model weights on."""
    used = rpc_devices_used(buffers)
    return [endpoint for endpoint in endpoints if endpoint not in used]
