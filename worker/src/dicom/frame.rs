//! Pixel data: the first frame's samples, native or decompressed.
//!
//! Only frame 0 is extracted (an embedding is one image). Compressed frames
//! are checked before the codec runs: the codecs size their output from the
//! JPEG frame header or the RLE header, and the result is copied into a
//! buffer sized from Rows × Columns, so a header that disagrees with the
//! attributes is refused here instead of overrunning or allocating blindly.

use std::borrow::Cow;

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;

use super::attributes::PixelInfo;
use super::transfer::Codec;
use super::{corrupt, unsupported, Object};
use crate::raster::DecodeError;

/// Frame 0's samples: as stored for native pixel data (in machine byte
/// order, YBR_FULL_422 still subsampled), interleaved at full resolution for
/// compressed pixel data. Exactly one frame's bytes long.
pub(super) fn first_frame<'a>(
    obj: &'a Object,
    codec: Codec,
    px: &PixelInfo,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let pixel_data = obj
        .element_opt(tags::PIXEL_DATA)
        .map_err(|_| corrupt("Pixel Data element is malformed"))?
        .ok_or_else(|| unsupported("DICOM object without integer Pixel Data"))?;
    match codec {
        Codec::Native => {
            let Value::Primitive(p) = pixel_data.value() else {
                return Err(corrupt("native Pixel Data is encapsulated"));
            };
            let data = p.to_bytes();
            let len = px.native_frame_len();
            if data.len() < len {
                return Err(corrupt("Pixel Data is shorter than Rows x Columns declare"));
            }
            Ok(match data {
                Cow::Borrowed(b) => Cow::Borrowed(&b[..len]),
                Cow::Owned(mut v) => {
                    v.truncate(len);
                    Cow::Owned(v)
                }
            })
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
                check_rle_header(&fragments[0], px)?;
            } else {
                check_jpeg_header(fragments, px, codec)?;
            }
            let decoded = obj
                .decode_pixel_data_frame(0)
                .map_err(|_| corrupt("compressed pixel data could not be decoded"))?;
            let mut data = decoded.into_data();
            let len = px.decoded_frame_len();
            if data.len() < len {
                return Err(corrupt(
                    "compressed pixel data decoded to fewer samples than declared",
                ));
            }
            data.truncate(len);
            Ok(Cow::Owned(data))
        }
    }
}

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

/// The fields of a JPEG frame header (SOFn) checked against the attributes.
struct Sof {
    /// The SOF marker: the coding process.
    marker: u8,
    /// Sample precision in bits.
    precision: u8,
    /// Lines.
    height: u16,
    /// Samples per line.
    width: u16,
    /// Components.
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
    let mut offsets = Vec::with_capacity(segments + 1);
    let mut prev = 64usize;
    for s in 1..=segments {
        let off = word(s) as usize;
        if off < prev || off > fragment.len() {
            return Err(bad());
        }
        offsets.push(off);
        prev = off;
    }
    offsets.push(fragment.len());
    // Each segment must decode to one byte per pixel: the codec indexes
    // its output by pixel and panics on a short segment.
    let pixels = px.rows.saturating_mul(px.cols);
    for pair in offsets.windows(2) {
        if packbits_len(&fragment[pair[0]..pair[1]], pixels) < pixels {
            return Err(corrupt("RLE segment is shorter than the image"));
        }
    }
    Ok(())
}

/// How many bytes a PackBits segment decodes to (counting stops at `cap`),
/// without decoding it.
fn packbits_len(segment: &[u8], cap: usize) -> usize {
    let (mut i, mut out) = (0usize, 0usize);
    while i < segment.len() && out < cap {
        let n = segment[i] as i8;
        i += 1;
        if n >= 0 {
            // A literal run of n + 1 bytes (as many as remain).
            let run = (n as usize + 1).min(segment.len() - i);
            out += run;
            i += run;
        } else if n != -128 {
            // One byte repeated 1 - n times.
            if i < segment.len() {
                out += (1 - n as isize) as usize;
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::attributes::Photometric;
    use super::*;

    fn gray16(rows: usize, cols: usize) -> PixelInfo {
        PixelInfo {
            rows,
            cols,
            samples: 1,
            bits_allocated: 16,
            bits_stored: 16,
            high_bit: 15,
            signed: false,
            planar: false,
            photometric: Photometric::Monochrome2,
        }
    }

    /// SOI, an APP0 segment, then an SOF3 (lossless) header.
    fn jpeg_head(precision: u8, height: u16, width: u16, components: u8) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB];
        out.extend_from_slice(&[0xFF, 0xC3, 0x00, 0x0B, precision]);
        out.extend_from_slice(&height.to_be_bytes());
        out.extend_from_slice(&width.to_be_bytes());
        out.extend_from_slice(&[components, 1, 0x11, 0]);
        out
    }

    #[test]
    fn jpeg_frame_header_must_agree_with_the_attributes() {
        let px = gray16(48, 64);
        let sof = find_sof(&jpeg_head(16, 48, 64, 1)).unwrap();
        assert_eq!(
            (sof.marker, sof.precision, sof.height, sof.width),
            (0xC3, 16, 48, 64)
        );
        let check = |head: Vec<u8>, codec| check_jpeg_header(&[head], &px, codec);
        assert_eq!(check(jpeg_head(16, 48, 64, 1), Codec::JpegLossless), Ok(()));
        for bad in [
            check(jpeg_head(16, 96, 64, 1), Codec::JpegLossless),
            check(jpeg_head(16, 48, 64, 3), Codec::JpegLossless),
            check(jpeg_head(16, 48, 64, 1), Codec::JpegLossy),
        ] {
            assert!(matches!(bad, Err(DecodeError::Corrupt(_))), "{bad:?}");
        }
        assert!(matches!(
            check(jpeg_head(8, 48, 64, 1), Codec::JpegLossless),
            Err(DecodeError::Unsupported(_))
        ));
        assert!(find_sof(b"not a jpeg").is_none());
    }

    #[test]
    fn rle_header_must_agree_with_the_attributes() {
        let px = gray16(2, 2);
        let header = |segments: u32, offsets: &[u32]| {
            let mut out = segments.to_le_bytes().to_vec();
            for o in offsets {
                out.extend_from_slice(&o.to_le_bytes());
            }
            out.resize(64, 0);
            out.extend_from_slice(&[0; 16]);
            out
        };
        // 16-bit gray: two segments (high and low bytes).
        assert_eq!(check_rle_header(&header(2, &[64, 72]), &px), Ok(()));
        assert!(check_rle_header(&header(1, &[64]), &px).is_err());
        assert!(check_rle_header(&header(2, &[72, 64]), &px).is_err());
        assert!(check_rle_header(&header(2, &[64, 4096]), &px).is_err());
        assert!(check_rle_header(&[0; 10], &px).is_err());
    }
}
