"""The learner contract of fastadapt/learners/base.py, for every registered learner.

`predict` never needs query labels; support sets may be unbalanced and in any order; the primary
metric's direction is declared; settings are a typed, documented `Args` dataclass whose typos and
bad values are one-line errors. Plus the ProtoNet prototypes by label in closed form, and the
one-line errors of `model.backbone_args`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import torch
from torch import nn

from fastadapt.cli import main
from fastadapt.config import config_from_dict
from fastadapt.data.episode import Episode
from fastadapt.errors import FastAdaptError
from fastadapt.evaluate import METRICS
from fastadapt.learners import build_learner
from fastadapt.learners.metric.protonet import ProtoNet, prototypes
from fastadapt.models import build_backbone
from fastadapt.models.backbones import Conv4
from fastadapt.registry import LEARNERS

NAMES = LEARNERS.names()
WAYS, SIZE, NUM_TRAIN_CLASSES = 3, 16, 6
#: Small networks and short test-time fine-tuning, so every learner runs in well under a second.
SMALL_ARGS = {
    "cnp": {"encoder": [8, 8], "decoder": [8]},
    "np": {"encoder": [8, 8], "latent_encoder": [8], "latent_dim": 3, "decoder": [8]},
    "gnn": {"layers": 1, "node_features": 6},
    "relation": {"hidden": 6, "fc_hidden": 4},
    "reptile": {"eval_inner_iters": 3, "eval_inner_batch": 3},
    "baseline": {"finetune_epochs": 2},
    "baseline++": {"finetune_epochs": 2},
    "multitask": {"finetune_epochs": 2, "group_size": 3},
    "maml": {"eval_inner_steps": 2},
    "encoder-finetune": {"train_layers": 1, "epochs": 1},
    "contrastive-finetune": {"train_layers": 1, "epochs": 1, "pair_iterations": 1},
}
#: Image backbones (inductive BN: eval-mode predictions are per item) for learners that need a special one.
IMAGE_BACKBONES = {"relation": {"hidden": 8, "bn": "inductive", "pooled_blocks": 2, "flatten": False}}


def make_config(name: str, args: dict | None = None, regression: bool = False, backbone=None):
    cls = LEARNERS.get(name)
    if backbone is None:
        if regression:  # an MLP for learners with a head, the raw (x) for encoders (CNP, NP)
            backbone = ("mlp", {"hidden": [8]}) if cls.needs_head else ("raw-input", {})
        else:
            backbone = ("conv4", IMAGE_BACKBONES.get(name, {"hidden": 8, "bn": "inductive"}))
    return config_from_dict(
        {
            "learner": {"name": name, "args": SMALL_ARGS.get(name, {}) if args is None else args},
            "model": {"backbone": backbone[0], "backbone_args": backbone[1], "channels_last": False},
            "train": {"episodes": {"ways": None if regression else WAYS, "shots": 2, "queries": 3}},
        }
    )


def build(name: str, regression: bool = False, **kwargs):
    torch.manual_seed(0)
    shape = (1,) if regression else (1, SIZE, SIZE)
    learner = build_learner(
        make_config(name, regression=regression, **kwargs),
        shape,
        num_train_classes=None if regression else NUM_TRAIN_CLASSES,
    )
    return learner.eval()


def image_episode(shots=(2, 2, 2), queries=5, seed=0, order=None) -> Episode:
    """Support with `shots[c]` images of class c, class-major unless `order` permutes it; no query labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(shots)])
    x = torch.rand(len(labels), 1, SIZE, SIZE, generator=g)
    query = torch.rand(queries, 1, SIZE, SIZE, generator=g)
    if order is not None:
        x, labels = x[order], labels[order]
    balanced = len(set(shots)) == 1
    return Episode(x, labels, query, None, ways=len(shots), shots=shots[0] if balanced else None)


def token_episode(shots=(2, 2, 2), queries=5, seed=0, order=None) -> Episode:
    """`image_episode` for learners that read int64 token ids (`inputs == "tokens"`): random
    word-piece ids of random lengths, padded with 0 (the BERT pad id); no query labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(shots)])
    ids = torch.randint(1000, 5000, (len(labels) + queries, 8), generator=g)
    ids[torch.arange(8)[None] >= torch.randint(3, 9, (len(ids),), generator=g)[:, None]] = 0
    x, query = ids[: len(labels)], ids[len(labels) :]
    if order is not None:
        x, labels = x[order], labels[order]
    balanced = len(set(shots)) == 1
    return Episode(x, labels, query, None, ways=len(shots), shots=shots[0] if balanced else None)


def episode_for(name: str, *args, **kwargs) -> Episode:
    """A classification episode in the input kind learner `name` reads (images unless it says tokens)."""
    tokens = getattr(LEARNERS.get(name), "inputs", None) == "tokens"
    return (token_episode if tokens else image_episode)(*args, **kwargs)


def regression_episode(shots=5, queries=7, seed=0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shots + queries, 1, generator=g) * 10 - 5
    return Episode(x[:shots], torch.sin(x[:shots]), x[shots:], None, ways=None, shots=shots)


def shuffled_order(labels: torch.Tensor, keep_class_order: bool, seed: int = 1) -> torch.Tensor:
    """A random permutation of the support; with `keep_class_order` the classes are interleaved
    at random but each class keeps its own item order (what mini-batching learners promise)."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    if not keep_class_order:
        return perm
    target, order = labels[perm], torch.empty_like(perm)
    for c in labels.unique():
        order[target == c] = (labels == c).nonzero().squeeze(1)
    return order


