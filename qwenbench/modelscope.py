"""ModelScope (modelscope.cn) as a second source of GGUF files, where the Hugging Face Hub is out of reach.

This speaks ModelScope's HTTP API with requests rather than depending on the `modelscope` package: three
endpoints do the job, and the package would bring its own progress bars, logging, retries and exceptions to
map, and (since 1.38) a second package, modelscope-hub, under it. The endpoints, as the package's
`modelscope/hub/api.py` and `file_download.py` (1.37) call them:

  GET {endpoint}/api/v1/models/{owner}/{name}/repo/files?Revision={ref}&Recursive=true
      {"Code": 200, "Success": true, "Data": {"Files": [{"Path", "Name", "Type": "blob"|"tree", "Size",
      "Sha256", "Revision": the commit that last changed the file, ...}]}}; a missing repo is HTTP 404
  GET {endpoint}/api/v1/models/{owner}/{name}/repo?Revision={ref}&FilePath={path}
      the file's bytes; a `Range: bytes=N-` request continues a download, `bytes=A-B` reads a header

The endpoint is https:// + MODELSCOPE_DOMAIN (default www.modelscope.cn; a value with its scheme is taken as
it is, as the package's resolve_endpoint does). Files go where the package puts them, so either tool finds
and reuses what the other downloaded: MODELSCOPE_CACHE (default ~/.cache/modelscope/hub), then
`models/<owner>/<name, each '.' as '___'>/<path>`, with the folder's `.msc` index (a pickled list of
{"Path", "Revision"}) naming each file the package may take as current; a partial download sits in
`models/._____temp/<owner>/<name>/<path>`, where the package also continues one.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import __version__
from .catalog import ModelSpec
from .errors import Interrupted, UsageError
from .hub import (
    DOWNLOAD_CHUNK_BYTES,
    HashingWriter,
    HubError,
    HubUnreachable,
    Progress,
    RemoteFile,
    Resolved,
    check_disk,
    verify_file,
)
from .hubfiles import files_for_quant
from .modelfile import remember_sha256

DEFAULT_DOMAIN = "www.modelscope.cn"
DEFAULT_REF = "master"  # ModelScope's default branch
TEMP_FOLDER = "._____temp"  # the package's TEMPORARY_FOLDER_NAME
TIMEOUT_S = (10, 60)  # connect, read: a blocked route fails in seconds, a slow mirror is given a minute
RESUMES = 5  # a transfer cut this many times in a row is given up (each continues where the last stopped)


class ModelScopeError(HubError):
    """ModelScope could not give us the file: refused, failing, or what it sent was not intact."""


class ModelScopeUnreachable(ModelScopeError, HubUnreachable):
    """No answer from ModelScope at all."""


class _NotFound(Exception):
    """An HTTP 404: the caller knows whether a repo, a revision or a file is missing."""


def endpoint() -> str:
    domain = os.environ.get("MODELSCOPE_DOMAIN", "").strip().rstrip("/") or DEFAULT_DOMAIN
    return domain if domain.startswith(("http://", "https://")) else f"https://{domain}"


def cache_root() -> Path:
    """MODELSCOPE_CACHE, else ~/.cache/modelscope/hub, read now rather than at import."""
    return Path(os.path.expanduser(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope/hub"))


def model_folder(repo: str) -> Path:
    """Where the package keeps a model's files: it spells each '.' of the name as '___'."""
    owner, name = repo.split("/", 1)
    return cache_root() / "models" / owner / name.replace(".", "___")


def partial_path(repo: str, path: str) -> Path:
    """Where the package keeps a file being downloaded (the name as it is there)."""
    owner, name = repo.split("/", 1)
    return cache_root() / "models" / TEMP_FOLDER / owner / name / path


def files_url(repo: str, ref: str) -> str:
    return f"{endpoint()}/api/v1/models/{repo}/repo/files?Revision={quote(ref, safe='')}&Recursive=true"


def file_url(repo: str, ref: str, path: str) -> str:
    return f"{endpoint()}/api/v1/models/{repo}/repo?Revision={quote(ref, safe='')}&FilePath={quote(path, safe='')}"


def parse_files(payload: Any) -> list[RemoteFile]:
    """The files (not folders) of a files listing; a payload of another shape is an error naming it."""
    data = payload.get("Data") if isinstance(payload, dict) else None
    entries = data.get("Files") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ModelScopeError("ModelScope's file listing has no Data.Files",
                              hint="MODELSCOPE_DOMAIN may point at something that is not ModelScope")
    files = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("Type") == "tree" or not isinstance(entry.get("Path"), str):
            continue
        sha, revision, size = entry.get("Sha256"), entry.get("Revision"), entry.get("Size")
        files.append(RemoteFile(entry["Path"], size if isinstance(size, int) and size >= 0 else 0,
                                sha.lower() if isinstance(sha, str) and len(sha) == 64 else None,
                                revision if isinstance(revision, str) and revision else None))
    return files


def _session() -> Any:
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = f"qwenbench/{__version__}"
    return session


