"""A loopback Hugging Face Hub server for tests (standard library only).

`HubServer` runs a `ThreadingHTTPServer` on ``127.0.0.1`` (free port by default) and speaks the part of the Hub HTTP
API that ``huggingface_hub`` 2.4 calls for **model** repositories, so that real ``HfApi`` / ``hf_hub_download`` /
``transformers.from_pretrained`` calls can run end to end without network access and without mocks.

Supported (model repos only; datasets/spaces answer ``RepoNotFound``):

* ``GET /api/whoami-v2``
* ``POST /api/repos/create`` (``visibility``/``private``; 409 when the repo exists), ``DELETE /api/repos/delete``
* ``GET /api/models/{repo_id}`` and ``GET /api/models/{repo_id}/revision/{revision}`` (``ModelInfo`` payload,
  ``blobs=true`` adds sizes/blob ids/LFS info to ``siblings``)
* ``PUT /api/models/{repo_id}/settings`` (visibility)
* ``POST /api/models/{repo_id}/preupload/{revision}`` (``uploadMode``, ``shouldIgnore``, remote ``oid``)
* ``POST /{repo_id}.git/info/lfs/objects/batch`` (basic transfer; upload + verify actions) and
  ``POST /{repo_id}.git/info/lfs/objects/verify``; the upload action is a pre-signed ``PUT /_lfs/...`` URL on this
  server (no ``Authorization`` header needed, like an S3 signed URL); bytes are checked against the sha256 oid
* ``POST /api/models/{repo_id}/commit/{revision}`` (ndjson; ``file``/``lfsFile``/``deletedFile``/``deletedFolder``;
  ``create_pr=1``; ``parentCommit``)
* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
  ``X-Linked-Size``, single ``Range`` requests answered with 206)
* ``GET /api/models/{repo_id}/tree/{revision}[/{path}]`` (``recursive``, ``expand``),
  ``POST /api/models/{repo_id}/paths-info/{revision}``, ``GET /api/models/{repo_id}/commits/{revision}``,
  ``GET /api/models/{repo_id}/refs``
* ``POST``/``DELETE /api/models/{repo_id}/branch/{branch}``, ``POST /api/models/{repo_id}/tag/{revision}``,
  ``DELETE /api/models/{repo_id}/tag/{tag}``
* ``POST /api/validate-yaml`` (always valid)

Errors are answered like the Hub so that ``huggingface_hub`` raises the same exceptions: ``X-Error-Code``
``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` plus ``X-Error-Message`` and a JSON ``{"error": ...}``
body. An invalid token gets ``401`` with ``X-Error-Message: Invalid credentials in Authorization header`` on every
endpoint (like the Hub); a missing token on a write endpoint gets a plain ``401``.

Behaviours worth knowing (they mirror the Hub):

* A new repo gets an ``initial commit`` containing a default ``.gitattributes`` (so ``repo.commits`` starts with
  one commit).
* Empty commits (operations that change nothing) are accepted and recorded with ``CommitRecord.is_empty``;
  ``huggingface_hub`` 2.4 usually skips them client-side (unchanged files are detected with the preupload ``oid``).
* Xet storage is not implemented. Reads need nothing: resolve answers carry no ``X-Xet-*`` headers, as the Hub's
  do for a file not stored in Xet, so clients download over plain HTTP. Uploads do: ``huggingface_hub`` 2.4 sends
  every LFS file through Xet whenever ``hf_xet`` is installed (no fallback, no ``transfers`` negotiation), so the
  pytest fixture sets ``HF_HUB_DISABLE_XET=1`` for them; without it, ``xet-write-token`` answers 501 (a failing
  Xet service, which ``tests/test_push.py`` uses to check that failure path).

Seeding without HTTP: ``server.create_repo(repo_id, private=...)`` and ``server.commit_files(repo_id, {path: bytes})``.

Test introspection: ``server.repos[repo_id]`` (`RepoState`: ``commits``, ``branches``, ``pull_requests``, ...),
``server.file_bytes(...)``, ``server.list_files(...)``, ``server.history(...)``, ``server.requests`` (a log of
`RequestRecord`, never containing ``Authorization``/tokens), ``server.find_requests(...)``, and fault injection
with ``server.fail_next(status=500, path_contains="/commit/")``.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_GITATTRIBUTES",
    "CommitRecord",
    "FileEntry",
    "HubError",
    "HubServer",
    "PullRequest",
    "RepoState",
    "RequestRecord",
    "TokenInfo",
]

#: Files at least this large are stored with LFS, whatever their name (the Hub uses 10 MB).
LFS_SIZE_THRESHOLD = 10 * 1000 * 1000

#: The ``.gitattributes`` the Hub puts in the initial commit of a new model repo.
DEFAULT_GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,40}")
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_PR_REF = re.compile(r"refs/pr/(\d+)")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-xet-access-token"})


def _now() -> datetime:
    """Return the current UTC time."""
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    """Format a datetime the way the Hub does (``2024-01-02T03:04:05.678Z``)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def git_blob_oid(data: bytes) -> str:
    """Return the git blob id (sha1 of ``"blob {size}\\0" + data``) of ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Return the git-lfs pointer file content for an object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


# --------------------------------------------------------------------------------------------------------------------
# Repository state
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit snapshot: content plus the hashes the Hub reports for it."""

    data: bytes = field(repr=False)
    lfs: bool
    sha256: str
    git_oid: str

    @classmethod
    def from_bytes(cls, data: bytes, *, lfs: bool) -> FileEntry:
        """Build an entry, computing sha256 and the git blob id (of the LFS pointer for LFS files)."""
        sha = hashlib.sha256(data).hexdigest()
        oid = git_blob_oid(lfs_pointer(sha, len(data))) if lfs else git_blob_oid(data)
        return cls(data=data, lfs=lfs, sha256=sha, git_oid=oid)

    @property
    def size(self) -> int:
        """Size of the file content in bytes."""
        return len(self.data)

    @property
    def pointer_size(self) -> int:
        """Size of the git-lfs pointer file (only meaningful for LFS files)."""
        return len(lfs_pointer(self.sha256, self.size))

    @property
    def etag(self) -> str:
        """ETag served on ``/resolve``: the sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def upload_oid(self) -> str:
        """The ``oid`` returned by preupload; compared by huggingface_hub to its local oid to skip unchanged files."""
        return self.etag


@dataclass
class CommitRecord:
    """A commit: full tree snapshot plus what changed compared to its first parent."""

    id: str
    parents: tuple[str, ...]
    title: str
    description: str
    author: str
    date: datetime
    ref: str
    tree: dict[str, FileEntry] = field(repr=False)
    added: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    pr_num: int | None = None

    @property
    def message(self) -> str:
        """Full commit message (title, blank line, description)."""
        return f"{self.title}\n\n{self.description}" if self.description else self.title

    @property
    def files_changed(self) -> tuple[str, ...]:
        """Sorted paths added, modified or deleted by this commit."""
        return tuple(sorted({*self.added, *self.modified, *self.deleted}))

    @property
    def is_empty(self) -> bool:
        """True when the commit changed nothing compared to its parent."""
        return not self.files_changed


@dataclass
class PullRequest:
    """A pull request (``refs/pr/{num}``)."""

    num: int
    title: str
    target_branch: str
    author: str
    created_at: datetime
    head: str
    status: str = "open"

    @property
    def ref(self) -> str:
        """Git ref of the pull request."""
        return f"refs/pr/{self.num}"


@dataclass
class RepoState:
    """In-memory state of one model repository."""

    repo_id: str
    private: bool
    author: str
    created_at: datetime
    commits: list[CommitRecord] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, PullRequest] = field(default_factory=dict)
    lfs_objects: set[str] = field(default_factory=set)
    default_branch: str = "main"
    _by_id: dict[str, CommitRecord] = field(default_factory=dict, repr=False)

    @property
    def namespace(self) -> str:
        """Owner (user or org) of the repo."""
        return self.repo_id.split("/", 1)[0]

    def add_commit(self, commit: CommitRecord) -> None:
        """Register a new commit object (does not move any ref)."""
        self.commits.append(commit)
        self._by_id[commit.id] = commit

    def commit(self, commit_id: str) -> CommitRecord:
        """Return a commit by full id."""
        return self._by_id[commit_id]

    def resolve(self, revision: str | None) -> CommitRecord | None:
        """Resolve a branch, tag, ``refs/pr/N``, ``refs/heads/x``, ``refs/tags/x`` or (short) sha to a commit."""
        rev = revision or self.default_branch
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/") :]
        elif rev.startswith("refs/tags/"):
            sha = self.tags.get(rev[len("refs/tags/") :])
            return self._by_id[sha] if sha else None
        if rev in self.branches:
            return self._by_id[self.branches[rev]]
        if rev in self.tags:
            return self._by_id[self.tags[rev]]
        match = _PR_REF.fullmatch(rev)
        if match:
            pr = self.pull_requests.get(int(match.group(1)))
            return self._by_id[pr.head] if pr else None
        if rev in self._by_id:
            return self._by_id[rev]
        if _SHORT_SHA.fullmatch(rev):
            found = [c for cid, c in self._by_id.items() if cid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        return None

    def history(self, revision: str | None = None) -> list[CommitRecord]:
        """First-parent history of ``revision``, newest first."""
        commit = self.resolve(revision)
        out: list[CommitRecord] = []
        while commit is not None:
            out.append(commit)
            commit = self._by_id[commit.parents[0]] if commit.parents else None
        return out


@dataclass(frozen=True)
class TokenInfo:
    """A valid access token: who it belongs to and what it may do.

    ``namespaces=None`` means the token may write to any namespace; otherwise it may write to the user's own
    namespace and the listed ones (organizations).
    """

    user: str
    write: bool = True
    namespaces: frozenset[str] | None = None

    def can_write_namespace(self, namespace: str) -> bool:
        """Whether this token may create repos / push in ``namespace``."""
        if not self.write:
            return False
        return self.namespaces is None or namespace == self.user or namespace in self.namespaces

    def can_read_namespace(self, namespace: str) -> bool:
        """Whether this token may read private repos of ``namespace``."""
        return self.namespaces is None or namespace == self.user or namespace in self.namespaces


@dataclass
class RequestRecord:
    """One logged HTTP request. Sensitive headers (``Authorization``, cookies) are never stored.

    Attributes:
        method: HTTP method.
        target: raw request target (percent-encoded path and query string).
        path: raw path, without the query string.
        query: decoded query parameters.
        headers: request headers (lower-cased names) minus ``authorization``/``cookie``/``proxy-authorization``.
        body_size: size of the request body in bytes.
        body: the body (empty for LFS PUT uploads, whose bytes are only counted).
        user: owner of the token used (never the token itself), None when anonymous or invalid.
        timestamp: `time.time()` when the request arrived.
        status: HTTP status answered.
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body_size: int
    body: bytes = field(repr=False)
    user: str | None
    timestamp: float
    status: int | None = None

    @property
    def decoded_path(self) -> str:
        """Percent-decoded path without the query string."""
        return unquote(self.path)

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)

    def ndjson(self) -> list[Any]:
        """The body decoded as ndjson (e.g. a commit payload)."""
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class _Fault:
    """An injected failure waiting to be served."""

    status: int
    path_contains: str
    method: str | None
    remaining: int
    message: str
    headers: dict[str, str]

    def matches(self, method: str, target: str) -> bool:
        """Whether this fault applies to a request (matched on the raw and the decoded request target)."""
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path_contains in target or self.path_contains in unquote(target)


