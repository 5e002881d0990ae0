"""A plan written for the tools people run: the llama-server command line, an Ollama Modelfile, LM Studio's `lms
load` command. Pure: text from a placement and where the model is; the CLI writes it.

Each tool takes only part of a plan: what one cannot express (Ollama has no setting for MoE experts kept in RAM
and takes the KV type and flash attention from its server's environment; LM Studio's command line offloads a share
of the layers) is said in a comment beside the settings it can take.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .planner import Placement

TARGETS = ("llama-server", "ollama", "lmstudio")


@dataclass(frozen=True)
class ModelSource:
    """Where the planned model is: a local file, or a Hub repo and quant (llama-server's -hf, Ollama's hf.co/)."""

    path: str = ""
    repo: str = ""
    quant: str = ""
    ollama: str = ""  # the Ollama model the path is the blob of: a Modelfile builds on it by name

    def hub_reference(self) -> str:
        return f"{self.repo}:{self.quant}"


def llama_server_argv(source: ModelSource, placement: Placement, n_threads: int, n_layer: int) -> list[str]:
    """llama-server with the plan's placement, context, KV type and threads (-hf downloads a Hub model itself)."""
    model = ["-m", source.path] if source.path else ["-hf", source.hub_reference()]
    argv = ["llama-server", *model, "-c", str(placement.n_ctx), "-ngl", str(_gpu_layers(placement, n_layer)),
            "-t", str(n_threads), "-fa", "on" if placement.flash_attn else "off",
            "-ctk", placement.type_k, "-ctv", placement.type_v, "--jinja"]
    if placement.n_cpu_moe:
        argv += ["--n-cpu-moe", str(placement.n_cpu_moe)]
    if placement.tensor_split:
        argv += ["-ts", ",".join(f"{share:g}" for share in placement.tensor_split)]
    if not placement.use_mmap:
        argv.append("--no-mmap")
    return argv


def ollama_modelfile(source: ModelSource, placement: Placement, n_threads: int, n_layer: int) -> str:
    """An Ollama Modelfile: FROM the file (or hf.co/repo:quant), and num_ctx, num_gpu (layers) and num_thread."""
    origin = source.ollama or source.path or f"hf.co/{source.hub_reference()}"
    lines = ["# written by qwenbench plan --export ollama; `ollama create NAME -f Modelfile`", f"FROM {origin}",
             f"PARAMETER num_ctx {placement.n_ctx}", f"PARAMETER num_gpu {_gpu_layers(placement, n_layer)}",
             f"PARAMETER num_thread {n_threads}"]
    if placement.n_cpu_moe:
        lines.append(f"# the plan keeps the experts of the first {placement.n_cpu_moe} layers in RAM: Ollama has no "
                     "setting for that")
    if placement.type_k != "f16" or placement.flash_attn:
        lines.append(f"# KV cache {placement.type_k}, flash attention: Ollama's server takes them from its "
                     f"environment (OLLAMA_KV_CACHE_TYPE={placement.type_k} OLLAMA_FLASH_ATTENTION=1)")
    return "\n".join(lines) + "\n"


def lmstudio_argv(source: ModelSource, placement: Placement, n_layer: int) -> list[str]:
    """LM Studio's `lms load`: the model, its context length and the share of its layers offloaded (--gpu)."""
    layers = _gpu_layers(placement, n_layer)
    share = "off" if not layers else "max" if layers >= n_layer + 1 else f"{layers / (n_layer + 1):.2f}"
    return ["lms", "load", source.path or source.repo, "--context-length", str(placement.n_ctx), "--gpu", share]


def render(target: str, source: ModelSource, placement: Placement, n_threads: int, n_layer: int) -> str:
    """The export for one of TARGETS, as text to write to a file or a terminal."""
    if target == "llama-server":
        return shlex.join(llama_server_argv(source, placement, n_threads, n_layer)) + "\n"
    if target == "ollama":
        return ollama_modelfile(source, placement, n_threads, n_layer)
    notes = []
    if placement.n_cpu_moe:
        notes.append(f"# experts of the first {placement.n_cpu_moe} layers in RAM: LM Studio's load settings "
                     "(Force Model Expert Weights onto CPU) take it, its command line does not")
    if placement.type_k != "f16":
        notes.append(f"# KV cache {placement.type_k}: set it in LM Studio's load settings")
    return "\n".join([*notes, shlex.join(lmstudio_argv(source, placement, n_layer))]) + "\n"


def _gpu_layers(placement: Placement, n_layer: int) -> int:
    """Layers offloaded, as the tools count them: llama.cpp's n_layer + 1 (the output layer) for all."""
    return min(placement.n_gpu_layers, n_layer + 1)
