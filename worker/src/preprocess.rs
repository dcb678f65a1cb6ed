//! The model's image transform: 8-bit raster → normalised NCHW float32 tensor.
//!
//! MedImageInsight's transform is a plain stretch (no crop, no padding) to
//! 480×480 with PIL's antialiased bicubic (Catmull-Rom), a scale to [0, 1] and
//! ImageNet normalisation. The resize is [`crate::resample`], a bit-exact port
//! of Pillow's, so embeddings match the reference transform.
//!
//! Grayscale images are resized as one channel and replicated into the three
//! planes while normalising: identical to PIL converting to RGB first, at a
//! third of the cost.
//!
//! The managed service first "standardises" images to 512×512 with a JPEG
//! quality-75 round trip. That loses detail, so it is off by default; a model
//! directory (or the worker's flag) can turn it on for parity with the
//! service's embeddings.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageDecoder, RgbImage};
use serde::{Deserialize, Serialize};

use crate::raster::{Channels, DecodeError, Image8};

/// The managed service's optional "standardisation" step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standardize {
    /// Square size images are first resized to (512 on the managed service).
    pub size: u32,
    /// JPEG quality of the round trip (75 on the managed service).
    pub jpeg_quality: u8,
}

/// The parameters of the image transform, from the model directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Output side in pixels (480 for MedImageInsight).
    pub size: u32,
    /// Per-channel mean (RGB).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
    /// Optional standardisation before the transform.
    pub standardize: Option<Standardize>,
}

impl Transform {
    /// Number of floats in one preprocessed image (`3 * size * size`).
    pub fn tensor_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Runs the transform, appending `3 * size * size` floats (CHW) to `out`.
    pub fn apply(&self, img: &Image8, out: &mut Vec<f32>) -> Result<(), DecodeError> {
        let resized = self.resize(img)?;
        self.normalize_into(&resized, out);
        Ok(())
    }

    /// The geometric half of the transform: the optional standardisation and
    /// the resize to `size`², still 8-bit. The worker queues images in this
    /// form (a quarter, or a twelfth for grayscale, of the float tensor's
    /// size) and normalises them straight into the batch tensor.
    pub fn resize(&self, img: &Image8) -> Result<Image8, DecodeError> {
        let standardized;
        let img = match self.standardize {
            Some(s) => {
                standardized = standardize(img, s)?;
                &standardized
            }
            None => img,
        };
        resize(img, self.size, self.size)
    }

    /// The arithmetic half: appends the normalised CHW floats of a raster
    /// produced by [`Transform::resize`] to `out`.
    ///
    /// # Panics
    /// If `resized` is not `size`² pixels (a bug, not bad input).
    pub fn normalize_into(&self, resized: &Image8, out: &mut Vec<f32>) {
        let plane = (self.size * self.size) as usize;
        assert_eq!(
            resized.data.len(),
            plane * resized.channels.count(),
            "normalize_into takes the output of Transform::resize"
        );
        out.reserve(3 * plane);
        for c in 0..3 {
            // One lookup table per channel: exactly (v/255 - mean)/std in f32.
            let lut: [f32; 256] =
                std::array::from_fn(|v| (v as f32 / 255.0 - self.mean[c]) / self.std[c]);
            match resized.channels {
                Channels::Gray => out.extend(resized.data.iter().map(|&v| lut[usize::from(v)])),
                Channels::Rgb => out.extend(
                    resized
                        .data
                        .iter()
                        .skip(c)
                        .step_by(3)
                        .map(|&v| lut[usize::from(v)]),
                ),
            }
        }
    }
}

/// Resizes with antialiased Catmull-Rom (PIL's BICUBIC), keeping the channel layout.
pub fn resize(img: &Image8, width: u32, height: u32) -> Result<Image8, DecodeError> {
    let channels = match img.channels {
        Channels::Gray => 1,
        Channels::Rgb => 3,
    };
    if img.data.len() != img.width as usize * img.height as usize * channels {
        return Err(DecodeError::Corrupt(
            "pixel buffer does not match its dimensions".into(),
        ));
    }
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 {
        return Err(DecodeError::Corrupt("image has no pixels".into()));
    }
    let data = crate::resample::resize_bicubic(
        &img.data,
        img.width as usize,
        img.height as usize,
        channels,
        width as usize,
        height as usize,
    );
    Ok(Image8 {
        width,
        height,
        channels: img.channels,
        data,
    })
}

/// The managed service's standardisation: RGB, resize to `size`², JPEG round trip.
fn standardize(img: &Image8, s: Standardize) -> Result<Image8, DecodeError> {
    let resized = resize(img, s.size, s.size)?;
    let rgb: Vec<u8> = match resized.channels {
        Channels::Rgb => resized.data,
        Channels::Gray => resized.data.iter().flat_map(|&v| [v, v, v]).collect(),
    };
    let rgb = RgbImage::from_raw(s.size, s.size, rgb)
        .ok_or_else(|| DecodeError::Corrupt("pixel buffer does not match its dimensions".into()))?;
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, s.jpeg_quality)
        .encode_image(&rgb)
        .map_err(|_| DecodeError::Corrupt("JPEG standardisation failed".into()))?;
    let dec = image::codecs::jpeg::JpegDecoder::new(Cursor::new(&jpeg))
        .map_err(|_| DecodeError::Corrupt("JPEG standardisation failed".into()))?;
    let (w, h) = dec.dimensions();
    let mut data = vec![0u8; dec.total_bytes() as usize];
    dec.read_image(&mut data)
        .map_err(|_| DecodeError::Corrupt("JPEG standardisation failed".into()))?;
    Ok(Image8 {
        width: w,
        height: h,
        channels: Channels::Rgb,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform() -> Transform {
        Transform {
            size: 480,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            standardize: None,
        }
    }

    #[test]
    fn gray_equals_rgb_replicated() {
        let gray = Image8 {
            width: 37,
            height: 23,
            channels: Channels::Gray,
            data: (0..37 * 23).map(|i| (i * 7 % 256) as u8).collect(),
        };
        let rgb = Image8 {
            width: 37,
            height: 23,
            channels: Channels::Rgb,
            data: gray.data.iter().flat_map(|&v| [v, v, v]).collect(),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        transform().apply(&gray, &mut a).unwrap();
        transform().apply(&rgb, &mut b).unwrap();
        assert_eq!(a.len(), 3 * 480 * 480);
        assert_eq!(a, b);
    }

    #[test]
    fn normalisation_is_per_channel_chw() {
        let img = Image8 {
            width: 480,
            height: 480,
            channels: Channels::Rgb,
            data: [255u8, 0, 128].repeat(480 * 480),
        };
        let mut out = Vec::new();
        transform().apply(&img, &mut out).unwrap();
        let plane = 480 * 480;
        assert!((out[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((out[plane] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
        assert!((out[2 * plane] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
    }

    #[test]
    fn standardize_round_trip_keeps_shape() {
        let mut t = transform();
        t.standardize = Some(Standardize {
            size: 512,
            jpeg_quality: 75,
        });
        let img = Image8 {
            width: 100,
            height: 60,
            channels: Channels::Gray,
            data: vec![100; 6000],
        };
        let mut out = Vec::new();
        t.apply(&img, &mut out).unwrap();
        assert_eq!(out.len(), t.tensor_len());
        // A flat gray survives the JPEG round trip within a level or two.
        let v = out[1000] * 0.229 + 0.485;
        assert!((v * 255.0 - 100.0).abs() < 2.5, "{}", v * 255.0);
    }
}
