"""Tensor names of the specdet Triton models, shared by the repository writer and the Python-backend models."""

IMAGE = "image"  # the ensemble's and the preprocess step's input: encoded image files (TYPE_STRING)
PIXELS = "pixels"  # the preprocess step's output: the artifact's input tensor
LOGIT, PROBABILITY = "logit", "probability"  # the detector's outputs (the manifest's), then the ensemble's
LABEL = "label"  # "fake" or "real" (TYPE_STRING)
