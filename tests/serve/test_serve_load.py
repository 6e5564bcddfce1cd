"""The load run (benchmarks/serve_load.py) on a tiny export: both paths measured, no error, no server left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_exports

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")


def _servers_of_load_runs() -> list[int]:
    """tritonserver processes on a load run's repository (its folder is named specdet-serve-load-*)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "tritonserver" in cmdline and "specdet-serve-load-" in cmdline:
                found.append(int(entry.name))
    return found


def test_load_run_writes_both_paths_and_stops_the_server(tmp_path):
    artifact = tiny_exports.exported("dual_branch_tiny", "matmul")
    before = set(_servers_of_load_runs())
    done = subprocess.run(
        [sys.executable, "-m", "specdet.benchmarks.serve_load", str(artifact), "--seconds", "1", "--warmup", "0.3",
         "--concurrency", "1,2", "--protocol", "all", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    (report,) = tmp_path.glob("*-cpu-serve-dual_branch_tiny-matmul.json")
    assert report.with_suffix(".md").is_file()
    record = json.loads(report.read_text())
    assert record["machine"]["cores"] >= 1 and record["versions"]["tritonserver"].startswith("2.")
    rows = record["results"]
    assert {(r["path"], r["protocol"], r["concurrency"]) for r in rows} == {
        (path, protocol, c) for path, protocol in (("triton", "http"), ("triton", "http-direct"), ("triton", "grpc"),
                                                   ("in-process", "-"))
        for c in (1, 2)}
    for row in rows:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        if row["path"] == "triton":
            assert row["server_batches"]["mean_batch"] >= 1
    assert set(_servers_of_load_runs()) <= before
