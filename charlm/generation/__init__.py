"""Text from checkpoints: the batch job on Ray Data, the quick sampler, the
SavedModel export and the report. Imports the floor, data and model."""
