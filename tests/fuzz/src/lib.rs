//! What the fuzz targets share: the worker's decode path with its limits,
//! and splitting one input into two fields.
//!
//! Each target (`fuzz_targets/*.rs`) feeds libFuzzer's inputs to one parser
//! or decoder the way the programs call it, and asserts the properties that
//! must hold for *any* input (no panic, no allocation past the limits, the
//! gateway's and the worker's parsers agreeing), so a finding is a real bug
//! of the programs, never of the harness. Seed inputs are committed under
//! `corpus/<target>/`.

use medembed_worker::decode::{self, DecodeLimits, Format};
use medembed_worker::window::Windowing;

/// Limits smaller than the worker's defaults, so that an input declaring a
/// huge raster is refused quickly while every code path stays the same.
pub const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 4_000_000,
    max_side: 4096,
};

/// Decodes `data` as the worker does when it has format `format` (other
/// inputs are ignored: the seeds keep the target on its format), then
/// resizes the result as preprocessing would. Checks that the decoder asked
/// the budget for what it allocated and kept within the limits.
pub fn decode_as(data: &[u8], format: Format) {
    if decode::sniff(data) != Some(format) {
        return;
    }
    let mut reserved = None;
    let result = decode::decode_reserving(data, &LIMITS, &Windowing::default(), &mut |f| {
        assert!(
            u64::from(f.width) * u64::from(f.height) <= LIMITS.max_pixels,
            "a raster past the limits reached the budget"
        );
        reserved = Some(f);
        Ok(())
    });
    if let Ok(img) = result {
        let f = reserved.expect("a decoded image took no budget");
        assert_eq!((img.width, img.height), (f.width, f.height));
        assert!(u64::from(img.width) * u64::from(img.height) <= LIMITS.max_pixels);
        let small =
            medembed_worker::preprocess::resize(&img, 16, 16).expect("resizing a decoded image");
        assert_eq!((small.width, small.height), (16, 16));
    }
}

/// Splits an input at its first NUL byte (all of it and nothing when there
/// is none).
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
