"""The child process that runs llama.cpp: load once, then time each test the way llama-bench does.

The only module that imports llama_cpp. Started as `python -m qwenbench.runner`, it reads
RunSettings as JSON on stdin (or a list of them, run one model after another: calibration's
probes) and writes one JSON event per line on the protocol channel (the
original stdout); everything llama.cpp prints goes to stderr, which the parent keeps as a log.

Timing follows llama-bench (tools/llama-bench/llama-bench.cpp): a fresh context per test sized
n_prompt + n_gen + n_depth, one warm-up, then per repetition a cleared KV cache, an untimed depth
fill (decoded once, restored from its saved state after), and the timed decode of random token ids
(no sampling, no logits read) ending in llama_synchronize. The low-level API is used because
llama_cpp.Llama's generate/eval add a sampler, prefix caching and Python bookkeeping to what is timed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .lifetime import die_with_parent
from .memtrack import peak_rss_of
from .runspec import CACHE_TYPES, FLASH_ATTN, LOAD_MODES, QualitySettings, RunSettings, TestResult, TestSpec
from .vocab import TTFT_PROMPT

Emit = Callable[[dict[str, Any]], None]

# llama-cpp-python does not expose llama.cpp's build commit; these are the vendored commits.
KNOWN_LLAMA_CPP_COMMITS = {"0.3.36": "0c1e570"}


class BenchmarkAbort(Exception):
    """A failure inside llama.cpp that ends the run with a message for the user."""


def load_llama_cpp() -> Any:
    import llama_cpp
    from llama_cpp import _logger

    # INFO keeps llama.cpp's buffer-size lines in the log without its per-graph debug spam
    _logger.logger.setLevel(logging.INFO)
    return llama_cpp


def _lib_dir(llama_cpp_module: Any) -> Path:
    return Path(llama_cpp_module.__file__).resolve().parent / "lib"


def _load_lib(lib_dir: Path, stem: str) -> ctypes.CDLL | None:
    """The ggml library libllama itself loaded. Wheels ship libggml.so, .so.0 and .so.0.x as copies, not links, and
    libllama loads the soname (.so.0): opening another copy would be a second ggml with a registry of its own,
    whose RPC devices llama.cpp never sees."""
    for name in (f"lib{stem}.so.0", f"lib{stem}.so", f"lib{stem}.0.dylib", f"lib{stem}.dylib", f"{stem}.dll"):
        candidate = lib_dir / name
        if candidate.exists():
            return ctypes.CDLL(str(candidate))
    return None


def backend_names(llama_cpp_module: Any) -> list[str]:
    """Names of the ggml backends this llama-cpp-python build registered (CPU, CUDA, Metal, ...)."""
    ggml = _load_lib(_lib_dir(llama_cpp_module), "ggml")
    if ggml is None:
        return []
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
    names = []
    for index in range(ggml.ggml_backend_reg_count()):
        name = ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(index))
        if name:
            names.append(name.decode())
    return names


def _ggml(llama_cpp_module: Any) -> ctypes.CDLL:
    ggml = _load_lib(_lib_dir(llama_cpp_module), "ggml")
    if ggml is None:
        raise BenchmarkAbort("llama-cpp-python's ggml library was not found beside it")
    pointer, text = ctypes.c_void_p, ctypes.c_char_p
    for name, argtypes, restype in (
            ("ggml_backend_reg_by_name", [text], pointer),
            ("ggml_backend_reg_get_proc_address", [pointer, text], pointer),
            ("ggml_backend_register", [pointer], None), ("ggml_backend_dev_count", [], ctypes.c_size_t),
            ("ggml_backend_dev_get", [ctypes.c_size_t], pointer), ("ggml_backend_dev_name", [pointer], text),
            ("ggml_backend_dev_description", [pointer], text), ("ggml_backend_dev_by_name", [text], pointer),
            ("ggml_backend_dev_memory", [pointer, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
             None)):
        function = getattr(ggml, name)
        function.argtypes, function.restype = argtypes, restype
    return ggml


def _rpc_function(ggml: ctypes.CDLL, name: str, prototype: Any) -> Any:
    reg = ggml.ggml_backend_reg_by_name(b"RPC")
    address = ggml.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not address:
        raise BenchmarkAbort("this llama-cpp-python was built without RPC (GGML_RPC=ON)")
    return prototype(address)


def devices(llama_cpp_module: Any) -> list[dict[str, Any]]:
    """Every device ggml has registered: name, description, free and total bytes."""
    ggml = _ggml(llama_cpp_module)
    found = []
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        ggml.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        found.append({"name": ggml.ggml_backend_dev_name(device).decode(),
                      "description": (ggml.ggml_backend_dev_description(device) or b"").decode(errors="replace"),
                      "free_bytes": free.value, "total_bytes": total.value})
    return found


def register_rpc_servers(llama_cpp_module: Any, endpoints: tuple[str, ...]) -> None:
    """Make each worker's devices llama.cpp devices (RPC0[A], RPC0[B], ... in this order), as common/arg.cpp's --rpc
    does. The endpoints were probed by the parent: llama.cpp aborts the process on one it cannot reach."""
    ggml = _ggml(llama_cpp_module)
    add_server = _rpc_function(ggml, "ggml_backend_rpc_add_server",
                               ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p))
    for endpoint in endpoints:
        reg = add_server(endpoint.encode())
        if not reg:
            raise BenchmarkAbort(f"RPC worker {endpoint} serves no device")
        ggml.ggml_backend_register(reg)


def serve_rpc(llama_cpp_module: Any, endpoint: str, n_threads: int, cache_dir: str | None,
              device_names: tuple[str, ...]) -> None:
    """Serve this machine's devices (the named ones; else its accelerators, else its CPU, as tools/rpc does) to
    llama.cpp RPC clients at endpoint. Blocks for good: the process is stopped by a signal."""
    ggml = _ggml(llama_cpp_module)
    start_server = _rpc_function(ggml, "ggml_backend_rpc_start_server", ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)))
    chosen = [ggml.ggml_backend_dev_by_name(name.encode()) for name in serving_devices(llama_cpp_module,
                                                                                       device_names)]
    array = (ctypes.c_void_p * len(chosen))(*chosen)
    start_server(endpoint.encode(), cache_dir.encode() if cache_dir else None, n_threads, len(chosen), array)


def serving_devices(llama_cpp_module: Any, device_names: tuple[str, ...]) -> list[str]:
    """The devices a worker serves: those named (each must exist), else every non-CPU one, else the CPU."""
    names = [d["name"] for d in devices(llama_cpp_module) if not d["name"].startswith("RPC")]
    if device_names:
        unknown = [name for name in device_names if name not in names]
        if unknown:
            raise BenchmarkAbort(f"no device {', '.join(unknown)} here; there are: {', '.join(names)}")
        return list(device_names)
    accelerators = [name for name in names if name != "CPU"]
    return accelerators or ["CPU"]


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]


@contextlib.contextmanager
def _threadpool(llama_cpp: Any, ctx: Any, n_threads: int) -> Iterator[None]:
    """Attach a persistent CPU threadpool as llama-bench does (llama-cpp-python has no binding)."""
    lib_dir = _lib_dir(llama_cpp)
    base, cpu = _load_lib(lib_dir, "ggml-base"), _load_lib(lib_dir, "ggml-cpu")
    if base is None or cpu is None or not hasattr(cpu, "ggml_threadpool_new"):
        yield
        return
    base.ggml_threadpool_params_default.restype = _ThreadpoolParams
    base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
    cpu.ggml_threadpool_new.restype = ctypes.c_void_p
    cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
    cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
    llama_lib = llama_cpp.llama_cpp._lib
    llama_lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    llama_lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    params = base.ggml_threadpool_params_default(n_threads)
    pool = cpu.ggml_threadpool_new(ctypes.byref(params))
    if not pool:
        raise BenchmarkAbort(f"llama.cpp could not create a threadpool of {n_threads} threads")
    llama_lib.llama_attach_threadpool(ctx, pool, None)
    try:
        yield
    finally:
        llama_lib.llama_detach_threadpool(ctx)
        cpu.ggml_threadpool_free(pool)


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def expert_overrides(llama_cpp: Any, n_cpu_moe: int) -> ctypes.Array | None:
    """llama-bench's --n-cpu-moe: the experts of layers 0..n-1 in host RAM, as tensor buffer-type overrides."""
    cpu = _load_lib(_lib_dir(llama_cpp), "ggml-cpu")
    if cpu is None or n_cpu_moe <= 0:
        return None
    cpu.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
    buft = cpu.ggml_backend_cpu_buffer_type()
    entries = [_BuftOverride(rf"blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps".encode(), buft)
               for i in range(n_cpu_moe)]
    return (_BuftOverride * (n_cpu_moe + 1))(*entries, _BuftOverride(None, None))


