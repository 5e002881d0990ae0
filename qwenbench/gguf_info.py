"""Read a GGUF header (metadata and tensor table) fast, and reject files llama.cpp could not load.

gguf-py's GGUFReader parses every tokenizer string into numpy views (seconds for Qwen's 151k
tokens and merges); this reader skips large arrays, keeping only their length, so checking a file
costs milliseconds. It reads from any binary stream, so a remote header can be parsed the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import InvalidModelFileError
from .fit import HYBRID_ARCHS, ModelShape, is_linear_attention_layer
from .hubfiles import split_sibling
from .quants import preset_for_file_type
from .synth import SYNTHETIC_KEY, ValueTypes
from .tensors import TensorInfo, TensorTable

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_MAX_STRING = 1 << 26
_MAX_COUNT = 1 << 24
_KEEP_ARRAY_ITEMS = 64  # longer arrays (tokens, merges) are skipped; only their length is kept
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9
_INTEGERS = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_FLOATS = frozenset({6, 12})
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}
# this llama.cpp's LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS: it aborts (GGML_ASSERT) on a file beyond them
MAX_LAYERS = 512
MAX_EXPERTS = 1024
# where a file has attention.sliding_window but no pattern key, the pattern llama.cpp assumes (src/models/*.cpp:
# load_swa_pattern's default): every n-th layer full attention
SWA_PATTERNS = {"gemma3": 6, "gemma2": 2}


@dataclass(frozen=True)
class ArrayLength:
    """Stands in for a metadata array too long to keep (e.g. tokenizer.ggml.tokens)."""

    length: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    table: TensorTable
    data_offset: int
    file_size: int
    tensor_offsets: tuple[int, ...] = field(repr=False, default=())
    # each key's GGUF value type (and item type for arrays), so a header can be written out again
    value_types: ValueTypes = field(repr=False, default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{key}", default)

    def per_layer(self, key: str) -> list[int] | None:
        """An arch key llama.cpp reads as one value or one per layer (get_key_or_arr), as a list; None if absent."""
        value = self.arch_value(key)
        if value is None:
            return None
        return list(value) if isinstance(value, list) else [value]

    @property
    def is_synthetic(self) -> bool:
        return self.metadata.get(SYNTHETIC_KEY) is True

    @property
    def quant(self) -> str:
        stored = self.metadata.get("qwenbench.quant")
        if stored:
            return stored
        file_type = self.metadata.get("general.file_type")
        named = preset_for_file_type(file_type) if file_type is not None else None
        return named or "unknown"

    @property
    def n_vocab(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayLength):
            return tokens.length
        return len(tokens) if isinstance(tokens, list) else 0

    @property
    def n_expert(self) -> int:
        return self.arch_value("expert_count", 0)

    @property
    def n_expert_used(self) -> int:
        return max(self.per_layer("expert_used_count") or [0])

    def shape(self) -> ModelShape:
        """The hyperparameters of the memory model, with llama.cpp's defaults for absent keys (parse_header has
        checked every one's type and range). Per-layer values reduce to what the memory model needs of them:
        the widest layer for buffers, the mean KV heads for the KV cache (its size is the sum over layers)."""
        n_embd = self.arch_value("embedding_length", 0)
        heads = self.per_layer("attention.head_count") or [1]
        kv_heads = self.per_layer("attention.head_count_kv") or heads
        head_dim = n_embd // heads[0] if heads[0] else 0  # llama.cpp's default takes the first layer's heads
        n_layer = self.arch_value("block_count", 0)
        return ModelShape(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=max(heads),
            n_head_kv=-(-sum(kv_heads) // len(kv_heads)),
            head_dim_k=self.arch_value("attention.key_length", head_dim),
            head_dim_v=self.arch_value("attention.value_length", head_dim),
            n_vocab=self.n_vocab,
            n_ff=max(self.per_layer("feed_forward_length") or [0]),
            n_expert=self.n_expert,
            n_expert_used=self.n_expert_used,
            n_ff_exp=max(self.per_layer("expert_feed_forward_length") or [0]),
            **self._layer_layout(n_layer),
        )

    def _layer_layout(self, n_layer: int) -> dict[str, Any]:
        """How each layer attends, as llama.cpp reads it: a hybrid's recurrent layers (attention.recurrent_layers,
        else every layer but each full_attention_interval-th; the nextn_predict_layers MTP block last), a
        sliding-window model's windowed layers (attention.sliding_window_pattern, else the architecture's
        default pattern), and the recurrent state's size from the ssm.* keys."""
        n_nextn = min(self.arch_value("nextn_predict_layers", 0), n_layer)
        trunk = n_layer - n_nextn
        kinds: tuple[str, ...] = ()
        layout: dict[str, Any] = {"n_layer_nextn": n_nextn}
        if self.arch in HYBRID_ARCHS:
            flags = self.arch_value("attention.recurrent_layers")
            if isinstance(flags, list) and len(flags) >= trunk:
                recurrent = [bool(flag) for flag in flags[:trunk]]
            else:
                interval = max(1, self.arch_value("full_attention_interval", 4))
                recurrent = [is_linear_attention_layer(il, interval) for il in range(trunk)]
            kinds = tuple("recurrent" if r else "full" for r in recurrent)
            conv, inner = self.arch_value("ssm.conv_kernel", 0), self.arch_value("ssm.inner_size", 0)
            state, groups = self.arch_value("ssm.state_size", 0), self.arch_value("ssm.group_count", 0)
            layout["n_embd_r"] = max(conv - 1, 0) * (inner + 2 * groups * state)
            layout["n_embd_s"] = state * inner
        window = self.arch_value("attention.sliding_window", 0)
        pattern = self.arch_value("attention.sliding_window_pattern", SWA_PATTERNS.get(self.arch))
        if window and pattern is not None and not kinds:
            if isinstance(pattern, list):
                swa = [bool(flag) for flag in pattern[:trunk]] + [False] * max(0, trunk - len(pattern))
            else:  # set_swa_pattern: every pattern-th layer is full attention, the others windowed
                swa = [pattern == 0 or il % pattern < pattern - 1 for il in range(trunk)]
            kinds = tuple("swa" if w else "full" for w in swa)
            layout["n_swa"] = window
        layout["layer_kinds"] = kinds
        return layout

    @property
    def split_count(self) -> int:
        return self.metadata.get("split.count", 1)


