"""A WebHDFS **test server**: not HDFS, a stand-in that follows the published
WebHDFS REST contract (hadoop-project-dist/hadoop-hdfs/WebHDFS.html) closely
enough for a real client (pyhdfs) to run against it.

Two real loopback HTTP listeners, each served by threads:

* the **NameNode** answers metadata operations itself (GETFILESTATUS,
  LISTSTATUS, MKDIRS, RENAME, DELETE, TRUNCATE) with the documented JSON,
  and data operations (CREATE, APPEND, OPEN) with ``307 Temporary Redirect``,
  an empty body and a ``Location`` on the DataNode;
* the **DataNode** takes and serves the bytes (CREATE answers ``201
  Created``, APPEND ``200 OK``, OPEN the content with ``offset``/``length``).

Errors are ``RemoteException`` JSON with the documented status/exception
pairs (400 IllegalArgumentException, 403 IOException-family including
StandbyException, 404 FileNotFoundException, 500 RuntimeException).

Switchable faults, to test that the backend fails clearly and never hangs:
``standby`` (the NameNode answers StandbyException to everything),
``stall_datanode`` (the DataNode accepts the request and then says nothing),
``redirect_to_closed_port`` (the NameNode redirects to a port nobody listens
on).  :attr:`WebHdfsServer.standby_address` is an extra NameNode that is
always standby, for HA client configurations.

The file system is a dict in memory, guarded by one lock.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

PREFIX = "/webhdfs/v1"

_EXCEPTIONS = {
    "IllegalArgumentException": (400, "java.lang.IllegalArgumentException"),
    "UnsupportedOperationException": (400, "java.lang.UnsupportedOperationException"),
    "SecurityException": (401, "java.lang.SecurityException"),
    "IOException": (403, "java.io.IOException"),
    "FileAlreadyExistsException": (403, "org.apache.hadoop.fs.FileAlreadyExistsException"),
    "StandbyException": (403, "org.apache.hadoop.ipc.StandbyException"),
    "FileNotFoundException": (404, "java.io.FileNotFoundException"),
    "RuntimeException": (500, "java.lang.RuntimeException"),
}


class _Fs:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, bytearray] = {}
        self.dirs: set[str] = {"/"}
        self.mtime: dict[str, int] = {}

    def parent_dirs(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dirs.add("/" + "/".join(parts[:i]))

    def status(self, path: str, suffix: str) -> dict[str, Any]:
        is_file = path in self.files
        return {
            "accessTime": self.mtime.get(path, 0),
            "blockSize": 134217728 if is_file else 0,
            "childrenNum": 0,
            "fileId": abs(hash(path)) % (1 << 31),
            "group": "supergroup",
            "length": len(self.files[path]) if is_file else 0,
            "modificationTime": self.mtime.get(path, 0),
            "owner": "elink",
            "pathSuffix": suffix,
            "permission": "644" if is_file else "755",
            "replication": 3 if is_file else 0,
            "storagePolicy": 0,
            "type": "FILE" if is_file else "DIRECTORY",
        }


class _Error(Exception):
    def __init__(self, exception: str, message: str) -> None:
        super().__init__(message)
        self.exception = exception
        self.message = message


class WebHdfsServer:
    """Start with ``with WebHdfsServer() as hdfs:``; point clients at
    :attr:`namenode_address`."""

    def __init__(self) -> None:
        self.fs = _Fs()
        self.standby = False
        self.stall_datanode = False
        self.redirect_to_closed_port = False
        self._release = threading.Event()
        self.requests: list[tuple[str, str, str]] = []  # (node, method, op)
        self._namenode = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("namenode"))
        self._datanode = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("datanode"))
        self._standby_nn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("standby"))
        for server in (self._namenode, self._datanode, self._standby_nn):
            server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def namenode_address(self) -> str:
        return f"127.0.0.1:{self._namenode.server_address[1]}"

    @property
    def standby_address(self) -> str:
        return f"127.0.0.1:{self._standby_nn.server_address[1]}"

    @property
    def datanode_port(self) -> int:
        return int(self._datanode.server_address[1])

    def __enter__(self) -> WebHdfsServer:
        for server in (self._namenode, self._datanode, self._standby_nn):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        for server in (self._namenode, self._datanode, self._standby_nn):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    # --- request handling -----------------------------------------------------

    def _handler(self, node: str) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                op = query.get("op", "").upper()
                owner.requests.append((node, method, op))
                if not url.path.startswith(PREFIX):
                    self._send_error(_Error("IllegalArgumentException", "not a WebHDFS path"))
                    return
                path = unquote(url.path[len(PREFIX) :]) or "/"
                try:
                    if node == "standby" or (node == "namenode" and owner.standby):
                        raise _Error(
                            "StandbyException",
                            f"Operation category {'READ' if method == 'GET' else 'WRITE'} is"
                            " not supported in state standby",
                        )
                    if node == "namenode":
                        owner._namenode_op(self, method, op, path, query)
                    else:
                        owner._datanode_op(self, method, op, path, query, body)
                except _Error as exc:
                    self._send_error(exc)

            def _send_error(self, exc: _Error) -> None:
                status, java = _EXCEPTIONS[exc.exception]
                self.send_json(
                    status,
                    {
                        "RemoteException": {
                            "exception": exc.exception,
                            "javaClassName": java,
                            "message": exc.message,
                        }
                    },
                )

            def send_json(self, status: int, value: Any) -> None:
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def send_bytes(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler

    def _redirect(self, handler: Any, path: str, query: dict[str, str]) -> None:
        port = self.datanode_port
        if self.redirect_to_closed_port:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()  # nothing listens there now
        location = f"http://127.0.0.1:{port}{PREFIX}{path}?{urlencode(query)}"
        handler.send_empty(HTTPStatus.TEMPORARY_REDIRECT, {"Location": location})

    def _namenode_op(
        self, handler: Any, method: str, op: str, path: str, query: dict[str, str]
    ) -> None:
        fs = self.fs
        with fs.lock:
            if (method, op) in (("PUT", "CREATE"), ("POST", "APPEND"), ("GET", "OPEN")):
                if op == "CREATE":
                    if path in fs.dirs:
                        raise _Error("FileAlreadyExistsException", f"{path} is a directory")
                    if path in fs.files and query.get("overwrite", "false") != "true":
                        raise _Error("FileAlreadyExistsException", f"{path} already exists")
                elif path not in fs.files:
                    raise _Error("FileNotFoundException", f"File {path} does not exist.")
            elif method == "GET" and op == "GETFILESTATUS":
                if path not in fs.files and path not in fs.dirs:
                    raise _Error("FileNotFoundException", f"File does not exist: {path}")
                handler.send_json(200, {"FileStatus": fs.status(path, "")})
                return
            elif method == "GET" and op == "LISTSTATUS":
                if path in fs.files:
                    handler.send_json(200, {"FileStatuses": {"FileStatus": [fs.status(path, "")]}})
                    return
                if path not in fs.dirs:
                    raise _Error("FileNotFoundException", f"File {path} does not exist.")
                base = path.rstrip("/") + "/"
                children = sorted(
                    p
                    for p in (fs.files.keys() | fs.dirs)
                    if p.startswith(base) and "/" not in p[len(base) :] and p != path
                )
                statuses = [fs.status(p, p[len(base) :]) for p in children]
                handler.send_json(200, {"FileStatuses": {"FileStatus": statuses}})
                return
            elif method == "PUT" and op == "MKDIRS":
                if path in fs.files:
                    raise _Error("FileAlreadyExistsException", f"{path} is a file")
                fs.parent_dirs(path + "/x")
                handler.send_json(200, {"boolean": True})
                return
            elif method == "PUT" and op == "RENAME":
                dest = query.get("destination", "")
                if not dest.startswith("/"):
                    raise _Error("IllegalArgumentException", "destination must be absolute")
                parent = dest.rsplit("/", 1)[0] or "/"
                ok = path in fs.files and dest not in fs.files and parent in fs.dirs
                if ok:
                    fs.files[dest] = fs.files.pop(path)
                handler.send_json(200, {"boolean": ok})
                return
            elif method == "DELETE" and op == "DELETE":
                existed = fs.files.pop(path, None) is not None
                handler.send_json(200, {"boolean": existed})
                return
            elif method == "POST" and op == "TRUNCATE":
                if path not in fs.files:
                    raise _Error("FileNotFoundException", f"File {path} does not exist.")
                try:
                    size = int(query["newlength"])
                except (KeyError, ValueError):
                    raise _Error("IllegalArgumentException", "newlength required") from None
                if size > len(fs.files[path]):
                    raise _Error("IllegalArgumentException", "cannot truncate to a larger size")
                del fs.files[path][size:]
                handler.send_json(200, {"boolean": True})
                return
            else:
                raise _Error("UnsupportedOperationException", f"{op} is not supported")
        self._redirect(handler, path, query)

    def _datanode_op(  # noqa: PLR0917
        self, handler: Any, method: str, op: str, path: str, query: dict[str, str], body: bytes
    ) -> None:
        if self.stall_datanode:
            self._release.wait(60)  # say nothing until the test ends
            return
        fs = self.fs
        with fs.lock:
            if method == "PUT" and op == "CREATE":
                fs.parent_dirs(path)
                fs.files[path] = bytearray(body)
                fs.mtime[path] = int(time.time() * 1000)
                handler.send_empty(HTTPStatus.CREATED, {"Location": f"hdfs://{path}"})
                return
            if path not in fs.files:
                raise _Error("FileNotFoundException", f"File {path} does not exist.")
            if method == "POST" and op == "APPEND":
                fs.files[path] += body
                handler.send_empty(HTTPStatus.OK)
                return
            if method == "GET" and op == "OPEN":
                data = bytes(fs.files[path])
                offset = int(query.get("offset", 0))
                if offset > len(data):
                    raise _Error("IOException", "Offset beyond end of file")
                end = len(data)
                if "length" in query:
                    end = min(end, offset + int(query["length"]))
                handler.send_bytes(data[offset:end])
                return
        raise _Error("UnsupportedOperationException", f"{op} is not supported on a DataNode")