class Bench:
    """One loaded model and the timed tests on it."""

    def __init__(self, settings: RunSettings, emit: Emit) -> None:
        self.settings = settings
        self.emit = emit
        self.ll = load_llama_cpp()
        self.C = self.ll.llama_cpp
        self.rng = random.Random(settings.seed)
        self.model = None
        self.llama_ns = 0  # time spent inside llama.cpp calls: the rest of a run is the harness's overhead
        self._depth_states: dict[int, ctypes.Array] = {}  # a filled cache's state, by depth, for every test there

    def load(self) -> dict[str, Any]:
        C, s = self.C, self.settings
        C.llama_backend_init()
        if s.rpc_servers:
            register_rpc_servers(self.ll, s.rpc_servers)
        mparams = C.llama_model_default_params()
        mparams.n_gpu_layers = s.n_gpu_layers
        mparams.load_mode = LOAD_MODES[s.load_mode]
        mparams.use_extra_bufts = s.repack
        if s.tensor_split:
            # the planner's shares per device; llama.cpp's default splits by free memory (no caps known)
            self._tensor_split = (ctypes.c_float * C.llama_max_devices())(*s.tensor_split)
            mparams.tensor_split = self._tensor_split
        # on a CPU-only build every tensor is in host RAM already; an override there would only
        # take the experts out of the repacked CPU buffer and change what is measured
        # (llama_supports_gpu_offload is true in any build with RPC compiled in: ask for a device instead)
        offload = any(d["name"] != "CPU" for d in devices(self.ll))
        self._overrides = expert_overrides(self.ll, s.n_cpu_moe) if offload else None
        if self._overrides is not None:
            mparams.tensor_buft_overrides = ctypes.cast(self._overrides, ctypes.c_void_p)
        start = time.perf_counter_ns()
        self.model = C.llama_model_load_from_file(s.model_path.encode(), mparams)
        load_ns = time.perf_counter_ns() - start
        self.llama_ns += load_ns
        if not self.model:
            raise BenchmarkAbort("llama.cpp could not load the model (its log says why)")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        desc = ctypes.create_string_buffer(256)
        C.llama_model_desc(self.model, desc, len(desc))
        version = getattr(self.ll, "__version__", "unknown")
        return {
            "load_ms": load_ns / 1e6,
            "model_type": desc.value.decode(errors="replace"),
            "model_size": int(C.llama_model_size(self.model)),
            "model_n_params": int(C.llama_model_n_params(self.model)),
            "n_vocab": self.n_vocab,
            "backends": backend_names(self.ll),
            "devices": devices(self.ll),
            "gpu_offload": offload,
            "llama_cpp_python_version": version,
            "llama_cpp_commit": KNOWN_LLAMA_CPP_COMMITS.get(version, "unknown"),
        }

    @contextlib.contextmanager
    def context(self, n_ctx: int) -> Iterator[Any]:
        C, s = self.C, self.settings
        cparams = C.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = s.n_batch
        cparams.n_ubatch = s.n_ubatch
        cparams.n_threads = s.n_threads
        cparams.n_threads_batch = s.n_threads
        cparams.type_k = CACHE_TYPES[s.type_k]
        cparams.type_v = CACHE_TYPES[s.type_v]
        cparams.flash_attn_type = FLASH_ATTN[s.flash_attn]
        cparams.offload_kqv = True
        cparams.op_offload = True
        cparams.embeddings = False
        cparams.swa_full = False
        start = time.perf_counter_ns()
        ctx = C.llama_init_from_model(self.model, cparams)
        self.llama_ns += time.perf_counter_ns() - start
        if not ctx:
            raise BenchmarkAbort(f"llama.cpp could not create a context of {n_ctx} tokens (out of memory?)")
        try:
            with _threadpool(self.ll, ctx, s.n_threads):
                yield ctx
        finally:
            start = time.perf_counter_ns()
            C.llama_free(ctx)
            self.llama_ns += time.perf_counter_ns() - start

    def _decode(self, ctx: Any, tokens: list[int]) -> None:
        array = (self.C.llama_token * len(tokens))(*tokens)
        result = self.C.llama_decode(ctx, self.C.llama_batch_get_one(array, len(tokens)))
        if result != 0:
            raise BenchmarkAbort(f"llama_decode failed with code {result}")

    def _random_tokens(self, n: int, first: bool) -> list[int]:
        tokens = [self.rng.randrange(self.n_vocab) for _ in range(n)]
        if first and tokens and self.C.llama_vocab_get_add_bos(self.vocab):
            tokens[0] = self.C.llama_vocab_bos(self.vocab)
        return tokens

    def _prompt_batches(self, n_prompt: int) -> list[list[int]]:
        step = self.settings.n_batch
        return [self._random_tokens(min(step, n_prompt - i), i == 0) for i in range(0, n_prompt, step)]

    def run_prompt(self, ctx: Any, n_prompt: int) -> int:
        batches = self._prompt_batches(n_prompt)  # drawn before the clock: the clock times llama.cpp only
        start = time.perf_counter_ns()
        for batch in batches:
            self._decode(ctx, batch)
        self.C.llama_synchronize(ctx)
        elapsed = time.perf_counter_ns() - start
        self.llama_ns += elapsed
        return elapsed

    def run_gen(self, ctx: Any, n_gen: int) -> int:
        tokens = self._random_tokens(n_gen, True)
        start = time.perf_counter_ns()
        for token in tokens:
            self._decode(ctx, [token])
            self.C.llama_synchronize(ctx)
        elapsed = time.perf_counter_ns() - start
        self.llama_ns += elapsed
        return elapsed

    def _fill_depth(self, ctx: Any, n_depth: int) -> None:
        """Fill the cache with n_depth tokens, untimed: decoded the first time, then restored from the state saved
        after it, for every repetition and every test at that depth, so deep tests cost one fill, not one per
        repetition. The timed tokens see the same cache either way (random tokens). --refill-depth decodes it anew
        each time: the saved copy is memory that a peak RSS would otherwise include."""
        start = time.perf_counter_ns()
        try:
            saved = None if self.settings.refill_depth else self._depth_states.get(n_depth)
            if saved is not None and self.C.llama_state_seq_set_data(ctx, saved, len(saved), 0) == len(saved):
                self.emit({"event": "depth_filled", "n_depth": n_depth, "restored": True})
                return
            self.emit({"event": "depth_filled", "n_depth": n_depth, "restored": False})
            for batch in self._prompt_batches(n_depth):
                self._decode(ctx, batch)
            self.C.llama_synchronize(ctx)
            if self.settings.refill_depth:
                return
            size = self.C.llama_state_seq_get_size(ctx, 0)
            state = (ctypes.c_uint8 * size)()
            if size and self.C.llama_state_seq_get_data(ctx, state, size, 0) == size:
                self._depth_states[n_depth] = state
        finally:
            self.llama_ns += time.perf_counter_ns() - start

    def _clear(self, ctx: Any) -> None:
        start = time.perf_counter_ns()
        self.C.llama_memory_clear(self.C.llama_get_memory(ctx), False)
        self.llama_ns += time.perf_counter_ns() - start

    def run_kernel_test(self, test: TestSpec, index: int, total: int) -> TestResult:
        s = self.settings
        n_ctx = s.n_ctx or test.n_ctx_needed
        with self.context(n_ctx) as ctx:
            self._clear(ctx)
            if s.warmup:
                if test.n_prompt:
                    self.run_prompt(ctx, test.n_prompt)
                if test.n_gen:
                    self.run_gen(ctx, 1)
            samples = []
            for rep in range(s.repetitions):
                self._clear(ctx)
                if test.n_depth:
                    self._fill_depth(ctx, test.n_depth)
                elapsed = self.run_prompt(ctx, test.n_prompt) if test.n_prompt else 0
                elapsed += self.run_gen(ctx, test.n_gen) if test.n_gen else 0
                samples.append(elapsed)
                self.emit({"event": "sample", "test": test.name, "index": index, "total": total,
                           "rep": rep + 1, "reps": s.repetitions, "ns": elapsed})
        return TestResult(test, tuple(samples), n_ctx, test.n_prompt + test.n_gen)

    def _chat_prompt(self) -> str | None:
        template = self.C.llama_model_chat_template(self.model, None)
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:
            raw = self.C.llama_vocab_get_text(self.vocab, token)
            return raw.decode(errors="replace") if raw else ""

        formatter = Jinja2ChatFormatter(template.decode(errors="replace"),
                                        eos_token=text(self.C.llama_vocab_eos(self.vocab)),
                                        bos_token=text(self.C.llama_vocab_bos(self.vocab)))
        return formatter(messages=[{"role": "user", "content": TTFT_PROMPT}],
                         enable_thinking=self.settings.think).prompt

    def _tokenize(self, text: str) -> list[int]:
        data = text.encode()
        capacity = len(data) + 16
        buffer = (self.C.llama_token * capacity)()
        n = self.C.llama_tokenize(self.vocab, data, len(data), buffer, capacity, True, True)
        if n < 0:
            raise BenchmarkAbort("tokenizing the chat prompt failed")
        return list(buffer[:n])

    def _first_token(self, ctx: Any, prompt: str) -> int:
        """Tokenize, prefill and pick the first generated token greedily: what a chat user waits for."""
        start = time.perf_counter_ns()
        try:
            return self._first_token_untimed(ctx, prompt)
        finally:
            self.llama_ns += time.perf_counter_ns() - start

    def _first_token_untimed(self, ctx: Any, prompt: str) -> int:
        tokens = self._tokenize(prompt)
        step = self.settings.n_batch
        for i in range(0, len(tokens), step):
            self._decode(ctx, tokens[i:i + step])
        self.C.llama_synchronize(ctx)
        logits = self.C.llama_get_logits_ith(ctx, -1)
        import numpy as np

        # zero-copy view: greedy sampling costs what a C sampler would, not a Python loop
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def run_ttft(self, test: TestSpec, index: int, total: int) -> TestResult | None:
        prompt = self._chat_prompt()
        if prompt is None:
            self.emit({"event": "note", "message": "the model has no chat template: TTFT test skipped"})
            return None
        n_prompt_tokens = len(self._tokenize(prompt))
        n_ctx = max(self.settings.n_ctx, n_prompt_tokens + 1)
        with self.context(n_ctx) as ctx:
            self._clear(ctx)
            if self.settings.warmup:
                self._first_token(ctx, prompt)
            samples = []
            for rep in range(self.settings.repetitions):
                self._clear(ctx)
                start = time.perf_counter_ns()
                self._first_token(ctx, prompt)
                elapsed = time.perf_counter_ns() - start
                samples.append(elapsed)
                self.emit({"event": "sample", "test": test.name, "index": index, "total": total,
                           "rep": rep + 1, "reps": self.settings.repetitions, "ns": elapsed})
        return TestResult(test, tuple(samples), n_ctx, n_prompt_tokens,
                          {"prompt_tokens": n_prompt_tokens, "think": self.settings.think})

    def close(self) -> None:
        if self.model:
            start = time.perf_counter_ns()
            self.C.llama_model_free(self.model)
            self.llama_ns += time.perf_counter_ns() - start
            self.model = None


