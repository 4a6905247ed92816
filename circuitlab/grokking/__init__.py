"""Grokking analyses (Nanda et al. 2023): the Fourier basis and algorithm, progress measures, ablations."""
