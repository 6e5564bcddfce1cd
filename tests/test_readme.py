"""Every Python block of the README runs, and every command its shell blocks call exists.

Placeholders in the examples get stand-ins: ``photo.jpg`` is a real photo in
the working folder, ``my_module`` a module that uses ``torch.fft``.
"""

from __future__ import annotations

import importlib
import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as samples

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


class _SpectralFilter(torch.nn.Module):
    """Stand-in for a user's module with FFTs (``my_module`` in the README)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(3, 64, 33))

    def forward(self, x):
        return torch.fft.irfft2(torch.fft.rfft2(x, norm="ortho") * self.weight, s=x.shape[-2:], norm="ortho")


def test_the_readme_has_python_examples():
    assert _blocks("python"), "README.md lost its Python examples"


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(samples.astronaut()).save(tmp_path / "photo.jpg")
    namespace = {"__name__": f"readme_block_{index}", "my_module": _SpectralFilter()}
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), namespace)  # noqa: S102


def _commands() -> list[list[str]]:
    """Each command line of the shell blocks, split at ``&&`` and ``;``, comments dropped."""
    found = []
    for body in _blocks("bash"):
        for line in body.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|;|\|", line):
                if part.strip():
                    found.append(shlex.split(part))
    return found


def test_commands_in_shell_blocks_exist():
    scripts = {e.name for e in metadata.entry_points(group="console_scripts")}
    commands = _commands()
    assert commands
    for words in commands:
        if words[0].startswith("detect-"):
            assert words[0] in scripts, f"README calls {words[0]}, which specdet does not install"
        if words[:2] in (["python", "-m"], ["python3", "-m"]) and words[2].startswith("specdet"):
            importlib.import_module(words[2])  # the module the README runs exists
