"""Sampled sentence pairs for contrastive fine-tuning (SetFit's recipe, Tunstall et al. 2022).

SetFit's `num_iterations` mode makes, per round, one positive pair (same label) and one negative
pair (different labels) for every support sentence. All pairs of 150 intents x 10 shots would be
1500 * 1499 / 2 = 1.1 million; here each pair is drawn directly, in O(pairs) time and memory,
never enumerating the pair set.
"""

from __future__ import annotations

import torch

from ..errors import FastAdaptError


def sample_pairs(
    labels: torch.Tensor, iterations: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`iterations` rounds of one positive and one negative partner for each of the N items.

    labels: (N,) int64 with at least two distinct values. Returns (first, second, target), each of
    length 2 * N * iterations: `first[k]`, `second[k]` index the items; target is 1.0 for the
    N * iterations positive pairs (same label; a different item whenever its class has one) and
    0.0 for the N * iterations negative pairs (uniform over the items of other labels).
    Raises FastAdaptError for fewer than two labels or iterations < 1.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = len(labels)
    if iterations < 1:
        raise FastAdaptError(f"pair iterations = {iterations} is out of range; it must be >= 1")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise FastAdaptError("contrastive pairs need support sentences of at least two labels")
    order = torch.argsort(inverse, stable=True)  # items grouped by class
    starts = torch.cumsum(counts, 0) - counts  # where each class begins in `order`
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[inverse[order]]  # position of each item within its class
    anchors = torch.arange(n).repeat(iterations)
    cls = inverse[anchors]
    size, start = counts[cls], starts[cls]
    # Positive: uniform over the other members of the class (skip the anchor's own rank).
    u = (torch.rand(len(anchors), generator=generator) * (size - 1).clamp_min(1)).long()
    u = torch.minimum(u, (size - 2).clamp_min(0))
    pos_rank = torch.where(size > 1, u + (u >= rank[anchors]).long(), rank[anchors])
    positive = order[start + pos_rank]
    # Negative: uniform over the n - size items outside the class, then skip the class's block.
    v = (torch.rand(len(anchors), generator=generator) * (n - size)).long()
    v = torch.minimum(v, n - size - 1)
    negative = order[torch.where(v < start, v, v + size)]
    first = torch.cat([anchors, anchors])
    second = torch.cat([positive, negative])
    target = torch.cat([torch.ones(len(anchors)), torch.zeros(len(anchors))])
    return first, second, target
