"""MAML++ options, inner-loop checkpointing, ANIL, Meta-SGD, Reptile and the vmapped path,
checked against math: closed forms, hand-written recurrences and central finite differences."""

import math

import pytest
import torch
from helpers import image_task
from torch import nn

from fastadapt.config import load_config
from fastadapt.data.episode import Episode
from fastadapt.errors import FastAdaptError
from fastadapt.learners import build_learner
from fastadapt.learners.optimization.anil import ANIL
from fastadapt.learners.optimization.inner_loop import msl_weights
from fastadapt.learners.optimization.maml import FOMAML, MAML, adapt
from fastadapt.learners.optimization.metasgd import MetaSGD
from fastadapt.learners.optimization.reptile import Reptile, minibatch_indices
from fastadapt.models.backbones import MLP, Conv4

pytestmark = pytest.mark.usefixtures("float64")


def linear_task(seed, n_support=6, n_query=8, dim=3):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(n_support, dim, generator=g), torch.randn(n_query, dim, generator=g)
    w_true = torch.randn(dim, 1, generator=g)
    return Episode(xs, xs @ w_true, xq, xq @ w_true + 0.1, ways=None, shots=n_support)


def conv_learner(cls=MAML, **kwargs):
    torch.manual_seed(0)
    return cls.build(Conv4(hidden=4, out_features=3, bn="transductive", image_size=16), 3, **kwargs)


def meta_grads(learner, task):
    learner.zero_grad(set_to_none=True)
    learner.task_loss(task)[0].backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def directional_check(learner, task, n_directions=2, eps=1e-6, rel=1e-5):
    """<grad F, v> from autograd equals (F(θ+εv) - F(θ-εv)) / 2ε for random directions v over
    every learnable tensor (weights, learned lrs, per-step BN). ReLU/max-pool make F piecewise
    smooth, so ε is small enough not to cross a switch."""
    grads = meta_grads(learner, task)
    params = dict(learner.named_parameters())
    assert set(grads) == {n for n, p in params.items() if p.requires_grad}
    g = torch.Generator().manual_seed(1)
    for _ in range(n_directions):
        v = {n: torch.randn(params[n].shape, generator=g) for n in grads}
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for n in v:
                    params[n].add_(sign * eps * v[n])
            values.append(learner.task_loss(task)[0].item())
            with torch.no_grad():
                for n in v:
                    params[n].sub_(sign * eps * v[n])
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum((grads[n] * v[n]).sum() for n in v).item()
        assert math.isclose(analytic, numeric, rel_tol=rel, abs_tol=1e-9), (analytic, numeric)


# -- MAML++ ---------------------------------------------------------------------------------


def test_msl_weights_follow_antoniou_schedule():
    assert msl_weights(5, 0.0, 0.1) == pytest.approx([0.2] * 5)
    # halfway through the MSL phase: non-final 1/5 - 0.5/5, final 1/5 + 0.5 * 4/5
    assert msl_weights(5, 0.05, 0.1) == pytest.approx([0.1] * 4 + [0.6])
    # near its end the non-final weights sit at the floor 0.03/5 and the final takes the rest
    assert msl_weights(5, 0.099, 0.1) == pytest.approx([0.006] * 4 + [1 - 4 * 0.006])
    assert msl_weights(5, 0.1, 0.1) == [0, 0, 0, 0, 1.0]
    assert sum(msl_weights(5, 0.03, 0.1)) == pytest.approx(1.0)


