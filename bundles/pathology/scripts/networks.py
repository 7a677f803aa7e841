"""The patch classifier: a small CNN sized for CPU inference on 96x96 H&E patches."""

from __future__ import annotations

import torch
from torch import nn


def _block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PatchClassifier(nn.Module):
    """VGG-style CNN: ``len(channels)`` stages of two 3x3 conv-BN-ReLU layers (the first with stride 2), global
    average pooling, dropout and one linear layer giving one logit (tumour vs normal).

    Args:
        in_channels: image channels (3 for RGB).
        channels: feature channels of each stage; each stage halves the spatial size.
        dropout: dropout probability before the linear layer.

    Input ``[B, in_channels, H, W]`` (any H, W >= 2 ** len(channels)); output ``[B, 1]`` logits.
    """

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] | list[int] = (16, 32, 64, 128),
                 dropout: float = 0.2) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [_block(previous, int(width), 2), _block(int(width), int(width), 1)]
            previous = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(previous, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


# Freeze presets (train.json ``freeze``, docs/fine-tuning.md): the convolution stages are the encoder; the linear
# head stays trainable.
FREEZE_PRESETS = {"encoder": ["features"]}
