"""Hardware readers fed recorded output: nvidia-smi text, fake sysfs trees, a fake NVML module."""

from __future__ import annotations

import json
import os
import stat
import sys
import types
from pathlib import Path

import pytest

from qwenbench.probe import probe_hardware
from qwenbench.probe.apple import metal_budget, parse_apple
from qwenbench.probe.backends import backends_from_filenames, missing_backend_hint
from qwenbench.probe.bandwidth import measure_ram_bandwidth_gbps, store_bandwidth
from qwenbench.probe.cpu import cpu_model_from_cpuinfo, features_from_cpuinfo, last_level_cache_bytes, read_cpu
from qwenbench.probe.nvidia import parse_nvidia_smi, read_nvidia, read_nvml
from qwenbench.probe.sysfs_drm import read_drm_gpus

from .conftest import run_cli

DATA = Path(__file__).parent / "data"
GIB, MIB = 1 << 30, 1 << 20
RAM_32G, AVAILABLE_28G = 32 * GIB, 28 * GIB


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# ---------------------------------------------------------------------------------------- nvidia-smi


def test_nvidia_smi_one_gpu() -> None:
    (gpu,), notes = parse_nvidia_smi(recorded("nvidia-smi-one-gpu.txt"))
    assert not notes
    assert gpu.name == "NVIDIA GeForce RTX 4090" and gpu.kind == "discrete" and gpu.source == "nvidia-smi"
    assert gpu.memory_total_bytes == 24564 * MIB and gpu.memory_free_bytes == 23987 * MIB
    assert gpu.budget_bytes == gpu.memory_free_bytes
    assert gpu.driver_version == "550.54.14" and gpu.power_limit_w == 450.0


def test_nvidia_smi_two_gpus() -> None:
    gpus, _ = parse_nvidia_smi(recorded("nvidia-smi-two-gpus.txt"))
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].memory_free_bytes == 1203 * MIB  # a busy second card keeps its own budget


def test_nvidia_smi_old_driver_degrades_to_unknown() -> None:
    (gpu,), _ = parse_nvidia_smi(recorded("nvidia-smi-old-driver.txt"))
    assert gpu.name == "GeForce GTX 750 Ti"
    assert gpu.memory_total_bytes is None and gpu.budget_bytes is None and gpu.power_limit_w is None
    assert gpu.notes


def test_nvidia_smi_garbage_is_a_note() -> None:
    gpus, notes = parse_nvidia_smi(recorded("nvidia-smi-garbage.txt"))
    assert gpus == [] and "unexpected line" in notes[0]


