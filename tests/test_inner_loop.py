"""The shared inner loop (fastadapt.learners.optimization.inner_loop) against math.

On a quadratic L(θ) = ½ θᵀAθ - bᵀθ (gradient Aθ - b, Hessian A) a gradient step is affine,
θ_{j+1} = (I - D_j A) θ_j + D_j b with D_j the step's (diagonal) learning rates, so the steps,
the second-order meta-gradient (the product of the steps' Jacobians) and the first-order one
(the Jacobian replaced by I) have closed forms. The optimiser rules are checked step by step
against torch.optim on a small softmax regression.
"""

import pytest
import torch
import torch.nn.functional as F

from fastadapt.learners.optimization.inner_loop import SGD, Adam, MomentumSGD, inner_loop, inner_loop_steps

DIM = 4  # θ = cat(u, w), two tensors of 2 entries, so the loop's per-tensor bookkeeping is exercised


def quadratic(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
    a = m @ m.T / DIM + 0.5 * torch.eye(DIM, dtype=torch.float64)  # symmetric positive definite
    b = torch.randn(DIM, generator=g, dtype=torch.float64)
    theta0 = torch.randn(DIM, generator=g, dtype=torch.float64)
    return a, b, theta0


def split(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"u": theta[:2], "w": theta[2:]}


def loss_of(a, b):
    def loss(params, step):
        theta = torch.cat([params["u"], params["w"]])
        return 0.5 * theta @ a @ theta - b @ theta

    return loss


def flat(params) -> torch.Tensor:
    return torch.cat([params["u"], params["w"]])


def test_sgd_steps_equal_the_closed_form_with_per_step_lrs():
    """Scalar lr α_j at step j: θ_k - θ* = Π_j (I - α_j A) (θ_0 - θ*), θ* = A⁻¹ b."""
    a, b, theta0 = quadratic()
    lrs = [0.3, 0.1, 0.25]
    theta = theta0.clone().requires_grad_()
    trajectory = list(inner_loop_steps(loss_of(a, b), split(theta), 3, SGD(lambda name, step: lrs[step])))
    star = torch.linalg.solve(a, b)
    error = theta0 - star
    for k, params in enumerate(trajectory):
        error = (torch.eye(DIM, dtype=torch.float64) - lrs[k] * a) @ error
        torch.testing.assert_close(flat(params), star + error, rtol=1e-12, atol=1e-12)
    assert set(trajectory[-1]) == {"u", "w"} and trajectory[-1]["u"].shape == (2,)


def test_sgd_with_per_entry_lrs_follows_the_affine_recurrence():
    """Meta-SGD's lr, a tensor of each parameter's shape: θ_{j+1} = (I - D A) θ_j + D b."""
    a, b, theta0 = quadratic(1)
    lr = {"u": torch.tensor([0.05, 0.2], dtype=torch.float64), "w": torch.tensor([0.1, 0.3], dtype=torch.float64)}
    params = inner_loop(loss_of(a, b), split(theta0.clone().requires_grad_()), 4, SGD(lambda name, step: lr[name]))
    d = torch.diag(torch.cat([lr["u"], lr["w"]]))
    theta = theta0
    for _ in range(4):
        theta = (torch.eye(DIM, dtype=torch.float64) - d @ a) @ theta + d @ b
    torch.testing.assert_close(flat(params), theta, rtol=1e-12, atol=1e-12)


def meta_problem(order: str, steps: int = 3, alpha: float = 0.2, **options):
    """Q(θ_k) = ½|θ_k - c|² after `steps` SGD steps with a learned scalar lr α; returns
    θ_k, dQ/dθ_0, dQ/dα and the closed-form pieces."""
    a, b, theta0 = quadratic(2)
    c = torch.linspace(-1, 1, DIM, dtype=torch.float64)
    theta0 = theta0.clone().requires_grad_()
    lr = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    fast = inner_loop(loss_of(a, b), split(theta0), steps, SGD(lr), second_order=order == "second", **options)
    theta_k = flat(fast)
    outer = 0.5 * ((theta_k - c) ** 2).sum()
    grad_theta, grad_lr = torch.autograd.grad(outer, [theta0, lr])
    return a, b, theta0.detach(), c, theta_k.detach(), grad_theta, grad_lr


@pytest.mark.parametrize("options", [{}, {"checkpointed": True}])
def test_second_order_meta_gradient_equals_the_closed_form(options):
    """dθ_k/dθ_0 = (I - αA)^k and dθ_k/dα = -k A (I - αA)^{k-1} (θ_0 - θ*) (the matrices
    commute), so dQ/dθ_0 = (I - αA)^k (θ_k - c) and dQ/dα = (θ_k - c)·dθ_k/dα."""
    steps, alpha = 3, 0.2
    a, b, theta0, c, theta_k, grad_theta, grad_lr = meta_problem("second", steps, alpha, **options)
    step = torch.eye(DIM, dtype=torch.float64) - alpha * a
    torch.testing.assert_close(grad_theta, torch.linalg.matrix_power(step, steps) @ (theta_k - c), rtol=1e-10, atol=0)
    d_alpha = -steps * a @ torch.linalg.matrix_power(step, steps - 1) @ (theta0 - torch.linalg.solve(a, b))
    torch.testing.assert_close(grad_lr, (theta_k - c) @ d_alpha, rtol=1e-10, atol=0)


def test_first_order_drops_the_hessian_term_exactly():
    """First order: dθ_k/dθ_0 = I, so the meta-gradient is ∇Q(θ_k) = θ_k - c bit for bit, and
    dθ_k/dα = -Σ_j g_j with the inner gradients g_j = Aθ_j - b held constant."""
    steps, alpha = 3, 0.2
    a, b, theta0, c, theta_k, grad_theta, grad_lr = meta_problem("first", steps, alpha)
    assert torch.equal(grad_theta, theta_k - c)
    thetas = [theta0]
    for _ in range(steps - 1):
        thetas.append(thetas[-1] - alpha * (a @ thetas[-1] - b))
    inner_grads = sum(a @ t - b for t in thetas)
    torch.testing.assert_close(grad_lr, -(theta_k - c) @ inner_grads, rtol=1e-10, atol=0)
    _, _, _, _, theta_k_second, grad_second, _ = meta_problem("second", steps, alpha)
    assert torch.equal(theta_k, theta_k_second)  # same adapted weights, only the gradient differs
    assert (grad_second - grad_theta).abs().max() > 1e-3


@pytest.mark.parametrize("second_order", [True, False])
def test_vmapped_func_path_gives_each_tasks_closed_form(second_order):
    """use_func (torch.func.grad) under vmap over tasks b_t: the summed meta-loss's gradient is
    the sum of the per-task closed forms."""
    a, _, theta0 = quadratic(3)
    tasks = torch.randn(3, DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    c, alpha, steps = torch.zeros(DIM, dtype=torch.float64), 0.15, 2
    theta = theta0.clone().requires_grad_()

    def meta_loss(b):
        fast = inner_loop(loss_of(a, b), split(theta), steps, SGD(alpha), second_order=second_order, use_func=True)
        return 0.5 * ((flat(fast) - c) ** 2).sum()

    (grad,) = torch.autograd.grad(torch.func.vmap(meta_loss)(tasks).sum(), [theta])
    jacobian = torch.linalg.matrix_power(torch.eye(DIM, dtype=torch.float64) - alpha * a, steps)
    expected = torch.zeros(DIM, dtype=torch.float64)
    for b in tasks:
        star = torch.linalg.solve(a, b)
        theta_k = star + jacobian @ (theta0 - star)
        expected += (jacobian if second_order else torch.eye(DIM, dtype=torch.float64)) @ (theta_k - c)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def softmax_regression(dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (12,), generator=g)
    params = {
        "weight": torch.randn(3, 5, generator=g, dtype=dtype),
        "bias": torch.randn(3, generator=g, dtype=dtype),
        "unused": torch.randn(2, generator=g, dtype=dtype),  # no gradient: torch.optim skips it
    }
    batches = [torch.randperm(12, generator=g)[:4] for _ in range(9)]

    def loss(p, step):
        i = batches[step]
        return F.cross_entropy(x[i] @ p["weight"].T + p["bias"], y[i])

    return params, loss, len(batches)


def torch_optim_trajectory(params, loss, steps, make_optimizer):
    tensors = {n: p.clone().requires_grad_() for n, p in params.items()}
    optimizer = make_optimizer(list(tensors.values()))
    trajectory = []
    for k in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss(tensors, k).backward()
        optimizer.step()
        trajectory.append({n: t.detach().clone() for n, t in tensors.items()})
    return trajectory


@pytest.mark.parametrize(
    "settings",
    [
        {"momentum": 0.9, "dampening": 0.9, "weight_decay": 0.001},  # Chen et al.'s fine-tuning
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"momentum": 0.0},
    ],
)
def test_momentum_sgd_equals_torch_optim_sgd_bitwise_at_every_step(settings):
    params, loss, steps = softmax_regression()
    expected = torch_optim_trajectory(params, loss, steps, lambda ps: torch.optim.SGD(ps, lr=0.1, **settings))
    ours = list(inner_loop_steps(loss, params, steps, MomentumSGD(0.1, **settings), detached=True))
    for k in range(steps):
        for name in params:
            assert torch.equal(ours[k][name], expected[k][name]), (k, name)
    assert torch.equal(ours[-1]["unused"], params["unused"])


def test_momentum_sgd_keeps_strides_and_equals_torch_optim_on_a_channels_last_conv():
    """torch.optim updates in place, so a parameter keeps its strides; those of a conv weight pick
    the convolution kernel (and its rounding). A channels_last weight with one input channel is
    where an out-of-place update would change them."""
    g = torch.Generator().manual_seed(6)
    x = torch.rand(8, 1, 7, 7, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (8,), generator=g)
    params = {
        "conv": torch.randn(4, 1, 3, 3, generator=g).to(memory_format=torch.channels_last),
        "conv2": torch.randn(5, 4, 3, 3, generator=g).to(memory_format=torch.channels_last),
        "head": torch.randn(3, 5, generator=g),
    }

    def loss(p, step):
        i = torch.arange(4) + 4 * (step % 2)
        z = F.conv2d(F.conv2d(x[i], p["conv"]).relu(), p["conv2"]).relu().mean((2, 3))
        return F.cross_entropy(z @ p["head"].T, y[i])

    settings = {"momentum": 0.9, "dampening": 0.9, "weight_decay": 0.001}
    expected = torch_optim_trajectory(params, loss, 6, lambda ps: torch.optim.SGD(ps, lr=0.5, **settings))
    ours = list(inner_loop_steps(loss, params, 6, MomentumSGD(0.5, **settings), detached=True))
    for k in range(6):
        for name in params:
            assert ours[k][name].stride() == params[name].stride(), (k, name)
            assert torch.equal(ours[k][name], expected[k][name]), (k, name)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.999)])