def run(settings: RunSettings, emit: Emit) -> None:
    bench = Bench(settings, emit)
    try:
        emit({"event": "loading"})
        emit({"event": "loaded", **bench.load()})
        tests = settings.tests()
        for index, test in enumerate(tests):
            emit({"event": "test_started", "test": test.name, "index": index, "total": len(tests)})
            if test.kind == "ttft":
                result = bench.run_ttft(test, index, len(tests))
            else:
                result = bench.run_kernel_test(test, index, len(tests))
            if result is not None:
                emit({"event": "test_done", "result": result.to_json()})
    finally:
        bench.close()
        # our own high-water mark, after exec: the parent's sampling can miss the last moments
        emit({"event": "timing", "llama_ns": bench.llama_ns, "peak_rss_bytes": peak_rss_of("self")})


_SCORE_ROWS = 32  # positions scored together: 32 x 262,144 float64s are 64 MB


class CorpusError(BenchmarkAbort):
    """The corpus cannot give one chunk: the parent names the file and what to do."""


class _QualityPass:
    """One model's logits over the corpus's chunks, scored as llama-perplexity scores them: each chunk decoded from
    an empty cache, logits kept only for its second half, read batch by batch (n_batch rows at most in memory)."""

    def __init__(self, bench: Bench, settings: QualitySettings) -> None:
        self.bench, self.q = bench, settings
        C = bench.C
        self.bos = C.llama_vocab_bos(bench.vocab) if C.llama_vocab_get_add_bos(bench.vocab) else None
        self.decode_ns = 0  # of the chunk in progress: llama_decode alone, not the scoring

    def tokenize(self, text: str) -> list[int]:
        """The whole corpus at once, BOS added where the vocabulary adds one, special tokens as plain text (as
        llama-perplexity's common_tokenize(ctx, prompt, true) does)."""
        C, data = self.bench.C, text.encode()
        capacity = len(data) + 16
        buffer = (C.llama_token * capacity)()
        n = C.llama_tokenize(self.bench.vocab, data, len(data), buffer, capacity, True, False)
        if n < 0:
            raise BenchmarkAbort("tokenizing the corpus failed")
        return list(buffer[:n])

    def chunk_logits(self, ctx: Any, tokens: Any, index: int) -> Iterator[tuple[int, Any]]:
        """Decode chunk `index` and yield (first scored row, logits of some scored positions), block by block: each
        block a view of llama.cpp's buffer, valid until the next decode."""
        import numpy as np

        from .quality import chunk_tokens, first_scored

        C, n_ctx = self.bench.C, self.q.n_ctx
        chunk = chunk_tokens(tokens, index, n_ctx, self.bos)
        first, step = first_scored(n_ctx), self.bench.settings.n_batch
        self.bench._clear(ctx)
        batch = C.llama_batch_init(step, 0, 1)
        try:
            for begin in range(0, n_ctx, step):
                size = min(step, n_ctx - begin)
                batch.n_tokens = size
                for k in range(size):
                    pos = begin + k
                    batch.token[k], batch.pos[k], batch.n_seq_id[k] = chunk[pos], pos, 1
                    batch.seq_id[k][0] = 0
                    # the last position predicts nothing inside the chunk: llama-perplexity reads no logits for it
                    batch.logits[k] = first <= pos < n_ctx - 1
                n_out = sum(1 for pos in range(begin, begin + size) if first <= pos < n_ctx - 1)
                start = time.perf_counter_ns()
                result = C.llama_decode(ctx, batch)
                C.llama_synchronize(ctx)
                self.decode_ns += time.perf_counter_ns() - start
                if result != 0:
                    raise BenchmarkAbort(f"llama_decode failed with code {result}")
                if n_out:
                    logits = np.ctypeslib.as_array(C.llama_get_logits(ctx), shape=(n_out, self.bench.n_vocab))
                    row = max(begin, first) - first
                    # a few rows at a time: the float64 arithmetic over a 262,144-token vocabulary (Gemma 3) would
                    # need gigabytes for a batch's 256 rows at once
                    for at in range(0, n_out, _SCORE_ROWS):
                        yield row + at, logits[at:at + _SCORE_ROWS]
        finally:
            C.llama_batch_free(batch)

    def run(self) -> None:
        import numpy as np

        from .quality import chunk_count, chunk_targets, compact, score, scored_per_chunk
        from .qualitycache import ReferenceCache

        q, emit = self.q, self.bench.emit
        cache = ReferenceCache(Path(q.reference_dir))
        if q.role == "reference":
            tokens = np.asarray(self._reference_tokens(cache), dtype=np.int32)
        else:
            manifest = cache.manifest()
            if manifest.get("n_vocab") != self.bench.n_vocab:
                raise BenchmarkAbort(f"this model's vocabulary has {self.bench.n_vocab} tokens, the reference's "
                                     f"{manifest.get('n_vocab')}: it is another model")
            tokens = cache.tokens()
        available = chunk_count(len(tokens), q.n_ctx)
        total = chunk_count(len(tokens), q.n_ctx, q.n_chunks)
        start_at = cache.chunks_done() if q.role == "reference" else 0
        emit({"event": "quality_started", "role": q.role, "n_tokens": len(tokens), "chunks": total,
              "chunks_available": available, "chunks_cached": min(start_at, total)})
        per_chunk = scored_per_chunk(q.n_ctx)
        with self.bench.context(q.n_ctx) as ctx:
            for index in range(min(start_at, total), total):
                self.decode_ns = 0
                targets = chunk_targets(tokens, index, q.n_ctx)
                if q.role == "reference":
                    parts = [compact(logits, targets[row:row + len(logits)], q.top_k)
                             for row, logits in self.chunk_logits(ctx, tokens, index)]
                    reference = _join_references(parts)
                    cache.write_chunk(index, reference)
                    emit({"event": "quality_chunk", "role": q.role, "index": index, "total": total,
                          "ns": self.decode_ns, "n_scored": per_chunk,
                          "tail_mass": float(reference.tail_mass.mean())})
                    continue
                reference = cache.read_chunk(index)
                scores = [score(logits, targets[row:row + len(logits)], _slice(reference, row, len(logits)))
                          for row, logits in self.chunk_logits(ctx, tokens, index)]
                emit({"event": "quality_chunk", "role": q.role, "index": index, "total": total,
                      "ns": self.decode_ns, "n_scored": per_chunk, "tail_mass": float(reference.tail_mass.mean()),
                      "kld": [float(v) for s in scores for v in s.kld],
                      "nll": [float(v) for s in scores for v in s.nll],
                      "nll_ref": [float(v) for s in scores for v in s.nll_ref],
                      "same_top": [bool(v) for s in scores for v in s.same_top]})

    def _reference_tokens(self, cache: Any) -> list[int]:
        """The corpus's tokens: those of an earlier, interrupted pass at this key, else tokenized anew."""
        from .quality import chunk_count

        if cache.manifest():
            return list(cache.tokens())
        text = Path(self.q.corpus_path).read_text(encoding="utf-8")
        tokens = self.tokenize(text)
        if chunk_count(len(tokens), self.q.n_ctx) < 1:
            raise CorpusError(f"the corpus tokenizes to {len(tokens)} tokens, fewer than one chunk of "
                              f"{self.q.n_ctx}")
        cache.start(tokens, self.bench.n_vocab, self.q.n_ctx)
        return tokens


