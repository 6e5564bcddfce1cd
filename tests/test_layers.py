"""Layers point down: a module imports only from its own layer and the ones below it.

From the bottom: the core (``specdet/*.py``: errors, files, manifest,
checkpoint, images, versions, tensorrt, cli helpers), ``models``, ``kernels``,
``runtime``, ``serve``, ``export``, ``train``, ``benchmarks``, and ``specdet.demo`` on
top. Every import in every module is checked, in subfolders and inside functions too (a
lazy import still ties the layers together).
"""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("specdet", "specdet.models", "specdet.kernels", "specdet.runtime", "specdet.serve", "specdet.export", "specdet.train",
          "specdet.benchmarks", "specdet.demo")


def layer(module: str) -> int:
    """The layer of a dotted module name (the longest layer name it falls under)."""
    matches = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return max(matches, key=lambda i: len(LAYERS[i]))


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """``"module imports target"`` for each import in ``source`` that points to a higher layer."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # "from specdet import models" names a subpackage: judge the full name.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "specdet" and layer(target) > layer(module):
                found.append(f"{module} (layer {LAYERS[layer(module)]}) imports {target} "
                             f"(layer {LAYERS[layer(target)]}), line {node.lineno}")
    return found


def modules() -> list[tuple[str, Path]]:
    """Every module as (dotted name, file): each folder of pyproject's package-dir, subfolders included.

    A module in a subfolder has the layer of its folder (``export/precision/int8.py`` is
    ``specdet.export.precision.int8``, layer ``specdet.export``). That holds for
    ``serve/templates/model.py`` too, though it is package data, not an importable module:
    detect-triton copies it into each Python-backend model and Triton's stub imports it as
    ``model``. It imports only the standard library and ``specdet.serve.python_models``, so it
    belongs to serve; an import of export, train or benchmarks there would load them into every
    Triton model instance, and the check names it as pointing up.
    """
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = config["tool"]["setuptools"]["package-dir"]
    found = []
    for package, folder in folders.items():
        root = ROOT / folder
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append((".".join((package, *parts)), path))
    return found


def test_every_package_is_checked():
    names = {name for name, _ in modules()}
    assert {"specdet.manifest", "specdet.runtime.base", "specdet.export.engine", "specdet.demo"} <= names
    # Modules in subfolders: a package, a module of a subpackage, and the Triton template (package data).
    assert {"specdet.export.precision", "specdet.runtime.cpp.binding", "specdet.serve.templates.model"} <= names
    assert len(names) > 60


def test_no_import_points_up():
    problems = [p for name, path in modules() for p in upward_imports(name, path.read_text(), path.stem == "__init__")]
    assert not problems, "imports that point up a layer:\n" + "\n".join(problems)


def test_the_check_sees_upward_imports():
    assert upward_imports("specdet.runtime.x", "from specdet.export.engine import build_engine") == [
        "specdet.runtime.x (layer specdet.runtime) imports specdet.export.engine.build_engine "
        "(layer specdet.export), line 1"
    ]
    lazy = "def f():\n    import specdet.train.loop\n"
    assert len(upward_imports("specdet.manifest", lazy)) == 1
    assert len(upward_imports("specdet.files", "from specdet import models")) == 1
    assert len(upward_imports("specdet.runtime.base", "from . import detector\nfrom .. import export")) == 1
    assert upward_imports("specdet.demo", "from specdet.benchmarks import bench\nimport numpy") == []
    assert upward_imports("specdet.export.onnx", "from specdet.runtime import preprocess") == []
