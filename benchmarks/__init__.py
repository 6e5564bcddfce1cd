"""Benchmarks: latency and accuracy of every backend against the PyTorch reference (``detect-bench``).

bench.py (the run, one library call), variants.py (what runs: backend + options, a registry;
torch_variants.py and cpp_variant.py hold the runners it adds), loading.py + variant_facts.py (a variant
loaded, and the facts of what exactly runs),
timing.py (warm-up, interleaved timing, clocks, memory probes), stats.py (percentiles, summaries),
accuracy.py (differences from the reference, AUC/AP), images.py (the image set), flops.py and
machine.py (FLOPs per image, the CPU's peak, what the machine is), report.py (JSON, Markdown, PNG;
schema.json describes the JSON), progress.py, cli.py. results/ holds dated records of real runs.
"""

from specdet._shadowing import hand_over

hand_over(__name__)  # imported as a bare `benchmarks` from the repository root: the installed package instead