class _Stream:
    """Sequential little-endian reads over a binary stream, with bounds that catch garbage."""

    def __init__(self, handle: IO[bytes], where: str, keep_arrays: bool = False) -> None:
        self._handle = handle
        self._where = where
        self._keep_arrays = keep_arrays
        self.position = 0
        self.last_item_type: int | None = None

    def read(self, n: int) -> bytes:
        data = self._handle.read(n)
        if len(data) != n:
            ends = self.position + len(data)
            raise InvalidModelFileError(f"{self._where}: truncated GGUF header (ends at byte {ends})",
                                        hint="the file is incomplete: download or write it again")
        self.position += n
        return data

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.read(size))[0]

    def string(self) -> str:
        length = self.unpack("Q")
        if length > _MAX_STRING:
            raise InvalidModelFileError(f"{self._where}: corrupt GGUF header (a string of {length} bytes)")
        return self.read(length).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        # reading (not seeking) keeps this working on non-seekable streams such as HTTP bodies
        while n:
            n -= len(self.read(min(n, 1 << 20)))

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("I")
            count = self.unpack("Q")
            if count > _MAX_COUNT:
                raise InvalidModelFileError(f"{self._where}: corrupt GGUF header (an array of {count} items)")
            # per-layer hyperparameters are numeric arrays of up to MAX_LAYERS items: kept, so they can be checked
            per_layer = item_type in _INTEGERS and count <= MAX_LAYERS
            if count > _KEEP_ARRAY_ITEMS and not (self._keep_arrays or per_layer):
                self._skip_array(item_type, count)
                self.last_item_type = item_type
                return ArrayLength(count)
            items = [self.value(item_type) for _ in range(count)]
            self.last_item_type = item_type
            return items
        raise InvalidModelFileError(f"{self._where}: corrupt GGUF header (unknown value type {vtype})")

    def _skip_array(self, item_type: int, count: int) -> None:
        if item_type in _SCALARS:
            self.skip(struct.calcsize("<" + _SCALARS[item_type]) * count)
            return
        for _ in range(count):
            if item_type == _STRING:
                length = self.unpack("Q")
                if length > _MAX_STRING:
                    raise InvalidModelFileError(f"{self._where}: corrupt GGUF header (a string of {length} bytes)")
                self.skip(length)
            else:
                self.value(item_type)


# ------------------------------------------------------------------------------------- metadata rules


