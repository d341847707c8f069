"""MAML-RL against math and an uninterrupted run: the meta-gradient through the policy-gradient
inner step against central finite differences on a tiny linear-Gaussian problem (second and
first order), the Fisher-vector product against the exact Hessian of the KL through the inner
step, TRPO's trust region, and a tiny end-to-end meta-RL run with exact resume."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers import RL_TINY as TINY
from helpers import straight_and_resumed

from fastadapt.config import load_config
from fastadapt.errors import FastAdaptError
from fastadapt.models.backbones import MLP
from fastadapt.rl import policy as pi
from fastadapt.rl.objectives import adapt_step, inner_loss, masked_task_mean
from fastadapt.rl.rollouts import Batch
from fastadapt.rl.trpo import TRPOSettings, fisher_vector_product, flat, trpo_step, unflat
from fastadapt.trainer import Trainer

LR = 0.3


def _batch(g: torch.Generator, k=2, t=3, n=4, d=2, a=2) -> tuple[Batch, torch.Tensor]:
    mask = torch.ones(k, t, n, dtype=torch.float64)
    mask[0, 2:, 1] = 0  # one rollout ended early
    batch = Batch(
        torch.randn(k, t, n, d, generator=g, dtype=torch.float64),
        torch.randn(k, t, n, a, generator=g, dtype=torch.float64),
        torch.zeros(k, t, n, dtype=torch.float64),
        mask,
    )
    return batch, torch.randn(k, t, n, generator=g, dtype=torch.float64)


def _problem(seed: int = 0):
    """A linear-Gaussian policy (mean W s + b, learned log std), two tasks' support and query data."""
    torch.manual_seed(seed)
    net = MLP(in_features=2, hidden=(), out_features=2).double()  # no hidden layer: linear
    params = {k: v.detach().clone().requires_grad_(True) for k, v in pi.init_params(net, 2, 0.8).items()}
    params = {k: v.double().detach().requires_grad_(True) for k, v in params.items()}
    g = torch.Generator().manual_seed(seed)
    return net, params, _batch(g), _batch(g)


def _meta_objective(net, params, support, query, first_order=False):
    adapted = adapt_step(net, params, *support, LR, stacked=False, create_graph=not first_order)
    return inner_loss(net, adapted, *query, stacked=True).mean(), adapted


@pytest.mark.parametrize("seed", [0, 1])
def test_second_order_meta_gradient_matches_finite_differences(seed):
    net, params, support, query = _problem(seed)
    names = list(params)
    loss, _ = _meta_objective(net, params, support, query)
    grads = flat(torch.autograd.grad(loss, [params[k] for k in names]))
    theta, eps = flat([params[k].detach() for k in names]), 1e-6

    def value(vector):
        p = dict(zip(names, (v.clone().requires_grad_(True) for v in unflat(vector, [params[k] for k in names]))))
        return _meta_objective(net, p, support, query)[0].item()

    numeric = torch.tensor(
        [
            (value(theta + eps * e) - value(theta - eps * e)) / (2 * eps)
            for e in torch.eye(len(theta), dtype=theta.dtype)
        ]
    )
    torch.testing.assert_close(grads, numeric.double(), rtol=1e-6, atol=1e-8)
    # The inner step's second-order term matters here: the first-order gradient is another vector.
    first = flat(torch.autograd.grad(_meta_objective(net, params, support, query, True)[0], list(params.values())))
    assert (first - grads).abs().max() > 1e-3


def test_first_order_gradient_is_the_mean_adapted_gradient():
    """First order: dθ'/dθ = I, so the meta-gradient is the mean over tasks of ∇L_query at θ'_k."""
    net, params, support, query = _problem(2)
    loss, adapted = _meta_objective(net, params, support, query, first_order=True)
    grads = torch.autograd.grad(loss, list(params.values()))
    for k in range(2):
        leaf = {name: v[k].detach().requires_grad_(True) for name, v in adapted.items()}
        one = Batch(*(x[k : k + 1] for x in (query[0].observations, query[0].actions, query[0].rewards, query[0].mask)))
        task_grads = torch.autograd.grad(
            inner_loss(net, leaf, one, query[1][k : k + 1], stacked=False).sum(), list(leaf.values())
        )
        if k == 0:
            total = [t / 2 for t in task_grads]
        else:
            total = [s + t / 2 for s, t in zip(total, task_grads)]
    for a, b in zip(grads, total):
        torch.testing.assert_close(a, b)


