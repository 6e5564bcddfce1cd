"""Run the ``tritonserver`` that pytriton's wheel ships (Python backend only) on a model repository.

pytriton 0.7.0 carries a real Triton server (2.51) and one Python-backend stub
per Python version, but launches them from a copy of its own folder: the
Python backend looks for ``triton_python_backend_stub`` beside its
``libtriton_python.so``, and the wheel keeps the stubs apart. We do the same
copy (about 3 MB) into a folder of our own. The stub links the system
``libpython3.11.so.1.0``; ``LD_LIBRARY_PATH`` points it at the running
interpreter's library first, and ``PATH`` its folder, so that the models run
in the environment (and with the numpy < 2) of the interpreter that starts
the server.

The server runs in its own process group (it starts one stub process per
model instance) so that :meth:`TritonServer.stop` ends all of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from specdet.errors import SpecdetError

_INSTALL = "the Triton server comes with pytriton: pip install 'specdet[serve]'"


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens: one address, three ports (given, not chosen by the system: clients must know them)."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def http_url(self) -> str:
        return f"{_url_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{_url_host(self.host)}:{self.metrics_port}"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nothing listens on now (the system's choice; another process could take one before the server does,
    rarely): for servers started by tests and benchmarks."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def check_ports_free(endpoints: Endpoints) -> None:
    """Refuse, in one line, a port that something already listens on: tritonserver would fail to bind it only
    after we had polled it, and another server answering there would have passed for ours."""
    family = socket.AF_INET6 if ":" in endpoints.host else socket.AF_INET
    for flag, port in (("--http-port", endpoints.http_port), ("--grpc-port", endpoints.grpc_port),
                       ("--metrics-port", endpoints.metrics_port)):
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds: TIME_WAIT is free
            try:
                probe.bind((endpoints.host, port))
            except OSError as err:
                raise SpecdetError(f"port {port} on {endpoints.host} is not free ({err.strerror}): stop what uses it "
                                   f"or choose another {flag}") from None


def _url_host(host: str) -> str:
    """The address a client dials: a server bound to every address is reached on the loopback one."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def triton_distribution() -> Path:
    """pytriton's ``tritonserver`` folder (bin/, backends/, python_backend_stubs/)."""
    try:
        import pytriton
    except ImportError as err:
        raise SpecdetError(f"no Triton server here: {_INSTALL}") from err
    folder = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise SpecdetError(f"{folder} has no bin/tritonserver: reinstall it ({_INSTALL})")
    return folder


class TritonServer:
    """One ``tritonserver`` process on ``repository``; :meth:`start`, then :meth:`stop` (or use ``with``).

    Its log goes to ``log_path`` (unless given, a file in the server's own
    temporary folder, removed by :meth:`stop`); the last error line of it
    explains a failed start.
    """

    def __init__(self, repository: str | os.PathLike, endpoints: Endpoints = Endpoints(), *,
                 log_path: str | os.PathLike | None = None, ready_timeout: float = 120.0):
        self.repository = Path(repository)
        self.endpoints = endpoints
        self.ready_timeout = ready_timeout
        self._log_path = Path(log_path) if log_path else None
        self._work: Path | None = None
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Launch the server and wait until ``/v2/health/ready`` says every model is loaded, or ``cancelled()``."""
        check_ports_free(self.endpoints)
        distribution = triton_distribution()
        self._work = Path(tempfile.mkdtemp(prefix="specdet-triton-"))
        try:
            backends = self._backends(distribution, self._work)
            if self._log_path is None:
                self._log_path = self._work / "tritonserver.log"
            with open(self._log_path, "wb") as log:
                self.process = subprocess.Popen(
                    self._command(distribution, backends), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env=self._environment(distribution), start_new_session=True,
                )
            self._wait_ready(cancelled)
        except BaseException:
            self.stop()
            raise

    def _command(self, distribution: Path, backends: Path) -> list[str]:
        e = self.endpoints
        return [
            str(distribution / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={e.host}", f"--http-port={e.http_port}",
            f"--grpc-address={e.host}", f"--grpc-port={e.grpc_port}",
            "--allow-metrics=true", f"--metrics-address={e.host}", f"--metrics-port={e.metrics_port}",
            # Each server's Python-backend shared memory under its own name: two servers on one machine
            # (tests, several detect-serve) would otherwise share regions.
            f"--backend-config=python,shm-region-prefix-name=specdet{os.getpid()}x{id(self):x}",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]

    @staticmethod
    def _backends(distribution: Path, work: Path) -> Path:
        """``work/backends/python``: the Python backend with the stub for this interpreter's version."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = distribution / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise SpecdetError(f"pytriton has no Python-backend stub for Python {version}: use a Python it "
                               "supports (3.8 to 3.13)")
        python = work / "backends" / "python"
        shutil.copytree(distribution / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, python / stub.name)
        return python.parent

    @staticmethod
    def _environment(distribution: Path) -> dict[str, str]:
        env = dict(os.environ)
        # This interpreter's libpython before the system's (the stub links libpython3.X.so.1.0), then the
        # libraries pytriton's wheel bundles (auditwheel puts them beside the package as nvidia_pytriton.libs).
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(distribution.parent.parent / "nvidia_pytriton.libs"),
                env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        # The embedded interpreter finds its prefix by looking up "python3" on PATH: this interpreter's folder
        # first makes it this virtual environment (its site-packages, its numpy < 2), not the system's.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _wait_ready(self, cancelled: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://{self.endpoints.http_url}/v2/health/ready"
        while not cancelled():
            code = self.process.poll()
            if code is not None:
                raise SpecdetError(f"tritonserver exited with status {code} before it was ready: {self.last_error()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or listening with models still loading (HTTP 400)
            if time.monotonic() > deadline:
                raise SpecdetError(f"tritonserver was not ready within {self.ready_timeout:g} s: "
                                   f"{self.last_error()}")
            time.sleep(0.2)

    def last_error(self) -> str:
        """The last error line of the server's log (``E1203 ...`` lines), or its last line; for one-line errors."""
        try:
            lines = [line.strip() for line in self._log_path.read_text(errors="replace").splitlines() if line.strip()]
        except (OSError, AttributeError):
            return "no log"
        errors = [line for line in lines if line.startswith("E") and line[1:5].isdigit()]
        found = (errors or lines or ["empty log"])[-1]
        return found

    def poll(self) -> int | None:
        """The server's exit status, or None while it runs."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group, wait up to ``timeout`` s, then SIGKILL what is left. Idempotent."""
        if self.process is not None:
            _end_group(self.process, timeout)
            self.process = None
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

def _end_group(process: subprocess.Popen, timeout: float) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    # The stubs may outlive the server by a moment, or for good if it was killed: end the whole group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
