"""CNP / NP, the gp1d suite and the transfer baselines against math: Gaussian likelihoods and KL
in closed form, GP moments, hand-computed heads and SGD steps, frozen-backbone guarantees."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.config import load_config
from fastadapt.data.episode import Episode
from fastadapt.data.gp import GPTasks, rbf_kernel
from fastadapt.learners import build_learner
from fastadapt.learners.generative.cnp import CNP, gaussian_head
from fastadapt.learners.generative.neural_process import NeuralProcess, kl_diagonal_gaussians
from fastadapt.learners.transfer.baseline import Baseline, BaselinePlusPlus, cosine_logits, cosine_scale, new_head
from fastadapt.learners.transfer.multitask import MultiTask
from fastadapt.learners.transfer.pretrained import Pretrained
from fastadapt.models.backbones import Conv4, RawInput


def regression_task(seed=0, n_context=4, n_target=6):
    return GPTasks(n_context, n_target, seed=seed).task(0)


def toy_classification(seed=0, ways=3, shots=2, queries=2, dim=2, classes=(4, 0, 5)):
    """Well-separated 2-D clusters in distinct directions (for cosine heads too): centres at radius
    3 and angles 2 pi c / ways; info['classes'] = the global class ids."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(ways) * 2 * math.pi / ways
    centres = 3 * torch.stack([angles.cos(), angles.sin()], 1)
    support = centres.repeat_interleave(shots, 0) + 0.1 * torch.randn(ways * shots, dim, generator=g)
    query = centres.repeat_interleave(queries, 0) + 0.1 * torch.randn(ways * queries, dim, generator=g)
    return Episode(
        support,
        torch.arange(ways).repeat_interleave(shots),
        query,
        torch.arange(ways).repeat_interleave(queries),
        ways=ways,
        shots=shots,
        info={"classes": np.array(classes, dtype=np.int64)},
    )


# ----------------------------------------------------------------------------- gp1d
def test_gp_tasks_are_pure_and_have_the_rbf_covariance():
    a, b = GPTasks(3, 5, seed=7), GPTasks(3, 5, seed=7)
    torch.testing.assert_close(a.task(11).query_y, b.task(11).query_y, rtol=0, atol=0)
    assert not torch.equal(a.task(11).query_y, a.task(12).query_y)
    # E[y1 y2 | x1, x2] = k(x1, x2) and E[y^2] = 1 + jitter: check the averages over 4000 tasks.
    source = GPTasks(1, 1, seed=3)
    x1, x2, y1, y2 = map(
        np.array,
        zip(
            *[
                (t.support_x.item(), t.query_x.item(), t.support_y.item(), t.query_y.item())
                for t in map(source.task, range(4000))
            ]
        ),
    )
    residual = y1 * y2 - rbf_kernel(x1, x2, 0.4, 1.0).diagonal()
    assert abs(residual.mean()) < 0.06  # standard error ~0.02
    wrong = y1 * y2 - rbf_kernel(x1, x2, 1.2, 1.0).diagonal()  # a wrong lengthscale is detected
    assert abs(wrong.mean()) > 0.15
    assert abs((y1**2).mean() - 1.0) < 0.08
    assert np.all(np.abs(np.concatenate([x1, x2])) <= 2.0)


def test_gp_posterior_one_point_by_hand_and_variable_context():
    gp = GPTasks(1, 1, jitter=1e-4)
    mean, std = gp.posterior(np.array([0.3]), np.array([1.5]), np.array([0.3, 0.7]))
    k = math.exp(-0.5 * (0.4 / 0.4) ** 2)  # k(0.7, 0.3)
    assert mean[1] == pytest.approx(k / 1.0001 * 1.5, rel=1e-12)
    assert std[1] == pytest.approx(math.sqrt(1.0001 - k * k / 1.0001), rel=1e-12)
    assert mean[0] == pytest.approx(1.5 / 1.0001, rel=1e-12)
    sizes = {len(GPTasks(10, 4, seed=1, variable_context=True).task(i).support_x) for i in range(200)}
    assert sizes == set(range(3, 11))
    suite_cfg = load_config("cnp-gp1d", ["train.episodes.shots=6", "train.episodes.queries=3"])
    from fastadapt.data import build_suite

    suite = build_suite(suite_cfg, None)
    assert 3 <= len(suite.train_task(5).support_x) <= 6 and len(suite.train_task(5).query_x) == 3
    fixed = suite.fixed_set("test", None, 4, 7, 3, seed=1)
    assert [len(t.support_x) for t in fixed] == [4, 4, 4] and len(fixed[0].query_x) == 7


