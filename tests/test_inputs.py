"""Hostile but realistic input, through the installed command: every value is checked where it enters (one
clear error, exit 2, no traceback, before any work), user text is never read as markup, odd terminals and
encodings do not crash a finished run, and nothing is written where the user did not ask."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qwenbench.config import load_config
from qwenbench.errors import ConfigError
from qwenbench.harness import _log_excerpt
from qwenbench.results import append_records, read_records

from .conftest import run_cli
from .test_results_and_metrics import make_record


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, no traceback, and every needle said (our `error:` line or click's `Invalid value` box)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "--gguf", "x.gguf", "--timeout", "nan"], ["'--timeout'", "finite number > 0"]),
    (["run", "--gguf", "x.gguf", "--timeout", "-1"], ["'--timeout'", "finite number > 0"]),
    (["run", "--gguf", "x.gguf", "-ctv", "bogus"], ["'-ctv' / '--cache-type-v'", "'bogus' is not a KV cache type"]),
    (["run", "--gguf", "x.gguf", "-ctk", "bogus"], ["'-ctk' / '--cache-type-k'"]),
    (["run", "--model", "qwen3-0.6b", "--models-dir", "/nonexistent"], ["'--models-dir'", "does not exist"]),
    (["run", "--gguf", "x.gguf", "-ts", "3,x"], ["-ts/--tensor-split: 'x' is not a share", "e.g. -ts 3,1"]),
    (["run", "--gguf", "x.gguf", "-ts", "0,0"], ["-ts/--tensor-split: every share is 0"]),
    (["run", "--gguf", "x.gguf", "-ts", "1,-1"], ["'-1' is not a share"]),
    (["plan", "--model", "qwen3-0.6b", "--min-tg", "-1"], ["'--min-tg'", "finite number >= 0"]),
    (["plan", "--model", "qwen3-0.6b", "--min-tg", "nan"], ["'--min-tg'"]),
    (["plan", "--model", "qwen3-0.6b", "--min-tg", "inf"], ["'--min-tg'"]),
    (["synth", "--model", "qwen3-0.6b", "--seed", "-1"], ["'--seed'"]),
    (["synth", "--model", "qwen3-0.6b", "--seed", "99999999999999999999"], ["'--seed'"]),
    (["pull", "--model", "qwen3-0.6b", "--quant", "  "], ["'--quant'", "is empty"]),
    (["serve", "--gguf", "x.gguf", "--dry-run", "-ctk", "bogus"], ["'-ctk' / '--cache-type'"]),
    (["serve", "--gguf", "x.gguf", "--host", "not-an-address"], ["--host 'not-an-address' is not an address"]),
    (["serve", "--gguf", "x.gguf", "--dry-run", "-ngl", "-5"], ["-ngl/--n-gpu-layers must be >= -1"]),
    (["serve", "--gguf", "x.gguf", "--dry-run", "-t", "0"], ["-t/--threads must be from 1 to 512"]),
    (["chat", "--gguf", "x.gguf", "-ngl", "-5"], ["-ngl/--n-gpu-layers must be >= -1"]),
    (["bench-serve", "--url", "http://127.0.0.1:9", "--timeout", "nan"], ["'--timeout'"]),
    (["compare", "."], ["is a directory"]),
    (["report", "."], ["is a directory"]),
    (["bench", "--config", "."], ["is a directory"]),
    (["run", "--gguf", "x.gguf", "--out", "."], ["is a directory"]),
])
def test_nonsense_is_refused_where_it_enters(args: list[str], needles: list[str], tmp_path: Path) -> None:
    assert_refused(run_cli(*args, cwd=tmp_path), *needles)


def test_files_and_folders_in_the_wrong_place(tmp_path: Path) -> None:
    existing = tmp_path / "existing.txt"
    existing.write_text("x")
    assert_refused(run_cli("synth", "--model", "qwen3-0.6b", "--out", str(tmp_path)), "'--out'", "is a directory")
    assert_refused(run_cli("report", str(existing), "--out", str(existing)), "'--out'", "is a file")
    results = tmp_path / "results.csv"
    append_records(results, [make_record()])
    assert_refused(run_cli("report", str(results), "--out", str(existing / "sub")), "cannot make the report folder")
    as_cache = run_cli("synth", "--model", "qwen3-0.6b", "--layers", "1", env={"QWENBENCH_CACHE_DIR": str(existing)})
    assert_refused(as_cache, f"the cache folder {existing} is a file", "QWENBENCH_CACHE_DIR")
    noise = tmp_path / "noise.toml"
    noise.write_bytes(bytes(range(256)) * 4)
    assert_refused(run_cli("bench", "--config", str(noise)), "not valid TOML")


def test_a_results_file_that_cannot_be_written_is_refused_before_the_run(tiny_dense: Path) -> None:
    result = run_cli("run", "--gguf", str(tiny_dense), "--out", "/proc/qwenbench/results.csv")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "/proc/qwenbench/results.csv" in result.stderr and "--out" in result.stderr
    assert "rows appended" not in result.stdout  # refused before anything was measured


def test_suite_nonsense_names_the_field(tmp_path: Path) -> None:
    nan = tmp_path / "nan.toml"
    nan.write_text('[suite]\ntimeout_s = nan\n[[model]]\nkey = "qwen3-0.6b"\n')
    with pytest.raises(ConfigError, match=r"suite.timeout_s: must be a finite number > 0, got nan"):
        load_config(nan)
    twice = tmp_path / "twice.toml"
    twice.write_text('[[model]]\nkey = "qwen3-0.6b"\n[[model]]\nkey = "qwen3-4b"\n[[model]]\nkey = "qwen3-0.6b"\n'
                     'quant = "q4_k_m"\n')
    with pytest.raises(ConfigError, match=r"model\[2\] repeats model\[0\]"):
        load_config(twice)
    empty = tmp_path / "empty.toml"
    empty.write_text('[suite]\nname = "x"\n')
    assert_refused(run_cli("bench", "--config", str(empty)), "no [[model]] entries")  # brackets kept, not markup


def test_user_text_is_never_read_as_markup(tiny_dense: Path, tmp_path: Path) -> None:
    missing = run_cli("run", "--gguf", "a[/b]c.gguf", cwd=tmp_path)
    assert_refused(missing, "a[/b]c.gguf: no such file")
    bracketed = tmp_path / "[x].gguf"
    bracketed.write_bytes(tiny_dense.read_bytes())
    out = tmp_path / "new folder" / "[r].csv"  # a folder that does not exist yet is made
    result = run_cli("run", "--gguf", str(bracketed), "-p", "8", "-n", "4", "-r", "1", "--no-ttft", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"rows appended to {out}" in result.stdout
    assert [r["model_filename"] for r in read_records(out)] == ["[x].gguf", "[x].gguf"]


def test_odd_terminals_and_encodings(tiny_dense: Path) -> None:
    narrow = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "q4_k_m ", "--offline", env={"COLUMNS": "0"})
    assert narrow.returncode == 1 and "no Q4_K_M GGUF" in narrow.stderr  # said, and the quant trimmed
    ascii_only = run_cli("models", env={"PYTHONIOENCODING": "ascii"})
    assert ascii_only.returncode == 0 and "qwen3-30b-a3b" in ascii_only.stdout and "Traceback" not in ascii_only.stderr
    latin1 = run_cli("chat", "--gguf", str(tiny_dense), "--max-tokens", "4", "--ctx", "512", input=b"caf\xe9\n")
    assert latin1.returncode == 0, latin1.stderr
    assert "Traceback" not in latin1.stderr and "tokens" in latin1.stdout  # a reply, and its stats line


class _BrokenServer(BaseHTTPRequestHandler):
    """An 'OpenAI-compatible' server whose stream is not chat chunks, or that fails every request."""

    mode = "garbage"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, "application/json", json.dumps({"data": [{"id": "broken"}]}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "500":
            self._send(500, "text/plain", b"internal error")
        else:
            self._send(200, "text/event-stream", b"data: 42\n\ndata: [DONE]\n\n")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(params=["garbage", "500"])
def broken_server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_BrokenServer,), {"mode": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bench_serve_counts_a_broken_server_as_failed(broken_server: str, tmp_path: Path) -> None:
    out = tmp_path / "serve.csv"
    result = run_cli("bench-serve", "--url", broken_server, "--concurrency", "1,2", "--requests", "2",
                     "--out", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    rows = read_records(out)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("2 of 2 requests failed" in r["error"] for r in rows)
    assert any(word in rows[0]["error"] for word in ("not a chat completion chunk", "HTTP 500"))


def test_a_crash_reason_is_the_telling_line_not_stack_addresses(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("llama_model_loader: loaded meta data\n"
                   "/x/ggml/src/ggml-cpu/ggml-cpu.c:3021: GGML_ASSERT(n_threads > 0) failed\n"
                   "/x/lib/libggml-base.so(+0x15f3b) [0x7f3c2a1b5f3b]\n"
                   "/x/lib/libggml-base.so(ggml_abort+0x15f)[0x7f3c2a1b633f]\n"
                   "#3  0x00007f3c2a1b633f in ggml_abort () from /x/lib/libggml-base.so\n")
    excerpt = _log_excerpt(log)
    assert "GGML_ASSERT(n_threads > 0) failed" in excerpt and "0x" not in excerpt