def is_classifier(name: str) -> bool:
    return LEARNERS.get(name).problem == "classification"


CLASSIFIERS = [n for n in NAMES if is_classifier(n)]


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("name", NAMES)
def test_args_is_a_documented_dataclass_with_defaults(name):
    args_cls = LEARNERS.get(name).Args
    assert args_cls is not None and dataclasses.is_dataclass(args_cls), f"{name} has no Args dataclass"
    args_cls()  # every field has a default
    for f in dataclasses.fields(args_cls):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
        owner = next(k for k in args_cls.__mro__ if f.name in k.__dict__.get("__annotations__", {}))
        source = inspect.getsource(owner)
        assert re.search(rf"^\s*{f.name}\s*:[^\n]*#\s*\S", source, re.M), f"{name}: Args.{f.name} has no comment"


@pytest.mark.parametrize("name", NAMES)
def test_a_typo_in_learner_args_is_one_line_naming_the_valid_keys(name):
    regression = not is_classifier(name)
    with pytest.raises(FastAdaptError) as error:
        build(name, regression, args={"not_a_setting": 1})
    message = str(error.value)
    assert "learner.args.not_a_setting" in message and len(message.splitlines()) == 1, message
    keys = [f.name for f in dataclasses.fields(LEARNERS.get(name).Args)]
    assert all(k in message for k in keys) if keys else "no settings" in message, message


@pytest.mark.parametrize(
    "name,args,expected",
    [
        ("maml", {"inner_steps": 0}, "learner.args.inner_steps = 0 is out of range; it must be >= 1"),
        ("anil", {"msl_fraction": 1.5}, "learner.args.msl_fraction = 1.5 is out of range; it must be in [0, 1]"),
        ("maml", {"lslr": True, "learn_inner_lr": True}, "learner.args.learn_inner_lr = True"),
        ("metasgd", {"lslr": True}, "learner.args.lslr = True is out of range; it must be false for metasgd"),
        ("reptile", {"betas": [0.5]}, "learner.args.betas = [0.5] is out of range; it must be two numbers in [0, 1)"),
        ("reptile", {"inner_optimizer": "rmsprop"}, "learner.args.inner_optimizer must be one of 'adam', 'sgd'"),
        ("siamese", {"loss": "triplet"}, "learner.args.loss must be one of 'koch', 'contrastive'"),
        ("matching", {"fce_steps": 0}, "learner.args.fce_steps = 0 is out of range; it must be >= 1"),
        ("baseline", {"finetune_lr": -0.1}, "learner.args.finetune_lr = -0.1 is out of range; it must be > 0"),
        ("multitask", {"group_size": 9}, "learner.args.group_size = 9 is out of range; it must be in [2, 6]"),
        ("gnn", {"node_features": "many"}, "learner.args.node_features must be int"),
    ],
)
def test_bad_learner_values_are_one_line_errors(name, args, expected):
    with pytest.raises(FastAdaptError) as error:
        build(name, args=args)
    assert expected in str(error.value) and len(str(error.value).splitlines()) == 1, str(error.value)


# ------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("name", NAMES)
def test_primary_metric_direction_is_declared(name):
    learner = build(name, regression=not is_classifier(name))
    assert learner.primary_metric in METRICS


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_predict_without_query_labels(name):
    learner = build(name)
    prediction = learner.predict(episode_for(name))
    assert prediction.shape == (5, WAYS) and torch.isfinite(prediction).all()


@pytest.mark.parametrize("name", NAMES)
def test_regression_predict_without_query_labels(name):
    try:
        learner = build(name, regression=True)
    except FastAdaptError:
        pytest.skip(f"{name} is classification only")
    if learner.problem != "regression":
        pytest.skip(f"{name} is classification only")
    prediction = learner.predict(regression_episode())
    assert prediction.shape == (7, 1) and torch.isfinite(prediction).all()


@pytest.mark.parametrize("shots", [(2, 2, 2), (1, 3, 2)], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_support_order_does_not_change_predictions(name, shots):
    """Any order for order-invariant learners; mini-batching ones (`order_invariant` False) group by
    label stably, so only each class's own item order may matter to them."""
    learner = build(name)
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(shots)])
    order = shuffled_order(labels, keep_class_order=not learner.order_invariant)
    assert not torch.equal(order, torch.arange(len(labels)))
    reference = learner.predict(episode_for(name, shots))
    shuffled = learner.predict(episode_for(name, shots, order=order))
    assert shuffled.shape == (5, WAYS) and torch.isfinite(shuffled).all()
    torch.testing.assert_close(shuffled, reference, rtol=1e-4, atol=1e-5)


