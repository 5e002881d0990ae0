"""Find a model's GGUF on the Hugging Face Hub, download it into the standard cache, prove it intact.

Everything goes through huggingface_hub (listing, metadata, resumable downloads, the HF cache layout,
HF_ENDPOINT mirrors, HF_TOKEN, offline mode); this module picks the files, checks disk space and
SHA-256 against the Hub's LFS metadata, and turns the library's errors into one line with a hint.
ModelScope is the second source (modelscope.py): the same records, and a fallback to it when the Hub
cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from .catalog import ModelSpec
from .errors import Interrupted, QwenbenchError, UsageError
from .hubfiles import available_quants, files_for_quant
from .modelfile import file_sha256, remember_sha256

Progress = Callable[[str, int, int], None]  # (file name, bytes done, bytes total)
DOWNLOAD_CHUNK_BYTES = 128 << 10


class HubError(QwenbenchError):
    """The Hub could not give us the file: unreachable, refused, or what it sent was not intact."""


class HubUnreachable(HubError):
    """No answer at all (refused, timed out, no route): the case where another source is worth trying."""


SOURCES = ("hf", "modelscope")  # --source: the Hugging Face Hub, ModelScope


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # from the LFS pointer; None for a small non-LFS file
    revision: str | None = None  # the commit that last changed the file, where the source lists it (ModelScope)


@dataclass(frozen=True)
class Resolved:
    repo: str
    revision: str  # the commit the files were resolved at
    quant: str
    files: tuple[RemoteFile, ...]
    source: str = "hf"  # one of SOURCES
    ref: str = ""  # the branch or tag a source that serves files by name, not commit, downloads from (ModelScope)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def origin(self) -> dict[str, str]:
        """What a result row records of where the file came from: a ModelScope repo is marked as such, so the
        row's model_repo never passes for a Hub repo of the same name."""
        repo = self.repo if self.source == "hf" else f"{self.source}:{self.repo}"
        return {"repo": repo, "revision": self.revision}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    """The standard Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub), read now rather than at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                     "huggingface")
    return Path(home) / "hub"


def offline_mode(flag: bool) -> bool:
    return flag or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def translate_error(exc: Exception, repo: str) -> QwenbenchError:
    """huggingface_hub's exception as one line with a hint."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return HubError(f"{repo} is gated: accept its terms on the Hub and give a token",
                        hint="set HF_TOKEN (it is never printed or recorded)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return UsageError(f"{repo} has no revision like that", hint="check --revision (a branch, tag or commit)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return UsageError(f"repository {repo} not found on {endpoint()}",
                          hint="check --repo, or HF_TOKEN for a private repo")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError("offline mode is on and the file is not in the cache",
                        hint="run `qwenbench pull` once while online, or unset HF_HUB_OFFLINE")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and status >= 500:
            return HubError(f"the Hub answered {status} for {repo}", hint="a temporary outage: try again later")
        return HubError(f"the Hub refused the request for {repo}: {str(exc).splitlines()[0]}")
    return HubUnreachable(f"cannot reach {endpoint()} ({type(exc).__name__})",
                          hint="check the network or HF_ENDPOINT; use --offline to run from the cache")


def _list_files(repo: str, revision: str | None) -> tuple[str, list[RemoteFile]]:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint()).model_info(repo, revision=revision, files_metadata=True)
    files = [RemoteFile(s.rfilename, int(s.size or 0), s.lfs.sha256 if s.lfs else None) for s in info.siblings or []]
    return str(info.sha), files


def _listings(spec: ModelSpec, repo: str | None, revision: str | None) -> Iterator[tuple[str, str, list[RemoteFile]]]:
    """(repo, commit, files) of each candidate repo in order of preference (or --repo alone), listed lazily."""
    from huggingface_hub import errors

    candidates = (repo,) if repo else spec.hub
    if not candidates:
        raise UsageError(f"{spec.name} lists no Hub repositories", hint="pass --repo OWNER/NAME")
    for candidate in candidates:
        try:
            commit, files = _list_files(candidate, revision)
        except errors.RepositoryNotFoundError as exc:
            if repo or isinstance(exc, errors.GatedRepoError):
                raise translate_error(exc, candidate) from exc
            continue  # a community repo that is gone: try the next one
        except Exception as exc:
            raise translate_error(exc, candidate) from exc
        yield candidate, commit, files


