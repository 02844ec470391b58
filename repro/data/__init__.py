"""Datasets (DataSpec, real splits) and the unlabeled pools the sampling-based methods draw from."""