def _join_references(parts: list[Any]) -> Any:
    import numpy as np

    from .quality import CompactReference

    return CompactReference(*(np.concatenate([getattr(p, name) for p in parts])
                              for name in ("top_ids", "top_logprobs", "tail_mass", "target_logprob")))


def _slice(reference: Any, row: int, n: int) -> Any:
    from .quality import CompactReference

    return CompactReference(reference.top_ids[row:row + n], reference.top_logprobs[row:row + n],
                            reference.tail_mass[row:row + n], reference.target_logprob[row:row + n])


def run_quality(settings: QualitySettings, emit: Emit) -> None:
    """A quality pass (reference or test) of one model over the corpus."""
    bench = Bench(settings.run, emit)
    try:
        emit({"event": "loading"})
        emit({"event": "loaded", **bench.load()})
        _QualityPass(bench, settings).run()
    finally:
        bench.close()
        emit({"event": "timing", "llama_ns": bench.llama_ns, "peak_rss_bytes": peak_rss_of("self")})


def requantize(source: str, target: str, file_type: int, n_threads: int, quant: str) -> None:
    """llama-quantize's work through its library call: `source` to `target` as `file_type` (a llama_ftype),
    requantizing already quantized tensors (a synthetic reference's copies at lower precision). A synthetic
    source's own qwenbench.quant is overridden with `quant`: the copy is that quant, not its source's."""
    C = load_llama_cpp().llama_cpp
    params = C.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = file_type
    params.allow_requantize = True
    overrides = (C.llama_model_kv_override * 2)()
    overrides[0].tag = C.LLAMA_KV_OVERRIDE_TYPE_STR
    overrides[0].key = b"qwenbench.quant"
    overrides[0].value.val_str = quant.encode()
    params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(C.llama_model_kv_override))
    if C.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)) != 0:
        raise BenchmarkAbort(f"llama.cpp could not quantize {source}")