class HubError(Exception):
    """An HTTP error answered the Hub way (``X-Error-Code``/``X-Error-Message`` headers + JSON body)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.body = dict(body) if body is not None else {"error": message}


@dataclass
class _Request:
    """A parsed incoming request."""

    method: str
    raw_path: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    token: TokenInfo | None

    def param(self, name: str, default: str | None = None) -> str | None:
        """First value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """Boolean query parameter (``1``/``true``)."""
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        """Decode the JSON body (400 on malformed JSON)."""
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HubError(400, f"Malformed JSON body: {exc}") from exc


@dataclass
class _Response:
    """A response to send."""

    status: int = 200
    body: bytes | memoryview = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"


def _json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> _Response:
    """Build a JSON response."""
    return _Response(status=status, body=json.dumps(payload).encode(), headers=dict(headers or {}))


def _take_revision(parts: list[str]) -> tuple[str, list[str]]:
    """Split decoded path segments into (revision, rest), accepting unencoded ``refs/pr/N`` style revisions."""
    if not parts:
        raise HubError(400, "Missing revision in URL")
    if len(parts) >= 3 and parts[0] == "refs" and parts[1] in ("pr", "convert", "heads", "tags"):
        return "/".join(parts[:3]), parts[3:]
    return parts[0], parts[1:]