def resolve_quants(spec: ModelSpec, quants: list[str], *, repo: str | None = None, revision: str | None = None,
                   source: str = "hf") -> tuple[dict[str, Resolved], dict[str, list[str]]]:
    """Each quant in the first candidate repo that has it, listing each repo once; with what each listed repo
    publishes (for the error that names them)."""
    ref = ""
    if source == "modelscope":
        from . import modelscope

        listings, ref = modelscope.listings(spec, repo, revision), revision or modelscope.DEFAULT_REF
    else:
        listings = _listings(spec, repo, revision)
    wanted = [q.upper() for q in quants]
    found: dict[str, Resolved] = {}
    published: dict[str, list[str]] = {}
    for candidate, commit, files in listings:
        paths = [f.path for f in files]
        published[candidate] = available_quants(paths)
        by_path = {f.path: f for f in files}
        for quant in wanted:
            chosen = files_for_quant(paths, quant) if quant not in found else None
            if chosen:
                remotes = tuple(by_path[p] for p in chosen)
                # ModelScope lists a commit per file, not per repo: the first part's pins what was resolved
                found[quant] = Resolved(candidate, remotes[0].revision or commit, quant, remotes, source, ref)
        if len(found) == len(wanted):
            break
    return found, published


def not_published(spec: ModelSpec, quant: str, published: dict[str, list[str]]) -> UsageError:
    where = "; ".join(f"{r}: {', '.join(q) or 'no GGUF files'}" for r, q in published.items())
    return UsageError(f"no {quant.upper()} GGUF of {spec.name} found",
                      hint=f"published quants: {where or 'no repository answered'}")


def resolve(spec: ModelSpec, quant: str, *, repo: str | None = None, revision: str | None = None,
            source: str = "hf") -> Resolved:
    """The first candidate repo (or --repo) that has the quant, at a pinned commit."""
    found, published = resolve_quants(spec, [quant], repo=repo, revision=revision, source=source)
    if quant.upper() not in found:
        raise not_published(spec, quant, published)
    return found[quant.upper()]


def check_disk(resolved: Resolved, cache: Path, variable: str = "HF_HUB_CACHE") -> None:
    target = cache
    while not target.exists() and target != target.parent:
        target = target.parent
    free = shutil.disk_usage(target).free
    if resolved.size > free:
        raise HubError(f"{resolved.repo} {resolved.quant} needs {resolved.size / 1e9:.1f} GB, "
                       f"{free / 1e9:.1f} GB free at {target}",
                       hint=f"free some space, or point {variable} at a larger disk")


def verify_file(path: Path, expected: RemoteFile, on_progress: Progress | None) -> bool:
    """Whether a downloaded file is the one listed: its SHA-256 (its size, for a small file listed without one)."""
    if expected.sha256 is None:
        return path.stat().st_size == expected.size
    name = f"verifying {expected.path}"
    digest = file_sha256(path, (lambda d, t: on_progress(name, d, t)) if on_progress else None)
    return digest == expected.sha256


