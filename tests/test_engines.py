"""The vmap engine: its meta-gradient is the serial engine's (itself checked against finite
differences in test_optimization.py) and a central finite difference of the mean task loss,
for every chunking; and the engine choice and its errors."""

import pytest
import torch
from helpers import image_task

from fastadapt.engine import ForkEngine, SerialEngine, VmapEngine, make_engine
from fastadapt.errors import FastAdaptError
from fastadapt.learners.metric.protonet import ProtoNet
from fastadapt.learners.optimization.maml import FOMAML, MAML
from fastadapt.models.backbones import Conv4

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # the CUDA device only steers `auto`; nothing runs on it


pytestmark = pytest.mark.usefixtures("float64")


def learner_of(cls=MAML, **kwargs):
    torch.manual_seed(0)
    return cls.build(Conv4(hidden=4, out_features=3, bn="transductive", image_size=16), 3, inner_lr=0.3, **kwargs)


def engine_grads(engine, learner, tasks):
    learner.zero_grad(set_to_none=True)
    metrics = engine.meta_gradient(learner, tasks)
    return metrics, {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cls", [MAML, FOMAML])
@pytest.mark.parametrize("chunk_size", [1, 3, 0])
def test_vmap_meta_gradient_equals_the_serial_loop(cls, chunk_size):
    """5 tasks: chunk 3 leaves a ragged last chunk of 2; 0 runs all 5 in one call."""
    learner = learner_of(cls, inner_steps=2)
    tasks = [image_task(s) for s in range(5)]
    serial_metrics, serial = engine_grads(SerialEngine(), learner, tasks)
    vmap_metrics, vmapped = engine_grads(
        make_engine("vmap", learner, CPU, len(tasks), chunk_size=chunk_size), learner, tasks
    )
    assert set(vmapped) == set(serial) and len(serial) > 0
    for name in serial:
        torch.testing.assert_close(vmapped[name], serial[name], rtol=1e-9, atol=1e-12)
    assert [m["loss"] for m in vmap_metrics] == pytest.approx([m["loss"] for m in serial_metrics], rel=1e-10)


def test_vmap_meta_gradient_matches_a_finite_difference_of_the_mean_loss():
    learner = learner_of(MAML, inner_steps=2)
    tasks = [image_task(s) for s in range(3)]
    _, grads = engine_grads(VmapEngine(learner, chunk_size=2), learner, tasks)
    params = {n: p for n, p in learner.named_parameters() if n in grads}
    g = torch.Generator().manual_seed(7)
    direction = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}

    def mean_loss():
        return sum(learner.task_loss(t)[0].item() for t in tasks) / len(tasks)

    eps, values = 1e-6, []
    for sign in (1, -1):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(sign * eps * direction[n])
        values.append(mean_loss())
        with torch.no_grad():
            for n, p in params.items():
                p.sub_(sign * eps * direction[n])
    analytic = sum((grads[n] * direction[n]).sum().item() for n in params)
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-5)


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("double backward is not supported\nmore detail")


@pytest.mark.parametrize("fail_in", ["forward", "backward"])
def test_compile_falls_back_to_eager_with_a_warning(monkeypatch, fail_in):
    """A compiler that cannot handle the batched loss (e.g. its double backward) must not stop
    training: the engine undoes the failed chunk, warns once and runs eagerly, with the same
    gradient. A failing backward may already have accumulated some parameters' gradients."""

    def failing_compile(fn, **kwargs):
        def compiled(*args):
            if fail_in == "forward":
                raise RuntimeError("double backward is not supported\nmore detail")
            return fn(*args) * FailingBackward.apply(torch.ones(1, requires_grad=True))

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    learner = learner_of(MAML)
    tasks = [image_task(s) for s in range(3)]
    _, serial = engine_grads(SerialEngine(), learner, tasks)
    engine = make_engine("vmap", learner, CPU, 3, chunk_size=2, compile=True)
    with pytest.warns(RuntimeWarning, match="double backward is not supported.*running it eagerly"):
        _, vmapped = engine_grads(engine, learner, tasks)
    for name in serial:
        torch.testing.assert_close(vmapped[name], serial[name], rtol=1e-9, atol=1e-12)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        engine_grads(engine, learner, tasks)


def test_compile_with_another_engine_warns_that_it_is_ignored():
    with pytest.warns(RuntimeWarning, match="vmap engine only"):
        assert isinstance(make_engine("serial", learner_of(), CPU, 4, compile=True), SerialEngine)


def test_auto_picks_vmap_on_cuda_for_batchable_learners_only():
    assert isinstance(make_engine("auto", learner_of(), CUDA, 8), VmapEngine)
    assert isinstance(make_engine("auto", learner_of(), CUDA, 1), SerialEngine)
    assert isinstance(make_engine("auto", learner_of(checkpoint_inner=True), CUDA, 8), SerialEngine)
    assert isinstance(make_engine("auto", ProtoNet(Conv4(bn="transductive")), CUDA, 8), SerialEngine)
    nhwc = MAML.build(Conv4(hidden=4, out_features=3, image_size=16, channels_last=True), 3)
    assert isinstance(make_engine("auto", nhwc, CUDA, 8), SerialEngine)
    engine = make_engine("auto", learner_of(), CPU, 8, 2)
    try:
        assert isinstance(engine, ForkEngine)  # the CPU choice is unchanged
    finally:
        engine.close()


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: make_engine("vmap", ProtoNet(Conv4(bn="transductive")), CPU, 4),
            "needs a learner with batched_task_loss",
        ),
        (
            lambda: make_engine("vmap", MAML.build(Conv4(hidden=4, out_features=3, bn="inductive"), 3), CPU, 4),
            "stateless",
        ),
        (lambda: make_engine("vmap", learner_of(), CPU, 4, chunk_size=-1), "chunk_size must be >= 0"),
    ],
)
def test_vmap_engine_configuration_errors(make, match):
    with pytest.raises(FastAdaptError, match=match):
        make()


def test_vmap_engine_refuses_ragged_meta_batches():
    learner = learner_of()
    with pytest.raises(FastAdaptError, match="equal shapes"):
        VmapEngine(learner).meta_gradient(learner, [image_task(0), image_task(1, queries=3)])
