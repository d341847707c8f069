"""Few-shot learning with graph neural networks (Garcia & Bruna, 2018).

Each query gets its own graph (the paper's few-shot setting): node 0 is the query, nodes 1..S
the support examples. A node's features are its image embedding concatenated with its label,
one-hot for support nodes and uniform 1/N for the query (the label is what is unknown). Every
layer first *learns the graph*: an MLP on |x_i - x_j| scores each pair of nodes and a softmax
over the neighbours j != i gives the adjacency A; then a graph convolution mixes each node with
its neighbourhood, x_new = Linear([x, A x]) (the paper's operator family {I, A}), and
concatenates x_new to x (dense connections). The last layer outputs N values per node; the
query node's are the logits.

All Q graphs of an episode share the support set and are run as one batch of Q graphs.
Nothing depends on the order of the nodes except node 0 being the query, so permuting the
support set leaves the logits unchanged and permuting the queries permutes them; a support node
carries its own label, so any number of shots per class works.
Relabelling the classes does *not* permute the logits: labels enter and leave through learned
linear maps, which training has to align with the learned attention. That starts from nothing,
so N-way training first sits at chance, longer for larger N (about 200 steps of one 20-way
episode at Omniglot 20-way; results/notes.md).
Omniglot settings of the authors' code: 2 hidden layers adding 48 features each, edge MLP
widths (2, 1.5, 1, 1) x the node width, leaky ReLU, BatchNorm (no dropout here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...models.backbones import BN_MODES
from ...registry import LEARNERS
from ..base import Learner, classification_loss, parse_args, require


def _batch_norm_1d(features: int, bn: str) -> nn.BatchNorm1d:
    if bn not in BN_MODES:
        raise FastAdaptError(f"gnn: bn must be one of {BN_MODES}, got {bn!r} (model.backbone_args.bn)")
    return nn.BatchNorm1d(features, track_running_stats=(bn == "inductive"))


def _normalize(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the last dim of a tensor of any shape."""
    return bn(x.reshape(-1, x.shape[-1])).view(x.shape)


