"""The request guard in front of tritonserver (serve/guard.py), against a stand-in server on the loopback.

The real server behind it is tested in tests/serve/test_serve.py; here, what
it refuses, and that what it relays arrives unchanged, both ways.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from specdet.serve.guard import (
    MAX_ELEMENTS,
    Limits,
    Refused,
    RequestGuard,
    check_request,
    json_depth,
    parse_length,
)
from specdet.serve.server import free_ports


def _headers(**values: str) -> http.client.HTTPMessage:
    message = http.client.HTTPMessage()
    for key, value in values.items():
        message[key.replace("_", "-")] = value
    return message


@pytest.mark.parametrize("text, depth", [
    (b"", 0), (b"{}", 1), (b'{"a": [1, {"b": []}]}', 4), (b'"[[[["', 0), (b'{"a": "\\"[[[", "b": [2]}', 2),
    (b'["\\\\", [[]]]', 3), (b"[" * 100_000, 100_000), (b'["\\\\\\"[", []]', 2), (b'["a\\n[", [{}]]', 3),
    (b'{"k": "\\u005b"} [[', 2),
])
def test_json_depth_counts_brackets_outside_strings(text, depth):
    assert json_depth(text) == depth


def _infer_body(shape: list, header_only: bool = True) -> tuple[bytes, http.client.HTTPMessage]:
    header = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    return header + b"\x04\x00\x00\x00abcd", _headers(Inference_Header_Content_Length=str(len(header)))


@pytest.mark.parametrize("shape", [[2**62, 1], [2**32 + 1, 1], [MAX_ELEMENTS + 1], [65536, 65536], [-1, 1],
                                   [1.5, 1], [True, 1], ["1", 1]])
def test_shapes_triton_would_count_wrongly_are_refused(shape):
    body, headers = _infer_body(shape)
    with pytest.raises(Refused, match="declares shape") as refused:
        check_request(headers, body, Limits())
    assert refused.value.status == 400


@pytest.mark.parametrize("shape", [[1, 1], [0, 1], [MAX_ELEMENTS], [46340, 46340]])
def test_shapes_triton_counts_right_pass(shape):
    body, headers = _infer_body(shape)
    check_request(headers, body, Limits())


def test_encoded_bodies_are_refused_whatever_they_hold():
    """Triton unzips a gzip or deflate body before parsing it: what the guard cannot read, it does not pass."""
    body = gzip.compress(b"[" * 100_000 + b"]" * 100_000)
    for encoding in ("gzip", "deflate", "br", " GZIP "):
        with pytest.raises(Refused, match="Content-Encoding") as refused:
            check_request(_headers(Content_Encoding=encoding), body, Limits())
        assert refused.value.status == 415
    check_request(_headers(Content_Encoding="identity"), b"[]", Limits())


def test_lengths_are_ascii_digits_only():
    assert parse_length("12") == 12 and parse_length(" 7 ") == 7
    for bad in ("\u00b2", "1\u00b2", "-1", "+1", "1e3", "", "1" * 20, "0x10"):
        assert parse_length(bad) is None, bad


def test_depth_and_header_length_are_checked_on_every_request():
    with pytest.raises(Refused, match="nested 65 levels"):
        check_request(_headers(), b"[" * 65 + b"]" * 65, Limits())
    check_request(_headers(), b"[" * 64 + b"]" * 64, Limits())
    with pytest.raises(Refused, match="nested 3 levels"):  # only the JSON part of a binary body is counted
        check_request(_headers(Inference_Header_Content_Length="6"), b"[[[]]][[[[[[", Limits(max_json_depth=2))
    for length in ("99", "-1", "x"):
        with pytest.raises(Refused, match="Inference-Header-Content-Length"):
            check_request(_headers(Inference_Header_Content_Length=length), b"{}", Limits())
    check_request(_headers(), b"not json", Limits())  # Triton's own error, safely
    body, headers = _infer_body([2**32 + 1, 1])
    with pytest.raises(Refused, match="declares shape"):  # whatever the path: it is not looked at
        check_request(headers, body, Limits())


def _one_or_all(values: list[str] | None) -> str | list[str] | None:
    return values if values and len(values) > 1 else (values or [None])[0]


class _Backend(BaseHTTPRequestHandler):
    """Answers with what it received: method, path, one header and the body."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Its answers go out at once, as Triton's own front's did in the load run (no 40 ms waits)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _echo(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = json.dumps({"method": self.command, "path": self.path, "x": _one_or_all(self.headers.get_all("X-Test")),
                             "body": body.decode("latin-1")}).encode()
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Backend", "yes")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _echo

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _stand_in(limits: Limits) -> Iterator[tuple[int, ThreadingHTTPServer, RequestGuard]]:
    """A guard on a free port in front of the stand-in server: the guard's port, the server, the guard."""
    port, backend_port = free_ports(2)
    backend = ThreadingHTTPServer(("127.0.0.1", backend_port), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    guard = RequestGuard("127.0.0.1", port, backend_port, limits)
    guard.start()
    try:
        yield port, backend, guard
    finally:
        guard.stop()
        backend.shutdown()
        backend.server_close()


@pytest.fixture
def guarded():
    with _stand_in(Limits(max_request_bytes=1000)) as (port, backend, _):
        yield port, backend


def test_requests_are_relayed_unchanged_on_one_kept_connection(guarded):
    port, _ = guarded
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for method, path, body in [("GET", "/v2/health/ready", None), ("POST", "/v2/models/m/infer", b'{"a": 1}'),
                                   ("POST", "/missing", b"\x00\xff" * 10)]:
            connection.request(method, path, body=body, headers={"X-Test": "kept"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == (404 if path == "/missing" else 200)
            assert response.getheader("X-Backend") == "yes"
            assert answer == {"method": method, "path": path, "x": "kept",
                              "body": (body or b"").decode("latin-1")}
    finally:
        connection.close()


def test_refusals_are_triton_style_errors_and_the_guard_goes_on(guarded):
    port, _ = guarded
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/v2/models/m/infer", body=b"[" * 100 + b"]" * 100)
        response = connection.getresponse()
        assert response.status == 400 and "nested 100 levels" in json.loads(response.read())["error"]
        connection.request("GET", "/v2/health/ready")  # the same connection serves on
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        answer = b"".join(iter(lambda: raw.recv(4096), b""))  # to the end: the guard closes this connection
    assert answer.startswith(b"HTTP/1.1 413") and b"Connection: close" in answer and b"1001 bytes" in answer


def test_answers_do_not_wait_for_delayed_acks(guarded):
    """A regression check, not a speed figure: the guard writes an answer's headers and body apart, and with
    Nagle's algorithm on, the body waited for the client's delayed ACK (40 ms or more per request; 20 requests
    on one connection took over 0.8 s). TCP_NODELAY on both of its sockets: a few ms in all here."""
    port, _ = guarded
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        started = time.perf_counter()
        for _ in range(20):
            connection.request("POST", "/v2/models/m/infer", body=b'{"inputs": []}')
            connection.getresponse().read()
        assert time.perf_counter() - started < 0.5
    finally:
        connection.close()


def test_connections_beyond_the_limit_are_refused_and_the_guard_goes_on():
    with _stand_in(Limits(max_connections=2)) as (port, _, _):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            time.sleep(0.2)  # both taken by their threads
            with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
                answer = b"".join(iter(lambda: third.recv(4096), b""))
            assert answer.startswith(b"HTTP/1.1 503") and b"more than 2 connections" in answer
            idle.pop().close()
            time.sleep(0.2)  # its thread ends, its place is free
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/v2/health/ready")
            assert connection.getresponse().status == 200
            connection.close()
        finally:
            for s in idle:
                s.close()


def test_stopping_ends_kept_connections():
    """After a restart the server behind is another: a client's kept connection must end, not answer 503s."""
    with _stand_in(Limits()) as (port, _, guard):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/v2/health/ready")
            assert connection.getresponse().read() and connection.sock is not None  # kept
            guard.stop()
            assert connection.sock.recv(1) == b""  # ended by the guard
        finally:
            connection.close()


def _raw_answer(port: int, request: bytes, then_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        if then_close:
            raw.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: raw.recv(4096), b""))


def test_malformed_framing_is_answered_and_the_guard_goes_on(guarded):
    port, _ = guarded
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
    cases = [
        (head + "Content-Length: \u00b2\r\n\r\n".encode("latin-1"), b"HTTP/1.1 400", b"not a number"),
        (head + b"Content-Length: 10\r\n\r\nabc", b"HTTP/1.1 400", b"ended after 3 of its 10 bytes"),
        (head + b"Transfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", b"HTTP/1.1 411", b"Transfer-Encoding"),
        (head + b"Content-Encoding: gzip\r\nContent-Length: 2\r\n\r\n[]", b"HTTP/1.1 415", b"uncompressed"),
        (b"GET /v2/health/\x01ready HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 400", b"control characters"),
        (head + b"Expect: 100-continue\r\nContent-Length: 1001\r\n\r\n", b"HTTP/1.1 413", b"1001 bytes"),
    ]
    for request, status, reason in cases:
        answer = _raw_answer(port, request)
        assert answer.startswith(status) and reason in answer and b"100 Continue" not in answer, answer
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/v2/health/ready")
    assert connection.getresponse().status == 200
    connection.close()


def test_repeated_headers_are_relayed_as_sent(guarded):
    port, _ = guarded
    answer = _raw_answer(port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Test: one\r\nX-Test: two\r\n"
                               b"Connection: close\r\n\r\n")
    relayed = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert relayed["x"] == ["one", "two"]
    assert answer.count(b"Server:") == 1 and answer.count(b"Date:") == 1  # the guard's, not both


def test_request_bytes_held_at_once_are_bounded():
    with _stand_in(Limits(max_request_bytes=100, max_buffered_bytes=150)) as (port, _, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")  # its body never comes
            time.sleep(0.2)
            answer = _raw_answer(port, b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n" + b"x" * 60)
            assert answer.startswith(b"HTTP/1.1 503") and b"bytes of requests already" in answer
            small = _raw_answer(port, b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
                                      b"Connection: close\r\n\r\n" + b"x" * 50)
            assert small.startswith(b"HTTP/1.1 200")


def test_a_server_that_is_down_is_a_503(guarded):
    port, backend = guarded
    backend.shutdown()
    backend.server_close()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/v2/health/ready")
        response = connection.getresponse()
        assert response.status == 503 and "cannot be reached" in json.loads(response.read())["error"]
    finally:
        connection.close()
