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
model instance) so that :meth:`TritonServer.stop` ends all of them. Clients
reach its HTTP endpoint through :mod:`specdet.serve.guard`, which bounds each
request before Triton parses it; the server itself listens on a loopback port
of its own.

Two things Triton 2.51 does not do are done here: a stub that dies is not
restarted (every request then fails while ``/v2/health/ready`` still says
ready), so :meth:`TritonServer.dead_stub` tells its supervisor (detect-serve
restarts the server); and the Python backend's ``/tmp/python_env_*`` folder
is left behind when the server is killed, so :meth:`TritonServer.stop`
removes the one its server made.
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
from specdet.serve.guard import Limits, RequestGuard

_INSTALL = "the Triton server comes with pytriton: pip install 'specdet[serve]'"
_STUB = "triton_python_backend_stub"
# Where the Python backend makes its folder for execution environments (mkdtemp on a fixed template, not TMPDIR).
_PYTHON_ENVS = Path("/tmp")


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
                 log_path: str | os.PathLike | None = None, ready_timeout: float = 120.0, limits: Limits | None = None):
        self.repository = Path(repository)
        self.endpoints = endpoints
        self.ready_timeout = ready_timeout
        self.limits = limits or Limits()
        self._given_log = Path(log_path) if log_path else None
        self._log_path = self._given_log
        self._work: Path | None = None
        self._guard: RequestGuard | None = None
        self._backend_port = 0  # Triton's own HTTP port, behind the guard
        self._stubs: dict[int, tuple[str, str]] = {}  # pid -> (start time, model) of the stubs seen at ready
        self._envs_before: set[Path] = set()  # python_env_* folders before the server started
        self._envs: set[Path] | None = None  # those that appeared while it started: its own
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
            self._log_path = self._given_log or self._work / "tritonserver.log"
            # The guard takes the clients' port first (nobody else can take it while the server starts, and
            # until the server answers, the guard says 503: not ready).
            backend_port = self._backend_port = free_ports(1)[0]
            self._guard = RequestGuard(self.endpoints.host, self.endpoints.http_port, backend_port, self.limits)
            self._guard.start()
            self._envs_before = set(_PYTHON_ENVS.glob("python_env_*"))
            with open(self._log_path, "wb") as log:
                self.process = subprocess.Popen(
                    self._command(distribution, backends, backend_port), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env=self._environment(distribution), start_new_session=True,
                )
            self._wait_ready(cancelled)
            self._envs = self._new_envs()
            self._stubs = _stubs(self.process.pid)
        except BaseException:
            self.stop()
            raise

    def _command(self, distribution: Path, backends: Path, http_port: int) -> list[str]:
        e = self.endpoints
        return [
            str(distribution / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={http_port}",  # behind the guard
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
                raise SpecdetError(f"{self.ended(code)} before it was ready")
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

    @property
    def direct_http_url(self) -> str:
        """Triton's own HTTP endpoint, behind the guard: for measuring what the guard costs, not for clients."""
        return f"127.0.0.1:{self._backend_port}"

    def ended(self, code: int) -> str:
        """How the server ended, in words: the signal that killed it, or its status and the log's last error."""
        if code < 0:
            try:
                return f"tritonserver was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"tritonserver was killed by signal {-code}"
        return f"tritonserver exited with status {code}: {self.last_error()}"

    def poll(self) -> int | None:
        """The server's exit status, or None while it runs."""
        return None if self.process is None else self.process.poll()

    def _new_envs(self) -> set[Path]:
        return {folder for folder in set(_PYTHON_ENVS.glob("python_env_*")) - self._envs_before if _own_folder(folder)}

    def dead_stub(self) -> str | None:
        """The model of a Python-backend stub that has ended since the server was ready (its requests now all
        fail), or None while every one runs."""
        for pid, (started, model) in self._stubs.items():
            if _process_start(pid) != started:
                return model
        return None

    def restart(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Stop the server and start it again on the same ports (what recovers a dead stub); a server with a dead
        stub cannot answer anyway, so it gets 5 s to end before it is killed."""
        self.stop(timeout=5.0)
        self.start(cancelled)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the guard, SIGTERM the server's process group, wait up to ``timeout`` s, then SIGKILL what is
        left; remove the server's folders. Idempotent."""
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if self.process is not None:
            _end_group(self.process, timeout)
            self.process = None
            # Its backend's python_env_* folder, if the server could not remove it (killed, or crashed). Those
            # that appeared while it started are its own (another server starting at that very moment aside).
            for folder in self._envs if self._envs is not None else self._new_envs():
                shutil.rmtree(folder, ignore_errors=True)
            self._envs = None
        self._stubs = {}
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None


def _own_folder(path: Path) -> bool:
    """A folder of this user's (False if it went away meanwhile: another server removing its own)."""
    try:
        return path.is_dir() and path.stat().st_uid == os.getuid()
    except OSError:
        return False


def _stubs(server: int) -> dict[int, tuple[str, str]]:
    """The Python-backend stubs of the server's process group: pid -> (start time, model name)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) == server and Path(os.fsdecode(argv[0])).name == _STUB and len(argv) > 1:
            # argv[1] is MODEL/VERSION/model.py in the repository
            found[int(entry.name)] = (fields[19], Path(os.fsdecode(argv[1])).parent.parent.name)
    return found


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot: tells a reused pid apart), or None if it is not
    running (a zombie, ended but not reaped, is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


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
