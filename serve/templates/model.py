"""A Triton Python-backend model written by detect-triton (specdet): one step of the specdet ensemble.

Which step (preprocess, detector, postprocess) is the ``specdet_role``
parameter of the config.pbtxt beside this folder; the code is
``specdet.serve.python_models``. Triton's Python-backend stub ignores
PYTHONPATH, so the folders where the interpreter that wrote this repository
found specdet and its dependencies are in the ``specdet_site_dirs`` parameter
(a JSON list); set SPECDET_SITE_DIRS (folders joined by ``:``) when serving
to use others.
"""

import json
import os
import site
import sys


def _add_site_dirs(config):
    override = os.environ.get("SPECDET_SITE_DIRS")
    if override:
        folders = override.split(os.pathsep)
    else:
        folders = json.loads(config["parameters"]["specdet_site_dirs"]["string_value"])
    before = list(sys.path)
    for folder in folders:
        site.addsitedir(folder)  # runs the folder's .pth files too: editable installs hook in there
    # Ours first: the stub's own interpreter may have other versions (numpy 2) in its site-packages.
    sys.path[:] = [p for p in sys.path if p not in before] + before


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _add_site_dirs(config)
        from specdet.serve import python_models

        self._model = python_models.create(args, config)

    def execute(self, requests):
        return self._model.execute(requests)

    def finalize(self):
        self._model.finalize()
