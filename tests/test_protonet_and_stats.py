"""ProtoNet logits against a hand computation; the 95% CI against its formula."""

import math

import torch
from torch import nn

from fastadapt.data.episode import Episode
from fastadapt.evaluate import ci95
from fastadapt.learners.metric.protonet import ProtoNet


def test_protonet_logits_by_hand():
    # Identity embedding: 2 ways x 2 shots in 2-D, class-major.
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]], dtype=torch.float64)
    query = torch.tensor([[1.0, 1.0], [0.0, 5.0]], dtype=torch.float64)
    episode = Episode(support, torch.tensor([0, 0, 1, 1]), query, torch.tensor([0, 1]), ways=2, shots=2)
    learner = ProtoNet(nn.Identity())
    # prototypes: (1, 0) and (0, 5)
    # query (1,1): d0 = 0 + 1 = 1, d1 = 1 + 16 = 17; query (0,5): d0 = 1 + 25 = 26, d1 = 0
    expected = torch.tensor([[-1.0, -17.0], [-26.0, -0.0]], dtype=torch.float64)
    torch.testing.assert_close(learner.predict(episode), expected)
    loss, metrics = learner.task_loss(episode)
    by_hand = -(math.log(math.exp(-1) / (math.exp(-1) + math.exp(-17))) + math.log(1 / (1 + math.exp(-26)))) / 2
    assert math.isclose(loss.item(), by_hand, rel_tol=1e-9)
    assert metrics["accuracy"] == 1.0


def test_protonet_is_stateless_only_without_running_stats():
    from fastadapt.models.backbones import Conv4

    assert ProtoNet(Conv4(bn="transductive")).stateless
    assert not ProtoNet(Conv4(bn="inductive")).stateless


def test_ci95_formula():
    # mean 0.75; sample std of [1, 0, 1, 1] is 0.5; 1.96 * 0.5 / sqrt(4) = 0.49
    assert math.isclose(ci95([1.0, 0.0, 1.0, 1.0]), 0.49, rel_tol=1e-12)
    assert ci95([0.5] * 10) == 0.0
    assert math.isnan(ci95([1.0]))


def test_evaluate_counts_diverged_adaptations():
    """An inner lr far above 2 / curvature makes gradient descent blow up to inf/nan: the evaluator
    must say how many episodes diverged instead of silently reporting a non-finite mean."""
    from fastadapt.evaluate import evaluate
    from fastadapt.learners.optimization.maml import MAML
    from fastadapt.models.backbones import MLP

    g = torch.Generator().manual_seed(0)
    episodes = [
        Episode(
            torch.randn(5, 1, generator=g),
            torch.randn(5, 1, generator=g),
            torch.randn(20, 1, generator=g),
            torch.randn(20, 1, generator=g),
            ways=None,
            shots=5,
        )
        for _ in range(3)
    ]
    torch.manual_seed(0)
    stable = evaluate(
        MAML(MLP(), inner_lr=0.01, eval_inner_steps=10, problem="regression"), episodes, torch.device("cpu")
    )
    assert stable["nonfinite"] == 0 and math.isfinite(stable["mean"])
    exploding = evaluate(
        MAML(MLP(), inner_lr=1e4, eval_inner_steps=10, problem="regression"), episodes, torch.device("cpu")
    )
    assert exploding["nonfinite"] == 3 and not math.isfinite(exploding["mean"])
