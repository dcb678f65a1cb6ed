//! DICOM Part 10 decoding: a file's first frame → an 8-bit gray or RGB raster.
//!
//! Hospitals send DICOM files, not PNGs. The model was trained on 8-bit
//! images, so a DICOM image is brought to 8 bits the way Microsoft's client
//! and radiology viewers do it: stored values → modality LUT
//! (`value * RescaleSlope + RescaleIntercept`, signed samples sign-extended)
//! → a window (the file's own WindowCenter/WindowWidth, first value if several;
//! otherwise the request's [`Windowing`], 1st–99th percentiles by default,
//! with numpy's percentile definition) → 8 bits, inverted for MONOCHROME1.
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

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::header::HasLength;
use dicom_core::value::Value;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTable, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;

use crate::decode::{Channels, DecodeError, DecodeLimits, Image8};
use crate::window::{lerp, linear_rank};
use crate::window::{Window, Windowing};

/// How the pixel data of an accepted transfer syntax is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    /// Native (uncompressed) pixel data.
    Native,
    /// Lossy JPEG (baseline / extended 8-bit): the decoder outputs RGB.
    JpegLossy,
    /// Lossless JPEG (process 14): samples as stored, no colour transform.
    JpegLossless,
    /// RLE Lossless: samples as stored.
    Rle,
}

/// The transfer syntaxes we decode.
fn codec_for(ts: &str) -> Option<Codec> {
    Some(match ts {
        // Implicit VR LE, Explicit VR LE, Explicit VR BE (retired, still in archives).
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2" => Codec::Native,
        // JPEG Baseline (process 1), JPEG Extended (process 2 & 4; 8-bit only, checked later).
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" => Codec::JpegLossy,
        // JPEG Lossless (process 14) and its first-order-prediction form (SV1).
        "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => Codec::JpegLossless,
        "1.2.840.10008.1.2.5" => Codec::Rle,
        _ => return None,
    })
}

/// A UID is digits and dots, at most 64 characters, and is never patient
/// data; anything else in that field is not repeated back.
fn printable_uid(uid: &str) -> String {
    if !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        format!("transfer syntax {uid}")
    } else {
        "transfer syntax with a malformed UID".into()
    }
}

fn corrupt(msg: &str) -> DecodeError {
    DecodeError::Corrupt(msg.into())
}

fn unsupported(msg: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported(msg.into())
}

/// Decodes a DICOM Part 10 file (128-byte preamble, "DICM", file meta group,
/// data set) to an 8-bit raster: the first frame, modality LUT and window
/// applied (see the module documentation).
pub fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
    windowing: &Windowing,
) -> Result<Image8, DecodeError> {
    // The parser and codecs index into attacker-controlled data; a panic there
    // must not take the worker thread down.
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, limits, windowing))) {
        Ok(result) => result,
        Err(_) => Err(corrupt("DICOM data is malformed (decoder failure)")),
    }
}

type Object = dicom_object::DefaultDicomObject;

