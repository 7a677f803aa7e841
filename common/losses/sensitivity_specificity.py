"""Weighted sensitivity-specificity loss of Brosch et al.

The original papers:
    T. Brosch, Y. Yoo, L. Y. W. Tang, D. K. B. Li, A. Traboulsee, R. Tam. "Deep Convolutional Encoder Networks
    for Multiple Sclerosis Lesion Segmentation", MICCAI 2015, LNCS 9351, pp. 3-11.
    https://doi.org/10.1007/978-3-319-24574-4_1

    T. Brosch, L. Y. W. Tang, Y. Yoo, D. K. B. Li, A. Traboulsee, R. Tam. "Deep 3D Convolutional Encoder Networks
    With Shortcuts for Multiscale Feature Integration Applied to Multiple Sclerosis Lesion Segmentation",
    IEEE TMI 35(5):1229-1239, 2016. https://doi.org/10.1109/TMI.2016.2528821

Adapted from the formula, not the code, of NiftyNet's ``sensitivity_specificity_loss``
(https://github.com/NifTK/NiftyNet/blob/v0.6.0/niftynet/layer/loss_segmentation.py), whose variable names swap
the two terms; here each term is named after what it measures.
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from common.losses._utils import prepare_prediction_and_target, validate_activation


class SensitivitySpecificityLoss(_Loss):
    r"""Weighted sum of the mean squared error over foreground and over background voxels.

    For every class channel :math:`c`, with ground truth :math:`g` and predicted probability :math:`p` over voxels
    :math:`i`:

    .. math::

        SS_c = r \frac{\sum_i (g_{ic} - p_{ic})^2 g_{ic}}{\sum_i g_{ic} + \epsilon}
             + (1 - r) \frac{\sum_i (g_{ic} - p_{ic})^2 (1 - g_{ic})}{\sum_i (1 - g_{ic}) + \epsilon}

    The first term is the *sensitivity* term (error on the voxels of the class), weighted by the sensitivity ratio
    ``r``; the second is the *specificity* term (error on all other voxels), weighted by ``1 - r``. Because each term
    is normalised by its own voxel count, a tiny lesion weighs as much as the large background: this is why the loss
    copes with lesion/background imbalance. Brosch et al. give a larger weight to specificity; NiftyNet's default
    ``r = 0.05`` is kept here, and the authors report that values from 0.01 to 0.10 behave alike.

    The data ``input`` (BNH[WD], N classes) is compared with the ground truth ``target`` (BNH[WD], or B1H[WD] with
    ``to_onehot_y=True``). Works for 2D and 3D, for sigmoid region channels and for softmax classes.

    Warning:
        With a two-class softmax and ``include_background=True``, ``r`` cancels out exactly: the background
        channel's sensitivity term is the foreground channel's specificity term and vice versa, so the mean over
        both channels is ``(A + B) / 2`` whatever ``r`` is. To get the weighting, use ``include_background=False``
        (foreground channels only) or sigmoid region channels.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        r: float = 0.05,
        reduction: LossReduction | str = LossReduction.MEAN,
        batch: bool = False,
        eps: float = 1e-5,
    ) -> None:
        """
        Args:
            include_background: if False, channel 0 (background) is left out of the loss.
            to_onehot_y: convert ``target`` (B1H[WD] class indices) to one-hot of ``input``'s channel count.
            sigmoid: apply a sigmoid to ``input``. softmax: apply a softmax over channels.
            other_act: any other callable activation (e.g. ``torch.tanh``); at most one activation may be set.
            r: the sensitivity ratio, the weight of the foreground (sensitivity) term, in [0, 1]. Defaults to 0.05.
            reduction: ``"mean"`` (default) or ``"sum"`` over batch and channels, or ``"none"``, which returns
                shape (B, C) (shape (C,) with ``batch=True``).
            batch: sum over the batch before dividing, so the ratios are taken over the whole batch (as MONAI's
                ``DiceLoss(batch=True)``).
            eps: small positive constant added to both denominators, so an absent class gives no NaN.

        Raises:
            TypeError: ``other_act`` is neither None nor callable.
            ValueError: more than one activation; ``r`` outside [0, 1]; ``eps`` not positive; unknown reduction.
        """
        if str(getattr(reduction, "value", reduction)) not in [m.value for m in LossReduction]:
            raise ValueError(f'Unsupported reduction: {reduction}, available options are ["mean", "sum", "none"].')
        super().__init__(reduction=LossReduction(reduction).value)
        validate_activation(sigmoid, softmax, other_act)
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"r (the sensitivity ratio) must lie in [0, 1], got {r}.")
        if not float(eps) > 0.0:
            raise ValueError(f"eps must be positive, got {eps}.")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.r = float(r)
        self.batch = batch
        self.eps = float(eps)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: the network output, BNH[WD].
            target: the ground truth, BNH[WD] (or B1H[WD] with ``to_onehot_y=True``).

        Raises:
            ValueError: the shapes do not match.
        """
        prob, truth = prepare_prediction_and_target(
            input, target, self.include_background, self.to_onehot_y, self.sigmoid, self.softmax, self.other_act
        )
        reduce_axis = list(range(2, prob.ndim))
        if self.batch:
            reduce_axis = [0] + reduce_axis
        squared_error = (truth - prob) ** 2
        sensitivity_term = (squared_error * truth).sum(reduce_axis) / (truth.sum(reduce_axis) + self.eps)
        specificity_term = (squared_error * (1 - truth)).sum(reduce_axis) / ((1 - truth).sum(reduce_axis) + self.eps)
        loss = self.r * sensitivity_term + (1.0 - self.r) * specificity_term
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        if self.reduction == LossReduction.NONE.value:
            return loss
        raise ValueError(f'Unsupported reduction: {self.reduction}, available options are ["mean", "sum", "none"].')


SSLoss = SensitivitySpecificityLoss
