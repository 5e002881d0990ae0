"""A small stand-in for the Hugging Face Hub on 127.0.0.1, speaking the endpoints huggingface_hub uses:
model info with file metadata, the tree listing (HfFileSystem), HEAD and ranged GET of resolve URLs with
the LFS headers. A file is bytes, or a Path served from disk (benchmarks serve multi-GB files).

Failure injection for tests: cut a transfer after N bytes, serve corrupted bytes, answer 5xx, or
gate a repo.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

Content = bytes | Path
_SEND_CHUNK = 1 << 20


def _size(data: Content) -> int:
    return data.stat().st_size if isinstance(data, Path) else len(data)


def _chunks(data: Content, start: int, end: int, piece: int = _SEND_CHUNK) -> Iterator[bytes]:
    """The bytes [start, end) of a file, in pieces."""
    if isinstance(data, bytes):
        view = memoryview(data)
        for offset in range(start, end, piece):
            yield bytes(view[offset:min(end, offset + piece)])
        return
    with data.open("rb") as handle:
        handle.seek(start)
        while start < end and (chunk := handle.read(min(piece, end - start))):
            start += len(chunk)
            yield chunk


@dataclass
class FakeRepo:
    files: dict[str, Content]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    known_sha256: dict[str, str] = field(default_factory=dict)  # precomputed digests of big Path files


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops
    corrupt: set[str] = field(default_factory=set)  # paths served with a flipped byte
    corrupt_times: int = 1  # how many downloads of a corrupt path are corrupted
    error_status: int | None = None
    rate_bytes_per_s: float | None = None  # pace file bodies like a real link (benchmarks); None: as fast as possible
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range header)
    bytes_sent: int = 0

    _digests: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)

    def sha256(self, repo: str, path: str) -> str:
        return digests(self, self.repos[repo], path)[0]


def digests(hub: FakeHub, repo: FakeRepo, path: str) -> tuple[str, str]:
    """(sha256, git blob id stand-in) of a file, computed once: a real Hub does not re-hash per request."""
    data = repo.files[path]
    key = (id(data), _size(data))
    if key not in hub._digests:
        if path in repo.known_sha256:
            sha256 = repo.known_sha256[path]
        else:
            hasher = hashlib.sha256()
            for chunk in _chunks(data, 0, _size(data)):
                hasher.update(chunk)
            sha256 = hasher.hexdigest()
        hub._digests[key] = (sha256, hashlib.sha1(sha256.encode()).hexdigest())
    return hub._digests[key]


def send_file(handler: BaseHTTPRequestHandler, hub: FakeHub, path: str, data: Content,
              headers: dict[str, str]) -> None:
    """A file's bytes (a Range asked for, else all), with the hub's faults: a transfer cut after N bytes, a
    corrupted first byte, a paced link. Both fakes, the Hub and ModelScope, serve files through this."""
    size = _size(data)
    start, end = 0, size
    match = re.match(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
    if match:
        start = int(match.group(1))
        end = min(size, int(match.group(2)) + 1) if match.group(2) else size
    corrupt = path in hub.corrupt and handler.command == "GET" and hub.corrupt_times > 0
    if corrupt:
        hub.corrupt_times -= 1
    handler.send_response(206 if match else 200)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Accept-Ranges", "bytes")
    handler.send_header("Content-Length", str(end - start))
    if match:
        handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
    handler.end_headers()
    if handler.command == "HEAD":
        return
    limit = hub.cut_after.pop(path, None)
    sent = 0
    began = time.perf_counter()
    rate = hub.rate_bytes_per_s
    piece = max(1 << 12, min(_SEND_CHUNK, int(rate / 50))) if rate else _SEND_CHUNK  # paced: 20 ms slices
    for chunk in _chunks(data, start, end if limit is None else min(end, start + limit), piece):
        if corrupt and sent == 0:
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        handler.wfile.write(chunk)
        sent += len(chunk)
        if rate:
            time.sleep(max(0.0, sent / rate - (time.perf_counter() - began)))
    hub.bytes_sent += sent
    if limit is not None:
        handler.wfile.flush()
        handler.close_connection = True


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo(self, name: str) -> FakeRepo | None:
            repo = hub.repos.get(name)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository not found: {name}")
                return None
            if repo.gated and "authorization" not in {k.lower() for k in self.headers}:
                self._error(401, "GatedRepo", "Access to this model is restricted")
                return None
            return repo

        def _info(self, name: str) -> None:
            repo = self._repo(name)
            if repo is None:
                return
            siblings = []
            for path, data in repo.files.items():
                sha256, sha1 = digests(hub, repo, path)
                entry = {"rfilename": path, "size": _size(data), "blobId": sha1}
                if path.endswith(".gguf"):
                    entry["lfs"] = {"size": _size(data), "sha256": sha256, "pointerSize": 134}
                siblings.append(entry)
            self._json({"id": name, "modelId": name, "sha": repo.commit, "private": False,
                        "gated": repo.gated, "siblings": siblings})

        def _json(self, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _tree(self, name: str, folder: str) -> None:
            """One folder's entries (not recursive), as HfFileSystem lists them."""
            repo = self._repo(name)
            if repo is None:
                return
            prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
            entries: dict[str, dict[str, object]] = {}
            for path, data in repo.files.items():
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):]
                if "/" in rest:
                    sub = prefix + rest.split("/", 1)[0]
                    entries[sub] = {"type": "directory", "oid": "0" * 40, "size": 0, "path": sub}
                    continue
                sha256, sha1 = digests(hub, repo, path)
                entry: dict[str, object] = {"type": "file", "oid": sha1, "size": _size(data), "path": path}
                if path.endswith(".gguf"):
                    entry["lfs"] = {"oid": sha256, "size": _size(data), "pointerSize": 134}
                entries[path] = entry
            if prefix and not entries:
                self._error(404, "EntryNotFound", f"{folder} does not exist")
                return
            self._json(list(entries.values()))

        def _resolve(self, name: str, path: str) -> None:
            repo = self._repo(name)
            if repo is None:
                return
            data = repo.files.get(path)
            if data is None:
                self._error(404, "EntryNotFound", f"{path} does not exist")
                return
            sha, sha1 = digests(hub, repo, path)
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{sha}"' if path.endswith(".gguf") else f'"{sha1}"'}
            if path.endswith(".gguf"):
                headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(_size(data))})
            send_file(self, hub, path, data, headers)

        def _route(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path, self.headers.get("Range", "")))
            if hub.error_status is not None:
                self._error(hub.error_status, "ServerError", "the fake hub is failing on purpose")
                return
            tree = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$", path)
            if tree:
                self._tree(tree.group(1), tree.group(3) or "")
                return
            info = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
            if info:
                self._info(info.group(1))
                return
            resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if resolve:
                self._resolve(resolve.group(1), resolve.group(3))
                return
            self._error(404, "NotFound", f"no route for {path}")

        do_GET = _route
        do_HEAD = _route

    return Handler


class FakeHubServer:
    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
