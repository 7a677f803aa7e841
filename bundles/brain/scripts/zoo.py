"""Start from the MONAI Model Zoo's ``brats_mri_segmentation`` weights: reorder its input channels to this bundle's.

The Zoo bundle's ``models/model.pt`` is a plain SegResNet state dict (``init_filters`` 16, ``blocks_down``
[1, 2, 2, 4], ``blocks_up`` [1, 1, 1], 4 input and 3 output channels), so it loads into this bundle's network by name
with every tensor matched when training runs with ``--init_filters 16`` (docs/fine-tuning.md). Its output channels
are the same regions in the same order (TC, WT, ET), but its input channels are ordered T1ce, T1, T2, FLAIR
(the Zoo model card), while this bundle reads T1, T1ce, T2, FLAIR: loaded unchanged, the network would take T1 for
T1ce. :func:`convert` swaps the first two input channels of the first convolution (``convInit.conv.weight``,
shape [filters, 4, 3, 3, 3]) and writes the result atomically.

Usage (from the repository root)::

    python bundles/brain/scripts/zoo.py ZOO/models/model.pt /tmp/brats_zoo_t1_first.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: the repository root (for ``common``) must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from common.checkpoint import CheckpointError, save_atomic  # noqa: E402
from common.transfer import read_state_dict  # noqa: E402

FIRST_CONV = "convInit.conv.weight"
ZOO_TO_BUNDLE = [1, 0, 2, 3]  # bundle channel i takes Zoo channel ZOO_TO_BUNDLE[i]: T1 <- 1, T1ce <- 0, T2, FLAIR


def convert(src: str | Path, dst: str | Path) -> dict[str, torch.Tensor]:
    """Write ``src`` (a ``brats_mri_segmentation`` state dict) to ``dst`` with its input channels in this bundle's
    order (T1, T1ce, T2, FLAIR); every other tensor unchanged.

    Returns:
        The converted state dict.

    Raises:
        CheckpointError: ``src`` is missing, not a checkpoint, or has no 4-input-channel ``convInit.conv.weight``.
    """
    state = read_state_dict(src)
    weight = state.get(FIRST_CONV)
    if weight is None or weight.ndim != 5 or weight.shape[1] != 4:
        raise CheckpointError(f"{src} is not a brats_mri_segmentation SegResNet state dict: {FIRST_CONV} is "
                              f"{None if weight is None else list(weight.shape)}, expected [filters, 4, 3, 3, 3]")
    state = dict(state)
    state[FIRST_CONV] = weight[:, ZOO_TO_BUNDLE].clone()
    save_atomic(state, dst)
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="the Model Zoo bundle's models/model.pt")
    parser.add_argument("dst", help="where to write the reordered state dict (then --pretrained_ckpt)")
    args = parser.parse_args(argv)
    convert(args.src, args.dst)
    print(f"wrote {args.dst}: input channels reordered to T1, T1ce, T2, FLAIR; train with --init_filters 16 "
          f"--pretrained_ckpt {args.dst}")


if __name__ == "__main__":
    main()