def test_matching_fce_reads_the_support_grouped_by_label():
    """The full-context LSTM reads the support as a sequence: it is grouped by label first."""
    learner = build("matching", args={"fce": True, "fce_steps": 2})
    assert not learner.order_invariant
    order = shuffled_order(torch.tensor([0, 1, 1, 1, 2, 2]), keep_class_order=True)
    torch.testing.assert_close(
        learner.predict(image_episode((1, 3, 2), order=order)),
        learner.predict(image_episode((1, 3, 2))),
        rtol=1e-4,
        atol=1e-5,
    )


# ------------------------------------------------------------------------------ ProtoNet by label


def test_protonet_prototypes_by_label_closed_form():
    # Unbalanced (2, 3, 1 shots) and shuffled: class means by hand, exact in binary floating point.
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [0.0, 1.0], [2.0, -2.0]])
    y = torch.tensor([1, 0, 1, 2, 1, 0])
    expected = torch.tensor([[(3 + 2) / 2, (4 - 2) / 2], [(1 + 5 + 0) / 3, (2 + 6 + 1) / 3], [7.0, 8.0]])
    assert torch.equal(prototypes(z, y, 3), expected)
    # ... and through ProtoNet.predict (identity backbone): minus squared distances to those means.
    learner = ProtoNet(nn.Flatten())
    queries = torch.tensor([[0.0, 0.0], [2.0, 3.0]])
    logits = learner.predict(Episode(z, y, queries, None, ways=3))
    torch.testing.assert_close(logits, -((queries[:, None] - expected[None]) ** 2).sum(-1))


@pytest.mark.parametrize("ways,shots,dim", [(5, 5, 1600), (20, 1, 64), (5, 15, 64)])
def test_protonet_prototypes_equal_the_class_major_reshape_mean(ways, shots, dim):
    """The former `view(ways, shots, D).mean(1)`: bitwise equal on class-major support sets (CPU),
    and equal to rounding on a shuffled copy and on the unbalanced set with the balanced means."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(ways * shots, dim, generator=g) * 3 + 1
    y = torch.arange(ways).repeat_interleave(shots)
    reshaped = z.view(ways, shots, dim).mean(1)
    assert torch.equal(prototypes(z, y, ways), reshaped)
    perm = torch.randperm(len(y), generator=g)
    torch.testing.assert_close(prototypes(z[perm], y[perm], ways), reshaped)
    # Adding a class's own mean as an extra shot leaves its mean unchanged: unbalanced, same prototypes.
    extra = torch.cat([z, reshaped[:1]]), torch.cat([y, torch.zeros(1, dtype=torch.long)])
    torch.testing.assert_close(prototypes(*extra, ways), reshaped)


# ------------------------------------------------------------------------------ backbone settings


def test_backbone_args_typos_and_bad_values_are_one_line_errors():
    image, vector = (1, 28, 28), (1,)
    cases = [
        (
            "conv4",
            {"bn": "typo"},
            image,
            "model.backbone_args.bn must be one of 'transductive', 'inductive'; got 'typo'",
        ),
        (
            "conv4",
            {"hiden": 8},
            image,
            "unknown setting model.backbone_args.hiden; valid keys here: bn, flatten, hidden, pooled_blocks",
        ),
        (
            "conv4",
            {"pooled_blocks": 5},
            image,
            "model.backbone_args.pooled_blocks = 5 is out of range; it must be in 0..4",
        ),
        ("mlp", {"hidden": [8, 0]}, vector, "model.backbone_args.hidden = [8, 0] is out of range"),
        ("raw-input", {"width": 3}, vector, "unknown setting model.backbone_args.width; there are no settings here"),
    ]
    for name, args, shape, expected in cases:
        with pytest.raises(FastAdaptError) as error:
            build_backbone(name, args, out_features=None, input_shape=shape)
        assert expected in str(error.value) and len(str(error.value).splitlines()) == 1, str(error.value)
    with pytest.raises(FastAdaptError, match="model.backbone_args.bn must be one of"):
        Conv4(bn="typo")  # the Python API checks the same way
    with pytest.raises(FastAdaptError, match="model.backbone_args.flatten=true"):
        build_backbone("conv4", {"flatten": False}, out_features=3, input_shape=(1, 28, 28))


def test_backbone_bn_typo_through_the_cli_is_one_line(omniglot_fixture_root, tmp_path, capsys):
    code = main(
        [
            "train",
            "protonet-omniglot-quick",
            "--data-root",
            str(omniglot_fixture_root),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--set",
            "model.backbone_args.bn=typo",
            "--set",
            "data.train_split=background",
            "--set",
            "data.test_split=evaluation",
            "--set",
            "train.episodes.ways=2",
            "--set",
            "eval.ways=2",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "model.backbone_args.bn must be one of 'transductive', 'inductive'; got 'typo'" in err