def _weighted_batch_norm(bn: nn.BatchNorm1d, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`bn` applied to (R, F) rows where row r stands for `weights[r]` identical rows: exactly what
    `bn` gives on the expanded batch (statistics and running-stat update alike), without expanding it.

    weights: (R,) positive counts; their sum n is the batch size `bn` sees (running_var gets the
    unbiased variance, x n / (n - 1), as nn.BatchNorm1d does).
    """
    if not bn.training and bn.track_running_stats:
        return bn(h)  # running statistics: no batch statistics to weight
    n = weights.sum()
    w = (weights / n).unsqueeze(1)
    mean = (w * h).sum(0)
    var = (w * (h - mean).square()).sum(0)  # biased, as used to normalise
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.detach(), momentum)
            bn.running_var.lerp_(var.detach() * n / (n - 1), momentum)
    out = (h - mean) * torch.rsqrt(var + bn.eps)
    return out * bn.weight + bn.bias if bn.affine else out


class EdgeFunction(nn.Module):
    """A (G, V, V) adjacency per graph: row-wise softmax over j != i of MLP(|x_i - x_j|)."""

    def __init__(self, features: int, ratios: tuple[float, ...], bn: str):
        super().__init__()
        widths = [features] + [int(r * features) for r in ratios]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(_batch_norm_1d(b, bn) for b in widths[1:])
        self.score = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(G, V, F) nodes -> (G, V, V) adjacency, rows summing to 1, zero diagonal.

        Same function as running the MLP on all G x V x V inputs |x_i - x_j| (the authors' code),
        at half the cost: |x_i - x_j| = |x_j - x_i|, so it runs on the V(V-1)/2 pairs i < j of
        each graph, each standing for 2 entries in the BatchNorm statistics, plus one row for the
        G x V diagonal inputs, which are all 0 (they enter only the statistics: the softmax
        masks self-loops)."""
        graphs, nodes, features = x.shape
        i, j = torch.triu_indices(nodes, nodes, offset=1, device=x.device)
        pairs = (x[:, i] - x[:, j]).abs().reshape(-1, features)  # (G * P, F)
        h = torch.cat([pairs, pairs.new_zeros(1, features)])
        weights = torch.full((h.shape[0],), 2.0, dtype=x.dtype, device=x.device)
        weights[-1] = graphs * nodes
        for linear, norm in zip(self.linears, self.norms):
            h = F.leaky_relu(_weighted_batch_norm(norm, linear(h), weights))
        scores = self.score(h[:-1]).view(graphs, -1)  # (G, P)
        both = torch.cat([i * nodes + j, j * nodes + i])  # flat indices of (i, j) and (j, i)
        full = scores.new_full((graphs, nodes * nodes), float("-inf")).index_copy(1, both, scores.repeat(1, 2))
        return full.view(graphs, nodes, nodes).softmax(-1)


class GraphConv(nn.Module):
    """x' = Linear([x, A x]) (then BatchNorm for hidden layers)."""

    def __init__(self, features: int, out_features: int, bn: str | None):
        super().__init__()
        self.linear = nn.Linear(2 * features, out_features)
        self.norm = _batch_norm_1d(out_features, bn) if bn else None

    def forward(self, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(torch.cat([x, adjacency @ x], -1))
        return _normalize(self.norm, out) if self.norm is not None else out


class GraphNetwork(nn.Module):
    """`layers` dense [learn edges -> graph conv -> leaky ReLU -> concat] blocks, then a last
    [learn edges -> graph conv] to `ways` outputs per node."""

    def __init__(
        self,
        in_features: int,
        ways: int,
        layers: int = 2,
        node_features: int = 48,
        edge_ratios: tuple[float, ...] = (2, 1.5, 1, 1),
        bn: str = "inductive",
    ):
        super().__init__()
        widths = [in_features + i * node_features for i in range(layers + 1)]
        self.edges = nn.ModuleList(EdgeFunction(w, tuple(edge_ratios), bn) for w in widths)
        self.convs = nn.ModuleList(
            [GraphConv(w, node_features, bn) for w in widths[:-1]] + [GraphConv(widths[-1], ways, None)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(G, V, F) node features -> (G, V, ways) node outputs."""
        for edges, conv in zip(self.edges[:-1], self.convs[:-1]):
            x = torch.cat([x, F.leaky_relu(conv(edges(x), x))], -1)
        return self.convs[-1](self.edges[-1](x), x)


@LEARNERS.register("gnn")
class GNNLearner(Learner):
    @dataclass
    class Args:
        layers: int = 2  # hidden [learn edges -> graph conv] blocks before the readout layer
        node_features: int = 48  # features each hidden block adds to every node (dense connections)
        edge_ratios: tuple[float, ...] = (2, 1.5, 1, 1)  # edge MLP widths, as multiples of the node width

        def __post_init__(self):
            require(self.layers >= 0, "layers", self.layers, ">= 0")
            require(self.node_features >= 1, "node_features", self.node_features, ">= 1")
            require(all(r > 0 for r in self.edge_ratios), "edge_ratios", list(self.edge_ratios), "a list of ratios > 0")

    def __init__(self, backbone: nn.Module, ways: int, **graph_args):
        super().__init__()
        dim = getattr(backbone, "embedding_dim", None)
        if dim is None:
            raise FastAdaptError("gnn needs a backbone with an embedding_dim (e.g. conv4)")
        self.backbone = backbone
        self.ways = ways
        graph_args.setdefault("bn", getattr(backbone, "bn", "inductive"))
        self.graph = GraphNetwork(dim + ways, ways, **graph_args)
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in self.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> GNNLearner:
        args = parse_args(cls.Args, kwargs)
        if not ways:
            raise FastAdaptError("gnn is a classification learner; use an N-way dataset (e.g. omniglot)")
        return cls(
            backbone, ways, layers=args.layers, node_features=args.node_features, edge_ratios=tuple(args.edge_ratios)
        )

    def logits(self, episode: Episode) -> torch.Tensor:
        if episode.ways != self.ways:
            raise FastAdaptError(
                f"gnn was built for {self.ways}-way episodes (its readout has {self.ways} outputs) "
                f"but got {episode.ways}-way; evaluate with --ways {self.ways}"
            )
        n_support, n_query = episode.support_x.shape[0], episode.query_x.shape[0]
        z = self.backbone(torch.cat([episode.support_x, episode.query_x])).flatten(1)
        support = torch.cat([z[:n_support], F.one_hot(episode.support_y, self.ways).to(z.dtype)], -1)
        queries = torch.cat([z[n_support:], z.new_full((n_query, self.ways), 1.0 / self.ways)], -1)
        graphs = torch.cat([queries.unsqueeze(1), support.unsqueeze(0).expand(n_query, -1, -1)], 1)  # (Q, 1+S, F)
        return self.graph(graphs)[:, 0]

    def task_loss(self, episode: Episode):
        return classification_loss(self.logits(episode), episode.query_y)

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(episode)

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.backbone, "bn", "none"),
            "graph": "one query per graph",
            "layers": len(self.graph.convs) - 1,
        }
