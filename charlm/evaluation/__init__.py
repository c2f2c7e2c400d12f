"""Checkpoints scored on any text, and runs compared side by side. Imports the
floor, data and model."""
