//! Deterministic, X-ray-like test images and the request bodies that carry them.
//!
//! A benchmark needs images that cost what real ones cost to decode: PNG
//! decoding time depends on how well the pixels compress, so flat synthetic
//! images would flatter every server. These are 8-bit grayscale chest-film
//! look-alikes (body, lungs, spine, ribs, heart, film grain) drawn from a fixed
//! seed, so every run and every machine sends the same bytes. They are not
//! patient data and mean nothing medically.

use base64::Engine;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

/// A small deterministic PRNG (xorshift64*), enough for film grain.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Smooth step: 0 outside the ellipse, 1 well inside, soft edge of width `soft`.
fn ellipse(x: f32, y: f32, cx: f32, cy: f32, rx: f32, ry: f32, soft: f32) -> f32 {
    let d = (((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2)).sqrt();
    ((1.0 - d) / soft).clamp(0.0, 1.0)
}

/// Draws one `size`×`size` 8-bit gray image from `seed`.
pub fn xray_pixels(size: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    // Per-image variation of the anatomy's position and exposure.
    let jitter = |rng: &mut Rng, s: f32| (rng.unit() - 0.5) * s;
    let shift_x = jitter(&mut rng, 0.04);
    let shift_y = jitter(&mut rng, 0.04);
    let exposure = 0.9 + rng.unit() * 0.2;
    let rib_phase = rng.unit() * std::f32::consts::TAU;
    let n = size as usize;
    let mut out = Vec::with_capacity(n * n);
    for j in 0..n {
        let y = j as f32 / size as f32 - shift_y;
        for i in 0..n {
            let x = i as f32 / size as f32 - shift_x;
            let body = ellipse(x, y, 0.5, 0.55, 0.46, 0.6, 0.08);
            let lung_l = ellipse(x, y, 0.32, 0.45, 0.14, 0.27, 0.25);
            let lung_r = ellipse(x, y, 0.68, 0.45, 0.14, 0.27, 0.25);
            let lungs = lung_l.max(lung_r);
            let spine = (1.0 - ((x - 0.5) / 0.045).abs()).clamp(0.0, 1.0) * body;
            let heart = ellipse(x, y, 0.56, 0.6, 0.12, 0.1, 0.4);
            // Ribs: bright arcs that bend down towards the sides.
            let arc = y + 0.35 * (x - 0.5).powi(2);
            let ribs = ((arc * 34.0 + rib_phase).sin().max(0.0)).powi(3) * lungs;
            let clav = ellipse(x, y, 0.5, 0.2, 0.3, 0.015, 0.5);
            let mut v = 12.0
                + 120.0 * body
                + 70.0 * spine
                + 50.0 * heart * lungs
                + 45.0 * ribs
                + 60.0 * clav
                - 85.0 * lungs * (1.0 - heart);
            v *= exposure;
            // Film grain: sum of two uniforms, about ±6 grey levels.
            v += (rng.unit() + rng.unit() - 1.0) * 12.0;
            out.push(v.clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// Encodes 8-bit gray pixels as a PNG the way common imaging tools do
/// (default zlib level, adaptive filters).
pub fn encode_png(pixels: &[u8], size: u32) -> anyhow::Result<Vec<u8>> {
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Default, FilterType::Adaptive)
        .write_image(pixels, size, size, ExtendedColorType::L8)?;
    Ok(png)
}

/// Base64 with MIME line breaks every 76 characters, as the managed
/// endpoint's documented client (`base64.encodebytes`) sends it.
pub fn base64_lines(bytes: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for chunk in flat.as_bytes().chunks(76) {
        // base64 output is ASCII, so every chunk boundary is a char boundary.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Texts sent by the image+text workload: typical zero-shot prompts.
pub const PROMPTS: [&str; 8] = [
    "x-ray chest anteroposterior Pneumonia",
    "x-ray chest anteroposterior Pleural Effusion",
    "x-ray chest posteroanterior No Finding",
    "x-ray chest anteroposterior Cardiomegaly",
    "x-ray chest posteroanterior Atelectasis",
    "x-ray chest anteroposterior Pneumothorax",
    "x-ray chest posteroanterior Lung Opacity",
    "x-ray chest anteroposterior Support Devices",
];

/// A scoring request body in the managed endpoint's format: one row with an
/// image and, optionally, a text.
pub fn score_body(image_b64: &str, text: Option<&str>) -> Vec<u8> {
    let body = serde_json::json!({
        "input_data": {
            "columns": ["image", "text"],
            "index": [0],
            "data": [[image_b64, text.unwrap_or("")]],
        },
        "params": {"get_scaling_factor": true},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_distinct() {
        let a = xray_pixels(64, 1);
        assert_eq!(a, xray_pixels(64, 1));
        assert_ne!(a, xray_pixels(64, 2));
        let png = encode_png(&a, 64).expect("encodes");
        let back = image::load_from_memory(&png).expect("decodes").to_luma8();
        assert_eq!(back.into_raw(), a);
    }

    #[test]
    fn base64_has_line_breaks_and_round_trips() {
        let data: Vec<u8> = (0..=255).collect();
        let s = base64_lines(&data);
        assert!(s.lines().all(|l| l.len() <= 76));
        let flat: String = s.split_whitespace().collect();
        let back = base64::engine::general_purpose::STANDARD
            .decode(flat)
            .expect("valid base64");
        assert_eq!(back, data);
    }
}