fn decode_inner(
    bytes: &[u8],
    limits: &DecodeLimits,
    windowing: &Windowing,
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
    let meta_end = meta_group_end(body).ok_or_else(bad_meta)?;
    let meta = FileMetaTable::from_reader(&body[..meta_end]).map_err(|_| bad_meta())?;
    let ts = meta.transfer_syntax().to_owned();
    let codec = codec_for(&ts).ok_or_else(|| unsupported(printable_uid(&ts)))?;

    // 2. Check every declared length of the data set before the parser
    //    allocates for it.
    let syntax = match ts.as_str() {
        "1.2.840.10008.1.2" => Syntax {
            explicit_vr: false,
            big_endian: false,
        },
        "1.2.840.10008.1.2.2" => Syntax {
            explicit_vr: true,
            big_endian: true,
        },
        _ => Syntax {
            explicit_vr: true,
            big_endian: false,
        },
    };
    check_lengths(&body[meta_end..], syntax)?;

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

    // 5. The first frame's samples.
    let pixel_data = obj
        .element_opt(tags::PIXEL_DATA)
        .map_err(|_| corrupt("Pixel Data element is malformed"))?
        .ok_or_else(|| unsupported("DICOM object without integer Pixel Data"))?;
    let frame: Cow<'_, [u8]> = match codec {
        Codec::Native => {
            let Value::Primitive(p) = pixel_data.value() else {
                return Err(corrupt("native Pixel Data is encapsulated"));
            };
            let data = p.to_bytes();
            let len = px.native_frame_len();
            if data.len() < len {
                return Err(corrupt("Pixel Data is shorter than Rows x Columns declare"));
            }
            match data {
                Cow::Borrowed(b) => Cow::Borrowed(&b[..len]),
                Cow::Owned(mut v) => {
                    v.truncate(len);
                    Cow::Owned(v)
                }
            }
        }
        Codec::JpegLossy | Codec::JpegLossless | Codec::Rle => {
            let Value::PixelSequence(seq) = pixel_data.value() else {
                return Err(corrupt(
                    "encapsulated Pixel Data is not a fragment sequence",
                ));
            };
            let fragments = seq.fragments();
            if fragments.is_empty() {
                return Err(corrupt("encapsulated Pixel Data has no fragments"));
            }
            if codec == Codec::Rle {
                check_rle_header(&fragments[0], &px)?;
            } else {
                check_jpeg_header(fragments, &px, codec)?;
            }
            let decoded = obj
                .decode_pixel_data_frame(0)
                .map_err(|_| corrupt("compressed pixel data could not be decoded"))?;
            let data = decoded.into_data();
            let len = px.decoded_frame_len();
            if data.len() < len {
                return Err(corrupt(
                    "compressed pixel data decoded to fewer samples than declared",
                ));
            }
            let mut data = data;
            data.truncate(len);
            Cow::Owned(data)
        }
    };

    // 6. To 8 bits.
    let (channels, data) = if px.samples == 1 {
        (Channels::Gray, gray_to_u8(&frame, &px, &obj, windowing))
    } else {
        (Channels::Rgb, color_to_u8(&frame, &px, codec))
    };
    Ok(Image8 {
        width: u32::from(cols),
        height: u32::from(rows),
        channels,
        data,
    })
}

// ---------------------------------------------------------------------------
// Attributes

/// The photometric interpretations we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Photometric {
    Monochrome1,
    Monochrome2,
    Rgb,
    YbrFull,
    YbrFull422,
}

/// Structural attributes of the image, validated.
#[derive(Debug, Clone)]
struct PixelInfo {
    rows: usize,
    cols: usize,
    samples: usize,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    planar: bool,
    photometric: Photometric,
}