@dataclass(frozen=True)
class _Rule:
    """What the value of a metadata key qwenbench interprets must be."""

    kind: str  # "int", "bool" or "string"
    low: int = 0
    high: int = 0
    per_layer: bool = False  # llama.cpp also takes an array of one value per layer (get_key_or_arr)
    types: frozenset[int] = _INTEGERS  # the GGUF value types an "int" may be stored as
    power_of_two: bool = False

    def expected(self) -> str:
        if self.kind == "bool":
            return "a bool (true or false)"
        if self.kind == "string":
            return "a string"
        if self.power_of_two:
            return f"a power of two stored as {'/'.join(_TYPE_NAMES[t] for t in sorted(self.types))}"
        layered = f" (or one per layer, each from 0 to {self.high})" if self.per_layer else ""
        return f"a whole number from {self.low} to {self.high}{layered}"


# "{arch}" stands for general.architecture. Bounds are llama.cpp's where it has them, else far beyond any real
# model: what lies past them is garbage that would otherwise reach the planner's arithmetic.
METADATA_RULES: dict[str, _Rule] = {
    "general.architecture": _Rule("string"),
    "general.alignment": _Rule("int", 1, 1 << 30, types=frozenset({_UINT32}), power_of_two=True),  # gguf.cpp: u32
    "general.file_type": _Rule("int", 0, 0xFFFF),
    "split.count": _Rule("int", 1, 0xFFFF),
    "split.no": _Rule("int", 0, 0xFFFE),
    "split.tensors.count": _Rule("int", 0, _MAX_COUNT),
    SYNTHETIC_KEY: _Rule("bool"),
    "qwenbench.quant": _Rule("string"),
    "qwenbench.model_key": _Rule("string"),
    "{arch}.block_count": _Rule("int", 1, MAX_LAYERS),
    "{arch}.context_length": _Rule("int", 1, 1 << 30),
    "{arch}.embedding_length": _Rule("int", 1, 1 << 20),
    "{arch}.feed_forward_length": _Rule("int", 0, 1 << 22, per_layer=True),
    "{arch}.attention.head_count": _Rule("int", 1, 1 << 12, per_layer=True),
    "{arch}.attention.head_count_kv": _Rule("int", 0, 1 << 12, per_layer=True),
    "{arch}.attention.key_length": _Rule("int", 1, 1 << 16),
    "{arch}.attention.value_length": _Rule("int", 1, 1 << 16),
    "{arch}.expert_count": _Rule("int", 0, MAX_EXPERTS),
    "{arch}.expert_used_count": _Rule("int", 0, MAX_EXPERTS, per_layer=True),
    "{arch}.expert_feed_forward_length": _Rule("int", 0, 1 << 22, per_layer=True),
    "{arch}.full_attention_interval": _Rule("int", 1, MAX_LAYERS),
    "{arch}.nextn_predict_layers": _Rule("int", 0, MAX_LAYERS),
    "{arch}.attention.sliding_window": _Rule("int", 0, 1 << 30),
    "{arch}.ssm.conv_kernel": _Rule("int", 0, 1 << 10),
    "{arch}.ssm.inner_size": _Rule("int", 0, 1 << 22),
    "{arch}.ssm.state_size": _Rule("int", 0, 1 << 16),
    "{arch}.ssm.group_count": _Rule("int", 0, 1 << 12),
    "{arch}.ssm.time_step_rank": _Rule("int", 0, 1 << 16),
}
_DAMAGED = "the file's header is damaged or was written by a broken converter: download or convert it again"
_OURS = "the qwenbench.* keys of a header are written by `qwenbench synth`: damaged here, write the file again"


def _describe(value: Any, vtype: int, item_type: int | None) -> str:
    """A found value as a user can recognise it, with its GGUF type where that is the problem."""
    if vtype == _STRING:
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {text!r}"
    if vtype == _BOOL:
        return f"the bool {'true' if value else 'false'}"
    if vtype in _FLOATS:
        return f"the {_TYPE_NAMES[vtype]} {value!r}"
    if vtype == _ARRAY:
        count = value.length if isinstance(value, ArrayLength) else len(value)
        return f"an array of {count} {_TYPE_NAMES.get(item_type, '?')} values"
    return f"{value} ({_TYPE_NAMES[vtype]})"


