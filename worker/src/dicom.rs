//! DICOM Part 10 decoding (in progress).

use crate::decode::{DecodeError, DecodeLimits, Image8};
use crate::window::Windowing;

/// Decodes a DICOM Part 10 file to an 8-bit raster.
pub fn decode(_bytes: &[u8], _limits: &DecodeLimits, _windowing: &Windowing) -> Result<Image8, DecodeError> {
    Err(DecodeError::Unsupported("DICOM".into()))
}
