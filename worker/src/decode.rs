//! Image decoding: base64 → bytes → an 8-bit gray or RGB raster.
//!
//! Requests carry images as base64 (with or without MIME line breaks). The
//! managed service takes PNG; hospitals also send JPEG and DICOM, so the format
//! is sniffed from the magic bytes. Every decoder runs under limits checked
//! against the header *before* pixels are allocated: a PNG that declares
//! 100000×100000 pixels in a few hundred bytes (a decompression bomb) is
//! refused, not attempted.
//!
//! 16-bit images are windowed to 8 bits (see [`crate::window`]); grayscale stays
//! single-channel here (it is replicated to RGB after resizing, which gives the
//! same result as PIL's `convert("RGB")` before resizing, at a third of the
//! cost); alpha is dropped, as PIL's `convert("RGB")` drops it.
//!
//! DICOM files are handed to [`crate::dicom`]; the raster types every decoder
//! produces come from [`crate::raster`].
//!
//! Errors describe the problem, never the content.

use std::io::Cursor;

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

// The raster types are part of this module's interface (what `decode`
// returns and how it fails), so they are re-exported here.
pub use crate::raster::{Channels, DecodeError, DecodeLimits, Footprint, Image8};
use crate::window::{self, Windowing};

/// Base64 as clients send it: standard alphabet, padding optional, and MIME
/// line breaks (Python's `base64.encodebytes`) allowed anywhere.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64, ignoring ASCII whitespace.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, DecodeError> {
    let bytes = s.as_bytes();
    if bytes.iter().any(|b| b.is_ascii_whitespace()) {
        // Copy the runs between line breaks whole (76-character lines from
        // the usual encoders), not byte by byte.
        let mut compact = Vec::with_capacity(bytes.len());
        for run in bytes.split(|b| b.is_ascii_whitespace()) {
            compact.extend_from_slice(run);
        }
        B64.decode(compact).map_err(|_| DecodeError::Base64)
    } else {
        B64.decode(bytes).map_err(|_| DecodeError::Base64)
    }
}

/// The container formats we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Portable Network Graphics (8- or 16-bit).
    Png,
    /// JPEG (baseline or progressive).
    Jpeg,
    /// DICOM Part 10 file (preamble + "DICM").
    Dicom,
}

/// Sniffs the format from magic bytes.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Some(Format::Dicom)
    } else {
        None
    }
}

/// Called with the image's [`Footprint`] once its header is read and its
/// dimensions are within the limits, before pixels are allocated; an error
/// stops the decode.
pub type Reserve<'a> = &'a mut dyn FnMut(Footprint) -> Result<(), DecodeError>;

/// Decodes image bytes of any accepted format to an 8-bit raster.
pub fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
    windowing: &Windowing,
) -> Result<Image8, DecodeError> {
    decode_reserving(bytes, limits, windowing, &mut |_| Ok(()))
}

/// [`decode`], telling `reserve` what the decode will allocate first.
pub fn decode_reserving(
    bytes: &[u8],
    limits: &DecodeLimits,
    windowing: &Windowing,
    reserve: Reserve<'_>,
) -> Result<Image8, DecodeError> {
    match sniff(bytes).ok_or(DecodeError::UnknownFormat)? {
        Format::Png => decode_raster(bytes, ImageFormat::Png, limits, windowing, reserve),
        Format::Jpeg => decode_raster(bytes, ImageFormat::Jpeg, limits, windowing, reserve),
        Format::Dicom => crate::dicom::decode_reserving(bytes, limits, windowing, reserve),
    }
}

fn map_image_error(e: image::ImageError) -> DecodeError {
    use image::ImageError as E;
    match e {
        E::Limits(_) => DecodeError::Corrupt("decoder memory limit exceeded".into()),
        E::Unsupported(u) => DecodeError::Unsupported(format!("{u}")),
        // Decoding and I/O errors from a memory buffer mean truncated or
        // malformed data; the decoders' messages name structures, not content.
        E::Decoding(d) => DecodeError::Corrupt(format!("{d}")),
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt("data is truncated".into())
        }
        E::IoError(_) => DecodeError::Corrupt("data is truncated or malformed".into()),
        E::Parameter(_) | E::Encoding(_) => DecodeError::Corrupt("malformed image".into()),
    }
}

fn decode_raster(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
    windowing: &Windowing,
    reserve: Reserve<'_>,
) -> Result<Image8, DecodeError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut lim = Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    // Output buffer (16-bit RGBA worst case) plus the decoder's own working set.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(lim);
    let decoder = reader.into_decoder().map_err(map_image_error)?;
    let (w, h) = decoder.dimensions();
    limits.check(w, h)?;
    reserve(Footprint {
        width: w,
        height: h,
        bytes_per_pixel: u64::from(decoder.color_type().bytes_per_pixel()),
    })?;
    let img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    Ok(to_image8(img, windowing))
}