impl PixelInfo {
    fn read(obj: &Object, codec: Codec, rows: u16, cols: u16) -> Result<Self, DecodeError> {
        let samples = required_u16(obj, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
        let bits_allocated = required_u16(obj, tags::BITS_ALLOCATED, "BitsAllocated")?;
        let bits_stored = optional_u16(obj, tags::BITS_STORED)?.unwrap_or(bits_allocated);
        let high_bit = optional_u16(obj, tags::HIGH_BIT)?.unwrap_or(bits_stored.saturating_sub(1));
        let pixel_representation = optional_u16(obj, tags::PIXEL_REPRESENTATION)?.unwrap_or(0);
        let planar = optional_u16(obj, tags::PLANAR_CONFIGURATION)?.unwrap_or(0) == 1;

        let pi = obj
            .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
            .ok()
            .flatten()
            .and_then(|e| {
                e.to_str().ok().map(|s| {
                    s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                        .to_owned()
                })
            })
            .ok_or_else(|| corrupt("PhotometricInterpretation is missing"))?;
        let photometric = match pi.as_str() {
            "MONOCHROME1" => Photometric::Monochrome1,
            "MONOCHROME2" => Photometric::Monochrome2,
            "RGB" => Photometric::Rgb,
            "YBR_FULL" => Photometric::YbrFull,
            "YBR_FULL_422" => Photometric::YbrFull422,
            // Known names are structural and safe to repeat; anything else is not.
            known @ ("PALETTE COLOR" | "YBR_PARTIAL_422" | "YBR_PARTIAL_420" | "YBR_ICT"
            | "YBR_RCT" | "HSV" | "ARGB" | "CMYK") => {
                return Err(unsupported(format!("photometric interpretation {known}")));
            }
            _ => return Err(unsupported("unrecognised photometric interpretation")),
        };

        match (samples, photometric) {
            (1, Photometric::Monochrome1 | Photometric::Monochrome2) => {}
            (3, Photometric::Rgb | Photometric::YbrFull | Photometric::YbrFull422) => {}
            (1 | 3, _) => {
                return Err(corrupt(
                    "SamplesPerPixel does not match the photometric interpretation",
                ))
            }
            (n, _) => return Err(unsupported(format!("{n} samples per pixel"))),
        }
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(unsupported(format!(
                "{bits_allocated} bits allocated (8 and 16 are supported)"
            )));
        }
        if bits_stored == 0
            || bits_stored > bits_allocated
            || high_bit >= bits_allocated
            || high_bit + 1 < bits_stored
        {
            return Err(corrupt(
                "BitsStored/HighBit are inconsistent with BitsAllocated",
            ));
        }
        if pixel_representation > 1 {
            return Err(corrupt("PixelRepresentation is neither 0 nor 1"));
        }
        if samples == 3 && bits_allocated == 16 && photometric != Photometric::Rgb {
            return Err(unsupported("16-bit YBR colour"));
        }
        if photometric == Photometric::YbrFull422
            && codec == Codec::Native
            && (bits_allocated != 8 || !cols.is_multiple_of(2))
        {
            return Err(unsupported(
                "uncompressed YBR_FULL_422 other than 8-bit with an even width",
            ));
        }
        Ok(PixelInfo {
            rows: usize::from(rows),
            cols: usize::from(cols),
            samples: usize::from(samples),
            bits_allocated,
            bits_stored,
            high_bit,
            signed: pixel_representation == 1,
            planar,
            photometric,
        })
    }

    fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits_allocated / 8)
    }

    /// Bytes of one native frame (YBR_FULL_422 stores two samples per pixel).
    fn native_frame_len(&self) -> usize {
        let per_pixel = if self.photometric == Photometric::YbrFull422 {
            2
        } else {
            self.samples
        };
        self.rows * self.cols * per_pixel * self.bytes_per_sample()
    }

    /// Bytes of one frame as the codecs output it (full resolution, interleaved).
    fn decoded_frame_len(&self) -> usize {
        self.rows * self.cols * self.samples * self.bytes_per_sample()
    }
}

fn required_u16(obj: &Object, tag: Tag, name: &str) -> Result<u16, DecodeError> {
    optional_u16(obj, tag)?.ok_or_else(|| DecodeError::Corrupt(format!("{name} is missing")))
}

fn optional_u16(obj: &Object, tag: Tag) -> Result<Option<u16>, DecodeError> {
    match obj.element_opt(tag) {
        Ok(Some(e)) if e.is_empty() => Ok(None),
        Ok(Some(e)) => e
            .to_int::<u16>()
            .map(Some)
            .map_err(|_| corrupt("an image attribute (rows, columns, bits, samples) is malformed")),
        Ok(None) => Ok(None),
        Err(_) => Err(corrupt(
            "an image attribute (rows, columns, bits, samples) is malformed",
        )),
    }
}

