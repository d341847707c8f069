"""MAML meta-gradients against math: a closed form on linear regression, and finite
differences on a small Conv-4 with transductive BatchNorm."""

import math

import pytest
import torch
from helpers import image_task
from torch import nn

from fastadapt.data.episode import Episode
from fastadapt.engine import ForkEngine, SerialEngine
from fastadapt.learners.optimization.maml import FOMAML, MAML, adapt
from fastadapt.models.backbones import Conv4

pytestmark = pytest.mark.usefixtures("float64")


def linear_task(seed, n_support=6, n_query=8, dim=3):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(n_support, dim, generator=g), torch.randn(n_query, dim, generator=g)
    w_true = torch.randn(dim, 1, generator=g)
    return Episode(xs, xs @ w_true, xq, xq @ w_true + 0.1, ways=None, shots=n_support)


def closed_form_meta_gradient(w, task, alpha, steps, second_order):
    """MSE loss L(w) = |Xw - y|^2 / n has gradient H w - b with H = 2/n X^T X, b = 2/n X^T y.
    One step maps w -> (I - alpha H_s) w + alpha b_s, so after k steps the Jacobian is
    (I - alpha H_s)^k and the MAML meta-gradient is its transpose times grad L_q(w_k)."""
    xs, ys, xq, yq = task.support_x, task.support_y, task.query_x, task.query_y
    h_s, b_s = 2 / len(xs) * xs.T @ xs, 2 / len(xs) * xs.T @ ys
    h_q, b_q = 2 / len(xq) * xq.T @ xq, 2 / len(xq) * xq.T @ yq
    w_k = w.clone()
    for _ in range(steps):
        w_k = w_k - alpha * (h_s @ w_k - b_s)
    query_grad = h_q @ w_k - b_q
    if not second_order:
        return query_grad
    jacobian = torch.linalg.matrix_power(torch.eye(len(w)) - alpha * h_s, steps)
    return jacobian.T @ query_grad


@pytest.mark.parametrize("cls,second_order", [(MAML, True), (FOMAML, False)])
def test_two_step_meta_gradient_matches_closed_form_on_linear_regression(cls, second_order):
    model = nn.Linear(3, 1, bias=False)
    learner = cls.build(model, None, inner_steps=2, inner_lr=0.1)
    task = linear_task(0)
    loss, _ = learner.task_loss(task)
    (grad,) = torch.autograd.grad(loss, [model.weight])
    expected = closed_form_meta_gradient(model.weight.detach().T, task, 0.1, 2, second_order)
    torch.testing.assert_close(grad.T, expected, rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_second_order():
    model = nn.Linear(3, 1, bias=False)
    task = linear_task(1)
    grads = []
    for cls in (MAML, FOMAML):
        loss, _ = cls.build(model, None, inner_steps=2, inner_lr=0.1).task_loss(task)
        grads.append(torch.autograd.grad(loss, [model.weight])[0])
    assert (grads[0] - grads[1]).abs().max() > 1e-3


def small_maml(**kwargs):
    torch.manual_seed(0)
    backbone = Conv4(hidden=4, out_features=3, bn="transductive", image_size=16)
    return MAML.build(backbone, 3, **kwargs)


def test_second_order_conv4_meta_gradient_matches_finite_differences():
    """Directional derivatives of the meta-loss F(theta) = L_q(adapt(theta)) by central
    differences (float64) equal <grad F, v> from autograd's double backward."""
    learner = small_maml(inner_steps=2, inner_lr=0.3)
    task = image_task(0)
    params = dict(learner.model.named_parameters())
    loss, _ = learner.task_loss(task)
    grads = torch.autograd.grad(loss, list(params.values()))

    def meta_loss(theta):
        fast = adapt(
            learner.forward_with, theta, task.support_x, task.support_y, learner.loss_fn, 2, 0.3, second_order=False
        )
        return learner.loss_fn(learner.forward_with(fast, task.query_x), task.query_y).item()

    g = torch.Generator().manual_seed(1)
    # The inner gradient of a ReLU/max-pool net jumps where a unit switches, so the meta-loss
    # is only piecewise smooth: the step must be small enough not to cross a switch.
    eps = 1e-6
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        plus = {k: (v + eps * direction[k]).detach().requires_grad_() for k, v in params.items()}
        minus = {k: (v - eps * direction[k]).detach().requires_grad_() for k, v in params.items()}
        numeric = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
        analytic = sum((gr * direction[k]).sum() for gr, k in zip(grads, params)).item()
        assert math.isclose(analytic, numeric, rel_tol=1e-5, abs_tol=1e-9), (analytic, numeric)


def test_learned_inner_lr_gets_the_right_gradient():
    """d F / d alpha by finite differences equals the autograd gradient of the learned lr."""
    model = nn.Linear(3, 1, bias=False)
    learner = MAML.build(model, None, inner_steps=2, inner_lr=0.1, learn_inner_lr=True)
    task = linear_task(2)
    loss, _ = learner.task_loss(task)
    (grad_lr,) = torch.autograd.grad(loss, [learner.inner_lr])

    def f(alpha):
        with torch.no_grad():
            learner.inner_lr.fill_(alpha)
        return learner.task_loss(task)[0].item()

    numeric = (f(0.1 + 1e-6) - f(0.1 - 1e-6)) / 2e-6
    assert math.isclose(grad_lr.item(), numeric, rel_tol=1e-6)


def test_fork_engine_gives_the_serial_meta_gradient():
    learner = small_maml(inner_steps=1, inner_lr=0.4)
    tasks = [image_task(s) for s in range(5)]
    SerialEngine().meta_gradient(learner, tasks)
    serial = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad(set_to_none=True)
    engine = ForkEngine(learner, workers=2)
    try:
        metrics = engine.meta_gradient(learner, tasks)
    finally:
        engine.close()
    assert len(metrics) == 5
    for a, b in zip(serial, (p.grad for p in learner.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_predict_adapts_without_touching_the_model():
    learner = small_maml(inner_steps=1, inner_lr=0.4, eval_inner_steps=3)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    task = image_task(3)
    with torch.no_grad():  # evaluation code may run under no_grad; adaptation must still work
        logits = learner.predict(task)
    assert logits.shape == (6, 3) and not logits.requires_grad
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in learner.parameters())
