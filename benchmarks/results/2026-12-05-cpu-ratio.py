"""Issue 19's CPU goal, measured in rounds: rine_ssca_tiny's serial loop against 2 input workers, alternated.

    python benchmarks/results/2026-12-05-cpu-ratio.py WORK_DIR OUT.json [ROUNDS]

Single runs of either configuration on this shared 2-core machine vary by up to 20 % from one minute to the next
(2026-12-05-cpu-end-to-end.md), more than the difference the goal is about. Here each round times the serial loop
(workers 0, the model on both CPUs: threads 2) and then the pipeline (2 workers, the model on 1 thread), 3 passes
each over the same 200 photo-size JPEGs, so each round's ratio compares two runs a few seconds apart; the record
gives every round and the median. The threads are given explicitly in both runs: torch's thread count is global to
the process, and a run that gives none would inherit the previous run's (the 2026-12-04 script's second model did).
Photos and checkpoint as in 2026-12-04-cpu-end-to-end.py (same seeds), made in WORK_DIR if missing.
"""

import json
import statistics
import sys
from pathlib import Path

import torch

from specdet.benchmarks import end_to_end
from specdet.models import checkpoint, create_model

work, out = Path(sys.argv[1]), Path(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
photos = end_to_end.make_photos(work / "photos", 200, processes=2)
path = work / "rine_ssca_tiny.pth"
torch.manual_seed(0)
checkpoint.save(create_model("rine_ssca_tiny"), path, source="random init, seed 0")
records, ratios = [], []
for number in range(rounds):
    serial = end_to_end.run(path, "torch-fp32", photos, workers=[0], batch_size=8, threads=2,
                            command=f"round {number}: serial, 2 model threads")
    piped = end_to_end.run(path, "torch-fp32", photos, workers=[2], batch_size=8, threads=1,
                           command=f"round {number}: 2 workers, 1 model thread")
    rate = [r["rows"][0]["images_per_s"]["median"] for r in (serial, piped)]
    ratios.append(rate[1] / rate[0])
    same = serial["rows"][0]["identical_probabilities"] and piped["rows"][0]["identical_probabilities"]
    print(f"round {number}: serial {rate[0]:.1f}, 2 workers {rate[1]:.1f} images/s: {ratios[-1]:.2f}x; "
          f"crops byte-identical to the serial loop: {piped['identical_crops']}; probabilities identical "
          f"within each run: {same}", flush=True)
    records += [serial, piped]
summary = {"rounds": rounds, "ratios": [round(r, 3) for r in ratios], "median_ratio": round(statistics.median(ratios), 3),
           "min_ratio": round(min(ratios), 3), "max_ratio": round(max(ratios), 3)}
print(json.dumps(summary))
out.write_text(json.dumps({"summary": summary, "records": records}, indent=1))
