"""Plugin libraries an engine records by name and SHA-256, found again at run time (specdet.tensorrt).

The resolver is plain file work, tested with stand-in library files of known
hashes. The tensorrt runner resolves them before it touches the GPU, so its
messages are tested here too, on a machine without one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conftest import tiny_manifest
from specdet.errors import SpecdetError
from specdet.manifest import Manifest, PluginLibrary
from specdet.tensorrt import PLUGINS_ENV, resolve_plugin_libraries

NAME = "libspecdet_trt_plugins.so"


def _library(folder: Path, content: bytes, name: str = NAME) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def _record(sha256: str, name: str = NAME) -> PluginLibrary:
    return PluginLibrary(name, sha256, ({"name": "BandSplit", "version": "1", "namespace": "specdet"},))


@pytest.fixture
def places(tmp_path):
    """The same library (same bytes) in an explicit folder, an environment folder and an installed build."""
    content = b"\x7fELF the plugin library"
    found = {where: _library(tmp_path / where, content)[0] for where in ("explicit", "env", "installed")}
    return found, hashlib.sha256(content).hexdigest()


def test_places_in_order(places):
    found, sha = places
    environ = {PLUGINS_ENV: str(found["env"].parent)}
    installed = [found["installed"].parent]
    record = [_record(sha)]
    assert resolve_plugin_libraries(record, explicit=[found["explicit"]], environ=environ,
                                    installed=installed) == [found["explicit"]]
    assert resolve_plugin_libraries(record, explicit=[found["explicit"].parent], environ=environ,
                                    installed=installed) == [found["explicit"]]  # a folder works too
    assert resolve_plugin_libraries(record, environ=environ, installed=installed) == [found["env"]]
    assert resolve_plugin_libraries(record, environ={}, installed=installed) == [found["installed"]]


def test_the_environment_variable_lists_files_and_folders(tmp_path, monkeypatch):
    path, sha = _library(tmp_path / "second", b"library bytes")
    other, _ = _library(tmp_path / "first", b"another library", name="libother.so")
    monkeypatch.setenv(PLUGINS_ENV, os.pathsep.join([str(other), str(tmp_path / "empty"), str(path.parent)]))
    assert resolve_plugin_libraries([_record(sha)]) == [path]


def test_installed_builds_are_chosen_by_hash(tmp_path):
    _library(tmp_path / "build-a", b"an older build")
    wanted, sha = _library(tmp_path / "build-b", b"the build the engine used")
    _library(tmp_path / "build-c", b"a newer build")
    folders = [tmp_path / f"build-{c}" for c in "abc"]
    assert resolve_plugin_libraries([_record(sha)], environ={}, installed=folders) == [wanted]


def test_the_first_place_holding_the_name_decides(places, tmp_path):
    found, sha = places
    wrong, _ = _library(tmp_path / "wrong", b"rebuilt since")
    with pytest.raises(SpecdetError) as err:
        resolve_plugin_libraries([_record(sha)], explicit=[wrong], environ={PLUGINS_ENV: str(found["env"])},
                                 engine="m.engine")
    message = str(err.value)
    assert message.startswith(f"{wrong} (from --plugins) is not the {NAME} m.engine was built with")
    assert f"recorded {sha[:12]}" in message and "--plugins or $SPECDET_TRT_PLUGINS" in message
    assert "rebuild the engine with detect-build" in message and "\n" not in message


def test_a_missing_library_says_where_it_looked(tmp_path):
    with pytest.raises(SpecdetError) as err:
        resolve_plugin_libraries([_record("0" * 64)], explicit=[tmp_path], environ={}, installed=[tmp_path],
                                 engine="m.engine")
    assert str(err.value) == (
        f"m.engine needs the TensorRT plugin library {NAME} (ops BandSplit), found in neither --plugins, "
        f"$SPECDET_TRT_PLUGINS nor the installed kernel builds: pass --plugins PATH or set SPECDET_TRT_PLUGINS "
        "to the library or its folder, or build it with python -m specdet.kernels.build"
    )


def test_explicit_paths_are_checked(tmp_path):
    with pytest.raises(SpecdetError, match="--plugins .*absent.so does not exist"):
        resolve_plugin_libraries([], explicit=[tmp_path / "absent.so"])
    stray, _ = _library(tmp_path, b"x", name="libstray.so")
    with pytest.raises(SpecdetError, match=f"libstray.so: m.engine was built with no plugin library of that name "
                                           f"\\(it records {NAME}\\)"):
        resolve_plugin_libraries([_record("0" * 64)], explicit=[stray], engine="m.engine")


def test_an_engine_without_plugins_needs_none(tmp_path):
    # The variable is not even read when nothing is recorded.
    assert resolve_plugin_libraries([], environ={PLUGINS_ENV: str(tmp_path / "nowhere")}) == []


# ---- the tensorrt runner ------------------------------------------------------------


@pytest.fixture
def engine(tmp_path):
    """A stand-in engine file whose manifest records one plugin library, for the installed TensorRT-RTX."""
    trt = pytest.importorskip("tensorrt_rtx", reason="the tensorrt runner tests need the tensorrt_rtx package")
    library, sha = _library(tmp_path / "plugins", b"the plugin library the engine was built with")
    path = tmp_path / "model.engine"
    path.write_bytes(b"not a real engine: the runner stops before deserialising it")
    data = {**tiny_manifest(), "artifact": path.name, "engine": {
        "library": "tensorrt_rtx", "library_version": trt.__version__, "compute_capabilities": ["8.6"],
        "build_device": None, "plugins": [{"path": f"/elsewhere/{NAME}", "sha256": sha, "ops": []}],
    }}
    Manifest.from_dict(data).write(path)
    return path, library


@pytest.fixture
def no_kernel_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDET_KERNELS_CACHE", str(tmp_path / "kernel-builds"))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    return tmp_path / "kernel-builds"


def test_runner_reports_a_missing_library_before_the_gpu(engine, no_kernel_builds, image_dir, capsys):
    from specdet.runtime import Detector, create_runner
    from specdet.runtime.cli import main

    path, _ = engine
    for make in (create_runner, Detector):
        with pytest.raises(SpecdetError, match=f"model.engine needs the TensorRT plugin library {NAME}"):
            make(path)
    assert main([str(path), str(image_dir / "good"), "--plugins", str(path.parent / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert "--plugins" in err and "nothing-here does not exist" in err and len(err.splitlines()) == 1


def test_runner_finds_the_library_by_option_environment_or_build(engine, no_kernel_builds, monkeypatch):
    from specdet.runtime import create_runner

    path, library = engine
    # Found: the runner goes on to the GPU (none here) or, on a GPU machine, to loading the stand-in file.
    past_resolution = "needs an NVIDIA GPU|cannot load plugin library"
    with pytest.raises(SpecdetError, match=past_resolution):
        create_runner(path, plugins=[library])
    monkeypatch.setenv(PLUGINS_ENV, str(library.parent))
    with pytest.raises(SpecdetError, match=past_resolution):
        create_runner(path)
    monkeypatch.delenv(PLUGINS_ENV)
    build = no_kernel_builds / "0123abcd"
    build.mkdir(parents=True)
    (build / NAME).write_bytes(library.read_bytes())
    with pytest.raises(SpecdetError, match=past_resolution):
        create_runner(path, cuda_graphs=True)


def test_runner_refuses_a_different_library(engine, no_kernel_builds, tmp_path):
    from specdet.runtime import create_runner

    path, _ = engine
    other, _ = _library(tmp_path / "rebuilt", b"a plugin library built since")
    with pytest.raises(SpecdetError, match=f"{other} \\(from --plugins\\) is not the {NAME} model.engine was built"):
        create_runner(path, plugins=[other.parent])
