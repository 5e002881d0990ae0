"""Plans exported to the tools people run, each checked by parsing what was written: llama-server's command line,
an Ollama Modelfile, LM Studio's `lms load`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from qwenbench.export import ModelSource, llama_server_argv, lmstudio_argv, ollama_modelfile, render
from qwenbench.planner import Placement

from .conftest import run_cli
from .test_inputs import assert_refused

MOE_SPLIT = Placement("Q4_K_M", 49, 20, "q8_0", "q8_0", True, 8192, True, 12 << 30, 9 << 30, 31.0,
                      use_mmap=False, tensor_split=(3.0, 1.0))


def _flags(argv: list[str]) -> dict[str, str]:
    """A command line's flags and their values (a flag without one maps to "")."""
    flags, index = {}, 2 if argv[:2] == ["lms", "load"] else 1
    while index < len(argv):
        flag = argv[index]
        takes_value = index + 1 < len(argv) and not argv[index + 1].startswith("--")
        flags[flag] = argv[index + 1] if takes_value and flag.startswith("-") else ""
        index += 2 if takes_value and flag.startswith("-") else 1
    return flags


def _modelfile(text: str) -> tuple[str, dict[str, str], list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    origin = next(line.split(" ", 1)[1] for line in lines if line.startswith("FROM "))
    parameters = dict(line.split()[1:3] for line in lines if line.startswith("PARAMETER "))
    return origin, parameters, [line for line in lines if line.startswith("#")]


def test_each_tool_gets_what_it_can_take_of_a_plan() -> None:
    local = ModelSource(path="/models/Qwen3-30B-A3B-Q4_K_M.gguf")
    flags = _flags(llama_server_argv(local, MOE_SPLIT, 8, 48))
    assert flags["-m"] == local.path and flags["-ngl"] == "49" and flags["--n-cpu-moe"] == "20"
    assert flags["-c"] == "8192" and flags["-ctk"] == "q8_0" and flags["-ctv"] == "q8_0" and flags["-t"] == "8"
    assert flags["-ts"] == "3,1" and "--no-mmap" in flags and flags["-fa"] == "on"
    hub = ModelSource(repo="Qwen/Qwen3-30B-A3B-GGUF", quant="Q4_K_M")
    assert _flags(llama_server_argv(hub, MOE_SPLIT, 8, 48))["-hf"] == "Qwen/Qwen3-30B-A3B-GGUF:Q4_K_M"
    origin, parameters, comments = _modelfile(ollama_modelfile(hub, MOE_SPLIT, 8, 48))
    assert origin == "hf.co/Qwen/Qwen3-30B-A3B-GGUF:Q4_K_M"
    assert parameters == {"num_ctx": "8192", "num_gpu": "49", "num_thread": "8"}
    assert any("first 20 layers in RAM" in c for c in comments) and any("OLLAMA_KV_CACHE_TYPE=q8_0" in c
                                                                         for c in comments)
    assert _flags(lmstudio_argv(local, MOE_SPLIT, 48)) == {local.path: "", "--context-length": "8192",
                                                           "--gpu": "max"}
    half = Placement("Q4_K_M", 18, 0, "f16", "f16", True, 4096, True, 1, 1, 10.0)
    assert _flags(lmstudio_argv(local, half, 35))["--gpu"] == "0.50"
    cpu = Placement("Q4_K_M", 0, 0, "f16", "f16", True, 4096, True, 1, 0, 10.0)
    assert _flags(lmstudio_argv(local, cpu, 35))["--gpu"] == "off"
    assert "LM Studio's load settings" in render("lmstudio", local, MOE_SPLIT, 8, 48)


def test_plan_exports_to_stdout_or_a_file_and_refuses_nonsense(tiny_dense: Path, tmp_path: Path) -> None:
    result = run_cli("plan", "--gguf", str(tiny_dense), "--ctx", "512", "--no-calibrate", "--export", "llama-server")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[0] == "llama-server" and _flags(argv)["-m"] == str(tiny_dense) and _flags(argv)["-c"] == "512"
    planned = json.loads(run_cli("plan", "--gguf", str(tiny_dense), "--ctx", "512", "--no-calibrate", "--json").stdout)
    assert _flags(argv)["-ngl"] == str(planned["n_gpu_layers"]) and _flags(argv)["-ctk"] == planned["type_k"]
    modelfile = tmp_path / "Modelfile"
    written = run_cli("plan", "--gguf", str(tiny_dense), "--ctx", "512", "--no-calibrate", "--export", "ollama",
                      "--export-out", str(modelfile))
    assert written.returncode == 0, written.stderr
    origin, parameters, _ = _modelfile(modelfile.read_text())
    assert origin == str(tiny_dense) and parameters["num_ctx"] == "512"
    assert_refused(run_cli("plan", "--gguf", str(tiny_dense), "--export", "vllm"), "not a tool it writes for",
                   "llama-server, ollama, lmstudio")
    assert_refused(run_cli("plan", "--gguf", str(tiny_dense), "--export-out", str(modelfile)),
                   "--export-out goes with --export")
