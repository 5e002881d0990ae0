"""Bench suites (configs/*.toml) as validated BenchConfig records; every error names the file and the field.

A suite lists models (catalog key and quant), the device modes to run each in, and the tests (llama-bench's
-p/-n/-d lists, repetitions, TTFT) with the llama.cpp settings every job shares:

    [suite]
    name = "quick"
    modes = ["cpu", "gpu"]          # cpu | gpu | gpu-experts-cpu (the last for MoE models only)
    n_prompt = [512]
    n_gen = [128]
    ttft = true
    repetitions = 3
    timeout_s = 900

    [[model]]
    key = "qwen3-0.6b"
    quant = "Q4_K_M"
    # modes = ["cpu"]               # this model's own list, replacing the suite's
    # repo = "Qwen/Qwen3-0.6B-GGUF" # take the file from this repo

    [[model]]
    gguf = "models/my-finetune-Q4_K_M.gguf"   # a local file (relative to the config), measured as it is
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, UsageError
from .rpc import Endpoint, parse_endpoints
from .runspec import CACHE_TYPES, FLASH_ATTN, LOAD_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

MODES = ("cpu", "gpu", "gpu-experts-cpu")
_SUITE_KEYS = {"name", "description", "modes", "n_prompt", "n_gen", "n_depth", "repetitions", "ttft", "think",
               "timeout_s", "n_ctx", "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v", "threads", "load_mode",
               "rpc", "repack"}
_MODEL_KEYS = {"key", "quant", "modes", "repo", "revision", "gguf", "ollama"}


@dataclass(frozen=True)
class ModelEntry:
    key: str  # catalog key; for a gguf entry, the key given or ""
    quant: str  # for a gguf entry, read from its header when the job runs
    modes: tuple[str, ...] | None = None  # None: the suite's
    repo: str | None = None
    revision: str | None = None
    gguf: Path | None = None  # a local file instead of the catalog and the Hub
    ollama: str = ""  # the Ollama model the gguf is the blob of (qwen3:8b), as rows name it

    @property
    def label(self) -> str:
        return f"{self.key} {self.quant}" if self.gguf is None else self.filename

    @property
    def filename(self) -> str:
        """What rows call a local entry's file: its name, or the Ollama model it is the blob of."""
        return f"ollama:{self.ollama}" if self.ollama else self.gguf.name if self.gguf else ""


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str
    path: Path
    models: tuple[ModelEntry, ...]
    modes: tuple[str, ...] = MODES
    n_prompt: tuple[int, ...] = (512,)
    n_gen: tuple[int, ...] = (128,)
    n_depth: tuple[int, ...] = (0,)
    repetitions: int = 5
    ttft: bool = True
    think: bool = False
    timeout_s: float = 1800.0
    n_ctx: int = 0
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: str = "auto"
    type_k: str | None = None  # None: the plan's choice
    type_v: str | None = None
    threads: int | None = None  # None: the machine's physical cores
    load_mode: str = "auto"
    rpc: tuple[Endpoint, ...] = ()  # `qwenbench worker`s: the gpu modes offload to their devices
    repack: bool | None = None  # the CPU backend's repacked weights; None: the plan's choice


class _Fields:
    """Typed getters over one TOML table that raise ConfigError naming `where.key`."""

    def __init__(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        self.table = table
        self.where = where
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown setting",
                              hint=f"known settings: {', '.join(sorted(allowed))}")

    def _fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: {message}")

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self._fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, f"must be a whole number >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, default: float, minimum: float) -> float:
        value = self.table.get(key, default)
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value <= minimum):
            raise self._fail(key, f"must be a finite number > {minimum:g}, got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {value!r}")
        return value

    def integers(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self.table.get(key, list(default))
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            raise self._fail(key, f"must be a whole number >= 0 or a list of them, got {value!r}")
        return tuple(value)

    def endpoints(self, key: str) -> tuple[Endpoint, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, f'must be a list of "HOST:PORT" strings, got {value!r}')
        if not value:
            return ()
        try:
            return parse_endpoints(",".join(value))
        except UsageError as exc:
            raise self._fail(key, exc.message) from None

    def modes(self, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
        value = self.table.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self._fail(key, f"must be a list of modes ({', '.join(MODES)}), got {value!r}")
        for mode in value:
            if mode not in MODES:
                raise self._fail(key, f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        return tuple(dict.fromkeys(value))


def _model_entry(table: Any, where: str, base: Path) -> ModelEntry:
    from .catalog import get_model
    from .quants import PRESETS

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table with key and quant (or gguf)")
    fields = _Fields(table, where, _MODEL_KEYS)
    ollama = fields.text("ollama")
    if ollama is not None:
        from .errors import QwenbenchError
        from .ollama import find_model

        if {"quant", "repo", "revision", "gguf"} & set(table):
            raise ConfigError(f"{where}.ollama: a model Ollama pulled is measured as it is; drop quant, repo, "
                              "revision and gguf")
        try:
            found = find_model(ollama)
        except QwenbenchError as exc:
            raise ConfigError(f"{where}.ollama: {exc.message}", hint=exc.hint) from None
        return ModelEntry(fields.text("key") or "", "", fields.modes("modes", None), gguf=found.blob,
                          ollama=found.reference)
    gguf = fields.text("gguf")
    if gguf is not None:
        if {"quant", "repo", "revision"} & set(table):
            raise ConfigError(f"{where}.gguf: a local file is measured as it is; drop quant, repo and revision")
        return ModelEntry(fields.text("key") or "", "", fields.modes("modes", None), gguf=base / gguf)
    key = fields.text("key")
    if key is None:
        raise ConfigError(f"{where}.key: missing (a catalog model, see `qwenbench models`)")
    try:
        get_model(key)
    except UsageError as exc:
        raise ConfigError(f"{where}.key: {exc.message}", hint=exc.hint) from None
    quant = (fields.text("quant", "Q4_K_M") or "Q4_K_M").upper()
    if quant not in PRESETS:
        raise ConfigError(f"{where}.quant: unknown quant {quant!r}", hint=f"known quants: {', '.join(PRESETS)}")
    return ModelEntry(key, quant, fields.modes("modes", None), fields.text("repo"), fields.text("revision"))


def _refuse_repeats(entries: tuple[ModelEntry, ...], where: str) -> None:
    """A model listed twice would be measured twice and its rows counted twice in every report."""
    seen: dict[tuple[Any, ...], int] = {}
    for index, entry in enumerate(entries):
        identity = (entry.key, entry.quant, entry.repo, entry.revision,
                    entry.gguf.resolve() if entry.gguf is not None else None)
        if identity in seen:
            raise ConfigError(f"{where}: model[{index}] repeats model[{seen[identity]}] ({entry.label})",
                              hint="list each model once; give it several modes with modes = [...]")
        seen[identity] = index


def parse_config(data: dict[str, Any], path: Path) -> BenchConfig:
    """A suite from parsed TOML; ConfigError names the first bad field."""
    where = path.name
    unknown = sorted(set(data) - {"suite", "model"})
    if unknown:
        raise ConfigError(f"{where}: unknown table [{unknown[0]}]", hint="a suite has [suite] and [[model]] tables")
    suite_table = data.get("suite", {})
    if not isinstance(suite_table, dict):
        raise ConfigError(f"{where}: [suite] must be a table")
    suite = _Fields(suite_table, f"{where}: suite", _SUITE_KEYS)
    models = data.get("model")
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{where}: no [[model]] entries", hint='add [[model]] tables with key = "..." and quant')
    entries = tuple(_model_entry(m, f"{where}: model[{i}]", path.parent) for i, m in enumerate(models))
    _refuse_repeats(entries, where)
    type_choices = tuple(CACHE_TYPES)
    config = BenchConfig(
        name=suite.text("name", path.stem) or path.stem,
        description=suite.text("description", "") if suite_table.get("description") else "",
        path=path,
        models=entries,
        modes=suite.modes("modes", MODES) or MODES,
        n_prompt=suite.integers("n_prompt", (512,)),
        n_gen=suite.integers("n_gen", (128,)),
        n_depth=suite.integers("n_depth", (0,)),
        repetitions=suite.integer("repetitions", 5, 1) or 5,
        ttft=suite.flag("ttft", True),
        think=suite.flag("think", False),
        timeout_s=suite.number("timeout_s", 1800.0, 0),
        n_ctx=suite.integer("n_ctx", 0, 0) or 0,
        n_batch=suite.integer("n_batch", 2048, 1) or 2048,
        n_ubatch=suite.integer("n_ubatch", 512, 1) or 512,
        flash_attn=suite.text("flash_attn", "auto", tuple(FLASH_ATTN)) or "auto",
        type_k=suite.text("type_k", None, type_choices),
        type_v=suite.text("type_v", None, type_choices),
        threads=suite.integer("threads", None, 1),
        load_mode=suite.text("load_mode", "auto", tuple(LOAD_MODES)) or "auto",
        rpc=suite.endpoints("rpc"),
        repack=suite.flag("repack", True) if "repack" in suite_table else None,
    )
    if not any(config.n_prompt) and not any(config.n_gen) and not config.ttft:
        raise ConfigError(f"{where}: suite measures nothing (n_prompt and n_gen are 0, ttft is false)")
    return config


def load_config(path: Path) -> BenchConfig:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a suite file", hint="e.g. --config configs/quick.toml")
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config", hint="see configs/ for the bundled suites") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}", hint="a suite is a UTF-8 TOML file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_config(data, path)