def _drop(path: Path) -> None:
    """Remove a cached file and the blob behind its snapshot link, so the next download starts clean."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


class HashingWriter:
    """The file huggingface_hub's http_get writes to, hashing bytes as they pass on a worker thread (hashlib
    releases the GIL), so the SHA-256 costs no second read and does not slow the transfer; the partial prefix a
    killed pull left is hashed first. Any rewind makes the digest unknown, and verification re-reads."""

    _QUEUED_CHUNKS = 64  # bytes in flight stay bounded: chunks are DOWNLOAD_CHUNK_SIZE each

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._digest: hashlib._Hash | None = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(self._QUEUED_CHUNKS)
        self._hasher = threading.Thread(target=self._hash, daemon=True)
        self._hasher.start()
        handle.seek(0)
        while chunk := handle.read(8 << 20):
            self._chunks.put(chunk)

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._digest is not None:
                self._digest.update(chunk)

    def write(self, data: bytes) -> int:
        if self._digest is not None:
            self._chunks.put(bytes(data))  # a copy only if the caller reuses its buffer
        return self._handle.write(data)

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, *args: int) -> int:
        self._digest = None
        return self._handle.seek(*args)

    def truncate(self, *args: int) -> int:
        self._digest = None
        return self._handle.truncate(*args)

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str | None:
        """The digest of everything written; stops the worker, so call it once, at the end."""
        self._chunks.put(None)
        self._hasher.join()
        return self._digest.hexdigest() if self._digest is not None else None


def _fetch_blob(repo: str, remote: RemoteFile, revision: str, cache: Path) -> None:
    """Download one file into the cache's blob store, continuing a partial blob a killed pull left behind.

    huggingface_hub (2.x) writes each download to a fresh temporary file and deletes it on failure, so
    an interrupted 18 GB pull would start over; this keeps `<blob>.incomplete` and asks its `http_get`
    for the missing range. hf_hub_download then finds the blob and only links it into the snapshot.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, remote.path, revision=revision, endpoint=endpoint())
    metadata = get_hf_file_metadata(url, endpoint=endpoint())
    if not metadata.etag:
        return  # let hf_hub_download fetch it the ordinary way
    blobs = cache / f"models--{repo.replace('/', '--')}" / "blobs"
    blob = blobs / metadata.etag
    if blob.exists():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(blob.name + ".incomplete")
    with partial.open("a+b") as handle:
        done = handle.tell()
        if metadata.size is not None and done > metadata.size:  # not ours after all: start over
            handle.truncate(0)
            done = 0
        writer = HashingWriter(handle)
        try:
            if metadata.size is None or done < metadata.size:
                headers = build_hf_headers()
                if urlparse(metadata.location).netloc != urlparse(url).netloc:
                    headers.pop("authorization", None)  # the token is for the Hub, not the CDN it redirects to
                # http_get assembles each DOWNLOAD_CHUNK_SIZE chunk (10 MB) from 64 KB socket reads in a fresh
                # BytesIO: at loopback speeds that copying and page-faulting cost half the throughput; 128 KB not
                constants.DOWNLOAD_CHUNK_SIZE = DOWNLOAD_CHUNK_BYTES
                http_get(metadata.location, writer, resume_size=done, headers=headers, expected_size=metadata.size,
                         displayed_filename=remote.path.rsplit("/", 1)[-1])
        finally:
            digest = writer.hexdigest()
    os.replace(partial, blob)
    if digest is not None:
        remember_sha256(blob, digest)  # hashed while writing: verifying costs no second read


def download(resolved: Resolved, *, offline: bool = False, on_progress: Progress | None = None) -> list[Path]:
    """Every file of a resolved quant in the HF cache (ModelScope's, for its files), verified; a file that does
    not match is fetched again once, then refused."""
    if resolved.source == "modelscope":
        from . import modelscope

        return modelscope.download(resolved, offline=offline, on_progress=on_progress)
    from huggingface_hub import hf_hub_download

    cache = hub_cache_dir()
    if not offline:
        check_disk(resolved, cache)
    paths = []
    for remote in resolved.files:
        for attempt in (1, 2):
            try:
                if not offline:
                    _fetch_blob(resolved.repo, remote, resolved.revision, cache)
                local = Path(hf_hub_download(resolved.repo, remote.path, revision=resolved.revision,
                                             cache_dir=cache, endpoint=endpoint(), local_files_only=offline))
            except KeyboardInterrupt:
                raise Interrupted(f"download of {remote.path} interrupted; the bytes so far are kept in {cache}",
                                  hint="run the same command again: it continues where it stopped") from None
            except Exception as exc:
                raise translate_error(exc, resolved.repo) from exc
            if verify_file(local, remote, on_progress):
                paths.append(local)
                break
            _drop(local)
            if offline or attempt == 2:
                raise HubError(f"{remote.path} from {resolved.repo} does not match the Hub's SHA-256 "
                               f"(expected {remote.sha256})",
                               hint="the download was corrupted twice: check the network or mirror (HF_ENDPOINT)")
    return paths