def _get(session: Any, url: str, repo: str, headers: dict[str, str] | None = None, stream: bool = False) -> Any:
    """A GET answered 2xx, else one of our errors (a 404 as _NotFound, for the caller to name)."""
    import requests

    try:
        response = session.get(url, headers=headers or {}, stream=stream, timeout=TIMEOUT_S)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ModelScopeUnreachable(f"cannot reach ModelScope at {endpoint()} ({type(exc).__name__})",
                                    hint="check the network or MODELSCOPE_DOMAIN; --offline runs from the caches"
                                    ) from None
    except requests.RequestException as exc:
        raise ModelScopeError(f"ModelScope request for {repo} failed: {type(exc).__name__}") from None
    status = response.status_code
    if status < 300:
        return response
    response.close()
    if status == 404:
        raise _NotFound(url)
    if status >= 500:
        raise ModelScopeError(f"ModelScope answered {status} for {repo}", hint="a temporary outage: try again later")
    raise ModelScopeError(f"ModelScope refused the request for {repo} ({status} {response.reason})",
                          hint="qwenbench reads public ModelScope repos only")


def _list_files(session: Any, repo: str, ref: str) -> list[RemoteFile]:
    response = _get(session, files_url(repo, ref), repo)
    try:
        payload = response.json()
    except ValueError:
        raise ModelScopeError(f"ModelScope's listing of {repo} is not JSON",
                              hint="MODELSCOPE_DOMAIN may point at something that is not ModelScope") from None
    if isinstance(payload, dict) and payload.get("Success") is False:
        message = str(payload.get("Message") or "no reason given").splitlines()[0]
        raise ModelScopeError(f"ModelScope could not list {repo}: {message}")
    return parse_files(payload)


def listings(spec: ModelSpec, repo: str | None, revision: str | None) -> Iterator[tuple[str, str, list[RemoteFile]]]:
    """(repo, ref, files) of each candidate ModelScope repo in order of preference (or --repo alone), lazily."""
    candidates = (repo,) if repo else spec.modelscope
    if not candidates:
        raise UsageError(f"{spec.name} lists no ModelScope repositories", hint="pass --repo OWNER/NAME, or --source hf")
    ref = revision or DEFAULT_REF
    session = _session()
    for candidate in candidates:
        try:
            files = _list_files(session, candidate, ref)
        except _NotFound:
            if repo:
                raise UsageError(f"repository {candidate} (revision {ref}) not found on {endpoint()}",
                                 hint="check --repo and --revision (ModelScope's default branch is master)") from None
            continue  # not mirrored there: try the next one
        yield candidate, ref, files


# ---------------------------------------------------------------------------------------------------- cache


class _IndexReader(pickle.Unpickler):
    """The `.msc` index holds lists, dicts and strings only: anything that would import code is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} in a ModelScope cache index")


def read_index(folder: Path) -> list[dict[str, str]] | None:
    """The package's index of a model folder ([] when there is none); None when it cannot be read."""
    try:
        data = _IndexReader(io.BytesIO((folder / ".msc").read_bytes())).load()
    except FileNotFoundError:
        return []
    except Exception:
        return None
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else None


def _write_pickle(path: Path, value: object) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(pickle.dumps(value))
    os.replace(partial, path)


def _index_file(repo: str, remote: RemoteFile) -> None:
    """Enter a verified file in the package's index, so `modelscope download` takes it as current instead of
    fetching it again; an index it cannot read is left for the package to reset."""
    folder = model_folder(repo)
    entries = read_index(folder)
    if entries is None or remote.revision is None:
        return
    kept = [e for e in entries if e.get("Path") != remote.path]
    _write_pickle(folder / ".msc", [*kept, {"Path": remote.path, "Revision": remote.revision}])
    if not (folder / ".mdl").exists():
        _write_pickle(folder / ".mdl", {"id": f"{folder.parent.name}/{folder.name}"})


# ------------------------------------------------------------------------------------------------ downloads


def _fetch_file(session: Any, resolved: Resolved, remote: RemoteFile, target: Path,
                on_progress: Progress | None) -> None:
    """Download one file into the cache, continuing a partial one (ours or the package's) with a Range request,
    and again after a cut transfer; the SHA-256 is computed as the bytes are written."""
    import requests

    partial = partial_path(resolved.repo, remote.path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    url = file_url(resolved.repo, resolved.ref or DEFAULT_REF, remote.path)
    name = remote.path.rsplit("/", 1)[-1]
    with partial.open("a+b") as handle:
        done = handle.tell()
        if done > remote.size:  # not this file after all: start over
            handle.truncate(0)
            done = 0
        writer = HashingWriter(handle)
        cuts = 0
        try:
            while done < remote.size:
                try:
                    response = _get(session, url, resolved.repo, {"Range": f"bytes={done}-"} if done else None,
                                    stream=True)
                except _NotFound:
                    raise UsageError(f"{remote.path} not found in ModelScope's {resolved.repo} at {resolved.ref}",
                                     hint="the repo changed since it was listed: run the command again") from None
                # a body cut short then ends, rather than raising and losing the bytes of its last read: they are
                # kept, and the next request asks for the rest
                response.raw.enforce_content_length = False
                with response:
                    if done and response.status_code != 206:  # the range was ignored: the whole file comes
                        writer.seek(0)
                        writer.truncate(0)
                        done = 0
                    try:
                        for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                            writer.write(chunk)
                            done += len(chunk)
                            if on_progress is not None:
                                on_progress(f"downloading {name}", min(done, remote.size), remote.size)
                    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                        cuts += 1
                        if cuts > RESUMES:
                            raise ModelScopeUnreachable(
                                f"the download of {remote.path} from ModelScope was cut {cuts} times",
                                hint="run the same command again: it continues where it stopped") from None
                        continue  # the bytes so far are kept: ask for the rest
                if done < remote.size:  # the body ended early without an error: ask for the rest
                    cuts += 1
                    if cuts > RESUMES:
                        raise ModelScopeError(f"ModelScope keeps sending {remote.path} short",
                                              hint="run the same command again: it continues where it stopped")
        finally:
            digest = writer.hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)
    if digest is not None:
        remember_sha256(target, digest)  # hashed while writing: verifying costs no second read


