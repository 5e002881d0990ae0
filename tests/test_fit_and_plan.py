"""The memory model against llama.cpp's own buffer sizes, and the planner's choices on typical machines."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qwenbench.calibration import fit_calibration, load_calibration, record_efficiency, record_memory
from qwenbench.catalog import get_model
from qwenbench.fit import (
    Calibration,
    ModelShape,
    RunConfig,
    bytes_read_per_token,
    estimate_memory,
    first_gpu_layer,
    kv_bytes_per_layer,
    layer_devices,
    on_gpu,
    repacked_on_cpu,
)
from qwenbench.gguf_info import read_header
from qwenbench.llamalog import parse_buffers
from qwenbench.modelfile import ensure_synthetic
from qwenbench.planner import Placement, best_placement, choose, offload_devices, prepare_run, split_reasons
from qwenbench.probe import CpuInfo, GpuInfo, Hardware, RamInfo
from qwenbench.probe.cpu import read_cpu
from qwenbench.recipe import tensor_table
from qwenbench.runspec import RunSettings
from qwenbench.speed import SpeedCalibration, TypeRate
from qwenbench.tensors import TensorInfo

from .conftest import TINY_DENSE, run_cli, tiny_spec

GIB, MIB = 1 << 30, 1 << 20
X86 = ("SSE3", "AVX", "AVX2", "FMA", "F16C", "AVX512")
LOG = """load_tensors:   CPU_Mapped model buffer size =   370.96 MiB
load_tensors:   CPU_REPACK model buffer size =   204.75 MiB
llama_kv_cache:        CPU KV buffer size =    56.00 MiB
sched_reserve:        CPU compute buffer size =   309.26 MiB
llama_context:        CPU  output buffer size =     0.58 MiB
llama_kv_cache:        CPU KV buffer size =    28.00 MiB
sched_reserve:        CPU compute buffer size =    77.25 MiB
"""


def shape_of(key: str) -> ModelShape:
    return get_model(key).shape()


def test_llama_log_buffers() -> None:
    buffers = parse_buffers(LOG)
    assert buffers.model == {"CPU_Mapped": round(370.96 * MIB), "CPU_REPACK": round(204.75 * MIB)}
    assert buffers.kv == {"CPU": 56 * MIB}  # contexts come one at a time: the largest counts
    assert buffers.compute == {"CPU": round(309.26 * MIB)}


def test_exact_parts_match_what_llama_cpp_reported_for_qwen3_0_6b() -> None:
    """Numbers llama.cpp printed for a Qwen3-0.6B Q4_K_M at n_ctx 512 on an AVX-512 machine (LOG above)."""
    table = tensor_table(get_model("qwen3-0.6b"), "Q4_K_M")
    estimate = estimate_memory(table, shape_of("qwen3-0.6b"), RunConfig(n_ctx=512), X86)
    assert estimate.parts["host_repacked_copies"] == round(204.75 * MIB)
    assert estimate.parts["host_kv"] == 56 * MIB
    assert kv_bytes_per_layer(shape_of("qwen3-0.6b"), 128, "f16", "f16") * 28 == 28 * MIB  # padded to 256 cells
    # without mmap the repacked weights are held once, not as file pages plus a copy
    no_mmap = estimate_memory(table, shape_of("qwen3-0.6b"), RunConfig(n_ctx=512, use_mmap=False), X86)
    assert estimate.host_bytes - no_mmap.host_bytes == round(204.75 * MIB)
    assert estimate.host_required_bytes == no_mmap.host_required_bytes


def test_predictions_match_real_llama_cpp_buffers(model_dir: Path, tmp_path: Path) -> None:
    """A tiny Q4_0 model (repackable on AVX2 and Arm) run for real: our parts equal llama.cpp's buffers."""
    path, _ = ensure_synthetic(tiny_spec("qwen3-0.6b", TINY_DENSE), "Q4_0", model_dir / "tiny-q4_0.gguf")
    result = run_cli("run", "--json", "--gguf", str(path), "-p", "64", "-n", "8", "-r", "1", "--no-ttft", "-c", "1024",
                     "--out", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    buffers = payload["llama_cpp_buffers"]
    header = read_header(path)
    estimate = estimate_memory(header.table, header.shape(), RunConfig(n_ctx=1024), read_cpu().features)
    printed = 0.01 * MIB  # llama.cpp prints MiB with two decimals
    assert abs(estimate.parts["host_kv"] - buffers["kv"]["CPU"]) <= printed
    assert estimate.parts["host_repacked_copies"] > 0 or "CPU_REPACK" not in buffers["model"]
    assert abs(estimate.parts["host_repacked_copies"] - buffers["model"].get("CPU_REPACK", 0)) <= printed
    row = payload["rows"][0]
    assert row["predicted_host_bytes"] > 0 and row["peak_rss_bytes"] > 0
    assert abs(row["predicted_host_bytes"] - row["peak_rss_bytes"]) / row["peak_rss_bytes"] < 0.25


def test_without_repacking_llama_cpp_keeps_no_copies_and_the_row_says_so(model_dir: Path, tmp_path: Path) -> None:
    path, _ = ensure_synthetic(tiny_spec("qwen3-0.6b", TINY_DENSE), "Q4_0", model_dir / "tiny-q4_0.gguf")
    result = run_cli("run", "--json", "--gguf", str(path), "-p", "16", "-n", "4", "-r", "1", "--no-ttft", "-c", "256",
                     "--no-repack", "--out", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert "CPU_REPACK" not in payload["llama_cpp_buffers"]["model"]
    header = read_header(path)
    estimate = estimate_memory(header.table, header.shape(), RunConfig(n_ctx=256, repack=False), read_cpu().features)
    assert estimate.parts["host_repacked_copies"] == 0
    assert {row["repack"] for row in payload["rows"]} == {"off"}


def test_layer_placement_follows_this_llama_cpp() -> None:
    shape = shape_of("qwen3-30b-a3b")
    assert first_gpu_layer(48, -1) == 0 and first_gpu_layer(48, 1) == 48 and first_gpu_layer(48, 0) == 49
    config = RunConfig(n_ctx=4096, n_gpu_layers=1, gpu=True)
    assert on_gpu(TensorInfo("output.weight", 14, (2048, 151936)), shape, config)  # the output layer goes first
    assert not on_gpu(TensorInfo("blk.47.attn_q.weight", 11, (2048, 4096)), shape, config)
    assert not on_gpu(TensorInfo("token_embd.weight", 11, (2048, 151936)), shape, RunConfig(n_ctx=1, gpu=True))
    experts_in_ram = RunConfig(n_ctx=4096, n_gpu_layers=-1, n_cpu_moe=10, gpu=True)
    assert not on_gpu(TensorInfo("blk.9.ffn_up_exps.weight", 11, (2048, 768, 128)), shape, experts_in_ram)
    assert on_gpu(TensorInfo("blk.9.attn_q.weight", 11, (2048, 4096)), shape, experts_in_ram)
    assert on_gpu(TensorInfo("blk.10.ffn_up_exps.weight", 11, (2048, 768, 128)), shape, experts_in_ram)


def test_a_tied_output_gets_a_copy_on_the_device_that_holds_the_output_layer() -> None:
    """Qwen3-0.6B/1.7B/4B tie the output to token_embd: llama.cpp duplicates it onto the output layer's device
    (seen on an RPC device: a tiny tied model's 9.91 MiB all there, while the host kept its 9.85 MiB lookup copy)."""
    shape = shape_of("qwen3-4b")
    table = tensor_table(get_model("qwen3-4b"), "Q4_K_M")
    embeddings = next(t for t in table.tensors if t.name == "token_embd.weight")
    norm = next(t for t in table.tensors if t.name == "output_norm.weight").n_bytes  # the output layer's too
    output_only = estimate_memory(table, shape, RunConfig(n_ctx=512, n_gpu_layers=1, gpu=True), X86)
    assert output_only.parts["gpu_weights"] == embeddings.n_bytes + norm
    assert output_only.parts["host_weights"] == sum(t.n_bytes for t in table.tensors) - norm  # the input copy stays
    host, gpu = bytes_read_per_token(table, shape, RunConfig(n_ctx=512, n_gpu_layers=1, gpu=True))
    all_on_host, _ = bytes_read_per_token(table, shape, RunConfig(n_ctx=512))
    assert gpu == embeddings.n_bytes + norm and host < all_on_host - gpu / 2
    untied = tensor_table(get_model("qwen3-8b"), "Q4_K_M")
    output = next(t for t in untied.tensors if t.name == "output.weight")
    config = RunConfig(n_ctx=512, n_gpu_layers=1, gpu=True)
    untied_estimate = estimate_memory(untied, shape_of("qwen3-8b"), config, X86)
    assert untied_estimate.parts["gpu_weights"] == output.n_bytes + 4 * 4096


def test_repack_rules() -> None:
    q4k = TensorInfo("blk.0.attn_q.weight", 12, (1024, 2048))
    assert repacked_on_cpu(q4k, X86) and not repacked_on_cpu(q4k, ("SSE3", "AVX"))
    assert repacked_on_cpu(TensorInfo("blk.0.ffn_down.weight", 10, (3072, 1024)), X86)  # Q2_K needs AVX-512
    assert not repacked_on_cpu(TensorInfo("blk.0.ffn_down.weight", 10, (3072, 1024)), ("AVX2",))
    assert not repacked_on_cpu(TensorInfo("token_embd.weight", 12, (1024, 151936)), X86)  # get_rows, not matmul
    assert repacked_on_cpu(TensorInfo("blk.0.attn_q.weight", 14, (1024, 2048)), ("NEON", "DOTPROD"))  # Q6_K on Arm
    assert not repacked_on_cpu(TensorInfo("blk.0.attn_q.weight", 12, (1024, 2044)), X86)  # rows % 8


def test_moe_reads_only_the_used_experts() -> None:
    shape = shape_of("qwen3-30b-a3b")
    table = tensor_table(get_model("qwen3-30b-a3b"), "Q4_K_M")
    host, gpu = bytes_read_per_token(table, shape, RunConfig(n_ctx=4096))
    assert gpu == 0 and 1.5e9 < host < 2.5e9  # ~3.3 B active parameters, not 30.5 B
    dense_host, _ = bytes_read_per_token(tensor_table(get_model("qwen3-4b"), "Q4_K_M"), shape_of("qwen3-4b"),
                                         RunConfig(n_ctx=4096))
    assert 0.6 < host / dense_host < 1.1  # why the MoE decodes near a dense 4B


def test_calibration_learns_per_machine() -> None:
    assert fit_calibration([]) == Calibration()
    observations = [{"activation_units": 1e8, "residual_bytes": 100 * MIB},
                    {"activation_units": 3e8, "residual_bytes": 200 * MIB},
                    {"moe": True, "efficiency": 0.5}, {"moe": False, "efficiency": 0.9}]
    fitted = fit_calibration(observations)
    assert fitted.host_activation_factor == pytest.approx(100 * MIB / 2e8)
    assert fitted.host_base_bytes == pytest.approx(50 * MIB)
    assert fitted.tg_efficiency_moe == 0.5 and fitted.tg_efficiency_dense == 0.9
    record_memory("m-test", activation_units=1e8, residual_bytes=100 * MIB, model="a")
    record_memory("m-test", activation_units=3e8, residual_bytes=200 * MIB, model="b")
    record_efficiency("m-test", efficiency=0.55, moe=True, model="c")
    learned = load_calibration("m-test")
    assert learned.host_base_bytes == pytest.approx(50 * MIB) and learned.tg_efficiency_moe == 0.55
    assert load_calibration("another-machine") == Calibration()


def test_a_run_that_cannot_fit_is_refused_before_loading(tiny_dense: Path, tmp_path: Path) -> None:
    result = run_cli("run", "--gguf", str(tiny_dense), "-c", "400000000", "-p", "16", "-n", "4", "--no-ttft",
                     "--out", str(tmp_path / "r.csv"))
    assert result.returncode == 2 and "would not fit" in result.stderr and "--force" in result.stderr
    assert not (tmp_path / "r.csv").exists()


# ------------------------------------------------------------------------------------- planner tables


def machine(ram_gib: float, gpu: GpuInfo | None = None, backends: tuple[str, ...] = ("CPU",),
            ram_gbps: float = 60.0) -> Hardware:
    cpu = CpuInfo("test CPU", 8, 16, X86)
    ram = RamInfo(int(ram_gib * GIB), int(ram_gib * 0.9 * GIB), 0, 0)
    return Hardware(cpu, ram, (gpu,) if gpu else (), backends, {"ram": ram_gbps})


def nvidia(name: str, gib: float) -> GpuInfo:
    return GpuInfo("nvidia", name, "discrete", int(gib * GIB), int(gib * 0.95 * GIB), None,
                   int(gib * 0.95 * GIB), "nvml")


RTX_4090_BOX = machine(64, nvidia("NVIDIA GeForce RTX 4090", 24), ("CUDA", "CPU"))
RTX_4060_LAPTOP = machine(32, nvidia("NVIDIA GeForce RTX 4060 Laptop GPU", 8), ("CUDA", "CPU"))
APU_32G = machine(32, GpuInfo("amd", "AMD Radeon 780M", "integrated", 512 * MIB, 500 * MIB, 16 * GIB,
                              int(16.4 * GIB), "sysfs"), ("Vulkan", "CPU"))
LAPTOP_16G_CPU = machine(16)


def plan(key: str, hardware: Hardware, ctx: int = 4096, quants: tuple[str, ...] = ("Q8_0", "Q6_K", "Q5_K_M",
                                                                                   "Q4_K_M", "Q3_K_L", "Q2_K")):
    spec = get_model(key)
    placements = [best_placement(q, tensor_table(spec, q), shape_of(key), hardware, ctx) for q in quants]
    return choose(key, placements, 5.0)


# Quality first at a usable speed: a 32B on a 24 GB card takes Q6_K with part of it in RAM (about
# 10 t/s) over Q4_K_M entirely on the GPU; --min-tg raises the floor for users who want the latter.
@pytest.mark.parametrize(("key", "hardware", "ctx", "quant", "where"), [
    ("qwen3-8b", RTX_4090_BOX, 4096, "Q8_0", "all layers on the GPU"),
    ("qwen3-32b", RTX_4090_BOX, 4096, "Q6_K", "some layers on the GPU"),
    ("qwen3-8b", RTX_4060_LAPTOP, 4096, "Q8_0", "some layers on the GPU"),
    ("qwen3-4b", LAPTOP_16G_CPU, 4096, "Q8_0", "CPU"),
    ("qwen3-32b", LAPTOP_16G_CPU, 4096, "Q2_K", "CPU"),  # nothing Q3 or better fits in 16 GB
    ("qwen3-30b-a3b", APU_32G, 4096, "Q6_K", "some layers on the GPU"),
])
def test_planner_choices(key: str, hardware: Hardware, ctx: int, quant: str, where: str) -> None:
    result = plan(key, hardware, ctx)
    assert result.choice is not None and result.choice.fits, result.reasons
    assert result.choice.quant == quant, (result.reasons, [(p.quant, p.fits, p.predicted_tg_ts) for p in
                                                           result.evaluated])
    layers = result.choice.n_gpu_layers
    n_layer = get_model(key).n_layer
    if where == "CPU":
        assert layers == 0
    elif where == "all layers on the GPU":
        assert layers == n_layer + 1 and result.choice.n_cpu_moe == 0
    else:
        assert 0 < layers <= n_layer + 1


def test_a_higher_speed_floor_trades_quality_for_speed() -> None:
    spec = get_model("qwen3-32b")
    placements = [best_placement(q, tensor_table(spec, q), shape_of("qwen3-32b"), RTX_4090_BOX, 4096)
                  for q in ("Q6_K", "Q5_K_M", "Q4_K_M")]
    fast = choose("qwen3-32b", placements, 30.0)
    assert fast.choice is not None and fast.choice.quant == "Q4_K_M"
    assert fast.choice.n_gpu_layers == spec.n_layer + 1


def test_when_nothing_reaches_the_floor_the_fastest_q4_class_quant_is_chosen() -> None:
    spec = get_model("qwen3-8b")
    placements = [best_placement(q, tensor_table(spec, q), shape_of("qwen3-8b"), LAPTOP_16G_CPU, 4096)
                  for q in ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_L")]
    slow = choose("qwen3-8b", placements, 1000.0)
    assert slow.choice is not None and slow.choice.quant == "Q4_K_M"  # not Q8_0, and not below Q4-class
    assert "fastest quant that fits at Q4-class quality or better" in slow.reasons[0]


def test_moe_keeps_experts_in_ram_rather_than_offloading_fewer_layers() -> None:
    """Qwen3-30B-A3B on an 8 GB card: all layers on the GPU with experts in RAM beats partial offload."""
    spec = get_model("qwen3-30b-a3b")
    placement = best_placement("Q4_K_M", tensor_table(spec, "Q4_K_M"), shape_of("qwen3-30b-a3b"), RTX_4060_LAPTOP,
                               4096)
    assert placement.fits and placement.n_cpu_moe > 0 and placement.n_gpu_layers == spec.n_layer + 1
    layers_only = best_placement("Q4_K_M", tensor_table(spec, "Q4_K_M"), shape_of("qwen3-30b-a3b"),
                                 RTX_4060_LAPTOP, 4096, expert_offload=False)
    assert layers_only.fits and layers_only.n_cpu_moe == 0
    assert placement.predicted_tg_ts > 1.2 * layers_only.predicted_tg_ts
    result = plan("qwen3-30b-a3b", RTX_4060_LAPTOP)
    assert result.choice is not None and result.choice.n_cpu_moe > 0
    assert any("experts" in reason for reason in result.reasons)


def test_nothing_fits_says_what_would() -> None:
    tiny_machine = machine(2)
    result = plan("qwen3-32b", tiny_machine, quants=("Q4_K_M", "Q2_K"))
    assert result.choice is None and result.reasons and "nothing fits" in result.reasons[0]
    assert "GiB" in result.reasons[0]


def test_neighbours_are_shown() -> None:
    result = plan("qwen3-8b", LAPTOP_16G_CPU)
    assert result.choice is not None
    assert {p.quant for p in result.alternatives} <= {"Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_L", "Q2_K"}
    assert 1 <= len(result.alternatives) <= 2


def test_what_would_fit() -> None:
    from qwenbench.planner import what_would_fit

    spec = get_model("qwen3-4b")
    small = machine(4)
    hints = what_would_fit("Q2_K", tensor_table(spec, "Q2_K"), shape_of("qwen3-4b"), small, 32768)
    assert hints[0].startswith("Q2_K fits with a context of about") and "--ctx" in hints[0]
    fitting_ctx = int(hints[0].split("--ctx ")[1].rstrip(")"))
    assert 1024 <= fitting_ctx < 32768
    assert best_placement("Q2_K", tensor_table(spec, "Q2_K"), shape_of("qwen3-4b"), small, fitting_ctx).fits
    assert "more free RAM" in hints[1]
    hopeless = what_would_fit("Q2_K", tensor_table(get_model("qwen3-32b"), "Q2_K"), shape_of("qwen3-32b"),
                              machine(2), 4096)
    assert len(hopeless) == 1 and "more free RAM" in hopeless[0]


def test_the_plan_reads_a_model_in_where_mapping_it_beside_its_repacked_copies_would_not_fit() -> None:
    spec = get_model("qwen3-30b-a3b")
    table = tensor_table(spec, "Q4_K_M")
    speed = SpeedCalibration("k", {name: TypeRate(20e9, 60e9) for name in ("Q4_K", "Q6_K", "Q8_0", "F32")},
                             token_s=0.001, layer_s=0.0001)
    # AVX-512 repacks Q4_K: the copies (14 GB) and the mapped file together outgrow 24 GiB, read in it is 18.8 GB
    tight = best_placement("Q4_K_M", table, spec.shape(), machine(24), 4096, speed=speed)
    roomy = best_placement("Q4_K_M", table, spec.shape(), machine(64), 4096, speed=speed)
    assert tight.fits and not tight.use_mmap and tight.predicted_host_bytes < 20 * GIB
    assert roomy.use_mmap and roomy.predicted_host_bytes > 24 * GIB  # mapped where it fits: reloads are free
    assert tight.predicted_tg_ts == pytest.approx(roomy.predicted_tg_ts)  # measured: the same speeds either way
    # mapping pinned (--load-mode mmap): it fits only by dropping file pages, and says so
    mapped = best_placement("Q4_K_M", table, spec.shape(), machine(24), 4096, speed=speed, use_mmap=True)
    assert mapped.use_mmap and mapped.fits and "exceed RAM" in mapped.speed_source
    assert "exceed RAM" not in roomy.speed_source and "exceed RAM" not in tight.speed_source
    # a run left on auto reads it in, and says why
    settings = RunSettings(model_path="m.gguf", n_prompt=(512,), n_gen=(128,), ttft=False)
    prepared = prepare_run(settings, "Q4_K_M", table, spec.shape(), machine(24), Calibration(), set(), speed=speed)
    assert prepared.settings.load_mode == "none" and not prepared.config.use_mmap
    assert any("--no-mmap" in note for note in prepared.notes)
    pinned = prepare_run(replace(settings, load_mode="mmap"), "Q4_K_M", table, spec.shape(), machine(24),
                         Calibration(), set(), speed=speed)
    assert pinned.settings.load_mode == "mmap" and not pinned.notes


def test_the_plan_runs_without_repacking_only_where_a_chat_turn_is_clearly_faster() -> None:
    spec = get_model("qwen3-4b")
    table = tensor_table(spec, "Q4_K_M")
    rates = {name: TypeRate(20e9, 60e9) for name in ("Q4_K", "Q6_K", "Q8_0", "F32")}
    settings = RunSettings(model_path="m.gguf", n_prompt=(512,), n_gen=(128,), ttft=False)

    def placed(plain_tg: float, plain_pp: float, **pinned: bool) -> Placement:
        speed = SpeedCalibration("k", rates, token_s=0.001, layer_s=0.0001,
                                 plain_rates={"Q4_K": TypeRate(plain_tg, plain_pp)})
        return best_placement("Q4_K_M", table, spec.shape(), machine(24), 4096, speed=speed, **pinned)

    # measured on AVX-512 (4B Q4_K_M twin): without repacking pp 92 against 59, tg 11.9 against 14.3
    faster = placed(14e9, 120e9)
    assert not faster.repack and faster.predicted_pp_ts > placed(20e9, 60e9).predicted_pp_ts
    assert faster.predicted_host_bytes < placed(20e9, 60e9).predicted_host_bytes  # and no repacked copies
    assert placed(20e9, 60e9).repack  # no faster: llama.cpp's default
    assert placed(10e9, 70e9).repack  # prefill a little faster, decode much slower: a chat turn takes longer
    assert placed(14e9, 120e9, repack=True).repack  # pinned
    speed = SpeedCalibration("k", rates, token_s=0.001, layer_s=0.0001, plain_rates={"Q4_K": TypeRate(14e9, 120e9)})
    prepared = prepare_run(settings, "Q4_K_M", table, spec.shape(), machine(24), Calibration(), set(), speed=speed)
    assert not prepared.settings.repack and not prepared.config.repack
    assert any("-nr" in note for note in prepared.notes)
    kept = prepare_run(settings, "Q4_K_M", table, spec.shape(), machine(24), Calibration(), {"repack"}, speed=speed)
    assert kept.settings.repack and not kept.notes


# -------------------------------------------------------------------------------- several offload devices

def test_layers_split_across_devices_as_llama_cpp_assigns_them() -> None:
    shape = shape_of("qwen3-0.6b")  # 28 layers and the output layer: 29 places
    even = RunConfig(n_ctx=512, gpu=True, tensor_split=(1.0, 1.0))
    devices = layer_devices(shape, even)
    # llama.cpp: upper_bound of (layer / 29) in the cumulative split (0.5, 1.0)
    assert devices == tuple(0 if layer / 29 < 0.5 else 1 for layer in range(29))
    partial = layer_devices(shape, RunConfig(n_ctx=512, gpu=True, n_gpu_layers=10, tensor_split=(3.0, 1.0)))
    assert partial[:19] == (-1,) * 19 and partial[19:] == tuple(0 if (k / 10) < 0.75 else 1 for k in range(10))
    spec = get_model("qwen3-0.6b")
    table = tensor_table(spec, "Q4_K_M")
    one = estimate_memory(table, shape, RunConfig(n_ctx=512, gpu=True, offload_kind="rpc"), X86)
    two = estimate_memory(table, shape, replace(even, offload_kind="rpc"), X86)
    # the same weights and KV, in two parts; each device that holds layers has its own compute buffer
    assert len(two.device_bytes) == 2 and sum(two.device_bytes) == two.vram_bytes
    assert two.parts["gpu_weights"] == one.parts["gpu_weights"] and two.parts["gpu_kv"] == one.parts["gpu_kv"]
    assert two.parts["gpu_compute"] > one.parts["gpu_compute"]


def _worker(name: str, gib: float, index: int) -> GpuInfo:
    return GpuInfo("rpc", name, "discrete", int(64 * GIB), int(64 * GIB), None, int(gib * GIB), "rpc", index=index)


def test_a_model_that_fits_neither_worker_alone_fits_the_two_together() -> None:
    key, quant = "qwen3-8b", "Q4_K_M"  # about 5.3 GiB offloaded at 4096 tokens, compute buffers included
    spec = get_model(key)
    table = tensor_table(spec, quant)

    def planned(*workers: GpuInfo) -> Placement:
        hardware = Hardware(CpuInfo("test CPU", 8, 16, X86), RamInfo(int(2 * GIB), int(1.5 * GIB), 0, 0),
                            workers, ("RPC", "CPU"), {"ram": 60.0})
        return best_placement(quant, table, shape_of(key), hardware, 4096)

    alone = [planned(_worker("RPC0[a:1]", gib, 0)) for gib in (4.0, 3.0)]
    assert not any(p.fits and p.n_gpu_layers == 37 for p in alone)  # all layers fit on neither
    together = planned(_worker("RPC0[a:1]", 4.0, 0), _worker("RPC1[b:1]", 3.0, 1))
    assert together.fits and together.n_gpu_layers == 37
    assert together.tensor_split == (round(3.75 / 6.5, 4), round(2.75 / 6.5, 4))  # budgets less the margin
    assert all(size <= budget * GIB - 256 * MIB for size, budget in zip(together.device_bytes, (4.0, 3.0), strict=True))
    hardware = Hardware(CpuInfo("test CPU", 8, 16, X86), RamInfo(int(2 * GIB), int(1.5 * GIB), 0, 0),
                        (_worker("RPC0[a:1]", 4.0, 0), _worker("RPC1[b:1]", 3.0, 1)), ("RPC", "CPU"), {"ram": 60.0})
    [reason] = split_reasons(together, offload_devices(hardware))
    assert "split across 2 devices" in reason and "it fits on none of them alone" in reason
