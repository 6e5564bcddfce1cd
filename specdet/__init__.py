"""specdet: deploy spatial + frequency-domain detectors of AI-generated images."""
