"""Benchmarks: training (benchmarks.train) and generation (benchmarks.generate),
run from the repository root with `.venv/bin/python -m benchmarks.<name>`."""