def run_batch(batch: list[RunSettings], emit: Emit) -> None:
    """Several models one after another in this one process (calibration probes): a model's events follow its
    `model` event, so the parent knows which results are whose, and no process start is paid per model."""
    for index, settings in enumerate(batch):
        emit({"event": "model", "index": index, "total": len(batch)})
        run(settings, emit)


def main() -> int:
    parent = os.environ.get("QWENBENCH_PARENT_PID", "")
    if parent.isdigit():
        die_with_parent(int(parent))  # never run on, gigabytes resident and every core busy, as an orphan
    # keep the protocol channel private: anything C code prints to stdout lands in the log instead
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: dict[str, Any]) -> None:
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    try:
        payload = json.loads(sys.stdin.read())
        if isinstance(payload, dict) and "quality" in payload:
            run_quality(QualitySettings.from_json(payload), emit)
        elif isinstance(payload, dict) and "quantize" in payload:
            requantize(**payload["quantize"])
        elif isinstance(payload, list):
            run_batch([RunSettings.from_json(item) for item in payload], emit)
        else:
            run(RunSettings.from_json(payload), emit)
    except BenchmarkAbort as exc:
        emit({"event": "error", "message": str(exc), "corpus": isinstance(exc, CorpusError)})
        return 3
    emit({"event": "finished"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
