//! Decoded rasters and the vocabulary every decoder shares: the 8-bit image
//! handed to preprocessing ([`Image8`]), the limits checked before pixels are
//! allocated ([`DecodeLimits`]) and why decoding failed ([`DecodeError`]).
//!
//! These live apart from the decoders so that the generic decoder
//! ([`crate::decode`]) and the DICOM decoder ([`crate::dicom`]) both build on
//! them without depending on each other the wrong way round: `dicom` uses this
//! module, `decode` uses `dicom` and this module, and nothing here uses either.

/// Limits on what a decoder may allocate.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Most pixels (width × height) an image may have.
    pub max_pixels: u64,
    /// Most pixels along either side.
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
            max_side: 16_384,
        }
    }
}

impl DecodeLimits {
    /// Checks declared dimensions against the limits.
    pub fn check(&self, width: u32, height: u32) -> Result<(), DecodeError> {
        if width == 0 || height == 0 {
            return Err(DecodeError::Corrupt(
                "image has zero width or height".into(),
            ));
        }
        if width > self.max_side
            || height > self.max_side
            || u64::from(width) * u64::from(height) > self.max_pixels
        {
            return Err(DecodeError::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
                max_side: self.max_side,
            });
        }
        Ok(())
    }
}

/// What a decoder is about to allocate, from the image header: reported to
/// the caller (which may refuse or wait for room) before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per pixel of the decoder's own output (before conversion to 8 bits).
    pub bytes_per_pixel: u64,
}

impl Footprint {
    /// Pixels.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Channel layout of an 8-bit raster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// One channel, replicated to RGB later.
    Gray,
    /// Three interleaved channels.
    Rgb,
}

impl Channels {
    /// Samples per pixel.
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

/// A decoded 8-bit image, row-major, channels interleaved. Its Debug never
/// dumps pixels.
#[derive(Clone, PartialEq, Eq, derive_more::Debug)]
#[debug("Image8({width}x{height} {channels:?})")]
pub struct Image8 {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Gray or RGB.
    pub channels: Channels,
    /// `width * height * channels.count()` samples.
    pub data: Vec<u8>,
}

/// Why an image could not be decoded. Messages describe, never quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The string is not base64.
    #[error("image is not valid base64")]
    Base64,
    /// Neither PNG, JPEG nor DICOM.
    #[error("image format not recognised: expected PNG, JPEG or DICOM")]
    UnknownFormat,
    /// Dimensions over the limits.
    #[error("image of {width}x{height} pixels exceeds the limit ({max_pixels} pixels, {max_side} per side)")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Configured pixel limit.
        max_pixels: u64,
        /// Configured side limit.
        max_side: u32,
    },
    /// Decoding needs more memory than the worker's whole decoded-image budget.
    #[error("image of {width}x{height} pixels needs {bytes} bytes to decode, over the worker's limit of {budget} bytes")]
    OverBudget {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// What decoding it would hold.
        bytes: u64,
        /// The budget.
        budget: u64,
    },
    /// Truncated or malformed data.
    #[error("image could not be decoded: {0}")]
    Corrupt(String),
    /// A valid file using a feature we do not handle.
    #[error("image uses an unsupported feature: {0}")]
    Unsupported(String),
}

impl DecodeError {
    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Base64 => "base64",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::TooLarge { .. } | DecodeError::OverBudget { .. } => "too_large",
            DecodeError::Corrupt(_) => "corrupt",
            DecodeError::Unsupported(_) => "unsupported",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_empty_and_oversized_images() {
        let limits = DecodeLimits {
            max_pixels: 100,
            max_side: 20,
        };
        assert!(limits.check(10, 10).is_ok());
        assert!(matches!(limits.check(0, 5), Err(DecodeError::Corrupt(_))));
        assert!(matches!(
            limits.check(21, 1),
            Err(DecodeError::TooLarge { width: 21, .. })
        ));
        assert!(matches!(
            limits.check(11, 10),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn debug_never_shows_pixels() {
        let img = Image8 {
            width: 2,
            height: 1,
            channels: Channels::Gray,
            data: vec![42, 43],
        };
        assert_eq!(format!("{img:?}"), "Image8(2x1 Gray)");
    }
}
