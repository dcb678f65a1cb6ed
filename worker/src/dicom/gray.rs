//! Grayscale to 8 bits: stored value → modality LUT → window → 8 bits.
//!
//! The stored bits of each sample are a key (at most 16 bits); the modality
//! LUT (`key * RescaleSlope + RescaleIntercept`, signed keys sign-extended)
//! gives its real-world value. The window is the file's own
//! WindowCenter/WindowWidth when present, else the request's [`Windowing`]
//! over the image's values, resolved by [`crate::window`] like every other
//! window. The whole chain is applied through one lookup table over the
//! keys, inverted for MONOCHROME1. 8-bit unsigned data with no rescale and
//! no window in the file is passed through unchanged, like an 8-bit PNG.

use dicom_dictionary_std::tags;

use super::attributes::{frame0_float, Photometric, PixelInfo};
use super::Object;
use crate::window::{self, Window, Windowing};

/// Sample keys (stored bits, unsigned) and how to turn a key into a
/// real-world value.
struct GrayMap {
    /// Stored bits per key.
    bits: u16,
    /// Keys are two's complement.
    signed: bool,
    /// RescaleSlope.
    slope: f64,
    /// RescaleIntercept.
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

/// Frame 0 of a one-sample image to 8-bit gray (see the module documentation).
pub(super) fn gray_to_u8(
    frame: &[u8],
    px: &PixelInfo,
    obj: &Object,
    windowing: &Windowing,
) -> Vec<u8> {
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
                _ => window::resolve_keyed(windowing, &keys, |k| map.value(k)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The histogram over keys that DICOM windowing uses gives exactly the
    /// window of the real-world values themselves, for signed keys and for
    /// rescales that reorder or collapse them.
    #[test]
    fn windowing_over_keys_equals_windowing_over_values() {
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
                    window::resolve_keyed(&w, &keys, |k| map.value(k)),
                    window::resolve_f64(&w, &values),
                    "{bits} {signed} {slope} {w:?}"
                );
            }
        }
    }

    #[test]
    fn signed_keys_are_sign_extended_before_the_rescale() {
        let map = GrayMap {
            bits: 12,
            signed: true,
            slope: 2.0,
            intercept: 1.0,
        };
        assert_eq!(map.value(0x001), 3.0);
        assert_eq!(map.value(0xFFF), -1.0);
        assert_eq!(map.value(0x800), -4095.0);
    }
}
