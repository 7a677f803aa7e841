"""The five-block CNN of Hadush et al. 2020 with a benign/malignant classification head.

Each block: 3x3 convolution (stride 1, same padding) -> ReLU -> batch normalisation -> 2x2 max-pooling -> dropout,
as the case study describes; the head average-pools the last feature map to ``pool_size`` x ``pool_size`` (so any
input side that is a multiple of 32 works), flattens it and applies a hidden fully connected layer (ReLU, dropout)
and a 2-way output (logits: benign, malignant).

Reference: Hadush, Girmay, Sinamo, Hagos, "Breast Cancer Detection Using Convolutional Neural Networks",
arXiv:2003.07911 (2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """3x3 conv (stride 1, same padding) -> ReLU -> BatchNorm -> 2x2 max-pool -> dropout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=False)  # not in-place: Grad-CAM hooks read this output
        self.norm = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.drop = nn.Dropout(dropout)


class HadushCNN(nn.Module):
    """Five convolutional blocks and a fully connected head.

    Args:
        in_channels: image channels (1 for mammograms).
        num_classes: output logits (2: benign, malignant).
        channels: output channels of the five blocks (the width).
        dropout: dropout after every block and in the head.
        hidden: units of the hidden fully connected layer.
        pool_size: side of the pooled feature map the head flattens.

    Input ``(B, in_channels, 32 n, 32 m)``, output logits ``(B, num_classes)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (16, 32, 64, 128, 128),
                 dropout: float = 0.2, hidden: int = 128, pool_size: int = 2) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != 5 or min(channels) < 1:
            raise ValueError(f"channels must list five positive widths (one per block), got {channels}.")
        if int(pool_size) < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        widths = [int(in_channels)] + channels
        self.features = nn.Sequential(*[ConvBlock(widths[i], widths[i + 1], dropout) for i in range(5)])
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(int(pool_size)),
            nn.Flatten(),
            nn.Linear(channels[-1] * int(pool_size) ** 2, int(hidden)),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(int(hidden), int(num_classes)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# Freeze presets (train.json ``freeze``, docs/fine-tuning.md): the five convolution blocks are the encoder; the
# pooled fully connected head stays trainable.
FREEZE_PRESETS = {"encoder": ["features"]}
