"""`serve`, `bench-serve` and `chat`: a model behind an OpenAI-compatible server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ..errors import UsageError

if TYPE_CHECKING:
    from ..modelfile import ModelFile
    from ..rpc import Endpoint

from .common import (
    OLLAMA_OPTION,
    SEED_RANGE,
    _append,
    _bytes,
    _finite,
    _int_list,
    _kv_type,
    _quant_option,
    _resolve_model_file,
    _results_destination,
    _server_log_path,
    _with_rpc_devices,
    app,
    err,
    out,
)


@app.command("serve")
def serve_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key (qwenbench models)."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant with --model [Q4_K_M]."),
    gguf: Path | None = typer.Option(None, "--gguf", help="A GGUF file to serve."),
    ollama: str | None = OLLAMA_OPTION,
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a synthetic twin (random weights)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless you say so)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="Context size."),
    n_gpu_layers: int | None = typer.Option(None, "-ngl", "--n-gpu-layers", help="Layers on the GPU [the plan's]."),
    n_cpu_moe: int | None = typer.Option(None, "-ncmoe", "--n-cpu-moe", help="MoE experts of the first N layers "
                                                                            "in RAM [the plan's; llama-server]."),
    cache_type: str | None = typer.Option(None, "-ctk", "--cache-type", callback=_kv_type,
                                          help="KV cache type [the plan's]."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads [physical cores]."),
    rpc: str | None = typer.Option(None, "--rpc", metavar="HOST:PORT[@SIZE],...",
                                   help="Offload to the devices of these `qwenbench worker`s (-ngl layers go there)."),
    backend: str = typer.Option("auto", "--backend", help="auto (llama-server if on PATH), llama-server, or "
                                                          "llama-cpp-python."),
    force: bool = typer.Option(False, "--force", help="Start even when the memory model says it will not fit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the commands, start nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: the plan as JSON."),
) -> None:
    """Serve a model through an OpenAI-compatible HTTP API (/v1/chat/completions) with the planned settings:
    GPU layers, MoE experts, context, KV type, threads and batch sizes, all pinned and printed, with the exact
    equivalent llama-server command line. Listens on loopback unless --host says otherwise; Ctrl-C stops it."""
    from ..rpc import parse_endpoints
    from ..serve import (
        LOOPBACK,
        ServerError,
        check_placement,
        check_port,
        find_llama_server,
        start_server,
        stop_server,
        wait_ready,
    )

    if backend not in ("auto", "llama-server", "llama-cpp-python"):
        raise UsageError(f"--backend {backend!r}: use auto, llama-server or llama-cpp-python")
    chosen = ("llama-server" if find_llama_server() else "llama-cpp-python") if backend == "auto" else backend
    if ctx < 1:
        raise UsageError("--ctx must be >= 1")
    check_port(host, port)
    endpoints = parse_endpoints(rpc) if rpc else ()
    plan, notes, _ = _plan_server(gguf, model, quant, synthetic, host, port, ctx, n_gpu_layers, n_cpu_moe,
                                  cache_type, threads, chosen, force, endpoints, ollama)
    equivalent = " ".join(plan.llama_server_argv())
    if dry_run:
        if as_json:
            out.print_json(json.dumps({"backend": chosen, "url": plan.url, "llama_server": plan.llama_server_argv(),
                                       "llama_cpp_python_config": plan.llama_cpp_python_config(), "notes": notes}))
        else:
            out.print(f"would serve {plan.model_path.name} at {plan.url} with {chosen}", highlight=False,
                      markup=False)
            out.print(f"equivalent: {equivalent}", highlight=False, soft_wrap=True, markup=False)
        return
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    if host not in LOOPBACK:
        err.print(f"[yellow]warning:[/yellow] listening on {escape(host)}: other machines on the network can use this "
                  "server (it has no API key)")
    log_path = _server_log_path(f"server-{port}.log")
    err.print(f"server log: {log_path}", markup=False)
    with log_path.open("wb") as log:
        process = start_server(plan, chosen, log, log_path.parent)
        try:
            with err.status(escape(f"loading {plan.model_path.name} into {chosen}")):
                model_id = wait_ready(plan.url, process, 600, log_path)
            if plan.rpc_servers:
                placed = check_placement(plan, log_path)
                out.print("weights: " + ", ".join(f"{name} {_bytes(size)}" for name, size in placed.items()),
                          highlight=False, markup=False)
            out.print(f"serving {model_id or plan.alias} at {plan.url}/v1 (OpenAI API) with {chosen}; Ctrl-C stops it",
                      highlight=False, markup=False)
            out.print(f"equivalent: {equivalent}", highlight=False, soft_wrap=True, markup=False)
            process.wait()
            raise ServerError(f"the server stopped on its own (code {process.returncode})", hint=f"its log: {log_path}")
        except KeyboardInterrupt:
            err.print("stopping the server")
        finally:
            stop_server(process)


def _plan_server(gguf: Path | None, model: str | None, quant: str | None, synthetic: bool, host: str, port: int,
                 ctx: int, n_gpu_layers: int | None, n_cpu_moe: int | None, cache_type: str | None,
                 threads: int | None, backend: str, force: bool,
                 endpoints: tuple[Endpoint, ...] = (), ollama: str | None = None) -> tuple[Any, list[str], ModelFile]:
    """The server's settings from the plan for this model and machine, with what the user pinned; the notes to
    show; and the model file. RPC workers are probed first (a plain error naming one that fails) and planned as
    offload devices."""
    from dataclasses import replace

    from ..calibration import load_calibration
    from ..machine import describe_machine
    from ..planner import prepare_run
    from ..runspec import RunSettings
    from ..serve import ServerPlan

    if n_cpu_moe and backend == "llama-cpp-python":
        raise UsageError("--n-cpu-moe needs llama-server: llama-cpp-python's server cannot keep experts in RAM",
                         hint="install llama.cpp's llama-server, or leave --n-cpu-moe to the plan")
    machine, _ = _with_rpc_devices(describe_machine(bandwidth=True), endpoints)
    pinned = {name for name, value in (("n_gpu_layers", n_gpu_layers), ("n_cpu_moe", n_cpu_moe),
                                       ("type_k", cache_type), ("type_v", cache_type)) if value is not None}
    pinned.add("repack")  # a server keeps llama.cpp's repacked weights: its command line does not pass -nr
    kv = (cache_type or "f16").lower()
    settings = RunSettings(model_path="", n_ctx=ctx, ttft=False, type_k=kv, type_v=kv,
                           n_threads=threads if threads is not None else machine.n_cpu_physical,
                           n_gpu_layers=-1 if n_gpu_layers is None else n_gpu_layers, n_cpu_moe=n_cpu_moe or 0)
    settings.validate()  # the same checks as `run`, before a model is fetched or loaded
    model_file = _resolve_model_file(gguf, model, quant, synthetic, ollama=ollama)
    header = model_file.header
    prepared = prepare_run(replace(settings, model_path=str(model_file.path)), header.quant, header.table,
                           header.shape(), machine.hardware, load_calibration(machine.machine_id), pinned,
                           expert_offload=backend == "llama-server")
    notes = list(prepared.notes)
    if header.n_expert and backend != "llama-server":
        notes.append("llama-cpp-python's server cannot keep MoE experts in RAM: planned without that option "
                     "(llama-server on PATH would allow it)")
    if prepared.problems and not force:
        raise UsageError(f"{model_file.path.name} at {ctx} tokens would not fit: {'; '.join(prepared.problems)}",
                         hint="a shorter --ctx, a smaller quant, or --force")
    chosen = prepared.settings
    alias = model_file.model_key or model_file.path.stem
    plan = ServerPlan(model_file.path, f"{alias}-{model_file.quant}".lower() if model_file.model_key else alias,
                      host, port, ctx, chosen.n_gpu_layers, chosen.n_cpu_moe, chosen.n_threads, chosen.n_batch,
                      chosen.n_ubatch, prepared.config.flash_attn, chosen.type_k, chosen.type_v,
                      tuple(e.address for e in endpoints), chosen.tensor_split)
    return plan, notes, model_file


@app.command("bench-serve")
def bench_serve_command(
    url: str | None = typer.Option(None, "--url", help="A running OpenAI-compatible server, e.g. "
                                                       "http://127.0.0.1:8080 (ours, llama-server, Ollama...)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Start our server for this catalog model instead."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant with --model [Q4_K_M]."),
    gguf: Path | None = typer.Option(None, "--gguf", help="Start our server for this GGUF instead."),
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a synthetic twin."),
    concurrency: str = typer.Option("1,4", "--concurrency", help="Requests in flight, e.g. 1,4."),
    requests: int = typer.Option(8, "--requests", "-n", help="Requests per concurrency level."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens to generate per request."),
    seed: int = typer.Option(0, "--seed", **SEED_RANGE, help="Seed of the prompt choice and sampling."),
    timeout: float = typer.Option(300, "--timeout", callback=_finite(0, strict=True),
                                  help="Seconds before one request counts as timed out."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="With --model/--gguf: the server's context size."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="With --model/--gguf: the server's CPU "
                                                                     "threads [physical cores]."),
    out_csv: Path | None = typer.Option(None, "--out", "-o", dir_okay=False, help="Results CSV [results/<host>.csv]."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON for scripts."),
) -> None:
    """What a chat user feels from a server: seeded chat prompts at each concurrency level, streamed; TTFT
    (first token of any kind, and first visible token after Qwen3's thinking), inter-token latency, time per
    output token and end-to-end latency as p50/p90/p99, requests and tokens per second. Failed and timed-out
    requests are counted. One row per level (test serve_c<N>) in the results CSV."""
    from ..harness import new_run_id
    from ..machine import describe_machine
    from ..modelfile import ModelIdentity
    from ..serve import free_port, start_server, stop_server, wait_ready
    from ..servebench import level_record, run_level, server_identity

    levels = _int_list("--concurrency", concurrency)
    if any(level < 1 for level in levels) or requests < 1 or max_tokens < 1 or timeout <= 0:
        raise UsageError("--concurrency, --requests and --max-tokens must be >= 1, --timeout > 0")
    if (url is None) == (model is None and gguf is None):
        raise UsageError("give --url (a running server) or --model/--gguf (qwenbench starts one)",
                         hint="e.g. qwenbench bench-serve --url http://127.0.0.1:8080")
    if url is not None and not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8080")
    machine = describe_machine()
    csv_path = _results_destination(out_csv, machine)
    process = None
    identity = ModelIdentity("", "", "", 0, 0, 0, False, "")
    log_path = _server_log_path("bench-serve-server.log", out_csv)
    try:
        if url is None:
            plan, notes, model_file = _plan_server(gguf, model, quant, synthetic, "127.0.0.1", free_port(), ctx,
                                                   None, None, None, threads, "llama-cpp-python", False)
            for note in notes:
                err.print(f"note: {note}", markup=False)
            identity = model_file.identity
            err.print(f"server log: {log_path}", markup=False)
            with log_path.open("wb") as log:
                process = start_server(plan, "llama-cpp-python", log, log_path.parent)
            with err.status(escape(f"starting a server for {plan.model_path.name}")):
                wait_ready(plan.url, process, 600, log_path)
            url = plan.url
        model_id, server = server_identity(url)
        run_id = new_run_id()
        run_level(url, model_id, 1, 1, min(max_tokens, 16), seed=seed, timeout_s=timeout)  # warm-up, not counted
        records = []
        for level in levels:
            with err.status(f"concurrency {level}: {requests} requests") as status:
                done = [0]

                def on_done(result: Any, level: int = level, done: list[int] = done) -> None:
                    done[0] += 1
                    status.update(f"concurrency {level}: {done[0]}/{requests} requests")

                result = run_level(url, model_id, level, requests, max_tokens, seed=seed, timeout_s=timeout,
                                   on_done=on_done)
            records.append(level_record(result, url=url, model_id=model_id, server=server, max_tokens=max_tokens,
                                        seed=seed, model=identity, machine=machine, run_id=run_id))
    finally:
        if process is not None:
            stop_server(process)
    csv_path = _append(csv_path, records)
    if as_json:
        out.print_json(json.dumps({"csv": str(csv_path), "rows": [r.to_json() for r in records]}))
    else:
        _print_serve_table(records, url, model_id, server, csv_path)
    if any(r.status != "ok" for r in records):
        raise typer.Exit(1)  # a server that failed requests is not a clean measurement, for scripts too


def _print_serve_table(records: list[Any], url: str, model_id: str, server: str, csv_path: Path) -> None:
    from rich.table import Table

    table = Table(title=escape(f"{model_id or 'model'} at {url}" + (f" ({server})" if server else "")))
    columns = ("level", "ok/failed", "TTFT p50/p90/p99 ms", "visible p50 ms", "ITL p50/p99 ms", "TPOT p50 ms",
               "e2e p50/p99 ms", "req/s", "tok/s")
    for column in columns:
        table.add_column(column, justify="left" if column == "level" else "right")

    def ms(*values: Any) -> str:
        return "/".join("-" if v is None else f"{v:.0f}" for v in values)

    for record in records:
        m = json.loads(record.serve_metrics)
        table.add_row(record.test, f"{m['requests'] - m['failed']}/{m['failed']}",
                      ms(m["ttft_ms_p50"], m["ttft_ms_p90"], m["ttft_ms_p99"]), ms(m["ttfvt_ms_p50"]),
                      ms(m["itl_ms_p50"], m["itl_ms_p99"]), ms(m["tpot_ms_p50"]), ms(m["e2e_ms_p50"], m["e2e_ms_p99"]),
                      f"{m['request_throughput'] or 0:.2f}", f"{m['token_throughput'] or 0:.1f}")
    out.print(table)
    for record in records:
        if record.error:
            out.print(f"[red]{record.test}[/red]: {escape(record.error)}", highlight=False)
    out.print(f"{len(records)} rows appended to {csv_path}", markup=False)


# ------------------------------------------------------------------------------------------- chat


@app.command("chat")
def chat_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key (qwenbench models)."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant with --model [Q4_K_M]."),
    gguf: Path | None = typer.Option(None, "--gguf", help="A GGUF file to chat with."),
    ollama: str | None = OLLAMA_OPTION,
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a synthetic twin (random weights: "
                                                              "the text is noise, the speed is real)."),
    think: bool = typer.Option(True, "--think/--no-think", help="Qwen3 thinking (switch with /think, /no_think)."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="Context size."),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="Longest reply, in tokens."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads [physical cores]."),
    n_gpu_layers: int | None = typer.Option(None, "-ngl", "--n-gpu-layers", help="Layers on the GPU [the plan's]."),
    rpc: str | None = typer.Option(None, "--rpc", metavar="HOST:PORT[@SIZE],...",
                                   help="Offload to the devices of these `qwenbench worker`s (-ngl layers go there)."),
    seed: int = typer.Option(0, "--seed", **SEED_RANGE, help="Sampling seed."),
) -> None:
    """Chat with a model in the terminal, with the planned settings: its own chat template, streamed replies
    (thinking shown apart, dimmed), history within the session, and tokens, TTFT and t/s after each reply.
    \"\"\" starts and ends a multi-line message; /think, /no_think, /clear, /bye; Ctrl-C stops a reply,
    Ctrl-D (or Ctrl-C at the prompt) leaves."""
    from ..chat import ChatSession, ChatSettings
    from ..rpc import parse_endpoints

    if max_tokens < 1 or ctx < 16:
        raise UsageError("--max-tokens must be >= 1 and --ctx >= 16")
    plan, notes, model_file = _plan_server(gguf, model, quant, synthetic, "127.0.0.1", 0, ctx, n_gpu_layers, None,
                                           None, threads, "llama-cpp-python", False,
                                           parse_endpoints(rpc) if rpc else (), ollama)
    for note in notes:
        err.print(f"[dim]note: {escape(note)}[/dim]")
    settings = ChatSettings(n_ctx=ctx, n_gpu_layers=plan.n_gpu_layers, n_threads=plan.n_threads,
                            n_batch=plan.n_batch, n_ubatch=plan.n_ubatch, flash_attn=plan.flash_attn,
                            type_k=plan.type_k, type_v=plan.type_v, max_tokens=max_tokens, seed=seed,
                            rpc_servers=plan.rpc_servers, tensor_split=plan.tensor_split)
    with err.status(escape(f"loading {model_file.path.name}")):
        session = ChatSession(model_file.path, settings, think=think)
    name = model_file.model_key or model_file.path.name
    out.print(f"[bold]{escape(name)}[/bold] {escape(model_file.quant)}: ngl {plan.n_gpu_layers}, "
              f"{plan.n_threads} threads, context {ctx}, KV {plan.type_k}; thinking {'on' if think else 'off'}",
              highlight=False)
    if session.placement:
        out.print("weights: " + ", ".join(f"{name} {_bytes(size)}" for name, size in session.placement.items()),
                  highlight=False, markup=False)
    if model_file.weights == "synthetic":
        out.print("[yellow]synthetic weights: replies are random tokens; the speed is the real model's[/yellow]")
    out.print('[dim]/think /no_think /clear /bye; """ for several lines; Ctrl-D leaves[/dim]')
    try:
        while True:
            try:
                text = _read_message()
            except (EOFError, KeyboardInterrupt):
                out.print()
                break
            if not text.strip():
                continue
            answer = session.command(text)
            if answer is not None:
                if text.strip().lower() == "/bye":
                    break
                out.print(f"[dim]{escape(answer)}[/dim]")
                continue
            _stream_reply(session, text)
    finally:
        session.close()


def _read_line(prompt: str) -> str:
    """input() that Ctrl-C always interrupts: llama.cpp's worker threads can take the SIGINT, and Python then
    only notices it when the main thread runs again, which a read() blocked on the terminal never does."""
    import select

    out.print(prompt, end="", highlight=False, markup=False)
    sys.stdout.flush()
    while not select.select([sys.stdin], [], [], 0.1)[0]:
        pass  # back in Python ten times a second: a pending Ctrl-C is raised here
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def _read_message() -> str:
    line = _read_line(">>> ")
    if line.strip() != '"""':
        return line
    lines = []
    while (line := _read_line("... ")).strip() != '"""':
        lines.append(line)
    return "\n".join(lines)


def _stream_reply(session: Any, text: str) -> None:
    styles = {"think": "dim italic", "text": ""}
    try:
        for kind, piece in session.reply(text):
            out.print(piece, style=styles[kind], end="", highlight=False, markup=False, soft_wrap=True)
    except KeyboardInterrupt:
        out.print(" [stopped]", style="yellow", end="", markup=False)
    out.print()
    if session.last_stats is not None:
        out.print(session.last_stats.line(), style="dim", highlight=False)


