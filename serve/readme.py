"""The ``README.md`` that ``detect-triton`` writes into a model repository: how to start it and what it serves."""

from __future__ import annotations

from specdet.manifest import Manifest

# TensorRT release -> the first NGC Triton container (nvcr.io/nvidia/tritonserver:<YY.MM>-py3) that ships it,
# from the Triton release notes. Approximate: check NVIDIA's frameworks support matrix
# (https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html) before relying on it.
TENSORRT_CONTAINERS = {
    "10.0": "24.05", "10.1": "24.06", "10.2": "24.07", "10.3": "24.08", "10.4": "24.09", "10.5": "24.10",
    "10.6": "24.11", "10.7": "24.12", "10.8": "25.01", "10.9": "25.03", "10.10": "25.05", "10.11": "25.06",
}
SUPPORT_MATRIX = "https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html"


def container_for(tensorrt_version: str | None) -> str | None:
    """The NGC Triton container tag for an engine built with ``tensorrt_version`` (e.g. "10.9.0.34"), if known."""
    if not tensorrt_version:
        return None
    release = TENSORRT_CONTAINERS.get(".".join(tensorrt_version.split(".")[:2]))
    return f"nvcr.io/nvidia/tritonserver:{release}-py3" if release else None


def repository_readme(models: list[tuple[str, str, Manifest]]) -> str:
    """The README for models given as ``(ensemble name, detector variant, manifest)``."""
    lines = [
        "# specdet Triton model repository",
        "",
        "Written by `detect-triton`. Start it with",
        "",
        "```bash",
        "tritonserver --model-repository $PWD",
        "```",
        "",
        "(in an NGC container: `docker run --rm --net=host -v $PWD:/models nvcr.io/nvidia/tritonserver:<YY.MM>-py3 "
        "tritonserver --model-repository /models`; add `--gpus all` for GPU models).",
        "",
        "## Models",
        "",
        "| ensemble (call this) | artifact | detector | batch | threshold |",
        "|---|---|---|---|---|",
    ]
    for name, detector, manifest in models:
        lines.append(f"| `{name}` | {manifest.artifact} ({manifest.architecture}, {manifest.precision}) | "
                     f"`{name}_detector` ({detector}) | {manifest.batch.min} to {manifest.batch.max} | "
                     f"{manifest.threshold:g} |")
    lines += [
        "",
        "Each ensemble takes `image` (TYPE_STRING, dims [1], batched: one encoded image file per element) and "
        "returns `probability` and `logit` (TYPE_FP32, dims [1]) and `label` (TYPE_STRING: `fake` at or above "
        "the threshold, else `real`). Its steps, models of their own: `NAME_preprocess` (Python backend: "
        "decode, resize, crop, normalise as the artifact's manifest says), `NAME_detector`, `NAME_postprocess` "
        "(Python backend: the label). A request whose image cannot be read gets an error; the others of its "
        "batch are answered.",
        "",
        "## Python-backend models",
        "",
        "They import specdet. Triton's Python-backend stub ignores `PYTHONPATH`: each `model.py` adds the folders "
        "recorded in its config's `specdet_site_dirs` parameter (those of the interpreter that wrote the "
        "repository) to `sys.path`. On another machine install specdet with the `serve` extra and set "
        "`SPECDET_SITE_DIRS` (folders joined by `:`) to its site-packages. The stub must find numpy < 2 first "
        "(numpy 2 in the stub returns empty tensors), and it links the system `libpython3.X.so.1.0`: put the "
        "interpreter's own library folder (`python -c 'import sysconfig; print(sysconfig.get_config_var(\"LIBDIR\"))'`) "
        "first on `LD_LIBRARY_PATH`, and its `bin` folder first on `PATH` (the stub finds its environment from "
        "the `python3` there). `detect-serve ARTIFACT` does all this for one artifact.",
    ]
    engines = [(name, manifest) for name, detector, manifest in models if detector == "tensorrt"]
    if engines:
        lines += ["", "## TensorRT engines", "",
                  "An engine runs only with the TensorRT version that built it, so the container must match:", ""]
        for name, manifest in engines:
            version = manifest.engine.library_version if manifest.engine else None
            container = container_for(version)
            lines.append(f"- `{name}`: built with TensorRT {version or 'unknown'}: "
                         + (f"`{container}`" if container else "see the support matrix"))
            for plugin in manifest.engine.plugins if manifest.engine else ():
                lines.append(f"  - needs the plugin library `{plugin.name}` (sha256 {plugin.sha256[:12]}...): "
                             f"`tritonserver --backend-config=tensorrt,plugins=/path/to/{plugin.name} ...`, or "
                             f"`LD_PRELOAD=/path/to/{plugin.name} tritonserver ...`")
        lines += ["", "TensorRT version -> container (approximate; check NVIDIA's support matrix, "
                  f"{SUPPORT_MATRIX}):", "", "| TensorRT | container |", "|---|---|"]
        lines += [f"| {trt} | `nvcr.io/nvidia/tritonserver:{tag}-py3` |" for trt, tag in TENSORRT_CONTAINERS.items()]
    return "\n".join(lines) + "\n"
