"""Data-parallel training on Ray Train: the driver (trainer), one worker's
life (worker) and what they record. Imports the floor, data and model."""
