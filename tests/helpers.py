"""Tiny synthetic episodes shared by the gradient tests (importable: pytest puts tests/ on sys.path)."""

import torch

from fastadapt.data.episode import Episode


def image_task(seed, ways=3, shots=2, queries=2, size=16):
    """A random `ways`-way image episode, a pure function of `seed`."""
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.rand(ways * shots, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(shots),
        torch.rand(ways * queries, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(queries),
        ways=ways,
        shots=shots,
    )
