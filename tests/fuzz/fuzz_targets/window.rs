//! Windowing of 16-bit and floating-point samples to 8 bits (CT, MR, 16-bit
//! PNG): any samples and any window parameters that pass validation give
//! one output byte per sample; NaN and infinities included.
#![no_main]

use medembed_worker::window::{self, Windowing};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let windowing = match data[0] % 2 {
        0 => Windowing::Percentile {
            low: f64::from(data[1]) / 2.55,
            high: f64::from(data[2]) / 2.55,
        },
        _ => Windowing::Minmax,
    };
    if windowing.validate().is_err() {
        return;
    }
    let rest = &data[3..];
    let u16s: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let w = window::resolve_u16(&windowing, &u16s);
    assert_eq!(w.apply_u16(&u16s).len(), u16s.len());
    let f64s: Vec<f64> = rest
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let w = window::resolve_f64(&windowing, &f64s);
    assert_eq!(w.apply_f64(&f64s).len(), f64s.len());
});
