"""serve and bench-serve: our OpenAI-compatible server on a tiny synthetic model on a free loopback port,
queried over real HTTP; bench-serve's numbers checked for consistency; the errors a user meets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from qwenbench.serve import free_port
from qwenbench.servebench import _Stream, percentile

from .conftest import QWENBENCH, default_signals, run_cli


@pytest.fixture(scope="module")
def server(tiny_dense: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("serve")
    cache = tmp_path_factory.mktemp("serve-cache")
    process = subprocess.Popen([QWENBENCH, "serve", "--gguf", str(tiny_dense), "--port", str(port), "--ctx", "1024"],
                               cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "QWENBENCH_CACHE_DIR": str(cache)},
                               preexec_fn=default_signals)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1]
    yield url
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and f"{url}/v1" in stdout and "equivalent: llama-server" in stdout
    # its log and config go to qwenbench's cache, and it says where; nothing lands in the current folder
    log = cache / "logs" / f"server-{port}.log"
    assert f"server log: {log}" in stderr and log.exists()
    assert (log.parent / f"qwenbench-server-{port}.json").exists() and not list(workdir.iterdir())
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(port) in " ".join(p.info["cmdline"] or [])
                and "llama_cpp.server" in " ".join(p.info["cmdline"] or [])]  # the server went with it


def test_serve_answers_chat_completions(server: str) -> None:
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}).encode()
    request = urllib.request.Request(f"{server}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.loads(response.read())
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= reply["usage"]["completion_tokens"] <= 8
    assert reply["usage"]["prompt_tokens"] > 1  # the chat template was applied around the message


def test_bench_serve_numbers_add_up(server: str, tmp_path: Path) -> None:
    result = run_cli("bench-serve", "--url", server, "--concurrency", "1,4", "--requests", "4", "--max-tokens", "16",
                     "--out", str(tmp_path / "serve.csv"), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["test"] for r in rows] == ["serve_c1", "serve_c4"]
    for row in rows:
        metrics = json.loads(row["serve_metrics"])
        assert row["status"] == "ok" and metrics["failed"] == 0 and metrics["requests"] == 4
        assert metrics["ttft_ms_p50"] <= metrics["ttft_ms_p90"] <= metrics["ttft_ms_p99"]
        assert metrics["e2e_ms_p50"] >= metrics["ttft_ms_p50"] and metrics["e2e_ms_p99"] >= metrics["ttft_ms_p99"]
        assert metrics["ttfvt_ms_p50"] >= metrics["ttft_ms_p50"]
        assert 4 <= metrics["output_tokens"] <= 4 * 16
        assert metrics["token_throughput"] == pytest.approx(metrics["output_tokens"] / metrics["wall_s"], rel=1e-3)
        assert row["avg_ts"] == metrics["token_throughput"] and row["ttft_ms"] == metrics["ttft_ms_p50"]
        assert server in row["server"] and "uvicorn" in row["server"]
    serial, parallel = (json.loads(r["serve_metrics"]) for r in rows)
    assert parallel["ttft_ms_p90"] > serial["ttft_ms_p50"]  # four at once queue on a one-slot server


def test_serve_errors(server: str, tiny_dense: Path) -> None:
    port = server.rsplit(":", 1)[1]
    busy = run_cli("serve", "--gguf", str(tiny_dense), "--port", port)
    assert busy.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in busy.stderr
    nobody = run_cli("bench-serve", "--url", "http://127.0.0.1:9", "--requests", "1")
    assert nobody.returncode == 2 and "no OpenAI-compatible server answers at http://127.0.0.1:9" in nobody.stderr
    not_url = run_cli("bench-serve", "--url", "localhost:8080")
    assert not_url.returncode == 2 and "is not an http(s) URL" in not_url.stderr


def test_serve_dry_run_pins_every_setting(tiny_moe: Path) -> None:
    result = run_cli("serve", "--gguf", str(tiny_moe), "--port", str(free_port()), "--ctx", "2048", "--dry-run",
                     "--json", "--backend", "llama-cpp-python")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    argv = plan["llama_server"]
    for flag in ("-m", "-c", "-ngl", "-t", "-b", "-ub", "-fa", "-ctk", "-ctv", "--host", "--port"):
        assert flag in argv
    assert argv[argv.index("-c") + 1] == "2048" and argv[argv.index("--host") + 1] == "127.0.0.1"
    model = plan["llama_cpp_python_config"]["models"][0]
    assert model["n_ctx"] == 2048 and plan["llama_cpp_python_config"]["interrupt_requests"] is False
    assert any("cannot keep MoE experts in RAM" in note for note in plan["notes"])


def test_thinking_is_told_apart_from_visible_text() -> None:
    stream = _Stream()
    deltas = [{"content": "<think>"}, {"content": "let me see"}, {"content": "</think>"}, {"content": "\n\n"},
              {"content": "Paris"}]
    assert [stream.visible(d) for d in deltas] == [(True, False), (True, False), (True, False), (True, False),
                                                   (True, True)]
    assert _Stream().visible({"reasoning_content": "hmm"}) == (True, False)
    assert _Stream().visible({"content": "Hi <think>x</think>"}) == (True, True)
    assert _Stream().visible({}) == (False, False)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([7.0], 99) == 7.0