def test_multi_step_loss_is_the_weighted_sum_of_per_step_query_losses():
    model = nn.Linear(3, 1, bias=False)
    learner = MAML.build(model, None, inner_steps=3, inner_lr=0.1, multi_step_loss=True, msl_fraction=0.5)
    learner.on_step(1, 10)  # progress 0.1: weights msl_weights(3, 0.1, 0.5)
    task = linear_task(0)
    w = msl_weights(3, 0.1, 0.5)
    forward = lambda p, x: x @ p["weight"].T  # noqa: E731
    expected = 0.0
    for k in range(3):
        fast = adapt(
            forward,
            {"weight": model.weight},
            task.support_x,
            task.support_y,
            nn.functional.mse_loss,
            k + 1,
            0.1,
            second_order=True,
        )
        expected = expected + w[k] * nn.functional.mse_loss(forward(fast, task.query_x), task.query_y)
    loss, _ = learner.task_loss(task)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(
        torch.autograd.grad(loss, [model.weight])[0], torch.autograd.grad(expected, [model.weight])[0]
    )


def closed_form_meta_gradient(w, task, alpha, steps, second_order):
    """Linear regression: one step maps w -> (I - αH_s) w + α b_s (see tests/test_maml.py)."""
    xs, ys, xq, yq = task.support_x, task.support_y, task.query_x, task.query_y
    h_s, b_s = 2 / len(xs) * xs.T @ xs, 2 / len(xs) * xs.T @ ys
    h_q, b_q = 2 / len(xq) * xq.T @ xq, 2 / len(xq) * xq.T @ yq
    w_k = w.clone()
    for _ in range(steps):
        w_k = w_k - alpha * (h_s @ w_k - b_s)
    query_grad = h_q @ w_k - b_q
    jacobian = torch.linalg.matrix_power(torch.eye(len(w)) - alpha * h_s, steps)
    return jacobian.T @ query_grad if second_order else query_grad


def test_derivative_order_annealing_switches_to_second_order():
    model = nn.Linear(3, 1, bias=False)
    learner = MAML.build(model, None, inner_steps=2, inner_lr=0.1, first_order_fraction=0.5)
    task = linear_task(1)
    for step, second_order in ((0, False), (4, False), (5, True), (9, True)):
        learner.on_step(step, 10)
        (grad,) = torch.autograd.grad(learner.task_loss(task)[0], [model.weight])
        expected = closed_form_meta_gradient(model.weight.detach().T, task, 0.1, 2, second_order)
        torch.testing.assert_close(grad.T, expected, rtol=1e-10, atol=1e-12)


def test_lslr_learning_rates_match_finite_differences():
    model = nn.Linear(3, 1)
    learner = MAML.build(model, None, inner_steps=2, inner_lr=0.1, lslr=True)
    with torch.no_grad():
        learner.lslr["weight"].copy_(torch.tensor([0.1, 0.05]))
    task = linear_task(2)
    grads = meta_grads(learner, task)
    for key, lrs in learner.lslr.items():
        for k in range(2):
            values = []
            for delta in (1e-6, -1e-6):
                with torch.no_grad():
                    lrs[k] += delta
                values.append(learner.task_loss(task)[0].item())
                with torch.no_grad():
                    lrs[k] -= delta
            assert math.isclose(grads[f"lslr.{key}"][k].item(), (values[0] - values[1]) / 2e-6, rel_tol=1e-6)


def test_mamlpp_conv4_meta_gradient_matches_finite_differences():
    """All options at once (MSL, LSLR, per-step BN, second order): every tensor, per-step BN
    gamma/beta and lrs included, gets the derivative of the weighted multi-step meta-loss."""
    learner = conv_learner(inner_steps=2, inner_lr=0.3, multi_step_loss=True, lslr=True, per_step_bn=True)
    learner.on_step(0, 100)
    assert all(not p.requires_grad for n, p in learner.model.named_parameters() if n.startswith("features.1."))
    directional_check(learner, image_task(0))


def test_per_step_bn_uses_the_affine_of_each_step():
    learner = conv_learner(inner_steps=2, inner_lr=0.3, per_step_bn=True)
    task = image_task(1)
    grads = meta_grads(learner, task)
    # Without MSL only the last step's query forward and both support forwards use BN, so both
    # rows get a gradient; zeroing the step-0 affine changes the meta-loss.
    assert all(grads[f"bn_steps.{k}"].abs().sum(1).min() > 0 for k in learner.bn_steps.keys())
    before = learner.task_loss(task)[0].item()
    with torch.no_grad():
        learner.bn_steps["features-1-weight"][0].zero_()
    assert learner.task_loss(task)[0].item() != before