def _fake_smi(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder



def test_nvidia_smi_is_the_fallback_when_nvml_fails(no_nvml: None, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_smi(tmp_path, f"cat {DATA / 'nvidia-smi-two-gpus.txt'}")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    gpus, _ = read_nvidia()
    assert [g.source for g in gpus] == ["nvidia-smi", "nvidia-smi"]


def test_a_failing_nvidia_smi_is_a_note(no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_smi(tmp_path, 'echo "Field \\"power.limit\\" is not a valid field to query." >&2; exit 2')
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    gpus, notes = read_nvidia()
    assert gpus == [] and any("not a valid field" in n for n in notes)


# --------------------------------------------------------------------------------------------- NVML


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    devices = [("NVIDIA H100 80GB HBM3", 81559 * MIB, 80000 * MIB, 700000),
               (b"NVIDIA L4", 23034 * MIB, 22000 * MIB, None)]

    class NVMLError(Exception):
        pass

    def power(handle: int) -> int:
        if devices[handle][3] is None:
            raise NVMLError("Not Supported")
        return devices[handle][3]

    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlSystemGetDriverVersion = lambda: "570.86.15"
    module.nvmlSystemGetCudaDriverVersion = lambda: 12080
    module.nvmlDeviceGetCount = lambda: len(devices)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetName = lambda handle: devices[handle][0]
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(
        total=devices[handle][1], free=devices[handle][2], used=devices[handle][1] - devices[handle][2])
    module.nvmlDeviceGetPowerManagementLimit = power
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def test_nvml_reader(fake_nvml: types.ModuleType) -> None:
    gpus, notes = read_nvml()
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]  # bytes names decoded
    h100, l4 = gpus
    assert h100.memory_total_bytes == 81559 * MIB and h100.budget_bytes == 80000 * MIB
    assert h100.cuda_version == "12.8" and h100.driver_version == "570.86.15" and h100.power_limit_w == 700
    assert l4.power_limit_w is None and any("power limit" in n for n in notes)


# -------------------------------------------------------------------------------------------- sysfs


def fake_card(root: Path, card: str, vendor: str, device: str, **files: int) -> None:
    folder = root / "class" / "drm" / card / "device"
    folder.mkdir(parents=True)
    (folder / "vendor").write_text(vendor + "\n")
    (folder / "device").write_text(device + "\n")
    for name, value in files.items():
        (folder / name).write_text(f"{value}\n")
    (root / "class" / "drm" / f"{card}-DP-1").mkdir()  # a connector, not a GPU


def test_amd_discrete_card(tmp_path: Path) -> None:
    fake_card(tmp_path, "card0", "0x1002", "0x744c", mem_info_vram_total=24 * GIB, mem_info_vram_used=1 * GIB,
              mem_info_gtt_total=16 * GIB, mem_info_gtt_used=0)
    (gpu,), _ = read_drm_gpus(RAM_32G, AVAILABLE_28G, tmp_path)
    assert gpu.vendor == "amd" and gpu.kind == "discrete"
    assert gpu.memory_total_bytes == 24 * GIB and gpu.budget_bytes == 23 * GIB


def test_amd_apu_with_512_mib_carve_out(tmp_path: Path) -> None:
    fake_card(tmp_path, "card1", "0x1002", "0x15bf", mem_info_vram_total=512 * MIB, mem_info_vram_used=100 * MIB,
              mem_info_gtt_total=16 * GIB, mem_info_gtt_used=2 * GIB)
    (gpu,), _ = read_drm_gpus(RAM_32G, AVAILABLE_28G, tmp_path)
    assert gpu.kind == "integrated" and gpu.shared_memory_bytes == 16 * GIB
    assert gpu.budget_bytes == 412 * MIB + 14 * GIB  # free carve-out + free GTT
    assert any("share system RAM" in n for n in gpu.notes)


def test_apu_budget_is_capped_by_free_ram(tmp_path: Path) -> None:
    fake_card(tmp_path, "card0", "0x1002", "0x1586", mem_info_vram_total=512 * MIB, mem_info_vram_used=0,
              mem_info_gtt_total=96 * GIB, mem_info_gtt_used=0)
    (gpu,), _ = read_drm_gpus(128 * GIB, 10 * GIB, tmp_path)
    assert gpu.budget_bytes == 512 * MIB + 10 * GIB


def test_intel_igpu(tmp_path: Path) -> None:
    fake_card(tmp_path, "card0", "0x8086", "0xa7a0")
    (gpu,), _ = read_drm_gpus(RAM_32G, AVAILABLE_28G, tmp_path)
    assert gpu.vendor == "intel" and gpu.kind == "integrated"
    assert gpu.shared_memory_bytes == 24 * GIB and gpu.budget_bytes == 24 * GIB


def test_no_gpu_and_odd_values(tmp_path: Path) -> None:
    assert read_drm_gpus(RAM_32G, AVAILABLE_28G, tmp_path) == ([], [])
    fake_card(tmp_path, "card0", "0x1002", "0x744c", mem_info_vram_total=24 * GIB)
    (tmp_path / "class/drm/card0/device/mem_info_vram_used").write_text("garbage\n")
    (gpu,), _ = read_drm_gpus(RAM_32G, AVAILABLE_28G, tmp_path)
    assert gpu.memory_free_bytes is None and any("unreadable" in n for n in gpu.notes)


# ------------------------------------------------------------------------------------ apple, cpu, libs


def test_apple_unified_memory() -> None:
    gpu, _ = parse_apple("38654705664\n", "Apple M3 Pro\n", "0\n")
    assert gpu is not None and gpu.kind == "integrated" and gpu.shared_memory_bytes == 36 * GIB
    assert gpu.budget_bytes == 27 * GIB  # 3/4 of 36 GB
    raised, _ = parse_apple("34359738368", "Apple M2 Max", "28672")
    assert raised is not None and raised.budget_bytes == 28 * GIB
    assert parse_apple("17179869184", "Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz", "")[0] is None
    assert parse_apple("garbage", "Apple M1", "")[0] is None
    assert metal_budget(16 * GIB, None)[0] == int(16 * GIB * 2 / 3)


def test_cpu_features() -> None:
    x86 = ("processor\t: 0\nmodel name\t: AMD Ryzen 7 7840U\n"
           "flags\t\t: fpu sse2 pni ssse3 fma f16c avx avx2 avx512f avx512_vnni avx512_bf16\n")
    assert cpu_model_from_cpuinfo(x86) == "AMD Ryzen 7 7840U"
    assert features_from_cpuinfo(x86) == ("SSE3", "SSSE3", "AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI",
                                          "AVX512_BF16")
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm\n"
    assert features_from_cpuinfo(arm) == ("NEON", "DOTPROD", "MATMUL_INT8", "SVE")
    assert features_from_cpuinfo("nothing here") == ()


def test_backends_from_library_names() -> None:
    cpu_only = ["libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "libmtmd.so"]
    assert backends_from_filenames(cpu_only) == ("CPU",)
    cuda = [*cpu_only, "libggml-cuda.so"]
    assert backends_from_filenames(cuda) == ("CUDA", "CPU")
    hints = missing_backend_hint({"nvidia"}, ("CPU",))
    assert len(hints) == 1 and "-DGGML_CUDA=on" in hints[0]
    assert missing_backend_hint({"nvidia"}, ("CUDA", "CPU")) == []


# ----------------------------------------------------------------------------------------- end to end


def test_probe_json_with_injected_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs = tmp_path / "sys"
    fake_card(sysfs, "card0", "0x1002", "0x15bf", mem_info_vram_total=512 * MIB, mem_info_vram_used=0,
              mem_info_gtt_total=8 * GIB, mem_info_gtt_used=0)
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text("model name\t: AMD Ryzen AI 9 HX 370\nflags\t: sse2 avx avx2 avx512f\n")
    # the recorded machine's RAM, not this one's: 32 GiB, 20 GiB available, 8 GiB of swap
    (proc / "meminfo").write_text("MemTotal:       33554432 kB\nMemFree:         1048576 kB\n"
                                  "MemAvailable:   20971520 kB\nSwapTotal:       8388608 kB\n"
                                  "SwapFree:        8388608 kB\n")
    monkeypatch.setenv("QWENBENCH_SYSFS_ROOT", str(sysfs))
    monkeypatch.setenv("QWENBENCH_PROC_ROOT", str(proc))
    result = run_cli("probe", "--json", "--no-bandwidth")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu"]["model"] == "AMD Ryzen AI 9 HX 370" and "AVX512" in data["cpu"]["features"]
    assert data["ram"]["total_bytes"] == 32 * GIB and data["ram"]["available_bytes"] == 20 * GIB
    assert data["ram"]["swap_total_bytes"] == 8 * GIB
    (gpu,) = [g for g in data["gpus"] if g["vendor"] == "amd"]
    assert gpu["kind"] == "integrated" and gpu["memory_total_bytes"] == 512 * MIB and gpu["source"] == "sysfs"
    assert {"vendor", "name", "kind", "memory_total_bytes", "memory_free_bytes", "shared_memory_bytes",
            "source"} <= set(gpu)
    assert "CPU" in data["backends"] and data["bandwidth_gbps"] == {}
    assert any("amd GPU is present" in n for n in data["notes"])  # a CPU-only wheel on an APU


def test_bandwidth_measurement_and_cache() -> None:
    assert measure_ram_bandwidth_gbps(threads=2, buffer_bytes=64 << 20, rounds=2) > 0.5
    store_bandwidth("test-machine", {"ram": 41.5})
    assert probe_hardware(machine_key="test-machine").bandwidth_gbps == {"ram": 41.5}
    assert probe_hardware(machine_key="test-machine", bandwidth=False).bandwidth_gbps == {}


def test_windows_igpus_from_the_registry() -> None:
    from qwenbench.probe.windows import parse_reg_query, windows_gpus

    adapters = parse_reg_query(recorded("reg-query-display.txt"))
    assert [a["name"] for a in adapters] == ["AMD Radeon(TM) 780M", "NVIDIA GeForce RTX 4060 Laptop GPU",
                                            "Intel(R) UHD Graphics 620", "Microsoft Basic Display Adapter"]
    assert adapters[0]["dedicated"] == 512 * MIB  # the QWORD wins over the binary value
    assert adapters[2]["dedicated"] == 2 * GIB  # an old driver's DWORD
    gpus, _ = windows_gpus(adapters, RAM_32G, AVAILABLE_28G)
    assert [(g.vendor, g.kind) for g in gpus] == [("amd", "integrated"), ("intel", "integrated")]  # NVIDIA: NVML's
    radeon = gpus[0]
    assert radeon.shared_memory_bytes == 16 * GIB and radeon.budget_bytes == 512 * MIB + 16 * GIB
    assert radeon.source == "registry"


def test_last_level_cache_from_a_sysfs_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu0 = tmp_path / "devices/system/cpu/cpu0"
    for index, size in enumerate(("48K", "32K", "1024K", "32768K")):
        (cpu0 / f"cache/index{index}").mkdir(parents=True)
        (cpu0 / f"cache/index{index}/size").write_text(size + "\n")
    assert last_level_cache_bytes(cpu0) == 32 << 20
    monkeypatch.setenv("QWENBENCH_SYSFS_ROOT", str(tmp_path))
    assert read_cpu().last_level_cache_bytes == 32 << 20
    (cpu0 / "cache/index3/size").write_text("garbage")
    assert last_level_cache_bytes(cpu0) == 1 << 20
    assert last_level_cache_bytes(tmp_path / "nowhere") == 0  # a VM without cache entries: unknown


def test_plan_shows_what_a_gpu_this_install_cannot_drive_would_give(tmp_path: Path) -> None:
    """A CPU-only wheel on a machine with an RTX 4090 (nvidia-smi as recorded): this install's plan, and the one a
    CUDA build would give with the command to get it; --backend plans as if."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {DATA / 'nvidia-smi-one-gpu.txt'}\n")
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def plan(*extra: str) -> dict:
        result = run_cli("plan", "--model", "qwen3-8b", "--offline", "--no-calibrate", "--json", *extra, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    here = plan()
    assert here["n_gpu_layers"] == 0 and here["predicted_vram_bytes"] == 0  # this wheel cannot use the card
    cuda = here["with_backend"]
    assert cuda["backend"] == "cuda" and cuda["n_gpu_layers"] == 37  # all 36 layers and the output, on 24 GiB
    assert cuda["predicted_tg_ts"] > here["predicted_tg_ts"]
    assert "-DGGML_CUDA=on -DGGML_RPC=ON" in cuda["install"] and "--no-cache-dir" in cuda["install"]
    as_if = plan("--backend", "cuda")
    assert as_if["as_if_backend"] == "cuda" and as_if["n_gpu_layers"] == cuda["n_gpu_layers"]
    assert "with_backend" not in as_if
    assert plan("--backend", "cpu")["n_gpu_layers"] == 0
    refused = run_cli("plan", "--model", "qwen3-8b", "--offline", "--backend", "rocm", env=env)
    assert refused.returncode == 2 and "not a build it plans for" in refused.stderr
