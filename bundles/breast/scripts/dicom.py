"""DICOM reading and writing for mammograms.

Reading honours what a display would: the modality LUT (``RescaleSlope``/``RescaleIntercept``) and the
photometric interpretation (``MONOCHROME1`` stores dense tissue as *low* values, so it is inverted), and returns a
float32 array where a larger value always means a denser (brighter on screen) pixel. Errors name the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from common.io import atomic_path

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


class DicomError(ValueError):
    """A DICOM file cannot be used; the message names the file and the reason."""


def read_header(path: str | os.PathLike) -> Dataset:
    """Read a DICOM header (no pixel data) and check the tags the bundle needs.

    Raises:
        DicomError: unreadable file, no pixel data, or a photometric interpretation other than MONOCHROME1/2.
    """
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=False, defer_size="1 KB")
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, struct errors ...
        raise DicomError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e}).") from e
    if "PixelData" not in ds:
        raise DicomError(f"{path}: DICOM file has no pixel data (PixelData tag missing).")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise DicomError(f"{path}: photometric interpretation '{photometric}' is not supported "
                         f"(expected one of {SUPPORTED_PHOTOMETRIC}; mammograms are greyscale).")
    return ds


DECODER_HINT = ("install the pinned decoder plugins (`pip install -r requirements.txt`: pylibjpeg, pylibjpeg-libjpeg, "
                "pylibjpeg-openjpeg; or python-gdcm), or decompress the file first (`gdcmconv --raw in.dcm out.dcm`)")


def check_decodable(ds: Dataset, path: str | os.PathLike) -> None:
    """Refuse a transfer syntax that no installed pydicom decoder can decode, naming the file and what is missing.

    Evaluation (:func:`scripts.data.check_dicom`) and inference (:func:`read_dicom`) both call it, so one file gives
    the same reason in both. Uncompressed syntaxes, and compressed ones with an installed decoder (with this project's
    requirements: JPEG baseline/extended/lossless and JPEG-LS through pylibjpeg-libjpeg, JPEG 2000 and HTJ2K through
    pylibjpeg-openjpeg, RLE and Deflate through pydicom itself), pass.

    Raises:
        DicomError: no decoder exists for the syntax in pydicom (e.g. MPEG/HEVC video), or its plugins are missing.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(f"{path}: transfer syntax {syntax.name} ({syntax}) cannot be decoded: pydicom has no decoder "
                         f"for it; convert the file to an uncompressed or JPEG/JPEG 2000 transfer syntax "
                         f"(e.g. `gdcmconv --raw in.dcm out.dcm`).") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
        raise DicomError(f"{path}: transfer syntax {syntax.name} ({syntax}) needs a decoder plugin that is not "
                         f"installed ({missing}): {DECODER_HINT}.")


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read a greyscale DICOM as a float32 (H, W) array, larger = denser.

    Stored values ``s`` become ``s * RescaleSlope + RescaleIntercept``; for MONOCHROME1 the result is mirrored inside
    the range representable with ``BitsStored`` (``v -> vmax + vmin - v``), so a MONOCHROME1 and a MONOCHROME2 file of
    the same image give the same array.

    Raises:
        DicomError: see :func:`read_header` and :func:`check_decodable`; also damaged compressed data, a non-2D
            image or non-finite values.
    """
    ds = read_header(path)
    check_decodable(ds, path)
    try:
        stored = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise DicomError(f"{path}: cannot decode pixel data with transfer syntax {name} ({syntax}), the compressed "
                         f"data is damaged or not what the header says ({type(e).__name__}: {e}).") from e
    if stored.ndim != 2:
        raise DicomError(f"{path}: expected one 2D greyscale frame, got pixel array of shape {stored.shape}.")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    image = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        vmin, vmax = sorted((smin * slope + intercept, smax * slope + intercept))
        image = np.float32(vmax + vmin) - image
    if not np.all(np.isfinite(image)):
        raise DicomError(f"{path}: pixel values are not finite after rescale (slope={slope}, intercept={intercept}).")
    return image


def write_dicom(
    path: str | os.PathLike,
    values: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    patient_id: str = "P_00000",
    laterality: str = "L",
    view: str = "CC",
    uid_seed: str = "",
    description: str = "full mammogram images",
) -> None:
    """Write a greyscale image of display values (larger = denser) as a DICOM file, atomically.

    The values are mapped to stored integers through the inverse modality LUT and, for MONOCHROME1, mirrored, so
    :func:`read_dicom` gives ``values`` back up to the quantisation of ``slope``.

    Args:
        path: output file.
        values: (H, W) display values; must fit ``bits_stored`` after the inverse rescale.
        bits_stored: 8 to 16; BitsAllocated is 8 when ``bits_stored`` is 8 (ROI masks) else 16.
        photometric: MONOCHROME1 or MONOCHROME2.
        slope, intercept: RescaleSlope and RescaleIntercept written to the file.
        patient_id, laterality, view: identification tags.
        uid_seed: makes the instance UIDs deterministic.
        description: SeriesDescription (as in TCIA's CBIS-DDSM series names).

    Raises:
        ValueError: bad photometric, bit depth, slope, or values outside the representable range.
    """
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise ValueError(f"photometric must be one of {SUPPORTED_PHOTOMETRIC}, got {photometric!r}.")
    if not 8 <= bits_stored <= 16 or slope <= 0:
        raise ValueError(f"bits_stored must be in [8, 16] and slope > 0, got {bits_stored}, {slope}.")
    smax = 2**bits_stored - 1
    stored = np.rint((np.asarray(values, dtype=np.float64) - intercept) / slope)
    if stored.min() < 0 or stored.max() > smax:
        raise ValueError(f"values do not fit {bits_stored} bits with slope={slope}, intercept={intercept}: stored "
                         f"range [{stored.min()}, {stored.max()}] outside [0, {smax}].")
    if photometric == "MONOCHROME1":
        stored = smax - stored
    dtype = np.uint8 if bits_stored == 8 else np.uint16
    ds = _dataset(uid_seed, patient_id, laterality, view, description)
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8 * np.dtype(dtype).itemsize, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    ds.PixelData = stored.astype(dtype).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _dataset(uid_seed: str, patient_id: str, laterality: str, view: str, description: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, laterality, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality, ds.ConversionType = "MG", "WSD"
    ds.PatientID, ds.PatientName = patient_id, patient_id
    ds.Laterality, ds.ImageLaterality, ds.ViewPosition = laterality, laterality, view
    ds.BodyPartExamined, ds.SeriesDescription = "BREAST", description
    ds.PixelSpacing = ["0.2", "0.2"]
    return ds