def download(resolved: Resolved, *, offline: bool = False, on_progress: Progress | None = None) -> list[Path]:
    """Every file of a resolved quant in ModelScope's cache, verified against its listed SHA-256: a copy the
    package downloaded is used as it is; a file that does not match is fetched again once, then refused."""
    folder = model_folder(resolved.repo)
    if not offline:
        check_disk(resolved, cache_root(), variable="MODELSCOPE_CACHE")
    session = None if offline else _session()
    paths = []
    for remote in resolved.files:
        target = folder / remote.path
        for attempt in (1, 2):
            if not (target.is_file() and target.stat().st_size == remote.size):
                if session is None:
                    raise ModelScopeError(f"offline, and {remote.path} is not in ModelScope's cache ({folder})",
                                          hint="run `qwenbench pull --source modelscope` once while online")
                try:
                    _fetch_file(session, resolved, remote, target, on_progress)
                except KeyboardInterrupt:
                    raise Interrupted(f"download of {remote.path} interrupted; the bytes so far are kept in "
                                      f"{partial_path(resolved.repo, remote.path)}",
                                      hint="run the same command again: it continues where it stopped") from None
            if verify_file(target, remote, on_progress):
                if not offline:
                    _index_file(resolved.repo, remote)
                paths.append(target)
                break
            target.unlink()
            if offline or attempt == 2:
                raise ModelScopeError(f"{remote.path} from ModelScope's {resolved.repo} does not match its SHA-256 "
                                      f"(expected {remote.sha256})",
                                      hint="the download was corrupted twice: check the network or MODELSCOPE_DOMAIN")
    return paths


def resolve_offline(spec: ModelSpec, quant: str, *, repo: str | None = None) -> Resolved:
    """The quant from ModelScope's cache alone, found by name (the package's downloads as well as ours)."""
    for candidate in (repo,) if repo else spec.modelscope:
        folder = model_folder(candidate)
        if not folder.is_dir():
            continue
        chosen = files_for_quant([p.relative_to(folder).as_posix() for p in folder.rglob("*.gguf")], quant)
        if chosen:
            revisions = {e.get("Path"): e.get("Revision") for e in read_index(folder) or []}
            files = tuple(RemoteFile(path, (folder / path).stat().st_size, None, revisions.get(path))
                          for path in chosen)
            return Resolved(candidate, files[0].revision or DEFAULT_REF, quant.upper(), files, "modelscope",
                            DEFAULT_REF)
    raise ModelScopeError(f"offline, and no {quant.upper()} GGUF of {spec.name} is in ModelScope's cache "
                          f"({cache_root() / 'models'})",
                          hint="run `qwenbench pull` while online, or unset HF_HUB_OFFLINE / drop --offline")


# -------------------------------------------------------------------------------------------------- headers


class RangeReader:
    """A read-only stream over a ModelScope file by range requests, a block at a time: what the sequential
    GGUF header parser needs, and no more than a block beyond it."""

    def __init__(self, resolved: Resolved, remote: RemoteFile, block: int) -> None:
        self._session = _session()
        self._url = file_url(resolved.repo, resolved.ref or DEFAULT_REF, remote.path)
        self._repo = resolved.repo
        self._size = remote.size
        self._block = block
        self._buffer = bytearray()
        self._offset = 0  # where in the file the buffer ends
        self.fetched_bytes = 0
        self.requests = 0

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n and self._offset < self._size:
            end = min(self._size, self._offset + max(self._block, n - len(self._buffer))) - 1
            try:
                response = _get(self._session, self._url, self._repo, {"Range": f"bytes={self._offset}-{end}"})
            except _NotFound:
                raise UsageError(f"{self._url} not found on ModelScope", hint="check --repo and --revision") from None
            data = response.content
            if response.status_code != 206:  # the range was ignored: keep the part asked for
                data = data[self._offset:end + 1]
            self.requests += 1
            self.fetched_bytes += len(data)
            if not data:
                break
            self._buffer += data
            self._offset += len(data)
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk
