"""The model catalog (configs/models.toml) as validated ModelSpec records."""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, UsageError
from .fit import ModelShape

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ModelSpec:
    """Everything llama.cpp needs to know about a model's shape, and what the model is."""

    key: str
    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    tied_embeddings: bool
    tokenizer_pre: str
    params_total: int
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    store_output: bool = False
    hub: tuple[str, ...] = ()  # Hugging Face repos with this model's GGUFs, preferred first

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def has_output_tensor(self) -> bool:
        """Whether the GGUF carries output.weight (untied, or a file that stores it anyway)."""
        return not self.tied_embeddings or self.store_output

    def shape(self) -> ModelShape:
        return ModelShape(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head, n_head_kv=self.n_head_kv,
                          head_dim_k=self.head_dim, head_dim_v=self.head_dim, n_vocab=self.n_vocab, n_ff=self.n_ff,
                          n_expert=self.n_expert, n_expert_used=self.n_expert_used, n_ff_exp=self.n_ff_exp)

    def with_overrides(self, **overrides: Any) -> ModelSpec:
        """A reshaped copy, e.g. a tiny model of the same architecture for tests."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = set(overrides) - set(values)
        if unknown:
            raise UsageError(f"unknown shape override(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["params_total"] = 0  # no longer the published model; computed from the shapes instead
        return ModelSpec(**values)


_REQUIRED_INT = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab",
                 "context_length", "params_total")
SUPPORTED_ARCHS = ("qwen2", "qwen3", "qwen3moe")


def config_dir() -> Path:
    """The repo's configs/ folder; QWENBENCH_CONFIG_DIR points elsewhere."""
    env = os.environ.get("QWENBENCH_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def _spec_from_table(key: str, table: dict[str, Any], defaults: dict[str, Any], source: Path) -> ModelSpec:
    merged = {**defaults, **table, "key": key}
    where = f"{source}: models.{key!s}"
    known = {f.name for f in fields(ModelSpec)}
    for name in merged:
        if name not in known:
            raise ConfigError(f"{where}.{name}: unknown field", hint=f"known fields: {', '.join(sorted(known))}")
    for name in _REQUIRED_INT:
        value = merged.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}.{name}: must be a positive integer, got {value!r}")
    if merged.get("arch") not in SUPPORTED_ARCHS:
        raise ConfigError(f"{where}.arch: {merged.get('arch')!r} is not one of {', '.join(SUPPORTED_ARCHS)}")
    if merged["arch"] == "qwen3moe" and not all(merged.get(k, 0) > 0 for k in ("n_expert", "n_expert_used",
                                                                               "n_ff_exp")):
        raise ConfigError(f"{where}: a qwen3moe model needs n_expert, n_expert_used and n_ff_exp")
    merged.setdefault("name", key)
    hub = merged.get("hub", ())
    if not isinstance(hub, (list, tuple)) or not all(isinstance(r, str) and r.count("/") == 1 for r in hub):
        raise ConfigError(f"{where}.hub: must be a list of 'owner/name' repositories")
    merged["hub"] = tuple(hub)
    try:
        return ModelSpec(**merged)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@lru_cache(maxsize=4)
def load_catalog(path: Path | None = None) -> dict[str, ModelSpec]:
    """All catalog models by key, validated."""
    source = path or config_dir() / "models.toml"
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"model catalog not found at {source}",
                          hint="set QWENBENCH_CONFIG_DIR to the folder holding models.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    defaults = data.get("defaults", {})
    models = data.get("models", {})
    if not models:
        raise ConfigError(f"{source}: no [models.*] tables")
    return {key: _spec_from_table(key, table, defaults, source) for key, table in models.items()}


def get_model(key: str) -> ModelSpec:
    """A catalog model by key (case-insensitive), or a UsageError naming the close matches."""
    catalog = load_catalog()
    found = catalog.get(key.lower())
    if found is not None:
        return found
    close = difflib.get_close_matches(key.lower(), list(catalog), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(catalog)}"
    raise UsageError(f"unknown model {key!r}", hint=hint + " (`qwenbench models` lists them)")
