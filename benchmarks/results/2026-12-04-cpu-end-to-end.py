"""The CPU end-to-end run of 2026-12-04 (issue 19, item 5): files to probabilities on this 2-core machine, in one run.

    python benchmarks/results/2026-12-04-cpu-end-to-end.py WORK_DIR OUT.json

Photo-size JPEGs (500 to 1,500 px, quality 75 to 95: benchmarks/end_to_end.make_photos) are scored by the two
tiny detectors (PyTorch, FP32; random weights, seed 0) and by the full-size dual_branch_vit_b16 exported to INT8
(`detect-export dual.pth --precision int8`, random weights, seed 0) on OpenVINO. Each model: the serial loop
(workers 0) with the backend's threads, as detect-predict ran before the pipeline, then the input workers with the
threads detect-predict now gives the model (the CPUs the workers leave, at least 1). The INT8 file must exist in
WORK_DIR (dual-int8.onnx); the checkpoints are made here.
"""

import json
import sys
from pathlib import Path

import torch

from specdet.benchmarks import end_to_end
from specdet.models import checkpoint, create_model

work, out = Path(sys.argv[1]), Path(sys.argv[2])
photos = end_to_end.make_photos(work / "photos", 200, processes=2)
records = []
for name in ("rine_ssca_tiny", "dual_branch_tiny"):
    torch.manual_seed(0)
    path = work / f"{name}.pth"
    checkpoint.save(create_model(name), path, source="random init, seed 0")
    records.append(end_to_end.run(path, "torch-fp32", photos, workers=[0], batch_size=8, command=f"{name} serial"))
    records.append(end_to_end.run(path, "torch-fp32", photos, workers=[0, 1, 2], batch_size=8, threads=1,
                                  command=f"{name} workers, 1 model thread"))
int8 = work / "dual-int8.onnx"
for workers, threads in (([0], None), ([0, 1], None), ([1], 1)):
    records.append(end_to_end.run(int8, "openvino-cpu", photos[:100], workers=workers, batch_size=8, threads=threads,
                                  repeats=2, command=f"dual_branch_vit_b16 INT8 openvino, threads {threads or 'default'}"))
out.write_text(json.dumps(records, indent=1))
for record in records:
    print(record["command"])
    print(end_to_end.markdown(record))
