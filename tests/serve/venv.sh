#!/usr/bin/env bash
# The serving venv: pytriton pins numpy<2, so the serving tests (this folder) run in a venv of their own,
# layered on the main one (.venv): it holds numpy 1.26, pytriton and tritonclient, and reads every other
# package from the main venv through a .pth file. Run from the repository root with the main venv built:
#   tests/serve/venv.sh [.venv-serve]  &&  .venv-serve/bin/python -m pytest -q tests/serve
set -euo pipefail
base=${BASE_VENV:-.venv}
serve=${1:-.venv-serve}
[ -x "$base/bin/python" ] || { echo "venv.sh: no main venv at $base: build it first (README, set-up command 2)" >&2; exit 2; }
python3 -m venv "$serve"
purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'; }
purelib "$base" > "$(purelib "$serve")/specdet-base-venv.pth"
"$serve/bin/pip" install -q -c constraints-serve.txt -e ".[test,serve]"
