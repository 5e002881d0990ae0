"""llama.cpp RPC: endpoints as users write them, the pre-flight check of a worker over the wire protocol (against
peers that refuse, stall or speak another version), and real workers on loopback serving real llama.cpp runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from qwenbench.errors import UsageError
from qwenbench.fit import RunConfig, estimate_memory
from qwenbench.gguf_info import read_model_header
from qwenbench.results import read_records
from qwenbench.rpc import RPC_PROTO_VERSION, Endpoint, RpcError, parse_endpoints, parse_size, probe_endpoint
from qwenbench.rpcworker import Worker, WorkerInfo
from qwenbench.serve import ServerError, ServerPlan, check_placement

from .conftest import QWENBENCH, default_signals, run_cli


def test_endpoints_parse_with_caps_and_ipv6() -> None:
    endpoints = parse_endpoints("127.0.0.1:50052, worker.lan:50053@12GiB,[::1]:7000@512MiB")
    assert [e.address for e in endpoints] == ["127.0.0.1:50052", "worker.lan:50053", "[::1]:7000"]
    assert [e.memory_cap_bytes for e in endpoints] == [None, 12 * 2**30, 512 * 2**20]
    assert parse_size("1.5G") == int(1.5 * 2**30)
    assert parse_size("4096") == 4096


@pytest.mark.parametrize("text, fragment", [
    ("127.0.0.1", "not an RPC endpoint"), ("host:port", "not an RPC endpoint"), (":50052", "not an RPC endpoint"),
    ("127.0.0.1:70000", "not an RPC endpoint"), ("127.0.0.1:1@lots", "not a size"), (" , ", "names no endpoint"),
    ("127.0.0.1:1,127.0.0.1:1", "named twice"),
])
def test_bad_endpoints_are_plain_errors(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment) as caught:
        parse_endpoints(text)
    assert caught.value.hint


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _peer(reply: bytes | None) -> Iterator[Endpoint]:
    """A TCP peer on loopback that reads one HELLO and answers `reply` (None: never answers)."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(1 + 8 + 24)
            if reply is not None:
                connection.sendall(struct.pack("<Q", len(reply)) + reply)
            done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Endpoint("127.0.0.1", server.getsockname()[1])
    finally:
        done.set()
        thread.join(5)
        server.close()


def test_a_refused_endpoint_is_named() -> None:
    port = _free_port()
    with pytest.raises(RpcError, match=f"127.0.0.1:{port}: connection refused") as caught:
        probe_endpoint(Endpoint("127.0.0.1", port))
    assert "qwenbench worker" in caught.value.hint


def test_another_protocol_version_is_refused_naming_both() -> None:
    with _peer(bytes([6, 2, 0, 0]) + bytes(24)) as endpoint, pytest.raises(RpcError) as caught:
        probe_endpoint(endpoint)
    assert endpoint.address in caught.value.message
    assert "6.2.0" in caught.value.message and "7.0.0" in caught.value.message


def test_a_peer_that_never_answers_times_out() -> None:
    with _peer(None) as endpoint, pytest.raises(RpcError, match="no reply"):
        probe_endpoint(endpoint, timeout_s=0.5)


def test_a_peer_that_is_not_an_rpc_server_is_named() -> None:
    with _peer(b"HTTP/1.1 400 Bad Request\r\n") as endpoint, pytest.raises(RpcError, match="where 28 were expected"):
        probe_endpoint(endpoint)


# ------------------------------------------------------------------------------- real workers on loopback

@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerInfo]:
    with (tmp_path / "worker.log").open("wb") as log, Worker(Endpoint("127.0.0.1", _free_port()), 1, log) as running:
        yield running.start()


def test_a_worker_serves_this_machines_cpu_and_answers_the_probe(worker: WorkerInfo) -> None:
    assert worker.probe.version == RPC_PROTO_VERSION
    assert [d["name"] for d in worker.devices] == ["CPU"]
    # ggml's CPU device reports all of its RAM as free
    assert worker.probe.devices[0].total_bytes >= worker.probe.devices[0].free_bytes > 0
    assert worker.probe.rtt_ms > 0 and worker.probe.upload_mbps > 0
    again = probe_endpoint(worker.endpoint)  # one client after another: the probe's connection was let go
    assert again.version == RPC_PROTO_VERSION


def test_a_port_in_use_is_a_plain_error(worker: WorkerInfo, tmp_path: Path) -> None:
    with (tmp_path / "second.log").open("wb") as log, pytest.raises(UsageError, match="already in use") as caught:
        Worker(worker.endpoint, 1, log).start()
    assert "--port" in caught.value.hint


