"""What a split across llama.cpp RPC workers costs on the wire, per decoded token or prompt batch. Pure: no I/O.

How ggml-rpc moves data (ggml-rpc.cpp in the vendored llama.cpp, protocol 3): SET_TENSOR and GRAPH_COMPUTE get
no reply, so an upload and the compute after it travel without waiting; GET_TENSOR does, so every time the work
leaves a worker the client waits one round trip plus the bytes. ggml-rpc has no device-to-device copy
(cpy_tensor_async is NULL): activations from one worker to the next go to the client and back out. And the
client reads the logits back from whichever device holds the output layer. So a layer order that visits the
workers in k segments costs k round trips per ubatch; the bytes are the activations at each boundary (n_embd
floats per token), the graph inputs each worker needs (positions, the attention mask over the cache), and the
logits of the tokens that want them (n_vocab floats each).

MoE layers whose experts stay in host RAM (--n-cpu-moe) while the rest of the layer is on a worker cross the
link twice per layer: the routed activations to the host and the experts' output back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fit import ModelShape

HOST = -1
FLOAT_BYTES = 4  # activations and logits travel as f32
MASK_BYTES = 2  # the attention mask is f16 with flash attention (f32 without: a small share either way)


@dataclass(frozen=True)
class Link:
    """The link to one offload device: its endpoint's measured round trip and throughput; a local GPU has none."""

    address: str
    rtt_s: float
    bytes_per_s: float


@dataclass(frozen=True)
class NetworkCost:
    """Seconds on the wire for one ubatch, and what they are made of."""

    seconds: float
    round_trips: int
    bytes: int

    def __add__(self, other: NetworkCost) -> NetworkCost:
        return NetworkCost(self.seconds + other.seconds, self.round_trips + other.round_trips,
                           self.bytes + other.bytes)


NO_COST = NetworkCost(0.0, 0, 0)


def network_cost(shape: ModelShape, devices: tuple[int, ...], links: tuple[Link | None, ...], *, n_tokens: int,
                 n_outputs: int, n_kv: int, cpu_moe_layers: int = 0) -> NetworkCost:
    """The wire time of one ubatch of n_tokens (n_outputs of them with logits) attending over n_kv cells.

    devices: the device of each layer and, last, of the output layer (fit.layer_devices; HOST for the host);
    links: per device index, its link (None: no network between it and the host, a local GPU)."""
    activation_bytes = shape.n_embd * FLOAT_BYTES * n_tokens

    def link(device: int) -> Link | None:
        return links[device] if device != HOST and device < len(links) else None

    def leave(device: int, n_bytes: int) -> NetworkCost:
        """The client fetches n_bytes from a device: a round trip and the bytes (nothing for the host, a GPU)."""
        via = link(device)
        return NetworkCost(via.rtt_s + n_bytes / via.bytes_per_s, 1, n_bytes) if via else NO_COST

    def enter(device: int, n_bytes: int) -> NetworkCost:
        """The client uploads n_bytes to a device: the bytes, no wait."""
        via = link(device)
        return NetworkCost(n_bytes / via.bytes_per_s, 0, n_bytes) if via else NO_COST

    total = NO_COST
    used = {d for d in devices if link(d) is not None}
    inputs = n_tokens * FLOAT_BYTES + n_kv * n_tokens * MASK_BYTES  # positions and the mask, to each worker
    for device in used:
        total += enter(device, inputs)
    previous = HOST  # the input embeddings are looked up on the host
    n_layer = len(devices) - 1
    for layer, device in enumerate(devices):
        if device != previous:
            total += leave(previous, activation_bytes) + enter(device, activation_bytes)
        if layer < n_layer and layer < cpu_moe_layers and shape.is_moe and link(device) is not None:
            # the experts run on the host: the routed activations (and the chosen experts' ids and weights) out,
            # their output back in
            routed = activation_bytes + 2 * FLOAT_BYTES * shape.n_expert_used * n_tokens
            total += leave(device, routed) + enter(device, activation_bytes)
        previous = device
    return total + leave(previous, shape.n_vocab * FLOAT_BYTES * n_outputs)
