"""Serving with Triton: ``detect-triton`` writes a model repository, ``detect-serve`` runs one artifact on it.

Above the runtime: it imports the core (``specdet/*.py``) and ``specdet.runtime``, nothing higher.
"""

from specdet._shadowing import hand_over

hand_over(__name__)  # imported as a bare `serve` from the repository root: the installed package instead
