"""List an inference input folder so that no file is skipped without a word.

Every bundle's inference predicts the items of ``--input_dir`` (images, slides, DICOM files or case folders). Each
entry of the folder ends in exactly one of these groups:

- **predicted**: returned to the caller, which predicts it or names it in its error;
- **used**: a companion the bundle reads for another item (an FOV mask beside a fundus image, ``Info.cfg``) or a
  file the documented layout allows beside the inputs (labels, which inference ignores); logged at INFO level with
  the reason;
- **not predicted**: anything else; named in one WARNING line per entry with the reason (unknown format, an
  annotation, a sub-folder where files are expected, ...);
- **hidden**: names starting with ``.`` (``.DS_Store``, macOS ``._*`` resource forks, ``.ipynb_checkpoints``, editor
  swap files) are operating-system or tool artefacts, never data; they are skipped silently (logged at DEBUG level
  only), as ``ls`` and the public dataset tools do. A ``._slide.tif`` resource fork would otherwise fail as a
  corrupt slide.

An input folder that does not exist, or that holds nothing to predict, is a :class:`common.validation.DatasetError`
naming the folder, what was expected and what was found instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.validation import Problems

logger = logging.getLogger(__name__)

#: A classifier maps an entry of the folder to ``(group, reason)``, group one of "predict", "used", "skip".
Classifier = Callable[[Path], tuple[str, str]]


@dataclass
class InputListing:
    """The result of :func:`list_input_folder`: what is predicted, and every other entry with its reason."""

    predict: list[Path] = field(default_factory=list)
    used: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)


def list_input_folder(input_dir: str | os.PathLike, classify: Classifier, expected: str,
                      override: str = "--input_dir", what: str = "inference input folder") -> InputListing:
    """Sort the entries of ``input_dir`` (not recursive) into predicted, used, skipped and hidden; log each.

    Args:
        input_dir: the folder given as ``--input_dir``.
        classify: maps an entry (file or folder) to ``("predict", "")``, ``("used", reason)`` or
            ``("skip", reason)``; it is not called for hidden entries.
        expected: what the bundle predicts, for the error when nothing is found (e.g. ``"fundus images (*.tif,
            *.png, ...)"``).
        override: the command-line option that sets the folder, named in the errors.
        what: names the folder in the errors.

    Returns:
        an :class:`InputListing`; ``predict`` is sorted by name.

    Raises:
        common.validation.DatasetError: the folder does not exist, is not a folder, or holds nothing to predict (the
            message lists what it holds instead, with the reasons).
    """
    folder = Path(str(input_dir))
    problems = Problems(f"{what} {folder}")
    if not folder.is_dir():
        problems.add(folder, f"does not exist or is not a folder (set {override})")
        problems.raise_if_any()
    listing = InputListing()
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            listing.hidden.append(entry)
            logger.debug("%s: hidden entry, ignored", entry)
            continue
        group, reason = classify(entry)
        if group == "predict":
            listing.predict.append(entry)
        elif group == "used":
            listing.used.append((entry, reason))
            logger.info("%s: %s", entry, reason)
        elif group == "skip":
            listing.skipped.append((entry, reason))
            logger.warning("%s: not predicted: %s", entry, reason)
        else:
            raise ValueError(f"classify returned group {group!r} for {entry}; expected 'predict', 'used' or 'skip'.")
    if not listing.predict:
        found = "; ".join(f"{p.name} ({r})" for p, r in listing.skipped + listing.used) or "nothing"
        problems.add(folder, f"holds no {expected} to predict (found: {found}); set {override}")
        problems.raise_if_any()
    if listing.skipped:
        logger.warning("%s: %d entr%s not predicted (named above); %d to predict", folder, len(listing.skipped),
                       "y" if len(listing.skipped) == 1 else "ies", len(listing.predict))
    return listing


def pil_image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes (``".ppm"``, ``".tif"``, ...) of every raster format the installed Pillow can open.

    Taken from Pillow's own registry (``PIL.Image.registered_extensions`` restricted to formats with an opener), so
    it follows the installed version: PPM/PGM/PBM (STARE), BMP, GIF, TIFF, PNG, JPEG, JPEG 2000, WebP, ...; minus
    Pillow's stub formats that need an external handler (BUFR, GRIB, HDF5, WMF/EMF), PostScript (needs Ghostscript)
    and MPEG (no decoder).
    """
    from PIL import Image

    Image.init()
    unreadable = {"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"}
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in unreadable)


def folders_only(layout: str) -> Classifier:
    """A classifier for bundles whose inputs are case folders (brain, cardiac): every folder is predicted (the
    bundle reports a folder that lacks its files), every file is not, with ``layout`` as the reason."""

    def classify(entry: Path) -> tuple[str, str]:
        if entry.is_dir():
            return "predict", ""
        return "skip", f"a file, not a case folder ({layout})"

    return classify


def case_folders(input_dir: str | os.PathLike, layout: str, noun: str, what: str) -> list[Path]:
    """The ``noun`` folders directly in ``input_dir`` (brain cases, cardiac patients): :func:`list_input_folder` with
    :func:`folders_only`, so every file there is named in a warning with ``layout`` as the reason.

    Returns:
        the folders, sorted by name.

    Raises:
        common.validation.DatasetError: ``input_dir`` is missing or holds no folder (the error names ``what``, the
            folder and what was expected: ``"<noun> folders (<layout>)"``).
    """
    return list_input_folder(str(input_dir), folders_only(layout), f"{noun} folders ({layout})", what=what).predict
