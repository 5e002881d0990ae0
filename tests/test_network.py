"""The wire cost of RPC splits: round trips and bytes per ubatch, from the layer order alone."""

import pytest

from qwenbench.fit import ModelShape, RunConfig, layer_devices
from qwenbench.network import HOST, Link, network_cost

SHAPE = ModelShape(n_layer=4, n_embd=1024, n_head=16, n_head_kv=8, head_dim_k=128, head_dim_v=128, n_vocab=1000,
                   n_ff=3072)
MOE = ModelShape(n_layer=4, n_embd=1024, n_head=16, n_head_kv=8, head_dim_k=128, head_dim_v=128, n_vocab=1000,
                 n_ff=3072, n_expert=8, n_expert_used=2, n_ff_exp=512)
LAN = Link("10.0.0.2:50052", rtt_s=0.5e-3, bytes_per_s=100e6)
OTHER = Link("10.0.0.3:50052", rtt_s=1.0e-3, bytes_per_s=50e6)
ACT = 1024 * 4  # one token's activations
INPUTS = 4 + 256 * 2  # its position and its row of the mask over 256 cells
LOGITS = 1000 * 4


def test_host_only_and_local_gpus_cost_nothing() -> None:
    cost = network_cost(SHAPE, (HOST,) * 5, (LAN,), n_tokens=1, n_outputs=1, n_kv=256)
    assert (cost.seconds, cost.round_trips, cost.bytes) == (0.0, 0, 0)
    on_gpu = network_cost(SHAPE, (0,) * 5, (None,), n_tokens=1, n_outputs=1, n_kv=256)
    assert (on_gpu.seconds, on_gpu.round_trips) == (0.0, 0)


def test_all_layers_on_one_worker_wait_once_for_the_logits() -> None:
    cost = network_cost(SHAPE, (0,) * 5, (LAN,), n_tokens=1, n_outputs=1, n_kv=256)
    assert cost.round_trips == 1
    assert cost.bytes == INPUTS + ACT + LOGITS
    assert cost.seconds == pytest.approx(LAN.rtt_s + cost.bytes / LAN.bytes_per_s)


def test_a_split_with_the_output_on_the_host_fetches_activations_not_logits() -> None:
    cost = network_cost(SHAPE, (HOST, HOST, 0, 0, HOST), (LAN,), n_tokens=1, n_outputs=1, n_kv=256)
    assert cost.round_trips == 1
    assert cost.bytes == INPUTS + 2 * ACT


def test_each_worker_in_the_order_is_one_more_round_trip_through_the_client() -> None:
    cost = network_cost(SHAPE, (0, 0, 1, 1, 1), (LAN, OTHER), n_tokens=1, n_outputs=1, n_kv=256)
    assert cost.round_trips == 2
    # the activations leave worker 0 to the client and go on to worker 1: counted on both links
    expected = (LAN.rtt_s + OTHER.rtt_s + (INPUTS + 2 * ACT) / LAN.bytes_per_s
                + (INPUTS + ACT + LOGITS) / OTHER.bytes_per_s)
    assert cost.seconds == pytest.approx(expected)
    # the order matters, not the count: back and forth is two more
    zigzag = network_cost(SHAPE, (0, 1, 0, 1, 1), (LAN, OTHER), n_tokens=1, n_outputs=1, n_kv=256)
    assert zigzag.round_trips == 4


def test_a_prompt_batch_moves_every_tokens_activations_but_one_row_of_logits() -> None:
    cost = network_cost(SHAPE, (0,) * 5, (LAN,), n_tokens=512, n_outputs=1, n_kv=512)
    assert cost.bytes == 512 * 4 + 512 * 512 * 2 + 512 * ACT + LOGITS


def test_experts_kept_on_the_host_cross_the_link_twice_per_layer() -> None:
    devices = layer_devices(MOE, RunConfig(n_ctx=256, n_gpu_layers=-1, n_cpu_moe=2, gpu=True, offload_kind="rpc"))
    assert devices == (0,) * 5
    cost = network_cost(MOE, devices, (LAN,), n_tokens=1, n_outputs=1, n_kv=256, cpu_moe_layers=2)
    assert cost.round_trips == 1 + 2
    routed = ACT + 2 * 4 * 2  # activations, and the two chosen experts' ids and weights
    assert cost.bytes == INPUTS + ACT + LOGITS + 2 * (routed + ACT)
    dense = network_cost(SHAPE, devices, (LAN,), n_tokens=1, n_outputs=1, n_kv=256, cpu_moe_layers=2)
    assert dense.round_trips == 1  # a dense model has no experts to keep back