# -- checkpointing --------------------------------------------------------------------------


def saved_bytes(learner, task):
    """Bytes autograd keeps for the backward, outside checkpointed regions."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        learner.task_loss(task)
    return total[0]


@pytest.mark.parametrize("options", [{}, {"lslr": True, "per_step_bn": True, "multi_step_loss": True}])
def test_checkpointed_inner_loop_gives_the_plain_meta_gradient_with_less_memory(options):
    learner = conv_learner(inner_steps=4, inner_lr=0.3, **options)
    learner.on_step(0, 100)
    task = image_task(2)
    plain, plain_bytes = meta_grads(learner, task), saved_bytes(learner, task)
    learner.checkpoint_inner = True
    checkpointed, checkpointed_bytes = meta_grads(learner, task), saved_bytes(learner, task)
    assert plain.keys() == checkpointed.keys()
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-10, atol=1e-12)
    assert checkpointed_bytes < plain_bytes / 2, (checkpointed_bytes, plain_bytes)


# -- ANIL -----------------------------------------------------------------------------------


def test_anil_adapts_only_the_head():
    torch.manual_seed(0)
    learner = ANIL.build(Conv4(hidden=4, out_features=3, image_size=16), 3, inner_steps=2, inner_lr=0.3)
    body_before = {n: p.clone() for n, p in learner.body.named_parameters()}
    task = image_task(3)
    fast = learner.fast_weights(task, 2, second_order=False)
    assert set(fast) == {"weight", "bias"} and fast["weight"].shape == (3, 4)
    assert not torch.equal(fast["weight"], learner.model.weight)
    learner.task_loss(task)[0].backward()
    assert all(torch.equal(p, body_before[n]) for n, p in learner.body.named_parameters())
    assert all(p.grad is not None for p in learner.body.parameters())


def test_anil_meta_gradient_matches_a_hand_written_meta_loss():
    """Regression head w, b on features f = body(x); one inner step of MSE has the closed form
    grad_w = 2/n r^T f, grad_b = 2/n sum r with r = f w^T + b - y. Central differences of that
    hand-written meta-loss over every parameter (body too) equal ANIL's autograd gradient."""
    torch.manual_seed(0)
    learner = ANIL.build(MLP(3, (5,), 1), None, inner_steps=1, inner_lr=0.2)
    task = linear_task(4)
    names = [n for n, _ in learner.named_parameters()]
    grads = meta_grads(learner, task)

    def hand_meta_loss(p):
        body = lambda x: torch.relu(x @ p["body.0.weight"].T + p["body.0.bias"])  # noqa: E731
        fs, fq = body(task.support_x), body(task.query_x)
        r = fs @ p["model.weight"].T + p["model.bias"] - task.support_y
        w = p["model.weight"] - 0.2 * 2 / len(fs) * r.T @ fs
        b = p["model.bias"] - 0.2 * 2 / len(fs) * r.sum(0)
        return ((fq @ w.T + b - task.query_y) ** 2).mean().item()

    params = {n: p.detach().clone() for n, p in learner.named_parameters()}
    assert hand_meta_loss(params) == pytest.approx(learner.task_loss(task)[0].item(), rel=1e-12)
    for n in names:
        for i in range(params[n].numel()):
            plus, minus = dict(params), dict(params)
            plus[n], minus[n] = params[n].clone(), params[n].clone()
            plus[n].view(-1)[i] += 1e-6
            minus[n].view(-1)[i] -= 1e-6
            numeric = (hand_meta_loss(plus) - hand_meta_loss(minus)) / 2e-6
            assert math.isclose(grads[n].view(-1)[i].item(), numeric, rel_tol=1e-6, abs_tol=1e-9), (n, i)


