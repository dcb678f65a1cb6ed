//! DICOM Part 10 decoding: a file's first frame → an 8-bit gray or RGB raster.
//!
//! Hospitals send DICOM files, not PNGs. The model was trained on 8-bit
//! images, so a DICOM image is brought to 8 bits the way Microsoft's client
//! and radiology viewers do it: stored values → modality LUT
//! (`value * RescaleSlope + RescaleIntercept`, signed samples sign-extended)
//! → a window (the file's own WindowCenter/WindowWidth, first value if several;
//! otherwise the request's [`Windowing`], 1st–99th percentiles by default,
//! resolved by [`crate::window`] with numpy's percentile definition, as for a
//! 16-bit PNG) → 8 bits, inverted for MONOCHROME1.
//! 8-bit unsigned grayscale with no rescale and no window in the file is
//! passed through unchanged, like an 8-bit PNG; 8-bit RGB always is.
//! YBR_FULL and YBR_FULL_422 colour is converted to RGB.
//!
//! Parsing and codecs come from the pure-Rust dicom-rs crates
//! (`dicom-object`, `dicom-pixeldata` with `native`: no C libraries). Windowing
//! is ours: dicom-pixeldata's own VOI-to-8-bit path mis-handled a signed CT.
//!
//! Supported transfer syntaxes: Implicit VR Little Endian, Explicit VR Little
//! and Big Endian, JPEG Baseline and Extended (8-bit), JPEG Lossless (process
//! 14, any predictor, and its selection-value-1 form) and RLE Lossless. Others
//! (JPEG 2000, JPEG-LS, JPEG XL, HTJ2K, deflated, video) are refused as
//! [`DecodeError::Unsupported`], naming the transfer syntax UID.
//!
//! Multi-frame objects: only the **first frame** is decoded (and only it is
//! extracted from the pixel data); an embedding is one image.
//!
//! Safety against hostile input:
//! - Rows × Columns are checked against [`DecodeLimits`] before any pixel data
//!   is decoded; a JPEG frame's own header must agree with Rows, Columns,
//!   samples per pixel and bits allocated, and an RLE header with the
//!   expected segment count, before the codec runs (the codecs size their
//!   output from these and would otherwise overrun or allocate blindly).
//! - Every element length in the data set is checked against the bytes
//!   actually present before the parser sees it, so a 300-byte file declaring
//!   a 4 GB element is refused instead of allocated.
//! - A panic inside the third-party parser or codecs on malformed data is
//!   caught and reported as [`DecodeError::Corrupt`].
//!
//! Errors never quote element values (patient data): messages are fixed
//! strings plus structural facts only (sizes, bit depths, the transfer
//! syntax UID, a recognised photometric interpretation).
//!
//! The steps live in one private submodule each, in the order [`decode_reserving`]
//! runs them: `transfer` (which transfer syntaxes, and how each is encoded),
//! `lengths` (the length guard, run before parsing), `attributes` (the
//! image's description, validated), `frame` (frame 0's samples, compressed
//! headers checked first), then `gray` or `color` (to 8 bits).

mod attributes;
mod color;
mod frame;
mod gray;
mod lengths;
mod transfer;

use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTable, OpenFileOptions};

use crate::raster::{Channels, DecodeError, DecodeLimits, Footprint, Image8};
use crate::window::Windowing;
use attributes::{required_u16, PixelInfo};
use transfer::{printable_uid, Codec, Syntax};

/// A parsed DICOM file.
type Object = dicom_object::DefaultDicomObject;

/// A [`DecodeError::Corrupt`] with a fixed message.
fn corrupt(msg: &str) -> DecodeError {
    DecodeError::Corrupt(msg.into())
}

/// A [`DecodeError::Unsupported`]; the message must not quote file content.
fn unsupported(msg: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported(msg.into())
}

/// Decodes a DICOM Part 10 file (128-byte preamble, "DICM", file meta group,
/// data set) to an 8-bit raster: the first frame, modality LUT and window
/// applied (see the module documentation). `reserve` is told the image's
/// [`Footprint`] once its attributes are read and before its pixels are
/// decoded.
pub fn decode_reserving(
    bytes: &[u8],
    limits: &DecodeLimits,
    windowing: &Windowing,
    reserve: crate::decode::Reserve<'_>,
) -> Result<Image8, DecodeError> {
    // The parser and codecs index into attacker-controlled data; a panic there
    // must not take the worker thread down.
    match catch_unwind(AssertUnwindSafe(|| {
        decode_inner(bytes, limits, windowing, reserve)
    })) {
        Ok(result) => result,
        Err(_) => Err(corrupt("DICOM data is malformed (decoder failure)")),
    }
}

