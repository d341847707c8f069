"""ResNet-12 (fastadapt/models/resnet12.py) and Conv-4 on RGB 84x84: shapes, the closed-form
parameter count, second-order gradients through torch.func.functional_call against finite
differences, NHWC == NCHW, and BatchNorm state by mode."""

import math

import pytest
import torch
from torch.func import functional_call

from fastadapt.config import build_dataclass
from fastadapt.errors import FastAdaptError
from fastadapt.models import build_backbone
from fastadapt.models.backbones import Conv4
from fastadapt.models.resnet12 import DEFAULT_WIDTHS, ResNet12
from fastadapt.registry import BACKBONES

TINY = [2, 3, 3, 4]  # four blocks, as the default, at a width that makes gradient checks cheap


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is as fast, and on a loaded machine it avoids OpenMP
    barrier stalls (measured: the gradient check took 1 s or 28 s with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def closed_form_parameter_count(in_channels: int, widths, out_features: int | None = None) -> int:
    """Block b maps c = widths[b-1] (in_channels for b = 1) to w = widths[b] channels with
    three bias-free 3x3 convs (9cw + 9w^2 + 9w^2), a bias-free 1x1 shortcut conv (cw) and four
    BatchNorms (gamma and beta: 4 * 2w):  P_b = 9w(c + 2w) + cw + 8w.  A head adds (W + 1)k
    for W = widths[-1] features and k outputs. Default widths on RGB:
    76,160 + 564,480 + 2,357,760 + 9,425,920 = 12,424,320."""
    total = 0
    for c, w in zip([in_channels, *widths[:-1]], widths):
        total += 9 * w * (c + 2 * w) + c * w + 8 * w
    if out_features:
        total += (widths[-1] + 1) * out_features
    return total


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ shapes and size


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [84, 32])
def test_output_shapes(channels, size):
    torch.manual_seed(0)
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        small = ResNet12(in_channels=channels, widths=[4, 8, 8, 16], image_size=size)
        assert small(x).shape == (2, 16) and small.embedding_dim == 16
        head = ResNet12(in_channels=channels, widths=TINY, image_size=size, out_features=5)
        assert head(x).shape == (2, 5) and head.embedding_dim == TINY[-1]
    with torch.device("meta"):  # the default widths, shapes only (no 12M-parameter init)
        model = ResNet12(in_channels=channels, image_size=size)
        assert model(torch.empty(2, channels, size, size)).shape == (2, 640) and model.embedding_dim == 640


def test_parameter_count_matches_the_closed_form():
    assert closed_form_parameter_count(3, DEFAULT_WIDTHS) == 12_424_320
    with torch.device("meta"):
        assert n_params(ResNet12()) == 12_424_320
        assert n_params(ResNet12(in_channels=1, out_features=5)) == closed_form_parameter_count(1, DEFAULT_WIDTHS, 5)
    assert n_params(ResNet12(widths=TINY, out_features=3)) == closed_form_parameter_count(3, TINY, 3)


def test_rejects_bad_shapes_and_modes():
    with pytest.raises(FastAdaptError, match="model.backbone_args.widths .* 4 widths >= 1"):
        ResNet12(widths=[64, 160, 320])
    with pytest.raises(FastAdaptError, match="model.backbone_args.widths"):
        ResNet12(widths=[64, 0, 320, 640])
    with pytest.raises(FastAdaptError, match="at least 16x16 pixels.*data.image_size=8"):
        ResNet12(image_size=8)
    with pytest.raises(FastAdaptError, match="model.backbone_args.bn must be one of"):
        ResNet12(widths=TINY, bn="typo")


# ------------------------------------------------------------------------------ config and registry


def test_registered_and_built_from_typed_args():
    assert BACKBONES.get("resnet12") is ResNet12
    model = build_backbone(
        "resnet12", {"widths": TINY, "bn": "inductive"}, out_features=None, input_shape=(3, 32, 32), channels_last=False
    )
    assert isinstance(model, ResNet12) and model.embedding_dim == 4 and model.bn == "inductive"
    # The Args dataclass lists the user-facing settings only, with the constructor's defaults.
    args = build_dataclass(ResNet12.Args, {}, "model.backbone_args")
    assert args.widths == list(DEFAULT_WIDTHS) and args.bn == ResNet12().bn
    assert build_dataclass(ResNet12.Args, {"widths": TINY}, "model.backbone_args").widths == TINY
    with pytest.raises(FastAdaptError, match="model.backbone_args.bn must be one of"):
        build_dataclass(ResNet12.Args, {"bn": "typo"}, "model.backbone_args")
    with pytest.raises(FastAdaptError, match="valid keys here: bn, widths"):
        build_dataclass(ResNet12.Args, {"width": TINY}, "model.backbone_args")


