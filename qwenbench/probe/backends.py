"""Which llama.cpp backends this llama-cpp-python installation can use, read from its libraries.

Found without importing llama_cpp (so `qwenbench probe` works where the wheel is broken): each GPU
backend ships as its own ggml library next to libllama.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

_BACKEND_LIBS = {"cuda": "CUDA", "metal": "Metal", "vulkan": "Vulkan", "hip": "HIP", "sycl": "SYCL",
                 "opencl": "OpenCL", "blas": "BLAS", "rpc": "RPC", "cpu": "CPU"}
# a llama-cpp-python build for each GPU backend (plan --backend, the rebuild hints): the ggml backend it adds and
# its CMake flag; cpu adds none
BUILDS = {"cuda": ("CUDA", "-DGGML_CUDA=on"), "vulkan": ("Vulkan", "-DGGML_VULKAN=on"),
          "metal": ("Metal", "-DGGML_METAL=on"), "hip": ("HIP", "-DGGML_HIP=on"), "cpu": ("", "")}


def build_for_gpu(vendor: str, kind: str = "discrete") -> str | None:
    """The build that drives a GPU: CUDA for NVIDIA, Metal for Apple, HIP for a discrete AMD card, Vulkan for an
    AMD APU or an Intel GPU; None for a vendor no build drives."""
    if vendor == "amd":
        return "hip" if kind == "discrete" else "vulkan"
    return {"nvidia": "cuda", "apple": "metal", "intel": "vulkan"}.get(vendor)


def installed_version() -> str | None:
    """The installed llama-cpp-python's version (it pins the llama.cpp commit it vendors); None: not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def install_command(build: str) -> str:
    """The command that rebuilds this llama-cpp-python for `build` (cuda, vulkan, metal, hip, cpu), RPC kept on
    (qwenbench worker, --rpc) and pip's wheel cache bypassed (it ignores CMAKE_ARGS)."""
    installed = installed_version()
    pinned = f"=={installed}" if installed else ""
    flags = " ".join(f for f in (BUILDS[build][1], "-DGGML_RPC=ON") if f)
    return f'CMAKE_ARGS="{flags}" pip install --force-reinstall --no-cache-dir "llama-cpp-python{pinned}"'


GPU_BACKEND_FOR_VENDOR = {"nvidia": {"CUDA", "Vulkan"}, "amd": {"HIP", "Vulkan"}, "intel": {"Vulkan", "SYCL"},
                          "apple": {"Metal"}}


def backends_from_filenames(names: list[str]) -> tuple[str, ...]:
    """Backends from the library file names in llama_cpp/lib (libggml-cuda.so, ggml-metal.dll, ...)."""
    found = set()
    for name in names:
        match = re.match(r"^(?:lib)?ggml-([a-z]+)", name.lower())
        if match and match.group(1) in _BACKEND_LIBS:
            found.add(_BACKEND_LIBS[match.group(1)])
    if any(re.match(r"^(?:lib)?(?:llama|ggml)\.", n.lower()) for n in names):
        found.add("CPU")  # single-library builds carry the CPU backend inside libggml
    order = list(_BACKEND_LIBS.values())
    return tuple(sorted(found, key=order.index))


def llama_cpp_lib_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def read_backends() -> tuple[tuple[str, ...], list[str]]:
    lib_dir = llama_cpp_lib_dir()
    if lib_dir is None:
        return (), ["llama-cpp-python is not installed"]
    if not lib_dir.is_dir():
        return (), [f"llama-cpp-python has no library folder at {lib_dir}"]
    return backends_from_filenames([p.name for p in lib_dir.iterdir()]), []


def missing_backend_hint(vendors: set[str], backends: tuple[str, ...]) -> list[str]:
    """For each GPU vendor present whose backend this build lacks, the reinstall command."""
    hints = []
    for vendor in sorted(vendors):
        build = build_for_gpu(vendor)
        if build is not None and not GPU_BACKEND_FOR_VENDOR[vendor] & set(backends):
            hints.append(f"a {vendor} GPU is present but this llama-cpp-python is built for "
                         f"{', '.join(backends) or 'nothing usable'}: reinstall with {install_command(build)}"
                         + (" (or vulkan for an APU)" if vendor == "amd" else ""))
    return hints