def test_adam_matches_torch_optim_adam_at_every_step(betas):
    """Same algorithm; torch folds the bias corrections differently, so equal up to rounding."""
    params, loss, steps = softmax_regression(torch.float64)
    expected = torch_optim_trajectory(params, loss, steps, lambda ps: torch.optim.Adam(ps, lr=0.05, betas=betas))
    ours = list(inner_loop_steps(loss, params, steps, Adam(0.05, betas), detached=True))
    for k in range(steps):
        for name in params:
            torch.testing.assert_close(ours[k][name], expected[k][name], rtol=1e-10, atol=1e-12)


def test_adam_first_step_is_a_sign_step():
    """With fresh moments, m̂ = g and v̂ = g², so the first step is -lr·g / (|g| + eps)."""
    params, loss, _ = softmax_regression(torch.float64)
    current = {n: p.clone().requires_grad_() for n, p in params.items()}
    loss(current, 0).backward()
    stepped = inner_loop(loss, params, 1, Adam(0.05, (0.9, 0.999), eps=1e-8), detached=True)
    for name in ("weight", "bias"):
        g = current[name].grad
        torch.testing.assert_close(stepped[name], params[name] - 0.05 * g / (g.abs() + 1e-8), rtol=1e-14, atol=1e-15)


def test_detached_mode_keeps_no_graph_and_equals_first_order_values():
    a, b, theta0 = quadratic(6)
    theta = theta0.clone().requires_grad_()
    before = theta.detach().clone()
    with torch.no_grad():  # as an evaluator calls predict: the loop turns grad on for its own steps only
        trajectory = inner_loop_steps(loss_of(a, b), split(theta), 3, SGD(0.2), detached=True)
        for params in trajectory:
            assert not torch.is_grad_enabled()
            assert all(not p.requires_grad and p.grad_fn is None for p in params.values())
    first_order = inner_loop(loss_of(a, b), split(theta), 3, SGD(0.2))
    assert all(torch.equal(params[n], first_order[n]) for n in params)
    assert torch.equal(theta.detach(), before)


def test_zero_steps_return_the_parameters_and_bad_modes_are_refused():
    a, b, theta0 = quadratic(7)
    params = split(theta0)
    assert inner_loop(loss_of(a, b), params, 0, SGD(0.1)) is params
    with pytest.raises(ValueError, match="detached"):
        inner_loop(loss_of(a, b), params, 1, SGD(0.1), detached=True, second_order=True)
