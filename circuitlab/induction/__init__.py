"""Induction heads and in-context learning over training (Olsson et al. 2022)."""
