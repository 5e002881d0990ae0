"""User-level latency of an OpenAI-compatible server (ours, llama-server, Ollama, LM Studio): a fixed, seeded
set of chat prompts sent at given concurrency levels, each streamed, timed from the client's side.

Per request: time to the first token of any kind (thinking included), to the first visible token (after
Qwen3's thinking), the gaps between tokens, time per output token after the first, and end to end. Per level:
their p50/p90/p99, requests and tokens per second, and how many requests failed or timed out (counted,
never dropped). The HTTP client is the standard library's: streaming server-sent events needs nothing more.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlparse

from . import __version__
from .errors import UsageError
from .machine import MachineInfo
from .modelfile import ModelIdentity
from .results import SCHEMA_VERSION, Record
from .thinking import ThinkSplitter

PROMPTS = (
    "Explain in three sentences why the sky is blue.",
    "Write a haiku about a cold morning.",
    "What is the difference between a list and a tuple in Python?",
    "Give me five names for a small coffee shop.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How do I reverse a string in JavaScript?",
    "List three benefits of regular exercise.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "What causes the seasons on Earth?",
    "Write a short product description for a reusable water bottle.",
    "Explain what a hash table is to a beginner.",
    "Suggest a weekend itinerary for a rainy day at home.",
    "What is the capital of Australia, and why was it chosen?",
    "Write a polite email declining a meeting invitation.",
    "Describe the water cycle in simple terms.",
    "Give two arguments for and two against remote work.",
)


@dataclass(frozen=True)
class RequestResult:
    ok: bool
    error: str
    ttft_s: float | None  # first token of any kind
    ttfvt_s: float | None  # first visible token (after the thinking)
    e2e_s: float
    n_tokens: int
    gaps_s: tuple[float, ...]  # between consecutive tokens

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first."""
        if self.ttft_s is None or self.n_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.n_tokens - 1)


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: tuple[RequestResult, ...]
    wall_s: float

    @property
    def ok(self) -> tuple[RequestResult, ...]:
        return tuple(r for r in self.requests if r.ok)

    @property
    def failed(self) -> int:
        return len(self.requests) - len(self.ok)

    @property
    def output_tokens(self) -> int:
        return sum(r.n_tokens for r in self.ok)

    def metrics(self) -> dict[str, float | int | None]:
        ok = self.ok
        out: dict[str, float | int | None] = {
            "requests": len(self.requests), "failed": self.failed,
            "timed_out": sum(1 for r in self.requests if r.error.startswith("timed out")),
            "output_tokens": self.output_tokens, "wall_s": round(self.wall_s, 4),
            "request_throughput": round(len(ok) / self.wall_s, 4) if self.wall_s else None,
            "token_throughput": round(self.output_tokens / self.wall_s, 4) if self.wall_s else None}
        series = {"ttft_ms": [r.ttft_s for r in ok], "ttfvt_ms": [r.ttfvt_s for r in ok],
                  "itl_ms": [g for r in ok for g in r.gaps_s], "tpot_ms": [r.tpot_s for r in ok],
                  "e2e_ms": [r.e2e_s for r in ok]}
        for name, values in series.items():
            present = [v * 1000 for v in values if v is not None]
            for p in (50, 90, 99):
                out[f"{name}_p{p}"] = round(percentile(present, p), 3) if present else None
        return out


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile, linear between the closest ranks (numpy's default), of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(p) - 1]


class _Stream:
    """Token deltas of one streamed chat completion, told apart as thinking or visible text."""

    def __init__(self) -> None:
        self._splitter = ThinkSplitter()

    def visible(self, delta: dict) -> tuple[bool, bool]:
        """(any token, a visible token) in one delta: reasoning_content (llama-server) or <think> text (Qwen3
        through a plain chat template) is a token the user does not see."""
        if delta.get("reasoning_content"):
            return True, False
        text = delta.get("content") or ""
        if not text:
            return False, False
        return True, any(kind == "text" and piece.strip() for kind, piece in self._splitter.feed(text))


def _connect(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the server of `url`, and the path prefix its API lives under."""
    parsed = urlparse(url)
    connection_type = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    return connection_type(parsed.hostname or "127.0.0.1", parsed.port, timeout=timeout_s), parsed.path.rstrip("/")


def _delta(payload: str) -> dict:
    """The first choice's delta of one streamed chunk; ValueError for anything that is not a chat chunk."""
    chunk = json.loads(payload)
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        raise ValueError(f"not a chat completion chunk: {payload[:80]!r}")
    first = choices[0] if choices else {}
    delta = first.get("delta") if isinstance(first, dict) else None
    if delta is not None and not isinstance(delta, dict):
        raise ValueError(f"not a chat completion chunk: {payload[:80]!r}")
    return delta or {}


def chat_request(url: str, model: str, prompt: str, max_tokens: int, timeout_s: float, seed: int) -> RequestResult:
    """One streamed chat completion, timed from before the request is sent."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "stream": True, "temperature": 0.0, "seed": seed})
    start = time.perf_counter()
    ttft = ttfvt = None
    stamps: list[float] = []
    stream = _Stream()
    try:
        connection, prefix = _connect(url, timeout_s)
        connection.request("POST", f"{prefix}/v1/chat/completions", body,
                           {"Content-Type": "application/json", "Accept": "text/event-stream"})
        response = connection.getresponse()
        if response.status != 200:
            detail = response.read(300).decode(errors="replace").strip()
            return RequestResult(False, f"HTTP {response.status}: {detail}", None, None,
                                 time.perf_counter() - start, 0, ())
        for raw in response:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            any_token, visible = stream.visible(_delta(payload))
            now = time.perf_counter() - start
            if any_token:
                stamps.append(now)
                ttft = ttft if ttft is not None else now
            if visible and ttfvt is None:
                ttfvt = now
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError
        end = time.perf_counter() - start
        connection.close()
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            return RequestResult(False, f"timed out after {timeout_s:g} s", ttft, ttfvt,
                                 time.perf_counter() - start, len(stamps), ())
        return RequestResult(False, f"{type(exc).__name__}: {exc}", ttft, ttfvt, time.perf_counter() - start,
                             len(stamps), ())
    except (ValueError, http.client.HTTPException) as exc:
        return RequestResult(False, f"bad response: {exc}", ttft, ttfvt, time.perf_counter() - start, len(stamps), ())
    gaps = tuple(b - a for a, b in itertools.pairwise(stamps))
    if not stamps:
        return RequestResult(False, "the server sent no tokens", None, None, time.perf_counter() - start, 0, ())
    return RequestResult(True, "", ttft, ttfvt, end, len(stamps), gaps)


def run_level(url: str, model: str, concurrency: int, n_requests: int, max_tokens: int, *, seed: int = 0,
              timeout_s: float = 300, on_done: Callable[[RequestResult], None] | None = None) -> LevelResult:
    """n_requests seeded prompts, `concurrency` of them in flight at once (each worker sends its next as soon
    as one ends, as concurrent users do)."""
    if concurrency < 1 or n_requests < 1:
        raise UsageError("concurrency and requests must be >= 1")
    rng = random.Random(seed)
    prompts = [rng.choice(PROMPTS) for _ in range(n_requests)]
    results: list[RequestResult] = []
    lock = threading.Lock()
    queue = list(enumerate(prompts))

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                index, prompt = queue.pop(0)
            result = chat_request(url, model, prompt, max_tokens, timeout_s, seed + index)
            with lock:
                results.append(result)
            if on_done is not None:
                on_done(result)

    start = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, n_requests))]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return LevelResult(concurrency, tuple(results), time.perf_counter() - start)


def server_identity(url: str, timeout_s: float = 10) -> tuple[str, str]:
    """(model id the server serves, what it says it is: its Server header)."""
    try:
        connection, prefix = _connect(url, timeout_s)
        connection.request("GET", f"{prefix}/v1/models")
        response = connection.getresponse()
        data = json.loads(response.read() or b"{}")
        server = response.getheader("Server") or ""
        connection.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise UsageError(f"no OpenAI-compatible server answers at {url} ({type(exc).__name__}: {exc})",
                         hint="check --url (e.g. http://127.0.0.1:8080), or start one with qwenbench serve") from None
    models = data.get("data") if isinstance(data, dict) else None
    first = models[0] if isinstance(models, list) and models and isinstance(models[0], dict) else {}
    return str(first.get("id", "")), server


def level_record(level: LevelResult, *, url: str, model_id: str, server: str, max_tokens: int, seed: int,
                 model: ModelIdentity, machine: MachineInfo, run_id: str) -> Record:
    """One results row for a concurrency level, in the CSV family of kernel rows."""
    metrics = level.metrics()
    tpot = metrics["tpot_ms_p50"]
    failed = level.failed
    status = "ok" if level.ok else "failed"
    error = "" if not failed else f"{failed} of {len(level.requests)} requests failed: " + "; ".join(
        dict.fromkeys(r.error for r in level.requests if not r.ok))[:300]
    return Record(
        schema_version=SCHEMA_VERSION, run_id=run_id, suite="", mode="server", job_key="",
        test_time=datetime.now(timezone.utc).isoformat(timespec="seconds"), status=status, error=error,
        test=f"serve_c{level.concurrency}", n_prompt=0, n_gen=max_tokens, n_depth=0, n_ctx=0, n_batch=0, n_ubatch=0,
        n_threads=0, n_gpu_layers=0, n_cpu_moe=0, flash_attn="", type_k="", type_v="", load_mode="",
        repetitions=len(level.requests), avg_ns=None, stddev_ns=None, avg_ts=metrics["token_throughput"],
        stddev_ts=None, median_ts=round(1000 / tpot, 4) if tpot else None, samples_ns=(), samples_ts=(),
        ttft_ms=metrics["ttft_ms_p50"], load_ms=None, peak_rss_bytes=None, peak_vram_bytes=None,
        predicted_host_bytes=None, predicted_vram_bytes=None, host_bytes_per_token=None, gpu_bytes_per_token=None,
        ram_bandwidth_gbps=None, gpu_bandwidth_gbps=None, model_key=model.model_key,
        model_filename=model.filename, model_type=model_id, quant=model.quant, model_size=model.size,
        model_n_params=model.n_params, model_n_params_active=model.n_params_active, is_moe=model.is_moe,
        weights=model.weights, model_sha256=model.sha256, model_repo=model.repo, model_revision=model.revision,
        machine_id=machine.machine_id, hostname=machine.hostname, cpu_model=machine.cpu_model,
        n_cpu_physical=machine.n_cpu_physical, ram_total_bytes=machine.ram_total_bytes,
        gpu_names=";".join(machine.gpu_names), backends="", llama_cpp_commit="", llama_cpp_python_version="",
        qwenbench_version=__version__, server=f"{url} {model_id} {server}".strip(),
        serve_metrics=json.dumps({**metrics, "seed": seed}, sort_keys=True))
