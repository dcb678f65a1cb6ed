//! The model directory: what a worker serves.
//!
//! ```text
//! model/
//!   medembed-model.json   name, version, sizes, normalisation, logit scale
//!   image.onnx            pixel_values [B,3,480,480] f32 -> image_embeds [B,1024]
//!   text.onnx             input_ids, attention_mask [B,77] i64 -> text_embeds [B,1024]
//!   tokenizer.json        the CLIP BPE tokenizer
//! ```
//!
//! The same layout comes from the test-model generator and from an export of
//! the real model, so a real model drops in unchanged. Loading checks the
//! graphs' input and output names, element types and shapes against the config
//! (see [`crate::backend`]) and refuses a mismatch naming what differs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::preprocess::Standardize;
use crate::window::Windowing;

/// File name of the model directory's config.
pub const CONFIG_FILE: &str = "medembed-model.json";

/// The format tag this worker reads.
pub const FORMAT: &str = "medembed-model/v1";

/// `medembed-model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Format tag, `medembed-model/v1`.
    pub format: String,
    /// Model name (reported in metrics and logs).
    pub name: String,
    /// Model version.
    pub version: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Size of both towers' embeddings.
    pub embedding_dim: usize,
    /// The learned `logit_scale` (raw; the temperature is its exponential),
    /// returned as `scaling_factor`.
    pub logit_scale: f32,
    /// The image tower.
    pub image: ImageTower,
    /// The text tower.
    pub text: TextTower,
    /// Preprocessing options.
    #[serde(default)]
    pub preprocess: Preprocess,
}

/// The image tower's graph and transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTower {
    /// ONNX file, relative to the directory.
    pub onnx: String,
    /// Input name (`pixel_values`).
    pub input: String,
    /// Output name (`image_embeds`).
    pub output: String,
    /// Square input side (480).
    pub size: u32,
    /// Normalisation mean, RGB.
    pub mean: [f32; 3],
    /// Normalisation standard deviation, RGB.
    pub std: [f32; 3],
}

/// The text tower's graph and tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextTower {
    /// ONNX file, relative to the directory.
    pub onnx: String,
    /// Token-id input name.
    pub input_ids: String,
    /// Attention-mask input name.
    pub attention_mask: String,
    /// Output name (`text_embeds`).
    pub output: String,
    /// Tokens per text (77).
    pub context_length: usize,
    /// `tokenizer.json`, relative to the directory.
    pub tokenizer: String,
}

/// Preprocessing defaults of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// How 16-bit images are brought to 8 bits.
    #[serde(default)]
    pub window: Windowing,
    /// The managed service's standardisation; absent means off.
    #[serde(default)]
    pub standardize: Option<Standardize>,
}

/// A model directory whose config has been read and checked.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// Its config.
    pub config: ModelConfig,
}

/// Why a model directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing or unreadable.
    #[error("model directory {dir}: cannot read {file}: {reason}")]
    Read {
        /// Directory.
        dir: String,
        /// File.
        file: String,
        /// Reason.
        reason: String,
    },
    /// The config is not valid.
    #[error("model directory {dir}: invalid {CONFIG_FILE}: {reason}")]
    Config {
        /// Directory.
        dir: String,
        /// Reason.
        reason: String,
    },
    /// A graph does not match the config.
    #[error("model directory {dir}: {graph} does not match {CONFIG_FILE}: {reason}")]
    Mismatch {
        /// Directory.
        dir: String,
        /// Graph file.
        graph: String,
        /// What differs.
        reason: String,
    },
    /// ONNX Runtime refused the graph or the provider.
    #[error("model directory {dir}: ONNX Runtime could not load {graph}: {reason}")]
    Runtime {
        /// Directory.
        dir: String,
        /// Graph file.
        graph: String,
        /// Reason.
        reason: String,
    },
}

impl ModelDir {
    /// Reads and checks `medembed-model.json` and that the files it names exist.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let dir = path.display().to_string();
        let cfg_path = path.join(CONFIG_FILE);
        let raw = std::fs::read(&cfg_path).map_err(|e| ModelError::Read {
            dir: dir.clone(),
            file: CONFIG_FILE.into(),
            reason: e.to_string(),
        })?;
        let config: ModelConfig = serde_json::from_slice(&raw).map_err(|e| ModelError::Config {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        let bad = |reason: String| ModelError::Config {
            dir: dir.clone(),
            reason,
        };
        if config.format != FORMAT {
            return Err(bad(format!(
                "format is {:?}, this worker reads {FORMAT:?}",
                config.format
            )));
        }
        if config.embedding_dim == 0 || config.image.size == 0 || config.text.context_length < 2 {
            return Err(bad(
                "embedding_dim, image.size and text.context_length must be positive".into(),
            ));
        }
        if config.image.std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(bad("image.std values must be positive".into()));
        }
        if !config.logit_scale.is_finite() {
            return Err(bad("logit_scale must be a finite number".into()));
        }
        config.preprocess.window.validate().map_err(&bad)?;
        if let Some(s) = config.preprocess.standardize {
            if s.size == 0 || s.jpeg_quality == 0 || s.jpeg_quality > 100 {
                return Err(bad(
                    "preprocess.standardize needs size > 0 and jpeg_quality in 1..=100".into(),
                ));
            }
        }
        for file in [
            &config.image.onnx,
            &config.text.onnx,
            &config.text.tokenizer,
        ] {
            let p = path.join(file);
            if !p.is_file() {
                return Err(ModelError::Read {
                    dir: dir.clone(),
                    file: file.clone(),
                    reason: "no such file".into(),
                });
            }
        }
        Ok(ModelDir {
            path: path.to_path_buf(),
            config,
        })
    }

    /// Absolute path of a file named in the config.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}