# -- Meta-SGD -------------------------------------------------------------------------------


def test_metasgd_step_and_lr_gradient_match_finite_differences():
    model = nn.Linear(3, 1)
    learner = MetaSGD.build(model, None, inner_steps=1, inner_lr=0.1)
    with torch.no_grad():
        learner.lrs["weight"].copy_(torch.tensor([[0.05, 0.1, 0.2]]))
    task = linear_task(5)
    # the inner step is θ - α ∘ grad, entry by entry
    r = task.support_x @ model.weight.T + model.bias - task.support_y
    grad_w = (2 / len(r) * r.T @ task.support_x).detach()
    fast = learner.fast_weights(task, 1, second_order=False)
    torch.testing.assert_close(fast["weight"], model.weight - learner.lrs["weight"] * grad_w)
    grads = meta_grads(learner, task)
    for key, lrs in learner.lrs.items():
        for i in range(lrs.numel()):
            values = []
            for delta in (1e-6, -1e-6):
                with torch.no_grad():
                    lrs.view(-1)[i] += delta
                values.append(learner.task_loss(task)[0].item())
                with torch.no_grad():
                    lrs.view(-1)[i] -= delta
            assert math.isclose(grads[f"lrs.{key}"].view(-1)[i].item(), (values[0] - values[1]) / 2e-6, rel_tol=1e-6)


def test_metasgd_conv4_meta_gradient_matches_finite_differences():
    directional_check(conv_learner(MetaSGD, inner_steps=1, inner_lr=0.3), image_task(6))


# -- vmapped path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,options",
    [
        (MAML, {"inner_steps": 2}),
        (FOMAML, {"inner_steps": 2}),
        (ANIL, {"inner_steps": 2}),
        (MetaSGD, {"inner_steps": 1}),
        (MAML, {"inner_steps": 2, "lslr": True, "per_step_bn": True, "multi_step_loss": True}),
    ],
)
def test_batched_task_loss_gives_the_mean_per_task_gradient(cls, options):
    """Also guards the composite BatchNorm: with the fused kernel, vmap's second-order gradient
    of an adapted BN weight is wrong (torch 2.13), which the plain MAML case here detects."""
    learner = conv_learner(cls, inner_lr=0.3, **options)
    learner.on_step(0, 100)
    tasks = [image_task(s) for s in range(3)]
    per_task = [meta_grads(learner, t) for t in tasks]
    learner.zero_grad(set_to_none=True)
    stack = lambda field: torch.stack([getattr(t, field) for t in tasks])  # noqa: E731
    losses = learner.batched_task_loss(stack("support_x"), stack("support_y"), stack("query_x"), stack("query_y"))
    assert losses.shape == (3,)
    torch.testing.assert_close(losses, torch.stack([learner.task_loss(t)[0] for t in tasks]).detach())
    losses.mean().backward()
    for n, p in learner.named_parameters():
        if n in per_task[0]:
            torch.testing.assert_close(p.grad, sum(g[n] for g in per_task) / 3, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "backbone_args,match", [({"bn": "inductive"}, "transductive"), ({"channels_last": True}, "channels_last")]
)
def test_batched_task_loss_refuses_what_vmap_cannot_run(backbone_args, match):
    learner = MAML.build(Conv4(hidden=4, out_features=3, image_size=16, **backbone_args), 3)
    t = image_task(0)
    with pytest.raises(FastAdaptError, match=match):
        learner.batched_task_loss(t.support_x[None], t.support_y[None], t.query_x[None], t.query_y[None])


# -- Reptile --------------------------------------------------------------------------------