def resolve_offline(spec: ModelSpec, quant: str, *, repo: str | None = None) -> Resolved:
    """The quant from the local HF cache alone; the blob names there are the files' SHA-256."""
    cache = hub_cache_dir()
    for candidate in (repo,) if repo else spec.hub:
        snapshots = cache / f"models--{candidate.replace('/', '--')}" / "snapshots"
        if not snapshots.is_dir():
            continue
        for snapshot in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            local = [str(p.relative_to(snapshot)) for p in snapshot.rglob("*.gguf")]
            chosen = files_for_quant(local, quant)
            if chosen:
                files = []
                for relative in chosen:
                    blob = (snapshot / relative).resolve()
                    sha = blob.name if len(blob.name) == 64 else None
                    files.append(RemoteFile(relative, blob.stat().st_size, sha))
                return Resolved(candidate, snapshot.name, quant.upper(), tuple(files))
    raise HubError(f"offline, and no {quant.upper()} GGUF of {spec.name} is in the cache ({cache})",
                   hint="run `qwenbench pull` while online, or unset HF_HUB_OFFLINE / drop --offline")


def local_model_dirs(extra: list[Path] | None = None) -> list[Path]:
    """Where GGUFs other tools downloaded may already be: --models-dir folders, then LM Studio's."""
    home = Path.home()
    dirs = [*(extra or []), home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    return [d for d in dirs if d.is_dir()]


def find_local_copy(resolved: Resolved, dirs: list[Path], on_progress: Progress | None = None) -> list[Path] | None:
    """The resolved files found already on disk, matched by name and size and proven by SHA-256."""
    found = []
    for remote in resolved.files:
        name = remote.path.rsplit("/", 1)[-1]
        match = next((candidate for folder in dirs for candidate in folder.rglob(name)
                      if candidate.is_file() and candidate.stat().st_size == remote.size), None)
        if match is None or not verify_file(match, remote, on_progress):
            return None
        found.append(match)
    # split parts must sit side by side for llama.cpp to find them from the first
    return found if len({p.parent for p in found}) == 1 else None


def ollama_copy(resolved: Resolved, roots: list[Path] | None = None) -> Path | None:
    """The resolved file in Ollama's store, where Ollama pulled that very file (from hf.co): its blobs are named
    by their SHA-256, so the Hub's LFS digest finds it without reading a byte. A split file is never there."""
    from .ollama import store_roots

    if len(resolved.files) != 1 or resolved.files[0].sha256 is None:
        return None
    remote = resolved.files[0]
    for root in store_roots() if roots is None else roots:
        blob = root / "blobs" / f"sha256-{remote.sha256}"
        if blob.is_file() and blob.stat().st_size == remote.size:
            remember_sha256(blob, remote.sha256)
            return blob
    return None


def resolve_local(spec: ModelSpec, quant: str, dirs: list[Path], *, repo: str | None = None) -> list[Path] | None:
    """Offline, from LM Studio-style folders (<publisher>/<repo>/<file>): the quant's files, by name only."""
    for folder in dirs:
        for candidate in (repo,) if repo else spec.hub:
            publisher_repo = folder / candidate
            if not publisher_repo.is_dir():
                continue
            local = [str(p.relative_to(publisher_repo)) for p in publisher_repo.rglob("*.gguf")]
            chosen = files_for_quant(local, quant)
            if chosen:
                return [publisher_repo / path for path in chosen]
    return None


@dataclass(frozen=True)
class Fetched:
    path: Path  # the first file (llama.cpp finds split parts beside it)
    resolved: Resolved | None  # None when found offline by name only, unchecked against the Hub


def _resolve_offline_from(spec: ModelSpec, quant: str, repo: str | None, source: str | None) -> Resolved:
    """The quant from the caches of the source asked for; without one, the HF cache, then ModelScope's."""
    from . import modelscope

    if source == "modelscope":
        return modelscope.resolve_offline(spec, quant, repo=repo)
    try:
        return resolve_offline(spec, quant, repo=repo)
    except HubError:
        if source == "hf":
            raise
        try:
            return modelscope.resolve_offline(spec, quant, repo=repo)
        except HubError:
            pass
        raise


def resolve_from(spec: ModelSpec, quant: str, *, repo: str | None = None, revision: str | None = None,
                 source: str | None = None, on_status: Callable[[str], None] | None = None) -> Resolved:
    """The quant from the source asked for; without one, from the Hub, or from ModelScope with a note when the
    Hub cannot be reached and ModelScope publishes the quant (in mainland China the Hub often is out of reach)."""
    from . import modelscope

    say = on_status or (lambda message: None)
    if source == "modelscope":
        say(f"finding {spec.name} {quant.upper()} on ModelScope at {modelscope.endpoint()}")
        return resolve(spec, quant, repo=repo, revision=revision, source="modelscope")
    say(f"finding {spec.name} {quant.upper()} on the Hub at {endpoint()}")  # a mirror (HF_ENDPOINT) says so
    try:
        return resolve(spec, quant, repo=repo, revision=revision)
    except HubUnreachable as exc:
        if source == "hf" or not (repo or spec.modelscope):
            raise
        try:
            resolved = resolve(spec, quant, repo=repo, revision=revision, source="modelscope")
        except QwenbenchError as other:
            raise HubUnreachable(exc.message, hint=f"{exc.hint}; ModelScope, tried next: {other.message}") from exc
        say(f"note: {exc.message}: {spec.name} {quant.upper()} is published on ModelScope, taking it from "
            f"{modelscope.endpoint()} (--source hf does not fall back)")
        return resolved


def fetch_model(spec: ModelSpec, quant: str, *, repo: str | None = None, revision: str | None = None,
                offline: bool = False, models_dirs: list[Path] | None = None, source: str | None = None,
                on_status: Callable[[str], None] | None = None, on_progress: Progress | None = None) -> Fetched:
    """A catalog model's GGUF, verified: a copy already on disk (LM Studio, --models-dir), else the Hub into the
    HF cache, or ModelScope into its cache (--source modelscope, or the Hub out of reach); only the caches when
    offline."""
    say = on_status or (lambda message: None)
    offline = offline_mode(offline)
    dirs = local_model_dirs(models_dirs)
    if offline:
        try:
            resolved = _resolve_offline_from(spec, quant, repo, source)
        except HubError:
            local = resolve_local(spec, quant, dirs, repo=repo)
            if local is None:
                raise
            say(f"using {local[0]} (found offline by name; not checked against the Hub)")
            return Fetched(local[0], None)
    else:
        resolved = resolve_from(spec, quant, repo=repo, revision=revision, source=source, on_status=say)
    where = "" if resolved.source == "hf" else f"{resolved.source}:"
    say(f"{where}{resolved.repo}@{resolved.revision[:10]}: {', '.join(f.path for f in resolved.files)} "
        f"({resolved.size / 1e9:.2f} GB)")
    if not offline and dirs:
        local = find_local_copy(resolved, dirs, on_progress=on_progress)
        if local is not None:
            say(f"already on disk, verified: {local[0]} (nothing to download)")
            return Fetched(local[0], resolved)
    in_ollama = ollama_copy(resolved)
    if in_ollama is not None:
        say(f"already in Ollama's store, the same file by its SHA-256: {in_ollama} (nothing to download)")
        return Fetched(in_ollama, resolved)
    return Fetched(download(resolved, offline=offline, on_progress=on_progress)[0], resolved)
