"""specdet: deploy spatial + frequency-domain detectors of AI-generated images."""

from specdet import _shadowing

_shadowing.install()
