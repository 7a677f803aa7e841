"""Grad-CAM explanations of classifiers (MONAI ``monai.visualize.GradCAM``), their overlays and a faithfulness check.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the feature maps of one layer by the spatial mean of the gradient of
a class score and keeps the positive part; MONAI upsamples it to the input size, and :class:`GradCam` scales each map
to [0, 1] with 1 at the strongest evidence. (MONAI's own default post-processing, ``default_normalizer``, maps the
(min, max) of each map to (1, 0): it flips the map, so that the evidence would show as the coldest place; GradCam
passes :func:`normalise` instead.) It is coarse (the resolution of the chosen layer) and says where the evidence
for the class lies, not why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from common.cli import as_bool


def enabled(value: Any) -> bool:
    """A config flag as a bool: ``true``/``false`` may arrive as text from the command line (``--explain false``).

    Raises:
        ValueError: anything other than a bool or true/false/1/0/yes/no/none text.
    """
    return as_bool(value, "explain")


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map of a ``[B, 1, *spatial]`` batch scaled linearly to [0, 1], min to 0 and max to 1 (MONAI's
    ``ScaleIntensity(minv=0, maxv=1)`` per map); a constant map (e.g. all zero: no positive evidence) becomes 0."""
    from monai.transforms import ScaleIntensity

    scale = ScaleIntensity(minv=0.0, maxv=1.0)
    return torch.stack([torch.as_tensor(scale(m)) for m in maps]).to(maps.device)


class GradCam:
    """Grad-CAM maps of one class score for a batch: ``[B, C, *spatial]`` input -> ``[B, *spatial]`` float32 numpy in
    [0, 1], 1 = strongest evidence for the class, all 0 where the layer holds no positive evidence (MONAI's
    ``GradCAM`` with ``target_layers=layer`` and :func:`normalise` as post-processing; ``class_idx`` the output
    column explained, e.g. 1 for "malignant" of a two-logit network, 0 for the single tumour logit of a sigmoid
    network).

    Raises:
        ValueError: ``layer`` is not a module name of the network (the message lists the last few).
    """

    def __init__(self, network: torch.nn.Module, layer: str, class_idx: int = 1) -> None:
        from monai.visualize import GradCAM

        from common.checkpoint import unwrap

        names = [n for n, _ in unwrap(network).named_modules()]
        if layer not in names:
            raise ValueError(f"explain_layer {layer!r} is not a layer of the network; the last layers are "
                             f"{names[-6:]}")
        self.cam = GradCAM(nn_module=unwrap(network), target_layers=layer, postprocessing=normalise)
        self.class_idx = int(class_idx)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        heat = self.cam(x, class_idx=self.class_idx)
        return heat[:, 0].detach().cpu().float().numpy()


def optional_gradcam(network: torch.nn.Module, explain: Any, layer: str, class_idx: int = 1) -> GradCam | None:
    """The :class:`GradCam` of ``class_idx`` at ``layer`` of the eager network inside ``network`` (a
    ``common.backends`` wrapper too: Grad-CAM needs the layers and gradients) when ``explain`` is on, else ``None``.

    Raises:
        ValueError: ``explain`` is not a flag, or ``layer`` is not a layer of the network.
    """
    from common.checkpoint import unwrap

    return GradCam(unwrap(network), layer, class_idx=class_idx) if enabled(explain) else None


def overlay(image: np.ndarray, cam: np.ndarray, scale: int = 4, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 ``(H*scale, W*scale, 3)`` overlay of a [0, 1] ``(H, W)`` CAM (jet colours, red = strongest) on a
    [0, 1] image, ``(H, W)`` greyscale or ``(H, W, 3)`` RGB, enlarged ``scale`` times (nearest)."""
    from matplotlib import colormaps

    base = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    if base.ndim == 2:
        base = base[..., None].repeat(3, axis=-1)
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0, 1)
    heat = colormaps["jet"](cam)[..., :3]
    blended = (1 - alpha * cam[..., None]) * base + alpha * cam[..., None] * heat
    blended = np.kron(blended, np.ones((int(scale), int(scale), 1)))
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the CAM's total mass inside a binary (or [0, 1] weighted) ``mask`` of the same shape:
    sum(cam * mask) / sum(cam), in [0, 1]; None for an all-zero map. A uniform map scores ``mask.mean()``
    (:func:`area_fraction`): a CAM that points at the lesion scores above that.

    Raises:
        ValueError: shapes differ.
    """
    cam, mask = np.asarray(cam, dtype=np.float64), np.asarray(mask, dtype=np.float64)
    if cam.shape != mask.shape:
        raise ValueError(f"CAM {cam.shape} and mask {mask.shape} differ in shape")
    total = float(np.clip(cam, 0, None).sum())
    return float((np.clip(cam, 0, None) * mask).sum() / total) if total > 0 else None


def area_fraction(mask: np.ndarray) -> float:
    """Mean of the mask: the :func:`mass_inside` score of a uniform map."""
    return float(np.asarray(mask, dtype=np.float64).mean())
