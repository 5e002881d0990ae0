"""GGUF headers of files on the Hub, read with HTTP range requests and cached: plan a model (or write its
synthetic twin) from the exact tensor table of a file without downloading the file.

huggingface_hub's HfFileSystem does the ranged reads (HF_ENDPOINT, HF_TOKEN, retries, redirects), and
modelscope.RangeReader for a file on ModelScope; the parser consumes the stream sequentially and stops at
the end of the tensor table, so only the header's blocks are fetched (a few MB of a many-GB file). The raw
header bytes are cached under the file's SHA-256: content-addressed, so a re-uploaded file is a new entry
and a cached one never goes stale.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .catalog import ModelSpec
from .errors import QwenbenchError, UsageError
from .fit import ModelShape
from .gguf_info import GGUFHeader, merge_split_headers, parse_header
from .hub import (
    HubError,
    HubUnreachable,
    RemoteFile,
    Resolved,
    endpoint,
    not_published,
    resolve_quants,
    translate_error,
)
from .paths import cache_dir
from .recipe import tensor_table
from .tensors import TensorTable

READ_BLOCK = 1 << 20  # each range request asks for this much beyond what the parser needs


@dataclass(frozen=True)
class RemoteHeader:
    header: GGUFHeader  # one header for the whole model, split parts merged
    resolved: Resolved
    fetched_bytes: int  # over the network; 0 when every part came from the cache
    requests: int

    @property
    def fetched_fraction(self) -> float:
        return self.fetched_bytes / self.resolved.size if self.resolved.size else 0.0


@dataclass(frozen=True)
class HubTables:
    """What the Hub publishes of a model, as headers per quant, and what it lacks."""

    headers: dict[str, RemoteHeader]
    missing: tuple[str, ...]  # asked-for quants no candidate repo publishes

    @property
    def fetched_bytes(self) -> int:
        return sum(h.fetched_bytes for h in self.headers.values())

    @property
    def file_bytes(self) -> int:
        return sum(h.resolved.size for h in self.headers.values())


class _Recording:
    """A read-only stream that keeps a copy of what was read: the header bytes, for the cache."""

    def __init__(self, handle: object) -> None:
        self._handle = handle
        self.data = bytearray()

    def read(self, n: int) -> bytes:
        chunk = self._handle.read(n)  # type: ignore[attr-defined]
        self.data += chunk
        return chunk


def header_cache_path(remote: RemoteFile) -> Path | None:
    return cache_dir() / "headers" / f"{remote.sha256}.gguf-header" if remote.sha256 else None


def _read_part(resolved: Resolved, remote: RemoteFile, keep_arrays: bool) -> tuple[GGUFHeader, int, int]:
    """(header, bytes fetched, requests) of one file: from the cache, else by range requests."""
    from huggingface_hub import HfFileSystem

    repo, revision = resolved.repo, resolved.revision
    where = f"{resolved.origin['repo']}/{remote.path}"
    cached = header_cache_path(remote)
    if cached is not None and cached.exists():
        with cached.open("rb") as handle:
            return parse_header(handle, where, remote.size, keep_arrays=keep_arrays), 0, 0
    if resolved.source == "modelscope":
        from .modelscope import RangeReader

        reader = RangeReader(resolved, remote, READ_BLOCK)
        recording = _Recording(reader)
        header = parse_header(recording, where, remote.size, keep_arrays=keep_arrays)
        _store_header(cached, recording)
        return header, reader.fetched_bytes, reader.requests
    filesystem = HfFileSystem(endpoint=endpoint(), skip_instance_cache=True)
    try:
        with filesystem.open(where, "rb", revision=revision, block_size=READ_BLOCK) as handle:
            recording = _Recording(handle)
            header = parse_header(recording, where, remote.size, keep_arrays=keep_arrays)
            fetched, requests = handle.cache.total_requested_bytes, handle.cache.miss_count
    except QwenbenchError:
        raise
    except FileNotFoundError as exc:
        raise UsageError(f"{where} not found at revision {revision[:12]}", hint="check --repo and --revision") from exc
    except Exception as exc:
        raise translate_error(exc, repo) from exc
    _store_header(cached, recording)
    return header, fetched, requests


def _store_header(cached: Path | None, recording: _Recording) -> None:
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.part")
        partial.write_bytes(bytes(recording.data))
        os.replace(partial, cached)


def read_remote_header(resolved: Resolved, *, keep_arrays: bool = False) -> RemoteHeader:
    """The header of a resolved quant, every split part read (each part's header lists its own tensors)."""
    parts, fetched, requests = [], 0, 0
    for remote in resolved.files:
        header, part_fetched, part_requests = _read_part(resolved, remote, keep_arrays)
        parts.append(header)
        fetched += part_fetched
        requests += part_requests
    header = merge_split_headers(parts) if len(parts) > 1 else parts[0]
    return RemoteHeader(header, resolved, fetched, requests)


def hub_tables(spec: ModelSpec, quants: list[str], *, repo: str | None = None, revision: str | None = None,
               pinned: str | None = None, on_quant: Callable[[str, int, int], None] | None = None,
               source: str = "hf") -> HubTables:
    """The headers of the quants the catalog's repos publish; a pinned quant that none publishes is an error."""
    found, published = resolve_quants(spec, quants, repo=repo, revision=revision, source=source)
    if pinned is not None and pinned.upper() not in found:
        raise not_published(spec, pinned, published)
    headers = {}
    for number, (quant, resolved) in enumerate(found.items(), start=1):
        if on_quant is not None:
            on_quant(quant, number, len(found))
        headers[quant] = read_remote_header(resolved)
    return HubTables(headers, tuple(q.upper() for q in quants if q.upper() not in found))


@dataclass(frozen=True)
class PlanTables:
    """The tensor tables a plan weighs, and where they come from."""

    tables: dict[str, TensorTable]
    shape: ModelShape
    source: str  # "hub": the published files' headers; "recipe": the catalog's llama-quantize rules
    notes: tuple[str, ...]
    remote: dict[str, RemoteHeader]


def plan_tables(spec: ModelSpec, quants: list[str], *, pinned: str | None = None, repo: str | None = None,
                revision: str | None = None, offline: bool = False, source: str | None = None,
                on_quant: Callable[[str, int, int], None] | None = None) -> PlanTables:
    """Tables from the headers of the files the Hub (or ModelScope: --source, or the Hub out of reach) publishes;
    the catalog's recipe when offline, when no source can be reached, or when the repos publish none of the
    quants."""
    notes: list[str] = []
    chosen = source or "hf"
    repos = (repo,) if repo else (spec.modelscope if chosen == "modelscope" else spec.hub)
    where = "ModelScope" if chosen == "modelscope" else "Hub"
    if offline:
        notes.append("offline: tensor tables from the catalog's recipe (llama-quantize's rules), not the Hub's files")
    elif not repos:
        notes.append(f"{spec.name} lists no {where} repositories: tensor tables from the catalog's recipe")
    else:
        try:
            try:
                published = hub_tables(spec, quants, repo=repo, revision=revision, pinned=pinned, on_quant=on_quant,
                                       source=chosen)
            except HubUnreachable as exc:
                if source is not None or not (repo or spec.modelscope):
                    raise
                try:
                    published = hub_tables(spec, quants, repo=repo, revision=revision, pinned=pinned,
                                           on_quant=on_quant, source="modelscope")
                except HubError as other:
                    raise HubError(f"{exc.message} (and ModelScope: {other.message})") from exc
                from .modelscope import endpoint as modelscope_endpoint

                notes.append(f"{exc.message}: headers from ModelScope ({modelscope_endpoint()}) instead")
                repos = (repo,) if repo else spec.modelscope
        except HubError as exc:
            notes.append(f"{exc.message}: tensor tables from the catalog's recipe instead")
        else:
            if published.headers:
                if published.missing:
                    notes.append(f"not published in {', '.join(repos)}: {', '.join(published.missing)} (left out)")
                headers = published.headers
                first = next(iter(headers.values())).header
                return PlanTables({q: h.header.table for q, h in headers.items()}, first.shape(), "hub",
                                  tuple(notes), headers)
            notes.append(f"none of {', '.join(quants)} is published: tensor tables from the catalog's recipe")
    return PlanTables({q: tensor_table(spec, q) for q in quants}, spec.shape(), "recipe", tuple(notes), {})
