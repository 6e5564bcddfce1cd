"""ONNX Runtime's C headers for the build, from a registry package, never from the repository.

The ``onnxruntime`` wheel ships the library but no headers. Debian ships them in
``libonnxruntime-dev`` (trixie and later, ONNX Runtime 1.21, C API 21); on bookworm that package is
not in the configured suites, so it is downloaded with apt from Debian's trixie suite into a private
apt state (the system's sources and package database are not touched) and unpacked with dpkg-deb,
without installing it or its dependencies: only the headers are used, and the library that runs is
the wheel's (any ONNX Runtime with API >= 21 serves).

    python -m specdet.runtime.cpp.headers [DEST]    # prints the include folder
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from specdet.errors import SpecdetError

HEADER = "onnxruntime_c_api.h"
PACKAGE = "libonnxruntime-dev"
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def default_dest() -> Path:
    return Path(os.environ.get("SPECDET_CPP_CACHE", Path.home() / ".cache" / "specdet" / "cpp")) / "onnxruntime-headers"


def find_headers(dest: Path | None = None) -> Path | None:
    """An include folder holding onnxruntime_c_api.h: $ONNXRUNTIME_INCLUDE_DIR, the system's, or a fetched copy."""
    candidates = [os.environ.get("ONNXRUNTIME_INCLUDE_DIR"), "/usr/include/onnxruntime", "/usr/local/include/onnxruntime",
                  str((dest or default_dest()) / "usr" / "include" / "onnxruntime")]
    for folder in candidates:
        if folder and (Path(folder) / HEADER).is_file():
            return Path(folder)
    return None


def fetch_headers(dest: Path | None = None) -> Path:
    """Download and unpack Debian's libonnxruntime-dev into ``dest``; returns its include folder."""
    dest = Path(dest or default_dest())
    found = find_headers(dest)
    if found is not None:
        return found
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SpecdetError(f"{tool} not found: install ONNX Runtime's C headers (API 21+) and set $ONNXRUNTIME_INCLUDE_DIR")
    with tempfile.TemporaryDirectory(prefix="specdet-apt-") as tmp:
        state = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial", "sources", "download"):
            (state / sub).mkdir(parents=True)
        (state / "sources" / f"{SUITE}.sources").write_text(
            f"Types: deb\nURIs: {MIRROR}\nSuites: {SUITE}\nComponents: main\nSigned-By: {KEYRING}\n"
        )
        apt = ["apt-get", "-q", "-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={state}/sources",
               "-o", f"Dir::State::Lists={state}/lists", "-o", f"Dir::Cache={state}/cache",
               "-o", "Dir::State::status=/dev/null", "-o", "APT::Sandbox::User=root"]
        for step, command in (("update", apt + ["update"]), ("download", apt + ["download", PACKAGE])):
            result = subprocess.run(command, cwd=state / "download", capture_output=True, text=True, check=False)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
                raise SpecdetError(f"apt-get {step} of {PACKAGE} ({SUITE}) failed: {tail[0]}")
        (deb,) = (state / "download").glob(f"{PACKAGE}_*.deb")
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    found = find_headers(dest)
    if found is None:
        raise SpecdetError(f"{PACKAGE} unpacked into {dest} holds no {HEADER}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdet.runtime.cpp.headers", description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", type=Path, help=f"where to unpack (default: {default_dest()})")
    args = parser.parse_args(argv)
    try:
        print(fetch_headers(args.dest))
    except SpecdetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
