"""The model catalog (configs/models.toml) as validated ModelSpec records."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, UsageError
from .fit import ModelShape
from .vocab import FIRST_SPECIAL_ID, SPECIAL_TOKENS

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
        """A reshaped copy, e.g. a tiny model of the same architecture for tests. A shape llama.cpp would
        refuse or abort on is a UsageError naming the `qwenbench synth` flags (OVERRIDE_FLAGS) involved."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = set(overrides) - set(values)
        if unknown:
            raise UsageError(f"unknown shape override(s): {', '.join(sorted(unknown))}",
                             hint=f"the shape fields: {', '.join(OVERRIDE_FLAGS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        for name, value in given.items():
            if name in _INT_FIELDS and (not isinstance(value, int) or isinstance(value, bool)):
                raise UsageError(f"{OVERRIDE_FLAGS.get(name, name)} must be a whole number, got {value!r}",
                                 hint="shape overrides count layers, heads, experts and widths")
        values.update(given)
        values["params_total"] = 0  # no longer the published model; computed from the shapes instead
        spec = ModelSpec(**values)

        def name(field: str) -> str:
            flag = OVERRIDE_FLAGS.get(field, field)
            value = getattr(spec, field)
            return f"{flag} {value}" if field in given else f"{flag} {value} ({self.key}'s value)"

        problems = shape_problems(spec, name)
        if problems:
            raise UsageError("; ".join(p for p, _ in problems),
                             hint=" ".join(dict.fromkeys(h for _, h in problems)))
        return spec


# the `qwenbench synth` flag of each shape field, so an error about an override names what the user typed
OVERRIDE_FLAGS = {"n_layer": "--layers", "n_embd": "--hidden", "n_ff": "--ff", "n_head": "--heads",
                  "n_head_kv": "--kv-heads", "head_dim": "--head-dim", "n_expert": "--experts",
                  "n_expert_used": "--experts-used", "n_ff_exp": "--expert-ff"}
_REQUIRED_INT = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab",
                 "context_length", "params_total")
_INT_FIELDS = (*_REQUIRED_INT, "n_expert", "n_expert_used", "n_ff_exp")
SUPPORTED_ARCHS = ("qwen2", "qwen3", "qwen3moe")
MOE_ARCHS = ("qwen3moe",)
# llama.cpp's limits (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS; it aborts beyond them) and, where it has none,
# bounds far beyond any real model; the same as gguf_info's METADATA_RULES
_BOUNDS = {"n_layer": (1, 512), "n_embd": (1, 1 << 20), "n_ff": (1, 1 << 22), "n_head": (1, 1 << 12),
           "n_head_kv": (1, 1 << 12), "head_dim": (2, 1 << 16), "context_length": (1, 1 << 30),
           "n_expert": (0, 1024), "n_expert_used": (0, 1024), "n_ff_exp": (0, 1 << 22)}
_MIN_VOCAB = FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)
_ABORTS = "the bounds are llama.cpp's limits (it aborts beyond them) or far beyond any real model."


def shape_problems(spec: ModelSpec, name: Callable[[str], str]) -> list[tuple[str, str]]:
    """(problem, hint) for each rule of llama.cpp's (llama-model.cpp, ggml) or of the synthetic writer that
    the spec's shape breaks; name(field) renders a field and its value in the caller's terms."""
    problems: list[tuple[str, str]] = []
    for field, (low, high) in _BOUNDS.items():
        if not low <= getattr(spec, field) <= high:
            problems.append((f"{name(field)} must be from {low} to {high}", _ABORTS))
    if problems:
        return problems  # the rules below assume sane numbers
    if spec.n_head % spec.n_head_kv:
        problems.append((f"{name('n_head')} is not a multiple of {name('n_head_kv')}",
                         "grouped-query attention shares each KV head among a whole number of query heads "
                         "(ggml asserts it): pick heads divisible by the KV heads."))
    if spec.head_dim % 2:
        problems.append((f"{name('head_dim')} is odd", "RoPE rotates pairs of dimensions (ggml asserts an even "
                                                        "size): pick an even head size."))
    expert_fields = ("n_expert", "n_expert_used", "n_ff_exp")
    if spec.arch in MOE_ARCHS:
        missing = [name(f) for f in expert_fields if getattr(spec, f) < 1]
        if missing:
            problems.append((f"a {spec.arch} model needs experts: {', '.join(missing)} must be at least 1",
                             "llama.cpp refuses an MoE model without experts, or routing to none of them."))
        elif spec.n_expert_used > spec.n_expert:
            problems.append((f"{name('n_expert_used')} is more than {name('n_expert')}",
                             "a token is routed to some of the experts, at most all of them (llama.cpp asserts "
                             "it): pick experts-used <= experts."))
    else:
        given = [name(f) for f in expert_fields if getattr(spec, f)]
        if given:
            problems.append((f"{', '.join(given)}: {spec.key} is a dense {spec.arch} model, without experts",
                             f"experts need an MoE model ({', '.join(MOE_ARCHS)}, e.g. qwen3-30b-a3b): a dense "
                             "model's file would lack the FFN tensors llama.cpp loads."))
    if spec.n_vocab < _MIN_VOCAB:
        problems.append((f"{name('n_vocab')} is below {_MIN_VOCAB}",
                         "the synthetic tokenizer keeps Qwen's special tokens at their real ids."))
    return problems


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
    for field in fields(ModelSpec):
        value = merged.get(field.name)
        expected = _FIELD_TYPES.get(str(field.type))
        # TOML has no int/bool confusion of its own, but Python's bool is an int
        if value is not None and expected and (not isinstance(value, expected[0])
                                               or (isinstance(value, bool) and bool not in expected[0])):
            raise ConfigError(f"{where}.{field.name}: must be {expected[1]}, got {value!r}")
    if merged.get("arch") not in SUPPORTED_ARCHS:
        raise ConfigError(f"{where}.arch: {merged.get('arch')!r} is not one of {', '.join(SUPPORTED_ARCHS)}")
    merged.setdefault("name", key)
    hub = merged.get("hub", ())
    if not isinstance(hub, (list, tuple)) or not all(isinstance(r, str) and r.count("/") == 1 for r in hub):
        raise ConfigError(f"{where}.hub: must be a list of 'owner/name' repositories")
    merged["hub"] = tuple(hub)
    try:
        spec = ModelSpec(**merged)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    problems = shape_problems(spec, lambda field: f"{field} = {getattr(spec, field)!r}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(p for p, _ in problems),
                          hint=" ".join(dict.fromkeys(h for _, h in problems)))
    return spec


_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "a whole number"), "str": ((str,), "a string"), "bool": ((bool,), "true or false"),
    "float": ((int, float), "a number"),
}


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
