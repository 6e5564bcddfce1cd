"""Run by test_fuzz.py in a child process whose memory is bounded: hostile files through the CLI and the API.

``python fuzz_driver.py CASES.json MEMORY_GB SECONDS`` reads the cases
(``{"artifact", "images": [...], "manifests": [{"artifact", "image"}], "checkpoints": [...]}``),
scores each with a per-case alarm, and prints one JSON summary on stdout.
Its address space is capped first, so a case that allocates without bound
fails here (as a MemoryError the tools must turn into a skip or a one-line
error) instead of taking the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import sys
import time


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout


def main() -> None:
    cases_path, memory_gb, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))
    signal.signal(signal.SIGALRM, _alarm)

    from specdet.errors import SpecdetError
    from specdet.runtime import Detector, cli

    cases = json.loads(open(cases_path).read())
    summary = {"images": {}, "cli": None, "manifests": [], "checkpoints": [], "slowest": 0.0, "slowest_case": None}

    def timed(name, call):
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return call()
        except CaseTimeout:
            raise SystemExit(f"case {name} ran longer than {seconds} s") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.perf_counter() - start
            if elapsed > summary["slowest"]:
                summary["slowest"], summary["slowest_case"] = elapsed, name

    def run_cli(argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}

    with Detector(cases["artifact"]) as detector:
        for path in cases["images"]:
            (result,) = timed(path, lambda path=path: detector.predict_files([path]))
            summary["images"][path] = None if result.ok else result.error
    summary["cli"] = timed("the CLI on the folder", lambda: run_cli([cases["artifact"], cases["folder"], "--json"]))
    for case in cases["manifests"]:
        outcome = timed(case["artifact"], lambda case=case: run_cli([case["artifact"], case["image"], "--json"]))
        try:
            timed(case["artifact"], lambda case=case: Detector(case["artifact"]).close())
            outcome["api"] = None
        except SpecdetError as err:  # any other type is a failure: it propagates, with its traceback
            outcome["api"] = str(err)
        summary["manifests"].append(outcome)
    if cases.get("checkpoints"):
        import specdet.models.checkpoint  # noqa: F401  (untimed: importing timm and transformers takes seconds)
    for artifact in cases.get("checkpoints", []):  # hostile models and configs: the same two ways in
        outcome = timed(artifact, lambda artifact=artifact: run_cli([artifact, cases["images"][0], "--json"]))
        try:
            timed(artifact, lambda artifact=artifact: Detector(artifact).close())
            outcome["api"] = None
        except SpecdetError as err:
            outcome["api"] = str(err)
        summary["checkpoints"].append(outcome)
    summary["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
