"""Experiments: train, measure and check the papers' claims."""