def _rule_holds(rule: _Rule, value: Any, vtype: int, item_type: int | None, n_layer: int | None) -> bool:
    if rule.kind == "bool":
        return vtype == _BOOL
    if rule.kind == "string":
        return vtype == _STRING
    if vtype == _ARRAY:
        # llama.cpp refuses a per-layer array whose length is not block_count
        return (rule.per_layer and isinstance(value, list) and item_type in _INTEGERS
                and (n_layer is None or len(value) == n_layer) and all(0 <= v <= rule.high for v in value))
    # the type, not isinstance: Python's bool is an int, and a GGUF bool is no number
    if vtype not in rule.types or not rule.low <= value <= rule.high:
        return False
    return not rule.power_of_two or value & (value - 1) == 0


def validate_metadata(metadata: dict[str, Any], value_types: ValueTypes, where: str) -> None:
    """Refuse a header whose keys qwenbench interprets have the wrong type, are out of range, or contradict
    each other the way llama.cpp aborts on; what qwenbench reads from a header that passes is well typed."""

    def refuse(message: str, key: str = "") -> InvalidModelFileError:
        return InvalidModelFileError(f"{where}: {message}", hint=_OURS if key.startswith("qwenbench.") else _DAMAGED)

    def check(key: str, rule: _Rule, n_layer: int | None) -> None:
        if key not in metadata:
            return
        value = metadata[key]
        vtype, item_type = value_types[key]
        if _rule_holds(rule, value, vtype, item_type, n_layer):
            return
        found = _describe(value, vtype, item_type)
        if rule.per_layer and isinstance(value, list) and n_layer is not None and len(value) != n_layer:
            found += f", not one per layer (block_count {n_layer})"
        raise refuse(f"metadata {key} must be {rule.expected()}, found {found}", key)

    check("general.architecture", METADATA_RULES["general.architecture"], None)
    arch = metadata.get("general.architecture", "")
    block_key = f"{arch}.block_count"
    check(block_key, METADATA_RULES["{arch}.block_count"], None)
    n_layer = metadata.get(block_key) if arch else None
    for pattern, rule in METADATA_RULES.items():
        if "{arch}" in pattern and not arch:
            continue  # a later split part has no architecture, and no model keys either
        check(pattern.replace("{arch}", arch), rule, n_layer)

    def layers(key: str, default: list[int]) -> list[int]:
        value = metadata.get(f"{arch}.{key}")
        if value is None:
            return default
        return list(value) if isinstance(value, list) else [value] * (n_layer or 1)

    if arch:
        n_expert = metadata.get(f"{arch}.expert_count", 0)
        used = max(layers("expert_used_count", [0]))
        # llama.cpp asserts both, killing the process: refuse the file before it gets there
        if used > n_expert:
            raise refuse(f"metadata {arch}.expert_used_count {used} is more than {arch}.expert_count {n_expert}")
        if n_expert and not used:
            raise refuse(f"metadata {arch}.expert_count is {n_expert} but {arch}.expert_used_count is "
                         f"{'0' if f'{arch}.expert_used_count' in metadata else 'missing'}: an MoE model routes "
                         "each token to at least one expert")
        heads = layers("attention.head_count", [])
        kv_heads = layers("attention.head_count_kv", heads)
        for layer, (n_head, n_kv) in enumerate(zip(heads, kv_heads, strict=False)):
            # grouped-query attention: ggml asserts each KV head serves a whole number of query heads
            if n_kv and n_head % n_kv:
                at = f" (layer {layer})" if len(heads) > 1 else ""
                raise refuse(f"metadata {arch}.attention.head_count {n_head} is not a multiple of "
                             f"{arch}.attention.head_count_kv {n_kv}{at}")
    if "split.no" in metadata and metadata["split.no"] >= metadata.get("split.count", 1):
        raise refuse(f"metadata split.no {metadata['split.no']} is not below split.count "
                     f"{metadata.get('split.count', 1)}")


