"""detect-serve: one artifact on Triton over HTTP and gRPC, errors answered, many clients, a clean stop.

One server (a ``detect-serve`` process) for the module; the SIGTERM test is
the module's last and stops it. Every wait is bounded, and the fixture kills
whatever is left.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import tiny_exports
from specdet.runtime import Detector
from specdet.serve.server import free_ports
from triton_support import children, in_group, photos, running

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")

import tritonclient.grpc as grpcclient  # noqa: E402 (after the skips: these come with the serve extra)
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "specdet"


def _command(artifact: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "specdet.serve.serve_cli", str(artifact), *options]


class Service:
    """A running ``detect-serve`` and where it listens."""

    def __init__(self, artifact: Path):
        self.artifact = artifact
        self.http, self.grpc, self.metrics = free_ports(3)
        self.process = subprocess.Popen(
            _command(artifact, "--http-port", str(self.http), "--grpc-port", str(self.grpc),
                     "--metrics-port", str(self.metrics), "--max-batch", "4", "--queue-delay-us", "2000"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.ready_line = self._first_line(timeout=120)

    def _first_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"detect-serve printed nothing in {timeout} s")
        line = self.process.stdout.readline()
        assert line.startswith("serving"), f"{line!r}; stderr: {self.process.stderr.read()}"
        return line

    def kill(self) -> None:
        """Stop whatever is left, SIGTERM first, then SIGKILL: a failed or deselected test must leave no server.

        tritonserver runs in a process group of its own (with its backend stubs), so it is ended by its group too.
        """
        servers = children(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        for group in (self.process.pid, *servers):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)


@pytest.fixture(scope="module")
def service():
    artifact = tiny_exports.exported("dual_branch_tiny", "matmul")
    started = Service(artifact)
    try:
        yield started
    finally:
        started.kill()


@pytest.fixture(scope="module")
def expected(service):
    files = photos(6)
    with Detector(service.artifact) as detector:
        return files, [r.probability for r in detector.predict_files(files)]


def _infer(protocol: str, port: int, data: np.ndarray, datatype: str = "BYTES"):
    client = httpclient if protocol == "http" else grpcclient
    tensor = client.InferInput("image", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    with client.InferenceServerClient(f"127.0.0.1:{port}") as connection:
        return connection.infer(MODEL, [tensor])


def _encoded(files: list[Path]) -> np.ndarray:
    return np.array([[f.read_bytes()] for f in files], dtype=np.object_)


def _port(service: Service, protocol: str) -> int:
    return service.http if protocol == "http" else service.grpc


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_match_the_detector(service, expected, protocol):
    files, probabilities = expected
    assert f"http://127.0.0.1:{service.http}" in service.ready_line
    result = _infer(protocol, _port(service, protocol), _encoded(files[:4]))
    assert np.abs(result.as_numpy("probability").reshape(-1) - probabilities[:4]).max() <= 1e-4
    logits = result.as_numpy("logit").reshape(-1)
    assert np.allclose(1 / (1 + np.exp(-logits)), probabilities[:4], atol=1e-4)
    labels = [label.decode() for label in result.as_numpy("label").reshape(-1)]
    assert labels == ["fake" if p >= 0.5 else "real" for p in probabilities[:4]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_requests_get_errors_and_serving_goes_on(service, expected, protocol):
    files, probabilities = expected
    port = _port(service, protocol)
    malformed = [
        (np.array([[b"GIF89a but nothing more"]], dtype=np.object_), "BYTES"),  # not an image
        (np.zeros((1, 1), dtype=np.float32), "FP32"),  # the wrong dtype
        (np.zeros((0, 1), dtype=np.object_), "BYTES"),  # an empty batch
        (np.array([[b"x", b"y"]], dtype=np.object_), "BYTES"),  # the wrong shape
    ]
    for data, datatype in malformed:
        with pytest.raises(InferenceServerException):
            _infer(protocol, port, data, datatype)
        result = _infer(protocol, port, _encoded(files[:1]))
        assert abs(float(result.as_numpy("probability").reshape(-1)[0]) - probabilities[0]) <= 1e-4


def test_eight_concurrent_clients(service, expected):
    files, probabilities = expected

    def client(index: int) -> list[tuple[int, float]]:
        protocol = ("http", "grpc")[index % 2]
        answers = []
        for round_ in range(3):
            which = (index + round_) % len(files)
            result = _infer(protocol, _port(service, protocol), _encoded([files[which]]))
            answers.append((which, float(result.as_numpy("probability").reshape(-1)[0])))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(client, range(8)) for a in batch]
    assert len(answers) == 24
    assert max(abs(p - probabilities[which]) for which, p in answers) <= 1e-4


def test_health_and_metrics(service):
    with urllib.request.urlopen(f"http://127.0.0.1:{service.http}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert f'nv_inference_request_success{{model="{MODEL}"' in text


def _post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", data=body,
                                     headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _raw(port: int, head: bytes) -> bytes:
    """What the server answers a request head sent as is (for framing the HTTP client would not send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head)
        return connection.recv(4096)


