"""Sweeps of training runs on Ray Tune: the search grammar, the sweep, its
table and chart. Imports the floor, data, model and training."""
