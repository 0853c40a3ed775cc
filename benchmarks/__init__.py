"""Benchmarks: `python -m benchmarks.<name>` prints figures and records them in RESULTS.md."""
