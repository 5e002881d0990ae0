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
from .fit import ModelShape
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
_STRING, _ARRAY = 8, 9


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

    @property
    def is_synthetic(self) -> bool:
        return bool(self.metadata.get(SYNTHETIC_KEY, False))

    @property
    def quant(self) -> str:
        stored = self.metadata.get("qwenbench.quant")
        if stored:
            return str(stored)
        file_type = self.metadata.get("general.file_type")
        named = preset_for_file_type(int(file_type)) if file_type is not None else None
        return named or "unknown"

    @property
    def n_vocab(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayLength):
            return tokens.length
        return len(tokens) if isinstance(tokens, list) else 0

    @property
    def n_expert(self) -> int:
        return int(self.arch_value("expert_count", 0) or 0)

    @property
    def n_expert_used(self) -> int:
        return int(self.arch_value("expert_used_count", 0) or 0)

    def shape(self) -> ModelShape:
        """The hyperparameters of the memory model, with llama.cpp's defaults for absent keys."""
        n_embd = int(self.arch_value("embedding_length", 0) or 0)
        n_head = int(self.arch_value("attention.head_count", 1) or 1)
        head_dim = n_embd // n_head if n_head else 0
        return ModelShape(
            n_layer=int(self.arch_value("block_count", 0) or 0),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(self.arch_value("attention.head_count_kv", n_head) or n_head),
            head_dim_k=int(self.arch_value("attention.key_length", head_dim) or head_dim),
            head_dim_v=int(self.arch_value("attention.value_length", head_dim) or head_dim),
            n_vocab=self.n_vocab,
            n_ff=int(self.arch_value("feed_forward_length", 0) or 0),
            n_expert=self.n_expert,
            n_expert_used=self.n_expert_used,
            n_ff_exp=int(self.arch_value("expert_feed_forward_length", 0) or 0),
        )

    @property
    def split_count(self) -> int:
        return int(self.metadata.get("split.count", 1) or 1)


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
            if count > _KEEP_ARRAY_ITEMS and not self._keep_arrays:
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
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise InvalidModelFileError(f"{where}: corrupt GGUF header (alignment {alignment})")
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
    expected = int(first.metadata.get("split.tensors.count", len(tensors)) or len(tensors))
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
    if int(header.metadata.get("split.no", 0) or 0) != 0:
        first = split_sibling(path.name, 1)
        raise InvalidModelFileError(f"{path}: part {int(header.metadata['split.no']) + 1} of a split model",
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
