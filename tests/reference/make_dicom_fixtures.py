#!/usr/bin/env python3
"""Generates the DICOM test fixtures for `worker/src/dicom/`.

Writes small (64x48) DICOM Part 10 files to `worker/tests/fixtures/dicom/`
(or the directory given as the first argument) plus `expected.json`, which
holds, for each file, either the 8-bit pixels the Rust decoder must produce or
the kind of error it must return.

The expected pixels are computed here with numpy from the *original arrays*
the files were made from, never by decoding the files with the Rust code:
modality LUT (``x * slope + intercept`` in float64), then the window (the
file's first WindowCenter/WindowWidth as ``[c - w/2, c + w/2]``, or numpy's
1st-99th percentiles when the file has none), clip, ``(x - lo) / (hi - lo) *
255``, truncate to uint8, and ``255 - v`` for MONOCHROME1. For lossy JPEG the
reference is PIL's (libjpeg-turbo's) decoding of the same JPEG bytes, compared
with a tolerance, since JPEG decoders may differ by a few levels.

All files carry a fake patient name (``Doe^Jane``) and ID so the Rust tests
can check that no error message ever quotes them.

Requirements: pydicom 3.0.2, numpy, pillow (all in the project venv) and, for
the JPEG Lossless files only, ``python-gdcm`` and ``imagecodecs`` (PyPI
wheels; pydicom has no JPEG Lossless encoder). Without them those files are
skipped with a warning and the committed ones are kept:

    python -m pip install python-gdcm imagecodecs

    python tests/reference/make_dicom_fixtures.py [OUTDIR]
"""

from __future__ import annotations

import copy
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

ROWS, COLS = 48, 64
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-SECRET-123"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

rng = np.random.default_rng(20261201)


def base_dataset(ts: str, sop_class: str = SC_IMAGE_STORAGE) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["medembed", ts, sop_class])
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # Set here so GDCM does not invent time-dependent ones (reproducible files).
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["medembed-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["medembed-series", ts])
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "CT" if sop_class == CT_IMAGE_STORAGE else "OT"
    ds.Rows = ROWS
    ds.Columns = COLS
    return ds


def set_gray(ds: Dataset, bits_alloc: int, bits_stored: int, signed: bool, photometric: str = "MONOCHROME2") -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0


def set_rgb(ds: Dataset, photometric: str = "RGB", planar: int = 0) -> None:
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = planar
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def save(ds: Dataset, path: Path) -> bytes:
    # UIDs derived from the file name: regenerating gives identical files.
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["medembed-instance", path.name])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


# ---- independent reference computations (numpy only) ----------------------

def window_to_u8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    c = np.clip(x, lo, hi)
    return ((c - lo) / (hi - lo) * 255.0).astype(np.uint8)


def gray_expected(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0,
                  center_width: tuple[float, float] | None = None, invert: bool = False) -> np.ndarray:
    x = stored.astype(np.float64) * slope + intercept
    if center_width is not None:
        c, w = center_width
        half = max(w, 1.0) / 2.0
        out = window_to_u8(x, c - half, c + half)
    else:
        lo, hi = np.percentile(x, [1.0, 99.0])
        out = window_to_u8(x, float(lo), float(hi))
    return 255 - out if invert else out


# ---- pixel content ----------------------------------------------------------

yy, xx = np.mgrid[0:ROWS, 0:COLS]


def ct_values() -> np.ndarray:
    """Signed 16-bit CT-like values: air, soft tissue, bone, noise."""
    v = -1000.0 + 1400.0 * (xx / (COLS - 1)) + 900.0 * np.sin(yy / 5.0)
    v += rng.normal(0, 40, v.shape)
    return np.clip(np.round(v), -2048, 2047).astype(np.int16)


def xray_values(bits: int = 16) -> np.ndarray:
    """Unsigned radiograph-like values in the thousands, with outliers."""
    v = 2000.0 + 20000.0 * ((xx + yy) / (COLS + ROWS)) + rng.normal(0, 300, (ROWS, COLS))
    v = np.clip(v, 0, 2**bits - 1).astype(np.uint16)
    v[0, 0] = 0
    v[-1, -1] = 2**bits - 1
    return v


def rgb_values() -> np.ndarray:
    r = (xx * 4).clip(0, 255)
    g = (yy * 5).clip(0, 255)
    b = ((xx + yy) * 2 + rng.integers(0, 20, (ROWS, COLS))).clip(0, 255)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def smooth_gray8() -> np.ndarray:
    v = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)
    return np.clip(v, 0, 255).astype(np.uint8)


