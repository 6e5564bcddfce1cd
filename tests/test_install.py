"""The installed layout: no folder of the checkout stands in for another package (specdet/_shadowing.py).

``python -m ...`` and ``python -c`` put the working folder first on ``sys.path``; run from the
repository root, ``import kernels`` (transformers 5.25 imports the ``kernels`` package) found our
``kernels/`` folder. These run from the root, in child processes, as a user would.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from specdet import _shadowing

ROOT = Path(__file__).resolve().parent.parent


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_root_folders_are_the_subpackages_the_finder_knows():
    folders = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "specdet")
    assert folders == sorted(_shadowing.SUBPACKAGES)


def test_python_c_from_the_root_imports_specdet_and_the_real_kernels_package():
    code = ("import specdet.models, specdet.export, specdet.runtime, importlib.util; "
            "spec = importlib.util.find_spec('kernels'); print(spec.origin if spec else '')")
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    origin = done.stdout.strip()
    # transformers 5.25 depends on the kernels package; without it, the name must not be found at all.
    assert not origin.startswith(str(ROOT / "kernels")), origin


def test_python_m_from_the_root_runs():
    done = _python("-m", "specdet.runtime.cpp.build", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout


def test_a_name_nobody_installs_fails_as_it_would_without_us():
    done = _python("-c", "import specdet; import models")
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'models'" in done.stderr


def test_no_installed_distribution_provides_a_name_that_resolves_to_our_tree():
    """The generic guard: every top-level name that, from the root, still resolves into the checkout is
    ours alone; a distribution providing the same name would be shadowed by it."""
    names = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    code = ("import json, importlib.util, specdet\n"
            f"specs = {{n: importlib.util.find_spec(n) for n in {names!r}}}\n"
            "print(json.dumps({n: s.origin if s else None for n, s in specs.items()}))")
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    resolved = {name: origin for name, origin in json.loads(done.stdout).items()
                if origin and Path(origin).resolve().is_relative_to(ROOT / name)}
    assert set(resolved) == {"specdet"}, resolved  # the seven subpackages resolve elsewhere or nowhere
    providers = importlib.metadata.packages_distributions()
    clashes = {name: providers[name] for name in resolved if set(providers.get(name, ())) - {"specdet"}}
    assert not clashes, f"installed distributions provide names our folders take: {clashes}"


def test_the_main_suite_runs_on_the_numpy_users_get():
    """pytriton pins numpy<2: the serve extra stays out of the test extra, and the serving tests run in their own
    venv (tests/serve/venv.sh), so that everything else is tested on numpy 2 as a plain install gets it."""
    import numpy

    in_test_extra = [r for r in importlib.metadata.requires("specdet") if 'extra == "test"' in r]
    assert in_test_extra and not any(r.startswith("nvidia-pytriton") for r in in_test_extra)
    assert int(numpy.__version__.split(".")[0]) >= 2, f"numpy {numpy.__version__}: the test venv took the serve extra"


def test_a_bare_import_before_specdet_gets_the_installed_package_or_fails():
    """`python -c "import kernels"` in the root runs our kernels/__init__.py under the bare name first; it hands
    the name over to the installed package (or fails as Python would without us)."""
    done = _python("-c", "import kernels; print(kernels.__file__)")
    assert done.returncode == 0, done.stderr
    assert not done.stdout.strip().startswith(str(ROOT / "kernels")), done.stdout
    for name in ("models", "runtime", "benchmarks"):
        done = _python("-c", f"import {name}")
        assert done.returncode == 1 and f"ModuleNotFoundError: No module named '{name}'" in done.stderr, done.stderr
