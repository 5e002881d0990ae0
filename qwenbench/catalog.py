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
from .fit import HYBRID_ARCHS, ModelShape, is_linear_attention_layer
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
    modelscope: tuple[str, ...] = ()  # ModelScope repos with them (MODELSCOPE_OWNERS' Hub repos unless listed)
    # hybrids (qwen35, qwen35moe, qwen3next): layer il is full attention when (il + 1) % interval == 0, the others
    # Gated DeltaNet linear attention; 0: every layer is attention
    full_attention_interval: int = 0
    ssm_conv_kernel: int = 0  # the linear-attention layers' causal convolution width
    ssm_state_size: int = 0  # head size of the linear attention's keys and values (its state is size x size a head)
    ssm_group_count: int = 0  # key heads of the linear attention
    ssm_time_step_rank: int = 0  # value heads of the linear attention
    rope_dims: int = 0  # rotated dimensions of a head (partial RoPE); 0: the whole head
    rope_sections: tuple[int, ...] = ()  # multimodal RoPE sections (qwen35 requires the key)
    n_ff_shexp: int = 0  # the shared expert's FFN width (qwen35moe, qwen3next)
    mtp_layers: int = 0  # multi-token-prediction blocks of the checkpoint (a published GGUF may leave them out)
    first_special_id: int = FIRST_SPECIAL_ID  # where the tokenizer's special tokens start (Qwen3.5: 248044)

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def is_hybrid(self) -> bool:
        return self.full_attention_interval > 0

    @property
    def ssm_inner_size(self) -> int:
        """The linear attention's value width (value heads x head size): llama.cpp's ssm.inner_size."""
        return self.ssm_state_size * self.ssm_time_step_rank

    def is_recurrent(self, layer: int) -> bool:
        """Whether trunk layer `layer` is linear attention (llama.cpp's is_recr), as the full-attention interval
        places them; the MTP block is attention."""
        return (self.is_hybrid and layer < self.n_layer
                and is_linear_attention_layer(layer, self.full_attention_interval))

    @property
    def n_attention_layers(self) -> int:
        return sum(1 for layer in range(self.n_layer) if not self.is_recurrent(layer))

    @property
    def attention_layout(self) -> str:
        """How the trunk's layers attend, worded as the plan words a header's: "full" or "36 linear + 12 full"."""
        return self.shape().attention_layout

    @property
    def has_output_tensor(self) -> bool:
        """Whether the GGUF carries output.weight (untied, or a file that stores it anyway)."""
        return not self.tied_embeddings or self.store_output

    def shape(self, mtp: bool = False) -> ModelShape:
        """The memory model's view; `mtp`: of a file that carries the MTP block (counted in block_count)."""
        n_nextn = self.mtp_layers if mtp else 0
        kinds: tuple[str, ...] = ()
        if self.is_hybrid:
            kinds = tuple("recurrent" if self.is_recurrent(il) else "full" for il in range(self.n_layer))
            kinds += ("full",) * n_nextn
        conv = (self.ssm_conv_kernel - 1) * (self.ssm_inner_size + 2 * self.ssm_group_count * self.ssm_state_size)
        return ModelShape(n_layer=self.n_layer + n_nextn, n_embd=self.n_embd, n_head=self.n_head,
                          n_head_kv=self.n_head_kv, head_dim_k=self.head_dim, head_dim_v=self.head_dim,
                          n_vocab=self.n_vocab, n_ff=self.n_ff, n_expert=self.n_expert,
                          n_expert_used=self.n_expert_used, n_ff_exp=self.n_ff_exp, layer_kinds=kinds,
                          n_layer_nextn=n_nextn, n_embd_r=conv if self.is_hybrid else 0,
                          n_embd_s=self.ssm_state_size * self.ssm_inner_size if self.is_hybrid else 0)

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
_HYBRID_INT = ("full_attention_interval", "ssm_conv_kernel", "ssm_state_size", "ssm_group_count",
               "ssm_time_step_rank")
_INT_FIELDS = (*_REQUIRED_INT, "n_expert", "n_expert_used", "n_ff_exp", *_HYBRID_INT, "rope_dims", "n_ff_shexp",
               "mtp_layers", "first_special_id")
SUPPORTED_ARCHS = ("qwen2", "qwen3", "qwen3moe", "qwen35", "qwen35moe", "qwen3next")
MOE_ARCHS = ("qwen3moe", "qwen35moe", "qwen3next")
# llama.cpp's limits (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS; it aborts beyond them) and, where it has none,
# bounds far beyond any real model; the same as gguf_info's METADATA_RULES
_BOUNDS = {"n_layer": (1, 512), "n_embd": (1, 1 << 20), "n_ff": (1, 1 << 22), "n_head": (1, 1 << 12),
           "n_head_kv": (1, 1 << 12), "head_dim": (2, 1 << 16), "context_length": (1, 1 << 30),
           "n_expert": (0, 1024), "n_expert_used": (0, 1024), "n_ff_exp": (0, 1 << 22)}
