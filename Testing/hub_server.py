"""A loopback stand-in for the model hub, for tests that must not touch the internet.

It answers the calls ``huggingface_hub`` makes, as read from its source (``HfApi.model_info``,
``get_hf_file_metadata``, ``http_get``):

- ``GET /api/models/<repo>[/revision/<rev>]?blobs=true``: the revision's commit (``sha``) and its
  ``siblings`` with ``size``, ``blobId`` and, for LFS files, ``lfs: {sha256, size, pointerSize}``;
  unknown repositories and revisions get 404 with ``X-Error-Code`` as the hub sends it;
- ``HEAD /<repo>/resolve/<rev>/<path>``: ``X-Repo-Commit``, ``ETag`` (git blob id) and
  ``Content-Length`` for small files; for LFS files a 302 to a *different origin*
  (``localhost`` instead of ``127.0.0.1``, as the real hub redirects to its CDN) with
  ``X-Linked-Etag`` (the sha256), ``X-Linked-Size`` and ``Location``;
- ``GET`` of either URL with ``Range: bytes=N-`` support (206 + ``Content-Range``).

Tests steer it (``cut``, ``stall``, ``corrupt``, ``down``) and read what it served
(``body_bytes``, ``body_requests``, ``ranges``). It listens on 127.0.0.1 only, in a thread.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".model", ".pt", ".pkl", ".bin", ".safetensors")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    """Serves the files under ``folder`` as revision ``main`` of ``repo``."""

    def __init__(self, folder: Path, repo: str = "legendchilli/clNet") -> None:
        self.repo = repo
        self.commit = secrets.token_hex(20)
        self.files: dict[str, bytes] = {p.relative_to(folder).as_posix(): p.read_bytes()
                                        for p in sorted(folder.rglob("*")) if p.is_file()}
        self.sha256 = {k: hashlib.sha256(v).hexdigest() for k, v in self.files.items()}
        self.lfs = {k for k in self.files if k.endswith(LFS_SUFFIXES)}
        # Steering: path → bytes to send before cutting / stalling; paths served damaged; 503 for all.
        self.cut: dict[str, int] = {}
        self.stall: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.down = False
        self.down_after_cut = False
        self.stalled = threading.Event()
        self.release_stall = threading.Event()
        # What was served.
        self.body_bytes: Counter[str] = Counter()
        self.body_requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, int]] = []
        self.api_requests = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release_stall.set()
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        self.cut.clear()
        self.stall.clear()
        self.corrupt.clear()
        self.down = self.down_after_cut = False
        self.stalled.clear()
        self.release_stall.clear()
        self.body_bytes.clear()
        self.body_requests.clear()
        self.ranges.clear()
        self.api_requests = 0

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        out = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if path in self.lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256[path]}\nsize {len(data)}\n"
            out["blobId"] = git_blob_id(pointer.encode())
            out["lfs"] = {"sha256": self.sha256[path], "size": len(data), "pointerSize": len(pointer)}
        return out

    # ------------------------------------------------------------------ HTTP
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, headers: dict | None = None, body: bytes = b"") -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body and self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str) -> None:
                self._send(status, {"X-Error-Code": code, "X-Error-Message": message,
                                    "Content-Type": "application/json", "X-Repo-Commit": hub.commit},
                           json.dumps({"error": message}).encode())

            def do_HEAD(self):  # noqa: N802
                self._route()

            def do_GET(self):  # noqa: N802
                self._route()

            def _route(self) -> None:
                if hub.down:
                    return self._send(503, {"Content-Type": "text/plain"}, b"down")
                url = urlparse(self.path)
                path = unquote(url.path)
                api = f"/api/models/{hub.repo}"
                if path == api or path.startswith(api + "/revision/"):
                    return self._api(path[len(api):])
                if path.startswith("/api/models/"):
                    return self._error(404, "RepoNotFound", "Repository not found")
                prefix = f"/{hub.repo}/resolve/"
                if path.startswith(prefix):
                    rev, _, file = path[len(prefix):].partition("/")
                    return self._resolve(rev, file)
                if path.startswith("/lfs/"):
                    file = url.query.partition("file=")[2]
                    file = unquote(file)
                    if file in hub.files and hub.sha256[file] == path[len("/lfs/"):]:
                        return self._body(file)
                return self._error(404, "EntryNotFound", "not found")

            def _known_rev(self, rev: str) -> bool:
                return rev in ("main", hub.commit)

            def _api(self, rest: str) -> None:
                with hub._lock:
                    hub.api_requests += 1
                rev = rest[len("/revision/"):] if rest else "main"
                if not self._known_rev(rev):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                body = {"_id": "0" * 24, "id": hub.repo, "modelId": hub.repo, "sha": hub.commit, "private": False,
                        "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                        "siblings": [hub.sibling(p) for p in hub.files]}
                self._send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

            def _resolve(self, rev: str, file: str) -> None:
                if not self._known_rev(rev):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                if file not in hub.files:
                    return self._error(404, "EntryNotFound", f"{file} does not exist")
                data = hub.files[file]
                if file in hub.lfs:
                    host = f"http://localhost:{hub.port}"  # another origin, like the hub's CDN
                    return self._send(302, {
                        "Location": f"{host}/lfs/{hub.sha256[file]}?file={file}",
                        "X-Repo-Commit": hub.commit, "X-Linked-Etag": f'"{hub.sha256[file]}"',
                        "X-Linked-Size": len(data), "ETag": f'"{hub.sibling(file)["blobId"]}"',
                        "Content-Type": "text/plain"}, b"")
                headers = {"X-Repo-Commit": hub.commit, "ETag": f'"{git_blob_id(data)}"'}
                if self.command == "HEAD":
                    return self._send(200, {**headers, "Content-Length": len(data)})
                return self._body(file, headers)

            def _body(self, file: str, headers: dict | None = None) -> None:
                data = hub.files[file]
                if self.command == "HEAD":
                    return self._send(200, {**(headers or {}), "Content-Length": len(data)})
                if file in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0] or 0)
                    hub.ranges.append((file, start))
                with hub._lock:
                    hub.body_requests[file] += 1
                part = data[start:]
                status = 206 if start else 200
                out = {**(headers or {}), "Content-Length": len(part), "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
                if start:
                    out["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self.send_response(status)
                for k, v in out.items():
                    self.send_header(k, str(v))
                self.end_headers()
                limit = hub.cut.pop(file, None)
                stall = hub.stall.pop(file, None)
                n = len(part) if limit is None and stall is None else min(len(part), limit if limit is not None else stall)
                self.wfile.write(part[:n])
                self.wfile.flush()
                with hub._lock:
                    hub.body_bytes[file] += n
                if stall is not None:
                    hub.stalled.set()
                    hub.release_stall.wait(60)
                    self.close_connection = True
                    return
                if limit is not None:
                    if hub.down_after_cut:
                        hub.down = True
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if n < len(part):
                    self.wfile.write(part[n:])

        return Handler


def closed_port() -> int:
    """A loopback port with nothing listening (a hub that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
