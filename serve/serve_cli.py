"""``detect-serve ARTIFACT``: serve one artifact on Triton (HTTP and gRPC) until SIGTERM or Ctrl-C.

One definition of the contract: the server runs a ``detect-triton``
repository (Python-backend detector, specdet's own runtime) written to a
temporary folder, on the ``tritonserver`` pytriton's wheel ships
(:mod:`specdet.serve.server`). Health and readiness are Triton's own
(``/v2/health/ready``), metrics its Prometheus endpoint.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from specdet import cli
from specdet.cli import add_debug_flag, run
from specdet.errors import SpecdetError
from specdet.serve.guard import Limits
from specdet.serve.repository import DEFAULT_NAME, Options, add_batching_arguments, write_repository
from specdet.serve.server import Endpoints, TritonServer

PORT = cli.int_range(1, 65535)
# A server whose model processes keep dying (out of memory, or a request a client keeps resending that kills
# them) is not restarted without end: more than MAX_RESTARTS within RESTART_WINDOW_S is an error.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600


def main(argv: Sequence[str] | None = None) -> int:
    return run(_serve, _parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="detect-serve",
        description="Serve one artifact on Triton: model NAME takes encoded images (TYPE_STRING 'image') and returns "
        "probability, logit and label, over HTTP and gRPC, with dynamic batching and Prometheus metrics.",
    )
    parser.add_argument("artifact", type=Path, help="exported model.onnx or built model.engine/.plan")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--http-port", type=PORT, default=8000, help="default: 8000")
    parser.add_argument("--grpc-port", type=PORT, default=8001, help="default: 8001")
    parser.add_argument("--metrics-port", type=PORT, default=8002, help="Prometheus metrics (default: 8002)")
    add_batching_arguments(parser)
    parser.add_argument("--model-name", default=DEFAULT_NAME, help=f"the model clients call (default: {DEFAULT_NAME})")
    parser.add_argument("--max-request-mb", type=cli.number_range(0, 4096, above=True), default=Limits.max_request_bytes / 2**20,
                        metavar="MB", help="refuse (HTTP 413) a request body larger than this, before Triton reads it "
                        f"(default: {Limits.max_request_bytes >> 20})")
    parser.add_argument("--ready-timeout", type=cli.number_range(0, above=True), default=120.0, metavar="S",
                        help="give up if the server is not ready after S seconds (default: 120)")
    add_debug_flag(parser)
    return parser


def _serve(args: argparse.Namespace) -> int:
    ports = [args.http_port, args.grpc_port, args.metrics_port]
    if len(set(ports)) < 3:
        raise SpecdetError(f"the HTTP, gRPC and metrics ports must differ (got {', '.join(map(str, ports))})")
    stop = threading.Event()
    # Installed first: a signal at any point stops the server and removes the repository, without a traceback.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    work = Path(tempfile.mkdtemp(prefix="specdet-serve-"))
    try:
        options = Options(detector="python", name=args.model_name, instances=args.instances,
                          preprocess_instances=args.preprocess_instances,
                          max_batch=args.max_batch, queue_delay_us=args.queue_delay_us)
        repository = write_repository([args.artifact], work / "models", options)
        endpoints = Endpoints(args.host, args.http_port, args.grpc_port, args.metrics_port)
        server = TritonServer(repository, endpoints, ready_timeout=args.ready_timeout,
                              limits=Limits(max_request_bytes=int(args.max_request_mb * 2**20)))
        try:
            server.start(cancelled=stop.is_set)  # a signal while it starts ends the wait too
            if not stop.is_set():
                print(f"serving {args.model_name} on http://{endpoints.http_url} (grpc {endpoints.grpc_url}, "
                      f"metrics http://{endpoints.metrics_url}/metrics)", flush=True)
            restarts: list[float] = []  # when a dead stub restarted the server
            while not stop.wait(0.5):
                code = server.poll()
                if code is not None:
                    raise SpecdetError(server.ended(code))
                model = server.dead_stub()
                if model is not None:
                    # Triton 2.51 does not restart a dead stub: every request would fail while it says ready.
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
                    if len(restarts) > MAX_RESTARTS:
                        raise SpecdetError(f"the Python process of model {model} ended {len(restarts)} times within "
                                           f"{RESTART_WINDOW_S // 60} minutes: not restarting again (see the model's "
                                           "memory, or a request that kills it)")
                    print(f"the Python process of model {model} ended: restarting tritonserver", file=sys.stderr,
                          flush=True)
                    server.restart(cancelled=stop.is_set)
                    if not stop.is_set():
                        print(f"serving {args.model_name} again", file=sys.stderr, flush=True)
        finally:
            server.stop()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
