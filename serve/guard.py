"""The HTTP front of our Triton server: each request is bounded before ``tritonserver`` parses it, then relayed.

Why it exists: the ``tritonserver`` pytriton ships (2.51) takes an HTTP body
of any size, parses its JSON recursively (a body nested 100,000 levels deep
crashes the server) and counts a tensor's dimensions in 32 bits (a declared
shape of ``[2**32 + 1, 1]`` with one image in the body passes its element
check and is answered 200). The guard listens where clients connect,
answers such a request itself, in Triton's error format
(``{"error": "..."}``; 400, 411, 413 or 415, and 503 when it is full or the
server cannot be reached), and relays every other GET and POST, headers and
body as sent, to the server on a loopback port of its own. gRPC is not relayed:
protobuf bounds its own nesting, and the shape wrap there is Triton's own
(README, "Serving").

One thread per client connection, each with its own keep-alive connection to
the server; ``Connection`` and framing headers are the guard's own on each side.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from specdet.limits import MAX_JSON_DEPTH

# A dimension or element count Triton 2.51 still counts exactly (it wraps them to 32 bits).
MAX_ELEMENTS = 2**31 - 1
# Headers that describe one hop's connection or framing, never relayed.
# ("expect": the guard answers a client's 100-continue itself, having read the whole body before relaying it.)
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
                  "proxy-connection", "expect"})
# Headers of the server's answer that the guard writes itself.
_OWN = frozenset({"server", "date"})
# Client connections served at once (a thread each); one more is answered 503 and closed, so that a client
# opening thousands of idle connections cannot exhaust the process's threads.
MAX_CONNECTIONS = 256


class Refused(Exception):
    """A request the guard answers itself: ``status`` and a one-line reason for the client; ``unread``: its body
    is still on the wire, so its connection cannot serve another request."""

    def __init__(self, status: int, reason: str, *, unread: bool = False):
        super().__init__(reason)
        self.status = status
        self.unread = unread


@dataclass(frozen=True)
class Limits:
    """What the guard takes: one request's body bytes and JSON nesting; the client connections served at once,
    and the request bytes held in memory by all of them together."""

    max_request_bytes: int = 128 << 20
    max_json_depth: int = MAX_JSON_DEPTH
    max_connections: int = MAX_CONNECTIONS
    max_buffered_bytes: int = 512 << 20


def check_request(headers: http.client.HTTPMessage, body: bytes, limits: Limits) -> None:
    """Raise :class:`Refused` for a body Triton should not parse: encoded (Triton would unzip what the guard
    cannot check), JSON nested beyond ``limits``, a malformed binary-data header length, or a tensor shape Triton
    would count wrongly (on any request with ``inputs``: where Triton routes a path is its business)."""
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise Refused(415, f"a request body in Content-Encoding {encoding!r}: send it uncompressed")
    header_length = headers.get("Inference-Header-Content-Length")
    if header_length is None:
        json_part = body
    else:
        length = parse_length(header_length)
        if length is None or length > len(body):
            raise Refused(400, f"Inference-Header-Content-Length {header_length!r} is not a length within the "
                               f"body's {len(body)} bytes")
        json_part = body[:length]
    depth = json_depth(json_part)
    if depth > limits.max_json_depth:
        raise Refused(400, f"the request's JSON is nested {depth} levels deep, more than the {limits.max_json_depth} "
                           "this server parses")
    if b'"inputs"' in json_part:
        try:
            request = json.loads(json_part)
        except (ValueError, UnicodeDecodeError):
            return  # Triton answers malformed JSON itself, safely: only its depth is dangerous
        for tensor in request.get("inputs", []) if isinstance(request, dict) else []:
            _check_shape(tensor)


def parse_length(text: str) -> int | None:
    """A header's byte count: ASCII digits only (``str.isdigit`` takes ``²``, which ``int`` refuses), at most 19
    of them; None otherwise."""
    return int(text) if re.fullmatch(r"[0-9]{1,19}", text.strip()) else None


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


_JSON_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text, outside strings: counted, not parsed, so that
    any depth costs one pass and no recursion (over the brackets, quotes and backslashes only: the rest of a
    large body is skipped by the regular expression's C loop)."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # where the byte after a backslash in a string lies: escaped, whatever it is
    for match in _JSON_STRUCTURE.finditer(data):
        char, at = match.group(), match.start()
        if at == escaped_at:
            continue
        if in_string:
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
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
        self._server.limits = limits
        self._server.slots = threading.BoundedSemaphore(limits.max_connections)
        self._server.connections = set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._buffered = 0  # request bytes held by all connections now

    @contextlib.contextmanager
    def budget(self, length: int) -> Iterator[None]:
        """Hold ``length`` bytes of the shared request budget while the body is read and relayed (else
        :class:`Refused`: 256 connections of 128 MiB each would otherwise hold 32 GiB)."""
        with self._lock:
            if self._buffered + length > self.limits.max_buffered_bytes:
                raise Refused(503, f"the server holds {self._buffered} bytes of requests already: retry shortly",
                              unread=True)
            self._buffered += length
        try:
            yield
        finally:
            with self._lock:
                self._buffered -= length

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

    limits: Limits
    slots: threading.BoundedSemaphore
    connections: set[socket.socket]

    def handle_error(self, request, client_address) -> None:
        # What the handler does not answer itself (a connection reset mid-request, or a bug): one line, not the
        # traceback socketserver prints, on the server's stderr.
        error = sys.exc_info()[1]
        print(f"request guard: a connection from {client_address[0]} failed: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            body = json.dumps({"error": f"more than {self.limits.max_connections} connections at once: close idle "
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

        def handle_expect_100(self) -> bool:
            # Checked before the client is told to send its body: a refused one is never uploaded.
            try:
                self._length()
            except Refused as refused:
                self._refuse(refused)
                return False
            return super().handle_expect_100()

        def _relay(self) -> None:
            try:
                if any(ord(c) < 0x21 or ord(c) == 0x7F for c in self.path):
                    raise Refused(400, "a request path with spaces or control characters: encode them")
                length = self._length()
                with guard.budget(length):
                    status, reason, headers, answer = self._exchange(length)
            except Refused as refused:
                self._refuse(refused)
                return
            self._answer(status, headers, answer, reason)

        def _exchange(self, length: int) -> tuple[int, str, list[tuple[str, str]], bytes]:
            """Read the body, check it, relay it; the server's status, reason, headers and answer."""
            body = self.rfile.read(length)
            if len(body) != length:
                self.close_connection = True  # the client stopped sending: nothing more will come
                raise Refused(400, f"the body ended after {len(body)} of its {length} bytes")
            if body:
                check_request(self.headers, body, guard.limits)
            response = self._forward(body)
            try:
                answer = response.read()
            except (OSError, http.client.HTTPException) as err:  # the server ended mid-answer (a restart)
                self.backend.close()
                self.backend = None
                raise Refused(502, f"the model server ended its answer early ({err}): try again") from None
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP | _OWN]
            return response.status, response.reason, headers, answer

        def _refuse(self, refused: Refused) -> None:
            if refused.unread:
                self.close_connection = True
            self._answer(refused.status, [("Content-Type", "application/json")],
                         json.dumps({"error": str(refused)}).encode())

        def _length(self) -> int:
            """The request body's declared length, within the limit (else :class:`Refused`)."""
            if "Transfer-Encoding" in self.headers:
                raise Refused(411, "a request body in a Transfer-Encoding: send it plain, with its Content-Length",
                              unread=True)
            text = self.headers.get("Content-Length", "0")
            length = parse_length(text)
            if length is None:
                raise Refused(400, f"Content-Length {text!r} is not a number of bytes", unread=True)
            if length > guard.limits.max_request_bytes:
                raise Refused(413, f"a request of {length} bytes, more than the {guard.limits.max_request_bytes} "
                                   "this server takes: send fewer or smaller images", unread=True)
            return length

        def _forward(self, body: bytes) -> http.client.HTTPResponse:
            try:
                return self._send(body)
            except (OSError, http.client.HTTPException):
                pass  # the kept connection was closed by the server (idle, or restarted): once more on a new one
            try:
                return self._send(body)
            except (OSError, http.client.HTTPException) as err:
                raise Refused(503, f"the model server cannot be reached ({err}): it may be restarting, "
                                   "try again") from None

        def _send(self, body: bytes) -> http.client.HTTPResponse:
            if self.backend is None:
                self.backend = http.client.HTTPConnection("127.0.0.1", guard.backend_port, timeout=600)
                self.backend.connect()
                self.backend.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as for the client's side
            try:
                # The client's headers as they came (repeated ones too), its Host among them.
                self.backend.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() not in _HOP:
                        self.backend.putheader(key, value)
                self.backend.putheader("Content-Length", str(len(body)))
                self.backend.endheaders(body)  # with the headers, in one write
                return self.backend.getresponse()
            except (OSError, http.client.HTTPException):
                self.backend.close()
                self.backend = None
                raise

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None) -> None:
            try:
                self.send_response(status, reason)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.close_connection = True  # the client left, or stop() ended its connection: nothing to say

        def finish(self) -> None:
            super().finish()
            if self.backend is not None:
                self.backend.close()

        def version_string(self) -> str:
            return "specdet-guard"

        def log_message(self, format: str, *args: object) -> None:
            pass  # a request is not a line on the server's output: Triton's metrics count them

    return Handler
