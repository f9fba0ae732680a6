"""Benchmark harness for naiad vs the reference Triton (see benchmarks/README.md).

Standard library only: run.py must work from any Python >= 3.10 without
installing anything into the project's venv. Pieces that need numpy or
onnxruntime (the in-process baseline) run as subprocesses.
"""