def _kl_setup(seed=3):
    net, params, support, query = _problem(seed)
    names = list(params)
    with torch.enable_grad():
        old = {k: v.detach() for k, v in adapt_step(net, params, *support, LR, False, False).items()}

    def adapt(values):
        return list(adapt_step(net, dict(zip(names, values)), *support, LR, False, True).values())

    def kl_of(values):
        kl = pi.per_task(pi.kl, net, old, dict(zip(names, values)), query[0].observations, stacked=True)
        return masked_task_mean(kl, query[0].mask).mean()

    return net, params, names, adapt, kl_of, query


def test_fisher_vector_product_equals_the_kl_hessian_through_the_inner_step():
    """Jᵀ H J v (no third derivatives) against the full Hessian of KL(π_old ‖ π_adapt(θ)) in θ, which
    needs the third derivatives of the inner loss, at the data-collecting parameters."""
    net, params, names, adapt, kl_of, _ = _kl_setup()
    values = [params[k] for k in names]
    fisher = fisher_vector_product(values, adapt(values), kl_of)
    theta = flat([v.detach() for v in values])
    hessian = torch.autograd.functional.hessian(lambda x: kl_of(adapt(unflat(x, values))), theta)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(len(theta), generator=g, dtype=theta.dtype)
        torch.testing.assert_close(fisher(v), hessian @ v, rtol=1e-7, atol=1e-10)


def test_trpo_step_improves_the_surrogate_inside_the_trust_region():
    net, params, names, adapt, kl_of, query = _kl_setup(4)
    (q, q_adv), values = query, [params[k] for k in names]
    old = dict(zip(names, (a.detach() for a in adapt(values))))
    with torch.no_grad():
        old_logp = pi.per_task(pi.log_prob, net, old, q.observations, q.actions, stacked=True)

    def loss_and_kl(adapted):
        new = dict(zip(names, adapted))
        logp = pi.per_task(pi.log_prob, net, new, q.observations, q.actions, stacked=True)
        return -masked_task_mean(torch.exp(logp - old_logp) * q_adv, q.mask).mean(), kl_of(adapted)

    info = trpo_step(adapt, loss_and_kl, values, TRPOSettings(max_kl=0.01))
    assert info["step_fraction"] > 0 and info["surrogate_after"] < info["surrogate_before"]
    assert 0 < info["kl_after"] <= 0.01 and info["expected_improvement"] > 0
    after = loss_and_kl([a.detach() for a in adapt(values)])
    assert after[0].item() == pytest.approx(info["surrogate_after"]) and after[1].item() <= 0.01


# ------------------------------------------------------------------------------ end to end


