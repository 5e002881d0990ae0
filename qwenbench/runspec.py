"""What one benchmark run asks llama.cpp to do: settings, the test list, and what comes back.

Shared by the parent (which validates and records) and the child (which runs llama.cpp), and sent
between them as JSON, so everything here is plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UsageError

FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
LOAD_MODES = {"auto": -1, "none": 0, "mmap": 1, "mlock": 2, "mmap+mlock": 3, "dio": 4}
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS: more aborts llama.cpp
# KV cache types llama.cpp accepts, with their ggml type ids
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20,
               "bf16": 30}


@dataclass(frozen=True)
class RunSettings:
    """Every llama.cpp parameter that changes speed, set explicitly (llama-bench's defaults)."""

    model_path: str
    n_prompt: tuple[int, ...] = (512,)
    n_gen: tuple[int, ...] = (128,)
    n_depth: tuple[int, ...] = (0,)
    repetitions: int = 5
    n_threads: int = 1
    n_gpu_layers: int = -1
    n_cpu_moe: int = 0
    rpc_servers: tuple[str, ...] = ()  # HOST:PORT of llama.cpp RPC workers, whose devices -ngl offloads to
    tensor_split: tuple[float, ...] = ()  # offloaded layers' shares per device (llama.cpp's -ts); empty: its own
    n_batch: int = 2048
    n_ubatch: int = 512
    n_ctx: int = 0  # 0: per test, n_prompt + n_gen + n_depth, as llama-bench sizes it
    flash_attn: str = "auto"
    type_k: str = "f16"
    type_v: str = "f16"
    load_mode: str = "auto"  # llama.cpp's: auto, none (no mmap), mmap, mlock, mmap+mlock, dio
    # the CPU backend's repacked weight copies (llama.cpp's use_extra_bufts; llama-bench -nr turns them off)
    repack: bool = True
    ttft: bool = True
    think: bool = False
    warmup: bool = True
    # a deep test's fill decoded anew every repetition (older llama-bench), not restored from the state saved after
    # the first: much slower, and peak memory without that saved copy of the filled cache
    refill_depth: bool = False
    seed: int = 42

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        for key in ("n_prompt", "n_gen", "n_depth", "rpc_servers", "tensor_split"):
            if key not in data:
                continue
            data[key] = tuple(data[key])
        return cls(**data)

    def validate(self) -> None:
        """Reject nonsense before any process starts; each message names the flag."""
        checks = [
            (all(p >= 0 for p in self.n_prompt), "-p/--n-prompt must be >= 0"),
            (all(n >= 0 for n in self.n_gen), "-n/--n-gen must be >= 0"),
            (all(d >= 0 for d in self.n_depth), "-d/--n-depth must be >= 0"),
            (self.repetitions >= 1, "-r/--repetitions must be >= 1"),
            (1 <= self.n_threads <= MAX_THREADS, f"-t/--threads must be from 1 to {MAX_THREADS}"),
            (self.n_gpu_layers >= -1, "-ngl/--n-gpu-layers must be >= -1 (-1: all layers)"),
            (self.n_cpu_moe >= 0, "--n-cpu-moe must be >= 0"),
            (all(share >= 0 for share in self.tensor_split) and (not self.tensor_split or sum(self.tensor_split) > 0),
             "-ts/--tensor-split shares must be >= 0, not all 0"),
            (self.n_batch >= 1, "-b/--batch-size must be >= 1"),
            (self.n_ubatch >= 1, "-ub/--ubatch-size must be >= 1"),
            (self.n_ctx >= 0, "-c/--ctx-size must be >= 0 (0: sized per test)"),
            (self.flash_attn in FLASH_ATTN, f"-fa/--flash-attn must be one of {', '.join(FLASH_ATTN)}"),
            (self.type_k in CACHE_TYPES, f"-ctk/--cache-type-k must be one of {', '.join(CACHE_TYPES)}"),
            (self.load_mode in LOAD_MODES, f"--load-mode must be one of {', '.join(LOAD_MODES)}"),
            (self.type_v in CACHE_TYPES, f"-ctv/--cache-type-v must be one of {', '.join(CACHE_TYPES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if not self.tests():
            raise UsageError("nothing to measure: every -p and -n is 0 and the TTFT test is off",
                             hint="give -p or -n a positive size")
        if self.type_v != "f16" and self.flash_attn == "off":
            raise UsageError("a quantized V cache needs flash attention", hint="use -fa on or -fa auto")
        for test in self.tests():
            if self.n_ctx and test.n_ctx_needed > self.n_ctx:
                raise UsageError(f"{test.name} needs a context of {test.n_ctx_needed} tokens, -c is {self.n_ctx}",
                                 hint="raise -c, or leave it at 0 to size each test")

    def tests(self) -> list[TestSpec]:
        """The tests in llama-bench's order: for each depth, prompt sizes then generation sizes."""
        tests = []
        for depth in self.n_depth:
            tests += [TestSpec("pp", p, 0, depth) for p in self.n_prompt if p > 0]
            tests += [TestSpec("tg", 0, n, depth) for n in self.n_gen if n > 0]
        if self.ttft:
            tests.append(TestSpec("ttft", 0, 1, 0))
        return tests


@dataclass(frozen=True)
class TestSpec:
    kind: str  # pp, tg or ttft
    n_prompt: int
    n_gen: int
    n_depth: int

    @property
    def name(self) -> str:
        """llama-bench's test names (pp512, tg128, pp512 @ d4096), plus ttft."""
        base = {"pp": f"pp{self.n_prompt}", "tg": f"tg{self.n_gen}"}.get(self.kind, self.kind)
        return f"{base} @ d{self.n_depth}" if self.n_depth else base

    @property
    def n_ctx_needed(self) -> int:
        return self.n_prompt + self.n_gen + self.n_depth


@dataclass(frozen=True)
class TestResult:
    """What the child measured for one test."""

    test: TestSpec
    samples_ns: tuple[int, ...]
    n_ctx: int
    n_tokens: int  # tokens per sample that count towards t/s (prompt tokens for ttft)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"test": asdict(self.test), "samples_ns": list(self.samples_ns), "n_ctx": self.n_ctx,
                "n_tokens": self.n_tokens, "extra": self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TestResult:
        return cls(TestSpec(**data["test"]), tuple(data["samples_ns"]), data["n_ctx"], data["n_tokens"],
                   data.get("extra", {}))


QUALITY_ROLES = ("reference", "test")


@dataclass(frozen=True)
class QualitySettings:
    """One quality measurement for the child: the reference's role tokenizes the corpus and writes each chunk's
    compact next-token distributions into reference_dir; a test's reads them back and scores its own against
    them. `run` carries the model and llama.cpp's settings (its test list is not used)."""

    run: RunSettings
    role: str
    reference_dir: str
    corpus_path: str = ""  # the reference's: the text to tokenize
    n_ctx: int = 512
    n_chunks: int = 0  # 0: every whole chunk of the corpus
    top_k: int = 512  # quality.DEFAULT_TOP_K (that module imports numpy: not at the CLI's start)

    def to_json(self) -> dict[str, Any]:
        return {"quality": {**asdict(self), "run": self.run.to_json()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QualitySettings:
        body = dict(data["quality"])
        return cls(**{**body, "run": RunSettings.from_json(body["run"])})

    def validate(self) -> None:
        checks = [
            (self.role in QUALITY_ROLES, f"role must be one of {', '.join(QUALITY_ROLES)}"),
            (self.n_ctx >= 8, "--ctx must be at least 8 tokens"),
            (self.n_chunks >= 0, "--chunks must be >= 0 (0: all)"),
            (self.top_k >= 1, "--top-k must be >= 1"),
            (1 <= self.run.n_threads <= MAX_THREADS, f"-t/--threads must be from 1 to {MAX_THREADS}"),
            (self.run.n_gpu_layers >= -1, "-ngl/--n-gpu-layers must be >= -1 (-1: all layers)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
