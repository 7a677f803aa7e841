"""A weighted sum of losses that a bundle configures entirely from JSON."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CompoundLoss(nn.Module):
    """``sum_k weights[k] * losses[k](input, target)``: Dice + sensitivity-specificity, Dice + CE, and so on.

    Every term sees the same ``(input, target)``, so each is configured with its own activation and one-hot options.
    In a bundle config::

        "loss": {"_target_": "common.losses.CompoundLoss",
                 "losses": [{"_target_": "common.losses.DiceLoss", "sigmoid": true},
                            {"_target_": "common.losses.SensitivitySpecificityLoss", "sigmoid": true,
                             "r": "@ss_ratio"}],
                 "weights": ["@dice_weight", "@ss_weight"]}

    The forward pass stays on the device (no per-term ``.item()``: a host sync on every training step).
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        """
        Args:
            losses: the loss modules; each takes ``(input, target)`` and returns a scalar.
            weights: one non-negative weight per loss; defaults to 1 for each.

        Raises:
            ValueError: no losses, a count mismatch, or a negative weight.
            TypeError: a term is not a ``torch.nn.Module``.
        """
        super().__init__()
        if len(losses) == 0:
            raise ValueError("CompoundLoss needs at least one loss.")
        weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        if len(weights) != len(losses):
            raise ValueError(f"CompoundLoss got {len(losses)} losses but {len(weights)} weights.")
        if any(w < 0 for w in weights):
            raise ValueError(f"CompoundLoss weights must be non-negative, got {weights}.")
        for term in losses:
            if not isinstance(term, nn.Module):
                raise TypeError("every CompoundLoss term must be a torch.nn.Module (a loss), "
                                f"got {type(term).__name__}.")
        self.losses = nn.ModuleList(losses)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = [loss(input, target) for loss in self.losses]
        total = terms[0] * self.weights[0]
        for weight, term in zip(self.weights[1:], terms[1:]):
            total = total + weight * term
        return total