/// Converts any decoded raster to 8-bit gray or RGB, windowing 16-bit and
/// float data, dropping alpha.
pub fn to_image8(img: DynamicImage, windowing: &Windowing) -> Image8 {
    let (width, height) = (img.width(), img.height());
    let gray8 = |data| Image8 {
        width,
        height,
        channels: Channels::Gray,
        data,
    };
    let rgb8 = |data| Image8 {
        width,
        height,
        channels: Channels::Rgb,
        data,
    };
    match img {
        DynamicImage::ImageLuma8(b) => gray8(b.into_raw()),
        DynamicImage::ImageLumaA8(b) => gray8(b.into_raw().chunks_exact(2).map(|p| p[0]).collect()),
        DynamicImage::ImageRgb8(b) => rgb8(b.into_raw()),
        DynamicImage::ImageRgba8(b) => rgb8(
            b.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        DynamicImage::ImageLuma16(b) => {
            let s = b.into_raw();
            let w = window::resolve_u16(windowing, &s);
            gray8(w.apply_u16(&s))
        }
        DynamicImage::ImageLumaA16(b) => {
            let s: Vec<u16> = b.into_raw().chunks_exact(2).map(|p| p[0]).collect();
            let w = window::resolve_u16(windowing, &s);
            gray8(w.apply_u16(&s))
        }
        DynamicImage::ImageRgb16(b) => {
            let s = b.into_raw();
            let w = window::resolve_u16(windowing, &s);
            rgb8(w.apply_u16(&s))
        }
        DynamicImage::ImageRgba16(b) => {
            let s: Vec<u16> = b
                .into_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect();
            let w = window::resolve_u16(windowing, &s);
            rgb8(w.apply_u16(&s))
        }
        // Float and future variants: let the image crate convert.
        other => rgb8(other.to_rgb8().into_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgba};

    fn png_bytes(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn base64_with_and_without_line_breaks() {
        let brief = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACx\njwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8A\nVGwJ5VDvPeYAAAAASUVORK5CYII=\n";
        let a = decode_base64(brief).unwrap();
        let b = decode_base64(&brief.replace('\n', "")).unwrap();
        assert_eq!(a, b);
        assert_eq!(sniff(&a), Some(Format::Png));
        let img = decode(&a, &DecodeLimits::default(), &Windowing::default()).unwrap();
        assert_eq!((img.width, img.height, img.channels), (2, 2, Channels::Rgb));
        assert_eq!(decode_base64("not base64 !!!"), Err(DecodeError::Base64));
    }

    #[test]
    fn header_declaring_huge_image_is_refused_before_allocation() {
        // A valid 1x1 PNG with the IHDR dimensions patched to 100000x100000.
        let mut png = png_bytes(DynamicImage::ImageLuma8(ImageBuffer::from_pixel(
            1,
            1,
            Luma([0u8]),
        )));
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = decode(&png, &DecodeLimits::default(), &Windowing::default()).unwrap_err();
        // Either our dimension check or the decoder's own limit (the IHDR CRC
        // no longer matches) refuses it; neither allocates 10 GB.
        assert!(
            matches!(err, DecodeError::TooLarge { .. } | DecodeError::Corrupt(_)),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let img =
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(64, 64, |x, y| Luma([(x * y) as u8])));
        let png = png_bytes(img);
        let err = decode(
            &png[..png.len() / 2],
            &DecodeLimits::default(),
            &Windowing::default(),
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn rgba_drops_alpha_and_gray16_is_windowed() {
        let img = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(2, 1, Rgba([10, 20, 30, 0])));
        let out = decode(
            &png_bytes(img),
            &DecodeLimits::default(),
            &Windowing::default(),
        )
        .unwrap();
        assert_eq!(out.data, vec![10, 20, 30, 10, 20, 30]);

        let img16 = DynamicImage::ImageLuma16(ImageBuffer::from_fn(100, 1, |x, _| {
            Luma([1000 + 30 * x as u16])
        }));
        let out = decode(
            &png_bytes(img16),
            &DecodeLimits::default(),
            &Windowing::default(),
        )
        .unwrap();
        assert_eq!(out.channels, Channels::Gray);
        assert!(out.data.iter().any(|&v| v > 0 && v < 255));
        assert!(out.data.iter().filter(|&&v| v == 255).count() <= 2);
    }

    #[test]
    fn unknown_format() {
        assert_eq!(
            decode(
                b"GIF89a......",
                &DecodeLimits::default(),
                &Windowing::default()
            ),
            Err(DecodeError::UnknownFormat)
        );
    }

    #[test]
    fn dicom_is_sniffed_and_routed_to_the_dicom_decoder() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dicom/ct_signed16_window.dcm");
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(sniff(&bytes), Some(Format::Dicom));
        let limits = DecodeLimits::default();
        let windowing = Windowing::default();
        assert_eq!(
            decode(&bytes, &limits, &windowing).unwrap(),
            crate::dicom::decode_reserving(&bytes, &limits, &windowing, &mut |_| Ok(())).unwrap()
        );
    }
}