def test_hostile_http_requests_are_refused_before_triton_and_serving_goes_on(service, expected):
    """What crashed tritonserver (JSON nested 100,000 deep) or passed its checks (a shape of 2**62 or 2**32 + 1
    with one image) is answered by the guard in front of it, in Triton's error format; the server stays up."""
    files, probabilities = expected
    image = files[0].read_bytes()
    blob = struct.pack("<I", len(image)) + image
    for shape in ([2**62, 1], [2**32 + 1, 1]):
        header = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(blob)}}]}).encode()
        status, answer = _post(service.http, header + blob, {"Inference-Header-Content-Length": str(len(header))})
        assert status == 400 and "declares shape" in answer["error"], answer
    status, answer = _post(service.http, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "nested 100000 levels" in answer["error"]
    status, answer = _post(service.http, b"{}", {"Inference-Header-Content-Length": "99"})
    assert status == 400 and "Inference-Header-Content-Length" in answer["error"]
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n".encode()
    assert _raw(service.http, head + b"Content-Length: 999999999999\r\n\r\n").startswith(b"HTTP/1.1 413")
    assert _raw(service.http, head + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").startswith(b"HTTP/1.1 411")
    # A shape Triton counts right is still Triton's own answer (the guard does not stand in for its checks).
    header = json.dumps({"inputs": [{"name": "image", "shape": [3, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    status, answer = _post(service.http, header + blob, {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "expected 3 string elements" in answer["error"]
    assert service.process.poll() is None
    result = _infer("http", service.http, _encoded(files[:1]))
    assert abs(float(result.as_numpy("probability").reshape(-1)[0]) - probabilities[0]) <= 1e-4


def _wait_scoring(service: Service, file: Path, timeout: float) -> float:
    """The probability the server gives ``file`` once it answers again (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return float(_infer("http", service.http, _encoded([file])).as_numpy("probability").reshape(-1)[0])
        except (InferenceServerException, OSError, http.client.HTTPException) as err:  # refused, or ended mid-way
            if time.monotonic() > deadline:
                raise AssertionError(f"not answering {timeout} s after a stub was killed: {err}") from None
            time.sleep(0.5)


def test_a_killed_stub_is_recovered(service, expected):
    """Triton 2.51 does not restart a Python-backend stub: every request failed while it said ready. detect-serve
    sees the stub end and restarts the server, which then scores as before."""
    files, probabilities = expected
    (server,) = children(service.process.pid)
    stub = next(pid for pid in in_group(server) if "specdet_preprocess/" in _cmdline(pid))
    os.kill(stub, signal.SIGKILL)
    assert abs(_wait_scoring(service, files[0], timeout=90) - probabilities[0]) <= 1e-4
    assert not running(server)  # a new server answered
    ready, _, _ = select.select([service.process.stderr], [], [], 10)
    assert ready and "model specdet_preprocess ended: restarting" in service.process.stderr.readline()
    with urllib.request.urlopen(f"http://127.0.0.1:{service.http}/v2/health/ready", timeout=10) as response:
        assert response.status == 200


def _python_envs() -> set[Path]:
    return set(Path("/tmp").glob("python_env_*"))


def test_sigterm_stops_everything(service):
    """The module's last test: it stops the shared server."""
    (server,) = children(service.process.pid)
    repository = next(a.split("=", 1)[1] for a in Path(f"/proc/{server}/cmdline").read_text().split("\0")
                      if a.startswith("--model-repository="))
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(60) == 0
    assert not running(server) and not in_group(server)  # tritonserver and its backend stubs
    assert not Path(repository).exists()


def test_a_crashed_server_is_one_line_and_leaves_nothing():
    """tritonserver killed (as a crash would end it): detect-serve says how, exits 2, and removes what the server
    could not, its Python backend's /tmp/python_env_* folder among them."""
    before = _python_envs()
    crashed = Service(tiny_exports.exported("dual_branch_tiny", "matmul"))
    try:
        (server,) = children(crashed.process.pid)
        assert _python_envs() - before  # the server's own, made while it started
        os.kill(server, signal.SIGKILL)
        assert crashed.process.wait(60) == 2  # specdet's one-line error (README: exit codes)
        error = crashed.process.stderr.read()
        assert error.count("\n") == 1 and "tritonserver was killed by SIGKILL" in error, error
        assert not in_group(server) and not _python_envs() - before
    finally:
        crashed.kill()


def test_sigterm_while_starting_stops_everything():
    artifact = tiny_exports.exported("dual_branch_tiny", "matmul")
    http, grpc, metrics = free_ports(3)
    process = subprocess.Popen(_command(artifact, "--http-port", str(http), "--grpc-port", str(grpc),
                                        "--metrics-port", str(metrics)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the repository written, tritonserver loading the models
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    left = [pid for pid in _pids() if f"--http-port={http}" in _cmdline(pid)]
    assert not left


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


@pytest.mark.parametrize("taken", ["--http-port", "--metrics-port"])
def test_a_port_in_use_is_one_line_before_any_server(taken):
    """Something already listens on a port: refused before tritonserver starts (it used to be polled first, and
    a server answering there passed for ours), with no "serving" line."""
    artifact = tiny_exports.exported("dual_branch_tiny", "matmul")
    ports = dict(zip(("--http-port", "--grpc-port", "--metrics-port"), free_ports(3)))
    with socket.socket() as other:  # someone else listens there
        other.bind(("127.0.0.1", ports[taken]))
        other.listen()
        start = time.monotonic()
        result = subprocess.run(_command(artifact, *[str(x) for pair in ports.items() for x in pair],
                                         "--ready-timeout", "60"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and time.monotonic() - start < 30
    assert result.stderr.count("\n") == 1 and "is not free" in result.stderr and taken in result.stderr, result.stderr
    assert "serving" not in result.stdout


def test_user_errors_before_any_server(tmp_path):
    for options, message in [([str(tmp_path / "missing.onnx")], "not found"),
                             ([str(tiny_exports.exported("dual_branch_tiny", "matmul")), "--http-port", "9000",
                               "--grpc-port", "9000"], "must differ"),
                             ([str(tiny_exports.exported("dual_branch_tiny", "matmul")), "--model-name", ".."],
                              "model name '..'")]:
        result = subprocess.run([sys.executable, "-m", "specdet.serve.serve_cli", *options], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_model_that_keeps_dying_is_not_restarted_without_end(monkeypatch, capsys):
    """A stub that dies at every start (out of memory, say): restarted MAX_RESTARTS times, then one line, exit 2."""
    from specdet.serve import serve_cli

    class Dying:
        """A server whose preprocess stub is always found dead."""

        restarts = 0

        def __init__(self, repository, endpoints, **options):
            self.endpoints = endpoints

        def start(self, cancelled):
            pass

        def poll(self):
            return None

        def dead_stub(self):
            return "specdet_preprocess"

        def restart(self, cancelled):
            Dying.restarts += 1

        def stop(self):
            pass

    monkeypatch.setattr(serve_cli, "TritonServer", Dying)
    monkeypatch.setattr(serve_cli, "write_repository", lambda artifacts, folder, options: folder)
    monkeypatch.setattr(serve_cli.signal, "signal", lambda *args: None)  # pytest's own Ctrl-C stays as it is
    code = serve_cli.main([str(tiny_exports.exported("dual_branch_tiny", "matmul"))])
    err = capsys.readouterr().err
    assert code == 2 and Dying.restarts == serve_cli.MAX_RESTARTS
    assert err.count("restarting tritonserver") == serve_cli.MAX_RESTARTS
    assert err.strip().splitlines()[-1].endswith("not restarting again (see the model's memory, or a request that "
                                                 "kills it)")
