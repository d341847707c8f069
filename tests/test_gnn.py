"""The few-shot GNN (Garcia & Bruna 2018): the half-cost edge function against the dense
formula of the authors' code (outputs, gradients, BatchNorm running statistics), the node
features at 20 ways, and that a 20-way model can fit a fixed episode."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fastadapt.data.episode import Episode
from fastadapt.learners.graph.gnn import EdgeFunction, GNNLearner, _normalize
from fastadapt.models.backbones import Conv4


def dense_edges(edge: EdgeFunction, x: torch.Tensor) -> torch.Tensor:
    """The authors' Wcompute: the MLP on all G x V x V inputs |x_i - x_j|, BatchNorm over all of
    them, softmax over j != i."""
    h = (x.unsqueeze(2) - x.unsqueeze(1)).abs()
    for linear, norm in zip(edge.linears, edge.norms):
        h = F.leaky_relu(_normalize(norm, linear(h)))
    scores = edge.score(h).squeeze(-1)
    self_loops = torch.eye(x.shape[1], dtype=torch.bool)
    return scores.masked_fill(self_loops, float("-inf")).softmax(-1)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("bn", ["inductive", "transductive"])
def test_edge_function_equals_the_dense_formula(bn):
    torch.manual_seed(0)
    edge = EdgeFunction(6, (2, 1.5, 1, 1), bn)
    x = torch.randn(3, 5, 6)
    x[1, 2] = x[1, 4]  # two identical nodes: |x_i - x_j| = 0 off the diagonal too
    weights = torch.randn(3, 5, 5)  # a loss that weighs every adjacency entry differently
    reference = copy.deepcopy(edge)
    x_ref = x.clone().requires_grad_(True)
    x.requires_grad_(True)
    for _ in range(3):  # training-mode calls move the running statistics
        a, a_ref = edge(x), dense_edges(reference, x_ref)
        torch.testing.assert_close(a, a_ref)
        (a * weights).sum().backward()
        (a_ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for (name, p), p_ref in zip(edge.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)
    for (name, b), b_ref in zip(edge.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, b_ref, msg=name)  # running mean, unbiased running var, count
    edge.eval()
    reference.eval()
    torch.testing.assert_close(edge(x), dense_edges(reference, x))


def test_node_features_at_20_ways():
    """Support nodes carry their one-hot label in the right slot, the query the uniform 1/20."""
    torch.manual_seed(0)
    ways = 20
    learner = GNNLearner.build(Conv4(hidden=4, bn="inductive", image_size=8, pooled_blocks=2), ways, node_features=4)
    order = torch.randperm(ways)  # support in shuffled class order
    episode = Episode(torch.randn(ways, 1, 8, 8), order, torch.randn(3, 1, 8, 8), None, ways=ways, shots=1)
    seen = []
    learner.graph.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    learner.eval()
    assert learner.predict(episode).shape == (3, ways)
    (graphs,) = seen
    assert graphs.shape == (3, 1 + ways, 16 + ways)  # one graph per query: query node first
    labels = graphs[..., 16:]
    torch.testing.assert_close(labels[:, 0], torch.full((3, ways), 1 / ways))
    torch.testing.assert_close(labels[:, 1:], F.one_hot(order, ways).float().expand(3, -1, -1))
    z = learner.backbone(episode.support_x).flatten(1)
    torch.testing.assert_close(graphs[:, 1:, :16], z.expand(3, -1, -1))


def test_20_way_model_fits_a_fixed_episode():
    """Capacity and gradient flow at 20 ways: Adam on one fixed episode drives the training loss
    from chance (ln 20) towards zero."""
    torch.manual_seed(0)
    ways = 20
    learner = GNNLearner.build(
        Conv4(hidden=8, image_size=8, pooled_blocks=2), ways, layers=1, node_features=8, edge_ratios=(1,)
    )
    g = torch.Generator().manual_seed(1)
    support = torch.rand(ways, 1, 8, 8, generator=g)
    labels = torch.randperm(ways, generator=g)
    episode = Episode(support, labels, support + 0.1 * torch.randn(ways, 1, 8, 8, generator=g), labels, ways=ways)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss, _metrics = learner.task_loss(episode)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.8 * math.log(ways)
    assert losses[-1] < 0.1
