"""Serving with Triton: ``detect-triton`` writes a model repository, ``detect-serve`` runs one artifact on it.

Above the runtime: it imports the core (``specdet/*.py``) and ``specdet.runtime``, nothing higher.
"""
