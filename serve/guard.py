"""The HTTP front of our Triton server: each request is bounded before ``tritonserver`` parses it, then relayed.

Why it exists: the ``tritonserver`` pytriton ships (2.51) takes an HTTP body
of any size, parses its JSON recursively (a body nested 100,000 levels deep
crashes the server) and counts a tensor's dimensions in 32 bits (a declared
shape of ``[2**32 + 1, 1]`` with one image in the body passes its element
check and is answered 200). The guard listens where clients connect,
answers such a request itself, in Triton's error format
(``{"error": "..."}``, 400, 411 or 413), and relays every other request to
the server, on a loopback port of its own, unchanged. gRPC is not relayed:
protobuf bounds its own nesting, and the shape wrap there is Triton's own
(README, "Serving").

One thread per client connection, each with its own keep-alive connection to
the server; ``Connection`` and framing headers are the guard's own on each side.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from specdet.limits import MAX_JSON_DEPTH

# A dimension or element count Triton 2.51 still counts exactly (it wraps them to 32 bits).
MAX_ELEMENTS = 2**31 - 1
# Headers that describe one hop's connection or framing, never relayed.
# ("expect": the guard answers a client's 100-continue itself, having read the whole body before relaying it.)
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
                  "proxy-connection", "expect"})
# Client connections served at once (a thread each); one more is answered 503 and closed, so that a client
# opening thousands of idle connections cannot exhaust the process's threads.
MAX_CONNECTIONS = 256


class Refused(Exception):
    """A request the guard answers itself: ``status`` and a one-line reason for the client."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may be: its body's bytes and its JSON's nesting."""

    max_request_bytes: int = 128 << 20
    max_json_depth: int = MAX_JSON_DEPTH
    max_connections: int = MAX_CONNECTIONS


def check_request(path: str, headers: http.client.HTTPMessage, body: bytes, limits: Limits) -> None:
    """Raise :class:`Refused` for a body Triton should not parse: JSON nested beyond ``limits``, a malformed
    binary-data header length, or (for inference) a tensor shape Triton would count wrongly."""
    header_length = headers.get("Inference-Header-Content-Length")
    if header_length is None:
        json_part = body
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise Refused(400, f"Inference-Header-Content-Length {header_length!r} is not a length within the "
                               f"body's {len(body)} bytes")
        json_part = body[: int(header_length)]
    depth = json_depth(json_part)
    if depth > limits.max_json_depth:
        raise Refused(400, f"the request's JSON is nested {depth} levels deep, more than the {limits.max_json_depth} "
                           "this server parses")
    if path.split("?", 1)[0].rstrip("/").endswith("/infer") and json_part.strip():
        try:
            request = json.loads(json_part)
        except (ValueError, UnicodeDecodeError):
            return  # Triton answers malformed JSON itself, safely: only its depth is dangerous
        for tensor in request.get("inputs", []) if isinstance(request, dict) else []:
            _check_shape(tensor)


def _check_shape(tensor: object) -> None:
    shape = tensor.get("shape") if isinstance(tensor, dict) else None
    if not isinstance(shape, list):
        return  # Triton's own answer for a missing or malformed shape is already an error
    count = 1
    for dim in shape:
        if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0:
            count *= dim
            if dim <= MAX_ELEMENTS and count <= MAX_ELEMENTS:
                continue
        name = tensor.get("name")
        raise Refused(400, f"input {name!r} declares shape {shape}: each dimension and their product must be a "
                           f"whole number from 0 to {MAX_ELEMENTS}")


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text, outside strings: counted, not parsed, so that
    any depth costs one pass and no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


class RequestGuard:
    """Listen on ``host:port``; relay bounded requests to the server at ``127.0.0.1:backend_port``.
    :meth:`start` (returns at once), :meth:`stop`."""

    def __init__(self, host: str, port: int, backend_port: int, limits: Limits = Limits()):
        self.backend_port = backend_port
        self.limits = limits
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _handler(self))
        self._server.daemon_threads = True
        self._server.connection_limit = limits.max_connections
        self._server.slots = threading.BoundedSemaphore(limits.max_connections)
        self._server.connections = set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="specdet-request-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close the listening socket and end every client connection, kept ones included: a
        client then connects again, to whatever listens next (the restarted server's guard), instead of
        holding a connection to a server that is gone."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        for connection in list(self._server.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``slots`` at once; ``connections``: those open now."""

    connection_limit: int
    slots: threading.BoundedSemaphore
    connections: set[socket.socket]

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            body = json.dumps({"error": f"more than {self.connection_limit} connections at once: close idle "
                                        "ones and retry"}).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.discard(request)
            self.slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


def _handler(guard: RequestGuard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Triton's own front offers
        timeout = 120  # a client silent this long mid-request (or idle between requests) is dropped
        backend: http.client.HTTPConnection | None = None

        def setup(self) -> None:
            super().setup()
            # An answer goes out as a header write and a body write: with Nagle's algorithm on, the body waited for
            # the client's delayed ACK of the headers, 40 ms or more per request (measured: p50 64 ms instead of 14).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._relay()

        def do_POST(self) -> None:
            self._relay()

        def _relay(self) -> None:
            try:
                body = self._body()
                if body:
                    check_request(self.path, self.headers, body, guard.limits)
                response = self._forward(body)
            except Refused as refused:
                self._answer(refused.status, [("Content-Type", "application/json")],
                             json.dumps({"error": str(refused)}).encode())
                return
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP]
            self._answer(response.status, headers, response.read(), response.reason)

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True  # its body is still on the wire: this connection cannot go on
                raise Refused(411, "a chunked request body: send its Content-Length")
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit():
                self.close_connection = True
                raise Refused(400, f"Content-Length {length!r} is not a number of bytes")
            if int(length) > guard.limits.max_request_bytes:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                raise Refused(413, f"a request of {int(length)} bytes, more than the "
                                   f"{guard.limits.max_request_bytes} this server takes: send fewer or smaller images")
            return self.rfile.read(int(length))

        def _forward(self, body: bytes) -> http.client.HTTPResponse:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            try:
                return self._send(body, headers)
            except (OSError, http.client.HTTPException):
                pass  # the kept connection was closed by the server (idle, or restarted): once more on a new one
            try:
                return self._send(body, headers)
            except (OSError, http.client.HTTPException) as err:
                raise Refused(503, f"the model server cannot be reached ({err}): it may be restarting, "
                                   "try again") from None

        def _send(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
            if self.backend is None:
                self.backend = http.client.HTTPConnection("127.0.0.1", guard.backend_port, timeout=600)
                self.backend.connect()
                self.backend.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as for the client's side
            try:
                self.backend.request(self.command, self.path, body=body or None, headers=headers)
                return self.backend.getresponse()
            except (OSError, http.client.HTTPException):
                self.backend.close()
                self.backend = None
                raise

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None) -> None:
            self.send_response(status, reason)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def finish(self) -> None:
            super().finish()
            if self.backend is not None:
                self.backend.close()

        def version_string(self) -> str:
            return "specdet-guard"

        def log_message(self, format: str, *args: object) -> None:
            pass  # a request is not a line on the server's output: Triton's metrics count them

    return Handler