def _lfs_patterns(gitattributes: str) -> list[str]:
    """Patterns marked ``filter=lfs`` in a ``.gitattributes`` file."""
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _matches_any(path: str, patterns: Iterable[str]) -> bool:
    """Git-ish pattern match: patterns without a slash match the basename, others the full path."""
    basename = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        pat = pattern.lstrip("/")
        if "/" in pat.rstrip("/"):
            if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat.replace("**/", "")):
                return True
        elif fnmatch.fnmatchcase(basename, pat.rstrip("/")) or path.startswith(pat.rstrip("/") + "/"):
            return True
    return False


def _gitignore_patterns(content: str) -> list[str]:
    """Non-comment, non-negated patterns of a ``.gitignore`` file."""
    return [ln.strip() for ln in content.splitlines() if ln.strip() and not ln.strip().startswith(("#", "!"))]


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range. Returns (start, end) inclusive, None to serve everything; raises 416."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # unsupported (e.g. multi-range): serve the full content with 200, as allowed by RFC 9110
    if not match.group(1):
        suffix = int(match.group(2))
        if suffix == 0 or size == 0:
            raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return max(size - suffix, 0), size - 1
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else size - 1
    if start >= size or end < start:
        raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


# --------------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its `HubServer` and tracks open connections (to close them on stop)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Request handler: reads the body, then delegates to `HubServer._handle`."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _HTTPServer

    def setup(self) -> None:
        """Register the connection so that `HubServer.stop` can close it."""
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        """Unregister the connection."""
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (requests are recorded in `HubServer.requests`)."""

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked transfer encoding)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        """Handle one request of any method."""
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        response = self.server.hub._handle(self.command, self.path, headers, body)
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if "Content-Type" not in response.headers:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD" and response.body:
                self.wfile.write(response.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


# --------------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------------


class HubServer:
    """A loopback Hugging Face Hub for tests. Use as a context manager or call `start` / `stop`.

    Args:
        host: interface to bind (loopback by default).
        port: port to bind; 0 picks a free one.
        token: the default valid token (random if omitted), owned by ``user`` with write access everywhere.
        user: user name of the default token.
        lfs_size_threshold: files at least this large are uploaded with LFS whatever their name.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        user: str = "user",
        lfs_size_threshold: int = LFS_SIZE_THRESHOLD,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.token = token or f"hf_loopback_{secrets.token_hex(16)}"
        self.lfs_size_threshold = lfs_size_threshold
        self.repos: dict[str, RepoState] = {}
        self.lfs_store: dict[str, bytes] = {}
        self._tokens: dict[str, TokenInfo] = {self.token: TokenInfo(user=user)}
        self._requests: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._pending_uploads: dict[str, tuple[str, str, int]] = {}
        self._lock = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: Set by the pytest fixture: the temporary ``HF_HOME`` used by huggingface_hub during the test.
        self.hf_home: Path | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> HubServer:
        """Bind the socket and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close client connections and the listening socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with httpd.connections_lock:
            connections = list(httpd.open_connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123``."""
        return f"http://{self.host}:{self.port}"

    # ---------------------------------------------------------------- configuration

    def add_token(self, token: str, user: str, *, write: bool = True, namespaces: Iterable[str] | None = None) -> None:
        """Register another valid token (``namespaces=None``: may write anywhere; else own namespace + these)."""
        with self._lock:
            self._tokens[token] = TokenInfo(
                user=user, write=write, namespaces=frozenset(namespaces) if namespaces is not None else None
            )

    def revoke_token(self, token: str) -> None:
        """Make a token invalid."""
        with self._lock:
            self._tokens.pop(token, None)

    def fail_next(
        self,
        status: int = 500,
        path_contains: str = "",
        count: int = 1,
        *,
        method: str | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Make the next ``count`` requests whose path contains ``path_contains`` fail with ``status``.

        The path is matched both percent-encoded and decoded (e.g. ``"/commit/"``, ``"/resolve/main/config.json"``,
        ``"/preupload/"``, ``"lfs/objects/batch"``, ``"/_lfs/"`` for LFS PUT uploads). Note that huggingface_hub
        retries 5xx answers (with 1 s+ sleeps) on preupload, LFS batch/upload and most GET listings; the commit
        POST and ``/resolve`` HEAD calls are not retried.
        """
        default_headers: dict[str, str] = {}
        if status == 401:
            default_headers["X-Error-Message"] = _INVALID_CREDENTIALS
        elif status == 403:
            default_headers["X-Error-Message"] = "Forbidden (injected failure)"
        default_headers.update(headers or {})
        with self._lock:
            self._faults.append(
                _Fault(
                    status=status,
                    path_contains=path_contains,
                    method=method,
                    remaining=count,
                    message=message or f"Injected failure ({status})",
                    headers=default_headers,
                )
            )

    def clear_faults(self) -> None:
        """Drop all pending injected failures."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """Number of injected failures not served yet."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    # ---------------------------------------------------------------- introspection

    @property
    def requests(self) -> list[RequestRecord]:
        """Copy of the request log (oldest first)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._requests.clear()

    def find_requests(
        self, method: str | None = None, path_contains: str | None = None, status: int | None = None
    ) -> list[RequestRecord]:
        """Filter the request log (``path_contains`` is matched on the raw and decoded target, query included)."""
        out = []
        for record in self.requests:
            if method is not None and record.method != method.upper():
                continue
            if path_contains is not None and not (
                path_contains in record.target or path_contains in unquote(record.target)
            ):
                continue
            if status is not None and record.status != status:
                continue
            out.append(record)
        return out

    @property
    def lfs_upload_requests(self) -> list[RequestRecord]:
        """The LFS PUT uploads received (one per LFS object whose bytes were sent)."""
        return self.find_requests(method="PUT", path_contains="/_lfs/")

    def repo(self, repo_id: str) -> RepoState:
        """Return a repo's state (KeyError if it does not exist)."""
        with self._lock:
            return self.repos[repo_id]

    def commits(self, repo_id: str) -> list[CommitRecord]:
        """All commits of a repo, in creation order (includes the initial commit and PR commits)."""
        with self._lock:
            return list(self.repos[repo_id].commits)

    def history(self, repo_id: str, revision: str = "main") -> list[CommitRecord]:
        """First-parent history of a revision, newest first."""
        with self._lock:
            return self.repos[repo_id].history(revision)

    def _snapshot(self, repo_id: str, revision: str) -> dict[str, FileEntry]:
        """Tree of a revision (KeyError if the repo or revision does not exist)."""
        with self._lock:
            commit = self.repos[repo_id].resolve(revision)
            if commit is None:
                raise KeyError(f"Revision {revision!r} not found in {repo_id!r}")
            return commit.tree

    def file_bytes(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """Content of a file at a revision (KeyError if missing)."""
        return self._snapshot(repo_id, revision)[path].data

    def file_entry(self, repo_id: str, path: str, revision: str = "main") -> FileEntry:
        """`FileEntry` (content, lfs flag, hashes) of a file at a revision (KeyError if missing)."""
        return self._snapshot(repo_id, revision)[path]

    def list_files(self, repo_id: str, revision: str = "main") -> list[str]:
        """Sorted file paths at a revision."""
        return sorted(self._snapshot(repo_id, revision))

    # ---------------------------------------------------------------- server-side helpers (no HTTP)

    def create_repo(self, repo_id: str, *, private: bool = False, exist_ok: bool = False) -> RepoState:
        """Create a repo directly (with the Hub's initial ``.gitattributes`` commit)."""
        with self._lock:
            if repo_id in self.repos:
                if exist_ok:
                    return self.repos[repo_id]
                raise ValueError(f"Repo {repo_id!r} already exists")
            now = _now()
            repo = RepoState(repo_id=repo_id, private=private, author=repo_id.split("/")[0], created_at=now)
            entry = FileEntry.from_bytes(DEFAULT_GITATTRIBUTES.encode(), lfs=False)
            initial = CommitRecord(
                id=self._new_commit_id(repo_id, "initial commit"),
                parents=(),
                title="initial commit",
                description="",
                author=repo.author,
                date=now,
                ref="main",
                tree={".gitattributes": entry},
                added=(".gitattributes",),
            )
            repo.add_commit(initial)
            repo.branches["main"] = initial.id
            self.repos[repo_id] = repo
            return repo

    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        delete: Iterable[str] = (),
        message: str = "Seed files",
        revision: str = "main",
        author: str | None = None,
    ) -> CommitRecord:
        """Commit files directly (creating the repo if needed), e.g. to seed fixtures without HTTP.

        ``revision`` must be an existing branch or ``refs/pr/N``. Upload mode (LFS or regular) follows the same
        rule as the preupload endpoint.
        """
        with self._lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            pr_match = _PR_REF.fullmatch(revision)
            is_pr = pr_match is not None and int(pr_match.group(1)) in repo.pull_requests
            head = repo.resolve(revision)
            if head is None or (revision not in repo.branches and not is_pr):
                raise KeyError(f"{revision!r} is not a branch or pull request of {repo_id!r}")
            tree = dict(head.tree)
            patterns = self._lfs_patterns_for(tree)
            for path, data in (files or {}).items():
                lfs = len(data) > 0 and self._is_lfs(path, len(data), data[:512], patterns)
                tree[path] = FileEntry.from_bytes(data, lfs=lfs)
                if lfs:
                    self.lfs_store[tree[path].sha256] = data
                    repo.lfs_objects.add(tree[path].sha256)
            for path in delete:
                tree.pop(path, None)
            return self._record_commit(repo, revision, head, tree, message, "", author or repo.author)

    # ---------------------------------------------------------------- internals: generic helpers

    def _new_commit_id(self, repo_id: str, title: str) -> str:
        """A fresh, unique 40-hex commit id."""
        seed = f"{repo_id}:{title}:{time.time_ns()}:{uuid.uuid4().hex}".encode()
        return hashlib.sha1(seed).hexdigest()

    def _lfs_patterns_for(self, tree: Mapping[str, FileEntry]) -> list[str]:
        """LFS patterns: the default ``.gitattributes`` ones plus the repo's own."""
        patterns = _lfs_patterns(DEFAULT_GITATTRIBUTES)
        gitattributes = tree.get(".gitattributes")
        if gitattributes is not None and not gitattributes.lfs:
            patterns += _lfs_patterns(gitattributes.data.decode("utf-8", errors="replace"))
        return patterns

    def _is_lfs(self, path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
        """The Hub's upload-mode rule: LFS if tracked by ``.gitattributes``, large, or binary."""
        return _matches_any(path, patterns) or size >= self.lfs_size_threshold or b"\x00" in sample

    def _record_commit(
        self,
        repo: RepoState,
        ref: str,
        parent: CommitRecord,
        tree: dict[str, FileEntry],
        title: str,
        description: str,
        author: str,
        pr_num: int | None = None,
    ) -> CommitRecord:
        """Create a commit on top of ``parent`` and move ``ref`` (branch or ``refs/pr/N``) to it."""
        old = parent.tree
        added = tuple(sorted(p for p in tree if p not in old))
        modified = tuple(sorted(p for p in tree if p in old and old[p] != tree[p]))
        deleted = tuple(sorted(p for p in old if p not in tree))
        commit = CommitRecord(
            id=self._new_commit_id(repo.repo_id, title),
            parents=(parent.id,),
            title=title,
            description=description,
            author=author,
            date=_now(),
            ref=ref,
            tree=tree,
            added=added,
            modified=modified,
            deleted=deleted,
            pr_num=pr_num,
        )
        repo.add_commit(commit)
        match = _PR_REF.fullmatch(ref)
        if match:
            repo.pull_requests[int(match.group(1))].head = commit.id
        else:
            repo.branches[ref.removeprefix("refs/heads/")] = commit.id
        return commit

    def _repo_for_read(self, req: _Request, repo_id: str) -> RepoState:
        """Return a readable repo or raise RepoNotFound (401 when anonymous, 404 otherwise, like the Hub)."""
        repo = self.repos.get(repo_id)
        if repo is not None and (not repo.private or (req.token and req.token.can_read_namespace(repo.namespace))):
            return repo
        raise HubError(401 if req.token is None else 404, "Repository not found", code="RepoNotFound")

    def _require_token(self, req: _Request) -> TokenInfo:
        """Return the caller's token info or raise 401."""
        if req.token is None:
            raise HubError(401, "You must be authenticated to access this endpoint: pass a valid token.")
        return req.token

    def _repo_for_write(self, req: _Request, repo_id: str, *, allow_read_only: bool = False) -> RepoState:
        """Return a repo the caller may write to (or open a PR on, when ``allow_read_only``)."""
        token = self._require_token(req)
        repo = self._repo_for_read(req, repo_id)
        if not allow_read_only and not token.can_write_namespace(repo.namespace):
            raise HubError(403, f"You don't have write access to {repo_id}. Check your token's permissions.")
        return repo

    def _resolve(self, repo: RepoState, revision: str | None) -> CommitRecord:
        """Resolve a revision or raise RevisionNotFound."""
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def _file_info(
        self, repo: RepoState, commit: CommitRecord, path: str, entry: FileEntry, expand: bool
    ) -> dict[str, Any]:
        """Tree / paths-info JSON for a file."""
        info: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            info["lastCommit"] = self._last_commit(repo, commit, lambda tree: tree.get(path))
            info["securityFileStatus"] = {"status": "safe", "avScan": {}, "pickleImportScan": {}}
        return info

    def _folder_info(
        self, repo: RepoState, commit: CommitRecord, path: str, tree: Mapping[str, FileEntry], expand: bool
    ) -> dict[str, Any]:
        """Tree / paths-info JSON for a folder."""
        prefix = path + "/"
        members = sorted((p, e.git_oid) for p, e in tree.items() if p.startswith(prefix))
        info: dict[str, Any] = {
            "type": "directory",
            "oid": hashlib.sha1(json.dumps(members).encode()).hexdigest(),
            "size": 0,
            "path": path,
        }
        if expand:
            info["lastCommit"] = self._last_commit(
                repo, commit, lambda t: tuple(sorted((p, e) for p, e in t.items() if p.startswith(prefix)))
            )
        return info

    def _last_commit(self, repo: RepoState, commit: CommitRecord, key: Any) -> dict[str, str]:
        """Last commit (first-parent walk) that changed ``key(tree)``."""
        current = commit
        value = key(current.tree)
        while current.parents:
            parent = repo.commit(current.parents[0])
            if key(parent.tree) != value:
                break
            current = parent
        return {"id": current.id, "title": current.title, "date": _iso(current.date)}

    @staticmethod
    def _folders(tree: Mapping[str, FileEntry]) -> set[str]:
        """All folder paths implied by a tree."""
        folders: set[str] = set()
        for path in tree:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
        return folders

    # ---------------------------------------------------------------- request handling

    def _authenticate(self, headers: Mapping[str, str]) -> TokenInfo | None:
        """Token info of the caller (``headers`` with lower-cased names); None when anonymous; 401 if invalid."""
        header = headers.get("authorization")
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        info = self._tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            raise HubError(401, _INVALID_CREDENTIALS, headers={"X-Error-Message": _INVALID_CREDENTIALS})
        return info

    def _handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _Response:
        """Log, apply faults, authenticate, route, and turn errors into Hub-style responses.

        ``headers`` must have lower-cased names.
        """
        split = urlsplit(raw_path)
        is_signed_lfs = split.path.startswith("/_lfs/")
        record = RequestRecord(
            method=method,
            target=raw_path,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k: v for k, v in headers.items() if k.lower() not in _SENSITIVE_HEADERS},
            body_size=len(body),
            body=b"" if is_signed_lfs else body,
            user=None,
            timestamp=time.time(),
        )
        with self._lock:
            self._requests.append(record)
            fault = next((f for f in self._faults if f.remaining > 0 and f.matches(method, raw_path)), None)
            if fault is not None:
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
        try:
            if fault is not None:
                raise HubError(fault.status, fault.message, headers=fault.headers)
            with self._lock:
                token = None if is_signed_lfs else self._authenticate(headers)
                record.user = token.user if token else None
                req = _Request(
                    method=method,
                    raw_path=split.path,
                    segments=[unquote(s) for s in split.path.split("/")[1:]],
                    query=record.query,
                    headers=headers,
                    body=body,
                    token=token,
                )
                response = self._route(req)
        except HubError as err:
            response = _json_response(err.body, status=err.status)
            if err.code:
                response.headers["X-Error-Code"] = err.code
            message = err.headers.pop("X-Error-Message", err.message)
            response.headers["X-Error-Message"] = message.replace("\n", " ").encode("latin-1", "replace").decode()
            response.headers.update(err.headers)
        except Exception as exc:  # pragma: no cover - a bug in the fake server must be visible, not hang the client
            response = _json_response({"error": f"Loopback hub internal error: {exc!r}"}, status=500)
        response.headers.setdefault("X-Request-Id", f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}")
        record.status = response.status
        return response

    def _route(self, req: _Request) -> _Response:
        """Dispatch a request to its endpoint implementation."""
        s, m = req.segments, req.method
        if s[:1] == ["api"]:
            if s == ["api", "whoami-v2"] and m == "GET":
                return self._whoami(req)
            if s == ["api", "repos", "create"] and m == "POST":
                return self._create_repo(req)
            if s == ["api", "repos", "delete"] and m == "DELETE":
                return self._delete_repo(req)
            if s == ["api", "validate-yaml"] and m == "POST":
                return _json_response({"errors": [], "warnings": []})
            if len(s) >= 4 and s[1] in ("datasets", "spaces", "kernels"):
                raise HubError(404, "Repository not found (loopback hub only serves models)", code="RepoNotFound")
            if len(s) >= 4 and s[1] == "models":
                return self._route_model_api(req, f"{s[2]}/{s[3]}", s[4:])
        elif s[:1] == ["_lfs"] and len(s) == 4:
            return self._lfs_object(req, f"{s[1]}/{s[2]}", s[3])
        elif len(s) == 6 and s[1].endswith(".git") and s[2:5] == ["info", "lfs", "objects"] and m == "POST":
            repo_id = f"{s[0]}/{s[1][: -len('.git')]}"
            if s[5] == "batch":
                return self._lfs_batch(req, repo_id)
            if s[5] == "verify":
                return self._lfs_verify(req, repo_id)
        elif len(s) >= 5 and s[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve_file(req, f"{s[0]}/{s[1]}", s[3:])
        raise HubError(404, f"Not found: {m} {req.raw_path} is not implemented by the loopback hub")

    def _route_model_api(self, req: _Request, repo_id: str, rest: list[str]) -> _Response:
        """Dispatch ``/api/models/{repo_id}/...``."""
        m = req.method
        if not rest and m == "GET":
            return self._model_info(req, repo_id, None)
        action, args = rest[0] if rest else "", rest[1:]
        if action == "revision" and m == "GET":
            revision, _ = _take_revision(args)
            return self._model_info(req, repo_id, revision)
        if action == "preupload" and m == "POST":
            return self._preupload(req, repo_id, _take_revision(args)[0])
        if action == "commit" and m == "POST":
            return self._commit(req, repo_id, _take_revision(args)[0])
        if action == "tree" and m == "GET":
            revision, path_parts = _take_revision(args)
            return self._tree(req, repo_id, revision, "/".join(path_parts).strip("/"))
        if action == "paths-info" and m == "POST":
            return self._paths_info(req, repo_id, _take_revision(args)[0])
        if action == "commits" and m == "GET":
            return self._list_commits(req, repo_id, _take_revision(args)[0] if args else None)
        if action == "refs" and m == "GET":
            return self._refs(req, repo_id)
        if action == "branch" and m in ("POST", "DELETE"):
            return self._branch(req, repo_id, "/".join(args))
        if action == "tag" and m in ("POST", "DELETE"):
            return self._tag(req, repo_id, "/".join(args))
        if action == "settings" and m == "PUT":
            return self._settings(req, repo_id)
        if action in ("xet-write-token", "xet-read-token"):
            raise HubError(
                501, "Xet storage is not implemented by the loopback hub: run clients with HF_HUB_DISABLE_XET=1"
            )
        raise HubError(404, f"Not found: {m} {req.raw_path} is not implemented by the loopback hub")

    # ---------------------------------------------------------------- endpoints: account and repos

    def _whoami(self, req: _Request) -> _Response:
        """``GET /api/whoami-v2``."""
        if req.token is None:
            raise HubError(401, "Invalid username or password.")
        token = req.token
        orgs = sorted(token.namespaces or ())
        return _json_response(
            {
                "type": "user",
                "id": hashlib.sha1(token.user.encode()).hexdigest()[:24],
                "name": token.user,
                "fullname": token.user,
                "email": f"{token.user}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": "write"} for o in orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {
                        "displayName": "loopback",
                        "role": "write" if token.write else "read",
                        "createdAt": _iso(_now()),
                    },
                },
            }
        )

    def _create_repo(self, req: _Request) -> _Response:
        """``POST /api/repos/create``."""
        token = self._require_token(req)
        payload = req.json()
        repo_type = payload.get("type") or "model"
        if repo_type != "model":
            raise HubError(400, f"The loopback hub only supports model repos, not {repo_type!r}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or token.user
        if not _REPO_NAME.fullmatch(name) or "--" in name or ".." in name or name.endswith((".git", ".")):
            raise HubError(400, f"Invalid repo name: {name!r}")
        repo_id = f"{namespace}/{name}"
        if not token.can_write_namespace(namespace):
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace!r}")
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            message = "You already created this model repo"
            raise HubError(409, message, body={"error": message, "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = self.create_repo(repo_id, private=private)
        repo.author = token.user
        return _json_response({"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _delete_repo(self, req: _Request) -> _Response:
        """``DELETE /api/repos/delete``."""
        token = self._require_token(req)
        payload = req.json()
        repo_id = f"{payload.get('organization') or token.user}/{payload.get('name')}"
        repo = self._repo_for_write(req, repo_id)
        del self.repos[repo.repo_id]
        return _Response(status=200, body=b"")

    def _settings(self, req: _Request, repo_id: str) -> _Response:
        """``PUT /api/models/{repo_id}/settings``."""
        repo = self._repo_for_write(req, repo_id)
        payload = req.json()
        if "visibility" in payload:
            repo.private = payload["visibility"] == "private"
        elif "private" in payload:
            repo.private = bool(payload["private"])
        return _json_response({})

    def _model_info(self, req: _Request, repo_id: str, revision: str | None) -> _Response:
        """``GET /api/models/{repo_id}[/revision/{revision}]``."""
        repo = self._repo_for_read(req, repo_id)
        commit = self._resolve(repo, revision)
        blobs = req.flag("blobs")
        siblings = []
        for path in sorted(commit.tree):
            entry = commit.tree[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update({"size": entry.size, "blobId": entry.git_oid})
                if entry.lfs:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        return _json_response(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.namespace,
                "sha": commit.id,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.created_at),
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "library_name": None,
                "siblings": siblings,
                "spaces": [],
                "usedStorage": sum(e.size for e in commit.tree.values()),
            }
        )

    # ---------------------------------------------------------------- endpoints: upload

    def _preupload(self, req: _Request, repo_id: str, revision: str) -> _Response:
        """``POST /api/models/{repo_id}/preupload/{revision}``: upload mode, ignore flag and remote oid per file."""
        create_pr = req.flag("create_pr")
        repo = self._repo_for_write(req, repo_id, allow_read_only=create_pr)
        commit = self._resolve(repo, revision)
        payload = req.json()
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "Invalid preupload payload: 'files' must be a list")
        patterns = self._lfs_patterns_for(commit.tree)
        ignore_source = payload.get("gitIgnore")
        if ignore_source is None and ".gitignore" in commit.tree:
            ignore_source = commit.tree[".gitignore"].data.decode("utf-8", errors="replace")
        ignore_patterns = _gitignore_patterns(ignore_source or "")
        out = []
        for item in files:
            path = item.get("path")
            if not isinstance(path, str):
                raise HubError(400, "Invalid preupload payload: each file needs a 'path'")
            sample = base64.b64decode(item.get("sample") or "")
            size = int(item.get("size") or 0)
            info: dict[str, Any] = {
                "path": path,
                "uploadMode": "lfs" if self._is_lfs(path, size, sample, patterns) else "regular",
                "shouldIgnore": bool(ignore_patterns) and _matches_any(path, ignore_patterns),
            }
            existing = commit.tree.get(path)
            info["oid"] = existing.upload_oid if existing is not None else None
            out.append(info)
        return _json_response({"files": out, "commitOid": commit.id})

    def _lfs_batch(self, req: _Request, repo_id: str) -> _Response:
        """``POST /{repo_id}.git/info/lfs/objects/batch`` (basic transfer)."""
        payload = req.json()
        operation = payload.get("operation")
        if operation == "upload":
            repo = self._repo_for_write(req, repo_id, allow_read_only=True)
        elif operation == "download":
            repo = self._repo_for_read(req, repo_id)
        else:
            raise HubError(400, f"Unsupported LFS operation: {operation!r}")
        objects_out = []
        for obj in payload.get("objects") or []:
            oid, size = str(obj.get("oid", "")), obj.get("size")
            base: dict[str, Any] = {"oid": oid, "size": size if isinstance(size, int) else 0}
            if not _HEX64.fullmatch(oid) or not isinstance(size, int) or size < 0:
                objects_out.append({**base, "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            if operation == "download":
                if oid not in repo.lfs_objects:
                    objects_out.append({**base, "error": {"code": 404, "message": "Object does not exist"}})
                else:
                    href = f"{self.endpoint}/_lfs/{repo_id}/{oid}"
                    objects_out.append({**base, "authenticated": True, "actions": {"download": {"href": href}}})
                continue
            if oid in repo.lfs_objects and oid in self.lfs_store:
                objects_out.append({**base, "authenticated": True})  # already there: no actions => no upload
                continue
            signature = secrets.token_urlsafe(16)
            self._pending_uploads[signature] = (repo_id, oid, size)
            objects_out.append(
                {
                    **base,
                    "authenticated": True,
                    "actions": {
                        "upload": {
                            "href": f"{self.endpoint}/_lfs/{repo_id}/{oid}?X-Loopback-Signature={signature}",
                            "expires_in": 3600,
                        },
                        "verify": {
                            "href": f"{self.endpoint}/{repo_id}.git/info/lfs/objects/verify",
                            "expires_in": 3600,
                        },
                    },
                }
            )
        return _json_response(
            {"transfer": "basic", "objects": objects_out},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_object(self, req: _Request, repo_id: str, oid: str) -> _Response:
        """``PUT /_lfs/{repo_id}/{oid}?X-Loopback-Signature=...`` (pre-signed upload) or ``GET`` (download)."""
        if req.method == "GET":
            repo = self.repos.get(repo_id)
            if repo is None or oid not in repo.lfs_objects:
                raise HubError(404, "Object not found")
            return _Response(body=self.lfs_store[oid], content_type="application/octet-stream")
        if req.method != "PUT":
            raise HubError(405, "Method not allowed")
        signature = req.param("X-Loopback-Signature") or ""
        pending = self._pending_uploads.get(signature)
        if pending is None or pending[:2] != (repo_id, oid):
            raise HubError(403, "SignatureDoesNotMatch: invalid or expired upload URL")
        expected_size = pending[2]
        if len(req.body) != expected_size:
            raise HubError(400, f"Uploaded size {len(req.body)} does not match the announced size {expected_size}")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid")
        self.lfs_store[oid] = req.body
        repo = self.repos.get(repo_id)
        if repo is not None:
            repo.lfs_objects.add(oid)
        del self._pending_uploads[signature]
        return _Response(headers={"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'}, content_type="text/plain")

    def _lfs_verify(self, req: _Request, repo_id: str) -> _Response:
        """``POST /{repo_id}.git/info/lfs/objects/verify``."""
        repo = self._repo_for_write(req, repo_id, allow_read_only=True)
        payload = req.json()
        oid, size = payload.get("oid"), payload.get("size")
        if oid not in repo.lfs_objects or len(self.lfs_store.get(oid, b"")) != size:
            raise HubError(404, f"LFS object {oid} of size {size} was not uploaded")
        return _json_response({"success": True})

    def _commit(self, req: _Request, repo_id: str, revision: str) -> _Response:
        """``POST /api/models/{repo_id}/commit/{revision}`` (ndjson payload)."""
        create_pr = req.flag("create_pr")
        token = self._require_token(req)
        repo = self._repo_for_write(req, repo_id, allow_read_only=create_pr)
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Invalid commit payload: the first line must be the header")
        header = lines[0].get("value") or {}
        title = str(header.get("summary") or "").strip()
        if not title:
            raise HubError(400, "Commit summary is required")
        description = str(header.get("description") or "")
        parent_commit = header.get("parentCommit")

        pr_num: int | None = None
        if create_pr:
            if revision not in repo.branches:
                raise HubError(
                    404, f"Invalid rev id: {revision} (pull requests must target a branch)", code="RevisionNotFound"
                )
            if parent_commit:
                base = repo.resolve(parent_commit)
                if base is None:
                    raise HubError(400, f"Invalid parentCommit: {parent_commit}")
            else:
                base = repo.commit(repo.branches[revision])
            pr_num = max([*repo.pull_requests, *[0]]) + 1
            repo.pull_requests[pr_num] = PullRequest(
                num=pr_num, title=title, target_branch=revision, author=token.user, created_at=_now(), head=base.id
            )
            ref = f"refs/pr/{pr_num}"
        else:
            match = _PR_REF.fullmatch(revision)
            is_open_pr = match is not None and int(match.group(1)) in repo.pull_requests
            if revision not in repo.branches and not is_open_pr:
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            ref = revision
            base = self._resolve(repo, ref)
            if parent_commit and not base.id.startswith(str(parent_commit)):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")

        tree = dict(base.tree)
        try:
            for line in lines[1:]:
                self._apply_operation(repo, tree, line)
        except HubError:
            if pr_num is not None:
                del repo.pull_requests[pr_num]
            raise
        commit = self._record_commit(repo, ref, base, tree, title, description, token.user, pr_num=pr_num)
        out: dict[str, Any] = {
            "success": True,
            "commitOid": commit.id,
            "commitUrl": f"{self.endpoint}/{repo_id}/commit/{commit.id}",
            "hookOutput": "",
        }
        if pr_num is not None:
            out["pullRequestUrl"] = f"{self.endpoint}/{repo_id}/discussions/{pr_num}"
        return _json_response(out)

    def _apply_operation(self, repo: RepoState, tree: dict[str, FileEntry], line: Mapping[str, Any]) -> None:
        """Apply one ndjson commit operation to ``tree``."""
        key, value = line.get("key"), line.get("value") or {}
        path = str(value.get("path") or "")
        if key in ("file", "lfsFile", "deletedFile") and not path:
            raise HubError(400, f"Invalid commit operation {key!r}: missing path")
        if key == "file":
            content = value.get("content") or ""
            data = base64.b64decode(content) if value.get("encoding") == "base64" else str(content).encode()
            tree[path] = FileEntry.from_bytes(data, lfs=False)
        elif key == "lfsFile":
            oid = value.get("oid")
            if value.get("algo", "sha256") != "sha256" or oid not in repo.lfs_objects or oid not in self.lfs_store:
                raise HubError(
                    400,
                    f"Your push was rejected because an LFS pointer pointed to a file that does not exist ({path})",
                )
            data = self.lfs_store[oid]
            if value.get("size") is not None and int(value["size"]) != len(data):
                raise HubError(400, f"LFS object size mismatch for {path}")
            tree[path] = FileEntry.from_bytes(data, lfs=True)
        elif key == "deletedFile":
            if path not in tree:
                raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            del tree[path]
        elif key == "deletedFolder":
            prefix = path.strip("/") + "/" if path.strip("/") else ""
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"Unsupported commit operation: {key!r}")

    # ---------------------------------------------------------------- endpoints: download and listing

    def _resolve_file(self, req: _Request, repo_id: str, parts: list[str]) -> _Response:
        """``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}``, with single-range support."""
        repo = self._repo_for_read(req, repo_id)
        revision, path_parts = _take_revision(parts)
        commit = self._resolve(repo, revision)
        path = "/".join(path_parts)
        entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.id})
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        content_type = "application/octet-stream" if entry.lfs else "text/plain; charset=utf-8"
        data = memoryview(entry.data)
        range_header = req.headers.get("range")
        if range_header:
            try:
                span = _parse_range(range_header, entry.size)
            except HubError as err:
                err.headers["X-Repo-Commit"] = commit.id
                raise
            if span is not None:
                start, end = span
                headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
                return _Response(status=206, body=data[start : end + 1], headers=headers, content_type=content_type)
        return _Response(status=200, body=data, headers=headers, content_type=content_type)

    def _tree(self, req: _Request, repo_id: str, revision: str, path: str) -> _Response:
        """``GET /api/models/{repo_id}/tree/{revision}[/{path}]``."""
        repo = self._repo_for_read(req, repo_id)
        commit = self._resolve(repo, revision)
        tree, folders = commit.tree, self._folders(commit.tree)
        if path and path not in folders:
            raise HubError(404, f"Entry not found: {path!r} is not a folder", code="EntryNotFound")
        prefix = path + "/" if path else ""
        recursive, expand = req.flag("recursive"), req.flag("expand")
        entries: list[dict[str, Any]] = []
        for folder in sorted(folders):
            if folder.startswith(prefix) and (recursive or "/" not in folder[len(prefix) :]):
                entries.append(self._folder_info(repo, commit, folder, tree, expand))
        for file_path in sorted(tree):
            if file_path.startswith(prefix) and (recursive or "/" not in file_path[len(prefix) :]):
                entries.append(self._file_info(repo, commit, file_path, tree[file_path], expand))
        entries.sort(key=lambda e: str(e["path"]))
        return _json_response(entries)

    def _paths_info(self, req: _Request, repo_id: str, revision: str) -> _Response:
        """``POST /api/models/{repo_id}/paths-info/{revision}`` (form or JSON body); missing paths are omitted."""
        repo = self._repo_for_read(req, repo_id)
        commit = self._resolve(repo, revision)
        if (req.headers.get("content-type") or "").startswith("application/json"):
            payload = req.json()
            raw_paths = payload.get("paths") or []
            paths = [raw_paths] if isinstance(raw_paths, str) else list(raw_paths)
            expand = bool(payload.get("expand"))
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand") or ["false"])[0].lower() in ("1", "true")
        folders = self._folders(commit.tree)
        out = []
        for raw in paths:
            path = raw.strip("/")
            if path in commit.tree:
                out.append(self._file_info(repo, commit, path, commit.tree[path], expand))
            elif path in folders:
                out.append(self._folder_info(repo, commit, path, commit.tree, expand))
        return _json_response(out)

    def _list_commits(self, req: _Request, repo_id: str, revision: str | None) -> _Response:
        """``GET /api/models/{repo_id}/commits/{revision}`` (first-parent history, newest first)."""
        repo = self._repo_for_read(req, repo_id)
        self._resolve(repo, revision)
        return _json_response(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "message": c.message,
                    "date": _iso(c.date),
                    "authors": [{"user": c.author, "avatar": ""}],
                    "formatted": {"title": c.title, "message": c.message},
                }
                for c in repo.history(revision)
            ]
        )

    def _refs(self, req: _Request, repo_id: str) -> _Response:
        """``GET /api/models/{repo_id}/refs``."""
        repo = self._repo_for_read(req, repo_id)
        return _json_response(
            {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
                    for b, sha in sorted(repo.branches.items())
                ],
                "converts": [],
                "tags": [
                    {"name": t, "ref": f"refs/tags/{t}", "targetCommit": sha} for t, sha in sorted(repo.tags.items())
                ],
                "pullRequests": [
                    {"name": pr.ref, "ref": pr.ref, "targetCommit": pr.head} for pr in repo.pull_requests.values()
                ]
                if req.flag("include_prs")
                else [],
            }
        )

    def _branch(self, req: _Request, repo_id: str, branch: str) -> _Response:
        """``POST``/``DELETE /api/models/{repo_id}/branch/{branch}``."""
        repo = self._repo_for_write(req, repo_id)
        if req.method == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            if branch == repo.default_branch:
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
            return _json_response({})
        if not branch or branch.startswith("refs/") or branch in repo.branches:
            raise HubError(409, f"Reference already exists or is invalid: {branch}")
        starting_point = req.json().get("startingPoint")
        repo.branches[branch] = self._resolve(repo, starting_point).id
        return _json_response({})

    def _tag(self, req: _Request, repo_id: str, arg: str) -> _Response:
        """``POST /api/models/{repo_id}/tag/{revision}`` (body ``{"tag": ...}``) and ``DELETE .../tag/{tag}``."""
        repo = self._repo_for_write(req, repo_id)
        if req.method == "DELETE":
            if arg not in repo.tags:
                raise HubError(404, f"Invalid rev id: {arg}", code="RevisionNotFound")
            del repo.tags[arg]
            return _json_response({})
        tag = str(req.json().get("tag") or "")
        if not tag or tag in repo.tags:
            raise HubError(409, f"Tag already exists or is invalid: {tag}")
        repo.tags[tag] = self._resolve(repo, arg).id
        return _json_response({})


def iter_ndjson(data: bytes) -> Iterator[Any]:
    """Decode an ndjson payload (helper for tests inspecting commit bodies)."""
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)
