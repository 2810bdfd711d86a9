"""A small Hugging Face Hub on 127.0.0.1, for download tests that go through huggingface_hub's real HTTP code.

It answers what huggingface_hub 2.x asks when listing and fetching a model repository:
- `GET /api/models/{repo}/revision/{rev}[?blobs=true]` (HfApi.model_info): the commit (`sha`) and the
  files (`siblings`, with `size`, `blobId` and, for LFS files, `lfs.sha256`); gated repos say `"gated": "manual"`.
- `HEAD|GET /{repo}/resolve/{rev}/{path}` (hf_hub_download, http_get): `X-Repo-Commit`, `ETag` (the git blob
  sha1 for small files), `X-Linked-Etag` / `X-Linked-Size` (the sha256 and size of LFS files), `Content-Length`,
  `Accept-Ranges`. Small files are served here; LFS files are redirected to a second server on another port,
  the stand-in for the Hub's CDN (another origin: huggingface_hub does not send the token there).
- `Range: bytes=N-` → 206 with `Content-Range`, on both servers.
- Errors as the Hub sends them: 404 with `X-Error-Code: RepoNotFound` / `RevisionNotFound` / `EntryNotFound`;
  on a gated repo 401 (no token) or 403 (a token without access) with `X-Error-Code: GatedRepo`.

Faults for tests: `cut_next_get(repo, path, after)` makes the next GET of that file send its full
`Content-Length`, then only `after` bytes, then drop the connection. `requests` logs every request.
Repositories are folders on disk (e.g. stand-in snapshots): `add_repo(repo_id, folder, commit)`.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".pth", ".pt", ".bin", ".model", ".ckpt")


@dataclass(frozen=True)
class HubFile:
    path: str
    local: Path
    size: int
    lfs: bool
    sha256: str
    git_sha1: str

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    branches: dict[str, str] = field(default_factory=dict)
    gated_tokens: set[str] | None = None  # None: not gated


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None
    authorized: bool


def describe_file(path: str, local: Path) -> HubFile:
    data = local.read_bytes()
    git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return HubFile(path, local, len(data), path.endswith(LFS_SUFFIXES), hashlib.sha256(data).hexdigest(), git)


class LocalHub:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[Request] = []
        self._cuts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._servers = {role: _server(self, role) for role in ("hub", "cdn")}
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return _url(self._servers["hub"])

    @property
    def cdn_url(self) -> str:
        return _url(self._servers["cdn"])

    def __enter__(self) -> LocalHub:
        for server in self._servers.values():
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    # ------------------------------------------------------------ content and faults

    def add_repo(self, repo_id: str, folder: Path, commit: str, branches=("main",), skip=()) -> HubRepo:
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        repo = HubRepo(repo_id, commit, {rel: describe_file(rel, p) for rel, p in files.items() if rel not in skip},
                       {b: commit for b in branches})
        self.repos[repo_id] = repo
        return repo

    def add_standins(self, manifest: dict) -> None:
        """Serve the snapshots of an install_standins() manifest under their repo ids and commits."""
        for item in manifest.values():
            if item["repo_id"] not in self.repos:
                self.add_repo(item["repo_id"], Path(item["snapshot"]), item["revision"])

    def gate(self, repo_id: str, tokens=()) -> None:
        self.repos[repo_id].gated_tokens = set(tokens)

    def cut_next_get(self, repo_id: str, path: str, after: int) -> None:
        with self._lock:
            self._cuts[(repo_id, path)] = after

    def gets(self, path_part: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and path_part in r.path]

    def _take_cut(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            return self._cuts.pop((repo_id, path), None)

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def find_lfs(self, sha256: str) -> tuple[HubRepo, HubFile] | None:
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.lfs and f.sha256 == sha256:
                    return repo, f
        return None


def _url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def _server(hub: LocalHub, role: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.hub = hub  # type: ignore[attr-defined]
    server.role = role  # type: ignore[attr-defined]
    return server


class _Handler(BaseHTTPRequestHandler):
    server_version = "LocalHub/1"

    def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    @property
    def hub(self) -> LocalHub:
        return self.server.hub  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:  # noqa: N802 - http.server API
        self._route(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._route(body=True)

    # ------------------------------------------------------------ routing

    def _route(self, body: bool) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        role = self.server.role  # type: ignore[attr-defined]
        self.hub._log(Request(role, self.command, path, self.headers.get("Range"),
                              self.headers.get("Authorization") is not None))
        if role == "cdn":
            found = self.hub.find_lfs(path.rsplit("/", 1)[-1]) if path.startswith("/lfs/") else None
            if found is None:
                return self._error(404, "EntryNotFound", "no such object")
            return self._send_file(found[0], found[1], body)
        if path.startswith("/api/models/"):
            return self._model_info(path.removeprefix("/api/models/"), parse_qs(split.query))
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        self._error(404, None, "not found")

    def _repo_at(self, repo_id: str, revision: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if revision != repo.commit and repo.branches.get(revision) != repo.commit:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", commit=None)
            return None
        return repo

    def _model_info(self, rest: str, query: dict) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo_at(repo_id, revision or "main")
        if repo is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            sibling: dict = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.git_sha1)
                if f.lfs:
                    sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sibling)
        info = {"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit,
                "private": False, "disabled": False, "gated": "manual" if repo.gated_tokens is not None else False,
                "lastModified": "2026-11-01T00:00:00.000Z", "tags": [], "downloads": 0, "likes": 0,
                "siblings": siblings}
        payload = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _resolve(self, repo_id: str, revision: str, path: str, body: bool) -> None:
        repo = self._repo_at(repo_id, revision)
        if repo is None or not self._allowed(repo):
            return
        f = repo.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", commit=repo.commit)
        if f.lfs:  # the Hub redirects LFS downloads to its CDN, with the file's facts on the redirect
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn_url}/lfs/{f.sha256}")
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
            self.send_header("ETag", f'"{f.git_sha1}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(repo, f, body)

    def _allowed(self, repo: HubRepo) -> bool:
        if repo.gated_tokens is None:
            return True
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        if token in repo.gated_tokens:
            return True
        if token is None:
            self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have access to it "
                        "and be authenticated to access it. Please log in.", commit=repo.commit)
        else:
            self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not in the "
                        "authorized list. Visit https://huggingface.co/" + repo.repo_id + " to ask for access.",
                        commit=repo.commit)
        return False

    # ------------------------------------------------------------ responses

    def _send_file(self, repo: HubRepo, f: HubFile, body: bool) -> None:
        start = _range_start(self.headers.get("Range"), f.size)
        data = f.local.read_bytes()[start:]
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{f.etag}"')
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{f.size - 1}/{f.size}")
        self.end_headers()
        if not body:
            return
        cut = self.hub._take_cut(repo.repo_id, f.path)
        if cut is None:
            self.wfile.write(data)
            return
        self.wfile.write(data[:cut])  # then drop the connection mid-body, as a failing network would
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _range_start(header: str | None, size: int) -> int:
    """The first byte of `Range: bytes=N-` (the form huggingface_hub sends when it resumes)."""
    if not header or not header.startswith("bytes="):
        return 0
    first = header.removeprefix("bytes=").split("-", 1)[0]
    return min(int(first), size) if first.isdigit() else 0
