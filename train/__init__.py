"""Training and evaluation of the detectors: ``detect-train`` and ``detect-make-data``.

config.py (options, each family's recipe), data.py (folder layouts, datasets,
loaders), augment.py (CNNDetection's training augmentation), schedule.py (the
dual-branch staged schedule), loop.py (epochs, validation, best checkpoint),
state.py (resume), distributed.py (torchrun, DDP), metrics.py and evaluate.py
(per-source metrics, threshold calibration, reports), make_data.py (the demo
set), losses.py (both detectors' losses), cli.py.
"""

from specdet._shadowing import hand_over

hand_over(__name__)  # imported as a bare `train` from the repository root: the installed package instead