# the publishers whose Hub GGUF repos ModelScope carries under the same names (Qwen's official ones and
# lmstudio-community): a model's ModelScope repos unless its table lists `modelscope` itself
MODELSCOPE_OWNERS = ("Qwen", "lmstudio-community")
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
    if spec.arch in HYBRID_ARCHS:
        missing = [name(f) for f in _HYBRID_INT if getattr(spec, f) < 1]
        if missing:
            problems.append((f"a {spec.arch} model needs its linear-attention shape: {', '.join(missing)} must be at "
                             "least 1", "llama.cpp reads every ssm.* key of a hybrid model and aborts without them."))
        elif spec.ssm_time_step_rank % spec.ssm_group_count:
            problems.append((f"{name('ssm_time_step_rank')} is not a multiple of {name('ssm_group_count')}",
                             "each key head of the linear attention serves a whole number of value heads."))
        if spec.arch == "qwen35" and len(spec.rope_sections) != 4:
            problems.append((f"a qwen35 model needs four rope_sections, got {list(spec.rope_sections)}",
                             "llama.cpp requires rope.dimension_sections for qwen35 (multimodal RoPE)."))
    elif spec.is_hybrid:
        problems.append((f"{name('full_attention_interval')}: {spec.arch} has no linear-attention layers",
                         f"only {', '.join(HYBRID_ARCHS)} mix linear and full attention."))
    if spec.rope_dims > spec.head_dim or spec.rope_dims % 2:
        problems.append((f"{name('rope_dims')} must be even and at most {name('head_dim')}",
                         "RoPE rotates pairs of a head's dimensions."))
    if spec.n_vocab < spec.first_special_id + len(SPECIAL_TOKENS):
        problems.append((f"{name('n_vocab')} is below {spec.first_special_id + len(SPECIAL_TOKENS)}",
                         "the synthetic tokenizer keeps Qwen's special tokens at their real ids."))
    return problems


def config_dir() -> Path:
    """The repo's configs/ folder; QWENBENCH_CONFIG_DIR points elsewhere."""
    env = os.environ.get("QWENBENCH_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def _spec_from_table(key: str, table: dict[str, Any], defaults: dict[str, Any], source: Path,
                     hybrid_defaults: dict[str, Any] | None = None) -> ModelSpec:
    arch = table.get("arch", defaults.get("arch"))
    family = (hybrid_defaults or {}) if arch in HYBRID_ARCHS else {}
    merged = {**defaults, **family, **table, "key": key}
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
    mirrors = merged.get("modelscope", [r for r in hub if r.split("/")[0] in MODELSCOPE_OWNERS])
    if not isinstance(mirrors, (list, tuple)) or not all(isinstance(r, str) and r.count("/") == 1 for r in mirrors):
        raise ConfigError(f"{where}.modelscope: must be a list of 'owner/name' repositories")
    merged["modelscope"] = tuple(mirrors)
    sections = merged.get("rope_sections", ())
    if not isinstance(sections, (list, tuple)) or not all(isinstance(v, int) and v >= 0 for v in sections):
        raise ConfigError(f"{where}.rope_sections: must be a list of whole numbers")
    merged["rope_sections"] = tuple(sections)
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
    hybrid = data.get("hybrid_defaults", {})
    return {key: _spec_from_table(key, table, defaults, source, hybrid) for key, table in models.items()}


@dataclass(frozen=True)
class UnsupportedModel:
    """A model this llama.cpp knows that qwenbench cannot run, and why (listed, refused by plan and run)."""

    key: str
    name: str
    arch: str
    reason: str


@lru_cache(maxsize=4)
def unsupported_models(path: Path | None = None) -> dict[str, UnsupportedModel]:
    source = path or config_dir() / "models.toml"
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    found = {}
    for key, table in data.get("unsupported", {}).items():
        if not all(isinstance(table.get(f), str) for f in ("name", "arch", "reason")):
            raise ConfigError(f"{source}: unsupported.{key}: needs name, arch and reason (strings)")
        found[key] = UnsupportedModel(key, table["name"], table["arch"], table["reason"])
    return found


def get_model(key: str) -> ModelSpec:
    """A catalog model by key (case-insensitive), or a UsageError naming the close matches."""
    catalog = load_catalog()
    found = catalog.get(key.lower())
    if found is not None:
        return found
    refused = unsupported_models().get(key.lower())
    if refused is not None:
        raise UsageError(f"{refused.name} ({refused.arch}) is not supported", hint=refused.reason)
    close = difflib.get_close_matches(key.lower(), list(catalog), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(catalog)}"
    raise UsageError(f"unknown model {key!r}", hint=hint + " (`qwenbench models` lists them)")
