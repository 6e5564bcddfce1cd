"""NNCF (OpenVINO's own post-training INT8) against specdet's QDQ INT8 file, both run by OpenVINO on the CPU.

Usage: python nncf_vs_qdq.py FP32.onnx QDQ-INT8.onnx IMAGES_DIR OUT.json [--iters N]

1. NNCF quantises the FP32 file (nncf.quantize, model_type TRANSFORMER, default preset, calibrated on the same
   15 scikit-image photos detect-export --precision int8 uses), saved as OpenVINO IR next to OUT.json.
2. Latency, batch 1 and 8, interleaved call by call, median of N: OpenVINO f32 on the FP32 file, OpenVINO
   bf16 on the FP32 file, OpenVINO on the QDQ file (f32 and bf16 hints), OpenVINO on the NNCF IR (f32, bf16).
3. Fidelity on IMAGES_DIR against ONNX Runtime FP32 on the FP32 file: largest and mean probability difference,
   decision agreement at the manifest's threshold.
"""
import json
import platform
import sys
import time
from pathlib import Path

import nncf
import numpy as np
import onnxruntime as ort
import openvino as ov

from specdet.benchmarks import machine
from specdet.images import collect_images, sample_photos
from specdet.manifest import Manifest
from specdet.runtime.preprocess import preprocess

fp32, qdq, images, out = sys.argv[1:5]
iters = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 10
m = Manifest.read(fp32)
calib = preprocess([a for _, a in sample_photos()], m.preprocessing).astype(np.float32)
core = ov.Core()
t0 = time.time()
q = nncf.quantize(core.read_model(fp32), nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
ir = Path(out).with_suffix(".nncf.xml")
ov.save_model(q, str(ir))
nncf_seconds = time.time() - t0


def cfg(precision):
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}


paths = {"openvino f32, FP32 file": (fp32, "f32"), "openvino bf16, FP32 file": (fp32, "bf16"),
         "openvino f32, QDQ INT8 file": (qdq, "f32"), "openvino bf16, QDQ INT8 file": (qdq, "bf16"),
         "openvino f32, NNCF INT8 IR": (str(ir), "f32"), "openvino bf16, NNCF INT8 IR": (str(ir), "bf16")}
compiled = {k: core.compile_model(p, "CPU", cfg(h)) for k, (p, h) in paths.items()}
latency = {}
for batch in (1, 8):
    x = calib[:batch] if batch <= len(calib) else np.concatenate([calib] * 2)[:batch]
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    for r in requests.values():
        r.infer({"image": x})
        r.infer({"image": x})
    times = {k: [] for k in requests}
    for i in range(iters):
        order = list(requests)[i % len(requests):] + list(requests)[:i % len(requests)]
        for k in order:
            s = time.perf_counter()
            requests[k].infer({"image": x})
            times[k].append(time.perf_counter() - s)
    latency[batch] = {k: round(1000 * float(np.median(v)), 2) for k, v in times.items()}
    print(batch, latency[batch], flush=True)
files = collect_images([Path(images)])
ref_session = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"])
def scores(fn):
    return np.concatenate([fn(preprocess([str(f) for f in files[i:i + 8]], m.preprocessing).astype(np.float32))
                           for i in range(0, len(files), 8)]).ravel()
ref = scores(lambda x: ref_session.run(["probability"], {"image": x})[0])
fidelity = {}
for k, c in compiled.items():
    if "FP32 file" in k and "f32" in k:
        continue
    p = scores(lambda x, c=c: c({"image": x})["probability"])
    d = np.abs(p - ref)
    fidelity[k] = {"images": len(files), "max_prob_diff": float(d.max()), "mean_prob_diff": float(d.mean()),
                   "decision_agreement": float(np.mean((p > m.threshold) == (ref > m.threshold)))}
    print(k, fidelity[k], flush=True)
record = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "machine": machine.describe(), "versions": {"nncf": nncf.__version__, "openvino": ov.get_version(),
          "onnxruntime": ort.__version__, "python": platform.python_version()},
          "model": m.architecture, "nncf_seconds": round(nncf_seconds, 1), "iters": iters,
          "latency_median_ms": latency, "fidelity_vs_onnxruntime_fp32": fidelity}
Path(out).write_text(json.dumps(record, indent=2))