# ----------------------------------------------------------------------------- CNP
def test_gaussian_head_sigma_formula():
    mean, sigma = gaussian_head(torch.tensor([[2.0, 0.0], [-1.0, -50.0]], dtype=torch.float64))
    torch.testing.assert_close(mean.squeeze(-1), torch.tensor([2.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(
        sigma.squeeze(-1),
        torch.tensor([0.1 + 0.9 * math.log(2), 0.1 + 0.9 * math.log1p(math.exp(-50))], dtype=torch.float64),
    )


def test_cnp_regression_loss_is_gaussian_nll_of_context_and_query():
    torch.manual_seed(0)
    cnp = CNP.build(RawInput(1), None, encoder=(8, 8), decoder=(8,))
    task = regression_task()
    mean, std = cnp.predictive(task.support_x, task.support_y, task.query_x)
    assert mean.shape == std.shape == (6, 1) and (std > 0.1).all()
    torch.testing.assert_close(cnp.predict(task), mean)
    loss, metrics = cnp.task_loss(task)
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    mean_all, std_all = cnp.predictive(task.support_x, task.support_y, x)
    expected = -torch.distributions.Normal(mean_all, std_all).log_prob(y).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["mse"] == pytest.approx(F.mse_loss(mean, task.query_y).item(), rel=1e-6)
    # Mean aggregation: the prediction does not depend on the order of the context.
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(cnp.predictive(task.support_x[perm], task.support_y[perm], task.query_x)[0], mean)


def test_cnp_classifier_aggregates_per_class():
    torch.manual_seed(0)
    cnp = CNP.build(RawInput(2), 3, encoder=(5,), decoder=(4,))
    task = toy_classification()
    logits = cnp.predict(task)
    assert logits.shape == (6, 3)
    # Hand loop: r_c = mean over class c of encoder([x_i, onehot(c)]); logit = decoder([r_c, x_q]).
    expected = torch.empty(6, 3)
    for c in range(3):
        members = task.support_x[task.support_y == c]
        onehot = F.one_hot(torch.full((len(members),), c), 3).float()
        r = cnp.encoder(torch.cat([members, onehot], -1)).mean(0)
        for q in range(6):
            expected[q, c] = cnp.decoder(torch.cat([r, task.query_x[q]]))[0]
    torch.testing.assert_close(logits, expected)
    shuffled = Episode(task.support_x.flip(0), task.support_y.flip(0), task.query_x, task.query_y, ways=3, shots=2)
    torch.testing.assert_close(cnp.predict(shuffled), logits)
    loss, _ = cnp.task_loss(task)
    torch.testing.assert_close(loss, F.cross_entropy(expected, task.query_y))


# ----------------------------------------------------------------------------- NP
def test_kl_of_diagonal_gaussians_closed_form():
    mu_q, sigma_q = torch.tensor([0.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.3], dtype=torch.float64)
    mu_p, sigma_p = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([2.0, 0.6], dtype=torch.float64)
    # dim 0: log 2 + (1 + 1) / 8 - 1/2; dim 1: log 2 + (0.09 + 1) / 0.72 - 1/2
    by_hand = (math.log(2) + 2 / 8 - 0.5) + (math.log(2) + 1.09 / 0.72 - 0.5)
    assert kl_diagonal_gaussians(mu_q, sigma_q, mu_p, sigma_p).item() == pytest.approx(by_hand, rel=1e-12)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_q, sigma_q), torch.distributions.Normal(mu_p, sigma_p)
    ).sum()
    torch.testing.assert_close(kl_diagonal_gaussians(mu_q, sigma_q, mu_p, sigma_p), reference)
    assert kl_diagonal_gaussians(mu_q, sigma_q, mu_q, sigma_q).item() == 0.0


def test_neural_process_shapes_positive_variance_and_elbo():
    torch.manual_seed(0)
    npm = NeuralProcess.build(RawInput(1), None, encoder=(8, 8), latent_encoder=(8, 8), latent_dim=3, decoder=(8,))
    task = regression_task(seed=1)
    mean, std = npm.predictive(task.support_x, task.support_y, task.query_x)
    assert mean.shape == std.shape == (6, 1)
    draws_mean, draws_std = npm.predictive(task.support_x, task.support_y, task.query_x, samples=4)
    assert draws_mean.shape == draws_std.shape == (4, 6, 1)
    with torch.no_grad():  # even a decoder pushed to -inf keeps sigma at its 0.1 floor
        npm.decoder[-1].bias.fill_(-1e4)
    assert (npm.predictive(task.support_x, task.support_y, task.query_x, samples=2)[1] >= 0.1).all()
    torch.manual_seed(0)
    npm = NeuralProcess.build(RawInput(1), None, encoder=(8, 8), latent_encoder=(8, 8), latent_dim=3, decoder=(8,))
    npm.on_step(5, 10)
    loss, metrics = npm.task_loss(task)
    # Recompute the ELBO with the same noise: -mean log N(y_T) + KL(q(z|C,T) || q(z|C)) / |T|.
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    mu_post, sigma_post = npm.latent(x, y)
    mu_prior, sigma_prior = npm.latent(task.support_x, task.support_y)
    z = mu_post + sigma_post * npm._noise(task, mu_post.shape)
    m, s = npm.decode(task.support_x, task.support_y, z, x)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_post, sigma_post), torch.distributions.Normal(mu_prior, sigma_prior)
    ).sum()
    torch.testing.assert_close(loss, -torch.distributions.Normal(m, s).log_prob(y).mean() + kl / len(x))
    assert metrics["kl"] == pytest.approx(kl.item(), abs=1e-6)  # float32 cancellation
    torch.testing.assert_close(npm.task_loss(task)[0], loss, rtol=0, atol=0)  # pure in (params, task, step)
    npm.on_step(6, 10)
    assert npm.task_loss(task)[0].item() != loss.item()
    loss.backward()  # the reparameterised sample carries gradient to the latent sigma
    assert npm.latent_sigma.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- transfer baselines