def test_tiny_meta_rl_run_resumes_exactly_and_reports_every_adaptation_step(tmp_path):
    straight, _ = straight_and_resumed(load_config("maml-trpo-point2d", TINY), tmp_path)
    record = json.loads((tmp_path / "a" / "eval.json").read_text())
    steps = record["other_metrics"]
    assert sorted(steps) == [f"return_after_{k}" for k in range(4)]
    assert steps["return_after_3"]["mean"] == record["return"] and record["metric"] == "return"
    assert all(math.isfinite(v["mean"]) and v["ci95"] >= 0 for v in steps.values())
    # horizon 8, rewards are minus distances within the [-0.5, 0.5]² square plus the reachable moves
    assert all(-8 * math.sqrt(2) * 1.3 <= v["mean"] <= 0 for v in steps.values())
    # the generated results section: one row per run with every step, the paper's row beneath, a plot
    from fastadapt.rl.report import by_episode, rl_plot, rl_records, rl_table

    records = rl_records([tmp_path / "a", tmp_path / "b"])
    assert not any(by_episode(r) for r in records)  # gradient steps, not RL²'s episodes
    assert record["reference"] == {}  # the tiny overrides change the task: the paper's numbers do not apply
    records[0]["reference"] = {"paper": "MAML", "return_after_0": -40.4, "return_after_1": -11.7}
    table = rl_table(records).splitlines()
    assert len(table) == 2 + 3 and "after 3 steps" in table[0]
    assert f"{steps['return_after_2']['mean']:.1f} ± {steps['return_after_2']['ci95']:.1f}" in table[2]
    assert table[3].startswith("| paper | MAML |") and table[3].endswith("| -40.4 | -11.7 | – | – |")
    # runs that share the paper's figures (variants, other seeds) get its row once, beneath them all
    shared = rl_table([records[0], {**records[0], "label": "a (seed 1)"}, records[1]]).splitlines()
    assert [row.startswith("| paper |") for row in shared[2:]] == [False, False, True, False]
    # validation ran at the last step only (val_every > steps), so the tested iterate is the last;
    # where validation picked an earlier one, the table names it
    assert record["selected_step"] == record["train_steps"] == 4 and "| 4 | " in table[2]
    records[0]["selected_step"] = 2
    assert "| 4 (tested: 2) | " in rl_table(records).splitlines()[2]
    rl_plot(records, tmp_path / "rl.png")
    assert (tmp_path / "rl.png").read_bytes().startswith(b"\x89PNG")
    # an RL run adapts from rollouts: the labelled-inputs API and `predict` refuse it in one line
    import fastadapt
    from fastadapt.cli import main

    with pytest.raises(FastAdaptError, match="is an RL run: it adapts from rollouts in its environments"):
        fastadapt.load(tmp_path / "a")
    assert main(["predict", str(tmp_path / "a"), "--support", "s.csv", "--query", "q.csv"]) == 2


def test_rl_datasets_need_rl_learners_and_back(tmp_path):
    with pytest.raises(FastAdaptError, match="RL datasets go with RL learners"):
        Trainer(load_config("maml-trpo-point2d", ["learner.name=protonet", "learner.args={}"]), tmp_path / "x")
    with pytest.raises(FastAdaptError, match="maml-rl"):
        Trainer(load_config("maml-sinusoid-5shot", ["learner.name=maml-rl", "learner.args={}"]), tmp_path / "y")


def test_pretrained_baseline_trpo_step_stays_in_the_trust_region_and_none_changes_nothing():
    from fastadapt.data import build_suite
    from fastadapt.learners import build_learner

    overrides = ["model.backbone_args.hidden=[8]", "data.args.horizon=6", "train.episodes.queries=4"]
    config = load_config("maml-trpo-point2d", ["learner.name=pretrained-rl", *overrides])
    learner = build_learner(config, (2,))
    tasks = [build_suite(config).train_task(i) for i in range(3)]
    before = [p.detach().clone() for p in learner.parameters()]
    info = learner.outer_step(tasks, (0, 1))[0]
    assert info["step_fraction"] > 0 and 0 < info["kl_after"] <= 0.01
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters()))
    frozen = build_learner(load_config("maml-trpo-point2d", ["learner.args.outer=none", *overrides]), (2,))
    before = [p.detach().clone() for p in frozen.parameters()]
    assert len(frozen.outer_step(tasks, (0, 1))) == 3
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.parameters()))


