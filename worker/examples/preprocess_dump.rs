//! Debug aid: writes the worker's preprocessed tensor for an image file as raw
//! little-endian f32 (CHW), to compare pixel by pixel with a reference.
//!
//! `cargo run --example preprocess_dump -- MODEL_DIR IMAGE OUT.f32`

use medembed_worker::decode::{decode, DecodeLimits};
use medembed_worker::model::ModelDir;
use medembed_worker::preprocess::Transform;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: preprocess_dump MODEL_DIR IMAGE OUT.f32"
    );
    let model = ModelDir::open(std::path::Path::new(&args[1]))?;
    let c = &model.config;
    let img = decode(
        &std::fs::read(&args[2])?,
        &DecodeLimits::default(),
        &c.preprocess.window,
    )?;
    let t = Transform {
        size: c.image.size,
        mean: c.image.mean,
        std: c.image.std,
        standardize: c.preprocess.standardize,
    };
    let mut out = Vec::new();
    t.apply(&img, &mut out)?;
    let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args[3], bytes)?;
    Ok(())
}
