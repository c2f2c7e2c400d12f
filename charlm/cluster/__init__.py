"""Checks of a Ray cluster before a long run (jobs.doctor): every node's
TensorFlow, CUDA, GPUs, speed and storage access, and an all-reduce across the
GPUs. Imports the floor, data and model."""
