//! The floor: a bare ONNX Runtime session in this process, fed tensors that
//! are already decoded, resized, normalised and tokenised, at the batch sizes
//! the worker formed. What the worker takes beyond this is serving overhead
//! (HTTP, JSON, base64, decoding, preprocessing, batching, scheduling).
//!
//! The session uses the same ONNX Runtime library, graph optimisation level
//! and intra-op thread count as the worker.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use medembed_worker::model::{ImageTower, ModelConfig, ModelDir};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

/// Decodes a PNG and preprocesses it like the model's transform: RGB, a plain
/// bicubic (Catmull-Rom) stretch to `size`, [0, 1], mean/std, CHW.
pub fn preprocess(png: &[u8], cfg: &ImageTower) -> anyhow::Result<Vec<f32>> {
    let rgb = image::load_from_memory(png)?.to_rgb8();
    let resized = image::imageops::resize(
        &rgb,
        cfg.size,
        cfg.size,
        image::imageops::FilterType::CatmullRom,
    );
    let plane = (cfg.size * cfg.size) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px.0[c]) / 255.0 - cfg.mean[c]) / cfg.std[c];
        }
    }
    Ok(out)
}

/// Token ids and mask of one text, `context` long, padded with end-of-text.
pub fn tokenize(
    tok: &tokenizers::Tokenizer,
    text: &str,
    context: usize,
) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    const END_OF_TEXT: i64 = 49407;
    let enc = tok.encode(text, true).map_err(|e| anyhow!("{e}"))?;
    let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
    if ids.len() > context {
        ids.truncate(context);
        ids[context - 1] = END_OF_TEXT;
    }
    let mut mask = vec![1i64; ids.len()];
    ids.resize(context, END_OF_TEXT);
    mask.resize(context, 0);
    Ok((ids, mask))
}

/// One bare run's result.
#[derive(Debug, Clone, Default)]
pub struct BareResult {
    /// Image batch size used.
    pub image_batch: usize,
    /// Text batch size used (0: no text inference).
    pub text_batch: usize,
    /// Images per second (image inference, plus text inference when present).
    pub images_per_s: f64,
    /// Per-iteration latencies, sorted, seconds.
    pub latencies: Vec<f64>,
}

/// Loaded bare sessions and their inputs.
pub struct Bare {
    image: Session,
    text: Session,
    cfg: ModelConfig,
    pixels: Vec<Vec<f32>>,
    tokens: Vec<(Vec<i64>, Vec<i64>)>,
}

impl Bare {
    /// Loads ONNX Runtime from `library` and both graphs with `threads` intra-op threads.
    pub fn load(
        library: &Path,
        model_dir: &Path,
        threads: usize,
        pngs: &[Vec<u8>],
        texts: &[&str],
    ) -> anyhow::Result<Bare> {
        let cfg = ModelDir::open(model_dir)?.config;
        let env = ort::init_from(library)
            .map_err(|e| anyhow!("cannot load ONNX Runtime from {}: {e}", library.display()))?
            .with_name("medembed-bench")
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let open = |file: &str| -> anyhow::Result<Session> {
            Session::builder(&env)
                .map_err(|e| anyhow!("{e}"))?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| anyhow!("{e}"))?
                .with_intra_threads(threads)
                .map_err(|e| anyhow!("{e}"))?
                .commit_from_file(model_dir.join(file))
                .map_err(|e| anyhow!("{file}: {e}"))
        };
        let image = open(&cfg.image.onnx)?;
        let text = open(&cfg.text.onnx)?;
        let pixels = pngs
            .iter()
            .map(|p| preprocess(p, &cfg.image))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tok = tokenizers::Tokenizer::from_file(model_dir.join(&cfg.text.tokenizer))
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        let tokens = texts
            .iter()
            .map(|t| tokenize(&tok, t, cfg.text.context_length))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Bare {
            image,
            text,
            cfg,
            pixels,
            tokens,
        })
    }

    fn run_images(&mut self, n: usize, offset: usize) -> anyhow::Result<()> {
        let size = self.cfg.image.size as usize;
        let mut data = Vec::with_capacity(n * 3 * size * size);
        for i in 0..n {
            data.extend_from_slice(&self.pixels[(offset + i) % self.pixels.len()]);
        }
        let t = Tensor::from_array(([n, 3, size, size], data)).map_err(|e| anyhow!("{e}"))?;
        let out = self
            .image
            .run(ort::inputs![self.cfg.image.input.as_str() => t])
            .map_err(|e| anyhow!("{e}"))?;
        let (shape, _) = out[self.cfg.image.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{e}"))?;
        anyhow::ensure!(
            shape[0] as usize == n,
            "image output has batch {}",
            shape[0]
        );
        Ok(())
    }

    fn run_texts(&mut self, n: usize, offset: usize) -> anyhow::Result<()> {
        let ctx = self.cfg.text.context_length;
        let mut ids = Vec::with_capacity(n * ctx);
        let mut mask = Vec::with_capacity(n * ctx);
        for i in 0..n {
            let (a, b) = &self.tokens[(offset + i) % self.tokens.len()];
            ids.extend_from_slice(a);
            mask.extend_from_slice(b);
        }
        let ids = Tensor::from_array(([n, ctx], ids)).map_err(|e| anyhow!("{e}"))?;
        let mask = Tensor::from_array(([n, ctx], mask)).map_err(|e| anyhow!("{e}"))?;
        let out = self
            .text
            .run(ort::inputs![
                self.cfg.text.input_ids.as_str() => ids,
                self.cfg.text.attention_mask.as_str() => mask
            ])
            .map_err(|e| anyhow!("{e}"))?;
        let (shape, _) = out[self.cfg.text.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{e}"))?;
        anyhow::ensure!(shape[0] as usize == n, "text output has batch {}", shape[0]);
        Ok(())
    }

    /// Runs image batches of `image_batch` (each followed by a text batch of
    /// `text_batch` when non-zero) for `duration` after a short warm-up.
    pub fn run(
        &mut self,
        image_batch: usize,
        text_batch: usize,
        duration: Duration,
    ) -> anyhow::Result<BareResult> {
        let image_batch = image_batch.max(1);
        for i in 0..3 {
            self.run_images(image_batch, i)?;
            if text_batch > 0 {
                self.run_texts(text_batch, i)?;
            }
        }
        let start = Instant::now();
        let mut latencies = Vec::new();
        let mut i = 0;
        while start.elapsed() < duration {
            let t0 = Instant::now();
            self.run_images(image_batch, i)?;
            if text_batch > 0 {
                self.run_texts(text_batch, i)?;
            }
            latencies.push(t0.elapsed().as_secs_f64());
            i += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        Ok(BareResult {
            image_batch,
            text_batch,
            images_per_s: (latencies.len() * image_batch) as f64 / secs,
            latencies,
        })
    }
}