def _rpc_run(gguf: Path, endpoints: str, out: Path, *extra: str) -> dict:
    result = run_cli("run", "--gguf", str(gguf), "--rpc", endpoints, "-p", "16", "-n", "4", "-r", "1", "--no-ttft",
                     "-t", "1", "--json", "--out", str(out), *extra, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _expected(gguf: Path, n_gpu_layers: int) -> dict[str, int]:
    header = read_model_header(gguf)
    config = RunConfig(n_ctx=20, n_gpu_layers=n_gpu_layers, gpu=True, offload_kind="rpc")
    return estimate_memory(header.table, header.shape(), config, ()).parts


@pytest.mark.parametrize("fixture, layers", [("tiny_dense", 99), ("tiny_dense", 1), ("tiny_moe", 99)])
def test_offloaded_weights_and_kv_land_on_the_worker_as_planned(worker: WorkerInfo, fixture: str, layers: int,
                                                                request: pytest.FixtureRequest, tmp_path: Path) -> None:
    gguf = request.getfixturevalue(fixture)
    report = _rpc_run(gguf, worker.endpoint.address, tmp_path / "rows.csv", "-ngl", str(layers), "-c", "20")
    assert {row["status"] for row in report["rows"]} == {"ok"}
    buffers = report["llama_cpp_buffers"]
    device = f"RPC0[{worker.endpoint.address}]"
    expected = _expected(gguf, layers)
    assert buffers["model"][device] == pytest.approx(expected["gpu_weights"], abs=0.01 * 2**20)
    assert buffers["kv"].get(device, 0) == pytest.approx(expected["gpu_kv"], abs=0.01 * 2**20)
    assert buffers["compute"][device] == pytest.approx(expected["gpu_compute"], rel=0.05)
    # every row says where its weights went (schema 7): the topology, the device's bytes, the link
    row = report["rows"][0]
    assert row["topology"] == "rpc:127.0.0.1"
    placed = json.loads(row["devices"])
    assert [d["name"] for d in placed] == [device] and placed[0]["model_bytes"] == buffers["model"][device]
    assert placed[0]["endpoint"] == worker.endpoint.address and placed[0]["predicted_bytes"] > 0
    [link] = json.loads(row["links"])
    assert link["endpoint"] == worker.endpoint.address and link["rtt_ms"] > 0 and link["upload_mbps"] > 0


def test_a_worker_missing_from_the_run_is_refused_before_loading(worker: WorkerInfo, tiny_dense: Path) -> None:
    port = _free_port()
    result = run_cli("run", "--gguf", str(tiny_dense), "--rpc", f"{worker.endpoint.address},127.0.0.1:{port}",
                     "-p", "16", "-n", "4", "-r", "1", "--no-ttft")
    assert result.returncode != 0
    assert f"127.0.0.1:{port}: connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_worker_command_prints_what_it_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen([QWENBENCH, "worker", "--port", str(port), "-t", "1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_signals,
                               env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert f"RPC worker at 127.0.0.1:{port}: protocol 7.0.0" in lines[0]
        assert lines[1].strip().startswith("CPU:") and "free of" in lines[1]
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(RpcError, match="connection refused"):
        probe_endpoint(Endpoint("127.0.0.1", port))


def test_a_worker_on_another_host_warns_loudly() -> None:
    result = run_cli("worker", "--host", "203.0.113.7", "--port", str(_free_port()), "-t", "1", timeout=60)
    assert "no authentication" in result.stderr
    assert result.returncode != 0 and "not an address of this machine" in result.stderr


def test_a_worker_killed_mid_run_fails_the_rows_naming_it(worker: WorkerInfo, tiny_dense: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    run = subprocess.Popen([QWENBENCH, "run", "--gguf", str(tiny_dense), "--rpc", worker.endpoint.address,
                            "-ngl", "99", "-p", "0", "-n", "256", "-r", "2000", "--no-ttft", "-t", "1", "--out",
                            str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    deadline = time.monotonic() + 120
    while not any("qwenbench.runner" in " ".join(c.cmdline()) for c in psutil.Process(run.pid).children(True)):
        assert time.monotonic() < deadline and run.poll() is None, "the run never started"
        time.sleep(0.1)
    time.sleep(3)  # loaded and generating
    os.kill(worker.pid, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)
    assert "Traceback" not in stderr
    assert run.returncode != 0
    rows = read_records(out)
    assert rows and all(r["status"] != "ok" for r in rows)
    assert f"RPC worker {worker.endpoint.address} stopped answering" in rows[0]["error"]


def test_plan_offloads_to_a_worker_within_its_cap(worker: WorkerInfo, tiny_dense: Path) -> None:
    def plan(endpoint: str) -> dict:
        result = run_cli("plan", "--gguf", str(tiny_dense), "--rpc", endpoint, "--ctx", "512", "--json")
        assert result.returncode == 0, result.stderr
        assert f"RPC worker {worker.endpoint.address}: protocol 7.0.0" in result.stderr
        # a CPU device counts all its RAM as free: the user hears so, unless a cap says what may go there
        assert ("counts all its memory as free" in result.stderr) == ("@" not in endpoint)
        return json.loads(result.stdout)

    free = plan(worker.endpoint.address)
    assert free["fits"] and free["n_gpu_layers"] != 0 and free["predicted_vram_bytes"] > 0
    assert any("on the RPC workers' devices" in reason for reason in free["reasons"])  # no GPU is claimed
    # a worker on loopback competes with this machine for its cores: the plan says its speeds cannot see that
    assert any(f"RPC0[{worker.endpoint.address}] runs on this machine's cores" in r for r in free["reasons"])
    capped = plan(f"{worker.endpoint.address}@64KiB")  # less than any layer with its share of the compute buffer
    assert capped["fits"] and capped["predicted_vram_bytes"] <= 64 * 1024


def test_a_suite_offloads_its_gpu_jobs_to_workers_and_fails_only_those_when_one_is_gone(
        worker: WorkerInfo, tiny_dense: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_dense, tmp_path / "dense.gguf")
    dead = f"127.0.0.1:{_free_port()}"
    for name, endpoint in (("live", worker.endpoint.address), ("dead", dead)):
        (tmp_path / f"{name}.toml").write_text(
            f'[suite]\nname = "{name}"\nmodes = ["cpu", "gpu"]\nn_prompt = [16]\nn_gen = [4]\nrepetitions = 1\n'
            f'ttft = false\nrpc = ["{endpoint}"]\n[[model]]\ngguf = "dense.gguf"\n')
        result = run_cli("bench", "--config", str(tmp_path / f"{name}.toml"), "--out", str(tmp_path / f"{name}.csv"),
                         "--quiet")
        assert "Traceback" not in result.stderr
        rows = {(r["mode"], r["test"]): r for r in read_records(tmp_path / f"{name}.csv")}
        assert rows[("cpu", "pp16")]["status"] == "ok" and "RPC[" not in rows[("cpu", "pp16")]["backends"]
        assert rows[("cpu", "pp16")]["topology"] == "" and rows[("gpu", "pp16")]["topology"] == "rpc:127.0.0.1"
        if name == "live":
            assert result.returncode == 0, result.stderr
            gpu = rows[("gpu", "pp16")]
            assert gpu["status"] == "ok" and gpu["n_gpu_layers"] != 0
            assert f"RPC[{worker.endpoint.address}]" in gpu["backends"]
            assert json.loads(gpu["links"])[0]["endpoint"] == worker.endpoint.address
            # compare keeps the split run apart from one on this machine alone
            compared = run_cli("compare", str(tmp_path / "live.csv"), "--json")
            assert compared.returncode == 0, compared.stderr
            modes = {row["mode"] for row in json.loads(compared.stdout)}
            assert modes == {"cpu", "gpu via rpc:127.0.0.1"}
            # the wire's share of each split test as the speed model prices it over the measured link: a prompt's
            # ubatch pays the round trips and the logits once for all its tokens, a generated token for itself
            assert rows[("cpu", "pp16")]["predicted_network_ms"] is None
            assert 0 < gpu["predicted_network_ms"] < rows[("gpu", "tg4")]["predicted_network_ms"]
            written = run_cli("report", str(tmp_path / "live.csv"), "--out", str(tmp_path / "report"))
            assert written.returncode == 0, written.stderr
            assert "Runs split across machines" in (tmp_path / "report" / "report.md").read_text()
        else:
            assert result.returncode == 1
            assert rows[("gpu", "pp16")]["status"] == "failed"
            assert f"RPC worker {dead}: connection refused" in rows[("gpu", "pp16")]["error"]


def test_serve_offloads_to_a_worker_and_says_where_the_weights_went(worker: WorkerInfo, tiny_dense: Path,
                                                                   tmp_path: Path) -> None:
    port = _free_port()
    address = worker.endpoint.address
    process = subprocess.Popen([QWENBENCH, "serve", "--gguf", str(tiny_dense), "--port", str(port), "--ctx", "512",
                                "--rpc", address, "-ngl", "99", "--backend", "llama-cpp-python", "-t", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals,
                               env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1",
                                    "QWENBENCH_CACHE_DIR": str(tmp_path)})
    try:
        assert process.stdout is not None
        weights = process.stdout.readline()
        assert weights.startswith("weights: ") and f"RPC0[{address}]" in weights, process.stderr.read()
        assert "serving" in process.stdout.readline()
        body = json.dumps({"model": "x", "prompt": "Hello", "max_tokens": 4}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["usage"]["completion_tokens"] >= 1
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    # a worker the plan counts on that the load log shows nothing on stops the server, named
    dead = f"127.0.0.1:{_free_port()}"
    plan = ServerPlan(tiny_dense, "x", "127.0.0.1", port, 512, 99, 0, 1, 512, 512, True, "f16", "f16",
                      (address, dead))
    with pytest.raises(ServerError, match=f"RPC worker {dead} got no weights"):
        check_placement(plan, tmp_path / "logs" / f"server-{port}.log")


def test_chat_offloads_to_a_worker(worker: WorkerInfo, tiny_dense: Path) -> None:
    from .test_chat import Terminal

    chat = Terminal([QWENBENCH, "chat", "--gguf", str(tiny_dense), "--rpc", worker.endpoint.address, "-ngl", "99",
                     "--max-tokens", "4", "--ctx", "512", "-t", "1"])
    chat.expect(rf"weights: .*RPC0\[{worker.endpoint.address}\]")
    chat.expect(r">>> ")
    chat.type("hello\n")
    chat.expect(r"\d+ tokens, TTFT \d+ ms")
    chat.expect(r">>> ")
    chat.type("\x04")
    assert chat.close() == 0
    assert "Traceback" not in chat.seen


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[WorkerInfo, WorkerInfo]]:
    with (tmp_path / "a.log").open("wb") as log_a, (tmp_path / "b.log").open("wb") as log_b, \
            Worker(Endpoint("127.0.0.1", _free_port()), 1, log_a) as a, \
            Worker(Endpoint("127.0.0.1", _free_port()), 1, log_b) as b:
        yield a.start(), b.start()


@pytest.mark.parametrize("fixture", ["tiny_dense", "tiny_moe"])
def test_two_workers_share_the_layers_as_planned(two_workers: tuple[WorkerInfo, WorkerInfo], fixture: str,
                                                 request: pytest.FixtureRequest, tmp_path: Path) -> None:
    gguf = request.getfixturevalue(fixture)
    a, b = (w.endpoint.address for w in two_workers)
    # the caps make the split uneven: the planner's tensor split follows what each may hold (less a margin)
    report = _rpc_run(gguf, f"{a}@300MiB,{b}@600MiB", tmp_path / "rows.csv", "-ngl", "99", "-c", "20")
    assert {row["status"] for row in report["rows"]} == {"ok"}
    row = report["rows"][0]
    assert row["topology"] == "rpc:127.0.0.1+127.0.0.1"
    placed = {d["name"]: d for d in json.loads(row["devices"])}
    assert set(placed) == {f"RPC0[{a}]", f"RPC0[{b}]"}  # each worker numbers its own devices
    first, second = placed[f"RPC0[{a}]"], placed[f"RPC0[{b}]"]
    assert 0 < first["model_bytes"] < second["model_bytes"]  # 44 MiB usable against 344 MiB
    for device in (first, second):  # each device's weights, KV and compute as the memory model put them (the log
        # gives 0.01 MiB: a tiny model's compute buffer of 0.1 MiB is within 128 KiB; Qwen3-0.6B's two halves, by
        # hand, within 0.3 %)
        measured = device["model_bytes"] + device["kv_bytes"] + device["compute_bytes"]
        assert measured == pytest.approx(device["predicted_bytes"], rel=0.05, abs=128 * 1024)
    assert row["predicted_vram_bytes"] == first["predicted_bytes"] + second["predicted_bytes"]


def test_a_tensor_split_given_is_the_one_llama_cpp_uses(two_workers: tuple[WorkerInfo, WorkerInfo],
                                                        tiny_dense: Path, tmp_path: Path) -> None:
    a, b = (w.endpoint.address for w in two_workers)
    on_first = {}
    for split in ("2,1", "1,2"):  # the tiny model offloads three layers: its two and the output
        report = _rpc_run(tiny_dense, f"{a},{b}", tmp_path / "rows.csv", "-ngl", "99", "-c", "20", "-ts", split)
        row = report["rows"][0]
        assert row["status"] == "ok"
        placed = {d["name"]: d for d in json.loads(row["devices"])}
        for device in placed.values():  # as the memory model put them for that split
            measured = device["model_bytes"] + device["kv_bytes"] + device["compute_bytes"]
            assert measured == pytest.approx(device["predicted_bytes"], rel=0.05, abs=128 * 1024)
        on_first[split] = placed[f"RPC0[{a}]"]["model_bytes"]
    assert on_first["2,1"] > on_first["1,2"]
    too_many = run_cli("run", "--gguf", str(tiny_dense), "--rpc", f"{a},{b}", "-ts", "1,1,1", "-p", "16", "-n", "4",
                       "--no-ttft", "--out", str(tmp_path / "rows.csv"))
    assert too_many.returncode == 2 and "3 shares for 2 offload devices" in too_many.stderr
    assert "Traceback" not in too_many.stderr
