"""Matching, Relation and Siamese networks and the graph learner against hand computations and
symmetry properties; the Conv4 feature-map option; the presets build and run one step."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.config import load_config
from fastadapt.data.episode import Episode
from fastadapt.learners import LEARNERS, build_learner
from fastadapt.learners.graph.gnn import GNNLearner
from fastadapt.learners.metric.matching import MatchingNetworks, QueryAttentionLSTM
from fastadapt.learners.metric.relation import RelationModule, RelationNetwork
from fastadapt.learners.metric.siamese import SiameseNetwork, balanced_pairs, contrastive_loss, koch_logits
from fastadapt.models.backbones import Conv4

pytestmark = pytest.mark.usefixtures("float64")


def episode_2d(ways=2, shots=2):
    # Identity embedding; class 0 = (1,0), (1,1); class 1 = (0,1), (-1,0); queries (1,0), (0,2).
    support = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    return Episode(support, torch.tensor([0, 0, 1, 1]), query, torch.tensor([0, 1]), ways=ways, shots=shots)


# ------------------------------------------------------------------------------ matching


def test_matching_attention_and_distribution_by_hand():
    episode = episode_2d()
    learner = MatchingNetworks(nn.Identity())
    # Query (1,0): cosines with the support = 1, 1/sqrt2, 0, -1.
    # Query (0,2): cosines = 0, 1/sqrt2, 1, 0.
    r = 1 / math.sqrt(2)
    cosines = [[1, r, 0, -1], [0, r, 1, 0]]
    expected = []
    for row in cosines:
        a = [math.exp(c) for c in row]
        total = sum(a)
        expected.append([(a[0] + a[1]) / total, (a[2] + a[3]) / total])
    probs = learner.predict(episode).exp()
    torch.testing.assert_close(probs, torch.tensor(expected))
    loss, metrics = learner.task_loss(episode)
    assert math.isclose(loss.item(), -(math.log(expected[0][0]) + math.log(expected[1][1])) / 2, rel_tol=1e-12)
    assert metrics["accuracy"] == 1.0


def test_matching_scale_sharpens_attention():
    episode = episode_2d()
    learner = MatchingNetworks(nn.Identity(), scale=10.0)
    a = [math.exp(10 * c) for c in (1, 1 / math.sqrt(2), 0, -1)]
    torch.testing.assert_close(learner.predict(episode).exp()[0, 0], torch.tensor((a[0] + a[1]) / sum(a)))


def test_fce_attention_lstm_first_step_by_hand():
    # One read step from h0 = c0 = 0: the read is the mean of g(S) (uniform attention), and
    # the LSTM cell gates are sigma/tanh of W_ih [f'(x), r] + b (W_hh h0 = 0).
    torch.manual_seed(0)
    dim = 3
    att = QueryAttentionLSTM(dim, steps=1)
    queries, support = torch.randn(2, dim), torch.randn(4, dim)
    read = support.mean(0).expand(2, dim)
    gates = torch.cat([queries, read], -1) @ att.cell.weight_ih.T + att.cell.bias_ih + att.cell.bias_hh
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c) + queries
    torch.testing.assert_close(att(queries, support), h)


def test_fce_gradients_reach_every_parameter():
    torch.manual_seed(0)
    backbone = nn.Linear(2, 2)
    backbone.embedding_dim = 2
    learner = MatchingNetworks(backbone, fce=True, fce_steps=3)
    loss, _ = learner.task_loss(episode_2d())
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in learner.parameters()
    )


# ------------------------------------------------------------------------------ relation


def hand_relation_module():
    """Feature maps of 1 channel, 4x4. Both convolutions copy their input's centre tap (block 1
    adds the class and query channels), BatchNorm is the identity (eval mode, fresh running
    statistics, eps 0), so the module computes sigmoid(w2 relu(w1 m + b1) + b2) with
    m = relu(max over the 4x4 of (class map + query map))."""
    module = RelationModule((1, 4, 4), hidden=1, fc_hidden=1, bn="inductive")
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = 1.0
            conv.bias.zero_()
        module.fc1.weight.fill_(2.0)
        module.fc1.bias.fill_(-1.0)
        module.fc2.weight.fill_(0.5)
        module.fc2.bias.fill_(0.25)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    return module.eval()


def test_relation_scores_and_mse_loss_by_hand():
    # 2 ways x 2 shots of 1x4x4 "feature maps" (identity embedding): a class map is the sum of its shots.
    g = torch.Generator().manual_seed(0)
    support = torch.rand(4, 1, 4, 4, generator=g) - 0.3
    query = torch.rand(3, 1, 4, 4, generator=g) - 0.3
    episode = Episode(support, torch.tensor([0, 0, 1, 1]), query, torch.tensor([0, 1, 1]), ways=2, shots=2)
    learner = RelationNetwork(nn.Identity(), hand_relation_module()).eval()
    class_maps = [support[0] + support[1], support[2] + support[3]]
    expected = torch.empty(3, 2)
    for q in range(3):
        for c in range(2):
            m = max(0.0, (class_maps[c] + query[q]).max().item())
            hidden = max(0.0, 2.0 * m - 1.0)
            expected[q, c] = 1 / (1 + math.exp(-(0.5 * hidden + 0.25)))
    torch.testing.assert_close(learner.predict(episode), expected)
    loss, _ = learner.task_loss(episode)
    targets = [[1, 0], [0, 1], [0, 1]]
    mse = sum((expected[q, c].item() - targets[q][c]) ** 2 for q in range(3) for c in range(2)) / 6
    assert math.isclose(loss.item(), mse, rel_tol=1e-12)


def test_relation_builds_on_conv4_feature_maps():
    backbone = Conv4(hidden=8, bn="transductive", pooled_blocks=2, flatten=False)
    assert backbone.feature_shape == (8, 7, 7)
    assert backbone(torch.rand(3, 1, 28, 28)).shape == (3, 8, 7, 7)
    learner = RelationNetwork.build(backbone, 3, hidden=6)
    assert learner.relation.blocks[0].in_channels == 16  # class and query maps concatenated
    assert (
        learner.relation.fc1.in_features == 6 * 1 * 1
    )  # 7 -> 3 -> 1 after two poolings  # 7 -> 3 -> 1 after two poolings
    with pytest.raises(Exception, match="feature maps"):
        RelationNetwork.build(Conv4(hidden=8), 3)


def test_relation_unequal_shots_are_summed_at_the_average_shot_count():
    """Class maps are sums over each class's shots, rescaled to S / N shots when the shots are
    unequal: with copies of one image per class, [x0, x1 x3, x2 x2] scores as [x0 x2, x1 x2, x2 x2]."""
    torch.manual_seed(0)
    learner = RelationNetwork.build(
        Conv4(hidden=4, bn="inductive", image_size=16, pooled_blocks=2, flatten=False), 3, hidden=4, fc_hidden=3
    ).eval()
    images, queries = torch.rand(3, 1, 16, 16), torch.rand(4, 1, 16, 16)
    unequal = torch.tensor([1, 2, 1, 0, 2, 1])  # shuffled: 1, 3 and 2 shots
    equal = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = [learner.predict(Episode(images[y], y, queries, None, ways=3)) for y in (unequal, equal)]
    torch.testing.assert_close(scores[0], scores[1])


def test_conv4_default_is_unchanged():
    # The default keeps its layer layout (state-dict keys) and its 64-d output on 28x28.
    backbone = Conv4()
    assert [k for k in backbone.state_dict() if k.endswith("weight")][:3] == [
        "features.0.weight",
        "features.1.weight",
        "features.4.weight",
    ]
    assert backbone(torch.rand(2, 1, 28, 28)).shape == (2, 64)


# ------------------------------------------------------------------------------ siamese


def test_contrastive_loss_formula_by_hand():
    z1 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    z2 = torch.tensor([[3.0, 4.0], [3.0, 4.0], [1.0, 0.0]])
    same = torch.tensor([True, False, False])
    # d = 5, 5, 1; margin 6: similar 25/2; dissimilar (6-5)^2/2 = 0.5; dissimilar (6-1)^2/2 = 12.5
    assert math.isclose(contrastive_loss(z1, z2, same, 6.0).item(), (12.5 + 0.5 + 12.5) / 3, rel_tol=1e-12)
    # beyond the margin a dissimilar pair costs nothing
    assert contrastive_loss(z1[:1], z2[:1], torch.tensor([False]), 2.0).item() == 0.0


def test_koch_score_by_hand():
    linear = nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0]]))
        linear.bias.fill_(0.5)
    z1, z2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0]])
    # |z1 - z2| = (2, 1): 1*2 - 2*1 + 0.5 = 0.5
    logit = koch_logits(z1, z2, linear)
    assert math.isclose(torch.sigmoid(logit).item(), 1 / (1 + math.exp(-0.5)), rel_tol=1e-12)
    bce = F.binary_cross_entropy_with_logits(logit, torch.tensor([1.0]))
    assert math.isclose(bce.item(), -math.log(1 / (1 + math.exp(-0.5))), rel_tol=1e-12)


def test_balanced_pairs():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])  # 3 ways: 2 shots + 1 query each
    first, second, same = balanced_pairs(labels, 3)
    assert int(same.sum()) == int((~same).sum()) == 3 * 3  # 3 pairs per class of 3 examples
    torch.testing.assert_close(labels[first] == labels[second], same)
    positives = {tuple(sorted(p)) for p in zip(first[same].tolist(), second[same].tolist())}
    assert positives == {(0, 1), (0, 6), (1, 6), (2, 3), (2, 7), (3, 7), (4, 5), (4, 8), (5, 8)}
    counts = torch.bincount(labels[second[~same]], minlength=3)
    assert counts.tolist() == [3, 3, 3]  # every class is a negative partner equally often


@pytest.mark.parametrize("loss", ["koch", "contrastive"])
def test_siamese_predicts_the_best_matching_support_example(loss):
    # 3 ways x 2 shots, identity embedding; contrastive similarity = -distance, and a Koch head
    # with alpha = (-1, -1) scores -L1 distance, so the nearest support example wins.
    support = torch.tensor([[0.0, 0.0], [5.0, 5.0], [1.0, 0.0], [9.0, 9.0], [0.0, 3.0], [7.0, 0.0]])
    query = torch.tensor([[0.9, 0.2], [0.1, 2.5], [4.8, 5.1], [6.9, 0.2]])
    episode = Episode(support, torch.tensor([0, 0, 1, 1, 2, 2]), query, torch.tensor([1, 2, 0, 2]), ways=3, shots=2)
    backbone = nn.Identity()
    backbone.embedding_dim = 2
    learner = SiameseNetwork(backbone, loss=loss)
    if loss == "koch":
        with torch.no_grad():
            learner.distance_weights.weight.fill_(-1.0)
            learner.distance_weights.bias.zero_()
    logits = learner.predict(episode)
    assert logits.argmax(-1).tolist() == [1, 2, 0, 2]
    if loss == "contrastive":  # class 1's logit for query 0: -min(d to (1,0), d to (9,9))
        assert math.isclose(logits[0, 1].item(), -math.hypot(0.1, 0.2), rel_tol=1e-9)


# ------------------------------------------------------------------------------ gnn


def gnn_episode(ways=3, shots=2, queries=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return Episode(
        torch.randn(ways * shots, 1, 8, 8, generator=g),
        labels.repeat_interleave(shots),
        torch.randn(ways * queries, 1, 8, 8, generator=g),
        labels.repeat_interleave(queries),
        ways=ways,
        shots=shots,
    )


@pytest.mark.parametrize("training", [True, False])
def test_gnn_is_equivariant_to_support_and_query_order(training):
    torch.manual_seed(0)
    learner = GNNLearner.build(Conv4(hidden=4, bn="inductive", image_size=8, pooled_blocks=2), 3, node_features=5)
    learner.train(training)
    episode = gnn_episode()
    support_perm, query_perm = torch.tensor([3, 0, 5, 1, 4, 2]), torch.tensor([4, 2, 5, 0, 3, 1])
    permuted = Episode(
        episode.support_x[support_perm],
        episode.support_y[support_perm],
        episode.query_x[query_perm],
        episode.query_y[query_perm],
        ways=3,
        shots=2,
    )
    logits = learner.logits(episode)
    assert logits.shape == (6, 3)
    torch.testing.assert_close(learner.logits(permuted), logits[query_perm])
    # and one query's logits do not depend on the other queries (one graph per query), in eval mode
    if not training:
        single = Episode(
            episode.support_x, episode.support_y, episode.query_x[:1], episode.query_y[:1], ways=3, shots=2
        )
        torch.testing.assert_close(learner.logits(single), logits[:1])


def test_gnn_adjacency_is_a_softmax_over_other_nodes():
    torch.manual_seed(0)
    learner = GNNLearner.build(Conv4(hidden=4, bn="transductive", image_size=8, pooled_blocks=2), 3)
    x = torch.randn(2, 5, 4 * 2 * 2 + 3)
    adjacency = learner.graph.edges[0](x)
    torch.testing.assert_close(adjacency.sum(-1), torch.ones(2, 5))
    assert (adjacency.diagonal(dim1=1, dim2=2) == 0).all()  # no self-loops: the I operator covers them


def test_gnn_rejects_other_ways():
    learner = GNNLearner.build(Conv4(hidden=4, image_size=8, pooled_blocks=2), 3)
    with pytest.raises(Exception, match="3-way"):
        learner.logits(gnn_episode(ways=2))


# ------------------------------------------------------------------------------ presets

PRESETS = [
    f"{name}-omniglot-{shape}" for name in ("matching", "relation", "siamese", "gnn") for shape in ("5w1s", "20w1s")
] + ["siamese-omniglot-lake"]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_build_and_take_a_training_step(preset):
    torch.set_default_dtype(torch.float32)
    config = load_config(preset)
    assert config.learner.name in LEARNERS and config.reference.get("accuracy")
    learner = build_learner(config, (1, 28, 28), channels_last=True)
    e = config.train.episodes
    small = min(e.ways, 5) if config.learner.name != "gnn" else e.ways
    episode = Episode(
        torch.rand(small * e.shots, 1, 28, 28),
        torch.arange(small).repeat_interleave(e.shots),
        torch.rand(small, 1, 28, 28),
        torch.arange(small),
        ways=small,
        shots=e.shots,
    )
    loss, metrics = learner.task_loss(episode)
    loss.backward()
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
