"""An interactive chat session on a loaded model: the model's own chat template, streamed replies with Qwen3's
thinking told apart, history within the session, and per-reply numbers (tokens, TTFT, t/s).

A place where models run, so it imports llama_cpp (lazily, in the session). The terminal loop lives in the CLI;
this module is the session it drives, so tests can drive it too.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import QwenbenchError, UsageError
from .llamalog import LlamaBuffers, parse_buffers, workers_without_weights
from .runspec import CACHE_TYPES
from .thinking import ThinkSplitter

COMMANDS = {"/think": "thinking on", "/no_think": "thinking off", "/clear": "history cleared",
            "/help": "commands: /think /no_think /clear /bye; \"\"\" starts and ends a multi-line message",
            "/bye": ""}


@dataclass(frozen=True)
class ReplyStats:
    prompt_tokens: int
    tokens: int  # generated, thinking included
    ttft_s: float  # to the first generated token
    tokens_per_s: float  # after the first token
    stopped: bool  # cut short by the user

    def line(self) -> str:
        note = ", stopped" if self.stopped else ""
        return (f"{self.tokens} tokens, TTFT {self.ttft_s * 1000:.0f} ms, {self.tokens_per_s:.1f} t/s "
                f"({self.prompt_tokens} prompt tokens{note})")


@dataclass(frozen=True)
class ChatSettings:
    n_ctx: int = 4096
    n_gpu_layers: int = -1
    n_threads: int = 1
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: bool = True
    type_k: str = "f16"
    type_v: str = "f16"
    max_tokens: int = 1024
    temperature: float = 0.6  # Qwen3's recommendation for thinking mode
    seed: int = 0
    rpc_servers: tuple[str, ...] = ()  # HOST:PORT of RPC workers (probed by the caller) that -ngl offloads to
    tensor_split: tuple[float, ...] = ()  # the offloaded layers' shares across several devices


class ChatSession:
    def __init__(self, model_path: Path, settings: ChatSettings, *, think: bool = True) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.settings = settings
        self.think = think
        self.history: list[dict[str, str]] = []
        # with RPC workers, llama.cpp's load log is kept: its buffers per device show where the weights went
        self.placement: dict[str, int] = {}
        load_log = io.StringIO()
        if settings.rpc_servers:
            import llama_cpp

            from .runner import register_rpc_servers

            register_rpc_servers(llama_cpp, settings.rpc_servers)
        with contextlib.redirect_stderr(load_log) if settings.rpc_servers else contextlib.nullcontext():
            self.llm = Llama(model_path=str(model_path), n_ctx=settings.n_ctx, n_gpu_layers=settings.n_gpu_layers,
                             n_threads=settings.n_threads, n_threads_batch=settings.n_threads,
                             n_batch=settings.n_batch, n_ubatch=settings.n_ubatch, flash_attn=settings.flash_attn,
                             type_k=CACHE_TYPES[settings.type_k], type_v=CACHE_TYPES[settings.type_v],
                             tensor_split=list(settings.tensor_split) or None, seed=settings.seed,
                             verbose=bool(settings.rpc_servers))
        if settings.rpc_servers:
            from llama_cpp._logger import set_verbose

            set_verbose(False)  # the load is logged; the chat itself stays quiet
            self.placement = self._check_placement(parse_buffers(load_log.getvalue()))
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise UsageError(f"{model_path.name} has no chat template", hint="chat needs an instruct/chat model")

        def token_text(token: int) -> str:
            return self.llm.detokenize([token], special=True).decode(errors="replace")

        self.formatter = Jinja2ChatFormatter(template, eos_token=token_text(self.llm.token_eos()),
                                             bos_token=token_text(self.llm.token_bos()))
        self.last_stats: ReplyStats | None = None

    def _check_placement(self, buffers: LlamaBuffers) -> dict[str, int]:
        """The model bytes per device; an error naming every worker that got none (never a silent local run)."""
        if self.settings.n_gpu_layers != 0:
            missing = workers_without_weights(self.settings.rpc_servers, buffers)
            if missing:
                self.llm.close()
                raise QwenbenchError(f"RPC worker {', '.join(missing)} got no weights: the chat would run without it",
                                     hint="check the worker and this machine's llama.cpp build")
        return dict(buffers.model)

    def command(self, text: str) -> str | None:
        """Apply a /command; its reply, or None when the text is a message."""
        word = text.strip().lower()
        if word not in COMMANDS:
            return None
        if word in ("/think", "/no_think"):
            self.think = word == "/think"
        elif word == "/clear":
            self.history.clear()
        return COMMANDS[word]

    def render(self, text: str) -> Any:
        return self.formatter(messages=[*self.history, {"role": "user", "content": text}],
                              enable_thinking=self.think)

    def reply(self, text: str) -> Iterator[tuple[str, str]]:
        """Stream the reply to `text` as ("think" | "text", piece); closing the iterator early (Ctrl-C) keeps
        what was said. The answer, without its thinking, joins the history (as Qwen3 asks)."""
        formatted = self.render(text)
        prompt_tokens = len(self.llm.tokenize(formatted.prompt.encode(), add_bos=False, special=True))
        if prompt_tokens + 1 >= self.settings.n_ctx:
            raise UsageError(f"the conversation ({prompt_tokens} tokens) fills the {self.settings.n_ctx}-token context",
                             hint="/clear starts over; --ctx sets a longer context")
        splitter = ThinkSplitter()
        answer: list[str] = []
        start = time.perf_counter()
        first = None
        tokens = 0
        stopped = True
        try:
            stream = self.llm.create_completion(formatted.prompt, max_tokens=self.settings.max_tokens, stream=True,
                                                temperature=self.settings.temperature, stop=formatted.stop,
                                                seed=self.settings.seed)
            for chunk in stream:
                choice = chunk["choices"][0]
                if choice.get("finish_reason") is not None and not choice["text"]:
                    continue  # the closing chunk carries no token
                tokens += 1
                first = first if first is not None else time.perf_counter() - start
                for kind, piece in splitter.feed(choice["text"]):
                    if kind == "text":
                        answer.append(piece)
                    yield kind, piece
            for kind, piece in splitter.flush():
                if kind == "text":
                    answer.append(piece)
                yield kind, piece
            stopped = False
        finally:
            elapsed = time.perf_counter() - start
            ttft = first if first is not None else elapsed
            rate = (tokens - 1) / (elapsed - ttft) if tokens > 1 and elapsed > ttft else 0.0
            self.last_stats = ReplyStats(prompt_tokens, tokens, ttft, rate, stopped)
            self.history += [{"role": "user", "content": text},
                             {"role": "assistant", "content": "".join(answer).strip()}]

    def close(self) -> None:
        self.llm.close()
