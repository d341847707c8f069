"""Backbones: plain `nn.Module`s, so they work with ordinary training and with `torch.func`.

Optimisation-based learners never mutate these modules; they call them through
`torch.func.functional_call` with a dict of (adapted) parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from ..errors import FastAdaptError
from ..registry import BACKBONES

BNMode = Literal["transductive", "inductive"]
BN_MODES = get_args(BNMode)


def require(ok: bool, key: str, value, allowed: str) -> None:
    """The one-line error of a backbone setting outside its range."""
    if not ok:
        raise FastAdaptError(f"model.backbone_args.{key} = {value!r} is out of range; it must be {allowed}")


def _check_bn(bn: str) -> None:
    if bn not in BN_MODES:
        raise FastAdaptError(f"model.backbone_args.bn must be one of {', '.join(map(repr, BN_MODES))}; got {bn!r}")


def _batch_norm(channels: int, bn: str) -> nn.BatchNorm2d:
    """Transductive BN normalises with the statistics of the batch it sees, at train *and* test
    time (what MAML used: per-episode statistics, no running averages). Inductive BN keeps
    running averages and uses them in eval mode (the usual ProtoNet setting)."""
    _check_bn(bn)
    return nn.BatchNorm2d(channels, track_running_stats=(bn == "inductive"))


@BACKBONES.register("conv4")
class Conv4(nn.Module):
    """The standard few-shot backbone: 4 x [conv3x3(hidden) -> BN -> ReLU -> maxpool2].

    ReLU and max-pooling commute (both are monotone), so each block applies the pool first and
    the ReLU to 4x fewer elements: the same function and gradients, measurably faster on CPU.

    On 28x28 Omniglot the output is a 64-d vector (1x1 spatial); on 84x84 images 1600-d.
    `out_features` adds a linear head (for MAML-style classifiers); None returns embeddings.
    `channels_last` runs the convolutions in NHWC layout: on CPU, PyTorch's NCHW max-pool is
    ~15x slower than its NHWC kernel on these shapes (benchmarks/README.md), so this is the CPU
    default of the trainer. Parameters are stored NHWC too, so adapted weights stay NHWC.

    `pooled_blocks` < 4 pools only in the first blocks (the Relation Network embedding pools in
    two: 28x28 -> 64x7x7) and `flatten=False` returns the feature maps (hidden, side, side),
    given by `feature_shape`, for learners that compare images spatially.
    """

    takes_images = True  # (N, C, H, W) input only: config checks refuse it for vector data

    @dataclass
    class Args:
        """`model.backbone_args` of conv4 (in_channels, image_size, out_features and channels_last
        are derived from the data, the learner and the device by `build_backbone`)."""

        hidden: int = 64  # channels of every conv block
        bn: BNMode = "transductive"  # batch statistics at test time too (MAML) or running averages (ProtoNet)
        pooled_blocks: int = 4  # how many of the 4 blocks end in a 2x2 max-pool (relation: 2)
        flatten: bool = True  # False: return (hidden, side, side) feature maps, not vectors

        def __post_init__(self):
            require(self.hidden >= 1, "hidden", self.hidden, ">= 1")
            _check_bn(self.bn)
            require(0 <= self.pooled_blocks <= 4, "pooled_blocks", self.pooled_blocks, "in 0..4")

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = None,
        bn: str = "transductive",
        image_size: int = 28,
        channels_last: bool = False,
        pooled_blocks: int = 4,
        flatten: bool = True,
    ):
        super().__init__()
        self.Args(hidden=hidden, bn=bn, pooled_blocks=pooled_blocks, flatten=flatten)  # the range checks
        if out_features and not flatten:
            raise FastAdaptError(
                "this learner puts a linear head on the backbone, which needs model.backbone_args.flatten=true"
            )
        if image_size >> pooled_blocks < 1:
            raise FastAdaptError(
                f"conv4 with {pooled_blocks} poolings needs images of at least "
                f"{2**pooled_blocks}x{2**pooled_blocks} pixels, got data.image_size={image_size}; "
                f"lower model.backbone_args.pooled_blocks"
            )
        self.channels_last = channels_last
        self.flatten = flatten
        layers: list[nn.Module] = []
        for i in range(4):
            pool = [nn.MaxPool2d(2)] if i < pooled_blocks else []
            layers += [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
                _batch_norm(hidden, bn),
                *pool,
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.bn = bn
        side = image_size
        for _ in range(pooled_blocks):
            side //= 2
        self.feature_shape = (hidden, side, side)
        self.embedding_dim = hidden * side * side
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features else None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features:
            x = layer(x)
            if self.channels_last and isinstance(layer, nn.Conv2d):
                # A 1-channel input is ambiguous between layouts and the first conv returns
                # NCHW; make every block's activations NHWC (a no-op when they already are).
                x = x.contiguous(memory_format=torch.channels_last)
        if not self.flatten:
            return x
        z = x.flatten(1)
        return self.head(z) if self.head is not None else z


@BACKBONES.register("mlp")
class MLP(nn.Module):
    """Fully connected ReLU network; the MAML sinusoid model is MLP(1, (40, 40), 1).

    With `out_features` None (metric learners, which take no head) it is an embedding network:
    the last hidden layer is its output, linear (no ReLU), so `embedding_dim` = hidden[-1];
    e.g. a small adapter on frozen sentence embeddings. `hidden: []` with a head is a linear model.
    """

    @dataclass
    class Args:
        """`model.backbone_args` of mlp (in_features and out_features are derived)."""

        hidden: tuple[int, ...] = (40, 40)  # widths of the hidden ReLU layers, input to output

        def __post_init__(self):
            require(all(h >= 1 for h in self.hidden), "hidden", list(self.hidden), "a list of widths >= 1")

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int | None = 1):
        super().__init__()
        self.Args(hidden=tuple(hidden))  # the range checks
        if out_features is None and not hidden:
            raise FastAdaptError("an mlp without a head needs model.backbone_args.hidden (its output widths)")
        dims = [in_features, *hidden] if out_features is not None else [in_features, *hidden[:-1]]
        out = out_features if out_features is not None else hidden[-1]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], out))
        self.net = nn.Sequential(*layers)
        self.embedding_dim = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@BACKBONES.register("raw-input")
class RawInput(nn.Module):
    """The input itself, flattened: neural processes encode raw (x, y) pairs, as the papers do."""

    @dataclass
    class Args:
        """raw-input has no settings (in_features is derived from the data)."""

    def __init__(self, in_features: int = 1):
        super().__init__()
        self.embedding_dim = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)