def quadratic_phi(w, task, lr, iters, optimizer):
    """Hand recurrence on L(w) = |Xw - y|^2 / n (gradient H w - b): SGD, or Adam with
    betas (0, 0.999), bias correction and eps 1e-8 from a fresh state."""
    xs, ys = task.support_x, task.support_y
    h, b = 2 / len(xs) * xs.T @ xs, 2 / len(xs) * xs.T @ ys
    v = torch.zeros_like(w)
    for t in range(1, iters + 1):
        g = h @ w - b
        if optimizer == "sgd":
            w = w - lr * g
        else:
            v = 0.999 * v + 0.001 * g * g
            w = w - lr * g / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    return w


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.05)])
def test_reptile_outer_step_is_theta_plus_eps_mean_phi_minus_theta(optimizer, lr):
    model = nn.Linear(3, 1, bias=False)
    # inner batch = the whole support set, so every minibatch gives the full-batch gradient
    learner = Reptile.build(model, None, inner_iters=4, inner_batch=6, inner_lr=lr, inner_optimizer=optimizer)
    tasks = [linear_task(s) for s in range(2)]
    theta = model.weight.detach().T.clone()
    phis = [quadratic_phi(theta, t, lr, 4, optimizer) for t in tasks]
    for t, phi in zip(tasks, phis):
        torch.testing.assert_close(learner.adapt(t.support_x, t.support_y, 4, 6)["weight"].T, phi)
    epsilon = 0.7
    outer = torch.optim.SGD(learner.parameters(), lr=epsilon, momentum=0)
    for t in tasks:  # what the serial engine does: the mean task loss's gradient
        (learner.task_loss(t)[0] / len(tasks)).backward()
    outer.step()
    expected = theta + epsilon * sum(phi - theta for phi in phis) / len(phis)
    torch.testing.assert_close(model.weight.detach().T, expected)


def test_reptile_minibatches_cycle_through_reshuffled_passes():
    batches = minibatch_indices(6, 4, 3, seed=0)
    flat = torch.cat(batches).tolist()
    assert [len(b) for b in batches] == [4, 4, 4]
    assert sorted(flat[:6]) == list(range(6)) and sorted(flat[6:]) == list(range(6))


def test_reptile_predict_leaves_the_model_untouched():
    torch.manual_seed(0)
    learner = Reptile.build(Conv4(hidden=4, out_features=3, image_size=16), 3, eval_inner_iters=3)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    with torch.no_grad():
        logits = learner.predict(image_task(7))
    assert logits.shape == (6, 3)
    assert all(torch.equal(v, before[k]) for k, v in learner.state_dict().items())


# -- presets --------------------------------------------------------------------------------

PRESETS = [f"{m}-omniglot-{s}" for m in ("fomaml", "anil", "metasgd", "reptile", "mamlpp") for s in ("5w1s", "20w1s")]


@pytest.mark.parametrize("name", PRESETS + ["maml-omniglot-20w1s", "maml-sinusoid-10shot"])
def test_preset_builds_its_learner(name):
    config = load_config(name)
    shape = (1, 28, 28) if config.data.dataset == "omniglot" else (1,)
    learner = build_learner(config, shape)
    assert learner.describe()["bn_mode"] in ("transductive", "none")
    assert name == "anil-omniglot-5w1s" or config.reference.get("paper")


def test_predict_never_reads_the_query_labels():
    """Adapting on the support set and predicting a query grid of any length: the labels of the
    queries are neither needed nor used (as scripts/sinusoid_figure.py does)."""
    torch.manual_seed(0)
    learner = MAML(MLP(1, (8,), 1), inner_steps=2, inner_lr=0.1, problem="regression")
    task = linear_task(0, dim=1)
    grid = torch.linspace(-1, 1, 11).unsqueeze(-1)
    without_labels = learner.predict(Episode(task.support_x, task.support_y, grid, torch.full((3,), float("nan"))))
    params = adapt(
        learner.forward_with,
        dict(learner.model.named_parameters()),
        task.support_x,
        task.support_y,
        torch.nn.functional.mse_loss,
        2,
        0.1,
        second_order=False,
    )
    torch.testing.assert_close(without_labels, learner.forward_with(params, grid).detach())
