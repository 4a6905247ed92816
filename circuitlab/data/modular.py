"""The modular-addition task of Nanda et al. (2023): inputs "a b =" (tokens a, b in 0..p-1 and "=" = p), label
(a + b) mod p, every pair once; a seeded shuffle puts a fraction `frac` of them in the training set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.errors import CircuitlabError


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


@dataclass
class ModularAddition:
    """tokens [p*p, 3] in (a, b) row-major order (row a*p + b), labels [p*p]; train / test: indices into them."""

    p: int
    tokens: torch.Tensor
    labels: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor

    @property
    def equals_token(self) -> int:
        return self.p


def modular_addition(p: int = 113, frac: float = 0.3, seed: int = 0) -> ModularAddition:
    if not is_prime(p) or p < 5:
        raise CircuitlabError(f"p must be a prime >= 5 (got {p}); the Fourier algorithm needs Z/pZ to be a field with "
                              "at least two frequencies, try 113")
    if not 0 < frac < 1:
        raise CircuitlabError(f"frac must be between 0 and 1 (got {frac}); the paper uses 0.3")
    if not 1 <= int(frac * p * p) < p * p:
        raise CircuitlabError(f"frac {frac} of the {p * p} pairs leaves {int(frac * p * p)} for training: choose a "
                              "frac that keeps some pairs for training and some for testing (the paper: 0.3)")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(frac * p * p)  # 3830 of 12769 for p = 113, frac = 0.3, as in the paper
    return ModularAddition(p=p, tokens=tokens, labels=(a + b) % p, train=order[:n_train].sort().values,
                           test=order[n_train:].sort().values)
