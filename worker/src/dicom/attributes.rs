//! Image attributes: reading and validating the data set's description of
//! its pixels ([`PixelInfo`]) and the rescale and window values of frame 0.
//!
//! Every structural attribute is checked for consistency before any pixel is
//! decoded, so the decoders below size their buffers from validated numbers.
//! Errors name the attribute, never its value, except for the small set of
//! standard photometric interpretation names.

use dicom_core::header::HasLength;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::transfer::Codec;
use super::{corrupt, unsupported, Object};
use crate::raster::DecodeError;

/// The photometric interpretations we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Photometric {
    /// Grayscale, minimum displayed white.
    Monochrome1,
    /// Grayscale, minimum displayed black.
    Monochrome2,
    /// Red, green, blue.
    Rgb,
    /// Full-range YCbCr (JFIF).
    YbrFull,
    /// Full-range YCbCr, chroma halved horizontally.
    YbrFull422,
}

/// Structural attributes of the image, validated.
#[derive(Debug, Clone)]
pub(super) struct PixelInfo {
    /// Rows.
    pub(super) rows: usize,
    /// Columns.
    pub(super) cols: usize,
    /// Samples per pixel: 1 or 3.
    pub(super) samples: usize,
    /// 8 or 16.
    pub(super) bits_allocated: u16,
    /// Significant bits of a sample, at most `bits_allocated`.
    pub(super) bits_stored: u16,
    /// The most significant stored bit.
    pub(super) high_bit: u16,
    /// Two's complement samples (PixelRepresentation 1).
    pub(super) signed: bool,
    /// Colour planes stored one after the other (PlanarConfiguration 1).
    pub(super) planar: bool,
    /// The photometric interpretation.
    pub(super) photometric: Photometric,
}

impl PixelInfo {
    /// Reads and validates the attributes of an image of `rows` × `cols`
    /// (already checked against the size limits).
    pub(super) fn read(
        obj: &Object,
        codec: Codec,
        rows: u16,
        cols: u16,
    ) -> Result<Self, DecodeError> {
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

    /// Bytes of one sample: 1 or 2.
    pub(super) fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits_allocated / 8)
    }

    /// Bytes of one native frame (YBR_FULL_422 stores two samples per pixel).
    pub(super) fn native_frame_len(&self) -> usize {
        let per_pixel = if self.photometric == Photometric::YbrFull422 {
            2
        } else {
            self.samples
        };
        self.rows * self.cols * per_pixel * self.bytes_per_sample()
    }

    /// Bytes of one frame as the codecs output it (full resolution, interleaved).
    pub(super) fn decoded_frame_len(&self) -> usize {
        self.rows * self.cols * self.samples * self.bytes_per_sample()
    }
}

/// A US attribute that must be present.
pub(super) fn required_u16(obj: &Object, tag: Tag, name: &str) -> Result<u16, DecodeError> {
    optional_u16(obj, tag)?.ok_or_else(|| DecodeError::Corrupt(format!("{name} is missing")))
}

/// A US attribute that may be absent or empty.
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
pub(super) fn frame0_float(obj: &Object, group_seq: Tag, tag: Tag) -> Option<f64> {
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