fn decode_inner(
    bytes: &[u8],
    limits: &DecodeLimits,
    windowing: &Windowing,
    reserve: crate::decode::Reserve<'_>,
) -> Result<Image8, DecodeError> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(corrupt("not a DICOM Part 10 file (no DICM marker)"));
    }
    let body = &bytes[128..];

    // 1. The file meta group alone: refuse unsupported transfer syntaxes before
    //    parsing (and, for deflate, inflating) the data set.
    //    Its element lengths are checked first (the meta parser, too,
    //    allocates what a length declares).
    let bad_meta = || corrupt("DICOM file meta information is malformed or truncated");
    let meta_end = lengths::meta_group_end(body).ok_or_else(bad_meta)?;
    let meta = FileMetaTable::from_reader(&body[..meta_end]).map_err(|_| bad_meta())?;
    let ts = meta.transfer_syntax().to_owned();
    let codec = Codec::for_uid(&ts).ok_or_else(|| unsupported(printable_uid(&ts)))?;

    // 2. Check every declared length of the data set before the parser
    //    allocates for it.
    lengths::check_lengths(&body[meta_end..], Syntax::for_uid(&ts))?;

    // 3. Parse the whole object.
    let obj: Object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|_| corrupt("DICOM data set is malformed or truncated"))?;

    // 4. Image attributes, and the size limit, before any pixel is decoded.
    let rows = required_u16(&obj, tags::ROWS, "Rows")?;
    let cols = required_u16(&obj, tags::COLUMNS, "Columns")?;
    limits.check(u32::from(cols), u32::from(rows))?;
    let px = PixelInfo::read(&obj, codec, rows, cols)?;
    reserve(Footprint {
        width: u32::from(cols),
        height: u32::from(rows),
        bytes_per_pixel: (px.samples * usize::from(px.bits_allocated).div_ceil(8)) as u64,
    })?;

    // 5. The first frame's samples.
    let frame = frame::first_frame(&obj, codec, &px)?;

    // 6. To 8 bits.
    let (channels, data) = if px.samples == 1 {
        (
            Channels::Gray,
            gray::gray_to_u8(&frame, &px, &obj, windowing),
        )
    } else {
        (Channels::Rgb, color::color_to_u8(&frame, &px, codec))
    };
    Ok(Image8 {
        width: u32::from(cols),
        height: u32::from(rows),
        channels,
        data,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    /// Decodes with nothing to reserve.
    fn decode(b: &[u8], l: &DecodeLimits, w: &Windowing) -> Result<Image8, DecodeError> {
        decode_reserving(b, l, w, &mut |_| Ok(()))
    }

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom")
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode_default(bytes: &[u8]) -> Result<Image8, DecodeError> {
        decode(bytes, &DecodeLimits::default(), &Windowing::default())
    }

    /// Patient data planted in every fixture by `make_dicom_fixtures.py`.
    const SECRETS: [&str; 4] = ["Doe", "Jane", "PID-SECRET", "SECRET"];

    fn assert_no_secrets(e: &DecodeError) {
        let text = format!("{e} {e:?}");
        for s in SECRETS {
            assert!(!text.contains(s), "error quotes patient data: {text}");
        }
    }

    /// Every fixture decodes to the pixels numpy computed independently
    /// (or fails with the expected kind of error).
    #[test]
    fn fixtures_match_numpy_reference() {
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("expected.json")).unwrap(),
        )
        .unwrap();
        let cases = expected.as_object().unwrap();
        assert!(cases.len() >= 15, "{} fixtures", cases.len());
        for (name, want) in cases {
            let got = decode_default(&read(name));
            if let Some(kind) = want.get("error").and_then(|k| k.as_str()) {
                let err = got.expect_err(name);
                assert_eq!(err.label(), kind.to_lowercase(), "{name}: {err}");
                if let Some(s) = want.get("contains").and_then(|s| s.as_str()) {
                    assert!(err.to_string().contains(s), "{name}: {err}");
                }
                assert_no_secrets(&err);
                continue;
            }
            let img = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            let w = want["width"].as_u64().unwrap() as u32;
            let h = want["height"].as_u64().unwrap() as u32;
            let ch = if want["channels"] == "rgb" {
                Channels::Rgb
            } else {
                Channels::Gray
            };
            assert_eq!((img.width, img.height, img.channels), (w, h, ch), "{name}");
            let px = unhex(want["pixels_hex"].as_str().unwrap());
            assert_eq!(img.data.len(), px.len(), "{name}");
            let tol = want["tolerance"].as_i64().unwrap() as i32;
            let diffs: Vec<i32> = img
                .data
                .iter()
                .zip(&px)
                .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
                .collect();
            let max = *diffs.iter().max().unwrap();
            let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
            let exact = diffs.iter().filter(|&&d| d == 0).count();
            eprintln!(
                "{name}: max diff {max}, mean {mean:.4}, exact {exact}/{}",
                diffs.len()
            );
            assert!(max <= tol, "{name}: max difference {max} > {tol}");
            if let Some(m) = want.get("mean_abs_tolerance").and_then(|m| m.as_f64()) {
                assert!(mean <= m, "{name}: mean difference {mean} > {m}");
            }
            // The image must not be degenerate (all black or all white).
            assert!(
                img.data.iter().any(|&v| v > 10) && img.data.iter().any(|&v| v < 245),
                "{name}"
            );
        }
    }

    /// Replaces the value of a US element (explicit VR LE) in a file.
    fn patch_us(bytes: &mut [u8], group: u16, elem: u16, value: u16) {
        let mut needle = Vec::new();
        needle.extend_from_slice(&group.to_le_bytes());
        needle.extend_from_slice(&elem.to_le_bytes());
        needle.extend_from_slice(b"US\x02\x00");
        let at = bytes
            .windows(8)
            .position(|w| w == needle.as_slice())
            .expect("tag present");
        bytes[at + 8..at + 10].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn rows_columns_over_the_limit_are_refused_before_decoding() {
        // Declares 60000 x 60000 but holds 64 x 48 pixels: the size check must
        // fire first (not "pixel data too short", not a 7 GB allocation).
        for name in [
            "ct_signed16_window.dcm",
            "ct_signed16_rle.dcm",
            "jpeg_baseline_gray8.dcm",
        ] {
            let mut bytes = read(name);
            patch_us(&mut bytes, 0x0028, 0x0010, 60000);
            patch_us(&mut bytes, 0x0028, 0x0011, 60000);
            let err = decode_default(&bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::TooLarge {
                        width: 60000,
                        height: 60000,
                        ..
                    }
                ),
                "{name}: {err:?}"
            );
        }
        // And a tight configured limit refuses the genuine 64 x 48 file.
        let limits = DecodeLimits {
            max_pixels: 1000,
            max_side: 16384,
        };
        let err = decode(
            &read("ct_signed16_window.dcm"),
            &limits,
            &Windowing::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    width: 64,
                    height: 48,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn jpeg_header_disagreeing_with_attributes_is_refused() {
        // Rows says 24 but the JPEG frame is 48 high: the codec would write
        // past the buffer sized from Rows.
        let mut bytes = read("jpeg_baseline_gray8.dcm");
        patch_us(&mut bytes, 0x0028, 0x0010, 24);
        let err = decode_default(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn huge_declared_length_is_refused_without_allocating() {
        // File meta from a real file, then one OB element declaring ~4 GB.
        let ct = read("ct_signed16_window.dcm");
        let meta_end = 128 + lengths::meta_group_end(&ct[128..]).unwrap();
        let mut bytes = ct[..meta_end].to_vec();
        bytes.extend_from_slice(&[0x09, 0x00, 0x10, 0x10]);
        bytes.extend_from_slice(b"OB\x00\x00");
        bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 100]);
        let err = decode_default(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Corrupt("DICOM element length runs past the end of the file".into())
        );
    }

    /// Truncations and bit flips anywhere: an error (never a panic, never
    /// patient data in the message) or a well-formed image.
    #[test]
    fn damaged_files_fail_cleanly_without_patient_data() {
        let names = [
            "ct_signed16_window.dcm",
            "ct_signed16_bigendian.dcm",
            "mono1_u16_percentile.dcm",
            "ct_signed16_rle.dcm",
            "jpeg_baseline_ybr422.dcm",
            "jpeg_lossless_sv1_u16.dcm",
            "rgb8_planar.dcm",
        ];
        let mut errors = 0;
        for name in names {
            let good = read(name);
            let mut variants: Vec<Vec<u8>> = (0..good.len())
                .step_by(53)
                .map(|n| good[..n].to_vec())
                .collect();
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            for _ in 0..150 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut v = good.clone();
                let at = 132 + (state as usize % (good.len() - 132));
                v[at] ^= 1 << ((state >> 60) as u8 % 8);
                variants.push(v);
            }
            for v in variants {
                match decode_default(&v) {
                    Ok(img) => assert_eq!(
                        img.data.len(),
                        (img.width * img.height) as usize * img.channels.count()
                    ),
                    Err(e) => {
                        errors += 1;
                        assert_no_secrets(&e);
                    }
                }
            }
        }
        assert!(errors > 100, "{errors}");
    }

    /// A committed fuzzing input of `tests/fuzz/corpus/decode_dicom/`.
    fn fuzz_input(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fuzz/corpus/decode_dicom")
            .join(name);
        std::fs::read(path).unwrap()
    }

    /// The error `bytes` get from the decoder (they must be refused).
    fn refusal(bytes: &[u8]) -> String {
        decode(bytes, &DecodeLimits::default(), &Windowing::default())
            .unwrap_err()
            .to_string()
    }

    /// Found by fuzzing (`tests/fuzz`, target `decode_dicom`): an RLE
    /// segment that decodes to fewer bytes than the image has pixels made
    /// the codec index past its output (a panic, caught only by the last
    /// line of defence). It is refused before the codec runs.
    #[test]
    fn a_short_rle_segment_is_refused_before_the_codec() {
        let bytes = fuzz_input("regression-rle-short-segment.dcm");
        assert_eq!(
            refusal(&bytes),
            corrupt("RLE segment is shorter than the image").to_string()
        );
    }

    /// Found by fuzzing (`tests/fuzz`, target `decode_dicom`, a 30-minute
    /// run): a top-level tag of group FFFE other than an item or a delimiter,
    /// declaring 3.6 GB, which the length guard skipped and the parser read
    /// as a value, reserving and zero-filling 3.6 GB (2.3 GB resident before
    /// the fuzzer's limit stopped it) for a 2 KB file. Refused before parsing.
    #[test]
    fn an_invalid_item_tag_is_refused_before_the_parser_allocates() {
        let mut bytes = fuzz_input("regression-invalid-item-tag.dcm");
        assert!(bytes.len() < 4096);
        // Its file meta also has a VR that names none (refused first since);
        // with "OB" there, the item tag is what is refused.
        let vr = bytes.windows(2).position(|w| w == [0xB1, 0xBE]).unwrap();
        bytes[vr..vr + 2].copy_from_slice(b"OB");
        assert_eq!(
            refusal(&bytes),
            corrupt("DICOM data set has an invalid item tag").to_string()
        );
    }

    /// Found by fuzzing (`tests/fuzz`, target `decode_dicom`): a US-sized
    /// element declared as UL with length 2. The parser reads whole values
    /// only (2 / 4 = none) and then took the next header from the middle of
    /// the data, where it found a 4 GB length and reserved it. Refused first.
    #[test]
    fn a_length_that_is_not_whole_values_is_refused_before_the_parser() {
        let bytes = fuzz_input("regression-partial-value.dcm");
        assert_eq!(
            refusal(&bytes),
            corrupt("DICOM element length is not a whole number of its values").to_string()
        );
    }

    /// Found by fuzzing (`tests/fuzz`, target `decode_dicom`): Pixel Data
    /// with VR bytes that name no VR, followed by an item outside any
    /// sequence; the parser read the JPEG data inside as a header and
    /// reserved the 3.8 GB length it found there. Unrecognised VRs and items
    /// outside a sequence are refused before parsing.
    #[test]
    fn an_invalid_vr_is_refused_before_the_parser() {
        let bytes = fuzz_input("regression-invalid-vr.dcm");
        assert_eq!(
            refusal(&bytes),
            corrupt("DICOM element has an invalid VR").to_string()
        );
        // An item at the top level of a data set.
        let mut good = read("ct_signed16_window.dcm");
        let at = good.len();
        good.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 1, 2, 3, 4]);
        assert!(at > 0);
        let e = decode(&good, &DecodeLimits::default(), &Windowing::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            corrupt("DICOM item outside a sequence").to_string()
        );
    }

    #[test]
    fn minmax_windowing_is_honoured_when_the_file_has_no_window() {
        let bytes = read("mono1_u16_percentile.dcm");
        let img = decode(&bytes, &DecodeLimits::default(), &Windowing::Minmax).unwrap();
        // The file's extremes map to 0 and 255 (inverted: MONOCHROME1).
        assert!(img.data.contains(&0) && img.data.contains(&255));
        assert_ne!(img, decode_default(&bytes).unwrap());
    }

    #[test]
    fn not_dicom_is_corrupt() {
        assert!(matches!(
            decode_default(b"DICM"),
            Err(DecodeError::Corrupt(_))
        ));
        let mut fake = vec![0u8; 128];
        fake.extend_from_slice(b"DICM\x02\x00\x00\x00garbage");
        assert!(matches!(
            decode_default(&fake),
            Err(DecodeError::Corrupt(_))
        ));
    }
}
