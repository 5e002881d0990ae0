"""A small stand-in for ModelScope on 127.0.0.1, speaking the two endpoints qwenbench.modelscope uses (as the
modelscope package calls them): the recursive file listing with each file's Size, Sha256 and Revision, and the
file download by Revision and FilePath, with Range requests.

The repos, faults and request log are fakehub's (FakeHub, FakeRepo): cut a transfer after N bytes, corrupt
bytes, answer 5xx; a repo or file that is not there is an HTTP 404 with ModelScope's JSON body.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

from .fakehub import FakeHub, FakeRepo, _size, digests, send_file


def file_revision(repo: FakeRepo, path: str) -> str:
    """The commit that last changed a file, as ModelScope lists it: the repo's commit, per file here."""
    return repo.commit


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _fail(self, status: int, message: str) -> None:
            self._json(status, {"Code": status, "Success": False, "Message": message, "Data": None})

        def _files(self, repo: FakeRepo, revision: str) -> None:
            files: list[dict[str, object]] = []
            folders = {path.rsplit("/", 1)[0] for path in repo.files if "/" in path}
            for folder in sorted(folders):
                files.append({"Name": folder.rsplit("/", 1)[-1], "Path": folder, "Type": "tree", "Size": 0,
                              "Sha256": "", "Revision": repo.commit})
            for path, data in repo.files.items():
                sha256, _ = digests(hub, repo, path)
                files.append({"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob", "Size": _size(data),
                              "Sha256": sha256, "Revision": file_revision(repo, path),
                              "IsLFS": path.endswith(".gguf"), "Mode": "33188"})
            self._json(200, {"Code": 200, "Success": True, "Message": "success",
                             "Data": {"Files": files, "LatestCommitter": {"Id": repo.commit}}})

        def _route(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            hub.requests.append((self.command, f"{path}?{query.get('FilePath', '')}", self.headers.get("Range", "")))
            if hub.error_status is not None:
                self._fail(hub.error_status, "the fake ModelScope is failing on purpose")
                return
            route = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo(/files)?$", path)
            if route is None:
                self._fail(404, f"no route for {path}")
                return
            repo = hub.repos.get(route.group(1))
            if repo is None:
                self._fail(404, f"model {route.group(1)} does not exist")
                return
            revision = query.get("Revision", "master")
            if revision not in ("master", repo.commit):
                self._fail(404, f"revision {revision} does not exist")
                return
            if route.group(2):
                self._files(repo, revision)
                return
            file_path = query.get("FilePath", "")
            data = repo.files.get(file_path)
            if data is None:
                self._fail(404, f"file {file_path} does not exist")
                return
            send_file(self, hub, file_path, data, {"Content-Type": "application/octet-stream"})

        do_GET = _route
        do_HEAD = _route

    return Handler


class FakeModelScopeServer:
    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeModelScopeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
