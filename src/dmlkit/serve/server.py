"""The HTTP side of ``dmlkit serve``: the standard library's ThreadingHTTPServer, a JSON API, the
page's own files (package data, no CDN) and the run directory's files, nothing else.

Routes (GET unless noted)::

    /                          the page (static/index.html); /static/app.js, /static/style.css
    /api/summary               run, split, classes, metrics, history, pictures
    /api/items?page&per_page&label&order=index|worst
    /api/query?index=I&k=K     item I's neighbours, its R@1 and AP
    /api/query-path?path=P&k=K an image file on this machine (loopback hosts only)
    /api/query-image?k=K       POST: the raw bytes of an image file
    /thumb/q/I.png, /thumb/g/I.png   a query / gallery item rendered from the dataset
    /files/REL                 a file inside the run directory (traversal and symlinks out refused)
"""
from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dmlkit.data.base import DatasetError
from dmlkit.serve.run_view import RunView, png_bytes

log = logging.getLogger("dmlkit")

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".md": "text/plain; charset=utf-8", ".json": "application/json", ".yaml": "text/plain; charset=utf-8",
         ".csv": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8"}
MAX_UPLOAD = 20 * 2**20
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
THUMB = re.compile(r"^/thumb/([qg])/(\d+)\.png$")


class ClientError(Exception):
    """A bad request: ``status`` and a one-line message for the page."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def inside(root: Path, relative: str) -> Path:
    """``root/relative`` when it is a regular file inside ``root`` after resolving ``..`` and symlinks;
    ClientError 403 for anything that leaves ``root``, 404 for what does not exist."""
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ClientError(HTTPStatus.FORBIDDEN, "only files inside the run directory are served")
    if not target.is_file():
        raise ClientError(HTTPStatus.NOT_FOUND, f"no file {relative} in the run directory")
    return target


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has no NaN; metrics of lone-only splits are NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def host_name(header: str) -> str:
    """The host of a Host header: ``127.0.0.1:8765`` -> ``127.0.0.1``, ``[::1]:8765`` -> ``[::1]``."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]


def _int(params: dict[str, list[str]], name: str, default: int | None) -> int | None:
    raw = params.get(name, [""])[0]
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ClientError(HTTPStatus.BAD_REQUEST, f"{name} must be an integer, got {raw!r}") from None


class Handler(BaseHTTPRequestHandler):
    """One request; ``server.view`` is the :class:`RunView`, ``server.allow_paths`` gates path queries."""

    server: ServeHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI prints the URL once
        log.debug("serve: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        if status >= 400:  # an unread request body must not be taken for the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(finite(obj), allow_nan=False).encode(), "application/json")

    def _check_host(self) -> None:
        """On a loopback bind, answer only requests addressed to this machine by name or address: a web page
        elsewhere that rebinds its own DNS name to 127.0.0.1 must not read the run (DNS rebinding)."""
        if not self.server.allow_paths:
            return
        host = host_name(self.headers.get("Host") or "")
        if host not in LOOPBACK_NAMES and host != self.server.server_address[0]:
            raise ClientError(HTTPStatus.FORBIDDEN, f"unexpected Host header {host!r}; open the page at 127.0.0.1")

    def _guard(self, action) -> None:
        try:
            self._check_host()
            action()
        except ClientError as error:
            self._json({"error": str(error)}, error.status)
        except (DatasetError, ValueError, IndexError) as error:
            self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
        except Exception as error:  # the page gets one line; the server keeps serving
            log.exception("serve: %s failed", self.path)
            self._json({"error": f"{type(error).__name__}: {error}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def do_GET(self) -> None:
        self._guard(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._guard(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        path, params, view = url.path, parse_qs(url.query), self.server.view
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path.startswith("/files/"):
            target = inside(view.run_dir, unquote(path[len("/files/"):]))
            return self._send(200, target.read_bytes(), TYPES.get(target.suffix.lower(), "application/octet-stream"))
        match = THUMB.match(path)
        if match:
            return self._send(200, view.thumbnail(match.group(1), int(match.group(2))), "image/png", cache=True)
        k = _int(params, "k", 8)
        if path == "/api/summary":
            return self._json(view.summary())
        if path == "/api/items":
            order = params.get("order", ["index"])[0]
            return self._json(view.index.items(_int(params, "page", 0), _int(params, "per_page", 60),
                                               _int(params, "label", None), order))
        if path == "/api/query":
            index = _int(params, "index", None)
            if index is None:
                raise ClientError(HTTPStatus.BAD_REQUEST, "give ?index=N, the item to query")
            return self._json(view.index.query_item(index, k))
        if path == "/api/query-path":
            return self._query_path(params.get("path", [""])[0], k)
        raise ClientError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _static(self, name: str) -> None:
        if name not in STATIC:
            raise ClientError(HTTPStatus.NOT_FOUND, f"no such page: /static/{name}")
        body = resources.files("dmlkit.serve").joinpath("static", name).read_bytes()
        self._send(200, body, STATIC[name])

    def _query_path(self, raw: str, k: int) -> None:
        if not self.server.allow_paths:
            raise ClientError(HTTPStatus.FORBIDDEN, "path queries are only allowed when serving on a loopback host; "
                                                    "upload the image instead")
        file = Path(raw).expanduser()
        if not raw or not file.is_file():
            raise ClientError(HTTPStatus.NOT_FOUND, f"no image file at {raw!r}; give a path on this machine")
        self._answer_image(file.read_bytes(), k)

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/query-image":
            raise ClientError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            raise ClientError(HTTPStatus.BAD_REQUEST, "the request has no image; send the file's bytes as the body")
        if length > MAX_UPLOAD:
            raise ClientError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the image is {length} bytes; the limit is {MAX_UPLOAD}")
        self._answer_image(self.rfile.read(length), _int(parse_qs(url.query), "k", 8))

    def _answer_image(self, data: bytes, k: int) -> None:
        view = self.server.view
        image, embedding = view.embed_image(data)
        neighbours = view.index.search(embedding, k)
        preview = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
        self._json({"query": {"index": None, "image": preview}, "neighbours": neighbours,
                    "score_name": view.index.score_name})


class ServeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], view: RunView) -> None:
        super().__init__(address, Handler)
        self.view = view
        self.allow_paths = is_loopback(address[0])


def make_server(view: RunView, host: str = "127.0.0.1", port: int = 8765) -> ServeHTTPServer:
    """A server bound to ``host:port`` (0 = a free port; read it from ``server.server_address``)."""
    try:
        return ServeHTTPServer((host, port), view)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); "
                         "pick another --port (0 = any free one)") from None