def test_cosine_classifier_by_hand():
    z, w = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(cosine_logits(z, w, 2.0), torch.tensor([[1.2, 1.6]]))
    assert cosine_scale(200) == 2.0 and cosine_scale(201) == 10.0


def test_baseline_pretraining_uses_global_labels():
    learner = Baseline.build(RawInput(2), 3, num_train_classes=6)
    with torch.no_grad():
        learner.classifier.weight.copy_(torch.arange(12.0).view(6, 2) / 10)
        learner.classifier.bias.copy_(torch.linspace(-1, 1, 6))
    task = toy_classification()
    loss, _ = learner.task_loss(task)
    x = torch.cat([task.support_x, task.query_x])
    labels = torch.tensor([4, 0, 5])[torch.cat([task.support_y, task.query_y])]
    logits = x @ (torch.arange(12.0).view(6, 2) / 10).T + torch.linspace(-1, 1, 6)
    by_hand = (torch.logsumexp(logits, 1) - logits[torch.arange(len(x)), labels]).mean()
    torch.testing.assert_close(loss, by_hand)


def test_finetune_one_sgd_step_by_hand():
    """One epoch with the whole support in one batch is one SGD step: W1 = W0 - lr (grad + wd W0),
    grad of the mean cross-entropy = (softmax - onehot)^T z / n (the first momentum step is the gradient)."""
    learner = Baseline.build(
        RawInput(2), 3, num_train_classes=6, finetune_epochs=1, finetune_batch=100, finetune_lr=0.5, finetune_seed=3
    )
    task = toy_classification()
    from fastadapt.learners.transfer.baseline import fine_tune

    head, _ = fine_tune(
        learner.backbone,
        task.support_x,
        task.support_y,
        3,
        cosine=False,
        finetune_backbone=False,
        epochs=1,
        batch_size=100,
        lr=0.5,
        seed=3,
    )
    w0 = new_head(2, 3, False, torch.Generator().manual_seed(3))
    p = torch.softmax(task.support_x @ w0["weight"].T + w0["bias"], -1)
    delta = (p - F.one_hot(task.support_y, 3).float()) / len(task.support_x)
    torch.testing.assert_close(head["weight"], w0["weight"] - 0.5 * (delta.T @ task.support_x + 0.001 * w0["weight"]))
    torch.testing.assert_close(head["bias"], w0["bias"] - 0.5 * (delta.sum(0) + 0.001 * w0["bias"]))


@pytest.mark.parametrize("cls", [Baseline, BaselinePlusPlus, MultiTask])
def test_finetuning_leaves_the_backbone_bitwise_unchanged(cls):
    torch.manual_seed(0)
    extra = {"group_size": 2} if cls is MultiTask else {}
    learner = cls.build(
        Conv4(hidden=4, bn="inductive", image_size=16), 3, num_train_classes=6, finetune_epochs=3, **extra
    )
    g = torch.Generator().manual_seed(1)
    task = Episode(
        torch.rand(6, 1, 16, 16, generator=g),
        torch.arange(3).repeat_interleave(2),
        torch.rand(6, 1, 16, 16, generator=g),
        torch.arange(3).repeat_interleave(2),
        ways=3,
        shots=2,
        info={"classes": np.array([5, 1, 2])},
    )
    learner.task_loss(task)[0].backward()  # one pretraining forward: BN running stats move (train mode)
    learner.eval()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    logits = learner.predict(task)
    assert logits.shape == (6, 3)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(learner.predict(task), logits, rtol=0, atol=0)  # seeded: deterministic
    learner.finetune_backbone = True
    tuned = learner.predict(task)
    assert not torch.allclose(tuned, logits)  # the backbone copy did change...
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k  # ...the module did not