/// First value of a numeric (DS) attribute for frame 0: the top-level data set,
/// else the per-frame then shared functional group (enhanced multi-frame
/// objects keep rescale and window there).
fn frame0_float(obj: &Object, group_seq: Tag, tag: Tag) -> Option<f64> {
    let first = |o: &InMemDicomObject| -> Option<f64> {
        let v = o.get(tag)?.to_multi_float64().ok()?;
        v.first().copied().filter(|x| x.is_finite())
    };
    if let Some(v) = first(obj) {
        return Some(v);
    }
    for fg in [
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
    ] {
        let item = obj
            .get(fg)
            .and_then(|e| e.items())
            .and_then(|items| items.first());
        let inner = item
            .and_then(|i| i.get(group_seq))
            .and_then(|e| e.items())
            .and_then(|items| items.first());
        if let Some(v) = inner.and_then(first) {
            return Some(v);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Grayscale: stored value → modality LUT → window → 8 bits

/// Sample keys (stored bits, unsigned) and how to turn a key into a
/// real-world value.
struct GrayMap {
    bits: u16,
    signed: bool,
    slope: f64,
    intercept: f64,
}

impl GrayMap {
    /// The real-world value of a stored key: sign-extended, then
    /// `key * slope + intercept` in f64 (numpy's float64 arithmetic, same order).
    #[inline]
    fn value(&self, key: u16) -> f64 {
        let k = i32::from(key);
        let stored = if self.signed && k & (1 << (self.bits - 1)) != 0 {
            k - (1 << self.bits)
        } else {
            k
        };
        f64::from(stored) * self.slope + self.intercept
    }
}

fn gray_to_u8(frame: &[u8], px: &PixelInfo, obj: &Object, windowing: &Windowing) -> Vec<u8> {
    // Stored bits → key: shift the high bit down, mask off unused (overlay) bits.
    let shift = px.high_bit + 1 - px.bits_stored;
    let mask: u32 = (1u32 << px.bits_stored) - 1;
    let keys: Vec<u16> = if px.bits_allocated == 8 {
        frame
            .iter()
            .map(|&b| ((u32::from(b) >> shift) & mask) as u16)
            .collect()
    } else {
        // Native frames are in machine order (dicom-rs reads the file's byte
        // order into native u16), as are the codecs' outputs.
        frame
            .chunks_exact(2)
            .map(|c| ((u32::from(u16::from_ne_bytes([c[0], c[1]])) >> shift) & mask) as u16)
            .collect()
    };

    let slope = frame0_float(
        obj,
        tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
        tags::RESCALE_SLOPE,
    )
    .unwrap_or(1.0);
    let intercept = frame0_float(
        obj,
        tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
        tags::RESCALE_INTERCEPT,
    )
    .unwrap_or(0.0);
    let map = GrayMap {
        bits: px.bits_stored,
        signed: px.signed,
        slope,
        intercept,
    };
    let center = frame0_float(obj, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_CENTER);
    let width =
        frame0_float(obj, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_WIDTH).filter(|w| *w > 0.0);
    let invert = px.photometric == Photometric::Monochrome1;

    let identity = slope == 1.0 && intercept == 0.0;
    let lut_len = 1usize << px.bits_stored;
    let mut lut: Vec<u8> =
        if px.bits_stored == 8 && !px.signed && identity && (center.is_none() || width.is_none()) {
            // Already 8-bit display values: pass through, as for an 8-bit PNG.
            (0..=255u8).collect()
        } else {
            let window = match (center, width) {
                (Some(c), Some(w)) => Window::from_center_width(c, w),
                _ => resolve_keys(windowing, &keys, &map),
            };
            (0..lut_len)
                .map(|k| window.map(map.value(k as u16)))
                .collect()
        };
    if invert {
        for v in &mut lut {
            *v = 255 - *v;
        }
    }
    keys.iter().map(|&k| lut[usize::from(k)]).collect()
}

/// [`crate::window::resolve_f64`] over the real-world values of `keys`,
/// computed from a histogram of the (at most 65536) distinct stored values
/// instead of sorting a copy of every pixel: the same order statistics, the
/// same numpy interpolation, bit for bit (a test checks the two agree), in
/// O(n) for a multi-megapixel radiograph.
fn resolve_keys(windowing: &Windowing, keys: &[u16], map: &GrayMap) -> Window {
    let n = keys.len();
    if n == 0 {
        return Window { lo: 0.0, hi: 0.0 };
    }
    let mut hist = vec![0u64; 65536];
    for &k in keys {
        hist[usize::from(k)] += 1;
    }
    // Distinct values in ascending order with cumulative counts.
    let mut present: Vec<(f64, u64)> = hist
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(k, &c)| (map.value(k as u16), c))
        .collect();
    present.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut cumulative = Vec::with_capacity(present.len());
    let mut seen = 0u64;
    for &(_, c) in &present {
        seen += c;
        cumulative.push(seen);
    }
    // k-th smallest value, 0-based.
    let kth = |k: usize| -> f64 {
        let i = cumulative.partition_point(|&c| c <= k as u64);
        present[i.min(present.len() - 1)].0
    };
    match *windowing {
        Windowing::Minmax => Window {
            lo: kth(0),
            hi: kth(n - 1),
        },
        Windowing::Percentile { low, high } => {
            let at = |p: f64| {
                let (i, j, t) = linear_rank(p, n);
                lerp(kth(i), kth(j), t)
            };
            Window {
                lo: at(low),
                hi: at(high),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Colour

fn color_to_u8(frame: &[u8], px: &PixelInfo, codec: Codec) -> Vec<u8> {
    let n = px.rows * px.cols;
    // Codecs output interleaved samples; lossy JPEG decoders also convert
    // YCbCr to RGB themselves.
    let planar = codec == Codec::Native && px.planar;
    let photometric = match (codec, px.photometric) {
        (Codec::JpegLossy, _) => Photometric::Rgb,
        (Codec::Native, p) => p,
        // Lossless codecs keep full-resolution samples as stored.
        (_, Photometric::YbrFull422) => Photometric::YbrFull,
        (_, p) => p,
    };

    if px.bits_allocated == 16 {
        // 16-bit RGB (rare): window all samples together, like a 16-bit PNG.
        let samples: Vec<u16> = frame
            .chunks_exact(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect();
        let samples = if planar {
            interleave(&samples, n)
        } else {
            samples
        };
        let w = crate::window::resolve_u16(&Windowing::default(), &samples);
        return w.apply_u16(&samples);
    }

    match photometric {
        Photometric::YbrFull422 => {
            // Y0 Y1 Cb Cr per horizontal pair of pixels.
            let mut out = Vec::with_capacity(n * 3);
            for c in frame.chunks_exact(4) {
                out.extend_from_slice(&ybr_to_rgb(c[0], c[2], c[3]));
                out.extend_from_slice(&ybr_to_rgb(c[1], c[2], c[3]));
            }
            out
        }
        Photometric::YbrFull => {
            let src: Cow<'_, [u8]> = if planar {
                Cow::Owned(interleave(frame, n))
            } else {
                Cow::Borrowed(frame)
            };
            src.chunks_exact(3)
                .flat_map(|c| ybr_to_rgb(c[0], c[1], c[2]))
                .collect()
        }
        _ => {
            if planar {
                interleave(frame, n)
            } else {
                frame.to_vec()
            }
        }
    }
}

/// Planar (RRR…GGG…BBB…) to interleaved (RGBRGB…).
fn interleave<T: Copy>(planes: &[T], n: usize) -> Vec<T> {
    let (r, rest) = planes.split_at(n);
    let (g, b) = rest.split_at(n);
    (0..n).flat_map(|i| [r[i], g[i], b[i]]).collect()
}

/// YBR_FULL (JFIF YCbCr, full range) to RGB, DICOM PS3.3 C.7.6.3.1.2,
/// rounded to nearest and clipped.
#[inline]
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
    let r = y + 1.402 * cr;
    let g = y - 0.344136 * cb - 0.714136 * cr;
    let b = y + 1.772 * cb;
    let q = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    [q(r), q(g), q(b)]
}

// ---------------------------------------------------------------------------
// Pre-decode checks of compressed frames

/// Frame 0's JPEG frame header (SOFn) must agree with the DICOM attributes:
/// the codec sizes its output from the JPEG header and the adapter copies it
/// into a buffer sized from Rows × Columns.
fn check_jpeg_header(
    fragments: &[Vec<u8>],
    px: &PixelInfo,
    codec: Codec,
) -> Result<(), DecodeError> {
    // Frame 0 starts at fragment 0 and may span several fragments; the frame
    // header comes early, so look at no more than the first 1 MiB.
    let mut head = Vec::new();
    for f in fragments {
        head.extend_from_slice(f);
        if head.len() >= 1 << 20 {
            break;
        }
    }
    let sof =
        find_sof(&head).ok_or_else(|| corrupt("JPEG frame header not found in the first frame"))?;
    match (codec, sof.marker) {
        (Codec::JpegLossy, 0xC0..=0xC2) | (Codec::JpegLossless, 0xC3) => {}
        (_, 0xC9..=0xCB | 0xCD..=0xCF) => return Err(unsupported("arithmetic-coded JPEG")),
        (_, 0xC5..=0xC7) => return Err(unsupported("hierarchical JPEG")),
        _ => {
            return Err(corrupt(
                "JPEG coding process does not match the transfer syntax",
            ))
        }
    }
    if usize::from(sof.width) != px.cols || usize::from(sof.height) != px.rows {
        return Err(corrupt("JPEG frame size does not match Rows and Columns"));
    }
    if usize::from(sof.components) != px.samples {
        return Err(corrupt(
            "JPEG component count does not match SamplesPerPixel",
        ));
    }
    if codec == Codec::JpegLossy && sof.precision != 8 {
        return Err(unsupported(format!("{}-bit lossy JPEG", sof.precision)));
    }
    let wants_16 = sof.precision > 8;
    if wants_16 != (px.bits_allocated == 16) {
        return Err(unsupported(
            "JPEG sample precision does not match BitsAllocated",
        ));
    }
    if wants_16 && px.samples != 1 {
        return Err(unsupported("lossless JPEG colour above 8 bits"));
    }
    Ok(())
}

struct Sof {
    marker: u8,
    precision: u8,
    height: u16,
    width: u16,
    components: u8,
}

/// Walks JPEG marker segments from SOI to the first SOFn.
fn find_sof(data: &[u8]) -> Option<Sof> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        // Skip to a marker (fill bytes 0xFF allowed).
        while *data.get(i)? != 0xFF {
            i += 1;
        }
        while *data.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *data.get(i)?;
        i += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 | 0xDA => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
        if len < 2 {
            return None;
        }
        if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let s = data.get(i + 2..i + 8)?;
            return Some(Sof {
                marker,
                precision: s[0],
                height: u16::from_be_bytes([s[1], s[2]]),
                width: u16::from_be_bytes([s[3], s[4]]),
                components: s[5],
            });
        }
        i += len;
    }
}

/// Frame 0's RLE header: the segment count must be samples × bytes per
/// sample, the offsets in order and inside the fragment.
fn check_rle_header(fragment: &[u8], px: &PixelInfo) -> Result<(), DecodeError> {
    let bad = || corrupt("RLE header is malformed");
    if fragment.len() < 64 {
        return Err(bad());
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            fragment[4 * i],
            fragment[4 * i + 1],
            fragment[4 * i + 2],
            fragment[4 * i + 3],
        ])
    };
    let segments = word(0) as usize;
    if segments != px.samples * px.bytes_per_sample() {
        return Err(corrupt(
            "RLE segment count does not match the image attributes",
        ));
    }
    let mut prev = 64usize;
    for s in 1..=segments {
        let off = word(s) as usize;
        if off < prev || off > fragment.len() {
            return Err(bad());
        }
        prev = off;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Length pre-check of the data set

#[derive(Debug, Clone, Copy)]
struct Syntax {
    explicit_vr: bool,
    big_endian: bool,
}

const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Where the file meta group (group 0002, always explicit VR little endian)
/// ends, relative to the "DICM" marker.
fn meta_group_end(body: &[u8]) -> Option<usize> {
    let mut i = 4;
    loop {
        let group = u16::from_le_bytes([*body.get(i)?, *body.get(i + 1)?]);
        if group != 0x0002 {
            return Some(i);
        }
        let vr = body.get(i + 4..i + 6)?;
        let (len, header) = if long_length_vr(vr) {
            (
                u32::from_le_bytes(body.get(i + 8..i + 12)?.try_into().ok()?),
                12,
            )
        } else {
            (
                u32::from(u16::from_le_bytes(body.get(i + 6..i + 8)?.try_into().ok()?)),
                8,
            )
        };
        if len == UNDEFINED {
            return None;
        }
        i = i.checked_add(header)?.checked_add(len as usize)?;
        if i > body.len() {
            return None;
        }
    }
}

/// Explicit VR: whether the length field is 4 bytes (after 2 reserved
/// bytes). As in dicom-rs, only the listed VRs have a 2-byte length; any
/// other, including unrecognised VR bytes (read as UN), has 4.
fn long_length_vr(vr: &[u8]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// An open container while walking the data set.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// A sequence; `implicit` when its items are implicit VR (an
    /// undefined-length UN in an explicit VR data set).
    Sequence { end: Option<usize>, implicit: bool },
    /// A data set item of a sequence.
    Item { end: Option<usize> },
    /// Encapsulated pixel data: items are raw fragments.
    Fragments,
}

/// Walks the data set's element headers the way the parser will (sequences,
/// items, delimiters, encapsulated fragments, implicit VR inside
/// undefined-length UN) and refuses any defined length that runs past the end
/// of the data: the parser reserves and zero-fills a declared length before
/// reading it, so a few hundred bytes could otherwise make it allocate
/// gigabytes. The walk is only a guard: it refuses nothing that fits, and
/// leaves malformed structure to the parser, which fails on its own.
fn check_lengths(data: &[u8], syntax: Syntax) -> Result<(), DecodeError> {
    let too_long = || corrupt("DICOM element length runs past the end of the file");
    let rd16 = |b: &[u8]| {
        if syntax.big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        }
    };
    let rd32 = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if syntax.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let mut stack: Vec<Open> = Vec::new();
    let mut i = 0usize;
    while i + 8 <= data.len() {
        // Close defined-length containers that end here.
        while let Some(&top) = stack.last() {
            match top {
                Open::Sequence { end: Some(e), .. } | Open::Item { end: Some(e) } if i >= e => {
                    stack.pop();
                }
                _ => break,
            }
        }
        if stack.len() > 256 {
            return Err(corrupt("DICOM sequences are nested too deeply"));
        }
        let explicit = syntax.explicit_vr
            && !stack
                .iter()
                .any(|o| matches!(o, Open::Sequence { implicit: true, .. }));
        let group = rd16(&data[i..]);
        let elem = rd16(&data[i + 2..]);
        if group == 0xFFFE {
            // Items and delimiters: tag + 4-byte length, never a VR.
            let len = rd32(&data[i + 4..]);
            i += 8;
            match elem {
                0xE000 if matches!(stack.last(), Some(Open::Fragments)) => {
                    if len == UNDEFINED || len as usize > data.len() - i {
                        return Err(too_long());
                    }
                    i += len as usize;
                }
                0xE000 => {
                    if len == UNDEFINED {
                        stack.push(Open::Item { end: None });
                    } else if len as usize > data.len() - i {
                        return Err(too_long());
                    } else {
                        stack.push(Open::Item {
                            end: Some(i + len as usize),
                        });
                    }
                }
                0xE00D => {
                    if let Some(at) = stack.iter().rposition(|o| matches!(o, Open::Item { .. })) {
                        stack.truncate(at);
                    }
                }
                0xE0DD => {
                    if let Some(at) = stack
                        .iter()
                        .rposition(|o| matches!(o, Open::Sequence { .. } | Open::Fragments))
                    {
                        stack.truncate(at);
                    }
                }
                _ => {}
            }
            continue;
        }
        let (vr, len) = if explicit {
            let vr = [data[i + 4], data[i + 5]];
            if long_length_vr(&vr) {
                if i + 12 > data.len() {
                    return Err(too_long());
                }
                let len = rd32(&data[i + 8..]);
                i += 12;
                (Some(vr), len)
            } else {
                let len = u32::from(rd16(&data[i + 6..]));
                i += 8;
                (Some(vr), len)
            }
        } else {
            let len = rd32(&data[i + 4..]);
            i += 8;
            (None, len)
        };
        let pixel_data = (group, elem) == (0x7FE0, 0x0010);
        let sequence = match vr {
            Some(vr) => &vr == b"SQ" || (&vr == b"UN" && len == UNDEFINED),
            None => is_sq_tag(Tag(group, elem)) || (len == UNDEFINED && !pixel_data),
        };
        if len == UNDEFINED {
            if sequence {
                let implicit = matches!(vr, Some(v) if &v == b"UN");
                stack.push(Open::Sequence {
                    end: None,
                    implicit,
                });
            } else if pixel_data {
                stack.push(Open::Fragments);
            }
            continue;
        }
        if len as usize > data.len() - i {
            return Err(too_long());
        }
        if sequence {
            stack.push(Open::Sequence {
                end: Some(i + len as usize),
                implicit: false,
            });
        } else {
            i += len as usize;
        }
    }
    Ok(())
}

/// Whether the standard dictionary says a tag is a sequence (implicit VR).
fn is_sq_tag(tag: Tag) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use dicom_core::VR;
    matches!(
        dicom_dictionary_std::StandardDataDictionary
            .by_tag(tag)
            .map(|e| e.vr()),
        Some(VirtualVr::Exact(VR::SQ))
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use crate::window;

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
        let meta_end = 128 + meta_group_end(&ct[128..]).unwrap();
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

    #[test]
    fn histogram_percentiles_equal_window_resolve_f64() {
        let mut state = 88172645463325252u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (bits, signed, slope, intercept) in [
            (16u16, false, 1.0, 0.0),
            (12, true, 1.0, -1024.0),
            (16, true, 0.37, 12.5),
            (10, false, -2.0, 100.0),
            (8, false, 0.0, 5.0),
        ] {
            let map = GrayMap {
                bits,
                signed,
                slope,
                intercept,
            };
            let keys: Vec<u16> = (0..5000)
                .map(|_| (next() % (1u64 << bits)) as u16)
                .collect();
            let values: Vec<f64> = keys.iter().map(|&k| map.value(k)).collect();
            for w in [
                Windowing::default(),
                Windowing::Minmax,
                Windowing::Percentile {
                    low: 0.0,
                    high: 100.0,
                },
                Windowing::Percentile {
                    low: 2.5,
                    high: 97.3,
                },
            ] {
                assert_eq!(
                    resolve_keys(&w, &keys, &map),
                    window::resolve_f64(&w, &values),
                    "{bits} {signed} {slope} {w:?}"
                );
            }
        }
    }

    #[test]
    fn sniffed_and_routed_by_the_generic_decoder() {
        let bytes = read("ct_signed16_window.dcm");
        assert_eq!(
            crate::decode::sniff(&bytes),
            Some(crate::decode::Format::Dicom)
        );
        let via_generic =
            crate::decode::decode(&bytes, &DecodeLimits::default(), &Windowing::default()).unwrap();
        assert_eq!(via_generic, decode_default(&bytes).unwrap());
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
    fn ybr_full_to_rgb() {
        assert_eq!(ybr_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(ybr_to_rgb(255, 128, 128), [255, 255, 255]);
        assert_eq!(ybr_to_rgb(76, 85, 255), [254, 0, 0]);
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