# ------------------------------------------------------------------------------ second-order gradients


@pytest.mark.usefixtures("float64")
def test_second_order_functional_gradient_matches_finite_differences():
    """Meta-loss F(theta) = L_q(theta - alpha * grad L_s(theta)) computed with functional_call,
    as MAML does: autograd's double-backward directional derivative <grad F, v> equals central
    differences of F (float64), and the module's own parameters are never touched."""
    torch.manual_seed(0)
    model = ResNet12(in_channels=3, widths=TINY, out_features=3, image_size=16, bn="transductive")
    g = torch.Generator().manual_seed(0)
    xs, xq = torch.rand(6, 3, 16, 16, generator=g), torch.rand(6, 3, 16, 16, generator=g)
    ys = yq = torch.arange(3).repeat(2)
    loss_fn = torch.nn.functional.cross_entropy
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def meta_loss(theta, create_graph):
        inner = loss_fn(functional_call(model, theta, (xs,)), ys)
        grads = torch.autograd.grad(inner, tuple(theta.values()), create_graph=create_graph)
        fast = {n: p - 0.5 * gr for (n, p), gr in zip(theta.items(), grads)}
        return loss_fn(functional_call(model, fast, (xq,)), yq)

    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    grads = torch.autograd.grad(meta_loss(params, create_graph=True), tuple(params.values()))
    # LeakyReLU and max-pooling make F piecewise smooth: the step must not cross a kink (at 1e-6
    # one of these directions does; float64 central differences are still exact to ~1e-8 at 1e-7).
    eps = 1e-7
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
        shifted = [
            {n: (p + s * eps * direction[n]).detach().requires_grad_() for n, p in params.items()} for s in (1, -1)
        ]
        numeric = (meta_loss(shifted[0], False) - meta_loss(shifted[1], False)).item() / (2 * eps)
        analytic = sum((gr * direction[n]).sum() for gr, n in zip(grads, params)).item()
        assert math.isclose(analytic, numeric, rel_tol=1e-5, abs_tol=1e-9), (analytic, numeric)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------ layout and BN state


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_gives_the_nchw_output(channels):
    torch.manual_seed(0)
    nchw = ResNet12(in_channels=channels, widths=[8, 8, 16, 16], image_size=32, out_features=4)
    nhwc = ResNet12(in_channels=channels, widths=[8, 8, 16, 16], image_size=32, out_features=4, channels_last=True)
    nhwc.load_state_dict(nchw.state_dict())
    assert nhwc.blocks[1].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(5, channels, 32, 32, requires_grad=True)
    out_a, out_b = nchw(x), nhwc(x)
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    (grad_a,) = torch.autograd.grad(out_a.sum(), x)
    (grad_b,) = torch.autograd.grad(out_b.sum(), x)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5)


def test_transductive_bn_keeps_no_running_stats():
    model = ResNet12(widths=TINY, image_size=16, bn="transductive")
    assert list(model.buffers()) == []
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}
    x = torch.rand(4, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_out = model.train()(x)
    eval_out = model.eval()(x)  # batch statistics in eval mode too: the same function
    torch.testing.assert_close(eval_out, train_out)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    inductive = ResNet12(widths=TINY, image_size=16, bn="inductive")
    assert any(n.endswith("running_mean") for n, _ in inductive.named_buffers())


# ------------------------------------------------------------------------------ Conv-4 on RGB 84x84


def test_conv4_on_rgb_84():
    """Conv-4 on mini-ImageNet-shaped input: 84 -> 42 -> 21 -> 10 -> 5, so 64 x 5 x 5 = 1600-d."""
    torch.manual_seed(0)
    model = build_backbone(
        "conv4", {"hidden": 64, "bn": "inductive"}, out_features=None, input_shape=(3, 84, 84), channels_last=False
    )
    assert model.embedding_dim == 1600 and model.feature_shape == (64, 5, 5)
    nhwc = Conv4(in_channels=3, image_size=84, bn="inductive", channels_last=True)
    nhwc.load_state_dict(model.state_dict())
    x = torch.rand(4, 3, 84, 84)
    with torch.no_grad():
        out = model.eval()(x)
        assert out.shape == (4, 1600)
        torch.testing.assert_close(nhwc.eval()(x), out, rtol=1e-4, atol=1e-5)
    head = Conv4(in_channels=3, hidden=32, image_size=84, out_features=5)  # MAML's 32-filter net
    assert head(x).shape == (4, 5) and head.embedding_dim == 800
