"""ResNet-12, the standard few-shot backbone for RGB benchmarks (mini-ImageNet, CIFAR-FS, CUB).

The network of MetaOptNet (Lee et al. 2019, Sec. 4.1 and their ResNet12_embedding.py), designed
after TADAM (Oreshkin et al. 2018) and SNAIL: four residual blocks of widths 64-160-320-640, each

    x -> [conv3x3 -> BN -> LeakyReLU(0.1)] x 2 -> conv3x3 -> BN  (+ conv1x1 -> BN shortcut of x)
      -> LeakyReLU(0.1) -> maxpool 2x2,

then a global average pool to a 640-d embedding (84 -> 42 -> 21 -> 10 -> 5 pixels before the
pool; MetaOptNet's `avg_pool=True` option: their own mini-ImageNet runs flatten the 640x5x5
maps to 16000-d instead). Convolutions have no bias (BN follows each), initialised
as in MetaOptNet's code.

Left out: DropBlock in blocks 3-4 and dropout in blocks 1-2 (MetaOptNet's regularisers, which
add random state to the forward pass; in their ablation, Table 4, DropBlock is worth about 0.8
points on mini-ImageNet). The network is otherwise the published one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import FastAdaptError
from ..registry import BACKBONES
from .backbones import BNMode, _batch_norm, _check_bn, require

DEFAULT_WIDTHS = (64, 160, 320, 640)


class ResidualBlock(nn.Module):
    """(N, c_in, H, W) -> (N, width, H // 2, W // 2): three 3x3 convs with a 1x1 shortcut."""

    def __init__(self, in_channels: int, width: int, bn: str, channels_last: bool):
        super().__init__()
        self.channels_last = channels_last
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = _batch_norm(width, bn)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = _batch_norm(width, bn)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = _batch_norm(width, bn)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), _batch_norm(width, bn))
        self.act = nn.LeakyReLU(0.1)  # not in-place: MAML differentiates through every activation
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            # A 1-channel input is ambiguous between layouts and convs return NCHW for it;
            # make the block's input NHWC so every conv and pool below runs the NHWC kernels.
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + self.shortcut(x)  # out-of-place: autograd keeps both
        # LeakyReLU (slope > 0) is monotone, so it commutes with max-pooling: pooling first is
        # the same function and gradient on 4x fewer elements.
        return self.act(self.pool(out))


@BACKBONES.register("resnet12")
class ResNet12(nn.Module):
    """ResNet-12 embedding (or classifier with `out_features`).

    Input (N, in_channels, image_size, image_size); output (N, widths[-1]) embeddings, or
    (N, out_features) logits of a linear head on them. `embedding_dim` = widths[-1] (640 by
    default) at any image size >= 16, thanks to the global average pool. Default widths give
    12,424,320 parameters on RGB input (the closed form is in tests/test_resnet12.py).

    `bn`: "transductive" (batch statistics at train and test, no buffers: what MAML adapts as a
    pure function of its parameters) or "inductive" (running averages used in eval mode), as for
    Conv4. `channels_last` stores the weights NHWC and runs every block in NHWC. Measured on a
    2-core CPU (torch 2.13, RGB 84x84, default widths, min of interleaved runs, batches of 16, 32
    and 80): NHWC is 1.3x faster forward (evaluation, prototypes) and on par for forward +
    backward (1.00-1.03x; the 3x3 convolutions dominate, not the pooling that makes NHWC pay for
    Conv4), so the trainer's CPU default (NHWC) suits ResNet-12 as well.
    """

    takes_images = True  # (N, C, H, W) input only: config checks refuse it for vector data

    @dataclass
    class Args:
        """`model.backbone_args` of resnet12 (in_channels, image_size, out_features and
        channels_last are derived from the data and the device by `build_backbone`)."""

        widths: list[int] = field(default_factory=lambda: list(DEFAULT_WIDTHS))  # one per residual block
        bn: BNMode = "transductive"  # batch statistics at test time too (MAML) or running averages

        def __post_init__(self):
            require(
                len(self.widths) == 4 and all(w >= 1 for w in self.widths),
                "widths",
                list(self.widths),
                "4 widths >= 1, one per residual block",
            )
            _check_bn(self.bn)

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        out_features: int | None = None,
        bn: str = "transductive",
        image_size: int = 84,
        channels_last: bool = False,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        self.Args(widths=widths, bn=bn)  # the range checks
        if image_size < 16:  # four 2x2 pools need at least 16 pixels to leave a 1x1 map
            raise FastAdaptError(
                f"resnet12 needs images of at least 16x16 pixels (four 2x2 poolings), got data.image_size={image_size}"
            )
        self.bn = bn
        self.channels_last = channels_last
        self.widths = tuple(widths)
        self.blocks = nn.Sequential(
            *(ResidualBlock(c_in, w, bn, channels_last) for c_in, w in zip([in_channels, *widths[:-1]], widths))
        )
        self.embedding_dim = widths[-1]
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # MetaOptNet's initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.blocks(x).mean((2, 3))  # global average pool: (N, C, h, w) -> (N, C)
        return self.head(z) if self.head is not None else z