def test_finetuned_head_separates_easy_clusters():
    task = toy_classification()
    learner = BaselinePlusPlus.build(RawInput(2), 3, num_train_classes=6)
    assert (learner.predict(task).argmax(-1) == task.query_y).all()
    learner = Baseline.build(RawInput(2), 3, num_train_classes=6)
    assert (learner.predict(task).argmax(-1) == task.query_y).all()


def test_multitask_routes_each_class_to_its_group_head():
    learner = MultiTask.build(RawInput(2), 3, num_train_classes=7, group_size=3, group_seed=5)
    groups, slots = learner.group_of.tolist(), learner.slot_of.tolist()
    assert sorted(zip(groups, slots)) == [(g, s) for g in range(3) for s in range(3)][:7]  # a bijection
    task = toy_classification(classes=(6, 0, 3))
    loss, _ = learner.task_loss(task)
    x = torch.cat([task.support_x, task.query_x])
    labels = torch.tensor([6, 0, 3])[torch.cat([task.support_y, task.query_y])]
    total = 0.0
    for xi, c in zip(x, labels.tolist()):
        g, s = groups[c], slots[c]
        size = sum(1 for gg in groups if gg == g)  # the last group has only 1 class
        logits = learner.head_weight[g, :size] @ xi + learner.head_bias[g, :size]
        total = total + torch.logsumexp(logits, 0) - logits[s]
    torch.testing.assert_close(loss, total / len(x))


def test_pretrained_fine_tunes_with_plain_sgd_closed_form():
    """Linear model, MSE: each SGD step maps w -> w - lr (H w - b), H = 2/n X^T X, b = 2/n X^T y."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = nn.Linear(3, 1, bias=False)
        learner = Pretrained.build(model, None, eval_inner_steps=3, inner_lr=0.05)
        g = torch.Generator().manual_seed(0)
        xs, xq = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
        task = Episode(xs, xs @ torch.tensor([[1.0], [-2.0], [0.5]]), xq, xq.sum(1, keepdim=True), ways=None, shots=5)
        w0 = model.weight.detach().clone()
        w = w0.T.clone()
        h, b = 2 / 5 * xs.T @ xs, 2 / 5 * xs.T @ task.support_y
        for _ in range(3):
            w = w - 0.05 * (h @ w - b)
        torch.testing.assert_close(learner.predict(task), xq @ w)
        assert torch.equal(model.weight, w0)
        loss, metrics = learner.task_loss(task)
        both_x, both_y = torch.cat([xs, xq]), torch.cat([task.support_y, task.query_y])
        torch.testing.assert_close(loss, ((both_x @ w0.T - both_y) ** 2).mean())
        assert learner.eval_inner_steps == 3
    finally:
        torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------- presets, trainer, script
@pytest.mark.parametrize(
    "preset",
    [
        "cnp-omniglot-5w1s",
        "cnp-omniglot-20w1s",
        "baseline-omniglot-5w1s",
        "baselinepp-omniglot-5w1s",
        "baselinepp-omniglot-20w1s",
        "multitask-omniglot-5w1s",
        "pretrained-sinusoid-5shot",
        "pretrained-sinusoid-10shot",
        "cnp-sinusoid-5shot",
        "np-gp1d",
    ],
)
def test_presets_build(preset):
    config = load_config(preset)
    shape = (1, 28, 28) if config.data.dataset == "omniglot" else (1,)
    learner = build_learner(config, shape, num_train_classes=4800 if config.data.dataset == "omniglot" else None)
    assert learner.problem == ("classification" if config.data.dataset == "omniglot" else "regression")


def test_cnp_trains_on_gp1d_and_np_regression_script_writes_results(tmp_path):
    import json
    import runpy

    from fastadapt.trainer import Trainer

    overrides = [
        "train.steps=4",
        "train.meta_batch=2",
        "train.val_every=2",
        "train.val_episodes=2",
        "train.checkpoint_every=2",
        "train.log_every=2",
        "eval.episodes=3",
        "eval.queries=5",
        "learner.args.encoder=[8, 8]",
        "learner.args.latent_encoder=[8]",
        "learner.args.latent_dim=2",
        "learner.args.decoder=[8]",
    ]
    Trainer(load_config("np-gp1d", overrides), tmp_path / "run", quiet=True).fit()
    script = runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "scripts" / "np_regression.py"))
    script["main"](
        [str(tmp_path / "run"), "--context", "1", "3", "--episodes", "4", "--samples", "2", "--plot-tasks", "1"]
    )
    record = json.loads((tmp_path / "run" / "np_regression.json").read_text())
    assert [r["context"] for r in record["results"]] == [1, 3]
    assert all(r["tasks"] == 4 and math.isfinite(r["log_likelihood"]) for r in record["results"])
    assert (tmp_path / "run" / "np_regression.png").stat().st_size > 0