def smooth_rgb8() -> np.ndarray:
    r = 128 + 100 * np.sin(xx / 11.0)
    g = 128 + 100 * np.cos(yy / 9.0)
    b = 128 + 60 * np.sin((xx + yy) / 13.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def keep_previous(out: Path, expected: dict, names: list[str], package: str) -> None:
    """Keeps committed fixtures whose optional generator package is missing."""
    warnings.warn(f"{package} is not installed: {', '.join(names)} not regenerated")
    old = out / "expected.json"
    if old.exists():
        prev = json.loads(old.read_text())
        for name in names:
            if name in prev and (out / name).exists():
                expected[name] = prev[name]


# ---- fixtures -----------------------------------------------------------------

def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "worker/tests/fixtures/dicom"
    out.mkdir(parents=True, exist_ok=True)
    expected: dict[str, dict] = {}

    def ok(name: str, pixels: np.ndarray, tol: int = 1, mean_tol: float | None = None) -> None:
        channels = "rgb" if pixels.ndim == 3 else "gray"
        expected[name] = {
            "width": COLS,
            "height": ROWS,
            "channels": channels,
            "pixels_hex": pixels.astype(np.uint8).tobytes().hex(),
            "tolerance": tol,
        }
        if mean_tol is not None:
            expected[name]["mean_abs_tolerance"] = mean_tol

    def err(name: str, kind: str, contains: str | None = None) -> None:
        expected[name] = {"error": kind}
        if contains:
            expected[name]["contains"] = contains

    # 1. Signed 16-bit CT, slope/intercept, multi-valued window in the tags.
    ct = ct_values()
    slope, intercept = 0.5, -100.0
    ds = base_dataset(ExplicitVRLittleEndian, CT_IMAGE_STORAGE)
    set_gray(ds, 16, 16, signed=True)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.WindowCenter = [40, 300]
    ds.WindowWidth = [400, 1500]
    ds.PixelData = ct.tobytes()
    ct_bytes = save(ds, out / "ct_signed16_window.dcm")
    ct_expected = gray_expected(ct, slope, intercept, (40.0, 400.0))
    ok("ct_signed16_window.dcm", ct_expected)

    # 2. The same CT, Explicit VR Big Endian (retired, still met in archives).
    ds_be = copy.deepcopy(ds)
    ds_be.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds_be.PixelData = ct.astype(">i2").tobytes()
    save(ds_be, out / "ct_signed16_bigendian.dcm")
    ok("ct_signed16_bigendian.dcm", ct_expected)

    # 3. The same CT, RLE Lossless (pydicom's own encoder).
    ds_rle = copy.deepcopy(ds)
    ds_rle.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds_rle.compress(RLELossless, ct, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds_rle, out / "ct_signed16_rle.dcm")
    ok("ct_signed16_rle.dcm", ct_expected)

    # 4. Unsigned 16-bit MONOCHROME1, Implicit VR, no window: percentiles, inverted.
    xr = xray_values()
    ds = base_dataset(ImplicitVRLittleEndian)
    set_gray(ds, 16, 16, signed=False, photometric="MONOCHROME1")
    ds.PixelData = xr.tobytes()
    save(ds, out / "mono1_u16_percentile.dcm")
    ok("mono1_u16_percentile.dcm", gray_expected(xr, invert=True))

    # 5. 12 bits stored in 16 with garbage in the unused high bits (overlay
    #    bits in old files): the decoder must mask them off.
    xr12 = (xray_values(12) >> 4).astype(np.uint16) + 100
    noisy = xr12 | (rng.integers(0, 16, xr12.shape, dtype=np.uint16) << 12)
    ds = base_dataset(ExplicitVRLittleEndian)
    set_gray(ds, 16, 12, signed=False)
    ds.PixelData = noisy.astype(np.uint16).tobytes()
    save(ds, out / "mono2_u12_highbits.dcm")
    ok("mono2_u12_highbits.dcm", gray_expected(xr12))

    # 6. Two-frame file: the decoder takes the first frame.
    f0, f1 = xray_values(), xray_values()[::-1].copy()
    ds = base_dataset(ExplicitVRLittleEndian)
    set_gray(ds, 16, 16, signed=False)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([f0, f1]).tobytes()
    save(ds, out / "multiframe_first.dcm")
    ok("multiframe_first.dcm", gray_expected(f0))

    # 7. 8-bit RGB, pixel-interleaved and planar: passes through unchanged.
    rgb = rgb_values()
    ds = base_dataset(ExplicitVRLittleEndian)
    set_rgb(ds)
    ds.PixelData = rgb.tobytes()
    save(ds, out / "rgb8.dcm")
    ok("rgb8.dcm", rgb, tol=0)

    ds = base_dataset(ExplicitVRLittleEndian)
    set_rgb(ds, planar=1)
    ds.PixelData = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    save(ds, out / "rgb8_planar.dcm")
    ok("rgb8_planar.dcm", rgb, tol=0)

    # 8. YBR_FULL, uncompressed and RLE: converted to RGB (reference: pydicom's
    #    conversion of the same YBR samples).
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ybr_back = convert_color_space(ybr, "YBR_FULL", "RGB")
    ds = base_dataset(ExplicitVRLittleEndian)
    set_rgb(ds, photometric="YBR_FULL")
    ds.PixelData = ybr.tobytes()
    save(ds, out / "ybr_full.dcm")
    ok("ybr_full.dcm", ybr_back, tol=1)

    ds = base_dataset(ExplicitVRLittleEndian)
    set_rgb(ds, photometric="YBR_FULL")
    ds.compress(RLELossless, ybr, encoding_plugin="pydicom", generate_instance_uid=False)
    ds.PhotometricInterpretation = "YBR_FULL"
    save(ds, out / "ybr_full_rle.dcm")
    ok("ybr_full_rle.dcm", ybr_back, tol=1)

    # Uncompressed YBR_FULL_422: Y0 Y1 Cb Cr per horizontal pair of pixels
    # (chroma taken from the pair's first pixel).
    cb, cr = ybr[:, 0::2, 1], ybr[:, 0::2, 2]
    packed = np.stack([ybr[:, 0::2, 0], ybr[:, 1::2, 0], cb, cr], axis=-1)
    upsampled = ybr.copy()
    upsampled[:, :, 1] = np.repeat(cb, 2, axis=1)
    upsampled[:, :, 2] = np.repeat(cr, 2, axis=1)
    ds = base_dataset(ExplicitVRLittleEndian)
    set_rgb(ds, photometric="YBR_FULL_422")
    ds.PixelData = packed.astype(np.uint8).tobytes()
    save(ds, out / "ybr_full_422_native.dcm")
    ok("ybr_full_422_native.dcm", convert_color_space(upsampled, "YBR_FULL", "RGB"), tol=1)

    ds = base_dataset(ExplicitVRLittleEndian)
    set_rgb(ds)
    ds.compress(RLELossless, rgb, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, out / "rgb8_rle.dcm")
    ok("rgb8_rle.dcm", rgb, tol=0)

    # 9. JPEG Baseline, 8-bit gray and YBR_FULL_422 colour, made by PIL and
    #    encapsulated. Reference: PIL's decoding of the same bytes.
    g8 = smooth_gray8()
    buf = io.BytesIO()
    Image.fromarray(g8, "L").save(buf, format="JPEG", quality=90)
    jpg = buf.getvalue()
    ds = base_dataset(JPEGBaseline8Bit)
    set_gray(ds, 8, 8, signed=False)
    ds.PixelData = encapsulate([jpg])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    save(ds, out / "jpeg_baseline_gray8.dcm")
    ok("jpeg_baseline_gray8.dcm", np.asarray(Image.open(io.BytesIO(jpg)).convert("L")), tol=3, mean_tol=0.5)

    c8 = smooth_rgb8()
    buf = io.BytesIO()
    Image.fromarray(c8, "RGB").save(buf, format="JPEG", quality=90, subsampling=1)  # 4:2:2
    jpg = buf.getvalue()
    ds = base_dataset(JPEGBaseline8Bit)
    set_rgb(ds, photometric="YBR_FULL_422")
    ds.PixelData = encapsulate([jpg])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    save(ds, out / "jpeg_baseline_ybr422.dcm")
    ok("jpeg_baseline_ybr422.dcm", np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")), tol=4, mean_tol=1.0)

    # 10. JPEG Lossless (.70 = process 14 selection value 1, and .57 = process
    #     14), via GDCM from native files.
    try:
        import gdcm  # type: ignore

        def gdcm_transcode(src: Path, dst: Path, ts) -> None:
            reader = gdcm.ImageReader()
            reader.SetFileName(str(src))
            if not reader.Read():
                raise RuntimeError("gdcm could not read " + str(src))
            change = gdcm.ImageChangeTransferSyntax()
            change.SetTransferSyntax(gdcm.TransferSyntax(ts))
            change.SetInput(reader.GetImage())
            if not change.Change():
                raise RuntimeError("gdcm could not transcode " + str(src))
            writer = gdcm.ImageWriter()
            writer.SetFileName(str(dst))
            writer.SetFile(reader.GetFile())
            writer.SetImage(change.GetOutput())
            if not writer.Write():
                raise RuntimeError("gdcm could not write " + str(dst))

        tmp = out / "_tmp_native_sv1.dcm"
        # .70: unsigned 16-bit radiograph, percentile window.
        xr_l = xray_values()
        ds = base_dataset(ExplicitVRLittleEndian)
        set_gray(ds, 16, 16, signed=False)
        ds.PixelData = xr_l.tobytes()
        save(ds, tmp)
        gdcm_transcode(tmp, out / "jpeg_lossless_sv1_u16.dcm", gdcm.TransferSyntax.JPEGLosslessProcess14_1)
        ok("jpeg_lossless_sv1_u16.dcm", gray_expected(xr_l))
        # .57: the signed CT with its window (signed samples survive as bits).
        ds = base_dataset(ExplicitVRLittleEndian, CT_IMAGE_STORAGE)
        set_gray(ds, 16, 12, signed=True)
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -24
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = ct.tobytes()
        tmp.unlink()
        tmp = out / "_tmp_native_p14.dcm"
        save(ds, tmp)
        gdcm_transcode(tmp, out / "jpeg_lossless_p14_ct.dcm", gdcm.TransferSyntax.JPEGLosslessProcess14)
        ok("jpeg_lossless_p14_ct.dcm", gray_expected(ct, 1.0, -24.0, (40.0, 400.0)))
        tmp.unlink()
        for name, ts in [("jpeg_lossless_sv1_u16.dcm", "1.2.840.10008.1.2.4.70"), ("jpeg_lossless_p14_ct.dcm", "1.2.840.10008.1.2.4.57")]:
            got = pydicom.dcmread(out / name).file_meta.TransferSyntaxUID
            assert got == ts, (name, got)
    except ImportError:
        keep_previous(out, expected, ["jpeg_lossless_sv1_u16.dcm", "jpeg_lossless_p14_ct.dcm"], "python-gdcm")

    # 10b. JPEG Lossless process 14 with predictor 7 and 12-bit precision
    #      (GDCM always writes predictor 1), via imagecodecs' libjpeg-turbo.
    try:
        import imagecodecs  # type: ignore

        x12 = xray_values(12)
        jpg = imagecodecs.jpeg8_encode(x12, lossless=True, predictor=7, bitspersample=12)
        assert jpg[jpg.find(b"\xff\xda") + 7] == 7, "predictor 7 not used"
        assert np.array_equal(imagecodecs.jpeg8_decode(jpg), x12)
        ds = base_dataset("1.2.840.10008.1.2.4.57")
        set_gray(ds, 16, 12, signed=False)
        ds.PixelData = encapsulate([jpg])
        ds["PixelData"].VR = "OB"
        save(ds, out / "jpeg_lossless_sv7_u12.dcm")
        ok("jpeg_lossless_sv7_u12.dcm", gray_expected(x12))
    except ImportError:
        keep_previous(out, expected, ["jpeg_lossless_sv7_u12.dcm"], "imagecodecs")

    # 11. Errors: a truncated file, unsupported transfer syntaxes (UIDs may be
    #     named), a photometric interpretation we do not handle.
    (out / "truncated.dcm").write_bytes(ct_bytes[: len(ct_bytes) // 2])
    err("truncated.dcm", "Corrupt")

    ds = base_dataset(JPEG2000Lossless)
    set_gray(ds, 16, 16, signed=False)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    save(ds, out / "jpeg2000_unsupported.dcm")
    err("jpeg2000_unsupported.dcm", "Unsupported", "1.2.840.10008.1.2.4.90")

    ds = base_dataset(DeflatedExplicitVRLittleEndian)
    set_gray(ds, 8, 8, signed=False)
    ds.PixelData = g8.tobytes()
    save(ds, out / "deflated_unsupported.dcm")
    err("deflated_unsupported.dcm", "Unsupported", "1.2.840.10008.1.2.1.99")

    ds = base_dataset(ExplicitVRLittleEndian)
    set_gray(ds, 8, 8, signed=False, photometric="PALETTE COLOR")
    ds.PixelData = g8.tobytes()
    save(ds, out / "palette_unsupported.dcm")
    err("palette_unsupported.dcm", "Unsupported", "PALETTE COLOR")

    # Sanity: pydicom reads every valid fixture back to the array it was made from.
    check = pydicom.dcmread(out / "ct_signed16_bigendian.dcm").pixel_array
    assert np.array_equal(check, ct), "big-endian fixture does not round-trip"
    check = pydicom.dcmread(out / "ct_signed16_rle.dcm").pixel_array
    assert np.array_equal(check, ct), "RLE fixture does not round-trip"

    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(expected)} fixtures to {out} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
