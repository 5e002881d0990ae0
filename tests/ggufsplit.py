"""Split a GGUF into parts the way llama.cpp's gguf-split does (the first part holds the metadata, every part
its tensors and the split.* keys), through gguf-py's own shard writer: split models in tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

from qwenbench.gguf_info import read_header
from qwenbench.synth import copy_metadata


def split_gguf(source: Path, first_part: Path, tensors_per_part: int) -> list[Path]:
    """Write `source` as `<stem>-0000k-of-0000n.gguf` parts next to `first_part` (a name without the suffix)."""
    header = read_header(source)
    from qwenbench.gguf_info import parse_header

    with source.open("rb") as handle:
        full = parse_header(handle, str(source), keep_arrays=True)
    data = np.memmap(source, dtype=np.uint8, mode="r")
    first_part.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(first_part, header.arch, split_max_tensors=tensors_per_part)
    copy_metadata(writer, full.metadata, full.value_types)
    for tensor, offset in zip(header.table.tensors, header.tensor_offsets, strict=True):
        ggml_type = GGMLQuantizationType(tensor.ggml_type)
        block, type_bytes = GGML_QUANT_SIZES[ggml_type]
        start = header.data_offset + offset
        row_bytes = tensor.shape[0] // block * type_bytes
        # gguf-py takes quantized data as bytes shaped (outer dims..., bytes per row)
        raw = np.array(data[start:start + tensor.n_bytes]).reshape(*reversed(tensor.shape[1:]), row_bytes)
        writer.add_tensor(tensor.name, raw, raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    count = -(-len(header.table.tensors) // tensors_per_part)
    return [first_part.with_name(f"{first_part.stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
