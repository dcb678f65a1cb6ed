//! Colour to 8-bit RGB: planar to interleaved, YBR_FULL and YBR_FULL_422 to
//! RGB (DICOM PS3.3 C.7.6.3.1.2), 16-bit RGB windowed like a 16-bit PNG.
//!
//! 8-bit RGB passes through unchanged. Lossy JPEG frames arrive already
//! converted to RGB by the codec; lossless codecs return YBR_FULL_422 at full
//! resolution, so it is converted as YBR_FULL.

use std::borrow::Cow;

use super::attributes::{Photometric, PixelInfo};
use super::transfer::Codec;
use crate::window::{self, Windowing};

/// Frame 0 of a three-sample image to interleaved 8-bit RGB.
pub(super) fn color_to_u8(frame: &[u8], px: &PixelInfo, codec: Codec) -> Vec<u8> {
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
        let w = window::resolve_u16(&Windowing::default(), &samples);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ybr_full_to_rgb() {
        assert_eq!(ybr_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(ybr_to_rgb(255, 128, 128), [255, 255, 255]);
        assert_eq!(ybr_to_rgb(76, 85, 255), [254, 0, 0]);
    }

    #[test]
    fn planes_are_interleaved() {
        assert_eq!(interleave(&[1, 2, 3, 4, 5, 6], 2), vec![1, 3, 5, 2, 4, 6]);
    }
}