@pytest.mark.parametrize("first_order", [False, True])
def test_adam_outer_loop_task_loss_has_a_gradient_for_every_parameter(first_order):
    """`outer: adam`: the trainer's engine backpropagates `task_loss` through the inner step."""
    from fastadapt.data import build_suite
    from fastadapt.learners import build_learner

    overrides = ["model.backbone_args.hidden=[8]", "data.args.horizon=6", "train.episodes.shots=3"]
    args = f"learner.args={{outer: adam, first_order: {str(first_order).lower()}}}"
    config = load_config("maml-trpo-point2d", [*overrides, args])
    learner = build_learner(config, (2,))
    assert learner.outer_step([], (0, 1)) is None  # the trainer's default update then runs
    loss, metrics = learner.task_loss(build_suite(config).train_task(0))
    loss.backward()
    assert math.isfinite(metrics["return"]) and metrics["loss"] == loss.item()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in learner.parameters()
    )


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [([], False), (["learner.args.outer=none"], False), (["learner.args.outer=adam"], True)],
)
def test_whole_meta_batch_updates_are_refused_on_several_ranks_before_training(tmp_path, overrides, accepted):
    """TRPO (and the `none` baseline's report) need the whole meta-batch in one process: on 2 ranks
    the trainer stops before any collective or write; the Adam outer loop shards like any learner."""
    from fastadapt.distributed import Context

    trainer = Trainer(load_config("maml-trpo-point2d", TINY + overrides), tmp_path / "run", quiet=True)
    reason = type(trainer.learner).single_process_reason(trainer.learner.args)
    assert (reason is None) == accepted
    if accepted:
        return
    trainer.dist = Context(rank=0, world_size=2, local_rank=0, local_world_size=2, active=False)
    with pytest.raises(
        FastAdaptError, match="runs in one process; with --nproc or torchrun use learner.args.outer=adam"
    ):
        trainer.fit()
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_nproc_refuses_trpo_in_one_line_before_starting_ranks(tmp_path, capsys):
    from fastadapt.cli import main

    code = main(["train", "maml-trpo-point2d", "--nproc", "2", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "fastadapt train: error: learner.args.outer = 'trpo' runs in one process; "
        "with --nproc or torchrun use learner.args.outer=adam"
    ], err
    assert not (tmp_path / "run").exists()  # no rank started, nothing written


def test_test_time_step_sizes_change_only_the_steps_they_size_and_are_recorded(tmp_path, capsys):
    """`fastadapt eval --set learner.args.<test-time setting>`: the fixed test tasks and rollout
    seeds are the run's, so a later-step factor leaves the returns after 0 and 1 steps exactly as
    they were and changes those after 2 and 3; the first step's size changes the return after 1.
    Settings that shape the weights, and out-of-range values, are one-line errors."""
    from fastadapt.cli import main

    run = tmp_path / "run"
    Trainer(load_config("maml-trpo-point2d", TINY + ["train.steps=1"]), run, quiet=True).fit()
    base = json.loads((run / "eval.json").read_text())["other_metrics"]
    assert main(["eval", str(run), "--set", "learner.args.eval_later_lr_factor=0.1"]) == 0
    assert "eval_later_lr_factor 0.1" in capsys.readouterr().out
    (path,) = run.glob("eval-*eval_later_lr_factor0.1.json")
    record = json.loads(path.read_text())
    assert record["test_settings"] == {"eval_later_lr_factor": 0.1}
    later = record["other_metrics"]
    assert [later[f"return_after_{k}"] for k in (0, 1)] == [base[f"return_after_{k}"] for k in (0, 1)]
    assert all(later[f"return_after_{k}"]["mean"] != base[f"return_after_{k}"]["mean"] for k in (2, 3))
    assert json.loads((run / "eval.json").read_text())["other_metrics"] == base  # the run's own result stays
    assert main(["eval", str(run), "--set", "learner.args.inner_lr=0.05"]) == 0
    (path,) = run.glob("eval-*inner_lr0.05.json")
    assert json.loads(path.read_text())["learner"]["inner_lr"] == 0.05  # the record describes the test
    first = json.loads(path.read_text())["other_metrics"]
    assert first["return_after_0"] == base["return_after_0"]
    assert first["return_after_1"]["mean"] != base["return_after_1"]["mean"]
    # the RL table lists the variant under its run, labelled with the setting
    from fastadapt.rl.report import rl_records

    labels = [r["label"] for r in rl_records([run])]
    assert labels == ["run", "run (eval_later_lr_factor 0.1)", "run (inner_lr 0.05)"]
    capsys.readouterr()
    for args, message in [
        (["--set", "learner.args.hidden=3"], "maml-rl's test-time settings are inner_lr, eval_later_lr_factor"),
        (["--set", "learner.args.eval_later_lr_factr=0.1"], "did you mean learner.args.eval_later_lr_factor?"),
        (["--set", "learner.args.eval_later_lr_factor"], "is not key=value"),
        (["--set", "learner.args.eval_inner_steps=2"], "the number of test-time steps is --adapt-steps 2"),
        (["--set", "learner.args.inner_steps=2"], "the number of test-time steps is --adapt-steps 2"),
        (["--split", "nosuch"], "point2d-nav has no split 'nosuch'; valid splits: train, val, test"),
        (["--split", ""], "--split is empty; name a split"),
        (["--data", "imagefolder"], "imagefolder is a classification dataset but the run learned rl"),
        (["--set", "learner.args.eval_later_lr_factor=-1"], "eval_later_lr_factor = -1.0 is out of range"),
        (["--set", "train.steps=3"], "the others need `fastadapt train`"),
        (["--set", "eval.episodes=3"], "use --episodes"),
        (["--set", "data.dataset=cheetah-dir"], "name another dataset with --data DATASET"),
        (["--ways", "5"], "is an RL run: its tasks have no ways; drop --ways"),
    ]:
        assert main(["eval", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    # naming the run's own test split is the run's own test: the same result, in eval.json
    assert main(["eval", str(run), "--split", "test"]) == 0
    assert json.loads((run / "eval.json").read_text())["other_metrics"] == base
    assert not list(run.glob("eval-test-*.json"))
    # another split keeps every data setting of the run (here its 8-step horizon): on the trainer's
    # own validation goals (eval.seed + 1, val_episodes) it reproduces the trainer's validation return
    config = load_config("maml-trpo-point2d", TINY + ["train.steps=1"])
    assert (
        main(
            [
                "eval",
                str(run),
                "--split",
                "val",
                "--episodes",
                str(config.train.val_episodes),
                "--seed",
                str(config.eval.seed + 1),
            ]
        )
        == 0
    )
    (path,) = run.glob("eval-val-*.json")  # the run's own data on a named split: named by the split alone
    record = json.loads(path.read_text())
    with open(run / "metrics.csv") as f:
        validated = [row for row in csv.DictReader(f) if row["val_metric"]]
    assert record["return"] == float(validated[-1]["val_metric"]) and record["data_args"]["horizon"] == 8
    # the results table tells these rows apart: the split's seed, an eval's own data settings
    assert main(["eval", str(run), "--data", "point2d-nav", "--set", "data.args.horizon=6", "--episodes", "3"]) == 0
    assert main(["eval", str(run), "--data", "point2d-nav"]) == 0  # its own dataset, named: eval.json again
    from fastadapt.results import results_table

    rows = [line for line in results_table([run]).splitlines() if "meta-RL" in line]
    assert len(rows) == 5  # eval.json, the two test-time variants, val, the other horizon
    assert sum(f"val tasks, seed {config.eval.seed + 1} (" in row for row in rows) == 1
    assert sum(", horizon=6 (" in row for row in rows) == 1


def test_select_metric_picks_the_iterate_with_the_best_return_after_that_step(tmp_path):
    """The paper tested the iterate with the best return after one step; `train.select_metric`
    selects on it. Every validation row records the return after each step, and the tested
    iterate is the one whose chosen column is best (the default: the main metric's)."""
    picked, histories = {}, []
    for select in ("return_after_0", None):
        run = tmp_path / str(select)
        extra = ["train.val_every=1", "train.val_episodes=2", "data.val_split=val"]
        if select:
            extra.append(f"train.select_metric={select}")
        Trainer(load_config("maml-trpo-point2d", TINY + extra), run, quiet=True).fit()
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
        # the main metric is the return after eval_inner_steps (3) steps: the same column twice
        assert all(float(r["val_metric"]) == float(r["val_return_after_3"]) for r in rows)
        column = f"val_{select}" if select else "val_metric"
        best = max(rows, key=lambda r: float(r[column]))
        picked[select] = json.loads((run / "eval.json").read_text())["selected_step"]
        assert picked[select] == int(best["step"])
        histories.append([{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows])
    assert histories[0] == histories[1]  # selection changes which weights are kept, not training
    assert picked["return_after_0"] != picked[None]  # in this seeded run the column decides


@pytest.mark.parametrize(
    "preset, value, message, validated",
    [
        (
            "maml-trpo-point2d",
            "return_after_4",
            "give one of return, return_after_0, return_after_1, return_after_2",
            True,
        ),
        ("maml-trpo-point2d", "success_rate", "is not a validation metric of learner maml-rl", True),
        ("rl2-point2d", "return_after_2", "give one of return, return_after_0, return_after_1, or null", True),
        ("protonet-omniglot-5w1s", "loss", "selects on its main metric only, so leave train.select_metric null", True),
        ("maml-trpo-point2d", "return_after_1", "picks among validations, but data.val_split is null", False),
        # a main metric's name is checked once the learner is built (before any training)
        ("maml-sinusoid-5shot", "accuracy", "learner maml, whose main metric is mse; give that or null", True),
    ],
)
def test_select_metric_must_be_one_the_learner_reports_before_training(tmp_path, preset, value, message, validated):
    overrides = [f"train.select_metric={value}", f"data.val_split={'val' if validated else 'null'}"]
    with pytest.raises(FastAdaptError, match=message):
        Trainer(load_config(preset, overrides), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    Trainer(load_config("maml-sinusoid-5shot", ["train.select_metric=mse"]), tmp_path / "ok", quiet=True)


def test_after_k_metrics_share_their_base_metric_s_direction():
    from fastadapt.evaluate import better, higher_is_better

    assert higher_is_better("return_after_1") and higher_is_better("success_rate_after_0")
    assert not higher_is_better("mse_after_2")
    assert better("return_after_1", -3.0, -4.0) and not better("mse_after_1", -3.0, -4.0)
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("loss_after_1")


def test_evals_under_the_paper_s_own_test_are_listed_with_its_figures(tmp_path):
    """`fastadapt eval RUN --split paper --episodes 40 --shots 40 --queries 40` carries the paper's
    figures (the preset's `reference.test`); the RL table lists it under its run, labelled with the
    goals and batch, and the paper's row once beneath consecutive such rows."""
    from fastadapt.rl.report import rl_records, rl_table

    def record(split, shots, reference, mean):
        steps = {f"return_after_{k}": {"mean": mean - k, "ci95": 1.0} for k in range(4)}
        return {
            "metric": "return", "return": mean - 3, "other_metrics": steps, "method": "maml-rl",
            "dataset": "point2d-nav", "split": split, "shots": shots, "episodes": 40 if split == "paper" else 100,
            "seed": 1234, "train_steps": 500, "selected_step": 70, "reference": reference,
        }  # fmt: skip

    paper = {"paper": "MAML", **{f"return_after_{k}": -40.0 + k for k in range(4)}}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(record("test", 20, {}, -30)))
        (tmp_path / name / "eval-paper-40shot40q-40ep-seed1234.json").write_text(
            json.dumps(record("paper", 40, paper, -35))
        )
        (tmp_path / name / "eval-val-20shot20q-40ep-seed1235.json").write_text(json.dumps(record("val", 20, {}, -1)))
    records = rl_records([tmp_path / "a", tmp_path / "b"])
    assert [r["label"] for r in records] == [
        "a",
        "a (paper tasks, 40 rollouts/step)",
        "b",
        "b (paper tasks, 40 rollouts/step)",
    ]
    assert [r.get("paper_test", False) for r in records] == [False, True, False, True]
    table = rl_table([r for r in records if r.get("paper_test")]).splitlines()
    assert [row.startswith("| paper | MAML |") for row in table[2:]] == [False, False, True]


def test_eval_on_another_task_family_checks_the_split_then_the_observation_size(tmp_path, capsys):
    pytest.importorskip("mujoco")
    from fastadapt.cli import main

    run = tmp_path / "run"
    Trainer(load_config("maml-trpo-point2d", TINY + ["train.steps=1"]), run, quiet=True).fit()
    for args, message in [
        (
            ["--data", "cheetah-dir", "--split", "bogus"],
            "cheetah-dir has no split 'bogus'; valid splits: train, val, test",
        ),
        (["--data", "cheetah-dir"], "cheetah-dir's observations have 17 values but the run's policy takes 2"),
    ]:
        assert main(["eval", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "image_size" not in err, err
    # a family with the same observations keeps the run's rollout length unless the eval sets one
    cheetah = tmp_path / "cheetah"
    tiny = [*TINY, "train.steps=1", "data.dataset=cheetah-dir", "data.args={horizon: 5}", "eval.episodes=2"]
    Trainer(load_config("maml-trpo-point2d", tiny), cheetah, quiet=True).fit()
    assert main(["eval", str(cheetah), "--data", "cheetah-vel"]) == 0
    assert main(["eval", str(cheetah), "--data", "cheetah-vel", "--set", "data.args.horizon=4"]) == 0
    horizons = sorted(json.loads(p.read_text())["data_args"]["horizon"] for p in cheetah.glob("eval-cheetah-vel*.json"))
    assert horizons == [4, 5]


def test_a_diverged_trpo_run_names_the_trust_region_not_an_lr(tmp_path):
    from fastadapt.divergence import DivergedError

    # goals 1e300 away: squared distances overflow, so the first meta-batch's loss is not finite
    config = load_config("maml-trpo-point2d", [*TINY, "data.args.goal_high=1e300"])
    with pytest.raises(DivergedError, match=r"lower learner.args.max_kl \(now 0.01\) or learner.args.inner_lr") as err:
        Trainer(config, tmp_path / "run", quiet=True).fit()
    assert "train.lr" not in str(err.value)
    # diverged at step 1: nothing was written, so no folder is left to refuse the corrected command
    assert "the run folder held nothing yet and was cleared" in str(err.value) and not (tmp_path / "run").exists()
    adam = load_config("maml-trpo-point2d", [*TINY, "data.args.goal_high=1e300", "learner.args.outer=adam"])
    with pytest.raises(DivergedError, match=r"lower train.lr \(now 0.001\) or learner.args.inner_lr"):
        Trainer(adam, tmp_path / "adam", quiet=True).fit()


def test_results_rows_show_meta_world_success_and_the_family_trained_on():
    from fastadapt.results import _row

    success = {"success_rate_after_0": {"mean": 0.1, "ci95": 0.05}, "success_rate_after_1": {"mean": 0.2, "ci95": 0.06}}
    record = {
        **{"preset": "maml-trpo-ml10", "method": "maml-rl", "dataset": "ml10", "metric": "return", "run": "r"},
        **{"return": 1000.0, "ci95": 10.0, "episodes": 50, "shots": 10, "queries": 10, "adapt_steps": 1},
        **{"other_metrics": success, "reference": {"success_rate_after_1": 0.316}, "train_steps": 12},
    }
    row = _row(record)  # the success rate after the last step, beside the return; the paper's is a success rate
    assert "| return 1000.0 ± 10.0; success 20.0% ± 6.0 | success 31.6% |" in row
    other = _row(
        {**record, "dataset": "cheetah-vel", "trained_on": "cheetah-dir", "other_metrics": {}, "reference": {}}
    )
    assert "cheetah-vel meta-RL, 10 rollouts/step, 1 step, trained on cheetah-dir (50 ep.)" in other
    assert "success" not in other


def test_settings_an_outer_loop_never_reads_warn_and_cannot_be_searched(tmp_path):
    import warnings

    from fastadapt.config import load_raw
    from fastadapt.config_checks import check_config
    from fastadapt.tune_space import check_space, load_space

    with pytest.warns(UserWarning, match=r"train.lr is unused by learner maml-rl here \(outer: trpo steps by"):
        check_config(load_config("maml-trpo-point2d", ["train.lr=0.5"]))
    with pytest.warns(UserWarning, match=r"learner.args.max_kl is unused by learner maml-rl here \(TRPO's, and outer"):
        check_config(load_config("maml-trpo-point2d", ["learner.args.outer=adam", "learner.args.max_kl=0.02"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_config(load_config("maml-trpo-point2d", ["learner.args.max_kl=0.02"]))  # TRPO's: read, no warning
        check_config(load_config("maml-trpo-point2d"))  # a preset's own keys are never warned about
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {low: 0.0001, high: 0.01, log: true}\n")
    with pytest.raises(FastAdaptError, match="train.lr is unused by this learner .outer: trpo steps by"):
        check_space(load_space(space), load_raw("maml-trpo-point2d"), [], str(space))
    check_space(load_space(space), load_raw("maml-trpo-point2d"), ["learner.args.outer=adam"], str(space))
    both = tmp_path / "both.yaml"  # some trials read it (outer: adam): searchable
    both.write_text(space.read_text() + "  learner.args.outer: {choices: [trpo, adam]}\n")
    check_space(load_space(both), load_raw("maml-trpo-point2d"), [], str(both))