def parse_header(handle: IO[bytes], where: str, file_size: int | None = None, *,
                 keep_arrays: bool = False) -> GGUFHeader:
    """Parse a GGUF header from a stream positioned at the file's start; it reads nothing past the tensor
    table. keep_arrays keeps long arrays (the tokenizer) whole, to write the header out again."""
    stream = _Stream(handle, where, keep_arrays)
    if stream.read(4) != GGUF_MAGIC:
        raise InvalidModelFileError(f"{where}: not a GGUF file (bad magic)",
                                    hint="qwenbench runs llama.cpp GGUF models (.gguf)")
    version = stream.unpack("I")
    if version not in (2, 3):
        raise InvalidModelFileError(f"{where}: unsupported GGUF version {version}")
    n_tensors = stream.unpack("Q")
    n_kv = stream.unpack("Q")
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise InvalidModelFileError(f"{where}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
    metadata: dict[str, Any] = {}
    value_types: ValueTypes = {}
    for _ in range(n_kv):
        key = stream.string()
        vtype = stream.unpack("I")
        metadata[key] = stream.value(vtype)
        value_types[key] = (vtype, stream.last_item_type if vtype == _ARRAY else None)
    validate_metadata(metadata, value_types, where)
    tensors = []
    offsets = []
    for _ in range(n_tensors):
        name = stream.string()
        n_dims = stream.unpack("I")
        if not 1 <= n_dims <= 4:
            raise InvalidModelFileError(f"{where}: corrupt tensor info for {name!r} ({n_dims} dimensions)")
        shape = tuple(stream.unpack("Q") for _ in range(n_dims))
        type_id = stream.unpack("I")
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            raise InvalidModelFileError(f"{where}: tensor {name!r} has unknown ggml type {type_id}",
                                        hint="a newer llama.cpp may know it; qwenbench's does not") from None
        if ggml_type not in GGML_QUANT_SIZES:
            raise InvalidModelFileError(f"{where}: tensor {name!r} has unsupported type {ggml_type.name}")
        tensors.append(TensorInfo(name, int(ggml_type), shape))
        offsets.append(stream.unpack("Q"))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    data_offset = -(-stream.position // alignment) * alignment
    header = GGUFHeader(Path(where), version, metadata, TensorTable(tuple(tensors)), data_offset,
                        file_size if file_size is not None else -1, tuple(offsets), value_types)
    if "general.architecture" not in metadata and not metadata.get("split.no"):  # later split parts have none
        raise InvalidModelFileError(f"{where}: GGUF without general.architecture")
    return header


def read_header(path: Path) -> GGUFHeader:
    """Read and validate a local GGUF: header sane, every tensor's bytes present in the file."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelFileError(f"{path}: no such file", hint="check the path, or use --model/--quant")
    if path.is_dir():
        raise InvalidModelFileError(f"{path}: is a directory, not a GGUF file")
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header = parse_header(handle, str(path), size)
    except OSError as exc:
        raise InvalidModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        spans = zip(header.tensor_offsets, header.table.tensors, strict=True)
        end = max((offset + tensor.n_bytes for offset, tensor in spans), default=0)
    except ValueError as exc:
        raise InvalidModelFileError(f"{path}: corrupt tensor table: {exc}") from exc
    if header.data_offset + end > size:
        missing = header.data_offset + end - size
        raise InvalidModelFileError(
            f"{path}: truncated GGUF: tensor data needs {header.data_offset + end:,} bytes, the file has {size:,} "
            f"({missing:,} missing)", hint="the download or copy was cut short: fetch or write the file again")
    return header


SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def merge_split_headers(parts: Sequence[GGUFHeader]) -> GGUFHeader:
    """One header for a model split across files (gguf-split): the first part's metadata, every part's tensors."""
    first = parts[0]
    tensors = tuple(t for part in parts for t in part.table.tensors)
    expected = first.metadata.get("split.tensors.count", len(tensors))
    if len(tensors) != expected:
        raise InvalidModelFileError(f"{first.path}: the parts hold {len(tensors)} tensors, the split says {expected}",
                                    hint="the parts come from different files: fetch them again")
    return replace(first, table=TensorTable(tensors), file_size=sum(p.file_size for p in parts), tensor_offsets=())


def read_model_header(path: Path) -> GGUFHeader:
    """read_header, and for the first part of a split model the header of the whole model across its parts."""
    header = read_header(path)
    if header.split_count <= 1:
        return header
    path = Path(path)
    if header.metadata.get("split.no", 0) != 0:
        first = split_sibling(path.name, 1)
        raise InvalidModelFileError(f"{path}: part {header.metadata['split.no'] + 1} of a split model",
                                    hint=f"give the first part{f' ({first})' if first else ''}")
    parts = [header]
    for number in range(2, header.split_count + 1):
        name = split_sibling(path.name, number)
        sibling = path.with_name(name) if name else None
        if sibling is None or not sibling.exists():
            raise InvalidModelFileError(f"{path}: part {number} of {header.split_count} is missing"
                                        + (f" ({sibling.name})" if sibling else ""),
                                        hint="download every part into the same folder")
        parts.append(read_header(sibling))
    return merge_split_headers(parts)
