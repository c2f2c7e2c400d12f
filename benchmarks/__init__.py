"""Benchmarks, side by side with the seed recipe, run from the repository root
with `.venv/bin/python -m benchmarks.<name>`: throughput, quality, bigcorpus
(training) and generate (generation); BENCHMARKS.md gives the commands."""
