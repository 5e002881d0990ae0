"""A small stand-in for the Hugging Face Hub on 127.0.0.1, speaking the endpoints huggingface_hub uses:
model info with file metadata, HEAD and ranged GET of resolve URLs with the LFS headers.

Failure injection for tests: cut a transfer after N bytes, serve corrupted bytes, answer 5xx, or
gate a repo.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops
    corrupt: set[str] = field(default_factory=set)  # paths served with a flipped byte
    corrupt_times: int = 1  # how many downloads of a corrupt path are corrupted
    error_status: int | None = None
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range header)
    bytes_sent: int = 0

    _digests: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)

    def sha256(self, repo: str, path: str) -> str:
        return digests(self, self.repos[repo].files[path])[0]


def digests(hub: FakeHub, data: bytes) -> tuple[str, str]:
    """(sha256, sha1) of a file's bytes, computed once: a real Hub does not re-hash per request."""
    key = (id(data), len(data))
    if key not in hub._digests:
        hub._digests[key] = (hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest())
    return hub._digests[key]


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
                sha256, sha1 = digests(hub, data)
                entry = {"rfilename": path, "size": len(data), "blobId": sha1}
                if path.endswith(".gguf"):
                    entry["lfs"] = {"size": len(data), "sha256": sha256, "pointerSize": 134}
                siblings.append(entry)
            body = json.dumps({"id": name, "modelId": name, "sha": repo.commit, "private": False,
                               "gated": repo.gated, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _resolve(self, name: str, path: str) -> None:
            repo = self._repo(name)
            if repo is None:
                return
            data = repo.files.get(path)
            if data is None:
                self._error(404, "EntryNotFound", f"{path} does not exist")
                return
            sha, sha1 = digests(hub, data)
            start = 0
            match = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
            body = data[start:]
            if path in hub.corrupt and self.command == "GET" and hub.corrupt_times > 0:
                hub.corrupt_times -= 1
                body = bytes([body[0] ^ 0xFF]) + body[1:] if body else body
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{sha}"' if path.endswith(".gguf") else f'"{sha1}"')
            if path.endswith(".gguf"):
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            limit = hub.cut_after.pop(path, None)
            if limit is not None:
                self.wfile.write(body[:limit])
                hub.bytes_sent += min(limit, len(body))
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
            hub.bytes_sent += len(body)

        def _route(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path, self.headers.get("Range", "")))
            if hub.error_status is not None:
                self._error(hub.error_status, "ServerError", "the fake hub is failing on purpose")
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
